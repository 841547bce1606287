//! Trace context on the wire: W3C Trace Context (`traceparent`; `tracestate` is passed on
//! untouched, as a proxy that adds no vendor state should) and B3, as one header (`b3`) and as
//! several (`X-B3-TraceId`, `X-B3-SpanId`, `X-B3-Sampled`, `X-B3-Flags`, `X-B3-ParentSpanId`).
//!
//! A request may carry several formats (a mesh in transition); the ids are read from the first
//! valid one, `traceparent` first, and every format that came is written back with the new
//! span, so the services behind see one consistent parent whichever format they read. An
//! invalid header is ignored, as W3C asks: the request then starts a trace of its own.

use http::header::{HeaderMap, HeaderName, HeaderValue};

pub static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
pub static B3: HeaderName = HeaderName::from_static("b3");
pub static B3_TRACE_ID: HeaderName = HeaderName::from_static("x-b3-traceid");
pub static B3_SPAN_ID: HeaderName = HeaderName::from_static("x-b3-spanid");
pub static B3_PARENT_SPAN_ID: HeaderName = HeaderName::from_static("x-b3-parentspanid");
pub static B3_SAMPLED: HeaderName = HeaderName::from_static("x-b3-sampled");
pub static B3_FLAGS: HeaderName = HeaderName::from_static("x-b3-flags");

/// Which propagation formats a request carried (and its forwarded copies get).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Formats {
    pub w3c: bool,
    pub b3: bool,
    pub b3_multi: bool,
}

impl Formats {
    /// What a request that came without any context is sent with.
    pub const DEFAULT: Formats = Formats { w3c: true, b3: false, b3_multi: false };
}

/// The trace context a request came with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Incoming {
    /// The trace and the caller's span, when the request named them.
    pub ids: Option<(u128, u64)>,
    /// The caller's sampling decision; `None` when it left it to us (B3 without one).
    pub sampled: Option<bool>,
    pub formats: Formats,
}

/// Reads the trace context of a request; `None` when it carries none (or only invalid ones).
pub fn extract(headers: &HeaderMap) -> Option<Incoming> {
    // One pass over the headers rather than six lookups (each hashes the name): most
    // requests carry none of them.
    let mut found = Found::default();
    for (name, value) in headers {
        let slot = match name.as_str() {
            "traceparent" => &mut found.traceparent,
            "b3" => &mut found.b3,
            "x-b3-traceid" => &mut found.trace_id,
            "x-b3-spanid" => &mut found.span_id,
            "x-b3-sampled" => &mut found.sampled,
            "x-b3-flags" => &mut found.flags,
            _ => continue,
        };
        slot.get_or_insert(value);
    }
    let w3c = found.traceparent.and_then(|v| parse_traceparent(v.as_bytes()));
    let b3 = found.b3.and_then(|v| parse_b3(v.as_bytes()));
    let multi = parse_b3_multi(&found);
    let formats = Formats { w3c: w3c.is_some(), b3: b3.is_some(), b3_multi: multi.is_some() };
    let (ids, sampled) = w3c.map(|(t, s, f)| (Some((t, s)), Some(f))).or(b3).or(multi)?;
    Some(Incoming { ids, sampled, formats })
}

/// What a header says: the trace and the caller's span (when it names them), and the
/// caller's sampling decision (when it made one).
type Parsed = (Option<(u128, u64)>, Option<bool>);

/// `traceparent`: `version-traceid-parentid-flags`, lowercase hex. Version `00` is exactly
/// that; a later version may append fields, which are ignored. All-zero ids are invalid.
fn parse_traceparent(v: &[u8]) -> Option<(u128, u64, bool)> {
    if v.len() < 55 || v[2] != b'-' || v[35] != b'-' || v[52] != b'-' {
        return None;
    }
    let version = hex_u64(&v[..2])?;
    if version == 0xff || (version == 0 && v.len() != 55) || (v.len() > 55 && v[55] != b'-') {
        return None;
    }
    let trace = hex_u128(&v[3..35])?;
    let span = hex_u64(&v[36..52])?;
    let flags = hex_u64(&v[53..55])?;
    (trace != 0 && span != 0).then_some((trace, span, flags & 1 == 1))
}

/// `b3`: `traceid-spanid[-sampling[-parentspanid]]` (a 64- or 128-bit trace id), or only a
/// sampling decision (`0`, `1`, `d`).
fn parse_b3(v: &[u8]) -> Option<Parsed> {
    let s = std::str::from_utf8(v).ok()?;
    let mut parts = s.split('-');
    let first = parts.next()?;
    if let Some(sampled) = b3_sampling(first.as_bytes()).filter(|_| first.len() == 1) {
        return parts.next().is_none().then_some((None, Some(sampled)));
    }
    let trace = b3_trace_id(first.as_bytes())?;
    let span = parts.next().and_then(|p| (p.len() == 16).then(|| hex_u64(p.as_bytes())).flatten())?;
    let sampled = match parts.next() {
        None => None,
        Some(p) => Some(b3_sampling(p.as_bytes())?),
    };
    (span != 0).then_some((Some((trace, span)), sampled))
}

/// The trace headers a request carries (the first of each).
#[derive(Default)]
struct Found<'a> {
    traceparent: Option<&'a HeaderValue>,
    b3: Option<&'a HeaderValue>,
    trace_id: Option<&'a HeaderValue>,
    span_id: Option<&'a HeaderValue>,
    sampled: Option<&'a HeaderValue>,
    flags: Option<&'a HeaderValue>,
}

/// The `X-B3-*` headers: trace and span id together, or a sampling decision alone.
fn parse_b3_multi(found: &Found<'_>) -> Option<Parsed> {
    let debug = found.flags.is_some_and(|v| v.as_bytes() == b"1");
    let sampled = match found.sampled.map(|v| v.as_bytes()) {
        Some(b"1" | b"true") => Some(true),
        Some(b"0" | b"false") => Some(false),
        _ => None,
    };
    let sampled = if debug { Some(true) } else { sampled };
    match (found.trace_id, found.span_id) {
        (None, None) => sampled.map(|s| (None, Some(s))),
        (Some(trace), Some(span)) => {
            let trace = b3_trace_id(trace.as_bytes())?;
            let span = hex_u64(span.as_bytes()).filter(|&s| s != 0 && span.len() == 16)?;
            Some((Some((trace, span)), sampled))
        }
        _ => None,
    }
}

fn b3_sampling(v: &[u8]) -> Option<bool> {
    match v {
        b"1" | b"d" => Some(true),
        b"0" => Some(false),
        _ => None,
    }
}

fn b3_trace_id(v: &[u8]) -> Option<u128> {
    let id = match v.len() {
        16 => u128::from(hex_u64(v)?),
        32 => hex_u128(v)?,
        _ => return None,
    };
    (id != 0).then_some(id)
}

/// Writes the context a forwarded request carries: the trace, the span it is sent from (its
/// parent upstream) and the sampling decision, in every format of `formats`. `tracestate`
/// is left as it came.
pub fn inject(
    headers: &mut HeaderMap,
    formats: Formats,
    trace: u128,
    span: u64,
    parent: Option<u64>,
    sampled: bool,
) {
    if formats.w3c || formats == Formats::default() {
        let mut v = [0u8; 55];
        v[..3].copy_from_slice(b"00-");
        put_hex(&mut v[3..35], trace);
        v[35] = b'-';
        put_hex(&mut v[36..52], u128::from(span));
        v[52..].copy_from_slice(if sampled { b"-01" } else { b"-00" });
        headers.insert(&TRACEPARENT, value(&v));
    }
    // B3's trace id keeps the 64-bit form when that is all it has.
    let mut trace_hex = [0u8; 32];
    let trace_len = if trace >> 64 == 0 { 16 } else { 32 };
    put_hex(&mut trace_hex[..trace_len], trace);
    let trace_hex = &trace_hex[..trace_len];
    let mut span_hex = [0u8; 16];
    put_hex(&mut span_hex, u128::from(span));
    if formats.b3 {
        let mut v = Vec::with_capacity(52);
        v.extend_from_slice(trace_hex);
        v.push(b'-');
        v.extend_from_slice(&span_hex);
        v.extend_from_slice(if sampled { b"-1" } else { b"-0" });
        headers.insert(&B3, value(&v));
    }
    if formats.b3_multi {
        headers.insert(&B3_TRACE_ID, value(trace_hex));
        headers.insert(&B3_SPAN_ID, value(&span_hex));
        headers.insert(&B3_SAMPLED, HeaderValue::from_static(if sampled { "1" } else { "0" }));
        match parent {
            Some(p) => {
                let mut parent_hex = [0u8; 16];
                put_hex(&mut parent_hex, u128::from(p));
                headers.insert(&B3_PARENT_SPAN_ID, value(&parent_hex));
            }
            None => {
                headers.remove(&B3_PARENT_SPAN_ID);
            }
        }
    }
}

/// Hex digits only: always a valid header value.
fn value(hex: &[u8]) -> HeaderValue {
    HeaderValue::from_bytes(hex).unwrap_or_else(|_| HeaderValue::from_static("0"))
}

/// `n`'s low `4 * out.len()` bits as lowercase hex, most significant first (`out.len()`
/// even), a byte's two digits at a time: every forwarded request of a traced proxy gets a
/// `traceparent`, and a digit at a time was half of writing it.
fn put_hex(out: &mut [u8], mut n: u128) {
    const PAIRS: [[u8; 2]; 256] = {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut t = [[0u8; 2]; 256];
        let mut i = 0;
        while i < 256 {
            t[i] = [DIGITS[i >> 4], DIGITS[i & 0xf]];
            i += 1;
        }
        t
    };
    for pair in out.chunks_exact_mut(2).rev() {
        pair.copy_from_slice(&PAIRS[(n & 0xff) as usize]);
        n >>= 8;
    }
}

/// Lowercase hex (W3C allows no other; B3 is lowercase too).
fn hex_u128(v: &[u8]) -> Option<u128> {
    v.iter().try_fold(0u128, |acc, &b| {
        let d = match b {
            b'0'..=b'9' => b - b'0',
            b'a'..=b'f' => b - b'a' + 10,
            _ => return None,
        };
        Some(acc << 4 | u128::from(d))
    })
}

fn hex_u64(v: &[u8]) -> Option<u64> {
    (v.len() <= 16).then(|| hex_u128(v).map(|n| n as u64)).flatten()
}

/// A trace id as the access log shows it, in `buf`: 32 lowercase hex digits, 16 for a 64-bit
/// id (B3's short form; a W3C id is 128 random bits, its high half zero with odds of 2^-64).
pub fn trace_id_text(trace: u128, buf: &mut [u8; 32]) -> &str {
    let digits = if trace >> 64 == 0 { 16 } else { 32 };
    put_hex(&mut buf[..digits], trace);
    std::str::from_utf8(&buf[..digits]).unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(HeaderName::from_bytes(k.as_bytes()).unwrap(), HeaderValue::from_str(v).unwrap());
        }
        h
    }

    const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn traceparent_is_read() {
        let got = extract(&headers(&[("traceparent", TP)])).unwrap();
        assert_eq!(got.ids, Some((0x4bf92f3577b34da6a3ce929d0e0e4736, 0x00f067aa0ba902b7)));
        assert_eq!(got.sampled, Some(true));
        assert_eq!(got.formats, Formats { w3c: true, ..Formats::default() });
        let unsampled = TP.replace("-01", "-00");
        assert_eq!(extract(&headers(&[("traceparent", &unsampled)])).unwrap().sampled, Some(false));
    }

    #[test]
    fn invalid_traceparents_are_ignored() {
        for bad in [
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01", // zero trace id
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01", // zero span id
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", // version ff
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01", // uppercase
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra", // v00 with more
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",  // short
            "",
        ] {
            assert_eq!(extract(&headers(&[("traceparent", bad)])), None, "{bad}");
        }
        // A later version may add fields.
        let future = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-comes";
        assert!(extract(&headers(&[("traceparent", future)])).is_some());
    }

    #[test]
    fn b3_single_and_multi_are_read() {
        let single = extract(&headers(&[(
            "b3",
            "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1-05e3ac9a4f6e3b90",
        )]))
        .unwrap();
        assert_eq!(single.ids, Some((0x80f198ee56343ba864fe8b2a57d3eff7, 0xe457b5a2e4d86bd1)));
        assert_eq!(single.sampled, Some(true));
        assert!(single.formats.b3);
        let deferred = extract(&headers(&[("b3", "64fe8b2a57d3eff7-e457b5a2e4d86bd1")])).unwrap();
        assert_eq!(deferred.ids, Some((0x64fe8b2a57d3eff7, 0xe457b5a2e4d86bd1)));
        assert_eq!(deferred.sampled, None);
        let deny = extract(&headers(&[("b3", "0")])).unwrap();
        assert_eq!((deny.ids, deny.sampled), (None, Some(false)));
        let multi = extract(&headers(&[
            ("x-b3-traceid", "463ac35c9f6413ad48485a3953bb6124"),
            ("x-b3-spanid", "a2fb4a1d1a96d312"),
            ("x-b3-sampled", "0"),
            ("x-b3-flags", "1"),
        ]))
        .unwrap();
        assert_eq!(multi.ids, Some((0x463ac35c9f6413ad48485a3953bb6124, 0xa2fb4a1d1a96d312)));
        assert_eq!(multi.sampled, Some(true), "the debug flag means sampled");
        assert!(multi.formats.b3_multi);
        assert_eq!(extract(&headers(&[("x-b3-traceid", "463ac35c9f6413ad48485a3953bb6124")])), None);
        assert_eq!(extract(&headers(&[("b3", "zz-e457b5a2e4d86bd1")])), None);
    }

    #[test]
    fn traceparent_wins_and_every_format_is_written_back() {
        let mut h = headers(&[
            ("traceparent", TP),
            ("tracestate", "vendor=opaque"),
            ("b3", "1111111111111111-2222222222222222-1"),
            ("x-b3-traceid", "1111111111111111"),
            ("x-b3-spanid", "2222222222222222"),
            ("x-b3-parentspanid", "3333333333333333"),
        ]);
        let got = extract(&h).unwrap();
        assert_eq!(got.ids.unwrap().0, 0x4bf92f3577b34da6a3ce929d0e0e4736);
        assert_eq!(got.formats, Formats { w3c: true, b3: true, b3_multi: true });
        inject(&mut h, got.formats, got.ids.unwrap().0, 0xabcdef0123456789, Some(0x42), true);
        assert_eq!(h["traceparent"], "00-4bf92f3577b34da6a3ce929d0e0e4736-abcdef0123456789-01");
        assert_eq!(h["tracestate"], "vendor=opaque");
        assert_eq!(h["b3"], "4bf92f3577b34da6a3ce929d0e0e4736-abcdef0123456789-1");
        assert_eq!(h["x-b3-traceid"], "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(h["x-b3-spanid"], "abcdef0123456789");
        assert_eq!(h["x-b3-parentspanid"], "0000000000000042");
        assert_eq!(h["x-b3-sampled"], "1");
        // And what is written reads back the same.
        let again = extract(&h).unwrap();
        assert_eq!(again.ids, Some((0x4bf92f3577b34da6a3ce929d0e0e4736, 0xabcdef0123456789)));
    }

    #[test]
    fn b3_keeps_a_64_bit_trace_id() {
        let mut h = headers(&[("b3", "64fe8b2a57d3eff7-e457b5a2e4d86bd1-0")]);
        let got = extract(&h).unwrap();
        inject(&mut h, got.formats, got.ids.unwrap().0, 1, None, false);
        assert_eq!(h["b3"], "64fe8b2a57d3eff7-0000000000000001-0");
        assert!(!h.contains_key("traceparent"), "only the formats that came are written");
        let mut empty = HeaderMap::new();
        inject(&mut empty, Formats::DEFAULT, 7, 9, None, false);
        assert_eq!(empty["traceparent"], "00-00000000000000000000000000000007-0000000000000009-00");
    }
}
