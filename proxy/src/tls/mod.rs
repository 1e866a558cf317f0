//! Mutual TLS between sidecars.
//!
//! [`Identity`] holds the proxy's current certificate material: its
//! [`CertifiedIdentity`] (key generated here, chain issued by the mesh CA),
//! the trust bundle, the server config built from them and a cache of client
//! configs per expected peer identity. [`rotation`] replaces the material
//! before the certificate expires; each new connection takes the material
//! current at that moment and existing connections keep theirs, so rotation
//! never drops a connection.
//!
//! Inbound: a connection is TLS if it starts with a handshake record; the
//! client certificate must chain to the bundle and carry a SPIFFE id of the
//! proxy's own trust domain or a federated one (a root may be shared with
//! other meshes), which becomes the connection's [`PeerIdentity`]. Outbound: a connection to a
//! peer sidecar is TLS whenever the proxy has an identity, and the server
//! must present the identity the endpoint is expected to have.
//!
//! Architecture invariant: the private key never leaves this process; it is
//! generated in [`rotation`] and only handed to rustls.

pub mod control_plane;
pub mod rotation;

use arc_swap::ArcSwapOption;
use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts, Registry};
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ServerConfig};
use sane_certs::{CertifiedIdentity, SpiffeIdPattern, TrustBundle, TrustDomain};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;
use tokio_rustls::{client, server, TlsAcceptor, TlsConnector};

/// The first byte of a TLS handshake record.
pub const TLS_HANDSHAKE_BYTE: u8 = 0x16;

/// The SPIFFE id a peer proved in the TLS handshake.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerIdentity(pub Arc<str>);

/// Certificate material in use at one moment.
#[derive(Debug)]
pub struct TlsMaterial {
    /// The certificate and its key.
    pub identity: CertifiedIdentity,
    /// The mesh roots.
    pub bundle: TrustBundle,
    server: Arc<ServerConfig>,
    clients: Mutex<HashMap<String, Arc<ClientConfig>>>,
}

/// The proxy's current identity, if it has one yet.
#[derive(Debug)]
pub struct Identity {
    current: ArcSwapOption<TlsMaterial>,
    configured: bool,
    metrics: TlsMetrics,
}

/// TLS metrics.
#[derive(Clone, Debug)]
pub struct TlsMetrics {
    handshake_failures: IntCounterVec,
    plaintext_rejected: IntCounter,
    cert_expiry: IntGauge,
    rotations: IntCounter,
}

/// TLS failures, naming the peer.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The proxy has no certificate (yet), so it cannot do mutual TLS.
    #[error("no workload certificate yet; cannot do mutual TLS with {peer}")]
    NoCertificate {
        /// The peer.
        peer: SocketAddr,
    },
    /// The expected identity is not a valid SPIFFE id or pattern.
    #[error("endpoint {peer} has an invalid expected identity {expected:?}: {source}")]
    BadExpectedIdentity {
        /// The peer.
        peer: SocketAddr,
        /// The configured identity.
        expected: String,
        /// Why it is invalid.
        #[source]
        source: Box<sane_certs::Error>,
    },
    /// Building a rustls config failed.
    #[error("building TLS config: {0}")]
    Config(Box<sane_certs::Error>),
    /// The handshake failed (certificate rejected, wrong identity, ...).
    #[error("TLS handshake with {peer} failed: {source}")]
    Handshake {
        /// The peer.
        peer: SocketAddr,
        /// The underlying error, naming the certificate problem.
        #[source]
        source: std::io::Error,
    },
    /// The peer's certificate carries no usable SPIFFE id.
    #[error("peer {peer} presented no SPIFFE identity: {source}")]
    NoPeerIdentity {
        /// The peer.
        peer: SocketAddr,
        /// Why.
        #[source]
        source: Box<sane_certs::Error>,
    },
}

impl From<sane_certs::Error> for TlsError {
    fn from(e: sane_certs::Error) -> Self {
        TlsError::Config(Box::new(e))
    }
}

// === impl TlsMetrics ===

impl TlsMetrics {
    /// Registers the metrics.
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let handshake_failures = IntCounterVec::new(
            Opts::new(
                "sane_tls_handshake_failures_total",
                "Failed mutual TLS handshakes.",
            ),
            &["direction"],
        )?;
        let plaintext_rejected = IntCounter::new(
            "sane_tls_plaintext_rejected_total",
            "Plaintext connections refused by a STRICT port.",
        )?;
        let cert_expiry = IntGauge::new(
            "sane_cert_expiry_timestamp_seconds",
            "When the current workload certificate expires (unix seconds).",
        )?;
        let rotations = IntCounter::new(
            "sane_cert_rotations_total",
            "Workload certificates installed.",
        )?;
        registry.register(Box::new(handshake_failures.clone()))?;
        registry.register(Box::new(plaintext_rejected.clone()))?;
        registry.register(Box::new(cert_expiry.clone()))?;
        registry.register(Box::new(rotations.clone()))?;
        Ok(Self {
            handshake_failures,
            plaintext_rejected,
            cert_expiry,
            rotations,
        })
    }
}

// === impl TlsMaterial ===

impl TlsMaterial {
    /// Builds the server config for `identity` trusting `bundle`, accepting
    /// clients of `identity`'s trust domain and of the `federated` ones.
    pub fn new(
        identity: CertifiedIdentity,
        bundle: TrustBundle,
        federated: &[TrustDomain],
    ) -> Result<Self, TlsError> {
        let server = Arc::new(sane_certs::server_config_federated(
            &bundle, &identity, federated,
        )?);
        Ok(Self {
            identity,
            bundle,
            server,
            clients: Mutex::default(),
        })
    }

    /// A client config accepting servers that match `expected` (an exact
    /// SPIFFE id or a pattern); empty means any identity of our trust domain.
    fn client_config(
        &self,
        expected: &str,
        peer: SocketAddr,
    ) -> Result<Arc<ClientConfig>, TlsError> {
        let mut cache = self.clients.lock().expect("not poisoned");
        if let Some(c) = cache.get(expected) {
            return Ok(c.clone());
        }
        let pattern = if expected.is_empty() {
            SpiffeIdPattern::any_in(self.identity.identity().trust_domain())
        } else {
            expected
                .parse::<SpiffeIdPattern>()
                .map_err(|source| TlsError::BadExpectedIdentity {
                    peer,
                    expected: expected.to_string(),
                    source: Box::new(source),
                })?
        };
        let config = Arc::new(sane_certs::client_config(
            &self.bundle,
            &self.identity,
            pattern,
        )?);
        cache.insert(expected.to_string(), config.clone());
        Ok(config)
    }
}

// === impl Identity ===

impl Identity {
    /// An identity that will be provisioned (`configured`), or none at all.
    pub fn new(configured: bool, metrics: TlsMetrics) -> Self {
        Self {
            current: ArcSwapOption::empty(),
            configured,
            metrics,
        }
    }

    /// Counts a failed handshake (`direction`: `inbound` or `outbound`).
    pub fn record_failure(&self, direction: &str) {
        self.metrics
            .handshake_failures
            .with_label_values(&[direction])
            .inc();
    }

    /// Counts a plaintext connection refused by a STRICT port.
    pub fn record_plaintext_rejected(&self) {
        self.metrics.plaintext_rejected.inc();
    }

    /// True if the proxy is set up to have an identity.
    pub fn is_configured(&self) -> bool {
        self.configured
    }

    /// The current material.
    pub fn current(&self) -> Option<Arc<TlsMaterial>> {
        self.current.load_full()
    }

    /// Replaces the material; new connections use it from now on.
    pub fn set(&self, material: TlsMaterial) {
        let expiry = material
            .identity
            .not_after()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        self.metrics.cert_expiry.set(expiry);
        self.metrics.rotations.inc();
        self.current.store(Some(Arc::new(material)));
    }

    /// Completes the server side of a handshake and returns the peer's id.
    pub async fn accept<S>(
        &self,
        stream: S,
        peer: SocketAddr,
    ) -> Result<(server::TlsStream<S>, PeerIdentity), TlsError>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        let material = self.current().ok_or(TlsError::NoCertificate { peer })?;
        let tls = TlsAcceptor::from(material.server.clone())
            .accept(stream)
            .await
            .map_err(|source| TlsError::Handshake { peer, source })?;
        let id = sane_certs::peer_identity_of(tls.get_ref().1).map_err(|source| {
            TlsError::NoPeerIdentity {
                peer,
                source: Box::new(source),
            }
        })?;
        Ok((tls, PeerIdentity(id.to_string().into())))
    }

    /// Completes the client side of a handshake with `peer`, which must
    /// present `expected` (see [`TlsMaterial`]).
    pub async fn connect<S>(
        &self,
        stream: S,
        peer: SocketAddr,
        expected: &str,
    ) -> Result<client::TlsStream<S>, TlsError>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        let material = self.current().ok_or(TlsError::NoCertificate { peer })?;
        let config = material.client_config(expected, peer)?;
        let res = TlsConnector::from(config)
            .connect(ServerName::IpAddress(peer.ip().into()), stream)
            .await
            .map_err(|source| TlsError::Handshake { peer, source });
        if res.is_err() {
            self.record_failure("outbound");
        }
        res
    }

    /// What `/certs` shows: identity, serial, validity and the bundle (never
    /// key material).
    pub fn describe(&self) -> serde_json::Value {
        let Some(m) = self.current() else {
            return serde_json::json!({ "configured": self.configured, "certificate": null });
        };
        let id = &m.identity;
        let time = |t: SystemTime| humantime::format_rfc3339_seconds(t).to_string();
        serde_json::json!({
            "configured": self.configured,
            "certificate": {
                "identity": id.identity().to_string(),
                "serial": id.serial().to_string(),
                "not_before": time(id.not_before()),
                "not_after": time(id.not_after()),
                "rotation_deadline": time(id.rotation_deadline()),
            },
            "trust_bundle": m.bundle.roots().iter().map(|r| serde_json::json!({
                "subject": r.subject(),
                "not_after": time(r.not_after()),
                "retire_at": r.retire_at().map(time),
            })).collect::<Vec<_>>(),
        })
    }
}
