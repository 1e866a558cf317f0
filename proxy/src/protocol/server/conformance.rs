//! Requests the server refuses before any stack sees them, because
//! intermediaries that read them differently disagree on what was asked
//! (RFC 9112, RFC 9113; Envoy refuses the same ones):
//!
//! * more header fields than the listener's limit: `431` (HTTP/1: hyper's
//!   parser stops at the limit; HTTP/2 has no count limit of its own);
//! * more than one `Host`, or (HTTP/2) a `Host` that differs from
//!   `:authority`: `400`;
//! * both `Content-Length` and `Transfer-Encoding` (found by
//!   [`super::framing`], since hyper keeps only one of them): `400`.
//!
//! Each answer is a [`ProxyError`], so it carries its flag (`DPE`).

use crate::error::ProxyError;
use http::uri::Authority;
use http::{header, Request, Version};

/// Checks `req` against the rules above; `ambiguous` says the connection's
/// framing scan found both lengths in this request's head.
pub(super) fn check<B>(
    req: &Request<B>,
    max_headers: usize,
    ambiguous: bool,
) -> Result<(), ProxyError> {
    let bad = |reason: &str| ProxyError::BadRequest {
        reason: reason.into(),
    };
    let headers = req.headers();
    if headers.len() > max_headers {
        return Err(ProxyError::TooManyHeaders {
            count: headers.len(),
            limit: max_headers,
        });
    }
    if ambiguous {
        return Err(bad(
            "request has both Content-Length and Transfer-Encoding (RFC 9112 section 6.1)",
        ));
    }
    let mut hosts = headers.get_all(header::HOST).iter();
    let first = hosts.next();
    if hosts.next().is_some() {
        return Err(bad(
            "request has more than one Host header (RFC 9112 section 3.2)",
        ));
    }
    if let (Some(host), Some(authority), Version::HTTP_2) =
        (first, req.uri().authority(), req.version())
    {
        // The same entity: the host alike, and the port where both give one
        // (`a.example` and `a.example:443` name one server).
        let same = host
            .to_str()
            .ok()
            .and_then(|h| h.parse::<Authority>().ok())
            .is_some_and(|h| {
                h.host().eq_ignore_ascii_case(authority.host())
                    && (h.port_u16().is_none()
                        || authority.port_u16().is_none()
                        || h.port_u16() == authority.port_u16())
            });
        if !same {
            return Err(bad(
                "request's Host header differs from its :authority (RFC 9113 section 8.3.1)",
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(headers: &[(&str, &str)]) -> Request<()> {
        let mut b = Request::get("/");
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap()
    }

    #[test]
    fn two_hosts_are_refused() {
        assert!(check(&req(&[("host", "a")]), 100, false).is_ok());
        let e = check(&req(&[("host", "a"), ("host", "b")]), 100, false).unwrap_err();
        assert_eq!((e.status().as_u16(), e.response_flag()), (400, "DPE"));
        // Even when they agree: a front end may have used either.
        assert!(check(&req(&[("host", "a"), ("host", "a")]), 100, false).is_err());
    }

    #[test]
    fn header_count_over_the_limit_is_431() {
        let many: Vec<(String, String)> =
            (0..101).map(|i| (format!("x-h{i}"), "v".into())).collect();
        let refs: Vec<(&str, &str)> = many.iter().map(|(k, v)| (&k[..], &v[..])).collect();
        let e = check(&req(&refs), 100, false).unwrap_err();
        assert_eq!((e.status().as_u16(), e.response_flag()), (431, "DPE"));
        assert!(check(&req(&refs[..100]), 100, false).is_ok());
    }

    #[test]
    fn an_ambiguous_length_is_400() {
        let e = check(&req(&[("host", "a")]), 100, true).unwrap_err();
        assert_eq!(e.status().as_u16(), 400);
        assert!(e.to_string().contains("Transfer-Encoding"), "{e}");
    }

    #[test]
    fn http2_host_must_match_the_authority() {
        let mut r = Request::get("http://a.example:80/")
            .version(Version::HTTP_2)
            .header("host", "A.example")
            .body(())
            .unwrap();
        assert!(check(&r, 100, false).is_ok());
        r.headers_mut()
            .insert("host", http::HeaderValue::from_static("a.example:80"));
        assert!(check(&r, 100, false).is_ok());
        for other in ["b.example", "a.example:8080", "a.example@b"] {
            r.headers_mut()
                .insert("host", http::HeaderValue::from_static(other));
            assert!(check(&r, 100, false).is_err(), "{other}");
        }
    }
}
