//! "Bring your Istio YAML" for the ingress: a running `sane-proxy gateway`
//! whose bootstrap has no `gateway` section, only node labels, is
//! configured by `sanectl apply -f` of an Istio Gateway + VirtualService
//! and of a Gateway API Gateway + HTTPRoute, through the control plane's
//! xDS stream (the `Gateway` resources the converters produce, sent to the
//! gateway proxies their selector picks).
//!
//! ```text
//! sanectl apply -f <Istio / Gateway API YAML> ─▶ control plane ─xDS (Gateway)─▶ sane-proxy gateway
//! client ─HTTPS (SNI)─▶ sane-proxy gateway (listeners bound at runtime) ─▶ httpbin (sane-echo)
//! ```
//!
//! Host certificates are Secrets read on the gateway's machine
//! (`--credentials-dir`): no key travels over xDS.

use http::{Method, StatusCode};
use sane_e2e::harness::http::{full, http1_client, request, send};
use sane_e2e::harness::https::{https_get, write_secret};
use sane_e2e::harness::{
    bins, eventually, write_bootstrap, xds_bootstrap, ControlPlane, EchoApp, Proc, Sanectl,
    READY_DEADLINE,
};
use sane_xds_proto::{Endpoint, MeshResources, Service, ServicePort, GATEWAY_NAME_LABEL};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

const DEADLINE: Duration = Duration::from_secs(30);
const HTTPBIN: &str = "httpbin.example.com";
const KUBE_HOST: &str = "kube.example.com";

/// `fixture` with its placeholders replaced, written under `dir`.
fn fixture(dir: &Path, name: &str, values: &[(&str, String)]) -> String {
    let source = sane_e2e::harness::workspace_root()
        .join("e2e/fixtures/istio")
        .join(name);
    let mut text = std::fs::read_to_string(&source).unwrap();
    for (key, value) in values {
        text = text.replace(key, value);
    }
    let out = dir.join(name);
    std::fs::write(&out, text).unwrap();
    out.display().to_string()
}

/// A port free on loopback now (the delivered listener binds it later).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Polls until `GET path` for `host` at `addr` answers `status` (200:
/// served by httpbin).
async fn until_status(addr: SocketAddr, host: &str, path: &str, roots: &str, status: StatusCode) {
    eventually(DEADLINE, || async {
        let r = https_get(addr, host, path, roots).await?;
        let from_httpbin = r.header("x-echo-name") == Some("httpbin");
        if r.status == status && (status != StatusCode::OK || from_httpbin) {
            Ok(())
        } else {
            Err(format!("{host}{path}: {} {}", r.status, r.text()))
        }
    })
    .await
}

/// Must-show of issue 22: `kubectl apply` (here `sanectl apply -f`) of a
/// Gateway and its routes configures the running ingress gateway within
/// seconds, for both Istio's and the Gateway API's objects; a route change
/// arrives, and a deletion closes what it opened.
#[tokio::test]
async fn applied_gateways_and_routes_configure_the_running_gateway() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(&dir.path().join("cp"), &[]).await;
    let cli = Sanectl::new(&cp);
    let httpbin = EchoApp::start_with(&bins().echo, "httpbin", "httpbin").await;
    let mesh = MeshResources {
        services: vec![Service {
            name: "httpbin".into(),
            namespace: "default".into(),
            ports: vec![ServicePort {
                name: "http".into(),
                port: 8000,
                ..Default::default()
            }],
            ..Default::default()
        }],
        endpoints: vec![Endpoint {
            service: "httpbin".into(),
            namespace: "default".into(),
            address: httpbin.addrs.http.ip().to_string(),
            ports: BTreeMap::from([("http".into(), u32::from(httpbin.addrs.http.port()))]),
            ..Default::default()
        }],
        ..Default::default()
    };
    let mesh_file = dir.path().join("mesh.yaml");
    std::fs::write(&mesh_file, serde_yaml::to_string(&mesh).unwrap()).unwrap();
    cli.ok(&["apply", "-f", &mesh_file.display().to_string()])
        .await;

    // The gateway: no `gateway` section, the labels both Gateways select,
    // in their namespace, Secrets read from its own credentials dir.
    let credentials = dir.path().join("credentials");
    let httpbin_roots = write_secret(
        &credentials,
        "istio-system/httpbin-credential",
        HTTPBIN,
        "Delivered ingress test",
    );
    let kube_roots = write_secret(
        &credentials,
        "istio-system/kube-credential",
        KUBE_HOST,
        "Delivered ingress test",
    );
    let token = cp
        .issue_token(dir.path(), "istio-system", "ingressgateway")
        .await;
    let mut boot = xds_bootstrap(&cp, "ingress", vec![]);
    boot.node.id = "ingressgateway.istio-system~ingress".into();
    boot.node.namespace = "istio-system".into();
    boot.node.labels = BTreeMap::from([
        ("istio".into(), "ingressgateway".into()),
        (GATEWAY_NAME_LABEL.into(), "mygateway".into()),
    ]);
    if let Some(c) = boot.control_plane.as_mut() {
        c.token_file = token.display().to_string();
        c.services = vec!["*".into()];
    }
    assert!(boot.gateway.is_none());
    let config = dir.path().join("gateway.yaml");
    write_bootstrap(&config, &boot);
    let (cfg, creds) = (
        config.display().to_string(),
        credentials.display().to_string(),
    );
    let gateway = Proc::spawn(
        "sane-proxy[gateway]",
        &bins().proxy,
        [
            "gateway",
            "--config",
            cfg.as_str(),
            "--credentials-dir",
            creds.as_str(),
            "--listener-ip",
            "127.0.0.1",
        ],
        &[],
    );
    gateway.wait_listening(&["admin"], READY_DEADLINE).await;

    // Istio: Gateway (HTTPS with `credentialName`, HTTP redirecting) and
    // the VirtualService bound to it.
    let (https, http) = (free_port(), free_port());
    let istio = fixture(
        dir.path(),
        "gateway-delivered-istio.yaml",
        &[
            ("__HTTPS_PORT__", https.to_string()),
            ("__HTTP_PORT__", http.to_string()),
        ],
    );
    let run = cli.ok(&["apply", "-f", &istio]).await;
    println!("{run}");
    let https_addr: SocketAddr = ([127, 0, 0, 1], https).into();
    until_status(
        https_addr,
        HTTPBIN,
        "/status/200",
        &httpbin_roots,
        StatusCode::OK,
    )
    .await;
    let unrouted = https_get(https_addr, HTTPBIN, "/headers", &httpbin_roots)
        .await
        .unwrap();
    assert_eq!(
        unrouted.status,
        StatusCode::NOT_FOUND,
        "{}",
        unrouted.text()
    );
    let mut plain = request(
        Method::GET,
        &format!("http://127.0.0.1:{http}/status/200"),
        full(""),
    );
    plain
        .headers_mut()
        .insert(http::header::HOST, HTTPBIN.parse().unwrap());
    let r = send(&http1_client(), plain).await.unwrap();
    assert!(r.status.is_redirection(), "{} {}", r.status, r.text());
    assert_eq!(
        r.header("location"),
        Some(format!("https://{HTTPBIN}:{https}/status/200").as_str())
    );
    // The resource the control plane delivers, as `sanectl` shows it.
    let listed = cli.ok(&["get", "sane-gateways", "-o", "json"]).await;
    let listed: serde_json::Value = serde_json::from_str(&listed.stdout).unwrap();
    let delivered = &listed["gateways"][0];
    assert_eq!(delivered["name"], "istio-gateway", "{listed}");
    assert_eq!(delivered["selector"]["istio"], "ingressgateway", "{listed}");

    // Gateway API: a second Gateway with its own listener and Secret, and
    // the HTTPRoute attached to it from another namespace.
    let kube_port = free_port();
    let kube_addr: SocketAddr = ([127, 0, 0, 1], kube_port).into();
    let kube = |prefix: &str| {
        fixture(
            dir.path(),
            "gateway-delivered-kube.yaml",
            &[
                ("__HTTPS_PORT__", kube_port.to_string()),
                ("__PREFIX__", prefix.to_string()),
            ],
        )
    };
    let run = cli.ok(&["apply", "-f", &kube("/status")]).await;
    println!("{run}");
    until_status(
        kube_addr,
        KUBE_HOST,
        "/status/200",
        &kube_roots,
        StatusCode::OK,
    )
    .await;
    // The Istio Gateway's host is still served beside it.
    until_status(
        https_addr,
        HTTPBIN,
        "/status/200",
        &httpbin_roots,
        StatusCode::OK,
    )
    .await;

    // A changed HTTPRoute: its new prefix is served, the old one no more.
    cli.ok(&["apply", "-f", &kube("/headers")]).await;
    until_status(
        kube_addr,
        KUBE_HOST,
        "/headers",
        &kube_roots,
        StatusCode::OK,
    )
    .await;
    until_status(
        kube_addr,
        KUBE_HOST,
        "/status/200",
        &kube_roots,
        StatusCode::NOT_FOUND,
    )
    .await;

    // Deleted: the route's host goes (no certificate is served for it),
    // then with the Gateway its listener is closed.
    cli.ok(&["delete", "httproute", "default/httpbin"]).await;
    eventually(DEADLINE, || async {
        match https_get(kube_addr, KUBE_HOST, "/headers", &kube_roots).await {
            Ok(r) if r.status == StatusCode::OK => Err(format!("still served: {}", r.status)),
            _ => Ok(()),
        }
    })
    .await;
    cli.ok(&[
        "delete",
        "gateways.gateway.networking.k8s.io",
        "istio-system/mygateway",
    ])
    .await;
    eventually(DEADLINE, || async {
        match tokio::net::TcpStream::connect(kube_addr).await {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => Ok(()),
            other => Err(format!("{kube_addr} still accepts: {other:?}")),
        }
    })
    .await;
    // Removing the VirtualService leaves the Istio Gateway's listener
    // without its host.
    cli.ok(&["delete", "virtualservice", "default/httpbin"])
        .await;
    eventually(DEADLINE, || async {
        match https_get(https_addr, HTTPBIN, "/status/200", &httpbin_roots).await {
            Ok(r) if r.status == StatusCode::OK => Err(format!("still served: {}", r.status)),
            _ => Ok(()),
        }
    })
    .await;
    drop(gateway);
}
