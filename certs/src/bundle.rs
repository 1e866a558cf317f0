//! The roots a proxy trusts, including roots on their way out.
//!
//! Rotating the mesh root cannot happen in one step: leaves issued under the
//! old root stay in use until their holders rotate. So a [`TrustBundle`] holds
//! the new root permanently and the old one with a retirement time; until then
//! certificates from either verify, afterwards only the new one's. The
//! verifiers in [`crate::verify`] read the retirement time from the handshake
//! clock, so a config built before the deadline stops trusting the old root
//! on time without being rebuilt.

use std::fmt;
use std::time::SystemTime;

use rustls::RootCertStore;
use rustls_pki_types::CertificateDer;

use crate::error::Error;
use crate::x509;

/// An ordered set of trusted roots; see the module docs.
#[derive(Clone, PartialEq, Eq)]
pub struct TrustBundle {
    roots: Vec<BundleRoot>,
}

/// One root of a [`TrustBundle`].
#[derive(Clone, PartialEq, Eq)]
pub struct BundleRoot {
    cert: CertificateDer<'static>,
    subject: String,
    not_after: SystemTime,
    retire_at: Option<SystemTime>,
}

// === impl TrustBundle ===

impl TrustBundle {
    /// Reads every `CERTIFICATE` block of `pem` as a permanent root.
    pub fn from_pem(pem: &str) -> Result<Self, Error> {
        Self::from_der(x509::certs_from_pem(pem.as_bytes(), "trust bundle")?)
    }

    /// Uses each certificate as a permanent root. Duplicates are dropped.
    pub fn from_der(
        roots: impl IntoIterator<Item = CertificateDer<'static>>,
    ) -> Result<Self, Error> {
        let mut bundle = Self { roots: Vec::new() };
        for (index, cert) in roots.into_iter().enumerate() {
            let root = BundleRoot::new(cert, index)?;
            if !bundle.contains(&root.cert) {
                bundle.roots.push(root);
            }
        }
        if bundle.roots.is_empty() {
            return Err(Error::EmptyTrustBundle);
        }
        Ok(bundle)
    }

    /// Adds the roots of `old` that this bundle lacks, trusted only until
    /// `retire_at`: the grace period of a root rotation. A root present in
    /// both keeps this bundle's (later) retirement.
    pub fn with_retiring(mut self, old: &TrustBundle, retire_at: SystemTime) -> Self {
        for root in &old.roots {
            if self.contains(&root.cert) {
                continue;
            }
            let retire_at = match root.retire_at {
                Some(earlier) => earlier.min(retire_at),
                None => retire_at,
            };
            self.roots.push(BundleRoot {
                retire_at: Some(retire_at),
                ..root.clone()
            });
        }
        self
    }

    /// Every root, retired or not, in insertion order.
    pub fn roots(&self) -> &[BundleRoot] {
        &self.roots
    }

    /// The roots still trusted at `now`.
    pub fn active_roots(&self, now: SystemTime) -> impl Iterator<Item = &BundleRoot> {
        self.roots.iter().filter(move |root| root.is_active_at(now))
    }

    /// The next time after `now` a root retires, for callers that want to
    /// prune or republish the bundle then.
    pub fn next_retirement(&self, now: SystemTime) -> Option<SystemTime> {
        self.roots
            .iter()
            .filter_map(|root| root.retire_at)
            .filter(|at| *at > now)
            .min()
    }

    /// Drops the roots retired at `now`; the permanent ones always remain.
    pub fn prune(&mut self, now: SystemTime) {
        self.roots.retain(|root| root.is_active_at(now));
    }

    /// PEM of every root, including retiring ones, for publishing to proxies
    /// and to non-mesh clients. PEM has no room for the retirement time:
    /// whoever needs it reads [`Self::roots`].
    pub fn to_pem(&self) -> String {
        x509::certs_to_pem(self.roots.iter().map(|root| &root.cert))
    }

    /// A rustls root store of the roots active at `now`.
    pub fn root_store(&self, now: SystemTime) -> Result<RootCertStore, Error> {
        let mut store = RootCertStore::empty();
        for root in self.active_roots(now) {
            store
                .add(root.cert.clone())
                .map_err(|source| Error::InvalidTrustAnchor {
                    subject: root.subject.clone(),
                    source,
                })?;
        }
        Ok(store)
    }

    fn contains(&self, cert: &CertificateDer<'_>) -> bool {
        self.roots.iter().any(|root| root.cert == *cert)
    }
}

impl fmt::Debug for TrustBundle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(&self.roots).finish()
    }
}

// === impl BundleRoot ===

impl BundleRoot {
    fn new(cert: CertificateDer<'static>, index: usize) -> Result<Self, Error> {
        let info = x509::inspect(&cert, "trust bundle", index)?;
        // Reject now what webpki would reject at handshake time.
        RootCertStore::empty()
            .add(cert.clone())
            .map_err(|source| Error::InvalidTrustAnchor {
                subject: info.subject.clone(),
                source,
            })?;
        Ok(Self {
            cert,
            subject: info.subject,
            not_after: info.not_after,
            retire_at: None,
        })
    }

    /// The DER certificate.
    pub fn cert(&self) -> &CertificateDer<'static> {
        &self.cert
    }

    /// The root's subject, for logs.
    pub fn subject(&self) -> &str {
        &self.subject
    }

    /// When the root certificate itself expires.
    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }

    /// When the root stops being trusted, if it is being rotated out.
    pub fn retire_at(&self) -> Option<SystemTime> {
        self.retire_at
    }

    /// Whether the root is trusted at `now`.
    pub fn is_active_at(&self, now: SystemTime) -> bool {
        self.retire_at.is_none_or(|at| now < at)
    }
}

impl fmt::Debug for BundleRoot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BundleRoot")
            .field("subject", &self.subject)
            .field(
                "not_after",
                &humantime::format_rfc3339_seconds(self.not_after),
            )
            .field(
                "retire_at",
                &self.retire_at.map(humantime::format_rfc3339_seconds),
            )
            .finish()
    }
}
