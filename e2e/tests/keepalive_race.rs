//! The classic "503 upstream reset": an app closes a keep-alive connection
//! just as the sidecar sends the next request on it. The sidecar must resend
//! such a request once on a new connection — for any method, since the app
//! sent no byte of a response — so the client never sees the race.
//!
//! The app here makes the race deterministic: on every connection it answers
//! the first request, then reads the second request whole and closes without
//! answering it (as if its keep-alive timer fired at that instant).

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use sane_e2e::harness::{Mesh, HTTP_PORT, OUTBOUND};
use sane_xds_proto::{Endpoint, Protocol, Service, ServicePort};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

const DEADLINE: Duration = Duration::from_secs(30);
const REQUESTS: usize = 40;

/// Counts of what the app did.
#[derive(Default)]
struct AppStats {
    answered: AtomicU64,
    dropped: AtomicU64,
}

/// Reads one request (head and `content-length` body); `None` at EOF.
async fn read_request<R: AsyncBufReadExt + Unpin>(rd: &mut R) -> Option<Vec<u8>> {
    let mut length = 0usize;
    let mut first = true;
    loop {
        let mut line = String::new();
        if rd.read_line(&mut line).await.ok()? == 0 {
            return None;
        }
        if line == "\r\n" && !first {
            break;
        }
        first = false;
        let lower = line.to_ascii_lowercase();
        if let Some(v) = lower.strip_prefix("content-length:") {
            length = v.trim().parse().ok()?;
        }
    }
    let mut body = vec![0u8; length];
    rd.read_exact(&mut body).await.ok()?;
    Some(body)
}

/// One connection of the app: answers the first request (echoing its
/// body), drops the second.
async fn serve(stream: TcpStream, stats: Arc<AppStats>) {
    let (rd, mut wr) = stream.into_split();
    let mut rd = BufReader::new(rd);
    let Some(body) = read_request(&mut rd).await else {
        return;
    };
    let head = format!(
        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\ncontent-type: text/plain\r\n\r\n",
        body.len()
    );
    if wr.write_all(head.as_bytes()).await.is_err() || wr.write_all(&body).await.is_err() {
        return;
    }
    stats.answered.fetch_add(1, Ordering::Relaxed);
    if read_request(&mut rd).await.is_some() {
        stats.dropped.fetch_add(1, Ordering::Relaxed);
    }
    // Dropping both halves closes the connection with no answer.
}

async fn start_app() -> (SocketAddr, Arc<AppStats>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stats = Arc::new(AppStats::default());
    let s = stats.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(serve(stream, s.clone()));
        }
    });
    (addr, stats)
}

async fn connect(addr: SocketAddr) -> SendRequest<Full<Bytes>> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    sender
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_lost_to_the_apps_keepalive_close_is_resent_once() {
    let (app, stats) = start_app().await;
    let mesh = Mesh::builder()
        .client_config(move |b| {
            b.resources.services.push(Service {
                name: "short-keepalive".to_string(),
                ports: vec![ServicePort {
                    name: "http".to_string(),
                    port: HTTP_PORT,
                    protocol: Protocol::Http.into(),
                    target_port: u32::from(app.port()),
                }],
                ..Default::default()
            });
            b.resources.endpoints.push(Endpoint {
                service: "short-keepalive".to_string(),
                address: app.ip().to_string(),
                ..Default::default()
            });
        })
        .start()
        .await;
    let outbound = mesh.client().listener(OUTBOUND);

    // One client connection, requests one after another: the sidecar reuses
    // its pooled connection to the app for every second request.
    let mut client = connect(outbound).await;
    let mut failures = Vec::new();
    for i in 0..REQUESTS {
        let payload = format!("payload {i} {}", "x".repeat(i * 100));
        let req = http::Request::post("/submit")
            .header(http::header::HOST, "short-keepalive")
            .body(Full::new(Bytes::from(payload.clone())))
            .unwrap();
        let reply = tokio::time::timeout(DEADLINE, async {
            // hyper's client takes a request only once the previous
            // exchange is finished on its side; sending earlier fails with
            // "connection was not ready" without writing anything.
            client.ready().await.map_err(|e| e.to_string())?;
            let rsp = client.send_request(req).await.map_err(|e| e.to_string())?;
            let status = rsp.status();
            let body = rsp.into_body().collect().await.map_err(|e| e.to_string())?;
            Ok::<_, String>((status, body.to_bytes()))
        })
        .await
        .unwrap_or_else(|_| Err(format!("request {i} hung past {DEADLINE:?}")));
        match reply {
            Ok((status, body)) if status == http::StatusCode::OK && body == payload => {}
            Ok((status, body)) => failures.push(format!(
                "request {i}: {status}, body {:?}",
                String::from_utf8_lossy(&body[..body.len().min(80)])
            )),
            Err(e) => {
                failures.push(format!("request {i}: {e}"));
                client = connect(outbound).await;
            }
        }
    }

    let (answered, dropped) = (
        stats.answered.load(Ordering::Relaxed),
        stats.dropped.load(Ordering::Relaxed),
    );
    println!(
        "keep-alive race: {REQUESTS} POSTs sent, {} ok, app answered {answered}, \
         closed {dropped} connections on a reused request",
        REQUESTS - failures.len()
    );
    assert!(failures.is_empty(), "requests failed: {failures:?}");
    assert_eq!(answered as usize, REQUESTS, "every request answered once");
    assert!(
        dropped > 0,
        "the race never happened: the sidecar did not reuse a connection"
    );
}
