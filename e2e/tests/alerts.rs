//! The alerting rules in `deploy/prometheus/alerts.yaml`:
//!
//! * `promtool check rules` accepts them and `promtool test rules` passes
//!   their unit tests on synthetic series (`alerts.test.yaml`);
//! * against a real Prometheus scraping a real mesh, a service whose route
//!   injects a 503 abort into every request makes the fast error-budget
//!   alert fire for that service.
//!
//! Prometheus and promtool come from Debian's `prometheus` package, installed
//! by `scripts/prometheus-test-deps.sh` when missing; under `CI=true` a
//! missing package is a failure, otherwise a loud skip.

use sane_e2e::harness::http::{get, send};
use sane_e2e::harness::{eventually, workspace_root, Prometheus, TwoHop};
use sane_xds_proto::MeshResources;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

/// Rule groups are evaluated every second in the test Prometheus; the alert
/// needs a few scrapes of a rising counter first.
const ALERT_DEADLINE: Duration = Duration::from_secs(60);

fn rules_dir() -> PathBuf {
    workspace_root().join("deploy/prometheus")
}

/// `promtool` sits beside `prometheus` in Debian's package.
fn promtool(prometheus: &std::path::Path) -> PathBuf {
    prometheus.with_file_name("promtool")
}

#[test]
fn promtool_checks_and_unit_tests_the_alert_rules() {
    let Some(bin) =
        sane_e2e::harness::prometheus_or_skip("promtool_checks_and_unit_tests_the_alert_rules")
    else {
        return;
    };
    let promtool = promtool(&bin);
    for args in [
        vec!["check", "rules", "alerts.yaml"],
        vec!["test", "rules", "alerts.test.yaml"],
    ] {
        let out = Command::new(&promtool)
            .args(&args)
            .current_dir(rules_dir())
            .output()
            .expect("running promtool");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        println!("promtool {}:\n{text}", args.join(" "));
        assert!(out.status.success(), "promtool {}: {text}", args.join(" "));
        assert!(
            text.contains("SUCCESS"),
            "promtool {}: {text}",
            args.join(" ")
        );
    }
}

#[tokio::test]
async fn the_error_budget_alert_fires_for_a_failing_service_in_a_real_mesh() {
    let Some(bin) = sane_e2e::harness::prometheus_or_skip(
        "the_error_budget_alert_fires_for_a_failing_service_in_a_real_mesh",
    ) else {
        return;
    };
    // Every request to echo is aborted with 503 by the client sidecar's
    // route: a fault the source reporter counts against the service.
    let mesh = TwoHop::start_from(TwoHop::builder().client_config(|b| {
        let extra: MeshResources = serde_yaml::from_str(
            r#"
routes:
  - name: echo-broken
    service: echo
    rules:
      - fault: { abort: { http_status: 503, percent: 100 } }
"#,
        )
        .expect("test YAML parses");
        b.resources.routes.extend(extra.routes);
    }))
    .await;
    let dir = tempfile::tempdir().unwrap();
    let prometheus = Prometheus::start_with_rules(
        &bin,
        dir.path(),
        &[mesh.client().admin, mesh.server().admin],
        &[rules_dir().join("alerts.yaml")],
    )
    .await;

    // Traffic keeps flowing while Prometheus scrapes, so the counters rise
    // between scrapes and rate() sees the failures.
    let client = mesh.http1();
    let traffic = tokio::spawn(async move {
        // About 200 requests a second: a steady rate, not a flood.
        let mut pace = tokio::time::interval(Duration::from_millis(5));
        loop {
            pace.tick().await;
            let reply = send(&client, get(&TwoHop::url("/"))).await.unwrap();
            assert_eq!(reply.status, 503, "{}", reply.text());
            assert_eq!(reply.header("x-sane-response-flags"), Some("FI"));
        }
    });

    let firing = "ALERTS{alertname=\"SaneServiceErrorBudgetBurnFast\",alertstate=\"firing\"}";
    let samples = eventually(ALERT_DEADLINE, || async {
        let got = prometheus.query(firing).await?;
        if got.is_empty() {
            let ratio = prometheus.query("sane:service_error_ratio:rate5m").await?;
            return Err(format!("not firing yet; error ratio {ratio:?}"));
        }
        Ok(got)
    })
    .await;
    traffic.abort();
    println!("firing: {samples:?}");
    let services: Vec<&str> = samples
        .iter()
        .filter_map(|(labels, _)| labels["destination_service"].as_str())
        .collect();
    assert_eq!(
        services,
        vec!["echo.default.svc.cluster.local"],
        "{samples:?}"
    );
    assert_eq!(samples[0].0["severity"], "page", "{samples:?}");
}
