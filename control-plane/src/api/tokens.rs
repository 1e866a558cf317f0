//! Workload bootstrap tokens: `POST /api/v1/tokens` issues one for a
//! namespace and service account; the token is in the reply only, the
//! control plane keeps its hash (see [`crate::ca::tokens`]). `GET
//! /api/v1/tokens` lists them by id (never the token), `DELETE
//! /api/v1/tokens/{id}` revokes one: the CA and new xDS streams refuse it
//! from then on, and open xDS streams opened with it are ended.
//!
//! Every method here needs the API token, reads included: the list says
//! which workloads hold credentials.

use super::{read_body, ApiError, ApiState};
use crate::ca::tokens::{token_id, TokenGrant};
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;

/// `/tokens`, `/tokens/{id}`.
pub(super) fn routes() -> Router<ApiState> {
    Router::new()
        .route("/tokens", post(issue).get(list))
        .route("/tokens/{id}", delete(revoke))
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
    let identity = identity(&state, &req.namespace, &req.service_account)?;
    let token = state
        .workload_tokens
        .issue(TokenGrant {
            namespace: req.namespace,
            service_account: req.service_account,
        })
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let id = token_id(&token);
    tracing::info!(%identity, %id, "issued a workload bootstrap token");
    Ok((
        StatusCode::CREATED,
        Json(json!({ "token": token, "id": id, "identity": identity.to_string() })),
    )
        .into_response())
}

async fn list(State(state): State<ApiState>, headers: HeaderMap) -> Result<Response, ApiError> {
    require_api_token(&state, &headers)?;
    let items: Vec<serde_json::Value> = state
        .workload_tokens
        .list()
        .into_iter()
        .map(|t| {
            let identity = identity(&state, &t.grant.namespace, &t.grant.service_account)
                .map(|i| i.to_string())
                .unwrap_or_default();
            let mut item = serde_json::to_value(&t).unwrap_or_default();
            item["identity"] = json!(identity);
            item
        })
        .collect();
    Ok(Json(json!({ "items": items })).into_response())
}

async fn revoke(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    match state.workload_tokens.revoke(&id) {
        Ok(Some(grant)) => {
            tracing::warn!(%id, namespace = %grant.namespace, service_account = %grant.service_account, "workload token revoked");
            Ok(Json(json!({
                "id": id,
                "revoked": true,
                "namespace": grant.namespace,
                "service_account": grant.service_account,
            }))
            .into_response())
        }
        Ok(None) => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no workload token with id {id:?} (see GET /api/v1/tokens)"),
        )),
        Err(e) => Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            e.to_string(),
        )),
    }
}

fn identity(
    state: &ApiState,
    namespace: &str,
    service_account: &str,
) -> Result<sane_certs::SpiffeId, ApiError> {
    sane_certs::SpiffeId::new(
        sane_certs::TrustDomain::new(&state.trust_domain)
            .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?,
        namespace,
        service_account,
    )
    .map_err(|e| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()))
}

/// The list is not a public read: it needs the API token even when other
/// reads are open (the middleware already checks every other method).
fn require_api_token(state: &ApiState, headers: &HeaderMap) -> Result<(), ApiError> {
    let header = headers.get(header::AUTHORIZATION).map(|v| v.as_bytes());
    state.token.check(header).map_err(|_| {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "listing workload tokens needs the API token (Authorization: Bearer <token>)",
        )
    })
}
