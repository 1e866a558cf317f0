//! The inbound delivers only to the workload ports the server sidecar's own
//! config declares, never to the proxy's own ports — whatever port a peer
//! names in its transport header.
//!
//! The probe that found the hole: a service registered with the server
//! sidecar's admin port as its target port let any client read
//! `/config_dump` and `POST /drain` through the inbound, stopping the
//! sidecar.
//!
//! ```text
//! test ─▶ client sidecar ─"port = server admin"─▶ server sidecar ─✗─▶ its admin
//! test ─"\0sane\x01 + port"────────────────────▶ server sidecar ─✗─▶ admin, health
//! ```

use http::{Method, StatusCode};
use sane_e2e::harness::http::{empty, get, request, send, tcp_roundtrip, Reply};
use sane_e2e::harness::{
    bins, echo_service, eventually, metric_value, within, write_bootstrap, EchoApp, Proc, Sidecar,
    TwoHop, INBOUND,
};
use sane_xds_proto::{
    AdminConfig, Bootstrap, Direction, Endpoint, HealthConfig, Listener, MeshResources, Node,
    Protocol, WorkloadPort,
};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const TEST_DEADLINE: Duration = Duration::from_secs(60);
const START_DEADLINE: Duration = Duration::from_secs(20);
/// A service whose one endpoint "is" the server sidecar's admin port.
const SNEAKY: &str = "sneaky";
/// A service whose one endpoint is a loopback port the server sidecar does
/// not declare (the client sidecar's admin port, as it happens).
const STRAY: &str = "stray";
/// The client sidecar's TCP listener to `sneaky`'s TCP port.
const SNEAKY_TCP: &str = "sneaky-tcp";
/// The response flag of a refused inbound port.
const FLAG: &str = "IPR";

/// `sane_inbound_port_refused_total{reason, protocol}` of `sidecar`.
async fn refused(sidecar: &Sidecar, reason: &str, protocol: &str) -> f64 {
    let metrics = sidecar.metrics().await.unwrap();
    let labels = [("reason", reason), ("protocol", protocol)];
    metric_value(&metrics, "sane_inbound_port_refused_total", &labels).unwrap_or(0.0)
}

fn assert_refused(reply: &Reply, what: &str) {
    assert_eq!(
        reply.status,
        StatusCode::FORBIDDEN,
        "{what}: {}",
        reply.text()
    );
    assert_eq!(
        reply.header("x-sane-response-flags"),
        Some(FLAG),
        "{what}: {}",
        reply.text()
    );
    assert!(
        !reply.text().contains("listeners"),
        "{what}: the admin answered: {}",
        reply.text()
    );
}

/// An endpoint of `service` at `127.0.0.1:port` behind the sidecar whose
/// inbound listener is `inbound`.
fn endpoint(service: &str, port: u16, inbound: SocketAddr) -> Endpoint {
    Endpoint {
        service: service.into(),
        address: "127.0.0.1".into(),
        port: port.into(),
        proxy_port: inbound.port().into(),
        ..Default::default()
    }
}

#[tokio::test]
async fn a_peer_cannot_reach_the_server_sidecars_own_ports_through_the_mesh() {
    let builder = TwoHop::builder()
        .tcp_listener(SNEAKY_TCP, SNEAKY)
        .client_config(|b| {
            b.resources.services.push(echo_service(SNEAKY));
            b.resources.services.push(echo_service(STRAY));
        });
    let mut mesh = TwoHop::start_from(builder).await;
    within(TEST_DEADLINE, async {
        // Register the probe's endpoints (the control plane would take them
        // from any service owner just the same).
        let inbound = mesh.server().listener(INBOUND);
        let mut config = mesh.client().bootstrap.clone();
        config.resources.endpoints.extend([
            endpoint(SNEAKY, mesh.server_admin.port(), inbound),
            endpoint(STRAY, mesh.client_admin.port(), inbound),
        ]);
        mesh.mesh.client_mut().reload(config);
        eventually(TEST_DEADLINE, || async {
            let m = mesh.client().metrics().await?;
            match metric_value(&m, "sane_config_version", &[]) {
                Some(v) if v >= 2.0 => Ok(()),
                v => Err(format!("client config version {v:?}")),
            }
        })
        .await;
        let http = mesh.http1();

        // The admin port, by HTTP: refused, the config is not dumped …
        let reply = send(&http, get(&format!("http://{SNEAKY}/config_dump")))
            .await
            .unwrap();
        assert_refused(&reply, "GET /config_dump");
        // … and the drain is not started.
        let drain = request(Method::POST, &format!("http://{SNEAKY}/drain"), empty());
        let reply = send(&http, drain).await.unwrap();
        assert_refused(&reply, "POST /drain");

        // The admin port, by opaque TCP: closed, nothing answers.
        let probe = b"GET /config_dump HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n";
        let back = tcp_roundtrip(mesh.mesh.client().listener(SNEAKY_TCP), probe)
            .await
            .unwrap_or_default();
        assert!(back.is_empty(), "{}", String::from_utf8_lossy(&back));

        // A loopback port the server does not declare: refused too.
        let reply = send(&http, get(&format!("http://{STRAY}/ready")))
            .await
            .unwrap();
        assert_refused(&reply, "undeclared port");

        // Counted by the server sidecar, by reason and protocol.
        let server = mesh.server();
        eventually(TEST_DEADLINE, || async {
            let counts = [
                refused(server, "proxy_port", "http").await,
                refused(server, "proxy_port", "tcp").await,
                refused(server, "undeclared", "http").await,
            ];
            println!("refused (proxy_port/http, proxy_port/tcp, undeclared/http): {counts:?}");
            if counts.iter().all(|c| *c >= 1.0) {
                Ok(())
            } else {
                Err(format!("refusals counted so far: {counts:?}"))
            }
        })
        .await;

        // The server sidecar is up and not draining; declared ports work.
        assert!(mesh.server().proc.try_exit_status().is_none());
        let ready = mesh.server().admin_get("/ready").await.unwrap();
        assert_eq!(ready.status, StatusCode::OK, "{}", ready.text());
        let reply = send(&http, get(&TwoHop::url("/"))).await.unwrap();
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        assert_eq!(reply.header("x-echo-name"), Some(TwoHop::APP));
        let back = tcp_roundtrip(mesh.outbound_tcp, b"still here")
            .await
            .unwrap();
        assert_eq!(back, b"still here");
    })
    .await;
}

/// The transport header a sidecar writes first: magic, port, framing
/// (0 opaque, 2 HTTP/1.1).
fn transport_header(port: u16, framing: u8) -> Vec<u8> {
    let mut h = b"\0sane\x01".to_vec();
    h.extend_from_slice(&port.to_be_bytes());
    h.push(framing);
    h
}

/// Writes `header` and an HTTP/1.1 GET of `path` to `inbound`; returns all
/// it reads back until the sidecar closes.
async fn raw_get(inbound: SocketAddr, header: &[u8], path: &str) -> String {
    let mut s = TcpStream::connect(inbound).await.unwrap();
    s.write_all(header).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn a_plain_client_naming_the_admin_or_health_port_itself_is_refused() {
    let bins = bins();
    let app = EchoApp::start_with(&bins.echo, "web-1", "web").await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("sidecar.yaml");
    let declared = WorkloadPort {
        port: app.addrs.http.port().into(),
        protocol: Protocol::Http.into(),
        ..Default::default()
    };
    write_bootstrap(
        &config,
        &Bootstrap {
            node: Node {
                id: "web-1".into(),
                workload: "web".into(),
                ..Default::default()
            },
            admin: AdminConfig {
                address: "127.0.0.1:0".into(),
            },
            health: Some(HealthConfig {
                address: "127.0.0.1:0".into(),
                ..Default::default()
            }),
            resources: MeshResources {
                listeners: vec![Listener {
                    name: "inbound".into(),
                    direction: Direction::Inbound.into(),
                    address: "127.0.0.1:0".into(),
                    workload_ports: vec![declared],
                    ..Default::default()
                }],
                ..Default::default()
            },
            ..Default::default()
        },
    );
    let proxy = Proc::spawn(
        "sane-proxy[web-1]",
        &bins.proxy,
        [std::ffi::OsStr::new("--config"), config.as_os_str()],
        &[],
    );
    let bound = proxy
        .wait_listening(&["admin", "health", "inbound"], START_DEADLINE)
        .await;
    let (admin, health, inbound) = (bound["admin"], bound["health"], bound["inbound"]);

    within(TEST_DEADLINE, async {
        // No sidecar in between: the client writes the header itself.
        for (what, port, path) in [
            ("admin", admin.port(), "/config_dump"),
            ("health", health.port(), "/healthz/ready"),
            ("inbound itself", inbound.port(), "/"),
        ] {
            let rsp = raw_get(inbound, &transport_header(port, 2), path).await;
            assert!(rsp.starts_with("HTTP/1.1 403"), "{what}: {rsp}");
            assert!(
                rsp.contains(&format!("x-sane-response-flags: {FLAG}")),
                "{what}: {rsp}"
            );
            assert!(!rsp.contains("listeners"), "{what}: {rsp}");
        }
        // Opaque framing to the admin port: closed unanswered.
        let rsp = raw_get(inbound, &transport_header(admin.port(), 0), "/config_dump").await;
        assert!(rsp.is_empty(), "{rsp}");

        // The declared port is served, by header and by detection.
        let rsp = raw_get(inbound, &transport_header(app.addrs.http.port(), 2), "/").await;
        assert!(rsp.starts_with("HTTP/1.1 200"), "{rsp}");
        let rsp = raw_get(inbound, b"", "/").await;
        assert!(rsp.starts_with("HTTP/1.1 200"), "{rsp}");

        let metrics = send(
            &sane_e2e::harness::http::http1_client(),
            get(&format!("http://{admin}/metrics")),
        )
        .await
        .unwrap()
        .text();
        let count = |reason, protocol| {
            let labels = [("reason", reason), ("protocol", protocol)];
            metric_value(&metrics, "sane_inbound_port_refused_total", &labels).unwrap_or(0.0)
        };
        assert_eq!(count("proxy_port", "http"), 3.0, "{metrics}");
        assert_eq!(count("proxy_port", "tcp"), 1.0, "{metrics}");
        assert!(proxy.try_exit_status().is_none(), "the sidecar is still up");
    })
    .await;
}
