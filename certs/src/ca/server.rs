//! Serving certificates for the control plane's own HTTPS endpoints (the
//! Kubernetes admission webhook), named by DNS, not by SPIFFE id.
//!
//! Workload leaves carry a SPIFFE id and nothing else, so the API server
//! could not verify one against `<svc>.<ns>.svc`. A [`ServerCert`] carries
//! DNS SANs instead, and its key is generated here, in the control plane
//! that will serve it: it is the control plane's own key, so the invariant
//! "a private key never leaves the process that generated it" holds. The key
//! is handed to rustls only; no `Debug` output shows it.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use super::{CertificateAuthority, Serial, MIN_LEAF_TTL};
use crate::error::Error;
use crate::x509;

/// A DNS-named serving certificate and its key.
pub struct ServerCert {
    dns_names: Vec<String>,
    chain: Vec<CertificateDer<'static>>,
    certified: Arc<CertifiedKey>,
    serial: Serial,
    not_after: SystemTime,
}

// === impl CertificateAuthority ===

impl CertificateAuthority {
    /// Generates a P-256 key and signs a TLS server leaf for `dns_names`
    /// (the first is also the common name; a name that parses as an IP
    /// address becomes an IP SAN), valid for `ttl` (at least
    /// [`MIN_LEAF_TTL`]; never past the CA's own expiry).
    ///
    /// Unlike [`CertificateAuthority::sign_csr`] there is no caller to
    /// authenticate: the control plane asks for its own names.
    pub fn sign_server_cert(
        &self,
        dns_names: &[String],
        ttl: Duration,
    ) -> Result<ServerCert, Error> {
        let leaf = self.server_leaf(dns_names, ttl)?;
        let private = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf.key.serialize_der()));
        let certified =
            CertifiedKey::from_der(leaf.chain.clone(), private, &crate::tls::provider()).map_err(
                |source| Error::TlsConfig {
                    side: "serving certificate",
                    source,
                },
            )?;
        Ok(ServerCert {
            dns_names: dns_names.to_vec(),
            chain: leaf.chain,
            certified: Arc::new(certified),
            serial: leaf.serial,
            not_after: leaf.not_after,
        })
    }

    /// Like [`CertificateAuthority::sign_server_cert`], but hands the key to
    /// the caller: `(chain PEM, PKCS#8 key PEM)`. For certificates another
    /// program will serve from files (an ingress gateway's host
    /// certificates in tests and development setups); workload keys never
    /// take this path.
    pub fn sign_external_server_cert(
        &self,
        dns_names: &[String],
        ttl: Duration,
    ) -> Result<(String, String), Error> {
        let leaf = self.server_leaf(dns_names, ttl)?;
        Ok((x509::certs_to_pem(&leaf.chain), leaf.key.serialize_pem()))
    }

    fn server_leaf(&self, dns_names: &[String], ttl: Duration) -> Result<ServerLeaf, Error> {
        let what = || format!("serving certificate for {dns_names:?}");
        let Some(first) = dns_names.first() else {
            return Err(Error::InvalidDnsName {
                name: String::new(),
                reason: "at least one DNS name is required".into(),
            });
        };
        if ttl < MIN_LEAF_TTL {
            return Err(Error::TtlTooShort {
                requested: ttl,
                minimum: MIN_LEAF_TTL,
            });
        }
        let mut sans = Vec::with_capacity(dns_names.len());
        for name in dns_names {
            // An address (the control plane dialed by IP) is an IP SAN;
            // webpki matches an IP server name only against those.
            if let Ok(ip) = name.parse::<std::net::IpAddr>() {
                sans.push(SanType::IpAddress(ip));
                continue;
            }
            let ia5 = name
                .as_str()
                .try_into()
                .map_err(|_| Error::InvalidDnsName {
                    name: name.clone(),
                    reason: "not an ASCII DNS name".into(),
                })?;
            sans.push(SanType::DnsName(ia5));
        }
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(|source| Error::KeyGeneration { source })?;
        let now = SystemTime::now();
        let not_before = x509::whole_seconds(now - self.options.backdate);
        let not_after = x509::whole_seconds((now + ttl).min(self.not_after));
        let serial = Serial::random()?;

        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, first.as_str());
        params.subject_alt_names = sans;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(serial.to_rcgen());
        params.not_before = not_before.into();
        params.not_after = not_after.into();
        let leaf = params
            .signed_by(&key, &self.issuer)
            .map_err(|source| Error::Signing {
                what: what(),
                source,
            })?;

        // The API server verifies against the root in the caBundle, so the
        // chain carries the intermediates but not the root.
        let mut chain = vec![leaf.der().clone()];
        chain.extend(self.chain[..self.chain.len() - 1].iter().cloned());
        Ok(ServerLeaf {
            key,
            chain,
            serial,
            not_after,
        })
    }
}

/// A freshly signed server leaf and its key.
struct ServerLeaf {
    key: KeyPair,
    chain: Vec<CertificateDer<'static>>,
    serial: Serial,
    not_after: SystemTime,
}

// === impl ServerCert ===

impl ServerCert {
    /// An operator's serving certificate, read from PEM: `chain_pem` starts
    /// with the leaf, `key_pem` is its private key (PKCS#8, SEC1 or
    /// PKCS#1). The key must match the leaf. [`ServerCert::dns_names`] is
    /// empty for these: the names are whatever the operator's CA put there.
    pub fn from_pem(chain_pem: &str, key_pem: &str) -> Result<ServerCert, Error> {
        use rustls_pki_types::pem::{Error as PemError, PemObject};
        const WHAT: &str = "serving certificate";
        let chain = x509::certs_from_pem(chain_pem.as_bytes(), WHAT)?;
        let leaf = x509::inspect(&chain[0], WHAT, 0)?;
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| match e {
            PemError::NoItemsFound => Error::NoPemBlock {
                what: "serving certificate key",
                label: "PRIVATE KEY",
            },
            other => Error::InvalidPem {
                what: "serving certificate key",
                reason: other.to_string(),
            },
        })?;
        let certified = CertifiedKey::from_der(chain.clone(), key, &crate::tls::provider())
            .map_err(|source| Error::TlsConfig {
                side: "serving certificate (does the key match the certificate?)",
                source,
            })?;
        Ok(ServerCert {
            dns_names: Vec::new(),
            chain,
            certified: Arc::new(certified),
            serial: leaf.serial,
            not_after: leaf.not_after,
        })
    }

    /// The DNS names the certificate is valid for.
    pub fn dns_names(&self) -> &[String] {
        &self.dns_names
    }

    /// The chain, leaf first, in PEM (no key).
    pub fn chain_pem(&self) -> String {
        x509::certs_to_pem(&self.chain)
    }

    /// The leaf's serial number.
    pub fn serial(&self) -> &Serial {
        &self.serial
    }

    /// End of validity.
    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }

    /// The certificate and key as rustls signs with them, for a resolver
    /// that swaps certificates on renewal.
    pub fn certified_key(&self) -> Arc<CertifiedKey> {
        self.certified.clone()
    }

    /// A server config presenting this certificate, with no client
    /// authentication (the Kubernetes API server calls webhooks without a
    /// client certificate) and ALPN `http/1.1`.
    pub fn server_config(&self) -> Result<ServerConfig, Error> {
        let resolver = rustls::sign::SingleCertAndKey::from(self.certified_key());
        server_config_with_resolver(Arc::new(resolver))
    }
}

impl fmt::Debug for ServerCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerCert")
            .field("dns_names", &self.dns_names)
            .field("serial", &self.serial)
            .field(
                "not_after",
                &humantime::format_rfc3339_seconds(self.not_after),
            )
            .field("key", &"<redacted>")
            .finish()
    }
}

/// A server config with no client authentication whose certificate comes
/// from `resolver` (e.g. one swapping [`ServerCert::certified_key`]s on
/// renewal); the mesh's cipher suites, ALPN `http/1.1`.
pub fn server_config_with_resolver(
    resolver: Arc<dyn rustls::server::ResolvesServerCert>,
) -> Result<ServerConfig, Error> {
    let mut config = ServerConfig::builder_with_provider(crate::tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|source| Error::TlsConfig {
            side: "server",
            source,
        })?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    crate::tls::prefer_server_order(&mut config);
    Ok(config)
}
