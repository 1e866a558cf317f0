//! Certificate verification for mesh mTLS: the chain must lead to a root of
//! the [`TrustBundle`], and identity is the leaf's SPIFFE URI SAN.
//!
//! Stock webpki server verification also matches the server's DNS name, but
//! mesh leaves have no DNS SAN: a proxy dials an endpoint IP and expects a
//! workload identity. So [`SpiffeServerVerifier`] verifies the chain, validity
//! and serverAuth usage with rustls' webpki helpers, then compares the URI
//! SAN with the expected [`SpiffeIdPattern`] instead of a host name. The
//! server side wraps [`WebPkiClientVerifier`] and additionally requires a
//! well-formed SPIFFE id in one of the accepted trust domains (its own and
//! the federated ones): a root may be shared with other trust domains (an
//! operator's company root), so chaining to it proves only who signed the
//! certificate, not that its holder belongs to this mesh. Who may call what
//! is authorization's job, later.
//!
//! Both verifiers keep one root store per bundle root and skip roots whose
//! retirement time has passed at handshake time, which is what lets a
//! rotation's grace period end without rebuilding configs.

use std::fmt;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::verify_server_cert_signed_by_trust_anchor;
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ParsedCertificate, WebPkiClientVerifier};
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme,
};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use crate::bundle::TrustBundle;
use crate::error::Error;
use crate::identity::{SpiffeId, SpiffeIdPattern, TrustDomain};
use crate::x509;

/// Client-side verifier: the server must chain to the bundle and present an
/// identity matching the expected pattern.
pub struct SpiffeServerVerifier {
    anchors: Vec<Anchor>,
    expected: SpiffeIdPattern,
    algorithms: WebPkiSupportedAlgorithms,
}

/// Server-side verifier: a client certificate is required (or, built with
/// [`SpiffeClientVerifier::optional`], asked for but not required), must
/// chain to the bundle and must carry exactly one SPIFFE id, in an accepted
/// trust domain.
pub struct SpiffeClientVerifier {
    /// The server's own trust domain first, then the federated ones.
    trust_domains: Vec<TrustDomain>,
    /// Whether a client without a certificate is refused.
    mandatory: bool,
    /// One webpki verifier per root, with that root's retirement time.
    per_root: Vec<(Option<u64>, Arc<dyn ClientCertVerifier>)>,
    /// A verifier over every root, for CA hints and handshake signatures.
    all: Arc<dyn ClientCertVerifier>,
}

/// One bundle root as a single-root store.
struct Anchor {
    retire_at: Option<u64>,
    store: RootCertStore,
}

/// The SPIFFE id in `cert`'s URI SAN.
///
/// This reads, it does not verify: call it on certificates rustls has
/// verified, such as [`peer_identity_of`] does. A certificate with no URI
/// SAN, or with several, is refused.
pub fn peer_identity(cert: &CertificateDer<'_>) -> Result<SpiffeId, Error> {
    identity_in(x509::inspect(cert, "peer certificate", 0)?)
}

/// The one SPIFFE id of an inspected leaf.
pub(crate) fn identity_in(info: x509::CertInfo) -> Result<SpiffeId, Error> {
    match info.uri_sans.as_slice() {
        [uri] => uri.parse(),
        [] => Err(Error::NoSpiffeId {
            subject: info.subject,
            serial: info.serial,
        }),
        _ => Err(Error::MultipleUriSans {
            subject: info.subject,
            serial: info.serial,
            uris: info.uri_sans,
        }),
    }
}

/// The SPIFFE id of the peer of an established connection (client or server
/// side; `tokio_rustls` streams reach it through `get_ref().1`).
pub fn peer_identity_of(conn: &rustls::CommonState) -> Result<SpiffeId, Error> {
    let leaf = conn
        .peer_certificates()
        .and_then(|chain| chain.first())
        .ok_or(Error::NoPeerCertificate)?;
    peer_identity(leaf)
}

/// Verifies `chain` (leaf first) as a server chain against `bundle` at `now`,
/// without any identity check; the CA's load-time self-check.
pub(crate) fn verify_server_chain(
    bundle: &TrustBundle,
    chain: &[CertificateDer<'_>],
    now: SystemTime,
) -> Result<(), rustls::Error> {
    let provider = crate::crypto::provider();
    let anchors = Anchor::for_bundle(bundle).map_err(Error::into_rustls)?;
    let (leaf, intermediates) = chain
        .split_first()
        .ok_or(rustls::Error::NoCertificatesPresented)?;
    verify_chain(
        &anchors,
        leaf,
        intermediates,
        unix_time(now),
        &provider.signature_verification_algorithms,
    )
}

/// Tries each root still active at `now`. Returns the most telling failure:
/// "unknown issuer" from an unrelated root says less than, for example,
/// "expired" from the root that did sign the chain.
fn verify_chain(
    anchors: &[Anchor],
    leaf: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    now: UnixTime,
    algorithms: &WebPkiSupportedAlgorithms,
) -> Result<(), rustls::Error> {
    let parsed = ParsedCertificate::try_from(leaf)?;
    let mut failure: Option<rustls::Error> = None;
    for anchor in anchors.iter().filter(|a| is_active(a.retire_at, now)) {
        match verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &anchor.store,
            intermediates,
            now,
            algorithms.all,
        ) {
            Ok(()) => return Ok(()),
            Err(err) => {
                if failure.as_ref().is_none_or(is_unknown_issuer) {
                    failure = Some(err);
                }
            }
        }
    }
    Err(failure.unwrap_or(rustls::Error::InvalidCertificate(
        CertificateError::UnknownIssuer,
    )))
}

fn is_unknown_issuer(err: &rustls::Error) -> bool {
    matches!(
        err,
        rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer)
    )
}

fn is_active(retire_at: Option<u64>, now: UnixTime) -> bool {
    retire_at.is_none_or(|at| now.as_secs() < at)
}

fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn unix_time(t: SystemTime) -> UnixTime {
    UnixTime::since_unix_epoch(t.duration_since(UNIX_EPOCH).unwrap_or_default())
}

// === impl Anchor ===

impl Anchor {
    fn for_bundle(bundle: &TrustBundle) -> Result<Vec<Self>, Error> {
        bundle
            .roots()
            .iter()
            .map(|root| {
                let mut store = RootCertStore::empty();
                store
                    .add(root.cert().clone())
                    .map_err(|source| Error::InvalidTrustAnchor {
                        subject: root.subject().to_owned(),
                        source,
                    })?;
                Ok(Self {
                    retire_at: root.retire_at().map(unix_secs),
                    store,
                })
            })
            .collect()
    }
}

// === impl SpiffeServerVerifier ===

impl SpiffeServerVerifier {
    /// Trusts `bundle` and accepts servers whose identity matches `expected`.
    pub fn new(
        bundle: &TrustBundle,
        expected: SpiffeIdPattern,
        provider: &CryptoProvider,
    ) -> Result<Self, Error> {
        Ok(Self {
            anchors: Anchor::for_bundle(bundle)?,
            expected,
            algorithms: provider.signature_verification_algorithms,
        })
    }

    /// The identities this verifier accepts.
    pub fn expected(&self) -> &SpiffeIdPattern {
        &self.expected
    }
}

impl ServerCertVerifier for SpiffeServerVerifier {
    /// `server_name` is deliberately ignored: the server is identified by
    /// its SPIFFE id, not by the address it was dialed at.
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        verify_chain(
            &self.anchors,
            end_entity,
            intermediates,
            now,
            &self.algorithms,
        )?;
        let actual = peer_identity(end_entity).map_err(Error::into_rustls)?;
        if !self.expected.matches(&actual) {
            return Err(Error::UnexpectedPeerIdentity {
                expected: self.expected.clone(),
                actual,
            }
            .into_rustls());
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

impl fmt::Debug for SpiffeServerVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SpiffeServerVerifier")
            .field("roots", &self.anchors.len())
            .field("expected", &self.expected)
            .finish()
    }
}

// === impl SpiffeClientVerifier ===

impl SpiffeClientVerifier {
    /// Requires client certificates chaining to `bundle` whose SPIFFE id is
    /// in one of `trust_domains` (the server's own, then any federated ones;
    /// an empty list accepts no client).
    pub fn new(
        bundle: &TrustBundle,
        provider: Arc<CryptoProvider>,
        trust_domains: &[TrustDomain],
    ) -> Result<Self, Error> {
        let build = |store: RootCertStore| {
            WebPkiClientVerifier::builder_with_provider(Arc::new(store), provider.clone())
                .build()
                .map_err(|source| Error::ClientVerifier { source })
        };
        let mut all = RootCertStore::empty();
        let mut per_root = Vec::with_capacity(bundle.roots().len());
        for anchor in Anchor::for_bundle(bundle)? {
            all.roots.extend(anchor.store.roots.iter().cloned());
            per_root.push((anchor.retire_at, build(anchor.store)?));
        }
        Ok(Self {
            trust_domains: trust_domains.to_vec(),
            mandatory: true,
            per_root,
            all: build(all)?,
        })
    }

    /// The trust domains whose identities are accepted.
    pub fn trust_domains(&self) -> &[TrustDomain] {
        &self.trust_domains
    }

    /// Like [`SpiffeClientVerifier::new`], but a client may also present no
    /// certificate at all (the control plane's ports: a proxy's first
    /// connection comes before its first certificate). A certificate that
    /// is presented is verified just the same.
    pub fn optional(
        bundle: &TrustBundle,
        provider: Arc<CryptoProvider>,
        trust_domains: &[TrustDomain],
    ) -> Result<Self, Error> {
        Ok(Self {
            mandatory: false,
            ..Self::new(bundle, provider, trust_domains)?
        })
    }
}

impl ClientCertVerifier for SpiffeClientVerifier {
    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.all.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let mut failure: Option<rustls::Error> = None;
        let mut verified = false;
        for (_, verifier) in self.per_root.iter().filter(|(at, _)| is_active(*at, now)) {
            match verifier.verify_client_cert(end_entity, intermediates, now) {
                Ok(_) => {
                    verified = true;
                    break;
                }
                Err(err) => {
                    if failure.as_ref().is_none_or(is_unknown_issuer) {
                        failure = Some(err);
                    }
                }
            }
        }
        if !verified {
            return Err(failure.unwrap_or(rustls::Error::InvalidCertificate(
                CertificateError::UnknownIssuer,
            )));
        }
        let actual = peer_identity(end_entity).map_err(Error::into_rustls)?;
        if !self.trust_domains.contains(actual.trust_domain()) {
            return Err(Error::UntrustedTrustDomain {
                actual,
                accepted: self.trust_domains.clone(),
            }
            .into_rustls());
        }
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.all.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.all.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.all.supported_verify_schemes()
    }
}

impl fmt::Debug for SpiffeClientVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SpiffeClientVerifier")
            .field("trust_domains", &self.trust_domains)
            .field("mandatory", &self.mandatory)
            .field("roots", &self.per_root.len())
            .finish()
    }
}
