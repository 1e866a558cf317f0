//! Config files that cost too much to load: a reload of a YAML alias bomb,
//! a 50 000-level nesting or an oversized `node.workload` is rejected
//! quickly, with an error naming the limit, while the previous config keeps
//! serving; and a reload of a large valid config runs off the data path, so
//! requests keep flowing on a one-worker sidecar (`--workers 1`: the client
//! sidecar of every harness mesh) while it compiles.

use http::StatusCode;
use sane_e2e::harness::http::{get, send, HttpClient};
use sane_e2e::harness::proc_stats::sample;
use sane_e2e::harness::{eventually, metric_value, within, Sidecar, TwoHop};
use sane_xds_proto::{Endpoint, Protocol, Service, ServicePort};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;

/// Bound of each test, once its mesh is up.
const TEST_DEADLINE: Duration = Duration::from_secs(120);
/// How long a reload may take to be rejected or applied. Generous: a debug
/// build on a shared 2-core machine; the figures are printed.
const RELOAD_DEADLINE: Duration = Duration::from_secs(60);
/// Above this RSS after the hostile reloads, the sidecar built what it was
/// asked to (the alias bomb alone was 3.8 GB resident before the limits).
const MAX_RSS_KB: u64 = 256 * 1024;

/// `GET http://echo/` one after the other until stopped.
struct RequestLoop {
    report: Arc<Mutex<LoopReport>>,
    stop: Arc<AtomicBool>,
    task: JoinHandle<()>,
}

#[derive(Clone, Debug, Default)]
struct LoopReport {
    ok: u64,
    failures: Vec<String>,
    max_latency: Duration,
}

// === impl RequestLoop ===

impl RequestLoop {
    fn start(client: HttpClient) -> Self {
        let report = Arc::new(Mutex::new(LoopReport::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn({
            let (report, stop) = (report.clone(), stop.clone());
            async move {
                while !stop.load(Ordering::Relaxed) {
                    let start = Instant::now();
                    let result = send(&client, get(&TwoHop::url("/"))).await;
                    let took = start.elapsed();
                    let mut report = report.lock().unwrap();
                    report.max_latency = report.max_latency.max(took);
                    match result {
                        Ok(r) if r.status == StatusCode::OK => report.ok += 1,
                        Ok(r) => report.failures.push(format!("{}: {}", r.status, r.text())),
                        Err(e) => report.failures.push(e),
                    }
                }
            }
        });
        Self { report, stop, task }
    }

    fn ok(&self) -> u64 {
        self.report.lock().unwrap().ok
    }

    /// Waits until `n` more requests succeeded than when called.
    async fn more(&self, n: u64) {
        let target = self.ok() + n;
        eventually(RELOAD_DEADLINE, || async {
            let report = self.report.lock().unwrap();
            match report.failures.first() {
                Some(f) => panic!("a request failed: {f}"),
                None if report.ok >= target => Ok(()),
                None => Err(format!("{} of {target} requests done", report.ok)),
            }
        })
        .await
    }

    async fn stop(self) -> LoopReport {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.expect("the request loop panicked");
        let report = self.report.lock().unwrap();
        report.clone()
    }
}

/// Writes `text` over the sidecar's file, sends SIGHUP and waits until
/// `/config_dump` satisfies `done`; returns how long that took. (The proxy
/// also notices the changed file by itself, so a reload count could be
/// bumped by the previous file: the test waits for the state it expects.)
async fn reload_until(
    sidecar: &Sidecar,
    text: &str,
    done: impl Fn(&serde_json::Value) -> Result<(), String>,
) -> Duration {
    let start = Instant::now();
    sidecar.reload_text(text);
    eventually(RELOAD_DEADLINE, || async {
        done(&sidecar.config_dump().await?)
    })
    .await;
    start.elapsed()
}

/// The `sane_config_version` gauge.
async fn config_version(sidecar: &Sidecar) -> Result<f64, String> {
    let text = sidecar.metrics().await?;
    metric_value(&text, "sane_config_version", &[]).ok_or_else(|| "no sane_config_version".into())
}

fn version(dump: &serde_json::Value) -> u64 {
    dump["version"]
        .as_u64()
        .expect("/config_dump has a version")
}

fn last_error(dump: &serde_json::Value) -> String {
    dump["last_reload_error"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

fn rss_kb(sidecar: &Sidecar) -> u64 {
    sample(sidecar.proc.pid(), Duration::ZERO)
        .expect("reading the sidecar's /proc")
        .rss_kb
}

/// ~0.8 MB: a 400 KB string anchored once and aliased 20 000 times (8 GB
/// once expanded), in a field that takes a list of strings.
fn alias_bomb(good: &str) -> String {
    let mut text = format!(
        "{good}\ncontrol_plane:\n  address: &a http://{}\n  services: [",
        "a".repeat(400_000)
    );
    for i in 0..20_000 {
        text.push_str(if i == 0 { "*a" } else { ",*a" });
    }
    text.push_str("]\n");
    text
}

#[tokio::test]
async fn hostile_config_reloads_are_rejected_and_the_last_good_config_keeps_serving() {
    let mesh = TwoHop::start().await;
    within(TEST_DEADLINE, async {
        let client = mesh.client();
        let good = serde_yaml::to_string(&client.bootstrap).unwrap();
        let served = version(&client.config_dump().await.unwrap());

        // Text edits, not serde_yaml: serializing 100 MB takes minutes in
        // a debug build.
        let workload = |n: usize| {
            let line = good
                .lines()
                .find(|l| l.trim_start().starts_with("workload:"))
                .expect("the config names its workload");
            let indent = &line[..line.len() - line.trim_start().len()];
            good.replacen(line, &format!("{indent}workload: {}", "w".repeat(n)), 1)
        };
        let cases = [
            (
                "alias bomb",
                alias_bomb(&good),
                "aliases repeat more than the maximum of 16777216 bytes",
            ),
            (
                "50 000-level nesting",
                format!(
                    "{good}\nextra: {}{}\n",
                    "[".repeat(50_000),
                    "]".repeat(50_000)
                ),
                "nesting is deeper than the maximum of 64 levels",
            ),
            (
                "100 MB node.workload (file size)",
                workload(100 * 1024 * 1024),
                "bytes is above the maximum of 16777216 bytes",
            ),
            (
                "1 MB node.workload (validation)",
                workload(1024 * 1024),
                "node.workload: 1048576 bytes is above the maximum of 253",
            ),
        ];
        // Started once the files are built: this test's runtime has one
        // thread, and building them would hold up the loop, not the proxy.
        let requests = RequestLoop::start(mesh.http1());
        requests.more(5).await;
        for (name, text, want) in cases {
            let took = reload_until(client, &text, |dump| match last_error(dump) {
                e if e.contains(want) => Ok(()),
                e => Err(format!("last reload error: {e:?}")),
            })
            .await;
            let dump = client.config_dump().await.unwrap();
            let reason = last_error(&dump);
            let rss = rss_kb(client);
            println!(
                "{name} ({} bytes): rejected in {took:?}, sidecar RSS {} MiB: {reason}",
                text.len(),
                rss / 1024
            );
            assert!(reason.contains(want), "{name}: {want:?} not in {reason:?}");
            assert!(reason.len() < 1024, "{name}: the error quotes the value");
            assert_eq!(
                version(&dump),
                served,
                "{name}: the last good config serves"
            );
            assert!(rss < MAX_RSS_KB, "{name}: sidecar RSS is {rss} KiB");
            requests.more(5).await;
        }

        // The good file loads again.
        reload_until(client, &good, |dump| match last_error(dump) {
            e if e.is_empty() && version(dump) > served => Ok(()),
            e => Err(format!("not reloaded yet: {e:?}")),
        })
        .await;
        requests.more(5).await;
        let report = requests.stop().await;
        println!(
            "request loop: {} ok, max latency {:?}",
            report.ok, report.max_latency
        );
        assert!(report.failures.is_empty(), "{:?}", report.failures);
    })
    .await;
}

#[tokio::test]
async fn a_large_reload_does_not_stall_a_one_worker_sidecar() {
    let mesh = TwoHop::start().await;
    within(TEST_DEADLINE, async {
        let client = mesh.client();
        let mut large = client.bootstrap.clone();
        const SERVICES: usize = 10_000;
        for i in 0..SERVICES {
            let name = format!("svc-{i}");
            large.resources.services.push(Service {
                name: name.clone(),
                ports: vec![ServicePort {
                    name: "http".into(),
                    port: 80,
                    protocol: Protocol::Http.into(),
                    ..Default::default()
                }],
                ..Default::default()
            });
            large.resources.endpoints.push(Endpoint {
                service: name,
                // TEST-NET-1: never contacted, no request addresses these.
                address: format!("192.0.2.{}", i % 250 + 1),
                port: 8080,
                ..Default::default()
            });
        }
        large.validate().expect("the large config is valid");
        let text = serde_yaml::to_string(&large).unwrap();

        let requests = RequestLoop::start(mesh.http1());
        requests.more(5).await;
        let before = requests.stop().await;
        let requests = RequestLoop::start(mesh.http1());
        // Waits on the version gauge: `/config_dump` of 10 000 services is
        // itself slow to render, on the same thread as the traffic.
        let served = config_version(client).await.unwrap();
        let start = Instant::now();
        client.reload_text(&text);
        eventually(RELOAD_DEADLINE, || async {
            match config_version(client).await? {
                v if v > served => Ok(()),
                v => Err(format!("still serving version {v}")),
            }
        })
        .await;
        let took = start.elapsed();
        let during = requests.ok();
        requests.more(5).await;
        let report = requests.stop().await;
        println!(
            "reload of {SERVICES} services ({} bytes) took {took:?}; {during} requests \
             succeeded meanwhile; max latency {:?} (before the reload: {:?}); sidecar RSS {} MiB",
            text.len(),
            report.max_latency,
            before.max_latency,
            rss_kb(client) / 1024,
        );
        assert!(report.failures.is_empty(), "{:?}", report.failures);
    })
    .await;
}
