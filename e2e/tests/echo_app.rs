//! `sane-echo` on its own, no proxy: proves the test app and the harness
//! before any mesh test relies on them.

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use http::{Method, StatusCode};
use http_body_util::BodyExt;
use sane_e2e::echo::pattern_byte;
use sane_e2e::echo::proto::{EchoRequest, FAIL_MESSAGE, TRAILER};
use sane_e2e::harness::http::{
    full, get, h2c_client, http1_client, request, send, send_h2c, streamed, tcp_roundtrip,
    ws_connect,
};
use sane_e2e::harness::{EchoApp, EchoClient, Signal};
use sha2::{Digest, Sha256};
use std::future::Future;
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

const TEN_MIB: usize = 10 * 1024 * 1024;

/// Bounds a whole test, so a hung connection fails it instead of hanging CI.
/// The binaries are built first, outside the bound (a cold build is slow).
async fn within<T>(body: impl Future<Output = T>) -> T {
    sane_e2e::harness::echo_bin();
    tokio::time::timeout(Duration::from_secs(60), body)
        .await
        .expect("the test did not finish within 60s")
}

/// `len` bytes of the `/bytes` pattern, in 64 KiB chunks.
fn pattern_chunks(len: usize) -> Vec<Bytes> {
    let data: Vec<u8> = (0..len as u64).map(pattern_byte).collect();
    data.chunks(64 * 1024).map(Bytes::copy_from_slice).collect()
}

fn hex_sha256(chunks: &[Bytes]) -> String {
    let mut h = Sha256::new();
    for c in chunks {
        h.update(c);
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test]
async fn http1_get_describes_the_request() {
    within(async {
        let app = EchoApp::start("echo-a").await;
        let mut req = get(&app.http_url("/some/path?q=1"));
        req.headers_mut().insert("x-test", "hello".parse().unwrap());
        let reply = send(&http1_client(), req).await.unwrap();
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.header("x-echo-name"), Some("echo-a"));
        let json = reply.json().unwrap();
        assert_eq!(json["name"], "echo-a");
        assert_eq!(json["method"], "GET");
        assert_eq!(json["path"], "/some/path");
        assert_eq!(json["version"], "HTTP/1.1");
        assert_eq!(json["host"], app.addrs.http.to_string());
        assert_eq!(json["headers"]["x-test"], "hello");
    })
    .await
}

#[tokio::test]
async fn h2c_get_reports_http2() {
    within(async {
        let app = EchoApp::start("echo-h2").await;
        let reply = send(&h2c_client(), get(&app.http_url("/"))).await.unwrap();
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.version, http::Version::HTTP_2);
        assert_eq!(reply.header("x-echo-name"), Some("echo-h2"));
        let json = reply.json().unwrap();
        assert_eq!(json["version"], "HTTP/2.0");
        assert_eq!(json["host"], app.addrs.http.to_string());
    })
    .await
}

#[tokio::test]
async fn sha256_of_a_streamed_10_mib_body() {
    within(async {
        let app = EchoApp::start("echo-sha").await;
        let chunks = pattern_chunks(TEN_MIB);
        let want = hex_sha256(&chunks);
        for client in [http1_client(), h2c_client()] {
            let body = streamed(futures::stream::iter(chunks.clone()));
            let req = request(Method::POST, &app.http_url("/sha256"), body);
            let reply = send(&client, req).await.unwrap();
            assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
            let json = reply.json().unwrap();
            assert_eq!(json["bytes"], TEN_MIB);
            assert_eq!(json["sha256"], want.as_str());
        }
    })
    .await
}

#[tokio::test]
async fn echo_streams_the_body_back_as_it_arrives() {
    within(async {
        let app = EchoApp::start("echo-stream").await;
        let chunks = pattern_chunks(TEN_MIB);
        let want = hex_sha256(&chunks);
        for client in [http1_client(), h2c_client()] {
            let (tx, rx) = futures::channel::mpsc::unbounded::<Bytes>();
            let req = request(Method::POST, &app.http_url("/echo"), streamed(rx));
            tx.unbounded_send(Bytes::from_static(b"first")).unwrap();
            let rsp = client.request(req).await.unwrap();
            assert_eq!(rsp.status(), StatusCode::OK);
            let mut body = rsp.into_body();

            // The first chunk comes back while the request is still open:
            // the app does not buffer the whole body.
            let mut got = Vec::new();
            while got.len() < 5 {
                let frame = body.frame().await.expect("body ended early").unwrap();
                got.extend_from_slice(frame.data_ref().expect("a data frame"));
            }
            assert_eq!(got, b"first");

            // Then 10 MiB more, checked by hash.
            let more = chunks.clone();
            let sender = tokio::spawn(async move {
                for c in more {
                    tx.unbounded_send(c).unwrap();
                }
            });
            let rest = body.collect().await.unwrap().to_bytes();
            sender.await.unwrap();
            assert_eq!(rest.len(), TEN_MIB);
            assert_eq!(hex_sha256(&[rest]), want);
        }
    })
    .await
}

#[tokio::test]
async fn bytes_streams_the_pattern() {
    within(async {
        let app = EchoApp::start("echo-bytes").await;
        let n = 1_000_003u64;
        let reply = send(
            &http1_client(),
            get(&app.http_url(&format!("/bytes?n={n}&chunk=4096"))),
        )
        .await
        .unwrap();
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.header("transfer-encoding"), Some("chunked"));
        assert_eq!(reply.body.len() as u64, n);
        let first_bad = reply
            .body
            .iter()
            .enumerate()
            .find(|(i, b)| **b != pattern_byte(*i as u64));
        assert_eq!(first_bad, None);

        let reply = send(&h2c_client(), get(&app.http_url("/bytes?n=70000")))
            .await
            .unwrap();
        assert_eq!(reply.body.len(), 70_000);
    })
    .await
}

#[tokio::test]
async fn control_headers_set_status_delay_and_reset() {
    within(async {
        let app = EchoApp::start("echo-ctl").await;
        let client = http1_client();

        let mut req = get(&app.http_url("/anything"));
        req.headers_mut()
            .insert("x-echo-status", "503".parse().unwrap());
        let reply = send(&client, req).await.unwrap();
        assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(reply.text(), "status 503 from echo-ctl");
        assert_eq!(reply.header("x-echo-name"), Some("echo-ctl"));

        let mut req = get(&app.http_url("/"));
        req.headers_mut()
            .insert("x-echo-delay", "200ms".parse().unwrap());
        let start = Instant::now();
        let reply = send(&client, req).await.unwrap();
        assert_eq!(reply.status, StatusCode::OK);
        assert!(
            start.elapsed() >= Duration::from_millis(200),
            "{:?}",
            start.elapsed()
        );

        let mut req = get(&app.http_url("/"));
        req.headers_mut()
            .insert("x-echo-delay", "soon".parse().unwrap());
        let reply = send(&client, req).await.unwrap();
        assert_eq!(reply.status, StatusCode::BAD_REQUEST);

        for client in [http1_client(), h2c_client()] {
            let mut req = get(&app.http_url("/"));
            req.headers_mut()
                .insert("x-echo-reset", "1".parse().unwrap());
            let err = send(&client, req).await.unwrap_err();
            assert!(!err.is_empty());
        }

        // The app still serves after the resets.
        let reply = send(&client, get(&app.http_url("/"))).await.unwrap();
        assert_eq!(reply.status, StatusCode::OK);
    })
    .await
}

#[tokio::test]
async fn stats_count_requests() {
    within(async {
        let app = EchoApp::start("echo-stats").await;
        let client = http1_client();
        for _ in 0..3 {
            send(&client, get(&app.http_url("/"))).await.unwrap();
        }
        let reply = send(&client, get(&app.http_url("/stats"))).await.unwrap();
        assert_eq!(reply.json().unwrap()["requests"], 3);
    })
    .await
}

#[tokio::test]
async fn websocket_echoes_messages() {
    within(async {
        let app = EchoApp::start("echo-ws").await;
        let mut ws = ws_connect(app.addrs.http, "ws://echo/ws").await.unwrap();
        ws.send(Message::text("hello")).await.unwrap();
        ws.send(Message::binary(vec![1u8, 2, 3])).await.unwrap();
        assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("hello"));
        assert_eq!(
            ws.next().await.unwrap().unwrap(),
            Message::binary(vec![1u8, 2, 3])
        );
        ws.close(None).await.unwrap();
        // The server answers the close, then the stream ends.
        while let Some(msg) = ws.next().await {
            match msg {
                Ok(Message::Close(_)) => {}
                Ok(other) => panic!("unexpected {other:?}"),
                Err(_) => break,
            }
        }
    })
    .await
}

#[tokio::test]
async fn grpc_unary_ok_and_failing() {
    within(async {
        let app = EchoApp::start("echo-grpc").await;
        let mut client = EchoClient::new(app.addrs.grpc);

        let rsp = client.unary(EchoRequest::new("ping")).await.unwrap();
        assert_eq!(
            rsp.metadata().get(TRAILER).and_then(|v| v.to_str().ok()),
            Some("echo-grpc")
        );
        let reply = rsp.into_inner();
        assert_eq!(reply.message, "ping");
        assert_eq!(reply.from, "echo-grpc");

        let status = client
            .unary(EchoRequest::failing(tonic::Code::PermissionDenied))
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::PermissionDenied);
        assert_eq!(status.message(), FAIL_MESSAGE);
    })
    .await
}

#[tokio::test]
async fn grpc_bidi_echoes_each_message() {
    within(async {
        let app = EchoApp::start("echo-bidi").await;
        let mut client = EchoClient::new(app.addrs.grpc);

        let reqs = futures::stream::iter((0..10).map(|i| EchoRequest::new(format!("m{i}"))));
        let mut replies = client.bidi(reqs).await.unwrap().into_inner();
        for i in 0..10 {
            let reply = replies.message().await.unwrap().expect("a reply");
            assert_eq!(reply.message, format!("m{i}"));
            assert_eq!(reply.from, "echo-bidi");
        }
        assert!(replies.message().await.unwrap().is_none());

        let reqs = futures::stream::iter(vec![
            EchoRequest::new("ok"),
            EchoRequest::failing(tonic::Code::ResourceExhausted),
        ]);
        let mut replies = client.bidi(reqs).await.unwrap().into_inner();
        assert_eq!(replies.message().await.unwrap().unwrap().message, "ok");
        let status = replies.message().await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::ResourceExhausted);
    })
    .await
}

#[tokio::test]
async fn grpc_unknown_method_is_unimplemented() {
    within(async {
        let app = EchoApp::start("echo-unimpl").await;
        let uri = format!("http://{}/sane.echo.Echo/Nope", app.addrs.grpc);
        let mut req = request(Method::POST, &uri, full(Bytes::new()));
        req.headers_mut()
            .insert("content-type", "application/grpc".parse().unwrap());
        let rsp = send_h2c(app.addrs.grpc, req).await.unwrap();
        assert_eq!(rsp.status(), StatusCode::OK);
        assert_eq!(
            rsp.headers()
                .get("grpc-status")
                .and_then(|v| v.to_str().ok()),
            Some("12")
        );
    })
    .await
}

#[tokio::test]
async fn tcp_echoes_until_the_peer_closes() {
    within(async {
        let app = EchoApp::start("echo-tcp").await;
        let payload: Vec<u8> = (0..1_000_000u64).map(pattern_byte).collect();
        let back = tcp_roundtrip(app.addrs.tcp, &payload).await.unwrap();
        assert_eq!(back.len(), payload.len());
        assert!(back == payload);
        assert_eq!(tcp_roundtrip(app.addrs.tcp, b"").await.unwrap(), b"");
    })
    .await
}

#[tokio::test]
async fn sigterm_exits_zero() {
    within(async {
        let app = EchoApp::start("echo-term").await;
        let reply = send(&http1_client(), get(&app.http_url("/")))
            .await
            .unwrap();
        assert_eq!(reply.status, StatusCode::OK);
        app.proc.signal(Signal::SIGTERM);
        let status = app
            .proc
            .wait_exit(Duration::from_secs(10))
            .await
            .expect("sane-echo exits after SIGTERM");
        assert!(status.success(), "{status}");
    })
    .await
}
