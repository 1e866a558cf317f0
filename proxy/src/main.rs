//! `sane-proxy`: the Sane Mesh sidecar.
//!
//! Parses arguments, loads and validates the config, builds the runtime and
//! hands over to the library. Signals: SIGHUP reloads the config, SIGTERM and
//! SIGINT drain and exit.

use anyhow::Context;
use clap::Parser;
use std::io::Write;
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(name = "sane-proxy", version, about = "Sane Mesh sidecar proxy")]
struct Args {
    /// Bootstrap config file (YAML).
    #[arg(long, env = "SANE_PROXY_CONFIG")]
    config: PathBuf,
    /// Validate the config and exit.
    #[arg(long)]
    check: bool,
    /// Worker threads (default: one per core).
    #[arg(long, env = "SANE_PROXY_WORKERS")]
    workers: Option<usize>,
    /// Log format.
    #[arg(long, default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    init_logs(&args.log_format);
    match run(args) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            tracing::error!("{e:#}");
            std::process::ExitCode::from(2)
        }
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    let bootstrap = sane_proxy::config::read_file(&args.config)?;
    if args.check {
        sane_proxy::config::Snapshot::compile(
            bootstrap,
            1,
            None,
            &args.config.display().to_string(),
        )?;
        println!("config ok");
        return Ok(());
    }
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = args.workers {
        rt.worker_threads(n.max(1));
    }
    let rt = rt.enable_all().build().context("starting the runtime")?;
    rt.block_on(async move {
        let registry = prometheus::Registry::new();
        let proxy = sane_proxy::build(bootstrap, Some(args.config.clone()), registry).await?;
        let mut out = std::io::stdout().lock();
        for (name, addr) in proxy.addresses() {
            writeln!(out, "listening name={name} addr={addr}")?;
        }
        out.flush()?;
        drop(out);
        let handle = proxy.handle();
        tokio::spawn(signals(handle));
        proxy.run().await;
        Ok(())
    })
}

async fn signals(handle: sane_proxy::ProxyHandle) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut hup), Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::hangup()),
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers");
        return;
    };
    loop {
        tokio::select! {
            _ = hup.recv() => {
                tracing::info!("SIGHUP: reloading config");
                let _ = handle.reload();
            }
            _ = term.recv() => { tracing::info!("SIGTERM: draining"); handle.drain(); }
            _ = int.recv() => { tracing::info!("SIGINT: draining"); handle.drain(); }
        }
    }
}

fn init_logs(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}
