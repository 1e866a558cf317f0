//! Test support (feature `testing`, never enabled by the binaries' own
//! dependencies): PKI shapes the mesh never generates itself but must cope
//! with, so tests outside this crate need not call rcgen.

use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
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

/// A TLS leaf signed by `root` for `names` (the first is also the common
/// name; one that parses as an IP address becomes an IP SAN), usable both
/// as a server and as a client certificate — what a test etcd member and
/// its clients present (etcd checks client certificates for `clientAuth`).
/// Returns `(cert PEM, PKCS#8 key PEM)`, valid one day.
pub fn tls_leaf(root: &OperatorRoot, names: &[&str]) -> Result<(String, String), Error> {
    let what = || format!("test TLS leaf for {names:?}");
    let signing = |reason: String| Error::InvalidDnsName {
        name: names.join(","),
        reason,
    };
    let root_der = x509::certs_from_pem(root.cert_pem.as_bytes(), "operator root")?
        .into_iter()
        .next()
        .ok_or_else(|| signing("the operator root holds no certificate".into()))?;
    let root_key = KeyPair::from_pem(&root.key_pem).map_err(|source| Error::Signing {
        what: what(),
        source,
    })?;
    let issuer =
        Issuer::from_ca_cert_der(&root_der, root_key).map_err(|source| Error::Signing {
            what: what(),
            source,
        })?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    if let Some(first) = names.first() {
        params.distinguished_name.push(DnType::CommonName, *first);
    }
    for name in names {
        let san = match name.parse::<std::net::IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => SanType::DnsName(
                (*name)
                    .try_into()
                    .map_err(|_| signing("not an ASCII DNS name".into()))?,
            ),
        };
        params.subject_alt_names.push(san);
    }
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let now = SystemTime::now();
    params.not_before = x509::whole_seconds(now - Duration::from_secs(60)).into();
    params.not_after = x509::whole_seconds(now + Duration::from_secs(24 * 3600)).into();
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map_err(|source| Error::KeyGeneration { source })?;
    let cert = params
        .signed_by(&key, &issuer)
        .map_err(|source| Error::Signing {
            what: what(),
            source,
        })?;
    Ok((cert.pem(), key.serialize_pem()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::CertificateDer;

    #[test]
    fn a_tls_leaf_names_ips_and_hosts_and_chains_to_its_root() {
        let root = operator_root("test root").unwrap();
        let (cert, key) = tls_leaf(&root, &["127.0.0.1", "localhost"]).unwrap();
        assert!(cert.starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(key.contains("PRIVATE KEY"));
        let der = CertificateDer::from_pem_slice(cert.as_bytes()).unwrap();
        let (_, parsed) = x509_parser::parse_x509_certificate(&der).unwrap();
        let root_der = CertificateDer::from_pem_slice(root.cert_pem.as_bytes()).unwrap();
        let (_, root_parsed) = x509_parser::parse_x509_certificate(&root_der).unwrap();
        assert_eq!(
            parsed.issuer().to_string(),
            root_parsed.subject().to_string()
        );
        let sans = parsed.subject_alternative_name().unwrap().unwrap();
        assert_eq!(sans.value.general_names.len(), 2);
    }
}
