//! Request paths are normalized before routing and authorization, and the
//! normalized path is what the workload gets: the outside probe's ways
//! around a deny on `/admin/*` (`/a/../admin/x`, `//admin/x`, `/%61dmin/x`,
//! `/admin%2fx`) are all denied (`403 RBAC`) or refused (`400 DPE`).
//!
//! test ──raw HTTP/1──▶ client sidecar ──▶ server sidecar (deny /admin/*) ──▶ echo
//! test ──raw HTTP/1──────────────────────▶ server sidecar (its own check)
//!
//! Requests are written on raw sockets: HTTP clients (and curl without
//! `--path-as-is`) resolve dot segments before sending.

use sane_e2e::harness::http::{raw_http1, RawReply};
use sane_e2e::harness::{eventually, within, TwoHop, INBOUND};
use sane_xds_proto::{
    AuthorizationPolicy, AuthzAction, AuthzOperation, AuthzRule, PathNormalization,
    PathNormalizationMode,
};
use std::net::SocketAddr;
use std::time::Duration;

const DEADLINE: Duration = Duration::from_secs(60);
const FLAGS: &str = "x-sane-response-flags";
/// The spellings of `/admin/x` the probe got through, and one more of each
/// kind.
const PROBES: &[&str] = &[
    "/admin/x",
    "/a/../admin/x",
    "//admin/x",
    "/%61dmin/x",
    "/admin%2fx",
    "/admin%2Fx",
    "/admin%5cx",
    "/./admin/./x",
    "/%2e%2e/admin/x",
    "/x/..//admin//x",
    "/ADMIN/../%61%64%6d%69%6e/x",
];

async fn get(addr: SocketAddr, target: &str) -> RawReply {
    let req = format!("GET {target} HTTP/1.1\r\nHost: echo\r\nConnection: close\r\n\r\n");
    raw_http1(addr, req.as_bytes())
        .await
        .unwrap_or_else(|e| panic!("GET {target} via {addr}: {e}"))
}

/// The server sidecar denies `/admin/*` to everyone; its workload is
/// named for the service the policy targets.
async fn deny_admin(mesh: &mut TwoHop, normalization: PathNormalization) {
    let server = mesh.mesh.sidecar_mut(TwoHop::APP);
    let mut b = server.bootstrap.clone();
    b.node.workload = TwoHop::SERVICE.into();
    b.http.path_normalization = normalization;
    b.resources.authorization_policies = vec![AuthorizationPolicy {
        name: "no-admin".into(),
        service: TwoHop::SERVICE.into(),
        action: AuthzAction::Deny.into(),
        rules: vec![AuthzRule {
            to: vec![AuthzOperation {
                paths: vec!["/admin/*".into()],
                ..Default::default()
            }],
            ..Default::default()
        }],
        ..Default::default()
    }];
    server.reload(b);
    let inbound = server.listener(INBOUND);
    eventually(DEADLINE, || async {
        let r = get(inbound, "/admin/x").await;
        (r.status == 403).then_some(()).ok_or(r.summary())
    })
    .await;
}

fn echoed_path(r: &RawReply) -> (String, Option<String>) {
    let v: serde_json::Value = serde_json::from_str(&r.body)
        .unwrap_or_else(|e| panic!("echo's JSON: {e}: {}", r.summary()));
    (
        v["path"].as_str().unwrap_or_default().to_string(),
        v["query"].as_str().map(str::to_string),
    )
}

#[tokio::test]
async fn spellings_of_a_denied_path_are_denied_or_refused() {
    // Started outside the deadline: the first start builds the binaries.
    let mut mesh = TwoHop::start().await;
    within(DEADLINE, async {
        deny_admin(&mut mesh, PathNormalization::default()).await;
        let inbound = mesh.mesh.sidecar(TwoHop::APP).listener(INBOUND);
        // Through both sidecars, and straight to the server sidecar (its
        // own normalization before its own authorization).
        for (via, addr) in [("client sidecar", mesh.outbound_http), ("inbound", inbound)] {
            for probe in PROBES {
                let r = get(addr, probe).await;
                let flag = r.header(FLAGS).unwrap_or_default();
                println!("{via}: GET {probe} -> {}", r.summary());
                assert!(
                    (r.status == 403 && flag.contains("RBAC"))
                        || (r.status == 400 && flag.contains("DPE")),
                    "{via}: GET {probe} got through: {}",
                    r.summary()
                );
            }
        }
        // The encoded slash is refused, not judged.
        let r = get(mesh.outbound_http, "/admin%2fx").await;
        assert_eq!(r.status, 400, "{}", r.summary());
        assert!(r.body.contains("encoded slash"), "{}", r.summary());
    })
    .await;
}

#[tokio::test]
async fn the_workload_gets_the_normalized_path_and_the_query_as_sent() {
    // Started outside the deadline: the first start builds the binaries.
    let mut mesh = TwoHop::start().await;
    within(DEADLINE, async {
        deny_admin(&mut mesh, PathNormalization::default()).await;
        let inbound = mesh.mesh.sidecar(TwoHop::APP).listener(INBOUND);
        for addr in [mesh.outbound_http, inbound] {
            let r = get(addr, "/a/../public/%7Euser//%41b/./c%20d?q=%2F..%2F&x=/../").await;
            assert_eq!(r.status, 200, "{}", r.summary());
            let (path, query) = echoed_path(&r);
            assert_eq!(path, "/public/~user/Ab/c%20d");
            assert_eq!(query.as_deref(), Some("q=%2F..%2F&x=/../"));
        }
    })
    .await;
}

#[tokio::test]
async fn decode_and_merge_slashes_decodes_encoded_slashes_before_judging() {
    // Started outside the deadline: the first start builds the binaries.
    let mut mesh = TwoHop::start().await;
    within(DEADLINE, async {
        let decode = PathNormalization {
            mode: PathNormalizationMode::DecodeAndMergeSlashes,
            ..Default::default()
        };
        deny_admin(&mut mesh, decode).await;
        let inbound = mesh.mesh.sidecar(TwoHop::APP).listener(INBOUND);
        // Straight to the server sidecar: the client sidecar's default
        // (reject) would refuse it before.
        let r = get(inbound, "/admin%2fx").await;
        assert_eq!(r.status, 403, "{}", r.summary());
        let r = get(inbound, "/public%2Fx").await;
        assert_eq!(r.status, 200, "{}", r.summary());
        assert_eq!(echoed_path(&r).0, "/public/x");
    })
    .await;
}
