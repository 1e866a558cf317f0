//! The control plane's ports as a client on the network sees them: xDS and
//! the CA over TLS verified against the mesh root, mutual TLS bound to the
//! token's identity, plaintext refused, the API over TLS with reads behind
//! the token on request, and workload tokens revoked for good.

mod support;

use envoy_types::pb::envoy::service::discovery::v3::{
    aggregated_discovery_service_client::AggregatedDiscoveryServiceClient, DiscoveryRequest,
    DiscoveryResponse,
};
use http::{Method, StatusCode};
use sane_certs::{CertifiedIdentity, SpiffeId, TrustBundle, WorkloadKey};
use sane_control_plane::client::{ApiClient, TlsConnector};
use sane_control_plane::Config;
use sane_xds_proto::{
    CertificateRequest, CertificateResponse, TypeUrl, CA_CREATE_CERTIFICATE_PATH,
};
use std::time::Duration;
use support::{bearer, eventually, node, ControlPlane, DEADLINE};
use tokio_stream::StreamExt;
use tonic::transport::Channel;

/// Starts a control plane serving TLS (the default outside these tests'
/// shared harness).
async fn start_tls(dir: &std::path::Path, change: impl FnOnce(&mut Config)) -> ControlPlane {
    ControlPlane::start_with(dir, |c| {
        c.plaintext_loopback = false;
        change(c);
    })
    .await
}

/// A gRPC channel to the xDS port over TLS, trusting `root`, presenting
/// `cert` if given.
async fn channel(
    cp: &ControlPlane,
    root: &TrustBundle,
    cert: Option<&CertifiedIdentity>,
) -> Result<Channel, String> {
    let connector = TlsConnector::new(root, cert, &[b"h2"]).map_err(|e| e.to_string())?;
    tonic::transport::Endpoint::from_shared(format!("https://{}", cp.xds))
        .unwrap()
        .connect_with_connector(connector)
        .await
        .map_err(|e| error_chain(&e))
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut msg = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        source = s.source();
    }
    msg
}

/// Opens a stream and returns the stream of answers after the first one.
async fn open_stream(
    channel: Channel,
    token: &str,
    namespace: &str,
) -> Result<(DiscoveryResponse, tonic::Streaming<DiscoveryResponse>), tonic::Status> {
    open_stream_as(channel, token, namespace, "web").await
}

/// [`open_stream`] for a token of service account `sa`.
async fn open_stream_as(
    channel: Channel,
    token: &str,
    namespace: &str,
    sa: &str,
) -> Result<(DiscoveryResponse, tonic::Streaming<DiscoveryResponse>), tonic::Status> {
    let mut client = AggregatedDiscoveryServiceClient::new(channel);
    let first = DiscoveryRequest {
        // Node ids are of the token's workload: <sa>.<namespace>~<instance>.
        node: Some(node(&format!("{sa}.{namespace}~1"), namespace, &[])),
        type_url: TypeUrl::Service.as_str().into(),
        ..Default::default()
    };
    let stream = tokio_stream::iter(vec![first]).chain(tokio_stream::pending());
    let mut responses = client
        .stream_aggregated_resources(bearer(stream, token))
        .await?
        .into_inner();
    let answer = tokio::time::timeout(DEADLINE, responses.message())
        .await
        .expect("an answer in time")?
        .expect("stream open");
    Ok((answer, responses))
}

/// Asks the CA for a certificate for `identity` with `token`.
async fn issue(
    channel: Channel,
    token: &str,
    identity: &SpiffeId,
) -> Result<CertifiedIdentity, tonic::Status> {
    let key = WorkloadKey::generate().unwrap();
    let csr_pem = key.csr_pem(identity).unwrap();
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let req = bearer(
        CertificateRequest {
            csr_pem,
            ttl_seconds: 600,
        },
        token,
    );
    let rsp: tonic::Response<CertificateResponse> = grpc
        .unary(
            req,
            http::uri::PathAndQuery::from_static(CA_CREATE_CERTIFICATE_PATH),
            tonic_prost::ProstCodec::default(),
        )
        .await?;
    Ok(CertifiedIdentity::new(key, &rsp.into_inner().cert_chain_pem).unwrap())
}

fn id(ns: &str, sa: &str) -> SpiffeId {
    SpiffeId::new("cluster.local".parse().unwrap(), ns, sa).unwrap()
}

async fn token_for(cp: &ControlPlane, namespace: &str, sa: &str) -> (String, String) {
    let body = serde_json::json!({ "namespace": namespace, "service_account": sa });
    let reply = cp
        .client
        .json(Method::POST, "/api/v1/tokens", Some(&body))
        .await
        .unwrap();
    (
        reply["token"].as_str().unwrap().to_string(),
        reply["id"].as_str().unwrap().to_string(),
    )
}

#[tokio::test]
async fn xds_and_the_ca_are_served_over_tls_verified_against_the_root_file() {
    let dir = tempfile::tempdir().unwrap();
    let cp = start_tls(dir.path(), |_| {}).await;
    let root = cp.root.clone().expect("TLS, so a root");
    // The file proxies are given is the root the ports chain to.
    let file = std::fs::read_to_string(dir.path().join("root-cert.pem")).unwrap();
    assert_eq!(TrustBundle::from_pem(&file).unwrap(), root);

    let (token, _) = token_for(&cp, "shop", "web").await;
    let cert = issue(
        channel(&cp, &root, None).await.unwrap(),
        &token,
        &id("shop", "web"),
    )
    .await
    .unwrap();
    assert_eq!(cert.identity(), &id("shop", "web"));
    let (answer, _stream) = open_stream(channel(&cp, &root, None).await.unwrap(), &token, "shop")
        .await
        .unwrap();
    assert_eq!(answer.type_url, TypeUrl::Service.as_str());
    cp.stop().await;
}

#[tokio::test]
async fn a_client_with_the_wrong_root_refuses_the_control_plane() {
    let dir = tempfile::tempdir().unwrap();
    let cp = start_tls(dir.path(), |_| {}).await;
    let stranger = sane_certs::CertificateAuthority::generate(
        &"cluster.local".parse().unwrap(),
        sane_certs::CaOptions::default(),
    )
    .unwrap()
    .trust_bundle();
    let err = channel(&cp, &stranger, None).await.unwrap_err();
    assert!(
        err.contains("invalid peer certificate") && err.contains("UnknownIssuer"),
        "{err}"
    );
    cp.stop().await;
}

#[tokio::test]
async fn a_plaintext_client_is_refused_on_the_tls_ports() {
    let dir = tempfile::tempdir().unwrap();
    let cp = start_tls(dir.path(), |_| {}).await;
    let (token, _) = token_for(&cp, "shop", "web").await;
    // gRPC without TLS: the handshake fails, no stream is served, and the
    // token never reaches the server in clear.
    let refused = async {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", cp.xds))
            .unwrap()
            .connect()
            .await
            .map_err(|e| tonic::Status::unavailable(error_chain(&e)))?;
        open_stream(channel, &token, "shop").await.map(|_| ())
    };
    let status = tokio::time::timeout(DEADLINE, refused)
        .await
        .expect("refused in time")
        .unwrap_err();
    assert_ne!(status.code(), tonic::Code::Ok, "{status}");

    // HTTP without TLS to the API: no answer either.
    let plain = ApiClient::new(&format!("http://{}", cp.api), None);
    let err = plain
        .send(Method::GET, "/api/v1/services", None, None)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("/api/v1/services"), "{err}");
    // The same over TLS works.
    let (status, _) = cp
        .client
        .send(Method::GET, "/api/v1/services", None, None)
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK);
    cp.stop().await;
}

#[tokio::test]
async fn plaintext_off_loopback_is_refused_at_startup() {
    let dir = tempfile::tempdir().unwrap();
    for (xds, api) in [("0.0.0.0:0", "127.0.0.1:0"), ("127.0.0.1:0", "[::]:0")] {
        let config = Config {
            xds_addr: xds.parse().unwrap(),
            api_addr: api.parse().unwrap(),
            data_dir: Some(dir.path().to_path_buf()),
            plaintext_loopback: true,
            ..Config::default()
        };
        let err = sane_control_plane::build(config, &prometheus::Registry::new())
            .await
            .unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("refusing to serve") && msg.contains("plaintext"),
            "{msg}"
        );
    }
    // The binary says so and exits non-zero.
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_sane-control-plane"))
        .args([
            "--insecure-plaintext-loopback",
            "--xds-addr",
            "0.0.0.0:0",
            "--api-addr",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(dir.path())
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("refusing to serve xds in plaintext on 0.0.0.0:0"),
        "{stderr}"
    );
}

#[tokio::test]
async fn a_client_certificate_must_be_the_tokens_workload() {
    let dir = tempfile::tempdir().unwrap();
    let cp = start_tls(dir.path(), |_| {}).await;
    let root = cp.root.clone().unwrap();
    let (web_token, _) = token_for(&cp, "shop", "web").await;
    let (admin_token, _) = token_for(&cp, "shop", "admin").await;
    let anonymous = || channel(&cp, &root, None);
    let web_cert = issue(anonymous().await.unwrap(), &web_token, &id("shop", "web"))
        .await
        .unwrap();
    let admin_cert = issue(
        anonymous().await.unwrap(),
        &admin_token,
        &id("shop", "admin"),
    )
    .await
    .unwrap();

    // Mutual TLS with the token's own certificate: served, and the CA
    // renews over it.
    let mutual = channel(&cp, &root, Some(&web_cert)).await.unwrap();
    open_stream(mutual.clone(), &web_token, "shop")
        .await
        .unwrap();
    issue(mutual, &web_token, &id("shop", "web")).await.unwrap();

    // Another workload's certificate beside the token: refused, at the
    // stream and at the CA.
    let mixed = channel(&cp, &root, Some(&admin_cert)).await.unwrap();
    let refused = open_stream(mixed.clone(), &web_token, "shop")
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused}");
    assert!(
        refused.message().contains("sa/admin") && refused.message().contains("shop/web"),
        "{refused}"
    );
    let refused = issue(mixed, &web_token, &id("shop", "web"))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused}");

    // The certificate alone is no credential: without a header token the
    // stream waits for the node's (gRPC clients' `node.metadata.token`),
    // and a node without one is refused.
    let mutual = channel(&cp, &root, Some(&web_cert)).await.unwrap();
    let status = open_without_header(mutual, node("web.shop~1", "shop", &[]))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status}");
    assert!(status.message().contains("\"token\""), "{status}");
    // A node token is checked against the certificate like a header token.
    let mixed = channel(&cp, &root, Some(&admin_cert)).await.unwrap();
    let status = open_without_header(mixed, node_with_token("shop", &web_token))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status}");
    let mutual = channel(&cp, &root, Some(&web_cert)).await.unwrap();
    open_without_header(mutual, node_with_token("shop", &web_token))
        .await
        .unwrap();
    cp.stop().await;
}

/// Node `web.<namespace>~1` carrying `token` in its metadata.
fn node_with_token(namespace: &str, token: &str) -> envoy_types::pb::envoy::config::core::v3::Node {
    use envoy_types::pb::google::protobuf::{value::Kind, Value};
    let mut n = node(&format!("web.{namespace}~1"), namespace, &[]);
    let fields = &mut n.metadata.as_mut().expect("metadata").fields;
    let token = Value {
        kind: Some(Kind::StringValue(token.into())),
    };
    fields.insert("token".into(), token);
    n
}

/// A stream opened without an `authorization` header, whose first request
/// carries `node`: its first answer, and the stream.
async fn open_without_header(
    channel: Channel,
    node: envoy_types::pb::envoy::config::core::v3::Node,
) -> Result<(DiscoveryResponse, tonic::Streaming<DiscoveryResponse>), tonic::Status> {
    let mut client = AggregatedDiscoveryServiceClient::new(channel);
    let first = DiscoveryRequest {
        node: Some(node),
        type_url: TypeUrl::Service.as_str().into(),
        ..Default::default()
    };
    let stream = tokio_stream::iter(vec![first]).chain(tokio_stream::pending());
    let mut responses = client
        .stream_aggregated_resources(stream)
        .await?
        .into_inner();
    let answer = tokio::time::timeout(DEADLINE, responses.message())
        .await
        .expect("an answer in time")?
        .ok_or_else(|| tonic::Status::cancelled("stream ended without a status"))?;
    Ok((answer, responses))
}

/// Reads `stream` until it ends; the status it ended with.
async fn ended(stream: &mut tonic::Streaming<DiscoveryResponse>) -> tonic::Status {
    tokio::time::timeout(DEADLINE, async {
        loop {
            match stream.message().await {
                Ok(Some(_)) => continue,
                Ok(None) => return tonic::Status::cancelled("ended without a status"),
                Err(status) => return status,
            }
        }
    })
    .await
    .expect("the stream ends in time")
}

#[tokio::test]
async fn a_revoked_token_is_refused_by_the_next_stream_and_the_ca_and_ends_open_streams() {
    let dir = tempfile::tempdir().unwrap();
    let cp = start_tls(dir.path(), |_| {}).await;
    let root = cp.root.clone().unwrap();
    let (token, token_id) = token_for(&cp, "shop", "web").await;
    let (other, _) = token_for(&cp, "shop", "api").await;

    // The list shows ids and identities, never tokens, and needs the API
    // token.
    let (status, body) = cp
        .client
        .send(Method::GET, "/api/v1/tokens", None, None)
        .await
        .unwrap();
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(!String::from_utf8_lossy(&body).contains(&token));
    let listed = cp
        .client
        .json(Method::GET, "/api/v1/tokens", None)
        .await
        .unwrap();
    let text = listed.to_string();
    assert!(!text.contains(&token) && text.contains(&token_id), "{text}");
    assert!(
        text.contains("spiffe://cluster.local/ns/shop/sa/web"),
        "{text}"
    );

    let (_, mut open) = open_stream(channel(&cp, &root, None).await.unwrap(), &token, "shop")
        .await
        .unwrap();
    // A proxyless gRPC client's stream: the token in its node.
    let (_, mut by_node) = open_without_header(
        channel(&cp, &root, None).await.unwrap(),
        node_with_token("shop", &token),
    )
    .await
    .unwrap();
    let revoked = cp
        .client
        .json(Method::DELETE, &format!("/api/v1/tokens/{token_id}"), None)
        .await
        .unwrap();
    assert_eq!(revoked["revoked"], true);

    // The open stream is ended …
    let ended = tokio::time::timeout(DEADLINE, async {
        loop {
            match open.message().await {
                Ok(Some(_)) => continue,
                other => return other,
            }
        }
    })
    .await
    .expect("the stream ends in time")
    .unwrap_err();
    assert_eq!(ended.code(), tonic::Code::Unauthenticated, "{ended}");
    assert!(ended.message().contains("revoked"), "{ended}");
    let by_node = self::ended(&mut by_node).await;
    assert_eq!(by_node.code(), tonic::Code::Unauthenticated, "{by_node}");
    assert!(by_node.message().contains("revoked"), "{by_node}");
    // … the next one is refused (in a header or a node), and so is the CA.
    let next = open_stream(channel(&cp, &root, None).await.unwrap(), &token, "shop")
        .await
        .unwrap_err();
    assert_eq!(next.code(), tonic::Code::Unauthenticated, "{next}");
    let next = open_without_header(
        channel(&cp, &root, None).await.unwrap(),
        node_with_token("shop", &token),
    )
    .await
    .unwrap_err();
    assert_eq!(next.code(), tonic::Code::Unauthenticated, "{next}");
    let ca = issue(
        channel(&cp, &root, None).await.unwrap(),
        &token,
        &id("shop", "web"),
    )
    .await
    .unwrap_err();
    assert_eq!(ca.code(), tonic::Code::Unauthenticated, "{ca}");
    // Other tokens are untouched; revoking twice is a 404.
    open_stream_as(
        channel(&cp, &root, None).await.unwrap(),
        &other,
        "shop",
        "api",
    )
    .await
    .unwrap();
    let (status, _) = cp
        .client
        .send(
            Method::DELETE,
            &format!("/api/v1/tokens/{token_id}"),
            None,
            Some(&cp.token),
        )
        .await
        .unwrap();
    assert_eq!(status, StatusCode::NOT_FOUND);

    // Revocation is durable.
    cp.stop().await;
    let cp = start_tls(dir.path(), |_| {}).await;
    let root = cp.root.clone().unwrap();
    let after = open_stream(channel(&cp, &root, None).await.unwrap(), &token, "shop")
        .await
        .unwrap_err();
    assert_eq!(after.code(), tonic::Code::Unauthenticated, "{after}");
    cp.stop().await;
}

#[tokio::test]
async fn api_reads_can_require_the_token() {
    let dir = tempfile::tempdir().unwrap();
    let cp = start_tls(dir.path(), |c| c.api_read_token_required = true).await;
    for path in [
        "/api/v1/services",
        "/api/v1/proxies",
        "/api/v1/openapi.json",
    ] {
        let (status, _) = cp.client.send(Method::GET, path, None, None).await.unwrap();
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{path}");
        let (status, _) = cp
            .client
            .send(Method::GET, path, None, Some("wrong"))
            .await
            .unwrap();
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{path}");
        let (status, _) = cp
            .client
            .send(Method::GET, path, None, Some(&cp.token))
            .await
            .unwrap();
        assert_eq!(status, StatusCode::OK, "{path}");
    }
    // Liveness and metrics stay open for probes and scrapers.
    for path in ["/healthz", "/metrics"] {
        let (status, _) = cp.client.send(Method::GET, path, None, None).await.unwrap();
        assert_eq!(status, StatusCode::OK, "{path}");
    }
    cp.stop().await;
}

#[tokio::test]
async fn the_api_can_serve_an_operator_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let operator = sane_certs::CertificateAuthority::generate(
        &"operator.example".parse().unwrap(),
        sane_certs::CaOptions::default(),
    )
    .unwrap();
    let (chain, key) = operator
        .sign_external_server_cert(&["127.0.0.1".to_string()], Duration::from_secs(3600))
        .unwrap();
    let (chain_file, key_file) = (dir.path().join("api.pem"), dir.path().join("api-key.pem"));
    std::fs::write(&chain_file, chain).unwrap();
    std::fs::write(&key_file, key).unwrap();
    let cp = start_tls(&dir.path().join("cp"), |c| {
        c.api_tls_files = Some((chain_file, key_file));
    })
    .await;
    // The mesh root does not verify the API any more; the operator's does.
    let (status, _) = ApiClient::with_roots(
        &format!("https://{}", cp.api),
        None,
        &operator.trust_bundle(),
    )
    .unwrap()
    .send(Method::GET, "/healthz", None, None)
    .await
    .unwrap();
    assert_eq!(status, StatusCode::OK);
    assert!(cp
        .client
        .send(Method::GET, "/healthz", None, None)
        .await
        .is_err());
    cp.stop().await;
}

#[tokio::test]
async fn the_serving_certificate_is_renewed_while_serving() {
    let dir = tempfile::tempdir().unwrap();
    let cp = start_tls(dir.path(), |c| c.serving_cert_ttl = Duration::from_secs(3)).await;
    let root = cp.root.clone().unwrap();
    let serial = || async {
        let config = sane_certs::control_plane_client_config(&root, None, &[b"h2"]).unwrap();
        let tcp = tokio::net::TcpStream::connect(cp.xds).await.unwrap();
        let tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
            .connect("127.0.0.1".try_into().unwrap(), tcp)
            .await
            .expect("the certificate verifies");
        let leaf = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
        leaf.as_ref().to_vec()
    };
    let first = serial().await;
    eventually(
        Duration::from_secs(30),
        "a renewed serving certificate",
        || async { (serial().await != first).then_some(()) },
    )
    .await;
    cp.stop().await;
}
