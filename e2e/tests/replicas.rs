//! Replicated control planes on etcd, end to end (issue 21): real `etcd`
//! members (a 3-member cluster on loopback ports), real
//! `sane-control-plane` replicas with `--store etcd://…` and one operator
//! CA, real `sane-proxy` sidecars whose `control_plane.address` lists every
//! replica, and echo apps carrying traffic.
//!
//! ```text
//!            etcd m1 ─ m2 ─ m3            (Raft; the store)
//!             ▲    ▲    ▲
//!   replica 1   replica 2   replica 3     (API, xDS, CA; no leader)
//!       ▲ ▲         ▲           ▲
//!    proxies: address = r_i,r_i+1,r_i+2  (fail over in turn)
//! ```
//!
//! etcd comes from `scripts/etcd-test-deps.sh`; without it the tests print
//! SKIPPED (and fail under `CI=true`). Run with `-- --nocapture` to see
//! the figures (convergence, acknowledged vs found, reconnect time).

use futures::future::join_all;
use http::{Method, StatusCode};
use sane_certs::testing::{operator_root, tls_leaf};
use sane_e2e::harness::http::{get, http1_client_via, send, HttpClient};
use sane_e2e::harness::{
    bins, bins_for, echo_service, etcd_or_skip, eventually, proxy_row, xds_bootstrap, ApiClient,
    ControlPlane, EchoApp, EtcdCluster, EtcdTls, Load, Outcome, Proc, Sanectl, Sidecar, Signal,
    OUTBOUND, TEST_API_TOKEN,
};
use sane_xds_proto::{
    AdminConfig, Bootstrap, Direction, IdentityConfig, Listener, MeshResources, Node, Protocol,
    WorkloadPort,
};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Deadline of every wait in this file.
const DEADLINE: Duration = Duration::from_secs(45);

/// etcd, three replicas on it, and clients of each.
struct Replicas {
    dir: tempfile::TempDir,
    etcd: EtcdCluster,
    cps: Vec<ControlPlane>,
    apis: Vec<ApiClient>,
    ca_args: Vec<String>,
}

// === impl Replicas ===

impl Replicas {
    /// Starts a 3-member etcd and `n` replicas; `None` (test skipped) when
    /// etcd cannot be had outside CI.
    async fn start(test: &str, n: usize) -> Option<Replicas> {
        let etcd_bin = etcd_or_skip(test)?;
        let dir = tempfile::tempdir().expect("a temp dir");
        let root = operator_root("Replicas Test Root").expect("an operator root");
        let chain = dir.path().join("ca.pem");
        let key = dir.path().join("ca-key.pem");
        std::fs::write(&chain, &root.cert_pem).expect("writing the CA");
        std::fs::write(&key, &root.key_pem).expect("writing the CA key");
        let etcd = EtcdCluster::start(&etcd_bin, &dir.path().join("etcd"), 3).await;
        let ca_args = vec![
            "--ca-cert-chain".to_string(),
            chain.display().to_string(),
            "--ca-key".to_string(),
            key.display().to_string(),
        ];
        let mut r = Replicas {
            dir,
            etcd,
            cps: Vec::new(),
            apis: Vec::new(),
            ca_args,
        };
        for i in 0..n {
            let cp = r.start_replica(i).await;
            r.apis.push(ApiClient::new(&cp));
            r.cps.push(cp);
        }
        Some(r)
    }

    async fn start_replica(&self, i: usize) -> ControlPlane {
        let store = self.etcd.store_url();
        let mut args: Vec<&str> = vec!["--store", &store, "--debounce-quiet", "20ms"];
        args.extend(self.ca_args.iter().map(String::as_str));
        ControlPlane::start(&self.dir.path().join(format!("replica-{}", i + 1)), &args).await
    }

    /// Every replica's xDS URL, starting with replica `first`.
    fn addresses_from(&self, first: usize) -> String {
        let n = self.cps.len();
        (0..n)
            .map(|k| self.cps[(first + k) % n].xds_url())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Starts proxy `name` fed over xDS, connecting to replica `first`
    /// first, with an outbound listener if `outbound`.
    async fn proxy(&self, name: &str, first: usize, outbound: bool) -> Sidecar {
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
        let mut bootstrap = xds_bootstrap(&self.cps[first], name, listeners);
        if let Some(cp) = bootstrap.control_plane.as_mut() {
            cp.address = self.addresses_from(first);
        }
        Sidecar::start(&bins().proxy, &dir, name, bootstrap).await
    }

    /// The replica name (`<host>/<api addr>`) replica `i` reports.
    fn replica_name_suffix(&self, i: usize) -> String {
        format!("/{}", self.cps[i].api)
    }

    /// Sends a write with the admin token.
    async fn write(
        &self,
        via: usize,
        method: Method,
        path: &str,
        body: &Value,
    ) -> (StatusCode, Value) {
        match self.apis[via]
            .send(method, path, body.to_string(), Some(TEST_API_TOKEN))
            .await
        {
            Ok(reply) => (reply.status, reply.json().unwrap_or(Value::Null)),
            Err(e) => (StatusCode::BAD_GATEWAY, json!({ "error": e })),
        }
    }
}

fn echo_endpoint(app: &EchoApp) -> Value {
    json!({ "service": "echo", "address": "127.0.0.1", "port": app.addrs.http.port() })
}

fn route(timeout: &str) -> Value {
    json!({
        "service": "echo",
        "rules": [ { "destinations": [ { "service": "echo" } ], "timeout": timeout } ]
    })
}

/// Declares service `echo` and `app` as its endpoint, through replica `via`.
async fn declare_echo(r: &Replicas, via: usize, app: &EchoApp) {
    let svc = serde_json::to_value(echo_service("echo")).expect("a service");
    r.apis[via].put("/api/v1/services/default/echo", &svc).await;
    let ep = echo_endpoint(app);
    let key = format!("127.0.0.1:{}", app.addrs.http.port());
    r.apis[via]
        .put(&format!("/api/v1/endpoints/default/echo/{key}"), &ep)
        .await;
}

/// Which echo instance answered `GET http://echo/` through `client`.
async fn answered(client: &HttpClient) -> Result<String, String> {
    let reply = send(client, get("http://echo/")).await?;
    if reply.status != StatusCode::OK {
        return Err(format!("{} {}", reply.status, reply.text()));
    }
    Ok(reply.header("x-echo-name").unwrap_or_default().to_string())
}

/// Every status row of proxy `id` (one per replica that lists it).
fn rows_of<'a>(status: &'a Value, id: &str) -> Vec<&'a Value> {
    let node = sane_e2e::harness::xds_node_id(id);
    status["proxies"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["node"] == node.as_str())
        .collect()
}

/// The proxy's `sane_xds_updates_total` by type and result: every xDS
/// response it received (applied or rejected).
async fn xds_updates(proxy: &Sidecar) -> BTreeMap<String, u64> {
    let text = proxy.metrics().await.expect("the proxy's metrics");
    text.lines()
        .filter_map(|l| l.strip_prefix("sane_xds_updates_total{"))
        .filter_map(|l| {
            let (labels, value) = l.rsplit_once("} ")?;
            Some((labels.to_string(), value.trim().parse().ok()?))
        })
        .collect()
}

/// A request loop through `client` until stopped: every 200 counts as
/// answered, anything else as a failure.
fn steady(client: HttpClient) -> Load {
    Load::start(1, Duration::from_millis(5), move |_, _| {
        let client = client.clone();
        async move {
            match answered(&client).await {
                Ok(_) => Outcome::Ok,
                Err(detail) => Outcome::Failed {
                    class: "not answered".into(),
                    detail,
                },
            }
        }
    })
}

// === tests ===

/// Must-show 1 and 4 (status): 3 etcd members, 3 replicas, 10 proxies
/// spread over them. A route written through replica 1 is ACKed by every
/// proxy, those on replicas 2 and 3 included, as every replica's
/// `GET /api/v1/proxies` and `sanectl status --wait-sync` agree. Every
/// proxy ACKs the same Route version (versions are content hashes: all
/// replicas compute the same ones). Convergence is printed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_written_through_one_replica_reaches_proxies_on_every_replica() {
    let Some(r) = Replicas::start("replicas::route_reaches_every_replica", 3).await else {
        return;
    };
    let app = EchoApp::start_with(&bins().echo, "echo-1", "echo").await;
    declare_echo(&r, 0, &app).await;
    r.apis[0]
        .put("/api/v1/routes/default/echo-route", &route("5s"))
        .await;
    let names: Vec<String> = (0..10).map(|i| format!("p{i}")).collect();
    let proxies = join_all(
        names
            .iter()
            .enumerate()
            .map(|(i, n)| r.proxy(n, i % 3, i == 0)),
    )
    .await;
    let ids: Vec<&str> = names.iter().map(String::as_str).collect();
    for api in &r.apis {
        api.wait_in_sync(DEADLINE, &ids).await;
    }
    // Every replica lists all ten, each on the replica it dialled first.
    for api in &r.apis {
        let status = api.proxies().await.unwrap();
        for (i, id) in ids.iter().enumerate() {
            let row = proxy_row(&status, id).unwrap_or_else(|| panic!("{id} missing: {status}"));
            let replica = row["replica"].as_str().unwrap_or_default();
            assert!(
                replica.ends_with(&r.replica_name_suffix(i % 3)),
                "{id} should be on replica {}: {row}",
                i % 3 + 1
            );
        }
        assert_eq!(
            status["replicas"].as_array().map(Vec::len),
            Some(3),
            "{status}"
        );
    }
    // One proxy, asked of every replica: the same row, naming its replica;
    // what it was sent is kept where it is connected, and the others say
    // where.
    let p0 = sane_e2e::harness::xds_node_id("p0");
    for api in &r.apis {
        let row = api.get(&format!("/api/v1/proxies/{p0}")).await.unwrap();
        assert_eq!(row["node"], p0.as_str(), "{row}");
        assert_eq!(row["connected"], true, "{row}");
        let on = row["replica"].as_str().unwrap_or_default();
        assert!(on.ends_with(&r.replica_name_suffix(0)), "{row}");
    }
    r.apis[0]
        .get(&format!("/api/v1/proxies/{p0}/config"))
        .await
        .unwrap();
    let elsewhere = r.apis[1]
        .send(
            Method::GET,
            &format!("/api/v1/proxies/{p0}/config"),
            "",
            None,
        )
        .await
        .unwrap();
    assert_eq!(elsewhere.status, StatusCode::NOT_FOUND);
    assert!(
        elsewhere.text().contains(&r.replica_name_suffix(0)),
        "{}",
        elsewhere.text()
    );
    let client = http1_client_via(proxies[0].listener(OUTBOUND));
    eventually(DEADLINE, || async { answered(&client).await.map(|_| ()) }).await;

    // The change, through replica 1 only.
    let before = r.apis[1].proxies().await.unwrap();
    let old: BTreeMap<&str, String> = ids
        .iter()
        .map(|id| {
            let row = proxy_row(&before, id).unwrap();
            (
                *id,
                row["types"]["Route"]["version_acked"]
                    .as_str()
                    .unwrap_or("")
                    .to_string(),
            )
        })
        .collect();
    let started = Instant::now();
    let put = r.apis[0]
        .put("/api/v1/routes/default/echo-route", &route("7s"))
        .await;
    let revision = put["revision"].as_u64().unwrap();
    let acked = eventually(DEADLINE, || async {
        // Asked of replica 2: it sees the rows of all three.
        let status = r.apis[1].proxies().await?;
        let mut versions = BTreeSet::new();
        for id in &ids {
            let row = proxy_row(&status, id).ok_or_else(|| format!("{id} not listed"))?;
            let v = row["types"]["Route"]["version_acked"]
                .as_str()
                .unwrap_or("");
            if v == old[id] || row["in_sync"] != true || row["revision"].as_u64() < Some(revision) {
                return Err(format!("{id} has not ACKed revision {revision}: {row}"));
            }
            versions.insert(v.to_string());
        }
        Ok(versions)
    })
    .await;
    let converged = started.elapsed();
    println!(
        "route written through replica 1, ACKed by 10 proxies over 3 replicas in {} ms",
        converged.as_millis()
    );
    assert_eq!(
        acked.len(),
        1,
        "every replica sent one Route version: {acked:?}"
    );
    // `sanectl status --wait-sync` agrees on every replica, and its table
    // says which replica each proxy is connected to (the REPLICA column).
    for cp in &r.cps {
        let run = Sanectl::new(cp).ok(&["status", "--wait-sync", "20s"]).await;
        let header: Vec<&str> = run
            .stdout
            .lines()
            .next()
            .unwrap_or("")
            .split_whitespace()
            .collect();
        assert_eq!(header.get(1), Some(&"REPLICA"), "{run}");
        for (i, id) in ids.iter().enumerate() {
            let node = sane_e2e::harness::xds_node_id(id);
            let row: Vec<&str> = run
                .stdout
                .lines()
                .map(|l| l.split_whitespace().collect::<Vec<_>>())
                .find(|cols| cols.first() == Some(&node.as_str()))
                .unwrap_or_else(|| panic!("{id} not in the table: {run}"));
            assert!(
                row[1].ends_with(&r.replica_name_suffix(i % 3)),
                "{id} should be shown on replica {}: {row:?}\n{run}",
                i % 3 + 1
            );
        }
    }
    drop(proxies);
}

/// Must-show 2: 200 API writes spread over the replicas while the etcd
/// leader is SIGKILLed part-way: every write that got a 2xx is present,
/// with its content, in what every replica serves; writes continue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_killing_an_etcd_member() {
    let Some(mut r) = Replicas::start("replicas::writes_survive_etcd_kill", 3).await else {
        return;
    };
    let mut acknowledged: BTreeMap<String, u64> = BTreeMap::new();
    let mut refused = Vec::new();
    let mut acked_after_kill = 0;
    let mut killed = None;
    for i in 0..200u64 {
        if i == 60 {
            let leader = r.etcd.leader().await;
            r.etcd.kill(leader).await;
            killed = Some(leader);
        }
        let name = format!("s{i}");
        let body = json!({ "ports": [ { "port": 1000 + i } ] });
        let via = (i % 3) as usize;
        let (status, reply) = r
            .write(
                via,
                Method::PUT,
                &format!("/api/v1/services/default/{name}"),
                &body,
            )
            .await;
        if status.is_success() {
            acknowledged.insert(name, 1000 + i);
            if killed.is_some() {
                acked_after_kill += 1;
            }
        } else {
            refused.push(format!("{name} via replica {}: {status} {reply}", via + 1));
        }
    }
    let killed = killed.unwrap();
    let mut found_everywhere = usize::MAX;
    for (k, api) in r.apis.iter().enumerate() {
        let found = eventually(DEADLINE, || async {
            let list = api.get("/api/v1/services").await?;
            let items = list["items"].as_array().cloned().unwrap_or_default();
            let stored: BTreeMap<String, u64> = items
                .iter()
                .map(|s| {
                    let port = s["ports"][0]["port"].as_u64().unwrap_or(0);
                    (s["name"].as_str().unwrap_or("").to_string(), port)
                })
                .collect();
            let found = acknowledged
                .iter()
                .filter(|(n, p)| stored.get(*n) == Some(p))
                .count();
            (found == acknowledged.len())
                .then_some(found)
                .ok_or_else(|| {
                    format!("replica {}: {found} of {} found", k + 1, acknowledged.len())
                })
        })
        .await;
        found_everywhere = found_everywhere.min(found);
    }
    println!(
        "200 writes, etcd member m{} (the leader) SIGKILLed after 60: {} acknowledged \
         ({acked_after_kill} after the kill), {found_everywhere} found with their content on \
         every replica; refused: {refused:?}",
        killed + 1,
        acknowledged.len(),
    );
    assert_eq!(found_everywhere, acknowledged.len());
    assert!(
        acked_after_kill > 100,
        "writes continue after the kill: {refused:?}"
    );
    // Every refusal named its cause.
    for line in &refused {
        assert!(line.contains("503") && line.contains("etcd"), "{line}");
    }
}

/// Must-show 3: a replica is SIGKILLed under a steady request loop. Its
/// proxies reconnect to another replica (time printed), no request fails,
/// and the status API of the survivors lists every proxy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxies_fail_over_when_their_replica_is_killed() {
    let Some(r) = Replicas::start("replicas::proxies_fail_over", 3).await else {
        return;
    };
    let app = EchoApp::start_with(&bins().echo, "echo-1", "echo").await;
    declare_echo(&r, 1, &app).await;
    let names = ["f0", "f1", "f2", "f3"];
    let proxies = join_all(
        names
            .iter()
            .enumerate()
            .map(|(i, n)| r.proxy(n, if i < 3 { 0 } else { 1 }, i == 0)),
    )
    .await;
    r.apis[1].wait_in_sync(DEADLINE, &names).await;
    let client = http1_client_via(proxies[0].listener(OUTBOUND));
    eventually(DEADLINE, || async { answered(&client).await.map(|_| ()) }).await;
    let steady = steady(client);
    steady.wait_for_more_ok(50, DEADLINE).await;
    // What each proxy of replica 1 received so far (its first config).
    let mut updates_before = Vec::new();
    for p in &proxies[..3] {
        updates_before.push(xds_updates(p).await);
    }

    r.cps[0].proc.signal(Signal::SIGKILL);
    let killed_at = Instant::now();
    let killed = r.replica_name_suffix(0);
    // Each proxy of replica 1 is back on replica 2 or 3.
    let back_at: Mutex<BTreeMap<&str, Duration>> = Mutex::new(BTreeMap::new());
    eventually(DEADLINE, || async {
        let status = r.apis[1].proxies().await?;
        let mut back_at = back_at.lock().unwrap();
        for id in &names[..3] {
            // The dead replica's rows stay listed until its status lease
            // ends: look for a row of a live one.
            let back = rows_of(&status, id).into_iter().any(|row| {
                let on = row["replica"].as_str().unwrap_or_default();
                row["connected"] == true && !on.ends_with(&killed)
            });
            if back {
                back_at.entry(*id).or_insert_with(|| killed_at.elapsed());
            }
        }
        (back_at.len() == 3)
            .then_some(())
            .ok_or_else(|| format!("reconnected so far: {back_at:?}"))
    })
    .await;
    let slowest = back_at
        .lock()
        .unwrap()
        .values()
        .copied()
        .max()
        .unwrap_or_default();
    println!(
        "replica 1 SIGKILLed: its 3 proxies reconnected to another replica within {} ms \
         (as seen in the survivors' status, polled)",
        slowest.as_millis()
    );
    steady.wait_for_more_ok(50, DEADLINE).await;
    let report = steady.stop().await;
    println!(
        "steady loop: {} requests answered, {} failed",
        report.ok,
        report.failures()
    );
    assert_eq!(
        report.failures(),
        0,
        "requests failed: {:?}",
        report.examples
    );
    // Both survivors list every proxy, connected and in sync.
    for api in &r.apis[1..] {
        api.wait_in_sync(DEADLINE, &names).await;
    }
    // They resumed with the versions they held: the replica they moved to
    // sent them nothing (versions are the same on every replica), and
    // counts them in sync all the same.
    for (p, before) in proxies[..3].iter().zip(&updates_before) {
        let after = xds_updates(p).await;
        assert_eq!(&after, before, "{}: re-sent what it held", p.name);
    }
    // The survivors say why: each type they did not send, counted.
    let mut resumed = 0.0;
    for api in &r.apis[1..] {
        let reply = api.send(Method::GET, "/metrics", "", None).await.unwrap();
        resumed += reply
            .text()
            .lines()
            .filter(|l| l.starts_with("sane_cp_xds_resumed_total{"))
            .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
            .sum::<f64>();
    }
    println!(
        "the 3 moved proxies resumed on the survivors with no xDS response \
         (updates per type unchanged: {:?}); survivors' sane_cp_xds_resumed_total: {resumed}",
        updates_before[0]
    );
    assert!(resumed >= 18.0, "3 proxies × 6 types resumed: {resumed}");
    // The next change reaches them: exactly one Route response each.
    r.apis[2]
        .put("/api/v1/routes/default/echo-route", &route("9s"))
        .await;
    for (p, before) in proxies[..3].iter().zip(&updates_before) {
        let route_acks = |m: &BTreeMap<String, u64>| {
            m.iter()
                .filter(|(l, _)| l.contains("type=\"Route\"") && l.contains("result=\"ack\""))
                .map(|(_, v)| *v)
                .sum::<u64>()
        };
        let want = route_acks(before) + 1;
        eventually(DEADLINE, || async {
            let got = route_acks(&xds_updates(p).await);
            (got == want)
                .then_some(())
                .ok_or_else(|| format!("{}: {got} Route ACKs, want {want}", p.name))
        })
        .await;
    }
    for api in &r.apis[1..] {
        api.wait_in_sync(DEADLINE, &names).await;
    }
    let report = {
        let client = http1_client_via(proxies[0].listener(OUTBOUND));
        answered(&client).await
    };
    assert!(report.is_ok(), "the config keeps serving: {report:?}");
    drop(proxies);
}

/// Must-show 4: with 2 of 3 etcd members down, writes get 503 naming the
/// cause, `/ready` says writes are not ready, proxies keep serving, and a
/// proxy (re)connecting gets the last config. With the members back,
/// writes resume without any operator action.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_the_etcd_quorum_refuses_writes_and_keeps_serving() {
    let Some(mut r) = Replicas::start("replicas::quorum_loss", 2).await else {
        return;
    };
    let app = EchoApp::start_with(&bins().echo, "echo-1", "echo").await;
    declare_echo(&r, 0, &app).await;
    let proxy = r.proxy("q0", 0, true).await;
    let client = http1_client_via(proxy.listener(OUTBOUND));
    eventually(DEADLINE, || async { answered(&client).await.map(|_| ()) }).await;

    r.etcd.kill(0).await;
    r.etcd.kill(1).await;
    let (status, reply) = r
        .write(
            1,
            Method::PUT,
            "/api/v1/services/default/late",
            &json!({ "ports": [ { "port": 81 } ] }),
        )
        .await;
    println!("write with 2 of 3 etcd members down: {status} {reply}");
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{reply}");
    let error = reply["error"].as_str().unwrap_or_default();
    assert!(
        error.contains(&r.etcd.store_url()),
        "names the store: {error}"
    );
    let ready = r.apis[1].get("/ready").await.unwrap();
    assert_eq!(ready["writes"]["ready"], false, "{ready}");
    // Serving goes on: traffic, and a proxy connecting now gets the config.
    for _ in 0..20 {
        answered(&client).await.unwrap();
    }
    let late = r.proxy("q1", 1, true).await;
    let late_client = http1_client_via(late.listener(OUTBOUND));
    eventually(DEADLINE, || async {
        answered(&late_client).await.map(|_| ())
    })
    .await;

    r.etcd.restart(0).await;
    r.etcd.restart(1).await;
    let recovered = Instant::now();
    eventually(DEADLINE, || async {
        let (status, reply) = r
            .write(
                1,
                Method::PUT,
                "/api/v1/services/default/late",
                &json!({ "ports": [ { "port": 81 } ] }),
            )
            .await;
        status
            .is_success()
            .then_some(())
            .ok_or_else(|| format!("{status} {reply}"))
    })
    .await;
    println!(
        "etcd members back: writes accepted again {} ms later, no operator action",
        recovered.elapsed().as_millis()
    );
    let ready = r.apis[1].get("/ready").await.unwrap();
    assert_eq!(ready["writes"]["ready"], true, "{ready}");
    // And the write reaches the other replica.
    eventually(DEADLINE, || async {
        r.apis[0]
            .get("/api/v1/services/default/late")
            .await
            .map(|_| ())
    })
    .await;
}

/// Must-show 5: an endpoint registered with an 8 s lease through replica A
/// leaves the proxies' config after A is SIGKILLed, within its TTL plus one
/// debounce (printed); its twin, registered at the same moment but renewed
/// through replica B, stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_lease_expires_after_its_replica_dies() {
    let Some(r) = Replicas::start("replicas::lease_outlives_replica", 2).await else {
        return;
    };
    let svc = serde_json::to_value(echo_service("echo")).unwrap();
    r.apis[1].put("/api/v1/services/default/echo", &svc).await;
    let registered_at = Instant::now();
    for addr in ["10.0.0.1", "10.0.0.2"] {
        let ep = json!({ "service": "echo", "address": addr, "port": 80 });
        r.apis[0]
            .put(
                &format!("/api/v1/endpoints/default/echo/{addr}:80?ttl=8s"),
                &ep,
            )
            .await;
    }
    let proxy = r.proxy("l0", 1, true).await;
    let addresses = |dump: &Value| -> Vec<String> {
        let text = dump.to_string();
        ["10.0.0.1", "10.0.0.2"]
            .into_iter()
            .filter(|a| text.contains(a))
            .map(str::to_string)
            .collect()
    };
    eventually(DEADLINE, || async {
        let dump = proxy.config_dump().await?;
        (addresses(&dump).len() == 2)
            .then_some(())
            .ok_or_else(|| format!("endpoints not in the config yet: {:?}", addresses(&dump)))
    })
    .await;
    // 10.0.0.2 is renewed through replica B every second.
    let renew = tokio::spawn({
        let api = r.apis[1].clone();
        async move {
            loop {
                let _ = api
                    .post("/api/v1/endpoints/default/echo/10.0.0.2:80/heartbeat")
                    .await;
                tokio::time::sleep(Duration::from_secs(1)).await; // allow-sleep: the heartbeat's period, not a wait for readiness
            }
        }
    });
    r.cps[0].proc.signal(Signal::SIGKILL);
    let killed_at = Instant::now();
    eventually(DEADLINE, || async {
        let dump = proxy.config_dump().await?;
        (addresses(&dump) == ["10.0.0.2"])
            .then_some(())
            .ok_or_else(|| format!("endpoints in the config: {:?}", addresses(&dump)))
    })
    .await;
    println!(
        "endpoint registered through replica A with an 8 s lease left the proxy's config {} ms \
         after its registration ({} ms after A was SIGKILLed; TTL 8 s + debounce 20 ms); the \
         one renewed through replica B stays",
        registered_at.elapsed().as_millis(),
        killed_at.elapsed().as_millis()
    );
    renew.abort();
}

/// Must-show 6: conflicting writes to one route through two replicas at
/// once, each naming the version it read: exactly one wins, the other gets
/// 409, and the stored route is the winner's, whole. Ten rounds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conflicting_writes_through_two_replicas_one_wins_the_other_gets_409() {
    let Some(r) = Replicas::start("replicas::conflicting_writes", 3).await else {
        return;
    };
    let svc = serde_json::to_value(echo_service("echo")).unwrap();
    r.apis[0].put("/api/v1/services/default/echo", &svc).await;
    r.apis[0]
        .put("/api/v1/routes/default/contested", &route("1s"))
        .await;
    for round in 0..10 {
        let current = eventually(DEADLINE, || async {
            let reply = r.apis[0]
                .send(Method::GET, "/api/v1/routes/default/contested", "", None)
                .await?;
            reply
                .header("etag")
                .map(|e| e.trim_matches('"').to_string())
                .ok_or_else(|| "no ETag".to_string())
        })
        .await;
        let a = route(&format!("{}s", 10 + round));
        let b = json!({
            "service": "echo",
            "rules": [
                { "matches": [ { "headers": [ { "name": "x-round", "value": round.to_string() } ] } ],
                  "destinations": [ { "service": "echo" } ], "timeout": "9s" },
                { "destinations": [ { "service": "echo" } ] }
            ]
        });
        let path = format!("/api/v1/routes/default/contested?resource_version={current}");
        let (ra, rb) = tokio::join!(
            r.write(1, Method::PUT, &path, &a),
            r.write(2, Method::PUT, &path, &b)
        );
        let statuses = [ra.0, rb.0];
        let wins = statuses.iter().filter(|s| s.is_success()).count();
        let conflicts = statuses
            .iter()
            .filter(|s| **s == StatusCode::CONFLICT)
            .count();
        assert_eq!((wins, conflicts), (1, 1), "round {round}: {ra:?} {rb:?}");
        let loser = if ra.0.is_success() { &rb.1 } else { &ra.1 };
        assert!(
            loser["error"]
                .as_str()
                .unwrap_or_default()
                .contains("resource version"),
            "{loser}"
        );
        let winner = if ra.0.is_success() { &a } else { &b };
        let want_rules = winner["rules"].as_array().unwrap().len();
        let want_timeout = winner["rules"][0]["timeout"].as_str().unwrap();
        eventually(DEADLINE, || async {
            let stored = r.apis[0].get("/api/v1/routes/default/contested").await?;
            let rules = stored["rules"].as_array().map_or(0, Vec::len);
            let timeout = stored["rules"][0]["timeout"].as_str().unwrap_or_default();
            (rules == want_rules && timeout == want_timeout)
                .then_some(())
                .ok_or_else(|| format!("stored {stored}, want the winner {winner}"))
        })
        .await;
    }
    println!("10 rounds of two conflicting writes: each time one 2xx and one 409, the winner stored whole");
}

fn mtls_identity(cp: &ControlPlane, token: &Path, sa: &str) -> IdentityConfig {
    IdentityConfig {
        service_account: sa.into(),
        ca_address: cp.xds_url(),
        root_cert_file: cp.root_cert_file(),
        token_file: token.display().to_string(),
        ..Default::default()
    }
}

/// Must-show 7: the server sidecar's certificate comes from replica 2, the
/// client sidecar's from replica 1; mutual TLS between them works and the
/// app sees the client's identity.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_from_different_replicas_are_trusted_by_each_other() {
    let Some(r) = Replicas::start("replicas::one_ca", 2).await else {
        return;
    };
    let dir = r.dir.path();
    let app = EchoApp::start_with(&bins().echo, "echo-1", "echo").await;
    // Tokens issued by one replica are accepted by the other.
    let server_token = r.cps[0].issue_token(dir, "default", "echo").await;
    let client_token = r.cps[1].issue_token(dir, "default", "client").await;
    let server = Sidecar::start(
        &bins().proxy,
        dir,
        "echo-1",
        Bootstrap {
            node: Node {
                id: "echo-1".into(),
                workload: "echo-1".into(),
                ..Default::default()
            },
            admin: AdminConfig {
                address: "127.0.0.1:0".into(),
            },
            identity: Some(mtls_identity(&r.cps[1], &server_token, "echo")),
            resources: MeshResources {
                listeners: vec![Listener {
                    name: "inbound".into(),
                    direction: Direction::Inbound.into(),
                    address: "127.0.0.1:0".into(),
                    workload_ports: vec![WorkloadPort {
                        port: app.addrs.http.port().into(),
                        protocol: Protocol::Http.into(),
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
                ..Default::default()
            },
            ..Default::default()
        },
    )
    .await;
    server.wait_ready(DEADLINE).await;
    let mut endpoint = app.endpoint(Some(server.listener("inbound").port()));
    endpoint.identity = "spiffe://cluster.local/ns/default/sa/echo".into();
    let client = Sidecar::start(
        &bins().proxy,
        dir,
        "client",
        Bootstrap {
            node: Node {
                id: "client".into(),
                workload: "client".into(),
                ..Default::default()
            },
            admin: AdminConfig {
                address: "127.0.0.1:0".into(),
            },
            identity: Some(mtls_identity(&r.cps[0], &client_token, "client")),
            resources: MeshResources {
                listeners: vec![Listener {
                    name: "outbound".into(),
                    address: "127.0.0.1:0".into(),
                    ..Default::default()
                }],
                services: vec![echo_service("echo")],
                endpoints: vec![endpoint],
                ..Default::default()
            },
            ..Default::default()
        },
    )
    .await;
    client.wait_ready(DEADLINE).await;
    let reply = send(
        &http1_client_via(client.listener("outbound")),
        get("http://echo/"),
    )
    .await
    .unwrap();
    assert_eq!(reply.status, 200, "{}", reply.text());
    let seen = reply.json().unwrap();
    assert_eq!(
        seen["headers"]["x-sane-peer-identity"], "spiffe://cluster.local/ns/default/sa/client",
        "{seen}"
    );
    println!("mTLS between a sidecar certified by replica 1 and one certified by replica 2: 200");
}

/// Bad input: a replica started while its etcd is unreachable says so,
/// naming the address, retries, and comes up once etcd is there; a store
/// holding an unknown format version is refused with a message and left
/// untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_etcd_is_retried_and_an_unknown_format_is_refused() {
    let Some(mut r) = Replicas::start("replicas::bad_store", 0).await else {
        return;
    };
    let bin = bins_for(&["sane-control-plane"]).join("sane-control-plane");
    let data = r.dir.path().join("waiting");
    let data_arg = data.display().to_string();
    let store = r.etcd.store_url();
    let mut args = vec![
        "--store",
        store.as_str(),
        "--data-dir",
        data_arg.as_str(),
        "--xds-addr",
        "127.0.0.1:0",
        "--api-addr",
        "127.0.0.1:0",
        "--api-token",
        TEST_API_TOKEN,
    ];
    let ca: Vec<String> = r.ca_args.clone();
    args.extend(ca.iter().map(String::as_str));
    // All three members down: the replica waits, naming the store.
    for i in 0..3 {
        r.etcd.kill(i).await;
    }
    let waiting = Proc::spawn("control-plane-waiting", &bin, &args, &[]);
    eventually(DEADLINE, || async {
        let err = waiting.stderr();
        (err.contains("cannot reach etcd") && err.contains(&r.etcd.client_addr(0)))
            .then_some(())
            .ok_or_else(|| format!("no retry message naming the store yet:\n{err}"))
    })
    .await;
    assert!(
        waiting.try_exit_status().is_none(),
        "it waits rather than exits"
    );
    r.etcd.restart_all(&[0, 1, 2]).await;
    waiting.wait_listening(&["xds", "api"], DEADLINE).await;
    drop(waiting);

    // Another format in the meta key: refused, and the key is untouched.
    r.etcd
        .etcdctl(&["put", "/sane-mesh/meta", r#"{"format": 99}"#])
        .unwrap();
    let refused = Proc::spawn("control-plane-refused", &bin, &args, &[]);
    let status = refused.wait_exit(DEADLINE).await.expect("it exits");
    assert!(!status.success());
    let err = refused.stderr();
    assert!(
        err.contains("/sane-mesh/meta") && err.contains("format version 99"),
        "{err}"
    );
    let meta = r
        .etcd
        .etcdctl(&["get", "/sane-mesh/meta", "--print-value-only"])
        .unwrap();
    assert_eq!(meta.trim(), r#"{"format": 99}"#);
}

/// TLS to etcd: a member serving clients over TLS and requiring client
/// certificates (`--client-cert-auth`), with certificates this test
/// generates. Two replicas given `--etcd-ca-file`, `--etcd-cert-file` and
/// `--etcd-key-file` share writes through it. A replica that does not trust
/// the member's certificate, and one without a client certificate, say why
/// naming the member's address, keep retrying, and never come up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_reach_etcd_over_tls_with_client_certificates() {
    let Some(etcd_bin) = etcd_or_skip("replicas::etcd_over_tls") else {
        return;
    };
    let dir = tempfile::tempdir().expect("a temp dir");
    let write = |name: &str, pem: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, pem).expect("writing PEM");
        path
    };
    let etcd_root = operator_root("etcd Test Root").expect("an etcd root");
    let (server, server_key) = tls_leaf(&etcd_root, &["127.0.0.1", "localhost"]).unwrap();
    let (client, client_key) = tls_leaf(&etcd_root, &["sane-control-plane"]).unwrap();
    let tls = EtcdTls {
        ca: write("etcd-ca.pem", &etcd_root.cert_pem),
        cert: write("etcd-server.pem", &server),
        key: write("etcd-server-key.pem", &server_key),
    };
    let client_cert = write("etcd-client.pem", &client);
    let client_key = write("etcd-client-key.pem", &client_key);
    let other_root = operator_root("Not etcd's Root").expect("another root");
    let wrong_ca = write("wrong-ca.pem", &other_root.cert_pem);
    let mesh_root = operator_root("Replicas Test Root").expect("a mesh root");
    let mesh_ca = write("mesh-ca.pem", &mesh_root.cert_pem);
    let mesh_key = write("mesh-ca-key.pem", &mesh_root.key_pem);
    let etcd = EtcdCluster::start_tls(&etcd_bin, &dir.path().join("etcd"), 1, tls.clone()).await;

    let store = etcd.store_url();
    let [ca, cert, key, mesh_ca, mesh_key] =
        [&tls.ca, &client_cert, &client_key, &mesh_ca, &mesh_key].map(|p| p.display().to_string());
    let args = |etcd_ca: &str, with_client_cert: bool| {
        let mut a = vec![
            "--store".to_string(),
            store.clone(),
            "--etcd-ca-file".into(),
            etcd_ca.to_string(),
            "--ca-cert-chain".into(),
            mesh_ca.clone(),
            "--ca-key".into(),
            mesh_key.clone(),
        ];
        if with_client_cert {
            a.extend([
                "--etcd-cert-file".into(),
                cert.clone(),
                "--etcd-key-file".into(),
                key.clone(),
            ]);
        }
        a
    };
    let good = args(&ca, true);
    let good: Vec<&str> = good.iter().map(String::as_str).collect();
    let r1 = ControlPlane::start(&dir.path().join("r1"), &good).await;
    let r2 = ControlPlane::start(&dir.path().join("r2"), &good).await;
    let (a1, a2) = (ApiClient::new(&r1), ApiClient::new(&r2));
    let svc = json!({ "ports": [ { "port": 8443 } ] });
    a1.put("/api/v1/services/default/over-tls", &svc).await;
    // Replica 2 has it from its watch over TLS.
    eventually(DEADLINE, || async {
        let got = a2.get("/api/v1/services/default/over-tls").await?;
        (got["ports"][0]["port"] == 8443)
            .then_some(())
            .ok_or_else(|| format!("replica 2 serves {got}"))
    })
    .await;
    println!("two replicas share a write through etcd over TLS with client certificates");

    let member = etcd.client_addr(0);
    let bin = bins_for(&["sane-control-plane"]).join("sane-control-plane");
    for (case, etcd_ca, with_client_cert, cause) in [
        (
            "untrusted member certificate",
            wrong_ca.display().to_string(),
            true,
            "certificate",
        ),
        ("no client certificate", ca.clone(), false, "alert"),
    ] {
        let data = dir
            .path()
            .join(case.replace(' ', "-"))
            .display()
            .to_string();
        let mut a = vec![
            "--data-dir".to_string(),
            data,
            "--xds-addr".into(),
            "127.0.0.1:0".into(),
            "--api-addr".into(),
            "127.0.0.1:0".into(),
            "--api-token".into(),
            TEST_API_TOKEN.into(),
        ];
        a.extend(args(&etcd_ca, with_client_cert));
        let refused = Proc::spawn(&format!("control-plane-{case}"), &bin, &a, &[]);
        let line = eventually(DEADLINE, || async {
            let err = refused.stderr();
            err.lines()
                .find(|l| {
                    l.contains("cannot reach etcd") && l.contains(&member) && l.contains(cause)
                })
                .map(str::to_string)
                .ok_or_else(|| {
                    format!("{case}: no message naming {member} and the cause yet:\n{err}")
                })
        })
        .await;
        println!("{case}: {line}");
        assert!(
            refused.try_exit_status().is_none(),
            "{case}: it keeps retrying"
        );
        assert!(
            !refused.stdout().contains("listening name=api"),
            "{case}: it must not serve without its store"
        );
    }
}
