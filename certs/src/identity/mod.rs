//! Workload identities: `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`.
//!
//! A [`SpiffeId`] names one workload. The CA writes it as the only URI SAN of
//! each leaf, the proxy reads it back from the peer's verified certificate,
//! and authorization matches it against a [`SpiffeIdPattern`].
//!
//! Parsing is strict (the SPIFFE character rules plus our fixed path shape)
//! because ids are compared as strings: if one workload could be spelled two
//! ways, a policy written for one spelling would miss the other.
//!
//! This module holds the value types, below [`crate::Error`] (which carries
//! them); building one from a string (`new`, `FromStr`) is in `parse`,
//! above the error type.

use std::fmt;
use std::sync::Arc;

mod parse;

const SCHEME: &str = "spiffe://";
const WILDCARD: &str = "*";

/// The name of a trust domain, e.g. `cluster.local`.
///
/// Lowercase letters, digits, `.`, `-` and `_`, at most 255 bytes.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TrustDomain(Arc<str>);

/// A workload identity, `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`.
///
/// Namespace and service account are SPIFFE path segments: ASCII letters,
/// digits, `.`, `-` and `_`, not empty, not `.` or `..`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId {
    trust_domain: TrustDomain,
    namespace: Box<str>,
    service_account: Box<str>,
}

/// A set of identities, for authorization rules and for the identity a client
/// expects its server to present.
///
/// Three forms are accepted:
/// - `spiffe://td/ns/prod/sa/web`: exactly that identity;
/// - `spiffe://td/ns/prod/sa/*`: every service account of namespace `prod`;
/// - `spiffe://td/ns/*`: every workload of trust domain `td`.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct SpiffeIdPattern {
    trust_domain: TrustDomain,
    /// `None` matches every namespace (and then every service account).
    namespace: Option<Box<str>>,
    /// `None` matches every service account.
    service_account: Option<Box<str>>,
}

/// The part of a SPIFFE id an error is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpiffeIdPart {
    /// The whole id (its length).
    Whole,
    /// The `spiffe://` scheme.
    Scheme,
    /// The trust domain.
    TrustDomain,
    /// The path after the trust domain.
    Path,
    /// The namespace segment.
    Namespace,
    /// The service account segment.
    ServiceAccount,
}

// === impl TrustDomain ===

impl TrustDomain {
    /// The name, e.g. `cluster.local`.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The trust domain's own SPIFFE URI, `spiffe://<name>`, which generated
    /// roots carry as URI SAN.
    pub fn uri(&self) -> String {
        format!("{SCHEME}{}", self.0)
    }
}

impl fmt::Display for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TrustDomain({:?})", self.0)
    }
}

// === impl SpiffeId ===

impl SpiffeId {
    /// The trust domain.
    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    /// The namespace.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The service account.
    pub fn service_account(&self) -> &str {
        &self.service_account
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{SCHEME}{}/ns/{}/sa/{}",
            self.trust_domain, self.namespace, self.service_account
        )
    }
}

impl fmt::Debug for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SpiffeId({self})")
    }
}

// === impl SpiffeIdPattern ===

impl SpiffeIdPattern {
    /// Matches exactly `id`.
    pub fn exact(id: &SpiffeId) -> Self {
        Self {
            trust_domain: id.trust_domain.clone(),
            namespace: Some(id.namespace.clone()),
            service_account: Some(id.service_account.clone()),
        }
    }

    /// Matches every workload of `trust_domain` (`spiffe://<td>/ns/*`).
    pub fn any_in(trust_domain: &TrustDomain) -> Self {
        Self {
            trust_domain: trust_domain.clone(),
            namespace: None,
            service_account: None,
        }
    }

    /// Whether `id` is one of the identities this pattern names.
    pub fn matches(&self, id: &SpiffeId) -> bool {
        self.trust_domain == id.trust_domain
            && self.namespace.as_ref().is_none_or(|ns| *ns == id.namespace)
            && self
                .service_account
                .as_ref()
                .is_none_or(|sa| *sa == id.service_account)
    }

    /// Whether this pattern names a single identity (no wildcard).
    pub fn is_exact(&self) -> bool {
        self.service_account.is_some()
    }

    /// The trust domain every matching identity belongs to.
    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }
}

impl From<SpiffeId> for SpiffeIdPattern {
    fn from(id: SpiffeId) -> Self {
        Self::exact(&id)
    }
}

impl From<&SpiffeId> for SpiffeIdPattern {
    fn from(id: &SpiffeId) -> Self {
        Self::exact(id)
    }
}

impl fmt::Display for SpiffeIdPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{SCHEME}{}/ns/", self.trust_domain)?;
        match (&self.namespace, &self.service_account) {
            (None, _) => f.write_str(WILDCARD),
            (Some(ns), None) => write!(f, "{ns}/sa/{WILDCARD}"),
            (Some(ns), Some(sa)) => write!(f, "{ns}/sa/{sa}"),
        }
    }
}

impl fmt::Debug for SpiffeIdPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SpiffeIdPattern({self})")
    }
}

// === impl SpiffeIdPart ===

impl fmt::Display for SpiffeIdPart {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Whole => "id",
            Self::Scheme => "scheme",
            Self::TrustDomain => "trust domain",
            Self::Path => "path",
            Self::Namespace => "namespace",
            Self::ServiceAccount => "service account",
        })
    }
}
