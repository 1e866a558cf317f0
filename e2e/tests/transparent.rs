//! Transparent interception end to end, in two network namespaces ("pods")
//! joined by a veth pair, with real iptables rules from
//! `sane-proxy iptables install`:
//!
//! ```text
//! pod A 10.203.n.1                         pod B 10.203.n.2
//! curl ─(OUTPUT nat)─▶ sidecar A :15001 ══mTLS══▶ sidecar B :15006 ─▶ echo :8080
//!                      (uid 1337, exempt)          ▲ (PREROUTING nat)
//! curl as uid 1337 (no sidecar in the way) ────────┘ :8080 strict, :8081 permissive
//!                                                    control plane + CA (excluded)
//! ```
//!
//! The client is plain `curl http://<pod B>:8080/`: no proxy settings, no
//! service names. Runs as root with `ip`, `iptables`, `curl` and `setpriv`
//! (see `scripts/netns-test-deps.sh`); elsewhere it prints `SKIPPED`, and
//! under `CI=true` it fails instead.

use sane_e2e::harness::{
    bins, bins_for, eventually, metric_value, write_bootstrap, Pod, PodPair, Proc, READY_DEADLINE,
    TEST_API_TOKEN,
};
use sane_xds_proto::{
    AdminConfig, Bootstrap, Direction, Endpoint, IdentityConfig, Listener, MeshResources, Node,
    Protocol, Service, ServicePort, TlsMode, WorkloadPort,
};
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

const DEADLINE: Duration = Duration::from_secs(30);
/// The uid both sidecars run as, and the one the rules exempt.
const PROXY_UID: u32 = 1337;
const CLIENT_ID: &str = "spiffe://cluster.local/ns/default/sa/client";
const SERVER_ID: &str = "spiffe://cluster.local/ns/default/sa/echo";
/// The echo service's virtual IP (like a ClusterIP); only sidecar A knows it.
const VIP: &str = "10.96.0.10";
/// Workload ports in pod B: the mesh service (STRICT mutual TLS) and a
/// second app whose port is PERMISSIVE.
const ECHO_PORT: u16 = 8080;
const PLAIN_PORT: u16 = 8081;
/// The default ports of `sane-proxy iptables install`. Fixed ports are safe
/// here: each pod is a namespace of its own.
const OUTBOUND_PORT: u16 = 15001;
const INBOUND_PORT: u16 = 15006;

/// A `sane-proxy` running in a pod as [`PROXY_UID`].
struct PodSidecar {
    proc: Proc,
    admin: SocketAddr,
}

impl PodSidecar {
    async fn start(pod: &Pod, dir: &Path, name: &str, bootstrap: Bootstrap) -> PodSidecar {
        if let Err(e) = bootstrap.validate() {
            panic!("the test built an invalid config for {name}: {e}");
        }
        let config = dir.join(format!("{name}.yaml"));
        write_bootstrap(&config, &bootstrap);
        let proc = pod.spawn(
            &format!("sane-proxy[{name}]"),
            Some(PROXY_UID),
            &bins().proxy,
            &["--config", &config.display().to_string()],
        );
        let mut names = vec!["admin"];
        names.extend(
            bootstrap
                .resources
                .listeners
                .iter()
                .map(|l| l.name.as_str()),
        );
        let addrs = proc.wait_listening(&names, READY_DEADLINE).await;
        let sidecar = PodSidecar {
            admin: addrs["admin"],
            proc,
        };
        eventually(DEADLINE, || async {
            if let Some(status) = sidecar.proc.try_exit_status() {
                panic!("{name} exited ({status}) before getting ready");
            }
            match pod.curl(None, &[&sidecar.url("/ready")]).await? {
                (200, _) => Ok(()),
                (code, body) => Err(format!("{name} /ready: {code} {body}")),
            }
        })
        .await;
        sidecar
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin)
    }

    /// `/metrics`, read inside the pod (the admin port is its loopback).
    async fn metrics(&self, pod: &Pod) -> String {
        let (code, body) = pod.curl(None, &[&self.url("/metrics")]).await.unwrap();
        assert_eq!(code, 200, "{body}");
        body
    }
}

fn admin() -> AdminConfig {
    AdminConfig {
        address: "127.0.0.1:0".into(),
    }
}

fn identity(ca: String, token: &Path, service_account: &str) -> Option<IdentityConfig> {
    Some(IdentityConfig {
        service_account: service_account.into(),
        ca_address: ca,
        token_file: token.display().to_string(),
        // The control plane's root, copied beside the tokens (see ROOT_CERT).
        root_cert_file: token.with_file_name(ROOT_CERT).display().to_string(),
        ..Default::default()
    })
}

/// The control plane's root, copied into the sidecars' directory: the CA
/// and xDS are TLS, and the sidecars (another uid) verify them with it.
const ROOT_CERT: &str = "root-cert.pem";

/// Sidecar B: one transparent inbound listener for the pod's two ports.
fn server_bootstrap(ca: String, token: &Path) -> Bootstrap {
    let port = |port: u16, tls_mode: TlsMode| WorkloadPort {
        port: port.into(),
        protocol: Protocol::Http.into(),
        tls_mode: tls_mode.into(),
    };
    Bootstrap {
        node: Node {
            id: "echo-b".into(),
            workload: "echo".into(),
            ..Default::default()
        },
        admin: admin(),
        drain_timeout: 2_000,
        identity: identity(ca, token, "echo"),
        resources: MeshResources {
            listeners: vec![Listener {
                name: "inbound".into(),
                direction: Direction::Inbound.into(),
                address: format!("0.0.0.0:{INBOUND_PORT}"),
                transparent: true,
                workload_ports: vec![
                    port(ECHO_PORT, TlsMode::Default),
                    port(PLAIN_PORT, TlsMode::Permissive),
                ],
                ..Default::default()
            }],
            ..Default::default()
        },
        ..Default::default()
    }
}

/// Sidecar A: one transparent outbound listener; the mesh it knows is the
/// echo service (port 80 → 8080, VIP [`VIP`]) with one endpoint, pod B.
fn client_bootstrap(ca: String, token: &Path, server: &Pod) -> Bootstrap {
    Bootstrap {
        node: Node {
            id: "client-a".into(),
            workload: "client".into(),
            ..Default::default()
        },
        admin: admin(),
        drain_timeout: 2_000,
        identity: identity(ca, token, "client"),
        resources: MeshResources {
            listeners: vec![Listener {
                name: "outbound".into(),
                address: format!("127.0.0.1:{OUTBOUND_PORT}"),
                transparent: true,
                ..Default::default()
            }],
            services: vec![Service {
                name: "echo".into(),
                ports: vec![ServicePort {
                    name: "http".into(),
                    port: 80,
                    target_port: ECHO_PORT.into(),
                    ..Default::default()
                }],
                addresses: vec![VIP.into()],
                ..Default::default()
            }],
            endpoints: vec![Endpoint {
                service: "echo".into(),
                address: server.ip.to_string(),
                port: ECHO_PORT.into(),
                proxy_port: INBOUND_PORT.into(),
                identity: SERVER_ID.into(),
                ..Default::default()
            }],
            ..Default::default()
        },
        ..Default::default()
    }
}

/// `sane-proxy iptables <args>` in `pod`, as root (the "init container").
async fn iptables(pod: &Pod, args: &[&str]) -> String {
    let proxy = bins().proxy.display().to_string();
    let mut argv = vec![proxy.as_str(), "iptables"];
    argv.extend_from_slice(args);
    let ran = pod.run(None, &argv).await.unwrap();
    assert!(
        ran.status.success(),
        "sane-proxy iptables {args:?} in {}: {}\n{}",
        pod.name,
        ran.status,
        ran.stderr
    );
    ran.stdout
}

async fn nat_rules(pod: &Pod) -> String {
    pod.run(None, &["iptables-save", "-t", "nat"])
        .await
        .unwrap()
        .stdout
}

/// Issues a workload token through the control plane's API (inside pod B)
/// and writes it where only the proxy's uid can read it.
async fn issue_token(pod: &Pod, api: SocketAddr, dir: &Path, service_account: &str) -> PathBuf {
    let body = serde_json::json!({ "namespace": "default", "service_account": service_account });
    let (code, reply) = pod
        .curl(
            None,
            &[
                "-X",
                "POST",
                "-H",
                &format!("authorization: Bearer {TEST_API_TOKEN}"),
                "-H",
                "content-type: application/json",
                "--data",
                &body.to_string(),
                "--cacert",
                &dir.join(ROOT_CERT).display().to_string(),
                &format!("https://127.0.0.1:{}/api/v1/tokens", api.port()),
            ],
        )
        .await
        .unwrap();
    assert!(
        (200..300).contains(&code),
        "issuing a token: {code} {reply}"
    );
    let reply: serde_json::Value = serde_json::from_str(&reply).unwrap();
    let path = dir.join(format!("{service_account}.token"));
    std::fs::write(&path, reply["token"].as_str().expect("a token")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::os::unix::fs::chown(&path, Some(PROXY_UID), Some(PROXY_UID)).unwrap();
    path
}

fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

fn count(metrics: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    metric_value(metrics, name, labels).unwrap_or(0.0)
}

#[tokio::test]
async fn an_unmodified_client_is_intercepted_on_both_sides_and_carried_over_mtls() {
    // Declared first, dropped last: every process below is gone before the
    // namespaces are deleted.
    let Some(pods) = PodPair::create_or_skip("transparent interception e2e") else {
        return;
    };
    let (a, b) = (&pods.a, &pods.b);
    let dir = tempfile::tempdir().unwrap();
    // The sidecars run as PROXY_UID and read their configs from here.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let bins = bins();
    let cp_bin = bins_for(&["sane-control-plane"]).join("sane-control-plane");

    // Pod B runs the control plane (the mesh CA) beside its app.
    let data_dir = dir.path().join("cp").display().to_string();
    let cp = b.spawn(
        "control-plane",
        None,
        &cp_bin,
        &[
            "--xds-addr",
            "0.0.0.0:0",
            "--api-addr",
            "0.0.0.0:0",
            "--data-dir",
            &data_dir,
            "--api-token",
            TEST_API_TOKEN,
            // Pod A dials it by pod B's address; B's sidecar by loopback.
            "--tls-san",
            &b.ip.to_string(),
        ],
    );
    let cp_addrs = cp.wait_listening(&["xds", "api"], DEADLINE).await;
    let (xds, api) = (cp_addrs["xds"], cp_addrs["api"]);
    let root = dir.path().join(ROOT_CERT);
    std::fs::copy(Path::new(&data_dir).join(ROOT_CERT), &root).unwrap();
    let cacert = root.display().to_string();

    // The "init containers": capture everything in both pods, except that
    // the control plane's ports in B are not behind B's sidecar.
    let b_excluded = format!("{},{}", xds.port(), api.port());
    let uid = PROXY_UID.to_string();
    iptables(
        b,
        &[
            "install",
            "--proxy-uid",
            &uid,
            "--exclude-inbound-ports",
            &b_excluded,
        ],
    )
    .await;
    iptables(a, &["install", "--proxy-uid", &uid]).await;
    for pod in [a, b] {
        let rules = nat_rules(pod).await;
        assert!(rules.contains("-A OUTPUT -p tcp -j SANE_OUTPUT"), "{rules}");
        assert!(
            rules.contains("-A PREROUTING -p tcp -j SANE_INBOUND"),
            "{rules}"
        );
    }

    // The apps in B: unmodified, listening on every address.
    let echo = b.spawn(
        "sane-echo[echo-b]",
        None,
        &bins.echo,
        &[
            "--name",
            "echo-b",
            "--http",
            &format!("0.0.0.0:{ECHO_PORT}"),
        ],
    );
    let plain = b.spawn(
        "sane-echo[plain-b]",
        None,
        &bins.echo,
        &[
            "--name",
            "plain-b",
            "--http",
            &format!("0.0.0.0:{PLAIN_PORT}"),
        ],
    );
    echo.wait_listening(&["http"], DEADLINE).await;
    plain.wait_listening(&["http"], DEADLINE).await;

    let server_token = issue_token(b, api, dir.path(), "echo").await;
    let client_token = issue_token(b, api, dir.path(), "client").await;
    let sidecar_b = PodSidecar::start(
        b,
        dir.path(),
        "echo-b",
        server_bootstrap(format!("https://127.0.0.1:{}", xds.port()), &server_token),
    )
    .await;
    let sidecar_a = PodSidecar::start(
        a,
        dir.path(),
        "client-a",
        client_bootstrap(format!("https://{}:{}", b.ip, xds.port()), &client_token, b),
    )
    .await;

    // 1. Pod B's address, by IP: intercepted in A, carried over mutual TLS
    //    (sidecar B verified A's certificate and told the app who called).
    let echo_url = format!("http://{}:{ECHO_PORT}/", b.ip);
    let (code, body) = a.curl(None, &[&echo_url]).await.unwrap();
    assert_eq!(code, 200, "{body}");
    let seen = json(&body);
    assert_eq!(seen["name"], "echo-b", "{seen}");
    assert_eq!(seen["headers"]["x-sane-peer-identity"], CLIENT_ID, "{seen}");

    // Sidecar B counted it as an inbound request; sidecar A as an
    // intercepted HTTP connection.
    let b_metrics = sidecar_b.metrics(b).await;
    let inbound = count(
        &b_metrics,
        "istio_requests_total",
        &[("reporter", "destination"), ("response_code", "200")],
    );
    assert_eq!(inbound, 1.0, "{b_metrics}");
    let a_metrics = sidecar_a.metrics(a).await;
    let intercepted = |m: &str, target: &str| {
        count(
            m,
            "sane_intercepted_connections_total",
            &[("target", target)],
        )
    };
    assert_eq!(intercepted(&a_metrics, "http"), 1.0, "{a_metrics}");
    assert_eq!(
        count(
            &a_metrics,
            "istio_requests_total",
            &[("reporter", "source")]
        ),
        1.0,
        "{a_metrics}"
    );

    // 2. The proxy's own upstream connection (A → B:15006) was not
    //    captured: a loop would have come back to A's outbound listener as
    //    an unknown destination (passthrough) over and over.
    assert_eq!(intercepted(&a_metrics, "passthrough"), 0.0, "{a_metrics}");
    let active = count(
        &a_metrics,
        "sane_connections_active",
        &[("listener", "outbound")],
    );
    assert!(active <= 1.0, "{active} open connections: {a_metrics}");

    // 3. The service's VIP (a ClusterIP only sidecar A knows) works the same.
    let (code, body) = a.curl(None, &[&format!("http://{VIP}/")]).await.unwrap();
    assert_eq!(code, 200, "{body}");
    assert_eq!(json(&body)["headers"]["x-sane-peer-identity"], CLIENT_ID);

    // 4. A destination outside the mesh (the control plane's API) is passed
    //    through unchanged, and counted.
    //    (HTTPS, verified end to end: the sidecar only splices it.)
    let outside = format!("https://{}:{}/api/v1/openapi.json", b.ip, api.port());
    let (code, body) = a
        .curl(None, &["--cacert", &cacert, &outside])
        .await
        .unwrap();
    assert_eq!(code, 200, "{body}");
    let a_metrics = sidecar_a.metrics(a).await;
    assert_eq!(intercepted(&a_metrics, "passthrough"), 1.0, "{a_metrics}");
    assert_eq!(intercepted(&a_metrics, "http"), 2.0, "{a_metrics}");

    // 5. B's inbound capture: a client that bypasses A's sidecar (it runs
    //    as the exempt uid, like a pod without a sidecar) still lands on
    //    sidecar B. The STRICT port refuses its plaintext …
    let refused = a.curl(Some(PROXY_UID), &[&echo_url]).await;
    assert!(
        refused.is_err(),
        "plaintext reached a STRICT port: {refused:?}"
    );
    let b_metrics = sidecar_b.metrics(b).await;
    assert_eq!(
        count(&b_metrics, "sane_tls_plaintext_rejected_total", &[]),
        1.0,
        "{b_metrics}"
    );
    // … and the PERMISSIVE port is reached by the port it addressed (not
    // the first declared one), without a peer identity.
    let plain_url = format!("http://{}:{PLAIN_PORT}/", b.ip);
    let (code, body) = a.curl(Some(PROXY_UID), &[&plain_url]).await.unwrap();
    assert_eq!(code, 200, "{body}");
    let seen = json(&body);
    assert_eq!(seen["name"], "plain-b", "{seen}");
    assert!(
        seen["headers"].get("x-sane-peer-identity").is_none(),
        "{seen}"
    );
    let b_metrics = sidecar_b.metrics(b).await;
    assert_eq!(
        count(
            &b_metrics,
            "istio_requests_total",
            &[("reporter", "destination")]
        ),
        3.0,
        "the VIP request and the permissive one too: {b_metrics}"
    );

    // 6. Uninstall removes exactly what install added, and only that; a
    //    second uninstall has nothing to do. Without the rules the same
    //    curl goes straight to the app: no sidecar, no identity.
    for pod in [a, b] {
        let out = iptables(pod, &["uninstall"]).await;
        assert!(out.contains("removed"), "{out}");
        let rules = nat_rules(pod).await;
        assert!(!rules.contains("SANE_"), "{rules}");
        let again = iptables(pod, &["uninstall"]).await;
        assert!(again.contains("nothing to remove"), "{again}");
    }
    let (code, body) = a.curl(None, &[&echo_url]).await.unwrap();
    assert_eq!(code, 200, "{body}");
    assert!(json(&body)["headers"].get("x-sane-peer-identity").is_none());
    let a_metrics = sidecar_a.metrics(a).await;
    assert_eq!(intercepted(&a_metrics, "http"), 2.0, "{a_metrics}");
}
