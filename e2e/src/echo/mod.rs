//! `sane-echo`, the test application: an HTTP, a gRPC and a TCP echo server in
//! one process.
//!
//! Tests and the demo put it behind sidecars and check what arrives: the HTTP
//! port describes each request as JSON and obeys control headers
//! (`x-echo-delay`, `x-echo-status`, `x-echo-reset`), the gRPC port echoes
//! unary and streaming calls (or fails with the code a request asks for), and
//! the TCP port echoes bytes. Every answer names the instance (`--name`), so a
//! test can tell which endpoint served it.
//!
//! Following the bind-then-serve rule, [`Bound::bind`] binds every socket and
//! reports the real addresses before [`Bound::run`] serves them.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::task::JoinSet;

mod grpc;
mod http;
pub mod proto;
mod tcp;

pub use http::{pattern_byte, STATS_PATH};

/// What to serve and where.
#[derive(Clone, Debug, Default)]
pub struct EchoConfig {
    /// Instance name, reported in every answer.
    pub name: String,
    /// Address of the HTTP/1.1 + h2c port, if any.
    pub http: Option<SocketAddr>,
    /// Address of the gRPC (h2c) port, if any.
    pub grpc: Option<SocketAddr>,
    /// Address of the TCP echo port, if any.
    pub tcp: Option<SocketAddr>,
}

/// The kinds of port the app serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PortKind {
    /// HTTP/1.1 and prior-knowledge HTTP/2.
    Http,
    /// gRPC over prior-knowledge HTTP/2.
    Grpc,
    /// Raw TCP echo.
    Tcp,
}

/// The app with every socket bound, ready to [`run`](Bound::run).
#[derive(Debug)]
pub struct Bound {
    name: Arc<str>,
    listeners: Vec<(PortKind, TcpListener)>,
}

// === impl PortKind ===

impl PortKind {
    /// The name printed in `listening name=… addr=…`.
    pub fn name(self) -> &'static str {
        match self {
            PortKind::Http => "http",
            PortKind::Grpc => "grpc",
            PortKind::Tcp => "tcp",
        }
    }
}

// === impl Bound ===

impl Bound {
    /// Binds every configured port. Fails if none is configured.
    pub async fn bind(cfg: EchoConfig) -> io::Result<Bound> {
        let wanted = [
            (PortKind::Http, cfg.http),
            (PortKind::Grpc, cfg.grpc),
            (PortKind::Tcp, cfg.tcp),
        ];
        let mut listeners = Vec::new();
        for (kind, addr) in wanted {
            if let Some(addr) = addr {
                let listener = TcpListener::bind(addr).await.map_err(|e| {
                    io::Error::new(
                        e.kind(),
                        format!("binding {} port {addr}: {e}", kind.name()),
                    )
                })?;
                listeners.push((kind, listener));
            }
        }
        if listeners.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "nothing to serve: give at least one of --http, --grpc, --tcp",
            ));
        }
        Ok(Bound {
            name: cfg.name.into(),
            listeners,
        })
    }

    /// The bound addresses, by port kind.
    pub fn addrs(&self) -> Vec<(PortKind, SocketAddr)> {
        self.listeners
            .iter()
            .filter_map(|(kind, l)| l.local_addr().ok().map(|a| (*kind, a)))
            .collect()
    }

    /// Serves every port until `shutdown` completes, then stops accepting.
    ///
    /// Connections already accepted are left to finish on their own tasks;
    /// the process exits right after, which is what a test app wants.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let mut tasks = JoinSet::new();
        let http_state = Arc::new(http::EchoState::new(self.name.clone()));
        for (kind, listener) in self.listeners {
            match kind {
                PortKind::Http => tasks.spawn(http::serve(listener, http_state.clone())),
                PortKind::Grpc => tasks.spawn(grpc::serve(listener, self.name.clone())),
                PortKind::Tcp => tasks.spawn(tcp::serve(listener)),
            };
        }
        shutdown.await;
        tracing::info!("shutting down");
        tasks.shutdown().await;
    }
}
