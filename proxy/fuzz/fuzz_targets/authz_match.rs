//! Authorization matching: arbitrary policies evaluated against an
//! arbitrary request.
//!
//! Input: a YAML list of `AuthorizationPolicy`, a NUL byte, then the request
//! as lines: method, path, one `name: value` header, port, and an optional
//! peer SPIFFE id (absent: plaintext caller). The policies are validated and
//! compiled for the workload the first one targets, as the proxy does
//! (`AuthzPolicies::for_workload`), and evaluated both as HTTP and as opaque
//! TCP.
//!
//! Invariants: nothing panics; when any enforced (not dry-run) `deny`
//! policy matches on its own, the whole set denies with a deny policy as
//! the reason, whatever the `allow` policies say; an allowed request never
//! reports `no allow policy matched`.
#![no_main]

use http::{HeaderMap, HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;
use sane_proxy::policy::authz::{AuthzPolicies, Caller, HttpOperation, Operation, Verdict};
use sane_xds_proto::{AuthorizationPolicy, AuthzAction};

fuzz_target!(|data: &[u8]| {
    let Some(split) = data.iter().position(|&b| b == 0) else {
        return;
    };
    let Ok(yaml) = std::str::from_utf8(&data[..split]) else {
        return;
    };
    let Ok(policies) = serde_yaml::from_str::<Vec<AuthorizationPolicy>>(yaml) else {
        return;
    };
    if policies.is_empty() || policies.iter().any(|p| p.validate().is_err()) {
        return;
    }
    let request = String::from_utf8_lossy(&data[split + 1..]);
    let mut lines = request.split('\n');
    let method = lines.next().unwrap_or("GET");
    let path = lines.next().unwrap_or("/");
    let mut headers = HeaderMap::new();
    if let Some((name, value)) = lines.next().and_then(|h| h.split_once(':')) {
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(name.trim().as_bytes()),
            HeaderValue::from_str(value.trim()),
        ) {
            headers.insert(n, v);
        }
    }
    let port = lines
        .next()
        .and_then(|p| p.trim().parse::<u16>().ok())
        .unwrap_or(8080);
    let principal = lines.next().filter(|p| !p.is_empty());

    let service_key = policies[0].service_key();
    let set = AuthzPolicies::for_workload(&policies, &service_key);
    let caller = Caller { principal };
    let ops = [
        Operation {
            port,
            http: Some(HttpOperation {
                method,
                path,
                headers: &headers,
            }),
        },
        Operation { port, http: None },
    ];
    for op in ops {
        let verdict = set.evaluate(caller, op);
        check(&policies, &service_key, caller, op, &verdict);
    }
});

fn check(
    policies: &[AuthorizationPolicy],
    service_key: &str,
    caller: Caller<'_>,
    op: Operation<'_>,
    verdict: &Verdict,
) {
    // Each enforced deny policy on its own: a set of one deny policy denies
    // exactly when that policy matches.
    let deny_matched = policies
        .iter()
        .filter(|p| p.action() == AuthzAction::Deny && !p.dry_run)
        .any(|p| {
            let one = AuthzPolicies::for_workload(std::slice::from_ref(p), service_key);
            one.evaluate(caller, op).denied.is_some()
        });
    if deny_matched {
        let reason = verdict
            .denied
            .as_deref()
            .expect("a matching deny policy denies, whatever allow policies say");
        assert!(
            reason.starts_with("deny policy "),
            "a matching deny policy must be the reason, got {reason:?}"
        );
    }
    if verdict.denied.is_some() {
        assert!(
            verdict.dry_run_denied.is_none(),
            "a dry-run denial is only reported for allowed requests"
        );
    }
}
