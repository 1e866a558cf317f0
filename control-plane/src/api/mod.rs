//! The HTTP API (JSON, under `/api/v1`), plus `/healthz` and `/metrics`.
//!
//! Reads are open unless `--api-read-token-required`; every other method
//! needs `Authorization: Bearer <token>` ([`auth`]). `/healthz` and
//! `/metrics` stay open either way. Errors are `{"error": "..."}` (plus `fields` for validation
//! errors): 400 malformed JSON, unknown fields or a body that does not match
//! its path; 401 missing or wrong token; 404 unknown resource or route; 409
//! a file-owned resource or a heartbeat without lease; 413 a body over the
//! limit; 422 a write that fails validation (including references to unknown
//! services); 500 `internal error` for anything unexpected, including a
//! panicking handler (the detail goes to the log only). A failed write
//! stores nothing. The routes are listed, with
//! their schemas, in [`openapi`] (`GET /api/v1/openapi.json`). In
//! `--kubernetes` mode writes of routes and policies go to the cluster
//! ([`cluster`]): a conflict the API server reports is a 409 too, and an
//! API server that cannot be reached a 503.

pub mod auth;
pub mod cluster;
mod istio;
pub mod openapi;
mod proxies;
mod resources;
mod tokens;

use crate::error::{Error, RejectedField};
use crate::registry::Registry;
use crate::status::ProxyStatusTable;
use auth::{ApiToken, AuthFailure};
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use std::sync::Arc;

/// Default limit of request bodies: 1 MiB.
pub const DEFAULT_BODY_LIMIT: usize = 1024 * 1024;

/// What the handlers share.
#[derive(Clone, Debug)]
pub struct ApiState {
    /// The registry.
    pub registry: Arc<Registry>,
    /// Connected proxies.
    pub status: Arc<ProxyStatusTable>,
    /// The token writes must present.
    pub token: Arc<ApiToken>,
    /// Rendered at `/metrics`.
    pub metrics: prometheus::Registry,
    /// Largest accepted request body, in bytes.
    pub body_limit: usize,
    /// Workload bootstrap tokens the CA accepts.
    pub workload_tokens: Arc<crate::ca::tokens::WorkloadTokens>,
    /// Trust domain of the CA (to report the identity a token grants).
    pub trust_domain: String,
    /// Where `/ui` reads the proxies' metrics. Default: none.
    pub prometheus: Option<crate::ui::prometheus::PromClient>,
    /// Reads need the token too (`--api-read-token-required`).
    pub read_token_required: bool,
    /// The stored Istio and Gateway API objects.
    pub istio: Arc<crate::istio::store::IstioStore>,
    /// Istio and Gateway API objects watched in the cluster
    /// (`--kubernetes`), shown beside the stored ones.
    pub istio_watched: Arc<crate::istio::watched::WatchedObjects>,
    /// Where writes go when the registry is not the store (`--kubernetes`:
    /// the cluster's `sane.mesh/v1` objects). Default: none.
    pub cluster: Option<Arc<dyn cluster::ClusterStore>>,
}

/// An error response: status and `{"error": ..., "fields": [...]}`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
    fields: Vec<RejectedField>,
}

/// Builds the API router.
pub fn router(state: ApiState) -> Router {
    let api = Router::new()
        .route("/openapi.json", get(openapi::handler))
        .merge(resources::routes())
        .merge(proxies::routes())
        .merge(tokens::routes())
        .merge(istio::routes())
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            require_token,
        ));
    let router = Router::new()
        .route(
            "/healthz",
            get(|| async { Json(serde_json::json!({"status": "ok"})) }),
        )
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .route("/ui", get(crate::ui::page))
        .nest("/api/v1", api)
        .fallback(|method: Method, uri: axum::http::Uri| async move {
            ApiError::new(
                StatusCode::NOT_FOUND,
                format!("no route for {method} {uri}"),
            )
        })
        .method_not_allowed_fallback(|method: Method, uri: axum::http::Uri| async move {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                format!("{method} is not allowed on {}", uri.path()),
            )
        })
        .with_state(state);
    catch_panics(router)
}

/// `/ready`: 200 while the control plane serves proxies (a replica that
/// lost etcd keeps serving its last view), with whether writes can commit
/// in `writes` (`{"ready": false, "reason": …}` naming the store's cause).
async fn ready(State(state): State<ApiState>) -> Json<serde_json::Value> {
    let writes = match state.registry.etcd() {
        None => serde_json::json!({ "ready": true }),
        Some(etcd) => match etcd.check_writable().await {
            Ok(()) => serde_json::json!({ "ready": true, "store": etcd.config().display() }),
            Err(e) => serde_json::json!({ "ready": false, "reason": e.to_string() }),
        },
    };
    Json(serde_json::json!({
        "status": "ready",
        "revision": state.registry.revision(),
        "writes": writes,
    }))
}

/// Outermost layer: a panicking handler gets a plain 500, never its text.
fn catch_panics(router: Router) -> Router {
    router.layer(tower_http::catch_panic::CatchPanicLayer::custom(
        panic_response,
    ))
}

/// The answer to a request whose handler panicked: logged here, and the
/// client is told nothing about it (the text may hold internals).
fn panic_response(panic: Box<dyn std::any::Any + Send + 'static>) -> Response {
    let text = panic
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| panic.downcast_ref::<&str>().copied())
        .unwrap_or("(not a string)");
    tracing::error!(panic = %text, "api handler panicked");
    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal error").into_response()
}

/// Writes need the token; reads too with `read_token_required`.
async fn require_token(State(state): State<ApiState>, req: Request, next: Next) -> Response {
    let read = matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS);
    if !read || state.read_token_required {
        let header = req
            .headers()
            .get(header::AUTHORIZATION)
            .map(|v| v.as_bytes());
        if let Err(failure) = state.token.check(header) {
            let msg = match failure {
                AuthFailure::Missing => "missing Authorization: Bearer <token> header",
                AuthFailure::Invalid => "invalid API token",
            };
            let mut resp = ApiError::new(StatusCode::UNAUTHORIZED, msg).into_response();
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
            return resp;
        }
    }
    next.run(req).await
}

async fn metrics(State(state): State<ApiState>) -> Response {
    let families = state.metrics.gather();
    match prometheus::TextEncoder::new().encode_to_string(&families) {
        Ok(text) => ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response(),
        Err(e) => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

/// Reads a request body of at most `limit` bytes.
async fn read_body(body: Body, limit: usize) -> Result<bytes::Bytes, ApiError> {
    use http_body_util::BodyExt;
    match http_body_util::Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body is over the limit of {limit} bytes"),
        )),
        Err(e) => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("reading request body: {e}"),
        )),
    }
}

// === impl ApiState ===

/// `GET /ui` reads its part of the state.
impl axum::extract::FromRef<ApiState> for crate::ui::UiState {
    fn from_ref(state: &ApiState) -> Self {
        Self {
            registry: state.registry.clone(),
            status: state.status.clone(),
            prometheus: state.prometheus.clone(),
            read_token_required: state.read_token_required,
        }
    }
}

// === impl ApiError ===

impl ApiError {
    /// An error with a status and a message.
    pub fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
            fields: Vec::new(),
        }
    }

    fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> ApiError {
        let status = match &e {
            Error::Rejected(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Error::NotFound { .. } => StatusCode::NOT_FOUND,
            Error::Conflict { .. } | Error::NoLease { .. } | Error::VersionConflict { .. } => {
                StatusCode::CONFLICT
            }
            // The replica's etcd is down or contended: retry later (the
            // body names the members and the cause).
            Error::StoreUnavailable { .. }
            | Error::StoreFormat { .. }
            | Error::StoreContention { .. } => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        if status == StatusCode::SERVICE_UNAVAILABLE {
            tracing::warn!(error = %e, "api write refused");
        } else if status.is_server_error() {
            tracing::error!(error = %e, "api request failed");
        }
        let fields = match &e {
            Error::Rejected(r) => r.fields.clone(),
            _ => Vec::new(),
        };
        ApiError {
            status,
            message: e.to_string(),
            fields,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = serde_json::json!({ "error": self.message });
        if !self.fields.is_empty() {
            body["fields"] = serde_json::json!(self.fields);
        }
        (self.status, Json(body)).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::ServiceExt;

    #[tokio::test]
    async fn a_panicking_handler_gets_a_plain_500_without_the_panic_text() {
        let router = Router::new().route(
            "/boom",
            get(|| async {
                let huge = u64::MAX;
                if huge > 0 {
                    panic!("secret detail {huge}");
                }
                "unreachable"
            }),
        );
        let resp = catch_panics(router)
            .oneshot(Request::get("/boom").body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let body = http_body_util::BodyExt::collect(resp.into_body())
            .await
            .unwrap()
            .to_bytes();
        let text = String::from_utf8_lossy(&body);
        assert_eq!(text, r#"{"error":"internal error"}"#);
    }
}
