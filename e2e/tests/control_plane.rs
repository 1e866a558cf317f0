//! The control plane end to end: a real `sane-control-plane`, real
//! `sane-proxy` processes fed by it over xDS, the `sanectl` CLI run as a
//! process, and echo apps carrying traffic.
//!
//! Every test starts its own control plane (data dir in a tempdir) and every
//! process on port 0. The mesh is one service, `echo`, with instances
//! `echo-1` (`version: v1`) and `echo-2` (`version: v2`), and route
//! `echo-canary` deciding which requests go where.
//!
//! Run alone with `-- --nocapture` to see the convergence figures; set
//! `SANE_WRITE_BENCH=1` to also write them to `bench/results/convergence.txt`.

use futures::future::join_all;
use http::{Method, StatusCode};
use sane_e2e::harness::http::{get, http1_client_via, send, Body, HttpClient};
use sane_e2e::harness::{
    bins, eventually, metric_value, proxy_row, workspace_root, xds_bootstrap, ApiClient,
    ControlPlane, EchoApp, Sanectl, Sidecar, Signal, OUTBOUND, TEST_API_TOKEN,
};
use sane_xds_proto::Listener;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

/// Deadline of every wait in this file.
const DEADLINE: Duration = Duration::from_secs(30);
/// The route every test steers traffic with.
const ROUTE: &str = "default/echo-canary";
/// Everything to `echo-1`.
const ALL_TO_V1: &str = "
routes:
  - name: echo-canary
    service: echo
    rules:
      - destinations: [ { service: echo, subset: { version: v1 } } ]
";
/// The kinds of the registry, as the API names them.
const KINDS: [&str; 4] = ["services", "endpoints", "routes", "policies"];
/// The header match of the canary rule that sends `x-canary: 1` to v2.
const CANARY_EXACT: &str = r#"{ name: x-canary, value: "1" }"#;

/// A control plane in a tempdir, with clients of its API and CLI.
struct Cp {
    dir: tempfile::TempDir,
    cp: ControlPlane,
    api: ApiClient,
    cli: Sanectl,
}

/// The two instances of `echo`.
struct Echoes {
    v1: EchoApp,
    v2: EchoApp,
}

/// A request loop through one sidecar that runs until stopped: the traffic
/// an application keeps sending whatever the control plane does.
struct SteadyTraffic {
    answered: Arc<AtomicU64>,
    failures: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

/// A write the API must refuse, and how.
struct BadWrite {
    what: &'static str,
    method: Method,
    path: &'static str,
    body: String,
    token: Option<&'static str>,
    status: StatusCode,
    /// What the `error` message must contain.
    names: &'static str,
}

// === impl Cp ===

impl Cp {
    async fn start() -> Cp {
        let dir = tempfile::tempdir().expect("a temp dir");
        let cp = ControlPlane::start(&dir.path().join("cp"), &[]).await;
        Cp {
            api: ApiClient::new(&cp),
            cli: Sanectl::new(&cp),
            dir,
            cp,
        }
    }

    /// Writes `yaml` to `<dir>/<file>` and runs `sanectl apply -f` on it;
    /// panics unless the CLI exits 0. Returns its stdout.
    async fn apply(&self, file: &str, yaml: &str) -> String {
        let path = self.dir.path().join(file);
        std::fs::write(&path, yaml).expect("writing the manifest");
        let path = path.display().to_string();
        self.cli.ok(&["apply", "-f", &path]).await.stdout
    }

    /// Starts proxy `id` fed by this control plane, with an outbound HTTP
    /// listener if `outbound`, and waits until it is ready (it has ACKed
    /// every type once).
    async fn proxy(&self, id: &str, outbound: bool) -> Sidecar {
        let dir = self.dir.path().join("proxies");
        std::fs::create_dir_all(&dir).expect("creating the proxies dir");
        let listeners = match outbound {
            true => vec![Listener {
                name: OUTBOUND.into(),
                address: "127.0.0.1:0".into(),
                ..Default::default()
            }],
            false => Vec::new(),
        };
        let bootstrap = xds_bootstrap(&self.cp, id, listeners);
        Sidecar::start(&bins().proxy, &dir, id, bootstrap).await
    }

    /// The stored list of `kind` (`services`, `routes`, ...):
    /// `{"revision": .., "items": [..]}`.
    async fn list(&self, kind: &str) -> Value {
        self.api
            .get(&format!("/api/v1/{kind}"))
            .await
            .unwrap_or_else(|e| panic!("listing {kind}: {e}"))
    }

    /// The stored items of every kind.
    async fn registrations(&self) -> Vec<Value> {
        let lists = join_all(KINDS.map(|kind| self.list(kind))).await;
        lists.into_iter().map(|l| l["items"].clone()).collect()
    }
}

// === impl Echoes ===

impl Echoes {
    async fn start() -> Echoes {
        let echo = &bins().echo;
        let (v1, v2) = tokio::join!(
            EchoApp::start_with(echo, "echo-1", "echo"),
            EchoApp::start_with(echo, "echo-2", "echo"),
        );
        Echoes { v1, v2 }
    }
}

// === impl SteadyTraffic ===

impl SteadyTraffic {
    /// Sends `GET http://echo/` through `client` every few milliseconds; an
    /// answer other than 200 from `echo-1` is a failure. Paced rather than
    /// back to back, so it leaves CPU to the processes under test.
    fn start(client: HttpClient) -> SteadyTraffic {
        let answered = Arc::new(AtomicU64::new(0));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn({
            let (answered, failures, stop) = (answered.clone(), failures.clone(), stop.clone());
            async move {
                let mut pace = tokio::time::interval(Duration::from_millis(5));
                while !stop.load(Ordering::Relaxed) {
                    pace.tick().await;
                    match answered_by(&client, None).await {
                        Ok(name) if name == "echo-1" => {
                            answered.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(name) => failures.lock().unwrap().push(format!("answered by {name}")),
                        Err(e) => failures.lock().unwrap().push(e),
                    }
                }
            }
        });
        SteadyTraffic {
            answered,
            failures,
            stop,
            task,
        }
    }

    fn answered(&self) -> u64 {
        self.answered.load(Ordering::Relaxed)
    }

    /// Waits until `n` more requests were answered than now.
    async fn wait_for_more(&self, n: u64) {
        let target = self.answered() + n;
        eventually(DEADLINE, || async {
            let failures = self.failures.lock().unwrap().clone();
            assert!(failures.is_empty(), "requests failed: {failures:?}");
            let now = self.answered();
            (now >= target)
                .then_some(())
                .ok_or_else(|| format!("{now} requests answered, waiting for {target}"))
        })
        .await
    }

    /// Stops the loop; returns the answers and the failures.
    async fn stop(self) -> (u64, Vec<String>) {
        let SteadyTraffic {
            answered,
            failures,
            stop,
            task,
        } = self;
        stop.store(true, Ordering::Relaxed);
        task.await.expect("the traffic loop does not panic");
        let failures = failures.lock().unwrap().clone();
        (answered.load(Ordering::Relaxed), failures)
    }
}

// === impl BadWrite ===

impl BadWrite {
    /// `PUT path` with `body` and the admin token.
    fn put(what: &'static str, path: &'static str, body: impl ToString) -> BadWrite {
        BadWrite {
            what,
            method: Method::PUT,
            path,
            body: body.to_string(),
            token: Some(TEST_API_TOKEN),
            status: StatusCode::OK,
            names: "",
        }
    }

    fn token(self, token: Option<&'static str>) -> BadWrite {
        BadWrite { token, ..self }
    }

    /// Expected to fail with `status` and an error containing `names`.
    fn rejected(self, status: StatusCode, names: &'static str) -> BadWrite {
        BadWrite {
            status,
            names,
            ..self
        }
    }

    async fn check(self, api: &ApiClient) {
        let (what, method, path) = (self.what, self.method, self.path);
        let reply = api
            .send(method.clone(), path, self.body, self.token)
            .await
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        let text = reply.text();
        assert_eq!(reply.status, self.status, "{what}: {method} {path}: {text}");
        let error = reply.json().unwrap_or_else(|e| panic!("{what}: {e}"))["error"].clone();
        let error = error.as_str().unwrap_or_default();
        let names = self.names;
        assert!(
            error.contains(names),
            "{what}: {error:?} does not name {names:?}"
        );
    }
}

// === helpers ===

/// Service `echo` (HTTP on port 80) and the endpoints of `instances`, each
/// labelled with its version.
fn mesh_yaml(instances: &[(&EchoApp, &str)]) -> String {
    let mut yaml =
        "services:\n  - { name: echo, ports: [ { name: http, port: 80 } ] }\n".to_string();
    yaml.push_str("endpoints:\n");
    for (app, version) in instances {
        yaml.push_str(&format!("  - {}\n", endpoint_yaml(app, version)));
    }
    yaml
}

fn endpoint_yaml(app: &EchoApp, version: &str) -> String {
    format!(
        "{{ service: echo, address: 127.0.0.1, port: {}, labels: {{ version: {version} }} }}",
        app.addrs.http.port()
    )
}

/// Route `echo-canary`: requests matching header condition `header` go to
/// v2, the rest to v1 with timeout `timeout`.
fn canary_yaml(header: &str, timeout: &str) -> String {
    format!(
        "
routes:
  - name: echo-canary
    service: echo
    rules:
      - matches: [ {{ headers: [ {header} ] }} ]
        destinations: [ {{ service: echo, subset: {{ version: v2 }} }} ]
      - destinations: [ {{ service: echo, subset: {{ version: v1 }} }} ]
        timeout: {timeout}
"
    )
}

/// The first route of a `routes:` document, as the API's JSON.
fn route_json(yaml: &str) -> Value {
    let doc: Value = serde_yaml::from_str(yaml).expect("a valid YAML document");
    doc["routes"][0].clone()
}

/// Which echo instance answered `GET http://echo/` through `client`, sent
/// with `x-canary: <canary>` if given.
async fn answered_by(client: &HttpClient, canary: Option<&str>) -> Result<String, String> {
    let req = match canary {
        Some(v) => canary_request(v),
        None => get("http://echo/"),
    };
    let reply = send(client, req).await?;
    if reply.status != StatusCode::OK {
        return Err(format!("{} {}", reply.status, reply.text()));
    }
    reply
        .header("x-echo-name")
        .map(str::to_string)
        .ok_or_else(|| "no x-echo-name in the answer".to_string())
}

/// `GET http://echo/` with `x-canary: <value>`.
fn canary_request(value: &str) -> http::Request<Body> {
    let mut req = get("http://echo/");
    let value = value.parse().expect("a valid header value");
    req.headers_mut().insert("x-canary", value);
    req
}

/// Waits until requests with `canary` are answered by `want`.
async fn wait_answered_by(client: &HttpClient, canary: Option<&str>, want: &str) {
    eventually(DEADLINE, || async {
        let got = answered_by(client, canary).await?;
        (got == want)
            .then_some(())
            .ok_or_else(|| format!("x-canary {canary:?} answered by {got}, waiting for {want}"))
    })
    .await
}

/// The Route version each of `ids` ACKed last.
async fn acked_route_versions(api: &ApiClient, ids: &[String]) -> BTreeMap<String, String> {
    let status = api.proxies().await.expect("the status table");
    ids.iter()
        .map(|id| {
            let r = proxy_row(&status, id).unwrap_or_else(|| panic!("{id} not listed: {status}"));
            let v = r["types"]["Route"]["version_acked"].as_str().unwrap_or("");
            (id.clone(), v.to_string())
        })
        .collect()
}

/// Waits until every proxy of `before` has ACKed a Route version other than
/// the one it held before, and is in sync at registry revision `revision` or
/// later. Returns the new versions and the wall-clock time of the last ACK.
async fn wait_route_acked(
    api: &ApiClient,
    before: &BTreeMap<String, String>,
    revision: u64,
) -> (BTreeMap<String, String>, SystemTime) {
    eventually(DEADLINE, || async {
        let status = api.proxies().await?;
        if status["all_in_sync"] != true {
            return Err("all_in_sync is false".to_string());
        }
        let mut versions = BTreeMap::new();
        let mut last_ack = SystemTime::UNIX_EPOCH;
        for (id, old) in before {
            let r = proxy_row(&status, id).ok_or_else(|| format!("{id} not listed"))?;
            let route = &r["types"]["Route"];
            let acked = route["version_acked"].as_str().unwrap_or("");
            let caught_up = r["connected"] == true
                && r["in_sync"] == true
                && r["revision"].as_u64() >= Some(revision)
                && acked != old
                && route["version_sent"].as_str() == Some(acked);
            if !caught_up {
                return Err(format!("{id} has not ACKed the change: {r}"));
            }
            let at = route["acked_at"].as_str().unwrap_or("");
            let at = humantime::parse_rfc3339(at).map_err(|e| format!("acked_at {at:?}: {e}"))?;
            last_ack = last_ack.max(at);
            versions.insert(id.clone(), acked.to_string());
        }
        Ok((versions, last_ack))
    })
    .await
}

/// Waits until `proxy`'s `sane_xds_connected` gauge says `connected`.
async fn wait_xds_connected(proxy: &Sidecar, connected: bool) {
    let want = if connected { 1.0 } else { 0.0 };
    eventually(DEADLINE, || async {
        let metrics = proxy.metrics().await?;
        match metric_value(&metrics, "sane_xds_connected", &[]) {
            Some(v) if v == want => Ok(()),
            other => Err(format!(
                "sane_xds_connected is {other:?}, waiting for {want}"
            )),
        }
    })
    .await
}

/// Writes the convergence figures to `bench/results/convergence.txt`
/// (`convergence-<N>.txt` for another proxy count).
fn write_bench(samples_ms: &[u64], proxies: usize, line: &str) {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, m)| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".to_string());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let profile = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };
    let (env, file) = if proxies == 20 {
        (String::new(), "convergence.txt".to_string())
    } else {
        (
            format!("SANE_BENCH_PROXIES={proxies} "),
            format!("convergence-{proxies}.txt"),
        )
    };
    let text = format!(
        "# xDS convergence: API write to the last ACK\n\n\
         {line}\n\n\
         | | |\n|---|---|\n\
         | machine | {cpu}, {cores} cores |\n\
         | binaries | {profile} build |\n\
         | peers | 1 sane-control-plane (default debounce: 100ms quiet, 1s max), {proxies} sane-proxy, same host |\n\
         | change | PUT /api/v1/routes/{ROUTE} (a new timeout on one rule) |\n\
         | measured | from just before the PUT to the latest `acked_at` of the Route type in GET /api/v1/proxies |\n\
         | samples (ms) | {samples_ms:?} |\n\
         | command | {env}SANE_WRITE_BENCH=1 cargo test -p sane-e2e --test control_plane route_change -- --nocapture |\n"
    );
    let path: PathBuf = workspace_root().join("bench/results").join(file);
    std::fs::create_dir_all(path.parent().expect("a parent dir")).expect("creating bench/results");
    std::fs::write(&path, text).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    eprintln!("wrote {}", path.display());
}

/// Every endpoint address in a proxy's `/config_dump`, over all clusters.
fn endpoint_addresses(dump: &Value) -> Vec<String> {
    let mut addrs: Vec<String> = dump["clusters"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|c| c["endpoints"].as_array().cloned().unwrap_or_default())
        .filter_map(|e| e["address"].as_str().map(str::to_string))
        .collect();
    addrs.sort();
    addrs.dedup();
    addrs
}

// === tests ===

/// A route change applied with `sanectl apply` reaches 20 proxies, each
/// ACKs it, `sanectl status --wait-sync` agrees, and traffic through the
/// one proxy with a listener follows the new route. Then five more changes
/// through the API measure write-to-last-ACK convergence.
/// `SANE_BENCH_PROXIES=<n>` runs it with another number of proxies (the
/// push benchmark, `bench/convergence.sh --proxies 100`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_change_converges_on_20_proxies() {
    let proxy_count: usize = std::env::var("SANE_BENCH_PROXIES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let cp = Cp::start().await;
    let echoes = Echoes::start().await;
    let mesh = mesh_yaml(&[(&echoes.v1, "v1"), (&echoes.v2, "v2")]);
    let out = cp.apply("mesh.yaml", &format!("{mesh}{ALL_TO_V1}")).await;
    assert!(out.contains("service default/echo created"), "{out}");
    assert!(out.contains(&format!("route {ROUTE} created")), "{out}");

    let ids: Vec<String> = (0..proxy_count).map(|i| format!("proxy-{i:02}")).collect();
    let proxies = join_all(ids.iter().enumerate().map(|(i, id)| cp.proxy(id, i == 0))).await;
    let client = http1_client_via(proxies[0].listener(OUTBOUND));
    let status = cp.cli.ok(&["status", "--wait-sync", "30s"]).await;
    for id in &ids {
        assert!(status.stdout.contains(id.as_str()), "{status}");
    }
    wait_answered_by(&client, Some("1"), "echo-1").await;

    // The change, through the CLI.
    let before = acked_route_versions(&cp.api, &ids).await;
    let revision = cp.list("routes").await["revision"].as_u64().unwrap();
    let out = cp
        .apply("route.yaml", &canary_yaml(CANARY_EXACT, "30s"))
        .await;
    assert!(out.contains(&format!("route {ROUTE} updated")), "{out}");
    let (acked, _) = wait_route_acked(&cp.api, &before, revision + 1).await;
    let status = cp.cli.run(&["status", "--wait-sync", "30s"]).await;
    assert_eq!(status.code(), Some(0), "{status}");
    assert!(status.stdout.contains("all in sync: true"), "{status}");
    wait_answered_by(&client, Some("1"), "echo-2").await;
    assert_eq!(answered_by(&client, None).await.unwrap(), "echo-1");

    // Convergence: each change is a PUT of the route with a new timeout.
    let mut before = acked;
    let mut samples_ms = Vec::new();
    for i in 1..=5 {
        let body = route_json(&canary_yaml(CANARY_EXACT, &format!("{}s", 30 + i)));
        let start = SystemTime::now();
        let reply = cp.api.put(&format!("/api/v1/routes/{ROUTE}"), &body).await;
        let revision = reply["revision"].as_u64().expect("the write's revision");
        let (acked, last_ack) = wait_route_acked(&cp.api, &before, revision).await;
        let took = last_ack.duration_since(start).unwrap_or_default();
        samples_ms.push(u64::try_from(took.as_millis()).unwrap_or(u64::MAX));
        before = acked;
    }
    let mut sorted = samples_ms.clone();
    sorted.sort_unstable();
    let line = format!(
        "convergence: median={}ms p100={}ms over {} changes, {proxy_count} proxies",
        sorted[sorted.len() / 2],
        sorted[sorted.len() - 1],
        sorted.len()
    );
    println!("{line} (samples {samples_ms:?})");
    if std::env::var("SANE_WRITE_BENCH").is_ok_and(|v| v == "1") {
        write_bench(&samples_ms, proxy_count, &line);
    }
    // Traffic follows the last change too.
    assert_eq!(answered_by(&client, Some("1")).await.unwrap(), "echo-2");
}

/// A route the control plane accepts but proxies cannot compile (a regex
/// with an unclosed class) is NACKed; the status API and `sanectl status`
/// show why; traffic keeps flowing on the previous route; fixing the route
/// brings the proxies back in sync.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_route_is_nacked_and_the_old_route_keeps_serving() {
    let cp = Cp::start().await;
    let echoes = Echoes::start().await;
    let mesh = mesh_yaml(&[(&echoes.v1, "v1"), (&echoes.v2, "v2")]);
    cp.apply(
        "mesh.yaml",
        &format!("{mesh}{}", canary_yaml(CANARY_EXACT, "30s")),
    )
    .await;
    let (client, bystander) = tokio::join!(cp.proxy("client", true), cp.proxy("bystander", false));
    let http = http1_client_via(client.listener(OUTBOUND));
    wait_answered_by(&http, Some("1"), "echo-2").await;
    let ids = ["client".to_string(), "bystander".to_string()];
    let before = acked_route_versions(&cp.api, &ids).await;

    let bad = canary_yaml(r#"{ name: x-canary, kind: regex, value: "[a-" }"#, "30s");
    let out = cp.apply("bad-route.yaml", &bad).await;
    assert!(out.contains(&format!("route {ROUTE} updated")), "{out}");
    for id in &ids {
        let nack = eventually(DEADLINE, || async {
            let r = cp.api.proxy(id).await?;
            let route = &r["types"]["Route"];
            let nack = &route["last_nack"];
            if nack.is_null() || nack["version"] != route["version_sent"] {
                return Err(format!("{id} has not NACKed the latest route: {r}"));
            }
            assert_eq!(r["in_sync"], false, "{r}");
            assert_eq!(route["version_acked"], before[id].as_str(), "{r}");
            Ok(nack["reason"].as_str().unwrap_or("").to_string())
        })
        .await;
        for part in [ROUTE, "headers[0].value", "invalid regex"] {
            assert!(nack.contains(part), "{id}'s NACK {nack:?} lacks {part:?}");
        }
    }
    assert_eq!(cp.api.proxies().await.unwrap()["all_in_sync"], false);
    let status = cp.cli.ok(&["status"]).await;
    assert!(status.stdout.contains("invalid regex"), "{status}");
    let waited = cp.cli.run(&["status", "--wait-sync", "1s"]).await;
    assert_eq!(waited.code(), Some(2), "{waited}");

    // The previous route still serves, both ways.
    for _ in 0..10 {
        assert_eq!(answered_by(&http, Some("1")).await.unwrap(), "echo-2");
        assert_eq!(answered_by(&http, None).await.unwrap(), "echo-1");
    }

    // A fixed route (a valid regex this time) is ACKed and takes effect.
    let fixed = canary_yaml(r#"{ name: x-canary, kind: regex, value: "1|yes" }"#, "30s");
    cp.apply("fixed-route.yaml", &fixed).await;
    cp.api
        .wait_in_sync(DEADLINE, &["client", "bystander"])
        .await;
    wait_answered_by(&http, Some("yes"), "echo-2").await;
    assert_eq!(answered_by(&http, None).await.unwrap(), "echo-1");
    drop(bystander);
}

/// Killing the control plane does not disturb traffic through the
/// sidecars; restarted on the same ports and data dir, it has every
/// registration, the proxies reconnect and resync, and new changes flow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxies_ride_out_a_control_plane_restart() {
    let mut cp = Cp::start().await;
    let echoes = Echoes::start().await;
    let mesh = mesh_yaml(&[(&echoes.v1, "v1"), (&echoes.v2, "v2")]);
    cp.apply("mesh.yaml", &format!("{mesh}{ALL_TO_V1}")).await;
    let policy = json!({ "service": "echo", "load_balancer": "round_robin" });
    cp.api.put("/api/v1/policies/default/echo", &policy).await;
    let (client, bystander) = tokio::join!(cp.proxy("client", true), cp.proxy("bystander", false));
    cp.api
        .wait_in_sync(DEADLINE, &["client", "bystander"])
        .await;
    let http = http1_client_via(client.listener(OUTBOUND));
    let before = cp.registrations().await;

    let traffic = SteadyTraffic::start(http.clone());
    traffic.wait_for_more(10).await;
    cp.cp.proc.signal(Signal::SIGKILL);
    let exit = cp.cp.proc.wait_exit(Duration::from_secs(10)).await;
    assert!(exit.is_some(), "the control plane survived SIGKILL");
    wait_xds_connected(&client, false).await;
    // The control plane is gone and the proxy knows it: traffic goes on.
    traffic.wait_for_more(50).await;
    let ready = client.admin_get("/ready").await.unwrap();
    assert_eq!(ready.status, StatusCode::OK, "{}", ready.text());

    let (xds, api) = (cp.cp.xds.to_string(), cp.cp.api.to_string());
    let data_dir = cp.cp.data_dir.clone();
    cp.cp = ControlPlane::start_on(&data_dir, &xds, &api, &[]).await;
    assert_eq!(cp.cp.xds.to_string(), xds);
    cp.api
        .wait_in_sync(DEADLINE, &["client", "bystander"])
        .await;
    wait_xds_connected(&client, true).await;
    let after = cp.registrations().await;
    assert_eq!(before, after, "registrations changed across the restart");
    assert_eq!(after[1].as_array().map(Vec::len), Some(2), "{after:?}");

    traffic.wait_for_more(10).await;
    let (answered, failures) = traffic.stop().await;
    assert!(
        failures.is_empty(),
        "{} requests failed: {failures:?}",
        failures.len()
    );
    assert!(answered >= 70, "only {answered} requests answered");

    // The restarted control plane pushes new changes.
    cp.apply("route.yaml", &canary_yaml(CANARY_EXACT, "30s"))
        .await;
    wait_answered_by(&http, Some("1"), "echo-2").await;
    cp.api
        .wait_in_sync(DEADLINE, &["client", "bystander"])
        .await;
    drop(bystander);
}

/// An endpoint registered with a 2s lease serves while it is heartbeated,
/// and once the heartbeats stop it leaves both the registry and the proxy's
/// clusters, without anyone deregistering it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoint_leaves_when_its_lease_expires() {
    const TTL: Duration = Duration::from_secs(2);
    let cp = Cp::start().await;
    let echoes = Echoes::start().await;
    // v1 is registered for good; v2, reached with `x-canary: 1`, will only
    // be leased.
    let mesh = mesh_yaml(&[(&echoes.v1, "v1")]);
    cp.apply(
        "mesh.yaml",
        &format!("{mesh}{}", canary_yaml(CANARY_EXACT, "30s")),
    )
    .await;
    let client = cp.proxy("client", true).await;
    let http = http1_client_via(client.listener(OUTBOUND));
    let stable = echoes.v1.addrs.http.to_string();

    let leased = echoes.v2.addrs.http.to_string();
    let path = format!("/api/v1/endpoints/default/echo/{leased}");
    let body: Value = serde_yaml::from_str(&endpoint_yaml(&echoes.v2, "v2")).unwrap();
    let reply = cp.api.put(&format!("{path}?ttl=2s"), &body).await;
    assert_eq!(reply["outcome"], "created", "{reply}");
    assert_eq!(reply["ttl"], "2s", "{reply}");
    let registered = Instant::now();

    // Heartbeats (one per attempt) keep it registered and serving well
    // past its TTL.
    eventually(DEADLINE, || async {
        let hb = cp.api.post(&format!("{path}/heartbeat")).await?;
        assert_eq!(hb.status, StatusCode::OK, "heartbeat: {}", hb.text());
        assert_eq!(hb.json()?["ttl"], "2s");
        let alive = registered.elapsed();
        if alive < TTL * 3 / 2 {
            return Err(format!("heartbeated for {alive:?}"));
        }
        let eps = endpoint_addresses(&client.config_dump().await?);
        if !eps.contains(&leased) {
            return Err(format!(
                "{leased} is not among the proxy's endpoints {eps:?}"
            ));
        }
        match answered_by(&http, Some("1")).await? {
            name if name == "echo-2" => Ok(()),
            other => Err(format!("x-canary answered by {other}")),
        }
    })
    .await;
    cp.api
        .get(&path)
        .await
        .expect("the leased endpoint is stored");

    // No more heartbeats: the lease runs out.
    eventually(DEADLINE, || async {
        let list = cp.api.get("/api/v1/endpoints").await?;
        let stored: Vec<String> = list["items"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|e| format!("{}:{}", e["address"].as_str().unwrap_or(""), e["port"]))
            .collect();
        if stored.contains(&leased) {
            return Err(format!("{leased} is still registered"));
        }
        assert_eq!(
            stored,
            std::slice::from_ref(&stable),
            "the other endpoint stays"
        );
        let eps = endpoint_addresses(&client.config_dump().await?);
        if eps.contains(&leased) {
            return Err(format!("{leased} is still among the proxy's endpoints"));
        }
        assert_eq!(
            eps,
            std::slice::from_ref(&stable),
            "the proxy keeps the other endpoint"
        );
        Ok(())
    })
    .await;
    let gone = cp.api.send(Method::GET, &path, "", None).await.unwrap();
    assert_eq!(gone.status, StatusCode::NOT_FOUND, "{}", gone.text());
    // The canary subset is empty now; everything else still flows.
    let reply = send(&http, canary_request("1")).await.unwrap();
    assert_eq!(
        reply.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        reply.text()
    );
    assert_eq!(reply.header("x-sane-response-flags"), Some("UH"));
    for _ in 0..10 {
        assert_eq!(answered_by(&http, None).await.unwrap(), "echo-1");
    }
}

/// Bad writes over real HTTP get the right status and a message naming the
/// problem, and none of them changes what is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_api_input_is_rejected_and_nothing_is_stored() {
    let cp = Cp::start().await;
    cp.apply(
        "mesh.yaml",
        "services:\n  - { name: echo, ports: [ { name: http, port: 80 } ] }\n",
    )
    .await;
    // Items and revision: a rejected write must not even bump the revision.
    let before = join_all(KINDS.map(|kind| cp.list(kind))).await;
    const WEB: &str = "/api/v1/services/default/web";
    let web = json!({ "name": "web", "ports": [ { "port": 80 } ] });
    let huge =
        json!({ "name": "web", "ports": [ { "port": 80 } ], "hosts": ["h".repeat(1_100_000)] });
    let cases = [
        BadWrite::put("malformed JSON", WEB, r#"{"name": "web", "ports": ["#)
            .rejected(StatusCode::BAD_REQUEST, "invalid service JSON"),
        BadWrite::put("an unknown field", WEB, json!({ "name": "web", "colour": "blue" }))
            .rejected(StatusCode::BAD_REQUEST, "colour"),
        BadWrite::put(
            "a route of an unknown service",
            "/api/v1/routes/default/ghost-route",
            json!({ "service": "ghost", "rules": [ {} ] }),
        )
        .rejected(StatusCode::UNPROCESSABLE_ENTITY, "ghost"),
        BadWrite::put(
            "a route to an unknown service",
            "/api/v1/routes/default/to-ghost",
            json!({ "service": "echo", "rules": [ { "destinations": [ { "service": "phantom" } ] } ] }),
        )
        .rejected(StatusCode::UNPROCESSABLE_ENTITY, "phantom"),
        BadWrite::put(
            "an endpoint of an unknown service",
            "/api/v1/endpoints/default/ghost/127.0.0.1:8080",
            json!({ "address": "127.0.0.1", "port": 8080 }),
        )
        .rejected(StatusCode::UNPROCESSABLE_ENTITY, "ghost"),
        BadWrite::put("a body over 1 MiB", WEB, huge)
            .rejected(StatusCode::PAYLOAD_TOO_LARGE, "over the limit"),
        BadWrite::put("no token", WEB, &web)
            .token(None)
            .rejected(StatusCode::UNAUTHORIZED, "missing Authorization"),
        BadWrite::put("a wrong token", WEB, &web)
            .token(Some("not-the-token"))
            .rejected(StatusCode::UNAUTHORIZED, "invalid API token"),
        BadWrite {
            method: Method::DELETE,
            ..BadWrite::put("a delete without a token", "/api/v1/services/default/echo", "")
        }
        .token(None)
        .rejected(StatusCode::UNAUTHORIZED, "missing Authorization"),
    ];
    for case in cases {
        case.check(&cp.api).await;
    }
    let after = join_all(KINDS.map(|kind| cp.list(kind))).await;
    assert_eq!(before, after, "a rejected write changed the registry");
    for path in [WEB, "/api/v1/routes/default/ghost-route"] {
        let reply = cp.api.send(Method::GET, path, "", None).await.unwrap();
        assert_eq!(
            reply.status,
            StatusCode::NOT_FOUND,
            "{path}: {}",
            reply.text()
        );
    }
    // The same write with the token is accepted: the rejections were about
    // the input, not the server.
    cp.api.put(WEB, &web).await;
}
