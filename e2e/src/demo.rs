//! The local demo behind `sane-demo`: the whole mesh on one machine — a
//! control plane, sidecars that take their config and certificates from it,
//! sample services, and steady traffic of every kind the proxy carries — so a
//! person can watch it work.
//!
//! ```text
//!                                       control plane (registry, xDS, CA)
//!                                          ▲ xDS + CSR from every sidecar
//!                      ┌══mTLS══> sidecar frontend-1 ─> echo frontend-1 (v1)
//! demo ─> client ──────┼══mTLS══> sidecar backend-1  ─> echo backend-1  (v1)
//!         sidecar      └══mTLS══> sidecar backend-2  ─> echo backend-2  (v2)
//! ```
//!
//! The demo registers the services, endpoints and one route through the
//! control plane's API, exactly as an operator would; the sidecars' files
//! hold only their listeners. HTTP/1.1 goes to `frontend`, HTTP/2 and gRPC to
//! `backend` (route `backend-canary`: `x-canary: 1` to v2, the rest 80/20
//! v1/v2), TCP to `frontend`'s TCP port. A line a second counts successes
//! and failures per protocol; the run fails if any request failed or any
//! process did not exit cleanly.

use crate::echo::proto::EchoRequest;
use crate::harness::http::{
    full, get, h2c_client_via, http1_client_via, request, send, tcp_roundtrip, HttpClient, Reply,
};
use crate::harness::{
    bins, bins_for, echo_service, eventually, isolate_children_from_ctrl_c, ControlPlane, EchoApp,
    EchoClient, Sidecar, INBOUND, OUTBOUND, TCP_PORT, TEST_API_TOKEN,
};
use futures::future::join_all;
use http::{header, HeaderValue, Method};
use sane_xds_proto::{
    AdminConfig, Bootstrap, Direction, IdentityConfig, Listener, MeshResources, Node, Protocol,
    WorkloadPort,
};
use serde::Serialize;
use serde_json::json;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};
use tempfile::TempDir;
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::MissedTickBehavior;

/// A request that takes longer than this counts as failed.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// How long each process may take to exit after SIGTERM.
const STOP_DEADLINE: Duration = Duration::from_secs(15);
/// Every proxy's drain timeout, so stopping is quick.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the proxies may take to connect and ACK the registry.
const SYNC_DEADLINE: Duration = Duration::from_secs(30);
/// Errors printed as they happen; later ones are only counted.
const ERRORS_SHOWN: u64 = 5;
/// The client sidecar's TCP listener, for `frontend:7000`.
const FRONTEND_TCP: &str = "frontend-tcp";
/// Namespace of every workload.
const NAMESPACE: &str = "default";
/// Name of the client sidecar, its workload and its service account.
const CLIENT: &str = "client";
/// The demo route, on `backend`.
const ROUTE: &str = "backend-canary";
/// Every this many HTTP/2 requests, one carries `x-canary: 1`.
const CANARY_EVERY: u64 = 10;
/// Every proxy binds here, so ports never collide.
const ANY_PORT: &str = "127.0.0.1:0";

/// One server workload: an echo app behind its own sidecar.
#[derive(Clone, Copy, Debug)]
struct Workload {
    /// Instance name: the echo app's `--name` and the sidecar's node id.
    instance: &'static str,
    service: &'static str,
    service_account: &'static str,
    /// The endpoint's `version` label, which the route's subsets select.
    version: &'static str,
}

/// The server workloads, in start order.
const SERVERS: [Workload; 3] = [
    Workload::new("frontend-1", "frontend", "frontend", "v1"),
    Workload::new("backend-1", "backend", "backend", "v1"),
    Workload::new("backend-2", "backend", "backend", "v2"),
];
/// The client sidecar: no app, only outbound listeners.
const CLIENT_WORKLOAD: Workload = Workload::new(CLIENT, CLIENT, CLIENT, "");

/// How the demo runs.
#[derive(Clone, Debug)]
pub struct DemoOptions {
    /// How long to send traffic; `None` runs until Ctrl-C or SIGTERM.
    pub duration: Option<Duration>,
    /// Pause between two requests of one protocol.
    pub interval: Duration,
}

/// The running mesh. Fields drop in order, so on a panic the processes are
/// killed callers first and the files go last.
#[derive(Debug)]
struct DemoMesh {
    client: Sidecar,
    servers: Vec<Sidecar>,
    apps: Vec<EchoApp>,
    cp: ControlPlane,
    /// Workload token files, by service account.
    tokens: BTreeMap<&'static str, PathBuf>,
    /// What `/api/v1/proxies` said once every proxy was in sync.
    sync: String,
    dir: TempDir,
}

/// SIGINT and SIGTERM, listened to from the very start, so a Ctrl-C while
/// the mesh starts still stops the processes started so far.
#[derive(Debug)]
struct StopSignals {
    interrupt: Signal,
    terminate: Signal,
}

/// One kind of traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Proto {
    Http1,
    Http2,
    Grpc,
    Tcp,
}

/// What a successful request learned about who served it.
#[derive(Debug, Default)]
struct Served {
    /// The echo instance that answered, if the protocol says.
    instance: Option<String>,
    /// The `x-sane-peer-identity` the server sidecar gave the app (HTTP only).
    peer: Option<String>,
    /// Whether the request carried `x-canary: 1`.
    canary: bool,
}

/// Counts, shared by the workers and the reporter.
#[derive(Debug, Default)]
struct Tally {
    ok: [AtomicU64; 4],
    failed: [AtomicU64; 4],
    served_by: Mutex<BTreeMap<String, u64>>,
    canary_served_by: Mutex<BTreeMap<String, u64>>,
    /// (instance, peer identity) → requests.
    peers: Mutex<BTreeMap<(String, String), u64>>,
}

/// A worker's connection to the mesh.
#[derive(Debug)]
enum Sender {
    Http(HttpClient, &'static str),
    Canary(HttpClient, &'static str),
    Grpc(EchoClient),
    Tcp(SocketAddr),
}

/// Runs the demo; returns whether every request succeeded and every process
/// exited cleanly. Panics if the mesh cannot start (the message says why).
pub async fn run(opts: DemoOptions) -> bool {
    isolate_children_from_ctrl_c();
    let mut signals = match StopSignals::listen() {
        Ok(s) => s,
        Err(e) => {
            println!("sane-demo: cannot listen for SIGINT/SIGTERM ({e})");
            return false;
        }
    };
    println!(
        "sane-demo: building binaries (the first build takes minutes; cargo's output \
         shows only if it fails) and starting the mesh ..."
    );
    let mesh = tokio::select! {
        mesh = DemoMesh::start() => mesh,
        why = signals.recv() => {
            // Dropping the half-started mesh kills what it started.
            println!("sane-demo: {why} while starting; processes started so far are killed");
            return false;
        }
    };
    mesh.print_directory();

    let tally = Arc::new(Tally::default());
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut workers = JoinSet::new();
    for proto in Proto::ALL {
        let sender = Sender::new(proto, &mesh.client);
        workers.spawn(worker(
            proto,
            sender,
            tally.clone(),
            stop_rx.clone(),
            opts.interval,
        ));
    }

    let started = Instant::now();
    let wait_until_done = wait_for_end(opts.duration, &mut signals);
    tokio::pin!(wait_until_done);
    let mut every_second = tokio::time::interval_at(
        tokio::time::Instant::now() + Duration::from_secs(1),
        Duration::from_secs(1),
    );
    loop {
        tokio::select! {
            _ = every_second.tick() => println!("{}", tally.line(started)),
            why = &mut wait_until_done => {
                println!("sane-demo: {why}; stopping");
                break;
            }
        }
    }
    let _ = stop_tx.send(true);
    while workers.join_next().await.is_some() {}

    println!("{}", tally.line(started));
    tally.print_served();
    let failed = tally.total_failed();

    let clean = mesh.stop(STOP_DEADLINE).await;
    if failed > 0 {
        println!("sane-demo: FAILED: {failed} requests failed");
    } else if !clean {
        println!("sane-demo: FAILED: a process did not stop cleanly");
    } else {
        println!("sane-demo: ok, every request succeeded and every process stopped cleanly");
    }
    failed == 0 && clean
}

/// Completes when the run should end, saying why.
async fn wait_for_end(duration: Option<Duration>, signals: &mut StopSignals) -> String {
    let elapsed = async {
        match duration {
            Some(d) => tokio::time::sleep(d).await, // allow-sleep: the demo runs for the --duration the user asked for
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = elapsed => format!("{:?} elapsed", duration.unwrap_or_default()),
        why = signals.recv() => why.to_string(),
    }
}

/// `spiffe://cluster.local/ns/default/sa/<service_account>`.
fn spiffe_id(service_account: &str) -> String {
    format!("spiffe://cluster.local/ns/{NAMESPACE}/sa/{service_account}")
}

/// The bootstrap of `w`'s sidecar: everything but the listeners (and what
/// they need to validate) comes from the control plane, the certificate from
/// its CA.
fn bootstrap(w: &Workload, cp: &ControlPlane, token: &Path, resources: MeshResources) -> Bootstrap {
    Bootstrap {
        node: Node {
            // Node ids belong to the token's workload (see the control
            // plane's `xds::server::check_node_id`).
            id: format!("{}.{NAMESPACE}~{}", w.service_account, w.instance),
            namespace: String::new(),
            workload: w.service.to_string(),
            // Istio's `app`/`version` metric labels (Kiali's versioned graph).
            labels: BTreeMap::from([
                ("app".to_string(), w.service.to_string()),
                ("version".to_string(), w.version.to_string()),
            ]),
        },
        admin: AdminConfig {
            address: ANY_PORT.to_string(),
        },
        drain_timeout: DRAIN_TIMEOUT.as_millis() as u64,
        resources,
        control_plane: Some(sane_xds_proto::ControlPlane {
            address: cp.xds_url(),
            token_file: token.display().to_string(),
            services: Vec::new(),
            // TLS: the control plane's certificate verified against the
            // root it wrote.
            root_cert_file: cp.root_cert_file(),
        }),
        // CA address, token and root default to the control plane's.
        identity: Some(IdentityConfig {
            service_account: w.service_account.to_string(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A server sidecar's listeners: one inbound (mTLS STRICT, the default with
/// an identity) delivering to the app's three ports.
fn server_resources(app: &EchoApp) -> MeshResources {
    let port = |p: u16, protocol: Protocol| WorkloadPort {
        port: p.into(),
        protocol: protocol.into(),
        ..Default::default()
    };
    MeshResources {
        listeners: vec![Listener {
            name: INBOUND.to_string(),
            direction: Direction::Inbound.into(),
            address: ANY_PORT.to_string(),
            workload_ports: vec![
                port(app.addrs.http.port(), Protocol::Http),
                port(app.addrs.grpc.port(), Protocol::Grpc),
                port(app.addrs.tcp.port(), Protocol::Tcp),
            ],
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// The client sidecar's listeners: the HTTP proxy port, and a TCP port for
/// `frontend:7000`.
fn client_resources() -> MeshResources {
    MeshResources {
        listeners: vec![
            Listener {
                name: OUTBOUND.to_string(),
                direction: Direction::Outbound.into(),
                protocol: Protocol::Http.into(),
                address: ANY_PORT.to_string(),
                ..Default::default()
            },
            Listener {
                name: FRONTEND_TCP.to_string(),
                direction: Direction::Outbound.into(),
                protocol: Protocol::Tcp.into(),
                address: ANY_PORT.to_string(),
                service: "frontend".to_string(),
                service_port: TCP_PORT,
                ..Default::default()
            },
        ],
        // The file must declare the service a TCP listener names to
        // validate; the control plane's copy replaces it once received.
        services: vec![echo_service("frontend")],
        ..Default::default()
    }
}

/// Route `backend-canary`, as an operator would write it: `x-canary: 1` goes
/// to v2; the rest is split 80/20 between v1 and v2.
fn canary_route() -> serde_json::Value {
    fn to(version: &str, weight: u32) -> serde_json::Value {
        json!({ "service": "backend", "subset": { "version": version }, "weight": weight })
    }
    json!({
        "name": ROUTE,
        "service": "backend",
        "rules": [
            {
                "matches": [ { "headers": [ { "name": "x-canary", "value": "1" } ] } ],
                "destinations": [ to("v2", 1) ],
            },
            { "destinations": [ to("v1", 80), to("v2", 20) ] },
        ],
    })
}

/// `PUT path` on the control plane's API with `resource` as JSON. Panics if
/// the write is refused (the message says why).
async fn put(cp: &ControlPlane, path: &str, resource: &impl Serialize) {
    let body = serde_json::to_string(resource).expect("mesh resources serialize to JSON");
    let mut req = request(Method::PUT, &cp.api_url(path), full(body));
    let json = HeaderValue::from_static("application/json");
    let bearer = format!("Bearer {TEST_API_TOKEN}");
    let bearer = HeaderValue::try_from(bearer).expect("a valid header value");
    req.headers_mut().insert(header::CONTENT_TYPE, json);
    req.headers_mut().insert(header::AUTHORIZATION, bearer);
    let reply = cp
        .api_client()
        .send(req)
        .await
        .unwrap_or_else(|e| panic!("PUT {path}: {e}"));
    assert!(
        reply.status.is_success(),
        "PUT {path}: {} {}",
        reply.status,
        reply.text()
    );
}

/// Waits until `/api/v1/proxies` lists `expected` connected proxies, every
/// one in sync with the registry; returns a summary.
async fn wait_in_sync(cp: &ControlPlane, expected: usize) -> String {
    let url = cp.api_url("/api/v1/proxies");
    let api = cp.api_client();
    eventually(SYNC_DEADLINE, || async {
        let table = api.send(get(&url)).await?.json()?;
        let proxies = table["proxies"].as_array().cloned().unwrap_or_default();
        let connected: Vec<&serde_json::Value> =
            proxies.iter().filter(|p| p["connected"] == true).collect();
        let behind: Vec<&str> = connected
            .iter()
            .filter(|p| p["in_sync"] != true)
            .filter_map(|p| p["node"].as_str())
            .collect();
        if connected.len() != expected || !behind.is_empty() {
            return Err(format!(
                "{} of {expected} proxies connected; not in sync: {behind:?}",
                connected.len()
            ));
        }
        let mut nodes: Vec<String> = connected
            .iter()
            .filter_map(|p| p["node"].as_str().map(str::to_string))
            .collect();
        nodes.sort();
        Ok(format!(
            "{expected} connected, all in sync at revision {}: {}",
            table["revision"],
            nodes.join(", ")
        ))
    })
    .await
}

async fn worker(
    proto: Proto,
    mut sender: Sender,
    tally: Arc<Tally>,
    mut stop: watch::Receiver<bool>,
    every: Duration,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    for n in 0u64.. {
        tokio::select! {
            _ = stop.changed() => return,
            _ = tick.tick() => {}
        }
        // A request cut short by the stop is neither a success nor a failure.
        let result = tokio::select! {
            _ = stop.changed() => return,
            r = tokio::time::timeout(REQUEST_TIMEOUT, sender.send(n)) => {
                r.unwrap_or_else(|_| Err(format!("no answer within {REQUEST_TIMEOUT:?}")))
            }
        };
        tally.record(proto, result);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The version label of `instance`, for printing.
fn version_of(instance: &str) -> &'static str {
    SERVERS
        .iter()
        .find(|w| w.instance == instance)
        .map_or("?", |w| w.version)
}

// === impl Workload ===

impl Workload {
    const fn new(
        instance: &'static str,
        service: &'static str,
        service_account: &'static str,
        version: &'static str,
    ) -> Workload {
        Workload {
            instance,
            service,
            service_account,
            version,
        }
    }
}

// === impl DemoMesh ===

impl DemoMesh {
    /// Builds the binaries, starts the control plane, registers the mesh in
    /// it, and starts the apps and sidecars; returns once every proxy is
    /// ready and in sync.
    async fn start() -> DemoMesh {
        let bins = tokio::task::spawn_blocking(|| {
            bins_for(&["sane-control-plane"]);
            bins()
        })
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
        let dir = tempfile::Builder::new()
            .prefix("sane-demo-")
            .tempdir()
            .expect("creating a temp dir for the demo's files");
        let cp = ControlPlane::start(&dir.path().join("control-plane"), &[]).await;

        let mut tokens = BTreeMap::new();
        for sa in [CLIENT, "frontend", "backend"] {
            tokens.insert(sa, cp.issue_token(dir.path(), NAMESPACE, sa).await);
        }
        for service in ["frontend", "backend"] {
            let path = format!("/api/v1/services/{NAMESPACE}/{service}");
            put(&cp, &path, &echo_service(service)).await;
        }

        let apps = join_all(
            SERVERS
                .iter()
                .map(|w| EchoApp::start_with(&bins.echo, w.instance, w.service)),
        )
        .await;
        let servers = join_all(SERVERS.iter().zip(&apps).map(|(w, app)| {
            let config = bootstrap(w, &cp, &tokens[w.service_account], server_resources(app));
            Sidecar::start(&bins.proxy, dir.path(), w.instance, config)
        }))
        .await;

        // Each instance is reached through its sidecar, which must present
        // the workload's identity.
        for ((w, app), sidecar) in SERVERS.iter().zip(&apps).zip(&servers) {
            let inbound = sidecar.listener(INBOUND);
            let mut endpoint = app.endpoint(Some(inbound.port()));
            endpoint.identity = spiffe_id(w.service_account);
            endpoint.labels = BTreeMap::from([("version".to_string(), w.version.to_string())]);
            let path = format!(
                "/api/v1/endpoints/{NAMESPACE}/{}/{}:{}",
                w.service,
                endpoint.address,
                inbound.port()
            );
            put(&cp, &path, &endpoint).await;
        }
        let path = format!("/api/v1/routes/{NAMESPACE}/{ROUTE}");
        put(&cp, &path, &canary_route()).await;

        let w = &CLIENT_WORKLOAD;
        let config = bootstrap(w, &cp, &tokens[CLIENT], client_resources());
        let client = Sidecar::start(&bins.proxy, dir.path(), CLIENT, config).await;
        let sync = wait_in_sync(&cp, SERVERS.len() + 1).await;
        DemoMesh {
            client,
            servers,
            apps,
            cp,
            tokens,
            sync,
            dir,
        }
    }

    /// Every sidecar, client first.
    fn sidecars(&self) -> impl Iterator<Item = &Sidecar> {
        std::iter::once(&self.client).chain(&self.servers)
    }

    fn print_directory(&self) {
        let cp = &self.cp;
        println!();
        println!("Sane Mesh demo. Child logs are captured; set SANE_E2E_LOG=1 to stream them.");
        println!(
            "Files (removed on exit): sidecar configs, workload tokens and the control plane's data in {}",
            self.dir.path().display()
        );
        println!();
        println!("control plane (registry, xDS and CA at {})", cp.xds_url());
        println!(
            "  proxies      {}   {}",
            cp.api_url("/api/v1/proxies"),
            self.sync
        );
        for kind in ["services", "endpoints", "routes"] {
            println!("  {kind:<12} {}", cp.api_url(&format!("/api/v1/{kind}")));
        }
        println!("  metrics      {}", cp.api_url("/metrics"));
        println!("  data dir     {}", cp.data_dir.display());
        println!(
            "  TLS root     {}   (curl --cacert {0} …, sanectl --ca-file {0})",
            cp.root_cert.display()
        );
        println!("  writes need  -H 'Authorization: Bearer {TEST_API_TOKEN}'");
        for sidecar in self.sidecars() {
            let sa = sidecar
                .bootstrap
                .identity
                .as_ref()
                .map_or("", |id| id.service_account.as_str());
            println!();
            println!("sidecar {}  identity {}", sidecar.name, spiffe_id(sa));
            println!("  config       {}", sidecar.config_path.display());
            if let Some(token) = self.tokens.get(sa) {
                println!("  token        {}", token.display());
            }
            for path in ["/ready", "/metrics", "/config_dump", "/certs"] {
                println!("  admin        {}", sidecar.admin_url(path));
            }
            let mut listeners: Vec<_> = sidecar.listeners.iter().collect();
            listeners.sort();
            for (name, addr) in listeners {
                println!("  listener     {name} = {addr}");
            }
        }
        println!();
        for app in &self.apps {
            let a = app.addrs;
            println!(
                "echo app {} (service {}, version {}): http={} grpc={} tcp={}",
                app.name,
                app.service,
                version_of(&app.name),
                a.http,
                a.grpc,
                a.tcp
            );
        }
        println!();
        println!(
            "route {ROUTE} on backend: x-canary: 1 -> v2 (backend-2); the rest 80% v1 (backend-1), 20% v2"
        );
        let out = self.client.listener(OUTBOUND);
        let tcp = self.client.listener(FRONTEND_TCP);
        println!();
        println!("Try (replies show the caller's x-sane-peer-identity):");
        println!("  curl -s -H 'Host: frontend' http://{out}/hello");
        println!("  curl -s -H 'Host: backend' http://{out}/hello                   # backend-1 or -2, 80/20");
        println!(
            "  curl -s -H 'Host: backend' -H 'x-canary: 1' http://{out}/hello  # always backend-2"
        );
        println!("  curl -s --http2-prior-knowledge -H 'Host: backend' http://{out}/hello");
        println!("  echo hello | nc -N {} {}", tcp.ip(), tcp.port());
        println!("  curl -s {}", cp.api_url("/api/v1/proxies"));
        println!("  curl -s {}", self.client.admin_url("/certs"));
        println!();
    }

    /// Stops everything with SIGTERM, callers before callees: the client
    /// sidecar, the server sidecars, the apps, then the control plane,
    /// waiting up to `deadline` for each. Says which did not exit 0 in time,
    /// and returns whether all did.
    async fn stop(&self, deadline: Duration) -> bool {
        let procs = self
            .sidecars()
            .map(|s| &s.proc)
            .chain(self.apps.iter().map(|a| &a.proc))
            .chain(std::iter::once(&self.cp.proc));
        let mut clean = true;
        for proc in procs {
            let name = proc.name();
            match proc.stop(deadline).await {
                Some(s) if s.success() => continue,
                Some(s) => println!("sane-demo: {name} exited with {s}"),
                None => println!("sane-demo: {name} did not exit within {deadline:?} of SIGTERM"),
            }
            clean = false;
        }
        clean
    }
}

// === impl StopSignals ===

impl StopSignals {
    fn listen() -> std::io::Result<StopSignals> {
        Ok(StopSignals {
            interrupt: signal(SignalKind::interrupt())?,
            terminate: signal(SignalKind::terminate())?,
        })
    }

    /// Completes at the next SIGINT or SIGTERM, naming it.
    async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.interrupt.recv() => "Ctrl-C",
            _ = self.terminate.recv() => "SIGTERM",
        }
    }
}

// === impl Proto ===

impl Proto {
    const ALL: [Proto; 4] = [Proto::Http1, Proto::Http2, Proto::Grpc, Proto::Tcp];

    fn name(self) -> &'static str {
        ["http1", "http2", "grpc", "tcp"][self as usize]
    }
}

// === impl Sender ===

impl Sender {
    fn new(proto: Proto, client: &Sidecar) -> Sender {
        let outbound = client.listener(OUTBOUND);
        match proto {
            Proto::Http1 => Sender::Http(http1_client_via(outbound), "http://frontend/demo"),
            Proto::Http2 => Sender::Canary(h2c_client_via(outbound), "http://backend/demo"),
            Proto::Grpc => Sender::Grpc(
                EchoClient::via(outbound, "http://backend:9090").expect("a valid origin"),
            ),
            Proto::Tcp => Sender::Tcp(client.listener(FRONTEND_TCP)),
        }
    }

    /// Sends request `n` and says who served it.
    async fn send(&mut self, n: u64) -> Result<Served, String> {
        match self {
            Sender::Http(client, uri) => Self::http(client, uri, false).await,
            Sender::Canary(client, uri) => {
                let canary = n % CANARY_EVERY == CANARY_EVERY - 1;
                let served = Self::http(client, uri, canary).await?;
                let instance = served.instance.as_deref().unwrap_or("?");
                if canary && version_of(instance) != "v2" {
                    return Err(format!(
                        "GET {uri} with x-canary: 1 was served by {instance}, not the v2 subset"
                    ));
                }
                Ok(served)
            }
            Sender::Grpc(client) => {
                let message = format!("demo {n}");
                let reply = client
                    .unary(EchoRequest::new(message.clone()))
                    .await
                    .map_err(|s| format!("gRPC Unary: {:?} {}", s.code(), s.message()))?
                    .into_inner();
                if reply.message != message {
                    return Err(format!(
                        "gRPC Unary: sent {message:?}, got {:?}",
                        reply.message
                    ));
                }
                Ok(Served {
                    instance: Some(reply.from),
                    ..Default::default()
                })
            }
            Sender::Tcp(addr) => {
                let payload = format!("demo {n}\n");
                let back = tcp_roundtrip(*addr, payload.as_bytes()).await?;
                if back != payload.as_bytes() {
                    return Err(format!(
                        "TCP via {addr}: sent {payload:?}, got {:?}",
                        String::from_utf8_lossy(&back)
                    ));
                }
                Ok(Served::default())
            }
        }
    }

    async fn http(client: &HttpClient, uri: &str, canary: bool) -> Result<Served, String> {
        let mut req = get(uri);
        if canary {
            req.headers_mut()
                .insert("x-canary", HeaderValue::from_static("1"));
        }
        let reply: Reply = send(client, req).await?;
        if !reply.status.is_success() {
            return Err(format!("GET {uri}: {} {}", reply.status, reply.text()));
        }
        // The echo app reports the request headers it got, including the
        // identity the server sidecar verified.
        let seen = reply.json()?;
        let peer = seen["headers"]["x-sane-peer-identity"]
            .as_str()
            .map(str::to_string);
        Ok(Served {
            instance: reply.header("x-echo-name").map(str::to_string),
            peer,
            canary,
        })
    }
}

// === impl Tally ===

impl Tally {
    fn record(&self, proto: Proto, result: Result<Served, String>) {
        let i = proto as usize;
        match result {
            Ok(served) => {
                self.ok[i].fetch_add(1, Ordering::Relaxed);
                let Some(instance) = served.instance else {
                    return;
                };
                let by = if served.canary {
                    &self.canary_served_by
                } else {
                    &self.served_by
                };
                *lock(by).entry(instance.clone()).or_default() += 1;
                let peer = served.peer.unwrap_or_else(|| "(none)".to_string());
                if proto != Proto::Grpc {
                    *lock(&self.peers).entry((instance, peer)).or_default() += 1;
                }
            }
            Err(e) => {
                let failed = self.total_failed();
                self.failed[i].fetch_add(1, Ordering::Relaxed);
                if failed < ERRORS_SHOWN {
                    println!("  ! {}: {e}", proto.name());
                } else if failed == ERRORS_SHOWN {
                    println!("  ! (further errors are only counted)");
                }
            }
        }
    }

    fn total_failed(&self) -> u64 {
        self.failed.iter().map(|f| f.load(Ordering::Relaxed)).sum()
    }

    fn line(&self, started: Instant) -> String {
        let parts: Vec<String> = Proto::ALL
            .iter()
            .map(|p| {
                let i = *p as usize;
                format!(
                    "{} ok={} failed={}",
                    p.name(),
                    self.ok[i].load(Ordering::Relaxed),
                    self.failed[i].load(Ordering::Relaxed)
                )
            })
            .collect();
        format!(
            "[{:>4}s] {}",
            started.elapsed().as_secs(),
            parts.join(" | ")
        )
    }

    /// Which instance served how much, and who the server sidecars said
    /// was calling.
    fn print_served(&self) {
        let served = lock(&self.served_by).clone();
        let backend_total: u64 = served
            .iter()
            .filter(|(who, _)| who.starts_with("backend-"))
            .map(|(_, n)| n)
            .sum();
        println!("served by (HTTP/1 to frontend; HTTP/2 and gRPC to backend via route {ROUTE}):");
        for (who, n) in &served {
            let share = if who.starts_with("backend-") && backend_total > 0 {
                format!("  {}% of backend", n * 100 / backend_total)
            } else {
                String::new()
            };
            println!("  {who:<11} {:<3} {n:>6}{share}", version_of(who));
        }
        for (who, n) in lock(&self.canary_served_by).iter() {
            println!(
                "  {who:<11} {:<3} {n:>6}  with x-canary: 1",
                version_of(who)
            );
        }
        println!("peer identity the server sidecars saw (x-sane-peer-identity, HTTP):");
        for ((who, peer), n) in lock(&self.peers).iter() {
            println!("  {who:<11} {peer}  {n}");
        }
    }
}
