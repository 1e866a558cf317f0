//! The workload side: the proxy's own key, its CSR, and the certificate the
//! CA returns, turned into what rustls needs.
//!
//! Architecture invariant: a private key never leaves the proxy that
//! generated it. [`WorkloadKey`] has no method that serializes the key, and
//! no `Debug`, `Display` or serde output of any type here shows key material.
//! Only rustls receives it, in-process.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rcgen::{CertificateParams, DistinguishedName, KeyPair, PublicKeyData, SanType};
use rustls::sign::CertifiedKey;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use crate::bundle::TrustBundle;
use crate::error::Error;
use crate::identity::SpiffeId;
use crate::serial::Serial;
use crate::{crypto, rotation, verify, x509};

/// A freshly generated ECDSA P-256 key, one per certificate.
pub struct WorkloadKey {
    key: KeyPair,
}

/// The proxy's current certificate and key: what it presents in mTLS.
///
/// Built from the local key and the chain the CA returned; the rotation
/// deadline is drawn once here, so asking twice gives the same answer.
pub struct CertifiedIdentity {
    identity: SpiffeId,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    certified: Arc<CertifiedKey>,
    serial: Serial,
    not_before: SystemTime,
    not_after: SystemTime,
    refresh_at: SystemTime,
}

// === impl WorkloadKey ===

impl WorkloadKey {
    /// Generates a new ECDSA P-256 key.
    pub fn generate() -> Result<Self, Error> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(|source| Error::KeyGeneration { source })?;
        Ok(Self { key })
    }

    /// A PEM CSR for `identity`, signed with this key.
    ///
    /// The CSR carries the identity as URI SAN so a CA can refuse a mismatch,
    /// but the CA decides the identity from the caller's credentials.
    pub fn csr_pem(&self, identity: &SpiffeId) -> Result<String, Error> {
        let csr = self.csr(identity)?;
        csr.pem().map_err(|source| Error::Signing {
            what: format!("CSR for {identity}"),
            source,
        })
    }

    /// The same CSR as [`Self::csr_pem`], in DER.
    pub fn csr_der(&self, identity: &SpiffeId) -> Result<Vec<u8>, Error> {
        Ok(self.csr(identity)?.der().to_vec())
    }

    /// The public key as DER SubjectPublicKeyInfo (not secret).
    pub fn public_key_der(&self) -> Vec<u8> {
        self.key.subject_public_key_info()
    }

    fn csr(&self, identity: &SpiffeId) -> Result<rcgen::CertificateSigningRequest, Error> {
        let signing = |source| Error::Signing {
            what: format!("CSR for {identity}"),
            source,
        };
        let mut params = CertificateParams::default();
        // rcgen's default subject is a placeholder CN; mesh CSRs have none.
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names = vec![SanType::URI(
            identity.to_string().try_into().map_err(signing)?,
        )];
        params.serialize_request(&self.key).map_err(signing)
    }
}

impl fmt::Debug for WorkloadKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkloadKey").finish_non_exhaustive()
    }
}

// === impl CertifiedIdentity ===

impl CertifiedIdentity {
    /// Pairs `key` with the chain the CA issued for it (leaf first, PEM).
    ///
    /// Refuses a leaf that does not certify `key`, or that does not carry
    /// exactly one SPIFFE id. Whether the chain is trusted is checked by
    /// [`Self::verify`] or by the peers at handshake time.
    pub fn new(key: WorkloadKey, chain_pem: &str) -> Result<Self, Error> {
        const WHAT: &str = "issued certificate chain";
        let chain = x509::certs_from_pem(chain_pem.as_bytes(), WHAT)?;
        let leaf = x509::inspect(&chain[0], WHAT, 0)?;
        if leaf.public_key != key.key.der_bytes() {
            return Err(Error::LeafKeyMismatch {
                serial: leaf.serial,
            });
        }
        let (serial, not_before, not_after) =
            (leaf.serial.clone(), leaf.not_before, leaf.not_after);
        let identity = verify::identity_in(leaf)?;
        let private = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.key.serialize_der()));
        let certified =
            CertifiedKey::from_der(chain.clone(), private.clone_key(), &crypto::provider())
                .map_err(|source| Error::TlsConfig {
                    side: "workload certificate",
                    source,
                })?;
        Ok(Self {
            identity,
            chain,
            key: private,
            certified: Arc::new(certified),
            serial,
            not_before,
            not_after,
            // Measured from arrival, not from the backdated `not_before`:
            // backdating for clock skew must not pull renewal earlier (for a
            // short-lived certificate it would put the deadline in the past).
            refresh_at: rotation::rotation_deadline(
                not_before.max(std::time::SystemTime::now()),
                not_after,
            ),
        })
    }

    /// The identity the certificate proves.
    pub fn identity(&self) -> &SpiffeId {
        &self.identity
    }

    /// The chain presented to peers, leaf first.
    pub fn chain(&self) -> &[CertificateDer<'static>] {
        &self.chain
    }

    /// The leaf's serial number.
    pub fn serial(&self) -> &Serial {
        &self.serial
    }

    /// Start of the leaf's validity.
    pub fn not_before(&self) -> SystemTime {
        self.not_before
    }

    /// End of the leaf's validity.
    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }

    /// Whether the leaf is within its validity at `now`.
    pub fn is_valid_at(&self, now: SystemTime) -> bool {
        self.not_before <= now && now < self.not_after
    }

    /// When to renew: half-life with jitter (see [`rotation::rotation_deadline`]).
    pub fn rotation_deadline(&self) -> SystemTime {
        self.refresh_at
    }

    /// How long to wait from `now` before renewing; zero when overdue.
    pub fn refresh_in(&self, now: SystemTime) -> Duration {
        rotation::time_until(now, self.refresh_at)
    }

    /// The certificate and key as rustls signs with them, for a custom
    /// certificate resolver.
    pub fn certified_key(&self) -> Arc<CertifiedKey> {
        self.certified.clone()
    }

    /// The chain and the private key as rustls' raw types, for APIs such as
    /// `with_single_cert`. The key stays in this process: hand it to rustls
    /// only.
    pub fn to_rustls(&self) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
        (self.chain.clone(), self.key.clone_key())
    }

    /// Checks that the chain leads to a root of `bundle` active at `now`, as
    /// peers will; a proxy can call it before installing a new certificate.
    pub fn verify(&self, bundle: &TrustBundle, now: SystemTime) -> Result<(), Error> {
        verify::verify_server_chain(bundle, &self.chain, now).map_err(|source| {
            Error::UntrustedChain {
                identity: self.identity.clone(),
                serial: self.serial.clone(),
                source: Box::new(source),
            }
        })
    }
}

impl fmt::Debug for CertifiedIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertifiedIdentity")
            .field("identity", &self.identity)
            .field("serial", &self.serial)
            .field(
                "not_before",
                &humantime::format_rfc3339_seconds(self.not_before),
            )
            .field(
                "not_after",
                &humantime::format_rfc3339_seconds(self.not_after),
            )
            .field("chain_len", &self.chain.len())
            .field("key", &"<redacted>")
            .finish()
    }
}
