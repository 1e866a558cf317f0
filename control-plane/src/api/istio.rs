//! Istio and Gateway API objects, stored as written
//! ([`crate::istio::store`]):
//!
//! * `POST /api/v1/istio[?strict=true]`: a multi-document YAML (or JSON)
//!   body of Istio objects, Gateway API objects and Sane documents, stored
//!   and converted in one all-or-nothing write. The reply lists, per
//!   object, the Sane resources it produced and its unsupported fields.
//!   400: not YAML, an unknown kind, a malformed object; 422: a missing
//!   subset, an unknown host, `strict` findings, or Sane resources the
//!   registry refuses; 409: two objects (or a Sane route and an object)
//!   directing one service, or a resource another source owns.
//! * `GET /api/v1/istio`: every stored object with what it produced and its
//!   findings; `GET /api/v1/istio/{resource}` those of one kind;
//!   `GET /api/v1/istio/{resource}/{namespace}/{name}` one, with
//!   the object itself (`resource` as Kubernetes names it:
//!   `virtualservices`, `gateways.gateway.networking.k8s.io`, ...).
//! * `DELETE /api/v1/istio/{resource}/{namespace}/{name}`: removes the
//!   object and what it produced.
//!
//! In `--kubernetes` mode the objects come from the cluster (watched,
//! [`crate::istio::watched`]): they are listed with `"source":
//! "kubernetes"` (a refused one with its `error`), and writes here are
//! refused with 409 (`kubectl apply` them: every replica watches them).

use super::{read_body, ApiError, ApiState};
use crate::istio::object::{parse_documents, ObjectKind};
use crate::istio::server::Request;
use crate::istio::store::{ObjectKey, Written};
use crate::istio::{IstioError, StoreError};
use crate::resource::{Kind, Resource};
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use sane_xds_proto::namespace_or_default;
use sane_xds_proto::resources::qualify;
use serde_json::json;
use std::collections::HashMap;

/// `/istio`, `/istio/{resource}/{namespace}/{name}`.
pub(super) fn routes() -> Router<ApiState> {
    Router::new()
        .route("/istio", post(apply).get(list))
        .route("/istio/{resource}", get(list_kind))
        .route(
            "/istio/{resource}/{namespace}/{name}",
            get(get_one).delete(delete),
        )
}

async fn apply(
    State(state): State<ApiState>,
    Query(q): Query<HashMap<String, String>>,
    body: Body,
) -> Result<Response, ApiError> {
    refuse_in_cluster(&state)?;
    let strict = match q.get("strict").map(String::as_str) {
        None | Some("false") => false,
        Some("true") | Some("") => true,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "strict: {other:?} is not true or false"
            )))
        }
    };
    let bytes = read_body(body, state.body_limit).await?;
    let text = std::str::from_utf8(&bytes)
        .map_err(|e| ApiError::bad_request(format!("the body is not UTF-8: {e}")))?;
    // Nesting and aliases bounded before anything is built.
    sane_xds_proto::yaml::check(
        text,
        &sane_xds_proto::yaml::YamlLimits::with_max_bytes(state.body_limit),
    )
    .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let documents = parse_documents(text).map_err(|e| ApiError::from(StoreError::from(e)))?;
    if documents.is_empty() {
        return Err(ApiError::bad_request("the body holds no document"));
    }
    let request = Request {
        documents,
        remove: Vec::new(),
        strict,
    };
    let written = state.istio.apply(&state.registry, request).await?;
    Ok(Json(written_body(&written)).into_response())
}

async fn list(State(state): State<ApiState>) -> Response {
    let mut items: Vec<_> = state
        .istio
        .objects()
        .iter()
        .map(|(k, o)| o.to_json(k, false))
        .collect();
    items.extend(state.istio_watched.get().to_json(false));
    Json(json!({ "items": items })).into_response()
}

async fn list_kind(
    State(state): State<ApiState>,
    Path(resource): Path<String>,
) -> Result<Response, ApiError> {
    let kind = object_kind(&resource)?;
    let mut items: Vec<_> = state
        .istio
        .objects()
        .iter()
        .filter(|(k, _)| k.kind == kind)
        .map(|(k, o)| o.to_json(k, false))
        .collect();
    items.extend(
        state
            .istio_watched
            .get()
            .to_json(false)
            .into_iter()
            .filter(|v| v["resource"] == kind.plural()),
    );
    Ok(Json(json!({ "items": items })).into_response())
}

async fn get_one(
    State(state): State<ApiState>,
    Path((resource, namespace, name)): Path<(String, String, String)>,
) -> Result<Response, ApiError> {
    let key = object_key(&resource, namespace, name)?;
    let objects = state.istio.objects();
    if let Some(object) = objects.get(&key) {
        return Ok(Json(object.to_json(&key, true)).into_response());
    }
    let watched = state
        .istio_watched
        .get()
        .one(&key)
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, format!("{key} is not stored")))?;
    Ok(Json(watched).into_response())
}

async fn delete(
    State(state): State<ApiState>,
    Path((resource, namespace, name)): Path<(String, String, String)>,
) -> Result<Response, ApiError> {
    refuse_in_cluster(&state)?;
    let key = object_key(&resource, namespace, name)?;
    let request = Request {
        remove: vec![key],
        ..Default::default()
    };
    let written = state.istio.apply(&state.registry, request).await?;
    Ok(Json(written_body(&written)).into_response())
}

/// With the cluster as the store, objects are written there (`kubectl
/// apply`), where every replica watches them; one stored here would be
/// this replica's alone.
fn refuse_in_cluster(state: &ApiState) -> Result<(), ApiError> {
    if state.cluster.is_some() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "this control plane follows the Kubernetes cluster (--kubernetes): apply Istio and \
             Gateway API objects to the cluster (kubectl apply -f); every replica watches and \
             converts them, and `sanectl status` shows their findings",
        ));
    }
    Ok(())
}

fn object_kind(resource: &str) -> Result<ObjectKind, ApiError> {
    ObjectKind::from_resource_name(resource).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            format!(
                "{resource:?} is not a stored kind (one of: {})",
                ObjectKind::ALL.map(ObjectKind::plural).join(", ")
            ),
        )
    })
}

fn object_key(resource: &str, namespace: String, name: String) -> Result<ObjectKey, ApiError> {
    let kind = object_kind(resource)?;
    Ok(ObjectKey {
        kind,
        namespace,
        name,
    })
}

fn written_body(w: &Written) -> serde_json::Value {
    let outcomes: Vec<_> = w
        .applied
        .outcomes
        .iter()
        .map(|(kind, key, outcome)| json!({ "kind": kind, "key": key, "outcome": outcome }))
        .collect();
    json!({
        "revision": w.applied.revision,
        "objects": w.converted,
        "outcomes": outcomes,
    })
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        let status = match &e {
            StoreError::Convert(c) => match c {
                IstioError::Yaml { .. }
                | IstioError::UnknownKind { .. }
                | IstioError::Malformed { .. } => StatusCode::BAD_REQUEST,
                IstioError::Conflict { .. } => StatusCode::CONFLICT,
                IstioError::MissingSubset { .. }
                | IstioError::UnknownHost { .. }
                | IstioError::Strict(_) => StatusCode::UNPROCESSABLE_ENTITY,
            },
            StoreError::Registry(_) => StatusCode::UNPROCESSABLE_ENTITY,
            StoreError::NotStored(_) => StatusCode::NOT_FOUND,
            StoreError::Listeners => StatusCode::BAD_REQUEST,
            StoreError::Io { .. } | StoreError::Invalid { .. } | StoreError::Task(_) => {
                tracing::error!(error = %e, "storing istio objects failed");
                return ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal error");
            }
        };
        match e {
            // The registry's own mapping: status and rejected fields.
            StoreError::Registry(r) => ApiError::from(r),
            e => ApiError::new(status, e.to_string()),
        }
    }
}

/// A write through the resource API (`PUT`/`DELETE` of `kind` at `key`,
/// `resource` for a put) that would change what a stored object produced,
/// or add a Sane route for a service a stored object directs, is refused
/// naming the object: the two would disagree silently otherwise.
pub(super) fn check_resource_write(
    state: &ApiState,
    kind: Kind,
    key: &str,
    resource: Option<&Resource>,
) -> Result<(), ApiError> {
    let snap = state.registry.snapshot();
    let producer = |kind: Kind, key: &str| {
        let what = format!("{kind} {key}");
        state
            .istio
            .producer_of(&what)
            .map(|o| o.to_string())
            .unwrap_or_else(|| "a stored Istio object".to_string())
    };
    if snap
        .get(kind, key)
        .is_some_and(|e| e.origin == crate::registry::Origin::Istio)
    {
        let object = producer(kind, key);
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("{kind} {key:?} is produced by {object}; change or delete that object instead"),
        ));
    }
    let Some(Resource::Route(route)) = resource else {
        return Ok(());
    };
    let service = qualify(&route.service, namespace_or_default(&route.namespace));
    // The routes directing this service, from the registry's index: a PUT
    // costs the routes of its service, not every route.
    for (other_key, e) in snap.routes_of(&service) {
        if e.origin == crate::registry::Origin::Istio {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                format!(
                    "conflict for service {service:?}: {} and Sane route {key} both direct it (remove one)",
                    producer(Kind::Route, other_key)
                ),
            ));
        }
    }
    Ok(())
}
