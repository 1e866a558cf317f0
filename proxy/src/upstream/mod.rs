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
use http::{Request, Response};
use hyper::body::Incoming;
use sane_xds_proto::Protocol;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;

/// How to reach one endpoint.
#[derive(Clone, Copy, Debug)]
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
}

/// Connection pools and the connector they dial with.
#[derive(Debug)]
pub struct Upstream {
    connector: Arc<dyn Connect>,
    h2: H2Pool,
    h1: Arc<H1Pool>,
}

// === impl Upstream ===

impl Upstream {
    /// Pools that open connections with `connector`.
    pub fn new(connector: Arc<dyn Connect>) -> Self {
        Self {
            connector,
            h2: H2Pool::default(),
            h1: Arc::new(H1Pool::default()),
        }
    }

    /// Sends `req` (which names `authority`) to `target`.
    pub async fn send(
        &self,
        mut req: Request<Body>,
        target: &Target,
        authority: &str,
    ) -> Result<Response<Incoming>, ProxyError> {
        if h::is_upgrade(&req) {
            h::for_h1(&mut req, authority, true)?;
            let key = PoolKey {
                addr: target.addr,
                header: target.via_sidecar.map(|port| TransportHeader {
                    port,
                    framing: Framing::Http1,
                }),
            };
            let io = self.connect(key, target.connect_timeout).await?;
            let mut sender =
                H1Pool::handshake(io, key, true)
                    .await
                    .map_err(|source| ProxyError::Handshake {
                        addr: key.addr,
                        source,
                    })?;
            return sender
                .send_request(req)
                .await
                .map_err(|source| ProxyError::UpstreamReset {
                    addr: key.addr,
                    source,
                });
        }
        let h2 = target.via_sidecar.is_some()
            || matches!(target.protocol, Protocol::Http2 | Protocol::Grpc);
        if h2 {
            h::for_h2(&mut req, authority)?;
            let key = PoolKey {
                addr: target.addr,
                header: target.via_sidecar.map(|port| TransportHeader {
                    port,
                    framing: Framing::Http2,
                }),
            };
            self.send_h2(req, key, target.connect_timeout).await
        } else {
            h::for_h1(&mut req, authority, false)?;
            let key = PoolKey {
                addr: target.addr,
                header: None,
            };
            self.send_h1(req, key, target).await
        }
    }

    async fn send_h2(
        &self,
        req: Request<Body>,
        key: PoolKey,
        connect_timeout: Duration,
    ) -> Result<Response<Incoming>, ProxyError> {
        let reset = |source| ProxyError::UpstreamReset {
            addr: key.addr,
            source,
        };
        let mut sender = match self.h2.checkout(key).await {
            Ok(pooled) => {
                let mut pooled = pooled;
                match pooled.try_send_request(req).await {
                    Ok(rsp) => return Ok(rsp),
                    Err(mut e) => match e.take_message() {
                        // The pooled connection died before the request
                        // went out: safe to send it on a fresh one.
                        Some(again) => {
                            let slot = match self.h2.checkout(key).await {
                                Ok(s) => return s.clone().send_request(again).await.map_err(reset),
                                Err(slot) => slot,
                            };
                            let io = self.connect(key, connect_timeout).await?;
                            let mut s =
                                H2Pool::handshake(io, slot, key).await.map_err(|source| {
                                    ProxyError::Handshake {
                                        addr: key.addr,
                                        source,
                                    }
                                })?;
                            return s.send_request(again).await.map_err(reset);
                        }
                        None => return Err(reset(e.into_error())),
                    },
                }
            }
            Err(slot) => {
                let io = self.connect(key, connect_timeout).await?;
                H2Pool::handshake(io, slot, key)
                    .await
                    .map_err(|source| ProxyError::Handshake {
                        addr: key.addr,
                        source,
                    })?
            }
        };
        sender.send_request(req).await.map_err(reset)
    }

    async fn send_h1(
        &self,
        req: Request<Body>,
        key: PoolKey,
        target: &Target,
    ) -> Result<Response<Incoming>, ProxyError> {
        let reset = |source| ProxyError::UpstreamReset {
            addr: key.addr,
            source,
        };
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
        let io = self.connect(key, target.connect_timeout).await?;
        let mut sender =
            H1Pool::handshake(io, key, false)
                .await
                .map_err(|source| ProxyError::Handshake {
                    addr: key.addr,
                    source,
                })?;
        let rsp = sender.send_request(req).await.map_err(reset)?;
        self.h1.checkin_when_ready(key, sender);
        Ok(rsp)
    }

    /// Opens a byte stream for opaque TCP to `target`.
    pub async fn open(&self, target: &Target) -> Result<BoxIo, ProxyError> {
        let key = PoolKey {
            addr: target.addr,
            header: target.via_sidecar.map(|port| TransportHeader {
                port,
                framing: Framing::Opaque,
            }),
        };
        self.connect(key, target.connect_timeout).await
    }

    async fn connect(&self, key: PoolKey, timeout: Duration) -> Result<BoxIo, ProxyError> {
        let addr = key.addr;
        let mut io = tokio::time::timeout(timeout, self.connector.connect(addr))
            .await
            .map_err(|_| ProxyError::ConnectTimeout {
                addr,
                timeout_ms: timeout.as_millis() as u64,
            })?
            .map_err(|source| ProxyError::ConnectFailed { addr, source })?;
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
