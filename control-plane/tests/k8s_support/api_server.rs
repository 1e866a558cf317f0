//! A fake Kubernetes API server on 127.0.0.1:0, enough for kube-rs clients:
//! list, watch (newline-delimited events, from a resourceVersion), get,
//! create, replace (refused with 409 unless `metadata.resourceVersion`
//! matches, as the real one does for custom resources) and delete (with
//! `preconditions.resourceVersion`) of the collections it is told are
//! installed, and the `status` subresource (a merge PATCH, checked against
//! `metadata.resourceVersion` when it carries one; a PUT, always checked);
//! 404 for the others, as for a CRD that is not installed. As for a custom
//! resource with a status subresource, `metadata.generation` grows when the
//! spec changes, never with a status write, and a write of the object
//! leaves its status alone.
//!
//! It is seeded with fixture objects, records every request (tests check
//! what a control plane wrote), and can be told to answer the next request
//! matching a method and path with a given error, as a real API server
//! under contention would.

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;

/// A recorded request.
#[derive(Clone, Debug)]
pub struct Recorded {
    /// The method.
    pub method: Method,
    /// The path, e.g. `/apis/sane.mesh/v1/namespaces/shop/routes`.
    pub path: String,
    /// The query string.
    pub query: String,
    /// The JSON body, `Null` without one.
    pub body: Value,
}

/// The running fake; stops when dropped.
pub struct FakeApiServer {
    /// Its address.
    pub addr: SocketAddr,
    state: Arc<Mutex<Inner>>,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Default)]
struct Inner {
    /// Collections served: `api/v1/services`, `apis/sane.mesh/v1/routes`.
    installed: Vec<String>,
    /// Objects by collection, then `(namespace, name)`.
    objects: BTreeMap<String, BTreeMap<(String, String), Value>>,
    /// Every change: collection, resourceVersion, event.
    history: Vec<(String, u64, Value)>,
    watchers: Vec<(String, mpsc::Sender<Value>)>,
    version: u64,
    requests: Vec<Recorded>,
    /// (method, path) → the error to answer once.
    failures: Vec<(Method, String, StatusCode, String)>,
}

/// `(collection, namespace, name, status subresource)` of a path; `None`
/// when not a resource.
type Parsed = (String, Option<String>, Option<String>, bool);

impl FakeApiServer {
    /// Serves `installed` collections (`api/v1/services`,
    /// `apis/sane.mesh/v1/routes`), holding `objects` (each stored in the
    /// collection its `apiVersion` and `kind` name: see [`plural`]).
    pub async fn start(installed: &[&str], objects: Vec<Value>) -> FakeApiServer {
        let mut inner = Inner {
            installed: installed.iter().map(|s| s.to_string()).collect(),
            version: 100,
            ..Default::default()
        };
        for o in objects {
            let collection = collection_of(&o);
            inner.store(&collection, o);
        }
        let state = Arc::new(Mutex::new(inner));
        let app = Router::new().fallback(handle).with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        FakeApiServer { addr, state, task }
    }

    /// Its URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<Recorded> {
        self.state.lock().unwrap().requests.clone()
    }

    /// The requests other than reads.
    pub fn writes(&self) -> Vec<Recorded> {
        self.requests()
            .into_iter()
            .filter(|r| r.method != Method::GET)
            .collect()
    }

    /// The writes of the status of the object at `collection`/`namespace`/`name`.
    pub fn status_writes(&self, collection: &str, namespace: &str, name: &str) -> Vec<Recorded> {
        let (base, plural) = collection.rsplit_once('/').unwrap_or_default();
        let path = format!("/{base}/namespaces/{namespace}/{plural}/{name}/status");
        self.writes()
            .into_iter()
            .filter(|r| r.path == path)
            .collect()
    }

    /// The object at `collection`/`namespace`/`name`, as stored.
    pub fn object(&self, collection: &str, namespace: &str, name: &str) -> Option<Value> {
        let inner = self.state.lock().unwrap();
        inner
            .objects
            .get(collection)?
            .get(&(namespace.to_string(), name.to_string()))
            .cloned()
    }

    /// Creates or replaces an object as `kubectl apply` would; its watchers
    /// see it.
    pub fn apply(&self, object: Value) {
        let collection = collection_of(&object);
        self.state.lock().unwrap().store(&collection, object);
    }

    /// Deletes an object as `kubectl delete` would.
    pub fn remove(&self, collection: &str, namespace: &str, name: &str) {
        let mut inner = self.state.lock().unwrap();
        inner.delete(collection, namespace, name);
    }

    /// Answers the next `method` request to `path` with `status` (a Status
    /// object with `reason`).
    pub fn fail_next(&self, method: Method, path: &str, status: StatusCode, reason: &str) {
        self.state.lock().unwrap().failures.push((
            method,
            path.to_string(),
            status,
            reason.to_string(),
        ));
    }
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Inner {
    fn next_version(&mut self) -> u64 {
        self.version += 1;
        self.version
    }

    /// Stores `object` (a new resourceVersion; a new generation if its
    /// spec changed; the stored status if it has none) and tells the
    /// watchers.
    fn store(&mut self, collection: &str, mut object: Value) -> Value {
        let version = self.next_version();
        let key = (
            object["metadata"]["namespace"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
            object["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
        );
        let previous = self.objects.get(collection).and_then(|m| m.get(&key));
        let generation = match previous {
            None => object["metadata"]["generation"].as_i64().unwrap_or(1),
            Some(p) => {
                let g = p["metadata"]["generation"].as_i64().unwrap_or(1);
                if p.get("spec") == object.get("spec") {
                    g
                } else {
                    g + 1
                }
            }
        };
        if let (Some(p), None) = (previous, object.get("status")) {
            if let Some(status) = p.get("status") {
                object["status"] = status.clone();
            }
        }
        let meta = &mut object["metadata"];
        meta["resourceVersion"] = json!(version.to_string());
        meta["generation"] = json!(generation);
        if meta.get("uid").is_none() {
            meta["uid"] = json!(format!("uid-{version}"));
        }
        let existed = self
            .objects
            .entry(collection.to_string())
            .or_default()
            .insert(key, object.clone())
            .is_some();
        let event = if existed { "MODIFIED" } else { "ADDED" };
        self.publish(
            collection,
            version,
            json!({ "type": event, "object": object }),
        );
        object
    }

    fn delete(&mut self, collection: &str, namespace: &str, name: &str) -> Option<Value> {
        let key = (namespace.to_string(), name.to_string());
        let mut object = self.objects.get_mut(collection)?.remove(&key)?;
        let version = self.next_version();
        object["metadata"]["resourceVersion"] = json!(version.to_string());
        self.publish(
            collection,
            version,
            json!({ "type": "DELETED", "object": object }),
        );
        Some(object)
    }

    fn publish(&mut self, collection: &str, version: u64, event: Value) {
        self.history
            .push((collection.to_string(), version, event.clone()));
        self.watchers
            .retain(|(c, tx)| c != collection || tx.try_send(event.clone()).is_ok());
    }
}

/// The collection an object belongs in: `apis/<group>/<version>/<plural>`
/// (`api/v1/<plural>` for the core group).
pub fn collection_of(object: &Value) -> String {
    let api_version = object["apiVersion"].as_str().unwrap_or_default();
    let kind = object["kind"].as_str().unwrap_or_default();
    let prefix = if api_version.contains('/') {
        "apis"
    } else {
        "api"
    };
    format!("{prefix}/{api_version}/{}", plural(kind))
}

/// Kubernetes' plural of the kinds the tests use.
pub fn plural(kind: &str) -> String {
    let lower = kind.to_ascii_lowercase();
    match lower.as_str() {
        "serviceentry" => "serviceentries".into(),
        "destinationpolicy" => "destinationpolicies".into(),
        "authorizationpolicy" => "authorizationpolicies".into(),
        _ => format!("{lower}s"),
    }
}

/// 409 when `sent` is given and is not `current`'s resourceVersion (the
/// check of replace, delete and status writes).
fn version_conflict(current: &Value, sent: Option<&str>, message: &str) -> Option<Response> {
    let held = current["metadata"]["resourceVersion"]
        .as_str()
        .unwrap_or_default();
    sent.filter(|s| *s != held)
        .map(|_| status(StatusCode::CONFLICT, "Conflict", message))
}

const MODIFIED: &str =
    "the object has been modified; please apply your changes to the latest version and try again";

fn status(code: StatusCode, reason: &str, message: &str) -> Response {
    let body = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Failure", "message": message, "reason": reason, "code": code.as_u16()
    });
    (code, axum::Json(body)).into_response()
}

/// `/api/v1/...` or `/apis/g/v/...` → collection, namespace, name.
fn parse(path: &str) -> Option<Parsed> {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (base, rest) = match *parts.first()? {
        "api" => (parts.get(..2)?.join("/"), parts.get(2..)?),
        "apis" => (parts.get(..3)?.join("/"), parts.get(3..)?),
        _ => return None,
    };
    match rest {
        [plural] => Some((format!("{base}/{plural}"), None, None, false)),
        ["namespaces", ns, plural] => Some((
            format!("{base}/{plural}"),
            Some(ns.to_string()),
            None,
            false,
        )),
        ["namespaces", ns, plural, name] => Some((
            format!("{base}/{plural}"),
            Some(ns.to_string()),
            Some(name.to_string()),
            false,
        )),
        ["namespaces", ns, plural, name, "status"] => Some((
            format!("{base}/{plural}"),
            Some(ns.to_string()),
            Some(name.to_string()),
            true,
        )),
        _ => None,
    }
}

fn query_value<'a>(query: &'a str, key: &str) -> Option<&'a str> {
    query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v)
}

async fn handle(State(state): State<Arc<Mutex<Inner>>>, req: Request) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or_default().to_string();
    let bytes: Bytes = axum::body::to_bytes(req.into_body(), 1 << 20)
        .await
        .unwrap_or_default();
    let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    let mut inner = state.lock().unwrap();
    inner.requests.push(Recorded {
        method: method.clone(),
        path: path.clone(),
        query: query.clone(),
        body: body.clone(),
    });
    if let Some(i) = inner
        .failures
        .iter()
        .position(|(m, p, _, _)| *m == method && *p == path)
    {
        let (_, _, code, reason) = inner.failures.remove(i);
        return status(code, &reason, &format!("injected {reason}"));
    }
    let Some((collection, namespace, name, subresource)) = parse(&path) else {
        return status(
            StatusCode::NOT_FOUND,
            "NotFound",
            "the server could not find the requested resource",
        );
    };
    if !inner.installed.contains(&collection) {
        return status(
            StatusCode::NOT_FOUND,
            "NotFound",
            "the server could not find the requested resource",
        );
    }
    let not_found = |name: &str| {
        status(
            StatusCode::NOT_FOUND,
            "NotFound",
            &format!("{collection} {name:?} not found"),
        )
    };
    if subresource {
        let (Some(name), Method::PATCH | Method::PUT) = (name.as_deref(), method.clone()) else {
            return status(
                StatusCode::METHOD_NOT_ALLOWED,
                "MethodNotAllowed",
                "not supported",
            );
        };
        let key = (namespace.unwrap_or_default(), name.to_string());
        let Some(current) = inner
            .objects
            .get(&collection)
            .and_then(|m| m.get(&key))
            .cloned()
        else {
            return not_found(name);
        };
        let sent = body["metadata"]["resourceVersion"].as_str();
        // A PUT must carry the version; a merge patch may.
        let sent = if method == Method::PUT {
            Some(sent.unwrap_or_default())
        } else {
            sent
        };
        if let Some(conflict) = version_conflict(&current, sent, MODIFIED) {
            return conflict;
        }
        let mut next = current.clone();
        if method == Method::PUT {
            next["status"] = body.get("status").cloned().unwrap_or(json!({}));
        } else {
            let mut status = current.get("status").cloned().unwrap_or(json!({}));
            json_patch::merge(&mut status, &body["status"]);
            next["status"] = status;
        }
        if next.get("status") == current.get("status") {
            // No change: the same version, as a real API server answers.
            return axum::Json(current).into_response();
        }
        let stored = inner.store(&collection, next);
        return axum::Json(stored).into_response();
    }
    match (method, name.as_deref()) {
        (Method::GET, None) if matches!(query_value(&query, "watch"), Some("true" | "1")) => {
            let from: u64 = query_value(&query, "resourceVersion")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            let (tx, rx) = mpsc::channel(1024);
            for (c, v, event) in &inner.history {
                if *c == collection && *v > from {
                    let _ = tx.try_send(event.clone());
                }
            }
            inner.watchers.push((collection.clone(), tx));
            let lines = ReceiverStream::new(rx).map(|event| {
                let mut line = serde_json::to_vec(&event).unwrap();
                line.push(b'\n');
                Ok::<_, std::io::Error>(Bytes::from(line))
            });
            Response::builder()
                .header("content-type", "application/json")
                .body(Body::from_stream(lines))
                .unwrap()
        }
        (Method::GET, None) => {
            let items: Vec<Value> = inner
                .objects
                .get(&collection)
                .into_iter()
                .flat_map(|m| m.iter())
                .filter(|((ns, _), _)| namespace.as_ref().is_none_or(|n| n == ns))
                .map(|(_, o)| o.clone())
                .collect();
            let version = inner.version.to_string();
            axum::Json(json!({
                "apiVersion": "v1", "kind": "List",
                "metadata": { "resourceVersion": version },
                "items": items
            }))
            .into_response()
        }
        (Method::GET, Some(name)) => {
            let key = (namespace.unwrap_or_default(), name.to_string());
            match inner.objects.get(&collection).and_then(|m| m.get(&key)) {
                Some(o) => axum::Json(o.clone()).into_response(),
                None => not_found(name),
            }
        }
        (Method::POST, None) => {
            let ns = namespace.unwrap_or_default();
            let name = body["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            let exists = inner
                .objects
                .get(&collection)
                .is_some_and(|m| m.contains_key(&(ns.clone(), name.clone())));
            if exists {
                return status(
                    StatusCode::CONFLICT,
                    "AlreadyExists",
                    &format!("{name} already exists"),
                );
            }
            let mut object = body;
            object["metadata"]["namespace"] = json!(ns);
            let stored = inner.store(&collection, object);
            (StatusCode::CREATED, axum::Json(stored)).into_response()
        }
        (Method::PUT, Some(name)) => {
            let key = (namespace.clone().unwrap_or_default(), name.to_string());
            let Some(current) = inner
                .objects
                .get(&collection)
                .and_then(|m| m.get(&key))
                .cloned()
            else {
                return not_found(name);
            };
            let sent = body["metadata"]["resourceVersion"]
                .as_str()
                .unwrap_or_default();
            if let Some(conflict) = version_conflict(&current, Some(sent), MODIFIED) {
                return conflict;
            }
            let mut object = body;
            object["metadata"]["namespace"] = json!(key.0);
            object["metadata"]["uid"] = current["metadata"]["uid"].clone();
            // The status is the subresource's to write.
            match current.get("status") {
                Some(s) => object["status"] = s.clone(),
                None => {
                    if let Some(o) = object.as_object_mut() {
                        o.remove("status");
                    }
                }
            }
            if object.get("spec") == current.get("spec") {
                // No change: the same version, as a real API server answers.
                return axum::Json(current).into_response();
            }
            let stored = inner.store(&collection, object);
            axum::Json(stored).into_response()
        }
        (Method::DELETE, Some(name)) => {
            let ns = namespace.unwrap_or_default();
            let Some(current) = inner
                .objects
                .get(&collection)
                .and_then(|m| m.get(&(ns.clone(), name.to_string())))
                .cloned()
            else {
                return not_found(name);
            };
            let want = body["preconditions"]["resourceVersion"].as_str();
            if let Some(conflict) = version_conflict(
                &current,
                want,
                "Precondition failed: ResourceVersion in precondition does not match",
            ) {
                return conflict;
            }
            let deleted = inner.delete(&collection, &ns, name).unwrap_or(current);
            axum::Json(deleted).into_response()
        }
        _ => status(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            "not supported",
        ),
    }
}
