//! Resilience policies end to end: weighted splits, circuit breaking, retries
//! and their budget, fault injection and deadline propagation, each shown
//! through real sidecars in front of `sane-echo`.
//!
//! ```text
//! test ──> client sidecar (policies under test) ──> server sidecar ──> echo-N
//! ```
//!
//! Policies are written in YAML, as operators write them, and appended to the
//! client sidecar's generated config. Behaviour is asserted through what the
//! client sees, the apps' `/stats` and the client sidecar's metrics and
//! `/config_dump`; never through timings.

use futures::StreamExt;
use http::{Method, StatusCode};
use sane_e2e::harness::http::{empty, get, request, send, HttpClient, Reply};
use sane_e2e::harness::{eventually, metric_value, within, Mesh, TwoHop};
use sane_xds_proto::{Bootstrap, MeshResources};
use std::time::Duration;

/// Bound of one test.
const TEST_DEADLINE: Duration = Duration::from_secs(60);
/// How long a metric or the config dump may take to show what happened.
const METRIC_DEADLINE: Duration = Duration::from_secs(5);
/// Requests in flight at once in the bulk loops (CI has two cores).
const CONCURRENCY: usize = 16;

/// Appends the routes and policies in `yaml` (a `MeshResources` document) to
/// the client's config.
fn add_resources(b: &mut Bootstrap, yaml: &str) {
    let extra: MeshResources = serde_yaml::from_str(yaml).expect("test YAML parses");
    b.resources.routes.extend(extra.routes);
    b.resources.policies.extend(extra.policies);
}

/// A GET of `http://echo<path>` with extra headers.
fn get_with(
    path: &str,
    headers: &[(&'static str, &str)],
) -> http::Request<sane_e2e::harness::http::Body> {
    let mut req = get(&TwoHop::url(path));
    for (k, v) in headers {
        req.headers_mut().insert(*k, v.parse().unwrap());
    }
    req
}

/// Sends `n` requests made by `make`, `CONCURRENCY` at a time, and returns
/// every reply (a transport error fails the test).
async fn send_many(
    client: &HttpClient,
    n: usize,
    make: impl Fn(usize) -> http::Request<sane_e2e::harness::http::Body>,
) -> Vec<Reply> {
    futures::stream::iter(0..n)
        .map(|i| {
            let req = make(i);
            let client = client.clone();
            async move { send(&client, req).await.expect("a reply") }
        })
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await
}

/// The config-dump entry of the client's cluster for service `echo`'s HTTP
/// port.
fn echo_cluster(dump: &serde_json::Value) -> Result<serde_json::Value, String> {
    dump["clusters"]
        .as_array()
        .and_then(|cs| {
            cs.iter()
                .find(|c| {
                    c["name"].as_str().is_some_and(|n| n.contains("echo"))
                        && c["protocol"].as_str() != Some("tcp")
                        && c["protocol"].as_str() != Some("grpc")
                })
                .cloned()
        })
        .ok_or_else(|| format!("no echo cluster in {dump}"))
}

// (7) A 90/10 split by subset lands within ±3 points over 5 000 requests.
#[tokio::test]
async fn weighted_split_90_10_lands_within_three_percent() {
    let mesh = Mesh::builder()
        .echo("echo", "echo-v1")
        .echo("echo", "echo-v2")
        .client_config(|b| {
            // Endpoints follow app start order: v1 first, then v2.
            b.resources.endpoints[0]
                .labels
                .insert("version".into(), "v1".into());
            b.resources.endpoints[1]
                .labels
                .insert("version".into(), "v2".into());
            add_resources(
                b,
                r#"
routes:
  - name: echo-split
    service: echo
    rules:
      - destinations:
          - { service: echo, weight: 90, subset: { version: v1 } }
          - { service: echo, weight: 10, subset: { version: v2 } }
"#,
            );
        })
        .start()
        .await;
    within(TEST_DEADLINE, async {
        let client = sane_e2e::harness::http::http1_client_via(
            mesh.client().listener(sane_e2e::harness::OUTBOUND),
        );
        const N: usize = 5_000;
        let replies = send_many(&client, N, |_| get(&TwoHop::url("/"))).await;
        let mut v1 = 0;
        let mut v2 = 0;
        for r in &replies {
            assert_eq!(r.status, StatusCode::OK, "{}", r.text());
            match r.header("x-echo-name") {
                Some("echo-v1") => v1 += 1,
                Some("echo-v2") => v2 += 1,
                other => panic!("reply from {other:?}"),
            }
        }
        assert_eq!(v1 + v2, N);
        let share = v1 as f64 / N as f64 * 100.0;
        assert!(
            (87.0..=93.0).contains(&share),
            "v1 got {share:.2}% ({v1} of {N}; v2 {v2}), want 90 ± 3"
        );
    })
    .await
}

// (6) With one request in flight and no pending slots, the next is shed at
// once with 503 `UO` instead of queueing.
#[tokio::test]
async fn max_pending_overflow_is_shed_with_503_uo() {
    let mesh = TwoHop::start_from(TwoHop::builder().client_config(|b| {
        add_resources(
            b,
            r#"
policies:
  - name: echo
    service: echo
    circuit_breaker: { max_requests: 1, max_pending_requests: 0 }
"#,
        )
    }))
    .await;
    within(TEST_DEADLINE, async {
        let client = mesh.http1();
        let slow = tokio::spawn({
            let client = client.clone();
            async move { send(&client, get_with("/", &[("x-echo-delay", "3s")])).await }
        });
        eventually(METRIC_DEADLINE, || async {
            let dump = mesh.client().config_dump().await?;
            let c = echo_cluster(&dump)?;
            let active = c["circuit_breaker"]["active_requests"].as_u64();
            (active == Some(1))
                .then_some(())
                .ok_or_else(|| format!("active requests {active:?}: {c}"))
        })
        .await;

        let shed = send(&client, get(&TwoHop::url("/"))).await.unwrap();
        assert_eq!(
            shed.status,
            StatusCode::SERVICE_UNAVAILABLE,
            "{}",
            shed.text()
        );
        assert_eq!(shed.header("x-sane-response-flags"), Some("UO"));
        assert_eq!(
            shed.header("x-echo-name"),
            None,
            "the app saw the shed request"
        );

        let first = slow.await.unwrap().unwrap();
        assert_eq!(first.status, StatusCode::OK, "{}", first.text());
        let m = mesh.client().metrics().await.unwrap();
        assert_eq!(
            metric_value(&m, "sane_circuit_breaker_overflows_total", &[]),
            Some(1.0),
            "{m}"
        );
    })
    .await
}

// (2) With retries on 5xx, a failing GET is retried but a failing POST is
// not (it is not idempotent and `retry_non_idempotent` is off by default).
#[tokio::test]
async fn post_is_not_retried_by_default_but_get_is() {
    let mesh = TwoHop::start_from(TwoHop::builder().client_config(|b| {
        add_resources(
            b,
            r#"
routes:
  - name: echo-retry
    service: echo
    rules:
      - retry: { attempts: 3, retry_on: [5xx], base_interval: 1ms, max_interval: 5ms }
"#,
        )
    }))
    .await;
    within(TEST_DEADLINE, async {
        let client = mesh.http1();
        let app = mesh.app();

        let before = app.requests().await;
        let mut post = request(Method::POST, &TwoHop::url("/echo"), empty());
        post.headers_mut()
            .insert("x-echo-status", "503".parse().unwrap());
        let reply = send(&client, post).await.unwrap();
        assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(app.requests().await - before, 1, "the POST was retried");

        let before = app.requests().await;
        let reply = send(&client, get_with("/", &[("x-echo-status", "503")]))
            .await
            .unwrap();
        assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
        let seen = app.requests().await - before;
        // `attempts: 3` means three retries after the first attempt.
        assert_eq!(seen, 4, "the GET was not retried 3 times");
    })
    .await
}

// (8) An abort fault at 50 % hits 50 ± 4 % of 2 000 requests, flagged `FI`,
// and the aborted requests never reach the app.
#[tokio::test]
async fn abort_fault_hits_the_configured_share() {
    let mesh = TwoHop::start_from(TwoHop::builder().client_config(|b| {
        add_resources(
            b,
            r#"
routes:
  - name: echo-fault
    service: echo
    rules:
      - fault: { abort: { http_status: 503, percent: 50 } }
"#,
        )
    }))
    .await;
    within(TEST_DEADLINE, async {
        const N: usize = 2_000;
        let before = mesh.app().requests().await;
        let replies = send_many(&mesh.http1(), N, |_| get(&TwoHop::url("/"))).await;
        let mut aborted = 0;
        for r in &replies {
            match r.status {
                StatusCode::OK => assert_eq!(r.header("x-sane-response-flags"), None),
                StatusCode::SERVICE_UNAVAILABLE => {
                    assert_eq!(r.header("x-sane-response-flags"), Some("FI"));
                    aborted += 1;
                }
                other => panic!("unexpected {other}: {}", r.text()),
            }
        }
        let share = aborted as f64 / N as f64 * 100.0;
        assert!(
            (46.0..=54.0).contains(&share),
            "{aborted} of {N} aborted ({share:.2}%), want 50 ± 4"
        );
        let reached = mesh.app().requests().await - before;
        assert_eq!(
            reached as usize,
            N - aborted,
            "aborted requests reached the app"
        );
    })
    .await
}

// (4) The caller's deadline reaches the app reduced by the time already
// spent, in both `x-sane-deadline-ms` and `grpc-timeout`.
#[tokio::test]
async fn deadline_reaches_the_app_reduced() {
    let mesh = TwoHop::start().await;
    within(TEST_DEADLINE, async {
        const SENT_MS: u64 = 10_000;
        let reply = send(
            &mesh.http1(),
            get_with(
                "/",
                &[("x-sane-deadline-ms", "10000"), ("grpc-timeout", "10S")],
            ),
        )
        .await
        .unwrap();
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        let json = reply.json().unwrap();
        let headers = &json["headers"];
        let ms: u64 = headers["x-sane-deadline-ms"]
            .as_str()
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no x-sane-deadline-ms reached the app: {json}"));
        assert!(ms > 0 && ms <= SENT_MS, "x-sane-deadline-ms {ms}");
        let grpc = headers["grpc-timeout"]
            .as_str()
            .unwrap_or_else(|| panic!("no grpc-timeout reached the app: {json}"));
        let micros = grpc_timeout_micros(grpc);
        assert!(
            micros > 0 && micros < SENT_MS * 1000,
            "grpc-timeout {grpc:?} is not below the 10S sent"
        );
    })
    .await
}

/// `grpc-timeout` in microseconds.
fn grpc_timeout_micros(v: &str) -> u64 {
    let (digits, unit) = v.split_at(v.len() - 1);
    let n: u64 = digits
        .parse()
        .unwrap_or_else(|_| panic!("grpc-timeout {v:?}"));
    match unit {
        "H" => n * 3_600_000_000,
        "M" => n * 60_000_000,
        "S" => n * 1_000_000,
        "m" => n * 1_000,
        "u" => n,
        "n" => n / 1_000,
        _ => panic!("grpc-timeout {v:?}"),
    }
}

// (1) One of three endpoints fails every request (its app is down, so its
// sidecar answers 503 `UF`); retries to endpoints not tried yet hide it.
#[tokio::test]
async fn retries_hide_a_failing_endpoint() {
    let mesh = Mesh::builder()
        .echo("echo", "echo-1")
        .echo("echo", "echo-2")
        .echo("echo", "echo-3")
        .client_config(|b| {
            add_resources(
                b,
                r#"
routes:
  - name: echo-retry
    service: echo
    rules:
      - retry: { attempts: 2, retry_on: [5xx, gateway-error], base_interval: 1ms, max_interval: 5ms }
policies:
  - name: echo
    service: echo
    load_balancer: round_robin
    retry_budget: { percent: 100, min_retries_per_second: 100, ttl: 10s }
"#,
            )
        })
        .start()
        .await;
    within(TEST_DEADLINE, async {
        mesh.app("echo-3").proc.stop(Duration::from_secs(5)).await;
        let client = sane_e2e::harness::http::http1_client_via(
            mesh.client().listener(sane_e2e::harness::OUTBOUND),
        );
        const N: usize = 1_000;
        let replies = send_many(&client, N, |_| get(&TwoHop::url("/"))).await;
        let ok = replies
            .iter()
            .filter(|r| r.status == StatusCode::OK)
            .count();
        assert!(
            ok * 1000 >= N * 995,
            "only {ok} of {N} succeeded with retries on"
        );
        let m = mesh.client().metrics().await.unwrap();
        let retries = metric_value(&m, "sane_retries_total", &[]).unwrap_or(0.0);
        assert!(retries > 0.0, "nothing was retried:\n{m}");
    })
    .await;
}

// (1) The upstream fails 30 % of requests with 503, each at random; with
// retries on (and a budget that allows them) callers see >= 99.5 % success.
#[tokio::test]
async fn retries_hide_an_upstream_failing_30_percent() {
    let mesh = TwoHop::start_from(TwoHop::builder().client_config(|b| {
        add_resources(
            b,
            r#"
routes:
  - name: echo-retry
    service: echo
    rules:
      - retry: { attempts: 5, retry_on: [5xx], base_interval: 1ms, max_interval: 5ms }
policies:
  - name: echo
    service: echo
    retry_budget: { percent: 60, min_retries_per_second: 10, ttl: 10s }
"#,
        )
    }))
    .await;
    within(TEST_DEADLINE, async {
        const N: usize = 1_000;
        let before = mesh.app().requests().await;
        let replies = send_many(&mesh.http1(), N, |_| {
            get_with("/", &[("x-echo-fail-percent", "30")])
        })
        .await;
        let ok = replies
            .iter()
            .filter(|r| r.status == StatusCode::OK)
            .count();
        let attempts = mesh.app().requests().await - before;
        println!("{ok} of {N} succeeded; the app saw {attempts} attempts");
        assert!(
            ok * 1000 >= N * 995,
            "only {ok} of {N} succeeded with retries on"
        );
        // The app really failed about 30 % of what it saw.
        assert!(attempts as usize > N, "nothing was retried");
    })
    .await
}

// (1) In a full outage the retry budget, not the attempts, bounds retries:
// at most `percent` of requests plus `min_retries_per_second × ttl`.
#[tokio::test]
async fn retry_budget_caps_retries_in_an_outage() {
    let mesh = TwoHop::start_from(TwoHop::builder().client_config(|b| {
        add_resources(
            b,
            r#"
routes:
  - name: echo-retry
    service: echo
    rules:
      - retry: { attempts: 3, retry_on: [5xx, gateway-error], base_interval: 1ms, max_interval: 5ms }
policies:
  - name: echo
    service: echo
    retry_budget: { percent: 20, min_retries_per_second: 1, ttl: 60s }
"#,
        )
    }))
    .await;
    within(TEST_DEADLINE, async {
        mesh.app().proc.stop(Duration::from_secs(5)).await;
        const N: usize = 300;
        let replies = send_many(&mesh.http1(), N, |_| get(&TwoHop::url("/"))).await;
        assert!(
            replies.iter().all(|r| r.status.is_server_error()),
            "a request succeeded with the app down"
        );
        let m = mesh.client().metrics().await.unwrap();
        let retries = metric_value(&m, "sane_retries_total", &[]).unwrap_or(0.0);
        let limited =
            metric_value(&m, "sane_retries_limited_total", &[("limit", "budget")]).unwrap_or(0.0);
        // The whole test fits in one 60 s window: a floor of 1/s × 60 s,
        // plus 20 % of the requests. Without the budget: 3 × N.
        let cap = 60.0 + 0.2 * N as f64;
        assert!(retries > 0.0, "nothing was retried:\n{m}");
        assert!(
            retries <= cap,
            "{retries} retries, budget allows {cap}:\n{m}"
        );
        assert!(limited > 0.0, "the budget never limited a retry:\n{m}");
    })
    .await
}

// (5) Of three endpoints, the failing one (app down: 503 `UF` from its
// sidecar) is ejected after two gateway errors, receives no traffic while
// ejected, and is tried again once the ejection time has passed.
#[tokio::test]
async fn outlier_detection_ejects_a_failing_endpoint_and_readmits_it() {
    let mesh = Mesh::builder()
        .echo("echo", "echo-1")
        .echo("echo", "echo-2")
        .echo("echo", "echo-3")
        .client_config(|b| {
            add_resources(
                b,
                r#"
policies:
  - name: echo
    service: echo
    load_balancer: round_robin
    outlier_detection: { consecutive_gateway_errors: 2, base_ejection_time: 5s, max_ejection_percent: 50 }
"#,
            )
        })
        .start()
        .await;
    within(TEST_DEADLINE, async {
        mesh.app("echo-3").proc.stop(Duration::from_secs(5)).await;
        let client = sane_e2e::harness::http::http1_client_via(
            mesh.client().listener(sane_e2e::harness::OUTBOUND),
        );
        let ejected = |dump: &serde_json::Value| -> Result<usize, String> {
            let c = echo_cluster(dump)?;
            Ok(c["endpoints"]
                .as_array()
                .map(|eps| eps.iter().filter(|e| !e["ejected_until"].is_null()).count())
                .unwrap_or(0))
        };
        eventually(Duration::from_secs(10), || async {
            let r = send(&client, get(&TwoHop::url("/"))).await?;
            let dump = mesh.client().config_dump().await?;
            match ejected(&dump)? {
                1 => Ok(()),
                n => Err(format!("{n} ejected (last reply {}): {dump}", r.status)),
            }
        })
        .await;
        let m = mesh.client().metrics().await.unwrap();
        assert_eq!(
            metric_value(&m, "sane_outlier_ejections_total", &[]),
            Some(1.0),
            "{m}"
        );

        // While ejected, every request lands on a healthy endpoint (the
        // ejection lasts 5 s; ten requests take far less).
        for _ in 0..10 {
            let r = send(&client, get(&TwoHop::url("/"))).await.unwrap();
            assert_eq!(r.status, StatusCode::OK, "{}", r.text());
        }

        // After the ejection time, the endpoint gets traffic again (and,
        // still failing, answers 503 once more).
        eventually(Duration::from_secs(10), || async {
            let r = send(&client, get(&TwoHop::url("/"))).await?;
            (r.status == StatusCode::SERVICE_UNAVAILABLE)
                .then_some(())
                .ok_or_else(|| "the ejected endpoint got no traffic yet".to_string())
        })
        .await;
    })
    .await
}

// (3) A per-try timeout recovers from a hung endpoint: one of two endpoints
// accepts connections and never answers; each attempt there times out and
// the retry goes to the healthy one.
#[tokio::test]
async fn per_try_timeout_recovers_from_a_hung_endpoint() {
    // Accepts (in the kernel backlog) but never reads or answers.
    let hung = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let hung_port = u32::from(hung.local_addr().unwrap().port());
    let mesh = TwoHop::start_from(TwoHop::builder().client_config(move |b| {
        let mut ep = b.resources.endpoints[0].clone();
        ep.proxy_port = 0;
        ep.ports.insert("http".into(), hung_port);
        b.resources.endpoints.push(ep);
        add_resources(
            b,
            r#"
routes:
  - name: echo-retry
    service: echo
    rules:
      - retry: { attempts: 1, per_try_timeout: 300ms, retry_on: [5xx, gateway-error, reset], base_interval: 1ms, max_interval: 5ms }
policies:
  - name: echo
    service: echo
    load_balancer: round_robin
"#,
        )
    }))
    .await;
    within(TEST_DEADLINE, async {
        let client = mesh.http1();
        for _ in 0..6 {
            let r = send(&client, get(&TwoHop::url("/"))).await.unwrap();
            assert_eq!(r.status, StatusCode::OK, "{}", r.text());
            assert_eq!(r.header("x-echo-name"), Some(TwoHop::APP));
        }
        let m = mesh.client().metrics().await.unwrap();
        let retries = metric_value(&m, "sane_retries_total", &[]).unwrap_or(0.0);
        assert!(retries >= 1.0, "the hung endpoint was never tried:\n{m}");
    })
    .await;
    drop(hung);
}

// (4) A client that gives up mid-request cancels the work at the server: the
// client sidecar drops the upstream stream, the server sidecar closes its
// connection to the app, and the app's handler is dropped before its delay.
#[tokio::test]
async fn the_server_sees_cancellation_when_the_client_gives_up() {
    let mesh = TwoHop::start().await;
    within(TEST_DEADLINE, async {
        let app = mesh.app();
        let before = app.requests().await;
        assert_eq!(app.cancelled().await, 0);
        let client = mesh.http1();
        let call = tokio::spawn(async move {
            send(&client, get_with("/", &[("x-echo-delay", "60000")])).await
        });
        // The request has reached the app (and is sleeping there)...
        eventually(METRIC_DEADLINE, || async {
            let n = app.requests().await - before;
            (n == 1)
                .then_some(())
                .ok_or(format!("{n} requests reached the app"))
        })
        .await;
        // ...when the client gives up and closes its connection.
        call.abort();
        assert!(call.await.unwrap_err().is_cancelled());
        eventually(METRIC_DEADLINE, || async {
            let n = app.cancelled().await;
            (n == 1)
                .then_some(())
                .ok_or(format!("the app saw {n} cancellations, want 1"))
        })
        .await;
    })
    .await
}

// (4) When the caller's deadline passes, the caller gets 504 `UT` and the
// server's work is cancelled too, not left running for nobody.
#[tokio::test]
async fn an_expired_deadline_cancels_the_server_work() {
    let mesh = TwoHop::start().await;
    within(TEST_DEADLINE, async {
        let reply = send(
            &mesh.http1(),
            get_with(
                "/",
                &[("x-sane-deadline-ms", "300"), ("x-echo-delay", "60000")],
            ),
        )
        .await
        .unwrap();
        assert_eq!(
            reply.status,
            StatusCode::GATEWAY_TIMEOUT,
            "{}",
            reply.text()
        );
        assert_eq!(reply.header("x-sane-response-flags"), Some("UT"));
        eventually(METRIC_DEADLINE, || async {
            let n = mesh.app().cancelled().await;
            (n == 1)
                .then_some(())
                .ok_or(format!("the app saw {n} cancellations, want 1"))
        })
        .await;
    })
    .await
}

// (8) A delay fault at 50 % delays 50 ± 5 % of 1 000 requests, each flagged
// `DI` and held at least the configured delay; every request still succeeds.
#[tokio::test]
async fn delay_fault_hits_the_configured_share() {
    const DELAY: Duration = Duration::from_millis(100);
    let mesh = TwoHop::start_from(TwoHop::builder().client_config(|b| {
        add_resources(
            b,
            r#"
routes:
  - name: echo-delay
    service: echo
    rules:
      - fault: { delay: { fixed_delay: 100ms, percent: 50 } }
"#,
        )
    }))
    .await;
    within(TEST_DEADLINE, async {
        const N: usize = 1_000;
        let client = mesh.http1();
        let timed: Vec<(Reply, Duration)> = futures::stream::iter(0..N)
            .map(|_| {
                let client = client.clone();
                async move {
                    let start = std::time::Instant::now();
                    let r = send(&client, get(&TwoHop::url("/")))
                        .await
                        .expect("a reply");
                    (r, start.elapsed())
                }
            })
            .buffer_unordered(CONCURRENCY)
            .collect()
            .await;
        let mut delayed = 0;
        for (r, took) in &timed {
            assert_eq!(r.status, StatusCode::OK, "{}", r.text());
            if r.header("x-sane-response-flags") == Some("DI") {
                delayed += 1;
                assert!(*took >= DELAY, "a DI request took only {took:?}");
            } else {
                assert_eq!(r.header("x-sane-response-flags"), None);
            }
        }
        let share = delayed as f64 / N as f64 * 100.0;
        assert!(
            (45.0..=55.0).contains(&share),
            "{delayed} of {N} delayed ({share:.2}%), want 50 ± 5"
        );
    })
    .await
}

// Mirroring: 50 % of the requests to `echo` are copied to `shadow`; callers
// only ever see `echo`'s answers, and the shadow receives its share.
#[tokio::test]
async fn mirroring_copies_the_configured_share_to_the_shadow() {
    let mesh = Mesh::builder()
        .echo("echo", "echo-1")
        .echo("shadow", "shadow-1")
        .client_config(|b| {
            add_resources(
                b,
                r#"
routes:
  - name: echo-mirror
    service: echo
    rules:
      - mirror: { service: shadow, percent: 50 }
"#,
            )
        })
        .start()
        .await;
    within(TEST_DEADLINE, async {
        const N: usize = 1_000;
        let client = sane_e2e::harness::http::http1_client_via(
            mesh.client().listener(sane_e2e::harness::OUTBOUND),
        );
        let shadow = mesh.app("shadow-1");
        let before = shadow.requests().await;
        let replies = send_many(&client, N, |_| get(&TwoHop::url("/"))).await;
        for r in &replies {
            assert_eq!(r.status, StatusCode::OK, "{}", r.text());
            assert_eq!(r.header("x-echo-name"), Some("echo-1"));
        }
        // Copies are sent in the background; wait until they have all landed.
        let copied = eventually(METRIC_DEADLINE, || async {
            let m = mesh.client().metrics().await.map_err(|e| e.to_string())?;
            let sent = metric_value(&m, "sane_mirrored_requests_total", &[("result", "sent")])
                .unwrap_or(0.0) as u64;
            let seen = shadow.requests().await - before;
            (sent > 0 && seen == sent)
                .then_some(seen)
                .ok_or(format!("the shadow saw {seen} of {sent} copies"))
        })
        .await;
        let share = copied as f64 / N as f64 * 100.0;
        assert!(
            (45.0..=55.0).contains(&share),
            "{copied} of {N} copied ({share:.2}%), want 50 ± 5"
        );
    })
    .await
}
