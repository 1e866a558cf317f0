//! Istio's own tasks, with Istio's YAML (`e2e/fixtures/istio/`), through
//! real sidecars: a control plane, a bookinfo-like set of echo apps
//! (productpage; reviews v1, v2, v3; ratings; details), each behind a
//! server sidecar with its own identity, and two calling sidecars
//! (`productpage`'s identity, and `sleep`'s). Every configuration change is
//! a `sanectl apply -f <Istio YAML>`: the control plane stores the objects,
//! converts them (with every object stored before) into Sane resources and
//! pushes those over xDS while everything keeps running.
//!
//! caller sidecar (productpage | sleep) ══mTLS══▶ server sidecar ─▶ echo app

use futures::StreamExt;
use http::{Method, StatusCode};
use sane_e2e::harness::http::{full, http1_client_via, request, send, HttpClient, Reply};
use sane_e2e::harness::{
    bins, eventually, metric_value, within, workspace_root, write_bootstrap, xds_bootstrap,
    ApiClient, CliRun, ControlPlane, EchoApp, Proc, Sanectl, Sidecar, READY_DEADLINE,
};
use sane_xds_proto::{
    Direction, Endpoint, IdentityConfig, Listener, MeshResources, Protocol, Service, ServicePort,
    TlsMode, WorkloadPort,
};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

const DEADLINE: Duration = Duration::from_secs(30);
const TEST_DEADLINE: Duration = Duration::from_secs(600);
/// Requests counted for a traffic split.
const SPLIT_REQUESTS: usize = 2_000;
/// The bookinfo instances: (service, version).
const INSTANCES: [(&str, &str); 6] = [
    ("productpage", "v1"),
    ("reviews", "v1"),
    ("reviews", "v2"),
    ("reviews", "v3"),
    ("ratings", "v1"),
    ("details", "v1"),
];

fn fixture(name: &str) -> String {
    workspace_root()
        .join("e2e/fixtures/istio")
        .join(name)
        .display()
        .to_string()
}

/// The xDS stream uses the sidecar's own workload token (its identity's),
/// under a node id of that workload: the control plane sends a sidecar the
/// authorization policies of the endpoints whose identity is its token's.
fn streams_as_itself(b: &mut sane_xds_proto::Bootstrap, sa: &str, instance: &str) {
    if let Some(cp) = b.control_plane.as_mut() {
        cp.token_file = String::new();
    }
    b.node.id = format!("{sa}.default~{instance}");
}

fn identity(cp: &ControlPlane, token: &Path, sa: &str) -> IdentityConfig {
    IdentityConfig {
        service_account: sa.into(),
        ca_address: cp.xds_url(),
        token_file: token.display().to_string(),
        ..Default::default()
    }
}

struct Bookinfo {
    dir: tempfile::TempDir,
    cp: ControlPlane,
    apps: Vec<EchoApp>,
    servers: Vec<Sidecar>,
    productpage: Sidecar,
    sleep: Sidecar,
    cli: Sanectl,
}

impl Bookinfo {
    async fn start() -> Bookinfo {
        let dir = tempfile::tempdir().unwrap();
        let cp = ControlPlane::start(&dir.path().join("cp"), &[]).await;
        let mut apps = Vec::new();
        let mut servers = Vec::new();
        for (service, version) in INSTANCES {
            let name = format!("{service}-{version}");
            let app = EchoApp::start_with(&bins().echo, &name, service).await;
            let sa = format!("bookinfo-{service}");
            let token = cp.issue_token(dir.path(), "default", &sa).await;
            let inbound = Listener {
                name: "inbound".into(),
                direction: Direction::Inbound.into(),
                address: "127.0.0.1:0".into(),
                tls_mode: TlsMode::Strict.into(),
                workload_ports: vec![WorkloadPort {
                    port: app.addrs.http.port().into(),
                    protocol: Protocol::Http.into(),
                    ..Default::default()
                }],
                ..Default::default()
            };
            let mut b = xds_bootstrap(&cp, &name, vec![inbound]);
            // Authorization policies target the service's workloads.
            b.node.workload = service.into();
            b.identity = Some(identity(&cp, &token, &sa));
            streams_as_itself(&mut b, &sa, &name);
            servers.push(Sidecar::start(&bins().proxy, dir.path(), &name, b).await);
            apps.push(app);
        }
        let caller = |sa: &'static str| {
            let cp = &cp;
            let dir = dir.path().to_path_buf();
            async move {
                let token = cp.issue_token(&dir, "default", sa).await;
                let outbound = Listener {
                    name: "outbound".into(),
                    address: "127.0.0.1:0".into(),
                    ..Default::default()
                };
                let mut b = xds_bootstrap(cp, sa, vec![outbound]);
                b.identity = Some(identity(cp, &token, sa));
                streams_as_itself(&mut b, sa, sa);
                Sidecar::start(&bins().proxy, &dir, sa, b).await
            }
        };
        let productpage = caller("bookinfo-productpage").await;
        let sleep = caller("sleep").await;
        let cli = Sanectl::new(&cp);
        let bookinfo = Bookinfo {
            dir,
            cp,
            apps,
            servers,
            productpage,
            sleep,
            cli,
        };
        let mesh = bookinfo.mesh_file();
        bookinfo.cli.ok(&["apply", "-f", &mesh]).await;
        bookinfo
    }

    /// The services (each one HTTP port, 80) and endpoints, as a Sane
    /// document: what Kubernetes Services and pods would give. `reviews-v1`
    /// and `reviews-v2` are per-version Services, as GAMMA routes use.
    fn mesh_file(&self) -> String {
        let service = |name: &str| Service {
            name: name.into(),
            ports: vec![ServicePort {
                name: "http".into(),
                port: 80,
                ..Default::default()
            }],
            ..Default::default()
        };
        let mut mesh = MeshResources::default();
        for s in [
            "productpage",
            "reviews",
            "ratings",
            "details",
            "reviews-v1",
            "reviews-v2",
        ] {
            mesh.services.push(service(s));
        }
        for ((svc, version), (app, sidecar)) in
            INSTANCES.iter().zip(self.apps.iter().zip(&self.servers))
        {
            let endpoint = Endpoint {
                service: svc.to_string(),
                address: "127.0.0.1".into(),
                ports: BTreeMap::from([("http".into(), u32::from(app.addrs.http.port()))]),
                proxy_port: sidecar.listener("inbound").port().into(),
                identity: format!("spiffe://cluster.local/ns/default/sa/bookinfo-{svc}"),
                labels: BTreeMap::from([
                    ("app".into(), svc.to_string()),
                    ("version".into(), version.to_string()),
                ]),
                ..Default::default()
            };
            if *svc == "reviews" && *version != "v3" {
                mesh.endpoints.push(Endpoint {
                    service: format!("reviews-{version}"),
                    ..endpoint.clone()
                });
            }
            mesh.endpoints.push(endpoint);
        }
        let path = self.dir.path().join("bookinfo.yaml");
        std::fs::write(&path, serde_yaml::to_string(&mesh).unwrap()).unwrap();
        path.display().to_string()
    }

    async fn apply(&self, fixtures: &[&str]) -> CliRun {
        let mut args = vec!["apply".to_string()];
        for f in fixtures {
            args.push("-f".into());
            args.push(fixture(f));
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let run = self.cli.ok(&args).await;
        println!("{run}");
        // The whole write lands at once: wait until the callers took it.
        ApiClient::new(&self.cp)
            .wait_in_sync(DEADLINE, &["bookinfo-productpage", "sleep"])
            .await;
        run
    }

    fn client(via: &Sidecar) -> HttpClient {
        http1_client_via(via.listener("outbound"))
    }
}

async fn call(client: &HttpClient, host: &str, headers: &[(&str, &str)]) -> Result<Reply, String> {
    call_method(client, Method::GET, host, headers).await
}

async fn call_method(
    client: &HttpClient,
    method: Method,
    host: &str,
    headers: &[(&str, &str)],
) -> Result<Reply, String> {
    let mut req = request(method, &format!("http://{host}/"), full(""));
    for (k, v) in headers {
        let name = http::HeaderName::from_bytes(k.as_bytes()).expect("a valid header name");
        req.headers_mut()
            .insert(name, v.parse().expect("a valid header value"));
    }
    send(client, req).await
}

/// `GET http://{host}{path_and_query}`.
async fn get_path(client: &HttpClient, host: &str, path_and_query: &str) -> Result<Reply, String> {
    let req = request(
        Method::GET,
        &format!("http://{host}{path_and_query}"),
        full(""),
    );
    send(client, req).await
}

/// The instance that answered.
fn served_by(r: &Reply) -> &str {
    r.header("x-echo-name").unwrap_or("<none>")
}

/// Polls until a request (with `headers`) is served by `instance`.
async fn until_served_by(
    client: &HttpClient,
    host: &str,
    headers: &[(&str, &str)],
    instance: &str,
) {
    eventually(DEADLINE, || async {
        let r = call(client, host, headers).await?;
        match served_by(&r) {
            name if name == instance => Ok(()),
            name => Err(format!("served by {name}: {} {}", r.status, r.text())),
        }
    })
    .await
}

/// Polls until a request answers `status`.
async fn until_status(client: &HttpClient, method: Method, host: &str, status: u16) -> Reply {
    eventually(DEADLINE, || async {
        let r = call_method(client, method.clone(), host, &[]).await?;
        if r.status.as_u16() == status {
            Ok(r)
        } else {
            Err(format!("{method} {host}: {} {}", r.status, r.text()))
        }
    })
    .await
}

/// Sends `n` requests, 16 at a time; counts who served them (or the status
/// when the app did not).
async fn tally(client: &HttpClient, host: &str, n: usize) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    let mut replies = futures::stream::iter(0..n)
        .map(|_| call(client, host, &[]))
        .buffer_unordered(16);
    while let Some(r) = replies.next().await {
        let r = r.expect("a reply");
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
        *counts.entry(served_by(&r).to_string()).or_default() += 1;
    }
    counts
}

fn assert_share(counts: &BTreeMap<String, usize>, instance: &str, want: f64) {
    let total: usize = counts.values().sum();
    let share = 100.0 * *counts.get(instance).unwrap_or(&0) as f64 / total as f64;
    println!("{instance}: {share:.2}% of {total} (want {want} ± 3): {counts:?}");
    assert!(
        (want - 3.0..=want + 3.0).contains(&share),
        "{instance} got {share:.2}% of {total}, want {want} ± 3: {counts:?}"
    );
}

#[tokio::test]
async fn bookinfo_tasks_with_istio_yaml() {
    let b = Bookinfo::start().await;
    let pp = Bookinfo::client(&b.productpage);
    within(TEST_DEADLINE, async {
        // 1. Request routing: everything to v1, then jason to v2.
        b.apply(&["destination-rule-all.yaml", "virtual-service-all-v1.yaml"])
            .await;
        until_served_by(&pp, "reviews", &[], "reviews-v1").await;
        let counts = tally(&pp, "reviews", 100).await;
        assert_eq!(counts.get("reviews-v1"), Some(&100), "{counts:?}");
        // The control plane keeps the objects as written, with what each
        // produced; `sanectl status` lists them.
        let api = ApiClient::new(&b.cp);
        let stored = api
            .get("/api/v1/istio/virtualservices/default/reviews")
            .await
            .unwrap();
        assert_eq!(stored["produced"], serde_json::json!(["route default/reviews.vs"]));
        assert_eq!(stored["object"]["spec"]["hosts"][0], "reviews", "{stored}");
        let status = b.cli.ok(&["status"]).await;
        assert!(
            status.stdout.contains("VirtualService default/reviews")
                && status.stdout.contains("route default/reviews.vs"),
            "{status}"
        );
        // A stored DestinationRule serves later VirtualServices alone.
        b.apply(&["virtual-service-reviews-test-v2.yaml"]).await;
        until_served_by(&pp, "reviews", &[("end-user", "jason")], "reviews-v2").await;
        for _ in 0..20 {
            let jason = call(&pp, "reviews", &[("end-user", "jason")])
                .await
                .unwrap();
            assert_eq!(served_by(&jason), "reviews-v2");
            let other = call(&pp, "reviews", &[("end-user", "kim")]).await.unwrap();
            assert_eq!(served_by(&other), "reviews-v1");
        }

        // 2. Traffic shifting: 50/50 v1/v3, then 80/20 v1/v2.
        b.apply(&[
            "destination-rule-all.yaml",
            "virtual-service-reviews-50-v3.yaml",
        ])
        .await;
        until_served_by(&pp, "reviews", &[], "reviews-v3").await;
        let counts = tally(&pp, "reviews", SPLIT_REQUESTS).await;
        assert_share(&counts, "reviews-v1", 50.0);
        assert_share(&counts, "reviews-v3", 50.0);
        b.apply(&[
            "destination-rule-all.yaml",
            "virtual-service-reviews-80-20.yaml",
        ])
        .await;
        until_served_by(&pp, "reviews", &[], "reviews-v2").await;
        let counts = tally(&pp, "reviews", SPLIT_REQUESTS).await;
        assert_share(&counts, "reviews-v1", 80.0);
        assert_share(&counts, "reviews-v2", 20.0);
        assert_eq!(counts.get("reviews-v3"), None, "{counts:?}");

        // 3. Fault injection: a delay for jason (1s instead of the task's
        // 7s), then an abort with 500 for jason.
        b.apply(&[
            "destination-rule-all.yaml",
            "virtual-service-ratings-test-delay.yaml",
        ])
        .await;
        let delayed = eventually(DEADLINE, || async {
            let started = Instant::now();
            let r = call(&pp, "ratings", &[("end-user", "jason")]).await?;
            match r.header("x-sane-response-flags") {
                Some(f) if f.contains("DI") => Ok((r, started.elapsed())),
                _ => Err(format!(
                    "not delayed yet: {} {:?}",
                    r.status,
                    r.header("x-sane-response-flags")
                )),
            }
        })
        .await;
        println!(
            "jason's call to ratings took {:?} (fixedDelay 1s)",
            delayed.1
        );
        assert_eq!(delayed.0.status, StatusCode::OK);
        let other = call(&pp, "ratings", &[]).await.unwrap();
        assert_eq!(other.status, StatusCode::OK);
        assert_eq!(other.header("x-sane-response-flags"), None);
        b.apply(&[
            "destination-rule-all.yaml",
            "virtual-service-ratings-test-abort.yaml",
        ])
        .await;
        let aborted = eventually(DEADLINE, || async {
            let r = call(&pp, "ratings", &[("end-user", "jason")]).await?;
            (r.status == StatusCode::INTERNAL_SERVER_ERROR)
                .then_some(r)
                .ok_or_else(|| "not aborted yet".to_string())
        })
        .await;
        assert_eq!(aborted.header("x-sane-response-flags"), Some("FI"));
        assert_eq!(
            aborted.header("x-echo-name"),
            None,
            "the abort never reached ratings"
        );
        assert_eq!(
            call(&pp, "ratings", &[]).await.unwrap().status,
            StatusCode::OK
        );

        // Redirect, rewrite and a queryParams match (Istio's HTTPRedirect
        // and HTTPRewrite examples).
        b.apply(&["virtual-service-ratings-redirect-rewrite.yaml"])
            .await;
        let moved = eventually(DEADLINE, || async {
            let r = get_path(&pp, "ratings", "/v1/getProductRatings?id=7").await?;
            (r.status == StatusCode::MOVED_PERMANENTLY)
                .then_some(r)
                .ok_or_else(|| "not redirected yet".to_string())
        })
        .await;
        assert_eq!(
            moved.header("location"),
            Some("http://newratings.default.svc.cluster.local/v1/bookRatings?id=7")
        );
        assert_eq!(moved.header("x-echo-name"), None, "a redirect reaches no app");
        let rewritten = get_path(&pp, "ratings", "/ratings/7?debug=1").await.unwrap();
        let json = rewritten.json().unwrap();
        assert_eq!(
            (json["path"].as_str(), json["query"].as_str()),
            (Some("/v1/bookRatings/7"), Some("debug=1")),
            "{json}"
        );
        assert_eq!(json["host"], "ratings.internal", "{json}");
        let plain = get_path(&pp, "ratings", "/ratings/7?debug=0").await.unwrap();
        let json = plain.json().unwrap();
        assert_eq!(json["path"], "/ratings/7", "{json}");
        assert_ne!(json["host"], "ratings.internal", "{json}");

        // 4. Request timeouts: 0.5s on reviews, which answers after 2s.
        b.apply(&[
            "destination-rule-all.yaml",
            "virtual-service-reviews-timeout.yaml",
        ])
        .await;
        // (Waiting on the 504 itself: the previous route sent to v2 too.)
        let slow = eventually(DEADLINE, || async {
            let r = call(&pp, "reviews", &[("x-echo-delay", "2s")]).await?;
            (r.status == StatusCode::GATEWAY_TIMEOUT)
                .then_some(r)
                .ok_or_else(|| "no timeout yet".to_string())
        })
        .await;
        assert_eq!(slow.header("x-sane-response-flags"), Some("UT"));
        let fast = call(&pp, "reviews", &[]).await.unwrap();
        assert_eq!(
            (fast.status, served_by(&fast)),
            (StatusCode::OK, "reviews-v2")
        );

        // 5. Circuit breaking: maxConnections 1, http1MaxPendingRequests 1,
        // 20 concurrent callers: the overflow is shed with 503 UO. The
        // task's DestinationRule has no subsets, and the stored details
        // VirtualService routes to subset v1: refused by name, nothing
        // stored, until that VirtualService goes.
        let missing = b
            .cli
            .run(&[
                "apply",
                "-f",
                &fixture("destination-rule-details-circuit-breaker.yaml"),
            ])
            .await;
        assert_eq!(missing.code(), Some(1), "{missing}");
        assert!(
            missing.stderr.contains(
                "VirtualService default/details: spec.http[0].route[0].destination.subset: subset \"v1\" of host \"details\" is not declared"
            ),
            "{missing}"
        );
        b.cli
            .ok(&["delete", "virtualservice", "default/details"])
            .await;
        let run = b
            .apply(&["destination-rule-details-circuit-breaker.yaml"])
            .await;
        assert!(
            run.stderr
                .contains("maxRequestsPerConnection: not supported"),
            "{run}"
        );
        let details = api
            .get("/api/v1/istio/destinationrules/default/details")
            .await
            .unwrap();
        assert!(
            details["unsupported"].to_string().contains(
                "spec.trafficPolicy.connectionPool.http.maxRequestsPerConnection"
            ),
            "{details}"
        );
        let shed = eventually(DEADLINE, || async {
            let replies: Vec<_> = futures::stream::iter(0..20)
                .map(|_| call(&pp, "details", &[("x-echo-delay", "200ms")]))
                .buffer_unordered(20)
                .collect()
                .await;
            let mut ok = 0;
            let mut uo = 0;
            for r in replies {
                let r = r?;
                match (r.status, r.header("x-sane-response-flags")) {
                    (StatusCode::OK, _) => ok += 1,
                    (StatusCode::SERVICE_UNAVAILABLE, Some("UO")) => uo += 1,
                    (s, f) => return Err(format!("unexpected {s} {f:?}: {}", r.text())),
                }
            }
            println!("20 concurrent calls to details: {ok} ok, {uo} shed with 503 UO");
            (uo > 0 && ok > 0)
                .then_some(uo)
                .ok_or_else(|| format!("{ok} ok, {uo} shed"))
        })
        .await;
        assert!(shed > 0);

        // 6. Outlier detection: a second ratings endpoint that refuses
        // connections is ejected, and calls keep succeeding.
        let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let dead_port = dead.local_addr().unwrap().port();
        drop(dead);
        let extra = MeshResources {
            endpoints: vec![Endpoint {
                service: "ratings".into(),
                address: "127.0.0.1".into(),
                port: 1,
                proxy_port: dead_port.into(),
                labels: BTreeMap::from([
                    ("app".into(), "ratings".into()),
                    ("version".into(), "v2".into()),
                ]),
                ..Default::default()
            }],
            ..Default::default()
        };
        let extra_path = b.dir.path().join("ratings-v2.yaml");
        std::fs::write(&extra_path, serde_yaml::to_string(&extra).unwrap()).unwrap();
        b.cli
            .ok(&["apply", "-f", &extra_path.display().to_string()])
            .await;
        // Every ratings endpoint gets traffic: no subset route. What a
        // stored object produced changes only with the object.
        let owned = b.cli.run(&["delete", "route", "default/ratings.vs"]).await;
        assert_eq!(owned.code(), Some(1), "{owned}");
        assert!(
            owned
                .stderr
                .contains("is produced by VirtualService default/ratings"),
            "{owned}"
        );
        b.cli
            .ok(&["delete", "virtualservice", "default/ratings"])
            .await;
        b.apply(&["destination-rule-ratings-outlier.yaml"]).await;
        eventually(DEADLINE, || async {
            let r = call(&pp, "ratings", &[]).await?;
            let m = b.productpage.metrics().await?;
            match metric_value(&m, "sane_outlier_ejections_total", &[]) {
                Some(n) if n >= 1.0 => Ok(()),
                n => Err(format!("no ejection yet ({n:?}); last reply {}", r.status)),
            }
        })
        .await;
        for _ in 0..20 {
            let r = call(&pp, "ratings", &[]).await.unwrap();
            assert_eq!((r.status, served_by(&r)), (StatusCode::OK, "ratings-v1"));
        }

        // 9. Gateway API inside the mesh (GAMMA): an HTTPRoute on the
        // reviews Service conflicts with the reviews VirtualService...
        let conflict = b
            .cli
            .run(&["apply", "-f", &fixture("httproute-reviews-gamma.yaml")])
            .await;
        assert!(!conflict.status.success(), "{conflict}");
        assert!(
            conflict
                .stderr
                .contains("conflict for service \"reviews.default\"")
                && conflict.stderr.contains("HTTPRoute default/reviews"),
            "{conflict}"
        );
        // ... so the VirtualService goes, and the route splits 90/10 with
        // its header.
        b.cli
            .ok(&["delete", "virtualservice", "default/reviews"])
            .await;
        b.apply(&["httproute-reviews-gamma.yaml"]).await;
        let seen = eventually(DEADLINE, || async {
            let r = call(&pp, "reviews", &[]).await?;
            let json = r.json()?;
            if json["headers"]["x-route"] == "gamma" {
                Ok(json)
            } else {
                Err(format!("no x-route header yet: {json}"))
            }
        })
        .await;
        assert!(
            seen["name"].as_str().unwrap().starts_with("reviews-v"),
            "{seen}"
        );
        let counts = tally(&pp, "reviews", SPLIT_REQUESTS).await;
        assert_share(&counts, "reviews-v1", 90.0);
        assert_share(&counts, "reviews-v2", 10.0);

        // 9. Gateway API ingress: a Gateway and an HTTPRoute attached to it
        // that splits 90/10 with a header, served by `sane-proxy gateway`
        // from the `gateway` section `sanectl convert --gateway` prints.
        ingress_splits_90_10_with_its_header(&b).await;

        // 8. Authorization: allow-nothing denies everything in the
        // namespace; then only productpage's identity may GET reviews.
        let sleep = Bookinfo::client(&b.sleep);
        assert_eq!(
            call(&sleep, "details", &[]).await.unwrap().status,
            StatusCode::OK
        );
        b.apply(&["authorization-allow-nothing.yaml"]).await;
        let denied = until_status(&pp, Method::GET, "reviews", 403).await;
        assert_eq!(denied.header("x-sane-response-flags"), Some("RBAC"));
        until_status(&sleep, Method::GET, "details", 403).await;
        until_status(&pp, Method::GET, "ratings", 403).await;
        b.apply(&["authorization-reviews-viewer.yaml"]).await;
        until_status(&pp, Method::GET, "reviews", 200).await;
        assert_eq!(
            call_method(&pp, Method::POST, "reviews", &[])
                .await
                .unwrap()
                .status,
            403
        );
        assert_eq!(call(&sleep, "reviews", &[]).await.unwrap().status, 403);
        assert_eq!(call(&pp, "details", &[]).await.unwrap().status, 403);

        // Every sidecar took every push.
        ApiClient::new(&b.cp)
            .wait_in_sync(DEADLINE, &["bookinfo-productpage", "sleep"])
            .await;
    })
    .await;
}

/// Must-show 9, first half: the gateway's configuration comes from the
/// Gateway API objects; the control plane stores them and pushes the
/// route they produce; outside requests for the route's hostname are split
/// 90/10 between reviews-v1 and reviews-v2, each carrying the header.
async fn ingress_splits_90_10_with_its_header(b: &Bookinfo) {
    let objects = fixture("gateway-bookinfo.yaml");
    let section = b
        .cli
        .ok(&[
            "convert",
            "--gateway",
            "default/bookinfo-gateway",
            "-o",
            "json",
            "-f",
            &objects,
        ])
        .await;
    let section: serde_json::Value = serde_json::from_str(&section.stdout).unwrap();
    let mut gateway: sane_xds_proto::Gateway =
        serde_json::from_value(section["gateway"].clone()).unwrap();
    assert_eq!(gateway.listeners[0].address, "0.0.0.0:80");
    assert_eq!(gateway.hosts[0].hostname, "bookinfo.example.com");
    for l in &mut gateway.listeners {
        l.address = "127.0.0.1:0".into();
    }
    b.apply(&["gateway-bookinfo.yaml"]).await;

    let sa = "bookinfo-gateway";
    let token = b.cp.issue_token(b.dir.path(), "default", sa).await;
    let mut boot = xds_bootstrap(&b.cp, sa, vec![]);
    boot.identity = Some(identity(&b.cp, &token, sa));
    streams_as_itself(&mut boot, sa, sa);
    boot.gateway = Some(gateway);
    boot.validate().expect("a valid gateway bootstrap");
    let config = b.dir.path().join("gateway.yaml");
    write_bootstrap(&config, &boot);
    let cfg = config.display().to_string();
    let proc = Proc::spawn(
        "sane-proxy[gateway]",
        &bins().proxy,
        ["gateway", "--config", cfg.as_str()],
        &[],
    );
    let listeners = proc
        .wait_listening(&["admin", "http"], READY_DEADLINE)
        .await;
    let http = listeners["http"];
    let client = sane_e2e::harness::http::http1_client();
    let get = || async {
        let mut req = request(Method::GET, &format!("http://{http}/reviews/1"), full(""));
        req.headers_mut()
            .insert(http::header::HOST, "bookinfo.example.com".parse().unwrap());
        send(&client, req).await
    };
    eventually(DEADLINE, || async {
        let r = get().await?;
        if r.status == StatusCode::OK {
            Ok(())
        } else {
            Err(format!("{} {}", r.status, r.text()))
        }
    })
    .await;
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    let mut replies = futures::stream::iter(0..SPLIT_REQUESTS)
        .map(|_| get())
        .buffer_unordered(16);
    while let Some(r) = replies.next().await {
        let r = r.expect("a reply");
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
        let json = r.json().unwrap();
        assert_eq!(json["headers"]["x-route"], "ingress", "{json}");
        *counts.entry(served_by(&r).to_string()).or_default() += 1;
    }
    assert_share(&counts, "reviews-v1", 90.0);
    assert_share(&counts, "reviews-v2", 10.0);
    drop(proc);
}

/// `sanectl convert` lists every unsupported field by path; `--strict`
/// refuses them, and so does `apply --strict`, storing nothing; bad input
/// (an unknown kind, a malformed object, a missing subset, a conflict with
/// a Sane route) is refused by name with nothing stored.
#[tokio::test]
async fn convert_reports_unsupported_fields_and_bad_input_stores_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(&dir.path().join("cp"), &[]).await;
    let cli = Sanectl::new(&cp);
    let api = ApiClient::new(&cp);
    let mesh = dir.path().join("mesh.yaml");
    std::fs::write(
        &mesh,
        "services:\n- { name: ratings, ports: [ { name: http, port: 80 } ] }\n\
         - { name: reviews, ports: [ { name: http, port: 80 } ] }\n\
         routes:\n- { name: reviews-canary, service: reviews, rules: [ { destinations: [ { service: reviews } ] } ] }\n",
    )
    .unwrap();
    cli.ok(&["apply", "-f", &mesh.display().to_string()]).await;
    let routes_before = api.get("/api/v1/routes").await.unwrap()["items"].clone();

    let unsupported = fixture("unsupported.yaml");
    let run = cli.ok(&["convert", "-f", &unsupported]).await;
    for want in [
        "VirtualService default/ratings: spec.http[0].match[0].sourceLabels: not supported",
        "VirtualService default/ratings: spec.http[0].rewrite.uriRegexRewrite: not supported",
        "VirtualService default/ratings: spec.http[0].corsPolicy: not supported",
        "DestinationRule default/ratings: spec.trafficPolicy.portLevelSettings: not supported",
    ] {
        assert!(run.stderr.contains(want), "{want} not in {run}");
    }
    let converted: MeshResources = serde_yaml::from_str(&run.stdout).expect("a Sane document");
    assert_eq!(converted.routes[0].name, "ratings.vs");

    let strict = cli.run(&["convert", "--strict", "-f", &unsupported]).await;
    assert_eq!(strict.code(), Some(1), "{strict}");
    assert!(strict.stdout.is_empty(), "{strict}");
    assert!(
        strict.stderr.contains("4 field(s) cannot be honoured"),
        "{strict}"
    );
    let refused = cli.run(&["apply", "--strict", "-f", &unsupported]).await;
    assert_eq!(refused.code(), Some(1), "{refused}");

    let bad = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    };
    let cases = [
        (
            bad("unknown.yaml", "apiVersion: networking.istio.io/v1\nkind: WorkloadGroup\nmetadata: {name: w}\n"),
            "kind \"WorkloadGroup\"",
        ),
        (
            bad("malformed.yaml", "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: bad}\nspec:\n  hosts: [ratings]\n  http: [ { route: [ { destination: { host: ratings }, weight: heavy } ] } ]\n"),
            "VirtualService default/bad: spec.http[0].route[0].weight",
        ),
        (
            bad("subset.yaml", "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: ratings}\nspec:\n  hosts: [ratings]\n  http: [ { route: [ { destination: { host: ratings, subset: v9 } } ] } ]\n"),
            "subset \"v9\" of host \"ratings\" is not declared",
        ),
        (fixture("virtual-service-reviews-50-v3.yaml"), "subset \"v1\""),
        (
            bad("conflict.yaml", "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: reviews}\nspec:\n  hosts: [reviews]\n  http: [ { route: [ { destination: { host: reviews } } ] } ]\n"),
            "conflict for service \"reviews.default\": Sane route default/reviews-canary and VirtualService default/reviews",
        ),
    ];
    for (file, want) in cases {
        let run = cli.run(&["apply", "-f", &file]).await;
        assert_eq!(run.code(), Some(1), "{run}");
        assert!(run.stderr.contains(want), "{want} not in {run}");
    }
    let routes_after = api.get("/api/v1/routes").await.unwrap()["items"].clone();
    assert_eq!(
        routes_before, routes_after,
        "a refused apply stored something"
    );
    let policies = api.get("/api/v1/policies").await.unwrap();
    assert_eq!(policies["items"], serde_json::json!([]), "{policies}");
    let stored = api.get("/api/v1/istio").await.unwrap();
    assert_eq!(stored["items"], serde_json::json!([]), "{stored}");

    // The other way round: a Sane route for a service a stored
    // VirtualService directs is refused, naming both.
    let vs = bad(
        "ratings-vs.yaml",
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: ratings}\nspec:\n  hosts: [ratings]\n  http: [ { timeout: 2s, route: [ { destination: { host: ratings } } ] } ]\n",
    );
    cli.ok(&["apply", "-f", &vs]).await;
    let canary = bad(
        "ratings-canary.yaml",
        "routes:\n- { name: ratings-canary, service: ratings, rules: [ { destinations: [ { service: ratings } ] } ] }\n",
    );
    let refused = cli.run(&["apply", "-f", &canary]).await;
    assert_eq!(refused.code(), Some(1), "{refused}");
    assert!(
        refused.stderr.contains(
            "conflict for service \"ratings.default\": VirtualService default/ratings and Sane route default/ratings-canary"
        ),
        "{refused}"
    );
    // Unknown kinds are refused by the API itself too (400, by name).
    let reply = api
        .send(
            Method::POST,
            "/api/v1/istio",
            "apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {name: w}\n",
            Some(sane_e2e::harness::TEST_API_TOKEN),
        )
        .await
        .unwrap();
    assert_eq!(reply.status, 400, "{}", reply.text());
    let error = reply.json().unwrap()["error"].as_str().unwrap().to_string();
    assert!(error.contains("kind \"WorkloadEntry\""), "{error}");
}

/// The inbound-listener settings `sanectl convert --tls-for` derives from
/// PeerAuthentication fixtures, for the ratings workload; the port the
/// fixture names (9080, as in Istio's task) is the echo app's HTTP port.
async fn ratings_tls(
    cli: &Sanectl,
    dir: &Path,
    file: &str,
    http_port: u16,
) -> (TlsMode, Vec<(u16, TlsMode)>) {
    let text = std::fs::read_to_string(fixture(file))
        .unwrap()
        .replace("9080", &http_port.to_string());
    let path = dir.join(file);
    std::fs::write(&path, text).unwrap();
    let run = cli
        .ok(&[
            "convert",
            "--offline",
            "--tls-for",
            "app=ratings",
            "-o",
            "json",
            "-f",
            &path.display().to_string(),
        ])
        .await;
    #[derive(serde::Deserialize)]
    struct Settings {
        mode: TlsMode,
        ports: BTreeMap<u16, TlsMode>,
    }
    let s: Settings = serde_json::from_str(&run.stdout).unwrap_or_else(|e| panic!("{e}: {run}"));
    (s.mode, s.ports.into_iter().collect())
}

/// Applies a PeerAuthentication fixture with `sanectl apply -f`, as an Istio
/// user would; the port it names (9080, as in Istio's task) is the echo
/// app's HTTP port.
async fn apply_fixture(cli: &Sanectl, dir: &Path, file: &str, http_port: u16) {
    let text = std::fs::read_to_string(fixture(file))
        .unwrap()
        .replace("9080", &http_port.to_string());
    let path = dir.join(file);
    std::fs::write(&path, text).unwrap();
    let run = cli.ok(&["apply", "-f", &path.display().to_string()]).await;
    assert!(
        run.stderr.contains("-> peer_authentication default/"),
        "the PeerAuthentication produced a Sane resource: {run}"
    );
}

/// 7. Mutual TLS migration with PeerAuthentication, enforced through the
/// control plane: `sanectl apply` of Istio's task's objects changes the
/// running ratings sidecar's inbound mode, without a restart. PERMISSIVE
/// lets a plaintext client in; STRICT refuses it while the mesh client
/// (mutual TLS) is still served; a workload-level STRICT with a port-level
/// DISABLE lets plaintext into that port only. The sidecar's bootstrap
/// leaves `tls_mode: default` (as injected sidecars do) and carries its
/// pod's labels.
#[tokio::test]
async fn peer_authentication_mtls_migration() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(&dir.path().join("cp"), &[]).await;
    let cli = Sanectl::new(&cp);
    let app = EchoApp::start_with(&bins().echo, "ratings-v1", "ratings").await;
    let http_port = app.addrs.http.port();
    let tcp_port = app.addrs.tcp.port();
    // `sanectl convert --tls-for` still resolves what a bootstrap would pin.
    let (mode, ports) = ratings_tls(&cli, dir.path(), "peer-authentication.yaml", http_port).await;
    assert_eq!(
        (mode, ports),
        (TlsMode::Strict, vec![(http_port, TlsMode::Disable)])
    );
    let token = cp
        .issue_token(dir.path(), "default", "bookinfo-ratings")
        .await;
    let inbound = Listener {
        name: "inbound".into(),
        direction: Direction::Inbound.into(),
        address: "127.0.0.1:0".into(),
        workload_ports: vec![
            WorkloadPort {
                port: http_port.into(),
                protocol: Protocol::Http.into(),
                ..Default::default()
            },
            WorkloadPort {
                port: tcp_port.into(),
                protocol: Protocol::Tcp.into(),
                ..Default::default()
            },
        ],
        ..Default::default()
    };
    let mut server_boot = xds_bootstrap(&cp, "ratings-v1", vec![inbound]);
    server_boot.node.workload = "ratings".into();
    server_boot.node.labels = [("app".to_string(), "ratings".to_string())].into();
    server_boot.identity = Some(identity(&cp, &token, "bookinfo-ratings"));
    streams_as_itself(&mut server_boot, "bookinfo-ratings", "ratings-v1");
    let server = Sidecar::start(&bins().proxy, dir.path(), "ratings-v1", server_boot).await;
    let client_token = cp
        .issue_token(dir.path(), "default", "bookinfo-reviews")
        .await;
    let mut client_boot = xds_bootstrap(
        &cp,
        "reviews-v1",
        vec![Listener {
            name: "outbound".into(),
            address: "127.0.0.1:0".into(),
            ..Default::default()
        }],
    );
    client_boot.identity = Some(identity(&cp, &client_token, "bookinfo-reviews"));
    streams_as_itself(&mut client_boot, "bookinfo-reviews", "reviews-v1");
    let client = Sidecar::start(&bins().proxy, dir.path(), "reviews-v1", client_boot).await;
    let mesh = MeshResources {
        services: vec![Service {
            name: "ratings".into(),
            ports: vec![ServicePort {
                name: "http".into(),
                port: 80,
                ..Default::default()
            }],
            ..Default::default()
        }],
        endpoints: vec![Endpoint {
            identity: "spiffe://cluster.local/ns/default/sa/bookinfo-ratings".into(),
            ..app.endpoint(Some(server.listener("inbound").port()))
        }],
        ..Default::default()
    };
    let mesh_path = dir.path().join("ratings.yaml");
    std::fs::write(&mesh_path, serde_yaml::to_string(&mesh).unwrap()).unwrap();
    cli.ok(&["apply", "-f", &mesh_path.display().to_string()])
        .await;
    let sidecar_client = Bookinfo::client(&client);
    let inbound_addr = server.listener("inbound");
    // A plain HTTP client reaches the first HTTP workload port, a plain
    // opaque one the TCP port (echoed back when delivered).
    // Each attempt is bounded: a refused connection must not hang a poll.
    let attempt = Duration::from_secs(5);
    let plain_http = || async move {
        let mut req = request(Method::GET, "/", full(""));
        req.headers_mut().insert("host", "ratings".parse().unwrap());
        let sent = sane_e2e::harness::http::send_http1(inbound_addr, req);
        match tokio::time::timeout(attempt, sent).await {
            Ok(r) => r.map(|r| r.status()),
            Err(_) => Err("no answer in 5s".to_string()),
        }
    };
    let plain_tcp = || async move {
        let echoed = sane_e2e::harness::http::tcp_roundtrip(inbound_addr, b"ping");
        matches!(tokio::time::timeout(attempt, echoed).await, Ok(Ok(back)) if back == b"ping")
    };
    let inbound_mode = || async {
        let dump = server.config_dump().await?;
        Ok::<_, String>(dump["inbound_tls"]["inbound"].clone())
    };
    within(TEST_DEADLINE, async {
        // No PeerAuthentication yet: strict (the sidecar has an identity).
        until_served_by(&sidecar_client, "ratings", &[], "ratings-v1").await;
        assert!(plain_http().await.is_err(), "strict by default");

        apply_fixture(
            &cli,
            dir.path(),
            "peer-authentication-permissive.yaml",
            http_port,
        )
        .await;
        eventually(DEADLINE, || async {
            match (plain_http().await, plain_tcp().await) {
                (Ok(StatusCode::OK), true) => Ok(()),
                other => Err(format!("plaintext under PERMISSIVE: {other:?}")),
            }
        })
        .await;
        assert_eq!(inbound_mode().await.unwrap()["mode"], "permissive");
        let r = call(&sidecar_client, "ratings", &[]).await.unwrap();
        assert_eq!((r.status, served_by(&r)), (StatusCode::OK, "ratings-v1"));

        apply_fixture(
            &cli,
            dir.path(),
            "peer-authentication-strict.yaml",
            http_port,
        )
        .await;
        eventually(DEADLINE, || async {
            match (plain_http().await, plain_tcp().await) {
                (Err(_), false) => Ok(()),
                other => Err(format!("plaintext under STRICT: {other:?}")),
            }
        })
        .await;
        assert_eq!(inbound_mode().await.unwrap()["mode"], "strict");
        let r = call(&sidecar_client, "ratings", &[]).await.unwrap();
        assert_eq!(
            (r.status, served_by(&r)),
            (StatusCode::OK, "ratings-v1"),
            "mTLS is served"
        );

        apply_fixture(&cli, dir.path(), "peer-authentication.yaml", http_port).await;
        eventually(DEADLINE, || async {
            match plain_http().await {
                Ok(StatusCode::OK) => Ok(()),
                other => Err(format!("plaintext to the DISABLE port: {other:?}")),
            }
        })
        .await;
        assert!(!plain_tcp().await, "the other port stays STRICT");
        let mode = inbound_mode().await.unwrap();
        assert_eq!(mode["mode"], "strict", "{mode}");
        assert_eq!(mode["ports"][http_port.to_string()], "disable", "{mode}");
        let r = call(&sidecar_client, "ratings", &[]).await.unwrap();
        assert_eq!((r.status, served_by(&r)), (StatusCode::OK, "ratings-v1"));
    })
    .await;
}
