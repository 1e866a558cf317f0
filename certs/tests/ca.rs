//! The CA end to end: issuing, refusing, persisting, operator chains and
//! root rotation, checked through the public API and by parsing the results.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls_pki_types::CertificateDer;
use sane_certs::ca::{CA_CERT_FILE, CA_KEY_FILE};
use sane_certs::{
    CaOptions, CertificateAuthority, CertifiedIdentity, Error, SpiffeClientVerifier, SpiffeId,
    TrustBundle, TrustDomain, WorkloadKey,
};
use support::{ca, certify, id, td, TempDir};
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

const HOUR: Duration = Duration::from_secs(3600);
const DAY: Duration = Duration::from_secs(24 * 3600);

fn chain_der(pem: &str) -> Vec<CertificateDer<'static>> {
    use rustls_pki_types::pem::PemObject;
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<_, _>>()
        .unwrap()
}

fn assert_close(actual: SystemTime, expected: SystemTime) {
    let diff = match actual.duration_since(expected) {
        Ok(d) => d,
        Err(e) => e.duration(),
    };
    assert!(
        diff <= Duration::from_secs(5),
        "{actual:?} is not close to {expected:?}"
    );
}

#[test]
fn issued_leaf_verifies_and_reports_its_validity() {
    let ca = ca();
    let identity = id("prod", "web");
    let key = WorkloadKey::generate().unwrap();
    let before = SystemTime::now();
    let issued = ca
        .sign_csr(key.csr_pem(&identity).unwrap().as_bytes(), &identity, None)
        .unwrap();

    assert_eq!(issued.identity, identity);
    assert_close(issued.not_before, before - Duration::from_secs(60));
    assert_close(issued.not_after, before + DAY);
    let chain = chain_der(&issued.chain_pem);
    assert_eq!(chain.len(), 1, "a root CA's leaf chain is the leaf alone");

    let certified = CertifiedIdentity::new(key, &issued.chain_pem).unwrap();
    assert_eq!(certified.identity(), &identity);
    assert_eq!(certified.serial(), &issued.serial);
    assert_eq!(certified.not_after(), issued.not_after);
    assert!(certified.is_valid_at(SystemTime::now()));
    certified
        .verify(&ca.trust_bundle(), SystemTime::now())
        .unwrap();
    assert_eq!(sane_certs::peer_identity(&chain[0]).unwrap(), identity);
}

#[test]
fn leaf_has_one_uri_san_and_no_subject() {
    let ca = ca();
    let identity = id("prod", "web");
    // A CSR asking for a CN and a DNS name: both are ignored.
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(vec!["admin.example.com".to_owned()]).unwrap();
    params.distinguished_name.push(DnType::CommonName, "admin");
    let csr = params.serialize_request(&key).unwrap().pem().unwrap();
    let issued = ca.sign_csr(csr.as_bytes(), &identity, None).unwrap();

    let chain = chain_der(&issued.chain_pem);
    let (_, leaf) = X509Certificate::from_der(&chain[0]).unwrap();
    assert_eq!(leaf.subject().iter_common_name().count(), 0, "no CN");
    assert_eq!(leaf.subject().iter().count(), 0, "empty subject");
    let san = leaf.subject_alternative_name().unwrap().unwrap();
    assert!(san.critical, "SAN is critical when the subject is empty");
    let uri = identity.to_string();
    assert!(
        matches!(san.value.general_names.as_slice(), [GeneralName::URI(u)] if *u == uri),
        "{:?}",
        san.value.general_names
    );
    assert!(!leaf.basic_constraints().unwrap().unwrap().value.ca);
    let usage = leaf.key_usage().unwrap().unwrap().value;
    assert!(usage.digital_signature() && !usage.key_cert_sign());
    let eku = leaf.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.server_auth && eku.client_auth && !eku.any);
    assert_eq!(leaf.raw_serial(), issued.serial.as_bytes());
}

#[test]
fn csr_asking_for_another_identity_is_refused() {
    let ca = ca();
    let allowed = id("prod", "web");
    let requested = id("prod", "payments");
    let key = WorkloadKey::generate().unwrap();
    let csr = key.csr_pem(&requested).unwrap();

    let err = ca.sign_csr(csr.as_bytes(), &allowed, None).unwrap_err();
    let message = err.to_string();
    match err {
        Error::IdentityMismatch {
            requested: r,
            allowed: a,
        } => {
            assert_eq!(r, requested.to_string());
            assert_eq!(a, allowed);
        }
        other => panic!("expected IdentityMismatch, got {other}"),
    }
    assert!(message.contains(&requested.to_string()) && message.contains(&allowed.to_string()));
}

#[test]
fn der_csr_is_accepted_and_a_tampered_one_is_not() {
    let ca = ca();
    let identity = id("prod", "web");
    let key = WorkloadKey::generate().unwrap();
    let mut der = key.csr_der(&identity).unwrap();
    ca.sign_csr(&der, &identity, None).unwrap();

    let last = der.len() - 1;
    der[last] ^= 0x01;
    let err = ca.sign_csr(&der, &identity, None).unwrap_err();
    assert!(matches!(err, Error::InvalidCsr { .. }), "{err}");
    let err = ca.sign_csr(b"not a csr", &identity, None).unwrap_err();
    assert!(matches!(err, Error::InvalidCsr { .. }), "{err}");
}

#[test]
fn identity_from_another_trust_domain_is_refused() {
    let ca = ca();
    let foreign: sane_certs::SpiffeId = "spiffe://elsewhere/ns/prod/sa/web".parse().unwrap();
    let key = WorkloadKey::generate().unwrap();
    let err = ca
        .sign_csr(key.csr_pem(&foreign).unwrap().as_bytes(), &foreign, None)
        .unwrap_err();
    assert!(matches!(err, Error::ForeignTrustDomain { .. }), "{err}");
}

#[test]
fn ttl_is_capped_and_has_a_floor() {
    let mut options = CaOptions::default();
    options.max_leaf_ttl = 2 * HOUR;
    options.default_leaf_ttl = HOUR;
    let ca = CertificateAuthority::generate(&td(), options).unwrap();
    let identity = id("prod", "web");
    let csr = WorkloadKey::generate().unwrap().csr_pem(&identity).unwrap();

    let now = SystemTime::now();
    let issued = ca
        .sign_csr(csr.as_bytes(), &identity, Some(30 * DAY))
        .unwrap();
    assert_close(issued.not_after, now + 2 * HOUR);
    let issued = ca.sign_csr(csr.as_bytes(), &identity, Some(HOUR)).unwrap();
    assert_close(issued.not_after, now + HOUR);

    let err = ca
        .sign_csr(csr.as_bytes(), &identity, Some(Duration::from_secs(1)))
        .unwrap_err();
    assert!(matches!(err, Error::TtlTooShort { .. }), "{err}");
}

#[test]
fn load_or_generate_persists_with_a_private_key_file() {
    let scratch = TempDir::new("ca-store");
    let dir = scratch.path().join("ca");
    let first = CertificateAuthority::load_or_generate(&dir, &td(), CaOptions::default()).unwrap();

    let mode = |name: &str| {
        std::fs::metadata(dir.join(name))
            .unwrap()
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(mode(CA_KEY_FILE), 0o600);
    assert_eq!(
        std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
        0o700
    );
    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    assert_eq!(
        files,
        [CA_CERT_FILE, CA_KEY_FILE],
        "no temporary files left behind"
    );

    let second = CertificateAuthority::load_or_generate(&dir, &td(), CaOptions::default()).unwrap();
    assert_eq!(
        second.trust_bundle(),
        first.trust_bundle(),
        "same root after restart"
    );
    let leaf = certify(&second, &id("prod", "web"));
    leaf.verify(&first.trust_bundle(), SystemTime::now())
        .unwrap();

    let other_td = "other.test".parse().unwrap();
    let err =
        CertificateAuthority::load_or_generate(&dir, &other_td, CaOptions::default()).unwrap_err();
    assert!(
        matches!(&err, Error::CaFiles { source, .. } if matches!(**source, Error::CaTrustDomainMismatch { .. })),
        "{err}"
    );
    let text = err.to_string();
    assert!(
        text.contains(CA_CERT_FILE) && text.contains(CA_KEY_FILE),
        "{text}"
    );

    // A damaged file is named.
    let key_pem = std::fs::read(dir.join(CA_KEY_FILE)).unwrap();
    std::fs::write(
        dir.join(CA_KEY_FILE),
        b"-----BEGIN PRIVATE KEY-----\nnot base64!\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    let err =
        CertificateAuthority::load_or_generate(&dir, &td(), CaOptions::default()).unwrap_err();
    assert!(
        err.to_string()
            .contains(&dir.join(CA_KEY_FILE).display().to_string()),
        "{err}"
    );
    std::fs::write(dir.join(CA_KEY_FILE), &key_pem).unwrap();
    std::fs::write(dir.join(CA_CERT_FILE), b"no certificate here").unwrap();
    let err =
        CertificateAuthority::load_or_generate(&dir, &td(), CaOptions::default()).unwrap_err();
    assert!(
        err.to_string()
            .contains(&dir.join(CA_CERT_FILE).display().to_string()),
        "{err}"
    );

    std::fs::remove_file(dir.join(CA_CERT_FILE)).unwrap();
    let err =
        CertificateAuthority::load_or_generate(&dir, &td(), CaOptions::default()).unwrap_err();
    assert!(
        matches!(
            err,
            Error::IncompleteCaFiles {
                present: CA_KEY_FILE,
                ..
            }
        ),
        "{err}"
    );
    let key_pem = std::fs::read_to_string(dir.join(CA_KEY_FILE)).unwrap();
    assert!(key_pem.contains("BEGIN PRIVATE KEY"));
}

/// The operator's root, an intermediate it signed for the mesh, and the
/// intermediate's key.
struct OperatorPki {
    root_pem: String,
    intermediate_pem: String,
    intermediate_key_pem: String,
    root_key_pem: String,
}

fn ca_params(cn: &str, path_len: BasicConstraints) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, cn);
    params.is_ca = IsCa::Ca(path_len);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params
}

fn operator_pki() -> OperatorPki {
    let root_key = KeyPair::generate().unwrap();
    let root_params = ca_params("Operator Root", BasicConstraints::Unconstrained);
    let root = root_params.self_signed(&root_key).unwrap();
    let root_key_pem = root_key.serialize_pem();
    let root_issuer = Issuer::new(root_params, root_key);

    let intermediate_key = KeyPair::generate().unwrap();
    let intermediate = ca_params(
        "Operator Mesh Intermediate",
        BasicConstraints::Constrained(0),
    )
    .signed_by(&intermediate_key, &root_issuer)
    .unwrap();
    OperatorPki {
        root_pem: root.pem(),
        intermediate_pem: intermediate.pem(),
        intermediate_key_pem: intermediate_key.serialize_pem(),
        root_key_pem,
    }
}

#[test]
fn operator_intermediate_chain_issues_leaves_that_verify_against_the_root() {
    let pki = operator_pki();
    let chain_pem = format!("{}{}", pki.intermediate_pem, pki.root_pem);
    let ca = CertificateAuthority::from_pem(
        &td(),
        &chain_pem,
        &pki.intermediate_key_pem,
        CaOptions::default(),
    )
    .unwrap();
    let root_bundle = TrustBundle::from_pem(&pki.root_pem).unwrap();
    assert_eq!(
        ca.trust_bundle(),
        root_bundle,
        "the trust bundle is the operator root"
    );
    assert!(ca.subject().contains("Operator Mesh Intermediate"));

    let identity = id("prod", "web");
    let key = WorkloadKey::generate().unwrap();
    let issued = ca
        .sign_csr(key.csr_pem(&identity).unwrap().as_bytes(), &identity, None)
        .unwrap();
    let chain = chain_der(&issued.chain_pem);
    assert_eq!(chain.len(), 2, "leaf + intermediate");
    assert_eq!(chain[1], chain_der(&pki.intermediate_pem)[0]);
    let certified = CertifiedIdentity::new(key, &issued.chain_pem).unwrap();
    certified.verify(&root_bundle, SystemTime::now()).unwrap();

    // The same check through the server-side rustls verifier.
    let verifier =
        SpiffeClientVerifier::new(&root_bundle, sane_certs::tls::provider(), &[td()]).unwrap();
    use rustls::server::danger::ClientCertVerifier;
    verifier
        .verify_client_cert(&chain[0], &chain[1..], rustls_pki_types::UnixTime::now())
        .unwrap();
}

/// An operator root names no trust domain, so CAs of several trust domains
/// can chain to it. Chaining to the mesh root then proves nothing about the
/// trust domain: the server-side verifier accepts only its own (and the
/// federated ones it is given).
#[test]
fn a_leaf_of_another_trust_domain_under_the_same_root_is_refused() {
    let pki = operator_pki();
    let chain_pem = format!("{}{}", pki.intermediate_pem, pki.root_pem);
    let load = |td: &TrustDomain| {
        CertificateAuthority::from_pem(
            td,
            &chain_pem,
            &pki.intermediate_key_pem,
            CaOptions::default(),
        )
        .unwrap()
    };
    let evil_td: TrustDomain = "evil.local".parse().unwrap();
    let evil_ca = load(&evil_td);
    let evil = SpiffeId::new(evil_td.clone(), "prod", "web").unwrap();
    let key = WorkloadKey::generate().unwrap();
    let issued = evil_ca
        .sign_csr(key.csr_pem(&evil).unwrap().as_bytes(), &evil, None)
        .unwrap();
    let chain = chain_der(&issued.chain_pem);
    let root_bundle = TrustBundle::from_pem(&pki.root_pem).unwrap();
    assert_eq!(load(&td()).trust_bundle(), root_bundle, "one root for both");

    use rustls::server::danger::ClientCertVerifier;
    let now = rustls_pki_types::UnixTime::now();
    let ours =
        SpiffeClientVerifier::new(&root_bundle, sane_certs::tls::provider(), &[td()]).unwrap();
    let err = ours
        .verify_client_cert(&chain[0], &chain[1..], now)
        .expect_err("a foreign trust domain must be refused");
    let rustls::Error::InvalidCertificate(rustls::CertificateError::Other(other)) = &err else {
        panic!("unexpected error {err:?}");
    };
    match other.0.downcast_ref::<Error>() {
        Some(Error::UntrustedTrustDomain { actual, accepted }) => {
            assert_eq!(*actual, evil);
            assert_eq!(*accepted, vec![td()]);
        }
        other => panic!("unexpected error {other:?}"),
    }
    let text = err.to_string();
    assert!(
        text.contains("evil.local") && text.contains("mesh.test"),
        "{text}"
    );

    // Listed as federated, the same certificate is accepted.
    let federated =
        SpiffeClientVerifier::new(&root_bundle, sane_certs::tls::provider(), &[td(), evil_td])
            .unwrap();
    federated
        .verify_client_cert(&chain[0], &chain[1..], now)
        .unwrap();
}

#[test]
fn malformed_operator_chains_are_refused_with_the_reason() {
    let pki = operator_pki();
    let load = |chain: &str, key: &str| {
        CertificateAuthority::from_pem(&td(), chain, key, CaOptions::default()).unwrap_err()
    };

    let err = load(&pki.intermediate_pem, &pki.intermediate_key_pem);
    assert!(matches!(err, Error::CaChainWithoutRoot { .. }), "{err}");

    let reversed = format!("{}{}", pki.root_pem, pki.intermediate_pem);
    let err = load(&reversed, &pki.root_key_pem);
    assert!(
        matches!(err, Error::CaChainBroken { index: 0, .. }),
        "{err}"
    );

    let chain = format!("{}{}", pki.intermediate_pem, pki.root_pem);
    let err = load(&chain, &pki.root_key_pem);
    assert!(matches!(err, Error::CaKeyMismatch { .. }), "{err}");

    let err = load(
        &chain,
        "-----BEGIN EC PRIVATE KEY-----\nMAA=\n-----END EC PRIVATE KEY-----\n",
    );
    assert!(matches!(err, Error::UnsupportedKeyFormat { .. }), "{err}");
    let err = load(&chain, "");
    assert!(matches!(err, Error::NoPemBlock { .. }), "{err}");

    // A workload leaf cannot act as a CA.
    let mesh = ca();
    let leaf_key = WorkloadKey::generate().unwrap();
    let identity = id("prod", "web");
    let issued = mesh
        .sign_csr(
            leaf_key.csr_pem(&identity).unwrap().as_bytes(),
            &identity,
            None,
        )
        .unwrap();
    let err = load(&issued.chain_pem, &pki.intermediate_key_pem);
    assert!(matches!(err, Error::NotACa { .. }), "{err}");

    // An expired root.
    let key = KeyPair::generate().unwrap();
    let mut params = ca_params("Expired Root", BasicConstraints::Unconstrained);
    params.not_after = rcgen::date_time_ymd(2001, 1, 1);
    let expired = params.self_signed(&key).unwrap();
    let err = load(&expired.pem(), &key.serialize_pem());
    assert!(matches!(err, Error::CaExpired { .. }), "{err}");
    assert!(err.to_string().contains("2001-01-01T00:00:00Z"), "{err}");
}

#[test]
fn leaf_from_another_ca_is_untrusted() {
    let ours = ca();
    let theirs = ca();
    let leaf = certify(&theirs, &id("prod", "web"));
    let err = leaf
        .verify(&ours.trust_bundle(), SystemTime::now())
        .unwrap_err();
    assert!(matches!(err, Error::UntrustedChain { .. }), "{err}");
}

#[test]
fn rotated_out_root_is_trusted_only_during_the_grace_period() {
    let old = ca();
    let new = ca();
    let now = SystemTime::now();
    let grace_end = now + HOUR;
    let bundle = new
        .trust_bundle()
        .with_retiring(&old.trust_bundle(), grace_end);
    assert_eq!(bundle.roots().len(), 2);
    assert_eq!(bundle.roots()[1].retire_at(), Some(grace_end));
    assert_eq!(
        bundle.next_retirement(now),
        Some(bundle.roots()[1].retire_at().unwrap())
    );
    assert_eq!(
        TrustBundle::from_pem(&bundle.to_pem())
            .unwrap()
            .roots()
            .len(),
        2
    );

    let old_leaf = certify(&old, &id("prod", "web"));
    let new_leaf = certify(&new, &id("prod", "api"));
    old_leaf.verify(&bundle, now).unwrap();
    new_leaf.verify(&bundle, now).unwrap();
    let after = grace_end + Duration::from_secs(60);
    let err = old_leaf.verify(&bundle, after).unwrap_err();
    assert!(matches!(err, Error::UntrustedChain { .. }), "{err}");
    new_leaf.verify(&bundle, after).unwrap();

    // The server-side verifier reads the handshake clock the same way.
    use rustls::server::danger::ClientCertVerifier;
    let verifier =
        SpiffeClientVerifier::new(&bundle, sane_certs::tls::provider(), &[td()]).unwrap();
    let unix = |t: SystemTime| {
        rustls_pki_types::UnixTime::since_unix_epoch(
            t.duration_since(SystemTime::UNIX_EPOCH).unwrap(),
        )
    };
    verifier
        .verify_client_cert(&old_leaf.chain()[0], &[], unix(now))
        .unwrap();
    assert!(verifier
        .verify_client_cert(&old_leaf.chain()[0], &[], unix(after))
        .is_err());

    let mut pruned = bundle.clone();
    pruned.prune(after);
    assert_eq!(pruned, new.trust_bundle());
}

#[test]
fn ca_debug_does_not_print_the_key() {
    let scratch = TempDir::new("ca-debug");
    let ca = CertificateAuthority::load_or_generate(scratch.path(), &td(), CaOptions::default())
        .unwrap();
    let key_pem = std::fs::read_to_string(scratch.path().join(CA_KEY_FILE)).unwrap();
    let key_body: String = key_pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect();
    let debug = format!("{ca:?}");
    assert!(debug.contains("<redacted>"), "{debug}");
    assert!(!debug.contains(&key_body[..32]), "{debug}");
    assert!(!debug.contains("PRIVATE"), "{debug}");
}

#[test]
fn roots_with_the_same_subject_are_told_apart() {
    // Operators often reuse the subject when they roll a root.
    let old = operator_pki();
    let new = operator_pki();
    let load = |pki: &OperatorPki| {
        let chain = format!("{}{}", pki.intermediate_pem, pki.root_pem);
        CertificateAuthority::from_pem(
            &td(),
            &chain,
            &pki.intermediate_key_pem,
            CaOptions::default(),
        )
        .unwrap()
    };
    let (old_ca, new_ca) = (load(&old), load(&new));
    let now = SystemTime::now();
    let bundle = new_ca
        .trust_bundle()
        .with_retiring(&old_ca.trust_bundle(), now + HOUR);
    let old_leaf = certify(&old_ca, &id("prod", "web"));
    let new_leaf = certify(&new_ca, &id("prod", "web"));
    old_leaf.verify(&bundle, now).unwrap();
    new_leaf.verify(&bundle, now).unwrap();
    assert!(old_leaf.verify(&bundle, now + 2 * HOUR).is_err());
}

#[test]
fn csrs_with_other_accepted_key_types_verify() {
    let ca = ca();
    let identity = id("prod", "web");
    for algorithm in [&rcgen::PKCS_ECDSA_P384_SHA384, &rcgen::PKCS_ED25519] {
        let key = KeyPair::generate_for(algorithm).unwrap();
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        let csr = params.serialize_request(&key).unwrap().pem().unwrap();
        let issued = ca.sign_csr(csr.as_bytes(), &identity, None).unwrap();
        let chain = chain_der(&issued.chain_pem);
        let (_, leaf) = X509Certificate::from_der(&chain[0]).unwrap();
        assert_eq!(
            leaf.public_key().subject_public_key.data,
            key.public_key_raw()
        );
        rustls_verify(&ca.trust_bundle(), &chain);
    }
}

/// Verifies `chain` with the server-side rustls verifier at the current time.
fn rustls_verify(bundle: &TrustBundle, chain: &[CertificateDer<'static>]) {
    use rustls::server::danger::ClientCertVerifier;
    SpiffeClientVerifier::new(bundle, sane_certs::tls::provider(), &[td()])
        .unwrap()
        .verify_client_cert(&chain[0], &chain[1..], rustls_pki_types::UnixTime::now())
        .unwrap();
}

#[test]
fn inconsistent_options_are_refused_naming_the_field() {
    let mut options = CaOptions::default();
    options.default_leaf_ttl = 30 * DAY;
    let err = CertificateAuthority::generate(&td(), options).unwrap_err();
    assert!(
        matches!(
            err,
            Error::InvalidCaOption {
                field: "default_leaf_ttl",
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("30days"), "{err}");

    let mut options = CaOptions::default();
    options.max_leaf_ttl = Duration::from_secs(1);
    let err = options.validate().unwrap_err();
    assert!(
        matches!(
            err,
            Error::InvalidCaOption {
                field: "max_leaf_ttl",
                ..
            }
        ),
        "{err}"
    );
    CaOptions::default().validate().unwrap();
}
