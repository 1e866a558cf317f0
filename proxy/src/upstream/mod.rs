//! Sending requests and opening streams to endpoints.
//!
//! Picks the wire protocol for the hop: to a peer sidecar, HTTP/2 (every
//! request multiplexed on one connection) or, for requests that upgrade the
//! connection, a dedicated HTTP/1.1 connection; to a workload without a
//! sidecar, the protocol its port declares.

pub mod connect;
pub mod pool;

use self::connect::Connect;
use self::pool::{H1Pool, H2Pool, PoolKey};
use crate::body::Body;
use crate::error::ProxyError;
use crate::protocol::http as h;
use crate::protocol::io::BoxIo;
use crate::protocol::transport_header::{Framing, TransportHeader};
use crate::tls::Identity;
use http::{Request, Response};
use hyper::body::Incoming;
use sane_xds_proto::Protocol;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;

/// How to reach one endpoint.
#[derive(Clone, Debug)]
pub struct Target {
    /// Address to connect to.
    pub addr: SocketAddr,
    /// Workload port to announce when `addr` is a peer sidecar.
    pub via_sidecar: Option<u16>,
    /// Protocol the workload speaks (decides the hop protocol when direct).
    pub protocol: Protocol,
    /// Connect timeout.
    pub connect_timeout: Duration,
    /// Idle timeout of pooled HTTP/1.1 connections.
    pub idle_timeout: Duration,
    /// The SPIFFE id the endpoint is expected to present (empty: not
    /// configured).
    pub identity: Arc<str>,
}

/// Connection pools and the connector they dial with.
#[derive(Debug)]
pub struct Upstream {
    connector: Arc<dyn Connect>,
    identity: Arc<Identity>,
    h2: H2Pool,
    h1: Arc<H1Pool>,
}

// === impl Upstream ===

impl Upstream {
    /// Pools that open connections with `connector`.
    pub fn new(connector: Arc<dyn Connect>, identity: Arc<Identity>) -> Self {
        Self {
            connector,
            identity,
            h2: H2Pool::default(),
            h1: Arc::new(H1Pool::default()),
        }
    }

    /// Whether (and as whom) a connection to `target` uses mutual TLS: to a
    /// peer sidecar whenever this proxy has an identity; never to a workload
    /// without a sidecar. An endpoint that declares an identity while this
    /// proxy has none fails closed rather than going plaintext.
    fn tls_for(&self, target: &Target) -> Result<Option<Arc<str>>, ProxyError> {
        if target.via_sidecar.is_none() {
            return Ok(None);
        }
        if self.identity.is_configured() {
            Ok(Some(target.identity.clone()))
        } else if target.identity.is_empty() {
            Ok(None)
        } else {
            Err(ProxyError::Tls {
                addr: target.addr,
                source: Box::new(crate::tls::TlsError::NoCertificate { peer: target.addr }),
            })
        }
    }

    fn key(&self, target: &Target, framing: Framing) -> Result<PoolKey, ProxyError> {
        Ok(PoolKey {
            addr: target.addr,
            header: target
                .via_sidecar
                .map(|port| TransportHeader { port, framing }),
            tls: self.tls_for(target)?,
        })
    }

    /// Sends `req` (which names `authority`) to `target`.
    pub async fn send(
        &self,
        mut req: Request<Body>,
        target: &Target,
        authority: &str,
    ) -> Result<Response<Incoming>, ProxyError> {
        let addr = target.addr;
        if h::is_upgrade(&req) {
            h::for_h1(&mut req, authority, true)?;
            let key = self.key(target, Framing::Http1)?;
            let io = self.connect(&key, target.connect_timeout).await?;
            let mut sender = H1Pool::handshake(io, addr, true)
                .await
                .map_err(|source| ProxyError::Handshake { addr, source })?;
            return sender
                .send_request(req)
                .await
                .map_err(|source| ProxyError::UpstreamReset { addr, source });
        }
        let h2 = target.via_sidecar.is_some()
            || matches!(target.protocol, Protocol::Http2 | Protocol::Grpc);
        if h2 {
            h::for_h2(&mut req, authority)?;
            let key = self.key(target, Framing::Http2)?;
            self.send_h2(req, key, target.connect_timeout).await
        } else {
            h::for_h1(&mut req, authority, false)?;
            let key = self.key(target, Framing::Http1)?;
            self.send_h1(req, key, target).await
        }
    }

    async fn send_h2(
        &self,
        req: Request<Body>,
        key: PoolKey,
        connect_timeout: Duration,
    ) -> Result<Response<Incoming>, ProxyError> {
        let addr = key.addr;
        let reset = |source| ProxyError::UpstreamReset { addr, source };
        let handshake_failed = |source| ProxyError::Handshake { addr, source };
        let slot = match self.h2.checkout(&key).await {
            Ok(mut pooled) => match pooled.try_send_request(req).await {
                Ok(rsp) => return Ok(rsp),
                Err(mut e) => match e.take_message() {
                    // The pooled connection died before the request went
                    // out: safe to send it on a fresh connection.
                    Some(again) => match self.h2.checkout(&key).await {
                        Ok(mut s) => return s.send_request(again).await.map_err(reset),
                        Err(slot) => {
                            let io = self.connect(&key, connect_timeout).await?;
                            let mut s = H2Pool::handshake(io, slot, addr)
                                .await
                                .map_err(handshake_failed)?;
                            return s.send_request(again).await.map_err(reset);
                        }
                    },
                    None => return Err(reset(e.into_error())),
                },
            },
            Err(slot) => slot,
        };
        let io = self.connect(&key, connect_timeout).await?;
        let mut sender = H2Pool::handshake(io, slot, addr)
            .await
            .map_err(handshake_failed)?;
        sender.send_request(req).await.map_err(reset)
    }

    async fn send_h1(
        &self,
        req: Request<Body>,
        key: PoolKey,
        target: &Target,
    ) -> Result<Response<Incoming>, ProxyError> {
        let addr = key.addr;
        let reset = |source| ProxyError::UpstreamReset { addr, source };
        let mut req = req;
        if let Some(mut pooled) = self.h1.checkout(&key, target.idle_timeout) {
            match pooled.try_send_request(req).await {
                Ok(rsp) => {
                    self.h1.checkin_when_ready(key, pooled);
                    return Ok(rsp);
                }
                // The idle connection was closed by the server before the
                // request was written (the classic keep-alive race): retry
                // once on a fresh connection.
                Err(mut e) => match e.take_message() {
                    Some(again) => req = again,
                    None => return Err(reset(e.into_error())),
                },
            }
        }
        let io = self.connect(&key, target.connect_timeout).await?;
        let mut sender = H1Pool::handshake(io, addr, false)
            .await
            .map_err(|source| ProxyError::Handshake { addr, source })?;
        let rsp = sender.send_request(req).await.map_err(reset)?;
        self.h1.checkin_when_ready(key, sender);
        Ok(rsp)
    }

    /// Opens a byte stream for opaque TCP to `target`.
    pub async fn open(&self, target: &Target) -> Result<BoxIo, ProxyError> {
        let key = self.key(target, Framing::Opaque)?;
        self.connect(&key, target.connect_timeout).await
    }

    /// Connects (TCP, then TLS when the key says so, both within `timeout`)
    /// and writes the transport header.
    async fn connect(&self, key: &PoolKey, timeout: Duration) -> Result<BoxIo, ProxyError> {
        let addr = key.addr;
        let timed_out = |_| ProxyError::ConnectTimeout {
            addr,
            timeout_ms: timeout.as_millis() as u64,
        };
        let connect = async {
            let io = self
                .connector
                .connect(addr)
                .await
                .map_err(|source| ProxyError::ConnectFailed { addr, source })?;
            match &key.tls {
                None => Ok(io),
                Some(expected) => self
                    .identity
                    .connect(io, addr, expected)
                    .await
                    .map(|tls| Box::new(tls) as BoxIo)
                    .map_err(|source| ProxyError::Tls {
                        addr,
                        source: Box::new(source),
                    }),
            }
        };
        let mut io = tokio::time::timeout(timeout, connect)
            .await
            .map_err(timed_out)??;
        if let Some(header) = key.header {
            io.write_all(&header.encode())
                .await
                .map_err(|source| ProxyError::ConnectFailed { addr, source })?;
        }
        Ok(io)
    }

    /// Closes idle HTTP/1.1 connections older than `idle_timeout`.
    pub fn reap_idle(&self, idle_timeout: Duration) {
        self.h1.reap(idle_timeout);
    }
}
