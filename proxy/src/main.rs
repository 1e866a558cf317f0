//! `sane-proxy`: the Sane Mesh sidecar.
//!
//! Parses arguments, loads and validates the config, builds the runtime and
//! hands over to the library. Signals: SIGHUP reloads the config, SIGTERM and
//! SIGINT drain and exit. `sane-proxy iptables install|uninstall` sets up
//! (or removes) transparent interception in the pod's network namespace and
//! exits. `sane-proxy gateway --config FILE` runs the proxy in gateway
//! mode: the same proxy plus the public listeners of the file's `gateway`
//! section.

use anyhow::Context;
use clap::{Parser, Subcommand};
use sane_proxy::iptables::IptablesCommand;
use std::io::Write;
use std::path::PathBuf;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug)]
#[command(
    name = "sane-proxy",
    version,
    about = "Sane Mesh sidecar proxy",
    subcommand_negates_reqs = true,
    args_conflicts_with_subcommands = true
)]
struct Args {
    /// Bootstrap config file (YAML). Required to run the proxy.
    #[arg(long, env = "SANE_PROXY_CONFIG", required = true)]
    config: Option<PathBuf>,
    /// Validate the config and exit.
    #[arg(long)]
    check: bool,
    /// Worker threads (default: one per core). With one, everything runs
    /// on the main thread.
    #[arg(long, env = "SANE_PROXY_WORKERS")]
    workers: Option<usize>,
    /// Largest config file in bytes, at start and on reload. The file's
    /// nesting (64 levels) and alias expansion (at most this many bytes
    /// repeated) are bounded too, before it is parsed.
    #[arg(long, env = "SANE_PROXY_MAX_CONFIG_BYTES", default_value_t = sane_xds_proto::yaml::DEFAULT_MAX_YAML_BYTES)]
    max_config_bytes: usize,
    /// Log format.
    #[arg(long, default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
    /// Overrides `node.id` (an injected sidecar gets its pod's name, which
    /// the injector cannot know for pods of a Deployment).
    #[arg(long, env = "SANE_POD_NAME")]
    node_id: Option<String>,
    /// The app's original probes as JSON (`{"/app-health/<container>/<probe>":
    /// {"httpGet": ...}}`, written by the injector), added to the health
    /// server's `app_probes`. Needs `health` in the config.
    #[arg(long, env = "SANE_APP_PROBES")]
    app_probes: Option<String>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Install or remove the NAT rules that redirect the pod's TCP traffic
    /// to the proxy (run as root in the pod's network namespace, before the
    /// app starts).
    #[command(subcommand)]
    Iptables(IptablesCommand),
    /// Run as an ingress gateway: public listeners (TLS by SNI) routing
    /// outside requests to mesh services.
    Gateway(GatewayArgs),
}

#[derive(clap::Args, Debug)]
struct GatewayArgs {
    /// Bootstrap config file (YAML) with a `gateway` section.
    #[arg(long, env = "SANE_GATEWAY_CONFIG")]
    config: PathBuf,
    /// Validate the config (certificates included) and exit.
    #[arg(long)]
    check: bool,
    /// Where the Secrets named by delivered gateway configurations (Istio
    /// `credentialName`, Gateway API `certificateRefs`) are read on this
    /// machine: `<dir>/<namespace>/<name>/tls.crt` and `tls.key`. Default:
    /// `/etc/sane/credentials`.
    #[arg(long, env = "SANE_GATEWAY_CREDENTIALS_DIR")]
    credentials_dir: Option<PathBuf>,
    /// The IP delivered listeners bind instead of the unspecified address
    /// they name (`0.0.0.0:<port>`). Default: as delivered.
    #[arg(long, env = "SANE_GATEWAY_LISTENER_IP")]
    listener_ip: Option<std::net::IpAddr>,
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
    if let Some(Command::Iptables(cmd)) = &args.command {
        println!("{}", sane_proxy::iptables::run(cmd)?.trim_end());
        return Ok(());
    }
    if let Some(Command::Gateway(gw)) = &args.command {
        return run_gateway(gw, &args);
    }
    let config = args.config.clone().context("--config is required")?;
    let limits = sane_xds_proto::yaml::YamlLimits::with_max_bytes(args.max_config_bytes);
    let mut bootstrap = sane_proxy::config::read_file(&config, &limits)?;
    apply_overrides(&mut bootstrap, &args)?;
    if args.check {
        sane_proxy::config::Snapshot::compile(bootstrap, 1, None, &config.display().to_string())?;
        println!("config ok");
        return Ok(());
    }
    let wanted: u64 = bootstrap
        .resources
        .listeners
        .iter()
        .map(|l| u64::from(l.limits().max_connections()))
        .sum();
    raise_open_file_limit(wanted);
    let (rt, workers) = runtime(args.workers)?;
    rt.block_on(async move {
        sane_proxy::workers::start(workers).context("starting the worker threads")?;
        let registry = prometheus::Registry::new();
        let proxy = sane_proxy::build(bootstrap, Some(config), registry).await?;
        // Parsing and compiling the config freed more than it keeps.
        heap::release();
        heap::watch();
        let mut out = std::io::stdout().lock();
        for (name, addr) in proxy.addresses() {
            writeln!(out, "listening name={name} addr={addr}")?;
        }
        out.flush()?;
        drop(out);
        let handle = proxy.handle();
        handle.set_yaml_limits(limits);
        tokio::spawn(signals(handle));
        proxy.run().await;
        Ok(())
    })
}

/// Applies the process-level settings (flags or the pod's environment) to
/// the bootstrap read from the file. They are not re-read on reload.
fn apply_overrides(b: &mut sane_xds_proto::Bootstrap, args: &Args) -> anyhow::Result<()> {
    if let Some(id) = args.node_id.as_deref().filter(|id| !id.is_empty()) {
        b.node.id = id.to_string();
    }
    if let Some(json) = args.app_probes.as_deref().filter(|j| !j.trim().is_empty()) {
        let probes: std::collections::BTreeMap<String, sane_xds_proto::AppProbe> =
            serde_json::from_str(json).context("SANE_APP_PROBES (--app-probes) is not valid")?;
        let Some(health) = b.health.as_mut() else {
            anyhow::bail!("SANE_APP_PROBES (--app-probes) is set but the config has no `health` server to answer them");
        };
        health.app_probes.extend(probes);
    }
    b.validate().with_context(|| {
        format!(
            "{}",
            args.config
                .as_deref()
                .unwrap_or_else(|| std::path::Path::new("<config>"))
                .display()
        )
    })?;
    Ok(())
}

fn run_gateway(gw: &GatewayArgs, args: &Args) -> anyhow::Result<()> {
    let limits = sane_xds_proto::yaml::YamlLimits::with_max_bytes(args.max_config_bytes);
    let bootstrap = sane_proxy::config::read_file(&gw.config, &limits)?;
    if gw.check {
        sane_proxy::gateway::check(bootstrap, &gw.config.display().to_string())?;
        println!("config ok");
        return Ok(());
    }
    let wanted: u64 = bootstrap
        .resources
        .listeners
        .iter()
        .map(|l| u64::from(l.limits().max_connections()))
        .sum::<u64>()
        + bootstrap
            .gateway
            .as_ref()
            .map_or(0, |g| g.listeners.len() as u64)
            * u64::from(sane_xds_proto::DEFAULT_MAX_CONNECTIONS);
    raise_open_file_limit(wanted);
    let (rt, workers) = runtime(args.workers)?;
    rt.block_on(async move {
        sane_proxy::workers::start(workers).context("starting the worker threads")?;
        let registry = prometheus::Registry::new();
        let mut gateway =
            sane_proxy::gateway::build(bootstrap, Some(gw.config.clone()), registry).await?;
        gateway.set_delivery(sane_proxy::gateway::merge::DeliveryOptions {
            credentials_dir: gw.credentials_dir.clone(),
            listener_ip: gw.listener_ip,
        });
        heap::release();
        heap::watch();
        let mut out = std::io::stdout().lock();
        for (name, addr) in gateway.addresses() {
            writeln!(out, "listening name={name} addr={addr}")?;
        }
        out.flush()?;
        drop(out);
        gateway.handle().set_yaml_limits(limits);
        tokio::spawn(signals(gateway.handle()));
        gateway.run().await;
        Ok(())
    })
}

/// Raises the soft limit of open files to the hard limit: every accepted
/// connection is a descriptor (two, with its upstream), and the default soft
/// limit (often 1024) is far below the listeners' `max_connections`. Warns
/// when even the hard limit is below what the listeners may need
/// (`listener_connections`, their `max_connections` summed, twice over).
fn raise_open_file_limit(listener_connections: u64) {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(error = %e, "reading the open file limit");
            return;
        }
    };
    let mut limit = soft;
    if soft < hard {
        match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => limit = hard,
            Err(e) => tracing::warn!(soft, hard, error = %e, "raising the open file limit"),
        }
    }
    let wanted = listener_connections.saturating_mul(2) + 256;
    if limit < wanted {
        tracing::warn!(
            limit,
            wanted,
            "the open file limit is below what the listeners' max_connections may need; \
             accepts will fail (and back off) before max_connections is reached"
        );
    } else {
        tracing::debug!(limit, "open file limit");
    }
}

/// The main runtime, and `workers - 1` more worker threads (default: one
/// worker per core). Every worker runs tokio's current-thread scheduler and
/// keeps the connections it is handed (`sane_proxy::workers`): no work
/// stealing, no cross-thread wake-ups or atomics on the task queues. With
/// one worker everything runs on this thread.
fn runtime(workers: Option<usize>) -> anyhow::Result<(tokio::runtime::Runtime, usize)> {
    let n = workers
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .max(1);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    Ok((rt, n))
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
                // Its own task: a slow reload must not hold up SIGTERM.
                let handle = handle.clone();
                tokio::spawn(async move { handle.reload().await });
            }
            _ = term.recv() => { tracing::info!("SIGTERM: draining"); handle.drain(); }
            _ = int.recv() => { tracing::info!("SIGINT: draining"); handle.drain(); }
        }
    }
}

/// Logs to stderr, `RUST_LOG` (default `info`) deciding what; warnings
/// and errors are rate-limited per call site (`log_limit`).
fn init_logs(format: &str) {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::Layer;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let layer = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let layer = if format == "json" {
        layer.json().boxed()
    } else {
        layer.boxed()
    };
    let limiter = std::sync::Arc::new(sane_proxy::log_limit::WarnLimiter::default());
    tracing_subscriber::registry()
        .with(filter)
        .with(sane_proxy::log_limit::LimitLayer(limiter.clone()))
        .with(layer)
        .init();
    sane_proxy::log_limit::spawn_reporter(limiter);
}

/// Gives the memory the allocator holds free back to the kernel.
///
/// mimalloc returns a free span of memory only after a delay (10 ms), and
/// only when that thread's heap is used again: memory freed in a burst (the
/// buffers of idle connections being parked, the parsed YAML after a config
/// compile, the previous snapshot after a reload) and followed by quiet
/// stays resident. So every worker thread (every runtime of
/// `sane_proxy::workers`) collects its own heap with a forced purge
/// (`mi_collect(true)`) every [`heap::PERIOD`] (1 s): a walk over the
/// thread's pages, ≈ 3 k instructions for an idle sidecar's heap
/// (callgrind's idle window). Under load that
/// gives back only what is free at that instant, once a second (measured:
/// no more page faults per request than glibc's malloc,
/// `SYSCALLS=1 bench/callgrind.sh`), where a purge delay of zero costs
/// nearly one fault per request.
///
/// The only `unsafe` of the proxy: the mimalloc call, which takes no
/// pointers and purges the calling thread's own heap.
mod heap {
    use std::time::Duration;

    /// How often each thread's free memory is given back.
    pub(super) const PERIOD: Duration = Duration::from_secs(1);

    /// Frees the calling thread's empty pages and purges its free memory.
    pub(super) fn release() {
        // SAFETY: no pointers; acts on the calling thread's heap.
        unsafe { libmimalloc_sys::mi_collect(true) }
    }

    /// Starts the periodic release on every worker runtime.
    pub(super) fn watch() {
        for worker in sane_proxy::workers::runtimes() {
            worker.spawn(async {
                // The first tick a period from now: the caller has just
                // released the main thread's heap.
                let mut tick =
                    tokio::time::interval_at(tokio::time::Instant::now() + PERIOD, PERIOD);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    release();
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// This process's resident bytes (`/proc/self/statm`).
    fn resident() -> usize {
        let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
        let pages: usize = statm.split(' ').nth(1).unwrap().parse().unwrap();
        pages * 4096
    }

    #[test]
    fn freed_heap_in_the_middle_is_released() {
        // 8 KiB buffers interleaved with small live allocations, as the
        // buffers of parked connections between their connections' state:
        // freed, they stay committed until the heap is used again (or
        // released); a release gives their pages back. The test's own
        // thread allocates, frees and releases (a release acts on the
        // calling thread's heap, as each worker's does).
        let mut kept = Vec::new();
        let mut buffers = Vec::new();
        for i in 0..2_000 {
            buffers.push(vec![i as u8; 8 * 1024]);
            kept.push(Box::new(i));
        }
        drop(buffers);
        let held = resident();
        heap::release();
        let after = resident();
        assert!(
            after + 8 * 1024 * 1024 <= held,
            "{held} bytes resident before the release, {after} after"
        );
        assert_eq!(kept.len(), 2_000);
    }

    #[test]
    fn iptables_needs_no_config_and_serving_needs_one() {
        let args = Args::try_parse_from(["sane-proxy", "iptables", "install", "--dry-run"]);
        assert!(matches!(
            args.map(|a| a.command),
            Ok(Some(Command::Iptables(IptablesCommand::Install {
                dry_run: true,
                ..
            })))
        ));
        let both =
            Args::try_parse_from(["sane-proxy", "--config", "x.yaml", "iptables", "uninstall"]);
        assert!(both.is_err());
        let serve = Args::try_parse_from(["sane-proxy", "--config", "x.yaml"]).unwrap();
        assert_eq!(serve.config, Some(PathBuf::from("x.yaml")));
        assert!(serve.command.is_none());
        let gw = Args::try_parse_from(["sane-proxy", "gateway", "--config", "gw.yaml"]).unwrap();
        assert!(
            matches!(gw.command, Some(Command::Gateway(GatewayArgs { ref config, check: false, .. })) if config == &PathBuf::from("gw.yaml"))
        );
    }

    #[test]
    fn pod_environment_overrides_the_node_id_and_adds_app_probes() {
        let mut b = sane_xds_proto::Bootstrap {
            health: Some(sane_xds_proto::HealthConfig {
                address: "0.0.0.0:15020".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let args = Args::try_parse_from([
            "sane-proxy",
            "--config",
            "x.yaml",
            "--node-id",
            "web-7f9c-abcde",
            "--app-probes",
            r#"{"/app-health/web/readiness": {"tcpSocket": {"port": 8080}}}"#,
        ])
        .unwrap();
        apply_overrides(&mut b, &args).unwrap();
        assert_eq!(b.node.id, "web-7f9c-abcde");
        let probes = &b.health.as_ref().unwrap().app_probes;
        assert_eq!(
            probes["/app-health/web/readiness"]
                .tcp_socket
                .as_ref()
                .unwrap()
                .port,
            8080
        );

        let bad = Args::try_parse_from([
            "sane-proxy",
            "--config",
            "x.yaml",
            "--app-probes",
            r#"{"/app-health/web/readiness": {"tcpSocket": {"port": 0}}}"#,
        ])
        .unwrap();
        let err = format!("{:#}", apply_overrides(&mut b, &bad).unwrap_err());
        assert!(err.contains("tcpSocket.port: 0 is not a port"), "{err}");

        b.health = None;
        let err = format!("{:#}", apply_overrides(&mut b, &args).unwrap_err());
        assert!(err.contains("no `health` server"), "{err}");
    }
}
