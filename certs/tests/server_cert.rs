//! DNS-named serving certificates (the control plane's admission webhook):
//! a plain web PKI client trusting only the mesh root accepts the server for
//! its DNS names and refuses it for any other.

mod support;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use sane_certs::Error;
use support::ca;
use tokio::io::{duplex, AsyncReadExt, AsyncWriteExt};
use tokio_rustls::{TlsAcceptor, TlsConnector};
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

const HOUR: Duration = Duration::from_secs(3600);

fn names() -> Vec<String> {
    vec![
        "sane-control-plane.sane-system.svc".to_string(),
        "sane-control-plane.sane-system.svc.cluster.local".to_string(),
    ]
}

/// A client as the Kubernetes API server is one: web PKI verification of
/// the DNS name against the caBundle (the mesh root).
fn client(ca: &sane_certs::CertificateAuthority) -> ClientConfig {
    let roots = ca.trust_bundle().root_store(SystemTime::now()).unwrap();
    ClientConfig::builder_with_provider(sane_certs::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth()
}

async fn connect(
    server: rustls::ServerConfig,
    client: ClientConfig,
    name: &str,
) -> std::io::Result<()> {
    let (client_io, server_io) = duplex(64 * 1024);
    let acceptor = TlsAcceptor::from(Arc::new(server));
    let connector = TlsConnector::from(Arc::new(client));
    let name = ServerName::try_from(name.to_string()).unwrap();
    let serve = async move {
        let mut tls = acceptor.accept(server_io).await?;
        tls.write_all(b"ok").await?;
        tls.shutdown().await
    };
    let call = async move {
        let mut tls = connector.connect(name, client_io).await?;
        let mut buf = Vec::new();
        tls.read_to_end(&mut buf).await?;
        assert_eq!(buf, b"ok");
        Ok::<_, std::io::Error>(())
    };
    let (served, called) =
        tokio::time::timeout(Duration::from_secs(10), async { tokio::join!(serve, call) })
            .await
            .expect("handshake did not finish");
    called?;
    served
}

#[tokio::test]
async fn serves_its_dns_names_to_a_client_trusting_the_mesh_root() {
    let ca = ca();
    let cert = ca.sign_server_cert(&names(), HOUR).unwrap();
    // TLS 1.2 suites by the server's order (testssl's "server order").
    assert!(cert.server_config().unwrap().ignore_client_order);
    for name in names() {
        connect(cert.server_config().unwrap(), client(&ca), &name)
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    let err = connect(
        cert.server_config().unwrap(),
        client(&ca),
        "other.sane-system.svc",
    )
    .await
    .unwrap_err();
    assert!(
        err.to_string().contains("not valid for name"),
        "wrong name must be refused: {err}"
    );
}

#[test]
fn carries_dns_sans_only_and_no_key_in_its_output() {
    let ca = ca();
    let cert = ca.sign_server_cert(&names(), HOUR).unwrap();
    let pem = cert.chain_pem();
    assert!(!pem.contains("PRIVATE KEY"));
    assert!(!format!("{cert:?}").contains("PRIVATE"));
    let der = rustls_pki_types::pem::PemObject::from_pem_slice(pem.as_bytes())
        .map(|c: rustls_pki_types::CertificateDer<'static>| c)
        .unwrap();
    let (_, x509) = X509Certificate::from_der(&der).unwrap();
    let san = x509.subject_alternative_name().unwrap().unwrap();
    let dns: Vec<&str> = san
        .value
        .general_names
        .iter()
        .map(|n| match n {
            GeneralName::DNSName(d) => *d,
            other => panic!("unexpected SAN {other:?}"),
        })
        .collect();
    assert_eq!(dns, names());
    assert!(!x509.is_ca());
    let lifetime = cert
        .not_after()
        .duration_since(SystemTime::now())
        .unwrap_or_default();
    assert!(lifetime <= HOUR && lifetime > HOUR - Duration::from_secs(60));
}

#[test]
fn refuses_no_names_bad_names_and_tiny_ttls() {
    let ca = ca();
    assert!(matches!(
        ca.sign_server_cert(&[], HOUR),
        Err(Error::InvalidDnsName { .. })
    ));
    let err = ca
        .sign_server_cert(&["bücher.example".to_string()], HOUR)
        .unwrap_err();
    assert!(err.to_string().contains("bücher.example"), "{err}");
    assert!(matches!(
        ca.sign_server_cert(&names(), Duration::from_millis(10)),
        Err(Error::TtlTooShort { .. })
    ));
}

/// The control plane's xDS port: a proxy dials it by IP, verifies it
/// against the root it was given, and presents its workload certificate
/// once it has one; the server reads that certificate's SPIFFE id.
#[tokio::test]
async fn control_plane_configs_verify_the_server_by_ip_and_read_an_optional_client_id() {
    use sane_certs::{control_plane_client_config, control_plane_server_config};
    let ca = ca();
    let cert = ca
        .sign_server_cert(&["localhost".to_string(), "127.0.0.1".to_string()], HOUR)
        .unwrap();
    let resolver = Arc::new(rustls::sign::SingleCertAndKey::from(cert.certified_key()));
    let server = || {
        control_plane_server_config(
            resolver.clone(),
            &ca.trust_bundle(),
            &[sane_certs::TrustDomain::new("mesh.test").unwrap()],
            &[b"h2"],
        )
        .unwrap()
    };
    let bundle = ca.trust_bundle();

    // No client certificate: accepted (a proxy before its first certificate).
    let anonymous = control_plane_client_config(&bundle, None, &[b"h2"]).unwrap();
    let (client_tls, server_tls) = handshake(server(), anonymous, "127.0.0.1").await;
    client_tls.unwrap();
    let server_tls = server_tls.unwrap();
    assert!(server_tls.get_ref().1.peer_certificates().is_none());

    // With a workload certificate: the server sees its SPIFFE id.
    let workload = support::certify(&ca, &support::id("prod", "web"));
    let mutual = control_plane_client_config(&bundle, Some(&workload), &[b"h2"]).unwrap();
    let (client_tls, server_tls) = handshake(server(), mutual, "127.0.0.1").await;
    let client_tls = client_tls.unwrap();
    assert_eq!(client_tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let seen = sane_certs::peer_identity_of(server_tls.unwrap().get_ref().1).unwrap();
    assert_eq!(seen, support::id("prod", "web"));

    // The wrong root: the client refuses the server, naming the reason.
    let other = support::ca();
    let wrong = control_plane_client_config(&other.trust_bundle(), None, &[b"h2"]).unwrap();
    let (client_tls, _) = handshake(server(), wrong, "127.0.0.1").await;
    let err = client_tls.unwrap_err();
    assert!(err.to_string().contains("UnknownIssuer"), "{err}");

    // An address the certificate does not name is refused too.
    let anonymous = control_plane_client_config(&bundle, None, &[b"h2"]).unwrap();
    let (client_tls, _) = handshake(server(), anonymous, "10.1.2.3").await;
    let err = client_tls.unwrap_err();
    assert!(err.to_string().contains("not valid for name"), "{err}");

    // A client certificate from another CA is refused by the server.
    let foreign = support::certify(&other, &support::id("prod", "web"));
    let forged = control_plane_client_config(&bundle, Some(&foreign), &[b"h2"]).unwrap();
    let (_, server_tls) = handshake(server(), forged, "127.0.0.1").await;
    let err = server_tls.unwrap_err();
    assert!(err.to_string().contains("UnknownIssuer"), "{err}");
}

#[test]
fn operator_serving_certificates_load_from_pem_and_must_match_their_key() {
    let ca = ca();
    let (chain, key) = ca
        .sign_external_server_cert(&["api.example".to_string()], HOUR)
        .unwrap();
    let cert = sane_certs::ServerCert::from_pem(&chain, &key).unwrap();
    assert!(cert.not_after() > SystemTime::now());
    let (_, other_key) = ca
        .sign_external_server_cert(&["api.example".to_string()], HOUR)
        .unwrap();
    let err = sane_certs::ServerCert::from_pem(&chain, &other_key).unwrap_err();
    assert!(err.to_string().contains("key"), "{err}");
    let err = sane_certs::ServerCert::from_pem(&chain, "nothing").unwrap_err();
    assert!(err.to_string().contains("PRIVATE KEY"), "{err}");
}

type Pair = (
    std::io::Result<tokio_rustls::client::TlsStream<tokio::io::DuplexStream>>,
    std::io::Result<tokio_rustls::server::TlsStream<tokio::io::DuplexStream>>,
);

async fn handshake(server: rustls::ServerConfig, client: ClientConfig, name: &str) -> Pair {
    let (client_io, server_io) = duplex(64 * 1024);
    let acceptor = TlsAcceptor::from(Arc::new(server));
    let connector = TlsConnector::from(Arc::new(client));
    let name = ServerName::try_from(name.to_string()).unwrap();
    tokio::time::timeout(Duration::from_secs(10), async {
        tokio::join!(
            connector.connect(name, client_io),
            acceptor.accept(server_io)
        )
    })
    .await
    .expect("handshake did not finish")
}
