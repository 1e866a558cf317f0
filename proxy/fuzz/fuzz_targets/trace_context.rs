//! Trace-context header parsing: arbitrary bytes split into the values of
//! the headers the proxy reads (`traceparent`, `tracestate`, `b3`, the
//! `x-b3-*` family, `x-request-id`).
//!
//! Invariants: extraction never panics; the context it yields re-injects
//! into headers that extract to the same trace id, span id and sampling
//! decision; `ensure_request_id` always leaves a valid `x-request-id`.
#![no_main]

use http::{HeaderMap, HeaderValue};
use libfuzzer_sys::fuzz_target;
use sane_proxy::trace_context::{ensure_request_id, TraceContext, REQUEST_ID};

const HEADERS: [&str; 9] = [
    "traceparent",
    "tracestate",
    "b3",
    "x-b3-traceid",
    "x-b3-spanid",
    "x-b3-parentspanid",
    "x-b3-sampled",
    "x-b3-flags",
    REQUEST_ID,
];

fuzz_target!(|data: &[u8]| {
    // Fields separated by '\n', in the order of HEADERS; a field that is
    // not a valid header value is left out.
    let mut headers = HeaderMap::new();
    for (name, value) in HEADERS.iter().zip(data.split(|b| *b == b'\n')) {
        if let Ok(v) = HeaderValue::from_bytes(value) {
            headers.insert(*name, v);
        }
    }
    let sample_new = data.first().is_some_and(|b| b & 1 == 1);
    let ctx = TraceContext::extract(&headers, sample_new);
    let mut out = HeaderMap::new();
    ctx.inject(&mut out);
    let again = TraceContext::extract(&out, !sample_new);
    assert_eq!(again.trace_id, ctx.trace_id, "trace id lost in a round trip");
    assert_eq!(again.sampled, ctx.sampled, "sampling lost in a round trip");
    let id = ensure_request_id(&mut headers);
    assert!(!id.is_empty(), "an empty request id");
    assert_eq!(headers.get(REQUEST_ID).map(|v| v.as_bytes()), Some(id.as_bytes()));
});
