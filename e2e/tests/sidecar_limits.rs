//! The sidecar's connection limits, through real sidecars: a slowloris
//! client is cut off at the header read timeout with 408, an oversized
//! request head gets 431, and a connection flood beyond `max_connections` is
//! closed at accept — while a normal client keeps getting 200 all along.

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use sane_e2e::harness::{eventually, metric_value, TwoHop, OUTBOUND};
use sane_xds_proto::ConnectionLimits;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const DEADLINE: Duration = Duration::from_secs(30);
const MAX_CONNECTIONS: u32 = 8;

/// Everything the server sent until it closed (or reset) the connection;
/// `None` if it was still open at the deadline.
async fn read_to_close<R: AsyncReadExt + Unpin>(stream: &mut R) -> Option<String> {
    let mut out = Vec::new();
    let read = tokio::time::timeout(DEADLINE, stream.read_to_end(&mut out)).await;
    // A reset after the answer still leaves the answer in `out`.
    read.ok()
        .map(|_| String::from_utf8_lossy(&out).into_owned())
}

/// A client that sends requests one after the other on one keep-alive
/// connection (a single connection of its own, not a pool: a pool may open a
/// second connection while the first is being returned, and during the flood
/// that one would rightly be refused) until `stop`; counts successes and
/// failures and keeps the first few failure reasons.
fn normal_traffic(
    mesh: &TwoHop,
    stop: Arc<AtomicBool>,
) -> (
    tokio::task::JoinHandle<Vec<String>>,
    Arc<AtomicU64>,
    Arc<AtomicU64>,
) {
    let addr = mesh.outbound_http;
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let (ok2, failed2) = (ok.clone(), failed.clone());
    let task = tokio::spawn(async move {
        let mut reasons = Vec::new();
        let mut fail = |reason: String| {
            failed2.fetch_add(1, Ordering::Relaxed);
            if reasons.len() < 5 {
                reasons.push(reason);
            }
        };
        let mut sender = None;
        while !stop.load(Ordering::Relaxed) {
            if sender.is_none() {
                match connect(addr).await {
                    Ok(s) => sender = Some(s),
                    Err(e) => {
                        fail(e);
                        continue;
                    }
                }
            }
            let s = sender.as_mut().expect("connected above");
            let req = http::Request::get("/echo")
                .header(http::header::HOST, "echo")
                .body(Empty::<Bytes>::new())
                .expect("a valid request");
            let reply = async {
                // A request sent before hyper's client finished the last
                // exchange fails with "connection was not ready", unsent.
                s.ready().await.map_err(|e| e.to_string())?;
                let rsp = s.send_request(req).await.map_err(|e| e.to_string())?;
                let status = rsp.status();
                rsp.into_body().collect().await.map_err(|e| e.to_string())?;
                Ok::<_, String>(status)
            }
            .await;
            match reply {
                Ok(http::StatusCode::OK) => {
                    ok2.fetch_add(1, Ordering::Relaxed);
                }
                Ok(status) => fail(format!("status {status}")),
                Err(e) => {
                    fail(e);
                    sender = None;
                }
            }
        }
        reasons
    });
    (task, ok, failed)
}

async fn connect(addr: SocketAddr) -> Result<SendRequest<Empty<Bytes>>, String> {
    let tcp = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connecting to {addr}: {e}"))?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .map_err(|e| format!("HTTP/1 handshake: {e}"))?;
    tokio::spawn(conn);
    Ok(sender)
}

async fn rejected(mesh: &TwoHop, name: &str, labels: &[(&str, &str)]) -> f64 {
    let text = mesh.client().metrics().await.unwrap_or_default();
    metric_value(&text, name, labels).unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_oversized_heads_and_floods_are_cut_while_normal_traffic_flows() {
    let builder = TwoHop::builder().client_config(|b| {
        let outbound = b
            .resources
            .listeners
            .iter_mut()
            .find(|l| l.name == OUTBOUND)
            .expect("the outbound listener");
        outbound.limits = Some(ConnectionLimits {
            header_read_timeout: 1_000,
            max_request_header_bytes: 8 * 1024,
            max_connections: MAX_CONNECTIONS,
            ..Default::default()
        });
    });
    let mesh = TwoHop::start_from(builder).await;
    let addr: SocketAddr = mesh.outbound_http;

    let stop = Arc::new(AtomicBool::new(false));
    let (traffic, ok, failed) = normal_traffic(&mesh, stop.clone());
    eventually(DEADLINE, || async {
        (ok.load(Ordering::Relaxed) > 0)
            .then_some(())
            .ok_or_else(|| "no normal request succeeded yet".to_string())
    })
    .await;

    // Slowloris: a request head that never ends, one header byte at a time
    // (for up to 20 s, far past the 1 s header read timeout).
    let slow = TcpStream::connect(addr).await.unwrap();
    let (mut rd, mut wr) = slow.into_split();
    wr.write_all(b"GET /echo HTTP/1.1\r\nhost: echo\r\n")
        .await
        .unwrap();
    let cut = Arc::new(AtomicBool::new(false));
    let cut2 = cut.clone();
    let dribble = tokio::spawn(async move {
        for b in b"x-slow: ".iter().cycle().take(200) {
            if cut2.load(Ordering::Relaxed) || wr.write_all(&[*b]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await; // allow-sleep: the slowloris pace itself
        }
    });
    let answer = read_to_close(&mut rd)
        .await
        .expect("the slowloris connection closed");
    cut.store(true, Ordering::Relaxed);
    dribble.await.unwrap();
    assert!(
        answer.starts_with("HTTP/1.1 408"),
        "slowloris got: {answer:?}"
    );

    // An oversized request head: 431, then the connection closes.
    let mut big = TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "GET /echo HTTP/1.1\r\nhost: echo\r\nx-big: {}\r\n\r\n",
        "a".repeat(16 * 1024)
    );
    big.write_all(head.as_bytes()).await.unwrap();
    let answer = read_to_close(&mut big)
        .await
        .expect("the connection closed");
    assert!(
        answer.starts_with("HTTP/1.1 431"),
        "oversized head got: {answer:?}"
    );

    // A flood of idle connections: those beyond the limit are closed at
    // once; the normal client's connection is not among them.
    let mut flood = Vec::new();
    for _ in 0..(MAX_CONNECTIONS * 3) {
        flood.push(TcpStream::connect(addr).await.unwrap());
    }
    let mut closed = 0;
    for conn in flood.iter_mut() {
        let mut byte = [0u8; 1];
        // An accepted idle connection stays silent; a refused one reads EOF.
        if let Ok(Ok(0)) =
            tokio::time::timeout(Duration::from_millis(500), conn.read(&mut byte)).await
        {
            closed += 1;
        }
    }
    assert!(
        closed >= MAX_CONNECTIONS as usize,
        "only {closed} of {} flood connections were refused",
        MAX_CONNECTIONS * 3
    );
    drop(flood);
    let before = ok.load(Ordering::Relaxed);
    eventually(DEADLINE, || async {
        (ok.load(Ordering::Relaxed) > before + 10)
            .then_some(())
            .ok_or_else(|| "normal traffic stalled after the flood".to_string())
    })
    .await;

    stop.store(true, Ordering::Relaxed);
    let reasons = traffic.await.unwrap();
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    println!("sidecar limits: normal traffic ok={ok} failed={failed}, flood refused={closed}");
    assert_eq!(failed, 0, "normal requests failed ({ok} ok): {reasons:?}");

    let listener = [("listener", OUTBOUND)];
    assert!(rejected(&mesh, "sane_listener_connections_rejected_total", &listener).await >= 1.0);
    for reason in ["header_timeout", "header_too_large"] {
        let labels = [("listener", OUTBOUND), ("reason", reason)];
        let n = rejected(&mesh, "sane_http_requests_rejected_total", &labels).await;
        assert!(n >= 1.0, "{reason} counted {n} times");
    }
}
