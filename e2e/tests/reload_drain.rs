//! Changing a running sidecar: a config reload moves traffic to a new endpoint
//! without failing a request (one in flight finishes where it started), and a
//! drain (SIGTERM or `POST /drain`) lets in-flight requests and open
//! WebSockets finish, refuses new connections and exits 0.

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use http::{Method, Request, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use sane_e2e::harness::http::{
    get, http1_client, request, send, send_h2c, send_http1, streamed, ws_connect, Body, HttpClient,
    Reply,
};
use sane_e2e::harness::{eventually, metric_value, within, EchoApp, Signal, TwoHop};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;

/// Bound of each test, once its mesh is up.
const TEST_DEADLINE: Duration = Duration::from_secs(60);
/// How long a change (reload, drain step) may take to show.
const CHANGE_DEADLINE: Duration = Duration::from_secs(10);
/// The drain deadline of the drained sidecar: far longer than the slow
/// request, so exiting before it proves the drain ended on its own.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the in-flight request of the drain tests takes at the app.
const SLOW: &str = "1500ms";

/// Sequential requests sent in the background until stopped.
struct RequestLoop {
    report: Arc<Mutex<LoopReport>>,
    stop: Arc<AtomicBool>,
    task: JoinHandle<()>,
}

/// What the loop saw, in order.
#[derive(Clone, Debug, Default)]
struct LoopReport {
    /// `x-echo-name` of every successful response, in order.
    names: Vec<String>,
    /// Every failed request: transport errors and non-200 answers.
    failures: Vec<String>,
}

// === impl RequestLoop ===

impl RequestLoop {
    /// Starts sending `GET http://echo/` on `client`, one after the other.
    fn start(client: HttpClient) -> Self {
        let report = Arc::new(Mutex::new(LoopReport::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn({
            let (report, stop) = (report.clone(), stop.clone());
            async move {
                while !stop.load(Ordering::Relaxed) {
                    let result = send(&client, get(&TwoHop::url("/"))).await;
                    let mut report = report.lock().unwrap();
                    match result {
                        Ok(r) if r.status == StatusCode::OK => {
                            let name = r.header("x-echo-name").unwrap_or("<none>");
                            report.names.push(name.to_string());
                        }
                        Ok(r) => report.failures.push(format!("{}: {}", r.status, r.text())),
                        Err(e) => report.failures.push(e),
                    }
                }
            }
        });
        Self { report, stop, task }
    }

    /// Successful responses from `name` so far.
    fn served_by(&self, name: &str) -> usize {
        let report = self.report.lock().unwrap();
        report.names.iter().filter(|n| *n == name).count()
    }

    /// Stops after the request in flight and returns everything seen.
    async fn stop(self) -> LoopReport {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.expect("the request loop panicked");
        let report = self.report.lock().unwrap();
        report.clone()
    }
}

/// Requests the app has counted (read straight from the app, not the mesh).
async fn app_requests(app: &EchoApp) -> Result<u64, String> {
    let reply = send(&http1_client(), get(&app.http_url("/stats"))).await?;
    reply.json()?["requests"]
        .as_u64()
        .ok_or_else(|| format!("no request count in {}", reply.text()))
}

/// `GET http://echo/` that the app answers after [`SLOW`].
fn slow_request() -> Request<Body> {
    let mut req = get(&TwoHop::url("/slow"));
    req.headers_mut()
        .insert("x-echo-delay", SLOW.parse().unwrap());
    req
}

/// Reads `n` bytes of `body`. Panics if it ends or fails first.
async fn read_n(body: &mut Incoming, n: usize) -> Vec<u8> {
    let mut got = Vec::new();
    while got.len() < n {
        let frame = body.frame().await.expect("the body ended early").unwrap();
        if let Some(data) = frame.data_ref() {
            got.extend_from_slice(data);
        }
    }
    got
}

/// Waits until connecting to every address in `addrs` is refused.
async fn wait_refused(addrs: &[SocketAddr]) {
    eventually(CHANGE_DEADLINE, || async {
        for addr in addrs {
            match TcpStream::connect(addr).await {
                Ok(_) => return Err(format!("{addr} still accepts connections")),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {}
                Err(e) => return Err(format!("connecting to {addr}: unexpected {e}")),
            }
        }
        Ok(())
    })
    .await
}

/// Waits until the client sidecar's `/ready` answers 503 `draining`.
async fn wait_not_ready(mesh: &TwoHop) {
    eventually(CHANGE_DEADLINE, || async {
        if let Some(status) = mesh.client().proc.try_exit_status() {
            return Err(format!("the sidecar has already exited ({status})"));
        }
        let reply = mesh.client().admin_get("/ready").await?;
        (reply.status == StatusCode::SERVICE_UNAVAILABLE && reply.text().contains("draining"))
            .then_some(())
            .ok_or_else(|| format!("/ready: {} {}", reply.status, reply.text()))
    })
    .await
}

/// After a drain started with a slow request in flight: the request ends
/// with 200 and the sidecar exits 0, well before its drain deadline, having
/// logged a clean drain.
async fn assert_clean_exit(mesh: &TwoHop, slow: JoinHandle<Result<Reply, String>>) {
    let reply = slow
        .await
        .unwrap()
        .expect("the in-flight request completes");
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(reply.header("x-echo-name"), Some(TwoHop::APP));

    let proc = &mesh.client().proc;
    let status = proc
        .wait_exit(DRAIN_TIMEOUT / 2)
        .await
        .expect("the sidecar exits once its connections have finished");
    assert!(status.success(), "{status}");
    eventually(CHANGE_DEADLINE, || async {
        let log = proc.stderr();
        (log.contains("drained") && !log.contains("drain deadline passed"))
            .then_some(())
            .ok_or_else(|| format!("no clean drain in the log:\n{log}"))
    })
    .await;
}

#[tokio::test]
async fn reload_moves_traffic_to_a_new_endpoint_without_failures() {
    let mut mesh = TwoHop::start().await;
    within(TEST_DEADLINE, async {
        let requests = RequestLoop::start(mesh.http1());
        eventually(CHANGE_DEADLINE, || async {
            let n = requests.served_by(TwoHop::APP);
            (n >= 5).then_some(()).ok_or(format!("{n} answers so far"))
        })
        .await;

        // A streaming request in flight across the reload: it stays on the
        // endpoint it started on.
        let (tx, rx) = futures::channel::mpsc::unbounded::<Bytes>();
        tx.unbounded_send(Bytes::from_static(b"before")).unwrap();
        let req = request(Method::POST, &TwoHop::url("/echo"), streamed(rx));
        let open = mesh.http1().request(req).await.unwrap();
        assert_eq!(open.status(), StatusCode::OK);
        assert_eq!(open.headers()["x-echo-name"], TwoHop::APP);
        let mut open = open.into_body();
        assert_eq!(read_n(&mut open, 6).await, b"before");

        let new_endpoint = mesh.mesh.add_echo(TwoHop::SERVICE, "echo-2").await;
        let mut cfg = mesh.client().bootstrap.clone();
        cfg.resources.endpoints = vec![new_endpoint];
        mesh.mesh.client_mut().reload(cfg);

        eventually(CHANGE_DEADLINE, || async {
            let n = requests.served_by("echo-2");
            (n >= 10)
                .then_some(())
                .ok_or(format!("{n} answers from echo-2 so far"))
        })
        .await;
        let report = requests.stop().await;
        tx.unbounded_send(Bytes::from_static(b"after")).unwrap();
        assert_eq!(read_n(&mut open, 5).await, b"after");
        drop(tx);
        let rest = open
            .collect()
            .await
            .expect("the in-flight request ends cleanly");
        assert!(rest.to_bytes().is_empty());

        assert!(
            report.failures.is_empty(),
            "{} of {} requests failed during the reload: {:?}",
            report.failures.len(),
            report.failures.len() + report.names.len(),
            report.failures
        );
        // One switch, never back: echo-1 ... echo-1 echo-2 ... echo-2.
        let switch = report.names.iter().position(|n| n == "echo-2").unwrap();
        assert!(switch >= 5);
        assert!(
            report.names[..switch].iter().all(|n| n == TwoHop::APP)
                && report.names[switch..].iter().all(|n| n == "echo-2"),
            "answers went back and forth: {:?}",
            report.names
        );

        // The old instance gets nothing more.
        let old = mesh.app();
        let new = mesh.mesh.app("echo-2");
        let old_before = app_requests(old).await.unwrap();
        let new_before = app_requests(new).await.unwrap();
        let client = mesh.http1();
        for _ in 0..20 {
            let reply = send(&client, get(&TwoHop::url("/"))).await.unwrap();
            assert_eq!(reply.status, StatusCode::OK);
            assert_eq!(reply.header("x-echo-name"), Some("echo-2"));
        }
        assert_eq!(app_requests(old).await.unwrap(), old_before);
        assert_eq!(app_requests(new).await.unwrap(), new_before + 20);

        let dump = mesh.client().config_dump().await.unwrap();
        assert!(dump["version"].as_u64() >= Some(2), "{dump}");
        assert!(dump["last_reload_error"].is_null(), "{dump}");
        let metrics = mesh.client().metrics().await.unwrap();
        let ok = metric_value(&metrics, "sane_config_reloads_total", &[("result", "ok")]);
        assert!(ok >= Some(1.0), "{metrics}");
        let errors = metric_value(
            &metrics,
            "sane_config_reloads_total",
            &[("result", "error")],
        );
        assert!(errors.unwrap_or(0.0) == 0.0, "{metrics}");
    })
    .await
}

#[tokio::test]
async fn sigterm_drains_http1_in_flight_requests_then_exits_zero() {
    let mesh = TwoHop::start_from(TwoHop::builder().drain_timeout(DRAIN_TIMEOUT)).await;
    within(TEST_DEADLINE, async {
        let outbound = mesh.outbound_http;
        let slow = tokio::spawn(async move {
            let rsp = send_http1(outbound, slow_request()).await?;
            Reply::read(rsp).await
        });
        // The request is in flight once the app has it.
        eventually(CHANGE_DEADLINE, || async {
            let n = app_requests(mesh.app()).await?;
            (n == 1)
                .then_some(())
                .ok_or(format!("the app has {n} requests"))
        })
        .await;

        mesh.client().proc.signal(Signal::SIGTERM);
        wait_not_ready(&mesh).await;
        wait_refused(&[mesh.outbound_http, mesh.outbound_tcp]).await;
        assert_clean_exit(&mesh, slow).await;
    })
    .await
}

#[tokio::test]
async fn admin_drain_lets_an_h2_stream_finish_then_exits_zero() {
    let mesh = TwoHop::start_from(TwoHop::builder().drain_timeout(DRAIN_TIMEOUT)).await;
    within(TEST_DEADLINE, async {
        let outbound = mesh.outbound_http;
        let slow = tokio::spawn(async move {
            let rsp = send_h2c(outbound, slow_request()).await?;
            Reply::read(rsp).await
        });
        eventually(CHANGE_DEADLINE, || async {
            let n = app_requests(mesh.app()).await?;
            (n == 1)
                .then_some(())
                .ok_or(format!("the app has {n} requests"))
        })
        .await;

        let reply = mesh.client().admin_post("/drain").await.unwrap();
        assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.text());
        wait_not_ready(&mesh).await;
        wait_refused(&[mesh.outbound_http, mesh.outbound_tcp]).await;
        assert_clean_exit(&mesh, slow).await;
    })
    .await
}

#[tokio::test]
async fn drain_waits_for_an_open_websocket() {
    let mesh = TwoHop::start_from(TwoHop::builder().drain_timeout(DRAIN_TIMEOUT)).await;
    within(TEST_DEADLINE, async {
        let mut ws = ws_connect(mesh.outbound_http, "ws://echo/ws")
            .await
            .unwrap();
        ws.send(Message::text("before")).await.unwrap();
        assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("before"));

        let sidecar = mesh.client();
        let reply = sidecar.admin_post("/drain").await.unwrap();
        assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.text());
        wait_refused(&[mesh.outbound_http]).await;

        // The upgraded connection is in flight like any request: it keeps
        // working, and keeps the sidecar up, until it closes (or the drain
        // deadline passes).
        let echoed = async {
            ws.send(Message::text("during"))
                .await
                .map_err(|e| e.to_string())?;
            ws.next()
                .await
                .ok_or("the WebSocket ended".to_string())?
                .map_err(|e| e.to_string())
        }
        .await;
        assert_eq!(
            echoed,
            Ok(Message::text("during")),
            "the drain cut the open WebSocket (sidecar exit status: {:?})",
            sidecar.proc.try_exit_status()
        );
        wait_not_ready(&mesh).await;
        assert_eq!(sidecar.proc.try_exit_status(), None);

        ws.close(None).await.unwrap();
        while let Some(Ok(msg)) = ws.next().await {
            assert!(matches!(msg, Message::Close(_)), "unexpected {msg:?}");
        }
        drop(ws);
        let status = sidecar
            .proc
            .wait_exit(DRAIN_TIMEOUT / 2)
            .await
            .expect("the sidecar exits once the WebSocket has closed");
        assert!(status.success(), "{status}");
    })
    .await
}
