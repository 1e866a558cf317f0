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
    // (each row says which replica the proxy is connected to).
    let own = etcd.replica().to_string();
    let mut rows: Vec<serde_json::Value> = proxies.iter().map(|p| own_row(p, &own)).collect();
    let mut replicas = vec![own.clone()];
    let mut body = json!({});
    match other_replicas(etcd, &own, revision).await {
        Ok(others) => {
            for (name, other_rows) in others {
                rows.extend(other_rows);
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

/// One proxy: its newest stream here, or — replicas on etcd — the row
/// another replica published for it (a connected row first), so every
/// replica answers for every proxy.
async fn one(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let revision = state.registry.revision();
    let local = state.status.get(&id, revision);
    let Some(etcd) = state.registry.etcd() else {
        return local.map(|s| Json(json!(s))).ok_or_else(|| unknown(&id));
    };
    let own = etcd.replica().to_string();
    let mut rows: Vec<serde_json::Value> = local.iter().map(|p| own_row(p, &own)).collect();
    if let Ok(others) = other_replicas(etcd, &own, revision).await {
        rows.extend(
            others
                .into_iter()
                .flat_map(|(_, rows)| rows)
                .filter(|row| row["node"] == id.as_str()),
        );
    }
    let connected = rows.iter().position(|r| r["connected"] == true);
    match connected.or((!rows.is_empty()).then_some(0)) {
        Some(i) => Ok(Json(rows.swap_remove(i))),
        None => Err(unknown(&id)),
    }
}

/// What a proxy was last sent: kept by the replica it is connected to only;
/// another replica's answer names that one.
async fn config(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    if let Some(config) = state.status.config(&id) {
        return Ok(Json(json!(config)));
    }
    let Some(etcd) = state.registry.etcd() else {
        return Err(unknown(&id));
    };
    let own = etcd.replica().to_string();
    let others = other_replicas(etcd, &own, state.registry.revision())
        .await
        .unwrap_or_default();
    let on = others
        .into_iter()
        .find(|(_, rows)| rows.iter().any(|r| r["node"] == id.as_str()));
    match on {
        Some((replica, _)) => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!(
                "proxy {id:?} is connected to replica {replica:?}: what it was sent is kept \
                 there (ask that replica's /api/v1/proxies/{id}/config)"
            ),
        )),
        None => Err(unknown(&id)),
    }
}

/// A row of this replica, with its name.
fn own_row(p: &crate::status::ProxyStatus, own: &str) -> serde_json::Value {
    let mut v = json!(p);
    v["replica"] = json!(own);
    v
}

/// Every other replica's published rows, by replica name, each row with
/// its `replica`. A row of another replica counts as in sync only at this
/// replica's `revision`.
async fn other_replicas(
    etcd: &crate::store::etcd::EtcdStore,
    own: &str,
    revision: u64,
) -> Result<Vec<(String, Vec<serde_json::Value>)>, crate::error::Error> {
    let others = crate::store::etcd_shared::replicas_status(etcd, own).await?;
    Ok(others
        .into_iter()
        .map(|other| {
            let name = other["replica"].as_str().unwrap_or_default().to_string();
            let rows = other["proxies"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|row| {
                    let mut row = row.clone();
                    let current = row["revision"].as_u64().is_some_and(|r| r >= revision);
                    let in_sync = row["in_sync"].as_bool().unwrap_or(false) && current;
                    row["in_sync"] = json!(in_sync);
                    row["replica"] = json!(name);
                    row
                })
                .collect();
            (name, rows)
        })
        .collect())
}

fn unknown(id: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!("proxy {id:?} is not connected and was not seen recently"),
    )
}
