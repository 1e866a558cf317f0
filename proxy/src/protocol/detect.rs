//! Protocol detection on inbound connections.
//!
//! Reads just enough of the first bytes to tell a peer sidecar (transport
//! header), HTTP/2 (connection preface), HTTP/1 (a method token and a space)
//! and anything else (opaque) apart. A client that sends nothing within the
//! detection timeout (a server-first protocol) is treated as opaque. The
//! bytes read are handed back so the connection can be replayed from the
//! start.

use super::transport_header::{self, TransportHeader};
use bytes::BytesMut;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt};

/// The HTTP/2 client connection preface.
pub const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// The longest HTTP/1 method token we wait for.
const MAX_METHOD: usize = 24;
/// Never buffer more than this while detecting.
const MAX_DETECT_BYTES: usize = 64;

/// What the first bytes of a connection are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Detected {
    /// A peer sidecar's transport header (already consumed from the buffer).
    Mesh(TransportHeader),
    /// The HTTP/2 preface.
    Http2,
    /// An HTTP/1 request line.
    Http1,
    /// Anything else, or silence until the timeout.
    Opaque,
}

/// Why detection ended without a protocol.
#[derive(Debug, thiserror::Error)]
pub enum DetectError {
    /// The peer closed before sending anything.
    #[error("connection closed before any data")]
    Closed,
    /// A read failed.
    #[error("reading first bytes: {0}")]
    Io(#[from] std::io::Error),
    /// A transport header was malformed.
    #[error("bad transport header: {0}")]
    BadHeader(#[from] transport_header::HeaderError),
}

/// Classifies `buf`, or returns `None` if more bytes are needed to decide.
pub fn classify(buf: &[u8]) -> Option<Detected> {
    if buf.is_empty() {
        return None;
    }
    if buf[0] == 0 {
        let n = buf.len().min(transport_header::MAGIC.len());
        if buf[..n] != transport_header::MAGIC[..n] {
            return Some(Detected::Opaque);
        }
        // A header is a mesh connection once complete; the caller decodes it.
        return (buf.len() >= transport_header::LEN).then_some(Detected::Opaque);
    }
    let n = buf.len().min(H2_PREFACE.len());
    if buf[..n] == H2_PREFACE[..n] {
        return (n == H2_PREFACE.len()).then_some(Detected::Http2);
    }
    for (i, &b) in buf.iter().enumerate() {
        if b == b' ' {
            return Some(if i > 0 {
                Detected::Http1
            } else {
                Detected::Opaque
            });
        }
        if !(b.is_ascii_uppercase() || b == b'-' || b == b'_') || i >= MAX_METHOD {
            return Some(Detected::Opaque);
        }
    }
    None
}

/// Reads from `io` until the protocol is known or `timeout` passes. Returns
/// the protocol and the bytes read that belong to the application stream (a
/// transport header is consumed, everything else is kept for replay).
pub async fn detect<I>(io: &mut I, timeout: Duration) -> Result<(Detected, BytesMut), DetectError>
where
    I: AsyncRead + Unpin,
{
    let mut buf = BytesMut::with_capacity(MAX_DETECT_BYTES);
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(found) = classify(&buf) {
            if buf[0] == 0
                && buf.len() >= transport_header::LEN
                && buf.starts_with(transport_header::MAGIC)
            {
                let header = TransportHeader::decode(&buf)?;
                let rest = buf.split_off(transport_header::LEN);
                return Ok((Detected::Mesh(header), rest));
            }
            return Ok((found, buf));
        }
        if buf.len() >= MAX_DETECT_BYTES {
            return Ok((Detected::Opaque, buf));
        }
        // Read one byte at a time past the magic only while deciding; most
        // decisions need a handful of bytes.
        match tokio::time::timeout_at(deadline, io.read_buf(&mut buf)).await {
            Err(_elapsed) => return Ok((Detected::Opaque, buf)),
            Ok(Ok(0)) if buf.is_empty() => return Err(DetectError::Closed),
            Ok(Ok(0)) => return Ok((Detected::Opaque, buf)),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::transport_header::Framing;

    #[test]
    fn classifies_prefixes() {
        assert_eq!(classify(b""), None);
        assert_eq!(classify(b"GE"), None);
        assert_eq!(classify(b"GET / HTTP/1.1\r\n"), Some(Detected::Http1));
        assert_eq!(classify(b"PRI * HTTP/2"), None);
        assert_eq!(classify(H2_PREFACE), Some(Detected::Http2));
        assert_eq!(classify(b"PRI * HTTP/1.1"), Some(Detected::Http1));
        assert_eq!(classify(b"\x16\x03\x01\x02"), Some(Detected::Opaque));
        assert_eq!(classify(b"hello"), Some(Detected::Opaque));
        assert_eq!(classify(b"\0san"), None);
        assert_eq!(classify(b"\0xyz"), Some(Detected::Opaque));
    }

    #[tokio::test]
    async fn reads_header_and_keeps_the_rest() {
        let h = TransportHeader {
            port: 9000,
            framing: Framing::Http2,
        };
        let mut data = h.encode().to_vec();
        data.extend_from_slice(H2_PREFACE);
        let (mut client, mut server) = tokio::io::duplex(1024);
        tokio::io::AsyncWriteExt::write_all(&mut client, &data)
            .await
            .unwrap();
        let (found, rest) = detect(&mut server, Duration::from_secs(5)).await.unwrap();
        assert_eq!(found, Detected::Mesh(h));
        assert!(H2_PREFACE.starts_with(&rest));
    }

    #[tokio::test(start_paused = true)]
    async fn silence_is_opaque_after_the_timeout() {
        let (_client, mut server) = tokio::io::duplex(1024);
        let (found, rest) = detect(&mut server, Duration::from_millis(100))
            .await
            .unwrap();
        assert_eq!(found, Detected::Opaque);
        assert!(rest.is_empty());
    }

    #[tokio::test]
    async fn early_close_is_an_error() {
        let (client, mut server) = tokio::io::duplex(1024);
        drop(client);
        let err = detect(&mut server, Duration::from_secs(1))
            .await
            .unwrap_err();
        assert!(matches!(err, DetectError::Closed));
    }
}
