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
//! ([`sane_xds_proto::Gateway`]). The proxy already reloads that file when
//! it changes; the gateway recompiles its table whenever the proxy's config
//! version moves and the section differs. A section that fails to compile
//! (e.g. a certificate and key that do not match) is rejected with the
//! field and host named, and the previous table keeps serving.
//!
//! Architecture invariant: the gateway never opens a connection into the
//! mesh itself; everything goes through [`crate::stack::outbound`].

pub mod certs;
pub mod edge;
pub mod error;
pub mod route;
pub mod server;
pub mod table;

pub use error::{EdgeError, GatewayConfigError, GatewayStartError};

use crate::config::ConfigStore;
use crate::drain::DrainOutcome;
use crate::gateway::certs::Refresh;
use crate::gateway::edge::ConnLimiter;
use crate::gateway::server::{BoundGatewayListener, Shared};
use crate::gateway::table::GatewayTable;
use crate::{Proxy, ProxyHandle};
use arc_swap::ArcSwap;
use prometheus::{IntCounterVec, IntGaugeVec, Opts, Registry};
use sane_xds_proto::Bootstrap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

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
    let Some(gw) = bootstrap.gateway.clone() else {
        return Err(GatewayStartError::NotConfigured { path: origin });
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
    })
}

/// Checks `bootstrap` the way [`build`] would (mesh config, gateway
/// section, every certificate file) without binding anything.
pub fn check(bootstrap: Bootstrap, origin: &str) -> Result<(), GatewayStartError> {
    let Some(gw) = bootstrap.gateway.clone() else {
        return Err(GatewayStartError::NotConfigured {
            path: origin.to_string(),
        });
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

    /// Serves until drained.
    pub async fn run(self) -> DrainOutcome {
        let ctx = self.proxy.context();
        let https_port = self
            .listeners
            .iter()
            .find(|l| l.is_tls())
            .map(|l| l.addr.port());
        let limit = self.table.load().limits.max_connections_per_ip();
        let shared = Shared {
            table: self.table.clone(),
            outbound: crate::stack::outbound(ctx.clone()),
            conn_limit: ConnLimiter::new(limit),
            metrics: self.metrics.clone(),
            limit_metrics: ctx.metrics.limits.clone(),
            https_port,
            config: ctx.config.clone(),
        };
        for l in self.listeners {
            tokio::spawn(l.serve(shared.clone(), ctx.drain.clone()));
        }
        tokio::spawn(reconcile(
            ctx.config.clone(),
            self.table,
            self.metrics,
            self.namespace,
            ctx.drain.clone(),
        ));
        self.proxy.run().await
    }
}

/// Recompiles the table when the config changes and reloads changed
/// certificate files, until the drain starts.
async fn reconcile(
    config: Arc<ConfigStore>,
    table: Arc<ArcSwap<GatewayTable>>,
    metrics: GatewayMetrics,
    namespace: String,
    drain: crate::drain::Drain,
) {
    let mut version = config.load().version;
    let mut tick = tokio::time::interval(RECONCILE_INTERVAL);
    loop {
        tokio::select! {
            _ = drain.signaled() => return,
            _ = tick.tick() => {}
        }
        let snapshot = config.load();
        if snapshot.version != version {
            version = snapshot.version;
            match &snapshot.bootstrap.gateway {
                None => tracing::error!(
                    "the gateway section was removed from the config; still serving the previous one"
                ),
                Some(gw) if *gw == table.load().source => {}
                Some(gw) => {
                    let current = table.load_full();
                    // Certificate files and regexes: on the blocking pool,
                    // not on the runtime serving connections (`--workers 1`).
                    let (gw, ns, cur) = (gw.clone(), namespace.clone(), current.clone());
                    let compiled = tokio::task::spawn_blocking(move || {
                        GatewayTable::compile(&gw, &ns, Some(&cur))
                    })
                    .await;
                    let Ok(compiled) = compiled else {
                        tracing::error!("gateway config compile aborted; still serving the previous one");
                        continue;
                    };
                    match compiled {
                        Ok(next) => {
                            if next.source.listeners != current.source.listeners {
                                tracing::warn!(
                                    "gateway listeners changed; they take effect at the next restart"
                                );
                            }
                            table.store(Arc::new(next));
                            metrics.config_reloads.with_label_values(&["ok"]).inc();
                            tracing::info!(version, "gateway config applied");
                        }
                        Err(e) => {
                            metrics.config_reloads.with_label_values(&["error"]).inc();
                            tracing::error!(
                                error = %e,
                                "gateway config rejected; still serving the previous one"
                            );
                        }
                    }
                }
            }
        }
        for cert in table.load().certs() {
            match cert.refresh() {
                Ok(Refresh::Unchanged) => {}
                Ok(Refresh::Reloaded) => {
                    metrics
                        .cert_reloads
                        .with_label_values(&[&cert.host, "ok"])
                        .inc();
                    tracing::info!(host = %cert.host, "certificate reloaded from disk");
                }
                Err(e) => {
                    metrics
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
