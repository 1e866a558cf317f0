//! Opaque TCP: bytes copied both ways until each side closes.

use tokio::io::{AsyncRead, AsyncWrite};

/// Byte counts of a finished opaque connection.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Transferred {
    /// Bytes from the client to the upstream.
    pub sent: u64,
    /// Bytes from the upstream to the client.
    pub received: u64,
}

/// Copies both directions, propagating half-closes, until both are done.
pub async fn forward<A, B>(client: &mut A, upstream: &mut B) -> std::io::Result<Transferred>
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    // A spliced connection is established: server-first protocols may
    // leave the client silent, so it is no longer evictable as such.
    super::overload::spoke();
    let (sent, received) = tokio::io::copy_bidirectional(client, upstream).await?;
    Ok(Transferred { sent, received })
}
