//! Metrics, registered into a registry the caller owns.
//!
//! Request metrics use Istio's standard names and labels so existing
//! dashboards work. Labels are bounded: service names and status codes, never
//! raw paths.

use foldhash::fast::RandomState;
use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
};
use std::collections::HashMap;
use std::fmt;
use std::hash::BuildHasher;
use std::sync::{Arc, RwLock};

/// Labels of one HTTP request (Istio's standard set). Every value is from a
/// bounded set: config names, SPIFFE ids of mesh workloads, status codes.
#[derive(Clone, Copy, Debug)]
pub struct RequestLabels<'a> {
    /// `source` (outbound sidecar) or `destination` (inbound sidecar).
    pub reporter: &'a str,
    /// The calling workload, `unknown` when not known.
    pub source_workload: &'a str,
    /// The caller's SPIFFE id, `unknown` without mutual TLS.
    pub source_principal: &'a str,
    /// The called workload, `unknown` when not known.
    pub destination_workload: &'a str,
    /// Destination service host, e.g. `echo.default.svc.cluster.local`.
    pub destination_service: &'a str,
    /// The called workload's SPIFFE id, `unknown` when not known.
    pub destination_principal: &'a str,
    /// `http` or `grpc`.
    pub request_protocol: &'a str,
    /// Status code.
    pub response_code: u16,
    /// `grpc-status` of a gRPC response: from its trailers, or its headers
    /// when trailers-only; empty when not gRPC or none was sent.
    pub grpc_response_status: &'a str,
    /// `mutual_tls` or `none` (inbound), `unknown` (outbound).
    pub connection_security_policy: &'a str,
    /// Response flags, `-` when none.
    pub response_flags: &'a str,
    /// The calling workload's namespace, `unknown` when not known.
    pub source_workload_namespace: &'a str,
    /// The caller's canonical service (Istio's `service.istio.io/canonical-name`).
    pub source_canonical_service: &'a str,
    /// The caller's canonical revision.
    pub source_canonical_revision: &'a str,
    /// The caller's `app` label.
    pub source_app: &'a str,
    /// The caller's `version` label.
    pub source_version: &'a str,
    /// The called workload's namespace, `unknown` when not known.
    pub destination_workload_namespace: &'a str,
    /// Name of the service called (`echo`), `unknown` when not resolved.
    pub destination_service_name: &'a str,
    /// Namespace of the service called.
    pub destination_service_namespace: &'a str,
    /// The called workload's canonical service.
    pub destination_canonical_service: &'a str,
    /// The called workload's canonical revision.
    pub destination_canonical_revision: &'a str,
    /// The called workload's `app` label.
    pub destination_app: &'a str,
    /// The called workload's `version` label.
    pub destination_version: &'a str,
}

/// Request and response body sizes, counted from the body frames that
/// passed (not declared lengths).
#[derive(Clone, Copy, Debug, Default)]
pub struct RequestSizes {
    /// Request body bytes.
    pub request: u64,
    /// Response body bytes.
    pub response: u64,
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
    /// The four `istio_*` request metrics.
    request_vecs: RequestVecs,
    /// The [`RouteSeries`] of each route label set seen, resolved once.
    route_series: Arc<SeriesCache>,
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
    /// Retries, circuit breaking, outlier ejections, faults and mirroring.
    pub resilience: ResilienceMetrics,
    /// Authorization denials, dry-run denials and audits (inbound).
    pub authz: crate::policy::authz::AuthzMetrics,
    /// Connections and request heads cut off by the listeners' limits.
    pub limits: crate::protocol::server::LimitMetrics,
    /// Inbound connections refused for the port they asked for.
    pub inbound_ports: crate::workload_port::PortMetrics,
}

/// What the resilience policies decided. Labels are bounded: cluster names
/// come from config, the others are fixed sets.
#[derive(Clone, Debug)]
pub struct ResilienceMetrics {
    retries: IntCounterVec,
    retries_limited: IntCounterVec,
    overflows: IntCounterVec,
    ejections: IntCounterVec,
    faults: IntCounterVec,
    mirrors: IntCounterVec,
}

/// The four `istio_*` request metrics (clones share the registered ones).
#[derive(Clone, Debug)]
struct RequestVecs {
    requests: IntCounterVec,
    duration: HistogramVec,
    request_bytes: HistogramVec,
    response_bytes: HistogramVec,
}

/// The four `istio_*` request series of one label set.
#[derive(Debug)]
struct RequestSeries {
    requests: IntCounter,
    duration: Histogram,
    request_bytes: Histogram,
    response_bytes: Histogram,
}

/// The outcome labels of one request: the ones [`RouteSeries`] leaves open.
#[derive(Clone, Copy, Debug)]
pub struct Outcome<'a> {
    /// Status code.
    pub response_code: u16,
    /// See [`RequestLabels::grpc_response_status`].
    pub grpc_response_status: &'a str,
    /// Response flags, `-` when none.
    pub response_flags: &'a str,
}

/// The request series of one route and peer: every label of
/// [`RequestLabels`] but the [`Outcome`] fixed, the series of each outcome
/// seen with them resolved once. A caller that keeps the handle (the
/// observe stage keeps it per route and peer, found by pointer compares)
/// records a request with a scan of a few outcomes instead of hashing 22
/// label strings; [`Metrics::request`] resolves one per call.
pub struct RouteSeries {
    vecs: RequestVecs,
    /// The fixed values, in [`REQ_LABELS`] order without the outcome's.
    labels: Box<[Box<str>]>,
    /// Each outcome seen and its series. Bounded like the labels: status
    /// codes, gRPC codes, flag sets.
    outcomes: RwLock<Vec<(OutcomeKey, RequestSeries)>>,
}

/// An [`Outcome`], owned.
#[derive(Debug)]
struct OutcomeKey {
    code: u16,
    grpc: Box<str>,
    flags: Box<str>,
}

/// Route label set → its [`RouteSeries`]. `MetricVec::with_label_values`
/// hashes all 23 labels and takes the vec's lock, four times per request
/// (one per metric); this cache does it once per route label set, and
/// callers that keep the handle skip even that. It holds one entry per
/// label set the vecs hold series for, so it is exactly as bounded as the
/// metrics' labels are, and nothing removes series from the vecs. Hashed
/// with foldhash (seeded per process): SipHash over the ~200 bytes of
/// labels cost more than the lookup it saves; the labels are not
/// attacker-chosen (config names, verified SPIFFE ids).
struct SeriesCache {
    hasher: RandomState,
    /// Hash → the route label sets with that hash.
    map: RwLock<HashMap<u64, Vec<Arc<RouteSeries>>>>,
}

/// Istio's standard labels (Kiali and the Istio dashboards group by them).
const REQ_LABELS: [&str; 23] = [
    "reporter",
    "source_workload",
    "source_principal",
    "destination_workload",
    "destination_service",
    "destination_principal",
    "request_protocol",
    "response_code",
    "grpc_response_status",
    "connection_security_policy",
    "response_flags",
    "source_workload_namespace",
    "source_canonical_service",
    "source_canonical_revision",
    "source_app",
    "source_version",
    "destination_workload_namespace",
    "destination_service_name",
    "destination_service_namespace",
    "destination_canonical_service",
    "destination_canonical_revision",
    "destination_app",
    "destination_version",
];
/// Where the [`Outcome`]'s labels sit in [`REQ_LABELS`] (a
/// [`RouteSeries`] keeps the others).
const RESPONSE_CODE_AT: usize = 7;
const GRPC_STATUS_AT: usize = 8;
const RESPONSE_FLAGS_AT: usize = 10;
/// How many labels a [`RouteSeries`] keeps.
const ROUTE_LABELS: usize = REQ_LABELS.len() - 3;
const BYTE_BUCKETS: [f64; 9] = [
    1.0,
    10.0,
    100.0,
    1000.0,
    10_000.0,
    100_000.0,
    1_000_000.0,
    10_000_000.0,
    100_000_000.0,
];
const TCP_LABELS: [&str; 2] = ["reporter", "destination_service"];

/// Registers `sane_proxy_info{node, namespace, workload} 1`: which proxy a
/// scrape target is, so dashboards and the control plane's `/ui` can join
/// the proxy's other series (certificate expiry, sync state) to its node id.
pub fn register_proxy_info(
    registry: &Registry,
    node: &sane_xds_proto::Node,
) -> Result<(), prometheus::Error> {
    let info = IntGaugeVec::new(
        Opts::new(
            "sane_proxy_info",
            "Always 1; labels name the proxy (node id, namespace, workload).",
        ),
        &["node", "namespace", "workload"],
    )?;
    info.with_label_values(&[&node.id, &node.namespace, &node.workload])
        .set(1);
    registry.register(Box::new(info))
}

/// The `destination_service` label for service key `name.namespace`:
/// Istio's host form, `name.namespace.svc.cluster.local`, shared by HTTP and
/// TCP metrics so dashboards join them.
pub fn istio_host(service_key: &str) -> String {
    format!("{service_key}.svc.cluster.local")
}

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
                "Request duration in milliseconds, until the response ended.",
            )
            .buckets(vec![
                0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0,
                10000.0, 30000.0, 60000.0,
            ]),
            &REQ_LABELS,
        )?;
        let bytes = |name: &str, help: &str| {
            HistogramVec::new(
                HistogramOpts::new(name, help).buckets(BYTE_BUCKETS.to_vec()),
                &REQ_LABELS,
            )
        };
        let request_bytes = bytes("istio_request_bytes", "Request body sizes in bytes.")?;
        let response_bytes = bytes("istio_response_bytes", "Response body sizes in bytes.")?;
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
        // The proxy's own CPU seconds, resident memory, open and max fds,
        // threads (`process_*`, read from /proc at scrape time).
        registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(duration.clone()))?;
        registry.register(Box::new(request_bytes.clone()))?;
        registry.register(Box::new(response_bytes.clone()))?;
        registry.register(Box::new(tcp_opened.clone()))?;
        registry.register(Box::new(tcp_closed.clone()))?;
        registry.register(Box::new(tcp_sent.clone()))?;
        registry.register(Box::new(tcp_received.clone()))?;
        registry.register(Box::new(config_reloads.clone()))?;
        registry.register(Box::new(config_version.clone()))?;
        registry.register(Box::new(connections_active.clone()))?;
        registry.register(Box::new(detect_seconds.clone()))?;
        registry.register(Box::new(connections_refused.clone()))?;
        let resilience = ResilienceMetrics::register(registry)?;
        let authz = crate::policy::authz::AuthzMetrics::register(registry)?;
        let limits = crate::protocol::server::LimitMetrics::register(registry)?;
        let inbound_ports = crate::workload_port::PortMetrics::register(registry)?;
        Ok(Self {
            request_vecs: RequestVecs {
                requests,
                duration,
                request_bytes,
                response_bytes,
            },
            route_series: Arc::new(SeriesCache {
                hasher: RandomState::default(),
                map: RwLock::default(),
            }),
            tcp_opened,
            tcp_closed,
            tcp_sent,
            tcp_received,
            config_reloads,
            config_version,
            connections_active,
            detect_seconds,
            connections_refused,
            resilience,
            authz,
            limits,
            inbound_ports,
        })
    }

    /// Records one finished request (resolving its [`RouteSeries`]: a
    /// caller recording many requests of one route and peer keeps the one
    /// [`Metrics::route_series`] returns instead).
    pub fn request(&self, l: RequestLabels<'_>, millis: f64, sizes: RequestSizes) {
        let outcome = Outcome {
            response_code: l.response_code,
            grpc_response_status: l.grpc_response_status,
            response_flags: l.response_flags,
        };
        self.route_series(&l).record(outcome, millis, sizes);
    }

    /// The series of `l`'s route and peer; `l`'s [`Outcome`] fields
    /// (`response_code`, `grpc_response_status`, `response_flags`) are not
    /// read. The same label values always give the same series.
    pub fn route_series(&self, l: &RequestLabels<'_>) -> Arc<RouteSeries> {
        // In `REQ_LABELS` order, without the outcome's labels.
        let strings: [&str; ROUTE_LABELS] = [
            l.reporter,
            l.source_workload,
            l.source_principal,
            l.destination_workload,
            l.destination_service,
            l.destination_principal,
            l.request_protocol,
            l.connection_security_policy,
            l.source_workload_namespace,
            l.source_canonical_service,
            l.source_canonical_revision,
            l.source_app,
            l.source_version,
            l.destination_workload_namespace,
            l.destination_service_name,
            l.destination_service_namespace,
            l.destination_canonical_service,
            l.destination_canonical_revision,
            l.destination_app,
            l.destination_version,
        ];
        let cache = &self.route_series;
        let hash = cache.hasher.hash_one(strings);
        let same = |s: &&Arc<RouteSeries>| s.labels.iter().map(|l| &**l).eq(strings);
        {
            let map = cache.map.read().unwrap_or_else(|p| p.into_inner());
            if let Some(series) = map.get(&hash).and_then(|b| b.iter().find(same)) {
                return series.clone();
            }
        }
        let mut map = cache.map.write().unwrap_or_else(|p| p.into_inner());
        let bucket = map.entry(hash).or_default();
        // Another request may have added it meanwhile.
        if let Some(series) = bucket.iter().find(same) {
            return series.clone();
        }
        let series = Arc::new(RouteSeries {
            vecs: self.request_vecs.clone(),
            labels: strings.iter().map(|s| Box::from(*s)).collect(),
            outcomes: RwLock::default(),
        });
        bucket.push(series.clone());
        series
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

// === impl RouteSeries ===

impl RouteSeries {
    /// Records one finished request of this route and peer with `outcome`.
    pub fn record(&self, outcome: Outcome<'_>, millis: f64, sizes: RequestSizes) {
        let record = |s: &RequestSeries| {
            s.requests.inc();
            s.duration.observe(millis);
            s.request_bytes.observe(sizes.request as f64);
            s.response_bytes.observe(sizes.response as f64);
        };
        let same = |(k, _): &&(OutcomeKey, RequestSeries)| {
            k.code == outcome.response_code
                && *k.flags == *outcome.response_flags
                && *k.grpc == *outcome.grpc_response_status
        };
        {
            let outcomes = self.outcomes.read().unwrap_or_else(|p| p.into_inner());
            if let Some((_, series)) = outcomes.iter().find(same) {
                record(series);
                return;
            }
        }
        let code = outcome.response_code.to_string();
        let mut values: Vec<&str> = Vec::with_capacity(REQ_LABELS.len());
        let mut fixed = self.labels.iter().map(|l| &**l);
        for at in 0..REQ_LABELS.len() {
            values.push(match at {
                RESPONSE_CODE_AT => code.as_str(),
                GRPC_STATUS_AT => outcome.grpc_response_status,
                RESPONSE_FLAGS_AT => outcome.response_flags,
                _ => fixed.next().expect("ROUTE_LABELS values"),
            });
        }
        let v = &self.vecs;
        let series = RequestSeries {
            requests: v.requests.with_label_values(&values),
            duration: v.duration.with_label_values(&values),
            request_bytes: v.request_bytes.with_label_values(&values),
            response_bytes: v.response_bytes.with_label_values(&values),
        };
        record(&series);
        let mut outcomes = self.outcomes.write().unwrap_or_else(|p| p.into_inner());
        // Another request may have added it meanwhile.
        if !outcomes.iter().any(|e| same(&e)) {
            let key = OutcomeKey {
                code: outcome.response_code,
                grpc: outcome.grpc_response_status.into(),
                flags: outcome.response_flags.into(),
            };
            outcomes.push((key, series));
        }
    }
}

impl fmt::Debug for RouteSeries {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let outcomes = self.outcomes.read().map_or(0, |o| o.len());
        f.debug_struct("RouteSeries")
            .field("labels", &self.labels)
            .field("outcomes", &outcomes)
            .finish()
    }
}

// === impl SeriesCache ===

impl fmt::Debug for SeriesCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (routes, series) = self.map.read().map_or((0, 0), |m| {
            let routes = m.values().flatten();
            let series = routes
                .clone()
                .map(|r| r.outcomes.read().map_or(0, |o| o.len()));
            (routes.count(), series.sum::<usize>())
        });
        f.debug_struct("SeriesCache")
            .field("routes", &routes)
            .field("series", &series)
            .finish()
    }
}

// === impl ResilienceMetrics ===

impl ResilienceMetrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let counter = |name: &str, help: &str, labels: &[&str]| {
            crate::metric::register_counter_vec(registry, name, help, labels)
        };
        Ok(Self {
            retries: counter(
                "sane_retries_total",
                "Retries sent, by destination cluster.",
                &["cluster"],
            )?,
            retries_limited: counter(
                "sane_retries_limited_total",
                "Retries a policy asked for but a limit stopped, by cluster and \
                 limit (attempts, budget, max_retries).",
                &["cluster", "limit"],
            )?,
            overflows: counter(
                "sane_circuit_breaker_overflows_total",
                "Requests shed by a circuit breaker, by cluster and limit.",
                &["cluster", "limit"],
            )?,
            ejections: counter(
                "sane_outlier_ejections_total",
                "Endpoints ejected by outlier detection, by cluster.",
                &["cluster"],
            )?,
            faults: counter(
                "sane_faults_injected_total",
                "Faults injected, by kind (delay, abort).",
                &["kind"],
            )?,
            mirrors: counter(
                "sane_mirrored_requests_total",
                "Mirrored requests, by shadow cluster and result (sent, failed, \
                 skipped_body, skipped_busy).",
                &["cluster", "result"],
            )?,
        })
    }

    /// One retry sent to `cluster`.
    pub fn retry(&self, cluster: &str) {
        self.retries.with_label_values(&[cluster]).inc();
    }

    /// One retry to `cluster` stopped by `limit`.
    pub fn retry_limited(&self, cluster: &str, limit: &str) {
        self.retries_limited
            .with_label_values(&[cluster, limit])
            .inc();
    }

    /// One request to `cluster` shed by `limit`.
    pub fn overflow(&self, cluster: &str, limit: &str) {
        self.overflows.with_label_values(&[cluster, limit]).inc();
    }

    /// One endpoint of `cluster` ejected.
    pub fn ejection(&self, cluster: &str) {
        self.ejections.with_label_values(&[cluster]).inc();
    }

    /// One fault of `kind` injected.
    pub fn fault(&self, kind: &str) {
        self.faults.with_label_values(&[kind]).inc();
    }

    /// One mirrored request to `cluster` with `result`.
    pub fn mirror(&self, cluster: &str, result: &str) {
        self.mirrors.with_label_values(&[cluster, result]).inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn process_metrics_describe_this_process() {
        let registry = Registry::new();
        let _m = Metrics::register(&registry).unwrap();
        let value = |name: &str| {
            registry
                .gather()
                .iter()
                .find(|f| f.name() == name)
                .map(|f| f.get_metric()[0].get_gauge().get_value())
                .unwrap_or_else(|| panic!("no {name}"))
        };
        assert!(value("process_resident_memory_bytes") > 1_000_000.0);
        assert!(value("process_open_fds") >= 3.0);
        assert!(value("process_threads") >= 1.0);
    }

    #[test]
    fn records_with_istio_names() {
        let registry = Registry::new();
        let m = Metrics::register(&registry).unwrap();
        m.request(
            RequestLabels {
                reporter: "destination",
                source_workload: "client",
                source_principal: "spiffe://cluster.local/ns/default/sa/client",
                destination_workload: "echo",
                destination_service: "echo.default.svc.cluster.local",
                destination_principal: "spiffe://cluster.local/ns/default/sa/echo",
                request_protocol: "http",
                response_code: 200,
                grpc_response_status: "",
                connection_security_policy: "mutual_tls",
                response_flags: "-",
                source_workload_namespace: "default",
                source_canonical_service: "client",
                source_canonical_revision: "latest",
                source_app: "client",
                source_version: "v1",
                destination_workload_namespace: "default",
                destination_service_name: "echo",
                destination_service_namespace: "default",
                destination_canonical_service: "echo",
                destination_canonical_revision: "v2",
                destination_app: "echo",
                destination_version: "v2",
            },
            3.0,
            RequestSizes {
                request: 5,
                response: 2000,
            },
        );
        let text = prometheus::TextEncoder::new()
            .encode_to_string(&registry.gather())
            .unwrap();
        assert!(text.contains("istio_requests_total{connection_security_policy=\"mutual_tls\",destination_app=\"echo\",destination_canonical_revision=\"v2\",destination_canonical_service=\"echo\",destination_principal=\"spiffe://cluster.local/ns/default/sa/echo\",destination_service=\"echo.default.svc.cluster.local\",destination_service_name=\"echo\",destination_service_namespace=\"default\",destination_version=\"v2\",destination_workload=\"echo\",destination_workload_namespace=\"default\",grpc_response_status=\"\",reporter=\"destination\",request_protocol=\"http\",response_code=\"200\",response_flags=\"-\",source_app=\"client\",source_canonical_revision=\"latest\",source_canonical_service=\"client\",source_principal=\"spiffe://cluster.local/ns/default/sa/client\",source_version=\"v1\",source_workload=\"client\",source_workload_namespace=\"default\"} 1"), "{text}");
        assert!(text.contains("istio_request_bytes_bucket{"), "{text}");
        assert!(text.contains("istio_response_bytes_sum{"), "{text}");
        assert!(text.contains("istio_request_duration_milliseconds_bucket"));
    }

    /// An outbound request's labels, with this outcome.
    fn client_labels(code: u16, flags: &str) -> RequestLabels<'_> {
        RequestLabels {
            reporter: "source",
            source_workload: "client",
            source_principal: "unknown",
            destination_workload: "unknown",
            destination_service: "echo.default.svc.cluster.local",
            destination_principal: "unknown",
            request_protocol: "http",
            response_code: code,
            grpc_response_status: "",
            connection_security_policy: "unknown",
            response_flags: flags,
            source_workload_namespace: "default",
            source_canonical_service: "client",
            source_canonical_revision: "latest",
            source_app: "unknown",
            source_version: "unknown",
            destination_workload_namespace: "unknown",
            destination_service_name: "echo",
            destination_service_namespace: "default",
            destination_canonical_service: "unknown",
            destination_canonical_revision: "unknown",
            destination_app: "unknown",
            destination_version: "unknown",
        }
    }

    /// `istio_requests_total` by `(source_workload, response_code,
    /// response_flags)`.
    fn request_counts(registry: &Registry) -> Vec<(String, String, String, f64)> {
        let families = registry.gather();
        let family = families
            .iter()
            .find(|f| f.name() == "istio_requests_total")
            .expect("istio_requests_total");
        let mut counts: Vec<_> = (family.get_metric().iter())
            .map(|m| {
                let label = |name: &str| {
                    (m.get_label().iter())
                        .find(|l| l.name() == name)
                        .map(|l| l.value().to_string())
                        .unwrap_or_default()
                };
                (
                    label("source_workload"),
                    label("response_code"),
                    label("response_flags"),
                    m.get_counter().get_value(),
                )
            })
            .collect();
        counts.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
        counts
    }

    #[test]
    fn a_kept_route_series_records_each_outcome_under_its_labels() {
        let registry = Registry::new();
        let m = Metrics::register(&registry).unwrap();
        let kept = m.route_series(&client_labels(200, "-"));
        assert!(
            Arc::ptr_eq(&kept, &m.route_series(&client_labels(503, "UH"))),
            "the outcome is not part of a route's labels"
        );
        let sizes = RequestSizes::default();
        for (code, flags) in [(200, "-"), (200, "-"), (503, "UH")] {
            let outcome = Outcome {
                response_code: code,
                grpc_response_status: "",
                response_flags: flags,
            };
            kept.record(outcome, 1.0, sizes);
        }
        // A caller resolving the same labels lands in the same series.
        m.request(client_labels(200, "-"), 1.0, sizes);
        // Another peer is another route series.
        let other = RequestLabels {
            source_workload: "other",
            ..client_labels(200, "-")
        };
        assert!(!Arc::ptr_eq(&kept, &m.route_series(&other)));
        m.request(other, 1.0, sizes);
        let row = |w: &str, c: &str, f: &str, n| (w.into(), c.into(), f.into(), n);
        assert_eq!(
            request_counts(&registry),
            vec![
                row("client", "200", "-", 3.0),
                row("client", "503", "UH", 1.0),
                row("other", "200", "-", 1.0),
            ]
        );
    }

    #[test]
    fn repeated_label_sets_share_their_series() {
        let registry = Registry::new();
        let m = Metrics::register(&registry).unwrap();
        let labels = client_labels;
        let sizes = RequestSizes {
            request: 1,
            response: 10,
        };
        for _ in 0..3 {
            m.request(labels(200, "-"), 1.0, sizes);
        }
        m.request(labels(503, "UH"), 1.0, sizes);
        m.request(labels(200, "UH"), 1.0, sizes);
        let families = registry.gather();
        let family = |name: &str| {
            families
                .iter()
                .find(|f| f.name() == name)
                .unwrap_or_else(|| panic!("no {name}"))
        };
        let requests = family("istio_requests_total");
        assert_eq!(requests.get_metric().len(), 3);
        let count = |code: &str, flags: &str| {
            requests
                .get_metric()
                .iter()
                .find(|m| {
                    let has = |n: &str, v: &str| {
                        m.get_label()
                            .iter()
                            .any(|l| l.name() == n && l.value() == v)
                    };
                    has("response_code", code) && has("response_flags", flags)
                })
                .map(|m| m.get_counter().get_value())
        };
        assert_eq!(count("200", "-"), Some(3.0));
        assert_eq!(count("503", "UH"), Some(1.0));
        assert_eq!(count("200", "UH"), Some(1.0));
        let duration = family("istio_request_duration_milliseconds");
        assert_eq!(duration.get_metric().len(), 3);
        let bytes = family("istio_response_bytes");
        let total: f64 = (bytes.get_metric().iter())
            .map(|m| m.get_histogram().get_sample_sum())
            .sum();
        assert_eq!(total, 50.0);
        assert_eq!(format!("{m:?}").matches("series: 3").count(), 1, "{m:?}");
    }
}
