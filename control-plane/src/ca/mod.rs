//! The certificate authority service (gRPC, beside ADS on the xDS port).
//!
//! `CreateCertificate` takes a CSR from a proxy and returns a short-lived
//! leaf for the identity the caller's bearer token stands for
//! ([`tokens`], or a Kubernetes service-account token when an
//! [`ExternalAuthenticator`] is set): the SPIFFE id comes from the token,
//! never from the CSR, and a
//! CSR asking for another identity is refused with nothing signed. A caller
//! that presents a client certificate (a proxy renewing) must present the
//! token's identity ([`WorkloadAuth::authenticate_caller`]). The CA's
//! key stays in the control plane's data directory (mode 0600) and never
//! appears in logs or the API.

pub mod authn;
mod error;
pub mod tokens;

pub use self::authn::{AuthnError, WorkloadAuth};
pub use self::error::CaError;

use self::tokens::{TokenGrant, WorkloadTokens};
use prometheus::{IntCounterVec, Opts};
use sane_certs::{CertificateAuthority, SpiffeId, TrustBundle};
use sane_xds_proto::{CertificateRequest, CertificateResponse, CA_CREATE_CERTIFICATE_PATH};
use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};
use tonic::server::{Grpc, NamedService, UnaryService};
use tonic::{Request, Response, Status};

type BoxFuture<T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send>>;

/// Another way to authenticate a bearer token than bootstrap tokens (the
/// Kubernetes TokenReview API). Asked only for tokens the bootstrap store
/// does not know.
pub trait ExternalAuthenticator: Send + Sync + std::fmt::Debug {
    /// The identity `token` stands for: `Ok(None)` if it stands for none,
    /// `Err` if that cannot be told now (the caller may retry).
    fn authenticate<'a>(
        &'a self,
        token: &'a str,
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Option<TokenGrant>, String>> + Send + 'a>,
    >;
}

/// Directory (inside the data dir) holding the CA's certificate and key.
pub const CA_DIR: &str = "ca";

/// What [`load`] returns: the CA, the token store, and a retiring root.
pub type Loaded = (
    Arc<CertificateAuthority>,
    Arc<WorkloadTokens>,
    Option<(TrustBundle, SystemTime)>,
);

/// What [`load`] reads of the control plane's configuration (each field is
/// the `Config` field of the same name; `lib` copies them, so the CA does not
/// import the crate root).
#[derive(Clone, Debug)]
pub struct CaSettings {
    /// The mesh's trust domain.
    pub trust_domain: String,
    /// Default lifetime of a workload certificate.
    pub cert_ttl: Duration,
    /// Longest lifetime a workload may ask for.
    pub max_cert_ttl: Duration,
    /// The operator's CA chain and key files, if given.
    pub ca_files: Option<(std::path::PathBuf, std::path::PathBuf)>,
    /// The operator's CA chain and key as PEM text (read from a Kubernetes
    /// Secret), if given; used before `ca_files`.
    pub ca_pem: Option<CaPem>,
    /// The data directory, if any.
    pub data_dir: Option<std::path::PathBuf>,
    /// A root being rotated out, and until when it stays trusted.
    pub retiring_root: Option<(std::path::PathBuf, SystemTime)>,
}

/// CA material given as text: the chain (signing CA first, up to the root)
/// and its key, and where they came from (for errors). `Debug` leaves the
/// key out.
#[derive(Clone)]
pub struct CaPem {
    /// Where it was read, e.g. `secret sane-system/sane-ca`.
    pub source: String,
    /// PEM certificates, the signing CA first.
    pub chain: String,
    /// PEM private key (PKCS#8).
    pub key: String,
}

impl std::fmt::Debug for CaPem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaPem")
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

/// Loads the CA — the operator's PEM text or files if given, else `<data_dir>/ca`
/// (generated on first start), else in memory — the workload tokens, and the
/// retiring root of a root rotation.
pub fn load(config: &CaSettings) -> Result<Loaded, CaError> {
    let td = sane_certs::TrustDomain::new(&config.trust_domain)?;
    let mut options = sane_certs::CaOptions::default();
    options.default_leaf_ttl = config.cert_ttl;
    options.max_leaf_ttl = config.max_cert_ttl;
    let read = |p: &std::path::Path| {
        std::fs::read_to_string(p).map_err(|e| CaError::File {
            path: p.display().to_string(),
            reason: e.to_string(),
        })
    };
    let authority = match (&config.ca_pem, &config.ca_files, &config.data_dir) {
        (Some(pem), _, _) => CertificateAuthority::from_pem(&td, &pem.chain, &pem.key, options)
            .map_err(|e| CaError::File {
                path: pem.source.clone(),
                reason: e.to_string(),
            })?,
        (None, Some((chain, key)), _) => {
            CertificateAuthority::from_pem_files(&td, chain, key, options)?
        }
        (None, None, Some(dir)) => {
            CertificateAuthority::load_or_generate(&dir.join(CA_DIR), &td, options)?
        }
        (None, None, None) => CertificateAuthority::generate(&td, options)?,
    };
    let retiring = match &config.retiring_root {
        Some((pem, until)) => Some((
            TrustBundle::from_pem(&read(pem)?).map_err(|e| e.in_file(pem))?,
            *until,
        )),
        None => None,
    };
    tracing::info!(
        trust_domain = %td.as_str(),
        subject = %authority.subject(),
        "certificate authority ready"
    );
    let tokens = WorkloadTokens::load(config.data_dir.as_deref())?;
    Ok((Arc::new(authority), Arc::new(tokens), retiring))
}

/// The CA gRPC service.
#[derive(Clone, Debug)]
pub struct CaService {
    ca: Arc<CertificateAuthority>,
    auth: WorkloadAuth,
    issued: IntCounterVec,
    retiring: Option<(TrustBundle, SystemTime)>,
}

// === impl CaService ===

impl CaService {
    /// Serves certificates from `ca` to holders of `tokens`; registers its
    /// metrics in `registry`.
    pub fn new(
        ca: Arc<CertificateAuthority>,
        tokens: Arc<WorkloadTokens>,
        registry: &prometheus::Registry,
    ) -> Result<Self, prometheus::Error> {
        let issued = IntCounterVec::new(
            Opts::new(
                "sane_ca_requests_total",
                "Certificate requests, by result (issued, unauthenticated, refused).",
            ),
            &["result"],
        )?;
        registry.register(Box::new(issued.clone()))?;
        Ok(Self {
            ca,
            auth: WorkloadAuth::new(tokens),
            issued,
            retiring: None,
        })
    }

    /// Also accepts tokens `external` authenticates.
    pub fn with_external(mut self, external: Arc<dyn ExternalAuthenticator>) -> Self {
        self.auth = self.auth.with_external(external);
        self
    }

    /// How callers are authenticated; the ADS stream uses the same.
    pub fn auth(&self) -> &WorkloadAuth {
        &self.auth
    }

    /// During a root rotation: keep trusting `old` (the previous root) until
    /// the given time, so certificates it issued stay valid while proxies
    /// move to the new root.
    pub fn with_retiring(mut self, old: Option<(TrustBundle, SystemTime)>) -> Self {
        self.retiring = old;
        self
    }

    /// The trust bundle handed to proxies: the current root, plus the
    /// retiring one until its grace period ends.
    pub fn bundle(&self, now: SystemTime) -> TrustBundle {
        let current = self.ca.trust_bundle();
        match &self.retiring {
            Some((old, until)) if now < *until => current.with_retiring(old, *until),
            _ => current,
        }
    }

    /// Signs `req` for the caller authenticated by `token` (bootstrap
    /// tokens only; the gRPC method also asks the external authenticator).
    pub fn create(
        &self,
        token: Option<&str>,
        req: &CertificateRequest,
    ) -> Result<CertificateResponse, Status> {
        let grant = self.auth.authenticate_local(token);
        self.sign_authenticated(grant, req)
    }

    fn sign_authenticated(
        &self,
        grant: Result<TokenGrant, AuthnError>,
        req: &CertificateRequest,
    ) -> Result<CertificateResponse, Status> {
        match grant {
            Ok(grant) => self.sign_for(grant, req),
            Err(e) => {
                self.issued.with_label_values(&["unauthenticated"]).inc();
                tracing::warn!(error = %e, "certificate request refused");
                Err(e.to_status("certificate request"))
            }
        }
    }

    /// Signs `req` for the workload `grant` stands for.
    fn sign_for(
        &self,
        grant: TokenGrant,
        req: &CertificateRequest,
    ) -> Result<CertificateResponse, Status> {
        let identity = SpiffeId::new(
            self.ca.trust_domain().clone(),
            &grant.namespace,
            &grant.service_account,
        )
        .map_err(|e| Status::internal(format!("token grants an invalid identity: {e}")))?;
        let ttl = (req.ttl_seconds > 0).then(|| Duration::from_secs(req.ttl_seconds));
        match self.ca.sign_csr(req.csr_pem.as_bytes(), &identity, ttl) {
            Ok(cert) => {
                self.issued.with_label_values(&["issued"]).inc();
                tracing::info!(%identity, serial = %cert.serial, "issued workload certificate");
                Ok(CertificateResponse {
                    cert_chain_pem: cert.chain_pem,
                    trust_bundle_pem: self.bundle(SystemTime::now()).to_pem(),
                    identity: identity.to_string(),
                })
            }
            Err(e) => {
                self.issued.with_label_values(&["refused"]).inc();
                tracing::warn!(allowed = %identity, error = %e, "certificate request refused; nothing signed");
                Err(Status::permission_denied(format!(
                    "refused to sign: {e} (the token allows {identity})"
                )))
            }
        }
    }
}

impl NamedService for CaService {
    const NAME: &'static str = "sane.mesh.v1.CertificateService";
}

struct CreateCertificate(CaService);

impl UnaryService<CertificateRequest> for CreateCertificate {
    type Response = CertificateResponse;
    type Future = BoxFuture<Result<Response<CertificateResponse>, Status>>;

    fn call(&mut self, req: Request<CertificateRequest>) -> Self::Future {
        let token = WorkloadAuth::bearer(req.metadata());
        let peer = crate::transport::PeerInfo::of(req.extensions());
        let svc = self.0.clone();
        Box::pin(async move {
            let grant = svc
                .auth
                .authenticate_caller(token.as_deref(), peer.identity.as_ref())
                .await;
            let result = svc.sign_authenticated(grant, req.get_ref());
            result.map(Response::new)
        })
    }
}

impl tower::Service<http::Request<tonic::body::Body>> for CaService {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        let svc = self.clone();
        Box::pin(async move {
            if req.uri().path() != CA_CREATE_CERTIFICATE_PATH {
                return Ok(Status::unimplemented(format!(
                    "{} is not a method of {}",
                    req.uri().path(),
                    <CaService as NamedService>::NAME
                ))
                .into_http());
            }
            let mut grpc = Grpc::new(tonic_prost::ProstCodec::<
                CertificateResponse,
                CertificateRequest,
            >::default());
            Ok(grpc.unary(CreateCertificate(svc), req).await)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::tokens::TokenGrant;
    use super::*;
    use sane_certs::{CaOptions, TrustDomain, WorkloadKey};

    fn service() -> (CaService, String) {
        let td = TrustDomain::new("mesh.test").unwrap();
        let ca = CertificateAuthority::generate(&td, CaOptions::default()).unwrap();
        let tokens = WorkloadTokens::default();
        let token = tokens
            .issue(TokenGrant {
                namespace: "prod".into(),
                service_account: "web".into(),
            })
            .unwrap();
        let svc =
            CaService::new(Arc::new(ca), Arc::new(tokens), &prometheus::Registry::new()).unwrap();
        (svc, token)
    }

    fn csr_for(id: &str) -> CertificateRequest {
        let key = WorkloadKey::generate().unwrap();
        CertificateRequest {
            csr_pem: key.csr_pem(&id.parse().unwrap()).unwrap(),
            ttl_seconds: 60,
        }
    }

    #[test]
    fn signs_for_the_token_identity() {
        let (svc, token) = service();
        let rsp = svc
            .create(Some(&token), &csr_for("spiffe://mesh.test/ns/prod/sa/web"))
            .unwrap();
        assert_eq!(rsp.identity, "spiffe://mesh.test/ns/prod/sa/web");
        assert!(rsp.cert_chain_pem.contains("BEGIN CERTIFICATE"));
        assert!(!rsp.cert_chain_pem.contains("PRIVATE KEY"));
        assert!(rsp.trust_bundle_pem.contains("BEGIN CERTIFICATE"));
    }

    #[test]
    fn a_retiring_root_is_in_the_bundle_until_its_grace_period_ends() {
        let (svc, _) = service();
        let old = CertificateAuthority::generate(
            &TrustDomain::new("mesh.test").unwrap(),
            CaOptions::default(),
        )
        .unwrap()
        .trust_bundle();
        let now = SystemTime::now();
        let svc = svc.with_retiring(Some((old, now + Duration::from_secs(3600))));
        assert_eq!(svc.bundle(now).roots().len(), 2);
        assert_eq!(svc.bundle(now + Duration::from_secs(3601)).roots().len(), 1);
    }

    #[test]
    fn refuses_another_identity_and_unknown_tokens() {
        let (svc, token) = service();
        let err = svc
            .create(
                Some(&token),
                &csr_for("spiffe://mesh.test/ns/prod/sa/admin"),
            )
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::PermissionDenied);
        assert!(
            err.message()
                .contains("spiffe://mesh.test/ns/prod/sa/admin"),
            "{}",
            err.message()
        );
        assert!(err
            .message()
            .contains("the token allows spiffe://mesh.test/ns/prod/sa/web"));
        let err = svc
            .create(
                Some("forged"),
                &csr_for("spiffe://mesh.test/ns/prod/sa/web"),
            )
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unauthenticated);
        assert!(svc
            .create(None, &csr_for("spiffe://mesh.test/ns/prod/sa/web"))
            .is_err());
    }
}
