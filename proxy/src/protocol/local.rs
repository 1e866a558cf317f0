//! Serving the proxy's own small HTTP/1.1 servers (admin, health): one
//! accept loop for both, with the limits a server that is not on the data
//! path still needs.
//!
//! * at most [`MAX_CONNECTIONS`] connections at once; a connection over the
//!   cap is closed at accept and counted (the proxy counts it in
//!   `sane_listener_connections_rejected_total{listener="admin"|"health"}`),
//!   so stuck clients cannot make the server hold memory without bound;
//! * [`HEADER_READ_TIMEOUT`] for a request head (slowloris);
//! * the loop ends when `stop` is cancelled; connections in progress finish.

use crate::body::{self, Body};
use crate::drain::Drain;
use crate::listener::{accept_loop, AcceptLimits};
use http::{header, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus::IntCounter;
use std::convert::Infallible;
use std::future::Future;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Connections one local server holds at once.
pub const MAX_CONNECTIONS: usize = 64;

/// Time a client may take to send a request head.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves HTTP/1.1 on `socket` with `handle` until `stop` is cancelled.
/// `name` labels the server in logs; `rejected` counts connections closed
/// at the cap.
pub async fn serve_local<H, F>(
    name: &'static str,
    socket: TcpListener,
    stop: CancellationToken,
    rejected: IntCounter,
    handle: H,
) where
    H: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    // The data path's drain must not stop these servers (the admin reports
    // "draining" while it runs): they get their own, started by `stop`.
    let own = Drain::default();
    let limits = AcceptLimits {
        max_connections: MAX_CONNECTIONS,
        rejected,
        overload: None,
    };
    let accept = accept_loop(&socket, name, limits, &own, move |stream, _peer| {
        let handle = handle.clone();
        let svc = hyper::service::service_fn(move |req| {
            let rsp = handle(req);
            async move { Ok::<_, Infallible>(rsp.await) }
        });
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_READ_TIMEOUT)
            .serve_connection(TokioIo::new(stream), svc);
        Some(async move {
            let _ = conn.await;
        })
    });
    tokio::select! {
        () = accept => {}
        () = stop.cancelled() => own.start(),
    }
}

/// A plain-text response (the admin and health servers answer with it).
pub(crate) fn text(status: StatusCode, msg: &str) -> Response<Body> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .body(body::full(msg.to_string()))
        .expect("valid response")
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::StatusCode;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    async fn server() -> (std::net::SocketAddr, CancellationToken, IntCounter) {
        let socket = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        let stop = CancellationToken::new();
        let rejected = IntCounter::new("rejected", "test").unwrap();
        tokio::spawn(serve_local(
            "test",
            socket,
            stop.clone(),
            rejected.clone(),
            |req: Request<Incoming>| async move { super::text(StatusCode::OK, req.uri().path()) },
        ));
        (addr, stop, rejected)
    }

    async fn get(addr: std::net::SocketAddr, path: &str) -> String {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn answers_with_the_handler() {
        let (addr, _stop, _) = server().await;
        let rsp = get(addr, "/ready").await;
        assert!(rsp.starts_with("HTTP/1.1 200"), "{rsp}");
        assert!(rsp.contains("/ready"), "{rsp}");
    }

    #[tokio::test]
    async fn a_connection_over_the_cap_is_closed_and_the_server_recovers() {
        let (addr, _stop, rejected) = server().await;
        // Hold every slot with a connection that sent nothing.
        let mut held = Vec::new();
        for _ in 0..MAX_CONNECTIONS {
            held.push(TcpStream::connect(addr).await.unwrap());
        }
        // The server has accepted them all once a request on a held
        // connection is answered (accepts are in order).
        let last = held.last_mut().unwrap();
        last.write_all(b"GET /probe HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 12];
        last.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"HTTP/1.1 200");

        let mut over = TcpStream::connect(addr).await.unwrap();
        let mut rest = Vec::new();
        let n = tokio::time::timeout(Duration::from_secs(10), over.read_to_end(&mut rest))
            .await
            .expect("the connection over the cap is closed, not left waiting")
            .unwrap_or(0);
        assert_eq!(n, 0, "closed without an answer");
        assert_eq!(rejected.get(), 1);

        drop(held);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let mut s = TcpStream::connect(addr).await.unwrap();
            let _ = s
                .write_all(b"GET /again HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
                .await;
            let mut out = String::new();
            let _ = s.read_to_string(&mut out).await;
            if out.starts_with("HTTP/1.1 200") {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "slots were not given back"
            );
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_head_that_never_ends_is_cut() {
        let (addr, _stop, _) = server().await;
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /slow HTTP/1.1\r\nhost: x\r\n")
            .await
            .unwrap();
        let mut out = Vec::new();
        // Paused time jumps to the next timer once everything is idle: the
        // header timer fires well before this test's own bound.
        tokio::time::timeout(HEADER_READ_TIMEOUT * 6, s.read_to_end(&mut out))
            .await
            .expect("the server cut the connection")
            .ok();
        let out = String::from_utf8_lossy(&out);
        assert!(out.is_empty() || out.starts_with("HTTP/1.1 408"), "{out}");
    }
}
