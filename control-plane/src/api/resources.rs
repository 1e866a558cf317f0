//! CRUD for services, endpoints, routes, destination and authorization
//! policies, and endpoint leases.
//!
//! Keys in paths are those of [`crate::resource`]: `{namespace}/{name}`, and
//! for endpoints `{namespace}/{service}/{address:port}`.
//!
//! Optimistic concurrency: a GET answers the resource's version in `ETag`
//! (and writes in `resource_version`); a PUT or DELETE with `If-Match:
//! "<version>"` or `?resource_version=<version>` (`0`: must not exist yet)
//! succeeds only if the resource is still at that version, else 409.
//!
//! In `--kubernetes` mode ([`super::cluster`]) routes and policies are
//! written as the cluster's `sane.mesh/v1` objects and their versions are
//! the objects' `resourceVersion`s, the same through every replica; kinds
//! the cluster cannot hold are refused (409) unless the registry is shared
//! (etcd).

use super::{read_body, ApiError, ApiState};
use crate::error::RejectedField;
use crate::registry::{Applied, Change, Op, Origin, MAX_LEASE_TTL};
use crate::resource::{Kind, Resource};
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::header::{ETAG, IF_MATCH};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use sane_xds_proto::namespace_or_default;
use serde_json::json;
use std::collections::HashMap;
use std::time::Duration;

type Params = Query<HashMap<String, String>>;

/// The routes of every kind.
pub(super) fn routes() -> Router<ApiState> {
    let mut router = Router::new();
    for kind in Kind::ALL {
        let one = match kind {
            Kind::Endpoint => "/endpoints/{namespace}/{service}/{instance}".to_string(),
            _ => format!("/{}/{{namespace}}/{{name}}", kind.plural()),
        };
        router = router
            .route(
                &format!("/{}", kind.plural()),
                get(move |s: State<ApiState>, q: Params| list(kind, s, q)),
            )
            .route(
                &one,
                get(move |s: State<ApiState>, p: Path<Vec<String>>| get_one(kind, s, p))
                    .put(
                        move |s: State<ApiState>,
                              p: Path<Vec<String>>,
                              q: Params,
                              h: HeaderMap,
                              body: Body| { put(kind, s, p, q, h, body) },
                    )
                    .delete(
                        move |s: State<ApiState>, p: Path<Vec<String>>, q: Params, h: HeaderMap| {
                            delete(kind, s, p, q, h)
                        },
                    ),
            );
    }
    router.route(
        "/endpoints/{namespace}/{service}/{instance}/heartbeat",
        post(heartbeat),
    )
}

async fn list(kind: Kind, State(state): State<ApiState>, Query(q): Params) -> Response {
    let snap = state.registry.snapshot();
    let ns = q.get("namespace");
    let service = q.get("service");
    let items: Vec<serde_json::Value> = snap
        .list(kind)
        .filter(|(_, e)| ns.is_none_or(|ns| e.resource.namespace() == ns))
        .filter(|(_, e)| match (&e.resource, service) {
            (Resource::Endpoint(ep), Some(s)) => &ep.service == s,
            _ => true,
        })
        .map(|(_, e)| e.resource.to_json())
        .collect();
    Json(json!({ "revision": snap.revision, "items": items })).into_response()
}

async fn get_one(
    kind: Kind,
    State(state): State<ApiState>,
    Path(segments): Path<Vec<String>>,
) -> Result<Response, ApiError> {
    let key = segments.join("/");
    let snap = state.registry.snapshot();
    let entry = snap.get(kind, &key).ok_or_else(|| not_found(kind, &key))?;
    let version = match &state.cluster {
        Some(cluster) => cluster.version(kind, &key).unwrap_or(entry.version),
        None => entry.version,
    };
    let mut resp = Json(entry.resource.to_json()).into_response();
    if let Ok(v) = HeaderValue::from_str(&format!("\"{version}\"")) {
        resp.headers_mut().insert(ETAG, v);
    }
    Ok(resp)
}

async fn put(
    kind: Kind,
    State(state): State<ApiState>,
    Path(segments): Path<Vec<String>>,
    Query(q): Params,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let key = segments.join("/");
    let expect = expected_version(&q, &headers)?;
    let ttl = match q.get("ttl") {
        None => None,
        Some(_) if kind != Kind::Endpoint => {
            return Err(ApiError::bad_request("ttl: applies to endpoints only"));
        }
        Some(t) => Some(parse_ttl(t)?),
    };
    let bytes = read_body(body, state.body_limit).await?;
    let mut resource = Resource::from_json(kind, &bytes)
        .map_err(|e| ApiError::bad_request(format!("invalid {kind} JSON: {e}")))?;
    fill_from_path(&mut resource, &segments)?;
    if resource.key() != key {
        return Err(ApiError::bad_request(format!(
            "the body describes {kind} {:?} but the path names {key:?}",
            resource.key()
        )));
    }
    super::istio::check_resource_write(&state, kind, &key, Some(&resource))?;
    if let Some(cluster) = cluster_for(&state, kind)? {
        let written = cluster.put(resource, expect).await?;
        return Ok(cluster_reply(&state, kind, &key, &written));
    }
    let mut ops = Vec::new();
    if let Some(version) = expect {
        ops.push(Op::Expect {
            kind,
            key: key.clone(),
            version,
        });
    }
    ops.push(Op::Put { resource, ttl });
    let change = Change {
        origin: Origin::Api,
        ops,
    };
    let applied = write(&state, change).await?;
    let created = applied.outcomes.first().map(|o| o.2) == Some(crate::registry::Outcome::Created);
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let mut body = outcome_body(&state, &applied);
    if let Some(ttl) = ttl {
        body["ttl"] = json!(humantime::format_duration(ttl).to_string());
    }
    Ok((status, Json(body)).into_response())
}

async fn delete(
    kind: Kind,
    State(state): State<ApiState>,
    Path(segments): Path<Vec<String>>,
    Query(q): Params,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let key = segments.join("/");
    super::istio::check_resource_write(&state, kind, &key, None)?;
    let expect = expected_version(&q, &headers)?;
    if let Some(cluster) = cluster_for(&state, kind)? {
        let written = cluster.delete(kind, key.clone(), expect).await?;
        return Ok(cluster_reply(&state, kind, &key, &written));
    }
    let mut ops = Vec::new();
    if let Some(version) = expect {
        ops.push(Op::Expect {
            kind,
            key: key.clone(),
            version,
        });
    }
    ops.push(Op::Delete { kind, key });
    let change = Change {
        origin: Origin::Api,
        ops,
    };
    let applied = write(&state, change).await?;
    Ok(Json(outcome_body(&state, &applied)).into_response())
}

async fn heartbeat(
    State(state): State<ApiState>,
    Path(segments): Path<Vec<String>>,
) -> Result<Response, ApiError> {
    let key = segments.join("/");
    let ttl = state.registry.heartbeat(&key)?;
    Ok(Json(json!({
        "kind": "endpoint",
        "key": key,
        "ttl": humantime::format_duration(ttl).to_string(),
    }))
    .into_response())
}

/// The cluster store a write of `kind` goes to, if not the registry; a
/// kind the cluster store refuses is a 409 saying why.
fn cluster_for(
    state: &ApiState,
    kind: Kind,
) -> Result<Option<&dyn super::cluster::ClusterStore>, ApiError> {
    let Some(cluster) = &state.cluster else {
        return Ok(None);
    };
    match cluster.route(kind) {
        None => Ok(None),
        Some(Ok(())) => Ok(Some(cluster.as_ref())),
        Some(Err(why)) => Err(ApiError::new(StatusCode::CONFLICT, why)),
    }
}

/// The answer to a cluster write: as a registry write's, with the
/// cluster's version, and whether this replica had seen it yet.
fn cluster_reply(
    state: &ApiState,
    kind: Kind,
    key: &str,
    written: &super::cluster::ClusterWrite,
) -> Response {
    let status = match written.outcome {
        crate::registry::Outcome::Created => StatusCode::CREATED,
        _ => StatusCode::OK,
    };
    let mut body = json!({
        "kind": kind,
        "key": key,
        "outcome": written.outcome,
        "revision": state.registry.revision(),
        "synced": written.synced,
    });
    if written.version > 0 {
        body["resource_version"] = json!(written.version);
    }
    (status, Json(body)).into_response()
}

/// Runs a registry write off the async workers (it fsyncs).
async fn write(state: &ApiState, change: Change) -> Result<Applied, ApiError> {
    let registry = state.registry.clone();
    let joined = tokio::task::spawn_blocking(move || registry.apply(change)).await;
    match joined {
        Ok(result) => Ok(result?),
        // The panic's text stays in the log: it is no business of the client.
        Err(error) => {
            tracing::error!(%error, "registry write task failed");
            Err(ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal error",
            ))
        }
    }
}

fn outcome_body(state: &ApiState, applied: &Applied) -> serde_json::Value {
    let (kind, key, outcome) = applied.outcomes.first().cloned().unwrap_or((
        Kind::Service,
        String::new(),
        crate::registry::Outcome::Unchanged,
    ));
    let mut body =
        json!({ "kind": kind, "key": key, "outcome": outcome, "revision": applied.revision });
    if let Some(e) = state.registry.snapshot().get(kind, &key) {
        body["resource_version"] = json!(e.version);
    }
    body
}

/// The version a write expects: `If-Match: "<n>"` or `?resource_version=<n>`
/// (both must agree when both are given).
fn expected_version(
    q: &HashMap<String, String>,
    headers: &HeaderMap,
) -> Result<Option<u64>, ApiError> {
    let bad = |what: &str, v: &str| {
        ApiError::bad_request(format!(
            "{what}: {v:?} is not a resource version (the number a GET answers in ETag, \
             or 0 for \"must not exist\")"
        ))
    };
    let from_query = match q.get("resource_version") {
        Some(v) => Some(
            v.trim()
                .parse::<u64>()
                .map_err(|_| bad("resource_version", v))?,
        ),
        None => None,
    };
    let from_header = match headers.get(IF_MATCH) {
        Some(v) => {
            let text = v.to_str().map_err(|_| bad("If-Match", "<not text>"))?;
            let trimmed = text.trim().trim_start_matches("W/").trim_matches('"');
            Some(trimmed.parse::<u64>().map_err(|_| bad("If-Match", text))?)
        }
        None => None,
    };
    match (from_query, from_header) {
        (Some(a), Some(b)) if a != b => Err(ApiError::bad_request(format!(
            "If-Match {b} and resource_version {a} disagree"
        ))),
        (a, b) => Ok(a.or(b)),
    }
}

/// Fills empty identifying fields from the path, and rejects ones that
/// disagree with it.
fn fill_from_path(resource: &mut Resource, segments: &[String]) -> Result<(), ApiError> {
    let second_name = match resource.kind() {
        Kind::Endpoint => "service",
        _ => "name",
    };
    let (ns, second) = match resource {
        Resource::Service(s) => (&mut s.namespace, &mut s.name),
        Resource::Route(r) => (&mut r.namespace, &mut r.name),
        Resource::Policy(p) => (&mut p.namespace, &mut p.name),
        Resource::Authz(a) => (&mut a.namespace, &mut a.name),
        Resource::Telemetry(t) => (&mut t.namespace, &mut t.name),
        Resource::PeerAuthn(p) => (&mut p.namespace, &mut p.name),
        Resource::Gateway(g) => (&mut g.namespace, &mut g.name),
        Resource::Endpoint(e) => (&mut e.namespace, &mut e.service),
    };
    let (Some(path_ns), Some(path_second)) = (segments.first(), segments.get(1)) else {
        return Err(ApiError::bad_request(
            "the path must name a namespace and a name",
        ));
    };
    if ns.is_empty() {
        *ns = path_ns.clone();
    } else if namespace_or_default(ns) != path_ns {
        return Err(ApiError::bad_request(format!(
            "body namespace {ns:?} does not match path namespace {path_ns:?}"
        )));
    }
    if second.is_empty() {
        *second = path_second.clone();
    } else if second != path_second {
        return Err(ApiError::bad_request(format!(
            "body {second_name} {second:?} does not match path {second_name} {path_second:?}"
        )));
    }
    Ok(())
}

/// Parses `?ttl=`: whole seconds or a humantime duration, above zero and
/// at most [`MAX_LEASE_TTL`]. Every refusal is a 400 naming the `ttl` field.
fn parse_ttl(t: &str) -> Result<Duration, ApiError> {
    let parsed = match t.parse::<u64>() {
        Ok(secs) => Ok(Duration::from_secs(secs)),
        Err(_) => humantime::parse_duration(t),
    };
    let max = humantime::format_duration(MAX_LEASE_TTL);
    match parsed {
        Ok(d) if d.is_zero() => Err(ttl_error("must be above 0".into())),
        Ok(d) if d > MAX_LEASE_TTL => {
            Err(ttl_error(format!("{t:?} is above the maximum of {max}")))
        }
        Ok(d) => Ok(d),
        // humantime refuses values beyond u64 seconds ("number is too large").
        Err(e) => Err(ttl_error(format!(
            "invalid value {t:?}: {e} (e.g. 30s; at most {max})"
        ))),
    }
}

fn ttl_error(message: String) -> ApiError {
    ApiError {
        status: StatusCode::BAD_REQUEST,
        message: format!("ttl: {message}"),
        fields: vec![RejectedField {
            kind: Some(Kind::Endpoint),
            key: None,
            path: "ttl".into(),
            message,
        }],
    }
}

fn not_found(kind: Kind, key: &str) -> ApiError {
    ApiError::from(crate::Error::NotFound {
        kind,
        key: key.to_string(),
    })
}
