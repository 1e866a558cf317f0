//! Who is calling: the workload a gRPC caller's bearer token stands for.
//!
//! The CA and the ADS stream ask the same question, so they share one
//! [`WorkloadAuth`]: a bootstrap token ([`super::tokens`]) first, then, for
//! tokens the store does not know, the [`ExternalAuthenticator`] if one is set
//! (Kubernetes TokenReview).
//!
//! The token stays the credential. A caller that also presents a client
//! certificate over TLS (a proxy renewing its certificate, or reconnecting
//! its xDS stream, once it holds one) must present the identity the token
//! stands for: a certificate for another workload next to the token is
//! refused ([`AuthnError::IdentityMismatch`]), so a stolen token cannot be
//! used beside another workload's certificate and vice versa.

use super::tokens::{TokenGrant, WorkloadTokens};
use super::ExternalAuthenticator;
use sane_certs::SpiffeId;
use std::sync::Arc;
use tonic::metadata::MetadataMap;
use tonic::Status;

/// Authenticates workload bearer tokens. Cheap to clone.
#[derive(Clone, Debug)]
pub struct WorkloadAuth {
    tokens: Arc<WorkloadTokens>,
    external: Option<Arc<dyn ExternalAuthenticator>>,
}

/// Why a caller was not authenticated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthnError {
    /// No `authorization: Bearer <token>` metadata.
    #[error("no bearer token (authorization: Bearer <token>)")]
    Missing,
    /// A token nobody issued (or that was revoked).
    #[error("unknown token")]
    Unknown,
    /// The external authenticator could not answer now.
    #[error("cannot authenticate the token now: {0}")]
    Unavailable(String),
    /// The client certificate is for another workload than the token.
    #[error(
        "the client certificate is for {presented}, but the token stands for \
         {namespace}/{service_account}"
    )]
    IdentityMismatch {
        /// The SPIFFE id of the client certificate.
        presented: String,
        /// The token's namespace.
        namespace: String,
        /// The token's service account.
        service_account: String,
    },
}

// === impl AuthnError ===

impl AuthnError {
    /// A short label for metrics: `missing`, `unknown`, `unavailable` or
    /// `identity_mismatch`.
    pub fn reason(&self) -> &'static str {
        match self {
            AuthnError::Missing => "missing",
            AuthnError::Unknown => "unknown",
            AuthnError::Unavailable(_) => "unavailable",
            AuthnError::IdentityMismatch { .. } => "identity_mismatch",
        }
    }

    /// The gRPC status to answer `service`'s caller with: `unauthenticated`,
    /// or `unavailable` when the caller may retry.
    pub fn to_status(&self, service: &str) -> Status {
        match self {
            AuthnError::Unavailable(_) => Status::unavailable(format!("{service}: {self}")),
            AuthnError::IdentityMismatch { .. } => {
                Status::permission_denied(format!("{service}: {self}"))
            }
            _ => Status::unauthenticated(format!(
                "{service}: {self}; a valid workload bootstrap token (or, on Kubernetes, \
                 service-account token) is required (authorization: Bearer <token>)"
            )),
        }
    }
}

// === impl WorkloadAuth ===

impl WorkloadAuth {
    /// Accepts the bootstrap tokens in `tokens`.
    pub fn new(tokens: Arc<WorkloadTokens>) -> WorkloadAuth {
        WorkloadAuth {
            tokens,
            external: None,
        }
    }

    /// Also accepts tokens `external` authenticates.
    pub fn with_external(mut self, external: Arc<dyn ExternalAuthenticator>) -> WorkloadAuth {
        self.external = Some(external);
        self
    }

    /// The bearer token in gRPC request metadata, if any.
    pub fn bearer(metadata: &MetadataMap) -> Option<String> {
        metadata
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty())
    }

    /// The workload `token` stands for, by the bootstrap tokens only.
    pub fn authenticate_local(&self, token: Option<&str>) -> Result<TokenGrant, AuthnError> {
        let token = token.ok_or(AuthnError::Missing)?;
        self.tokens.authenticate(token).ok_or(AuthnError::Unknown)
    }

    /// Completes once `token`, a bootstrap token that authenticated, is
    /// revoked; never for a token the external authenticator vouched for
    /// (those are checked again at each new stream).
    pub async fn until_revoked(&self, token: &str) {
        // Subscribe first: a revocation between the check and the wait is
        // still seen.
        let mut revocations = self.tokens.revocations();
        if self.tokens.authenticate(token).is_none() {
            return std::future::pending().await;
        }
        loop {
            if revocations.changed().await.is_err() {
                return std::future::pending().await;
            }
            if self.tokens.authenticate(token).is_none() {
                return;
            }
        }
    }

    /// [`WorkloadAuth::authenticate`], then, if the caller presented a
    /// client certificate (`client`, its verified SPIFFE id), checks that it
    /// is the token's workload.
    pub async fn authenticate_caller(
        &self,
        token: Option<&str>,
        client: Option<&SpiffeId>,
    ) -> Result<TokenGrant, AuthnError> {
        let grant = self.authenticate(token).await?;
        check_client_identity(&grant, client)?;
        Ok(grant)
    }

    /// The workload `token` stands for: a bootstrap token, else whatever the
    /// external authenticator says.
    pub async fn authenticate(&self, token: Option<&str>) -> Result<TokenGrant, AuthnError> {
        match self.authenticate_local(token) {
            Err(AuthnError::Unknown) => {}
            other => return other,
        }
        let (Some(token), Some(external)) = (token, &self.external) else {
            return Err(AuthnError::Unknown);
        };
        match external.authenticate(token).await {
            Ok(Some(grant)) => Ok(grant),
            Ok(None) => Err(AuthnError::Unknown),
            Err(e) => {
                tracing::warn!(error = %e, "external token authentication failed");
                Err(AuthnError::Unavailable(e))
            }
        }
    }
}

/// A client certificate, if any, must be the token's workload.
pub fn check_client_identity(
    grant: &TokenGrant,
    client: Option<&SpiffeId>,
) -> Result<(), AuthnError> {
    match client {
        Some(id)
            if id.namespace() != grant.namespace
                || id.service_account() != grant.service_account =>
        {
            Err(AuthnError::IdentityMismatch {
                presented: id.to_string(),
                namespace: grant.namespace.clone(),
                service_account: grant.service_account.clone(),
            })
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::Future;
    use std::pin::Pin;

    #[derive(Debug)]
    struct Fixed(Result<Option<TokenGrant>, String>);

    impl ExternalAuthenticator for Fixed {
        fn authenticate<'a>(
            &'a self,
            _token: &'a str,
        ) -> Pin<Box<dyn Future<Output = Result<Option<TokenGrant>, String>> + Send + 'a>> {
            let r = self.0.clone();
            Box::pin(async move { r })
        }
    }

    fn grant(ns: &str, sa: &str) -> TokenGrant {
        TokenGrant {
            namespace: ns.into(),
            service_account: sa.into(),
        }
    }

    fn auth() -> (WorkloadAuth, String) {
        let tokens = WorkloadTokens::default();
        let token = tokens.issue(grant("prod", "web")).unwrap();
        (WorkloadAuth::new(Arc::new(tokens)), token)
    }

    #[tokio::test]
    async fn bootstrap_tokens_authenticate_and_others_do_not() {
        let (auth, token) = auth();
        assert_eq!(
            auth.authenticate(Some(&token)).await,
            Ok(grant("prod", "web"))
        );
        assert_eq!(auth.authenticate(None).await, Err(AuthnError::Missing));
        assert_eq!(
            auth.authenticate(Some("forged")).await,
            Err(AuthnError::Unknown)
        );
    }

    #[tokio::test]
    async fn the_external_authenticator_is_asked_for_unknown_tokens_only() {
        let (auth, token) = auth();
        let auth = auth.with_external(Arc::new(Fixed(Ok(Some(grant("k8s", "api"))))));
        assert_eq!(
            auth.authenticate(Some(&token)).await,
            Ok(grant("prod", "web"))
        );
        assert_eq!(
            auth.authenticate(Some("sa-token")).await,
            Ok(grant("k8s", "api"))
        );
        let (auth, _) = self::auth();
        let down = auth.with_external(Arc::new(Fixed(Err("apiserver down".into()))));
        let err = down.authenticate(Some("sa-token")).await.unwrap_err();
        assert_eq!(err.reason(), "unavailable");
        assert_eq!(err.to_status("xds").code(), tonic::Code::Unavailable);
        assert_eq!(
            AuthnError::Unknown.to_status("xds").code(),
            tonic::Code::Unauthenticated
        );
    }

    #[tokio::test]
    async fn a_client_certificate_must_be_the_tokens_workload() {
        let (auth, token) = auth();
        let id = |ns, sa| SpiffeId::new("mesh.test".parse().unwrap(), ns, sa).unwrap();
        assert_eq!(
            auth.authenticate_caller(Some(&token), Some(&id("prod", "web")))
                .await,
            Ok(grant("prod", "web"))
        );
        assert_eq!(
            auth.authenticate_caller(Some(&token), None).await,
            Ok(grant("prod", "web"))
        );
        let err = auth
            .authenticate_caller(Some(&token), Some(&id("prod", "admin")))
            .await
            .unwrap_err();
        assert_eq!(err.reason(), "identity_mismatch");
        let status = err.to_status("xds stream");
        assert_eq!(status.code(), tonic::Code::PermissionDenied);
        assert!(
            status.message().contains("sa/admin"),
            "{}",
            status.message()
        );
        assert!(
            status.message().contains("prod/web"),
            "{}",
            status.message()
        );
        // The certificate alone is not a credential.
        assert_eq!(
            auth.authenticate_caller(None, Some(&id("prod", "web")))
                .await,
            Err(AuthnError::Missing)
        );
    }

    #[test]
    fn the_bearer_token_is_read_from_metadata() {
        let mut md = MetadataMap::new();
        assert_eq!(WorkloadAuth::bearer(&md), None);
        md.insert("authorization", "Bearer  abc ".parse().unwrap());
        assert_eq!(WorkloadAuth::bearer(&md).as_deref(), Some("abc"));
        md.insert("authorization", "Basic abc".parse().unwrap());
        assert_eq!(WorkloadAuth::bearer(&md), None);
    }
}
