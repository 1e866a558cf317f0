//! Tests of the connection server: limits, drain, parking.

use super::*;
use crate::error::ProxyError;
use crate::Body;
use http::{Request, Response};
use tokio::io::{AsyncReadExt, DuplexStream};
use tower::util::BoxCloneSyncService;

fn ok() -> HttpSvc {
    BoxCloneSyncService::new(tower::service_fn(|_req: Request<Body>| async {
        Ok::<_, ProxyError>(Response::new(crate::body::full("ok")))
    }))
}

fn limits() -> (HttpLimits, LimitMetrics) {
    let metrics = LimitMetrics::register(&Registry::new()).unwrap();
    let cfg = ConnectionLimits {
        max_request_header_bytes: 8192,
        header_read_timeout: 5_000,
        idle_timeout: 60_000,
        ..Default::default()
    };
    (HttpLimits::new(&cfg, metrics.for_listener("l")), metrics)
}

fn serve(server: DuplexStream, svc: HttpSvc, framed: Framed) -> tokio::task::JoinHandle<()> {
    let (l, _) = limits();
    serve_with(server, svc, framed, l)
}

fn serve_with(
    server: DuplexStream,
    svc: HttpSvc,
    framed: Framed,
    l: HttpLimits,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move { serve_http(server, svc, framed, &l, Drain::default()).await })
}

async fn read_all(io: &mut DuplexStream) -> String {
    let mut out = Vec::new();
    let _ = io.read_to_end(&mut out).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(start_paused = true)]
async fn a_slow_request_head_gets_408_at_the_timeout() {
    let (l, metrics) = limits();
    let (mut client, server) = tokio::io::duplex(64 * 1024);
    let served = serve_with(server, ok(), Framed::Auto, l.clone());
    client.write_all(b"GET / HTTP/1.1\r\nHo").await.unwrap();
    let started = Instant::now();
    // The client never finishes its head; the server answers and closes.
    let answer = read_all(&mut client).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("connection: close"), "{answer}");
    assert!(started.elapsed() >= l.header_read_timeout);
    served.await.unwrap();
    let c = metrics.for_listener("l");
    assert_eq!(c.header_timeout.get(), 1);
}

#[tokio::test(start_paused = true)]
async fn an_idle_keep_alive_connection_outlives_the_header_timeout() {
    let (l, metrics) = limits();
    let (mut client, server) = tokio::io::duplex(64 * 1024);
    let served = serve_with(server, ok(), Framed::Http1, l.clone());
    client
        .write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 1024];
    let n = client.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    // Idle well past the header timeout: still open, a second request works.
    tokio::time::sleep(l.header_read_timeout * 3).await;
    client
        .write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    let n = client.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"), "{:?}", &buf[..n]);
    // Past the idle timeout it is closed, without a 408.
    let started = Instant::now();
    let rest = read_all(&mut client).await;
    assert_eq!(rest, "", "closed silently");
    assert!(started.elapsed() >= l.idle_timeout);
    served.await.unwrap();
    let c = metrics.for_listener("l");
    assert_eq!((c.idle_closed.get(), c.header_timeout.get()), (1, 0));
}

#[tokio::test(start_paused = true)]
async fn an_idle_http1_connection_is_parked_and_resumed() {
    let (l, metrics) = limits();
    let c = metrics.for_listener("l");
    let (mut client, server) = tokio::io::duplex(64 * 1024);
    let served = serve_with(server, ok(), Framed::Auto, l.clone());
    let mut buf = vec![0u8; 1024];
    for parked in 1..=3 {
        client
            .write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
            .await
            .unwrap();
        let n = client.read(&mut buf).await.unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"), "{:?}", &buf[..n]);
        assert!(buf[..n].ends_with(b"ok"), "{:?}", &buf[..n]);
        tokio::time::sleep(PARK_AFTER * 2).await;
        assert_eq!(c.parked.get(), parked);
    }
    // A resumed connection still has the head timer: a head started
    // and not finished gets 408.
    client.write_all(b"GET / HTTP/1.1\r\nHo").await.unwrap();
    let answer = read_all(&mut client).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    served.await.unwrap();
    assert_eq!((c.header_timeout.get(), c.idle_closed.get()), (1, 0));
}

#[tokio::test(start_paused = true)]
async fn a_pipelined_partial_head_is_not_lost_to_parking() {
    let (l, metrics) = limits();
    let c = metrics.for_listener("l");
    let (mut client, server) = tokio::io::duplex(64 * 1024);
    serve_with(server, ok(), Framed::Http1, l);
    // The first request and the start of the second in one write.
    client
        .write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\nGET / HTTP/1.1\r\nHo")
        .await
        .unwrap();
    let mut buf = vec![0u8; 1024];
    let n = client.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"), "{:?}", &buf[..n]);
    // hyper holds the partial head: the connection is not parked.
    tokio::time::sleep(PARK_AFTER * 2).await;
    assert_eq!(c.parked.get(), 0);
    client.write_all(b"st: a\r\n\r\n").await.unwrap();
    let n = client.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"), "{:?}", &buf[..n]);
    tokio::time::sleep(PARK_AFTER * 2).await;
    assert_eq!(c.parked.get(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_parked_connection_closes_at_the_drain() {
    let (l, metrics) = limits();
    let (mut client, server) = tokio::io::duplex(64 * 1024);
    let drain = Drain::default();
    let d = drain.clone();
    let served = tokio::spawn(async move {
        serve_http(server, ok(), Framed::Auto, &l, d).await;
    });
    client
        .write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 1024];
    let n = client.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    tokio::time::sleep(PARK_AFTER * 2).await;
    assert_eq!(metrics.for_listener("l").parked.get(), 1);
    drain.start();
    assert_eq!(read_all(&mut client).await, "", "closed silently");
    served.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_drain_lets_the_request_in_flight_finish_then_closes() {
    let (l, _) = limits();
    let (called_tx, called) = tokio::sync::oneshot::channel::<()>();
    let (release, released) = tokio::sync::oneshot::channel::<()>();
    let gates = Arc::new(Mutex::new(Some((called_tx, released))));
    let svc = BoxCloneSyncService::new(tower::service_fn(move |_req: Request<Body>| {
        let gate = gates.lock().unwrap().take();
        async move {
            if let Some((called, released)) = gate {
                let _ = called.send(());
                let _ = released.await;
            }
            Ok::<_, ProxyError>(Response::new(crate::body::full("ok")))
        }
    }));
    let (mut client, server) = tokio::io::duplex(64 * 1024);
    let drain = Drain::default();
    let d = drain.clone();
    let served = tokio::spawn(async move {
        serve_http(server, svc, Framed::Http1, &l, d).await;
    });
    client
        .write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    called.await.unwrap();
    drain.start();
    release.send(()).unwrap();
    // The answer still comes, then the connection closes.
    let answer = read_all(&mut client).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with("ok"), "{answer}");
    served.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn an_http2_stream_ending_in_its_own_task_starts_the_idle_timer() {
    // hyper's server (a task per stream) and h2 directly (the streams in
    // the connection's task).
    for framed in [Framed::Http2, Framed::PeerHttp2] {
        http2_stream_end_starts_the_idle_timer(framed).await;
    }
}

async fn http2_stream_end_starts_the_idle_timer(framed: Framed) {
    let (l, metrics) = limits();
    // Answered after the idle timeout: the watcher's timer has fired
    // (and found a request in flight, so it is not set) before the
    // stream ends, in the stream's own task; the timer must be set
    // again from there.
    let slow = BoxCloneSyncService::new(tower::service_fn(|_req: Request<Body>| async {
        tokio::time::sleep(Duration::from_secs(90)).await;
        Ok::<_, ProxyError>(Response::new(crate::body::full("ok")))
    }));
    let (client, server) = tokio::io::duplex(64 * 1024);
    let served = serve_with(server, slow, framed, l.clone());
    let (mut sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .handshake::<_, Body>(TokioIo::new(client))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = Request::get("http://a/")
        .body(crate::body::empty())
        .unwrap();
    let rsp = sender.send_request(req).await.unwrap();
    let body = http_body_util::BodyExt::collect(rsp.into_body()).await;
    assert_eq!(body.unwrap().to_bytes(), "ok");
    let ended = Instant::now();
    tokio::time::timeout(l.idle_timeout * 2, served)
        .await
        .expect("closed by the idle timeout")
        .unwrap();
    assert!(ended.elapsed() >= l.idle_timeout - Duration::from_millis(1));
    assert_eq!(metrics.for_listener("l").idle_closed.get(), 1);
    drop(sender);
}

#[test]
fn the_connection_future_is_small() {
    let (l, _) = limits();
    let (_client, server) = tokio::io::duplex(1024);
    let fut = serve_http(server, ok(), Framed::Auto, &l, Drain::default());
    let (_client, server) = tokio::io::duplex(1024);
    let (state, drain) = (Arc::new(ConnState::new(false)), Drain::default());
    let watched = Watched::new(Arc::new(Mutex::new(server)), state.clone(), None);
    let run = run(watched, ok(), Framed::Auto, &l, &state, &drain);
    println!(
        "serve_http future: {} bytes; hyper's connection (boxed, freed while parked): {} bytes",
        std::mem::size_of_val(&fut),
        std::mem::size_of_val(&run)
    );
    // hyper's connection lives in its own allocation, not in every
    // connection's task.
    assert!(std::mem::size_of_val(&fut) < 1024);
}

#[tokio::test]
async fn an_oversized_request_head_gets_431() {
    let (l, metrics) = limits();
    let (mut client, server) = tokio::io::duplex(256 * 1024);
    serve_with(server, ok(), Framed::Auto, l);
    let big = "x".repeat(20_000);
    let req = format!("GET / HTTP/1.1\r\nHost: a\r\nX-Big: {big}\r\n\r\n");
    client.write_all(req.as_bytes()).await.unwrap();
    let answer = read_all(&mut client).await;
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
    assert!(
        answer.contains("x-sane-response-flags: DPE\r\n"),
        "{answer}"
    );
    let c = metrics.for_listener("l");
    assert_eq!(c.header_too_large.get(), 1);
}

#[tokio::test]
async fn an_oversized_http2_header_list_gets_431() {
    for framed in [Framed::Auto, Framed::PeerHttp2] {
        oversized_http2_header_list(framed).await;
    }
}

async fn oversized_http2_header_list(framed: Framed) {
    let (client, server) = tokio::io::duplex(256 * 1024);
    serve(server, ok(), framed);
    let (mut sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .handshake::<_, Body>(TokioIo::new(client))
        .await
        .unwrap();
    tokio::spawn(conn);
    let small = Request::get("http://a/")
        .body(crate::body::empty())
        .unwrap();
    let rsp = sender.send_request(small).await.unwrap();
    assert_eq!(rsp.status(), 200);
    let big = Request::get("http://a/")
        .header("x-big", "x".repeat(20_000))
        .body(crate::body::empty())
        .unwrap();
    match sender.send_request(big).await {
        Ok(rsp) => assert_eq!(rsp.status(), 431),
        Err(e) => panic!("expected a 431 answer, got {e}"),
    }
}

#[tokio::test(start_paused = true)]
async fn a_complete_request_is_served() {
    let (mut client, server) = tokio::io::duplex(64 * 1024);
    serve(server, ok(), Framed::Auto);
    client
        .write_all(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let answer = read_all(&mut client).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

#[tokio::test]
async fn an_error_answer_to_an_unread_body_says_connection_close() {
    let failing = BoxCloneSyncService::new(tower::service_fn(|_req: Request<Body>| async {
        Err::<Response<Body>, _>(ProxyError::NoHealthyUpstream {
            cluster: "c".into(),
        })
    }));
    let (mut client, server) = tokio::io::duplex(64 * 1024);
    serve(server, failing, Framed::Http1);
    // The body is announced but not sent yet: the proxy answers first.
    client
        .write_all(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\nab")
        .await
        .unwrap();
    let answer = read_all(&mut client).await;
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains("connection: close"), "{answer}");
}

#[tokio::test]
async fn an_error_answer_after_the_whole_body_keeps_the_connection() {
    let failing = BoxCloneSyncService::new(tower::service_fn(|req: Request<Body>| async {
        let _ = http_body_util::BodyExt::collect(req.into_body()).await;
        Err::<Response<Body>, _>(ProxyError::NoHealthyUpstream {
            cluster: "c".into(),
        })
    }));
    let (mut client, server) = tokio::io::duplex(64 * 1024);
    serve(server, failing, Framed::Http1);
    client
        .write_all(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nab")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = client.read(&mut buf).await.unwrap();
    let answer = String::from_utf8_lossy(&buf[..n]);
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(!answer.contains("connection: close"), "{answer}");
}

fn limits_with(edit: impl FnOnce(&mut ConnectionLimits)) -> (HttpLimits, LimitMetrics) {
    let metrics = LimitMetrics::register(&Registry::new()).unwrap();
    let mut cfg = ConnectionLimits {
        idle_timeout: 600_000,
        ..Default::default()
    };
    edit(&mut cfg);
    (HttpLimits::new(&cfg, metrics.for_listener("l")), metrics)
}

/// Reads the whole request body, then answers with its length (as the
/// upstream does, failing the request when the body fails).
fn reads_body() -> HttpSvc {
    use http_body_util::BodyExt;
    BoxCloneSyncService::new(tower::service_fn(|req: Request<Body>| async move {
        match req.into_body().collect().await {
            Ok(b) => Ok(Response::new(crate::body::full(
                b.to_bytes().len().to_string(),
            ))),
            Err(e) => Err(ProxyError::BadRequest {
                reason: e.to_string(),
            }),
        }
    }))
}

#[tokio::test(start_paused = true)]
async fn a_connection_that_never_speaks_is_closed_at_the_first_byte_timeout() {
    let (l, metrics) = limits_with(|c| c.first_byte_timeout = 2_000);
    let (mut client, server) = tokio::io::duplex(64 * 1024);
    let served = serve_with(server, ok(), Framed::Auto, l.clone());
    let started = Instant::now();
    assert_eq!(read_all(&mut client).await, "", "closed without a word");
    let took = started.elapsed();
    assert!(
        took >= l.first_byte_timeout && took < l.idle_timeout,
        "{took:?}"
    );
    served.await.unwrap();
    let c = metrics.for_listener("l");
    assert_eq!((c.first_byte_timeout.get(), c.idle_closed.get()), (1, 0));
}

#[tokio::test(start_paused = true)]
async fn a_dribbled_request_body_gets_408_at_its_deadline() {
    let (l, metrics) = limits_with(|c| {
        c.request_body_timeout = 1_000;
        c.request_body_min_rate = 1024;
    });
    let (client, server) = tokio::io::duplex(64 * 1024);
    let served = serve_with(server, reads_body(), Framed::Http1, l.clone());
    let (mut rd, mut wr) = tokio::io::split(client);
    wr.write_all(b"POST / HTTP/1.1\r\nHost: a\r\ncontent-length: 1000\r\n\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    let dribble = tokio::spawn(async move {
        // One byte every 300 ms: never a gap of a whole second, but far
        // below the minimum rate.
        while wr.write_all(b"x").await.is_ok() {
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    });
    let mut answer = Vec::new();
    let _ = rd.read_to_end(&mut answer).await;
    let answer = String::from_utf8_lossy(&answer);
    let took = started.elapsed();
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("x-sane-response-flags: SI"), "{answer}");
    assert!(answer.contains("connection: close"), "{answer}");
    assert!(took >= l.request_body_timeout, "{took:?}");
    assert!(took < l.request_body_timeout * 2, "{took:?}");
    served.await.unwrap();
    dribble.abort();
    assert_eq!(metrics.for_listener("l").body_timeout.get(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_request_body_above_the_minimum_rate_is_not_cut() {
    let (l, metrics) = limits_with(|c| {
        c.request_body_timeout = 1_000;
        c.request_body_min_rate = 1024;
    });
    let (client, server) = tokio::io::duplex(64 * 1024);
    let served = serve_with(server, reads_body(), Framed::Http1, l.clone());
    let (mut rd, mut wr) = tokio::io::split(client);
    wr.write_all(b"POST / HTTP/1.1\r\nHost: a\r\ncontent-length: 10000\r\n\r\n")
        .await
        .unwrap();
    // 2000 bytes every 500 ms (4 KiB/s) for 2.5 s: well past the grace.
    for _ in 0..5 {
        wr.write_all(&[b'x'; 2000]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let mut buf = vec![0u8; 1024];
    let n = rd.read(&mut buf).await.unwrap();
    let answer = String::from_utf8_lossy(&buf[..n]);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with("10000"), "{answer}");
    drop((rd, wr));
    served.await.unwrap();
    assert_eq!(metrics.for_listener("l").body_timeout.get(), 0);
}

#[tokio::test(start_paused = true)]
async fn timeouts_shrink_for_open_connections_when_the_listener_fills() {
    let (mut l, metrics) = limits_with(|c| c.first_byte_timeout = 10_000);
    let overload = Arc::new(Overload::new(10, 50));
    l.overload = overload.clone();
    let (mut client, server) = tokio::io::duplex(64 * 1024);
    let served = serve_with(server, ok(), Framed::Auto, l.clone());
    tokio::time::sleep(Duration::from_secs(1)).await;
    // The listener fills: the first-byte timeout shrinks to 1 % (100 ms),
    // already past for this connection, which closes at once.
    let started = Instant::now();
    let _open: Vec<_> = (0..10).map(|_| overload.open()).collect();
    assert_eq!(read_all(&mut client).await, "");
    assert!(
        started.elapsed() < Duration::from_millis(50),
        "{:?}",
        started.elapsed()
    );
    served.await.unwrap();
    assert_eq!(metrics.for_listener("l").first_byte_timeout.get(), 1);
}

#[tokio::test]
async fn too_many_request_headers_get_431_with_its_flag() {
    let (l, metrics) = limits();
    let (mut client, server) = tokio::io::duplex(256 * 1024);
    serve_with(server, ok(), Framed::Auto, l);
    let mut req = String::from("GET / HTTP/1.1\r\nHost: a\r\n");
    for i in 0..120 {
        req.push_str(&format!("x-h{i}: v\r\n"));
    }
    req.push_str("\r\n");
    client.write_all(req.as_bytes()).await.unwrap();
    let answer = read_all(&mut client).await;
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
    assert!(
        answer.contains("x-sane-response-flags: DPE\r\n"),
        "{answer}"
    );
    assert!(answer.contains("connection: close\r\n"), "{answer}");
    assert!(answer.ends_with("header fields or bytes)\n"), "{answer}");
    assert_eq!(metrics.for_listener("l").header_too_large.get(), 1);
}

#[tokio::test]
async fn a_malformed_head_gets_400_with_its_flag() {
    let (l, metrics) = limits();
    let (mut client, server) = tokio::io::duplex(64 * 1024);
    let served = serve_with(server, ok(), Framed::Auto, l);
    client
        .write_all(b"GET / HTTP/1.1\r\nHost: a\r\nBad Header: x\r\n\r\n")
        .await
        .unwrap();
    let answer = read_all(&mut client).await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(
        answer.contains("x-sane-response-flags: DPE\r\n"),
        "{answer}"
    );
    served.await.unwrap();
    assert_eq!(metrics.for_listener("l").malformed.get(), 1);
}

#[tokio::test]
async fn two_host_headers_get_400() {
    let (l, metrics) = limits();
    let (mut client, server) = tokio::io::duplex(64 * 1024);
    serve_with(server, ok(), Framed::Http1, l);
    client
        .write_all(b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n")
        .await
        .unwrap();
    let answer = read_all(&mut client).await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(
        answer.contains("x-sane-response-flags: DPE\r\n"),
        "{answer}"
    );
    assert!(answer.contains("more than one Host"), "{answer}");
    assert_eq!(metrics.for_listener("l").malformed.get(), 1);
}

#[tokio::test]
async fn both_lengths_get_400_even_after_other_requests() {
    let seen = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = seen.clone();
    let svc = BoxCloneSyncService::new(tower::service_fn(move |req: Request<Body>| {
        counted.fetch_add(1, Ordering::SeqCst);
        async move {
            let _ = http_body_util::BodyExt::collect(req.into_body()).await;
            Ok::<_, ProxyError>(Response::new(crate::body::full("ok")))
        }
    }));
    let (mut client, server) = tokio::io::duplex(64 * 1024);
    serve(server, svc, Framed::Auto);
    client
        .write_all(
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello\
              POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\
              Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        )
        .await
        .unwrap();
    let answer = read_all(&mut client).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let second = &answer[answer.find("ok").unwrap() + 2..];
    assert!(second.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(
        second.contains("Content-Length and Transfer-Encoding"),
        "{answer}"
    );
    assert_eq!(
        seen.load(Ordering::SeqCst),
        1,
        "only the first reached the stack"
    );
}

#[tokio::test]
async fn too_many_http2_headers_get_431() {
    for framed in [Framed::Auto, Framed::PeerHttp2] {
        too_many_http2_headers(framed).await;
    }
}

async fn too_many_http2_headers(framed: Framed) {
    let (client, server) = tokio::io::duplex(256 * 1024);
    serve(server, ok(), framed);
    let (mut sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .handshake::<_, Body>(TokioIo::new(client))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut req = Request::get("http://a/");
    for i in 0..101 {
        req = req.header(format!("x-h{i}"), "v");
    }
    let rsp = sender
        .send_request(req.body(crate::body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(rsp.status(), 431);
    assert_eq!(rsp.headers()["x-sane-response-flags"], "DPE");
}

/// A service answering with the request's body and its length in the
/// trailer `x-bytes`.
fn echo_with_trailers() -> HttpSvc {
    BoxCloneSyncService::new(tower::service_fn(|req: Request<Body>| async move {
        let got = http_body_util::BodyExt::collect(req.into_body())
            .await
            .map_err(|e| ProxyError::BadRequest {
                reason: e.to_string(),
            })?;
        let bytes = got.to_bytes();
        let mut trailers = http::HeaderMap::new();
        trailers.insert("x-bytes", bytes.len().into());
        let frames = [
            Ok::<_, Infallible>(http_body::Frame::data(bytes)),
            Ok(http_body::Frame::trailers(trailers)),
        ];
        let body = http_body_util::StreamBody::new(futures::stream::iter(frames));
        Ok::<_, ProxyError>(Response::new(crate::body::boxed(body)))
    }))
}

/// An h2 client on `client` (its connection driven in a task).
async fn h2_client(client: DuplexStream) -> h2::client::SendRequest<bytes::Bytes> {
    let (sender, conn) = h2::client::handshake(client).await.unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    sender
}

#[tokio::test]
async fn http2_served_directly_carries_bodies_and_trailers_on_concurrent_streams() {
    let (client, server) = tokio::io::duplex(256 * 1024);
    serve(server, echo_with_trailers(), Framed::PeerHttp2);
    let sender = h2_client(client).await;
    let one = |n: usize| {
        let sender = sender.clone();
        async move {
            let mut sender = sender.ready().await.unwrap();
            let req = Request::post("http://a/").body(()).unwrap();
            let (rsp, mut tx) = sender.send_request(req, false).unwrap();
            tx.send_data(bytes::Bytes::from(vec![7u8; n]), true)
                .unwrap();
            let rsp = rsp.await.unwrap();
            assert_eq!(rsp.status(), 200);
            let mut body = rsp.into_body();
            let mut got = 0;
            while let Some(chunk) = body.data().await {
                let chunk = chunk.unwrap();
                let _ = body.flow_control().release_capacity(chunk.len());
                got += chunk.len();
            }
            let trailers = body.trailers().await.unwrap().expect("trailers");
            (got, trailers["x-bytes"].to_str().unwrap().to_string())
        }
    };
    // Larger than a stream's initial window from the client's side too.
    let (a, b) = tokio::join!(one(10), one(200_000));
    assert_eq!(a, (10, "10".to_string()));
    assert_eq!(b, (200_000, "200000".to_string()));
}

#[tokio::test]
async fn http2_served_directly_drops_the_request_a_client_reset() {
    let (dropped_tx, dropped) = tokio::sync::oneshot::channel::<()>();
    let (called_tx, called) = tokio::sync::oneshot::channel::<()>();
    let gates = Arc::new(Mutex::new(Some((called_tx, dropped_tx))));
    // Never answers; what it holds is dropped with the request.
    let svc = BoxCloneSyncService::new(tower::service_fn(move |_req: Request<Body>| {
        let gate = gates.lock().unwrap().take();
        async move {
            let (called, _held_until_dropped) = gate.expect("one request");
            let _ = called.send(());
            futures::future::pending::<Result<Response<Body>, ProxyError>>().await
        }
    }));
    let (client, server) = tokio::io::duplex(64 * 1024);
    serve(server, svc, Framed::PeerHttp2);
    let mut sender = h2_client(client).await.ready().await.unwrap();
    let req = Request::get("http://a/").body(()).unwrap();
    let (_rsp, mut tx) = sender.send_request(req, true).unwrap();
    called.await.unwrap();
    tx.send_reset(h2::Reason::CANCEL);
    // The sender half was held by the request being served: dropped.
    assert!(dropped.await.is_err());
}

#[tokio::test(start_paused = true)]
async fn http2_served_directly_finishes_its_streams_at_the_drain_then_closes() {
    let (l, _) = limits();
    let (called_tx, called) = tokio::sync::oneshot::channel::<()>();
    let (release, released) = tokio::sync::oneshot::channel::<()>();
    let gates = Arc::new(Mutex::new(Some((called_tx, released))));
    let svc = BoxCloneSyncService::new(tower::service_fn(move |_req: Request<Body>| {
        let gate = gates.lock().unwrap().take();
        async move {
            if let Some((called, released)) = gate {
                let _ = called.send(());
                let _ = released.await;
            }
            Ok::<_, ProxyError>(Response::new(crate::body::full("ok")))
        }
    }));
    let (client, server) = tokio::io::duplex(64 * 1024);
    let drain = Drain::default();
    let d = drain.clone();
    let served =
        tokio::spawn(async move { serve_http(server, svc, Framed::PeerHttp2, &l, d).await });
    let mut sender = h2_client(client).await.ready().await.unwrap();
    let req = Request::get("http://a/").body(()).unwrap();
    let (rsp, _) = sender.send_request(req, true).unwrap();
    called.await.unwrap();
    drain.start();
    release.send(()).unwrap();
    let mut body = rsp.await.unwrap().into_body();
    assert_eq!(body.data().await.unwrap().unwrap(), "ok");
    tokio::time::timeout(Duration::from_secs(30), served)
        .await
        .expect("the connection closes once its stream ended")
        .unwrap();
}
