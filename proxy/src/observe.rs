//! The `observe` stage, outermost in both stacks: it sees every request's
//! final outcome (errors included, already turned into responses) and
//! reports it three ways: Istio metrics, this hop's trace span, and the
//! access log.
//!
//! It also starts the hop's trace: the context that arrived (W3C or B3) is
//! continued, a new one started otherwise, and `x-request-id` generated when
//! missing. Inbound, the workload sees the server span as its parent;
//! outbound, the context goes into the request's extensions and
//! [`crate::trace::attempt`] writes each attempt's context upstream.

use crate::access_log::AccessLog;
use crate::body::Body;
use crate::config::ConfigStore;
use crate::error::{ProxyError, RESPONSE_FLAGS_HEADER};
use crate::protocol::http as h;
use crate::telemetry::{istio_host, Metrics, RequestLabels, RequestSizes};
use crate::tls::{Identity, PeerIdentity};
use crate::trace::context::ensure_request_id;
use crate::trace::{HopKind, SpanOutcome, Tracer};
use futures::future::BoxFuture;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body::Body as _;
use sane_xds_proto::Protocol;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Instant, SystemTime};
use tower::Service;

/// Request header carrying the calling workload's name from its outbound
/// sidecar to the peer's inbound sidecar (trusted only over mutual TLS,
/// never passed to the workload).
pub const SOURCE_WORKLOAD_HEADER: &str = "x-sane-source-workload";

/// Labels the route stage learned, for the observe stage above it.
#[derive(Clone, Debug, Default)]
pub(crate) struct ObservedService(pub(crate) Arc<Mutex<Option<(String, Protocol)>>>);

/// Which side of a hop the stage observes.
#[derive(Clone, Debug)]
pub(crate) enum Side {
    /// The local app's requests.
    Outbound,
    /// A peer's requests for the local workload `service` (`name.namespace`).
    Inbound {
        service: String,
        protocol: Protocol,
        peer: Option<PeerIdentity>,
    },
}

/// The observe stage.
#[derive(Clone, Debug)]
pub(crate) struct Observe<S> {
    pub(crate) inner: S,
    pub(crate) metrics: Metrics,
    pub(crate) tracer: Arc<Tracer>,
    pub(crate) config: Arc<ConfigStore>,
    pub(crate) identity: Arc<Identity>,
    pub(crate) side: Side,
}

// === impl Observe ===

impl<S> Service<Request<Body>> for Observe<S>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = ProxyError>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = ProxyError;
    type Future = BoxFuture<'static, Result<Response<Body>, ProxyError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<Body>) -> Self::Future {
        let start = Instant::now();
        let wall = SystemTime::now();
        let snapshot = self.config.load();
        let active = self.tracer.active(&snapshot.telemetry);
        let workload = non_empty(&snapshot.bootstrap.node.workload);
        drop(snapshot);
        let hop = active.start_hop(req.headers());
        let request_id = ensure_request_id(req.headers_mut());
        let own_id = (self.identity.current()).map(|m| m.identity.identity().to_string());
        let version = req.version();
        let method = req.method().clone();
        let path = req.uri().path().to_string();
        let authority = h::authority_text(&req).unwrap_or_default();
        let request_bytes = body_len(req.headers(), req.body().size_hint().exact());
        let observed = ObservedService::default();
        let (reporter, source_workload, source_principal, dest_workload, dest_principal, policy);
        match &self.side {
            Side::Inbound { peer, .. } => {
                // The workload continues the trace as a child of this span.
                hop.context.inject(req.headers_mut());
                let claimed = req.headers_mut().remove(SOURCE_WORKLOAD_HEADER);
                reporter = "destination";
                source_workload = match (peer, claimed) {
                    (Some(_), Some(v)) => workload_name(&v),
                    _ => "unknown".to_string(),
                };
                source_principal = peer.as_ref().map_or("unknown".into(), |p| p.0.to_string());
                dest_workload = workload.clone();
                dest_principal = own_id.unwrap_or_else(|| "unknown".into());
                policy = if peer.is_some() { "mutual_tls" } else { "none" };
            }
            Side::Outbound => {
                if let Ok(v) = HeaderValue::from_str(&workload) {
                    req.headers_mut().insert(SOURCE_WORKLOAD_HEADER, v);
                }
                req.extensions_mut().insert(hop.clone());
                reporter = "source";
                source_workload = workload.clone();
                source_principal = own_id.unwrap_or_else(|| "unknown".into());
                dest_workload = "unknown".to_string();
                dest_principal = "unknown".to_string();
                policy = "unknown";
            }
        }
        if let Side::Inbound {
            service, protocol, ..
        } = &self.side
        {
            *observed.0.lock().expect("not poisoned") = Some((service.clone(), *protocol));
        }
        req.extensions_mut().insert(observed.clone());
        let grpc = h::is_grpc(req.headers());
        let fut = self.inner.call(req);
        let metrics = self.metrics.clone();
        let peer = match &self.side {
            Side::Inbound { peer, .. } => peer.as_ref().map(|p| p.0.clone()),
            Side::Outbound => None,
        };
        let inbound = matches!(self.side, Side::Inbound { .. });
        Box::pin(async move {
            let (mut rsp, error) = match fut.await {
                Ok(rsp) => (rsp, None),
                Err(e) => (e.to_response(), Some(e)),
            };
            if rsp.status() != StatusCode::SWITCHING_PROTOCOLS {
                *rsp.version_mut() = version;
            }
            let flags = header_text(rsp.headers(), RESPONSE_FLAGS_HEADER).unwrap_or("-");
            let flags = flags.to_string();
            let (service, protocol) = (observed.0.lock().expect("not poisoned").clone())
                .unwrap_or_else(|| ("unknown".into(), Protocol::Http));
            let grpc = grpc || protocol == Protocol::Grpc;
            let host = if service == "unknown" {
                service.clone()
            } else {
                istio_host(&service)
            };
            let grpc_status = if grpc {
                header_text(rsp.headers(), "grpc-status").unwrap_or("")
            } else {
                ""
            };
            let millis = start.elapsed().as_secs_f64() * 1000.0;
            let sizes = RequestSizes {
                request: request_bytes,
                response: body_len(rsp.headers(), rsp.body().size_hint().exact()),
            };
            let status = rsp.status().as_u16();
            metrics.request(
                RequestLabels {
                    reporter,
                    source_workload: &source_workload,
                    source_principal: &source_principal,
                    destination_workload: &dest_workload,
                    destination_service: &host,
                    destination_principal: &dest_principal,
                    request_protocol: if grpc { "grpc" } else { "http" },
                    response_code: status,
                    grpc_response_status: grpc_status,
                    connection_security_policy: policy,
                    response_flags: &flags,
                },
                millis,
                sizes,
            );
            let protocol_version = format!("{version:?}");
            let outcome = SpanOutcome {
                method: method.as_str(),
                path: &path,
                authority: &authority,
                status,
                flags: &flags,
                service: &service,
                peer_identity: peer.as_deref(),
                protocol_version: &protocol_version,
                request_id: &request_id,
            };
            let kind = if inbound {
                HopKind::Inbound
            } else {
                HopKind::Outbound
            };
            hop.record(kind, &hop.context, wall, &outcome, Vec::new());
            active.log(|| AccessLog {
                start_time: humantime::format_rfc3339_millis(wall).to_string(),
                direction: if inbound { "inbound" } else { "outbound" },
                trace_id: hop.context.trace_id.to_string(),
                request_id: request_id.clone(),
                method: method.to_string(),
                authority: authority.clone(),
                path: path.clone(),
                protocol: protocol_version.clone(),
                status,
                response_flags: flags.clone(),
                duration_ms: millis,
                bytes_received: sizes.request,
                bytes_sent: sizes.response,
                upstream_service: service.clone(),
                source_principal: source_principal.clone(),
                destination_principal: dest_principal.clone(),
            });
            match &error {
                Some(e) => tracing::warn!(
                    %method, %path, status, flags = %flags, error = %e, "request failed"
                ),
                None => tracing::debug!(
                    %method, %path, status, flags = %flags,
                    elapsed_ms = start.elapsed().as_millis() as u64, "request"
                ),
            }
            Ok(rsp)
        })
    }
}

fn non_empty(s: &str) -> String {
    if s.is_empty() {
        "unknown".into()
    } else {
        s.to_string()
    }
}

fn header_text<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// A peer's claimed workload name, kept only when it looks like one (so a
/// peer cannot blow up label cardinality with arbitrary text).
fn workload_name(v: &HeaderValue) -> String {
    match v.to_str() {
        Ok(s)
            if !s.is_empty()
                && s.len() <= 63
                && s.bytes().all(|b| {
                    b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.'
                }) =>
        {
            s.to_string()
        }
        _ => "unknown".into(),
    }
}

/// A message's body size: its content-length, else the body's exact size
/// hint, else 0 (streamed without a declared length).
fn body_len(headers: &HeaderMap, exact: Option<u64>) -> u64 {
    header_text(headers, "content-length")
        .and_then(|v| v.parse().ok())
        .or(exact)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_claimed_workload_is_bounded() {
        let ok = HeaderValue::from_static("web-1");
        assert_eq!(workload_name(&ok), "web-1");
        for bad in ["", "UPPER", "a/b", &"x".repeat(64)] {
            assert_eq!(
                workload_name(&HeaderValue::from_str(bad).unwrap()),
                "unknown"
            );
        }
    }

    #[test]
    fn body_len_prefers_the_declared_length() {
        let mut h = HeaderMap::new();
        assert_eq!(body_len(&h, None), 0);
        assert_eq!(body_len(&h, Some(7)), 7);
        h.insert("content-length", HeaderValue::from_static("12"));
        assert_eq!(body_len(&h, Some(7)), 12);
    }
}
