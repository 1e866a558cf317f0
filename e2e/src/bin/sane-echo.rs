//! `sane-echo`: the test application (see `sane_e2e::echo`).
//!
//! Prints `listening name=<http|grpc|tcp> addr=…` per port once bound, then
//! serves until SIGTERM or SIGINT and exits 0.

use clap::Parser;
use sane_e2e::echo::{Bound, EchoConfig};
use std::io::Write;
use std::net::SocketAddr;
use tokio::signal::unix::{signal, SignalKind};

/// HTTP, gRPC and TCP echo server for Sane Mesh tests.
#[derive(Debug, Parser)]
#[command(name = "sane-echo", version)]
struct Args {
    /// Instance name, reported in every answer.
    #[arg(long)]
    name: String,
    /// HTTP/1.1 + h2c address, e.g. 127.0.0.1:0.
    #[arg(long)]
    http: Option<SocketAddr>,
    /// gRPC (h2c) address.
    #[arg(long)]
    grpc: Option<SocketAddr>,
    /// TCP echo address.
    #[arg(long)]
    tcp: Option<SocketAddr>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();

    let bound = Bound::bind(EchoConfig {
        name: args.name,
        http: args.http,
        grpc: args.grpc,
        tcp: args.tcp,
    })
    .await?;
    let mut stdout = std::io::stdout().lock();
    for (kind, addr) in bound.addrs() {
        writeln!(stdout, "listening name={} addr={addr}", kind.name())?;
    }
    stdout.flush()?;
    drop(stdout);

    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    bound
        .run(async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        })
        .await;
    Ok(())
}
