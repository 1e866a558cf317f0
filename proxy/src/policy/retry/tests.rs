//! Retry layer tests against a mock upstream on paused time.

use super::*;
use crate::error::RESPONSE_FLAGS_HEADER;
use http::{Method, StatusCode};
use sane_xds_proto as proto;
use std::time::Duration;
use tower::Layer;
use tower_test::mock;

type Handle = mock::Handle<Request<Body>, Response<Body>>;
type BoxedSvc = tower::util::BoxCloneService<Request<Body>, Response<Body>, ProxyError>;

fn metrics() -> (ResilienceMetrics, prometheus::Registry) {
    let r = prometheus::Registry::new();
    (ResilienceMetrics::register(&r).unwrap(), r)
}

fn stack(m: &ResilienceMetrics) -> (BoxedSvc, Handle) {
    let (svc, handle) = mock::pair::<Request<Body>, Response<Body>>();
    let svc = svc.map_err(|e| match e.downcast::<ProxyError>() {
        Ok(p) => *p,
        Err(_) => ProxyError::Draining,
    });
    (
        tower::util::BoxCloneService::new(RetryLayer::new(m.clone()).layer(svc)),
        handle,
    )
}

fn policy(p: proto::RetryPolicy) -> Arc<RetryPolicy> {
    Arc::new(RetryPolicy::compile(&proto::RetryPolicy {
        base_interval_ms: 10,
        ..p
    }))
}

fn gateway_errors(attempts: u32) -> Arc<RetryPolicy> {
    policy(proto::RetryPolicy {
        attempts: Some(attempts),
        retry_on: vec!["gateway-error".into()],
        ..Default::default()
    })
}

fn req(method: Method, body: Body, p: &Arc<RetryPolicy>) -> Request<Body> {
    let mut r = Request::builder()
        .method(method)
        .uri("http://echo/")
        .body(body)
        .unwrap();
    r.extensions_mut().insert(p.clone());
    r
}

fn status(s: u16) -> Response<Body> {
    let mut r = Response::new(body::empty());
    *r.status_mut() = StatusCode::from_u16(s).unwrap();
    r
}

fn refused() -> ProxyError {
    ProxyError::ConnectFailed {
        addr: "127.0.0.1:1".parse().unwrap(),
        source: std::io::ErrorKind::ConnectionRefused.into(),
    }
}

fn text(registry: &prometheus::Registry) -> String {
    prometheus::TextEncoder::new()
        .encode_to_string(&registry.gather())
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn retries_to_the_limit_then_returns_the_last_answer_with_urx() {
    let (m, registry) = metrics();
    let (svc, mut handle) = stack(&m);
    let p = gateway_errors(2);
    let call = tokio::spawn(svc.oneshot(req(Method::GET, body::empty(), &p)));
    let mut tried = None;
    for attempt in 1..=3u32 {
        let (r, send) = handle.next_request().await.unwrap();
        assert_eq!(r.headers()[ATTEMPT_HEADER], attempt.to_string().as_str());
        // Every attempt shares one record of the endpoints tried.
        let t = r.extensions().get::<TriedEndpoints>().unwrap().clone();
        t.push(format!("10.0.0.{attempt}:80").parse().unwrap());
        assert_eq!(t.addrs().len(), attempt as usize);
        tried.get_or_insert(t);
        send.send_response(status(503));
    }
    let rsp = call.await.unwrap().unwrap();
    assert_eq!(rsp.status(), 503);
    assert_eq!(rsp.headers()[RESPONSE_FLAGS_HEADER], "URX");
    let t = text(&registry);
    assert!(
        t.contains("sane_retries_total{cluster=\"unknown\"} 2"),
        "{t}"
    );
    assert!(t.contains("limit=\"attempts\"} 1"), "{t}");
}

#[tokio::test(start_paused = true)]
async fn a_success_ends_the_retries_without_a_flag() {
    let (m, _r) = metrics();
    let (svc, mut handle) = stack(&m);
    let p = gateway_errors(3);
    let call = tokio::spawn(svc.oneshot(req(Method::GET, body::empty(), &p)));
    let (_r, send) = handle.next_request().await.unwrap();
    send.send_error(refused());
    let (_r, send) = handle.next_request().await.unwrap();
    send.send_response(status(200));
    let rsp = call.await.unwrap().unwrap();
    assert_eq!(rsp.status(), 200);
    assert!(rsp.headers().get(RESPONSE_FLAGS_HEADER).is_none());
}

#[tokio::test(start_paused = true)]
async fn post_is_retried_only_when_the_upstream_never_saw_it() {
    let (m, _r) = metrics();
    let (svc, mut handle) = stack(&m);
    let p = gateway_errors(2);
    let call = tokio::spawn(
        svc.clone()
            .oneshot(req(Method::POST, body::full("order"), &p)),
    );
    let (_r, send) = handle.next_request().await.unwrap();
    send.send_response(status(503));
    assert_eq!(call.await.unwrap().unwrap().status(), 503, "not retried");

    // A refused connection never reached the upstream: safe for POST, and
    // the body is replayed in full.
    let call = tokio::spawn(svc.oneshot(req(Method::POST, body::full("order"), &p)));
    let (_r, send) = handle.next_request().await.unwrap();
    send.send_error(refused());
    let (r, send) = handle.next_request().await.unwrap();
    let sent = r.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(sent, "order");
    send.send_response(status(201));
    assert_eq!(call.await.unwrap().unwrap().status(), 201);
}

#[tokio::test(start_paused = true)]
async fn an_opted_in_route_replays_the_streamed_body() {
    let (m, _r) = metrics();
    let (svc, mut handle) = stack(&m);
    let p = policy(proto::RetryPolicy {
        attempts: Some(1),
        retry_on: vec!["5xx".into()],
        retry_non_idempotent: true,
        ..Default::default()
    });
    let call = tokio::spawn(svc.oneshot(req(Method::POST, body::full("payload"), &p)));
    let (r, send) = handle.next_request().await.unwrap();
    // The first attempt streams (and copies) the whole body.
    assert_eq!(r.into_body().collect().await.unwrap().to_bytes(), "payload");
    send.send_response(status(500));
    let (r, send) = handle.next_request().await.unwrap();
    assert_eq!(r.into_body().collect().await.unwrap().to_bytes(), "payload");
    send.send_response(status(200));
    assert_eq!(call.await.unwrap().unwrap().status(), 200);
}

#[tokio::test(start_paused = true)]
async fn bodies_over_the_bound_are_not_retried() {
    let (m, _r) = metrics();
    let (svc, mut handle) = stack(&m);
    let p = policy(proto::RetryPolicy {
        attempts: Some(3),
        retry_on: vec!["5xx".into()],
        max_body_bytes: 4,
        ..Default::default()
    });
    // Declared too large: passed through untouched.
    let mut r = req(Method::PUT, body::full("too long"), &p);
    r.headers_mut().insert("content-length", 8.into());
    let call = tokio::spawn(svc.clone().oneshot(r));
    let (r, send) = handle.next_request().await.unwrap();
    assert!(r.headers().get(ATTEMPT_HEADER).is_none());
    send.send_response(status(500));
    assert_eq!(call.await.unwrap().unwrap().status(), 500);
    // Streamed past the bound: the copy is dropped, no retry, no URX.
    let call = tokio::spawn(svc.oneshot(req(Method::PUT, body::full("too long"), &p)));
    let (r, send) = handle.next_request().await.unwrap();
    assert_eq!(
        r.into_body().collect().await.unwrap().to_bytes(),
        "too long"
    );
    send.send_response(status(500));
    let rsp = call.await.unwrap().unwrap();
    assert_eq!(rsp.status(), 500);
    assert!(rsp.headers().get(RESPONSE_FLAGS_HEADER).is_none());
}

#[tokio::test(start_paused = true)]
async fn an_empty_budget_stops_retries_with_urx() {
    let (m, registry) = metrics();
    let (svc, mut handle) = stack(&m);
    let p = gateway_errors(5);
    let budget = Arc::new(RetryBudget::new(
        "echo.default:80",
        &proto::RetryBudget {
            percent: Some(50.0),
            min_retries_per_second: Some(0),
            ttl_ms: 10_000,
        },
    ));
    let mut r = req(Method::GET, body::empty(), &p);
    r.extensions_mut().insert(budget.clone());
    let call = tokio::spawn(svc.oneshot(r));
    // One request buys half a retry: none.
    let (_r, send) = handle.next_request().await.unwrap();
    send.send_error(refused());
    let err = call.await.unwrap().unwrap_err();
    assert_eq!(err.response_flag(), "URX");
    assert_eq!(err.to_response().headers()[RESPONSE_FLAGS_HEADER], "UF,URX");
    assert!(err.to_string().contains("budget"), "{err}");
    let t = text(&registry);
    assert!(
        t.contains("sane_retries_limited_total{cluster=\"echo.default:80\",limit=\"budget\"} 1"),
        "{t}"
    );
}

#[tokio::test(start_paused = true)]
async fn max_retries_of_the_breaker_stops_retries() {
    let (m, _r) = metrics();
    let (svc, mut handle) = stack(&m);
    let p = gateway_errors(5);
    let breaker = Arc::new(Breaker::new(
        "c",
        &proto::CircuitBreaker {
            max_retries: Some(1),
            ..Default::default()
        },
    ));
    let mut r = req(Method::GET, body::empty(), &p);
    r.extensions_mut().insert(breaker.clone());
    let call = tokio::spawn(svc.oneshot(r));
    let (_r, send) = handle.next_request().await.unwrap();
    send.send_response(status(502));
    let (_r, send) = handle.next_request().await.unwrap();
    assert_eq!(breaker.active_retries(), 1);
    send.send_response(status(502));
    // The first retry still holds the only slot while its answer is judged.
    let rsp = call.await.unwrap().unwrap();
    assert_eq!(rsp.headers()[RESPONSE_FLAGS_HEADER], "URX");
    drop(rsp);
    assert_eq!(breaker.active_retries(), 0);
}

#[tokio::test(start_paused = true)]
async fn backoff_waits_between_attempts() {
    let (m, _r) = metrics();
    let (svc, mut handle) = stack(&m);
    let p = policy(proto::RetryPolicy {
        attempts: Some(1),
        retry_on: vec!["5xx".into()],
        base_interval_ms: 1_000,
        max_interval_ms: 1_000,
        ..Default::default()
    });
    let call = tokio::spawn(svc.oneshot(req(Method::GET, body::empty(), &p)));
    let (_r, send) = handle.next_request().await.unwrap();
    let failed_at = tokio::time::Instant::now();
    send.send_response(status(500));
    let (_r, send) = handle.next_request().await.unwrap();
    let waited = failed_at.elapsed();
    assert!(waited <= Duration::from_secs(1), "{waited:?}");
    send.send_response(status(200));
    assert!(call.await.unwrap().is_ok());
}

#[tokio::test(start_paused = true)]
async fn without_a_policy_requests_pass_once() {
    let (m, _r) = metrics();
    let (svc, mut handle) = stack(&m);
    let call = tokio::spawn(svc.oneshot(Request::new(body::empty())));
    let (r, send) = handle.next_request().await.unwrap();
    assert!(r.extensions().get::<TriedEndpoints>().is_none());
    send.send_response(status(503));
    assert_eq!(call.await.unwrap().unwrap().status(), 503);
}

#[tokio::test(start_paused = true)]
async fn dropping_the_request_cancels_pending_retries() {
    let (m, _r) = metrics();
    let (svc, mut handle) = stack(&m);
    let p = policy(proto::RetryPolicy {
        attempts: Some(3),
        retry_on: vec!["5xx".into()],
        base_interval_ms: 60_000,
        max_interval_ms: 60_000,
        ..Default::default()
    });
    let call = tokio::spawn(svc.oneshot(req(Method::GET, body::empty(), &p)));
    let (_r, send) = handle.next_request().await.unwrap();
    send.send_response(status(500));
    tokio::task::yield_now().await;
    call.abort();
    assert!(call.await.unwrap_err().is_cancelled());
    tokio::time::advance(Duration::from_secs(120)).await;
    let next = futures::FutureExt::now_or_never(handle.next_request());
    assert!(
        !matches!(next, Some(Some(_))),
        "no retry after the caller left"
    );
}
