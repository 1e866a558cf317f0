//! The admin server (HTTP/1.1, loopback only): `/ready`, `/live`,
//! `/metrics`, `/config_dump`, `/certs` (identity, serial, validity and trust
//! bundle; never key material), and `POST /drain`.

use crate::body::{self, Body};
use crate::drain::{Drain, Readiness};
use crate::protocol::local::{serve_local, text};
use crate::snapshot::ConfigStore;
use http::{header, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use prometheus::{Encoder, IntCounter, Registry, TextEncoder};
use serde_json::json;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// State the admin endpoints read.
#[derive(Clone, Debug)]
pub struct Admin {
    /// Current config.
    pub config: Arc<ConfigStore>,
    /// Metrics registry.
    pub registry: Registry,
    /// Readiness.
    pub readiness: Readiness,
    /// Drain control.
    pub drain: Drain,
    /// Workload identity.
    pub identity: Arc<crate::tls::Identity>,
}

// === impl Admin ===

impl Admin {
    /// Serves until `stop` is cancelled.
    /// Connections over the cap are counted in `rejected`.
    pub async fn serve(self, socket: TcpListener, stop: CancellationToken, rejected: IntCounter) {
        let admin = Arc::new(self);
        serve_local("admin", socket, stop, rejected, move |req| {
            let rsp = admin.handle(req);
            async move { rsp }
        })
        .await;
    }

    fn handle(&self, req: Request<Incoming>) -> Response<Body> {
        match (req.method(), req.uri().path()) {
            (&Method::GET, "/ready") => admin_readiness(&self.readiness, &self.drain),
            (&Method::GET, "/live") => text(StatusCode::OK, "live\n"),
            (&Method::GET, "/metrics") => {
                let mut out = Vec::new();
                let encoder = TextEncoder::new();
                match encoder.encode(&self.registry.gather(), &mut out) {
                    Ok(()) => Response::builder()
                        .header(header::CONTENT_TYPE, encoder.format_type())
                        .body(body::full(out))
                        .expect("valid response"),
                    Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, &format!("{e}\n")),
                }
            }
            (&Method::GET, "/config_dump") => self.config_dump(),
            (&Method::GET, "/certs") => Response::builder()
                .header(header::CONTENT_TYPE, "application/json")
                .body(body::full(
                    serde_json::to_vec_pretty(&self.identity.describe()).expect("serializable"),
                ))
                .expect("valid response"),
            (&Method::POST, "/drain") => {
                tracing::info!("drain requested through the admin API");
                self.drain.start();
                text(StatusCode::ACCEPTED, "draining\n")
            }
            (_, "/ready" | "/live" | "/metrics" | "/config_dump" | "/certs" | "/drain") => {
                text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n")
            }
            _ => text(
                StatusCode::NOT_FOUND,
                "not found; try /ready /live /metrics /config_dump /certs POST /drain\n",
            ),
        }
    }

    fn config_dump(&self) -> Response<Body> {
        let s = self.config.load();
        let clusters: Vec<_> = {
            let mut cs: Vec<_> = s
                .clusters
                .iter()
                .map(|c| {
                    json!({
                        "name": c.name,
                        "protocol": c.protocol.name(),
                        "endpoints": c.endpoints.iter().map(|e| json!({
                            "address": e.connect_addr.to_string(),
                            "via_sidecar_port": e.via_sidecar,
                            "identity": &*e.identity,
                            "weight": e.weight,
                            "in_flight": e.in_flight(),
                            "rtt_estimate_ms": e.rtt_estimate().as_secs_f64() * 1000.0,
                            "ejected_until": e.ejected_until_system()
                                .map(|t| humantime::format_rfc3339_millis(t).to_string()),
                            "times_ejected": e.times_ejected(),
                        })).collect::<Vec<_>>(),
                        "circuit_breaker": c.breaker().map(|b| json!({
                            "limits": b.settings(),
                            "active_requests": b.active_requests(),
                            "pending_requests": b.pending_requests(),
                            "active_retries": b.active_retries(),
                        })),
                        "retry_budget_remaining": c.retry_budget_remaining(),
                    })
                })
                .collect();
            cs.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
            cs
        };
        let inbound_tls: std::collections::BTreeMap<_, _> = s
            .inbound
            .iter()
            .map(|(name, t)| (name.clone(), t.effective_tls()))
            .collect();
        let dump = json!({
            "version": s.version,
            "peer_tls": &s.peer_tls,
            "inbound_tls": inbound_tls,
            "source": self.config.path().map(|p| p.display().to_string()),
            "last_reload_error": self.config.last_error(),
            "bootstrap": s.config(),
            "clusters": clusters,
        });
        Response::builder()
            .header(header::CONTENT_TYPE, "application/json")
            .body(body::full(
                serde_json::to_vec_pretty(&dump).expect("serializable"),
            ))
            .expect("valid response")
    }
}

/// The admin's `/ready` (loopback only): [`readiness_response`], and when
/// not ready, a `what: why` line per blocker that knows why (the xDS or CA
/// connection error). The health port, reachable from the network, keeps
/// the terse answer.
fn admin_readiness(readiness: &Readiness, drain: &Drain) -> Response<Body> {
    let reasons = readiness.reasons();
    if readiness.is_ready() || drain.is_draining() || reasons.is_empty() {
        return readiness_response(readiness, drain);
    }
    let mut body = String::from("not ready\n");
    for reason in reasons {
        body.push_str(&reason);
        body.push('\n');
    }
    text(StatusCode::SERVICE_UNAVAILABLE, &body)
}

/// The answer to a readiness check: 200 `ready`, or 503 `draining` /
/// `not ready`. Served as the admin `/ready` and the health port's
/// `/healthz/ready`.
pub(crate) fn readiness_response(readiness: &Readiness, drain: &Drain) -> Response<Body> {
    if readiness.is_ready() {
        text(StatusCode::OK, "ready\n")
    } else if drain.is_draining() {
        text(StatusCode::SERVICE_UNAVAILABLE, "draining\n")
    } else {
        text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    }
}
