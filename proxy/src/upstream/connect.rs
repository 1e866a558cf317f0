//! Opening connections to endpoints, behind a trait so tests can connect in
//! memory and TLS can wrap the stream without the pools knowing.

use crate::protocol::io::BoxIo;
use futures::future::BoxFuture;
use std::fmt::Debug;
use std::io;
use std::net::SocketAddr;

/// Opens a byte stream to an address.
pub trait Connect: Debug + Send + Sync + 'static {
    /// Connects to `addr`.
    fn connect(&self, addr: SocketAddr) -> BoxFuture<'static, io::Result<BoxIo>>;
}

/// Plain TCP with `TCP_NODELAY` (requests are small and latency matters
/// more than packet count).
#[derive(Clone, Copy, Debug, Default)]
pub struct TcpConnect;

// === impl TcpConnect ===

impl Connect for TcpConnect {
    fn connect(&self, addr: SocketAddr) -> BoxFuture<'static, io::Result<BoxIo>> {
        Box::pin(async move {
            let stream = tokio::net::TcpStream::connect(addr).await?;
            stream.set_nodelay(true)?;
            Ok(Box::new(stream) as BoxIo)
        })
    }
}
