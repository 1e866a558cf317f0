//! A burst of failing requests no longer writes one `WARN` line each: each
//! call site logs a few per interval and reports how many it dropped, so
//! the log stays bounded and nothing is lost silently.
//!
//! test ──1000 requests for an unknown host──▶ client sidecar (404 NR each)

use sane_e2e::harness::http::{get, http1_client_via, send};
use sane_e2e::harness::{eventually, within, TwoHop};
use std::time::{Duration, Instant};

const REQUESTS: u64 = 1000;
/// The proxy's limit: lines per call site per interval (`log_limit`).
const BURST: u64 = 10;
const INTERVAL: Duration = Duration::from_secs(5);

/// Lines of the failed-request call site, and the suppressed counts its
/// reports add up to.
fn tally(stderr: &str) -> (u64, u64) {
    let logged = stderr
        .lines()
        .filter(|l| l.contains(" WARN ") && l.contains("request failed"))
        .count() as u64;
    let suppressed = stderr
        .lines()
        .filter(|l| l.contains("similar warnings") && l.contains("observe"))
        .filter_map(|l| {
            let v = l.split("suppressed=").nth(1)?;
            v.split_whitespace().next()?.parse::<u64>().ok()
        })
        .sum();
    (logged, suppressed)
}

#[tokio::test]
async fn repeated_warnings_are_limited_and_counted() {
    let mesh = TwoHop::start().await;
    within(Duration::from_secs(120), async {
        let client = http1_client_via(mesh.outbound_http);
        let started = Instant::now();
        for i in 0..REQUESTS {
            let r = send(&client, get(&format!("http://nowhere.invalid/{i}")))
                .await
                .unwrap();
            assert_eq!(r.status, 404, "{}", r.text());
        }
        let took = started.elapsed();
        // Every request is accounted for: logged, or counted in a report.
        let (logged, suppressed) = eventually(Duration::from_secs(30), || async {
            let (logged, suppressed) = tally(&mesh.mesh.client().proc.stderr());
            if logged + suppressed == REQUESTS {
                Ok((logged, suppressed))
            } else {
                Err(format!(
                    "{logged} logged + {suppressed} reported suppressed"
                ))
            }
        })
        .await;
        println!(
            "{REQUESTS} failed requests in {took:?}: {logged} WARN lines, \
             {suppressed} suppressed and reported"
        );
        // At most a burst per interval the requests spanned (plus the one
        // they started in).
        let windows = took.as_secs() / INTERVAL.as_secs() + 2;
        assert!(
            logged <= BURST * windows,
            "{logged} lines for {REQUESTS} failures over {windows} intervals"
        );
        assert!(suppressed > 0);
    })
    .await;
}
