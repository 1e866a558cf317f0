//! OTLP span export off the data path.
//!
//! Requests put finished spans into a bounded queue: a slot is reserved
//! (`try_reserve`) *before* the span is built, so a full queue drops the
//! span without building it, and counts it
//! (`sane_trace_spans_total{result="dropped"}`). One task per configuration
//! drains the queue in batches into the opentelemetry-otlp exporter (gRPC or
//! HTTP/protobuf). A slow or unreachable collector only slows that task:
//! requests never wait for it. A batch is whatever is queued (up to 512
//! spans) when the task is free: busy, batches grow while an export is in
//! flight; quiet, a span goes out at once. When the settings change the old
//! queue's sender is dropped, so its task exports what is left and ends.
//!
//! After a failed export the task waits (100 ms, doubling to 5 s, reset by a
//! success) before the next one: without it, an unreachable collector turns
//! the task into a loop of one-span batches and refused connects that takes
//! CPU from the data path. While it waits the queue is *closed to new spans*
//! ([`ExportHealth`]): requests skip building their spans' attributes and
//! only count them as dropped, so a collector that is down costs the data
//! path one atomic load and one counter increment per span. When the wait
//! is over the queue opens again and the next batch is the probe: a success
//! keeps it open, a failure closes it for a longer wait. Trace context
//! propagation (headers) never depends on any of this.

use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::trace::{SpanData, SpanExporter};
use opentelemetry_sdk::Resource;
use sane_xds_proto::{OtlpProtocol, TracingConfig};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

pub use super::metrics::TraceMetrics;

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

/// Whether the export task takes new spans: closed while it backs off after
/// a failed export, open otherwise. Shared by the queue's senders (one
/// relaxed load per span) and the task (the only writer).
#[derive(Clone, Debug, Default)]
pub struct ExportHealth {
    backing_off: Arc<AtomicBool>,
}

/// The sending end of the span queue.
#[derive(Clone, Debug)]
pub struct SpanQueue {
    tx: mpsc::Sender<SpanData>,
    health: ExportHealth,
    metrics: TraceMetrics,
}

// === impl ExportHealth ===

impl ExportHealth {
    /// Whether the exporter is waiting after a failed export (new spans are
    /// dropped unbuilt).
    pub fn backing_off(&self) -> bool {
        self.backing_off.load(Ordering::Relaxed)
    }

    pub(crate) fn set_backing_off(&self, on: bool) {
        self.backing_off.store(on, Ordering::Relaxed);
    }
}

// === impl SpanQueue ===

impl SpanQueue {
    /// Starts the export task for `config` and returns its queue.
    pub fn start(config: &TracingConfig, service_name: &str, metrics: TraceMetrics) -> Self {
        let (tx, rx) = mpsc::channel(config.max_queue());
        let health = ExportHealth::default();
        tokio::spawn(run(
            config.clone(),
            service_name.to_string(),
            rx,
            health.clone(),
            metrics.clone(),
        ));
        Self {
            tx,
            health,
            metrics,
        }
    }

    /// A queue whose spans go to the returned receiver instead of a
    /// collector (unit tests).
    #[cfg(test)]
    pub(crate) fn capture(metrics: TraceMetrics) -> (Self, mpsc::Receiver<SpanData>) {
        let (tx, rx) = mpsc::channel(1024);
        let queue = Self {
            tx,
            health: ExportHealth::default(),
            metrics,
        };
        (queue, rx)
    }

    /// The export task's state (unit tests set it by hand).
    #[cfg(test)]
    pub(crate) fn health(&self) -> &ExportHealth {
        &self.health
    }

    /// Whether a span offered now would be taken: false while the exporter
    /// backs off. Lets a caller skip gathering a span's attributes.
    pub fn accepting(&self) -> bool {
        !self.health.backing_off()
    }

    /// Counts a span that was not built because [`SpanQueue::accepting`]
    /// said no.
    pub fn count_dropped(&self) {
        self.metrics.dropped.inc();
    }

    /// Queues the span `build` makes, calling it only when the span will be
    /// queued: while the exporter backs off, or when the queue is full (or
    /// its task is gone), the span is dropped unbuilt and counted.
    pub fn push_with(&self, build: impl FnOnce() -> SpanData) {
        if !self.accepting() {
            self.count_dropped();
            return;
        }
        match self.tx.try_reserve() {
            Ok(slot) => slot.send(build()),
            Err(_) => self.count_dropped(),
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
    health: ExportHealth,
    metrics: TraceMetrics,
) {
    let mut exporter = match build_exporter(&config) {
        Ok(e) => e,
        Err(e) => {
            tracing::error!(endpoint = %config.endpoint, error = %e, "cannot build the span exporter; spans are dropped");
            // Nothing will ever be sent: take no more spans.
            health.set_backing_off(true);
            while let Some(_span) = rx.recv().await {
                metrics.failed.inc();
            }
            return;
        }
    };
    exporter.set_resource(
        &Resource::builder_empty()
            .with_service_name(service_name)
            .build(),
    );
    export_loop(&mut exporter, &config.endpoint, rx, &health, &metrics).await;
    let _ = exporter.shutdown();
}

/// Drains the queue into `exporter` in batches until every sender is gone,
/// backing off (queue closed, see [`ExportHealth`]) after each failure.
async fn export_loop<E: SpanExporter>(
    exporter: &mut E,
    endpoint: &str,
    mut rx: mpsc::Receiver<SpanData>,
    health: &ExportHealth,
    metrics: &TraceMetrics,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    let mut backoff = None;
    while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let n = batch.len() as u64;
        let spans = std::mem::replace(&mut batch, Vec::with_capacity(MAX_BATCH));
        let sent = tokio::time::timeout(EXPORT_TIMEOUT, exporter.export(spans)).await;
        let failure = match sent {
            Ok(Ok(())) => {
                metrics.exported.inc_by(n);
                backoff = None;
                continue;
            }
            Ok(Err(e)) => e.to_string(),
            Err(_) => "timed out".to_string(),
        };
        metrics.export_failures.inc();
        metrics.failed.inc_by(n);
        let wait = next_backoff(backoff);
        backoff = Some(wait);
        tracing::debug!(endpoint = %endpoint, error = %failure, retry_in = ?wait, "span export failed");
        health.set_backing_off(true);
        tokio::time::sleep(wait).await; // allow-sleep: backoff after a failed export, off the data path
                                        // Open again: the next batch is the probe.
        health.set_backing_off(false);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
    use prometheus::Registry;
    use std::sync::atomic::AtomicUsize;

    /// An exporter that fails while `failing` is set, and counts the spans
    /// it took.
    #[derive(Debug, Default)]
    struct FlakyExporter {
        failing: Arc<AtomicBool>,
        exported: Arc<AtomicUsize>,
    }

    impl SpanExporter for FlakyExporter {
        async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
            if self.failing.load(Ordering::SeqCst) {
                return Err(OTelSdkError::InternalFailure("collector down".into()));
            }
            self.exported.fetch_add(batch.len(), Ordering::SeqCst);
            Ok(())
        }
    }

    fn span() -> SpanData {
        let ctx = crate::trace::context::TraceContext::extract(&http::HeaderMap::new(), true);
        let outcome = crate::trace::SpanOutcome::default();
        crate::trace::span_data(
            crate::trace::HopKind::Inbound,
            &ctx,
            std::time::SystemTime::now(),
            outcome,
        )
    }

    /// Moves the paused clock on in small steps (letting the export task
    /// run and its backoff pass) until `done` holds.
    async fn until(mut done: impl FnMut() -> bool) {
        for _ in 0..10_000 {
            if done() {
                return;
            }
            tokio::time::advance(Duration::from_millis(5)).await;
        }
        panic!("condition not reached");
    }

    #[tokio::test(start_paused = true)]
    async fn a_backing_off_exporter_drops_spans_unbuilt_and_recovers() {
        let registry = Registry::new();
        let metrics = TraceMetrics::register(&registry).unwrap();
        let failing = Arc::new(AtomicBool::new(true));
        let exported = Arc::new(AtomicUsize::new(0));
        let mut exporter = FlakyExporter {
            failing: failing.clone(),
            exported: exported.clone(),
        };
        let (tx, rx) = mpsc::channel(16);
        let health = ExportHealth::default();
        let queue = SpanQueue {
            tx,
            health: health.clone(),
            metrics: metrics.clone(),
        };
        let task = {
            let (health, metrics) = (health.clone(), metrics.clone());
            tokio::spawn(async move {
                export_loop(&mut exporter, "test", rx, &health, &metrics).await;
            })
        };
        let built = AtomicUsize::new(0);
        let offer = || {
            queue.push_with(|| {
                built.fetch_add(1, Ordering::SeqCst);
                span()
            })
        };

        // The first span is built and sent; the export fails: back off.
        offer();
        until(|| health.backing_off()).await;
        assert_eq!((built.load(Ordering::SeqCst), metrics.failed.get()), (1, 1));
        assert!(!queue.accepting());

        // While backing off, spans are counted as dropped, never built.
        for _ in 0..100 {
            offer();
        }
        assert_eq!(built.load(Ordering::SeqCst), 1, "no span built while down");
        assert_eq!(metrics.dropped.get(), 100);

        // The collector comes back; after the wait the queue opens, the
        // next span is the probe, it is exported and the queue stays open.
        failing.store(false, Ordering::SeqCst);
        until(|| !health.backing_off()).await;
        offer();
        until(|| exported.load(Ordering::SeqCst) == 1).await;
        assert!(queue.accepting());
        offer();
        until(|| exported.load(Ordering::SeqCst) == 2).await;
        assert_eq!(built.load(Ordering::SeqCst), 3);
        assert_eq!(metrics.exported.get(), 2);
        assert_eq!(
            metrics.dropped.get(),
            100,
            "nothing dropped once it recovered"
        );

        drop(queue);
        task.await.unwrap();
    }

    #[tokio::test]
    async fn a_full_queue_drops_spans_unbuilt() {
        let metrics = TraceMetrics::register(&Registry::new()).unwrap();
        let (tx, _rx) = mpsc::channel(2);
        let queue = SpanQueue {
            tx,
            health: ExportHealth::default(),
            metrics: metrics.clone(),
        };
        let built = AtomicUsize::new(0);
        for _ in 0..5 {
            queue.push_with(|| {
                built.fetch_add(1, Ordering::SeqCst);
                span()
            });
        }
        assert_eq!(built.load(Ordering::SeqCst), 2, "only what fits is built");
        assert_eq!(metrics.dropped.get(), 3);
    }

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
