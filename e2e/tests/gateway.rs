//! The ingress gateway end to end: `sane-proxy gateway` between outside
//! clients (curl, raw TCP) and mesh services behind their sidecars.
//!
//! ```text
//! curl ─TLS (SNI a.example.test)─▶ gateway :https ══mTLS (sa/gateway)══▶ sidecar A ─▶ echo-a
//!      ─TLS (SNI b.example.test)─▶         │      ══mTLS══════════════▶ sidecar B ─▶ echo-b
//!      ─HTTP─▶ gateway :http ─▶ 308 https  │
//!                                 control plane (CA for the mesh identities)
//! ```
//!
//! Host certificates come from two test CAs written to PEM files, so curl's
//! `--cacert` proves which certificate was served. curl is installed by
//! `scripts/gateway-test-deps.sh` if missing (skips loudly without it; fails
//! under `CI=true`).

use sane_certs::{CaOptions, CertificateAuthority, TrustDomain};
use sane_e2e::harness::http::{get, http1_client, send, Reply};
use sane_e2e::harness::{
    bins, echo_service, eventually, metric_value, write_bootstrap, ControlPlane, Curl, EchoApp,
    Proc, Sidecar, READY_DEADLINE,
};
use sane_xds_proto::{
    AdminConfig, Bootstrap, Direction, EdgeLimits, Gateway, GatewayHost, GatewayListener,
    GatewayRoute, HostTls, IdentityConfig, Listener, MeshResources, Node, PathMatch, Protocol,
    RateLimit, RouteMatch, TlsMode, WorkloadPort,
};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const DEADLINE: Duration = Duration::from_secs(30);
const A_HOST: &str = "a.example.test";
const B_HOST: &str = "b.example.test";
const GATEWAY_ID: &str = "spiffe://cluster.local/ns/default/sa/gateway";

// === host certificates ===

/// A test CA for outside clients, and its certificate file.
struct HostCa {
    ca: CertificateAuthority,
    pem: PathBuf,
}

impl HostCa {
    fn new(dir: &Path, name: &str) -> HostCa {
        let mut options = CaOptions::default();
        options.organization = format!("Gateway test {name}");
        let td = TrustDomain::new("example.test").unwrap();
        let ca = CertificateAuthority::generate(&td, options).unwrap();
        let pem = dir.join(format!("{name}-ca.pem"));
        std::fs::write(&pem, ca.chain_pem()).unwrap();
        HostCa { ca, pem }
    }

    /// Issues a certificate for `host`: (chain PEM, key PEM).
    fn issue(&self, host: &str) -> (String, String) {
        self.ca
            .sign_external_server_cert(&[host.to_string()], Duration::from_secs(3600))
            .unwrap()
    }

    /// Writes a certificate for `host` to `<dir>/<name>.pem` and `.key`.
    fn write(&self, dir: &Path, name: &str, host: &str) -> HostTls {
        let (cert, key) = self.issue(host);
        let tls = HostTls {
            cert_file: dir.join(format!("{name}.pem")).display().to_string(),
            key_file: dir.join(format!("{name}.key")).display().to_string(),
            client_ca_file: String::new(),
        };
        replace_file(Path::new(&tls.key_file), &key);
        replace_file(Path::new(&tls.cert_file), &cert);
        tls
    }
}

/// Replaces `path` atomically (temp file, then rename).
fn replace_file(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

// === the gateway process ===

/// A running `sane-proxy gateway`.
struct GatewayProc {
    proc: Proc,
    config: PathBuf,
    bootstrap: Bootstrap,
    admin: SocketAddr,
    listeners: HashMap<String, SocketAddr>,
}

impl GatewayProc {
    async fn start(dir: &Path, bootstrap: Bootstrap) -> GatewayProc {
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
        let gw = bootstrap.gateway.as_ref().expect("a gateway section");
        let mut names = vec!["admin"];
        names.extend(gw.listeners.iter().map(|l| l.name.as_str()));
        let mut listeners = proc.wait_listening(&names, READY_DEADLINE).await;
        let admin = listeners.remove("admin").unwrap();
        let g = GatewayProc {
            proc,
            config,
            bootstrap,
            admin,
            listeners,
        };
        eventually(READY_DEADLINE, || async {
            if let Some(status) = g.proc.try_exit_status() {
                panic!("the gateway exited ({status}) before getting ready");
            }
            let r = g.admin_get("/ready").await?;
            r.status
                .is_success()
                .then_some(())
                .ok_or_else(|| format!("/ready: {} {}", r.status, r.text()))
        })
        .await;
        g
    }

    fn addr(&self, listener: &str) -> SocketAddr {
        self.listeners[listener]
    }

    async fn admin_get(&self, path: &str) -> Result<Reply, String> {
        send(
            &http1_client(),
            get(&format!("http://{}{path}", self.admin)),
        )
        .await
    }

    async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let text = self.admin_get("/metrics").await.unwrap().text();
        metric_value(&text, name, labels).unwrap_or(0.0)
    }

    /// Rewrites the config file; the proxy notices the change by itself.
    fn rewrite(&mut self, f: impl FnOnce(&mut Gateway)) {
        f(self.bootstrap.gateway.as_mut().unwrap());
        write_bootstrap(&self.config, &self.bootstrap);
    }
}

fn listener(name: &str, tls: bool) -> GatewayListener {
    GatewayListener {
        name: name.into(),
        address: "127.0.0.1:0".into(),
        tls,
        redirect_port: 0,
    }
}

fn route_to(service: &str) -> GatewayRoute {
    GatewayRoute {
        matches: vec![RouteMatch {
            path: Some(PathMatch {
                kind: sane_xds_proto::MatchKind::Prefix as i32,
                value: "/".into(),
            }),
            ..Default::default()
        }],
        service: service.into(),
        port: 80,
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

// === the mesh behind it ===

fn identity(cp: &ControlPlane, token: &Path, sa: &str) -> IdentityConfig {
    IdentityConfig {
        service_account: sa.into(),
        ca_address: cp.xds_url(),
        root_cert_file: cp.root_cert_file(),
        token_file: token.display().to_string(),
        ..Default::default()
    }
}

/// `echo-<x>` behind its own sidecar, which accepts mutual TLS only.
async fn meshed_echo(dir: &Path, cp: &ControlPlane, service: &str) -> (EchoApp, Sidecar) {
    let app = EchoApp::start_with(&bins().echo, &format!("{service}-1"), service).await;
    let token = cp.issue_token(dir, "default", service).await;
    let port = |p: u16, protocol: Protocol| WorkloadPort {
        port: p.into(),
        protocol: protocol.into(),
        ..Default::default()
    };
    let bootstrap = Bootstrap {
        node: node(&format!("{service}-1")),
        admin: admin(),
        drain_timeout: 2_000,
        resources: MeshResources {
            listeners: vec![Listener {
                name: "inbound".into(),
                direction: Direction::Inbound.into(),
                address: "127.0.0.1:0".into(),
                tls_mode: TlsMode::Strict.into(),
                workload_ports: vec![port(app.addrs.http.port(), Protocol::Http)],
                ..Default::default()
            }],
            ..Default::default()
        },
        identity: Some(identity(cp, &token, service)),
        ..Default::default()
    };
    let sidecar = Sidecar::start(&bins().proxy, dir, &format!("{service}-1"), bootstrap).await;
    (app, sidecar)
}

// === tests ===

#[tokio::test]
async fn gateway_serves_each_host_its_certificate_and_routes_into_the_mesh() {
    let Some(curl) = Curl::find_or_skip("gateway_serves_each_host_its_certificate") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let cp = ControlPlane::start(&d.join("cp"), &[]).await;
    let (app_a, sidecar_a) = meshed_echo(d, &cp, "echo-a").await;
    let (app_b, sidecar_b) = meshed_echo(d, &cp, "echo-b").await;
    let ca_a = HostCa::new(d, "a");
    let ca_b = HostCa::new(d, "b");
    let tls_a = ca_a.write(d, "a", A_HOST);
    let tls_b = ca_b.write(d, "b", B_HOST);

    let mut endpoints = Vec::new();
    for (app, sidecar, sa) in [
        (&app_a, &sidecar_a, "echo-a"),
        (&app_b, &sidecar_b, "echo-b"),
    ] {
        let mut e = app.endpoint(Some(sidecar.listener("inbound").port()));
        e.identity = format!("spiffe://cluster.local/ns/default/sa/{sa}");
        endpoints.push(e);
    }
    let token = cp.issue_token(d, "default", "gateway").await;
    let bootstrap = Bootstrap {
        node: node("gateway"),
        admin: admin(),
        drain_timeout: 2_000,
        resources: MeshResources {
            services: vec![echo_service("echo-a"), echo_service("echo-b")],
            endpoints,
            ..Default::default()
        },
        identity: Some(identity(&cp, &token, "gateway")),
        gateway: Some(Gateway {
            name: "edge".into(),
            listeners: vec![listener("https", true), listener("http", false)],
            hosts: vec![
                GatewayHost {
                    hostname: A_HOST.into(),
                    tls: Some(tls_a.clone()),
                    https_redirect: true,
                    routes: vec![route_to("echo-a")],
                },
                GatewayHost {
                    hostname: B_HOST.into(),
                    tls: Some(tls_b.clone()),
                    https_redirect: false,
                    routes: vec![route_to("echo-b")],
                },
            ],
            limits: None,
            ..Default::default()
        }),
        ..Default::default()
    };
    let mut gw = GatewayProc::start(d, bootstrap).await;
    let https = gw.addr("https");
    let http = gw.addr("http");

    // Each host name gets its own certificate (verified against its own CA
    // only) and reaches its own service, through mutual TLS as the gateway.
    for (host, ca, app) in [(A_HOST, &ca_a, "echo-a-1"), (B_HOST, &ca_b, "echo-b-1")] {
        let r = curl
            .request(host, https)
            .ca(&ca.pem)
            .path("/hello?x=1")
            .send()
            .await;
        assert_eq!(r.status, 200, "{host}: {}", r.summary());
        assert_eq!(
            r.cert_subject(),
            Some(format!("CN={host}").as_str()),
            "{host}: {}",
            r.summary()
        );
        assert_eq!(r.http_version, "2", "ALPN chose HTTP/2: {}", r.summary());
        let seen = r.json().unwrap();
        assert_eq!(seen["name"], app, "{seen}");
        assert_eq!(
            seen["headers"]["x-sane-peer-identity"], GATEWAY_ID,
            "{seen}"
        );
        assert_eq!(seen["headers"]["x-forwarded-proto"], "https", "{seen}");
        assert_eq!(seen["headers"]["x-forwarded-for"], "127.0.0.1", "{seen}");
        assert_eq!(
            seen["headers"]["x-forwarded-host"],
            format!("{host}:{}", https.port()),
            "{seen}"
        );
        // HTTP/1.1 by ALPN works too.
        let r = curl
            .request(host, https)
            .ca(&ca.pem)
            .arg("--http1.1")
            .send()
            .await;
        assert_eq!(
            (r.status, r.http_version.as_str()),
            (200, "1.1"),
            "{}",
            r.summary()
        );
    }
    // B's certificate does not verify against A's CA: the certificates differ.
    let r = curl.request(B_HOST, https).ca(&ca_a.pem).send().await;
    assert_ne!(
        r.exit,
        0,
        "b.example.test verified with A's CA: {}",
        r.summary()
    );

    // An unknown host gets 404 (over the default certificate).
    let r = curl
        .request("nope.example.test", https)
        .arg("-k")
        .send()
        .await;
    assert_eq!(r.status, 404, "{}", r.summary());
    assert_eq!(
        r.header("x-sane-response-flags"),
        Some("NR"),
        "{}",
        r.summary()
    );

    // Plain HTTP for a redirect host: 308 to the HTTPS listener, same path;
    // following it ends at echo-a.
    let r = curl
        .request(A_HOST, http)
        .plain()
        .path("/r?q=1")
        .send()
        .await;
    assert_eq!(r.status, 308, "{}", r.summary());
    let location = format!("https://{A_HOST}:{}/r?q=1", https.port());
    assert_eq!(
        r.header("location"),
        Some(location.as_str()),
        "{}",
        r.summary()
    );
    let r = curl
        .request(A_HOST, http)
        .plain()
        .path("/r?q=1")
        .arg("-L")
        .arg("--resolve")
        .arg(format!("{A_HOST}:{}:127.0.0.1", https.port()))
        .ca(&ca_a.pem)
        .send()
        .await;
    assert_eq!(r.status, 200, "{}", r.summary());
    assert_eq!(r.json().unwrap()["name"], "echo-a-1");

    // A's certificate replaced on disk (new CA): the next connection gets the
    // new one, with no restart.
    let pid = gw.proc.pid();
    let ca_a2 = HostCa::new(d, "a2");
    let (cert, key) = ca_a2.issue(A_HOST);
    replace_file(Path::new(&tls_a.key_file), &key);
    replace_file(Path::new(&tls_a.cert_file), &cert);
    eventually(DEADLINE, || async {
        let r = curl.request(A_HOST, https).ca(&ca_a2.pem).send().await;
        (r.status == 200).then_some(()).ok_or_else(|| r.summary())
    })
    .await;
    let r = curl.request(A_HOST, https).ca(&ca_a.pem).send().await;
    assert_ne!(
        r.exit,
        0,
        "the old certificate is still served: {}",
        r.summary()
    );
    assert!(gw.proc.try_exit_status().is_none());
    assert_eq!(gw.proc.pid(), pid);
    let labels = [("host", A_HOST), ("result", "ok")];
    assert!(gw.metric("sane_gateway_cert_reloads_total", &labels).await >= 1.0);

    // A config whose certificate and key for b.example.test do not match:
    // rejected, naming the host; b keeps its previous certificate.
    gw.rewrite(|g| g.hosts[1].tls.as_mut().unwrap().key_file = tls_a.key_file.clone());
    eventually(DEADLINE, || async {
        let rejected = gw
            .metric("sane_gateway_config_reloads_total", &[("result", "error")])
            .await;
        (rejected >= 1.0)
            .then_some(())
            .ok_or_else(|| "the bad pair is not rejected yet".to_string())
    })
    .await;
    let stderr = gw.proc.stderr();
    assert!(
        stderr.contains("gateway.hosts[1].tls (host \"b.example.test\")")
            && stderr.contains("do not match"),
        "the rejection names the host: {stderr}"
    );
    let r = curl.request(B_HOST, https).ca(&ca_b.pem).send().await;
    assert_eq!(r.status, 200, "{}", r.summary());
    assert_eq!(r.cert_subject(), Some("CN=b.example.test"));
    assert_eq!(r.json().unwrap()["name"], "echo-b-1");
}

#[tokio::test]
async fn gateway_cuts_off_slowloris_and_rate_limits_with_429() {
    let Some(curl) = Curl::find_or_skip("gateway_cuts_off_slowloris_and_rate_limits") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let app = EchoApp::start_with(&bins().echo, "web-1", "web").await;
    let host = "app.example.test";
    let bootstrap = Bootstrap {
        node: node("gateway"),
        admin: admin(),
        drain_timeout: 2_000,
        resources: MeshResources {
            services: vec![echo_service("web")],
            endpoints: vec![app.endpoint(None)],
            ..Default::default()
        },
        gateway: Some(Gateway {
            name: "edge".into(),
            listeners: vec![listener("http", false)],
            hosts: vec![GatewayHost {
                hostname: host.into(),
                tls: None,
                https_redirect: false,
                routes: vec![route_to("web")],
            }],
            limits: Some(EdgeLimits {
                header_read_timeout: 2_000,
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let mut gw = GatewayProc::start(d, bootstrap).await;
    let http = gw.addr("http");
    let normal = || async {
        let r = curl.request(host, http).plain().send().await;
        assert_eq!(r.status, 200, "a normal client: {}", r.summary());
    };

    // Slowloris: a request head trickled a byte at a time is cut off at the
    // header read timeout; normal clients are served meanwhile.
    let mut slow = tokio::net::TcpStream::connect(http).await.unwrap();
    slow.write_all(format!("GET / HTTP/1.1\r\nHost: {host}\r\n").as_bytes())
        .await
        .unwrap();
    let (mut rd, mut wr) = slow.into_split();
    let mut reader = tokio::spawn(async move {
        let mut got = Vec::new();
        let _ = rd.read_to_end(&mut got).await;
        String::from_utf8_lossy(&got).into_owned()
    });
    let started = tokio::time::Instant::now();
    let mut sent = 0usize;
    let answer = loop {
        assert!(
            started.elapsed() < DEADLINE,
            "the slow client was not cut off within {DEADLINE:?}"
        );
        tokio::select! {
            done = &mut reader => break done.unwrap(),
            _ = tokio::time::sleep(Duration::from_millis(250)) => {} // allow-sleep: trickling the header bytes is what this test does
        }
        if wr.write_all(b"x").await.is_err() {
            break (&mut reader).await.unwrap();
        }
        sent += 1;
        if sent == 2 {
            normal().await;
        }
    };
    assert!(
        !answer.contains(" 200 "),
        "the slow client got an answer: {answer}"
    );
    assert!(sent >= 2, "cut off before the normal client ran");
    normal().await;

    // Rate limit (hot-reloaded): past the burst, 429 with Retry-After; later
    // requests are served again.
    gw.rewrite(|g| {
        g.limits.as_mut().unwrap().rate_limit = Some(RateLimit {
            requests_per_second: 2,
            burst: 4,
        })
    });
    eventually(DEADLINE, || async {
        let ok = gw
            .metric("sane_gateway_config_reloads_total", &[("result", "ok")])
            .await;
        (ok >= 1.0)
            .then_some(())
            .ok_or_else(|| "the rate limit is not applied yet".to_string())
    })
    .await;
    let client = http1_client();
    let call = || {
        let client = client.clone();
        async move {
            let mut req = get(&format!("http://{http}/"));
            req.headers_mut()
                .insert(http::header::HOST, host.parse().unwrap());
            send(&client, req).await.unwrap()
        }
    };
    let mut limited = None;
    for _ in 0..200 {
        let r = call().await;
        if r.status == 429 {
            limited = Some(r);
            break;
        }
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let limited = limited.expect("no 429 after 200 requests at 2 per second");
    let retry_after: u64 = limited.header("retry-after").unwrap().parse().unwrap();
    assert!(retry_after >= 1, "{retry_after}");
    assert_eq!(limited.header("x-sane-response-flags"), Some("RL"));
    eventually(DEADLINE, || async {
        let r = call().await;
        (r.status == 200)
            .then_some(())
            .ok_or_else(|| format!("still {}", r.status))
    })
    .await;
    assert!(
        gw.metric(
            "sane_gateway_rejections_total",
            &[("reason", "rate_limited")]
        )
        .await
            >= 1.0
    );
}
