//! Two control-plane replicas in `--kubernetes` mode against one fake
//! Kubernetes API server (k8s_support/api_server.rs: lists, watches, writes
//! with resourceVersion checks, seeded from tests/fixtures/cluster/): the
//! cluster is their only shared store. An API write through one replica
//! becomes a `sane.mesh/v1` object write, and both replicas serve it from
//! their watch; versions are the objects' resourceVersions, so a stale
//! `resource_version` is a 409 through either replica, and a 409 from the
//! API server is a 409 to the client. Both sign with the CA of one Secret.
//! Istio and Gateway API kinds the cluster does not serve do not stop the
//! watch, and a VirtualService applied to the cluster is converted, its
//! findings shown by `GET /api/v1/istio`.

#![cfg(feature = "kubernetes")]

mod k8s_support;
mod support;

use http::{Method, StatusCode};
use k8s_support::api_server::FakeApiServer;
use k8s_support::fixture;
use sane_control_plane::k8s::KubernetesConfig;
use sane_control_plane::resource::Kind;
use serde_json::{json, Value};
use support::{eventually, ControlPlane, DEADLINE};

/// What the fake serves: the core kinds, `sane.mesh`, two Istio kinds;
/// the other Istio and Gateway API CRDs are "not installed".
const INSTALLED: &[&str] = &[
    "api/v1/services",
    "api/v1/pods",
    "api/v1/secrets",
    "apis/discovery.k8s.io/v1/endpointslices",
    "apis/sane.mesh/v1/routes",
    "apis/sane.mesh/v1/destinationpolicies",
    "apis/sane.mesh/v1/authorizationpolicies",
    "apis/sane.mesh/v1/peerauthentications",
    "apis/networking.istio.io/v1/virtualservices",
    "apis/networking.istio.io/v1/destinationrules",
];

const ROUTES: &str = "/apis/sane.mesh/v1/namespaces/shop/routes";

fn kube_config(url: &str) -> KubernetesConfig {
    k8s_support::kube_config(url, Some("sane-system/sane-ca"))
}

/// A CA as Istio's `cacerts` Secret holds it, and its certificate.
fn ca_secret() -> (Value, String) {
    let dir = tempfile::tempdir().unwrap();
    let td = sane_certs::TrustDomain::new("cluster.local").unwrap();
    sane_certs::CertificateAuthority::load_or_generate(
        dir.path(),
        &td,
        sane_certs::CaOptions::default(),
    )
    .unwrap();
    let read = |f: &str| std::fs::read(dir.path().join(f)).unwrap();
    let b64 = |bytes: Vec<u8>| serde_json::to_value(k8s_openapi::ByteString(bytes)).unwrap();
    let cert = read(sane_certs::ca::CA_CERT_FILE);
    let secret = json!({
        "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
        "metadata": { "name": "sane-ca", "namespace": "sane-system" },
        "data": {
            "ca-cert.pem": b64(cert.clone()),
            "ca-key.pem": b64(read(sane_certs::ca::CA_KEY_FILE)),
        }
    });
    (secret, String::from_utf8(cert).unwrap())
}

fn squash(pem: &str) -> String {
    pem.split_whitespace().collect()
}

async fn call(
    cp: &ControlPlane,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let bytes = body.map(|b| serde_json::to_vec(&b).unwrap());
    let (status, reply) = cp
        .client
        .send(method.clone(), path, bytes, Some(&cp.token))
        .await
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
    let reply = serde_json::from_slice(&reply).unwrap_or(Value::Null);
    (status, reply)
}

fn route(weight: u32) -> Value {
    json!({
        "service": "web",
        "rules": [ { "timeout": "2s", "destinations": [
            { "service": "web", "weight": weight },
            { "service": "web", "weight": 1 }
        ] } ]
    })
}

fn version(reply: &Value) -> u64 {
    reply["resource_version"]
        .as_u64()
        .unwrap_or_else(|| panic!("no resource_version in {reply}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_share_writes_versions_and_the_ca_through_the_cluster() {
    let (secret, ca_cert) = ca_secret();
    let mut objects: Vec<Value> = serde_json::from_str(&fixture("cluster/objects.json")).unwrap();
    objects.push(secret);
    let fake = FakeApiServer::start(INSTALLED, objects).await;
    let url = fake.url();
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a =
        ControlPlane::start_with(dir_a.path(), |c| c.kubernetes = Some(kube_config(&url))).await;
    let b =
        ControlPlane::start_with(dir_b.path(), |c| c.kubernetes = Some(kube_config(&url))).await;

    // One CA: both replicas' roots are the Secret's certificate.
    for dir in [dir_a.path(), dir_b.path()] {
        let root = std::fs::read_to_string(dir.join("root-cert.pem")).unwrap();
        assert_eq!(squash(&root), squash(&ca_cert), "{}", dir.display());
    }
    let secret_reads = fake
        .requests()
        .iter()
        .filter(|r| r.path == "/api/v1/namespaces/sane-system/secrets/sane-ca")
        .count();
    assert_eq!(secret_reads, 2);

    // The watch syncs although most Istio and Gateway API CRDs are not
    // installed.
    for cp in [&a, &b] {
        eventually(
            DEADLINE,
            "the cluster's service in the registry",
            || async { cp.client.get(Kind::Service, "shop/web").await.ok() },
        )
        .await;
    }

    // A write through A becomes a Route object…
    let (status, reply) = call(&a, Method::PUT, "/api/v1/routes/shop/split", Some(route(3))).await;
    assert_eq!(status, StatusCode::CREATED, "{reply}");
    assert_eq!(
        reply["synced"], true,
        "A's watch brought it in before the answer"
    );
    let v1 = version(&reply);
    let writes = fake.writes();
    let create = writes.last().unwrap();
    assert_eq!(
        (create.method.clone(), create.path.as_str()),
        (Method::POST, ROUTES)
    );
    assert_eq!(create.body["apiVersion"], "sane.mesh/v1");
    assert_eq!(create.body["kind"], "Route");
    assert_eq!(create.body["metadata"]["name"], "split");
    assert_eq!(create.body["spec"]["service"], "web");
    assert_eq!(
        create.body["spec"]["rules"][0]["destinations"][0]["weight"],
        3
    );
    assert!(create.body["spec"].get("name").is_none(), "{}", create.body);
    // …which B serves from its own watch.
    eventually(DEADLINE, "B serves A's route", || async {
        let r = b.client.get(Kind::Route, "shop/split").await.ok()?;
        (r["rules"][0]["destinations"][0]["weight"] == 3).then_some(())
    })
    .await;

    // B agrees on the version: a write guarded by A's version passes,
    // sent as the object's resourceVersion.
    let path = |v: u64| format!("/api/v1/routes/shop/split?resource_version={v}");
    let (status, reply) = call(&b, Method::PUT, &path(v1), Some(route(5))).await;
    assert_eq!(status, StatusCode::OK, "{reply}");
    let v2 = version(&reply);
    assert!(v2 > v1);
    let replace = fake.writes().last().unwrap().clone();
    assert_eq!(replace.method, Method::PUT);
    assert_eq!(replace.path, format!("{ROUTES}/split"));
    assert_eq!(replace.body["metadata"]["resourceVersion"], v1.to_string());

    // The version A read is stale now: 409 through A, and nothing changes.
    let (status, reply) = call(&a, Method::PUT, &path(v1), Some(route(7))).await;
    assert_eq!(status, StatusCode::CONFLICT, "{reply}");
    let message = reply["error"].as_str().unwrap();
    assert!(
        message.contains(&format!("at resource version {v2}, not {v1}")),
        "{message}"
    );
    let stored = fake
        .object("apis/sane.mesh/v1/routes", "shop", "split")
        .unwrap();
    assert_eq!(stored["spec"]["rules"][0]["destinations"][0]["weight"], 5);

    // Two replicas write under the same version at once: one wins, the
    // other gets 409, and the object is one of the two whole.
    let guarded = path(v2);
    let (ra, rb) = tokio::join!(
        call(&a, Method::PUT, &guarded, Some(route(11))),
        call(&b, Method::PUT, &guarded, Some(route(13))),
    );
    let mut statuses = [ra.0, rb.0];
    statuses.sort();
    assert_eq!(
        statuses,
        [StatusCode::OK, StatusCode::CONFLICT],
        "{} / {}",
        ra.1,
        rb.1
    );
    let winner = if ra.0 == StatusCode::OK { 11 } else { 13 };
    let stored = fake
        .object("apis/sane.mesh/v1/routes", "shop", "split")
        .unwrap();
    assert_eq!(
        stored["spec"]["rules"][0]["destinations"][0]["weight"],
        winner
    );
    assert_eq!(stored["spec"]["rules"][0]["destinations"][1]["weight"], 1);

    // A conflict the API server reports is a 409 to the client.
    fake.fail_next(
        Method::DELETE,
        &format!("{ROUTES}/split"),
        StatusCode::CONFLICT,
        "Conflict",
    );
    let (status, reply) = call(&a, Method::DELETE, "/api/v1/routes/shop/split", None).await;
    assert_eq!(status, StatusCode::CONFLICT, "{reply}");

    // Refused before anything is sent: a route to an unknown service (422,
    // the field named), and a kind the cluster cannot hold (409).
    let before = fake.writes().len();
    let mut bad = route(1);
    bad["service"] = json!("nope");
    let (status, reply) = call(&a, Method::PUT, "/api/v1/routes/shop/bad", Some(bad)).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{reply}");
    assert!(
        reply["error"]
            .as_str()
            .unwrap()
            .contains("routes[shop/bad].service"),
        "{reply}"
    );
    let service = json!({ "ports": [ { "port": 80 } ] });
    let (status, reply) = call(
        &a,
        Method::PUT,
        "/api/v1/services/shop/other",
        Some(service),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT, "{reply}");
    assert!(
        reply["error"].as_str().unwrap().contains("Services"),
        "{reply}"
    );
    let (status, _) = call(&a, Method::POST, "/api/v1/istio", Some(json!({}))).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(
        fake.writes().len(),
        before,
        "{:?}",
        &fake.writes()[before..]
    );

    // A delete through B leaves both replicas.
    let (status, reply) = call(&b, Method::DELETE, "/api/v1/routes/shop/split", None).await;
    assert_eq!(status, StatusCode::OK, "{reply}");
    assert!(fake
        .object("apis/sane.mesh/v1/routes", "shop", "split")
        .is_none());
    for cp in [&a, &b] {
        eventually(DEADLINE, "the route gone", || async {
            cp.client
                .get(Kind::Route, "shop/split")
                .await
                .is_err()
                .then_some(())
        })
        .await;
    }

    // An Istio object applied to the cluster: converted by both replicas,
    // its unsupported field reported by path.
    fake.apply(json!({
        "apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
        "metadata": { "name": "web", "namespace": "shop" },
        "spec": { "hosts": ["web"], "http": [ {
            "timeout": "3s",
            "corsPolicy": { "allowOrigins": [ { "exact": "https://example.com" } ] },
            "route": [ { "destination": { "host": "web" } } ]
        } ] }
    }));
    for cp in [&a, &b] {
        let item = eventually(DEADLINE, "the VirtualService converted", || async {
            let (_, list) = call(cp, Method::GET, "/api/v1/istio", None).await;
            list["items"]
                .as_array()?
                .iter()
                .find(|i| i["kind"] == "VirtualService" && i["name"] == "web")
                .cloned()
        })
        .await;
        assert_eq!(item["source"], "kubernetes");
        assert_eq!(
            item["unsupported"][0]["path"], "spec.http[0].corsPolicy",
            "{item}"
        );
        let produced = item["produced"][0].as_str().unwrap().to_string();
        let key = produced.strip_prefix("route ").unwrap().to_string();
        let r = eventually(DEADLINE, "the VirtualService's route", || async {
            cp.client.get(Kind::Route, &key).await.ok()
        })
        .await;
        assert_eq!(r["rules"][0]["timeout"], "3s", "{r}");
    }
    a.stop().await;
    b.stop().await;
}
