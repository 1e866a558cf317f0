//! `X-Forwarded-For` / `X-Forwarded-Proto`: what the mesh learns about the
//! outside client.
//!
//! With `trusted_hops = 0` the client is whoever connected: whatever it
//! claims in these headers is dropped and replaced by its address and the
//! listener's scheme. With `n` trusted proxies in front, the incoming
//! `X-Forwarded-For` is kept and the peer appended; the client is then the
//! address `n` places from the right (the one the outermost trusted proxy
//! saw), and the incoming `X-Forwarded-Proto` is kept. The client address
//! is put in the request's extensions as [`ClientAddr`].

use crate::error::ProxyError;
use crate::Body;
use http::{HeaderMap, HeaderValue, Request, Response};
use std::net::IpAddr;
use std::task::{Context, Poll};
use tower::{Layer, Service};

const XFF: &str = "x-forwarded-for";
const XFP: &str = "x-forwarded-proto";

/// The outside client's address, as far as the trusted hops tell.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientAddr(pub IpAddr);

/// Rewrites the forwarding headers of every request of one connection.
#[derive(Clone, Debug)]
pub struct ForwardedLayer {
    peer: IpAddr,
    scheme: &'static str,
    trusted_hops: u32,
}

/// The service [`ForwardedLayer`] builds.
#[derive(Clone, Debug)]
pub struct Forwarded<S> {
    inner: S,
    layer: ForwardedLayer,
}

/// Rewrites `headers` for a request from `peer` over `scheme`; returns the
/// client address.
pub fn rewrite(headers: &mut HeaderMap, peer: IpAddr, scheme: &str, trusted_hops: u32) -> IpAddr {
    let mut chain: Vec<String> = Vec::new();
    if trusted_hops > 0 {
        for v in headers.get_all(XFF).iter() {
            let Ok(text) = v.to_str() else { continue };
            chain.extend(
                text.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(str::to_string),
            );
        }
    }
    chain.push(peer.to_string());
    let client = chain
        .len()
        .checked_sub(trusted_hops as usize + 1)
        .and_then(|i| chain[i].parse::<IpAddr>().ok())
        .unwrap_or_else(|| {
            // Fewer hops than trusted: the leftmost address is the client.
            chain[0].parse().unwrap_or(peer)
        });
    let proto = match headers.get(XFP).and_then(|v| v.to_str().ok()) {
        Some(p) if trusted_hops > 0 && (p == "http" || p == "https") => p.to_string(),
        _ => scheme.to_string(),
    };
    headers.remove(XFF);
    if let Ok(v) = HeaderValue::from_str(&chain.join(", ")) {
        headers.insert(XFF, v);
    }
    headers.insert(
        XFP,
        HeaderValue::from_str(&proto).unwrap_or(HeaderValue::from_static("https")),
    );
    client
}

// === impl ForwardedLayer ===

impl ForwardedLayer {
    /// For a connection from `peer` over `scheme` (`http` or `https`).
    pub fn new(peer: IpAddr, scheme: &'static str, trusted_hops: u32) -> Self {
        Self {
            peer,
            scheme,
            trusted_hops,
        }
    }
}

impl<S> Layer<S> for ForwardedLayer {
    type Service = Forwarded<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Forwarded {
            inner,
            layer: self.clone(),
        }
    }
}

// === impl Forwarded ===

impl<S> Service<Request<Body>> for Forwarded<S>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = ProxyError>,
{
    type Response = Response<Body>;
    type Error = ProxyError;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<Body>) -> Self::Future {
        let l = &self.layer;
        let client = rewrite(req.headers_mut(), l.peer, l.scheme, l.trusted_hops);
        req.extensions_mut().insert(ClientAddr(client));
        self.inner.call(req)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::ServiceExt;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    const PEER: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(203, 0, 113, 9));

    #[test]
    fn untrusted_client_claims_are_replaced() {
        let mut h = headers(&[(XFF, "1.2.3.4"), (XFP, "http")]);
        let client = rewrite(&mut h, PEER, "https", 0);
        assert_eq!(client, PEER);
        assert_eq!(h[XFF], "203.0.113.9");
        assert_eq!(h[XFP], "https");
    }

    #[test]
    fn trusted_hops_pick_the_client_from_the_right() {
        // client 1.1.1.1 → untrusted-looking 2.2.2.2 → trusted LB (the peer).
        let mut h = headers(&[(XFF, "9.9.9.9, 1.1.1.1"), (XFP, "http")]);
        let client = rewrite(&mut h, PEER, "https", 1);
        assert_eq!(client, "1.1.1.1".parse::<IpAddr>().unwrap());
        assert_eq!(h[XFF], "9.9.9.9, 1.1.1.1, 203.0.113.9");
        assert_eq!(h[XFP], "http", "a trusted proxy's proto is kept");

        // Several header lines count as one list.
        let mut h = headers(&[(XFF, "5.5.5.5"), (XFF, "6.6.6.6")]);
        let client = rewrite(&mut h, PEER, "https", 2);
        assert_eq!(client, "5.5.5.5".parse::<IpAddr>().unwrap());
        assert_eq!(h[XFP], "https");
    }

    #[test]
    fn fewer_hops_than_trusted_takes_the_leftmost() {
        let mut h = headers(&[]);
        assert_eq!(rewrite(&mut h, PEER, "http", 3), PEER);
        let mut h = headers(&[(XFF, "garbage, 4.4.4.4")]);
        assert_eq!(
            rewrite(&mut h, PEER, "http", 1),
            "4.4.4.4".parse::<IpAddr>().unwrap()
        );
    }

    #[tokio::test]
    async fn the_layer_sets_headers_and_the_client_extension() {
        let svc = ForwardedLayer::new(PEER, "https", 0).layer(tower::service_fn(
            |req: Request<Body>| async move {
                assert_eq!(
                    req.extensions().get::<ClientAddr>(),
                    Some(&ClientAddr(PEER))
                );
                assert_eq!(req.headers()[XFP], "https");
                Ok::<_, ProxyError>(Response::new(crate::body::empty()))
            },
        ));
        let mut req = Request::new(crate::body::empty());
        req.headers_mut().insert(XFF, "6.6.6.6".parse().unwrap());
        svc.oneshot(req).await.unwrap();
    }
}
