//! Criterion micro-benchmarks of the proxy's per-request hot paths, through
//! `sane-proxy`'s library API on a compiled config snapshot:
//!
//! - `route/*`: host lookup and rule matching with 1 000 services, each
//!   with a three-rule route (header match, path prefix + method, default),
//!   and one route of 100 rules where the request matches the last;
//! - `headers/*`: the per-hop header work (hop-by-hop stripping and the
//!   HTTP/2 rewrite, a header rewrite policy, W3C/B3 trace context and
//!   `x-request-id`);
//! - `balancer/*`: an endpoint pick among 100 (P2C peak-EWMA, the default;
//!   least request; weighted round robin);
//! - `metrics/*`: recording one finished request (counter + histogram).
//!
//! Run: `cargo bench -p sane-bench --bench hot_paths` (criterion's report
//! lands in `target/criterion/`).

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use http::{HeaderMap, HeaderValue, Request};
use prometheus::Registry;
use sane_proxy::config::Snapshot;
use sane_proxy::policy::headers::HeaderOps;
use sane_proxy::protocol::http::for_h2;
use sane_proxy::telemetry::{Metrics, RequestLabels, RequestSizes};
use sane_proxy::trace::context::{ensure_request_id, TraceContext};
use sane_xds_proto::Bootstrap;
use std::fmt::Write;
use std::hint::black_box;

/// Services in the routing benchmark.
const SERVICES: usize = 1_000;
/// Endpoints of the balancer benchmark's service.
const ENDPOINTS: usize = 100;
/// Rules of the long route.
const RULES: usize = 100;

/// A bootstrap with `SERVICES` services, each with a three-rule route and
/// one endpoint; service `big` with `ENDPOINTS` endpoints and a policy
/// `lb`; and service `long` with a `RULES`-rule route.
fn bootstrap(lb: &str) -> Bootstrap {
    let mut y = String::from("resources:\n  services:\n");
    for i in 0..SERVICES {
        let _ = writeln!(
            y,
            "    - {{ name: svc-{i}, ports: [ {{ port: 80, target_port: 8080 }} ] }}"
        );
    }
    y += "    - { name: big, ports: [ { port: 80, target_port: 8080 } ] }\n";
    y += "    - { name: long, ports: [ { port: 80, target_port: 8080 } ] }\n";
    y += "  endpoints:\n";
    for i in 0..SERVICES {
        let _ = writeln!(
            y,
            "    - {{ service: svc-{i}, address: 10.0.{}.{}, proxy_port: 15006 }}",
            i / 250,
            i % 250 + 1
        );
    }
    for i in 0..ENDPOINTS {
        let _ = writeln!(
            y,
            "    - {{ service: big, address: 10.1.0.{}, proxy_port: 15006 }}",
            i + 1
        );
    }
    y += "    - { service: long, address: 10.2.0.1, proxy_port: 15006 }\n";
    y += "  routes:\n";
    for i in 0..SERVICES {
        let _ = writeln!(
            y,
            "    - name: r-{i}\n      service: svc-{i}\n      rules:\n\
             \x20       - matches: [ {{ headers: [ {{ name: x-canary, value: \"1\" }} ] }} ]\n\
             \x20         destinations: [ {{ service: svc-{i} }} ]\n\
             \x20       - matches: [ {{ path: {{ kind: prefix, value: /api }}, method: GET }} ]\n\
             \x20         destinations: [ {{ service: svc-{i}, weight: 90 }}, {{ service: svc-{}, weight: 10 }} ]\n\
             \x20       - {{}}",
            (i + 1) % SERVICES
        );
    }
    y += "    - name: long\n      service: long\n      rules:\n";
    for i in 0..RULES {
        let _ = writeln!(
            y,
            "        - matches: [ {{ path: {{ kind: prefix, value: /v{i}/ }} }} ]\n\
             \x20         destinations: [ {{ service: long }} ]"
        );
    }
    let _ = writeln!(
        y,
        "  policies:\n    - {{ name: big, service: big, load_balancer: {lb} }}"
    );
    serde_yaml::from_str(&y).expect("the benchmark config parses")
}

fn snapshot(lb: &str) -> Snapshot {
    Snapshot::compile(bootstrap(lb), 1, None, "bench").expect("the benchmark config compiles")
}

fn route(c: &mut Criterion) {
    let snap = snapshot("least_request");
    let mut g = c.benchmark_group("route");
    let req = Request::get("http://svc-777/api/items?x=1")
        .header("host", "svc-777")
        .body(())
        .unwrap();
    g.bench_function("resolve_and_select_1000_services", |b| {
        b.iter(|| {
            let port = snap.routes.resolve(black_box("svc-777"), Some(80)).unwrap();
            black_box(port.select(black_box(&req)).unwrap())
        })
    });
    let last = format!("http://long/v{}/x", RULES - 1);
    let req_long = Request::get(last.as_str()).body(()).unwrap();
    let long = snap.routes.resolve("long", Some(80)).unwrap().clone();
    g.bench_function("match_last_of_100_rules", |b| {
        b.iter(|| black_box(long.select(black_box(&req_long)).unwrap()))
    });
    g.finish();
}

fn client_headers() -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in [
        ("host", "svc-1"),
        ("user-agent", "bench/1.0"),
        ("accept", "*/*"),
        ("connection", "keep-alive"),
        ("keep-alive", "timeout=5"),
        (
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ),
        ("x-request-id", "0f0e0d0c-0b0a-4908-8706-050403020100"),
    ] {
        h.insert(k, HeaderValue::from_static(v));
    }
    h
}

fn headers(c: &mut Criterion) {
    let mut g = c.benchmark_group("headers");
    let ops: sane_xds_proto::HeaderOps =
        serde_yaml::from_str("{ set: { x-env: prod }, add: { x-via: sane }, remove: [ x-debug ] }")
            .expect("header ops parse");
    let ops = HeaderOps::compile(&ops, "bench").expect("header ops compile");
    g.bench_function("h2_hop_rewrite_and_policy", |b| {
        b.iter_batched(
            || {
                let mut r = Request::get("/api/items").body(()).unwrap();
                *r.headers_mut() = client_headers();
                r
            },
            |mut r| {
                for_h2(&mut r, "svc-1:80").unwrap();
                ops.apply(r.headers_mut());
                r
            },
            BatchSize::SmallInput,
        )
    });
    g.bench_function("trace_context_and_request_id", |b| {
        b.iter_batched(
            client_headers,
            |mut h| {
                let ctx = TraceContext::extract(&h, false);
                ctx.inject(&mut h);
                black_box(ensure_request_id(&mut h));
                h
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

fn balancer(c: &mut Criterion) {
    let mut g = c.benchmark_group("balancer");
    for lb in ["ewma", "least_request", "round_robin"] {
        let snap = snapshot(lb);
        let port = snap.routes.resolve("big", Some(80)).unwrap();
        let req = Request::get("http://big/").body(()).unwrap();
        let cluster = port.select(&req).unwrap().cluster;
        g.bench_function(format!("pick_of_{ENDPOINTS}_{lb}"), |b| {
            b.iter(|| black_box(cluster.pick(black_box(&[]))))
        });
    }
    g.finish();
}

fn metrics(c: &mut Criterion) {
    let registry = Registry::new();
    let m = Metrics::register(&registry).expect("metrics register");
    let mut g = c.benchmark_group("metrics");
    g.bench_function("record_request", |b| {
        b.iter(|| {
            m.request(
                black_box(RequestLabels {
                    reporter: "source",
                    source_workload: "frontend",
                    source_principal: "unknown",
                    destination_workload: "unknown",
                    destination_service: "svc-1.default.svc.cluster.local",
                    destination_principal: "unknown",
                    request_protocol: "http",
                    response_code: 200,
                    grpc_response_status: "",
                    connection_security_policy: "unknown",
                    response_flags: "-",
                    source_workload_namespace: "default",
                    source_canonical_service: "frontend",
                    source_canonical_revision: "latest",
                    source_app: "frontend",
                    source_version: "unknown",
                    destination_workload_namespace: "unknown",
                    destination_service_name: "svc-1",
                    destination_service_namespace: "default",
                    destination_canonical_service: "unknown",
                    destination_canonical_revision: "unknown",
                    destination_app: "unknown",
                    destination_version: "unknown",
                }),
                black_box(1.25),
                black_box(RequestSizes {
                    request: 0,
                    response: 512,
                }),
            )
        })
    });
    g.finish();
}

criterion_group!(benches, route, headers, balancer, metrics);
criterion_main!(benches);
