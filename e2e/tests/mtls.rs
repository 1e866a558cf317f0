//! Identity and mutual TLS, end to end: a real control plane (CA), two
//! sidecars that get their certificates from it, and the echo app.
//!
//! client (test) → client sidecar ══mTLS══▶ server sidecar → echo

use sane_e2e::harness::http::{get, http1_client_via, send, send_http1};
use sane_e2e::harness::{
    bins, echo_service, eventually, metric_value, ControlPlane, EchoApp, Sidecar,
};
use sane_xds_proto::{
    AdminConfig, Bootstrap, Direction, IdentityConfig, Listener, MeshResources, Node, Protocol,
    TlsMode, WorkloadPort,
};
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

const DEADLINE: Duration = Duration::from_secs(30);
const CLIENT_ID: &str = "spiffe://cluster.local/ns/default/sa/client";
const SERVER_ID: &str = "spiffe://cluster.local/ns/default/sa/echo";

fn identity(cp: &ControlPlane, token: &Path, sa: &str, ttl: Duration) -> IdentityConfig {
    IdentityConfig {
        service_account: sa.into(),
        ca_address: cp.xds_url(),
        root_cert_file: cp.root_cert_file(),
        token_file: token.display().to_string(),
        ttl: ttl.as_millis() as u64,
        ..Default::default()
    }
}

fn node(name: &str) -> Node {
    Node {
        id: name.into(),
        namespace: String::new(),
        workload: name.into(),
        ..Default::default()
    }
}

fn admin() -> AdminConfig {
    AdminConfig {
        address: "127.0.0.1:0".into(),
    }
}

fn server_bootstrap(app: &EchoApp, id: IdentityConfig, mode: TlsMode) -> Bootstrap {
    let port = |p: u16, protocol: Protocol| WorkloadPort {
        port: p.into(),
        protocol: protocol.into(),
        ..Default::default()
    };
    Bootstrap {
        node: node("echo-1"),
        admin: admin(),
        drain_timeout: 2_000,
        resources: MeshResources {
            listeners: vec![Listener {
                name: "inbound".into(),
                direction: Direction::Inbound.into(),
                address: "127.0.0.1:0".into(),
                tls_mode: mode.into(),
                workload_ports: vec![
                    port(app.addrs.http.port(), Protocol::Http),
                    port(app.addrs.grpc.port(), Protocol::Grpc),
                    port(app.addrs.tcp.port(), Protocol::Tcp),
                ],
                ..Default::default()
            }],
            ..Default::default()
        },
        identity: Some(id),
        ..Default::default()
    }
}

fn client_bootstrap(
    app: &EchoApp,
    server_inbound: SocketAddr,
    id: IdentityConfig,
    expect: &str,
) -> Bootstrap {
    let mut endpoint = app.endpoint(Some(server_inbound.port()));
    endpoint.identity = expect.into();
    Bootstrap {
        node: node("client"),
        admin: admin(),
        drain_timeout: 2_000,
        resources: MeshResources {
            listeners: vec![Listener {
                name: "outbound".into(),
                address: "127.0.0.1:0".into(),
                ..Default::default()
            }],
            services: vec![echo_service("echo")],
            endpoints: vec![endpoint],
            ..Default::default()
        },
        identity: Some(id),
        ..Default::default()
    }
}

/// A control plane, the echo app behind a server sidecar, and a client
/// sidecar expecting `expect` from the server.
struct Setup {
    dir: tempfile::TempDir,
    cp: ControlPlane,
    app: EchoApp,
    server: Sidecar,
    client: Sidecar,
}

impl Setup {
    async fn start(mode: TlsMode, expect: &str, ttl: Duration) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let cp = ControlPlane::start(&dir.path().join("cp"), &[]).await;
        let app = EchoApp::start_with(&bins().echo, "echo-1", "echo").await;
        let server_token = cp.issue_token(dir.path(), "default", "echo").await;
        let client_token = cp.issue_token(dir.path(), "default", "client").await;
        let server = Sidecar::start(
            &bins().proxy,
            dir.path(),
            "echo-1",
            server_bootstrap(&app, identity(&cp, &server_token, "echo", ttl), mode),
        )
        .await;
        server.wait_ready(DEADLINE).await;
        let client = Sidecar::start(
            &bins().proxy,
            dir.path(),
            "client",
            client_bootstrap(
                &app,
                server.listener("inbound"),
                identity(&cp, &client_token, "client", ttl),
                expect,
            ),
        )
        .await;
        client.wait_ready(DEADLINE).await;
        Setup {
            dir,
            cp,
            app,
            server,
            client,
        }
    }

    fn outbound(&self) -> SocketAddr {
        self.client.listener("outbound")
    }
}

async fn get_echo(outbound: SocketAddr) -> Result<sane_e2e::harness::http::Reply, String> {
    send(&http1_client_via(outbound), get("http://echo/")).await
}

async fn serial(sidecar: &Sidecar) -> Result<String, String> {
    let certs = sidecar.admin_get("/certs").await?.json()?;
    certs["certificate"]["serial"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| format!("no certificate yet: {certs}"))
}

#[tokio::test]
async fn mtls_between_sidecars_carries_the_client_identity() {
    let s = Setup::start(TlsMode::Strict, SERVER_ID, Duration::ZERO).await;
    let reply = get_echo(s.outbound()).await.unwrap();
    assert_eq!(reply.status, 200, "{}", reply.text());
    let seen = reply.json().unwrap();
    assert_eq!(
        seen["headers"]["x-sane-peer-identity"], CLIENT_ID,
        "the server sidecar verified the client's identity and told the app: {seen}"
    );

    // Both sidecars report their own certificate; no key material anywhere.
    for (sidecar, id) in [(&s.server, SERVER_ID), (&s.client, CLIENT_ID)] {
        let certs = sidecar.admin_get("/certs").await.unwrap();
        assert_eq!(certs.json().unwrap()["certificate"]["identity"], id);
        for path in ["/certs", "/config_dump", "/metrics"] {
            let text = sidecar.admin_get(path).await.unwrap().text();
            assert!(!text.contains("PRIVATE KEY"), "{path} leaks a key");
        }
        assert!(!sidecar.proc.stderr().contains("PRIVATE KEY"));
    }
    assert!(!s.cp.proc.stderr().contains("PRIVATE KEY"));

    // A client cannot claim an identity by sending the header itself.
    let mut req = get("http://echo/");
    req.headers_mut().insert(
        "x-sane-peer-identity",
        "spiffe://evil/ns/x/sa/y".parse().unwrap(),
    );
    let reply = send(&http1_client_via(s.outbound()), req).await.unwrap();
    assert_eq!(
        reply.json().unwrap()["headers"]["x-sane-peer-identity"],
        CLIENT_ID
    );
    drop(s.dir);
}

#[tokio::test]
async fn plaintext_to_a_strict_port_is_rejected() {
    let s = Setup::start(TlsMode::Strict, SERVER_ID, Duration::ZERO).await;
    let inbound = s.server.listener("inbound");
    let mut req = get("/");
    req.headers_mut().insert("host", "echo".parse().unwrap());
    let res = send_http1(inbound, req).await;
    assert!(
        res.is_err(),
        "plaintext reached the app: {:?}",
        res.map(|r| r.status())
    );
    // The client can see the refusal (rustls' alert) a moment before the
    // sidecar's connection task counts it.
    eventually(Duration::from_secs(10), || async {
        let metrics = s.server.metrics().await?;
        let failures = metric_value(
            &metrics,
            "sane_tls_handshake_failures_total",
            &[("direction", "inbound")],
        )
        .unwrap_or(0.0);
        if failures >= 1.0 {
            Ok(())
        } else {
            Err(format!(
                "no inbound handshake failure counted yet:\n{metrics}"
            ))
        }
    })
    .await;
    assert_eq!(s.app.requests().await, 0, "nothing reached the app");
}

#[tokio::test]
async fn a_client_certificate_from_another_ca_is_rejected() {
    let s = Setup::start(TlsMode::Strict, SERVER_ID, Duration::ZERO).await;
    // A second, unrelated control plane (a different CA) certifies a client.
    let other = ControlPlane::start(&s.dir.path().join("other-cp"), &[]).await;
    let token = other.issue_token(s.dir.path(), "default", "client").await;
    let intruder = Sidecar::start(
        &bins().proxy,
        s.dir.path(),
        "intruder",
        client_bootstrap(
            &s.app,
            s.server.listener("inbound"),
            identity(&other, &token, "client", Duration::ZERO),
            "",
        ),
    )
    .await;
    intruder.wait_ready(DEADLINE).await;
    let reply = get_echo(intruder.listener("outbound")).await.unwrap();
    assert_eq!(reply.status, 503, "{}", reply.text());
    assert_eq!(reply.header("x-sane-response-flags"), Some("UF"));
    assert_eq!(s.app.requests().await, 0, "nothing reached the app");
}

#[tokio::test]
async fn a_server_with_the_wrong_identity_is_rejected_by_the_client() {
    let wrong = "spiffe://cluster.local/ns/default/sa/payments";
    let s = Setup::start(TlsMode::Strict, wrong, Duration::ZERO).await;
    let reply = get_echo(s.outbound()).await.unwrap();
    assert_eq!(reply.status, 503, "{}", reply.text());
    assert_eq!(reply.header("x-sane-response-flags"), Some("UF"));
    let body = reply.text();
    assert!(
        body.contains("sa/payments") && body.contains("sa/echo"),
        "{body}"
    );
    assert_eq!(s.app.requests().await, 0);
}

#[tokio::test]
async fn permissive_accepts_mtls_and_plaintext() {
    let s = Setup::start(TlsMode::Permissive, SERVER_ID, Duration::ZERO).await;
    let via_mesh = get_echo(s.outbound()).await.unwrap();
    assert_eq!(via_mesh.status, 200);
    assert_eq!(
        via_mesh.json().unwrap()["headers"]["x-sane-peer-identity"],
        CLIENT_ID
    );

    let mut req = get("/");
    req.headers_mut().insert("host", "echo".parse().unwrap());
    let plain = send_http1(s.server.listener("inbound"), req).await.unwrap();
    assert_eq!(plain.status(), 200);
    let plain = sane_e2e::harness::http::Reply::read(plain).await.unwrap();
    assert!(plain.json().unwrap()["headers"]
        .get("x-sane-peer-identity")
        .is_none());
}

/// Sends requests (each on a fresh client connection) until told to stop;
/// returns the successes and the failures.
fn steady_load(
    outbound: SocketAddr,
) -> (
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<(u64, Vec<String>)>,
) {
    let (stop_tx, mut stop_rx) = tokio::sync::oneshot::channel::<()>();
    let load = tokio::spawn(async move {
        let (mut ok, mut failed) = (0u64, Vec::new());
        loop {
            match get_echo(outbound).await {
                Ok(r) if r.status == 200 => ok += 1,
                Ok(r) => failed.push(format!("{} {}", r.status, r.text())),
                Err(e) => failed.push(e),
            }
            if stop_rx.try_recv().is_ok() {
                return (ok, failed);
            }
        }
    });
    (stop_tx, load)
}

async fn rotations(sidecar: &Sidecar) -> Result<f64, String> {
    let metrics = sidecar.metrics().await?;
    metric_value(&metrics, "sane_cert_rotations_total", &[]).ok_or_else(|| "no metric".into())
}

#[tokio::test]
async fn certificates_rotate_twice_under_load_without_failures() {
    // A 3s lifetime: renewed about every 1.5s.
    let s = Setup::start(TlsMode::Strict, SERVER_ID, Duration::from_secs(3)).await;
    let first = (
        serial(&s.client).await.unwrap(),
        serial(&s.server).await.unwrap(),
    );
    let (stop, load) = steady_load(s.outbound());
    eventually(Duration::from_secs(30), || async {
        let (c, sv) = (rotations(&s.client).await?, rotations(&s.server).await?);
        // The first certificate plus at least two renewals on each side.
        (c >= 3.0 && sv >= 3.0)
            .then_some(())
            .ok_or(format!("installed so far: client {c}, server {sv}"))
    })
    .await;
    let _ = stop.send(());
    let (ok, failed) = load.await.unwrap();
    assert!(failed.is_empty(), "{ok} ok, failed: {failed:?}");
    assert!(ok > 0);
    assert_ne!(serial(&s.client).await.unwrap(), first.0);
    assert_ne!(serial(&s.server).await.unwrap(), first.1);
}

#[tokio::test]
async fn traffic_continues_on_the_current_certificate_while_the_ca_is_down() {
    // 8s lifetime: the first renewal, due after ~4s, will find the CA gone.
    let s = Setup::start(TlsMode::Strict, SERVER_ID, Duration::from_secs(8)).await;
    let before = serial(&s.client).await.unwrap();
    let status = s.cp.proc.stop(DEADLINE).await;
    assert!(status.is_some(), "control plane did not stop");
    let (stop, load) = steady_load(s.outbound());
    eventually(Duration::from_secs(20), || async {
        s.client
            .proc
            .stderr()
            .contains("certificate request failed; serving on the current certificate")
            .then_some(())
            .ok_or("no renewal attempted yet".to_string())
    })
    .await;
    let _ = stop.send(());
    let (ok, failed) = load.await.unwrap();
    assert!(failed.is_empty(), "{ok} ok, failed: {failed:?}");
    assert!(ok > 0);
    assert_eq!(
        serial(&s.client).await.unwrap(),
        before,
        "still on the same certificate"
    );
}
