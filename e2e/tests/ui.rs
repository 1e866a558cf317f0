//! The control plane's web view, `/ui`, loaded in headless Chromium against a
//! running mesh: a real control plane reading a real Prometheus that scrapes
//! real sidecars carrying traffic to two services.
//!
//! The page must load with no console error, show every service and every
//! edge with its figures, and mark the proxies that NACKed the last route.
//! Set `SANE_UI_SCREENSHOT=<path.png>` to also save a screenshot (the one in
//! the README was made so).
//!
//! Chromium and Prometheus come from Debian's packages, installed by the
//! project's scripts when missing; under `CI=true` a missing one fails.

use http::StatusCode;
use sane_e2e::harness::browser::{chromium_or_skip, screenshot, Browser};
use sane_e2e::harness::http::{get, http1_client_via, send, HttpClient};
use sane_e2e::harness::{
    bins, eventually, prometheus_or_skip, xds_bootstrap, xds_node_id, ApiClient, ControlPlane,
    EchoApp, Prometheus, Sanectl, Sidecar, OUTBOUND,
};
use sane_xds_proto::Listener;
use serde_json::Value;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

const DEADLINE: Duration = Duration::from_secs(60);

/// Two services, one instance each, reached without a server sidecar.
fn mesh_yaml(echo: &EchoApp, ratings: &EchoApp) -> String {
    format!(
        "services:
  - {{ name: echo, ports: [ {{ name: http, port: 80 }} ] }}
  - {{ name: ratings, ports: [ {{ name: http, port: 80 }} ] }}
endpoints:
  - {{ service: echo, address: 127.0.0.1, port: {} }}
  - {{ service: ratings, address: 127.0.0.1, port: {} }}
",
        echo.addrs.http.port(),
        ratings.addrs.http.port()
    )
}

/// Requests to both services through `client` until `stop`.
fn traffic(client: HttpClient, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<Vec<String>> {
    tokio::spawn(async move {
        let mut failures = Vec::new();
        let mut pace = tokio::time::interval(Duration::from_millis(10));
        while !stop.load(Ordering::Relaxed) {
            for host in ["echo", "ratings"] {
                pace.tick().await;
                match send(&client, get(&format!("http://{host}/"))).await {
                    Ok(r) if r.status == StatusCode::OK => {}
                    Ok(r) => failures.push(format!("{host}: {} {}", r.status, r.text())),
                    Err(e) => failures.push(format!("{host}: {e}")),
                }
            }
        }
        failures
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ui_shows_every_service_and_edge_and_marks_a_nacking_proxy() {
    const TEST: &str = "the_ui_shows_every_service_and_edge_and_marks_a_nacking_proxy";
    let Some(chromium) = chromium_or_skip(TEST) else {
        return;
    };
    let Some(prometheus_bin) = prometheus_or_skip(TEST) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let prom_dir = dir.path().join("prometheus");
    std::fs::create_dir_all(&prom_dir).unwrap();
    let prometheus = Prometheus::start_discovering(&prometheus_bin, &prom_dir, &[]).await;
    let prom_url = format!("http://{}", prometheus.addr);
    let cp = ControlPlane::start(&dir.path().join("cp"), &["--prometheus-url", &prom_url]).await;
    let cli = Sanectl::new(&cp);
    let api = ApiClient::new(&cp);

    let (echo, ratings) = tokio::join!(
        EchoApp::start_with(&bins().echo, "echo-1", "echo"),
        EchoApp::start_with(&bins().echo, "ratings-1", "ratings"),
    );
    let manifest = dir.path().join("mesh.yaml");
    std::fs::write(&manifest, mesh_yaml(&echo, &ratings)).unwrap();
    cli.ok(&["apply", "-f", &manifest.display().to_string()])
        .await;

    let proxies = dir.path().join("proxies");
    std::fs::create_dir_all(&proxies).unwrap();
    let outbound = vec![Listener {
        name: OUTBOUND.into(),
        address: "127.0.0.1:0".into(),
        ..Default::default()
    }];
    let (client, bystander) = tokio::join!(
        Sidecar::start(
            &bins().proxy,
            &proxies,
            "client",
            xds_bootstrap(&cp, "client", outbound)
        ),
        Sidecar::start(
            &bins().proxy,
            &proxies,
            "bystander",
            xds_bootstrap(&cp, "bystander", Vec::new())
        ),
    );
    prometheus.set_targets(&[client.admin, bystander.admin]);
    let stop = Arc::new(AtomicBool::new(false));
    let load = traffic(http1_client_via(client.listener(OUTBOUND)), stop.clone());

    // Prometheus has both edges (a rate needs two scrapes of a counter).
    eventually(DEADLINE, || async {
        let edges = prometheus
            .query("sum by (destination_service) (rate(istio_requests_total{reporter=\"source\"}[1m])) > 0")
            .await?;
        (edges.len() == 2)
            .then_some(())
            .ok_or_else(|| format!("edges in Prometheus: {edges:?}"))
    })
    .await;

    // A route every proxy rejects (an unclosed regex class): both NACK.
    let bad = dir.path().join("bad-route.yaml");
    std::fs::write(
        &bad,
        r#"
routes:
  - name: echo-canary
    service: echo
    rules:
      - matches: [ { headers: [ { name: x-canary, kind: regex, value: "[a-" } ] } ]
        destinations: [ { service: echo } ]
"#,
    )
    .unwrap();
    cli.ok(&["apply", "-f", &bad.display().to_string()]).await;
    for id in ["client", "bystander"].map(xds_node_id) {
        let id = id.as_str();
        eventually(DEADLINE, || async {
            let r = api.proxy(id).await?;
            let route = &r["types"]["Route"];
            if route["last_nack"].is_null()
                || route["last_nack"]["version"] != route["version_sent"]
            {
                return Err(format!("{id} has not NACKed the latest route: {r}"));
            }
            Ok(())
        })
        .await;
    }

    let browser = Browser::start(&chromium).await;
    let url = format!("https://{}/ui", cp.api);
    let mut page = browser.open(&url).await;
    assert!(
        page.errors.is_empty(),
        "console errors: {:?}\n{}",
        page.errors,
        browser.stderr()
    );
    let nodes = page
        .eval("[...document.querySelectorAll('[data-node]')].map(n => n.dataset.node).sort()")
        .await;
    let edges = page
        .eval("[...document.querySelectorAll('[data-edge]')].map(e => [e.dataset.edge, e.textContent])")
        .await;
    let services = page
        .eval("[...document.querySelectorAll('[data-service]')].map(n => n.dataset.service).sort()")
        .await;
    let row = |name: &str| {
        format!(
            "document.querySelector('tr[data-proxy=\"{}\"]')",
            xds_node_id(name)
        )
    };
    let client_row = page
        .eval(&format!(
            "(r => r && [r.className, r.textContent])({})",
            row("client")
        ))
        .await;
    let bystander_row = page
        .eval(&format!("(r => r && r.className)({})", row("bystander")))
        .await;
    println!("nodes: {nodes}\nedges: {edges}\nservices: {services}\nclient: {client_row}");

    assert_eq!(
        nodes,
        serde_json::json!(["client", "echo.default", "ratings.default"])
    );
    assert_eq!(
        services,
        serde_json::json!(["echo.default", "ratings.default"])
    );
    let edges: Vec<(String, String)> = edges
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e[0].as_str().unwrap().to_string(),
                e[1].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let names: Vec<&str> = edges.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names.len(), 2, "{edges:?}");
    for want in ["client->echo.default", "client->ratings.default"] {
        let (_, label) = edges
            .iter()
            .find(|(n, _)| n == want)
            .unwrap_or_else(|| panic!("no edge {want}: {edges:?}"));
        assert!(
            label.contains("rps") && label.contains("100.0 %"),
            "{want}: {label}"
        );
        assert!(label.contains("p99"), "{want}: {label}");
    }
    assert_eq!(client_row[0], "nack", "{client_row}");
    let text = client_row[1].as_str().unwrap_or_default();
    assert!(
        text.contains("NACK") && text.contains("invalid regex"),
        "{text}"
    );
    assert_eq!(bystander_row, Value::from("nack"));

    if let Ok(out) = std::env::var("SANE_UI_SCREENSHOT") {
        screenshot(&chromium, &url, std::path::Path::new(&out)).expect("a screenshot");
        println!("screenshot written to {out}");
    }
    stop.store(true, Ordering::Relaxed);
    let failures = load.await.unwrap();
    assert!(failures.is_empty(), "requests failed: {failures:?}");
}
