//! Authorization policies, end to end: a real control plane (CA, API, xDS),
//! the echo app behind a server sidecar that takes its policies over xDS,
//! and two client sidecars with different identities.
//!
//! frontend (test) → client sidecar `frontend` ══mTLS══▶ server sidecar → echo
//! batch    (test) → client sidecar `batch`    ══mTLS══▶      (same)
//!
//! Every policy change goes through the control plane's API while all
//! sidecars keep running.

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

/// The server sidecar: listeners from the file, everything else (the
/// authorization policies included) from the control plane. Its workload is
/// `echo` in `default`, which the policies target.
fn server_bootstrap(cp: &ControlPlane, app: &EchoApp, token: &Path) -> Bootstrap {
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
    let mut b = xds_bootstrap(cp, "echo", vec![inbound]);
    b.identity = Some(identity(cp, token, "echo"));
    b
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
    let mut endpoint = app.endpoint(Some(server.port()));
    endpoint.identity = SERVER_ID.into();
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
                    service: "echo".into(),
                    service_port: TCP_PORT,
                    ..Default::default()
                },
            ],
            services: vec![echo_service("echo")],
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
            server_bootstrap(&cp, &app, &server_token),
        )
        .await;
        server.wait_ready(DEADLINE).await;
        let inbound = server.listener("inbound");
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
    let outbound = via.listener("outbound");
    send(
        &http1_client_via(outbound),
        get(&format!("http://echo{path}")),
    )
    .await
}

/// Polls until `path` through `via` answers `status` (a policy pushed over
/// xDS takes effect when the server sidecar has applied it).
async fn until_status(via: &Sidecar, path: &str, status: u16) -> Reply {
    eventually(DEADLINE, || async {
        let reply = call(via, path).await?;
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
