//! The health port an injected pod's kubelet probes, end to end: the real
//! `sane-proxy` started the way the injector starts it (the app's original
//! probes in `SANE_APP_PROBES`, the pod name in `SANE_POD_NAME`) runs each
//! probe against a real `sane-echo` over loopback — `httpGet`, `tcpSocket`
//! and the standard gRPC health check — and answers 200 or 503.

use http::StatusCode;
use sane_e2e::harness::http::{get, http1_client, send, Reply};
use sane_e2e::harness::Proc;
use sane_e2e::harness::{bins, eventually, within, write_bootstrap, EchoApp};
use sane_xds_proto::{AdminConfig, Bootstrap, HealthConfig, Node};
use std::time::Duration;

const TEST_DEADLINE: Duration = Duration::from_secs(60);
const START_DEADLINE: Duration = Duration::from_secs(20);

async fn probe(health: std::net::SocketAddr, path: &str) -> Reply {
    send(&http1_client(), get(&format!("http://{health}{path}")))
        .await
        .unwrap_or_else(|e| panic!("GET {path} on the health port: {e}"))
}

#[tokio::test]
async fn the_health_port_runs_the_apps_original_probes() {
    let bins = bins();
    let app = EchoApp::start_with(&bins.echo, "web-1", "web").await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("sidecar.yaml");
    write_bootstrap(
        &config,
        &Bootstrap {
            node: Node {
                id: "from-the-file".into(),
                ..Default::default()
            },
            admin: AdminConfig {
                address: "127.0.0.1:0".into(),
            },
            health: Some(HealthConfig {
                address: "127.0.0.1:0".into(),
                ..Default::default()
            }),
            ..Default::default()
        },
    );
    // What the injector writes: ports resolved to numbers, loopback target.
    let probes = serde_json::json!({
        "/app-health/web/readiness": {
            "httpGet": {"path": "/ready", "port": app.addrs.http.port(), "scheme": "HTTP",
                        "httpHeaders": [{"name": "x-probe", "value": "kubelet"}]},
            "timeoutSeconds": 2
        },
        "/app-health/web/liveness": {"tcpSocket": {"port": app.addrs.tcp.port()}},
        "/app-health/web/startup": {"grpc": {"port": app.addrs.grpc.port()}}
    })
    .to_string();
    let proxy = Proc::spawn(
        "sane-proxy[web-1]",
        &bins.proxy,
        [std::ffi::OsStr::new("--config"), config.as_os_str()],
        &[
            ("SANE_APP_PROBES", probes.as_str()),
            ("SANE_POD_NAME", "web-7c9f-x2x4q"),
        ],
    );
    let bound = proxy
        .wait_listening(&["admin", "health"], START_DEADLINE)
        .await;
    let (admin, health) = (bound["admin"], bound["health"]);

    within(TEST_DEADLINE, async {
        // The proxy's own readiness, as the sidecar's startup probe sees it.
        eventually(START_DEADLINE, || async {
            let r = probe(health, "/healthz/ready").await;
            (r.status == StatusCode::OK).then_some(()).ok_or(format!(
                "/healthz/ready: {} {}",
                r.status,
                r.text()
            ))
        })
        .await;
        // The node id comes from the pod, not the file.
        let dump = send(&http1_client(), get(&format!("http://{admin}/config_dump")))
            .await
            .unwrap()
            .json()
            .unwrap();
        assert_eq!(dump["bootstrap"]["node"]["id"], "web-7c9f-x2x4q");

        // Every kind of original probe passes while the app is up.
        let before = app.requests().await;
        for path in [
            "/app-health/web/readiness",
            "/app-health/web/liveness",
            "/app-health/web/startup",
        ] {
            let r = probe(health, path).await;
            assert_eq!(r.status, StatusCode::OK, "{path}: {}", r.text());
        }
        // The httpGet probe really reached the app.
        assert_eq!(app.requests().await - before, 1);

        // The health port serves nothing else.
        let r = probe(health, "/app-health/web/unknown").await;
        assert_eq!(r.status, StatusCode::NOT_FOUND);
        let r = probe(health, "/config_dump").await;
        assert_eq!(r.status, StatusCode::NOT_FOUND);

        // The app goes away: every probe fails with a reason, the proxy
        // itself stays ready.
        app.proc.stop(Duration::from_secs(5)).await;
        for (path, reason) in [
            ("/app-health/web/readiness", "connecting to 127.0.0.1:"),
            ("/app-health/web/liveness", "connecting to 127.0.0.1:"),
            ("/app-health/web/startup", "grpc health check of 127.0.0.1:"),
        ] {
            let r = probe(health, path).await;
            assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{path}");
            assert!(r.text().contains(reason), "{path}: {}", r.text());
        }
        assert_eq!(probe(health, "/healthz/ready").await.status, StatusCode::OK);
    })
    .await;
    drop(proxy);
}

#[tokio::test]
async fn invalid_app_probes_stop_the_proxy_naming_the_probe() {
    let bins = bins();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("sidecar.yaml");
    write_bootstrap(
        &config,
        &Bootstrap {
            admin: AdminConfig {
                address: "127.0.0.1:0".into(),
            },
            health: Some(HealthConfig {
                address: "127.0.0.1:0".into(),
                ..Default::default()
            }),
            ..Default::default()
        },
    );
    let proxy = Proc::spawn(
        "sane-proxy[bad-probes]",
        &bins.proxy,
        [std::ffi::OsStr::new("--config"), config.as_os_str()],
        &[(
            "SANE_APP_PROBES",
            r#"{"/app-health/web/readiness": {"tcpSocket": {"port": 99999}}}"#,
        )],
    );
    let status = proxy
        .wait_exit(START_DEADLINE)
        .await
        .expect("the proxy exits");
    assert!(!status.success());
    let err = proxy.stderr();
    assert!(
        err.contains(
            "health.app_probes.\"/app-health/web/readiness\".tcpSocket.port: 99999 is not a port"
        ),
        "{err}"
    );
}
