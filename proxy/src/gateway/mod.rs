//! Gateway mode (`sane-proxy gateway`): an ingress proxy that brings outside
//! traffic into the mesh.
//!
//! It is the sidecar proxy ([`crate::build`]: admin, workload identity, xDS,
//! mesh config, outbound stack) plus public listeners. Along the data path:
//! [`server`] accepts (per-IP limit), terminates TLS with the host's
//! certificate chosen by SNI ([`certs`], reloaded when the files change),
//! serves HTTP/2 or HTTP/1.1 with head size and read-time limits, then runs
//! the [`edge`] layers and [`route`], which picks the mesh service by host
//! and path/headers/method ([`table`]) and hands the request to the
//! outbound stack: mesh routing, retries, timeouts, circuit breaking and
//! metrics as for any app request, mTLS as the gateway's own identity.
//!
//! Configuration: the `gateway` section of the bootstrap file
//! ([`sane_xds_proto::Gateway`]), merged ([`merge`]) with the `Gateway`
//! resources the control plane delivers over xDS to this proxy (those of
//! its namespace whose `selector` its `node.labels` match: Istio Gateways
//! and Gateway API Gateways with their bound routes). With a control plane
//! the section may be absent. The proxy already reloads the file when it
//! changes and applies each xDS push; the gateway recompiles its table
//! whenever the proxy's config version moves and the merged configuration
//! differs, binds the listeners that appeared and closes the delivered ones
//! that went. A configuration that fails to compile (e.g. a missing
//! certificate file, a certificate and key that do not match) is rejected
//! with the field and host named (and, for a delivered host, the
//! `Gateway` resource), and the previous table keeps serving.
//!
//! Architecture invariant: the gateway never opens a connection into the
//! mesh itself; everything goes through [`crate::stack::outbound`].

pub mod certs;
pub mod edge;
pub mod error;
pub mod merge;
pub mod route;
pub mod server;
pub mod table;

pub use error::{EdgeError, GatewayConfigError, GatewayStartError};

use crate::config::ConfigStore;
use crate::drain::DrainOutcome;
use crate::gateway::certs::Refresh;
use crate::gateway::edge::ConnLimiter;
use crate::gateway::merge::{DeliveryOptions, Merged};
use crate::gateway::server::{BoundGatewayListener, Shared};
use crate::gateway::table::GatewayTable;
use crate::workload_port::OwnSockets;
use crate::{Proxy, ProxyHandle};
use arc_swap::ArcSwap;
use prometheus::{IntCounterVec, IntGaugeVec, Opts, Registry};
use sane_xds_proto::{Bootstrap, GatewayListener};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;

/// How often the gateway looks for a new config version and changed
/// certificate files.
const RECONCILE_INTERVAL: Duration = Duration::from_millis(250);

/// A gateway whose sockets are bound, ready to [`run`](Gateway::run).
#[derive(Debug)]
pub struct Gateway {
    proxy: Proxy,
    listeners: Vec<BoundGatewayListener>,
    table: Arc<ArcSwap<GatewayTable>>,
    metrics: GatewayMetrics,
    namespace: String,
    delivery: DeliveryOptions,
}

/// Gateway metrics.
#[derive(Clone, Debug)]
pub struct GatewayMetrics {
    rejections: IntCounterVec,
    config_reloads: IntCounterVec,
    cert_reloads: IntCounterVec,
    /// Open connections per gateway listener.
    pub connections: IntGaugeVec,
}

/// Builds the proxy part from `bootstrap`, compiles its `gateway` section
/// (loading every certificate) and binds the public listeners.
pub async fn build(
    bootstrap: Bootstrap,
    config_path: Option<PathBuf>,
    registry: Registry,
) -> Result<Gateway, GatewayStartError> {
    let origin = config_path
        .as_ref()
        .map_or_else(|| "<inline>".to_string(), |p| p.display().to_string());
    let gw = match (&bootstrap.gateway, &bootstrap.control_plane) {
        (Some(gw), _) => gw.clone(),
        // Everything may be delivered by the control plane.
        (None, Some(_)) => sane_xds_proto::Gateway::default(),
        (None, None) => return Err(GatewayStartError::NotConfigured { path: origin }),
    };
    let namespace = sane_xds_proto::namespace_or_default(&bootstrap.node.namespace).to_string();
    let metrics = GatewayMetrics::register(&registry)?;
    let proxy = crate::build(bootstrap, config_path, registry).await?;
    let table = GatewayTable::compile(&gw, &namespace, None).map_err(|source| {
        GatewayStartError::Config {
            path: origin.clone(),
            source,
        }
    })?;
    let listeners = gw
        .listeners
        .iter()
        .map(BoundGatewayListener::bind)
        .collect::<Result<Vec<_>, _>>()?;
    // The gateway's public ports are the proxy's own: never an inbound target.
    let own = proxy.context().own_sockets;
    listeners.iter().for_each(|l| own.add(l.addr));
    Ok(Gateway {
        proxy,
        listeners,
        table: Arc::new(ArcSwap::from_pointee(table)),
        metrics,
        namespace,
        delivery: DeliveryOptions::default(),
    })
}

/// Checks `bootstrap` the way [`build`] would (mesh config, gateway
/// section, every certificate file) without binding anything.
pub fn check(bootstrap: Bootstrap, origin: &str) -> Result<(), GatewayStartError> {
    let gw = match (&bootstrap.gateway, &bootstrap.control_plane) {
        (Some(gw), _) => gw.clone(),
        (None, Some(_)) => sane_xds_proto::Gateway::default(),
        (None, None) => {
            return Err(GatewayStartError::NotConfigured {
                path: origin.to_string(),
            })
        }
    };
    let namespace = sane_xds_proto::namespace_or_default(&bootstrap.node.namespace).to_string();
    crate::config::Snapshot::compile(bootstrap, 1, None, origin)?;
    GatewayTable::compile(&gw, &namespace, None).map_err(|source| GatewayStartError::Config {
        path: origin.to_string(),
        source,
    })?;
    Ok(())
}

// === impl Gateway ===

impl Gateway {
    /// Every bound socket: the proxy's (admin first), then the gateway's.
    pub fn addresses(&self) -> Vec<(String, SocketAddr)> {
        let mut all = self.proxy.addresses();
        all.extend(self.listeners.iter().map(|l| (l.name.clone(), l.addr)));
        all
    }

    /// A handle to reload or drain.
    pub fn handle(&self) -> ProxyHandle {
        self.proxy.handle()
    }

    /// Where delivered configurations put their listeners and read their
    /// Secrets on this machine (`--listener-ip`, `--credentials-dir`).
    pub fn set_delivery(&mut self, options: DeliveryOptions) {
        self.delivery = options;
    }

    /// Serves until drained.
    pub async fn run(self) -> DrainOutcome {
        let ctx = self.proxy.context();
        let limit = self.table.load().limits.max_connections_per_ip();
        let shared = Shared {
            table: self.table.clone(),
            outbound: crate::stack::outbound(ctx.clone()),
            conn_limit: ConnLimiter::new(limit),
            metrics: self.metrics.clone(),
            limit_metrics: ctx.metrics.limits.clone(),
            https_port: None,
            config: ctx.config.clone(),
        };
        let mut listeners = Listeners {
            running: BTreeMap::new(),
            shared,
            drain: ctx.drain.clone(),
            own: ctx.own_sockets.clone(),
        };
        for l in self.listeners {
            listeners.spawn(l, true);
        }
        let reconciler = Reconciler {
            config: ctx.config.clone(),
            table: self.table,
            metrics: self.metrics,
            namespace: self.namespace,
            delivery: self.delivery,
        };
        tokio::spawn(reconcile(reconciler, listeners, ctx.drain.clone()));
        self.proxy.run().await
    }
}

/// What [`reconcile`] compiles from and into.
struct Reconciler {
    config: Arc<ConfigStore>,
    table: Arc<ArcSwap<GatewayTable>>,
    metrics: GatewayMetrics,
    namespace: String,
    delivery: DeliveryOptions,
}

/// The listeners being served, by name.
struct Listeners {
    running: BTreeMap<String, RunningListener>,
    /// What a new listener's connections share (its `https_port` set per
    /// listener).
    shared: Shared,
    drain: crate::drain::Drain,
    own: Arc<OwnSockets>,
}

struct RunningListener {
    spec: GatewayListener,
    addr: SocketAddr,
    /// From the bootstrap: bound until the next restart.
    bootstrap: bool,
    task: JoinHandle<()>,
}

// === impl Listeners ===

impl Listeners {
    /// Serves `l` (already bound).
    fn spawn(&mut self, l: BoundGatewayListener, bootstrap: bool) {
        let mut shared = self.shared.clone();
        shared.https_port = self
            .running
            .values()
            .map(|r| (r.spec.tls, r.addr))
            .chain(std::iter::once((l.is_tls(), l.addr)))
            .find(|(tls, _)| *tls)
            .map(|(_, a)| a.port());
        if !bootstrap {
            // `build` recorded the bootstrap's.
            self.own.add(l.addr);
        }
        let (name, spec, addr) = (l.name.clone(), l.spec(), l.addr);
        let task = tokio::spawn(l.serve(shared, self.drain.clone()));
        let running = RunningListener {
            spec,
            addr,
            bootstrap,
            task,
        };
        self.running.insert(name, running);
    }

    /// Binds the listeners of `wanted` that are not served yet and closes
    /// the delivered ones it no longer has (or has with other settings).
    /// A listener that cannot be bound is reported and left out.
    async fn converge(&mut self, wanted: &[GatewayListener], metrics: &GatewayMetrics) {
        let gone: Vec<String> = self
            .running
            .iter()
            .filter(|(name, r)| {
                !r.bootstrap && !wanted.iter().any(|w| &w.name == *name && *w == r.spec)
            })
            .map(|(name, _)| name.clone())
            .collect();
        for name in gone {
            if let Some(r) = self.running.remove(&name) {
                // Dropping the accept loop closes the socket; connections
                // already accepted finish (or are drained at shutdown).
                r.task.abort();
                let _ = r.task.await;
                tracing::info!(listener = %name, addr = %r.addr, "gateway listener closed");
            }
        }
        for w in wanted {
            match self.running.get(&w.name) {
                Some(r) if r.spec == *w => continue,
                Some(_) => {
                    tracing::warn!(
                        listener = %w.name,
                        "bootstrap gateway listener changed; it takes effect at the next restart"
                    );
                    continue;
                }
                None => {}
            }
            match BoundGatewayListener::bind(w) {
                Ok(l) => {
                    tracing::info!(listener = %w.name, addr = %l.addr, "gateway listener bound");
                    self.spawn(l, false);
                }
                Err(e) => {
                    metrics
                        .config_reloads
                        .with_label_values(&["listener_error"])
                        .inc();
                    tracing::error!(listener = %w.name, error = %e, "gateway listener not bound");
                }
            }
        }
    }
}

/// The merged configuration of `snapshot`'s bootstrap section and
/// delivered gateways.
fn merged_of(snapshot: &crate::snapshot::Snapshot, delivery: &DeliveryOptions) -> Merged {
    let b = &snapshot.bootstrap;
    merge::merge(b.gateway.as_ref(), &b.resources.gateways, delivery)
}

/// A compile error with the host's origin named (`gateway shop/public
/// hosts[0]: gateway.hosts[2].tls (host "x"): ...` for a delivered host).
fn with_origin(e: &GatewayConfigError, merged: &Merged) -> String {
    let index = e
        .field
        .strip_prefix("gateway.hosts[")
        .and_then(|rest| rest.split_once(']'))
        .and_then(|(i, _)| i.parse::<usize>().ok());
    match index.and_then(|i| merged.host_origins.get(i)) {
        Some(origin) if origin != "bootstrap" => format!("{origin}: {e}"),
        _ => e.to_string(),
    }
}

/// Recompiles the table when the config changes (bootstrap section or
/// delivered gateways), binds and closes listeners to match, and reloads
/// changed certificate files, until the drain starts.
async fn reconcile(r: Reconciler, mut listeners: Listeners, drain: crate::drain::Drain) {
    // The first tick looks at the config whatever its version: gateways may
    // have been delivered before `run`.
    let mut version = None;
    let mut last_rejected: Vec<String> = Vec::new();
    let mut tick = tokio::time::interval(RECONCILE_INTERVAL);
    loop {
        tokio::select! {
            _ = drain.signaled() => return,
            _ = tick.tick() => {}
        }
        let snapshot = r.config.load();
        if version != Some(snapshot.version) {
            version = Some(snapshot.version);
            let merged = merged_of(&snapshot, &r.delivery);
            if merged.rejected != last_rejected {
                for why in &merged.rejected {
                    r.metrics
                        .config_reloads
                        .with_label_values(&["rejected"])
                        .inc();
                    tracing::error!(reason = %why, "delivered gateway configuration left out");
                }
                last_rejected = merged.rejected.clone();
            }
            if merged.gateway != r.table.load().source {
                let current = r.table.load_full();
                // Certificate files and regexes: on the blocking pool,
                // not on the runtime serving connections (`--workers 1`).
                let (gw, ns, cur) = (merged.gateway.clone(), r.namespace.clone(), current.clone());
                let compiled = tokio::task::spawn_blocking(move || {
                    GatewayTable::compile(&gw, &ns, Some(&cur))
                })
                .await;
                let Ok(compiled) = compiled else {
                    tracing::error!(
                        "gateway config compile aborted; still serving the previous one"
                    );
                    continue;
                };
                match compiled {
                    Ok(next) => {
                        let wanted = next.source.listeners.clone();
                        r.table.store(Arc::new(next));
                        // Routes first, then sockets: a new listener serves
                        // the hosts that came with it from its first accept.
                        listeners.converge(&wanted, &r.metrics).await;
                        r.metrics.config_reloads.with_label_values(&["ok"]).inc();
                        tracing::info!(version, "gateway config applied");
                    }
                    Err(e) => {
                        r.metrics.config_reloads.with_label_values(&["error"]).inc();
                        tracing::error!(
                            error = %with_origin(&e, &merged),
                            "gateway config rejected; still serving the previous one"
                        );
                    }
                }
            }
        }
        for cert in r.table.load().certs() {
            match cert.refresh() {
                Ok(Refresh::Unchanged) => {}
                Ok(Refresh::Reloaded) => {
                    r.metrics
                        .cert_reloads
                        .with_label_values(&[&cert.host, "ok"])
                        .inc();
                    tracing::info!(host = %cert.host, "certificate reloaded from disk");
                }
                Err(e) => {
                    r.metrics
                        .cert_reloads
                        .with_label_values(&[&cert.host, "error"])
                        .inc();
                    tracing::error!(
                        error = %e,
                        "certificate files rejected; still serving the previous certificate"
                    );
                }
            }
        }
    }
}

// === impl GatewayMetrics ===

impl GatewayMetrics {
    /// Registers the metrics.
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let counter = |name: &str, help: &str, labels: &[&str]| {
            crate::metric::register_counter_vec(registry, name, help, labels)
        };
        let connections = IntGaugeVec::new(
            Opts::new(
                "sane_gateway_connections_active",
                "Open connections per gateway listener.",
            ),
            &["listener"],
        )?;
        registry.register(Box::new(connections.clone()))?;
        Ok(Self {
            rejections: counter(
                "sane_gateway_rejections_total",
                "Connections and requests the gateway refused at the edge, by reason.",
                &["reason"],
            )?,
            config_reloads: counter(
                "sane_gateway_config_reloads_total",
                "Gateway configurations compiled after a config change, by result.",
                &["result"],
            )?,
            cert_reloads: counter(
                "sane_gateway_cert_reloads_total",
                "Host certificates reloaded from changed files, by host and result.",
                &["host", "result"],
            )?,
            connections,
        })
    }

    /// Counts a refusal (`rate_limited`, `connection_limit`, ...).
    pub fn reject(&self, reason: &str) {
        self.rejections.with_label_values(&[reason]).inc();
    }

    /// The refusal counter of one reason.
    pub fn rejections(&self, reason: &str) -> prometheus::IntCounter {
        self.rejections.with_label_values(&[reason])
    }
}
