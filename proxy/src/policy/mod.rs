//! Request policies, one small tower layer each. The order they are stacked
//! in is written once, in [`crate::stack`].
//!
//! Policies are generic: the route stage puts what applies to a request
//! (the matched rule's [`RulePolicies`], the destination's breaker and retry
//! budget) in its extensions, and each layer acts on what it finds there.
//!
//! Most requests carry few policies, so a layer whose policy is absent
//! returns its inner service's future as it is ([`PolicyFuture`]'s left
//! side): no allocation and no extra indirection per layer and request.
//! Only a layer that acts boxes its own future.

pub mod authz;
pub mod circuit_breaker;
pub mod deadline;
pub mod fault;
pub mod headers;
pub mod mirror;
pub mod replay;
pub mod retry;
pub mod rewrite;
pub mod timeout;

use self::fault::FaultPolicy;
use self::headers::{HeaderOps, InvalidHeaderOp, RequestHeaderOps, ResponseHeaderOps};
use self::mirror::MirrorPolicy;
use self::retry::RetryPolicy;
use self::rewrite::{Redirect, Rewrite};
use self::timeout::PerTryTimeout;
use crate::body::Body;
use crate::cluster::Cluster;
use crate::error::ProxyError;
use futures::future::{BoxFuture, Either};
use http::{Extensions, Response};
use sane_xds_proto as proto;
use std::sync::Arc;

/// The future of a policy layer over a service whose future is `F`: `F`
/// itself when the layer lets the request through untouched, a boxed future
/// when it acts on it.
pub type PolicyFuture<F> = Either<F, BoxFuture<'static, Result<Response<Body>, ProxyError>>>;

/// The policies of one route rule, compiled once per config snapshot.
#[derive(Clone, Debug, Default)]
pub struct RulePolicies {
    /// Retries.
    pub retry: Option<Arc<RetryPolicy>>,
    /// Fault injection.
    pub fault: Option<Arc<FaultPolicy>>,
    /// Mirroring.
    pub mirror: Option<Arc<MirrorPolicy>>,
    /// Request header rewrites.
    pub request_headers: Option<Arc<HeaderOps>>,
    /// Response header rewrites.
    pub response_headers: Option<Arc<HeaderOps>>,
    /// A redirect answered instead of sending the request.
    pub redirect: Option<Arc<Redirect>>,
    /// Path and authority rewrites.
    pub rewrite: Option<Arc<Rewrite>>,
}

// === impl RulePolicies ===

impl RulePolicies {
    /// Compiles the policies of `rule` (at `field`); `mirror` is the shadow
    /// cluster when the rule mirrors.
    pub fn compile(
        rule: &proto::RouteRule,
        field: &str,
        mirror: Option<Arc<Cluster>>,
    ) -> Result<Self, InvalidHeaderOp> {
        let headers = |ops: &Option<proto::HeaderOps>, name: &str| {
            ops.as_ref()
                .map(|o| HeaderOps::compile(o, &format!("{field}.{name}")).map(Arc::new))
                .transpose()
        };
        Ok(Self {
            retry: rule
                .retry
                .as_ref()
                .map(|r| Arc::new(RetryPolicy::compile(r))),
            fault: rule
                .fault
                .as_ref()
                .map(|f| Arc::new(FaultPolicy::compile(f))),
            mirror: rule
                .mirror
                .as_ref()
                .zip(mirror)
                .map(|(m, c)| Arc::new(MirrorPolicy::new(c, m))),
            request_headers: headers(&rule.request_headers, "request_headers")?,
            response_headers: headers(&rule.response_headers, "response_headers")?,
            redirect: rule
                .redirect
                .as_ref()
                .map(|r| Arc::new(Redirect::compile(r))),
            rewrite: rule.rewrite.as_ref().map(|r| Arc::new(Rewrite::compile(r))),
        })
    }

    /// Puts the policies where the layers look for them.
    pub fn insert_into(&self, ext: &mut Extensions) {
        if let Some(r) = &self.retry {
            if let Some(t) = r.per_try_timeout {
                ext.insert(PerTryTimeout(t));
            }
            ext.insert(r.clone());
        }
        if let Some(f) = &self.fault {
            ext.insert(f.clone());
        }
        if let Some(m) = &self.mirror {
            ext.insert(m.clone());
        }
        if let Some(h) = &self.request_headers {
            ext.insert(RequestHeaderOps(h.clone()));
        }
        if let Some(h) = &self.response_headers {
            ext.insert(ResponseHeaderOps(h.clone()));
        }
        if let Some(r) = &self.redirect {
            ext.insert(r.clone());
        }
        if let Some(r) = &self.rewrite {
            ext.insert(r.clone());
        }
    }
}
