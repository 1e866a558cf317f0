//! Authorization policies, end to end: a real control plane (CA, API, xDS),
//! the echo app behind a server sidecar that takes its policies over xDS,
//! and two client sidecars with different identities.
//!
//! frontend (test) → client sidecar `frontend` ══mTLS══▶ server sidecar → echo
//! batch    (test) → client sidecar `batch`    ══mTLS══▶      (same)
//!
//! Every policy change goes through the control plane's API while all
//! sidecars keep running. The server sidecar's endpoint is registered in the
//! control plane, which is how the control plane knows the sidecar serves
//! `echo` (its `node.workload` says something else on purpose).

use sane_e2e::harness::http::{get, http1_client_via, send, tcp_roundtrip, Reply};
use sane_e2e::harness::{
    bins, echo_service, eventually, metric_value, xds_bootstrap, ApiClient, ControlPlane, EchoApp,
    Sidecar, TCP_PORT, TEST_API_TOKEN,
};
use sane_xds_proto::{
    Bootstrap, Direction, IdentityConfig, Listener, MeshResources, Node, Protocol, TlsMode,
    WorkloadPort,
};
use serde_json::json;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

const DEADLINE: Duration = Duration::from_secs(30);
const SERVER_ID: &str = "spiffe://cluster.local/ns/default/sa/echo";
const FRONTEND_ID: &str = "spiffe://cluster.local/ns/default/sa/frontend";
const POLICIES: &str = "/api/v1/authorization_policies/default";

fn identity(cp: &ControlPlane, token: &Path, sa: &str) -> IdentityConfig {
    IdentityConfig {
        service_account: sa.into(),
        ca_address: cp.xds_url(),
        root_cert_file: cp.root_cert_file(),
        token_file: token.display().to_string(),
        ..Default::default()
    }
}

/// A server sidecar of `app`: listeners from the file, everything else (the
/// authorization policies included) from the control plane, which it
/// reaches with `token` (of service account `sa`) as node
/// `<sa>.default~<app name>`. Its `node.workload` is `workload`, which need
/// not be the service's name: the policies of the service apply to it
/// because the control plane holds an endpoint of the service that points
/// at it.
fn server_bootstrap(
    cp: &ControlPlane,
    app: &EchoApp,
    token: &Path,
    sa: &str,
    workload: &str,
) -> Bootstrap {
    let port = |p: u16, protocol: Protocol| WorkloadPort {
        port: p.into(),
        protocol: protocol.into(),
        ..Default::default()
    };
    let inbound = Listener {
        name: "inbound".into(),
        direction: Direction::Inbound.into(),
        address: "127.0.0.1:0".into(),
        tls_mode: TlsMode::Strict.into(),
        workload_ports: vec![
            port(app.addrs.http.port(), Protocol::Http),
            port(app.addrs.tcp.port(), Protocol::Tcp),
        ],
        ..Default::default()
    };
    let mut b = xds_bootstrap(cp, &app.name, vec![inbound]);
    b.node.id = format!("{sa}.default~{}", app.name);
    b.node.workload = workload.into();
    if let Some(xds) = b.control_plane.as_mut() {
        xds.token_file = token.display().to_string();
    }
    b.identity = Some(identity(cp, token, sa));
    b
}

/// Registers service `service` and the endpoint of `app` behind the
/// sidecar whose inbound listener is `inbound`, with identity `sa`.
async fn register(cp: &ControlPlane, service: &str, app: &EchoApp, inbound: SocketAddr, sa: &str) {
    let api = ApiClient::new(cp);
    let svc = echo_service(service);
    api.put(&format!("/api/v1/services/default/{service}"), &json!(svc))
        .await;
    let mut endpoint = app.endpoint(Some(inbound.port()));
    endpoint.service = service.into();
    endpoint.identity = format!("spiffe://cluster.local/ns/default/sa/{sa}");
    let key = format!("{}:{}", endpoint.address, inbound.port());
    api.put(
        &format!("/api/v1/endpoints/default/{service}/{key}"),
        &json!(endpoint),
    )
    .await;
}

/// A client sidecar with its own identity: an HTTP proxy port and a TCP
/// port to the echo service, configured from the file.
fn client_bootstrap(
    cp: &ControlPlane,
    app: &EchoApp,
    server: SocketAddr,
    token: &Path,
    sa: &str,
) -> Bootstrap {
    client_of("echo", SERVER_ID, cp, app, server, token, sa)
}

/// [`client_bootstrap`] for service `service` whose sidecar proves
/// `server_id`.
fn client_of(
    service: &str,
    server_id: &str,
    cp: &ControlPlane,
    app: &EchoApp,
    server: SocketAddr,
    token: &Path,
    sa: &str,
) -> Bootstrap {
    let mut endpoint = app.endpoint(Some(server.port()));
    endpoint.service = service.into();
    endpoint.identity = server_id.into();
    Bootstrap {
        node: Node {
            id: sa.into(),
            workload: sa.into(),
            ..Default::default()
        },
        admin: sane_xds_proto::AdminConfig {
            address: "127.0.0.1:0".into(),
        },
        drain_timeout: 1_000,
        resources: MeshResources {
            listeners: vec![
                Listener {
                    name: "outbound".into(),
                    address: "127.0.0.1:0".into(),
                    ..Default::default()
                },
                Listener {
                    name: "echo-tcp".into(),
                    address: "127.0.0.1:0".into(),
                    protocol: Protocol::Tcp.into(),
                    service: service.into(),
                    service_port: TCP_PORT,
                    ..Default::default()
                },
            ],
            services: vec![echo_service(service)],
            endpoints: vec![endpoint],
            ..Default::default()
        },
        identity: Some(identity(cp, token, sa)),
        ..Default::default()
    }
}

struct Setup {
    _dir: tempfile::TempDir,
    cp: ControlPlane,
    _app: EchoApp,
    server: Sidecar,
    frontend: Sidecar,
    batch: Sidecar,
}

impl Setup {
    async fn start() -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let cp = ControlPlane::start(&dir.path().join("cp"), &[]).await;
        let app = EchoApp::start_with(&bins().echo, "echo-1", "echo").await;
        let token = |sa: &'static str| cp.issue_token(dir.path(), "default", sa);
        let (server_token, fe_token, batch_token) = (
            token("echo").await,
            token("frontend").await,
            token("batch").await,
        );
        let server = Sidecar::start(
            &bins().proxy,
            dir.path(),
            "echo",
            server_bootstrap(&cp, &app, &server_token, "echo", "echo-v1"),
        )
        .await;
        server.wait_ready(DEADLINE).await;
        let inbound = server.listener("inbound");
        register(&cp, "echo", &app, inbound, "echo").await;
        let client = |token, sa| client_bootstrap(&cp, &app, inbound, token, sa);
        let frontend = Sidecar::start(
            &bins().proxy,
            dir.path(),
            "frontend",
            client(&fe_token, "frontend"),
        )
        .await;
        let batch = Sidecar::start(
            &bins().proxy,
            dir.path(),
            "batch",
            client(&batch_token, "batch"),
        )
        .await;
        frontend.wait_ready(DEADLINE).await;
        batch.wait_ready(DEADLINE).await;
        Setup {
            _dir: dir,
            cp,
            _app: app,
            server,
            frontend,
            batch,
        }
    }

    async fn put_policy(&self, name: &str, policy: serde_json::Value) {
        ApiClient::new(&self.cp)
            .put(&format!("{POLICIES}/{name}"), &policy)
            .await;
    }

    async fn delete_policy(&self, name: &str) {
        let reply = ApiClient::new(&self.cp)
            .send(
                http::Method::DELETE,
                &format!("{POLICIES}/{name}"),
                "",
                Some(TEST_API_TOKEN),
            )
            .await
            .unwrap();
        assert!(reply.status.is_success(), "{}", reply.text());
    }
}

async fn call(via: &Sidecar, path: &str) -> Result<Reply, String> {
    call_service(via, "echo", path).await
}

async fn call_service(via: &Sidecar, service: &str, path: &str) -> Result<Reply, String> {
    let outbound = via.listener("outbound");
    send(
        &http1_client_via(outbound),
        get(&format!("http://{service}{path}")),
    )
    .await
}

/// Polls until `path` through `via` answers `status` (a policy pushed over
/// xDS takes effect when the server sidecar has applied it).
async fn until_status(via: &Sidecar, path: &str, status: u16) -> Reply {
    until_service_status(via, "echo", path, status).await
}

async fn until_service_status(via: &Sidecar, service: &str, path: &str, status: u16) -> Reply {
    eventually(DEADLINE, || async {
        let reply = call_service(via, service, path).await?;
        if reply.status == status {
            Ok(reply)
        } else {
            Err(format!("{path}: {} {}", reply.status, reply.text()))
        }
    })
    .await
}

async fn status(via: &Sidecar, path: &str) -> u16 {
    call(via, path).await.unwrap().status.as_u16()
}

/// What the TCP port of `via` echoes back (empty or an error when the
/// server sidecar closed the connection).
async fn tcp_echo(via: &Sidecar) -> Result<Vec<u8>, String> {
    tcp_roundtrip(via.listener("echo-tcp"), b"ping over tcp").await
}

#[tokio::test]
async fn policies_allow_deny_and_change_without_restart() {
    let s = Setup::start().await;

    // No policy: everyone may call.
    assert_eq!(until_status(&s.frontend, "/", 200).await.status, 200);
    assert_eq!(status(&s.batch, "/").await, 200);
    assert_eq!(tcp_echo(&s.batch).await.unwrap(), b"ping over tcp");

    // An ALLOW policy for the frontend (a wildcard principal): the batch
    // identity is no longer allowed, over HTTP (403 RBAC) and TCP (closed).
    s.put_policy(
        "frontend-only",
        json!({ "service": "echo", "action": "allow",
                "rules": [ { "from": [ { "principals": ["*/sa/frontend"] } ] } ] }),
    )
    .await;
    let denied = until_status(&s.batch, "/", 403).await;
    assert_eq!(denied.header("x-sane-response-flags"), Some("RBAC"));
    assert!(
        denied.text().contains("no allow policy matched"),
        "{}",
        denied.text()
    );
    let ok = call(&s.frontend, "/").await.unwrap();
    assert_eq!(ok.status, 200, "{}", ok.text());
    assert_eq!(
        ok.json().unwrap()["headers"]["x-sane-peer-identity"],
        FRONTEND_ID
    );
    assert_eq!(tcp_echo(&s.frontend).await.unwrap(), b"ping over tcp");
    let tcp = tcp_echo(&s.batch).await;
    assert!(
        !matches!(&tcp, Ok(b) if !b.is_empty()),
        "a denied TCP connection forwards nothing: {tcp:?}"
    );

    // The denial is in the server sidecar's metrics with the RBAC flag.
    let metrics = s.server.metrics().await.unwrap();
    let rbac = metric_value(
        &metrics,
        "istio_requests_total",
        &[
            ("reporter", "destination"),
            ("response_code", "403"),
            ("response_flags", "RBAC"),
        ],
    );
    assert!(rbac.unwrap_or(0.0) >= 1.0, "{metrics}");
    let tcp_denied = metric_value(
        &metrics,
        "sane_authz_denied_total",
        &[("protocol", "tcp"), ("policy", "no allow policy matched")],
    );
    assert!(tcp_denied.unwrap_or(0.0) >= 1.0, "{metrics}");

    // DENY beats ALLOW, and a path rule matches only what it says:
    // `/admin/*` covers what is under /admin/, not /admin or /administrator.
    s.put_policy(
        "no-admin",
        json!({ "service": "echo", "action": "deny",
                "rules": [ { "from": [ { "principals": [FRONTEND_ID] } ],
                             "to": [ { "paths": ["/admin/*"] } ] } ] }),
    )
    .await;
    let denied = until_status(&s.frontend, "/admin/users", 403).await;
    assert_eq!(denied.header("x-sane-response-flags"), Some("RBAC"));
    assert!(
        denied.text().contains("deny policy default/no-admin"),
        "{}",
        denied.text()
    );
    assert_eq!(status(&s.frontend, "/admin").await, 200);
    assert_eq!(status(&s.frontend, "/administrator").await, 200);
    assert_eq!(status(&s.frontend, "/").await, 200);

    // Dry run: the deny policy is reported, not enforced.
    s.put_policy(
        "no-admin",
        json!({ "service": "echo", "action": "deny", "dry_run": true,
                "rules": [ { "from": [ { "principals": [FRONTEND_ID] } ],
                             "to": [ { "paths": ["/admin/*"] } ] } ] }),
    )
    .await;
    until_status(&s.frontend, "/admin/users", 200).await;
    let metrics = s.server.metrics().await.unwrap();
    let dry = metric_value(
        &metrics,
        "sane_authz_dry_run_denied_total",
        &[
            ("protocol", "http"),
            ("policy", "deny policy default/no-admin"),
        ],
    );
    assert!(dry.unwrap_or(0.0) >= 1.0, "{metrics}");

    // Removing the ALLOW policy lets the batch identity back in, with no
    // sidecar restarted.
    s.delete_policy("frontend-only").await;
    until_status(&s.batch, "/", 200).await;
    assert_eq!(tcp_echo(&s.batch).await.unwrap(), b"ping over tcp");

    // An invalid policy is refused by the API, naming the field.
    let reply = ApiClient::new(&s.cp)
        .send(
            http::Method::PUT,
            &format!("{POLICIES}/bad"),
            json!({ "service": "echo", "rules": [ { "to": [ { "paths": ["admin"] } ] } ] })
                .to_string(),
            Some(TEST_API_TOKEN),
        )
        .await
        .unwrap();
    assert_eq!(reply.status, 422, "{}", reply.text());
    assert!(reply.text().contains("paths[0]"), "{}", reply.text());
}

/// The probe of issue 17: a `deny` policy for service `edge` must be
/// enforced by every sidecar an endpoint of `edge` points at, whatever its
/// `node.workload` says, and a policy for a service that does not exist is
/// refused rather than applied to whichever sidecar carries that name.
#[tokio::test]
async fn a_service_policy_is_enforced_by_each_of_its_sidecars_whatever_their_workload() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(&dir.path().join("cp"), &[]).await;
    let edge_token = cp.issue_token(dir.path(), "default", "edge").await;
    let fe_token = cp.issue_token(dir.path(), "default", "frontend").await;
    let edge_id = "spiffe://cluster.local/ns/default/sa/edge";
    // Two instances of `edge`, whose sidecars call themselves something
    // else entirely (one of them `ghost`, the name of no service).
    let mut servers = Vec::new();
    let mut clients = Vec::new();
    for (name, workload) in [("edge-1", "edge-canary"), ("edge-2", "ghost")] {
        let app = EchoApp::start_with(&bins().echo, name, "edge").await;
        let server = Sidecar::start(
            &bins().proxy,
            dir.path(),
            name,
            server_bootstrap(&cp, &app, &edge_token, "edge", workload),
        )
        .await;
        server.wait_ready(DEADLINE).await;
        let inbound = server.listener("inbound");
        register(&cp, "edge", &app, inbound, "edge").await;
        // A client sidecar reaching this one instance only.
        let client = Sidecar::start(
            &bins().proxy,
            dir.path(),
            &format!("fe-{name}"),
            client_of("edge", edge_id, &cp, &app, inbound, &fe_token, "frontend"),
        )
        .await;
        client.wait_ready(DEADLINE).await;
        servers.push((app, server));
        clients.push(client);
    }
    for client in &clients {
        until_service_status(client, "edge", "/", 200).await;
    }

    // A policy for a service that does not exist is refused, naming the
    // field; nothing is denied by it.
    let reply = ApiClient::new(&cp)
        .send(
            http::Method::PUT,
            &format!("{POLICIES}/ghost-deny"),
            json!({ "service": "ghost", "action": "deny", "rules": [ {} ] }).to_string(),
            Some(TEST_API_TOKEN),
        )
        .await
        .unwrap();
    assert_eq!(reply.status, 422, "{}", reply.text());
    assert!(
        reply
            .text()
            .contains("authorization_policies[default/ghost-deny].service")
            && reply.text().contains("is not a declared service"),
        "{}",
        reply.text()
    );
    for client in &clients {
        assert_eq!(call_service(client, "edge", "/").await.unwrap().status, 200);
    }

    // A deny policy for `edge`: both of its sidecars enforce it.
    ApiClient::new(&cp)
        .put(
            &format!("{POLICIES}/edge-deny"),
            &json!({ "service": "edge", "action": "deny", "rules": [ {} ] }),
        )
        .await;
    for client in &clients {
        let denied = until_service_status(client, "edge", "/", 403).await;
        assert_eq!(denied.header("x-sane-response-flags"), Some("RBAC"));
        assert!(
            denied.text().contains("deny policy default/edge-deny"),
            "{}",
            denied.text()
        );
    }
    // The control plane says which service each sidecar serves.
    let proxies = ApiClient::new(&cp).proxies().await.unwrap();
    for name in ["edge-1", "edge-2"] {
        let row = sane_e2e::harness::proxy_row(&proxies, &format!("edge.default~{name}"))
            .unwrap_or_else(|| panic!("{name} not listed: {proxies}"));
        assert_eq!(row["serves"], json!(["edge.default"]), "{row}");
    }
    // Removing it lets traffic back in, with no sidecar restarted.
    let reply = ApiClient::new(&cp)
        .send(
            http::Method::DELETE,
            &format!("{POLICIES}/edge-deny"),
            "",
            Some(TEST_API_TOKEN),
        )
        .await
        .unwrap();
    assert!(reply.status.is_success(), "{}", reply.text());
    for client in &clients {
        until_service_status(client, "edge", "/", 200).await;
    }
}
