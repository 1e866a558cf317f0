//! HTTP helpers shared by inbound and outbound: authority parsing, hop-by-hop
//! header handling and request normalization for the next hop.

use crate::body::{Body, BodyError};
use crate::error::ProxyError;
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{Authority, PathAndQuery, Scheme, Uri};
use http::{Request, Version};
use http_body::{Frame, SizeHint};
use http_body_util::BodyExt;
use std::borrow::Cow;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

/// Hop-by-hop headers outside `http`'s standard set.
const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// HTTP/2 flow-control window of each stream, on every connection the proxy
/// makes or accepts: how much of a body may wait, unread, per stream. It
/// bounds what a stream whose reader stalled can make the proxy buffer.
pub const H2_STREAM_WINDOW: u32 = 1 << 20;
/// Open streams a pooled upstream HTTP/2 connection carries at most
/// ([`crate::upstream::pool`] opens another connection beyond it).
pub const H2_MAX_STREAMS_PER_CONNECTION: usize = 128;
/// HTTP/2 flow-control window of a whole connection: one stream window for
/// each stream a pooled connection may carry (128 MiB; the window is only a
/// permission to send, memory is used by what is actually buffered).
///
/// Sidecar-to-sidecar traffic shares pooled HTTP/2 connections, and a stream
/// whose reader stalls keeps its unread bytes charged to the connection.
/// With a connection window of 16 stream windows, about two dozen clients
/// that stopped reading large downloads froze every other request to the
/// same peer; now the unread bytes of all the streams a connection may carry
/// fit in its window, so stalled streams only ever block themselves
/// (`e2e/tests/stalled_peers.rs`).
pub const H2_CONNECTION_WINDOW: u32 = H2_MAX_STREAMS_PER_CONNECTION as u32 * H2_STREAM_WINDOW;

/// hyper's own HTTP/1 header-count limit. With no limit set, hyper parses a
/// head into a header array on the stack; with one set (any value), it
/// builds that array per message, on the heap when the limit is over this
/// (two 6 KiB allocations per response at 200). So the limit is handed to
/// hyper only when it differs from hyper's.
const HYPER_MAX_HEADERS: usize = 100;

/// The header-count limit to give hyper's HTTP/1 builders for `max`
/// header fields: `None` when hyper's default is that limit already.
pub fn h1_max_headers(max: usize) -> Option<usize> {
    (max != HYPER_MAX_HEADERS).then_some(max)
}

/// Headers that describe one connection and must not be forwarded (RFC 9110
/// section 7.6.1), plus the ones HTTP/2 forbids. Standard names only (with
/// `KEEP_ALIVE` and `PROXY_CONNECTION` beside them), so looking a name up
/// here compiles to an enum check.
const HOP_BY_HOP: [HeaderName; 6] = [
    header::CONNECTION,
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::TE,
];
/// Bits of the mask `strip_hop_by_hop` builds: bit `i` is `HOP_BY_HOP[i]`
/// (`TE` is the sixth), then these two.
const TE_BIT: u8 = 1 << 5;
const KEEP_ALIVE_BIT: u8 = 1 << 6;
const PROXY_CONNECTION_BIT: u8 = 1 << 7;

/// The host (lowercased) and optional port the request is addressed to, from
/// the URI authority (HTTP/2, absolute-form) or the `Host` header.
pub fn target<B>(req: &Request<B>) -> Result<(String, Option<u16>), ProxyError> {
    target_ref(req).map(|(host, port)| (host.into_owned(), port))
}

/// [`target`], borrowing the host from the request when it is already
/// lowercase (the common case): the route stage looks it up per request.
pub fn target_ref<B>(req: &Request<B>) -> Result<(Cow<'_, str>, Option<u16>), ProxyError> {
    let authority = match req.uri().authority() {
        Some(a) => return checked(a.as_str()).map(|()| (lowercase(a.host()), a.port_u16())),
        None => {
            let host = req
                .headers()
                .get(header::HOST)
                .ok_or_else(|| ProxyError::BadRequest {
                    reason: "request has no Host header or authority".into(),
                })?;
            let text = host.to_str().map_err(|_| ProxyError::BadRequest {
                reason: "Host header is not visible ASCII".into(),
            })?;
            if let Some(simple) = simple_host(text) {
                return Ok(simple);
            }
            text.parse::<Authority>()
                .map_err(|_| ProxyError::BadRequest {
                    reason: format!("Host header {text:?} is not a valid authority"),
                })?
        }
    };
    checked(authority.as_str())?;
    Ok((
        Cow::Owned(authority.host().to_ascii_lowercase()),
        authority.port_u16(),
    ))
}

fn checked(authority: &str) -> Result<(), ProxyError> {
    if authority.contains('@') {
        return Err(ProxyError::BadRequest {
            reason: "authority must not carry user info".into(),
        });
    }
    Ok(())
}

fn lowercase(host: &str) -> Cow<'_, str> {
    if host.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(host.to_ascii_lowercase())
    } else {
        Cow::Borrowed(host)
    }
}

/// A `Host` of the common form `name[:port]` (lowercase letters, digits,
/// `-`, `.`; a port of 1 to 5 digits that fits a `u16`), split without
/// parsing it into an [`Authority`] (which copies it). Anything else is
/// `None`, for the full parse: the answer is the same for every input this
/// accepts.
fn simple_host(text: &str) -> Option<(Cow<'_, str>, Option<u16>)> {
    let (host, port) = match text.split_once(':') {
        Some((host, port)) => {
            let digits = !port.is_empty() && port.len() <= 5;
            if !digits || !port.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            (host, Some(port.parse::<u16>().ok()?))
        }
        None => (text, None),
    };
    let plain = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.';
    (!host.is_empty() && host.bytes().all(plain)).then_some((Cow::Borrowed(host), port))
}

/// True if the request asks to switch protocols (e.g. WebSocket).
pub fn is_upgrade<B>(req: &Request<B>) -> bool {
    req.version() == Version::HTTP_11
        && req.headers().contains_key(header::UPGRADE)
        && connection_has(req.headers(), "upgrade")
}

fn connection_has(headers: &HeaderMap, token: &str) -> bool {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// Removes hop-by-hop headers (and any named in `Connection`). When
/// `upgrade` is true, `Connection: upgrade` and `Upgrade` are kept so the
/// protocol switch reaches the server. `te: trailers` is kept because gRPC
/// requires it.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, upgrade: bool) {
    // Most messages carry none of these: one pass over the names (an enum
    // compare for the standard ones) instead of a removal per name, each
    // hashing it.
    if !headers
        .keys()
        .any(|k| HOP_BY_HOP.contains(k) || k == KEEP_ALIVE || k == PROXY_CONNECTION)
    {
        return;
    }
    // Which are present, so only those are removed.
    let mut present = 0u8;
    for k in headers.keys() {
        if let Some(i) = HOP_BY_HOP.iter().position(|h| h == k) {
            present |= 1 << i;
        } else if k == KEEP_ALIVE {
            present |= KEEP_ALIVE_BIT;
        } else if k == PROXY_CONNECTION {
            present |= PROXY_CONNECTION_BIT;
        }
    }
    // Tokens of `Connection` that name other headers (not `close`, not one
    // removed anyway: `Connection: keep-alive` is the common case) are rare;
    // only they need their names parsed.
    let other_tokens = || {
        headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
    };
    let removed_anyway = |t: &str| {
        ["close", KEEP_ALIVE.as_str(), PROXY_CONNECTION.as_str()]
            .iter()
            .any(|n| t.eq_ignore_ascii_case(n))
            || HOP_BY_HOP
                .iter()
                .any(|h| t.eq_ignore_ascii_case(h.as_str()))
    };
    let named: Vec<HeaderName> = if other_tokens().any(|t| !removed_anyway(t)) {
        other_tokens()
            .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
            .collect()
    } else {
        Vec::new()
    };
    let te_trailers = present & TE_BIT != 0
        && headers
            .get(header::TE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| {
                v.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("trailers"))
            });
    let upgrade_value = upgrade
        .then(|| headers.get(header::UPGRADE).cloned())
        .flatten();
    for name in named {
        headers.remove(name);
    }
    for (i, name) in HOP_BY_HOP.iter().enumerate() {
        if present & (1 << i) != 0 {
            headers.remove(name);
        }
    }
    if present & KEEP_ALIVE_BIT != 0 {
        headers.remove(KEEP_ALIVE);
    }
    if present & PROXY_CONNECTION_BIT != 0 {
        headers.remove(PROXY_CONNECTION);
    }
    if te_trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
    if let Some(v) = upgrade_value {
        headers.insert(header::UPGRADE, v);
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
}

/// `http://<authority><path and query of req>` (`/` when it has none).
pub fn absolute_uri<B>(req: &Request<B>, authority: &str) -> Result<Uri, http::Error> {
    let pq = req
        .uri()
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    Uri::builder()
        .scheme(Scheme::HTTP)
        .authority(authority)
        .path_and_query(pq)
        .build()
}

/// Rewrites a request for an HTTP/2 hop: absolute URI with the original
/// authority, no hop-by-hop headers, no `Host` (it becomes `:authority`).
pub fn for_h2<B>(req: &mut Request<B>, authority: &str) -> Result<(), ProxyError> {
    let uri = absolute_uri(req, authority).map_err(|e| ProxyError::BadRequest {
        reason: format!("cannot build URI for {authority:?}: {e}"),
    })?;
    *req.uri_mut() = uri;
    *req.version_mut() = Version::HTTP_2;
    strip_hop_by_hop(req.headers_mut(), false);
    req.headers_mut().remove(header::HOST);
    Ok(())
}

/// Rewrites a request for an HTTP/1.1 hop: origin-form URI and a `Host`
/// header carrying the original authority.
pub fn for_h1<B>(req: &mut Request<B>, authority: &str, upgrade: bool) -> Result<(), ProxyError> {
    let pq = req
        .uri()
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    *req.uri_mut() = Uri::from(pq);
    *req.version_mut() = Version::HTTP_11;
    strip_hop_by_hop(req.headers_mut(), upgrade);
    let host = HeaderValue::from_str(authority).map_err(|_| ProxyError::BadRequest {
        reason: format!("authority {authority:?} is not a valid Host header"),
    })?;
    req.headers_mut().insert(header::HOST, host);
    Ok(())
}

/// True if the headers say the body is gRPC (`content-type:
/// application/grpc…`).
pub fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"))
}

/// The authority a request names, as text (for forwarding it unchanged).
pub fn authority_text<B>(req: &Request<B>) -> Option<String> {
    req.uri()
        .authority()
        .map(|a| a.as_str().to_string())
        .or_else(|| {
            req.headers()
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_string)
        })
}

/// Wraps the request body so the returned flag turns true once it has been
/// read to its end (at once for a request without a body).
pub fn track_body_end(req: Request<Body>) -> (Request<Body>, Arc<AtomicBool>) {
    let ended = Arc::new(AtomicBool::new(false));
    let flag = ended.clone();
    let req = req.map(|inner| {
        if http_body::Body::is_end_stream(&inner) {
            flag.store(true, Ordering::Release);
        }
        EndTracked { inner, ended: flag }.boxed_unsync()
    });
    (req, ended)
}

struct EndTracked {
    inner: Body,
    ended: Arc<AtomicBool>,
}

impl http_body::Body for EndTracked {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(polled, Poll::Ready(None)) || self.inner.is_end_stream() {
            self.ended.store(true, Ordering::Release);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn tracks_when_a_request_body_was_read_to_its_end() {
        let (req, ended) = track_body_end(Request::new(crate::body::full("abc")));
        assert!(!ended.load(Ordering::Acquire));
        let bytes = req.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(bytes, "abc");
        assert!(ended.load(Ordering::Acquire));
        let (_req, ended) = track_body_end(Request::new(crate::body::empty()));
        assert!(
            ended.load(Ordering::Acquire),
            "no body: nothing left to read"
        );
    }

    #[test]
    fn target_from_host_or_authority() {
        let req = Request::get("/x")
            .header("host", "Echo:9090")
            .body(())
            .unwrap();
        assert_eq!(target(&req).unwrap(), ("echo".into(), Some(9090)));
        let req = Request::get("http://echo/x").body(()).unwrap();
        assert_eq!(target(&req).unwrap(), ("echo".into(), None));
        let req = Request::get("/x").body(()).unwrap();
        assert!(matches!(target(&req), Err(ProxyError::BadRequest { .. })));
        let req = Request::get("/x").header("host", "a b").body(()).unwrap();
        assert!(matches!(target(&req), Err(ProxyError::BadRequest { .. })));
    }

    #[test]
    fn a_simple_host_is_borrowed_and_agrees_with_the_full_parse() {
        let host = |h: &'static str| Request::get("/x").header("host", h).body(()).unwrap();
        let req = host("echo.default:8080");
        let (name, port) = target_ref(&req).unwrap();
        assert!(matches!(name, Cow::Borrowed("echo.default")), "{name:?}");
        assert_eq!(port, Some(8080));
        // The fast path and `Authority` agree, including where it gives up.
        for text in [
            "echo",
            "echo:80",
            "Echo:80",
            "echo:",
            "echo:65535",
            "echo:65536",
            "echo:123456",
            ":80",
            "10.0.0.1:9",
            "[::1]:80",
            "u@echo",
            "a%20b",
            "echo:8a",
            "a.b-c_d",
        ] {
            let full = text.parse::<Authority>().ok().and_then(|a| {
                (!a.as_str().contains('@')).then(|| (a.host().to_ascii_lowercase(), a.port_u16()))
            });
            let got = target(&host(text)).ok();
            assert_eq!(got, full, "{text}");
        }
    }

    #[test]
    fn strips_each_hop_by_hop_header_alone_and_leaves_others_untouched() {
        for name in [
            "connection",
            "keep-alive",
            "proxy-connection",
            "proxy-authorization",
            "proxy-authenticate",
            "transfer-encoding",
            "upgrade",
            "te",
        ] {
            let mut h = HeaderMap::new();
            h.insert(HeaderName::from_static(name), HeaderValue::from_static("x"));
            h.insert("x-app", HeaderValue::from_static("kept"));
            strip_hop_by_hop(&mut h, false);
            assert!(!h.contains_key(name), "{name} kept");
            assert_eq!(h.len(), 1, "{name}: {h:?}");
        }
        let mut h = HeaderMap::new();
        h.insert("x-app", HeaderValue::from_static("kept"));
        h.append("x-app", HeaderValue::from_static("twice"));
        let before = h.clone();
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h, before);
    }

    #[test]
    fn strips_hop_by_hop_but_keeps_te_trailers_and_upgrade() {
        let mut req = Request::get("/")
            .header("connection", "keep-alive, x-secret")
            .header("x-secret", "1")
            .header("keep-alive", "timeout=5")
            .header("te", "trailers")
            .header("x-app", "kept")
            .body(())
            .unwrap();
        strip_hop_by_hop(req.headers_mut(), false);
        let h = req.headers();
        assert!(h.get("x-secret").is_none() && h.get("connection").is_none());
        assert!(h.get("keep-alive").is_none());
        assert_eq!(h["te"], "trailers");
        assert_eq!(h["x-app"], "kept");

        let mut req = Request::get("/ws")
            .header("connection", "Upgrade")
            .header("upgrade", "websocket")
            .body(())
            .unwrap();
        assert!(is_upgrade(&req));
        strip_hop_by_hop(req.headers_mut(), true);
        assert_eq!(req.headers()["upgrade"], "websocket");
        assert_eq!(req.headers()["connection"], "upgrade");
    }

    #[test]
    fn an_app_keep_alive_response_loses_only_its_hop_by_hop_headers() {
        let mut h = HeaderMap::new();
        h.insert("server", HeaderValue::from_static("nginx"));
        h.insert("connection", HeaderValue::from_static("keep-alive"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("te", HeaderValue::from_static("gzip"));
        h.insert("content-length", HeaderValue::from_static("2"));
        strip_hop_by_hop(&mut h, false);
        let names: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["server", "content-length"]);
        // A token naming another header removes it, whatever its case.
        let mut h = HeaderMap::new();
        h.insert("connection", HeaderValue::from_static("close, X-Hop"));
        h.insert("x-hop", HeaderValue::from_static("1"));
        h.insert("x-app", HeaderValue::from_static("kept"));
        strip_hop_by_hop(&mut h, false);
        let names: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["x-app"]);
    }

    #[test]
    fn rewrites_for_each_hop() {
        let mut req = Request::get("/p?q=1")
            .header("host", "echo")
            .body(())
            .unwrap();
        for_h2(&mut req, "echo").unwrap();
        assert_eq!(req.uri(), "http://echo/p?q=1");
        assert!(req.headers().get("host").is_none());
        for_h1(&mut req, "echo", false).unwrap();
        assert_eq!(req.uri(), "/p?q=1");
        assert_eq!(req.headers()["host"], "echo");
    }
}
