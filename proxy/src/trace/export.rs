//! OTLP span export off the data path.
//!
//! Requests put finished spans into a bounded queue with `try_send`; a full
//! queue drops the span and counts it (`sane_trace_spans_dropped_total`). One
//! task per configuration drains the queue in batches into the
//! opentelemetry-otlp exporter (gRPC or HTTP/protobuf). A slow or
//! unreachable collector only slows that task: requests never wait for it.
//! When the settings change the old queue's sender is dropped, so its task
//! exports what is left and ends.
//!
//! After a failed export the task waits (100 ms, doubling to 5 s, reset by a
//! success) before the next one: without it, an unreachable collector turns
//! the task into a loop of one-span batches and refused connects that takes
//! CPU from the data path. Spans keep queueing meanwhile, and a full queue
//! drops them (counted).

use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::trace::{SpanData, SpanExporter as _};
use opentelemetry_sdk::Resource;
use prometheus::{IntCounter, IntCounterVec, Opts, Registry};
use sane_xds_proto::{OtlpProtocol, TracingConfig};
use std::time::Duration;
use tokio::sync::mpsc;

/// Spans sent to the collector in one request, at most.
const MAX_BATCH: usize = 512;
/// How long one export may take before it counts as failed.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);
/// First wait after a failed export.
const BACKOFF_START: Duration = Duration::from_millis(100);
/// Longest wait between failed exports.
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// The wait after a failed export that followed a wait of `previous`.
fn next_backoff(previous: Option<Duration>) -> Duration {
    previous.map_or(BACKOFF_START, |p| (p * 2).min(BACKOFF_MAX))
}

/// Counters of the span and access-log pipelines.
#[derive(Clone, Debug)]
pub struct TraceMetrics {
    spans: IntCounterVec,
    export_failures: IntCounter,
    /// Access-log lines, by result (`written`, `dropped`, `failed`).
    pub access_log: IntCounterVec,
}

/// The sending end of the span queue.
#[derive(Clone, Debug)]
pub struct SpanQueue {
    tx: mpsc::Sender<SpanData>,
    metrics: TraceMetrics,
}

// === impl TraceMetrics ===

impl TraceMetrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let spans = IntCounterVec::new(
            Opts::new(
                "sane_trace_spans_total",
                "Spans by result: exported, dropped (queue full), failed (the \
                 collector refused or was unreachable).",
            ),
            &["result"],
        )?;
        let export_failures = IntCounter::new(
            "sane_trace_export_failures_total",
            "Span batches the collector refused or did not answer.",
        )?;
        let access_log = IntCounterVec::new(
            Opts::new(
                "sane_access_log_lines_total",
                "Access-log lines by result: written, dropped (queue full), failed.",
            ),
            &["result"],
        )?;
        registry.register(Box::new(spans.clone()))?;
        registry.register(Box::new(export_failures.clone()))?;
        registry.register(Box::new(access_log.clone()))?;
        Ok(Self {
            spans,
            export_failures,
            access_log,
        })
    }
}

// === impl SpanQueue ===

impl SpanQueue {
    /// Starts the export task for `config` and returns its queue.
    pub fn start(config: &TracingConfig, service_name: &str, metrics: TraceMetrics) -> Self {
        let (tx, rx) = mpsc::channel(config.max_queue());
        tokio::spawn(run(
            config.clone(),
            service_name.to_string(),
            rx,
            metrics.clone(),
        ));
        Self { tx, metrics }
    }

    /// A queue whose spans go to the returned receiver instead of a
    /// collector (unit tests).
    #[cfg(test)]
    pub(crate) fn capture(metrics: TraceMetrics) -> (Self, mpsc::Receiver<SpanData>) {
        let (tx, rx) = mpsc::channel(1024);
        (Self { tx, metrics }, rx)
    }

    /// Queues a span, or drops it (counted) when the queue is full.
    pub fn push(&self, span: SpanData) {
        if self.tx.try_send(span).is_err() {
            self.metrics.spans.with_label_values(&["dropped"]).inc();
        }
    }
}

fn build_exporter(
    config: &TracingConfig,
) -> Result<opentelemetry_otlp::SpanExporter, opentelemetry_otlp::ExporterBuildError> {
    match config.protocol() {
        Some(OtlpProtocol::HttpProtobuf) => opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_http_client(
                opentelemetry_http::hyper::HyperClient::with_default_connector(
                    EXPORT_TIMEOUT,
                    None,
                ),
            )
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(config.endpoint.clone())
            .with_timeout(EXPORT_TIMEOUT)
            .build(),
        _ => opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(config.endpoint.clone())
            .with_timeout(EXPORT_TIMEOUT)
            .build(),
    }
}

async fn run(
    config: TracingConfig,
    service_name: String,
    mut rx: mpsc::Receiver<SpanData>,
    metrics: TraceMetrics,
) {
    let mut exporter = match build_exporter(&config) {
        Ok(e) => e,
        Err(e) => {
            tracing::error!(endpoint = %config.endpoint, error = %e, "cannot build the span exporter; spans are dropped");
            while let Some(_span) = rx.recv().await {
                metrics.spans.with_label_values(&["failed"]).inc();
            }
            return;
        }
    };
    exporter.set_resource(
        &Resource::builder_empty()
            .with_service_name(service_name)
            .build(),
    );
    let mut batch = Vec::with_capacity(MAX_BATCH);
    let mut backoff = None;
    while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let n = batch.len() as u64;
        let spans = std::mem::replace(&mut batch, Vec::with_capacity(MAX_BATCH));
        let sent = tokio::time::timeout(EXPORT_TIMEOUT, exporter.export(spans)).await;
        let failure = match sent {
            Ok(Ok(())) => {
                metrics.spans.with_label_values(&["exported"]).inc_by(n);
                backoff = None;
                continue;
            }
            Ok(Err(e)) => e.to_string(),
            Err(_) => "timed out".to_string(),
        };
        metrics.export_failures.inc();
        metrics.spans.with_label_values(&["failed"]).inc_by(n);
        let wait = next_backoff(backoff);
        backoff = Some(wait);
        tracing::debug!(endpoint = %config.endpoint, error = %failure, retry_in = ?wait, "span export failed");
        tokio::time::sleep(wait).await; // allow-sleep: backoff after a failed export, off the data path
    }
    let _ = exporter.shutdown();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_exports_back_off_doubling_up_to_the_cap() {
        let mut wait = None;
        let mut seen = Vec::new();
        for _ in 0..8 {
            let next = next_backoff(wait);
            seen.push(next);
            wait = Some(next);
        }
        assert_eq!(seen[0], BACKOFF_START);
        assert_eq!(seen[1], BACKOFF_START * 2);
        assert!(seen.windows(2).all(|w| w[1] >= w[0]));
        assert_eq!(*seen.last().unwrap(), BACKOFF_MAX);
    }
}
