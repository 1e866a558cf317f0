//! The local demo behind `sane-demo`: a small mesh with steady traffic of
//! every kind the proxy carries, so a person can watch it work.
//!
//! ```text
//!                      ┌─> sidecar frontend-1 ─> echo frontend-1
//! demo ─> client ──────┼─> sidecar backend-1  ─> echo backend-1
//!         sidecar      └─> sidecar backend-2  ─> echo backend-2
//! ```
//!
//! HTTP/1.1 goes to `frontend`, HTTP/2 and gRPC to `backend` (balanced over
//! two instances), TCP to `frontend`'s TCP port. A line a second counts
//! successes and failures per protocol; the run fails if any request failed
//! or any process did not exit cleanly.

use crate::echo::proto::EchoRequest;
use crate::harness::http::{
    get, h2c_client_via, http1_client_via, send, tcp_roundtrip, HttpClient,
};
use crate::harness::{isolate_children_from_ctrl_c, EchoClient, Mesh, OUTBOUND};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::MissedTickBehavior;

/// A request that takes longer than this counts as failed.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// How long each process may take to exit after SIGTERM.
const STOP_DEADLINE: Duration = Duration::from_secs(15);
/// Errors printed as they happen; later ones are only counted.
const ERRORS_SHOWN: u64 = 5;
/// The client sidecar's TCP listener, for `frontend:7000`.
const FRONTEND_TCP: &str = "frontend-tcp";

/// How the demo runs.
#[derive(Clone, Debug)]
pub struct DemoOptions {
    /// How long to send traffic; `None` runs until Ctrl-C or SIGTERM.
    pub duration: Option<Duration>,
    /// Pause between two requests of one protocol.
    pub interval: Duration,
}

/// One kind of traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Proto {
    Http1,
    Http2,
    Grpc,
    Tcp,
}

/// Counts, shared by the workers and the reporter.
#[derive(Debug, Default)]
struct Tally {
    ok: [AtomicU64; 4],
    failed: [AtomicU64; 4],
    served_by: Mutex<BTreeMap<String, u64>>,
}

/// A worker's connection to the mesh.
#[derive(Debug)]
enum Sender {
    Http(HttpClient, &'static str),
    Grpc(EchoClient),
    Tcp(SocketAddr),
}

/// Runs the demo; returns whether every request succeeded and every process
/// exited cleanly. Panics if the mesh cannot start (the message says why).
pub async fn run(opts: DemoOptions) -> bool {
    isolate_children_from_ctrl_c();
    println!("sane-demo: building binaries and starting the mesh ...");
    let mesh = Mesh::builder()
        .echo("frontend", "frontend-1")
        .echo("backend", "backend-1")
        .echo("backend", "backend-2")
        .tcp_listener(FRONTEND_TCP, "frontend")
        .start()
        .await;
    print_directory(&mesh);

    let tally = Arc::new(Tally::default());
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut workers = JoinSet::new();
    for proto in Proto::ALL {
        let sender = Sender::new(proto, &mesh);
        workers.spawn(worker(
            proto,
            sender,
            tally.clone(),
            stop_rx.clone(),
            opts.interval,
        ));
    }

    let started = Instant::now();
    let wait_until_done = wait_for_end(opts.duration);
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
    let served: Vec<String> = tally
        .served_by()
        .iter()
        .map(|(who, n)| format!("{who}={n}"))
        .collect();
    println!("served by: {}", served.join(" "));
    let failed = tally.total_failed();

    let mut clean = true;
    for (name, status) in mesh.shutdown(STOP_DEADLINE).await {
        match status {
            Some(s) if s.success() => {}
            Some(s) => {
                clean = false;
                println!("sane-demo: {name} exited with {s}");
            }
            None => {
                clean = false;
                println!("sane-demo: {name} did not exit within {STOP_DEADLINE:?} of SIGTERM");
            }
        }
    }
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
async fn wait_for_end(duration: Option<Duration>) -> String {
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => return format!("cannot listen for SIGTERM ({e})"),
    };
    let elapsed = async {
        match duration {
            Some(d) => tokio::time::sleep(d).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = elapsed => format!("{:?} elapsed", duration.unwrap_or_default()),
        _ = tokio::signal::ctrl_c() => "Ctrl-C".to_string(),
        _ = term.recv() => "SIGTERM".to_string(),
    }
}

fn print_directory(mesh: &Mesh) {
    println!();
    println!("Sane Mesh demo. Child logs are captured; set SANE_E2E_LOG=1 to stream them.");
    println!(
        "Config files (removed on exit) are in {}",
        mesh.dir().display()
    );
    for sidecar in mesh.sidecars() {
        println!();
        println!("sidecar {}", sidecar.name);
        println!("  config       {}", sidecar.config_path.display());
        for path in ["/ready", "/metrics", "/config_dump"] {
            println!("  admin        {}", sidecar.admin_url(path));
        }
        let mut listeners: Vec<_> = sidecar.listeners.iter().collect();
        listeners.sort();
        for (name, addr) in listeners {
            println!("  listener     {name} = {addr}");
        }
    }
    println!();
    for app in mesh.apps() {
        let a = app.addrs;
        println!(
            "echo app {} (service {}): http={} grpc={} tcp={}",
            app.name, app.service, a.http, a.grpc, a.tcp
        );
    }
    let outbound = mesh.client().listener(OUTBOUND);
    println!();
    println!("Try: curl -s -H 'Host: frontend' http://{outbound}/hello");
    println!("     curl -s --http2-prior-knowledge -H 'Host: backend' http://{outbound}/hello");
    println!();
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

// === impl Proto ===

impl Proto {
    const ALL: [Proto; 4] = [Proto::Http1, Proto::Http2, Proto::Grpc, Proto::Tcp];

    fn name(self) -> &'static str {
        match self {
            Proto::Http1 => "http1",
            Proto::Http2 => "http2",
            Proto::Grpc => "grpc",
            Proto::Tcp => "tcp",
        }
    }
}

// === impl Sender ===

impl Sender {
    fn new(proto: Proto, mesh: &Mesh) -> Sender {
        let client = mesh.client();
        let outbound = client.listener(OUTBOUND);
        match proto {
            Proto::Http1 => Sender::Http(http1_client_via(outbound), "http://frontend/demo"),
            Proto::Http2 => Sender::Http(h2c_client_via(outbound), "http://backend/demo"),
            Proto::Grpc => Sender::Grpc(
                EchoClient::via(outbound, "http://backend:9090").expect("a valid origin"),
            ),
            Proto::Tcp => Sender::Tcp(client.listener(FRONTEND_TCP)),
        }
    }

    /// Sends request `n`; `Ok` carries the instance that answered, if known.
    async fn send(&mut self, n: u64) -> Result<Option<String>, String> {
        match self {
            Sender::Http(client, uri) => {
                let reply = send(client, get(uri)).await?;
                if !reply.status.is_success() {
                    return Err(format!("GET {uri}: {} {}", reply.status, reply.text()));
                }
                Ok(reply.header("x-echo-name").map(str::to_string))
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
                Ok(Some(reply.from))
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
                Ok(None)
            }
        }
    }
}

// === impl Tally ===

impl Tally {
    fn record(&self, proto: Proto, result: Result<Option<String>, String>) {
        let i = proto as usize;
        match result {
            Ok(who) => {
                self.ok[i].fetch_add(1, Ordering::Relaxed);
                if let Some(who) = who {
                    *lock(&self.served_by).entry(who).or_default() += 1;
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

    fn served_by(&self) -> BTreeMap<String, u64> {
        lock(&self.served_by).clone()
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
}
