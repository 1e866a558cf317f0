//! The workload side: keys stay private, issued chains are paired with the
//! right key, and renewal is scheduled at half-life.

mod support;

use std::time::{Duration, SystemTime};

use sane_certs::{CertifiedIdentity, Error, WorkloadKey};
use support::{ca, certify, id};

/// The key bytes as they would appear if some output leaked them.
fn leak_markers(certified: &CertifiedIdentity) -> Vec<String> {
    let (_, key) = certified.to_rustls();
    let secret = key.secret_der();
    let hex: String = secret[secret.len() - 16..]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let decimal = format!("{:?}", &secret[secret.len() - 8..]);
    let decimal = decimal.trim_matches(|c| c == '[' || c == ']').to_owned();
    vec![hex, decimal]
}

#[test]
fn debug_output_never_shows_key_material() {
    let key = WorkloadKey::generate().unwrap();
    assert_eq!(format!("{key:?}"), "WorkloadKey { .. }");
    assert_eq!(format!("{key:#?}"), "WorkloadKey { .. }");

    let certified = certify(&ca(), &id("prod", "web"));
    let debug = format!("{certified:?} {certified:#?}");
    assert!(debug.contains("key: \"<redacted>\""), "{debug}");
    assert!(
        debug.contains("spiffe://mesh.test/ns/prod/sa/web"),
        "{debug}"
    );
    for marker in leak_markers(&certified) {
        assert!(!debug.contains(&marker), "Debug leaks key bytes: {debug}");
    }
}

#[test]
fn chain_issued_for_another_key_is_refused() {
    let ca = ca();
    let identity = id("prod", "web");
    let requester = WorkloadKey::generate().unwrap();
    let issued = ca
        .sign_csr(
            requester.csr_pem(&identity).unwrap().as_bytes(),
            &identity,
            None,
        )
        .unwrap();
    let other = WorkloadKey::generate().unwrap();
    let err = CertifiedIdentity::new(other, &issued.chain_pem).unwrap_err();
    assert!(matches!(err, Error::LeafKeyMismatch { .. }), "{err}");
    assert!(
        err.to_string().contains(&issued.serial.to_string()),
        "{err}"
    );
}

#[test]
fn csr_carries_the_identity_and_the_public_key() {
    let key = WorkloadKey::generate().unwrap();
    let identity = id("prod", "web");
    let der = key.csr_der(&identity).unwrap();
    let pem = key.csr_pem(&identity).unwrap();
    assert!(pem.starts_with("-----BEGIN CERTIFICATE REQUEST-----"));

    use x509_parser::prelude::{FromDer, X509CertificationRequest};
    let (_, csr) = X509CertificationRequest::from_der(&der).unwrap();
    assert_eq!(
        csr.certification_request_info.subject_pki.raw,
        key.public_key_der().as_slice()
    );
    assert_eq!(csr.certification_request_info.subject.iter().count(), 0);
    let sans: Vec<String> = csr
        .requested_extensions()
        .into_iter()
        .flatten()
        .filter_map(|ext| match ext {
            x509_parser::extensions::ParsedExtension::SubjectAlternativeName(san) => Some(san),
            _ => None,
        })
        .flat_map(|san| san.general_names.iter().map(|n| n.to_string()))
        .collect();
    assert_eq!(sans, [format!("URI({identity})")]);
}

#[test]
fn renewal_is_due_around_half_life() {
    let certified = certify(&ca(), &id("prod", "web"));
    let lifetime = certified
        .not_after()
        .duration_since(certified.not_before())
        .unwrap();
    let deadline = certified.rotation_deadline();
    assert_eq!(deadline, certified.rotation_deadline(), "drawn once");
    assert!(deadline >= certified.not_before() + lifetime.mul_f64(0.4));
    assert!(deadline <= certified.not_before() + lifetime.mul_f64(0.6));

    let now = SystemTime::now();
    let wait = certified.refresh_in(now);
    assert!(wait > Duration::from_secs(9 * 3600) && wait < Duration::from_secs(15 * 3600));
    assert_eq!(certified.refresh_in(certified.not_after()), Duration::ZERO);
}

#[test]
fn rustls_parts_are_consistent() {
    let certified = certify(&ca(), &id("prod", "web"));
    let (chain, _key) = certified.to_rustls();
    assert_eq!(chain, certified.chain());
    let certified_key = certified.certified_key();
    certified_key.keys_match().unwrap();
    assert_eq!(certified_key.cert, chain);
}
