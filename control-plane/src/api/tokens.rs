//! Workload bootstrap tokens: `POST /api/v1/tokens` issues one for a
//! namespace and service account. The token is in the reply only; the
//! control plane keeps its hash (see [`crate::ca::tokens`]).

use super::{read_body, ApiError, ApiState};
use crate::ca::tokens::TokenGrant;
use axum::body::Body;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;

/// `/tokens`.
pub(super) fn routes() -> Router<ApiState> {
    Router::new().route("/tokens", post(issue))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct IssueRequest {
    namespace: String,
    service_account: String,
}

async fn issue(State(state): State<ApiState>, body: Body) -> Result<Response, ApiError> {
    let bytes = read_body(body, state.body_limit).await?;
    let req: IssueRequest = serde_json::from_slice(&bytes).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("invalid token request: {e}"),
        )
    })?;
    let identity = sane_certs::SpiffeId::new(
        sane_certs::TrustDomain::new(&state.trust_domain)
            .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?,
        &req.namespace,
        &req.service_account,
    )
    .map_err(|e| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()))?;
    let token = state
        .workload_tokens
        .issue(TokenGrant {
            namespace: req.namespace,
            service_account: req.service_account,
        })
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    tracing::info!(%identity, "issued a workload bootstrap token");
    Ok((
        StatusCode::CREATED,
        Json(json!({ "token": token, "identity": identity.to_string() })),
    )
        .into_response())
}
