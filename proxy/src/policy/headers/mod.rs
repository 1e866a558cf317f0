//! Header rewrites per route rule: set, add or remove request headers before
//! they go upstream, and response headers before they go back. Names and
//! values are parsed once when the config is compiled, so the data path
//! only copies prepared values.

mod error;
mod layer;

pub use self::error::InvalidHeaderOp;
pub use self::layer::HeaderRewriteLayer;

use crate::body::Body;
use crate::error::ProxyError;
use crate::policy::PolicyFuture;
use futures::future::{Either, FutureExt};
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response};
use sane_xds_proto as proto;
use std::sync::Arc;
use std::task::{Context, Poll};

/// A compiled set of header rewrites, applied as remove, set, add.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct HeaderOps {
    remove: Vec<HeaderName>,
    set: Vec<(HeaderName, HeaderValue)>,
    add: Vec<(HeaderName, HeaderValue)>,
}

/// The rewrites of the request headers, set by the route stage.
#[derive(Clone, Debug)]
pub struct RequestHeaderOps(pub Arc<HeaderOps>);

/// The rewrites of the response headers, set by the route stage.
#[derive(Clone, Debug)]
pub struct ResponseHeaderOps(pub Arc<HeaderOps>);

/// Applies the request's [`RequestHeaderOps`] and [`ResponseHeaderOps`].
#[derive(Clone, Debug)]
pub struct HeaderRewrite<S> {
    inner: S,
}

// === impl HeaderOps ===

impl HeaderOps {
    /// Compiles `ops`; `field` is its path for errors.
    pub fn compile(ops: &proto::HeaderOps, field: &str) -> Result<Self, InvalidHeaderOp> {
        let name = |n: &str, f: String| {
            HeaderName::from_bytes(n.to_ascii_lowercase().as_bytes()).map_err(|_| InvalidHeaderOp {
                field: f,
                reason: format!("{n:?} is not a valid header name"),
            })
        };
        let pairs = |kind: &str, map: &std::collections::BTreeMap<String, String>| {
            map.iter()
                .map(|(n, v)| {
                    let f = format!("{field}.{kind}.{n}");
                    let value = HeaderValue::from_str(v).map_err(|_| InvalidHeaderOp {
                        field: f.clone(),
                        reason: format!("{v:?} is not a valid header value"),
                    })?;
                    Ok((name(n, f)?, value))
                })
                .collect::<Result<Vec<_>, InvalidHeaderOp>>()
        };
        Ok(Self {
            remove: ops
                .remove
                .iter()
                .enumerate()
                .map(|(i, n)| name(n, format!("{field}.remove[{i}]")))
                .collect::<Result<_, _>>()?,
            set: pairs("set", &ops.set)?,
            add: pairs("add", &ops.add)?,
        })
    }

    /// Rewrites `headers`.
    pub fn apply(&self, headers: &mut HeaderMap) {
        for n in &self.remove {
            headers.remove(n);
        }
        for (n, v) in &self.set {
            headers.insert(n.clone(), v.clone());
        }
        for (n, v) in &self.add {
            headers.append(n.clone(), v.clone());
        }
    }
}

// === impl HeaderRewrite ===

impl<S> tower::Service<Request<Body>> for HeaderRewrite<S>
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
        if let Some(ops) = req.extensions().get::<RequestHeaderOps>().cloned() {
            ops.0.apply(req.headers_mut());
        }
        let on_response = req.extensions().get::<ResponseHeaderOps>().cloned();
        let fut = self.inner.call(req);
        match on_response {
            None => Either::Left(fut),
            Some(ops) => Either::Right(
                fut.map(move |res| {
                    res.map(|mut rsp| {
                        ops.0.apply(rsp.headers_mut());
                        rsp
                    })
                })
                .boxed(),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::body;
    use tower::{Layer, ServiceExt};
    use tower_test::mock;

    fn ops(set: &[(&str, &str)], add: &[(&str, &str)], remove: &[&str]) -> Arc<HeaderOps> {
        let to_map = |v: &[(&str, &str)]| {
            v.iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect()
        };
        let p = proto::HeaderOps {
            set: to_map(set),
            add: to_map(add),
            remove: remove.iter().map(|s| s.to_string()).collect(),
        };
        Arc::new(HeaderOps::compile(&p, "r").unwrap())
    }

    #[tokio::test(start_paused = true)]
    async fn rewrites_request_and_response_headers() {
        let (svc, mut handle) = mock::pair::<Request<Body>, Response<Body>>();
        let svc = HeaderRewriteLayer.layer(svc.map_err(|_| ProxyError::Draining));
        let mut req = Request::builder()
            .header("x-env", "dev")
            .header("x-debug", "1")
            .header("x-tag", "a")
            .body(body::empty())
            .unwrap();
        req.extensions_mut().insert(RequestHeaderOps(ops(
            &[("X-Env", "prod")],
            &[("x-tag", "b")],
            &["x-debug"],
        )));
        req.extensions_mut().insert(ResponseHeaderOps(ops(
            &[],
            &[("x-served-by", "mesh")],
            &["server"],
        )));
        let call = tokio::spawn(svc.oneshot(req));
        let (r, send) = handle.next_request().await.unwrap();
        assert_eq!(r.headers()["x-env"], "prod");
        assert!(r.headers().get("x-debug").is_none());
        let tags: Vec<_> = r.headers().get_all("x-tag").iter().collect();
        assert_eq!(tags, ["a", "b"]);
        let rsp = Response::builder()
            .header("server", "app/1.0")
            .body(body::empty())
            .unwrap();
        send.send_response(rsp);
        let rsp = call.await.unwrap().unwrap();
        assert!(rsp.headers().get("server").is_none());
        assert_eq!(rsp.headers()["x-served-by"], "mesh");
    }

    #[test]
    fn bad_values_name_the_field() {
        let p = proto::HeaderOps {
            set: [("x-a".to_string(), "bad\nvalue".to_string())].into(),
            ..Default::default()
        };
        let err = HeaderOps::compile(&p, "routes[0].rules[0].request_headers").unwrap_err();
        assert_eq!(err.field, "routes[0].rules[0].request_headers.set.x-a");
    }
}
