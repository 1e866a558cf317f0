//! Clients that stop reading cost only their own streams.
//!
//! Every request from the client sidecar to one peer port rides pooled
//! HTTP/2 connections. A client that opens a large download and never reads
//! it leaves its stream's window full of unread bytes, charged to the
//! connection too. With a connection window of 16 stream windows, about two
//! dozen such clients froze every other request to that destination. Here
//! 50 of them hold their downloads stalled while a steady loop of normal
//! requests to the same destination must keep succeeding.

use sane_e2e::harness::http::{get, send};
use sane_e2e::harness::{eventually, TwoHop};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

const STALLED: usize = 50;
/// Far more than all the buffers between the app and a stalled client
/// (socket buffers on both hops, the stream window): the download is still
/// going when the test ends.
const DOWNLOAD_BYTES: u64 = 256 << 20;
const NORMAL_REQUESTS: usize = 300;
const DEADLINE: Duration = Duration::from_secs(60);

/// Opens a download through `outbound` with a small receive buffer, reads
/// its response head and then stops reading.
async fn stalled_download(outbound: SocketAddr) -> Result<TcpStream, String> {
    let socket = TcpSocket::new_v4().map_err(|e| e.to_string())?;
    // A small receive window: the stall reaches the proxies quickly.
    socket
        .set_recv_buffer_size(16 * 1024)
        .map_err(|e| e.to_string())?;
    let mut s = socket
        .connect(outbound)
        .await
        .map_err(|e| format!("connecting to {outbound}: {e}"))?;
    let head = format!(
        "GET /bytes?n={DOWNLOAD_BYTES}&chunk=65536 HTTP/1.1\r\nhost: {}\r\n\r\n",
        TwoHop::SERVICE
    );
    s.write_all(head.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut got = Vec::new();
    let mut buf = [0u8; 512];
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = s.read(&mut buf).await.map_err(|e| e.to_string())?;
        if n == 0 {
            return Err(format!(
                "closed before the response head: {:?}",
                String::from_utf8_lossy(&got)
            ));
        }
        got.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&got);
    if !text.starts_with("HTTP/1.1 200") {
        return Err(format!("download answered {text:?}"));
    }
    Ok(s)
}

/// One TCP socket of this host, from `/proc/net/tcp`.
#[derive(Clone, Copy, Debug)]
struct TcpRow {
    local_port: u16,
    remote_port: u16,
    /// Bytes written and not yet acknowledged by the peer.
    tx_queue: u64,
    /// Bytes received and not yet read.
    rx_queue: u64,
}

fn tcp_rows() -> Result<Vec<TcpRow>, String> {
    let text =
        std::fs::read_to_string("/proc/net/tcp").map_err(|e| format!("/proc/net/tcp: {e}"))?;
    let port = |addr: &str| {
        addr.rsplit(':')
            .next()
            .and_then(|p| u16::from_str_radix(p, 16).ok())
    };
    let mut out = Vec::new();
    for line in text.lines().skip(1) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (Some(local), Some(remote), Some(queues)) =
            (fields.get(1), fields.get(2), fields.get(4))
        else {
            continue;
        };
        let (tx, rx) = queues.split_once(':').unwrap_or(("0", "0"));
        if let (Some(local_port), Some(remote_port)) = (port(local), port(remote)) {
            out.push(TcpRow {
                local_port,
                remote_port,
                tx_queue: u64::from_str_radix(tx, 16).unwrap_or(0),
                rx_queue: u64::from_str_radix(rx, 16).unwrap_or(0),
            });
        }
    }
    Ok(out)
}

/// Bytes waiting at the stalled downloads: in their receive queues and in
/// the proxy's send queues towards them. Ready once every download has
/// unread bytes and the total is the same as at the last sample, at least
/// 500 ms before (kept in `last`): nothing moves any more, so the proxy
/// stopped reading those streams and their windows are full.
fn settled(
    ports: &[u16],
    proxy_port: u16,
    last: &mut Option<(Instant, u64)>,
) -> Result<u64, String> {
    let rows = tcp_rows()?;
    let mut total = 0;
    for port in ports {
        let rx = rows
            .iter()
            .find(|r| r.local_port == *port && r.remote_port == proxy_port)
            .map(|r| r.rx_queue)
            .ok_or_else(|| format!("no socket with local port {port}"))?;
        if rx == 0 {
            return Err(format!("download on port {port} has nothing queued yet"));
        }
        let tx: u64 = rows
            .iter()
            .filter(|r| r.local_port == proxy_port && r.remote_port == *port)
            .map(|r| r.tx_queue)
            .sum();
        total += rx + tx;
    }
    let now = Instant::now();
    match *last {
        Some((at, _)) if now.duration_since(at) < Duration::from_millis(500) => {
            Err("waiting for the next sample".to_string())
        }
        Some((_, before)) if before == total => Ok(total),
        prev => {
            *last = Some((now, total));
            Err(match prev {
                Some((_, before)) => format!("still flowing: {before} -> {total} bytes queued"),
                None => "first sample".to_string(),
            })
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn clients_that_stop_reading_do_not_freeze_other_requests_to_the_same_peer() {
    let mesh = TwoHop::start().await;
    let outbound = mesh.outbound_http;
    let client = mesh.http1();
    // The path works before anything stalls.
    eventually(DEADLINE, || async {
        send(&client, get(&TwoHop::url("/"))).await.map(|_| ())
    })
    .await;

    let mut stalled = Vec::new();
    for i in 0..STALLED {
        let s = stalled_download(outbound)
            .await
            .unwrap_or_else(|e| panic!("stalled download {i}: {e}"));
        stalled.push(s);
    }
    let ports: Vec<u16> = stalled
        .iter()
        .map(|s| s.local_addr().expect("a local address").port())
        .collect();

    // Stalled: every download's receive queue holds bytes nobody reads, and
    // the queues stopped growing (sampled at least 500 ms apart), so the
    // windows behind them are full.
    let mut last = None;
    let queued = eventually(DEADLINE, || {
        std::future::ready(settled(&ports, outbound.port(), &mut last))
    })
    .await;
    println!("stalled peers: {STALLED} downloads stalled, {queued} bytes queued between the client sidecar \
         and the clients");

    // The steady loop: every request must succeed, promptly.
    let mut latencies = Vec::with_capacity(NORMAL_REQUESTS);
    let mut failures = Vec::new();
    for i in 0..NORMAL_REQUESTS {
        let started = Instant::now();
        let reply = tokio::time::timeout(
            Duration::from_secs(10),
            send(&client, get(&TwoHop::url("/"))),
        )
        .await;
        match reply {
            Ok(Ok(r)) if r.status == 200 => latencies.push(started.elapsed()),
            Ok(Ok(r)) => failures.push(format!("request {i}: status {}", r.status)),
            Ok(Err(e)) => failures.push(format!("request {i}: {e}")),
            Err(_) => failures.push(format!("request {i}: no answer within 10s")),
        }
    }
    latencies.sort();
    let pct = |p: f64| {
        latencies
            .get(((latencies.len() as f64 * p).ceil() as usize).saturating_sub(1))
            .copied()
            .unwrap_or_default()
    };
    println!(
        "stalled peers: normal loop ok={}/{NORMAL_REQUESTS} p50={:?} p99={:?} max={:?}",
        latencies.len(),
        pct(0.50),
        pct(0.99),
        latencies.last().copied().unwrap_or_default()
    );
    assert!(
        failures.is_empty(),
        "{} of {NORMAL_REQUESTS} normal requests failed beside {STALLED} stalled downloads: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );

    // The downloads were stalled the whole time, not finished: each still
    // has unread bytes waiting.
    let rows = tcp_rows().expect("reading /proc/net/tcp");
    let still = ports
        .iter()
        .filter(|p| {
            rows.iter()
                .any(|r| r.local_port == **p && r.remote_port == outbound.port() && r.rx_queue > 0)
        })
        .count();
    assert_eq!(still, STALLED, "some stalled downloads ended early");
    drop(stalled);
}
