//! The one service type passed between stages (STYLE.md §6), and the
//! function that runs one for a server.
//!
//! Below the stacks that build an [`HttpSvc`] and the servers that call one
//! ([`crate::protocol::server`], the gateway), so neither imports the other's
//! module for the type.

use crate::body::Body;
use crate::error::ProxyError;
use http::{Request, Response, Version};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tower::util::BoxCloneSyncService;

/// The one service type passed between stages.
pub type HttpSvc = BoxCloneSyncService<Request<Body>, Response<Body>, ProxyError>;

/// Calls `svc` and turns an error into its response (never fails).
///
/// An HTTP/1 request whose body was not read to the end when the proxy
/// answers with an error (a POST it could not forward) leaves the
/// connection unusable: nobody knows where the next request starts, so
/// hyper closes it after the response. The response then says
/// `connection: close`, so the client does not send another request on a
/// connection that is going away.
pub async fn serve(svc: HttpSvc, req: Request<Body>) -> Response<Body> {
    use tower::ServiceExt;
    // Only an HTTP/1 body still to come can be left unread: only it is
    // tracked (a wrapper and a flag, allocated per request).
    let unread = req.version() < Version::HTTP_2 && !http_body::Body::is_end_stream(req.body());
    let (req, body_ended) = if unread {
        let (req, ended) = crate::protocol::http::track_body_end(req);
        (req, Some(ended))
    } else {
        (req, None)
    };
    match svc.oneshot(req).await {
        Ok(rsp) => rsp,
        Err(e) => {
            let mut rsp = e.to_response();
            let ended = |e: Arc<AtomicBool>| e.load(Ordering::Acquire);
            if body_ended.is_some_and(|e| !ended(e)) {
                rsp.headers_mut().insert(
                    http::header::CONNECTION,
                    http::HeaderValue::from_static("close"),
                );
            }
            rsp
        }
    }
}
