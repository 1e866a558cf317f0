//! Control-plane metrics. The prometheus registry is owned by `main` (or a
//! test) and passed in; nothing here is global.
//!
//! | metric                                  | type      | labels |
//! |-----------------------------------------|-----------|--------|
//! | `sane_cp_connected_proxies`             | gauge     |        |
//! | `sane_cp_registry_revision`             | gauge     |        |
//! | `sane_cp_xds_pushes_total`              | counter   | `type` |
//! | `sane_cp_xds_push_latency_seconds`      | histogram | `type` |
//! | `sane_cp_xds_nacks_total`               | counter   | `type` |
//! | `sane_cp_xds_resumed_total`             | counter   | `type` |
//! | `sane_cp_convergence_seconds`           | histogram |        |
//! | `sane_cp_xds_streams_rejected_total`    | counter   | `reason` |
//!
//! Push latency runs from the event that caused a push (the first registry
//! write of a batch, or the client's request) to the response being queued on
//! the stream. Convergence runs from the first write of a batch to the moment
//! every connected proxy has ACKed the resulting revision.

use crate::error::Error;
use prometheus::{Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts, Registry};
use sane_xds_proto::TypeUrl;
use std::time::Duration;

/// Every metric of the control plane.
#[derive(Clone, Debug)]
pub struct Metrics {
    connected_proxies: IntGauge,
    registry_revision: IntGauge,
    pushes: IntCounterVec,
    push_latency: HistogramVec,
    nacks: IntCounterVec,
    resumed: IntCounterVec,
    convergence: Histogram,
    streams_rejected: IntCounterVec,
}

/// The label set of per-type metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TypeLabels {
    /// The xDS type's short name: [`short_type_name`] for mesh types,
    /// `envoy.Cluster` and the like for Envoy types.
    pub type_name: &'static str,
}

const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

// === impl TypeLabels ===

impl TypeLabels {
    const NAMES: [&'static str; 1] = ["type"];

    fn values(&self) -> [&'static str; 1] {
        [self.type_name]
    }
}

/// The message name of a type URL: `Service`, `DestinationPolicy`, ...
pub fn short_type_name(t: TypeUrl) -> &'static str {
    t.as_str().rsplit('.').next().unwrap_or(t.as_str())
}

// === impl Metrics ===

impl Metrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn register(registry: &Registry) -> Result<Metrics, Error> {
        let m = Metrics {
            connected_proxies: IntGauge::new(
                "sane_cp_connected_proxies",
                "xDS streams currently connected, by proxy",
            )
            .map_err(err("sane_cp_connected_proxies"))?,
            registry_revision: IntGauge::new(
                "sane_cp_registry_revision",
                "Registry revision last published to proxies",
            )
            .map_err(err("sane_cp_registry_revision"))?,
            pushes: IntCounterVec::new(
                Opts::new("sane_cp_xds_pushes_total", "xDS responses sent"),
                &TypeLabels::NAMES,
            )
            .map_err(err("sane_cp_xds_pushes_total"))?,
            push_latency: HistogramVec::new(
                HistogramOpts::new(
                    "sane_cp_xds_push_latency_seconds",
                    "From the cause of a push (write or request) to the response being queued",
                )
                .buckets(LATENCY_BUCKETS.to_vec()),
                &TypeLabels::NAMES,
            )
            .map_err(err("sane_cp_xds_push_latency_seconds"))?,
            nacks: IntCounterVec::new(
                Opts::new(
                    "sane_cp_xds_nacks_total",
                    "xDS responses rejected by proxies",
                ),
                &TypeLabels::NAMES,
            )
            .map_err(err("sane_cp_xds_nacks_total"))?,
            resumed: IntCounterVec::new(
                Opts::new(
                    "sane_cp_xds_resumed_total",
                    "Types a new state-of-the-world stream did not send because the client \
                     already held their current version (a proxy resuming, e.g. after failing \
                     over from another replica)",
                ),
                &TypeLabels::NAMES,
            )
            .map_err(err("sane_cp_xds_resumed_total"))?,
            convergence: Histogram::with_opts(
                HistogramOpts::new(
                    "sane_cp_convergence_seconds",
                    "From a registry write to its ACK by every connected proxy",
                )
                .buckets(LATENCY_BUCKETS.to_vec()),
            )
            .map_err(err("sane_cp_convergence_seconds"))?,
            streams_rejected: IntCounterVec::new(
                Opts::new(
                    "sane_cp_xds_streams_rejected_total",
                    "xDS streams refused: token missing, unknown or not checkable now, \
                     or a node outside its token's namespace",
                ),
                &["reason"],
            )
            .map_err(err("sane_cp_xds_streams_rejected_total"))?,
        };
        let collectors: [(&'static str, Box<dyn prometheus::core::Collector>); 8] = [
            (
                "sane_cp_connected_proxies",
                Box::new(m.connected_proxies.clone()),
            ),
            (
                "sane_cp_registry_revision",
                Box::new(m.registry_revision.clone()),
            ),
            ("sane_cp_xds_pushes_total", Box::new(m.pushes.clone())),
            (
                "sane_cp_xds_push_latency_seconds",
                Box::new(m.push_latency.clone()),
            ),
            ("sane_cp_xds_nacks_total", Box::new(m.nacks.clone())),
            ("sane_cp_xds_resumed_total", Box::new(m.resumed.clone())),
            (
                "sane_cp_convergence_seconds",
                Box::new(m.convergence.clone()),
            ),
            (
                "sane_cp_xds_streams_rejected_total",
                Box::new(m.streams_rejected.clone()),
            ),
        ];
        for (name, c) in collectors {
            registry.register(c).map_err(err(name))?;
        }
        Ok(m)
    }

    /// Metrics registered nowhere (tests that do not read them).
    pub fn unregistered() -> Metrics {
        // Registering into a fresh registry cannot collide.
        Metrics::register(&Registry::new()).expect("fresh registry")
    }

    pub(crate) fn set_connected(&self, n: usize) {
        self.connected_proxies.set(n as i64);
    }

    pub(crate) fn set_revision(&self, revision: u64) {
        self.registry_revision.set(revision as i64);
    }

    pub(crate) fn pushed(&self, labels: TypeLabels, latency: Duration) {
        self.pushes.with_label_values(&labels.values()).inc();
        self.push_latency
            .with_label_values(&labels.values())
            .observe(latency.as_secs_f64());
    }

    pub(crate) fn nacked(&self, labels: TypeLabels) {
        self.nacks.with_label_values(&labels.values()).inc();
    }

    pub(crate) fn resumed(&self, labels: TypeLabels) {
        self.resumed.with_label_values(&labels.values()).inc();
    }

    pub(crate) fn stream_rejected(&self, reason: &'static str) {
        self.streams_rejected.with_label_values(&[reason]).inc();
    }

    pub(crate) fn converged(&self, after: Duration) {
        self.convergence.observe(after.as_secs_f64());
    }
}

fn err(name: &'static str) -> impl Fn(prometheus::Error) -> Error {
    move |source| Error::Metrics { name, source }
}
