//! rustls configurations for the proxy's mesh listeners and connectors.
//!
//! Both sides present the workload's [`CertifiedIdentity`] and verify the
//! peer against the [`TrustBundle`]: the server requires a client certificate,
//! the client requires the server to prove an expected identity. TLS 1.3 is
//! preferred (rustls always negotiates the highest common version); TLS 1.2
//! is allowed only with ECDHE key exchange and AEAD ciphers. ALPN offers
//! `h2` then `http/1.1`.
//!
//! A config is a snapshot of one certificate and one bundle: on rotation the
//! proxy builds new configs and swaps them in atomically (see STYLE.md §8).
//! Root retirement needs no rebuild, the verifiers check it per handshake.

use std::sync::Arc;

use rustls::sign::SingleCertAndKey;
use rustls::{ClientConfig, ServerConfig, SupportedProtocolVersion};

use crate::bundle::TrustBundle;
use crate::error::Error;
use crate::identity::{SpiffeIdPattern, TrustDomain};
use crate::verify::{SpiffeClientVerifier, SpiffeServerVerifier};
use crate::workload::CertifiedIdentity;

pub use crate::crypto::provider;

/// ALPN protocols, in preference order.
pub const ALPN_PROTOCOLS: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// TLS 1.3 first; 1.2 for peers that lack it, with the suites of [`provider`].
static PROTOCOL_VERSIONS: &[&SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

/// The inbound (server) side: presents `identity`, requires a client
/// certificate chaining to `bundle` and carrying a SPIFFE id of `identity`'s
/// own trust domain.
///
/// After the handshake, [`crate::peer_identity_of`] gives the client's id.
pub fn server_config(
    bundle: &TrustBundle,
    identity: &CertifiedIdentity,
) -> Result<ServerConfig, Error> {
    server_config_federated(bundle, identity, &[])
}

/// [`server_config`] that also accepts clients of the `federated` trust
/// domains (whose certificates must still chain to `bundle`).
pub fn server_config_federated(
    bundle: &TrustBundle,
    identity: &CertifiedIdentity,
    federated: &[TrustDomain],
) -> Result<ServerConfig, Error> {
    let provider = provider();
    let own = identity.identity().trust_domain();
    let accepted: Vec<TrustDomain> = std::iter::once(own)
        .chain(federated.iter().filter(|td| *td != own))
        .cloned()
        .collect();
    let verifier = SpiffeClientVerifier::new(bundle, provider.clone(), &accepted)?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(PROTOCOL_VERSIONS)
        .map_err(|source| Error::TlsConfig {
            side: "server",
            source,
        })?
        .with_client_cert_verifier(Arc::new(verifier))
        .with_cert_resolver(Arc::new(SingleCertAndKey::from(identity.certified_key())));
    config.alpn_protocols = ALPN_PROTOCOLS.iter().map(|p| p.to_vec()).collect();
    prefer_server_order(&mut config);
    Ok(config)
}

/// Makes a server pick the TLS 1.2 cipher suite by its own preference order
/// ([`provider`]'s list), not the client's: a client offering a weaker suite
/// first does not get it. (TLS 1.3 suites are all AEAD with the same
/// strength; rustls applies the same rule to them.) Every server config the
/// mesh builds calls this.
pub fn prefer_server_order(config: &mut ServerConfig) {
    config.ignore_client_order = true;
}

/// The outbound (client) side: presents `identity` and accepts only a server
/// chaining to `bundle` whose SPIFFE id matches `expected`.
///
/// The `ServerName` given to rustls when connecting is not checked (use the
/// endpoint IP); the identity is. Build one config per expected identity and
/// reuse it: session resumption is then scoped to servers that proved it.
pub fn client_config(
    bundle: &TrustBundle,
    identity: &CertifiedIdentity,
    expected: SpiffeIdPattern,
) -> Result<ClientConfig, Error> {
    let provider = provider();
    let verifier = SpiffeServerVerifier::new(bundle, expected, &provider)?;
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(PROTOCOL_VERSIONS)
        .map_err(|source| Error::TlsConfig {
            side: "client",
            source,
        })?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_cert_resolver(Arc::new(SingleCertAndKey::from(identity.certified_key())));
    config.alpn_protocols = ALPN_PROTOCOLS.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

/// The control plane's own ports (xDS + CA, the HTTP API): presents the
/// serving certificate `resolver` gives (a DNS/IP-named
/// [`crate::ServerCert`], renewed by swapping it in the resolver), and asks
/// for a client certificate without requiring one: a proxy's first
/// connection comes before its first certificate, and `sanectl` has none. A
/// certificate that is presented must chain to `client_roots` and carry a
/// SPIFFE id of one of `trust_domains` (the mesh's), which
/// [`crate::peer_identity_of`] then reads for the caller to
/// compare with the bearer token. `alpn`: `h2` for gRPC, `http/1.1` for the
/// API.
pub fn control_plane_server_config(
    resolver: Arc<dyn rustls::server::ResolvesServerCert>,
    client_roots: &TrustBundle,
    trust_domains: &[TrustDomain],
    alpn: &[&[u8]],
) -> Result<ServerConfig, Error> {
    let provider = provider();
    let verifier = SpiffeClientVerifier::optional(client_roots, provider.clone(), trust_domains)?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(PROTOCOL_VERSIONS)
        .map_err(|source| Error::TlsConfig {
            side: "server",
            source,
        })?
        .with_client_cert_verifier(Arc::new(verifier))
        .with_cert_resolver(resolver);
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

/// A client of the control plane (a proxy's xDS stream and CA requests,
/// `sanectl`): the server must chain to one of `roots` (the mesh root the
/// client was given at bootstrap) and be valid for the name it was dialed
/// by, a DNS name or an IP address, under the usual web PKI rules. `client`,
/// when given, is presented as the client certificate (mutual TLS once the
/// proxy holds a workload certificate).
pub fn control_plane_client_config(
    roots: &TrustBundle,
    client: Option<&CertifiedIdentity>,
    alpn: &[&[u8]],
) -> Result<ClientConfig, Error> {
    let provider = provider();
    let store = roots.root_store(std::time::SystemTime::now())?;
    let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
        Arc::new(store),
        provider.clone(),
    )
    .build()
    .map_err(|source| Error::ServerVerifier { source })?;
    let builder = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(PROTOCOL_VERSIONS)
        .map_err(|source| Error::TlsConfig {
            side: "client",
            source,
        })?
        .with_webpki_verifier(verifier);
    let mut config = match client {
        Some(identity) => builder
            .with_client_cert_resolver(Arc::new(SingleCertAndKey::from(identity.certified_key()))),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

/// The client side of an HTTPS health probe to the pod's own app over
/// loopback. Like the kubelet, it does not verify the app's certificate:
/// the probe only asks whether the app answers, it sends nothing secret and
/// never leaves the pod. Never use it for mesh traffic.
pub fn probe_client_config() -> ClientConfig {
    let provider = provider();
    let verifier = UnverifiedProbeTarget {
        schemes: provider
            .signature_verification_algorithms
            .supported_schemes(),
    };
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(PROTOCOL_VERSIONS)
        .expect("the mesh provider supports its own protocol versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config
}

/// Accepts any server certificate: see [`probe_client_config`].
#[derive(Debug)]
struct UnverifiedProbeTarget {
    schemes: Vec<rustls::SignatureScheme>,
}

impl rustls::client::danger::ServerCertVerifier for UnverifiedProbeTarget {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls_pki_types::CertificateDer<'_>,
        _intermediates: &[rustls_pki_types::CertificateDer<'_>],
        _server_name: &rustls_pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &rustls_pki_types::CertificateDer<'_>,
        _dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _message: &[u8],
        _cert: &rustls_pki_types::CertificateDer<'_>,
        _dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.schemes.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_ecdhe_aead_suites_for_tls12() {
        for suite in provider().cipher_suites.iter() {
            let name = format!("{:?}", suite.suite());
            let tls13 = name.starts_with("TLS13_");
            let ecdhe_aead = name.starts_with("TLS_ECDHE_")
                && (name.contains("_GCM_") || name.contains("CHACHA20_POLY1305"));
            assert!(tls13 || ecdhe_aead, "unexpected suite {name}");
        }
    }
}
