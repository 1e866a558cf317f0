//! Getting and renewing the workload certificate.
//!
//! The proxy generates an ECDSA P-256 key, sends a CSR for its SPIFFE id to
//! the CA with its bootstrap token, and installs the returned chain. It
//! renews at about half the certificate's lifetime (with jitter, so a fleet
//! does not renew in lockstep) with a fresh key. If the CA cannot be reached
//! it retries with backoff and keeps serving on the current certificate until
//! that expires. The CA is reached over TLS ([`super::control_plane`]),
//! verified against the bootstrap's root; renewals present the current
//! certificate too.

use super::{Identity, TlsMaterial};
use http::uri::PathAndQuery;
use sane_certs::{Backoff, CertifiedIdentity, SpiffeId, TrustBundle, TrustDomain, WorkloadKey};
use sane_xds_proto::{
    CertificateRequest, CertificateResponse, IdentityConfig, CA_CREATE_CERTIFICATE_PATH,
};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio_util::sync::CancellationToken;

/// Why a certificate could not be obtained.
#[derive(Debug, thiserror::Error)]
pub enum IssueError {
    /// The CA could not be reached (or its certificate not verified).
    #[error("CA: {0}")]
    Connect(#[from] super::control_plane::ConnectError),
    /// The CA refused or failed the request.
    #[error("CA at {address} refused the CSR for {identity}: {status}")]
    Refused {
        /// The address.
        address: String,
        /// The identity asked for.
        identity: String,
        /// The CA's answer.
        status: tonic::Status,
    },
    /// The token file could not be read.
    #[error("reading token file {path}: {source}")]
    Token {
        /// The file.
        path: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// Key, CSR, chain or bundle handling failed.
    #[error("certificate material: {0}")]
    Material(#[from] sane_certs::Error),
    /// Building TLS configs failed.
    #[error(transparent)]
    Tls(#[from] super::TlsError),
}

/// Where to get certificates, resolved from the bootstrap.
#[derive(Clone, Debug)]
pub struct IssuerConfig {
    /// CA URL.
    pub ca_address: String,
    /// Token file ("" for none).
    pub token_file: String,
    /// PEM root(s) to verify an `https://` CA with.
    pub root_cert_file: String,
    /// The SPIFFE id to ask for.
    pub identity: SpiffeId,
    /// Requested lifetime.
    pub ttl: Option<Duration>,
    /// Trust domains besides the identity's own whose clients the inbound
    /// accepts (`identity.federated_trust_domains`).
    pub federated: Vec<TrustDomain>,
}

// === impl IssuerConfig ===

impl IssuerConfig {
    /// Resolves the identity section against the node and control plane.
    pub fn from_bootstrap(
        cfg: &IdentityConfig,
        namespace: &str,
        control_plane: Option<&sane_xds_proto::ControlPlane>,
    ) -> Result<Self, sane_certs::Error> {
        let td = TrustDomain::new(cfg.trust_domain())?;
        let federated = (cfg.federated_trust_domains.iter())
            .map(|f| TrustDomain::new(f))
            .collect::<Result<Vec<_>, _>>()?;
        let identity = SpiffeId::new(
            td,
            sane_xds_proto::namespace_or_default(namespace),
            cfg.service_account(),
        )?;
        let pick = |own: &str, cp: Option<&str>| {
            if own.is_empty() {
                cp.unwrap_or_default().to_string()
            } else {
                own.to_string()
            }
        };
        Ok(Self {
            ca_address: pick(&cfg.ca_address, control_plane.map(|c| c.address.as_str())),
            token_file: pick(
                &cfg.token_file,
                control_plane.map(|c| c.token_file.as_str()),
            ),
            root_cert_file: pick(
                &cfg.root_cert_file,
                control_plane.map(|c| c.root_cert_file.as_str()),
            ),
            identity,
            ttl: (cfg.ttl > 0).then(|| Duration::from_millis(cfg.ttl)),
            federated,
        })
    }
}

/// Requests one certificate for a fresh key from the CA, trying each of
/// `ca_address`'s comma-separated addresses (replicated control planes) in
/// turn until one issues it; the last failure is returned. Over TLS,
/// presents the current certificate of `current` if there is one.
pub async fn issue(
    cfg: &IssuerConfig,
    current: Option<&Identity>,
) -> Result<TlsMaterial, IssueError> {
    let addresses: Vec<&str> = cfg
        .ca_address
        .split(',')
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .collect();
    let mut last = None;
    for address in addresses {
        match issue_from(cfg, address, current).await {
            Ok(m) => return Ok(m),
            Err(e) => {
                if cfg.ca_address.contains(',') {
                    tracing::warn!(%address, error = %e, "CA request failed; trying the next address");
                }
                last = Some(e);
            }
        }
    }
    Err(last.unwrap_or_else(|| IssueError::Refused {
        address: cfg.ca_address.clone(),
        identity: cfg.identity.to_string(),
        status: tonic::Status::invalid_argument("no CA address"),
    }))
}

async fn issue_from(
    cfg: &IssuerConfig,
    address: &str,
    current: Option<&Identity>,
) -> Result<TlsMaterial, IssueError> {
    let key = WorkloadKey::generate()?;
    let csr_pem = key.csr_pem(&cfg.identity)?;
    let token = if cfg.token_file.is_empty() {
        None
    } else {
        Some(
            std::fs::read_to_string(&cfg.token_file)
                .map_err(|source| IssueError::Token {
                    path: cfg.token_file.clone(),
                    source,
                })?
                .trim()
                .to_string(),
        )
    };
    let address = address.to_string();
    let channel = super::control_plane::connect(&address, &cfg.root_cert_file, current, |e| {
        e.connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(10))
    })
    .await?;
    let mut grpc = tonic::client::Grpc::new(channel);
    let refused = |status| IssueError::Refused {
        address: address.clone(),
        identity: cfg.identity.to_string(),
        status,
    };
    grpc.ready()
        .await
        .map_err(|e| refused(tonic::Status::unavailable(e.to_string())))?;
    let mut req = tonic::Request::new(CertificateRequest {
        csr_pem,
        ttl_seconds: cfg.ttl.map_or(0, |t| t.as_secs().max(1)),
    });
    if let Some(t) = token {
        if let Ok(v) = format!("Bearer {t}").parse() {
            req.metadata_mut().insert("authorization", v);
        }
    }
    let rsp: tonic::Response<CertificateResponse> = grpc
        .unary(
            req,
            PathAndQuery::from_static(CA_CREATE_CERTIFICATE_PATH),
            tonic_prost::ProstCodec::default(),
        )
        .await
        .map_err(refused)?;
    let rsp = rsp.into_inner();
    let identity = CertifiedIdentity::new(key, &rsp.cert_chain_pem)?;
    let bundle = TrustBundle::from_pem(&rsp.trust_bundle_pem)?;
    identity.verify(&bundle, SystemTime::now())?;
    Ok(TlsMaterial::new(identity, bundle, &cfg.federated)?)
}

/// Keeps `identity` supplied with a valid certificate until `stop`. `ready`
/// is dropped after the first certificate is installed.
pub async fn run(
    cfg: IssuerConfig,
    identity: Arc<Identity>,
    ready: crate::drain::BlockReady,
    stop: CancellationToken,
) {
    let mut ready = Some(ready);
    let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(15));
    loop {
        let wait = match issue(&cfg, Some(&identity)).await {
            Ok(material) => {
                let refresh = material.identity.refresh_in(SystemTime::now());
                tracing::info!(
                    identity = %material.identity.identity(),
                    serial = %material.identity.serial(),
                    renew_in = ?refresh,
                    "installed workload certificate"
                );
                identity.set(material);
                ready.take();
                backoff.reset();
                refresh
            }
            Err(e) => {
                if let Some(block) = &ready {
                    block.note(e.to_string());
                }
                let delay = backoff.next_delay();
                let expires = identity
                    .current()
                    .map(|m| humantime::format_rfc3339_seconds(m.identity.not_after()).to_string());
                tracing::warn!(
                    error = %e,
                    retry_in = ?delay,
                    current_expires = expires.as_deref().unwrap_or("none"),
                    "certificate request failed; serving on the current certificate"
                );
                delay
            }
        };
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}
