//! Only the mesh's own trust domain (and listed federated ones) gets in, end
//! to end over real TLS to a real sidecar.
//!
//! The control plane signs with an operator root that names no trust domain
//! (a company root), so another mesh — `evil.local` — can have a CA under
//! the same root. Its certificates chain to the mesh root; the probe found
//! them accepted at the inbound (and matched by namespace policies).
//!
//! ```text
//! test (cert spiffe://cluster.local/…) ══mTLS══▶ sidecar ─▶ echo   200
//! test (cert spiffe://evil.local/…)    ══mTLS══▶ sidecar ✗          handshake refused
//! test (cert spiffe://evil.local/…)    ══mTLS══▶ sidecar federating evil.local ─▶ echo   200
//! ```

use rustls::pki_types::ServerName;
use sane_certs::testing::{operator_root, OperatorRoot};
use sane_certs::{
    CaOptions, CertificateAuthority, CertifiedIdentity, SpiffeId, SpiffeIdPattern, TrustBundle,
    TrustDomain, WorkloadKey,
};
use sane_e2e::harness::{bins, metric_value, within, ControlPlane, EchoApp, Sidecar, INBOUND};
use sane_xds_proto::{
    AdminConfig, Bootstrap, Direction, IdentityConfig, Listener, MeshResources, Node, Protocol,
    WorkloadPort,
};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

const TEST_DEADLINE: Duration = Duration::from_secs(60);
const MESH: &str = "cluster.local";
const EVIL: &str = "evil.local";

fn td(name: &str) -> TrustDomain {
    name.parse().unwrap()
}

/// A certificate for `spiffe://<trust_domain>/ns/default/sa/probe` from a
/// CA of `trust_domain` under `root`.
fn certify(root: &OperatorRoot, trust_domain: &str) -> CertifiedIdentity {
    let ca = CertificateAuthority::from_pem(
        &td(trust_domain),
        &root.cert_pem,
        &root.key_pem,
        CaOptions::default(),
    )
    .unwrap();
    let id = SpiffeId::new(td(trust_domain), "default", "probe").unwrap();
    let key = WorkloadKey::generate().unwrap();
    let csr = key.csr_pem(&id).unwrap();
    let issued = ca.sign_csr(csr.as_bytes(), &id, None).unwrap();
    CertifiedIdentity::new(key, &issued.chain_pem).unwrap()
}

fn server_bootstrap(
    name: &str,
    cp: &ControlPlane,
    token: &Path,
    app: &EchoApp,
    federated: &[&str],
) -> Bootstrap {
    Bootstrap {
        node: Node {
            id: name.into(),
            workload: name.into(),
            ..Default::default()
        },
        admin: AdminConfig {
            address: "127.0.0.1:0".into(),
        },
        drain_timeout: 2_000,
        identity: Some(IdentityConfig {
            service_account: "echo".into(),
            ca_address: cp.xds_url(),
            root_cert_file: cp.root_cert_file(),
            token_file: token.display().to_string(),
            federated_trust_domains: federated.iter().map(|f| f.to_string()).collect(),
            ..Default::default()
        }),
        resources: MeshResources {
            // Mutual TLS is STRICT by default once the proxy has an identity.
            listeners: vec![Listener {
                name: INBOUND.into(),
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
    }
}

/// Connects to `inbound` over mutual TLS presenting `leaf`, names `port`
/// in the transport header (HTTP/1.1 framing) and GETs `/`. Returns what
/// came back, or the error that ended the connection.
async fn mtls_get(
    inbound: SocketAddr,
    bundle: &TrustBundle,
    leaf: &CertifiedIdentity,
    port: u16,
) -> Result<String, String> {
    let expected = SpiffeIdPattern::any_in(&td(MESH));
    let config = sane_certs::client_config(bundle, leaf, expected).map_err(|e| e.to_string())?;
    let tcp = TcpStream::connect(inbound)
        .await
        .map_err(|e| e.to_string())?;
    let name = ServerName::IpAddress(Ipv4Addr::LOCALHOST.into());
    let mut tls = TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let mut msg = b"\0sane\x01".to_vec();
    msg.extend_from_slice(&port.to_be_bytes());
    msg.push(2);
    msg.extend_from_slice(b"GET / HTTP/1.1\r\nhost: echo\r\nconnection: close\r\n\r\n");
    tls.write_all(&msg)
        .await
        .map_err(|e| format!("write: {e}"))?;
    let mut out = Vec::new();
    // TLS 1.3: the client finishes its handshake first and learns of a
    // refused certificate from the alert it reads here.
    tls.read_to_end(&mut out)
        .await
        .map_err(|e| format!("read: {e}"))?;
    Ok(String::from_utf8_lossy(&out).into_owned())
}

async fn inbound_handshake_failures(sidecar: &Sidecar) -> f64 {
    let metrics = sidecar.metrics().await.unwrap();
    let labels = [("direction", "inbound")];
    metric_value(&metrics, "sane_tls_handshake_failures_total", &labels).unwrap_or(0.0)
}

#[tokio::test]
async fn a_mesh_root_certificate_of_another_trust_domain_is_refused_at_the_inbound() {
    let bins = bins();
    let dir = tempfile::tempdir().unwrap();
    let root = operator_root("Shared Operator Root").unwrap();
    let (chain_path, key_path) = (dir.path().join("ca.pem"), dir.path().join("ca-key.pem"));
    std::fs::write(&chain_path, &root.cert_pem).unwrap();
    std::fs::write(&key_path, &root.key_pem).unwrap();
    let args = [
        "--ca-cert-chain",
        chain_path.to_str().unwrap(),
        "--ca-key",
        key_path.to_str().unwrap(),
    ];
    let cp = ControlPlane::start(&dir.path().join("cp"), &args).await;
    let app = EchoApp::start_with(&bins.echo, "echo-1", "echo").await;
    let token = cp.issue_token(dir.path(), "default", "echo").await;
    let strict = server_bootstrap("echo-1", &cp, &token, &app, &[]);
    let server = Sidecar::start(&bins.proxy, dir.path(), "echo-1", strict).await;
    let federating = server_bootstrap("echo-2", &cp, &token, &app, &[EVIL]);
    let federated = Sidecar::start(&bins.proxy, dir.path(), "echo-2", federating).await;

    let bundle = TrustBundle::from_pem(&root.cert_pem).unwrap();
    let ours = certify(&root, MESH);
    let evil = certify(&root, EVIL);
    let port = app.addrs.http.port();
    within(TEST_DEADLINE, async {
        // Our trust domain, same root: served, the app learns who called.
        let rsp = mtls_get(server.listener(INBOUND), &bundle, &ours, port)
            .await
            .unwrap();
        assert!(rsp.starts_with("HTTP/1.1 200"), "{rsp}");
        assert!(
            rsp.contains("spiffe://cluster.local/ns/default/sa/probe"),
            "{rsp}"
        );

        // Another trust domain under the same root: the handshake is
        // refused, nothing reaches the app.
        let before = inbound_handshake_failures(&server).await;
        let rsp = mtls_get(server.listener(INBOUND), &bundle, &evil, port).await;
        println!("evil.local certificate: {rsp:?}");
        assert!(
            !matches!(&rsp, Ok(text) if text.contains("HTTP/1.1")),
            "a foreign trust domain was served: {rsp:?}"
        );
        let after = inbound_handshake_failures(&server).await;
        assert_eq!(
            after,
            before + 1.0,
            "the refusal is a failed inbound handshake"
        );

        // Listed as federated, the same certificate is accepted.
        let rsp = mtls_get(federated.listener(INBOUND), &bundle, &evil, port)
            .await
            .unwrap();
        assert!(rsp.starts_with("HTTP/1.1 200"), "{rsp}");
        assert!(
            rsp.contains("spiffe://evil.local/ns/default/sa/probe"),
            "{rsp}"
        );
    })
    .await;
}
