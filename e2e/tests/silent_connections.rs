//! Connections that never end: 5 000 connections that never send a byte and
//! 20 POSTs whose bodies dribble one byte at a time, against the client
//! sidecar's outbound listener (1 000 connections at most, so the flood is
//! five times what it holds). The proxy must
//! close them within the configured timeouts (first byte, request body),
//! which shrink as the listener fills, and evict silent connections to admit
//! new ones when it is full — while a steady loop of normal requests, each
//! on a new connection, keeps succeeding.

use sane_e2e::harness::http::{get, send_http1};
use sane_e2e::harness::{eventually, metric_value, TwoHop, OUTBOUND};
use sane_xds_proto::ConnectionLimits;
use std::io::Read;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const SILENT: usize = 5_000;
const SLOW_POSTS: usize = 20;
const MAX_CONNECTIONS: u32 = 1_000;
/// The default: under the flood, pressure shrinks it and eviction beats it.
const FIRST_BYTE_TIMEOUT_MS: u64 = 10_000;
/// Threads opening the silent connections.
const OPENERS: usize = 8;
const BODY_TIMEOUT_MS: u64 = 2_000;
/// How long the test waits for the proxy to close everything: far above
/// the configured timeouts, so only a proxy that does not close fails.
const DEADLINE: Duration = Duration::from_secs(60);

/// Normal requests, each on a new connection (a client without a pool, as
/// health checkers and scripts are), until stopped.
struct SteadyLoop {
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    reasons: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl SteadyLoop {
    fn start(outbound: SocketAddr) -> SteadyLoop {
        let ok = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let reasons = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (ok2, failed2, reasons2, stop2) =
            (ok.clone(), failed.clone(), reasons.clone(), stop.clone());
        let task = tokio::spawn(async move {
            while !stop2.load(Ordering::Relaxed) {
                let one = async {
                    let rsp = send_http1(outbound, get(&TwoHop::url("/"))).await?;
                    let status = rsp.status();
                    http_body_util::BodyExt::collect(rsp.into_body())
                        .await
                        .map_err(|e| format!("body after {status}: {e}"))?;
                    if status == 200 {
                        Ok(())
                    } else {
                        Err(format!("status {status}"))
                    }
                };
                match tokio::time::timeout(Duration::from_secs(10), one).await {
                    Ok(Ok(())) => {
                        ok2.fetch_add(1, Ordering::Relaxed);
                    }
                    failure => {
                        failed2.fetch_add(1, Ordering::Relaxed);
                        let mut r = reasons2.lock().unwrap();
                        if r.len() < 10 {
                            r.push(match failure {
                                Ok(Err(e)) => e,
                                _ => "no answer within 10s".to_string(),
                            });
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await; // allow-sleep: the loop's pace, not a wait for readiness
            }
        });
        SteadyLoop {
            ok,
            failed,
            reasons,
            stop,
            task,
        }
    }

    fn ok(&self) -> u64 {
        self.ok.load(Ordering::Relaxed)
    }

    async fn finish(self) -> (u64, u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap();
        let reasons = self.reasons.lock().unwrap().clone();
        (
            self.ok.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
            reasons,
        )
    }
}

/// A POST whose body comes one byte every 500 ms; returns what the proxy
/// answered before closing the connection, and how long that took.
async fn slow_post(outbound: SocketAddr) -> Result<(String, Duration), String> {
    let started = Instant::now();
    let s = TcpStream::connect(outbound)
        .await
        .map_err(|e| e.to_string())?;
    let (mut rd, mut wr) = s.into_split();
    let head = format!(
        "POST /sha256 HTTP/1.1\r\nhost: {}\r\ncontent-length: 100000\r\n\r\n",
        TwoHop::SERVICE
    );
    wr.write_all(head.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let dribble = tokio::spawn(async move {
        // 1 byte every 500 ms, for far longer than the test waits.
        for _ in 0..100_000 {
            if wr.write_all(b"x").await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(500)).await; // allow-sleep: the slow client's pace itself
        }
    });
    let mut answer = Vec::new();
    let read = tokio::time::timeout(DEADLINE, rd.read_to_end(&mut answer)).await;
    dribble.abort();
    match read {
        Err(_) => Err(format!("still open after {DEADLINE:?}")),
        // A reset after the answer still leaves the answer read.
        Ok(_) => Ok((
            String::from_utf8_lossy(&answer).into_owned(),
            started.elapsed(),
        )),
    }
}

/// Opens `n` connections to `addr` from [`OPENERS`] threads at once; none
/// ever sends a byte (blocking sockets, switched to non-blocking to poll
/// them for the close).
fn open_silent(addr: SocketAddr, n: usize) -> Vec<std::net::TcpStream> {
    let threads: Vec<_> = (0..OPENERS)
        .map(|t| {
            std::thread::spawn(move || {
                (t..n)
                    .step_by(OPENERS)
                    .map(|i| {
                        let s =
                            std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(30))
                                .unwrap_or_else(|e| panic!("silent connection {i}: {e}"));
                        s.set_nonblocking(true).expect("non-blocking");
                        s
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    threads
        .into_iter()
        .flat_map(|t| t.join().expect("an opener thread"))
        .collect()
}

/// How many of `conns` are still open (a read would block).
fn still_open(conns: &[std::net::TcpStream]) -> usize {
    let mut buf = [0u8; 1];
    conns
        .iter()
        .filter(|s| {
            let mut s: &std::net::TcpStream = s;
            matches!(s.read(&mut buf), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
        })
        .count()
}

async fn metric(mesh: &TwoHop, name: &str, labels: &[(&str, &str)]) -> f64 {
    let text = mesh.client().metrics().await.unwrap_or_default();
    metric_value(&text, name, labels).unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn silent_connections_and_slow_bodies_are_closed_while_new_requests_keep_flowing() {
    let builder = TwoHop::builder().client_config(|b| {
        let outbound = b
            .resources
            .listeners
            .iter_mut()
            .find(|l| l.name == OUTBOUND)
            .expect("the outbound listener");
        outbound.limits = Some(ConnectionLimits {
            first_byte_timeout: FIRST_BYTE_TIMEOUT_MS,
            max_connections: MAX_CONNECTIONS,
            request_body_timeout: BODY_TIMEOUT_MS,
            request_body_min_rate: 1024,
            ..Default::default()
        });
    });
    let mesh = TwoHop::start_from(builder).await;
    let outbound = mesh.outbound_http;

    let steady = SteadyLoop::start(outbound);
    eventually(DEADLINE, || async {
        (steady.ok() > 0)
            .then_some(())
            .ok_or_else(|| "no normal request succeeded yet".to_string())
    })
    .await;

    let slow: Vec<_> = (0..SLOW_POSTS)
        .map(|_| tokio::spawn(slow_post(outbound)))
        .collect();
    let flood_started = Instant::now();
    let silent = tokio::task::spawn_blocking(move || open_silent(outbound, SILENT))
        .await
        .unwrap();
    let opened_in = flood_started.elapsed();

    // Every silent connection is closed by the proxy (first-byte timeout,
    // shrunk under pressure, or evicted to admit a newer connection).
    let mut remaining = SILENT;
    eventually(DEADLINE, || {
        remaining = still_open(&silent);
        std::future::ready(if remaining == 0 {
            Ok(())
        } else {
            Err(format!(
                "{remaining} of {SILENT} silent connections still open"
            ))
        })
    })
    .await;
    let silent_closed_in = flood_started.elapsed();

    // Every slow POST got 408 and its connection closed.
    let mut slowest = Duration::ZERO;
    for (i, post) in slow.into_iter().enumerate() {
        let (answer, took) = post
            .await
            .unwrap()
            .unwrap_or_else(|e| panic!("slow POST {i}: {e}"));
        assert!(
            answer.starts_with("HTTP/1.1 408"),
            "slow POST {i} got {answer:?}"
        );
        assert!(answer.contains("x-sane-response-flags: SI"), "{answer:?}");
        slowest = slowest.max(took);
    }

    // The loop keeps going after the flood too.
    let after = steady.ok();
    eventually(DEADLINE, || async {
        (steady.ok() > after + 10)
            .then_some(())
            .ok_or_else(|| "normal traffic stalled after the flood".to_string())
    })
    .await;
    let (ok, failed, reasons) = steady.finish().await;
    let total = ok + failed;
    let rate = ok as f64 * 100.0 / total as f64;
    let listener = [("listener", OUTBOUND)];
    let by_reason = |reason: &'static str| [("listener", OUTBOUND), ("reason", reason)];
    let first_byte = metric(
        &mesh,
        "sane_listener_silent_connections_closed_total",
        &by_reason("first_byte_timeout"),
    )
    .await;
    let evicted = metric(
        &mesh,
        "sane_listener_silent_connections_closed_total",
        &by_reason("evicted"),
    )
    .await;
    let refused = metric(&mesh, "sane_listener_connections_rejected_total", &listener).await;
    let body_timeouts = metric(
        &mesh,
        "sane_http_requests_rejected_total",
        &by_reason("body_timeout"),
    )
    .await;
    println!(
        "silent connections: {SILENT} opened in {opened_in:?}, all closed by the proxy after \
         {silent_closed_in:?} (first-byte timeout {FIRST_BYTE_TIMEOUT_MS}ms: {first_byte}, \
         evicted: {evicted}, refused at accept: {refused}); {SLOW_POSTS} slow POSTs answered \
         408 within {slowest:?} (body timeout {BODY_TIMEOUT_MS}ms; counted {body_timeouts}); \
         steady loop {ok}/{total} ok ({rate:.2} %)"
    );
    assert!(
        rate >= 99.0,
        "steady loop: {failed} of {total} requests failed: {reasons:?}"
    );
    assert!(
        body_timeouts >= SLOW_POSTS as f64,
        "body timeouts counted {body_timeouts}"
    );
    assert!(
        first_byte + evicted + refused >= SILENT as f64,
        "only {first_byte} + {evicted} + {refused} silent connections counted as closed"
    );
}
