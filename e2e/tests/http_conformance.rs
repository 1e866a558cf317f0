//! HTTP/1 requests that intermediaries may read differently are refused,
//! and header count limits answer with the proxy's flag, on the sidecar's
//! outbound listener and on the gateway (raw sockets: no client would send
//! these):
//!
//! * two `Host` headers → `400 DPE` (RFC 9112 section 3.2);
//! * `Content-Length` with `Transfer-Encoding` → `400 DPE` (Envoy's default);
//! * more than 100 request header fields → `431 DPE` with a reason;
//! * a response with 80 header fields passes (limit 100, Envoy's), one with
//!   150 is `502 UPE` (was `503 UC`).
//!
//! test ──▶ client sidecar ──▶ server sidecar ──▶ echo
//! test ──▶ gateway (plain HTTP) ──────────────▶ echo

use sane_e2e::harness::http::{raw_http1, RawReply};
use sane_e2e::harness::{bins, echo_service, within, write_bootstrap, Proc, TwoHop, HTTP_PORT};
use sane_xds_proto::{
    AdminConfig, Bootstrap, Gateway, GatewayHost, GatewayListener, GatewayRoute, MatchKind,
    MeshResources, Node, PathMatch, RouteMatch,
};
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

const DEADLINE: Duration = Duration::from_secs(90);
const FLAGS: &str = "x-sane-response-flags";
const GATEWAY_HOST: &str = "echo.example";

/// A gateway with one plain HTTP listener routing `echo.example` to the echo
/// app (no sidecar in between: the gateway's own checks are tested).
async fn start_gateway(dir: &Path, mesh: &TwoHop) -> (Proc, SocketAddr) {
    let bootstrap = Bootstrap {
        node: Node {
            id: "gateway".into(),
            namespace: String::new(),
            workload: "gateway".into(),
            ..Default::default()
        },
        admin: AdminConfig {
            address: "127.0.0.1:0".into(),
        },
        drain_timeout: 1_000,
        resources: MeshResources {
            services: vec![echo_service(TwoHop::SERVICE)],
            endpoints: vec![mesh.mesh.app(TwoHop::APP).endpoint(None)],
            ..Default::default()
        },
        gateway: Some(Gateway {
            name: "edge".into(),
            listeners: vec![GatewayListener {
                name: "http".into(),
                address: "127.0.0.1:0".into(),
                tls: false,
                redirect_port: 0,
            }],
            hosts: vec![GatewayHost {
                hostname: GATEWAY_HOST.into(),
                tls: None,
                https_redirect: false,
                routes: vec![GatewayRoute {
                    matches: vec![RouteMatch {
                        path: Some(PathMatch {
                            kind: MatchKind::Prefix as i32,
                            value: "/".into(),
                        }),
                        ..Default::default()
                    }],
                    service: TwoHop::SERVICE.into(),
                    port: HTTP_PORT,
                }],
            }],
            limits: None,
            ..Default::default()
        }),
        ..Default::default()
    };
    bootstrap.validate().expect("the test built a valid config");
    let config = dir.join("gateway.yaml");
    write_bootstrap(&config, &bootstrap);
    let cfg = config.display().to_string();
    let proc = Proc::spawn(
        "sane-proxy[gateway]",
        &bins().proxy,
        ["gateway", "--config", cfg.as_str()],
        &[],
    );
    let addrs = proc
        .wait_listening(&["admin", "http"], Duration::from_secs(15))
        .await;
    (proc, addrs["http"])
}

/// A request head for `host` with `extra` header lines (each ending in
/// CRLF) and `body`.
fn request(method: &str, host: &str, extra: &str, body: &str) -> Vec<u8> {
    format!("{method} / HTTP/1.1\r\nHost: {host}\r\n{extra}Connection: close\r\n\r\n{body}")
        .into_bytes()
}

fn headers(n: usize) -> String {
    (0..n).map(|i| format!("x-h{i}: v\r\n")).collect()
}

async fn send(addr: SocketAddr, req: &[u8]) -> RawReply {
    raw_http1(addr, req)
        .await
        .unwrap_or_else(|e| panic!("request to {addr}: {e}"))
}

fn assert_refused(r: &RawReply, status: u16, flag: &str, why: &str) {
    assert_eq!(r.status, status, "{why}: {}", r.summary());
    assert_eq!(r.header(FLAGS), Some(flag), "{why}: {}", r.summary());
    assert!(
        !r.body.is_empty(),
        "{why}: the answer says why: {}",
        r.summary()
    );
}

#[tokio::test]
async fn ambiguous_or_oversized_requests_are_refused_with_a_flag() {
    // Started outside the deadline: the first start builds the binaries.
    let mesh = TwoHop::start().await;
    let dir = tempfile::tempdir().unwrap();
    within(DEADLINE, async {
        let (_gateway, gateway) = start_gateway(dir.path(), &mesh).await;
        for (name, addr, host) in [
            ("outbound", mesh.outbound_http, TwoHop::SERVICE),
            ("gateway", gateway, GATEWAY_HOST),
        ] {
            // A plain request works, with a body too.
            let ok = send(addr, &request("POST", host, "Content-Length: 2\r\n", "hi")).await;
            assert_eq!(ok.status, 200, "{name}: {}", ok.summary());

            let two_hosts = request("GET", host, "Host: other.example\r\n", "");
            let r = send(addr, &two_hosts).await;
            assert_refused(&r, 400, "DPE", &format!("{name}: two Host headers"));
            assert!(r.body.contains("Host"), "{name}: {}", r.summary());

            let both = request(
                "POST",
                host,
                "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n",
                "0\r\n\r\n",
            );
            let r = send(addr, &both).await;
            assert_refused(&r, 400, "DPE", &format!("{name}: both lengths"));
            assert!(
                r.body.contains("Transfer-Encoding"),
                "{name}: {}",
                r.summary()
            );

            // 101 fields with Host: over the default limit of 100.
            let r = send(addr, &request("GET", host, &headers(100), "")).await;
            assert_refused(&r, 431, "DPE", &format!("{name}: 101 header fields"));
            // Well under it passes (the sidecars add a few of their own on
            // the way, which the next hop counts).
            let r = send(addr, &request("GET", host, &headers(80), "")).await;
            assert_eq!(r.status, 200, "{name}: 81 header fields: {}", r.summary());
        }
    })
    .await;
}

#[tokio::test]
async fn responses_with_many_headers_pass_up_to_the_response_limit() {
    let mesh = TwoHop::start().await;
    within(DEADLINE, async {
        let addr = mesh.outbound_http;
        let ask = |n: usize| {
            request(
                "GET",
                TwoHop::SERVICE,
                &format!("x-echo-response-headers: {n}\r\n"),
                "",
            )
        };
        // The echo adds a few fields of its own to the ones asked for.
        let r = send(addr, &ask(80)).await;
        assert_eq!(r.status, 200, "80 response headers: {}", r.summary());
        assert_eq!(r.header("x-echo-h79"), Some("79"));
        let r = send(addr, &ask(150)).await;
        assert_refused(&r, 502, "UPE", "150 response headers");
    })
    .await;
}
