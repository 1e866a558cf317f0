//! Real TLS handshakes between mesh peers, in memory over `tokio::io::duplex`:
//! the configs from `sane_certs::tls` must authenticate both sides by SPIFFE
//! id and refuse everything else.

mod support;

use std::io;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls::time_provider::TimeProvider;
use rustls::{ClientConfig, ServerConfig};
use rustls_pki_types::{ServerName, UnixTime};
use sane_certs::{
    client_config, peer_identity_of, server_config, server_config_federated, CertifiedIdentity,
    Error, SpiffeId, SpiffeIdPattern, SpiffeServerVerifier, TrustBundle,
};
use support::{ca, certify, id, shared_root_cas};
use tokio::io::{duplex, AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio_rustls::{client, server, TlsAcceptor, TlsConnector};

type Handshake = (
    io::Result<server::TlsStream<DuplexStream>>,
    io::Result<client::TlsStream<DuplexStream>>,
);

/// Runs both handshakes concurrently; the server name is an IP, as the proxy
/// dials endpoints, and is not what identifies the server.
async fn handshake(server: ServerConfig, client: ClientConfig) -> Handshake {
    let (client_io, server_io) = duplex(64 * 1024);
    let acceptor = TlsAcceptor::from(Arc::new(server));
    let connector = TlsConnector::from(Arc::new(client));
    let name = ServerName::IpAddress(Ipv4Addr::new(10, 0, 0, 7).into());
    tokio::time::timeout(Duration::from_secs(10), async {
        tokio::join!(
            acceptor.accept(server_io),
            connector.connect(name, client_io)
        )
    })
    .await
    .expect("handshake did not finish")
}

/// The crate error a failed handshake carries, if the failure came from one
/// of our verifiers.
fn sane_error(err: &io::Error) -> Option<&Error> {
    let tls = err.get_ref()?.downcast_ref::<rustls::Error>()?;
    let rustls::Error::InvalidCertificate(rustls::CertificateError::Other(other)) = tls else {
        return None;
    };
    other.0.downcast_ref::<Error>()
}

fn configs(
    bundle: &TrustBundle,
    server_identity: &CertifiedIdentity,
    client_identity: &CertifiedIdentity,
    expected: SpiffeIdPattern,
) -> (ServerConfig, ClientConfig) {
    (
        server_config(bundle, server_identity).unwrap(),
        client_config(bundle, client_identity, expected).unwrap(),
    )
}

#[tokio::test]
async fn mutual_tls_both_sides_see_the_peer_identity() {
    let ca = ca();
    let bundle = ca.trust_bundle();
    let server_id = id("prod", "api");
    let client_id = id("prod", "web");
    let server_leaf = certify(&ca, &server_id);
    let client_leaf = certify(&ca, &client_id);
    let (server_cfg, client_cfg) =
        configs(&bundle, &server_leaf, &client_leaf, (&server_id).into());

    let (server, client) = handshake(server_cfg, client_cfg).await;
    let mut server = server.expect("server handshake");
    let mut client = client.expect("client handshake");

    assert_eq!(peer_identity_of(server.get_ref().1).unwrap(), client_id);
    assert_eq!(peer_identity_of(client.get_ref().1).unwrap(), server_id);
    assert_eq!(client.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    assert_eq!(
        client.get_ref().1.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_3)
    );

    client.write_all(b"ping").await.unwrap();
    let mut buf = [0u8; 4];
    server.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"ping");
}

#[tokio::test]
async fn wildcard_expectation_accepts_any_account_of_the_namespace() {
    let ca = ca();
    let bundle = ca.trust_bundle();
    let server_leaf = certify(&ca, &id("prod", "api"));
    let client_leaf = certify(&ca, &id("prod", "web"));
    let expected = "spiffe://mesh.test/ns/prod/sa/*".parse().unwrap();
    let (server_cfg, client_cfg) = configs(&bundle, &server_leaf, &client_leaf, expected);

    let (server, client) = handshake(server_cfg, client_cfg).await;
    server.unwrap();
    client.unwrap();
}

#[tokio::test]
async fn client_expecting_another_identity_fails_naming_both() {
    let ca = ca();
    let bundle = ca.trust_bundle();
    let actual = id("prod", "api");
    let expected = id("prod", "payments");
    let server_leaf = certify(&ca, &actual);
    let client_leaf = certify(&ca, &id("prod", "web"));
    let (server_cfg, client_cfg) = configs(&bundle, &server_leaf, &client_leaf, (&expected).into());

    let (server, client) = handshake(server_cfg, client_cfg).await;
    assert!(server.is_err(), "the server sees the client's alert");
    let err = client.expect_err("the client must refuse the server");
    let message = err.to_string();
    assert!(
        message.contains(&expected.to_string()) && message.contains(&actual.to_string()),
        "{message}"
    );
    match sane_error(&err) {
        Some(Error::UnexpectedPeerIdentity {
            expected: e,
            actual: a,
        }) => {
            assert_eq!(*e, SpiffeIdPattern::from(&expected));
            assert_eq!(*a, actual);
        }
        other => panic!("unexpected error {other:?} from {err}"),
    }
}

#[tokio::test]
async fn server_with_a_certificate_from_another_ca_is_rejected() {
    let ours = ca();
    let theirs = ca();
    let server_id = id("prod", "api");
    let server_leaf = certify(&theirs, &server_id);
    let client_leaf = certify(&ours, &id("prod", "web"));
    let server_cfg = server_config(&theirs.trust_bundle(), &server_leaf).unwrap();
    let client_cfg =
        client_config(&ours.trust_bundle(), &client_leaf, (&server_id).into()).unwrap();

    let (_, client) = handshake(server_cfg, client_cfg).await;
    let err = client.expect_err("an unknown issuer must be refused");
    let tls = err
        .get_ref()
        .and_then(|e| e.downcast_ref::<rustls::Error>());
    assert!(
        matches!(
            tls,
            Some(rustls::Error::InvalidCertificate(
                rustls::CertificateError::UnknownIssuer
            ))
        ),
        "{err}"
    );
}

#[tokio::test]
async fn client_with_a_certificate_from_another_ca_is_rejected() {
    let ours = ca();
    let theirs = ca();
    let server_id = id("prod", "api");
    let server_leaf = certify(&ours, &server_id);
    let client_leaf = certify(&theirs, &id("prod", "web"));
    // The client trusts both roots, so only the server's check is exercised.
    let both = ours.trust_bundle().with_retiring(
        &theirs.trust_bundle(),
        SystemTime::now() + Duration::from_secs(3600),
    );
    let server_cfg = server_config(&ours.trust_bundle(), &server_leaf).unwrap();
    let client_cfg = client_config(&both, &client_leaf, (&server_id).into()).unwrap();

    let (server, client) = handshake(server_cfg, client_cfg).await;
    let err = server.expect_err("the server must refuse the client");
    assert!(err.to_string().contains("UnknownIssuer"), "{err}");
    // In TLS 1.3 the client finishes first and learns of the refusal on read.
    if let Ok(mut client) = client {
        let mut buf = [0u8; 1];
        assert!(client.read(&mut buf).await.is_err());
    }
}

#[tokio::test]
async fn tls12_fallback_uses_ecdhe_with_aead() {
    let ca = ca();
    let bundle = ca.trust_bundle();
    let server_id = id("prod", "api");
    let server_leaf = certify(&ca, &server_id);
    let client_leaf = certify(&ca, &id("prod", "web"));
    let provider = sane_certs::tls::provider();
    let verifier = SpiffeServerVerifier::new(&bundle, (&server_id).into(), &provider).unwrap();
    let client_cfg = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS12])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_cert_resolver(Arc::new(rustls::sign::SingleCertAndKey::from(
            client_leaf.certified_key(),
        )));

    let (server, client) =
        handshake(server_config(&bundle, &server_leaf).unwrap(), client_cfg).await;
    let server = server.unwrap();
    let client = client.unwrap();
    let conn = client.get_ref().1;
    assert_eq!(
        conn.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_2)
    );
    let suite = format!("{:?}", conn.negotiated_cipher_suite().unwrap().suite());
    assert!(suite.starts_with("TLS_ECDHE_ECDSA_WITH_"), "{suite}");
    assert!(
        suite.contains("GCM") || suite.contains("CHACHA20_POLY1305"),
        "{suite}"
    );
    assert_eq!(
        peer_identity_of(server.get_ref().1).unwrap(),
        id("prod", "web")
    );
}

/// A clock stuck at one instant, to run a handshake "later".
#[derive(Debug)]
struct FixedTime(SystemTime);

impl TimeProvider for FixedTime {
    fn current_time(&self) -> Option<UnixTime> {
        Some(UnixTime::since_unix_epoch(
            self.0.duration_since(SystemTime::UNIX_EPOCH).ok()?,
        ))
    }
}

#[tokio::test]
async fn old_root_is_accepted_during_rotation_grace_and_refused_after() {
    let old = ca();
    let new = ca();
    let grace_end = SystemTime::now() + Duration::from_secs(3600);
    let bundle = new
        .trust_bundle()
        .with_retiring(&old.trust_bundle(), grace_end);
    let server_id = id("prod", "api");
    let server_leaf = certify(&new, &server_id);
    let client_leaf = certify(&old, &id("prod", "web"));
    let (server_cfg, client_cfg) =
        configs(&bundle, &server_leaf, &client_leaf, (&server_id).into());

    let (server, client) = handshake(server_cfg.clone(), client_cfg.clone()).await;
    server.expect("the old root is still trusted during the grace period");
    client.unwrap();

    let mut later = server_cfg;
    later.time_provider = Arc::new(FixedTime(grace_end + Duration::from_secs(60)));
    let (server, _) = handshake(later, client_cfg).await;
    let err = server.expect_err("the old root is retired");
    assert!(err.to_string().contains("UnknownIssuer"), "{err}");
}

/// testssl flags a TLS 1.2 server that takes the client's cipher order: a
/// client listing a suite the server likes less first must still get the
/// server's first choice (the first TLS 1.2 suite of the mesh provider).
#[tokio::test]
async fn tls12_server_prefers_its_own_cipher_suite_order() {
    use rustls::crypto::CryptoProvider;
    let ca = ca();
    let bundle = ca.trust_bundle();
    let server_id = id("prod", "api");
    let server_leaf = certify(&ca, &server_id);
    let client_leaf = certify(&ca, &id("prod", "web"));
    let mesh = sane_certs::tls::provider();
    let server_tls12: Vec<_> = (mesh.cipher_suites.iter())
        .filter(|s| s.version() == &rustls::version::TLS12)
        .copied()
        .collect();
    let preferred = server_tls12[0].suite();
    // The client offers the server's TLS 1.2 suites in reverse order.
    let reversed = CryptoProvider {
        cipher_suites: server_tls12.iter().rev().copied().collect(),
        ..(*mesh).clone()
    };
    assert_ne!(reversed.cipher_suites[0].suite(), preferred);
    let reversed = Arc::new(reversed);
    let verifier = SpiffeServerVerifier::new(&bundle, (&server_id).into(), &reversed).unwrap();
    let client_cfg = ClientConfig::builder_with_provider(reversed)
        .with_protocol_versions(&[&rustls::version::TLS12])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_cert_resolver(Arc::new(rustls::sign::SingleCertAndKey::from(
            client_leaf.certified_key(),
        )));

    let server_cfg = server_config(&bundle, &server_leaf).unwrap();
    assert!(server_cfg.ignore_client_order);
    let (server, client) = handshake(server_cfg, client_cfg).await;
    server.unwrap();
    let client = client.unwrap();
    let conn = client.get_ref().1;
    assert_eq!(
        conn.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_2)
    );
    let negotiated = conn.negotiated_cipher_suite().unwrap().suite();
    println!(
        "client offered {:?} first; negotiated {negotiated:?}",
        server_tls12.last().unwrap().suite()
    );
    assert_eq!(negotiated, preferred, "the server's first choice wins");
}

/// A client certificate that chains to the mesh root but names another trust
/// domain (the root is an operator root shared with another mesh) is
/// refused by the server's handshake, naming the trust domain; listed as
/// federated, it is accepted and its id is the peer identity.
#[tokio::test]
async fn client_of_another_trust_domain_under_the_same_root_is_refused_unless_federated() {
    let cas = shared_root_cas(&["mesh.test", "evil.local"]);
    let (ours, evil_ca) = (&cas[0], &cas[1]);
    let bundle = ours.trust_bundle();
    assert_eq!(bundle, evil_ca.trust_bundle(), "one root for both");
    let server_id = id("prod", "api");
    let server_leaf = certify(ours, &server_id);
    let evil_td = evil_ca.trust_domain().clone();
    let evil = SpiffeId::new(evil_td.clone(), "prod", "web").unwrap();
    let client_leaf = certify(evil_ca, &evil);
    let client_cfg = || client_config(&bundle, &client_leaf, (&server_id).into()).unwrap();

    let (server, client) =
        handshake(server_config(&bundle, &server_leaf).unwrap(), client_cfg()).await;
    let err = server.expect_err("the server must refuse a foreign trust domain");
    match sane_error(&err) {
        Some(Error::UntrustedTrustDomain { actual, .. }) => assert_eq!(*actual, evil),
        other => panic!("unexpected error {other:?} from {err}"),
    }
    if let Ok(mut client) = client {
        let mut buf = [0u8; 1];
        assert!(client.read(&mut buf).await.is_err());
    }

    let federated = server_config_federated(&bundle, &server_leaf, &[evil_td]).unwrap();
    let (server, client) = handshake(federated, client_cfg()).await;
    let server = server.expect("a federated trust domain is accepted");
    client.unwrap();
    assert_eq!(peer_identity_of(server.get_ref().1).unwrap(), evil);
}
