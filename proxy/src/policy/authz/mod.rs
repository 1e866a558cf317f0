//! Authorization (Istio `AuthorizationPolicy` semantics), enforced on the
//! inbound side: the local workload's policies decide whether a caller,
//! identified by its mutual TLS certificate, may make a request or open a
//! connection.
//!
//! HTTP: a denied request is answered 403 with response flag `RBAC` and never
//! reaches the workload. Opaque TCP ([`authorize_tcp`]): a denied connection
//! is closed before a byte is forwarded. `audit` matches and dry-run denials
//! are logged and counted, and the request passes.
//!
//! The layer sits right below `observe` (so metrics and the request log see
//! the 403) and above everything that spends work on the request.

mod error;
mod layer;
mod matcher;

pub use self::error::Denied;
pub use self::layer::AuthzLayer;
pub use self::matcher::{
    pattern_matches, AuthzPolicies, Caller, HttpOperation, Operation, Verdict, NO_ALLOW_MATCHED,
};

use crate::body::Body;
use crate::error::ProxyError;
use crate::tls::PeerIdentity;
use futures::future::{self, Either, Ready};
use http::{Request, Response};
use prometheus::{IntCounterVec, Opts, Registry};
use std::sync::Arc;
use std::task::{Context, Poll};

/// Where the layer finds the current policies: called once per request.
pub type PolicySource = Arc<dyn Fn() -> Arc<AuthzPolicies> + Send + Sync>;

/// Authorizes each request before passing it on.
#[derive(Clone)]
pub struct Authorize<S> {
    inner: S,
    policies: PolicySource,
    peer: Option<PeerIdentity>,
    port: u16,
    metrics: AuthzMetrics,
}

/// What authorization decided. Labels are bounded: policy names come from
/// config, the others are fixed sets.
#[derive(Clone, Debug)]
pub struct AuthzMetrics {
    denied: IntCounterVec,
    dry_run_denied: IntCounterVec,
    audited: IntCounterVec,
}

// === impl AuthzMetrics ===

impl AuthzMetrics {
    /// Creates the counters and registers them in `registry`.
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let labels = ["protocol", "policy"];
        let denied = IntCounterVec::new(
            Opts::new(
                "sane_authz_denied_total",
                "Requests (http) and connections (tcp) denied by authorization, by deciding policy.",
            ),
            &labels,
        )?;
        let dry_run_denied = IntCounterVec::new(
            Opts::new(
                "sane_authz_dry_run_denied_total",
                "Requests and connections a dry-run policy would have denied (they passed).",
            ),
            &labels,
        )?;
        let audited = IntCounterVec::new(
            Opts::new(
                "sane_authz_audited_total",
                "Requests and connections an audit policy matched.",
            ),
            &labels,
        )?;
        registry.register(Box::new(denied.clone()))?;
        registry.register(Box::new(dry_run_denied.clone()))?;
        registry.register(Box::new(audited.clone()))?;
        Ok(Self {
            denied,
            dry_run_denied,
            audited,
        })
    }

    /// Counts and logs `verdict`; returns the denial, if any.
    fn record(
        &self,
        protocol: &str,
        verdict: Verdict,
        principal: &str,
        operation: impl Fn() -> String,
    ) -> Result<(), Denied> {
        for policy in &verdict.audited {
            self.audited.with_label_values(&[protocol, policy]).inc();
            tracing::info!(policy, principal, operation = %operation(), "authz audit");
        }
        if let Some(policy) = &verdict.dry_run_denied {
            self.dry_run_denied
                .with_label_values(&[protocol, policy])
                .inc();
            tracing::info!(
                policy, principal, operation = %operation(), flags = "RBAC",
                "authz dry run: would deny; allowed"
            );
        }
        match verdict.denied {
            None => Ok(()),
            Some(policy) => {
                self.denied.with_label_values(&[protocol, &policy]).inc();
                Err(Denied {
                    policy,
                    principal: principal.to_string(),
                    operation: operation(),
                })
            }
        }
    }
}

/// Decides whether `peer` may open an opaque TCP connection to workload
/// `port`: `Err` names the policy, and the caller closes the connection
/// without forwarding anything.
pub fn authorize_tcp(
    policies: &AuthzPolicies,
    peer: Option<&PeerIdentity>,
    port: u16,
    metrics: &AuthzMetrics,
) -> Result<(), Denied> {
    if policies.is_empty() {
        return Ok(());
    }
    let principal = peer.map(|p| &*p.0);
    let verdict = policies.evaluate(Caller { principal }, Operation { port, http: None });
    metrics.record(
        "tcp",
        verdict,
        principal.unwrap_or("unauthenticated"),
        || format!("tcp connection to port {port}"),
    )
}

// === impl Authorize ===

impl<S: std::fmt::Debug> std::fmt::Debug for Authorize<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authorize")
            .field("inner", &self.inner)
            .field("peer", &self.peer)
            .field("port", &self.port)
            .finish_non_exhaustive()
    }
}

impl<S> tower::Service<Request<Body>> for Authorize<S>
where
    S: tower::Service<Request<Body>, Response = Response<Body>, Error = ProxyError>,
{
    type Response = Response<Body>;
    type Error = ProxyError;
    type Future = Either<Ready<Result<Response<Body>, ProxyError>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let policies = (self.policies)();
        if policies.is_empty() {
            return Either::Right(self.inner.call(req));
        }
        let principal = self.peer.as_ref().map(|p| &*p.0);
        let verdict = policies.evaluate(
            Caller { principal },
            Operation {
                port: self.port,
                http: Some(HttpOperation {
                    method: req.method().as_str(),
                    path: req.uri().path(),
                    headers: req.headers(),
                }),
            },
        );
        let port = self.port;
        let decided = self.metrics.record(
            "http",
            verdict,
            principal.unwrap_or("unauthenticated"),
            || format!("{} {} on port {port}", req.method(), req.uri().path()),
        );
        match decided {
            Ok(()) => Either::Right(self.inner.call(req)),
            Err(denied) => Either::Left(future::ready(Err(denied.into()))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::body;
    use crate::error::RESPONSE_FLAGS_HEADER;
    use sane_xds_proto::{AuthorizationPolicy, AuthzAction, AuthzOperation, AuthzRule};
    use tower::{Layer, ServiceExt};
    use tower_test::mock;

    const FE: &str = "spiffe://cluster.local/ns/shop/sa/frontend";

    fn deny_admin(dry_run: bool) -> Arc<AuthzPolicies> {
        let p = AuthorizationPolicy {
            name: "no-admin".into(),
            namespace: "shop".into(),
            service: "api".into(),
            action: AuthzAction::Deny.into(),
            dry_run,
            selector: Default::default(),
            rules: vec![AuthzRule {
                to: vec![AuthzOperation {
                    paths: vec!["/admin/*".into()],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        Arc::new(AuthzPolicies::for_workload(&[p], "api.shop"))
    }

    type BoxedSvc = tower::util::BoxCloneService<Request<Body>, Response<Body>, ProxyError>;

    fn svc(
        policies: Arc<AuthzPolicies>,
    ) -> (
        BoxedSvc,
        mock::Handle<Request<Body>, Response<Body>>,
        AuthzMetrics,
    ) {
        let (inner, handle) = mock::pair::<Request<Body>, Response<Body>>();
        let metrics = AuthzMetrics::register(&Registry::new()).unwrap();
        let layer = AuthzLayer::new(
            Arc::new(move || policies.clone()),
            Some(PeerIdentity(FE.into())),
            8080,
            metrics.clone(),
        );
        let s = layer.layer(inner.map_err(|_| ProxyError::Draining));
        (BoxedSvc::new(s), handle, metrics)
    }

    fn get(path: &str) -> Request<Body> {
        Request::get(path).body(body::empty()).unwrap()
    }

    #[tokio::test]
    async fn denied_requests_get_403_rbac_and_never_reach_the_workload() {
        let (svc, mut handle, metrics) = svc(deny_admin(false));
        let err = svc.clone().oneshot(get("/admin/users")).await.unwrap_err();
        let rsp = err.to_response();
        assert_eq!(rsp.status(), 403);
        assert_eq!(rsp.headers()[RESPONSE_FLAGS_HEADER], "RBAC");
        assert!(
            err.to_string().contains("deny policy shop/no-admin"),
            "{err}"
        );
        assert!(err.to_string().contains(FE), "{err}");
        assert_eq!(
            metrics
                .denied
                .with_label_values(&["http", "deny policy shop/no-admin"])
                .get(),
            1
        );
        // An allowed request goes through.
        let call = tokio::spawn(svc.oneshot(get("/public")));
        let (req, send) = handle.next_request().await.unwrap();
        assert_eq!(req.uri().path(), "/public");
        send.send_response(Response::new(body::empty()));
        assert_eq!(call.await.unwrap().unwrap().status(), 200);
    }

    #[tokio::test]
    async fn dry_run_counts_the_would_be_denial_and_passes() {
        let (svc, mut handle, metrics) = svc(deny_admin(true));
        let call = tokio::spawn(svc.oneshot(get("/admin/users")));
        let (_req, send) = handle.next_request().await.unwrap();
        send.send_response(Response::new(body::empty()));
        assert_eq!(call.await.unwrap().unwrap().status(), 200);
        assert_eq!(
            metrics
                .dry_run_denied
                .with_label_values(&["http", "deny policy shop/no-admin"])
                .get(),
            1
        );
    }

    #[test]
    fn tcp_denial_names_the_policy() {
        let metrics = AuthzMetrics::register(&Registry::new()).unwrap();
        let only_fe = AuthorizationPolicy {
            name: "only-fe".into(),
            namespace: "shop".into(),
            service: "api".into(),
            rules: vec![AuthzRule {
                from: vec![sane_xds_proto::AuthzSource {
                    principals: vec![FE.into()],
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        };
        let p = AuthzPolicies::for_workload(&[only_fe], "api.shop");
        authorize_tcp(&p, Some(&PeerIdentity(FE.into())), 5432, &metrics).unwrap();
        let err = authorize_tcp(&p, None, 5432, &metrics).unwrap_err();
        assert_eq!(err.policy, NO_ALLOW_MATCHED);
        assert_eq!(err.principal, "unauthenticated");
    }
}
