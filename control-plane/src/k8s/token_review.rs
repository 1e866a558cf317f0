//! Authenticating sidecars to the CA with their Kubernetes service-account
//! token, as an alternative to bootstrap tokens.
//!
//! The injected sidecar presents a projected token for the audience
//! `sane-mesh` (`/var/run/secrets/sane.mesh/token`, refreshed by the
//! kubelet). The CA asks the API server whether it is valid with a
//! TokenReview naming that audience, and grants the identity of the service
//! account it belongs to. Refused: tokens the API server does not
//! authenticate, tokens for another audience (a token meant for some other
//! service cannot be replayed here), tokens of users rather than service
//! accounts, and tokens not bound to a pod (long-lived legacy secrets).
//!
//! The control plane needs RBAC `create` on `tokenreviews`
//! (authentication.k8s.io).

use super::error::KubeError;
use crate::ca::tokens::TokenGrant;
use crate::ca::ExternalAuthenticator;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec, TokenReviewStatus};
use std::future::Future;
use std::pin::Pin;

/// The `extra` key the API server sets for tokens bound to a pod.
pub const POD_NAME_EXTRA: &str = "authentication.kubernetes.io/pod-name";

/// Reviews tokens with the API server.
#[derive(Clone)]
pub struct TokenReviewer {
    client: kube::Client,
    audience: String,
}

/// Why a reviewed token grants nothing.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The API server did not authenticate it.
    #[error("not authenticated: {0}")]
    NotAuthenticated(String),
    /// It is valid, but not for our audience.
    #[error("not issued for audience {expected:?} (it is for {found:?})")]
    Audience {
        /// Ours.
        expected: String,
        /// What the API server says it is for.
        found: Vec<String>,
    },
    /// It belongs to a user, not a service account.
    #[error("{username:?} is not a service account")]
    NotServiceAccount {
        /// The authenticated user.
        username: String,
    },
    /// It is not bound to a pod (a long-lived legacy token).
    #[error("the token of {username:?} is not bound to a pod")]
    NotPodBound {
        /// The authenticated user.
        username: String,
    },
}

/// What a TokenReview's status grants, for `audience`.
pub fn grant(status: Option<&TokenReviewStatus>, audience: &str) -> Result<TokenGrant, Refusal> {
    let Some(status) = status.filter(|s| s.authenticated == Some(true)) else {
        let reason = status
            .and_then(|s| s.error.clone())
            .unwrap_or_else(|| "no reason given".into());
        return Err(Refusal::NotAuthenticated(reason));
    };
    let audiences = status.audiences.clone().unwrap_or_default();
    if !audiences.iter().any(|a| a == audience) {
        return Err(Refusal::Audience {
            expected: audience.into(),
            found: audiences,
        });
    }
    let user = status.user.clone().unwrap_or_default();
    let username = user.username.unwrap_or_default();
    let parts: Vec<&str> = username.split(':').collect();
    let (namespace, service_account) = match parts.as_slice() {
        ["system", "serviceaccount", ns, sa] if !ns.is_empty() && !sa.is_empty() => (*ns, *sa),
        _ => return Err(Refusal::NotServiceAccount { username }),
    };
    let bound = user
        .extra
        .as_ref()
        .and_then(|e| e.get(POD_NAME_EXTRA))
        .is_some_and(|v| !v.is_empty());
    if !bound {
        return Err(Refusal::NotPodBound { username });
    }
    Ok(TokenGrant {
        namespace: namespace.into(),
        service_account: service_account.into(),
    })
}

// === impl TokenReviewer ===

impl TokenReviewer {
    /// Reviews with `client`, for tokens of `audience`.
    pub fn new(client: kube::Client, audience: impl Into<String>) -> TokenReviewer {
        TokenReviewer {
            client,
            audience: audience.into(),
        }
    }

    /// The identity `token` stands for; `Ok(None)` when it grants none.
    pub async fn review(&self, token: &str) -> Result<Option<TokenGrant>, KubeError> {
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.to_string()),
                audiences: Some(vec![self.audience.clone()]),
            },
            ..Default::default()
        };
        let api: kube::Api<TokenReview> = kube::Api::all(self.client.clone());
        let reviewed = api
            .create(&Default::default(), &review)
            .await
            .map_err(|e| KubeError::api("creating a TokenReview", e))?;
        match grant(reviewed.status.as_ref(), &self.audience) {
            Ok(grant) => Ok(Some(grant)),
            Err(refusal) => {
                tracing::info!(%refusal, "service-account token refused");
                Ok(None)
            }
        }
    }
}

impl std::fmt::Debug for TokenReviewer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenReviewer")
            .field("audience", &self.audience)
            .finish_non_exhaustive()
    }
}

impl ExternalAuthenticator for TokenReviewer {
    fn authenticate<'a>(
        &'a self,
        token: &'a str,
    ) -> Pin<Box<dyn Future<Output = Result<Option<TokenGrant>, String>> + Send + 'a>> {
        Box::pin(async move { self.review(token).await.map_err(|e| e.to_string()) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn status(v: serde_json::Value) -> TokenReviewStatus {
        serde_json::from_value(v).unwrap()
    }

    fn bound(username: &str, audiences: &[&str]) -> TokenReviewStatus {
        status(json!({
            "authenticated": true,
            "audiences": audiences,
            "user": {
                "username": username,
                "uid": "4c7b5b42",
                "groups": ["system:serviceaccounts", "system:authenticated"],
                "extra": {
                    "authentication.kubernetes.io/pod-name": ["web-7d9f8c6b5-x2k4p"],
                    "authentication.kubernetes.io/pod-uid": ["0b7c3b2a"]
                }
            }
        }))
    }

    #[test]
    fn a_pod_bound_token_for_our_audience_grants_its_service_account() {
        let g = grant(
            Some(&bound("system:serviceaccount:shop:web", &["sane-mesh"])),
            "sane-mesh",
        )
        .unwrap();
        assert_eq!(
            g,
            TokenGrant {
                namespace: "shop".into(),
                service_account: "web".into()
            }
        );
    }

    /// A fake API server answering TokenReviews: `sa-token` for the
    /// audience `sane-mesh` is shop/web's; anything else is not valid.
    fn fake_api_server() -> kube::Client {
        use http_body_util::BodyExt;
        let svc = tower::service_fn(|req: http::Request<kube::client::Body>| async move {
            assert_eq!(req.method(), http::Method::POST);
            assert_eq!(
                req.uri().path(),
                "/apis/authentication.k8s.io/v1/tokenreviews"
            );
            let body = req.into_body().collect().await.unwrap().to_bytes();
            let mut review: TokenReview = serde_json::from_slice(&body).unwrap();
            let good = review.spec.token.as_deref() == Some("sa-token")
                && review.spec.audiences == Some(vec!["sane-mesh".to_string()]);
            review.status = Some(if good {
                bound("system:serviceaccount:shop:web", &["sane-mesh"])
            } else {
                status(json!({ "authenticated": false, "error": "invalid bearer token" }))
            });
            let bytes = bytes::Bytes::from(serde_json::to_vec(&review).unwrap());
            Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Full::new(bytes)))
        });
        kube::Client::new(svc, "default")
    }

    #[tokio::test]
    async fn the_ca_signs_for_a_reviewed_service_account_token() {
        use crate::ca::tokens::WorkloadTokens;
        use crate::ca::CaService;
        use sane_certs::{CaOptions, CertificateAuthority, TrustDomain, WorkloadKey};
        use sane_xds_proto::{CertificateRequest, CertificateResponse};
        use std::sync::Arc;

        let td = TrustDomain::new("mesh.test").unwrap();
        let ca = CertificateAuthority::generate(&td, CaOptions::default()).unwrap();
        let reviewer = TokenReviewer::new(fake_api_server(), "sane-mesh");
        let svc = CaService::new(
            Arc::new(ca),
            Arc::new(WorkloadTokens::default()),
            &prometheus::Registry::new(),
        )
        .unwrap()
        .with_external(Arc::new(reviewer));
        let call = |token: &'static str, id: &'static str| {
            let mut grpc = tonic::client::Grpc::new(svc.clone());
            async move {
                let key = WorkloadKey::generate().unwrap();
                let mut req = tonic::Request::new(CertificateRequest {
                    csr_pem: key.csr_pem(&id.parse().unwrap()).unwrap(),
                    ttl_seconds: 60,
                });
                req.metadata_mut()
                    .insert("authorization", format!("Bearer {token}").parse().unwrap());
                grpc.ready().await.unwrap();
                grpc.unary::<_, CertificateResponse, _>(
                    req,
                    http::uri::PathAndQuery::from_static(
                        sane_xds_proto::CA_CREATE_CERTIFICATE_PATH,
                    ),
                    tonic_prost::ProstCodec::default(),
                )
                .await
            }
        };
        let rsp = call("sa-token", "spiffe://mesh.test/ns/shop/sa/web")
            .await
            .unwrap();
        assert_eq!(rsp.get_ref().identity, "spiffe://mesh.test/ns/shop/sa/web");
        // The token's service account decides, not the CSR.
        let err = call("sa-token", "spiffe://mesh.test/ns/shop/sa/admin")
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::PermissionDenied);
        let err = call("forged", "spiffe://mesh.test/ns/shop/sa/web")
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unauthenticated);
    }

    #[test]
    fn everything_else_is_refused_with_the_reason() {
        let err = grant(
            Some(&status(
                json!({ "authenticated": false, "error": "token has expired" }),
            )),
            "sane-mesh",
        )
        .unwrap_err();
        assert_eq!(err, Refusal::NotAuthenticated("token has expired".into()));
        assert!(matches!(
            grant(None, "sane-mesh"),
            Err(Refusal::NotAuthenticated(_))
        ));

        let err = grant(
            Some(&bound(
                "system:serviceaccount:shop:web",
                &["https://kubernetes.default.svc"],
            )),
            "sane-mesh",
        )
        .unwrap_err();
        assert!(matches!(err, Refusal::Audience { .. }), "{err}");

        let err = grant(
            Some(&bound("alice@example.com", &["sane-mesh"])),
            "sane-mesh",
        )
        .unwrap_err();
        assert!(matches!(err, Refusal::NotServiceAccount { .. }), "{err}");
        let err = grant(
            Some(&bound("system:serviceaccount:shop", &["sane-mesh"])),
            "sane-mesh",
        )
        .unwrap_err();
        assert!(matches!(err, Refusal::NotServiceAccount { .. }), "{err}");

        let mut legacy = bound("system:serviceaccount:shop:web", &["sane-mesh"]);
        legacy.user.as_mut().unwrap().extra = None;
        let err = grant(Some(&legacy), "sane-mesh").unwrap_err();
        assert!(matches!(err, Refusal::NotPodBound { .. }), "{err}");
    }
}
