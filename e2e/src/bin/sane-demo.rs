//! `sane-demo`: starts the whole local mesh — control plane, sidecars with
//! mutual TLS and xDS, sample services — and runs steady traffic through it
//! (see `sane_e2e::demo`).
//!
//! `cargo run -p sane-e2e --bin sane-demo` runs until Ctrl-C or SIGTERM;
//! `-- --duration 10s` runs for a bounded time. Exits 1 if any request
//! failed or any process did not stop cleanly.
//!
//! Started through cargo (`cargo run` sets `CARGO`), it builds the other
//! binaries first. Started as a plain binary, it builds nothing: it runs the
//! binaries in `--bin-dir`, or else those next to itself (a release
//! directory or an install prefix), and says which are missing.

use clap::Parser;
use sane_e2e::demo::{run, DemoOptions};
use std::path::PathBuf;
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
    /// Directory holding `sane-proxy`, `sane-control-plane`, `sanectl` and
    /// `sane-echo`; default: the directory of this binary when not started
    /// through cargo.
    #[arg(long)]
    bin_dir: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let prebuilt = match &args.bin_dir {
        Some(dir) => Some(dir.clone()),
        // `cargo run` sets CARGO: build from the source tree as usual.
        None if std::env::var_os("CARGO").is_some_and(|v| !v.is_empty()) => None,
        None => std::env::current_exe()
            .ok()
            .and_then(|exe| exe.parent().map(PathBuf::from)),
    };
    match prebuilt {
        Some(dir) => {
            if let Err(e) = sane_e2e::harness::use_prebuilt(&dir) {
                eprintln!("sane-demo: {e} (pass --bin-dir DIR, or run it with `cargo run -p sane-e2e --bin sane-demo`)");
                return ExitCode::FAILURE;
            }
        }
        // The demo needs the binaries, not every test target.
        None => sane_e2e::harness::prefer_binaries_only(),
    }
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
