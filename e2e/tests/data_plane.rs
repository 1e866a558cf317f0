//! The core data plane through two sidecars: the test is the client app, the
//! client sidecar's outbound listeners carry its traffic to the server
//! sidecar's inbound listener, which delivers to `sane-echo`.
//!
//! ```text
//! test ──> client sidecar ──HTTP/2 or opaque──> server sidecar ──> echo-1
//! ```
//!
//! Each test starts its own mesh on port 0, so they run in parallel. Meshes
//! start outside the tests' deadlines: the first one waits for the harness to
//! build the binaries.

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use http::{Method, StatusCode, Version};
use http_body_util::BodyExt;
use sane_e2e::echo::pattern_byte;
use sane_e2e::echo::proto::{EchoRequest, FAIL_MESSAGE, TRAILER};
use sane_e2e::harness::http::{full, get, request, send, streamed, tcp_roundtrip, ws_connect};
use sane_e2e::harness::{eventually, metric_value, within, TwoHop};
use sha2::{Digest, Sha256};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

const TEN_MIB: usize = 10 * 1024 * 1024;
/// Bound of a test without big transfers.
const TEST_DEADLINE: Duration = Duration::from_secs(60);
/// Bound of the test moving 3 × 10 MiB through two debug-build proxies.
const BULK_DEADLINE: Duration = Duration::from_secs(120);
/// How long a metric may take to show what already happened.
const METRIC_DEADLINE: Duration = Duration::from_secs(5);
/// The destination service label the client sidecar reports for `echo`.
const ECHO_HOST: &str = "echo.default.svc.cluster.local";

/// Bytes `from..to` of the `/bytes` pattern.
fn pattern(from: usize, to: usize) -> Vec<u8> {
    (from as u64..to as u64).map(pattern_byte).collect()
}

/// `len` bytes of the pattern in 64 KiB chunks.
fn pattern_chunks(len: usize) -> Vec<Bytes> {
    pattern(0, len)
        .chunks(64 * 1024)
        .map(Bytes::copy_from_slice)
        .collect()
}

fn hex_sha256<'a>(parts: impl IntoIterator<Item = &'a [u8]>) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p);
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test]
async fn http1_get_reaches_the_app_through_both_sidecars() {
    let mesh = TwoHop::start().await;
    within(TEST_DEADLINE, async {
        let mut req = get(&TwoHop::url("/some/path?q=1"));
        let h = req.headers_mut();
        h.insert("x-test", "hello".parse().unwrap());
        // A hop-by-hop header named in `Connection` must not be forwarded.
        h.insert("connection", "x-secret".parse().unwrap());
        h.insert("x-secret", "1".parse().unwrap());
        let reply = send(&mesh.http1(), req).await.unwrap();

        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        assert_eq!(reply.version, Version::HTTP_11);
        assert_eq!(reply.header("x-echo-name"), Some(TwoHop::APP));
        assert_eq!(reply.header("x-sane-response-flags"), None);
        let json = reply.json().unwrap();
        assert_eq!(json["name"], TwoHop::APP);
        assert_eq!(json["method"], "GET");
        assert_eq!(json["path"], "/some/path");
        assert_eq!(json["version"], "HTTP/1.1");
        assert_eq!(json["host"], "echo", "the authority reaches the app");
        assert_eq!(json["headers"]["x-test"], "hello");
        assert!(
            json["headers"].get("x-secret").is_none(),
            "hop-by-hop header forwarded: {json}"
        );
    })
    .await
}

#[tokio::test]
async fn http1_streams_10_mib_bodies_both_ways() {
    let mesh = TwoHop::start().await;
    within(BULK_DEADLINE, async {
        let client = mesh.http1();
        let chunks = pattern_chunks(TEN_MIB);
        let want = hex_sha256(chunks.iter().map(|c| &c[..]));

        // Upload: a chunked body (no Content-Length), hashed by the app.
        let body = streamed(futures::stream::iter(chunks.clone()));
        let req = request(Method::POST, &TwoHop::url("/sha256"), body);
        assert!(req.headers().get("content-length").is_none());
        let reply = send(&client, req).await.unwrap();
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        let json = reply.json().unwrap();
        assert_eq!(json["bytes"], TEN_MIB);
        assert_eq!(json["sha256"], want.as_str());

        // Echo: the first chunk comes back before the rest is sent, so
        // neither sidecar buffers the request or the response; then the
        // whole 10 MiB comes back intact.
        let (tx, rx) = futures::channel::mpsc::unbounded::<Bytes>();
        let req = request(Method::POST, &TwoHop::url("/echo"), streamed(rx));
        tx.unbounded_send(Bytes::from_static(b"first")).unwrap();
        let rsp = client.request(req).await.unwrap();
        assert_eq!(rsp.status(), StatusCode::OK);
        let mut body = rsp.into_body();
        let mut got = Vec::new();
        while got.len() < 5 {
            let frame = body.frame().await.expect("body ended early").unwrap();
            got.extend_from_slice(frame.data_ref().expect("a data frame"));
        }
        assert_eq!(got, b"first");
        let sender = tokio::spawn(async move {
            for c in chunks {
                tx.unbounded_send(c).unwrap();
            }
        });
        let rest = body.collect().await.unwrap().to_bytes();
        sender.await.unwrap();
        assert_eq!(rest.len(), TEN_MIB);
        assert_eq!(hex_sha256([&rest[..]]), want);

        // Download: 10 MiB streamed by the app.
        let reply = send(&client, get(&TwoHop::url(&format!("/bytes?n={TEN_MIB}"))))
            .await
            .unwrap();
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.body.len(), TEN_MIB);
        assert_eq!(hex_sha256([&reply.body[..]]), want);
    })
    .await
}

#[tokio::test]
async fn h2c_get_and_post() {
    let mesh = TwoHop::start().await;
    within(TEST_DEADLINE, async {
        let client = mesh.h2c();

        let reply = send(&client, get(&TwoHop::url("/h2"))).await.unwrap();
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        assert_eq!(reply.version, Version::HTTP_2);
        assert_eq!(reply.header("x-echo-name"), Some(TwoHop::APP));
        let json = reply.json().unwrap();
        assert_eq!(json["path"], "/h2");
        assert_eq!(json["host"], "echo");

        // Larger than HTTP/2's initial 64 KiB window: flow control must work
        // on both HTTP/2 hops.
        let body = pattern(0, 300 * 1024);
        let req = request(Method::POST, &TwoHop::url("/echo"), full(body.clone()));
        let reply = send(&client, req).await.unwrap();
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.version, Version::HTTP_2);
        assert_eq!(reply.body.len(), body.len());
        assert!(reply.body == body, "the echoed body differs");
    })
    .await
}

#[tokio::test]
async fn grpc_unary_ok_and_failing_statuses_reach_the_client() {
    let mesh = TwoHop::start().await;
    within(TEST_DEADLINE, async {
        let mut client = mesh.grpc();

        let rsp = client.unary(EchoRequest::new("ping")).await.unwrap();
        // The app sends this in the trailers, after the message.
        assert_eq!(
            rsp.metadata().get(TRAILER).and_then(|v| v.to_str().ok()),
            Some(TwoHop::APP),
            "trailers did not pass through: {:?}",
            rsp.metadata()
        );
        let reply = rsp.into_inner();
        assert_eq!(reply.message, "ping");
        assert_eq!(reply.from, TwoHop::APP);

        let status = client
            .unary(EchoRequest::failing(tonic::Code::FailedPrecondition))
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::FailedPrecondition, "{status:?}");
        assert_eq!(status.message(), FAIL_MESSAGE);

        // A status after messages travels in real trailers.
        let reqs = futures::stream::iter(vec![
            EchoRequest::new("ok"),
            EchoRequest::failing(tonic::Code::Aborted),
        ]);
        let mut replies = client.bidi(reqs).await.unwrap().into_inner();
        assert_eq!(replies.message().await.unwrap().unwrap().message, "ok");
        let status = replies.message().await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::Aborted, "{status:?}");
        assert_eq!(status.message(), FAIL_MESSAGE);

        let metrics = mesh.client().metrics().await.unwrap();
        let grpc_requests = metric_value(
            &metrics,
            "istio_requests_total",
            &[("reporter", "source"), ("request_protocol", "grpc")],
        );
        assert_eq!(grpc_requests, Some(3.0), "{metrics}");
    })
    .await
}

#[tokio::test]
async fn grpc_bidi_streams_interleaved_messages() {
    let mesh = TwoHop::start().await;
    within(TEST_DEADLINE, async {
        let mut client = mesh.grpc();
        let (tx, rx) = futures::channel::mpsc::unbounded::<EchoRequest>();
        tx.unbounded_send(EchoRequest::new("m0")).unwrap();
        let mut replies = client.bidi(rx).await.unwrap().into_inner();

        // Send one, receive its echo, then send the next: each message
        // crosses both sidecars while the stream stays open both ways.
        const MESSAGES: usize = 25;
        for i in 0..MESSAGES {
            if i > 0 {
                tx.unbounded_send(EchoRequest::new(format!("m{i}")))
                    .unwrap();
            }
            let reply = replies.message().await.unwrap().expect("a reply");
            assert_eq!(reply.message, format!("m{i}"));
            assert_eq!(reply.from, TwoHop::APP);
        }
        drop(tx);
        assert!(replies.message().await.unwrap().is_none());
    })
    .await
}

#[tokio::test]
async fn websocket_echoes_text_and_binary_frames() {
    let mesh = TwoHop::start().await;
    within(TEST_DEADLINE, async {
        let mut ws = ws_connect(mesh.outbound_http, "ws://echo/ws")
            .await
            .unwrap();
        for i in 0..3 {
            let text = format!("hello {i}");
            ws.send(Message::text(text.clone())).await.unwrap();
            assert_eq!(ws.next().await.unwrap().unwrap(), Message::text(text));
            let bin = pattern(i, i + 70_000);
            ws.send(Message::binary(bin.clone())).await.unwrap();
            assert_eq!(ws.next().await.unwrap().unwrap(), Message::binary(bin));
        }
        ws.close(None).await.unwrap();
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
async fn tcp_echo_survives_a_client_half_close() {
    let mesh = TwoHop::start().await;
    within(TEST_DEADLINE, async {
        let mut stream = TcpStream::connect(mesh.outbound_tcp).await.unwrap();

        // Bytes come back while the connection is open both ways.
        let first = pattern(0, 4096);
        stream.write_all(&first).await.unwrap();
        let mut back = vec![0; first.len()];
        stream.read_exact(&mut back).await.unwrap();
        assert!(back == first, "the first 4 KiB came back altered");

        // After the client closes its write side, the rest still comes back,
        // then the end of stream.
        let second = pattern(4096, 3 * 4096);
        stream.write_all(&second).await.unwrap();
        stream.shutdown().await.unwrap();
        let mut rest = Vec::new();
        stream.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest.len(), second.len());
        assert!(rest == second, "the echo after the half-close differs");

        // A larger payload, written while reading.
        let big = pattern(0, 1024 * 1024);
        let back = tcp_roundtrip(mesh.outbound_tcp, &big).await.unwrap();
        assert_eq!(back.len(), big.len());
        assert!(back == big);

        let sent = (first.len() + second.len() + big.len()) as f64;
        let client = mesh.client();
        let source = [("reporter", "source")];
        let metrics = eventually(METRIC_DEADLINE, || async {
            let m = client.metrics().await?;
            let closed = metric_value(&m, "istio_tcp_connections_closed_total", &source);
            let bytes = metric_value(&m, "istio_tcp_sent_bytes_total", &source);
            let back = metric_value(&m, "istio_tcp_received_bytes_total", &source);
            if closed == Some(2.0) && bytes == Some(sent) && back == Some(sent) {
                Ok(m)
            } else {
                Err(format!(
                    "closed {closed:?}, sent {bytes:?}, received {back:?}:\n{m}"
                ))
            }
        })
        .await;
        // The same service label as the HTTP metrics (and Istio's).
        let labelled = [("reporter", "source"), ("destination_service", ECHO_HOST)];
        assert_eq!(
            metric_value(&metrics, "istio_tcp_connections_closed_total", &labelled),
            Some(2.0),
            "TCP metrics do not label the service {ECHO_HOST:?}:\n{metrics}"
        );
    })
    .await
}

#[tokio::test]
async fn metrics_count_requests_at_both_sidecars() {
    let mesh = TwoHop::start().await;
    within(TEST_DEADLINE, async {
        let client = mesh.http1();
        const N: usize = 7;
        for _ in 0..N {
            let reply = send(&client, get(&TwoHop::url("/"))).await.unwrap();
            assert_eq!(reply.status, StatusCode::OK);
        }
        let mut req = get(&TwoHop::url("/"));
        req.headers_mut()
            .insert("x-echo-status", "503".parse().unwrap());
        let reply = send(&client, req).await.unwrap();
        assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);

        let n = N as f64;
        let source = [
            ("reporter", "source"),
            ("destination_service", ECHO_HOST),
            ("request_protocol", "http"),
            ("response_code", "200"),
            ("response_flags", "-"),
        ];
        eventually(METRIC_DEADLINE, || async {
            let m = mesh.client().metrics().await?;
            let ok = metric_value(&m, "istio_requests_total", &source);
            let app_503 = metric_value(
                &m,
                "istio_requests_total",
                &[("reporter", "source"), ("response_code", "503")],
            );
            let mut bucket = source.to_vec();
            bucket.push(("le", "+Inf"));
            let inf = metric_value(&m, "istio_request_duration_milliseconds_bucket", &bucket);
            let count = metric_value(&m, "istio_request_duration_milliseconds_count", &source);
            (ok == Some(n) && app_503 == Some(1.0) && inf == Some(n) && count == Some(n))
                .then_some(())
                .ok_or_else(|| {
                    format!("200s {ok:?}, 503s {app_503:?}, +Inf {inf:?}, count {count:?}:\n{m}")
                })
        })
        .await;

        let destination = [("reporter", "destination"), ("response_code", "200")];
        eventually(METRIC_DEADLINE, || async {
            let m = mesh.server().metrics().await?;
            let ok = metric_value(&m, "istio_requests_total", &destination);
            let inf = metric_value(
                &m,
                "istio_request_duration_milliseconds_bucket",
                &[("reporter", "destination"), ("le", "+Inf")],
            );
            let source = metric_value(&m, "istio_requests_total", &[("reporter", "source")]);
            (ok == Some(n) && inf == Some(n + 1.0) && source.is_none())
                .then_some(())
                .ok_or_else(|| format!("200s {ok:?}, +Inf {inf:?}, source {source:?}:\n{m}"))
        })
        .await;
    })
    .await
}

/// HTTP/1.1 requests go between the sidecars as streams of one HTTP/2
/// connection: four in flight at once hold one connection at the server
/// sidecar's inbound listener. Under a destination policy's
/// `peer_protocol: preserve` (Istio's DO_NOT_UPGRADE) they stay HTTP/1.1,
/// four pooled connections. Either way the app gets the same HTTP/1.1
/// requests.
#[tokio::test]
async fn http1_between_sidecars_is_multiplexed_unless_the_policy_preserves_it() {
    const IN_FLIGHT: usize = 4;
    for preserve in [false, true] {
        let mesh = TwoHop::start_from(TwoHop::builder().client_config(move |b| {
            if preserve {
                b.resources
                    .policies
                    .push(sane_xds_proto::DestinationPolicy {
                        name: TwoHop::SERVICE.into(),
                        service: TwoHop::SERVICE.into(),
                        peer_protocol: sane_xds_proto::PeerProtocol::Preserve.into(),
                        ..Default::default()
                    });
            }
        }))
        .await;
        within(TEST_DEADLINE, async {
            // One request first: it works, and reaches the app as HTTP/1.1.
            let reply = send(&mesh.http1(), get(&TwoHop::url("/first")))
                .await
                .unwrap();
            assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
            assert_eq!(reply.json().unwrap()["version"], "HTTP/1.1");

            // Requests the app holds for a minute, all in flight together.
            let served = mesh.app().requests().await;
            let client = mesh.http1();
            let held: Vec<_> = (0..IN_FLIGHT)
                .map(|_| {
                    let client = client.clone();
                    tokio::spawn(async move {
                        let mut req = get(&TwoHop::url("/held"));
                        req.headers_mut()
                            .insert("x-echo-delay", "60s".parse().unwrap());
                        send(&client, req).await
                    })
                })
                .collect();
            eventually(METRIC_DEADLINE * 6, || async {
                let n = mesh.app().requests().await;
                (n >= served + IN_FLIGHT as u64)
                    .then_some(())
                    .ok_or_else(|| format!("the app has {} of the held requests", n - served))
            })
            .await;
            let metrics = mesh.server().metrics().await.unwrap();
            let open = metric_value(
                &metrics,
                "sane_connections_active",
                &[("listener", "inbound")],
            )
            .unwrap_or_default();
            if !preserve {
                assert_eq!(open, 1.0, "one multiplexed connection:\n{metrics}");
            } else {
                // One per request in flight, and the first request's if
                // it was not back in the pool when they started.
                let want = IN_FLIGHT as f64..=IN_FLIGHT as f64 + 1.0;
                assert!(
                    want.contains(&open),
                    "{open}, not one per request:\n{metrics}"
                );
            }
            for h in held {
                h.abort();
            }
        })
        .await;
    }
}
