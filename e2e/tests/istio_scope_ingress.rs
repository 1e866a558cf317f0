//! Istio's `Sidecar` and both `Gateway`s, with the YAML of Istio's own
//! docs and tasks (`e2e/fixtures/istio/`), through real binaries: a control
//! plane, echo apps standing for bookinfo's services and httpbin, calling
//! sidecars, and `sane-proxy gateway`.
//!
//! ```text
//! caller sidecar (app=productpage | app=sleep) ─▶ reviews, details (default), ratings (backend)
//! client ─HTTPS (SNI httpbin.example.com)─▶ sane-proxy gateway ─▶ httpbin
//! ```
//!
//! Every change is a `sanectl apply -f <Istio YAML>`: the control plane
//! stores the objects; a Sidecar changes what the proxies it selects are
//! sent over xDS (shown by each proxy's `/config_dump` and by requests to
//! hosts outside its scope failing with 404 `NR`); a Gateway and what is
//! bound to it become the gateway's configuration (`sanectl convert
//! --gateway`, with its Secret read from `--credentials-dir`).

use http::{Method, StatusCode};
use sane_e2e::harness::http::{full, http1_client, http1_client_via, request, send, Reply};
use sane_e2e::harness::https::{https_get, write_secret};
use sane_e2e::harness::{
    bins, eventually, write_bootstrap, xds_bootstrap, ControlPlane, EchoApp, Proc, Sanectl,
    Sidecar, READY_DEADLINE,
};
use sane_xds_proto::{Endpoint, Listener, MeshResources, Service, ServicePort};
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

const DEADLINE: Duration = Duration::from_secs(30);
const HTTPBIN: &str = "httpbin.example.com";

fn fixture(name: &str) -> String {
    sane_e2e::harness::workspace_root()
        .join("e2e/fixtures/istio")
        .join(name)
        .display()
        .to_string()
}

fn service(name: &str, namespace: &str, port: u32) -> Service {
    Service {
        name: name.into(),
        namespace: namespace.into(),
        ports: vec![ServicePort {
            name: "http".into(),
            port,
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// The app's HTTP port, reached directly (no server sidecar).
fn endpoint(app: &EchoApp, namespace: &str) -> Endpoint {
    Endpoint {
        service: app.service.clone(),
        namespace: namespace.into(),
        address: app.addrs.http.ip().to_string(),
        ports: BTreeMap::from([("http".into(), u32::from(app.addrs.http.port()))]),
        labels: BTreeMap::from([("app".into(), app.service.clone())]),
        ..Default::default()
    }
}

/// Writes `mesh` and applies it.
async fn apply_mesh(cli: &Sanectl, dir: &Path, mesh: &MeshResources) {
    let path = dir.join("mesh.yaml");
    std::fs::write(&path, serde_yaml::to_string(mesh).unwrap()).unwrap();
    cli.ok(&["apply", "-f", &path.display().to_string()]).await;
}

/// A calling sidecar of namespace `default` whose node carries `app=<app>`
/// and which asks for every service exported to it.
async fn caller(cp: &ControlPlane, dir: &Path, name: &str, app: &str) -> Sidecar {
    let outbound = Listener {
        name: "outbound".into(),
        address: "127.0.0.1:0".into(),
        ..Default::default()
    };
    let mut b = xds_bootstrap(cp, name, vec![outbound]);
    b.node.labels = BTreeMap::from([("app".into(), app.into())]);
    if let Some(c) = b.control_plane.as_mut() {
        c.services = vec!["*".into()];
    }
    Sidecar::start(&bins().proxy, dir, name, b).await
}

async fn get_via(via: &Sidecar, host: &str) -> Result<Reply, String> {
    let client = http1_client_via(via.listener("outbound"));
    send(
        &client,
        request(Method::GET, &format!("http://{host}/"), full("")),
    )
    .await
}

/// Polls until a request for `host` through `via` answers `status` (served
/// by the app, or refused by the proxy with 404 `NR`).
async fn until(via: &Sidecar, host: &str, status: u16) {
    eventually(DEADLINE, || async {
        let r = get_via(via, host).await?;
        let want_flag = if status == 404 { Some("NR") } else { None };
        let flag = r.header("x-sane-response-flags");
        if r.status.as_u16() == status && flag == want_flag {
            Ok(())
        } else {
            Err(format!(
                "{} via {}: {} {flag:?} {}",
                host,
                via.name,
                r.status,
                r.text()
            ))
        }
    })
    .await
}

/// The services a proxy has clusters for (`/config_dump`).
async fn cluster_services(via: &Sidecar) -> BTreeSet<String> {
    let dump = via.config_dump().await.expect("a config dump");
    dump["clusters"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["name"].as_str())
        .map(|n| n.split(':').next().unwrap_or(n).to_string())
        .collect()
}

/// Polls until `via`'s clusters are exactly those of `want`.
async fn until_clusters(via: &Sidecar, want: &[&str]) {
    let want: BTreeSet<String> = want.iter().map(|s| s.to_string()).collect();
    eventually(DEADLINE, || async {
        let have = cluster_services(via).await;
        if have == want {
            Ok(())
        } else {
            Err(format!(
                "{} has clusters of {have:?}, want {want:?}",
                via.name
            ))
        }
    })
    .await
}

/// Must-show for `Sidecar`: a namespace-wide Sidecar (`./*`,
/// `istio-system/*`) leaves another namespace's ratings out of what the
/// namespace's proxies are sent; a workload Sidecar (selected by
/// `app: productpage`) scopes that proxy to reviews and `backend`'s
/// ratings only, while the other proxy keeps the namespace's scope;
/// deleting it gives the proxy the namespace's scope back.
#[tokio::test]
async fn sidecar_egress_hosts_limit_what_proxies_are_sent() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(&dir.path().join("cp"), &[]).await;
    let cli = Sanectl::new(&cp);
    let echo = &bins().echo;
    let reviews = EchoApp::start_with(echo, "reviews-v1", "reviews").await;
    let details = EchoApp::start_with(echo, "details-v1", "details").await;
    let ratings = EchoApp::start_with(echo, "ratings-v1", "ratings").await;
    let mesh = MeshResources {
        services: vec![
            service("reviews", "default", 80),
            service("details", "default", 80),
            service("ratings", "backend", 80),
        ],
        endpoints: vec![
            endpoint(&reviews, "default"),
            endpoint(&details, "default"),
            endpoint(&ratings, "backend"),
        ],
        ..Default::default()
    };
    apply_mesh(&cli, dir.path(), &mesh).await;
    let productpage = caller(&cp, dir.path(), "productpage", "productpage").await;
    let sleep = caller(&cp, dir.path(), "sleep", "sleep").await;

    // No Sidecar: every exported service.
    for host in ["reviews", "details", "ratings.backend"] {
        until(&productpage, host, 200).await;
    }
    until_clusters(
        &productpage,
        &["details.default", "ratings.backend", "reviews.default"],
    )
    .await;

    // The namespace's default Sidecar: its own namespace and istio-system.
    cli.ok(&["apply", "-f", &fixture("sidecar-default.yaml")])
        .await;
    for via in [&productpage, &sleep] {
        until(via, "ratings.backend", 404).await;
        until_clusters(via, &["details.default", "reviews.default"]).await;
        until(via, "reviews", 200).await;
        until(via, "details", 200).await;
    }

    // productpage's own Sidecar: reviews and backend's ratings only.
    let run = cli
        .ok(&["apply", "-f", &fixture("sidecar-productpage.yaml")])
        .await;
    println!("{run}");
    until_clusters(&productpage, &["ratings.backend", "reviews.default"]).await;
    until(&productpage, "details", 404).await;
    until(&productpage, "ratings.backend", 200).await;
    until(&productpage, "reviews", 200).await;
    // The other workload keeps the namespace's scope.
    assert_eq!(
        cluster_services(&sleep).await,
        BTreeSet::from(["details.default".to_string(), "reviews.default".to_string()])
    );
    assert_eq!(get_via(&sleep, "details").await.unwrap().status, 200);
    assert_eq!(
        get_via(&sleep, "ratings.backend").await.unwrap().status,
        404
    );

    // `sanectl get sidecars` lists the two, each with the scope it gave.
    let listed = cli.ok(&["get", "sidecars", "-o", "json"]).await;
    let listed: serde_json::Value = serde_json::from_str(&listed.stdout).unwrap();
    let produced: Vec<&str> = listed["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| {
            assert_eq!(o["kind"], "Sidecar", "{o}");
            o["produced"][0].as_str().unwrap()
        })
        .collect();
    assert_eq!(
        produced,
        ["scope default/default", "scope default/productpage"]
    );

    // Deleting the workload's Sidecar gives it the namespace's again.
    cli.ok(&["delete", "sidecar", "default/productpage"]).await;
    until(&productpage, "details", 200).await;
    until(&productpage, "ratings.backend", 404).await;
}

// === ingress ===

/// A running ingress: control plane, httpbin, and `sane-proxy gateway`.
struct Ingress {
    cp: ControlPlane,
    /// The gateway's listeners, by name.
    listeners: BTreeMap<String, SocketAddr>,
    /// The CA (PEM) of the host certificate, which clients trust.
    roots: String,
    _gateway: Proc,
    _httpbin: EchoApp,
    // Last: the processes stop before their files go.
    _dir: tempfile::TempDir,
}

/// Converts `fixture`'s Gateway `gateway` (`ns/name`) with its Secret
/// `secret` (`ns/name`) under a credentials dir, stores the objects, and
/// runs `sane-proxy gateway` with the result on port 0.
async fn start_gateway(fixture_name: &str, gateway: &str, secret: &str) -> Ingress {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(&dir.path().join("cp"), &[]).await;
    let cli = Sanectl::new(&cp);
    let httpbin = EchoApp::start_with(&bins().echo, "httpbin", "httpbin").await;
    let mesh = MeshResources {
        services: vec![service("httpbin", "default", 8000)],
        endpoints: vec![endpoint(&httpbin, "default")],
        ..Default::default()
    };
    apply_mesh(&cli, dir.path(), &mesh).await;
    let credentials = dir.path().join("credentials");
    let roots = write_secret(&credentials, secret, HTTPBIN, "Istio ingress test");

    let objects = fixture(fixture_name);
    let run = cli.ok(&["apply", "-f", &objects]).await;
    println!("{run}");
    let credentials = credentials.display().to_string();
    let section = cli
        .ok(&[
            "convert",
            "--gateway",
            gateway,
            "--credentials-dir",
            &credentials,
            "-o",
            "json",
            "-f",
            &objects,
        ])
        .await;
    println!("{section}");
    let section: serde_json::Value = serde_json::from_str(&section.stdout).unwrap();
    let mut gw: sane_xds_proto::Gateway =
        serde_json::from_value(section["gateway"].clone()).unwrap();
    let host = &gw.hosts[0];
    assert_eq!(host.hostname, HTTPBIN);
    assert_eq!(
        host.tls.as_ref().map(|t| t.cert_file.clone()),
        Some(format!("{credentials}/{secret}/tls.crt"))
    );
    for l in &mut gw.listeners {
        l.address = "127.0.0.1:0".into();
    }
    let mut names = vec!["admin".to_string()];
    names.extend(gw.listeners.iter().map(|l| l.name.clone()));

    let mut boot = xds_bootstrap(&cp, "ingress", vec![]);
    boot.gateway = Some(gw);
    boot.validate().expect("a valid gateway bootstrap");
    let config = dir.path().join("gateway.yaml");
    write_bootstrap(&config, &boot);
    let cfg = config.display().to_string();
    let proc = Proc::spawn(
        "sane-proxy[gateway]",
        &bins().proxy,
        ["gateway", "--config", cfg.as_str()],
        &[],
    );
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let listeners = proc.wait_listening(&names, READY_DEADLINE).await;
    Ingress {
        cp,
        listeners: listeners.into_iter().collect(),
        roots,
        _gateway: proc,
        _httpbin: httpbin,
        _dir: dir,
    }
}

/// Polls until the bound route answers through HTTPS: served by httpbin
/// for a path it matches, 404 for one it does not.
async fn https_routes_to_httpbin(https: SocketAddr, roots: &str) {
    eventually(DEADLINE, || async {
        let r = https_get(https, HTTPBIN, "/status/200", roots).await?;
        match (r.status, r.header("x-echo-name")) {
            (StatusCode::OK, Some("httpbin")) => Ok(()),
            (s, who) => Err(format!("{s} from {who:?}: {}", r.text())),
        }
    })
    .await;
    let r = https_get(https, HTTPBIN, "/delay/1", roots).await.unwrap();
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let unrouted = https_get(https, HTTPBIN, "/headers", roots).await.unwrap();
    assert_eq!(
        unrouted.status,
        StatusCode::NOT_FOUND,
        "{}",
        unrouted.text()
    );
}

/// Must-show for Istio's `Gateway`: the secure ingress task's Gateway
/// (SIMPLE TLS, `credentialName`) and the VirtualService bound to it
/// (`gateways: [mygateway]`) run `sane-proxy gateway`: HTTPS for the host
/// with the Secret's certificate, the VirtualService's prefixes routed to
/// httpbin, and the HTTP server's `httpsRedirect` answering plain HTTP with
/// a redirect to HTTPS.
#[tokio::test]
async fn istio_gateway_serves_its_bound_virtual_service_over_https() {
    let ingress = start_gateway(
        "gateway-httpbin-istio.yaml",
        "default/mygateway",
        "default/httpbin-credential",
    )
    .await;
    let https = ingress.listeners["https"];
    https_routes_to_httpbin(https, &ingress.roots).await;

    let mut plain = request(
        Method::GET,
        &format!("http://{}/status/200", ingress.listeners["http"]),
        full(""),
    );
    plain
        .headers_mut()
        .insert(http::header::HOST, HTTPBIN.parse().unwrap());
    let r = send(&http1_client(), plain).await.unwrap();
    assert!(r.status.is_redirection(), "{} {}", r.status, r.text());
    assert_eq!(
        r.header("location"),
        Some(format!("https://{HTTPBIN}:{}/status/200", https.port()).as_str())
    );

    // `sanectl get virtualservices` lists only the VirtualService, not
    // the Gateway stored beside it.
    let cli = Sanectl::new(&ingress.cp);
    let listed = cli.ok(&["get", "virtualservices", "-o", "json"]).await;
    let listed: serde_json::Value = serde_json::from_str(&listed.stdout).unwrap();
    let kinds: Vec<&str> = listed["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["VirtualService"]);
}

/// Must-show for the Gateway API's `certificateRefs`: the HTTPS listener
/// of the Gateway API secure ingress task serves the certificate of the
/// Secret it names (read from `--credentials-dir`), for the HTTPRoute
/// attached from another namespace.
#[tokio::test]
async fn gateway_api_https_listener_serves_its_certificate_refs() {
    let ingress = start_gateway(
        "gateway-httpbin-kube.yaml",
        "istio-system/mygateway",
        "istio-system/httpbin-credential",
    )
    .await;
    https_routes_to_httpbin(ingress.listeners["https"], &ingress.roots).await;
}
