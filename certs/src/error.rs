//! The one error type of `sane-certs`.
//!
//! Every variant carries the context an operator needs to act on it: the
//! identity, the file, the certificate subject or the part of a SPIFFE id that
//! was wrong. Callers that must decide (the CA service choosing a gRPC status,
//! the proxy deciding whether to retry) match on the variant; nothing is
//! folded into a catch-all.

use std::io;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use crate::identity::{SpiffeId, SpiffeIdPart, SpiffeIdPattern, TrustDomain};
use crate::serial::Serial;

/// Everything that can go wrong while parsing identities, issuing,
/// loading or verifying certificates.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A string is not a `spiffe://<td>/ns/<ns>/sa/<sa>` id.
    #[error("invalid SPIFFE id {input:?}: {part} {reason}")]
    InvalidSpiffeId {
        /// The rejected input.
        input: String,
        /// Which part of it is wrong.
        part: SpiffeIdPart,
        /// What is wrong with that part.
        reason: String,
    },

    /// A string is not a valid identity pattern (see [`SpiffeIdPattern`]).
    #[error("invalid SPIFFE id pattern {input:?}: {part} {reason}")]
    InvalidSpiffeIdPattern {
        /// The rejected input.
        input: String,
        /// Which part of it is wrong.
        part: SpiffeIdPart,
        /// What is wrong with that part.
        reason: String,
    },

    /// A trust domain name breaks the SPIFFE rules.
    #[error("invalid trust domain {input:?}: {reason}")]
    InvalidTrustDomain {
        /// The rejected input.
        input: String,
        /// What is wrong with it.
        reason: String,
    },

    /// A PEM input holds no block of the expected kind.
    #[error("{what}: no PEM block labelled {label} found")]
    NoPemBlock {
        /// The input being read, e.g. `CA certificate chain`.
        what: &'static str,
        /// The PEM label looked for.
        label: &'static str,
    },

    /// A PEM input is malformed.
    #[error("{what}: malformed PEM: {reason}")]
    InvalidPem {
        /// The input being read.
        what: &'static str,
        /// The parser's complaint.
        reason: String,
    },

    /// A DER certificate cannot be parsed.
    #[error("{what}: certificate #{index} cannot be parsed: {reason}")]
    InvalidCertificate {
        /// The input being read.
        what: &'static str,
        /// Position of the certificate in its chain, from 0.
        index: usize,
        /// The parser's complaint.
        reason: String,
    },

    /// A private key is in a format this build cannot load.
    #[error(
        "{what}: {found} private keys are not supported; convert the key to PKCS#8 \
         (openssl pkcs8 -topk8 -nocrypt)"
    )]
    UnsupportedKeyFormat {
        /// The input being read.
        what: &'static str,
        /// The format found, e.g. `SEC1 (EC PRIVATE KEY)`.
        found: &'static str,
    },

    /// A PKCS#8 private key cannot be loaded.
    #[error("{what}: cannot load the private key")]
    InvalidPrivateKey {
        /// The input being read.
        what: &'static str,
        /// The underlying failure.
        #[source]
        source: rcgen::Error,
    },

    /// The CA key does not belong to the CA certificate.
    #[error("the CA private key does not match the CA certificate {subject:?}")]
    CaKeyMismatch {
        /// Subject of the CA's signing certificate.
        subject: String,
    },

    /// The CA's signing certificate may not sign certificates.
    #[error(
        "CA certificate {subject:?} cannot sign certificates: it needs basicConstraints \
         CA:TRUE and, if keyUsage is present, keyCertSign"
    )]
    NotACa {
        /// Subject of the offending certificate.
        subject: String,
    },

    /// Two adjacent certificates of the CA chain do not link up.
    #[error(
        "CA chain is broken: certificate #{index} ({subject:?}) was issued by {issuer:?}, \
         but the next certificate is {next:?}"
    )]
    CaChainBroken {
        /// Position of the certificate whose issuer is missing.
        index: usize,
        /// Its subject.
        subject: String,
        /// Its issuer.
        issuer: String,
        /// Subject of the certificate that follows it.
        next: String,
    },

    /// The CA chain does not end with a self-signed root.
    #[error(
        "CA chain ends with {subject:?}, issued by {issuer:?}: the chain must end with the \
         self-signed root, which becomes the trust bundle"
    )]
    CaChainWithoutRoot {
        /// Subject of the last certificate.
        subject: String,
        /// Its issuer.
        issuer: String,
    },

    /// A certificate of the CA chain has expired.
    #[error("CA certificate {subject:?} expired at {}", rfc3339(*not_after))]
    CaExpired {
        /// Subject of the expired certificate.
        subject: String,
        /// Its expiry.
        not_after: SystemTime,
    },

    /// A [`crate::CaOptions`] field is out of range.
    #[error("invalid CA option {field}: {reason}")]
    InvalidCaOption {
        /// The field, e.g. `max_leaf_ttl`.
        field: &'static str,
        /// The bad value and the rule it breaks.
        reason: String,
    },

    /// A CA certificate names a different trust domain in its URI SAN.
    #[error(
        "CA certificate {subject:?} is for trust domain {found:?}, not the configured {configured}"
    )]
    CaTrustDomainMismatch {
        /// Subject of the CA certificate.
        subject: String,
        /// The `spiffe://` URI found in it.
        found: String,
        /// The trust domain the CA was loaded for.
        configured: TrustDomain,
    },

    /// A probe leaf signed by the CA does not verify against the CA's root.
    #[error("CA self-check failed: a probe leaf signed by {subject:?} does not verify: {source}")]
    CaSelfCheck {
        /// Subject of the CA's signing certificate.
        subject: String,
        /// Why verification failed.
        #[source]
        source: rustls::Error,
    },

    /// Only one of the two CA files exists.
    #[error(
        "CA directory {}: {present} exists but {missing} does not; refusing to generate a new \
         CA over half of an existing one",
        dir.display()
    )]
    IncompleteCaFiles {
        /// The CA directory.
        dir: PathBuf,
        /// The file that exists.
        present: &'static str,
        /// The file that is missing.
        missing: &'static str,
    },

    /// A CA file (certificate chain, key or retiring root) cannot be
    /// loaded: `source` says why.
    #[error("CA file {}: {source}", path.display())]
    CaFile {
        /// The file.
        path: PathBuf,
        /// What is wrong with its contents.
        #[source]
        source: Box<Error>,
    },

    /// A CA certificate chain and key, each readable, do not make a CA
    /// (key mismatch, broken chain, expired, wrong trust domain, ...).
    #[error(
        "CA files {} (certificate chain) and {} (key): {source}",
        cert.display(),
        key.display()
    )]
    CaFiles {
        /// The certificate chain file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// What is wrong.
        #[source]
        source: Box<Error>,
    },

    /// A file system operation failed.
    #[error("cannot {op} {}", path.display())]
    Io {
        /// What was being done, e.g. `read`, `rename`.
        op: &'static str,
        /// The path involved.
        path: PathBuf,
        /// The underlying failure.
        #[source]
        source: io::Error,
    },

    /// Generating a key pair failed.
    #[error("cannot generate a key pair")]
    KeyGeneration {
        /// The underlying failure.
        #[source]
        source: rcgen::Error,
    },

    /// Building or signing a certificate or CSR failed.
    #[error("cannot sign {what}")]
    Signing {
        /// What was being signed, e.g. `leaf for spiffe://...`.
        what: String,
        /// The underlying failure.
        #[source]
        source: rcgen::Error,
    },

    /// A CSR cannot be parsed or its signature does not verify.
    #[error("invalid CSR: {reason}")]
    InvalidCsr {
        /// What is wrong with it.
        reason: String,
    },

    /// The CSR asks for an identity other than the one the caller proved.
    #[error("CSR requests identity {requested:?}, but the caller is only allowed {allowed}")]
    IdentityMismatch {
        /// The URI SAN found in the CSR.
        requested: String,
        /// The identity derived from the caller's credentials.
        allowed: SpiffeId,
    },

    /// The identity belongs to another trust domain than the CA.
    #[error("identity {identity} is outside the CA's trust domain {trust_domain}")]
    ForeignTrustDomain {
        /// The identity asked for.
        identity: SpiffeId,
        /// The CA's trust domain.
        trust_domain: TrustDomain,
    },

    /// The requested certificate lifetime is too short to be useful.
    #[error("requested TTL {requested:?} is below the minimum of {minimum:?}")]
    TtlTooShort {
        /// The TTL asked for.
        requested: Duration,
        /// The shortest TTL the CA grants.
        minimum: Duration,
    },

    /// The operating system's random number generator failed.
    #[error("the system random number generator failed")]
    RandomUnavailable,

    /// A name given for a serving certificate is not a usable DNS name.
    #[error("invalid DNS name {name:?} for a serving certificate: {reason}")]
    InvalidDnsName {
        /// The rejected name.
        name: String,
        /// What is wrong with it.
        reason: String,
    },

    /// A trust bundle was built without any root.
    #[error("the trust bundle has no root certificate")]
    EmptyTrustBundle,

    /// A trust bundle root cannot be used as a trust anchor.
    #[error("trust bundle root {subject:?} cannot be used as a trust anchor: {source}")]
    InvalidTrustAnchor {
        /// Subject of the root.
        subject: String,
        /// Why webpki rejected it.
        #[source]
        source: rustls::Error,
    },

    /// A rustls configuration cannot be built.
    #[error("cannot build the {side} TLS configuration: {source}")]
    TlsConfig {
        /// `server` or `client`.
        side: &'static str,
        /// The underlying failure.
        #[source]
        source: rustls::Error,
    },

    /// The client-certificate verifier cannot be built.
    #[error("cannot build the client certificate verifier: {source}")]
    ClientVerifier {
        /// The underlying failure.
        #[source]
        source: rustls::server::VerifierBuilderError,
    },

    /// The server-certificate verifier cannot be built.
    #[error("cannot build the server certificate verifier: {source}")]
    ServerVerifier {
        /// The underlying failure.
        #[source]
        source: rustls::server::VerifierBuilderError,
    },

    /// An issued certificate does not carry the local workload key.
    #[error("issued certificate {serial} does not match the local workload key")]
    LeafKeyMismatch {
        /// Serial of the issued leaf.
        serial: Serial,
    },

    /// A workload chain does not lead to a trusted root.
    #[error(
        "certificate {serial} for {identity} does not verify against the trust bundle: {source}"
    )]
    UntrustedChain {
        /// The identity the leaf carries.
        identity: SpiffeId,
        /// The leaf's serial number.
        serial: Serial,
        /// Why verification failed (boxed: it is large and this path is cold).
        #[source]
        source: Box<rustls::Error>,
    },

    /// The TLS peer sent no certificate.
    #[error("the peer presented no certificate")]
    NoPeerCertificate,

    /// A certificate carries no `spiffe://` URI SAN.
    #[error("certificate {subject:?} (serial {serial}) has no URI SAN holding a SPIFFE id")]
    NoSpiffeId {
        /// Subject of the certificate (empty for mesh leaves).
        subject: String,
        /// Its serial number.
        serial: Serial,
    },

    /// A certificate carries more than one URI SAN.
    #[error(
        "certificate {subject:?} (serial {serial}) has {} URI SANs {uris:?}; a workload \
         certificate has exactly one",
        uris.len()
    )]
    MultipleUriSans {
        /// Subject of the certificate.
        subject: String,
        /// Its serial number.
        serial: Serial,
        /// All URI SANs found.
        uris: Vec<String>,
    },

    /// The peer proved an identity other than the one expected.
    #[error("peer presented identity {actual}, expected {expected}")]
    UnexpectedPeerIdentity {
        /// What the caller was willing to accept.
        expected: SpiffeIdPattern,
        /// What the peer's verified certificate says.
        actual: SpiffeId,
    },

    /// A client certificate chains to a trusted root but names a trust domain
    /// that is neither the server's own nor a federated one.
    #[error(
        "peer identity {actual} is in trust domain {}, which is not accepted (accepted: {})",
        actual.trust_domain(),
        list_domains(accepted)
    )]
    UntrustedTrustDomain {
        /// What the peer's verified certificate says.
        actual: SpiffeId,
        /// The trust domains the server accepts.
        accepted: Vec<TrustDomain>,
    },
}

fn list_domains(domains: &[TrustDomain]) -> String {
    let names: Vec<&str> = domains.iter().map(TrustDomain::as_str).collect();
    names.join(", ")
}

/// Formats a time the way operators read it in logs.
fn rfc3339(t: SystemTime) -> humantime::Rfc3339Timestamp {
    humantime::format_rfc3339_seconds(t)
}

// === impl Error ===

impl Error {
    /// This error, about the contents of the file at `path`.
    pub fn in_file(self, path: &std::path::Path) -> Error {
        Error::CaFile {
            path: path.to_path_buf(),
            source: Box::new(self),
        }
    }

    /// Wraps this error so a rustls verifier can return it; the handshake then
    /// fails with a `certificate_unknown` alert and this error as its cause.
    pub(crate) fn into_rustls(self) -> rustls::Error {
        rustls::Error::InvalidCertificate(rustls::CertificateError::Other(rustls::OtherError(
            std::sync::Arc::new(self),
        )))
    }
}
