//! `sane-otlp-sink`: an OTLP/gRPC trace collector that only counts.
//!
//! The benchmarks' "tracing to a reachable collector" peer (bench/) and
//! `bench/callgrind.sh TRACING=reachable` export to it. It answers every
//! `Export` call with success and keeps nothing but two counters, so it
//! costs little CPU and no memory however long the run. Prints
//! `listening name=otlp addr=…` once bound and, on SIGTERM or SIGINT,
//! `spans received=N batches=M` before it exits 0.

use clap::Parser;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::TraceService;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use sane_e2e::harness::serve_traces;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};

/// An OTLP/gRPC trace sink that counts the spans it receives.
#[derive(Debug, Parser)]
#[command(name = "sane-otlp-sink", version)]
struct Args {
    /// Address to serve OTLP/gRPC (plaintext HTTP/2) on.
    #[arg(long, default_value = "127.0.0.1:0")]
    addr: SocketAddr,
}

/// Spans and export calls received so far.
#[derive(Clone, Debug, Default)]
struct Counts {
    spans: Arc<AtomicU64>,
    batches: Arc<AtomicU64>,
}

#[tonic::async_trait]
impl TraceService for Counts {
    async fn export(
        &self,
        req: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let n: usize = (req.get_ref().resource_spans.iter())
            .flat_map(|rs| rs.scope_spans.iter())
            .map(|ss| ss.spans.len())
            .sum();
        self.spans.fetch_add(n as u64, Ordering::Relaxed);
        self.batches.fetch_add(1, Ordering::Relaxed);
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let listener = TcpListener::bind(args.addr).await?;
    let mut stdout = std::io::stdout().lock();
    writeln!(
        stdout,
        "listening name=otlp addr={}",
        listener.local_addr()?
    )?;
    stdout.flush()?;
    drop(stdout);

    let counts = Counts::default();
    let serve = serve_traces(listener, counts.clone());
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = serve => {}
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    println!(
        "spans received={} batches={}",
        counts.spans.load(Ordering::Relaxed),
        counts.batches.load(Ordering::Relaxed)
    );
    Ok(())
}
