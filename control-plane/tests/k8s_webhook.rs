//! The admission webhook answering real AdmissionReviews: in-process through
//! the handler, and over HTTPS with a certificate from the mesh CA, checked
//! as the API server would (by DNS name against the caBundle). The JSONPatch
//! is applied with `json-patch` and the result validated as a Pod.

#![cfg(feature = "kubernetes")]

mod k8s_support;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use k8s_support::{base64_decode, fixture, roundtrip};
use sane_certs::{CaOptions, CertificateAuthority, TrustDomain};
use sane_control_plane::k8s::inject::{InjectConfig, Injector};
use sane_control_plane::k8s::webhook::{self, WebhookServer};
use sane_xds_proto::Bootstrap;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio_util::sync::CancellationToken;

const DNS_NAME: &str = "sane-control-plane.sane-system.svc";

fn injector() -> Injector {
    Injector::new(InjectConfig::default())
}

fn request() -> Value {
    serde_json::from_str(&fixture("webhook/pod-create.json")).unwrap()
}

/// The pod of `review` with the patch of `answer` applied.
fn patched(review: &Value, answer: &Value) -> Value {
    let response = &answer["response"];
    assert_eq!(response["uid"], review["request"]["uid"]);
    assert_eq!(response["allowed"], true, "{response}");
    assert_eq!(response["patchType"], "JSONPatch");
    let patch: json_patch::Patch =
        serde_json::from_slice(&base64_decode(response["patch"].as_str().unwrap())).unwrap();
    let mut pod = review["request"]["object"].clone();
    json_patch::patch(&mut pod, &patch).unwrap();
    pod
}

#[test]
fn a_replicaset_pod_is_patched_into_a_valid_meshed_pod() {
    let review = request();
    let answer = webhook::review(&injector(), review.to_string().as_bytes()).unwrap();
    assert_eq!(answer["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(answer["kind"], "AdmissionReview");
    let pod = patched(&review, &answer);
    let mut clean = pod.clone();
    // The API server drops a null creationTimestamp; so does the schema check.
    clean["metadata"]
        .as_object_mut()
        .unwrap()
        .remove("creationTimestamp");
    roundtrip::<k8s_openapi::api::core::v1::Pod>(&clean).unwrap();

    let init: Vec<&str> = pod["spec"]["initContainers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(init, ["sane-init", "sane-proxy"]);
    let bootstrap: Bootstrap = serde_yaml::from_str(
        pod["metadata"]["annotations"]["sane.mesh/bootstrap"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    bootstrap.validate().unwrap();
    assert!(
        bootstrap.node.id.starts_with("web.shop~web-7d9f8c6b5-") && bootstrap.node.id.len() == 28,
        "a unique node id in the API server's style: {}",
        bootstrap.node.id
    );
    assert_eq!(bootstrap.node.namespace, "shop");
    assert_eq!(bootstrap.node.workload, "web");
    assert_eq!(bootstrap.identity.unwrap().service_account, "web");
    let ready = &pod["spec"]["containers"][0]["readinessProbe"];
    assert_eq!(ready["httpGet"]["path"], "/app-health/web/readiness");
    assert_eq!(ready["failureThreshold"], 2);
    // What was there stays: the API server's token volume, the annotation.
    assert_eq!(pod["spec"]["volumes"][0]["name"], "kube-api-access-x7k2p");
    assert_eq!(
        pod["metadata"]["annotations"]["prometheus.io/scrape"],
        "true"
    );

    // The same pod again (a reinvocation): allowed, nothing to patch.
    let mut again = review.clone();
    again["request"]["object"] = pod;
    let answer = webhook::review(&injector(), again.to_string().as_bytes()).unwrap();
    assert_eq!(answer["response"]["allowed"], true);
    assert!(answer["response"].get("patch").is_none());
}

#[test]
fn fields_this_build_does_not_know_are_left_alone() {
    let mut review = request();
    let object = &mut review["request"]["object"];
    object["spec"]["futureField"] = json!({ "enabled": true });
    object["spec"]["containers"][0]["futureKnob"] = json!(3);
    object["metadata"]["futureMeta"] = json!("x");
    let answer = webhook::review(&injector(), review.to_string().as_bytes()).unwrap();
    let patch: Vec<Value> = serde_json::from_slice(&base64_decode(
        answer["response"]["patch"].as_str().unwrap(),
    ))
    .unwrap();
    for op in &patch {
        let path = op["path"].as_str().unwrap();
        assert!(!path.contains("future"), "patch touches {path}");
    }
    let pod = patched(&review, &answer);
    assert_eq!(pod["spec"]["futureField"]["enabled"], true);
    assert_eq!(pod["spec"]["containers"][0]["futureKnob"], 3);
    assert_eq!(pod["metadata"]["futureMeta"], "x");
}

#[test]
fn opted_out_pods_pass_and_conflicting_ports_are_denied_with_a_message() {
    let mut review = request();
    review["request"]["object"]["metadata"]["annotations"]["sane.mesh/inject"] = "false".into();
    let answer = webhook::review(&injector(), review.to_string().as_bytes()).unwrap();
    assert_eq!(answer["response"]["allowed"], true);
    assert!(answer["response"].get("patch").is_none());

    let mut review = request();
    review["request"]["object"]["spec"]["containers"][0]["ports"][1]["containerPort"] =
        15006.into();
    let answer = webhook::review(&injector(), review.to_string().as_bytes()).unwrap();
    let response = &answer["response"];
    assert_eq!(response["uid"], review["request"]["uid"]);
    assert_eq!(response["allowed"], false);
    let message = response["status"]["message"].as_str().unwrap();
    assert!(
        message.contains("container \"web\" uses port 15006") && message.contains("inbound"),
        "{message}"
    );

    // A pod the Kubernetes schema rejects is denied, not a crash.
    let mut review = request();
    review["request"]["object"]["spec"]["containers"][0]["ports"] = json!("eighty");
    let answer = webhook::review(&injector(), review.to_string().as_bytes()).unwrap();
    assert_eq!(answer["response"]["allowed"], false);
    assert!(answer["response"]["status"]["message"]
        .as_str()
        .unwrap()
        .contains("spec.containers"));
}

/// One HTTPS request to the webhook, verified like the API server does.
async fn post(
    addr: std::net::SocketAddr,
    ca: &CertificateAuthority,
    name: &str,
    body: Vec<u8>,
) -> std::io::Result<(http::StatusCode, Value)> {
    let roots = ca.trust_bundle().root_store(SystemTime::now()).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(sane_certs::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let server_name = rustls::pki_types::ServerName::try_from(name.to_string()).unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(server_name, tcp)
        .await?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = http::Request::post(format!("https://{name}{}", webhook::PATH))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    let status = resp.status();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    Ok((status, serde_json::from_slice(&bytes).unwrap()))
}

#[tokio::test]
async fn served_over_https_with_a_mesh_ca_certificate() {
    let ca = Arc::new(
        CertificateAuthority::generate(
            &TrustDomain::new("mesh.test").unwrap(),
            CaOptions::default(),
        )
        .unwrap(),
    );
    let server = WebhookServer::bind(
        "127.0.0.1:0".parse().unwrap(),
        ca.clone(),
        vec![DNS_NAME.to_string()],
        Arc::new(injector()),
    )
    .await
    .unwrap();
    let addr = server.addr();
    let shutdown = CancellationToken::new();
    let serving = tokio::spawn(server.run(shutdown.clone()));

    let review = request();
    let (status, answer) = tokio::time::timeout(
        Duration::from_secs(10),
        post(addr, &ca, DNS_NAME, review.to_string().into_bytes()),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(status, http::StatusCode::OK);
    let pod = patched(&review, &answer);
    assert_eq!(pod["spec"]["initContainers"][1]["name"], "sane-proxy");

    // Garbage is a 400 with a reason, and the server keeps serving.
    let (status, answer) = post(addr, &ca, DNS_NAME, b"{\"kind\":".to_vec())
        .await
        .unwrap();
    assert_eq!(status, http::StatusCode::BAD_REQUEST);
    assert!(answer["error"].as_str().unwrap().contains("not JSON"));

    // The certificate is only good for the webhook's name.
    let err = post(addr, &ca, "evil.sane-system.svc", Vec::new())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("not valid for name"), "{err}");

    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(10), serving)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn the_binary_serves_the_webhook_with_its_ca() {
    use tokio::io::AsyncBufReadExt;
    let dir = tempfile::tempdir().unwrap();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_sane-control-plane"))
        .args(["--xds-addr", "127.0.0.1:0", "--api-addr", "127.0.0.1:0"])
        .args(["--webhook-addr", "127.0.0.1:0"])
        .args([
            "--webhook-dns-name",
            DNS_NAME,
            "--trust-domain",
            "mesh.test",
        ])
        .arg("--data-dir")
        .arg(dir.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let addr = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if let Some(addr) = line.strip_prefix("listening name=webhook addr=") {
                return addr.parse::<std::net::SocketAddr>().unwrap();
            }
        }
        panic!("no webhook listening line")
    })
    .await
    .unwrap();
    // The CA the control plane generated into its data dir is the one the
    // API server would get as caBundle.
    let ca_pem =
        std::fs::read_to_string(dir.path().join("ca").join(sane_certs::ca::CA_CERT_FILE)).unwrap();
    let bundle = sane_certs::TrustBundle::from_pem(&ca_pem).unwrap();
    let roots = bundle.root_store(SystemTime::now()).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(sane_certs::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from(DNS_NAME).unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(conn);
    let review = request();
    let req = http::Request::post(webhook::PATH)
        .header("host", DNS_NAME)
        .body(Full::new(Bytes::from(review.to_string())))
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), http::StatusCode::OK);
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let answer: Value = serde_json::from_slice(&bytes).unwrap();
    let pod = patched(&review, &answer);
    let bootstrap: Bootstrap = serde_yaml::from_str(
        pod["metadata"]["annotations"]["sane.mesh/bootstrap"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(bootstrap.identity.unwrap().trust_domain, "mesh.test");
    child.kill().await.unwrap();
}
