//! Who is calling: the workload a gRPC caller's bearer token stands for.
//!
//! The CA and the ADS stream ask the same question, so they share one
//! [`WorkloadAuth`]: a bootstrap token ([`super::tokens`]) first, then, for
//! tokens the store does not know, the [`ExternalAuthenticator`] if one is set
//! (Kubernetes TokenReview).

use super::tokens::{TokenGrant, WorkloadTokens};
use super::ExternalAuthenticator;
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
}

// === impl AuthnError ===

impl AuthnError {
    /// A short label for metrics: `missing`, `unknown` or `unavailable`.
    pub fn reason(&self) -> &'static str {
        match self {
            AuthnError::Missing => "missing",
            AuthnError::Unknown => "unknown",
            AuthnError::Unavailable(_) => "unavailable",
        }
    }

    /// The gRPC status to answer `service`'s caller with: `unauthenticated`,
    /// or `unavailable` when the caller may retry.
    pub fn to_status(&self, service: &str) -> Status {
        match self {
            AuthnError::Unavailable(_) => Status::unavailable(format!("{service}: {self}")),
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
