//! Istio's standard Grafana dashboards (Mesh, Service, Workload) and Kiali's
//! graph query against a real Prometheus scraping real sidecars (issue 24,
//! must-show 3). The queries are in `e2e/fixtures/istio-dashboards/`
//! with their source; every one must return at least one series.
//!
//! ```text
//! test ─▶ web sidecar (workload web, app=web version=v1)
//!           ══ mutual TLS ══▶ backend sidecar (workload backend-v1,
//!                             app=backend version=v1) ─▶ sane-echo
//! ```
//!
//! The backend's workload is named `backend-v1`, not `backend`, so the
//! dashboards' `destination_service` filters only find the destination
//! reporter's series if that label is the service that was called.
//!
//! Prometheus comes from Debian's package (scripts/prometheus-test-deps.sh);
//! under `CI=true` a missing one fails the test.

use http::StatusCode;
use sane_e2e::harness::http::{get, http1_client_via, send};
use sane_e2e::harness::{
    bins, eventually, prometheus_or_skip, ApiClient, ControlPlane, EchoApp, Prometheus, Sidecar,
};
use sane_xds_proto::{
    AdminConfig, Bootstrap, Direction, IdentityConfig, Listener, MeshResources, Node, Protocol,
    WorkloadPort,
};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

const DEADLINE: Duration = Duration::from_secs(90);

#[derive(Debug, Deserialize)]
struct Queries {
    variables: BTreeMap<String, String>,
    dashboards: Vec<Dashboard>,
}

#[derive(Debug, Deserialize)]
struct Dashboard {
    name: String,
    panels: Vec<Panel>,
}

#[derive(Debug, Deserialize)]
struct Panel {
    title: String,
    expr: String,
}

/// `expr` with every `$name` replaced, longest names first (so
/// `$__rate_interval` is not read as `$__rate`).
fn substitute(expr: &str, variables: &BTreeMap<String, String>) -> String {
    let mut names: Vec<&String> = variables.keys().collect();
    names.sort_by_key(|n| std::cmp::Reverse(n.len()));
    let mut out = expr.to_string();
    for n in names {
        out = out.replace(&format!("${n}"), &variables[n]);
    }
    assert!(!out.contains('$'), "unsubstituted variable in {out}");
    out
}

/// A sidecar bootstrap of workload `workload` (service account `sa`) with
/// labels `app` and `version`, following the control plane with its
/// identity.
fn bootstrap(
    cp: &ControlPlane,
    sa: &str,
    workload: &str,
    token: &Path,
    listeners: Vec<Listener>,
) -> Bootstrap {
    Bootstrap {
        node: Node {
            id: format!("{sa}.default~{workload}"),
            workload: workload.into(),
            labels: BTreeMap::from([
                ("app".to_string(), sa.to_string()),
                ("version".to_string(), "v1".to_string()),
            ]),
            ..Default::default()
        },
        admin: AdminConfig {
            address: "127.0.0.1:0".into(),
        },
        drain_timeout: 1_000,
        resources: MeshResources {
            listeners,
            ..Default::default()
        },
        control_plane: Some(sane_xds_proto::ControlPlane {
            address: cp.xds_url(),
            token_file: token.display().to_string(),
            root_cert_file: cp.root_cert_file(),
            ..Default::default()
        }),
        identity: Some(IdentityConfig {
            service_account: sa.into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn istio_dashboards_and_kiali_find_every_series() {
    const TEST: &str = "istio_dashboards_and_kiali_find_every_series";
    let Some(prometheus_bin) = prometheus_or_skip(TEST) else {
        return;
    };
    let fixture =
        sane_e2e::harness::workspace_root().join("e2e/fixtures/istio-dashboards/queries.yaml");
    let queries: Queries =
        serde_yaml::from_str(&std::fs::read_to_string(&fixture).unwrap()).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let prom_dir = dir.path().join("prometheus");
    std::fs::create_dir_all(&prom_dir).unwrap();
    let prometheus = Prometheus::start_discovering(&prometheus_bin, &prom_dir, &[]).await;
    let cp = ControlPlane::start(&dir.path().join("cp"), &[]).await;
    let api = ApiClient::new(&cp);
    let web_token = cp.issue_token(dir.path(), "default", "web").await;
    let backend_token = cp.issue_token(dir.path(), "default", "backend").await;

    let app = EchoApp::start_with(&bins().echo, "backend-v1", "backend").await;
    let proxies = dir.path().join("proxies");
    std::fs::create_dir_all(&proxies).unwrap();
    let inbound = Listener {
        name: "inbound".into(),
        direction: Direction::Inbound.into(),
        address: "127.0.0.1:0".into(),
        workload_ports: vec![WorkloadPort {
            port: app.addrs.http.port().into(),
            protocol: Protocol::Http.into(),
            ..Default::default()
        }],
        ..Default::default()
    };
    let outbound = Listener {
        name: "outbound".into(),
        address: "127.0.0.1:0".into(),
        ..Default::default()
    };
    let backend = Sidecar::start(
        &bins().proxy,
        &proxies,
        "backend",
        bootstrap(&cp, "backend", "backend-v1", &backend_token, vec![inbound]),
    )
    .await;
    for (service, _) in [("web", ()), ("backend", ())] {
        api.put(
            &format!("/api/v1/services/default/{service}"),
            &serde_json::json!({ "name": service, "ports": [ { "name": "http", "port": 8080 } ] }),
        )
        .await;
    }
    let proxy_port = backend.listener("inbound").port();
    api.put(
        &format!("/api/v1/endpoints/default/backend/127.0.0.1:{proxy_port}"),
        &serde_json::json!({
            "service": "backend",
            "address": "127.0.0.1",
            "port": app.addrs.http.port(),
            "proxy_port": proxy_port,
            "identity": "spiffe://cluster.local/ns/default/sa/backend",
            "labels": { "app": "backend", "version": "v1" },
        }),
    )
    .await;
    let web = Sidecar::start(
        &bins().proxy,
        &proxies,
        "web",
        bootstrap(&cp, "web", "web", &web_token, vec![outbound]),
    )
    .await;
    api.wait_in_sync(DEADLINE, &["web.default~web", "backend.default~backend-v1"])
        .await;
    prometheus.set_targets(&[web.admin, backend.admin]);

    let stop = Arc::new(AtomicBool::new(false));
    let traffic = {
        let client = http1_client_via(web.listener("outbound"));
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut failures = Vec::new();
            let mut pace = tokio::time::interval(Duration::from_millis(20));
            while !stop.load(Ordering::Relaxed) {
                pace.tick().await;
                match send(&client, get("http://backend:8080/")).await {
                    Ok(r) if r.status == StatusCode::OK => {}
                    Ok(r) => failures.push(format!("{} {}", r.status, r.text())),
                    Err(e) => failures.push(e),
                }
            }
            failures
        })
    };

    let mut report = Vec::new();
    for d in &queries.dashboards {
        for p in &d.panels {
            let expr = substitute(&p.expr, &queries.variables);
            let series = eventually(DEADLINE, || async {
                let series = prometheus.query(&expr).await?;
                if series.is_empty() {
                    return Err(format!("{} / {}: no series for\n{expr}", d.name, p.title));
                }
                Ok(series)
            })
            .await;
            report.push(format!(
                "{} / {}: {} series, first {:?}",
                d.name,
                p.title,
                series.len(),
                series[0]
            ));
        }
    }
    stop.store(true, Ordering::Relaxed);
    let failures = traffic.await.unwrap();
    println!("{}", report.join("\n"));
    assert!(failures.is_empty(), "requests failed: {failures:?}");
}
