//! Wire messages of the certificate service (gRPC, unary), through which a
//! proxy sends a CSR for the key it generated and gets its chain back. The
//! caller is authenticated by its bearer token; the identity in the issued
//! certificate comes from the token, never from the CSR.

use serde::{Deserialize, Serialize};

/// The gRPC method path of `CreateCertificate`.
pub const CA_CREATE_CERTIFICATE_PATH: &str = "/sane.mesh.v1.CertificateService/CreateCertificate";

/// A certificate signing request.
#[derive(Clone, PartialEq, prost::Message, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CertificateRequest {
    /// PEM-encoded PKCS#10 CSR. Required.
    #[prost(string, tag = "1")]
    pub csr_pem: String,
    /// Requested lifetime in seconds. Default: 0, the CA's default.
    #[prost(uint64, tag = "2")]
    pub ttl_seconds: u64,
}

/// The issued certificate.
#[derive(Clone, PartialEq, prost::Message, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CertificateResponse {
    /// PEM chain: the leaf first, then intermediates.
    #[prost(string, tag = "1")]
    pub cert_chain_pem: String,
    /// PEM trust bundle (the mesh roots, including retiring ones).
    #[prost(string, tag = "2")]
    pub trust_bundle_pem: String,
    /// The SPIFFE id the certificate was issued for.
    #[prost(string, tag = "3")]
    pub identity: String,
}
