//! Test support (feature `testing`, never enabled by the binaries' own
//! dependencies): PKI shapes the mesh never generates itself but must cope
//! with, so tests outside this crate need not call rcgen.

use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, KeyPair, KeyUsagePurpose,
};

use crate::error::Error;
use crate::x509;

/// A self-signed operator root (PEM) and its PKCS#8 key (PEM).
#[derive(Clone)]
pub struct OperatorRoot {
    /// The root certificate.
    pub cert_pem: String,
    /// Its private key: test material only.
    pub key_pem: String,
}

impl std::fmt::Debug for OperatorRoot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OperatorRoot")
            .field("key", &"<redacted>")
            .finish()
    }
}

/// A root like a company's own: no SPIFFE URI SAN, so
/// [`crate::CertificateAuthority::from_pem`] loads it for any trust domain,
/// and CAs of several trust domains then share one root (valid one day).
pub fn operator_root(common_name: &str) -> Result<OperatorRoot, Error> {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map_err(|source| Error::KeyGeneration { source })?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let now = SystemTime::now();
    params.not_before = x509::whole_seconds(now - Duration::from_secs(60)).into();
    params.not_after = x509::whole_seconds(now + Duration::from_secs(24 * 3600)).into();
    let cert = params.self_signed(&key).map_err(|source| Error::Signing {
        what: format!("operator root {common_name:?}"),
        source,
    })?;
    Ok(OperatorRoot {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}
