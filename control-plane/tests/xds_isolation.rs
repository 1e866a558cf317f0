//! What one workload's token may see and do on the ADS stream, probed as a
//! hostile client would: real streams to the control plane in-process.
//!
//! * A token of one namespace asking for every service (`services: ["*"]`)
//!   gets only what is exported to its namespace: never another
//!   namespace's hidden services, their endpoints (addresses and SPIFFE
//!   ids), nor any of another namespace's authorization policies.
//! * A stream cannot take another workload's node id: it is refused with
//!   `PERMISSION_DENIED`, and the real proxy's status row stays as it was.
//! * What a client says (node fields, NACK messages) is bounded, and shown
//!   escaped.

mod support;

use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use http::Method;
use sane_control_plane::resource::Resource;
use sane_xds_proto::TypeUrl;
use serde_json::{json, Value};
use support::{eventually, node, ControlPlane, SotwClient, DEADLINE};
use tokio_stream::StreamExt;

fn names(resp: &DiscoveryResponse) -> Vec<String> {
    let mut n: Vec<String> = resp
        .resources
        .iter()
        .map(|a| Resource::decode_any(a).expect("a known resource").key())
        .collect();
    n.sort();
    n
}

async fn put(cp: &ControlPlane, path: &str, body: Value) -> Value {
    cp.client
        .json(Method::PUT, path, Some(&body))
        .await
        .unwrap_or_else(|e| panic!("PUT {path}: {e}"))
}

/// `default/web`; in `bank`: `vault` (exported to its own namespace only,
/// with an endpoint, an identity and an authorization policy) and `rates`
/// (exported everywhere, the default).
async fn seed(cp: &ControlPlane) {
    let port = json!([{ "name": "http", "port": 80, "target_port": 8080 }]);
    put(cp, "/api/v1/services/default/web", json!({ "ports": port })).await;
    put(
        cp,
        "/api/v1/services/bank/vault",
        json!({ "ports": port, "export_to": ["."] }),
    )
    .await;
    put(cp, "/api/v1/services/bank/rates", json!({ "ports": port })).await;
    put(
        cp,
        "/api/v1/endpoints/bank/vault/10.66.0.7:15006",
        json!({ "address": "10.66.0.7", "proxy_port": 15006,
                "identity": "spiffe://cluster.local/ns/bank/sa/vault" }),
    )
    .await;
    put(
        cp,
        "/api/v1/endpoints/bank/rates/10.66.0.8:15006",
        json!({ "address": "10.66.0.8", "proxy_port": 15006 }),
    )
    .await;
    put(
        cp,
        "/api/v1/authorization_policies/bank/vault-tellers",
        json!({ "service": "vault", "rules": [ { "from": [ { "principals": ["*/sa/teller"] } ] } ] }),
    )
    .await;
}

/// Every resource of `t` a stream of `token` as `node` receives first.
async fn first_view(
    cp: &ControlPlane,
    token: &str,
    node: envoy_types::pb::envoy::config::core::v3::Node,
    t: TypeUrl,
) -> DiscoveryResponse {
    let mut ads = SotwClient::connect(cp.xds, token, node).await;
    ads.request(t).await;
    ads.recv_type(t).await
}

/// How the control plane answers the first request of a stream.
async fn first_answer(
    cp: &ControlPlane,
    token: &str,
    node: envoy_types::pb::envoy::config::core::v3::Node,
) -> Result<DiscoveryResponse, tonic::Status> {
    let mut client = AggregatedDiscoveryServiceClient::connect(format!("http://{}", cp.xds))
        .await
        .unwrap();
    let first = DiscoveryRequest {
        node: Some(node),
        type_url: TypeUrl::Service.as_str().into(),
        ..Default::default()
    };
    let stream = tokio_stream::iter(vec![first]).chain(tokio_stream::pending());
    let mut responses = client
        .stream_aggregated_resources(support::bearer(stream, token))
        .await?
        .into_inner();
    let answer = tokio::time::timeout(DEADLINE, responses.message())
        .await
        .expect("an answer in time")?;
    Ok(answer.expect("stream open"))
}

async fn proxy_rows(cp: &ControlPlane, id: &str) -> Vec<Value> {
    let all = cp.client.proxies().await.unwrap();
    all["proxies"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["node"] == id)
        .cloned()
        .collect()
}

#[tokio::test]
async fn a_token_asking_for_every_service_gets_only_what_its_namespace_is_granted() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(dir.path()).await;
    seed(&cp).await;
    let default = cp.workload_token("default").await;
    let spy = || {
        node(
            "test.default~spy",
            "default",
            &["*", "bank/vault", "vault.bank"],
        )
    };

    let services = first_view(&cp, &default, spy(), TypeUrl::Service).await;
    assert_eq!(names(&services), ["bank/rates", "default/web"]);
    let endpoints = first_view(&cp, &default, spy(), TypeUrl::Endpoint).await;
    assert_eq!(names(&endpoints), ["bank/rates/10.66.0.8:15006"]);
    let policies = first_view(&cp, &default, spy(), TypeUrl::AuthorizationPolicy).await;
    assert!(names(&policies).is_empty(), "{:?}", names(&policies));
    // Not a byte of the hidden service anywhere in what was sent.
    for resp in [&services, &endpoints, &policies] {
        for any in &resp.resources {
            let bytes = String::from_utf8_lossy(&any.value);
            for secret in ["vault", "10.66.0.7", "sa/teller"] {
                assert!(
                    !bytes.contains(secret),
                    "{secret} leaked in {}",
                    resp.type_url
                );
            }
        }
    }

    // Its own namespace sees it; the vault's sidecar gets its policy.
    let vault = cp.token_for("bank", "vault").await;
    let mut own = node("vault.bank~vault-0", "bank", &[]);
    own.metadata = Some(sane_control_plane::xds::node_metadata_with_inbound(
        "bank",
        &[],
        &["10.66.0.7:15006".parse().unwrap()],
    ));
    let services = first_view(&cp, &vault, own.clone(), TypeUrl::Service).await;
    assert_eq!(names(&services), ["bank/rates", "bank/vault"]);
    let policies = first_view(&cp, &vault, own, TypeUrl::AuthorizationPolicy).await;
    assert_eq!(names(&policies), ["bank/vault-tellers"]);
    cp.stop().await;
}

#[tokio::test]
async fn another_workloads_node_id_is_refused_and_its_row_is_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(dir.path()).await;
    seed(&cp).await;
    let vault = cp.token_for("bank", "vault").await;
    let real_id = "vault.bank~vault-0";
    let mut real = SotwClient::connect(cp.xds, &vault, node(real_id, "bank", &[])).await;
    real.request(TypeUrl::Service).await;
    let services = real.recv_type(TypeUrl::Service).await;
    real.ack(&services).await;
    let before = eventually(DEADLINE, "the real proxy in sync", || async {
        let rows = proxy_rows(&cp, real_id).await;
        (rows.len() == 1 && rows[0]["in_sync"] == true).then(|| rows[0].clone())
    })
    .await;

    // Another workload of the same namespace, and of another one, both with
    // valid tokens, try to speak for the vault's proxy.
    for (ns, sa) in [("bank", "teller"), ("default", "test")] {
        let token = cp.token_for(ns, sa).await;
        for id in [real_id, "vault.bank"] {
            let refused = first_answer(&cp, &token, node(id, ns, &[]))
                .await
                .unwrap_err();
            assert!(
                matches!(refused.code(), tonic::Code::PermissionDenied),
                "{ns}/{sa} as {id}: {refused}"
            );
        }
    }
    // The refusal names the convention.
    let teller = cp.token_for("bank", "teller").await;
    let refused = first_answer(&cp, &teller, node(real_id, "bank", &[]))
        .await
        .unwrap_err();
    assert!(
        refused.message().contains("\"teller.bank~<instance>\""),
        "{refused}"
    );

    let after = proxy_rows(&cp, real_id).await;
    assert_eq!(after.len(), 1, "{after:?}");
    for field in ["stream", "connected", "connected_since", "in_sync", "types"] {
        assert_eq!(after[0][field], before[field], "{field}");
    }
    let status = cp.client.proxies().await.unwrap();
    assert_eq!(status["proxies"].as_array().unwrap().len(), 1, "{status}");
    assert_eq!(status["all_in_sync"], true, "{status}");
    drop(real);
    cp.stop().await;
}

#[tokio::test]
async fn client_text_is_bounded_and_escaped_in_the_status_table() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(dir.path()).await;
    seed(&cp).await;
    let token = cp.workload_token("default").await;

    // A 3 MB node id is refused (it exceeds the request size limit), and
    // so is one just over the node id limit, without being echoed.
    for len in [3 * 1024 * 1024, 254] {
        let id = "a".repeat(len);
        let refused = first_answer(&cp, &token, node(&id, "default", &[]))
            .await
            .unwrap_err();
        assert!(
            matches!(
                refused.code(),
                tonic::Code::InvalidArgument
                    | tonic::Code::ResourceExhausted
                    | tonic::Code::OutOfRange
            ),
            "{len}: {}",
            refused.code()
        );
        assert!(
            refused.message().len() < 1024,
            "{len}: the message echoes the id"
        );
        println!(
            "a {len}-byte node id: {:?} {}",
            refused.code(),
            refused.message()
        );
    }

    let id = "test.default~nacker";
    let mut ads = SotwClient::connect(cp.xds, &token, node(id, "default", &[])).await;
    ads.request(TypeUrl::Service).await;
    let services = ads.recv_type(TypeUrl::Service).await;
    let forged = format!(
        "bad\n2099-01-01T00:00:00Z  INFO all proxies in sync\u{1b}[2J{}",
        "x".repeat(100_000)
    );
    ads.nack(&services, &forged).await;
    let reason = eventually(DEADLINE, "the NACK in the table", || async {
        let rows = proxy_rows(&cp, id).await;
        let r = rows.first()?["types"]["Service"]["last_nack"]["reason"].as_str()?;
        Some(r.to_string())
    })
    .await;
    assert!(
        !reason.contains('\n') && !reason.contains('\u{1b}'),
        "{reason:.200}"
    );
    assert!(reason.starts_with("bad\\n2099-01-01"), "{reason:.200}");
    assert!(reason.len() < 2 * 1024, "{} bytes kept", reason.len());
    cp.stop().await;
}
