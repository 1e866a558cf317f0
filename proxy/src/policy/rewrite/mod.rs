//! Redirects and rewrites per route rule (Istio's `redirect` and `rewrite`,
//! the Gateway API's `RequestRedirect` and `URLRewrite`): a rule that
//! redirects answers with a 3xx and a `Location` instead of sending the
//! request; a rule that rewrites changes the path and the authority sent
//! upstream (and to mirrors, which are below this stage).
//!
//! Validation (`RouteRule::validate` in xds-proto) checks every value, so
//! nothing here can fail at compile time or on the data path; there is no
//! leaf error type.

mod layer;

pub use self::layer::RewriteLayer;

use crate::body::{self, Body};
use crate::cluster::Destination;
use crate::error::ProxyError;
use crate::policy::PolicyFuture;
use crate::protocol::http as h;
use futures::future::{self, Either, FutureExt};
use http::{header, HeaderValue, Request, Response, StatusCode, Uri};
use sane_xds_proto as proto;
use std::task::{Context, Poll};

/// A compiled redirect.
#[derive(Clone, Debug, PartialEq)]
pub struct Redirect {
    scheme: Option<String>,
    host: Option<String>,
    port: Option<u16>,
    path: PathChange,
    status: StatusCode,
}

/// A compiled rewrite.
#[derive(Clone, Debug, PartialEq)]
pub struct Rewrite {
    path: PathChange,
    authority: Option<String>,
}

/// How a path changes.
#[derive(Clone, Debug, PartialEq)]
enum PathChange {
    Keep,
    Whole(String),
    Prefix { from: String, to: String },
}

/// Answers with the request's [`Redirect`], or applies its [`Rewrite`].
#[derive(Clone, Debug)]
pub struct RewriteStage<S> {
    inner: S,
}

// === impl PathChange ===

impl PathChange {
    fn compile(whole: &str, from: &str, to: &str) -> PathChange {
        if !whole.is_empty() {
            PathChange::Whole(whole.to_string())
        } else if !from.is_empty() {
            PathChange::Prefix {
                from: from.to_string(),
                to: to.to_string(),
            }
        } else {
            PathChange::Keep
        }
    }

    /// The new path of `path`; `None` when it stays.
    fn apply(&self, path: &str) -> Option<String> {
        match self {
            PathChange::Keep => None,
            PathChange::Whole(p) => Some(p.clone()),
            PathChange::Prefix { from, to } => {
                let rest = path.strip_prefix(from.trim_end_matches('/'))?;
                if !(rest.is_empty() || rest.starts_with('/') || from.ends_with('/')) {
                    // `/v1` does not prefix `/v1beta`.
                    return None;
                }
                let rest = rest.trim_start_matches('/');
                let mut out = to.trim_end_matches('/').to_string();
                if !rest.is_empty() || out.is_empty() || to.ends_with('/') {
                    out.push('/');
                }
                out.push_str(rest);
                Some(out)
            }
        }
    }
}

// === impl Redirect ===

impl Redirect {
    /// Compiles a (validated) redirect.
    pub fn compile(r: &proto::Redirect) -> Redirect {
        let some = |s: &str| (!s.is_empty()).then(|| s.to_string());
        Redirect {
            scheme: some(&r.scheme),
            host: some(&r.host),
            port: u16::try_from(r.port).ok().filter(|p| *p != 0),
            path: PathChange::compile(&r.path, &r.replace_prefix, &r.with_prefix),
            status: StatusCode::from_u16(r.status_code as u16)
                .ok()
                .filter(StatusCode::is_redirection)
                .unwrap_or(StatusCode::MOVED_PERMANENTLY),
        }
    }

    /// The `Location` for `req`.
    fn location<B>(&self, req: &Request<B>) -> String {
        let req_scheme = req
            .headers()
            .get("x-forwarded-proto")
            .and_then(|v| v.to_str().ok())
            .or(req.uri().scheme_str())
            .unwrap_or("http")
            .to_string();
        let scheme = self.scheme.clone().unwrap_or_else(|| req_scheme.clone());
        let authority = h::authority_text(req).unwrap_or_default();
        let (req_host, req_port) = match authority.parse::<http::uri::Authority>() {
            Ok(a) => (a.host().to_string(), a.port_u16()),
            Err(_) => (authority.clone(), None),
        };
        let host = self.host.clone().unwrap_or(req_host);
        // A port the request named stays only while the scheme does.
        let port = self
            .port
            .or(req_port.filter(|_| scheme == req_scheme))
            .filter(|p| !matches!((scheme.as_str(), p), ("http", 80) | ("https", 443)));
        let path = req.uri().path();
        let path = self.path.apply(path).unwrap_or_else(|| path.to_string());
        let mut out = format!("{scheme}://{host}");
        if let Some(p) = port {
            out.push_str(&format!(":{p}"));
        }
        out.push_str(&path);
        if let Some(q) = req.uri().query() {
            out.push('?');
            out.push_str(q);
        }
        out
    }
}

// === impl Rewrite ===

impl Rewrite {
    /// Compiles a (validated) rewrite.
    pub fn compile(r: &proto::Rewrite) -> Rewrite {
        Rewrite {
            path: PathChange::compile(&r.path, &r.replace_prefix, &r.with_prefix),
            authority: (!r.authority.is_empty()).then(|| r.authority.clone()),
        }
    }

    /// Rewrites `req`'s path (query kept) and the authority it is sent with.
    fn apply(&self, req: &mut Request<Body>) {
        if let Some(path) = self.path.apply(req.uri().path()) {
            let pq = match req.uri().query() {
                Some(q) => format!("{path}?{q}"),
                None => path,
            };
            let mut parts = req.uri().clone().into_parts();
            if let Ok(pq) = pq.parse() {
                parts.path_and_query = Some(pq);
                if let Ok(uri) = Uri::from_parts(parts) {
                    *req.uri_mut() = uri;
                }
            }
        }
        if let Some(a) = &self.authority {
            if let Ok(v) = HeaderValue::from_str(a) {
                req.headers_mut().insert(header::HOST, v);
            }
            if let Some(d) = req.extensions_mut().get_mut::<Destination>() {
                d.authority = a.clone();
            }
        }
    }
}

// === impl RewriteStage ===

impl<S> tower::Service<Request<Body>> for RewriteStage<S>
where
    S: tower::Service<Request<Body>, Response = Response<Body>, Error = ProxyError>,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = ProxyError;
    type Future = PolicyFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<Body>) -> Self::Future {
        if let Some(r) = req.extensions().get::<std::sync::Arc<Redirect>>() {
            let location = r.location(&req);
            let mut rsp = Response::new(body::empty());
            *rsp.status_mut() = r.status;
            if let Ok(v) = HeaderValue::from_str(&location) {
                rsp.headers_mut().insert(header::LOCATION, v);
            }
            return Either::Right(future::ready(Ok(rsp)).boxed());
        }
        if let Some(r) = req.extensions().get::<std::sync::Arc<Rewrite>>().cloned() {
            r.apply(&mut req);
        }
        Either::Left(self.inner.call(req))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use tower::{Layer, ServiceExt};
    use tower_test::mock;

    fn req(uri: &str, host: &str) -> Request<Body> {
        Request::builder()
            .uri(uri)
            .header("host", host)
            .body(body::empty())
            .unwrap()
    }

    #[test]
    fn prefixes_are_replaced_on_segment_boundaries() {
        let p = PathChange::compile("", "/v1", "/api/v2");
        assert_eq!(p.apply("/v1/items").as_deref(), Some("/api/v2/items"));
        assert_eq!(p.apply("/v1").as_deref(), Some("/api/v2"));
        assert_eq!(p.apply("/v1beta/items"), None);
        assert_eq!(p.apply("/other"), None);
        let strip = PathChange::compile("", "/ratings", "");
        assert_eq!(strip.apply("/ratings").as_deref(), Some("/"));
        assert_eq!(strip.apply("/ratings/1").as_deref(), Some("/1"));
        let root = PathChange::compile("", "/", "/app/");
        assert_eq!(root.apply("/x").as_deref(), Some("/app/x"));
        assert_eq!(
            PathChange::compile("/whole", "", "")
                .apply("/a/b")
                .as_deref(),
            Some("/whole")
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_redirect_answers_without_calling_upstream() {
        let (svc, mut handle) = mock::pair::<Request<Body>, Response<Body>>();
        let svc = RewriteLayer.layer(svc.map_err(|_| ProxyError::Draining));
        let mut r = req("/v1/reviews?x=1", "reviews:9080");
        r.extensions_mut()
            .insert(Arc::new(Redirect::compile(&proto::Redirect {
                host: "bookinfo.example".into(),
                replace_prefix: "/v1".into(),
                with_prefix: "/v2".into(),
                status_code: 302,
                ..Default::default()
            })));
        let rsp = svc.clone().oneshot(r).await.unwrap();
        assert_eq!(rsp.status(), StatusCode::FOUND);
        assert_eq!(
            rsp.headers()[header::LOCATION],
            "http://bookinfo.example:9080/v2/reviews?x=1"
        );
        let mut r = req("/a", "reviews");
        r.extensions_mut()
            .insert(Arc::new(Redirect::compile(&proto::Redirect {
                scheme: "https".into(),
                ..Default::default()
            })));
        let rsp = svc.oneshot(r).await.unwrap();
        assert_eq!(rsp.status(), StatusCode::MOVED_PERMANENTLY);
        assert_eq!(rsp.headers()[header::LOCATION], "https://reviews/a");
        // Both services are gone, so the handle's stream is either pending
        // or ended; a request in it would be one sent upstream.
        assert!(
            !matches!(handle.next_request().now_or_never(), Some(Some(_))),
            "nothing was sent upstream"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_rewrite_changes_path_and_authority_upstream() {
        let (svc, mut handle) = mock::pair::<Request<Body>, Response<Body>>();
        let svc = RewriteLayer.layer(svc.map_err(|_| ProxyError::Draining));
        let mut r = req("/ratings/7?full=1", "ratings");
        r.extensions_mut()
            .insert(Arc::new(Rewrite::compile(&proto::Rewrite {
                replace_prefix: "/ratings".into(),
                with_prefix: "/v1/ratings".into(),
                authority: "ratings.internal".into(),
                ..Default::default()
            })));
        let call = tokio::spawn(svc.oneshot(r));
        let (seen, send) = handle.next_request().await.unwrap();
        assert_eq!(seen.uri().path(), "/v1/ratings/7");
        assert_eq!(seen.uri().query(), Some("full=1"));
        assert_eq!(seen.headers()[header::HOST], "ratings.internal");
        send.send_response(Response::new(body::empty()));
        assert_eq!(call.await.unwrap().unwrap().status(), StatusCode::OK);
    }
}
