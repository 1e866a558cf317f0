//! The mesh certificate authority: signs workload CSRs for identities the
//! caller has already authenticated.
//!
//! The control plane's CA service derives the [`SpiffeId`] from the workload's
//! token and passes it to [`CertificateAuthority::sign_csr`]; the CSR only
//! contributes its public key. That keeps the identity decision out of
//! attacker-controlled input: a CSR may repeat the allowed identity as a URI
//! SAN, but if it names any other one nothing is signed.
//!
//! Architecture invariant: only this crate calls rcgen.

use std::fmt;
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, PublicKeyData,
    SanType, SignatureAlgorithm,
};
use rustls_pki_types::pem::{Error as PemError, PemObject};
use rustls_pki_types::{CertificateDer, CertificateSigningRequestDer, PrivateKeyDer};
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::prelude::FromDer;

use crate::bundle::TrustBundle;
use crate::error::Error;
use crate::identity::{SpiffeId, TrustDomain};
use crate::x509::{self, CertInfo};

pub use crate::serial::Serial;

mod server;
mod store;

pub use server::{server_config_with_resolver, ServerCert};
pub use store::{CA_CERT_FILE, CA_KEY_FILE};

/// The shortest leaf lifetime [`CertificateAuthority::sign_csr`] grants; a
/// shorter one would expire before the proxy could rotate it. Lifetimes of a
/// few seconds are for tests and drills; production uses hours.
pub const MIN_LEAF_TTL: Duration = Duration::from_secs(2);

/// The most a leaf's `not_before` may be backdated; more than clock skew
/// needs would only widen the window a stolen certificate is valid in.
const MAX_BACKDATE: Duration = Duration::from_secs(3600);

/// Knobs of a [`CertificateAuthority`]; checked by [`CaOptions::validate`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct CaOptions {
    /// Lifetime of a root made by [`CertificateAuthority::generate`].
    /// Default: 10 years.
    pub root_ttl: Duration,
    /// Leaf lifetime when `sign_csr` is given no TTL. Default: 24 hours.
    pub default_leaf_ttl: Duration,
    /// Longest leaf lifetime granted; longer requests are cut to it.
    /// Default: 7 days.
    pub max_leaf_ttl: Duration,
    /// How far `not_before` is moved into the past, so a peer whose clock is
    /// slightly behind the CA's still accepts a fresh certificate.
    /// Default: 60 seconds.
    pub backdate: Duration,
    /// Organization (O) of a generated root's subject. Default: `Sane Mesh`.
    pub organization: String,
}

/// A CA able to sign workload certificates.
///
/// Either a generated self-signed root or an operator-provided CA, possibly an
/// intermediate under the operator's own root. The private key stays inside;
/// [`fmt::Debug`] does not print it.
pub struct CertificateAuthority {
    trust_domain: TrustDomain,
    issuer: Issuer<'static, KeyPair>,
    /// The signing certificate first, the self-signed root last (one element
    /// for a root CA).
    chain: Vec<CertificateDer<'static>>,
    signing_subject: String,
    /// The root at the end of the chain, as proxies must trust it.
    bundle: TrustBundle,
    /// The earliest expiry in the chain: no leaf may outlive it.
    not_after: SystemTime,
    options: CaOptions,
}

/// A signed workload certificate, as the CA service returns it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IssuedCert {
    /// The identity written as the leaf's only URI SAN.
    pub identity: SpiffeId,
    /// The leaf, then the intermediates up to (not including) the root, in PEM.
    /// The root is in the trust bundle, not in the chain.
    pub chain_pem: String,
    /// The leaf's serial number.
    pub serial: Serial,
    /// Start of validity, already backdated for clock skew.
    pub not_before: SystemTime,
    /// End of validity.
    pub not_after: SystemTime,
}

/// Key algorithms a leaf may carry; the mesh's own workloads use P-256.
static ACCEPTED_KEY_ALGORITHMS: [&SignatureAlgorithm; 3] = [
    &rcgen::PKCS_ECDSA_P256_SHA256,
    &rcgen::PKCS_ECDSA_P384_SHA384,
    &rcgen::PKCS_ED25519,
];

/// A parsed CSR and its SubjectPublicKeyInfo exactly as the requester sent it.
struct Csr {
    params: CertificateSigningRequestParams,
    spki: Vec<u8>,
}

/// Identity of the throwaway leaf signed when a CA is loaded, to prove the
/// key, chain and signatures work together before serving anyone.
const SELF_CHECK_NAMESPACE: &str = "sane-system";
const SELF_CHECK_ACCOUNT: &str = "ca-self-check";

// === impl CaOptions ===

impl Default for CaOptions {
    fn default() -> Self {
        const DAY: u64 = 24 * 60 * 60;
        Self {
            root_ttl: Duration::from_secs(10 * 365 * DAY),
            default_leaf_ttl: Duration::from_secs(DAY),
            max_leaf_ttl: Duration::from_secs(7 * DAY),
            backdate: Duration::from_secs(60),
            organization: "Sane Mesh".to_owned(),
        }
    }
}

impl CaOptions {
    /// Checks the options against each other; errors name the field.
    pub fn validate(&self) -> Result<(), Error> {
        let invalid = |field, reason| Err(Error::InvalidCaOption { field, reason });
        let show = |d: Duration| humantime::format_duration(d).to_string();
        if self.max_leaf_ttl < MIN_LEAF_TTL {
            return invalid(
                "max_leaf_ttl",
                format!(
                    "{} is below the minimum of {}",
                    show(self.max_leaf_ttl),
                    show(MIN_LEAF_TTL)
                ),
            );
        }
        if self.default_leaf_ttl < MIN_LEAF_TTL || self.default_leaf_ttl > self.max_leaf_ttl {
            return invalid(
                "default_leaf_ttl",
                format!(
                    "{} is outside {}..={} (MIN_LEAF_TTL..=max_leaf_ttl)",
                    show(self.default_leaf_ttl),
                    show(MIN_LEAF_TTL),
                    show(self.max_leaf_ttl)
                ),
            );
        }
        if self.root_ttl <= self.max_leaf_ttl {
            return invalid(
                "root_ttl",
                format!(
                    "{} must be longer than max_leaf_ttl ({})",
                    show(self.root_ttl),
                    show(self.max_leaf_ttl)
                ),
            );
        }
        if self.backdate > MAX_BACKDATE {
            return invalid(
                "backdate",
                format!(
                    "{} is above the maximum of {}",
                    show(self.backdate),
                    show(MAX_BACKDATE)
                ),
            );
        }
        Ok(())
    }
}

// === impl CertificateAuthority ===

impl CertificateAuthority {
    /// Generates a self-signed ECDSA P-256 root for `trust_domain`.
    ///
    /// The root carries `spiffe://<trust-domain>` as URI SAN, so reloading it
    /// for another trust domain is caught, and a path length of 0: it signs
    /// leaves only.
    pub fn generate(trust_domain: &TrustDomain, options: CaOptions) -> Result<Self, Error> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(|source| Error::KeyGeneration { source })?;
        let now = SystemTime::now();
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::OrganizationName, options.organization.as_str());
        // The serial prefix tells roots apart in logs and lets webpki find the
        // right anchor by name while an old and a new root coexist.
        let serial = Serial::random()?;
        params.distinguished_name.push(
            DnType::CommonName,
            format!(
                "{} root CA for {trust_domain} {}",
                options.organization,
                &serial.to_string()[..8]
            ),
        );
        let signing = |source| Error::Signing {
            what: format!("root certificate for {trust_domain}"),
            source,
        };
        params.subject_alt_names = vec![SanType::URI(
            trust_domain.uri().try_into().map_err(signing)?,
        )];
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.not_before = x509::whole_seconds(now - options.backdate).into();
        params.not_after = x509::whole_seconds(now + options.root_ttl).into();
        params.serial_number = Some(serial.to_rcgen());
        let root = params.self_signed(&key).map_err(signing)?;
        Self::assemble(trust_domain, vec![root.der().clone()], key, options)
    }

    /// Loads an operator-provided CA.
    ///
    /// `cert_chain_pem` starts with the signing certificate and ends with the
    /// self-signed root (`intermediate + root`, or just `root`); the root
    /// becomes the trust bundle. `key_pem` is the signing certificate's PKCS#8
    /// key. The chain's links, the key match, CA flags and expiry are checked,
    /// then a probe leaf is signed and verified against the root.
    pub fn from_pem(
        trust_domain: &TrustDomain,
        cert_chain_pem: &str,
        key_pem: &str,
        options: CaOptions,
    ) -> Result<Self, Error> {
        let chain = x509::certs_from_pem(cert_chain_pem.as_bytes(), "CA certificate chain")?;
        let key = load_key(key_pem)?;
        Self::assemble(trust_domain, chain, key, options)
    }

    /// [`CertificateAuthority::from_pem`] from the files at `cert_chain` and
    /// `key`: every error names the file (or both files) at fault.
    pub fn from_pem_files(
        trust_domain: &TrustDomain,
        cert_chain: &std::path::Path,
        key: &std::path::Path,
        options: CaOptions,
    ) -> Result<Self, Error> {
        let read = |p: &std::path::Path| {
            std::fs::read_to_string(p).map_err(|source| Error::Io {
                op: "read",
                path: p.to_path_buf(),
                source,
            })
        };
        let chain_pem = read(cert_chain)?;
        let key_pem = read(key)?;
        let chain = x509::certs_from_pem(chain_pem.as_bytes(), "CA certificate chain")
            .map_err(|e| e.in_file(cert_chain))?;
        let key_pair = load_key(&key_pem).map_err(|e| e.in_file(key))?;
        Self::assemble(trust_domain, chain, key_pair, options).map_err(|e| Error::CaFiles {
            cert: cert_chain.to_path_buf(),
            key: key.to_path_buf(),
            source: Box::new(e),
        })
    }

    /// Checks a chain and key, then builds the CA; shared by every constructor.
    fn assemble(
        trust_domain: &TrustDomain,
        chain: Vec<CertificateDer<'static>>,
        key: KeyPair,
        options: CaOptions,
    ) -> Result<Self, Error> {
        options.validate()?;
        let infos = chain
            .iter()
            .enumerate()
            .map(|(i, der)| x509::inspect(der, "CA certificate chain", i))
            .collect::<Result<Vec<CertInfo>, Error>>()?;
        check_chain(trust_domain, &infos, SystemTime::now())?;
        let signing = &infos[0];
        if key.der_bytes() != signing.public_key.as_slice() {
            return Err(Error::CaKeyMismatch {
                subject: signing.subject.clone(),
            });
        }
        let issuer = Issuer::from_ca_cert_der(&chain[0], key).map_err(|source| Error::Signing {
            what: format!("with CA certificate {:?}", signing.subject),
            source,
        })?;
        let root = chain[chain.len() - 1].clone();
        let ca = Self {
            bundle: TrustBundle::from_der([root])?,
            trust_domain: trust_domain.clone(),
            issuer,
            signing_subject: signing.subject.clone(),
            not_after: infos
                .iter()
                .map(|i| i.not_after)
                .min()
                .unwrap_or(signing.not_after),
            chain,
            options,
        };
        ca.self_check()?;
        Ok(ca)
    }

    /// Signs a leaf for `identity` around the public key of `csr` (PEM or DER).
    ///
    /// `identity` must come from the caller's authenticated credentials. The
    /// leaf's only SAN is that identity's URI, it has no common name, is not a
    /// CA, may sign (digitalSignature) for TLS clients and servers, starts
    /// [`CaOptions::backdate`] in the past and lives `ttl` (default
    /// [`CaOptions::default_leaf_ttl`], at most [`CaOptions::max_leaf_ttl`],
    /// never past the CA's own expiry).
    ///
    /// Refused, with nothing signed: a CSR whose signature does not verify, a
    /// CSR carrying a URI SAN other than `identity` ([`Error::IdentityMismatch`]),
    /// a key that is not ECDSA P-256/P-384 or Ed25519, an identity outside the
    /// CA's trust domain, a TTL below [`MIN_LEAF_TTL`].
    pub fn sign_csr(
        &self,
        csr: &[u8],
        identity: &SpiffeId,
        ttl: Option<Duration>,
    ) -> Result<IssuedCert, Error> {
        if identity.trust_domain() != &self.trust_domain {
            return Err(Error::ForeignTrustDomain {
                identity: identity.clone(),
                trust_domain: self.trust_domain.clone(),
            });
        }
        let csr = parse_csr(csr)?;
        check_requested_identity(&csr, identity)?;
        check_key_algorithm(&csr)?;
        let ttl = self.leaf_ttl(ttl)?;
        self.issue(&csr.params.public_key, identity, ttl)
    }

    /// The trust domain this CA signs for.
    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    /// The bundle proxies must trust: the root at the end of the chain.
    pub fn trust_bundle(&self) -> TrustBundle {
        self.bundle.clone()
    }

    /// PEM of the CA's own chain, signing certificate first, root last.
    pub fn chain_pem(&self) -> String {
        x509::certs_to_pem(&self.chain)
    }

    /// Subject of the signing certificate, for logs.
    pub fn subject(&self) -> &str {
        &self.signing_subject
    }

    /// When the first certificate of the CA chain expires.
    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }

    /// The options the CA runs with.
    pub fn options(&self) -> &CaOptions {
        &self.options
    }

    /// The CA key in PKCS#8 PEM, for persisting a generated CA only.
    fn key_pem(&self) -> String {
        self.issuer.key().serialize_pem()
    }

    fn leaf_ttl(&self, requested: Option<Duration>) -> Result<Duration, Error> {
        let ttl = requested.unwrap_or(self.options.default_leaf_ttl);
        if ttl < MIN_LEAF_TTL {
            return Err(Error::TtlTooShort {
                requested: ttl,
                minimum: MIN_LEAF_TTL,
            });
        }
        Ok(ttl.min(self.options.max_leaf_ttl))
    }

    /// Signs a leaf certificate; every check has already been done.
    fn issue(
        &self,
        public_key: &impl PublicKeyData,
        identity: &SpiffeId,
        ttl: Duration,
    ) -> Result<IssuedCert, Error> {
        let now = SystemTime::now();
        let not_before = x509::whole_seconds(now - self.options.backdate);
        let not_after = x509::whole_seconds((now + ttl).min(self.not_after));
        let serial = Serial::random()?;
        let signing = |source| Error::Signing {
            what: format!("leaf for {identity}"),
            source,
        };

        let mut params = CertificateParams::default();
        // No subject at all: the identity lives in the SAN only (the SAN
        // extension is then marked critical, as RFC 5280 requires).
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names = vec![SanType::URI(
            identity.to_string().try_into().map_err(signing)?,
        )];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(serial.to_rcgen());
        params.not_before = not_before.into();
        params.not_after = not_after.into();
        let leaf = params
            .signed_by(public_key, &self.issuer)
            .map_err(signing)?;

        let intermediates = &self.chain[..self.chain.len() - 1];
        let chain_pem = x509::certs_to_pem(std::iter::once(leaf.der()).chain(intermediates));
        Ok(IssuedCert {
            identity: identity.clone(),
            chain_pem,
            serial,
            not_before,
            not_after,
        })
    }

    /// Signs a probe leaf and verifies it against the root, so a CA whose
    /// signatures do not verify (wrong key, tampered chain, constraints that
    /// forbid leaves) fails at load instead of at every handshake.
    fn self_check(&self) -> Result<(), Error> {
        let probe_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(|source| Error::KeyGeneration { source })?;
        let probe_id = SpiffeId::new(
            self.trust_domain.clone(),
            SELF_CHECK_NAMESPACE,
            SELF_CHECK_ACCOUNT,
        )?;
        let issued = self.issue(&probe_key, &probe_id, MIN_LEAF_TTL)?;
        let chain = x509::certs_from_pem(issued.chain_pem.as_bytes(), "probe chain")?;
        crate::verify::verify_server_chain(&self.bundle, &chain, SystemTime::now()).map_err(
            |source| Error::CaSelfCheck {
                subject: self.signing_subject.clone(),
                source,
            },
        )
    }
}

impl fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertificateAuthority")
            .field("trust_domain", &self.trust_domain)
            .field("subject", &self.signing_subject)
            .field("chain_len", &self.chain.len())
            .field(
                "not_after",
                &humantime::format_rfc3339_seconds(self.not_after),
            )
            .field("options", &self.options)
            .field("key", &"<redacted>")
            .finish()
    }
}

/// Structural checks of a CA chain, signing certificate first.
fn check_chain(
    trust_domain: &TrustDomain,
    infos: &[CertInfo],
    now: SystemTime,
) -> Result<(), Error> {
    let signing = &infos[0];
    if !signing.can_sign_certs {
        return Err(Error::NotACa {
            subject: signing.subject.clone(),
        });
    }
    for (index, pair) in infos.windows(2).enumerate() {
        if pair[0].issuer_der != pair[1].subject_der {
            return Err(Error::CaChainBroken {
                index,
                subject: pair[0].subject.clone(),
                issuer: pair[0].issuer.clone(),
                next: pair[1].subject.clone(),
            });
        }
    }
    let root = &infos[infos.len() - 1];
    if !root.self_issued {
        return Err(Error::CaChainWithoutRoot {
            subject: root.subject.clone(),
            issuer: root.issuer.clone(),
        });
    }
    for info in infos {
        if info.not_after <= now {
            return Err(Error::CaExpired {
                subject: info.subject.clone(),
                not_after: info.not_after,
            });
        }
        let expected = trust_domain.uri();
        if let Some(found) = info
            .uri_sans
            .iter()
            .find(|uri| uri.starts_with("spiffe://") && **uri != expected)
        {
            return Err(Error::CaTrustDomainMismatch {
                subject: info.subject.clone(),
                found: found.clone(),
                configured: trust_domain.clone(),
            });
        }
    }
    Ok(())
}

fn load_key(key_pem: &str) -> Result<KeyPair, Error> {
    const WHAT: &str = "CA private key";
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| match e {
        PemError::NoItemsFound => Error::NoPemBlock {
            what: WHAT,
            label: "PRIVATE KEY",
        },
        other => Error::InvalidPem {
            what: WHAT,
            reason: other.to_string(),
        },
    })?;
    let found = match &key {
        PrivateKeyDer::Pkcs8(_) => {
            return KeyPair::try_from(&key)
                .map_err(|source| Error::InvalidPrivateKey { what: WHAT, source })
        }
        PrivateKeyDer::Sec1(_) => "SEC1 (EC PRIVATE KEY)",
        PrivateKeyDer::Pkcs1(_) => "PKCS#1 (RSA PRIVATE KEY)",
        _ => "unknown",
    };
    Err(Error::UnsupportedKeyFormat { what: WHAT, found })
}

fn parse_csr(csr: &[u8]) -> Result<Csr, Error> {
    let der = if csr.trim_ascii_start().starts_with(b"-----BEGIN") {
        CertificateSigningRequestDer::from_pem_slice(csr).map_err(|e| Error::InvalidCsr {
            reason: format!("malformed PEM: {e}"),
        })?
    } else {
        CertificateSigningRequestDer::from(csr.to_vec())
    };
    // rcgen verifies the CSR's self-signature: proof the caller holds the key.
    let params =
        CertificateSigningRequestParams::from_der(&der).map_err(|e| Error::InvalidCsr {
            reason: e.to_string(),
        })?;
    let (_, parsed) = X509CertificationRequest::from_der(&der).map_err(|e| Error::InvalidCsr {
        reason: e.to_string(),
    })?;
    let spki = parsed.certification_request_info.subject_pki.raw.to_vec();
    Ok(Csr { params, spki })
}

/// rcgen infers the key type from the CSR's signature algorithm; refuse
/// types we do not issue for, and CSRs where that inference would write a
/// different public key (say a P-384 key signed with SHA-256) into the leaf.
fn check_key_algorithm(csr: &Csr) -> Result<(), Error> {
    let algorithm = csr.params.public_key.algorithm();
    if !ACCEPTED_KEY_ALGORITHMS.contains(&algorithm) {
        return Err(Error::InvalidCsr {
            reason: format!(
                "key algorithm {algorithm:?} is not accepted; use ECDSA P-256 (or P-384, Ed25519)"
            ),
        });
    }
    if csr.params.public_key.subject_public_key_info() != csr.spki {
        return Err(Error::InvalidCsr {
            reason: format!(
                "the CSR's signature algorithm ({algorithm:?}) does not match its public key"
            ),
        });
    }
    Ok(())
}

/// Subject and DNS/IP SANs of the CSR are ignored; a URI SAN must repeat
/// `allowed` exactly.
fn check_requested_identity(csr: &Csr, allowed: &SpiffeId) -> Result<(), Error> {
    let allowed_uri = allowed.to_string();
    for san in &csr.params.params.subject_alt_names {
        if let SanType::URI(uri) = san {
            if uri.as_str() != allowed_uri {
                return Err(Error::IdentityMismatch {
                    requested: uri.as_str().to_owned(),
                    allowed: allowed.clone(),
                });
            }
        }
    }
    Ok(())
}

// === impl Serial ===

// Only the CA mints serials; the type itself is a leaf (`crate::serial`),
// below the error type that names it.
impl Serial {
    /// A random, positive 16-byte serial (RFC 5280 asks for at least 64
    /// random bits; the first byte is non-zero so DER keeps all 16 bytes).
    fn random() -> Result<Self, Error> {
        let mut bytes: [u8; 16] = x509::random_bytes()?;
        bytes[0] &= 0x7f;
        if bytes[0] == 0 {
            bytes[0] = 1;
        }
        Ok(Self::from_bytes(&bytes))
    }
}
