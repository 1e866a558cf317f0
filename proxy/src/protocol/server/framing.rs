//! Follows the HTTP/1 request framing on the bytes hyper reads, for the
//! one thing hyper's parser hides: a request head with both
//! `Content-Length` and `Transfer-Encoding`. hyper drops the
//! `Content-Length` (chunked wins) and serves the request; RFC 9112
//! section 6.1 allows that, but the disagreement is what request smuggling
//! is made of, and Envoy answers `400`. So does the proxy: this scanner
//! finds such a head and tells which request (by its index on the
//! connection) it is; the server answers that request `400 DPE`.
//!
//! It only skips bodies (by `Content-Length` or chunk sizes) to find the
//! next head; hyper still parses everything. When it cannot follow (an
//! upgrade or `CONNECT` was asked for, a size it cannot read) it stops,
//! failing open: hyper rejects malformed framing itself, and after a
//! `Content-Length` + `Transfer-Encoding` head hyper closes the connection,
//! so nothing after one needs finding.

/// Longest header name the scanner looks at (`transfer-encoding`).
const NAME_MAX: usize = 20;

/// The scanner's state on one HTTP/1 connection.
#[derive(Debug)]
pub(super) struct FramingScan {
    phase: Phase,
    /// Completed request heads so far.
    heads: u64,
    head: Head,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// In a request head (or before one).
    Head,
    /// `n` body bytes left.
    Body(u64),
    /// A chunk-size line; the size so far.
    ChunkSize { size: u64, ext: bool },
    /// `n` chunk bytes left, then CRLF.
    ChunkData(u64),
    /// The CRLF after a chunk.
    ChunkEnd,
    /// Trailer lines after the last chunk; `empty` while the line is empty.
    Trailers { empty: bool },
    /// Stopped (upgrade, or something it cannot follow).
    Off,
}

/// What the current head says so far.
#[derive(Debug, Default)]
struct Head {
    /// Bytes of the current line (only its start: the header name).
    name: [u8; NAME_MAX],
    name_len: usize,
    /// Past the `:` of the current line.
    in_value: bool,
    /// The current line is the `Content-Length` one: its value so far.
    length_value: Option<u64>,
    line_empty: bool,
    request_line: bool,
    content_length: Option<u64>,
    transfer_encoding: bool,
    upgrade: bool,
    connect: bool,
}

/// A request head completed by [`FramingScan::feed`] that carries both
/// `Content-Length` and `Transfer-Encoding`: the index of that request on
/// the connection (0 for the first).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Ambiguous(pub(super) u64);

// === impl FramingScan ===

impl FramingScan {
    pub(super) fn new() -> Self {
        Self {
            phase: Phase::Head,
            heads: 0,
            head: Head::fresh(),
        }
    }

    /// Follows `bytes`, the next ones hyper reads; returns the ambiguous
    /// head it completed, if any (the scan stops there: hyper closes the
    /// connection after that request).
    pub(super) fn feed(&mut self, mut bytes: &[u8]) -> Option<Ambiguous> {
        while !bytes.is_empty() {
            match self.phase {
                Phase::Off => return None,
                Phase::Body(n) => {
                    let take = n.min(bytes.len() as u64);
                    bytes = &bytes[take as usize..];
                    self.phase = if take == n {
                        Phase::Head
                    } else {
                        Phase::Body(n - take)
                    };
                }
                Phase::ChunkData(n) => {
                    let take = n.min(bytes.len() as u64);
                    bytes = &bytes[take as usize..];
                    if take == n {
                        self.phase = Phase::ChunkEnd;
                    } else {
                        self.phase = Phase::ChunkData(n - take);
                    }
                }
                // A whole head line at hand: read it at once (its name,
                // and a `Content-Length` value), not byte by byte.
                Phase::Head if self.head.at_line_start() => {
                    let Some(end) = memchr::memchr(b'\n', bytes) else {
                        // Its end has not arrived: byte by byte.
                        let b = bytes[0];
                        bytes = &bytes[1..];
                        if let Some(found) = self.head_byte(b) {
                            return Some(found);
                        }
                        continue;
                    };
                    let line = &bytes[..end];
                    let line = line.strip_suffix(b"\r").unwrap_or(line);
                    let found = if memchr::memchr(b'\r', line).is_some() {
                        // A stray CR (hyper refuses the head): the byte
                        // path, which skips it, decides alike.
                        self.bytes(&bytes[..=end])
                    } else {
                        self.head_line(line)
                    };
                    if found.is_some() {
                        return found;
                    }
                    bytes = &bytes[end + 1..];
                }
                // The rest of this head line says nothing the scan follows:
                // on to its end at once instead of byte by byte.
                Phase::Head if self.head.rest_of_line_ignored() => {
                    match memchr::memchr(b'\n', bytes) {
                        Some(end) => bytes = &bytes[end..],
                        None => return None,
                    }
                    let b = bytes[0];
                    bytes = &bytes[1..];
                    if let Some(found) = self.head_byte(b) {
                        return Some(found);
                    }
                }
                _ => {
                    let b = bytes[0];
                    bytes = &bytes[1..];
                    if let Some(found) = self.byte(b) {
                        return Some(found);
                    }
                }
            }
        }
        None
    }

    /// The bytes of one head line, its `\n` last, one at a time.
    fn bytes(&mut self, line: &[u8]) -> Option<Ambiguous> {
        for &b in line {
            if self.phase == Phase::Off {
                return None;
            }
            if let Some(found) = self.head_byte(b) {
                return Some(found);
            }
        }
        None
    }

    /// One whole head line, without its line end and with no CR in it:
    /// the same as its bytes and a `\n` through [`Self::head_byte`].
    fn head_line(&mut self, line: &[u8]) -> Option<Ambiguous> {
        let h = &mut self.head;
        if !line.is_empty() {
            h.line_empty = false;
            if h.request_line {
                let method = line.len().min(8);
                h.name[..method].copy_from_slice(&line[..method]);
                h.name_len = method;
            } else if let Some(colon) = memchr::memchr(b':', line) {
                let name = &line[..colon];
                if name.len() > NAME_MAX {
                    // Longer than any name looked for: the line says nothing.
                } else if name.eq_ignore_ascii_case(b"content-length") {
                    let mut v = 0u64;
                    for &b in &line[colon + 1..] {
                        let Some(next) = length_byte(v, b) else {
                            // hyper rejects it; nothing to follow.
                            self.phase = Phase::Off;
                            return None;
                        };
                        v = next;
                    }
                    h.length_value = Some(v);
                } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
                    h.transfer_encoding = true;
                } else if name.eq_ignore_ascii_case(b"upgrade") {
                    h.upgrade = true;
                }
            }
        }
        self.head_byte(b'\n')
    }

    /// One byte of a head, a chunk-size line, a chunk's CRLF or trailers.
    fn byte(&mut self, b: u8) -> Option<Ambiguous> {
        match self.phase {
            Phase::Head => return self.head_byte(b),
            Phase::ChunkSize { size, ext } => match b {
                b'\n' => {
                    self.phase = if size == 0 {
                        Phase::Trailers { empty: true }
                    } else {
                        Phase::ChunkData(size)
                    };
                }
                b'\r' => {}
                b';' | b' ' | b'\t' => self.phase = Phase::ChunkSize { size, ext: true },
                _ if ext => {}
                _ => match (b as char).to_digit(16) {
                    Some(d) if size < (1 << 56) => {
                        self.phase = Phase::ChunkSize {
                            size: size * 16 + u64::from(d),
                            ext,
                        }
                    }
                    _ => self.phase = Phase::Off,
                },
            },
            Phase::ChunkEnd => {
                if b == b'\n' {
                    self.phase = Phase::ChunkSize {
                        size: 0,
                        ext: false,
                    };
                }
            }
            Phase::Trailers { empty } => match b {
                b'\n' if empty => self.phase = Phase::Head,
                b'\n' => self.phase = Phase::Trailers { empty: true },
                b'\r' => {}
                _ => self.phase = Phase::Trailers { empty: false },
            },
            Phase::Body(_) | Phase::ChunkData(_) | Phase::Off => {}
        }
        None
    }

    fn head_byte(&mut self, b: u8) -> Option<Ambiguous> {
        let h = &mut self.head;
        match b {
            b'\n' => {
                if h.line_empty {
                    // Empty lines before a request line are allowed.
                    if h.request_line {
                        return None;
                    }
                    return self.head_end();
                }
                if let Some(len) = h.length_value.take() {
                    h.content_length = Some(len);
                }
                if h.request_line {
                    h.request_line = false;
                    h.connect = h.name_len == 8 && &h.name[..8] == b"CONNECT ";
                }
                h.name_len = 0;
                h.in_value = false;
                h.line_empty = true;
            }
            b'\r' => {}
            _ => {
                h.line_empty = false;
                if h.request_line {
                    if h.name_len < 8 {
                        h.name[h.name_len] = b;
                        h.name_len += 1;
                    }
                } else if h.in_value {
                    if let Some(v) = h.length_value {
                        h.length_value = length_byte(v, b);
                        if h.length_value.is_none() {
                            // hyper rejects it; nothing to follow.
                            self.phase = Phase::Off;
                        }
                    }
                } else if b == b':' {
                    h.in_value = true;
                    let name = &h.name[..h.name_len.min(NAME_MAX)];
                    if name.eq_ignore_ascii_case(b"content-length") {
                        h.length_value = Some(0);
                    } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
                        h.transfer_encoding = true;
                    } else if name.eq_ignore_ascii_case(b"upgrade") {
                        h.upgrade = true;
                    }
                } else if h.name_len < NAME_MAX {
                    h.name[h.name_len] = b;
                    h.name_len += 1;
                } else {
                    // Longer than any name looked for.
                    h.name_len = NAME_MAX + 1;
                }
            }
        }
        None
    }

    fn head_end(&mut self) -> Option<Ambiguous> {
        let h = std::mem::replace(&mut self.head, Head::fresh());
        let index = self.heads;
        self.heads += 1;
        if h.content_length.is_some() && h.transfer_encoding {
            self.phase = Phase::Off;
            return Some(Ambiguous(index));
        }
        self.phase = if h.upgrade || h.connect {
            Phase::Off
        } else if h.transfer_encoding {
            Phase::ChunkSize {
                size: 0,
                ext: false,
            }
        } else {
            match h.content_length {
                Some(n) if n > 0 => Phase::Body(n),
                _ => Phase::Head,
            }
        };
        None
    }
}

/// The `Content-Length` value so far, `v`, after one more byte of it:
/// `None` for a byte no length has (or one too large).
fn length_byte(v: u64, b: u8) -> Option<u64> {
    match b {
        b'0'..=b'9' => v
            .checked_mul(10)
            .and_then(|v| v.checked_add(u64::from(b - b'0'))),
        b' ' | b'\t' => Some(v),
        _ => None,
    }
}

impl Head {
    fn fresh() -> Self {
        Self {
            line_empty: true,
            request_line: true,
            ..Default::default()
        }
    }

    /// Whether nothing of the current line has been read yet (a `\r` may
    /// have been: it changes nothing).
    fn at_line_start(&self) -> bool {
        self.line_empty && !self.in_value && self.name_len == 0 && self.length_value.is_none()
    }

    /// Whether the bytes up to the end of the current line change nothing
    /// but `line_empty` (already false here): the request line past its
    /// method, a header value other than `Content-Length`'s, a header name
    /// longer than any looked for.
    fn rest_of_line_ignored(&self) -> bool {
        if self.request_line {
            self.name_len >= 8
        } else if self.in_value {
            self.length_value.is_none()
        } else {
            self.name_len > NAME_MAX
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan_all(chunks: &[&[u8]]) -> (Option<Ambiguous>, FramingScan) {
        let mut s = FramingScan::new();
        for c in chunks {
            if let Some(a) = s.feed(c) {
                return (Some(a), s);
            }
        }
        (None, s)
    }

    #[test]
    fn both_lengths_in_either_order_are_found() {
        for head in [
            &b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n"[..],
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\ncontent-length:4\r\nHost: a\r\n\r\n",
        ] {
            assert_eq!(scan_all(&[head]).0, Some(Ambiguous(0)));
        }
    }

    #[test]
    fn an_ambiguous_head_after_bodies_gets_its_index() {
        // The first body looks like a head; the chunk data too.
        let body = "Content-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n";
        let stream = format!(
            "POST / HTTP/1.1\r\nContent-Length: {}\r\n\r\n{body}\
             GET / HTTP/1.1\r\n\r\n\
             POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n\
             {:x};ext=1\r\n{body}\r\n\
             0\r\nTrailer: x\r\n\r\n\
             POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
            body.len(),
            body.len()
        );
        let stream = stream.as_bytes();
        // Split at every position: the scan must not depend on reads.
        for cut in 0..stream.len() {
            let (found, _) = scan_all(&[&stream[..cut], &stream[cut..]]);
            assert_eq!(found, Some(Ambiguous(3)), "cut at {cut}");
        }
        for one in [1usize, 2, 3, 7] {
            let chunks: Vec<&[u8]> = stream.chunks(one).collect();
            assert_eq!(scan_all(&chunks).0, Some(Ambiguous(3)));
        }
    }

    #[test]
    fn ordinary_requests_are_not_flagged() {
        let stream: &[u8] = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n\
            POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello\
            POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n\
            GET /x-content-length:1 HTTP/1.1\r\nX-Transfer-Encoding: chunked\r\nContent-Length: 0\r\n\r\n";
        let (found, s) = scan_all(&[stream]);
        assert_eq!(found, None);
        assert_eq!(s.heads, 4);
        assert_eq!(s.phase, Phase::Head);
    }

    #[test]
    fn skipped_line_ends_are_followed_however_the_bytes_arrive() {
        // Values, a long name and a request target that mention the two
        // headers; a Content-Length after them that counts; then a body
        // that looks like an ambiguous head, and the real one.
        let stream: &[u8] = b"POST /content-length:1/transfer-encoding:chunked HTTP/1.1\r\n\
            X-Note: Content-Length: 9\r\nX-Transfer-Encoding-Is-Not-Here-At-All: chunked\r\n\
            Referer: http://a/?Transfer-Encoding:chunked\r\nContent-Length: 49\r\n\r\n\
            Content-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n\
            POST / HTTP/1.1\r\nUser-Agent: long value long value\r\nTransfer-Encoding: chunked\r\n\
            Content-Length: 3\r\n\r\n";
        let whole = scan_all(&[stream]);
        assert_eq!(whole.0, Some(Ambiguous(1)));
        for size in 1..8 {
            let chunks: Vec<&[u8]> = stream.chunks(size).collect();
            let (found, s) = scan_all(&chunks);
            assert_eq!(found, Some(Ambiguous(1)), "fed {size} bytes at a time");
            assert_eq!(s.heads, 2);
        }
    }

    /// Whole lines (the line path) and one byte at a time (the byte path)
    /// find the same, on heads built from lines that matter and lines that
    /// do not, in random order (a fixed seed: the same cases every run).
    #[test]
    fn lines_read_whole_and_byte_by_byte_agree() {
        const LINES: [&[u8]; 18] = [
            b"POST / HTTP/1.1\r\n",
            b"CONNECT a:443 HTTP/1.1\r\n",
            b"Content-Length: 3\r\n",
            b"content-length:0\n",
            b"Content-Length: 1x\r\n",
            b"Content-Length : 2\r\n",
            b"Content-Length: 4\r\r\n",
            b"Transfer-Encoding: chunked\r\n",
            b"Upgrade: h2c\r\n",
            b"X-Some-Name-Longer-Than-Twenty: 1\r\n",
            b"Transfer-Encoding-X: y\r\n",
            b"No colon here\r\n",
            b"Host: a\rb\r\n",
            b"\r\n",
            b"\n",
            b"abc",
            b"3\r\nxyz\r\n0\r\n\r\n",
            b"12345",
        ];
        let mut seed: u64 = 0x5eed;
        let mut next = |n: usize| {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (seed >> 33) as usize % n
        };
        for case in 0..3000 {
            let mut stream = Vec::new();
            for _ in 0..1 + next(12) {
                stream.extend_from_slice(LINES[next(LINES.len())]);
            }
            let (whole, w) = scan_all(&[&stream]);
            let chunks: Vec<&[u8]> = stream.chunks(1).collect();
            let (bytewise, b) = scan_all(&chunks);
            let seen = String::from_utf8_lossy(&stream);
            assert_eq!(whole, bytewise, "case {case}: {seen:?}");
            assert_eq!(
                (w.phase, w.heads),
                (b.phase, b.heads),
                "case {case}: {seen:?}"
            );
        }
    }

    #[test]
    fn an_upgrade_stops_the_scan() {
        let stream: &[u8] =
            b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n\
            POST / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(scan_all(&[stream]).0, None);
        let connect: &[u8] = b"CONNECT a:443 HTTP/1.1\r\n\r\nPOST / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(scan_all(&[connect]).0, None);
    }

    #[test]
    fn a_bad_length_stops_the_scan() {
        let mut s = FramingScan::new();
        assert_eq!(
            s.feed(b"POST / HTTP/1.1\r\nContent-Length: 1x\r\n\r\n"),
            None
        );
        assert_eq!(s.phase, Phase::Off);
    }
}
