//! Reading and writing certificates: PEM in and out, and the few X.509 fields
//! the rest of the crate looks at (subject, validity, serial, URI SANs,
//! basic constraints).
//!
//! x509-parser is only used here, so the other modules see plain Rust values.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls_pki_types::pem::{Error as PemError, PemObject};
use rustls_pki_types::CertificateDer;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::error::Error;
use crate::serial::Serial;

/// What the crate needs to know about one certificate.
#[derive(Debug, Clone)]
pub(crate) struct CertInfo {
    /// The subject, RFC 4514 style; empty for mesh leaves.
    pub(crate) subject: String,
    /// The issuer, RFC 4514 style.
    pub(crate) issuer: String,
    /// Whether the DER subject and issuer are equal (a root, usually).
    pub(crate) self_issued: bool,
    /// DER of the subject name, to link chains.
    pub(crate) subject_der: Vec<u8>,
    /// DER of the issuer name, to link chains.
    pub(crate) issuer_der: Vec<u8>,
    pub(crate) serial: Serial,
    pub(crate) not_before: SystemTime,
    pub(crate) not_after: SystemTime,
    /// Every URI SAN, in order.
    pub(crate) uri_sans: Vec<String>,
    /// basicConstraints CA:TRUE, and keyCertSign if keyUsage is present.
    pub(crate) can_sign_certs: bool,
    /// The raw public key (the BIT STRING of the SPKI), to match private keys.
    pub(crate) public_key: Vec<u8>,
}

const CERTIFICATE_LABEL: &str = "CERTIFICATE";

/// Parses every `CERTIFICATE` block of `pem`, in order; at least one is required.
pub(crate) fn certs_from_pem(
    pem: &[u8],
    what: &'static str,
) -> Result<Vec<CertificateDer<'static>>, Error> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, PemError>>()
        .map_err(|e| Error::InvalidPem {
            what,
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(Error::NoPemBlock {
            what,
            label: CERTIFICATE_LABEL,
        });
    }
    Ok(certs)
}

/// Encodes certificates as concatenated PEM blocks with LF line endings.
pub(crate) fn certs_to_pem<'a>(certs: impl IntoIterator<Item = &'a CertificateDer<'a>>) -> String {
    let config = ::pem::EncodeConfig::new().set_line_ending(::pem::LineEnding::LF);
    certs
        .into_iter()
        .map(|der| ::pem::encode_config(&::pem::Pem::new(CERTIFICATE_LABEL, der.to_vec()), config))
        .collect()
}

/// Parses the fields of `der` that the crate uses.
pub(crate) fn inspect(der: &[u8], what: &'static str, index: usize) -> Result<CertInfo, Error> {
    let invalid = |reason: String| Error::InvalidCertificate {
        what,
        index,
        reason,
    };
    let (rest, cert) = X509Certificate::from_der(der).map_err(|e| invalid(e.to_string()))?;
    if !rest.is_empty() {
        return Err(invalid(format!(
            "{} trailing bytes after the certificate",
            rest.len()
        )));
    }
    let uri_sans = uri_sans(&cert).map_err(invalid)?;
    let basic_ca = cert
        .basic_constraints()
        .map_err(|e| invalid(e.to_string()))?
        .is_some_and(|bc| bc.value.ca);
    let may_sign = cert
        .key_usage()
        .map_err(|e| invalid(e.to_string()))?
        .is_none_or(|ku| ku.value.key_cert_sign());
    let validity = cert.validity();
    Ok(CertInfo {
        subject: cert.subject().to_string(),
        issuer: cert.issuer().to_string(),
        self_issued: cert.subject().as_raw() == cert.issuer().as_raw(),
        subject_der: cert.subject().as_raw().to_vec(),
        issuer_der: cert.issuer().as_raw().to_vec(),
        serial: Serial::from_bytes(cert.raw_serial()),
        not_before: from_unix(validity.not_before.timestamp()),
        not_after: from_unix(validity.not_after.timestamp()),
        uri_sans,
        can_sign_certs: basic_ca && may_sign,
        public_key: cert.public_key().subject_public_key.data.to_vec(),
    })
}

fn uri_sans(cert: &X509Certificate<'_>) -> Result<Vec<String>, String> {
    let Some(san) = cert.subject_alternative_name().map_err(|e| e.to_string())? else {
        return Ok(Vec::new());
    };
    Ok(san
        .value
        .general_names
        .iter()
        .filter_map(|name| match name {
            GeneralName::URI(uri) => Some((*uri).to_owned()),
            _ => None,
        })
        .collect())
}

/// Converts X.509 seconds since the epoch, which may predate 1970.
fn from_unix(secs: i64) -> SystemTime {
    let magnitude = Duration::from_secs(secs.unsigned_abs());
    if secs >= 0 {
        UNIX_EPOCH + magnitude
    } else {
        UNIX_EPOCH - magnitude
    }
}

/// Drops sub-second precision, since X.509 validity has whole seconds and
/// callers compare what they asked for with what the certificate says.
pub(crate) fn whole_seconds(t: SystemTime) -> SystemTime {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => UNIX_EPOCH + Duration::from_secs(d.as_secs()),
        Err(_) => t,
    }
}

/// Fills `N` bytes from the operating system's CSPRNG (through the rustls
/// provider, so the crate needs no extra random-number dependency).
pub(crate) fn random_bytes<const N: usize>() -> Result<[u8; N], Error> {
    let mut buf = [0u8; N];
    rustls::crypto::aws_lc_rs::default_provider()
        .secure_random
        .fill(&mut buf)
        .map_err(|_| Error::RandomUnavailable)?;
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_errors_name_the_input() {
        let err = certs_from_pem(b"nothing here", "CA certificate chain").unwrap_err();
        assert!(
            matches!(
                err,
                Error::NoPemBlock {
                    what: "CA certificate chain",
                    ..
                }
            ),
            "{err}"
        );
        let err = certs_from_pem(
            b"-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n",
            "trust bundle",
        )
        .unwrap_err();
        assert!(err.to_string().starts_with("trust bundle: "), "{err}");
    }

    #[test]
    fn garbage_der_is_reported_with_its_index() {
        let err = inspect(b"\x30\x03abc", "peer chain", 2).unwrap_err();
        assert!(
            matches!(err, Error::InvalidCertificate { index: 2, .. }),
            "{err}"
        );
    }

    #[test]
    fn times_before_the_epoch() {
        assert_eq!(from_unix(-10), UNIX_EPOCH - Duration::from_secs(10));
        let t = UNIX_EPOCH + Duration::from_millis(1500);
        assert_eq!(whole_seconds(t), UNIX_EPOCH + Duration::from_secs(1));
    }
}
