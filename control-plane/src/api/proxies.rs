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
    let Some(etcd) = state.registry.etcd() else {
        let all_in_sync = proxies.iter().filter(|p| p.connected).all(|p| p.in_sync);
        return Json(
            json!({ "revision": revision, "all_in_sync": all_in_sync, "proxies": proxies }),
        );
    };
    // Replicas: this one's rows, then every other replica's published ones
    // (each row says which replica the proxy is connected to). A row of
    // another replica counts as in sync only at this replica's revision.
    let own = etcd.replica().to_string();
    let mut rows: Vec<serde_json::Value> = proxies
        .iter()
        .map(|p| {
            let mut v = json!(p);
            v["replica"] = json!(own);
            v
        })
        .collect();
    let mut replicas = vec![own.clone()];
    let mut body = json!({});
    match crate::store::etcd_shared::replicas_status(etcd, &own).await {
        Ok(others) => {
            for other in others {
                let name = other["replica"].as_str().unwrap_or_default().to_string();
                for row in other["proxies"].as_array().into_iter().flatten() {
                    let mut row = row.clone();
                    let current = row["revision"].as_u64().is_some_and(|r| r >= revision);
                    let in_sync = row["in_sync"].as_bool().unwrap_or(false) && current;
                    row["in_sync"] = json!(in_sync);
                    row["replica"] = json!(name);
                    rows.push(row);
                }
                replicas.push(name);
            }
        }
        Err(e) => body["replicas_error"] = json!(e.to_string()),
    }
    let all_in_sync = rows
        .iter()
        .filter(|p| p["connected"].as_bool().unwrap_or(false))
        .all(|p| p["in_sync"].as_bool().unwrap_or(false));
    body["revision"] = json!(revision);
    body["all_in_sync"] = json!(all_in_sync);
    body["replicas"] = json!(replicas);
    body["proxies"] = json!(rows);
    Json(body)
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
