//! The outbound stack with its resilience layers, end to end in memory: the
//! real route, policy, cluster and upstream code, with endpoints that are
//! HTTP/1.1 servers on in-memory pipes (the connector is the injected I/O
//! edge). No sockets, no sleeps: slow endpoints wait on a signal.

use bytes::Bytes;
use futures::future::BoxFuture;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use prometheus::Registry;
use sane_proxy::config::{ConfigStore, Snapshot};
use sane_proxy::error::RESPONSE_FLAGS_HEADER;
use sane_proxy::stack::{self, HttpSvc, StackContext};
use sane_proxy::telemetry::Metrics;
use sane_proxy::tls::{Identity, TlsMetrics};
use sane_proxy::upstream::connect::Connect;
use sane_proxy::upstream::Upstream;
use sane_proxy::Body;
use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;
use tower::ServiceExt;

/// How one in-memory endpoint answers.
type Behaviour =
    Arc<dyn Fn(Request<Incoming>) -> BoxFuture<'static, Response<Full<Bytes>>> + Send + Sync>;

/// Endpoints by address, and every request they received.
#[derive(Clone, Default)]
struct Apps {
    behaviours: Arc<Mutex<HashMap<SocketAddr, Behaviour>>>,
    seen: Arc<Mutex<Vec<(SocketAddr, HeaderMap)>>>,
}

impl std::fmt::Debug for Apps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Apps")
    }
}

impl Apps {
    fn answer(&self, addr: &str, b: Behaviour) {
        self.behaviours
            .lock()
            .unwrap()
            .insert(addr.parse().unwrap(), b);
    }

    fn hits(&self, addr: &str) -> Vec<HeaderMap> {
        let addr: SocketAddr = addr.parse().unwrap();
        let seen = self.seen.lock().unwrap();
        seen.iter()
            .filter(|(a, _)| *a == addr)
            .map(|(_, h)| h.clone())
            .collect()
    }
}

impl Connect for Apps {
    fn connect(
        &self,
        addr: SocketAddr,
    ) -> BoxFuture<'static, io::Result<sane_proxy::protocol::io::BoxIo>> {
        let behaviour = self.behaviours.lock().unwrap().get(&addr).cloned();
        let seen = self.seen.clone();
        Box::pin(async move {
            let Some(behaviour) = behaviour else {
                return Err(io::ErrorKind::ConnectionRefused.into());
            };
            let (client, server) = tokio::io::duplex(64 * 1024);
            let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                seen.lock().unwrap().push((addr, req.headers().clone()));
                let rsp = behaviour(req);
                async move { Ok::<_, io::Error>(rsp.await) }
            });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(server), svc),
            );
            Ok(Box::new(client) as sane_proxy::protocol::io::BoxIo)
        })
    }
}

fn status(code: u16) -> Behaviour {
    Arc::new(move |_req| {
        Box::pin(async move {
            let mut r = Response::new(Full::new(Bytes::from_static(b"app\n")));
            *r.status_mut() = StatusCode::from_u16(code).unwrap();
            r
        })
    })
}

/// Answers 200 once `release` is notified.
fn gated(release: Arc<Notify>) -> Behaviour {
    Arc::new(move |_req| {
        let release = release.clone();
        Box::pin(async move {
            release.notified().await;
            Response::new(Full::new(Bytes::new()))
        })
    })
}

const SERVICES: &str = r#"
resources:
  services:
    - { name: echo, ports: [ { name: http, port: 80 } ] }
    - { name: shadow, ports: [ { name: http, port: 80 } ] }
  endpoints:
    - { service: echo, address: 10.0.0.1, port: 8080 }
    - { service: echo, address: 10.0.0.2, port: 8080 }
    - { service: shadow, address: 10.0.0.9, port: 8080 }
"#;
const A: &str = "10.0.0.1:8080";
const B: &str = "10.0.0.2:8080";
const SHADOW: &str = "10.0.0.9:8080";

struct Proxy {
    svc: HttpSvc,
    config: Arc<ConfigStore>,
    registry: Registry,
}

fn proxy(apps: &Apps, extra: &str) -> Proxy {
    let text = format!("{SERVICES}{extra}");
    let bootstrap = serde_yaml::from_str(&text).unwrap();
    let snapshot = Snapshot::compile(bootstrap, 1, None, "test.yaml").unwrap();
    let config = Arc::new(ConfigStore::new(snapshot, None));
    let registry = Registry::new();
    let metrics = Metrics::register(&registry).unwrap();
    let identity = Arc::new(Identity::new(
        false,
        TlsMetrics::register(&registry).unwrap(),
    ));
    let upstream = Arc::new(Upstream::new(Arc::new(apps.clone()), identity.clone()));
    let svc = stack::outbound(StackContext {
        config: config.clone(),
        upstream,
        metrics,
        identity,
        drain: sane_proxy::drain::Drain::default(),
        tracer: Arc::new(sane_proxy::trace::Tracer::new(&registry).unwrap()),
        own_sockets: Default::default(),
    });
    Proxy {
        svc,
        config,
        registry,
    }
}

fn get(path: &str) -> Request<Body> {
    Request::get(format!("http://echo{path}"))
        .body(sane_proxy::body::empty())
        .unwrap()
}

async fn send(p: &Proxy, req: Request<Body>) -> Response<Body> {
    tokio::time::timeout(Duration::from_secs(10), p.svc.clone().oneshot(req))
        .await
        .expect("in time")
        .expect("observe turns errors into responses")
}

fn flags(r: &Response<Body>) -> &str {
    r.headers()
        .get(RESPONSE_FLAGS_HEADER)
        .map_or("-", |v| v.to_str().unwrap())
}

#[tokio::test]
async fn a_failed_attempt_is_retried_on_the_other_endpoint() {
    let apps = Apps::default();
    apps.answer(A, status(503));
    apps.answer(B, status(200));
    let p = proxy(
        &apps,
        r#"
  routes:
    - name: echo
      service: echo
      rules: [ { retry: { attempts: 1, retry_on: [gateway-error], base_interval: 1ms } } ]
"#,
    );
    for _ in 0..20 {
        let rsp = send(&p, get("/")).await;
        assert_eq!(rsp.status(), 200, "{}", flags(&rsp));
    }
    // Every attempt on A was followed by a second attempt, on B.
    let retried_on_b = apps
        .hits(B)
        .iter()
        .filter(|h| h.get("x-sane-attempt").is_some_and(|v| v == "2"))
        .count();
    assert_eq!(retried_on_b, apps.hits(A).len());
    assert!(apps.hits(A).iter().all(|h| h["x-sane-attempt"] == "1"));
}

#[tokio::test]
async fn exhausted_retries_answer_with_urx() {
    let apps = Apps::default();
    apps.answer(A, status(503));
    apps.answer(B, status(503));
    let p = proxy(
        &apps,
        r#"
  routes:
    - name: echo
      service: echo
      rules: [ { retry: { attempts: 2, retry_on: [gateway-error], base_interval: 1ms } } ]
"#,
    );
    let rsp = send(&p, get("/")).await;
    assert_eq!(rsp.status(), 503);
    assert_eq!(flags(&rsp), "URX");
    assert_eq!(apps.hits(A).len() + apps.hits(B).len(), 3);
    // The request is recorded when its response ends.
    rsp.into_body().collect().await.unwrap();
    let text = prometheus::TextEncoder::new()
        .encode_to_string(&p.registry.gather())
        .unwrap();
    assert!(text.contains("response_flags=\"URX\""), "{text}");
    assert!(
        text.contains("sane_retries_total{cluster=\"echo.default:80\"} 2"),
        "{text}"
    );
}

#[tokio::test]
async fn failing_endpoints_are_ejected_and_shown_in_the_snapshot() {
    let apps = Apps::default();
    apps.answer(A, status(500));
    apps.answer(B, status(200));
    let p = proxy(
        &apps,
        r#"
  policies:
    - name: echo
      service: echo
      load_balancer: round_robin
      outlier_detection: { consecutive_5xx: 2, max_ejection_percent: 50, base_ejection_time: 1m }
"#,
    );
    for _ in 0..4 {
        send(&p, get("/")).await;
    }
    let before = apps.hits(A).len();
    assert_eq!(
        before, 2,
        "round robin reached A twice, then it was ejected"
    );
    for _ in 0..10 {
        assert_eq!(send(&p, get("/")).await.status(), 200);
    }
    assert_eq!(apps.hits(A).len(), before);
    let snapshot = p.config.load();
    let cluster = snapshot
        .clusters
        .iter()
        .find(|c| c.name == "echo.default:80")
        .unwrap();
    let a = cluster
        .endpoints
        .iter()
        .find(|e| e.connect_addr == A.parse().unwrap())
        .unwrap();
    assert!(a.ejected_until().is_some());
}

#[tokio::test]
async fn a_full_breaker_sheds_with_uo() {
    let apps = Apps::default();
    let release = Arc::new(Notify::new());
    apps.answer(A, gated(release.clone()));
    apps.answer(B, gated(release.clone()));
    let p = proxy(
        &apps,
        r#"
  policies:
    - { name: echo, service: echo, circuit_breaker: { max_requests: 1 } }
"#,
    );
    let svc = p.svc.clone();
    let first = tokio::spawn(svc.oneshot(get("/")));
    // Wait until the first request holds the slot at an endpoint.
    while apps.hits(A).len() + apps.hits(B).len() == 0 {
        tokio::task::yield_now().await;
    }
    let rsp = send(&p, get("/")).await;
    assert_eq!(rsp.status(), 503);
    assert_eq!(flags(&rsp), "UO");
    release.notify_one();
    assert_eq!(first.await.unwrap().unwrap().status(), 200);
}

#[tokio::test]
async fn faults_deadlines_headers_and_mirrors_reach_the_wire() {
    let apps = Apps::default();
    apps.answer(A, status(200));
    apps.answer(B, status(200));
    apps.answer(SHADOW, status(200));
    let p = proxy(
        &apps,
        r#"
  routes:
    - name: echo
      service: echo
      rules:
        - matches: [ { path: { kind: prefix, value: /broken } } ]
          fault: { abort: { http_status: 418 } }
        - timeout: 5s
          mirror: { service: shadow }
          request_headers: { set: { x-env: prod } }
          response_headers: { add: { x-served-by: sane } }
"#,
    );
    let rsp = send(&p, get("/broken")).await;
    assert_eq!(rsp.status(), 418);
    assert_eq!(flags(&rsp), "FI");
    assert!(apps.hits(A).is_empty() && apps.hits(B).is_empty());

    let mut req = get("/ok");
    req.headers_mut()
        .insert("x-sane-deadline-ms", "2000".parse().unwrap());
    let rsp = send(&p, req).await;
    assert_eq!(rsp.status(), 200);
    assert_eq!(rsp.headers()["x-served-by"], "sane");
    let _ = rsp.into_body().collect().await;
    let seen: Vec<_> = apps.hits(A).into_iter().chain(apps.hits(B)).collect();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0]["x-env"], "prod");
    let left: u64 = seen[0]["x-sane-deadline-ms"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=2000).contains(&left), "{left}");
    // The copy arrives on its own time.
    tokio::time::timeout(Duration::from_secs(10), async {
        while apps.hits(SHADOW).is_empty() {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the shadow got its copy");
    let copy = &apps.hits(SHADOW)[0];
    assert_eq!(copy["host"], "echo-shadow");
    assert_eq!(copy["x-env"], "prod");
}
