//! Trace context: continue whatever trace arrives, start one when none does.
//!
//! Accepted on the way in, in order of preference: W3C `traceparent` (+
//! `tracestate`), B3 single header (`b3`), B3 multi headers (`x-b3-traceid`,
//! `x-b3-spanid`, `x-b3-sampled`, `x-b3-flags`). Anything malformed is ignored
//! (a new trace starts) — never an error, never a panic. On the way out the
//! proxy writes the context in the format it arrived in (so a B3 caller's
//! trace is continued, not replaced) plus `traceparent`, with its own span id
//! as the parent, so the next hop's span is its child. `x-request-id` is
//! generated when missing.

use http::{HeaderMap, HeaderName, HeaderValue};
use rand::RngCore;
use std::fmt;

/// `x-request-id`, generated when the client sent none.
pub const REQUEST_ID: &str = "x-request-id";

// Header names built once (no parse per request); values are written into
// stack buffers and copied once into the `HeaderValue`: this runs on every
// request of both hops.
const X_REQUEST_ID: HeaderName = HeaderName::from_static(REQUEST_ID);
const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");
const B3: HeaderName = HeaderName::from_static("b3");
const B3_TRACE_ID: HeaderName = HeaderName::from_static("x-b3-traceid");
const B3_SPAN_ID: HeaderName = HeaderName::from_static("x-b3-spanid");
const B3_PARENT_SPAN_ID: HeaderName = HeaderName::from_static("x-b3-parentspanid");
const B3_SAMPLED: HeaderName = HeaderName::from_static("x-b3-sampled");
const B3_FLAGS: HeaderName = HeaderName::from_static("x-b3-flags");
/// Headers whose value is new on every request: HPACK gains nothing from
/// indexing their values (`upstream::http2` sends them never indexed).
pub const PER_REQUEST_HEADERS: [HeaderName; 4] = [X_REQUEST_ID, TRACEPARENT, B3, B3_SPAN_ID];
const HEX: &[u8; 16] = b"0123456789abcdef";

/// A 16-byte trace id (never all zero).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceId(pub [u8; 16]);

/// An 8-byte span id (never all zero).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct SpanId(pub [u8; 8]);

/// Which header format the caller used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// W3C Trace Context.
    W3c,
    /// B3 single header.
    B3Single,
    /// B3 multiple headers.
    B3Multi,
    /// Nothing arrived; this hop started the trace.
    New,
}

/// The context of one hop: the trace, the caller's span (if any) and this
/// hop's own span.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TraceContext {
    /// The trace.
    pub trace_id: TraceId,
    /// The caller's span, the parent of this hop's span.
    pub parent_span_id: Option<SpanId>,
    /// This hop's span.
    pub span_id: SpanId,
    /// Whether the trace is sampled.
    pub sampled: bool,
    /// The W3C `tracestate`, passed through untouched.
    pub tracestate: Option<HeaderValue>,
    /// The format it arrived in.
    pub format: Format,
}

// === impl TraceId ===

impl TraceId {
    /// A random trace id.
    pub fn random() -> Self {
        let mut b = [0u8; 16];
        let mut rng = rand::rng();
        while b == [0; 16] {
            rng.fill_bytes(&mut b);
        }
        Self(b)
    }

    /// Lowercase hex, 32 characters.
    fn hex(&self) -> [u8; 32] {
        encode_hex(&self.0)
    }

    fn parse(s: &str) -> Option<Self> {
        // B3 allows 64-bit trace ids; they are left-padded to 128 bits.
        let b = match s.len() {
            32 => hex::<16>(s)?,
            16 => {
                let low = hex::<8>(s)?;
                let mut b = [0u8; 16];
                b[8..].copy_from_slice(&low);
                b
            }
            _ => return None,
        };
        (b != [0; 16]).then_some(Self(b))
    }
}

impl fmt::Display for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(ascii(&self.hex()))
    }
}

impl fmt::Debug for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TraceId({self})")
    }
}

// === impl SpanId ===

impl SpanId {
    /// A random span id.
    pub fn random() -> Self {
        Self::random_from(&mut rand::rng())
    }

    fn random_from(rng: &mut impl RngCore) -> Self {
        let mut b = [0u8; 8];
        while b == [0; 8] {
            rng.fill_bytes(&mut b);
        }
        Self(b)
    }

    /// Lowercase hex, 16 characters.
    fn hex(&self) -> [u8; 16] {
        encode_hex(&self.0)
    }

    fn parse(s: &str) -> Option<Self> {
        let b = (s.len() == 16).then(|| hex::<8>(s)).flatten()?;
        (b != [0; 8]).then_some(Self(b))
    }
}

impl fmt::Display for SpanId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(ascii(&self.hex()))
    }
}

impl fmt::Debug for SpanId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SpanId({self})")
    }
}

/// `bytes` as lowercase hex; `M` must be `2 * N` (checked at compile time
/// by the callers' array types).
fn encode_hex<const N: usize, const M: usize>(bytes: &[u8; N]) -> [u8; M] {
    const { assert!(M == 2 * N) };
    let mut out = [0u8; M];
    for (i, b) in bytes.iter().enumerate() {
        out[2 * i] = HEX[usize::from(b >> 4)];
        out[2 * i + 1] = HEX[usize::from(b & 0x0f)];
    }
    out
}

/// The text of a buffer this module filled with ASCII only.
fn ascii(buf: &[u8]) -> &str {
    std::str::from_utf8(buf).expect("hex and dashes are ASCII")
}

/// A header value from a buffer of hex digits and dashes (always valid).
fn value(buf: &[u8]) -> HeaderValue {
    HeaderValue::from_bytes(buf).expect("hex and dashes are a valid header value")
}

/// The value of each lowercase hex digit, `0xff` for any other byte: only
/// lowercase hex is valid in traceparent, and B3 is lowercase too.
const UNHEX: [u8; 256] = {
    let mut t = [0xff; 256];
    let mut i = 0;
    while i < 16 {
        t[HEX[i] as usize] = i as u8;
        i += 1;
    }
    t
};

fn hex<const N: usize>(s: &str) -> Option<[u8; N]> {
    let bytes = s.as_bytes();
    if bytes.len() != 2 * N {
        return None;
    }
    let mut out = [0u8; N];
    for (o, pair) in out.iter_mut().zip(bytes.chunks_exact(2)) {
        let (hi, lo) = (UNHEX[usize::from(pair[0])], UNHEX[usize::from(pair[1])]);
        // A digit is at most 15: `0xff` (not one) shows through the `or`.
        if hi | lo > 15 {
            return None;
        }
        *o = hi << 4 | lo;
    }
    Some(out)
}

/// The fields of a `traceparent` value: version, trace id, parent id,
/// flags; `None` if there are fewer than four, and, for version `00`, if
/// there are more. The common form (`00-` and 55 bytes) is cut at fixed
/// offsets; any other is split at its dashes.
fn w3c_fields(v: &str) -> Option<(&str, &str, &str, &str)> {
    let b = v.as_bytes();
    if b.len() == 55 && b[2] == b'-' && b[35] == b'-' && b[52] == b'-' {
        // Four fields exactly unless a field itself holds a dash, which
        // then fails its hex check in the caller either way.
        return Some((&v[..2], &v[3..35], &v[36..52], &v[53..]));
    }
    let mut parts = v.split('-');
    let version = parts.next()?;
    let fields = (version, parts.next()?, parts.next()?, parts.next()?);
    if version == "00" && parts.next().is_some() {
        return None;
    }
    Some(fields)
}

// === impl TraceContext ===

impl TraceContext {
    /// Continues the trace in `headers`, or starts a new one (sampled per
    /// `sample_new`) when none is there or it is malformed.
    pub fn extract(headers: &HeaderMap, sample_new: bool) -> Self {
        Self::from_w3c(headers)
            .or_else(|| Self::from_b3_single(headers))
            .or_else(|| Self::from_b3_multi(headers))
            .unwrap_or_else(|| {
                let mut rng = rand::rng();
                let mut trace_id = TraceId([0; 16]);
                while trace_id.0 == [0; 16] {
                    rng.fill_bytes(&mut trace_id.0);
                }
                TraceContext {
                    trace_id,
                    parent_span_id: None,
                    span_id: SpanId::random_from(&mut rng),
                    sampled: sample_new,
                    tracestate: None,
                    format: Format::New,
                }
            })
    }

    fn from_w3c(headers: &HeaderMap) -> Option<Self> {
        let v = headers.get(TRACEPARENT)?.to_str().ok()?.trim();
        // Version ff is invalid; a future version may append fields, but
        // version 00 must have exactly four.
        let (version, trace, span, flags) = w3c_fields(v)?;
        if version.len() != 2 || version == "ff" || hex::<1>(version).is_none() {
            return None;
        }
        let trace_id = (trace.len() == 32)
            .then(|| TraceId::parse(trace))
            .flatten()?;
        let parent = SpanId::parse(span)?;
        let flags = hex::<1>(flags)?[0];
        Some(TraceContext {
            trace_id,
            parent_span_id: Some(parent),
            span_id: SpanId::random(),
            sampled: flags & 1 == 1,
            tracestate: headers.get(TRACESTATE).cloned(),
            format: Format::W3c,
        })
    }

    fn from_b3_single(headers: &HeaderMap) -> Option<Self> {
        let v = headers.get(B3)?.to_str().ok()?.trim();
        let mut parts = v.split('-');
        let trace_id = TraceId::parse(parts.next()?)?;
        let parent = SpanId::parse(parts.next()?)?;
        let sampled = match parts.next() {
            None => true,
            Some("1" | "d") => true,
            Some("0") => false,
            Some(_) => return None,
        };
        Some(TraceContext {
            trace_id,
            parent_span_id: Some(parent),
            span_id: SpanId::random(),
            sampled,
            tracestate: None,
            format: Format::B3Single,
        })
    }

    fn from_b3_multi(headers: &HeaderMap) -> Option<Self> {
        let get = |n: HeaderName| headers.get(n).and_then(|v| v.to_str().ok()).map(str::trim);
        let trace_id = TraceId::parse(get(B3_TRACE_ID)?)?;
        let parent = SpanId::parse(get(B3_SPAN_ID)?)?;
        let sampled = get(B3_FLAGS) == Some("1") || !matches!(get(B3_SAMPLED), Some("0" | "false"));
        Some(TraceContext {
            trace_id,
            parent_span_id: Some(parent),
            span_id: SpanId::random(),
            sampled,
            tracestate: None,
            format: Format::B3Multi,
        })
    }

    /// The `traceparent` value naming this hop's span as the parent.
    pub fn traceparent(&self) -> String {
        ascii(&self.traceparent_bytes()).to_string()
    }

    /// `00-<trace id>-<span id>-<flags>`, 55 bytes.
    fn traceparent_bytes(&self) -> [u8; 55] {
        let mut b = [b'-'; 55];
        b[..2].copy_from_slice(b"00");
        b[3..35].copy_from_slice(&self.trace_id.hex());
        b[36..52].copy_from_slice(&self.span_id.hex());
        b[53..].copy_from_slice(if self.sampled { b"01" } else { b"00" });
        b
    }

    /// Writes the context for the next hop: `traceparent` (+ `tracestate`)
    /// always, and the B3 form the caller used, so it is continued.
    pub fn inject(&self, headers: &mut HeaderMap) {
        headers.insert(TRACEPARENT, value(&self.traceparent_bytes()));
        if let Some(ts) = &self.tracestate {
            headers.insert(TRACESTATE, ts.clone());
        }
        // A B3 header that travels alongside traceparent (the caller sent
        // both, or an earlier hop added it) is refreshed too, so it never
        // names a stale parent.
        let single = self.format == Format::B3Single || headers.contains_key(B3);
        let multi = self.format == Format::B3Multi || headers.contains_key(B3_TRACE_ID);
        let sampled: &'static str = if self.sampled { "1" } else { "0" };
        if single {
            // `<trace id>-<span id>-<sampled>`, 51 bytes.
            let mut b = [b'-'; 51];
            b[..32].copy_from_slice(&self.trace_id.hex());
            b[33..49].copy_from_slice(&self.span_id.hex());
            b[50] = sampled.as_bytes()[0];
            headers.insert(B3, value(&b));
        }
        if multi {
            headers.insert(B3_TRACE_ID, value(&self.trace_id.hex()));
            headers.insert(B3_SPAN_ID, value(&self.span_id.hex()));
            match self.parent_span_id {
                Some(p) => {
                    headers.insert(B3_PARENT_SPAN_ID, value(&p.hex()));
                }
                None => {
                    headers.remove(B3_PARENT_SPAN_ID);
                }
            }
            headers.insert(B3_SAMPLED, HeaderValue::from_static(sampled));
            headers.remove(B3_FLAGS);
        }
    }
}

/// Returns the request id, adding a random one (UUID v4 format) if missing.
pub fn ensure_request_id(headers: &mut HeaderMap) -> RequestId {
    if let Some(v) = headers.get(X_REQUEST_ID) {
        if v.to_str().is_ok_and(|t| !t.is_empty() && t.len() <= 128) {
            return RequestId::Received(v.clone());
        }
    }
    let mut b = [0u8; 16];
    rand::rng().fill_bytes(&mut b);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: [u8; 32] = encode_hex(&b);
    // 8-4-4-4-12 hex digits.
    let mut id = [b'-'; 36];
    id[..8].copy_from_slice(&h[..8]);
    id[9..13].copy_from_slice(&h[8..12]);
    id[14..18].copy_from_slice(&h[12..16]);
    id[19..23].copy_from_slice(&h[16..20]);
    id[24..].copy_from_slice(&h[20..]);
    headers.insert(X_REQUEST_ID, value(&id));
    RequestId::Generated(id)
}

/// A request's `x-request-id`, kept as it is (no `String` per request):
/// text only for a log line or a span that wants it.
#[derive(Clone, Debug)]
pub enum RequestId {
    /// The one the request came with (visible ASCII, 1 to 128 bytes).
    Received(HeaderValue),
    /// The one generated for it.
    Generated([u8; 36]),
}

// === impl RequestId ===

impl std::ops::Deref for RequestId {
    type Target = str;

    fn deref(&self) -> &str {
        match self {
            // Checked to be text when it was kept.
            Self::Received(v) => v.to_str().unwrap_or_default(),
            Self::Generated(id) => ascii(id),
        }
    }
}

impl PartialEq for RequestId {
    fn eq(&self, other: &Self) -> bool {
        **self == **other
    }
}

impl PartialEq<&str> for RequestId {
    fn eq(&self, other: &&str) -> bool {
        &**self == *other
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (n, v) in pairs {
            h.insert(*n, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    const SPAN: &str = "00f067aa0ba902b7";

    #[test]
    fn continues_w3c_with_a_new_child_span() {
        let h = headers(&[
            ("traceparent", &format!("00-{TRACE}-{SPAN}-01")),
            ("tracestate", "vendor=x"),
        ]);
        let ctx = TraceContext::extract(&h, false);
        assert_eq!(ctx.format, Format::W3c);
        assert_eq!(ctx.trace_id.to_string(), TRACE);
        assert_eq!(ctx.parent_span_id.unwrap().to_string(), SPAN);
        assert_ne!(ctx.span_id.to_string(), SPAN);
        assert!(ctx.sampled);
        let mut out = HeaderMap::new();
        ctx.inject(&mut out);
        let tp = out["traceparent"].to_str().unwrap();
        assert!(tp.starts_with(&format!("00-{TRACE}-")) && tp.ends_with("-01"));
        assert_eq!(out["tracestate"], "vendor=x");
    }

    #[test]
    fn continues_b3_single_and_multi_in_their_own_format() {
        let h = headers(&[("b3", &format!("{TRACE}-{SPAN}-1"))]);
        let ctx = TraceContext::extract(&h, false);
        assert_eq!(ctx.format, Format::B3Single);
        let mut out = HeaderMap::new();
        ctx.inject(&mut out);
        assert!(out["b3"].to_str().unwrap().starts_with(TRACE));
        assert!(out["traceparent"].to_str().unwrap().contains(TRACE));

        let h = headers(&[
            ("x-b3-traceid", "a3ce929d0e0e4736"),
            ("x-b3-spanid", SPAN),
            ("x-b3-sampled", "0"),
        ]);
        let ctx = TraceContext::extract(&h, true);
        assert_eq!(ctx.format, Format::B3Multi);
        assert_eq!(ctx.trace_id.to_string(), "0000000000000000a3ce929d0e0e4736");
        assert!(!ctx.sampled);
        let mut out = HeaderMap::new();
        ctx.inject(&mut out);
        assert_eq!(out["x-b3-parentspanid"], SPAN);
        assert_eq!(out["x-b3-sampled"], "0");
    }

    #[test]
    fn malformed_headers_start_a_new_trace() {
        for bad in [
            format!("00-{TRACE}-{SPAN}"),
            format!("00-{}-{SPAN}-01", "0".repeat(32)),
            format!("00-{TRACE}-{}-01", "0".repeat(16)),
            format!("ff-{TRACE}-{SPAN}-01"),
            format!("00-{}-{SPAN}-01", TRACE.to_uppercase()),
            format!("00-{TRACE}-{SPAN}-01-extra"),
            format!("00-{TRACE}-{SPAN}-zz"),
            "garbage".to_string(),
            String::new(),
        ] {
            let ctx = TraceContext::extract(&headers(&[("traceparent", &bad)]), true);
            assert_eq!(ctx.format, Format::New, "{bad:?} should be ignored");
            assert!(ctx.parent_span_id.is_none());
        }
        let ctx = TraceContext::extract(&headers(&[("b3", "not-a-trace")]), false);
        assert_eq!(ctx.format, Format::New);
    }

    /// The fields of a traceparent as the parser found them before the
    /// fixed-offset form, split at every dash.
    fn split_fields(v: &str) -> Option<(&str, &str, &str, &str)> {
        let mut parts = v.split('-');
        let version = parts.next()?;
        let fields = (version, parts.next()?, parts.next()?, parts.next()?);
        (version != "00" || parts.next().is_none()).then_some(fields)
    }

    /// What `from_w3c` makes of `fields`.
    fn w3c_parsed(fields: Option<(&str, &str, &str, &str)>) -> Option<([u8; 16], [u8; 8], u8)> {
        let (version, trace, span, flags) = fields?;
        if version.len() != 2 || version == "ff" || hex::<1>(version).is_none() {
            return None;
        }
        let trace_id = (trace.len() == 32)
            .then(|| TraceId::parse(trace))
            .flatten()?;
        Some((trace_id.0, SpanId::parse(span)?.0, hex::<1>(flags)?[0]))
    }

    #[test]
    fn traceparent_fields_at_fixed_offsets_parse_as_split_ones() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(0x7ace);
        let alphabet = b"0123456789abcdef-";
        let (mut valid, mut total) = (0, 0);
        for _ in 0..20_000 {
            let mut b: Vec<u8> = (0..55)
                .map(|_| alphabet[rng.random_range(0..alphabet.len())])
                .collect();
            (b[2], b[35], b[52]) = (b'-', b'-', b'-');
            if rng.random_bool(0.5) {
                b[..2].copy_from_slice(b"00");
            }
            if rng.random_bool(0.9) {
                // Mostly well-formed fields, so both paths get past parsing.
                for i in (0..55).filter(|i| ![2, 35, 52].contains(i)) {
                    if b[i] == b'-' {
                        b[i] = b'a';
                    }
                }
            }
            let v = String::from_utf8(b).unwrap();
            let parsed = w3c_parsed(w3c_fields(&v));
            assert_eq!(parsed, w3c_parsed(split_fields(&v)), "{v}");
            valid += usize::from(parsed.is_some());
            total += 1;
        }
        assert!(valid > total / 2, "{valid} of {total} parsed");
    }

    #[test]
    fn random_inputs_never_panic_and_either_parse_or_start_fresh() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(0x5a1e);
        let alphabet = b"0123456789abcdefABCDEF-xz_ \t";
        for _ in 0..20_000 {
            let len = rng.random_range(0..80);
            let s: String = (0..len)
                .map(|_| alphabet[rng.random_range(0..alphabet.len())] as char)
                .collect();
            for name in ["traceparent", "b3", "x-b3-traceid"] {
                let Ok(v) = HeaderValue::from_str(&s) else {
                    continue;
                };
                let mut h = HeaderMap::new();
                h.insert(name, v);
                h.insert("x-b3-spanid", HeaderValue::from_static(SPAN));
                let ctx = TraceContext::extract(&h, false);
                assert_ne!(ctx.trace_id.0, [0; 16]);
                assert_ne!(ctx.span_id.0, [0; 8]);
                let mut out = HeaderMap::new();
                ctx.inject(&mut out);
                // Whatever came in, what goes out parses back to the same trace.
                let back = TraceContext::extract(&out, false);
                assert_eq!(back.trace_id, ctx.trace_id);
                assert_eq!(back.parent_span_id, Some(ctx.span_id));
            }
        }
    }

    #[test]
    fn a_b3_header_beside_traceparent_is_refreshed_too() {
        let h = headers(&[
            ("traceparent", &format!("00-{TRACE}-{SPAN}-01")),
            ("b3", &format!("{TRACE}-{SPAN}-1")),
        ]);
        let ctx = TraceContext::extract(&h, false);
        assert_eq!(ctx.format, Format::W3c);
        let mut out = h.clone();
        ctx.inject(&mut out);
        let b3 = out["b3"].to_str().unwrap();
        assert_eq!(b3, format!("{TRACE}-{}-1", ctx.span_id));
    }

    #[test]
    fn request_id_is_kept_or_generated() {
        let mut h = headers(&[("x-request-id", "abc")]);
        assert_eq!(ensure_request_id(&mut h), "abc");
        let mut h = HeaderMap::new();
        let id = ensure_request_id(&mut h);
        assert_eq!(id.len(), 36);
        assert_eq!(h["x-request-id"], &*id);
        // UUID v4 text: 8-4-4-4-12 lowercase hex, version 4, variant 10xx.
        for (i, c) in id.chars().enumerate() {
            match i {
                8 | 13 | 18 | 23 => assert_eq!(c, '-', "{id}"),
                14 => assert_eq!(c, '4', "{id}"),
                19 => assert!("89ab".contains(c), "{id}"),
                _ => assert!(c.is_ascii_hexdigit() && !c.is_ascii_uppercase(), "{id}"),
            }
        }
        assert_ne!(ensure_request_id(&mut HeaderMap::new()), id);
    }

    #[test]
    fn injected_values_are_exact_lowercase_hex() {
        let trace_id = TraceId(std::array::from_fn(|i| (i as u8) * 16 + 1));
        let span_id = SpanId([0xab, 0, 0x0f, 0xf0, 1, 2, 3, 0xff]);
        let parent = SpanId([9; 8]);
        let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
        let ctx = TraceContext {
            trace_id,
            parent_span_id: Some(parent),
            span_id,
            sampled: false,
            tracestate: None,
            format: Format::B3Multi,
        };
        assert_eq!(trace_id.to_string(), hex(&trace_id.0));
        assert_eq!(span_id.to_string(), "ab000ff0010203ff");
        assert_eq!(format!("{span_id:?}"), "SpanId(ab000ff0010203ff)");
        let mut out = headers(&[("b3", "x"), ("x-b3-flags", "1")]);
        ctx.inject(&mut out);
        let tp = format!("00-{}-ab000ff0010203ff-00", hex(&trace_id.0));
        assert_eq!(ctx.traceparent(), tp);
        assert_eq!(out["traceparent"], tp.as_str());
        assert_eq!(
            out["b3"],
            format!("{}-ab000ff0010203ff-0", hex(&trace_id.0)).as_str()
        );
        assert_eq!(out["x-b3-traceid"], hex(&trace_id.0).as_str());
        assert_eq!(out["x-b3-spanid"], "ab000ff0010203ff");
        assert_eq!(out["x-b3-parentspanid"], "0909090909090909");
        assert_eq!(out["x-b3-sampled"], "0");
        assert!(!out.contains_key("x-b3-flags"));
        let sampled = TraceContext {
            sampled: true,
            parent_span_id: None,
            ..ctx
        };
        sampled.inject(&mut out);
        assert!(out["traceparent"].to_str().unwrap().ends_with("-01"));
        assert!(out["b3"].to_str().unwrap().ends_with("-1"));
        assert_eq!(out["x-b3-sampled"], "1");
        assert!(!out.contains_key("x-b3-parentspanid"));
    }
}
