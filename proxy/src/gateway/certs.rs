//! Host certificates for outside clients, from PEM files.
//!
//! Each TLS host has a [`HostCert`]: its files and the [`CertifiedKey`]
//! currently served, in an `ArcSwap` that the host's rustls config reads
//! through [`HostCertResolver`] on every handshake. [`HostCert::refresh`]
//! notices changed files and loads them; a pair that fails to load (bad
//! PEM, key not matching the certificate) is rejected with a message naming
//! the host, and the previous certificate keeps serving. Connections
//! already open keep the certificate they were set up with.
//!
//! These keys are the operator's, read from disk; the workload identity
//! (mesh mTLS) is separate and lives in [`crate::tls`].

use arc_swap::ArcSwap;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{RootCertStore, ServerConfig};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

/// ALPN protocols offered to outside clients, preferred first.
pub const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// A host's certificate files and the certificate currently served.
#[derive(Debug)]
pub struct HostCert {
    /// The host name (as configured).
    pub host: String,
    cert_file: PathBuf,
    key_file: PathBuf,
    current: ArcSwap<CertifiedKey>,
    seen: Mutex<Option<Fingerprint>>,
}

/// What identifies a version of the two files.
type Fingerprint = [(SystemTime, u64, u64); 2];

/// Serves a host's current certificate.
#[derive(Debug)]
pub struct HostCertResolver(Arc<HostCert>);

/// A certificate file problem, naming the host and the file.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// A file could not be read or holds no valid PEM.
    #[error("host {host:?}: reading {path}: {reason}")]
    Read {
        /// The host.
        host: String,
        /// The file.
        path: String,
        /// What went wrong.
        reason: String,
    },
    /// The certificate and the key do not belong together.
    #[error("host {host:?}: certificate {cert} and key {key} do not match: {reason}")]
    Mismatch {
        /// The host.
        host: String,
        /// Certificate file.
        cert: String,
        /// Key file.
        key: String,
        /// What rustls said.
        reason: String,
    },
    /// The rustls config could not be built (client CA unusable).
    #[error("host {host:?}: {reason}")]
    Config {
        /// The host.
        host: String,
        /// What went wrong.
        reason: String,
    },
}

/// Whether the files of a loaded cert changed.
#[derive(Debug, PartialEq, Eq)]
pub enum Refresh {
    /// Nothing changed on disk.
    Unchanged,
    /// A new certificate is served.
    Reloaded,
}

// === impl HostCert ===

impl HostCert {
    /// Loads the pair for `host`; fails naming the host and the file.
    pub fn load(host: &str, cert_file: &str, key_file: &str) -> Result<Arc<Self>, CertError> {
        let (cert_file, key_file) = (PathBuf::from(cert_file), PathBuf::from(key_file));
        let seen = fingerprint(&cert_file, &key_file);
        let key = load_pair(host, &cert_file, &key_file)?;
        Ok(Arc::new(Self {
            host: host.to_string(),
            cert_file,
            key_file,
            current: ArcSwap::from_pointee(key),
            seen: Mutex::new(seen),
        }))
    }

    /// True if this cert was loaded from exactly these files.
    pub fn same_files(&self, cert_file: &str, key_file: &str) -> bool {
        self.cert_file == Path::new(cert_file) && self.key_file == Path::new(key_file)
    }

    /// The certificate served now.
    pub fn current(&self) -> Arc<CertifiedKey> {
        self.current.load_full()
    }

    /// Loads the files again if they changed since last looked at. On
    /// failure the current certificate stays, and the same files are not
    /// retried until they change again.
    pub fn refresh(&self) -> Result<Refresh, CertError> {
        let now = fingerprint(&self.cert_file, &self.key_file);
        {
            let mut seen = self.seen.lock().expect("not poisoned");
            if now.is_none() || *seen == now {
                return Ok(Refresh::Unchanged);
            }
            *seen = now;
        }
        let key = load_pair(&self.host, &self.cert_file, &self.key_file)?;
        self.current.store(Arc::new(key));
        Ok(Refresh::Reloaded)
    }

    /// A rustls server config for this host: its certificate (read at each
    /// handshake), HTTP/2 and HTTP/1.1 by ALPN, and client certificates
    /// verified against `client_roots` when given.
    pub fn server_config(
        self: &Arc<Self>,
        client_roots: Option<RootCertStore>,
    ) -> Result<Arc<ServerConfig>, CertError> {
        let err = |e: &dyn std::fmt::Display| CertError::Config {
            host: self.host.clone(),
            reason: e.to_string(),
        };
        let provider = sane_certs::tls::provider();
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| err(&e))?;
        let builder = match client_roots {
            None => builder.with_no_client_auth(),
            Some(roots) => {
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                        .build()
                        .map_err(|e| err(&e))?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let mut config = builder.with_cert_resolver(Arc::new(HostCertResolver(self.clone())));
        config.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
        sane_certs::tls::prefer_server_order(&mut config);
        Ok(Arc::new(config))
    }
}

/// Reads the roots client certificates must chain to.
pub fn load_client_roots(host: &str, path: &str) -> Result<RootCertStore, CertError> {
    let read_err = |reason: String| CertError::Read {
        host: host.to_string(),
        path: path.to_string(),
        reason,
    };
    let mut roots = RootCertStore::empty();
    let iter = CertificateDer::pem_file_iter(path).map_err(|e| read_err(e.to_string()))?;
    for cert in iter {
        let cert = cert.map_err(|e| read_err(e.to_string()))?;
        roots.add(cert).map_err(|e| read_err(e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(read_err("no CA certificate in the file".into()));
    }
    Ok(roots)
}

fn load_pair(host: &str, cert_file: &Path, key_file: &Path) -> Result<CertifiedKey, CertError> {
    let read_err = |path: &Path, reason: String| CertError::Read {
        host: host.to_string(),
        path: path.display().to_string(),
        reason,
    };
    let chain = CertificateDer::pem_file_iter(cert_file)
        .map_err(|e| read_err(cert_file, e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| read_err(cert_file, e.to_string()))?;
    if chain.is_empty() {
        return Err(read_err(cert_file, "no certificate in the file".into()));
    }
    let key =
        PrivateKeyDer::from_pem_file(key_file).map_err(|e| read_err(key_file, e.to_string()))?;
    CertifiedKey::from_der(chain, key, &sane_certs::tls::provider()).map_err(|e| {
        CertError::Mismatch {
            host: host.to_string(),
            cert: cert_file.display().to_string(),
            key: key_file.display().to_string(),
            reason: e.to_string(),
        }
    })
}

fn fingerprint(cert: &Path, key: &Path) -> Option<Fingerprint> {
    let one = |p: &Path| {
        let m = std::fs::metadata(p).ok()?;
        Some((m.modified().ok()?, m.len(), m.ino()))
    };
    Some([one(cert)?, one(key)?])
}

// === impl HostCertResolver ===

impl ResolvesServerCert for HostCertResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.current())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use sane_certs::CertificateAuthority;
    use std::time::Duration;

    /// Writes a certificate for `host` (and its key) into `dir`; returns
    /// (cert path, key path, leaf DER).
    pub(crate) fn write_pair(dir: &Path, name: &str, host: &str) -> (String, String, Vec<u8>) {
        let ca = CertificateAuthority::generate(
            &sane_certs::TrustDomain::new("example.test").unwrap(),
            Default::default(),
        )
        .unwrap();
        let (cert_pem, key_pem) = ca
            .sign_external_server_cert(&[host.to_string()], Duration::from_secs(3600))
            .unwrap();
        let cert = dir.join(format!("{name}.pem"));
        let key = dir.join(format!("{name}.key"));
        std::fs::write(&cert, &cert_pem).unwrap();
        std::fs::write(&key, &key_pem).unwrap();
        let der = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
            .next()
            .unwrap()
            .unwrap()
            .to_vec();
        (cert.display().to_string(), key.display().to_string(), der)
    }

    fn replace(from: &str, to: &str) {
        let tmp = format!("{to}.tmp");
        std::fs::copy(from, &tmp).unwrap();
        std::fs::rename(&tmp, to).unwrap();
    }

    #[test]
    fn loads_reloads_and_keeps_the_old_cert_on_a_bad_pair() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key, der1) = write_pair(dir.path(), "a", "a.example.test");
        let hc = HostCert::load("a.example.test", &cert, &key).unwrap();
        assert_eq!(hc.current().cert[0].as_ref(), der1.as_slice());
        assert_eq!(hc.refresh().unwrap(), Refresh::Unchanged);
        // TLS 1.2 suites by the server's order (testssl's "server order").
        assert!(hc.server_config(None).unwrap().ignore_client_order);

        // A certificate whose key is not the one on disk: rejected, naming
        // the host; the old one keeps serving.
        let (cert2, key2, der2) = write_pair(dir.path(), "a2", "a.example.test");
        replace(&cert2, &cert);
        let err = hc.refresh().unwrap_err().to_string();
        assert!(err.contains("host \"a.example.test\""), "{err}");
        assert!(err.contains("do not match"), "{err}");
        assert_eq!(hc.current().cert[0].as_ref(), der1.as_slice());

        // Now the matching key arrives: the new certificate is served.
        replace(&key2, &key);
        assert_eq!(hc.refresh().unwrap(), Refresh::Reloaded);
        assert_eq!(hc.current().cert[0].as_ref(), der2.as_slice());
    }

    #[test]
    fn load_errors_name_host_and_file() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, _, _) = write_pair(dir.path(), "a", "a.example.test");
        let (_, other_key, _) = write_pair(dir.path(), "b", "b.example.test");
        let err = HostCert::load("a.example.test", &cert, &other_key)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("a.example.test") && err.contains("do not match"),
            "{err}"
        );
        let missing = dir.path().join("nope.pem").display().to_string();
        let err = HostCert::load("a.example.test", &missing, &other_key)
            .unwrap_err()
            .to_string();
        assert!(err.contains("nope.pem"), "{err}");
    }
}
