//! Protocol detection on the first bytes of a connection: `classify` on
//! every prefix of the input, `detect` reading the input in chunks of a
//! fuzzed size, and the mesh transport header's decoder.
//!
//! Invariants: nothing panics; once `classify` decides, longer prefixes do
//! not change its mind; `detect` loses no byte (what it returns is exactly
//! what it read, minus a transport header it consumed); a decoded transport
//! header encodes back to the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sane_proxy::protocol::detect::{classify, detect, Detected};
use sane_proxy::protocol::transport_header::{self, TransportHeader};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, ReadBuf};

/// Yields `data` at most `chunk` bytes per read, then EOF.
struct Chunked<'a> {
    data: &'a [u8],
    chunk: usize,
}

impl AsyncRead for Chunked<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let n = self.data.len().min(self.chunk).min(buf.remaining());
        buf.put_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Poll::Ready(Ok(()))
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&chunk, input)) = data.split_first() else {
        return;
    };
    let mut decided: Option<Detected> = None;
    for end in 0..=input.len().min(128) {
        let now = classify(&input[..end]);
        if let (Some(before), Some(now)) = (decided, now) {
            assert_eq!(before, now, "classify changed its mind at {end} bytes");
        }
        decided = decided.or(now);
    }

    if let Ok(header) = TransportHeader::decode(input) {
        assert_eq!(header.encode()[..], input[..transport_header::LEN]);
    }

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a runtime");
    let mut io = Chunked {
        data: input,
        chunk: usize::from(chunk % 16) + 1,
    };
    let result = rt.block_on(detect(&mut io, Duration::from_secs(5)));
    let read = input.len() - io.data.len();
    match result {
        Ok((Detected::Mesh(header), rest)) => {
            assert_eq!(TransportHeader::decode(input), Ok(header));
            assert_eq!(&rest[..], &input[transport_header::LEN..read], "bytes lost");
        }
        Ok((_, buf)) => assert_eq!(&buf[..], &input[..read], "bytes lost"),
        Err(_) => {}
    }
});
