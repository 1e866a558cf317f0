//! Chaos end to end, in two network namespaces ("pods") joined by a veth
//! pair: faults between and around two sidecars while clients keep sending.
//!
//! ```text
//! pod A 10.203.n.1                           pod B 10.203.n.2
//! test clients ─▶ sidecar A :15001 ══mTLS══▶ sidecar B :15006 ─▶ echo :8080
//!                 (config over xDS) ◀──────── control plane + CA :15010/:15011
//! ```
//!
//! The test code itself runs inside pod A ([`Pod::block_on`]), like an
//! application there. Faults: packet loss and delay on the pods' link
//! (`tc netem`; loss alone also through iptables' `statistic` match, which
//! needs no netem), the echo app killed while streaming, the control plane
//! killed right after a config change and restarted, sidecar B restarted.
//!
//! Every client request has a deadline of its own and counts as hung past
//! it; echoed bodies are compared by sha256 end to end. Each test prints
//! its counts (`-- --nocapture`) and asserts: nothing hung, nothing
//! corrupted, and every failure is one the scenario makes legitimate (a
//! 5xx from sidecar A, or a stream cut short by a killed upstream).
//!
//! Needs root, `ip`, `iptables` and `tc` (see `scripts/netns-test-deps.sh`).
//! Delay comes from `tc netem` where the kernel has it (`sch_netem`); on a
//! kernel without netem (no module can be installed into a running kernel)
//! the delay scenario shapes the link with `tc tbf` instead — a slow link
//! whose queue adds delay under load — plus iptables loss, and says so.
//! Missing tools skip loudly, and under `CI=true` fail.

use http_body_util::BodyExt;
use sane_e2e::harness::http::{get, http1_client_via, send, HttpClient};
use sane_e2e::harness::{
    bins, bins_for, eventually, write_bootstrap, xds_bootstrap, ApiClient, ControlPlane,
    EchoRequests, Load, LoadReport, Outcome, Pod, PodPair, Proc, Sidecar, Signal, BODY_ABORTED,
    NO_RESPONSE, READY_DEADLINE,
};
use sane_xds_proto::{
    AdminConfig, Bootstrap, Direction, IdentityConfig, Listener, MeshResources, Node, Protocol,
    WorkloadPort,
};
use serde_json::json;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Deadline of every wait for a process or a condition.
const DEADLINE: Duration = Duration::from_secs(30);
/// Deadline of each client request. Above the route's 15 s timeout: a
/// request still open past this is one the proxy failed to bound.
const REQUEST_DEADLINE: Duration = Duration::from_secs(25);
/// Fixed ports are safe: each pod is a network of its own.
const ECHO_PORT: u16 = 8080;
const INBOUND_PORT: u16 = 15006;
const OUTBOUND_PORT: u16 = 15001;
const XDS_PORT: u16 = 15010;
const API_PORT: u16 = 15011;
const SERVER_ID: &str = "spiffe://cluster.local/ns/default/sa/echo";
/// Size of each checksummed echo body.
const BODY_LEN: usize = 64 * 1024;
/// Concurrent client loops, and their pause between requests.
const WORKERS: usize = 4;
const PACE: Duration = Duration::from_millis(20);
/// Failures that say clearly what went wrong: sidecar A's answers when
/// the upstream side is broken.
const GATEWAY_STATUSES: [&str; 3] = ["502", "503", "504"];

/// A sidecar started in pod B (reached through `ip netns exec`).
struct PodSidecar {
    proc: Proc,
    admin: SocketAddr,
}

/// The mesh of the diagram above.
struct Chaos {
    dir: tempfile::TempDir,
    cp: ControlPlane,
    api: ApiClient,
    echo: Proc,
    server: PodSidecar,
    client: Sidecar,
}

/// A way to break the link between the pods.
#[derive(Clone, Copy, Debug)]
enum Impairment {
    /// `tc netem` delay with jitter, plus loss.
    Netem,
    /// Random drops by iptables' `statistic` match (no delay).
    IptablesLoss,
    /// For kernels without netem: a 4 Mbit/s token bucket (`tc tbf`), whose
    /// queue delays packets whenever the load exceeds it, plus the same
    /// iptables drops.
    ShapedLoss,
}

// === impl PodSidecar ===

impl PodSidecar {
    async fn start(pod: &Pod, dir: &Path, name: &str, bootstrap: &Bootstrap) -> PodSidecar {
        if let Err(e) = bootstrap.validate() {
            panic!("the test built an invalid config for {name}: {e}");
        }
        let config = dir.join(format!("{name}.yaml"));
        write_bootstrap(&config, bootstrap);
        let proc = pod.spawn(
            &format!("sane-proxy[{name}]"),
            None,
            &bins().proxy,
            &["--config", &config.display().to_string()],
        );
        let addrs = proc
            .wait_listening(&["admin", "inbound"], READY_DEADLINE)
            .await;
        let sidecar = PodSidecar {
            admin: addrs["admin"],
            proc,
        };
        eventually(DEADLINE, || async {
            if let Some(status) = sidecar.proc.try_exit_status() {
                panic!(
                    "{name} exited ({status}) before getting ready: {}",
                    sidecar.proc.stderr()
                );
            }
            let url = format!("http://{}/ready", sidecar.admin);
            match pod.curl(None, &[&url]).await? {
                (200, _) => Ok(()),
                (code, body) => Err(format!("{name} /ready: {code} {body}")),
            }
        })
        .await;
        sidecar
    }
}

// === impl Chaos ===

impl Chaos {
    /// Starts everything; must run inside pod A.
    async fn start(pods: &PodPair) -> Chaos {
        let b = &pods.b;
        let dir = tempfile::tempdir().expect("a temp dir");
        let cp = start_control_plane(b, &dir.path().join("cp")).await;
        let api = ApiClient::new(&cp);
        let echo = start_echo(b).await;
        register_mesh(&api, b.ip).await;
        let server_token = cp.issue_token(dir.path(), "default", "echo").await;
        let client_token = cp.issue_token(dir.path(), "default", "client").await;
        let server = PodSidecar::start(
            b,
            dir.path(),
            "echo-b",
            &server_bootstrap(&cp, &server_token),
        )
        .await;
        let mut bootstrap = xds_bootstrap(
            &cp,
            "client-a",
            vec![Listener {
                name: "outbound".into(),
                address: format!("127.0.0.1:{OUTBOUND_PORT}"),
                ..Default::default()
            }],
        );
        bootstrap.drain_timeout = 2_000;
        bootstrap.identity = Some(identity(&cp, &client_token, "client"));
        // One workload token for the CA and the xDS stream, under a node id
        // of that workload: once the proxy holds its certificate it presents
        // it on the stream, and the control plane refuses a certificate that
        // is not the token's workload.
        bootstrap.control_plane.as_mut().unwrap().token_file = String::new();
        bootstrap.node.id = "client.default~client-a".into();
        let client = Sidecar::start(&bins().proxy, dir.path(), "client-a", bootstrap).await;
        let chaos = Chaos {
            dir,
            cp,
            api,
            echo,
            server,
            client,
        };
        // The mesh works before anything breaks.
        eventually(DEADLINE, || async {
            match chaos.requests().get().await {
                Outcome::Ok => Ok(()),
                other => Err(format!("GET http://echo/ through sidecar A: {other:?}")),
            }
        })
        .await;
        chaos
    }

    fn outbound(&self) -> SocketAddr {
        self.client.listener("outbound")
    }

    fn requests(&self) -> EchoRequests {
        EchoRequests::via(self.outbound(), REQUEST_DEADLINE)
    }

    fn http(&self) -> HttpClient {
        http1_client_via(self.outbound())
    }

    /// [`WORKERS`] loops alternating `GET /` and checksummed `POST /echo`.
    fn load(&self) -> Load {
        let requests = self.requests();
        Load::start(WORKERS, PACE, move |worker, i| {
            let requests = requests.clone();
            async move {
                match (worker as u64 + i) % 2 {
                    0 => requests.get().await,
                    _ => {
                        let seed = ((worker as u64) << 32) | i;
                        requests.echo_checksummed(seed, BODY_LEN).await
                    }
                }
            }
        })
    }

    /// Waits until `load` has finished `n` more requests than now.
    async fn more_requests(load: &Load, n: u64) {
        let target = load.sent() + n;
        eventually(DEADLINE, || async {
            let report = load.report();
            (report.sent >= target)
                .then_some(())
                .ok_or_else(|| format!("waiting for {target} requests: {report}"))
        })
        .await
    }

    /// Waits until a plain GET succeeds again.
    async fn recovered(&self) {
        eventually(DEADLINE, || async {
            match self.requests().get().await {
                Outcome::Ok => Ok(()),
                other => Err(format!("not recovered yet: {other:?}")),
            }
        })
        .await
    }

    /// `x-chaos-generation` of a `GET http://echo/` answer.
    async fn generation(&self) -> Result<String, String> {
        let reply = send(&self.http(), get("http://echo/")).await?;
        reply
            .header("x-chaos-generation")
            .map(str::to_string)
            .ok_or_else(|| format!("{} without x-chaos-generation", reply.status))
    }
}

/// The control plane (and CA) in pod B on fixed ports, so a restart keeps
/// the addresses the proxies know.
async fn start_control_plane(b: &Pod, data_dir: &Path) -> ControlPlane {
    let bin = bins_for(&["sane-control-plane"]).join("sane-control-plane");
    let data = data_dir.display().to_string();
    let proc = b.spawn(
        "control-plane",
        None,
        &bin,
        &[
            "--xds-addr",
            &format!("0.0.0.0:{XDS_PORT}"),
            "--api-addr",
            &format!("0.0.0.0:{API_PORT}"),
            "--data-dir",
            &data,
            "--api-token",
            sane_e2e::harness::TEST_API_TOKEN,
            // Dialed by pod B's address: its serving certificate names it.
            "--tls-san",
            &b.ip.to_string(),
        ],
    );
    proc.wait_listening(&["xds", "api"], DEADLINE).await;
    let mut cp = ControlPlane {
        proc,
        xds: SocketAddr::new(IpAddr::V4(b.ip), XDS_PORT),
        api: SocketAddr::new(IpAddr::V4(b.ip), API_PORT),
        data_dir: data_dir.to_path_buf(),
        xds_token: PathBuf::new(),
        root_cert: data_dir.join("root-cert.pem"),
        tls: true,
    };
    cp.xds_token = cp.issue_token(data_dir, "default", "default").await;
    cp
}

async fn start_echo(b: &Pod) -> Proc {
    let echo = b.spawn(
        "sane-echo[echo-b]",
        None,
        &bins().echo,
        &[
            "--name",
            "echo-b",
            "--http",
            &format!("0.0.0.0:{ECHO_PORT}"),
        ],
    );
    echo.wait_listening(&["http"], DEADLINE).await;
    echo
}

/// Service `echo`, its one endpoint (pod B, through sidecar B), and route
/// `echo` at generation 0.
async fn register_mesh(api: &ApiClient, b: std::net::Ipv4Addr) {
    let service = json!({ "name": "echo", "ports": [ { "name": "http", "port": 80 } ] });
    api.put("/api/v1/services/default/echo", &service).await;
    let endpoint = json!({
        "service": "echo",
        "address": b.to_string(),
        "port": ECHO_PORT,
        "proxy_port": INBOUND_PORT,
        "identity": SERVER_ID,
    });
    // An endpoint behind a sidecar is keyed by the sidecar's address.
    api.put(
        &format!("/api/v1/endpoints/default/echo/{b}:{INBOUND_PORT}"),
        &endpoint,
    )
    .await;
    put_route(api, 0).await;
}

/// Route `echo`: a 15 s timeout, retries of gateway errors (which only
/// idempotent requests get), and a response header naming `generation`, so
/// a test can see which version of the config answered.
async fn put_route(api: &ApiClient, generation: u32) -> serde_json::Value {
    let route = json!({
        "name": "echo",
        "service": "echo",
        "rules": [ {
            "timeout": "15s",
            "retry": { "attempts": 3, "retry_on": ["gateway-error", "reset"] },
            "response_headers": { "set": { "x-chaos-generation": generation.to_string() } },
        } ],
    });
    api.put("/api/v1/routes/default/echo", &route).await
}

fn identity(cp: &ControlPlane, token: &Path, service_account: &str) -> IdentityConfig {
    IdentityConfig {
        service_account: service_account.into(),
        ca_address: cp.xds_url(),
        root_cert_file: cp.root_cert_file(),
        token_file: token.display().to_string(),
        ..Default::default()
    }
}

/// Sidecar B: a static inbound listener (STRICT mutual TLS) for the echo
/// port; its certificate from the CA.
fn server_bootstrap(cp: &ControlPlane, token: &Path) -> Bootstrap {
    Bootstrap {
        node: Node {
            id: "echo-b".into(),
            workload: "echo".into(),
            ..Default::default()
        },
        admin: AdminConfig {
            address: "127.0.0.1:0".into(),
        },
        drain_timeout: 2_000,
        identity: Some(IdentityConfig {
            // Sidecar B reaches the CA on its own pod's loopback.
            ca_address: format!("https://127.0.0.1:{XDS_PORT}"),
            ..identity(cp, token, "echo")
        }),
        resources: MeshResources {
            listeners: vec![Listener {
                name: "inbound".into(),
                direction: Direction::Inbound.into(),
                address: format!("0.0.0.0:{INBOUND_PORT}"),
                workload_ports: vec![WorkloadPort {
                    port: ECHO_PORT.into(),
                    protocol: Protocol::Http.into(),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        },
        ..Default::default()
    }
}

/// Whether `tc qdisc … netem` works here; the reason if not. Installs `tc`
/// through the deps script when it is missing and loads `sch_netem` if it
/// can.
fn netem_available(pod: &Pod) -> Result<(), String> {
    let have_tc = |p: &str| Path::new(p).join("tc").is_file();
    if !["/usr/sbin", "/sbin", "/usr/bin", "/bin"]
        .iter()
        .any(|p| have_tc(p))
    {
        let script = sane_e2e::harness::deps_script();
        let _ = std::process::Command::new("bash").arg(&script).status();
    }
    // Built as a module on most distributions; a no-op if built in or
    // already loaded, and harmless where modprobe is absent.
    let _ = std::process::Command::new("modprobe")
        .arg("sch_netem")
        .stderr(std::process::Stdio::null())
        .status();
    pod.run_sync(&[
        "tc", "qdisc", "add", "dev", "eth0", "root", "netem", "delay", "1ms",
    ])
    .map_err(|e| {
        format!(
            "tc netem does not work in this kernel ({e}); \
             it needs CONFIG_NET_SCH_NETEM (module sch_netem)"
        )
    })?;
    pod.run_sync(&["tc", "qdisc", "del", "dev", "eth0", "root"])
        .map(|_| ())
}

/// Applies `impairment` to both ends of the link (each pod's `eth0`, so
/// both directions suffer).
fn impair(pods: &PodPair, impairment: Impairment) {
    for pod in [&pods.a, &pods.b] {
        let argv: &[&str] = match impairment {
            Impairment::Netem => &[
                "tc", "qdisc", "add", "dev", "eth0", "root", "netem", "delay", "25ms", "10ms",
                "loss", "3%",
            ],
            Impairment::ShapedLoss => &[
                "tc", "qdisc", "add", "dev", "eth0", "root", "tbf", "rate", "4mbit", "burst",
                "32kbit", "latency", "400ms",
            ],
            Impairment::IptablesLoss => &[
                "iptables",
                "-A",
                "INPUT",
                "-i",
                "eth0",
                "-m",
                "statistic",
                "--mode",
                "random",
                "--probability",
                "0.03",
                "-j",
                "DROP",
            ],
        };
        pod.run_sync(argv)
            .unwrap_or_else(|e| panic!("impairing {}: {e}", pod.name));
    }
    if let Impairment::ShapedLoss = impairment {
        impair(pods, Impairment::IptablesLoss);
    }
}

fn heal(pods: &PodPair, impairment: Impairment) {
    for pod in [&pods.a, &pods.b] {
        let argv: &[&str] = match impairment {
            Impairment::Netem => &["tc", "qdisc", "del", "dev", "eth0", "root"],
            Impairment::IptablesLoss => &["iptables", "-F", "INPUT"],
            Impairment::ShapedLoss => &["tc", "qdisc", "del", "dev", "eth0", "root"],
        };
        pod.run_sync(argv)
            .unwrap_or_else(|e| panic!("healing {}: {e}", pod.name));
    }
    if let Impairment::ShapedLoss = impairment {
        heal(pods, Impairment::IptablesLoss);
    }
}

/// Prints the counts of a scenario (seen with `-- --nocapture`).
fn print_report(scenario: &str, report: &LoadReport) {
    println!("chaos[{scenario}]: {report}");
    if !report.examples.is_empty() {
        println!("chaos[{scenario}]: examples: {:#?}", report.examples);
    }
}

/// The invariants of every scenario: something got through, nothing hung,
/// nothing was corrupted, and every failure is of an `accepted` class.
fn assert_sane(scenario: &str, report: &LoadReport, accepted: &[&str]) {
    assert!(report.ok > 0, "{scenario}: nothing succeeded: {report}");
    assert_eq!(report.hung, 0, "{scenario}: requests hung: {report}");
    assert_eq!(
        report.corrupted, 0,
        "{scenario}: bodies corrupted: {report}\n{:#?}",
        report.examples
    );
    let unexpected = report.failures_except(accepted);
    assert!(
        unexpected.is_empty(),
        "{scenario}: failures other than {accepted:?}: {unexpected:?}\n{report}\n{:#?}",
        report.examples
    );
}

/// Loss (and with netem, delay) on the link while the load runs, then the
/// link healed: TCP retransmits and retries carry everything.
fn lossy_link(test: &str, impairment: Impairment) {
    let Some(pods) = PodPair::create_or_skip(test) else {
        return;
    };
    let mut impairment = impairment;
    if let Impairment::Netem = impairment {
        if let Err(why) = netem_available(&pods.a) {
            eprintln!(
                "\n{test}: {why}\n\
                 → delaying with a shaped link (tc tbf 4mbit) plus 3% iptables loss instead\n"
            );
            impairment = Impairment::ShapedLoss;
        }
    }
    bins();
    pods.a.block_on(|| async {
        let chaos = Chaos::start(&pods).await;
        let load = chaos.load();
        Chaos::more_requests(&load, 20).await;
        impair(&pods, impairment);
        let impaired_from = load.sent();
        Chaos::more_requests(&load, 150).await;
        let impaired = load.sent() - impaired_from;
        heal(&pods, impairment);
        chaos.recovered().await;
        Chaos::more_requests(&load, 20).await;
        let report = load.stop().await;
        print_report(&format!("{impairment:?}"), &report);
        println!("chaos[{impairment:?}]: {impaired} requests finished while impaired");
        assert_sane(test, &report, &GATEWAY_STATUSES);
        drop(chaos);
    });
}

#[test]
fn loss_and_delay_between_sidecars() {
    lossy_link("chaos: loss and delay", Impairment::Netem);
}

#[test]
fn random_packet_loss_between_sidecars() {
    lossy_link("chaos: iptables packet loss", Impairment::IptablesLoss);
}

/// Byte `i` of the echo app's `/bytes` pattern.
fn pattern_byte(i: u64) -> u8 {
    (i % 251) as u8
}

/// Reads `body`, checking every byte against the pattern from `offset` on
/// (and advancing it): `None` once `want` bytes have come and it is still
/// going, otherwise how it ended (an error, a clean end, a wrong byte).
async fn read_pattern(
    body: &mut hyper::body::Incoming,
    offset: &mut u64,
    want: Option<u64>,
) -> Option<Outcome> {
    loop {
        if want.is_some_and(|w| *offset >= w) {
            return None;
        }
        let frame = match body.frame().await {
            None => {
                return Some(Outcome::Corrupted(format!(
                    "the stream ended cleanly after {offset} bytes: a cut reported as success"
                )))
            }
            Some(Err(e)) => {
                return Some(Outcome::Failed {
                    class: BODY_ABORTED.into(),
                    detail: format!("after {offset} bytes: {e}"),
                })
            }
            Some(Ok(frame)) => frame,
        };
        if let Ok(data) = frame.into_data() {
            for (i, byte) in data.iter().enumerate() {
                let at = *offset + i as u64;
                if *byte != pattern_byte(at) {
                    return Some(Outcome::Corrupted(format!(
                        "byte {at} is {byte}, the pattern says {}",
                        pattern_byte(at)
                    )));
                }
            }
            *offset += data.len() as u64;
        }
    }
}

#[test]
fn an_upstream_killed_mid_stream_ends_each_stream_with_an_error() {
    const TEST: &str = "chaos: upstream killed mid-stream";
    const STREAMS: usize = 4;
    let Some(pods) = PodPair::create_or_skip(TEST) else {
        return;
    };
    bins();
    pods.a.block_on(|| async {
        let mut chaos = Chaos::start(&pods).await;
        // Long streams (1 GiB each), each read for a while, then left
        // unread so they stall on flow control with data in flight.
        let mut streams = Vec::new();
        for _ in 0..STREAMS {
            let req = get("http://echo/bytes?n=1073741824&chunk=16384");
            let rsp = tokio::time::timeout(REQUEST_DEADLINE, chaos.http().request(req))
                .await
                .expect("a streamed response starts")
                .expect("a streamed response starts");
            assert_eq!(rsp.status(), 200);
            let mut body = rsp.into_body();
            let mut offset = 0;
            let early = tokio::time::timeout(
                REQUEST_DEADLINE,
                read_pattern(&mut body, &mut offset, Some(256 * 1024)),
            )
            .await
            .unwrap_or(Some(Outcome::Hung));
            assert!(early.is_none(), "before the kill: {early:?}");
            streams.push((body, offset));
        }
        let load = chaos.load();
        Chaos::more_requests(&load, 20).await;

        println!("chaos[upstream killed]: {STREAMS} streams open, killing the app");
        chaos.echo.signal(Signal::SIGKILL);
        assert!(
            chaos.echo.wait_exit(DEADLINE).await.is_some(),
            "the app survived SIGKILL"
        );
        let mut streamed = LoadReport::default();
        for (mut body, mut offset) in streams {
            let outcome =
                tokio::time::timeout(REQUEST_DEADLINE, read_pattern(&mut body, &mut offset, None))
                    .await
                    .unwrap_or(Some(Outcome::Hung))
                    .expect("an open-ended read ends with an outcome");
            streamed.record(outcome);
        }
        print_report("upstream killed: the streams", &streamed);
        assert_eq!(
            streamed.failed.get(BODY_ABORTED).copied(),
            Some(STREAMS as u64),
            "every stream must end with an error: {streamed}\n{:#?}",
            streamed.examples
        );
        // With the app down the load gets clear gateway errors…
        Chaos::more_requests(&load, 20).await;
        let down = load.report();
        assert!(
            GATEWAY_STATUSES
                .iter()
                .any(|s| down.failed.contains_key(*s)),
            "no gateway error while the app was down: {down}"
        );
        // … and once it is back, answers again.
        chaos.echo = start_echo(&pods.b).await;
        chaos.recovered().await;
        Chaos::more_requests(&load, 20).await;
        let report = load.stop().await;
        print_report("upstream killed: the load", &report);
        // A request in flight on the killed app may also be cut mid-body.
        let mut accepted = GATEWAY_STATUSES.to_vec();
        accepted.push(BODY_ABORTED);
        assert_sane(TEST, &report, &accepted);
    });
}

#[test]
fn the_control_plane_killed_during_a_config_change_restarts_and_converges() {
    const TEST: &str = "chaos: control plane killed during a config change";
    let Some(pods) = PodPair::create_or_skip(TEST) else {
        return;
    };
    bins();
    pods.a.block_on(|| async {
        let mut chaos = Chaos::start(&pods).await;
        assert_eq!(chaos.generation().await.unwrap(), "0");
        let load = chaos.load();
        Chaos::more_requests(&load, 20).await;

        // The change is acknowledged by the API; the control plane dies
        // right after, before or while pushing it.
        let reply = put_route(&chaos.api, 1).await;
        assert!(reply["revision"].as_u64().is_some(), "{reply}");
        chaos.cp.proc.signal(Signal::SIGKILL);
        chaos.cp.proc.wait_exit(DEADLINE).await;
        // The data path does not need the control plane.
        let before = load.report();
        Chaos::more_requests(&load, 60).await;
        let during = load.report();
        assert_eq!(
            during.failures() + during.hung,
            before.failures() + before.hung,
            "requests failed while the control plane was down: {during}\n{:#?}",
            during.examples
        );

        // Restarted on its data dir: the acknowledged change survived and
        // reaches the proxy, and a new change after it does too.
        chaos.cp = start_control_plane(&pods.b, &chaos.cp.data_dir.clone()).await;
        eventually(DEADLINE, || async {
            match chaos.generation().await?.as_str() {
                "1" => Ok(()),
                other => Err(format!("generation {other}, waiting for 1")),
            }
        })
        .await;
        put_route(&chaos.api, 2).await;
        eventually(DEADLINE, || async {
            match chaos.generation().await?.as_str() {
                "2" => Ok(()),
                other => Err(format!("generation {other}, waiting for 2")),
            }
        })
        .await;
        Chaos::more_requests(&load, 20).await;
        let report = load.stop().await;
        print_report("control plane killed", &report);
        assert_sane(TEST, &report, &[]);
    });
}

#[test]
fn a_sidecar_restarted_under_load_fails_requests_clearly_and_recovers() {
    const TEST: &str = "chaos: sidecar restarted under load";
    let Some(pods) = PodPair::create_or_skip(TEST) else {
        return;
    };
    bins();
    pods.a.block_on(|| async {
        let mut chaos = Chaos::start(&pods).await;
        let load = chaos.load();
        Chaos::more_requests(&load, 20).await;

        // Sidecar B stops (draining what it has) and comes back on the
        // same port with a fresh certificate, while the load goes on.
        let status = chaos.server.proc.stop(DEADLINE).await;
        assert!(status.is_some(), "sidecar B did not stop");
        Chaos::more_requests(&load, 20).await;
        let bootstrap = server_bootstrap(&chaos.cp, &chaos.dir.path().join("default-echo.token"));
        chaos.server = PodSidecar::start(&pods.b, chaos.dir.path(), "echo-b", &bootstrap).await;
        chaos.recovered().await;
        Chaos::more_requests(&load, 40).await;
        let report = load.stop().await;
        print_report("sidecar restarted", &report);
        // Besides 503s: sidecar A answers a POST it cannot forward with a
        // 503 before reading its body, then closes that client connection;
        // a pooled client that picked the connection up again in the
        // meantime sees it closed without an answer (an immediate error,
        // never a hang). See docs/testing.md's chaos section.
        let mut accepted = GATEWAY_STATUSES.to_vec();
        accepted.push(NO_RESPONSE);
        assert_sane(TEST, &report, &accepted);
    });
}
