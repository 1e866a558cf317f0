//! Observability end to end: traces across three meshed services, exported
//! over OTLP to a receiver the test runs; Istio metrics with peer
//! identities; access logs; export to a dead collector never hurting
//! requests; a real Prometheus server scraping two sidecars; gRPC status
//! from trailers and counted body bytes; and a `Telemetry` resource pushed
//! through the control plane's API reconfiguring a running sidecar.
//!
//! client (test, as service A's app) → A sidecar ══mTLS══▶ B sidecar → B app
//!   (in the test; calls C, passing the trace headers on) → B sidecar
//!   ══mTLS══▶ C sidecar → C (sane-echo)

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use sane_e2e::echo::proto::EchoRequest;
use sane_e2e::harness::http::{
    get, http1_client_via, request, send, streamed, tcp_roundtrip, Reply,
};
use sane_e2e::harness::{
    bins, echo_service, eventually, metric_value, xds_bootstrap, ApiClient, ControlPlane, EchoApp,
    OtlpReceiver, Prometheus, ReceivedSpan, Sidecar, TwoHop,
};
use sane_xds_proto::{
    AccessLogConfig, AdminConfig, Bootstrap, Direction, Endpoint, IdentityConfig, Listener,
    MeshResources, Node, Protocol, Service, ServicePort, Telemetry, TlsMode, TracingConfig,
    WorkloadPort,
};
use serde_json::json;
use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::net::TcpListener;

const DEADLINE: Duration = Duration::from_secs(30);
const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CLIENT_SPAN: &str = "00f067aa0ba902b7";
const SERVER: i32 = 2;
const CLIENT: i32 = 3;

fn spiffe(sa: &str) -> String {
    format!("spiffe://cluster.local/ns/default/sa/{sa}")
}

fn telemetry(collector: &str, access_log: Option<&Path>) -> Telemetry {
    Telemetry {
        name: "mesh".into(),
        tracing: Some(TracingConfig {
            endpoint: collector.into(),
            sampling_ratio: Some(1.0),
            ..Default::default()
        }),
        access_log: access_log.map(|p| AccessLogConfig {
            path: p.display().to_string(),
            sampling_ratio: None,
        }),
        ..Default::default()
    }
}

fn http_service(name: &str) -> Service {
    Service {
        name: name.into(),
        ports: vec![ServicePort {
            name: "http".into(),
            port: 80,
            protocol: Protocol::Http.into(),
            target_port: 0,
        }],
        ..Default::default()
    }
}

fn endpoint(service: &str, app_port: u16, sidecar: Option<SocketAddr>, sa: &str) -> Endpoint {
    Endpoint {
        service: service.into(),
        address: "127.0.0.1".into(),
        ports: BTreeMap::from([("http".to_string(), u32::from(app_port))]),
        proxy_port: sidecar.map_or(0, |s| u32::from(s.port())),
        identity: if sidecar.is_some() {
            spiffe(sa)
        } else {
            String::new()
        },
        ..Default::default()
    }
}

fn inbound(app_port: u16) -> Listener {
    Listener {
        name: "inbound".into(),
        direction: Direction::Inbound.into(),
        address: "127.0.0.1:0".into(),
        tls_mode: TlsMode::Strict.into(),
        workload_ports: vec![WorkloadPort {
            port: app_port.into(),
            protocol: Protocol::Http.into(),
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn outbound() -> Listener {
    Listener {
        name: "outbound".into(),
        address: "127.0.0.1:0".into(),
        ..Default::default()
    }
}

fn bootstrap(name: &str, resources: MeshResources, identity: Option<IdentityConfig>) -> Bootstrap {
    Bootstrap {
        node: Node {
            id: name.into(),
            namespace: String::new(),
            workload: name.into(),
            ..Default::default()
        },
        admin: AdminConfig {
            address: "127.0.0.1:0".into(),
        },
        drain_timeout: 2_000,
        resources,
        identity,
        ..Default::default()
    }
}

/// Service B's app: answers every request by calling C through its own
/// sidecar, passing the trace headers on (as instrumented apps do).
async fn start_b_app(sidecar_outbound: Arc<OnceLock<SocketAddr>>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let out = sidecar_outbound.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: http::Request<Incoming>| {
                    let out = out.clone();
                    async move {
                        let mut call = get("http://c/");
                        for name in [
                            "traceparent",
                            "tracestate",
                            "b3",
                            "x-b3-traceid",
                            "x-b3-spanid",
                            "x-b3-sampled",
                            "x-request-id",
                        ] {
                            if let Some(v) = req.headers().get(name) {
                                call.headers_mut().insert(name, v.clone());
                            }
                        }
                        let via = *out.get().expect("B's sidecar started");
                        let rsp = match send(&http1_client_via(via), call).await {
                            Ok(r) => http::Response::builder()
                                .status(r.status)
                                .body(Full::new(r.body))
                                .unwrap(),
                            Err(e) => http::Response::builder()
                                .status(599)
                                .body(Full::new(Bytes::from(e)))
                                .unwrap(),
                        };
                        Ok::<_, Infallible>(rsp)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

struct Chain {
    _dir: tempfile::TempDir,
    _cp: ControlPlane,
    _c_app: EchoApp,
    a: Sidecar,
    b: Sidecar,
    _c: Sidecar,
    b_log: std::path::PathBuf,
}

async fn start_chain(collector: &str) -> Chain {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(&dir.path().join("cp"), &[]).await;
    let identity = |token: &Path, sa: &str| IdentityConfig {
        service_account: sa.into(),
        ca_address: cp.xds_url(),
        root_cert_file: cp.root_cert_file(),
        token_file: token.display().to_string(),
        ..Default::default()
    };
    let b_log = dir.path().join("b-access.log");

    let c_app = EchoApp::start_with(&bins().echo, "c-1", "c").await;
    let token = cp.issue_token(dir.path(), "default", "c").await;
    let c_res = MeshResources {
        listeners: vec![inbound(c_app.addrs.http.port())],
        telemetry: vec![telemetry(collector, None)],
        ..Default::default()
    };
    let c = Sidecar::start(
        &bins().proxy,
        dir.path(),
        "c",
        bootstrap("c", c_res, Some(identity(&token, "c"))),
    )
    .await;
    c.wait_ready(DEADLINE).await;

    let b_out = Arc::new(OnceLock::new());
    let b_app = start_b_app(b_out.clone()).await;
    let token = cp.issue_token(dir.path(), "default", "b").await;
    let b_res = MeshResources {
        listeners: vec![inbound(b_app.port()), outbound()],
        services: vec![http_service("c")],
        endpoints: vec![endpoint(
            "c",
            c_app.addrs.http.port(),
            Some(c.listener("inbound")),
            "c",
        )],
        telemetry: vec![telemetry(collector, Some(&b_log))],
        ..Default::default()
    };
    let b = Sidecar::start(
        &bins().proxy,
        dir.path(),
        "b",
        bootstrap("b", b_res, Some(identity(&token, "b"))),
    )
    .await;
    b.wait_ready(DEADLINE).await;
    b_out.set(b.listener("outbound")).unwrap();

    let token = cp.issue_token(dir.path(), "default", "a").await;
    let a_res = MeshResources {
        listeners: vec![outbound()],
        services: vec![http_service("b")],
        endpoints: vec![endpoint(
            "b",
            b_app.port(),
            Some(b.listener("inbound")),
            "b",
        )],
        telemetry: vec![telemetry(collector, None)],
        ..Default::default()
    };
    let a = Sidecar::start(
        &bins().proxy,
        dir.path(),
        "a",
        bootstrap("a", a_res, Some(identity(&token, "a"))),
    )
    .await;
    a.wait_ready(DEADLINE).await;
    Chain {
        _dir: dir,
        _cp: cp,
        _c_app: c_app,
        a,
        b,
        _c: c,
        b_log,
    }
}

async fn call_b(chain: &Chain, b3: Option<&str>) -> Reply {
    let mut req = get("http://b/hello");
    if let Some(b3) = b3 {
        req.headers_mut().insert("b3", b3.parse().unwrap());
    }
    let reply = send(&http1_client_via(chain.a.listener("outbound")), req)
        .await
        .unwrap();
    assert_eq!(reply.status, 200, "{}", reply.text());
    reply
}

/// The one span of `trace` from `service` named `name`.
fn span<'a>(spans: &'a [ReceivedSpan], service: &str, name: &str) -> &'a ReceivedSpan {
    let found: Vec<_> = spans
        .iter()
        .filter(|s| s.service == service && s.name == name)
        .collect();
    assert_eq!(found.len(), 1, "one {name} span of {service}: {spans:#?}");
    found[0]
}

/// Waits for the six spans of one request through the chain.
async fn trace_spans(receiver: &OtlpReceiver, trace: &str) -> Vec<ReceivedSpan> {
    eventually(DEADLINE, || async {
        let spans: Vec<_> = (receiver.spans().into_iter())
            .filter(|s| s.trace_id == trace)
            .collect();
        if spans.len() >= 6 {
            Ok(spans)
        } else {
            Err(format!("{} of 6 spans so far: {spans:#?}", spans.len()))
        }
    })
    .await
}

fn assert_chain(spans: &[ReceivedSpan], client_parent: &str) {
    let a_out = span(spans, "a", "outbound");
    let a_try = span(spans, "a", "outbound.attempt");
    let b_in = span(spans, "b", "inbound");
    let b_out = span(spans, "b", "outbound");
    let b_try = span(spans, "b", "outbound.attempt");
    let c_in = span(spans, "c", "inbound");
    assert_eq!(a_out.parent_span_id, client_parent, "{a_out:#?}");
    for (child, parent) in [
        (a_try, a_out),
        (b_in, a_try),
        (b_out, b_in),
        (b_try, b_out),
        (c_in, b_try),
    ] {
        assert_eq!(
            child.parent_span_id, parent.span_id,
            "{} of {} is a child of {} of {}",
            child.name, child.service, parent.name, parent.service
        );
    }
    for s in [a_out, a_try, b_out, b_try] {
        assert_eq!(s.kind, CLIENT, "{s:#?}");
    }
    for s in [b_in, c_in] {
        assert_eq!(s.kind, SERVER, "{s:#?}");
        assert_eq!(s.attributes["http.request.method"], "GET");
        assert_eq!(s.attributes["http.response.status_code"], "200");
        assert_eq!(s.attributes["sane.response_flags"], "-");
    }
    assert_eq!(b_in.attributes["sane.peer.identity"], spiffe("a"));
    assert_eq!(c_in.attributes["sane.peer.identity"], spiffe("b"));
    assert_eq!(a_out.attributes["sane.route"], "b.default");
    assert_eq!(a_try.attributes["sane.attempt"], "1");
}

#[tokio::test]
async fn one_trace_links_three_services_and_a_b3_caller_is_continued() {
    let receiver = OtlpReceiver::start().await;
    let chain = start_chain(&receiver.url()).await;

    // A B3 caller: its trace id and span are continued through every hop.
    let reply = call_b(&chain, Some(&format!("{TRACE}-{CLIENT_SPAN}-1"))).await;
    let first_len = reply.body.len() as u64;
    let seen = reply.json().unwrap();
    let at_c = &seen["headers"];
    let b3 = at_c["b3"].as_str().unwrap_or_default();
    assert!(
        b3.starts_with(TRACE),
        "C sees the caller's B3 trace: {seen}"
    );
    let traceparent = at_c["traceparent"].as_str().unwrap_or_default();
    assert!(traceparent.contains(TRACE), "{seen}");
    assert!(
        at_c["x-request-id"].as_str().is_some_and(|s| s.len() == 36),
        "a request id was generated: {seen}"
    );
    let spans = trace_spans(&receiver, TRACE).await;
    assert_chain(&spans, CLIENT_SPAN);

    // No trace header: A starts one, and all hops share it.
    let reply = call_b(&chain, None).await;
    let seen = reply.json().unwrap();
    let traceparent = seen["headers"]["traceparent"].as_str().unwrap().to_string();
    let trace = traceparent.split('-').nth(1).unwrap().to_string();
    assert_ne!(trace, TRACE);
    let spans = trace_spans(&receiver, &trace).await;
    assert_chain(&spans, "");

    // B's inbound metrics carry Istio's labels with both identities
    // (recorded when the response ends, so polled).
    let labels = [
        ("reporter", "destination"),
        ("source_workload", "a"),
        ("destination_workload", "b"),
        ("connection_security_policy", "mutual_tls"),
        ("response_code", "200"),
    ];
    let a_id = spiffe("a");
    let b_id = spiffe("b");
    let mut with_ids = labels.to_vec();
    with_ids.push(("source_principal", &a_id));
    with_ids.push(("destination_principal", &b_id));
    eventually(DEADLINE, || async {
        let metrics = chain.b.admin_get("/metrics").await?.text();
        match metric_value(&metrics, "istio_requests_total", &with_ids) {
            Some(2.0) => Ok(()),
            n => Err(format!("{n:?} requests with {with_ids:?}: {metrics}")),
        }
    })
    .await;
    // A, the source reporter, names the destination: the principal B proved
    // on the mTLS connection, the workload B's sidecar sent back.
    let source = [
        ("reporter", "source"),
        ("source_workload", "a"),
        ("source_principal", a_id.as_str()),
        ("destination_workload", "b"),
        ("destination_principal", b_id.as_str()),
        ("destination_service", "b.default.svc.cluster.local"),
        ("response_code", "200"),
    ];
    eventually(DEADLINE, || async {
        let metrics = chain.a.admin_get("/metrics").await?.text();
        match metric_value(&metrics, "istio_requests_total", &source) {
            Some(2.0) => Ok(()),
            n => Err(format!("{n:?} requests with {source:?}: {metrics}")),
        }
    })
    .await;

    // B's access log: one JSON line per request, with the trace id.
    let lines = eventually(DEADLINE, || async {
        let text = std::fs::read_to_string(&chain.b_log).unwrap_or_default();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        if lines.len() >= 4 {
            Ok(lines)
        } else {
            Err(format!("{} access-log lines so far: {text}", lines.len()))
        }
    })
    .await;
    let inbound = lines
        .iter()
        .find(|l| l["direction"] == "inbound" && l["trace_id"] == TRACE)
        .unwrap_or_else(|| panic!("an inbound line of the B3 trace: {lines:#?}"));
    assert_eq!(inbound["method"], "GET");
    assert_eq!(inbound["path"], "/hello");
    assert_eq!(inbound["status"], 200);
    assert_eq!(inbound["response_flags"], "-");
    assert_eq!(inbound["source_principal"], a_id.as_str());
    assert!(inbound["duration_ms"].as_f64().is_some());
    // The bytes B's sidecar handed back are the bytes the client got.
    assert_eq!(inbound["bytes_sent"], first_len, "{inbound}");
    assert_eq!(inbound["bytes_received"], 0, "{inbound}");
    // B's outbound line names C as the peer C proved to be.
    let outbound = lines
        .iter()
        .find(|l| l["direction"] == "outbound" && l["trace_id"] == TRACE)
        .unwrap_or_else(|| panic!("an outbound line of the B3 trace: {lines:#?}"));
    assert_eq!(outbound["destination_principal"], spiffe("c"), "{outbound}");
}

#[tokio::test]
async fn export_to_an_unreachable_collector_neither_fails_nor_slows_requests() {
    // A port nothing listens on.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let dir = tempfile::tempdir().unwrap();
    let app = EchoApp::start_with(&bins().echo, "echo-1", "echo").await;
    let mut t = telemetry(&format!("http://{dead}"), None);
    t.tracing.as_mut().unwrap().max_queue = 4;
    let res = MeshResources {
        listeners: vec![outbound()],
        services: vec![http_service("echo")],
        endpoints: vec![endpoint("echo", app.addrs.http.port(), None, "")],
        telemetry: vec![t],
        ..Default::default()
    };
    let a = Sidecar::start(&bins().proxy, dir.path(), "a", bootstrap("a", res, None)).await;
    a.wait_ready(DEADLINE).await;
    let client = http1_client_via(a.listener("outbound"));
    for i in 0..200 {
        let reply = send(&client, get("http://echo/")).await.unwrap();
        assert_eq!(reply.status, 200, "request {i}: {}", reply.text());
    }
    // The spans were produced and then lost (export failed or the queue
    // was full), and counted.
    eventually(DEADLINE, || async {
        let m = a.admin_get("/metrics").await?.text();
        let lost = metric_value(&m, "sane_trace_spans_total", &[("result", "failed")])
            .unwrap_or(0.0)
            + metric_value(&m, "sane_trace_spans_total", &[("result", "dropped")]).unwrap_or(0.0);
        if lost > 0.0 {
            Ok(())
        } else {
            Err(format!("no lost spans counted yet: {m}"))
        }
    })
    .await;
}

#[tokio::test]
async fn prometheus_scrapes_both_sidecars_and_computes_the_success_rate_of_b() {
    let Some(bin) = sane_e2e::harness::prometheus_or_skip(
        "prometheus_scrapes_both_sidecars_and_computes_the_success_rate_of_b",
    ) else {
        return;
    };
    // B is the echo service behind the server sidecar.
    let mesh = TwoHop::start().await;
    let dir = tempfile::tempdir().unwrap();
    let prometheus = Prometheus::start(
        &bin,
        dir.path(),
        &[mesh.client().admin, mesh.server().admin],
    )
    .await;

    const OK: usize = 9;
    const FAILING: usize = 3;
    let client = mesh.http1();
    for i in 0..OK + FAILING {
        let mut req = get(&TwoHop::url("/"));
        if i % 4 == 3 {
            req.headers_mut()
                .insert("x-echo-status", "503".parse().unwrap());
        }
        let reply = send(&client, req).await.unwrap();
        let want = if i % 4 == 3 { 503 } else { 200 };
        assert_eq!(reply.status, want, "{}", reply.text());
    }

    // Both sidecars are scraped.
    eventually(DEADLINE, || async {
        let up = prometheus.query("up{job=\"sane\"} == 1").await?;
        (up.len() == 2)
            .then_some(())
            .ok_or_else(|| format!("targets up: {up:?}"))
    })
    .await;
    // Poll until the scrape holds every request, then compute B's success
    // rate the way Istio dashboards do, from the destination reporter.
    // Only B's sidecar reports as the destination.
    let b = format!(
        "reporter=\"destination\",instance=\"{}\"",
        mesh.server().admin
    );
    let total = format!("sum(istio_requests_total{{{b}}})");
    eventually(DEADLINE, || async {
        let n = prometheus.scalar(&total).await?;
        (n == (OK + FAILING) as f64)
            .then_some(())
            .ok_or_else(|| format!("{total} = {n}"))
    })
    .await;
    let rate = format!(
        "sum(istio_requests_total{{{b},response_code!~\"5..\"}}) / sum(istio_requests_total{{{b}}})"
    );
    let got = prometheus.scalar(&rate).await.unwrap();
    let want = OK as f64 / (OK + FAILING) as f64;
    assert!((got - want).abs() < 1e-9, "{rate} = {got}, sent {want}");
    // The client sidecar (source reporter) saw the same traffic.
    let source = "sum(istio_requests_total{reporter=\"source\",destination_service=\"echo.default.svc.cluster.local\",response_code=\"503\"})";
    assert_eq!(prometheus.scalar(source).await.unwrap(), FAILING as f64);
}

#[tokio::test]
async fn grpc_status_comes_from_trailers_and_body_bytes_are_counted() {
    let mesh = TwoHop::start().await;
    let mut grpc = mesh.grpc();
    // OK: tonic sends `grpc-status: 0` in the trailers only.
    let reply = grpc.unary(EchoRequest::new("hi")).await.unwrap();
    assert_eq!(reply.into_inner().message, "hi");
    // A status after a message: real trailers on a 200 response.
    let reqs = futures::stream::iter(vec![
        EchoRequest::new("ok"),
        EchoRequest::failing(tonic::Code::Aborted),
    ]);
    let mut replies = grpc.bidi(reqs).await.unwrap().into_inner();
    assert_eq!(replies.message().await.unwrap().unwrap().message, "ok");
    let status = replies.message().await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Aborted, "{status:?}");

    // An HTTP request with a streamed body of known size (no
    // content-length: the count comes from the frames).
    const CHUNKS: usize = 10;
    const CHUNK: usize = 1_000;
    let chunks = futures::stream::iter((0..CHUNKS).map(|_| Bytes::from(vec![b'x'; CHUNK])));
    let req = request(
        http::Method::POST,
        &TwoHop::url("/sha256"),
        streamed(chunks),
    );
    let reply = send(&mesh.http1(), req).await.unwrap();
    assert_eq!(reply.status, 200, "{}", reply.text());
    let response_len = reply.body.len() as f64;

    for (sidecar, reporter) in [(mesh.client(), "source"), (mesh.server(), "destination")] {
        eventually(DEADLINE, || async {
            let m = sidecar.metrics().await?;
            let grpc = |code: &str| {
                metric_value(
                    &m,
                    "istio_requests_total",
                    &[
                        ("reporter", reporter),
                        ("request_protocol", "grpc"),
                        ("response_code", "200"),
                        ("grpc_response_status", code),
                    ],
                )
            };
            let http = [("reporter", reporter), ("request_protocol", "http")];
            let got = (
                grpc("0"),
                grpc("10"),
                metric_value(&m, "istio_request_bytes_sum", &http),
                metric_value(&m, "istio_response_bytes_sum", &http),
            );
            let want = (
                Some(1.0),
                Some(1.0),
                Some((CHUNKS * CHUNK) as f64),
                Some(response_len),
            );
            if got == want {
                Ok(())
            } else {
                Err(format!("{reporter}: got {got:?}, want {want:?}: {m}"))
            }
        })
        .await;
    }
}

/// The `default/mesh` Telemetry resource, as the API takes it.
fn telemetry_json(
    collector: &str,
    ratio: f64,
    service_name: &str,
    log: Option<&Path>,
) -> serde_json::Value {
    let mut t = json!({
        "tracing": { "endpoint": collector, "sampling_ratio": ratio, "service_name": service_name },
    });
    if let Some(log) = log {
        t["access_log"] = json!({ "path": log.display().to_string() });
    }
    t
}

async fn log_lines(path: &Path) -> Vec<serde_json::Value> {
    let text = tokio::fs::read_to_string(path).await.unwrap_or_default();
    text.lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

#[tokio::test]
async fn a_telemetry_resource_from_the_control_plane_reconfigures_a_running_sidecar() {
    let receiver = OtlpReceiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(&dir.path().join("cp"), &[]).await;
    let api = ApiClient::new(&cp);
    let app = EchoApp::start_with(&bins().echo, "echo-1", "echo").await;
    api.put(
        "/api/v1/services/default/echo",
        &serde_json::to_value(echo_service("echo")).unwrap(),
    )
    .await;
    let ep = app.endpoint(None);
    api.put(
        &format!("/api/v1/endpoints/default/echo/{}:{}", ep.address, ep.port),
        &serde_json::to_value(&ep).unwrap(),
    )
    .await;
    let sidecar = Sidecar::start(
        &bins().proxy,
        dir.path(),
        "web",
        xds_bootstrap(&cp, "web", vec![outbound()]),
    )
    .await;
    sidecar.wait_ready(DEADLINE).await;
    let client = http1_client_via(sidecar.listener("outbound"));
    let call = |id: String| {
        let client = client.clone();
        async move {
            let mut req = get("http://echo/");
            req.headers_mut()
                .insert("x-request-id", id.parse().unwrap());
            let reply = send(&client, req).await?;
            (reply.status == 200)
                .then_some(())
                .ok_or_else(|| format!("{id}: {} {}", reply.status, reply.text()))
        }
    };
    eventually(DEADLINE, || call("warmup".into())).await;
    let log = dir.path().join("web-access.log");
    let collector = receiver.url();
    const TELEMETRY: &str = "/api/v1/telemetry/default/mesh";

    // 1. Sampling 0, access log on: requests are logged, none traced.
    api.put(
        TELEMETRY,
        &telemetry_json(&collector, 0.0, "phase1", Some(&log)),
    )
    .await;
    let mut n = 0;
    eventually(DEADLINE, || {
        n += 1;
        let id = format!("phase1-{n}");
        let log = log.clone();
        let call = call(id.clone());
        async move {
            call.await?;
            let lines = log_lines(&log).await;
            lines
                .iter()
                .any(|l| l["request_id"] == id.as_str())
                .then_some(())
                .ok_or_else(|| format!("no access-log line for {id} yet"))
        }
    })
    .await;
    for i in 0..10 {
        call(format!("unsampled-{i}")).await.unwrap();
    }
    eventually(DEADLINE, || async {
        let lines = log_lines(&log).await;
        let logged = (0..10)
            .filter(|i| {
                lines
                    .iter()
                    .any(|l| l["request_id"] == format!("unsampled-{i}").as_str())
            })
            .count();
        (logged == 10)
            .then_some(())
            .ok_or_else(|| format!("{logged} of 10 lines"))
    })
    .await;
    // Span and log line are recorded together: with every line written,
    // any span would have been queued by now.
    let m = sidecar.metrics().await.unwrap();
    assert_eq!(
        metric_value(&m, "sane_trace_spans_total", &[]).unwrap_or(0.0),
        0.0,
        "{m}"
    );
    assert!(receiver.spans().is_empty(), "{:#?}", receiver.spans());

    // 2. Sampling 1, access log off: every request is traced, none logged.
    api.put(TELEMETRY, &telemetry_json(&collector, 1.0, "phase2", None))
        .await;
    let mut n = 0;
    let traced = eventually(DEADLINE, || {
        n += 1;
        let id = format!("phase2-{n}");
        let call = call(id.clone());
        let receiver = &receiver;
        async move {
            call.await?;
            receiver
                .spans()
                .into_iter()
                .find(|s| {
                    s.service == "phase2"
                        && s.attributes.get("sane.request_id").map(String::as_str)
                            == Some(id.as_str())
                })
                .map(|_| id.clone())
                .ok_or_else(|| format!("no phase2 span of {id} yet"))
        }
    })
    .await;
    // That request ran with the new settings: no access log.
    let lines = log_lines(&log).await;
    assert!(
        !lines.iter().any(|l| l["request_id"] == traced.as_str()),
        "{traced} was logged with the access log off: {lines:#?}"
    );
    drop(app);
}

/// The two-hop mesh with the client sidecar's access log on, into `log`.
async fn two_hop_with_access_log(log: &Path) -> TwoHop {
    let path = log.display().to_string();
    TwoHop::start_from(TwoHop::builder().client_config(move |b| {
        b.resources.telemetry.push(Telemetry {
            name: "mesh".into(),
            access_log: Some(AccessLogConfig {
                path,
                sampling_ratio: None,
            }),
            ..Default::default()
        });
    }))
    .await
}

#[tokio::test]
async fn a_caller_that_disconnects_before_the_response_is_recorded_once_as_dc() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("client-access.log");
    let mesh = two_hop_with_access_log(&log).await;
    // Warm up (and prove the log works) with one normal request.
    let mut warm = get(&TwoHop::url("/warm"));
    warm.headers_mut()
        .insert("x-request-id", "warm".parse().unwrap());
    let reply = send(&mesh.http1(), warm).await.unwrap();
    assert_eq!(reply.status, 200, "{}", reply.text());

    // A request to a slow upstream (the app waits a minute before
    // answering); the caller hangs up once the app has it.
    let served = mesh.app().requests().await;
    let mut stream = tokio::net::TcpStream::connect(mesh.outbound_http)
        .await
        .unwrap();
    let head =
        "GET /slow HTTP/1.1\r\nhost: echo\r\nx-request-id: gone\r\nx-echo-delay: 60s\r\n\r\n";
    tokio::io::AsyncWriteExt::write_all(&mut stream, head.as_bytes())
        .await
        .unwrap();
    eventually(DEADLINE, || async {
        let n = mesh.app().requests().await;
        (n > served)
            .then_some(())
            .ok_or_else(|| format!("the app has not got the slow request ({n})"))
    })
    .await;
    drop(stream);

    // The client sidecar records it: status 0 (no response was sent),
    // flag DC, in the metrics and in the access log.
    let dc = [
        ("reporter", "source"),
        ("response_code", "0"),
        ("response_flags", "DC"),
    ];
    eventually(DEADLINE, || async {
        let m = mesh.client().metrics().await?;
        let got = metric_value(&m, "istio_requests_total", &dc);
        (got == Some(1.0))
            .then_some(())
            .ok_or_else(|| format!("DC requests {got:?}:\n{m}"))
    })
    .await;
    let line = eventually(DEADLINE, || async {
        let lines = log_lines(&log).await;
        let gone: Vec<_> = lines.iter().filter(|l| l["request_id"] == "gone").collect();
        match gone.as_slice() {
            [one] => Ok((*one).clone()),
            _ => Err(format!("{} lines for the request: {lines:#?}", gone.len())),
        }
    })
    .await;
    assert_eq!(line["response_flags"], "DC", "{line}");
    assert_eq!(line["status"], 0, "{line}");
    assert_eq!(line["path"], "/slow", "{line}");
    // Recorded exactly once: the warm-up and the dropped request, nothing
    // else, in both the metrics and the log.
    let m = mesh.client().metrics().await.unwrap();
    assert_eq!(
        metric_value(&m, "istio_requests_total", &[("reporter", "source")]),
        Some(2.0),
        "{m}"
    );
    assert_eq!(log_lines(&log).await.len(), 2);
    // The cancellation reached the app: its delay was cut short.
    eventually(DEADLINE, || async {
        let n = mesh.app().cancelled().await;
        (n == 1)
            .then_some(())
            .ok_or_else(|| format!("app cancelled {n}"))
    })
    .await;
}

#[tokio::test]
async fn a_proxied_tcp_connection_gets_one_access_log_line() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("client-access.log");
    let mesh = two_hop_with_access_log(&log).await;
    let payload = vec![b'x'; 10_000];
    let back = tcp_roundtrip(mesh.outbound_tcp, &payload).await.unwrap();
    assert_eq!(back.len(), payload.len());

    let line = eventually(DEADLINE, || async {
        let lines = log_lines(&log).await;
        let tcp: Vec<_> = lines.iter().filter(|l| l["protocol"] == "TCP").collect();
        match tcp.as_slice() {
            [one] => Ok((*one).clone()),
            _ => Err(format!("{} TCP lines: {lines:#?}", tcp.len())),
        }
    })
    .await;
    assert_eq!(line["direction"], "outbound", "{line}");
    assert_eq!(line["bytes_received"], 10_000, "{line}");
    assert_eq!(line["bytes_sent"], 10_000, "{line}");
    assert_eq!(line["response_flags"], "-", "{line}");
    assert_eq!(
        line["upstream_service"], "echo.default.svc.cluster.local",
        "{line}"
    );
    // Spliced to the server sidecar's inbound listener.
    assert_eq!(
        line["upstream_host"],
        mesh.server().listener("inbound").to_string(),
        "{line}"
    );
    assert!(line["duration_ms"].as_f64().unwrap() >= 0.0, "{line}");
    assert!(
        humantime::parse_rfc3339(line["start_time"].as_str().unwrap()).is_ok(),
        "{line}"
    );
}
