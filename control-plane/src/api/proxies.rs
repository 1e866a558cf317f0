//! The proxy status table over HTTP: who is connected, in sync, NACKing.

use super::{ApiError, ApiState};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

/// `/proxies`, `/proxies/{id}`, `/proxies/{id}/config`.
pub(super) fn routes() -> Router<ApiState> {
    Router::new()
        .route("/proxies", get(list))
        .route("/proxies/{id}", get(one))
        .route("/proxies/{id}/config", get(config))
}

async fn list(State(state): State<ApiState>) -> Json<serde_json::Value> {
    let revision = state.registry.revision();
    let proxies = state.status.list(revision);
    let all_in_sync = proxies.iter().filter(|p| p.connected).all(|p| p.in_sync);
    Json(json!({ "revision": revision, "all_in_sync": all_in_sync, "proxies": proxies }))
}

async fn one(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let status = state
        .status
        .get(&id, state.registry.revision())
        .ok_or_else(|| unknown(&id))?;
    Ok(Json(json!(status)))
}

async fn config(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let config = state.status.config(&id).ok_or_else(|| unknown(&id))?;
    Ok(Json(json!(config)))
}

fn unknown(id: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!("proxy {id:?} is not connected and was not seen recently"),
    )
}
