//! Counters of the span and access-log pipelines, shared by the span
//! exporter (`export`) and the access-log writer (`crate::access_log`): a
//! leaf, so the access log does not import the exporter (whose settings
//! `Tracer` swaps together with the access log's).

use prometheus::{IntCounter, IntCounterVec, Opts, Registry};

/// Counters of the span and access-log pipelines.
#[derive(Clone, Debug)]
pub struct TraceMetrics {
    /// `sane_trace_spans_total` by result, resolved once (no label lookup
    /// per span).
    pub(super) exported: IntCounter,
    pub(super) dropped: IntCounter,
    pub(super) failed: IntCounter,
    pub(super) export_failures: IntCounter,
    /// Access-log lines, by result (`written`, `dropped`, `failed`).
    pub access_log: IntCounterVec,
}

// === impl TraceMetrics ===

impl TraceMetrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let spans = IntCounterVec::new(
            Opts::new(
                "sane_trace_spans_total",
                "Spans by result: exported, dropped (not built: the queue was \
                 full, or the exporter was backing off after a failed export), \
                 failed (the collector refused or was unreachable).",
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
            exported: spans.with_label_values(&["exported"]),
            dropped: spans.with_label_values(&["dropped"]),
            failed: spans.with_label_values(&["failed"]),
            export_failures,
            access_log,
        })
    }
}
