//! `sane-demo`: starts the whole local mesh — control plane, sidecars with
//! mutual TLS and xDS, sample services — and runs steady traffic through it
//! (see `sane_e2e::demo`).
//!
//! `cargo run -p sane-e2e --bin sane-demo` runs until Ctrl-C or SIGTERM;
//! `-- --duration 10s` runs for a bounded time. Exits 1 if any request
//! failed or any process did not stop cleanly.

use clap::Parser;
use sane_e2e::demo::{run, DemoOptions};
use std::process::ExitCode;
use std::time::Duration;

/// Run a local Sane Mesh (control plane, sidecars, sample services) with
/// steady HTTP/1, HTTP/2, gRPC and TCP traffic.
#[derive(Debug, Parser)]
#[command(name = "sane-demo", version)]
struct Args {
    /// How long to send traffic, e.g. `10s`; default: until Ctrl-C.
    #[arg(long, value_parser = humantime::parse_duration)]
    duration: Option<Duration>,
    /// Pause between two requests of one protocol.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "100ms")]
    interval: Duration,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    // The demo needs the binaries, not every test target.
    sane_e2e::harness::prefer_binaries_only();
    let ok = run(DemoOptions {
        duration: args.duration,
        interval: args.interval,
    })
    .await;
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
