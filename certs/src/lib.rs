//! Sane Mesh identity primitives for mTLS.
//!
//! Everything about who a workload is and how it proves it lives here, in the
//! order a certificate travels:
//!
//! - [`identity`]: [`SpiffeId`]s (`spiffe://<td>/ns/<ns>/sa/<sa>`) and the
//!   [`SpiffeIdPattern`]s authorization and clients match them with;
//! - [`workload`]: the proxy generates a [`WorkloadKey`] and a CSR;
//! - [`ca`]: the control plane's [`CertificateAuthority`] signs it for the
//!   identity it authenticated, never for one the CSR asks for (and, for
//!   the control plane's own HTTPS endpoints, a DNS-named [`ServerCert`]);
//! - [`workload`] again: the issued chain plus the local key become a
//!   [`CertifiedIdentity`], renewed at [`rotation`]'s deadline;
//! - [`bundle`]: the [`TrustBundle`] of roots, with grace periods for roots
//!   being rotated out;
//! - [`tls`] and [`verify`]: rustls server and client configs that verify
//!   peers against the bundle by SPIFFE id, and [`peer_identity_of`] to read
//!   the peer's id after the handshake.
//!
//! With feature `testing`, [`testing`] builds PKI shapes for tests (an
//! operator root shared by several trust domains).
//!
//! Architecture invariants: only this crate calls rcgen; a private key never
//! leaves the proxy that generated it (no API serializes a [`WorkloadKey`];
//! the one key handed out as PEM is that of
//! [`CertificateAuthority::sign_external_server_cert`], a certificate meant
//! to be served from files by the ingress gateway in tests and dev setups);
//! no async runtime in this crate (rotation returns times, callers sleep).

#![warn(missing_docs, unreachable_pub, missing_debug_implementations)]
#![forbid(unsafe_code)]

pub mod bundle;
pub mod ca;
mod crypto;
mod error;
pub mod identity;
pub mod rotation;
mod serial;
#[cfg(feature = "testing")]
pub mod testing;
pub mod tls;
pub mod verify;
pub mod workload;
mod x509;

pub use bundle::{BundleRoot, TrustBundle};
pub use ca::{CaOptions, CertificateAuthority, IssuedCert, ServerCert};
pub use error::Error;
pub use identity::{SpiffeId, SpiffeIdPart, SpiffeIdPattern, TrustDomain};
pub use rotation::{rotation_deadline, rotation_delay, Backoff};
pub use serial::Serial;
pub use tls::{
    client_config, control_plane_client_config, control_plane_server_config, server_config,
    server_config_federated,
};
pub use verify::{peer_identity, peer_identity_of, SpiffeClientVerifier, SpiffeServerVerifier};
pub use workload::{CertifiedIdentity, WorkloadKey};
