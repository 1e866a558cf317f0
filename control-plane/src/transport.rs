//! How the control plane's ports are served: TLS by default, plaintext only
//! on loopback and only when asked for.
//!
//! The xDS port (ADS and the CA) and the HTTP API carry bearer tokens, so
//! they are served over TLS with a certificate the control plane issues
//! itself from the mesh CA (as istiod does on 15012): a [`ServingCert`]
//! whose SANs are its DNS names and addresses ([`serving_names`]), renewed
//! at two thirds of its life without dropping the listeners. Proxies verify
//! it against the root they were given at bootstrap, which the control plane
//! writes to a file ([`write_root_file`]). The API can serve an operator's
//! certificate from files instead.
//!
//! The xDS port also asks for a client certificate without requiring one: a
//! proxy's first connection comes before its first workload certificate. A
//! certificate that is presented must chain to the mesh root, and its SPIFFE
//! id ends up in the request's [`PeerInfo`], which the CA and the ADS stream
//! compare with the identity of the caller's token
//! ([`crate::ca::WorkloadAuth::authenticate_caller`]).
//!
//! Handshakes run in their own tasks (at most [`MAX_HANDSHAKES`] at once,
//! each within [`HANDSHAKE_TIMEOUT`]), so a slow or plaintext client never
//! holds up the accept loop; only finished handshakes reach the servers,
//! through [`TlsIncoming`].
//!
//! Plaintext (`--insecure-plaintext-loopback`) is refused at startup unless
//! every port binds a loopback address ([`check_plaintext_bind`]).

use crate::error::Error;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use sane_certs::{CertificateAuthority, ServerCert, SpiffeId};
use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;

/// How long a client may take to complete the TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes in progress at once, per port; a connection beyond this is
/// closed at once rather than queued.
pub const MAX_HANDSHAKES: usize = 256;
/// Lifetime of the serving certificate by default.
pub const DEFAULT_SERVING_CERT_TTL: Duration = Duration::from_secs(24 * 3600);
/// File name of the root certificate written into the data directory.
pub const ROOT_CERT_FILE: &str = "root-cert.pem";
/// Names every serving certificate carries, for clients on the same host.
pub const LOCAL_NAMES: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

/// Connections whose handshake finished, waiting for the server to take them.
const ACCEPTED_BUFFER: usize = 64;

/// The serving certificate, swapped on renewal; rustls asks for it at each
/// handshake, so a renewal applies to the next connection.
pub struct ServingCert {
    ca: Arc<CertificateAuthority>,
    names: Vec<String>,
    ttl: Duration,
    current: RwLock<Issued>,
}

#[derive(Clone)]
struct Issued {
    key: Arc<CertifiedKey>,
    serial: String,
    issued_at: SystemTime,
    not_after: SystemTime,
}

/// Who is on the other end of an xDS/CA connection: the request extension
/// the gRPC services read.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PeerInfo {
    /// The client's address.
    pub remote: Option<SocketAddr>,
    /// The SPIFFE id of the client certificate it presented and proved,
    /// if any (plaintext connections never have one).
    pub identity: Option<SpiffeId>,
}

/// Connections past their TLS handshake, for tonic (a `Stream`) or axum (a
/// `Listener`).
#[derive(Debug)]
pub struct TlsIncoming {
    rx: mpsc::Receiver<TlsConn>,
    local: SocketAddr,
}

/// One server-side TLS connection and what its handshake proved.
#[derive(Debug)]
pub struct TlsConn {
    stream: TlsStream<TcpStream>,
    info: PeerInfo,
}

// === impl ServingCert ===

impl ServingCert {
    /// Issues the first certificate for `names` (DNS names or IP
    /// addresses), valid for `ttl`.
    pub fn issue(
        ca: Arc<CertificateAuthority>,
        names: Vec<String>,
        ttl: Duration,
    ) -> Result<ServingCert, Error> {
        let current = RwLock::new(Self::sign(&ca, &names, ttl)?);
        Ok(ServingCert {
            ca,
            names,
            ttl,
            current,
        })
    }

    fn sign(ca: &CertificateAuthority, names: &[String], ttl: Duration) -> Result<Issued, Error> {
        let cert = ca
            .sign_server_cert(names, ttl)
            .map_err(|source| Error::ServingCert {
                names: names.to_vec(),
                source: Box::new(source),
            })?;
        tracing::info!(
            names = ?names,
            serial = %cert.serial(),
            not_after = %humantime::format_rfc3339_seconds(cert.not_after()),
            "control-plane serving certificate issued"
        );
        Ok(Issued {
            key: cert.certified_key(),
            serial: cert.serial().to_string(),
            issued_at: SystemTime::now(),
            not_after: cert.not_after(),
        })
    }

    fn current(&self) -> Issued {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The names the certificate is valid for.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// The serial number of the certificate being served (hex).
    pub fn serial(&self) -> String {
        self.current().serial
    }

    /// When the current certificate should be replaced: two thirds into its
    /// life, so clients never see it expire while the CA is healthy.
    pub fn renew_at(&self) -> SystemTime {
        let c = self.current();
        let life = c.not_after.duration_since(c.issued_at).unwrap_or_default();
        c.issued_at + life * 2 / 3
    }

    /// Replaces the certificate with a fresh one (fresh key too).
    pub fn renew(&self) -> Result<(), Error> {
        let next = Self::sign(&self.ca, &self.names, self.ttl)?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = next;
        Ok(())
    }

    /// Renews at [`Self::renew_at`] until `shutdown`; a failure is retried
    /// after a tenth of the lifetime (the current certificate is still
    /// valid for a third of it).
    pub async fn run_renewal(self: Arc<Self>, shutdown: CancellationToken) {
        loop {
            let wait = self
                .renew_at()
                .duration_since(SystemTime::now())
                .unwrap_or_default();
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
            if let Err(error) = self.renew() {
                let retry = (self.ttl / 10).max(Duration::from_secs(1));
                tracing::error!(%error, retry_in = ?retry, "renewing the serving certificate failed");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(retry) => {}
                }
            }
        }
    }
}

impl ResolvesServerCert for ServingCert {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current().key)
    }
}

impl std::fmt::Debug for ServingCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let c = self.current();
        f.debug_struct("ServingCert")
            .field("names", &self.names)
            .field("serial", &c.serial)
            .field("not_after", &humantime::format_rfc3339_seconds(c.not_after))
            .field("key", &"<redacted>")
            .finish()
    }
}

/// An operator's certificate and key from PEM files, for the API.
pub fn load_cert_files(cert: &Path, key: &Path) -> Result<Arc<CertifiedKey>, Error> {
    let read = |p: &Path| {
        std::fs::read_to_string(p).map_err(|e| Error::CertFiles {
            path: p.to_path_buf(),
            reason: e.to_string(),
        })
    };
    let cert_pem = read(cert)?;
    let loaded = ServerCert::from_pem(&cert_pem, &read(key)?).map_err(|e| Error::CertFiles {
        path: cert.to_path_buf(),
        reason: e.to_string(),
    })?;
    Ok(loaded.certified_key())
}

/// A fixed certificate (the operator's files).
#[derive(Debug)]
pub struct FixedCert(pub Arc<CertifiedKey>);

impl ResolvesServerCert for FixedCert {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

/// The names of the serving certificate: [`LOCAL_NAMES`], the address of
/// every port bound to a specific IP, then `extra` (`--tls-san`), without
/// duplicates. A port bound to `0.0.0.0`/`::` adds nothing: which address
/// clients dial it by is the operator's to say with `--tls-san`.
pub fn serving_names(extra: &[String], bound: &[SocketAddr]) -> Vec<String> {
    let mut names: Vec<String> = LOCAL_NAMES.iter().map(|n| n.to_string()).collect();
    let bound = bound
        .iter()
        .filter(|a| !a.ip().is_unspecified())
        .map(|a| a.ip().to_string());
    for name in bound.chain(extra.iter().map(|n| n.trim().to_string())) {
        if !name.is_empty() && !names.contains(&name) {
            names.push(name);
        }
    }
    names
}

/// Plaintext is only served on loopback: a port `name` asked to bind `addr`
/// in plaintext elsewhere is refused.
pub fn check_plaintext_bind(name: &'static str, addr: SocketAddr) -> Result<(), Error> {
    if addr.ip().is_loopback() {
        Ok(())
    } else {
        Err(Error::PlaintextNotLoopback { name, addr })
    }
}

/// Writes the PEM of the mesh roots to `path` (atomically, mode 0644: it
/// is public), for proxies and clients to verify the control plane with.
pub fn write_root_file(path: &Path, pem: &str) -> Result<(), Error> {
    use std::io::Write;
    let err = |source| Error::RootFile {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    let tmp = path.with_extension("pem.tmp");
    let mut f = std::fs::File::create(&tmp).map_err(err)?;
    f.write_all(pem.as_bytes()).map_err(err)?;
    f.sync_all().map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)?;
    Ok(())
}

/// Accepts on `listener` until `shutdown`, runs each TLS handshake in its own
/// task, and yields the connections that complete one. `name` is the port's,
/// for logs.
pub fn accept_tls(
    name: &'static str,
    listener: TcpListener,
    config: Arc<ServerConfig>,
    shutdown: CancellationToken,
) -> io::Result<TlsIncoming> {
    let local = listener.local_addr()?;
    let (tx, rx) = mpsc::channel(ACCEPTED_BUFFER);
    tokio::spawn(accept_loop(name, listener, config, tx, shutdown));
    Ok(TlsIncoming { rx, local })
}

async fn accept_loop(
    name: &'static str,
    listener: TcpListener,
    config: Arc<ServerConfig>,
    tx: mpsc::Sender<TlsConn>,
    shutdown: CancellationToken,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let handshakes = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    loop {
        let (tcp, peer) = tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tx.closed() => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(error) => {
                    // EMFILE and friends: back off a little instead of spinning.
                    tracing::warn!(port = name, %error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = handshakes.clone().try_acquire_owned() else {
            tracing::warn!(port = name, %peer, limit = MAX_HANDSHAKES, "too many TLS handshakes in progress; connection closed");
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let tx = tx.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(error)) => {
                    tracing::info!(port = name, %peer, %error, "TLS handshake failed (a plaintext client, or one that does not trust the mesh root?)");
                    return;
                }
                Err(_) => {
                    tracing::info!(port = name, %peer, timeout = ?HANDSHAKE_TIMEOUT, "TLS handshake timed out");
                    return;
                }
            };
            let identity = match tls.get_ref().1.peer_certificates() {
                None => None,
                // Verified by the config's client verifier, which also
                // insists on exactly one SPIFFE id.
                Some(_) => match sane_certs::peer_identity_of(tls.get_ref().1) {
                    Ok(id) => Some(id),
                    Err(error) => {
                        tracing::info!(port = name, %peer, %error, "client certificate without a usable SPIFFE id");
                        return;
                    }
                },
            };
            let conn = TlsConn {
                stream: tls,
                info: PeerInfo {
                    remote: Some(peer),
                    identity,
                },
            };
            let _ = tx.send(conn).await;
        });
    }
}

// === impl PeerInfo ===

impl PeerInfo {
    /// The caller of a gRPC request: what the TLS handshake proved, or only
    /// the address of a plaintext connection.
    pub fn of(extensions: &http::Extensions) -> PeerInfo {
        if let Some(info) = extensions.get::<PeerInfo>() {
            return info.clone();
        }
        PeerInfo {
            remote: extensions
                .get::<tonic::transport::server::TcpConnectInfo>()
                .and_then(|i| i.remote_addr()),
            identity: None,
        }
    }

    /// The address for logs: `ip:port` or `unknown`.
    pub fn remote_display(&self) -> String {
        self.remote
            .map_or_else(|| "unknown".to_string(), |a| a.to_string())
    }
}

// === impl TlsIncoming ===

impl futures::Stream for TlsIncoming {
    type Item = Result<TlsConn, io::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.rx.poll_recv(cx).map(|c| c.map(Ok))
    }
}

impl axum::serve::Listener for TlsIncoming {
    type Io = TlsConn;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (TlsConn, SocketAddr) {
        match self.rx.recv().await {
            Some(conn) => {
                let remote = conn.info.remote.unwrap_or(self.local);
                (conn, remote)
            }
            // The accept loop stopped (shutdown): nothing more will come.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.local)
    }
}

// === impl TlsConn ===

impl tonic::transport::server::Connected for TlsConn {
    type ConnectInfo = PeerInfo;

    fn connect_info(&self) -> PeerInfo {
        self.info.clone()
    }
}

impl AsyncRead for TlsConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_cover_loopback_specific_binds_and_extra_names_once() {
        let names = serving_names(
            &["cp.example".into(), "127.0.0.1".into(), " ".into()],
            &[
                "10.0.0.5:15010".parse().unwrap(),
                "0.0.0.0:15080".parse().unwrap(),
                "10.0.0.5:15080".parse().unwrap(),
            ],
        );
        assert_eq!(
            names,
            ["localhost", "127.0.0.1", "::1", "10.0.0.5", "cp.example"]
        );
    }

    #[test]
    fn plaintext_is_refused_off_loopback() {
        assert!(check_plaintext_bind("xds", "127.0.0.1:0".parse().unwrap()).is_ok());
        assert!(check_plaintext_bind("xds", "[::1]:0".parse().unwrap()).is_ok());
        for addr in ["0.0.0.0:15010", "10.1.2.3:15010", "[::]:15010"] {
            let err = check_plaintext_bind("xds", addr.parse().unwrap()).unwrap_err();
            let msg = err.to_string();
            assert!(msg.contains(addr), "{msg}");
            assert!(msg.contains("--insecure-plaintext-loopback"), "{msg}");
        }
    }

    #[test]
    fn the_serving_certificate_renews_two_thirds_into_its_life() {
        let td = sane_certs::TrustDomain::new("mesh.test").unwrap();
        let ca = CertificateAuthority::generate(&td, sane_certs::CaOptions::default()).unwrap();
        let ttl = Duration::from_secs(3000);
        let cert = ServingCert::issue(Arc::new(ca), serving_names(&[], &[]), ttl).unwrap();
        let until = cert
            .renew_at()
            .duration_since(SystemTime::now())
            .unwrap_or_default();
        assert!(until <= ttl * 2 / 3 && until > ttl / 2, "{until:?}");
        let first = cert.serial();
        cert.renew().unwrap();
        assert_ne!(cert.serial(), first);
        assert!(!format!("{cert:?}").contains("PRIVATE"));
    }
}
