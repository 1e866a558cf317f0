//! What the proxy does with input it must reject: config files that do not
//! load, a bad file on reload (the old config keeps serving), malformed
//! requests (400), and destinations it cannot reach or does not know (503
//! `UF`, 404 `NR`).

use http::StatusCode;
use sane_e2e::harness::http::{get, send};
use sane_e2e::harness::{
    bins, echo_service, eventually, metric_value, within, EchoApp, Proc, TwoHop,
};
use sane_xds_proto::{
    AdminConfig, Bootstrap, Direction, Endpoint, Listener, MeshResources, Node, Protocol, Route,
    RouteRule, WeightedDestination,
};
use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitStatus;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Bound of each test, once its mesh is up.
const TEST_DEADLINE: Duration = Duration::from_secs(60);
/// How long a change (reload, log line, metric) may take to show.
const CHANGE_DEADLINE: Duration = Duration::from_secs(10);
/// How long `sane-proxy` may take to reject a config and exit.
const EXIT_DEADLINE: Duration = Duration::from_secs(15);
/// The header carrying the flag of a response the proxy made itself.
const FLAGS: &str = "x-sane-response-flags";
/// The flag of a malformed request: Envoy's `DPE`, downstream protocol error
/// (`DI` means a fault-injected delay).
const BAD_REQUEST_FLAG: &str = "DPE";

/// A valid standalone config: one outbound listener and service `echo`,
/// split evenly over two (equal) destinations by route `echo-split`.
fn valid_config() -> Bootstrap {
    let destination = WeightedDestination {
        service: "echo".to_string(),
        weight: 1,
        ..Default::default()
    };
    Bootstrap {
        node: Node {
            id: "bad-input".to_string(),
            namespace: String::new(),
            workload: "bad-input".to_string(),
            ..Default::default()
        },
        admin: AdminConfig {
            address: "127.0.0.1:0".to_string(),
        },
        resources: MeshResources {
            listeners: vec![Listener {
                name: "outbound".to_string(),
                direction: Direction::Outbound.into(),
                protocol: Protocol::Http.into(),
                address: "127.0.0.1:0".to_string(),
                ..Default::default()
            }],
            services: vec![echo_service("echo")],
            endpoints: vec![Endpoint {
                service: "echo".to_string(),
                address: "127.0.0.1".to_string(),
                port: 8080,
                ..Default::default()
            }],
            routes: vec![Route {
                name: "echo-split".to_string(),
                service: "echo".to_string(),
                rules: vec![RouteRule {
                    destinations: vec![destination.clone(), destination],
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        },
        ..Default::default()
    }
}

/// `config` as YAML with `extra` appended (e.g. an unknown top-level field).
fn yaml_with(config: &Bootstrap, extra: &str) -> String {
    serde_yaml::to_string(config).expect("a Bootstrap serializes") + extra
}

/// The result of one `sane-proxy` run that is expected to end by itself.
#[derive(Debug)]
struct Run {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

/// Writes `yaml` to a file and runs `sane-proxy --config FILE [extra args]`
/// until it exits.
async fn run_proxy(dir: &Path, name: &str, yaml: &str, extra: &[&str]) -> Run {
    let bins = tokio::task::spawn_blocking(bins)
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
    let path = dir.join(format!("{name}.yaml"));
    std::fs::write(&path, yaml).unwrap();
    let mut args = vec!["--config".to_string(), path.display().to_string()];
    args.extend(extra.iter().map(|a| a.to_string()));
    let proc = Proc::spawn(&format!("sane-proxy[{name}]"), &bins.proxy, &args, &[]);
    let status = proc
        .wait_exit(EXIT_DEADLINE)
        .await
        .unwrap_or_else(|| panic!("sane-proxy did not exit on {name}:\n{yaml}"));
    // The output readers may still be draining the pipes.
    eventually(CHANGE_DEADLINE, || async {
        let (out, err) = (proc.stdout(), proc.stderr());
        (!out.is_empty() || !err.is_empty())
            .then_some(())
            .ok_or("no output yet".to_string())
    })
    .await;
    Run {
        status,
        stdout: proc.stdout(),
        stderr: proc.stderr(),
    }
}

/// Asserts that `run` failed with `needle` in its stderr.
fn assert_rejected(run: &Run, needle: &str) {
    assert!(
        !run.status.success(),
        "the proxy accepted the config: {run:?}"
    );
    assert!(
        run.stderr.contains(needle),
        "stderr does not mention {needle:?}:\n{}",
        run.stderr
    );
}

/// A raw HTTP/1 exchange: `bytes` are written as they are, and everything
/// is read until the server closes. Returns the status code and the head
/// (status line and headers) as text.
async fn raw_exchange(addr: SocketAddr, bytes: &[u8]) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(bytes).await.unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.unwrap();
    let text = String::from_utf8_lossy(&response).into_owned();
    let head = text
        .split("\r\n\r\n")
        .next()
        .unwrap_or_default()
        .to_string();
    let status = head
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP/1.1 response: {text:?}"));
    (status, head)
}

/// The value of header `name` in a raw response head.
fn raw_header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().skip(1).find_map(|line| {
        let (n, v) = line.split_once(':')?;
        n.trim().eq_ignore_ascii_case(name).then_some(v.trim())
    })
}

/// A port on 127.0.0.1 that nothing listens on (it was free a moment ago).
fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// Requests the app has counted (read straight from the app).
async fn app_requests(app: &EchoApp) -> u64 {
    let reply = send(
        &sane_e2e::harness::http::http1_client(),
        get(&app.http_url("/stats")),
    )
    .await
    .unwrap();
    reply.json().unwrap()["requests"].as_u64().unwrap()
}

#[tokio::test]
async fn config_with_an_unknown_field_fails_to_load() {
    let dir = tempfile::tempdir().unwrap();
    let good = valid_config();

    let run = run_proxy(dir.path(), "top", &yaml_with(&good, "frobnicate: 1\n"), &[]).await;
    assert_rejected(&run, "unknown field `frobnicate`");

    // Deeper down, the error also says where the field is.
    let nested = serde_yaml::to_string(&good).unwrap().replacen(
        "  - name: echo\n",
        "  - name: echo\n    frobnicate: 1\n",
        1,
    );
    assert!(nested.contains("frobnicate"), "{nested}");
    let run = run_proxy(dir.path(), "nested", &nested, &[]).await;
    assert_rejected(&run, "unknown field `frobnicate`");
    assert_rejected(&run, "resources.services[0]");
}

#[tokio::test]
async fn config_with_invalid_values_names_each_field_path() {
    let dir = tempfile::tempdir().unwrap();

    let mut bad_port = valid_config();
    bad_port.resources.services[0].ports[0].port = 70000;
    let run = run_proxy(dir.path(), "port", &yaml_with(&bad_port, ""), &[]).await;
    assert_rejected(&run, "resources.services[0].ports[0].port");
    assert_rejected(&run, "70000");

    let mut zero_weight = valid_config();
    zero_weight.resources.routes[0].rules[0].destinations[1].weight = 0;
    let run = run_proxy(dir.path(), "weight", &yaml_with(&zero_weight, ""), &[]).await;
    assert_rejected(&run, "resources.routes[0].rules[0].destinations[1].weight");

    // `--check` rejects the same way, without starting.
    let run = run_proxy(
        dir.path(),
        "check-port",
        &yaml_with(&bad_port, ""),
        &["--check"],
    )
    .await;
    assert_rejected(&run, "resources.services[0].ports[0].port");
}

#[tokio::test]
async fn check_accepts_a_valid_config() {
    let dir = tempfile::tempdir().unwrap();
    let run = run_proxy(
        dir.path(),
        "good",
        &yaml_with(&valid_config(), ""),
        &["--check"],
    )
    .await;
    assert!(run.status.success(), "{run:?}");
    assert!(run.stdout.contains("config ok"), "{run:?}");
    assert!(
        !run.stdout.contains("listening"),
        "--check must not bind: {run:?}"
    );
}

#[tokio::test]
async fn reload_of_a_bad_file_keeps_the_old_config_serving() {
    let mut mesh = TwoHop::start().await;
    within(TEST_DEADLINE, async {
        let client = mesh.http1();
        let good = mesh.client().bootstrap.clone();
        let serves_echo_1 = || async {
            for _ in 0..5 {
                let reply = send(&client, get(&TwoHop::url("/"))).await.unwrap();
                assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
                assert_eq!(reply.header("x-echo-name"), Some(TwoHop::APP));
            }
        };
        serves_echo_1().await;

        // An invalid value.
        let field = "resources.services[0].ports[0].port";
        let mut bad = good.clone();
        bad.resources.services[0].ports[0].port = 70000;
        mesh.mesh.client_mut().reload(bad);
        let sidecar = mesh.client();
        eventually(CHANGE_DEADLINE, || async {
            let dump = sidecar.config_dump().await?;
            let error = dump["last_reload_error"].as_str().unwrap_or_default();
            error
                .contains(field)
                .then_some(())
                .ok_or(format!("last_reload_error: {}", dump["last_reload_error"]))
        })
        .await;
        serves_echo_1().await;
        let dump = sidecar.config_dump().await.unwrap();
        assert_eq!(dump["version"], 1, "the bad config was applied: {dump}");
        eventually(CHANGE_DEADLINE, || async {
            let log = sidecar.proc.stderr();
            log.lines()
                .any(|l| l.contains("config reload rejected") && l.contains(field))
                .then_some(())
                .ok_or(format!("no rejection naming {field} logged:\n{log}"))
        })
        .await;
        let metrics = sidecar.metrics().await.unwrap();
        let errors = metric_value(
            &metrics,
            "sane_config_reloads_total",
            &[("result", "error")],
        );
        assert!(errors >= Some(1.0), "{metrics}");

        // A file that does not parse: an unknown field.
        sidecar.reload_text(&yaml_with(&good, "frobnicate: true\n"));
        eventually(CHANGE_DEADLINE, || async {
            let dump = sidecar.config_dump().await?;
            let error = dump["last_reload_error"].as_str().unwrap_or_default();
            error
                .contains("unknown field `frobnicate`")
                .then_some(())
                .ok_or(format!("last_reload_error: {}", dump["last_reload_error"]))
        })
        .await;
        serves_echo_1().await;
        let metrics = sidecar.metrics().await.unwrap();
        let more_errors = metric_value(
            &metrics,
            "sane_config_reloads_total",
            &[("result", "error")],
        );
        assert!(more_errors > errors, "{metrics}");

        // A good file again clears the error.
        mesh.mesh.client_mut().reload(good);
        let sidecar = mesh.client();
        eventually(CHANGE_DEADLINE, || async {
            let dump = sidecar.config_dump().await?;
            (dump["last_reload_error"].is_null() && dump["version"].as_u64() >= Some(2))
                .then_some(())
                .ok_or(format!(
                    "version {}, last_reload_error {}",
                    dump["version"], dump["last_reload_error"]
                ))
        })
        .await;
        serves_echo_1().await;
    })
    .await
}

#[tokio::test]
async fn malformed_requests_get_400_and_unknown_hosts_404() {
    let mesh = TwoHop::start().await;
    within(TEST_DEADLINE, async {
        let outbound = mesh.outbound_http;

        let (status, head) = raw_exchange(
            outbound,
            b"GET / HTTP/1.1\r\nHost: echo\r\nBad Header Line\r\n\r\n",
        )
        .await;
        assert_eq!(status, 400, "{head}");

        let (status, head) = raw_exchange(
            outbound,
            b"GET / HTTP/1.1\r\nHost: ex ample\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert_eq!(status, 400, "{head}");
        assert_eq!(raw_header(&head, FLAGS), Some(BAD_REQUEST_FLAG), "{head}");

        let reply = send(&mesh.http1(), get("http://nope/")).await.unwrap();
        assert_eq!(reply.status, StatusCode::NOT_FOUND, "{}", reply.text());
        assert_eq!(reply.header(FLAGS), Some("NR"));
        assert!(reply.text().contains("nope"), "{}", reply.text());

        // The proxy answered all of these itself, and still serves.
        assert_eq!(app_requests(mesh.app()).await, 0);
        let reply = send(&mesh.http1(), get(&TwoHop::url("/"))).await.unwrap();
        assert_eq!(reply.status, StatusCode::OK);
    })
    .await
}

#[tokio::test]
async fn unreachable_endpoints_get_503_uf() {
    let dead_port = closed_port();
    let builder = TwoHop::builder().client_config(move |b| {
        b.resources.services.push(echo_service("dead"));
        b.resources.endpoints.push(Endpoint {
            service: "dead".to_string(),
            address: "127.0.0.1".to_string(),
            port: dead_port.into(),
            ..Default::default()
        });
    });
    let mesh = TwoHop::start_from(builder).await;
    within(TEST_DEADLINE, async {
        let client = mesh.http1();

        // An endpoint without a sidecar: the client sidecar cannot connect.
        let reply = send(&client, get("http://dead/")).await.unwrap();
        assert_eq!(
            reply.status,
            StatusCode::SERVICE_UNAVAILABLE,
            "{}",
            reply.text()
        );
        assert_eq!(reply.header(FLAGS), Some("UF"));
        assert!(
            reply.text().contains(&format!("127.0.0.1:{dead_port}")),
            "{}",
            reply.text()
        );

        // The app behind the server sidecar is down: the server sidecar
        // cannot connect, and says so.
        let status = mesh.app().proc.stop(CHANGE_DEADLINE).await;
        assert!(status.is_some(), "echo-1 did not stop");
        let reply = send(&client, get(&TwoHop::url("/"))).await.unwrap();
        assert_eq!(
            reply.status,
            StatusCode::SERVICE_UNAVAILABLE,
            "{}",
            reply.text()
        );
        assert_eq!(reply.header(FLAGS), Some("UF"));
        assert_eq!(reply.header("x-echo-name"), None);
        let server = mesh.server();
        eventually(CHANGE_DEADLINE, || async {
            let m = server.metrics().await?;
            let labels = [
                ("reporter", "destination"),
                ("response_code", "503"),
                ("response_flags", "UF"),
            ];
            let n = metric_value(&m, "istio_requests_total", &labels);
            (n == Some(1.0))
                .then_some(())
                .ok_or(format!("destination 503 UF: {n:?}\n{m}"))
        })
        .await;
    })
    .await
}
