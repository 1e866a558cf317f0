//! Metrics, registered into a registry the caller owns.
//!
//! Request metrics use Istio's standard names and labels so existing
//! dashboards work. Labels are bounded: service names and status codes, never
//! raw paths.

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
};

/// Labels of one HTTP request.
#[derive(Clone, Copy, Debug)]
pub struct RequestLabels<'a> {
    /// `source` (outbound sidecar) or `destination` (inbound sidecar).
    pub reporter: &'a str,
    /// Destination service host, e.g. `echo.default.svc.cluster.local`.
    pub destination_service: &'a str,
    /// `http` or `grpc`.
    pub request_protocol: &'a str,
    /// Status code.
    pub response_code: u16,
    /// Response flags, `-` when none.
    pub response_flags: &'a str,
}

/// Labels of one TCP connection.
#[derive(Clone, Copy, Debug)]
pub struct TcpLabels<'a> {
    /// `source` or `destination`.
    pub reporter: &'a str,
    /// Destination service host.
    pub destination_service: &'a str,
}

/// All proxy metrics.
#[derive(Clone, Debug)]
pub struct Metrics {
    requests: IntCounterVec,
    duration: HistogramVec,
    tcp_opened: IntCounterVec,
    tcp_closed: IntCounterVec,
    tcp_sent: IntCounterVec,
    tcp_received: IntCounterVec,
    /// Config reloads by result (`ok`, `error`).
    pub config_reloads: IntCounterVec,
    /// Version of the config being served.
    pub config_version: IntGauge,
    /// Accepted connections currently open, by listener.
    pub connections_active: IntGaugeVec,
    /// Protocol detection time on inbound connections.
    pub detect_seconds: Histogram,
    /// Connections refused because a listener was at its limit.
    pub connections_refused: IntCounter,
}

const REQ_LABELS: [&str; 5] = [
    "reporter",
    "destination_service",
    "request_protocol",
    "response_code",
    "response_flags",
];
const TCP_LABELS: [&str; 2] = ["reporter", "destination_service"];

// === impl Metrics ===

impl Metrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let requests = IntCounterVec::new(
            Opts::new("istio_requests_total", "Requests handled, by outcome."),
            &REQ_LABELS,
        )?;
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "istio_request_duration_milliseconds",
                "Request duration in milliseconds, until the response headers.",
            )
            .buckets(vec![
                0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0,
                10000.0, 30000.0, 60000.0,
            ]),
            &REQ_LABELS,
        )?;
        let tcp = |name: &str, help: &str| IntCounterVec::new(Opts::new(name, help), &TCP_LABELS);
        let tcp_opened = tcp(
            "istio_tcp_connections_opened_total",
            "TCP connections opened.",
        )?;
        let tcp_closed = tcp(
            "istio_tcp_connections_closed_total",
            "TCP connections closed.",
        )?;
        let tcp_sent = tcp("istio_tcp_sent_bytes_total", "Bytes sent to the upstream.")?;
        let tcp_received = tcp(
            "istio_tcp_received_bytes_total",
            "Bytes received from the upstream.",
        )?;
        let config_reloads = IntCounterVec::new(
            Opts::new(
                "sane_config_reloads_total",
                "Config reload attempts, by result.",
            ),
            &["result"],
        )?;
        let config_version = IntGauge::new("sane_config_version", "Version of the config served.")?;
        let connections_active = IntGaugeVec::new(
            Opts::new(
                "sane_connections_active",
                "Open accepted connections, by listener.",
            ),
            &["listener"],
        )?;
        let detect_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "sane_protocol_detect_seconds",
                "Time to detect the protocol of an inbound connection.",
            )
            .buckets(vec![0.0001, 0.001, 0.01, 0.1, 1.0, 10.0]),
        )?;
        let connections_refused = IntCounter::new(
            "sane_connections_refused_total",
            "Connections closed at accept because a limit was reached.",
        )?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(duration.clone()))?;
        registry.register(Box::new(tcp_opened.clone()))?;
        registry.register(Box::new(tcp_closed.clone()))?;
        registry.register(Box::new(tcp_sent.clone()))?;
        registry.register(Box::new(tcp_received.clone()))?;
        registry.register(Box::new(config_reloads.clone()))?;
        registry.register(Box::new(config_version.clone()))?;
        registry.register(Box::new(connections_active.clone()))?;
        registry.register(Box::new(detect_seconds.clone()))?;
        registry.register(Box::new(connections_refused.clone()))?;
        Ok(Self {
            requests,
            duration,
            tcp_opened,
            tcp_closed,
            tcp_sent,
            tcp_received,
            config_reloads,
            config_version,
            connections_active,
            detect_seconds,
            connections_refused,
        })
    }

    /// Records one finished request.
    pub fn request(&self, l: RequestLabels<'_>, millis: f64) {
        let code = l.response_code.to_string();
        let values = [
            l.reporter,
            l.destination_service,
            l.request_protocol,
            code.as_str(),
            l.response_flags,
        ];
        self.requests.with_label_values(&values).inc();
        self.duration.with_label_values(&values).observe(millis);
    }

    /// Records an opened TCP connection.
    pub fn tcp_open(&self, l: TcpLabels<'_>) {
        self.tcp_opened
            .with_label_values(&[l.reporter, l.destination_service])
            .inc();
    }

    /// Records a closed TCP connection and its byte counts.
    pub fn tcp_close(&self, l: TcpLabels<'_>, sent: u64, received: u64) {
        let v = [l.reporter, l.destination_service];
        self.tcp_closed.with_label_values(&v).inc();
        self.tcp_sent.with_label_values(&v).inc_by(sent);
        self.tcp_received.with_label_values(&v).inc_by(received);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_with_istio_names() {
        let registry = Registry::new();
        let m = Metrics::register(&registry).unwrap();
        m.request(
            RequestLabels {
                reporter: "source",
                destination_service: "echo.default.svc.cluster.local",
                request_protocol: "http",
                response_code: 200,
                response_flags: "-",
            },
            3.0,
        );
        let text = prometheus::TextEncoder::new()
            .encode_to_string(&registry.gather())
            .unwrap();
        assert!(text.contains("istio_requests_total{destination_service=\"echo.default.svc.cluster.local\",reporter=\"source\",request_protocol=\"http\",response_code=\"200\",response_flags=\"-\"} 1"), "{text}");
        assert!(text.contains("istio_request_duration_milliseconds_bucket"));
    }
}
