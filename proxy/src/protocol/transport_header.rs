//! The mesh transport header.
//!
//! A sidecar connecting to a peer sidecar first writes a 9-byte header naming
//! the workload port the connection is for and how the rest of the stream is
//! framed. It starts with a NUL byte, which no HTTP request, HTTP/2 preface or
//! TLS ClientHello does, so the inbound side can tell it apart from plain
//! clients. Layout: `\0sane\x01` (6 bytes), port (u16, big endian), framing
//! (u8: 0 opaque, 1 HTTP/2, 2 HTTP/1.1).

use std::fmt;

/// The header's magic prefix (includes the format version, 1).
pub const MAGIC: &[u8; 6] = b"\0sane\x01";
/// Encoded length.
pub const LEN: usize = 9;

/// How the bytes after the header are framed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Framing {
    /// Opaque TCP.
    Opaque,
    /// HTTP/2, multiplexing many requests (HTTP/1 ones included).
    Http2,
    /// HTTP/1.1, used for requests that upgrade the connection.
    Http1,
}

/// A decoded transport header.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TransportHeader {
    /// Workload port on the peer's host.
    pub port: u16,
    /// Framing of the rest of the stream.
    pub framing: Framing,
}

/// Why a header could not be decoded.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    /// The bytes do not start with [`MAGIC`].
    #[error("not a transport header")]
    NoMagic,
    /// The framing byte is unknown.
    #[error("unknown framing {0}")]
    UnknownFraming(u8),
    /// Port 0.
    #[error("port 0 in transport header")]
    ZeroPort,
}

// === impl TransportHeader ===

impl TransportHeader {
    /// Encodes the header.
    pub fn encode(&self) -> [u8; LEN] {
        let mut out = [0u8; LEN];
        out[..6].copy_from_slice(MAGIC);
        out[6..8].copy_from_slice(&self.port.to_be_bytes());
        out[8] = match self.framing {
            Framing::Opaque => 0,
            Framing::Http2 => 1,
            Framing::Http1 => 2,
        };
        out
    }

    /// Decodes a complete header from the first [`LEN`] bytes of `buf`.
    pub fn decode(buf: &[u8]) -> Result<Self, HeaderError> {
        if buf.len() < LEN || &buf[..6] != MAGIC {
            return Err(HeaderError::NoMagic);
        }
        let port = u16::from_be_bytes([buf[6], buf[7]]);
        if port == 0 {
            return Err(HeaderError::ZeroPort);
        }
        let framing = match buf[8] {
            0 => Framing::Opaque,
            1 => Framing::Http2,
            2 => Framing::Http1,
            other => return Err(HeaderError::UnknownFraming(other)),
        };
        Ok(Self { port, framing })
    }
}

impl fmt::Display for TransportHeader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "port={} framing={:?}", self.port, self.framing)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_rejects() {
        for framing in [Framing::Opaque, Framing::Http2, Framing::Http1] {
            let h = TransportHeader {
                port: 8080,
                framing,
            };
            assert_eq!(TransportHeader::decode(&h.encode()), Ok(h));
        }
        assert_eq!(
            TransportHeader::decode(b"GET / HTTP/1.1"),
            Err(HeaderError::NoMagic)
        );
        let mut bad = TransportHeader {
            port: 1,
            framing: Framing::Http2,
        }
        .encode();
        bad[8] = 9;
        assert_eq!(
            TransportHeader::decode(&bad),
            Err(HeaderError::UnknownFraming(9))
        );
    }
}
