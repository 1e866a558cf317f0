//! JSON access logs: one line per request (or TCP connection), to stdout or
//! a file, sampled per the `Telemetry` resource.
//!
//! Requests hand a finished [`AccessLog`] to a bounded queue (`try_send`);
//! one writer task serialises and writes the lines, so a slow disk or pipe
//! never holds up a request: a full queue drops the line and counts it in
//! `sane_access_log_lines_total{result="dropped"}`.

use crate::trace::metrics::TraceMetrics;
use sane_xds_proto::AccessLogConfig;
use serde::Serialize;
use std::io::Write;
use tokio::sync::mpsc;

/// Lines waiting for the writer, at most.
const QUEUE: usize = 4096;

/// One access-log line.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct AccessLog {
    /// RFC 3339 time the request started.
    pub start_time: String,
    /// `inbound` or `outbound`.
    pub direction: &'static str,
    /// W3C trace id.
    pub trace_id: String,
    /// `x-request-id`.
    pub request_id: String,
    /// HTTP method; empty for TCP.
    pub method: String,
    /// Authority (Host).
    pub authority: String,
    /// Path, without the query string.
    pub path: String,
    /// `HTTP/1.1`, `HTTP/2`, `TCP`.
    pub protocol: String,
    /// Response status; 0 for TCP.
    pub status: u16,
    /// gRPC status code (from the trailers, or the headers of a
    /// trailers-only response); empty when not gRPC or none was sent.
    pub grpc_status: String,
    /// Response flags, `-` when none.
    pub response_flags: String,
    /// Until the response ended (its last byte or trailers were handed to
    /// the caller), in milliseconds.
    pub duration_ms: f64,
    /// Request body bytes read from the caller (counted from the body,
    /// not declared); TCP: bytes from the client.
    pub bytes_received: u64,
    /// Response body bytes handed to the caller (counted); TCP: bytes to
    /// the client.
    pub bytes_sent: u64,
    /// `name.namespace` of the destination service.
    pub upstream_service: String,
    /// TCP: the `ip:port` the connection was spliced to (omitted when
    /// empty: HTTP lines, or a connection that never got an upstream).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub upstream_host: String,
    /// The caller's verified SPIFFE id (inbound, mutual TLS).
    pub source_principal: String,
    /// This proxy's SPIFFE id (inbound) or the one the upstream proved over
    /// mutual TLS (outbound; `unknown` without it).
    pub destination_principal: String,
}

/// The sending end of the log queue.
#[derive(Clone, Debug)]
pub struct AccessLogQueue {
    tx: mpsc::Sender<AccessLog>,
    ratio: f64,
    metrics: TraceMetrics,
}

// === impl AccessLogQueue ===

impl AccessLogQueue {
    /// Starts the writer task for `config`.
    pub fn start(config: &AccessLogConfig, metrics: TraceMetrics) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
        let path = match config.path.as_str() {
            "" | "-" => None,
            p => Some(p.to_string()),
        };
        tokio::spawn(write_lines(path, rx, metrics.clone()));
        Self {
            tx,
            ratio: config.effective_sampling_ratio(),
            metrics,
        }
    }

    /// Logs the entry `make` builds, if this request is sampled.
    pub fn push(&self, make: impl FnOnce() -> AccessLog) {
        if self.ratio < 1.0 && rand::random::<f64>() >= self.ratio {
            return;
        }
        if self.tx.try_send(make()).is_err() {
            self.metrics
                .access_log
                .with_label_values(&["dropped"])
                .inc();
        }
    }
}

async fn write_lines(path: Option<String>, mut rx: mpsc::Receiver<AccessLog>, m: TraceMetrics) {
    let mut batch = Vec::with_capacity(256);
    while rx.recv_many(&mut batch, 256).await > 0 {
        let mut text = Vec::new();
        for line in batch.drain(..) {
            if serde_json::to_writer(&mut text, &line).is_ok() {
                text.push(b'\n');
            }
        }
        let n = text.iter().filter(|b| **b == b'\n').count() as u64;
        let path = path.clone();
        // Files and stdout are blocking I/O: keep them off the runtime's
        // worker threads.
        let written = tokio::task::spawn_blocking(move || match path {
            None => std::io::stdout().lock().write_all(&text),
            Some(p) => std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&p)
                .and_then(|mut f| f.write_all(&text)),
        })
        .await;
        let result = match written {
            Ok(Ok(())) => "written",
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "cannot write the access log");
                "failed"
            }
            Err(_) => "failed",
        };
        m.access_log.with_label_values(&[result]).inc_by(n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus::Registry;

    #[tokio::test]
    async fn lines_are_json_and_sampling_zero_logs_nothing() {
        let dir = std::env::temp_dir().join(format!("sane-alog-{}", std::process::id()));
        let _ = std::fs::remove_file(&dir);
        let registry = Registry::new();
        let metrics = TraceMetrics::register(&registry).unwrap();
        let on = AccessLogQueue::start(
            &AccessLogConfig {
                path: dir.display().to_string(),
                sampling_ratio: None,
            },
            metrics.clone(),
        );
        let off = AccessLogQueue::start(
            &AccessLogConfig {
                path: dir.display().to_string(),
                sampling_ratio: Some(0.0),
            },
            metrics.clone(),
        );
        for i in 0..5 {
            off.push(|| panic!("a line that is not sampled is never built"));
            on.push(|| AccessLog {
                method: "GET".into(),
                path: format!("/{i}"),
                status: 200,
                response_flags: "-".into(),
                ..Default::default()
            });
        }
        let start = std::time::Instant::now();
        let text = loop {
            let text = std::fs::read_to_string(&dir).unwrap_or_default();
            if text.lines().count() == 5 || start.elapsed() > std::time::Duration::from_secs(10) {
                break text;
            }
            tokio::task::yield_now().await;
        };
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 5, "{text}");
        assert_eq!(lines[0]["method"], "GET");
        assert_eq!(lines[4]["path"], "/4");
        assert_eq!(lines[0]["status"], 200);
        let _ = std::fs::remove_file(&dir);
    }
}
