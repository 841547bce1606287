//! What the proxy knows of gRPC: telling a gRPC request by its content type, its deadline
//! (`grpc-timeout`), and the status trailers a gRPC client reads errors from.
//!
//! A gRPC client ignores the HTTP status of a response with `grpc-status`, and reports a
//! response without one as an opaque HTTP error; so Tripline's own answers to gRPC requests
//! are gRPC statuses (see `local_reply`), and a response cut short after its head ends with
//! a status in trailers rather than a stream reset (see `body`).

use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue};

pub static GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
pub static GRPC_MESSAGE: HeaderName = HeaderName::from_static("grpc-message");
pub static GRPC_TIMEOUT: HeaderName = HeaderName::from_static("grpc-timeout");

/// Whether a request is gRPC (`application/grpc`, `application/grpc+proto`, ...), whose
/// client reads errors from `grpc-status`. gRPC-Web (`application/grpc-web`) reads the HTTP
/// status, and is not.
pub fn is_grpc(headers: &HeaderMap) -> bool {
    const TYPE: &[u8] = b"application/grpc";
    headers.get(http::header::CONTENT_TYPE).is_some_and(|v| {
        let v = v.as_bytes();
        v.len() >= TYPE.len()
            && v[..TYPE.len()].eq_ignore_ascii_case(TYPE)
            && matches!(v.get(TYPE.len()), None | Some(b'+' | b';'))
    })
}

/// Writes `grpc-status` and `grpc-message`, the message percent-encoded as the gRPC spec
/// asks (its trailing newline dropped).
pub fn set_status(h: &mut HeaderMap, status: u8, message: &str) {
    h.insert(&GRPC_STATUS, HeaderValue::from(u16::from(status)));
    let message = message.trim_end();
    let mut encoded = String::with_capacity(message.len());
    for b in message.bytes() {
        if (0x20..0x7f).contains(&b) && b != b'%' {
            encoded.push(char::from(b));
        } else {
            encoded.push_str(&format!("%{b:02X}"));
        }
    }
    if let Ok(v) = HeaderValue::try_from(encoded) {
        h.insert(&GRPC_MESSAGE, v);
    }
}

/// A trailers block carrying a gRPC status.
pub fn status_trailers(status: u8, message: &str) -> HeaderMap {
    let mut h = HeaderMap::with_capacity(2);
    set_status(&mut h, status, message);
    h
}

/// The request's `grpc-timeout` (gRPC over HTTP/2: 1 to 8 digits and a unit, `H` `M` `S` `m`
/// `u` `n`), or `None` when absent or malformed (a malformed one is ignored, as gRPC servers
/// and Envoy do).
pub fn timeout(headers: &HeaderMap) -> Option<Duration> {
    let v = headers.get(&GRPC_TIMEOUT)?.as_bytes();
    let (&unit, digits) = v.split_last()?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some(match unit {
        b'H' => Duration::from_secs(n * 3600),
        b'M' => Duration::from_secs(n * 60),
        b'S' => Duration::from_secs(n),
        b'm' => Duration::from_millis(n),
        b'u' => Duration::from_micros(n),
        b'n' => Duration::from_nanos(n),
        _ => return None,
    })
}

/// `d` as a `grpc-timeout` value: milliseconds, rounded up so that the upstream never gets
/// less time than is left, in the smallest unit that fits eight digits.
pub fn timeout_value(d: Duration) -> HeaderValue {
    let ms = d.as_nanos().div_ceil(1_000_000);
    let (n, unit) = if ms < 100_000_000 { (ms, 'm') } else { (ms.div_ceil(1000).min(99_999_999), 'S') };
    HeaderValue::try_from(format!("{n}{unit}")).unwrap_or(HeaderValue::from_static("99999999S"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(name: &'static str, value: &'static str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(name, HeaderValue::from_static(value));
        h
    }

    #[test]
    fn grpc_requests_are_told_by_their_content_type() {
        let is = |ct| is_grpc(&headers("content-type", ct));
        assert!(is("application/grpc"));
        assert!(is("application/grpc+proto"));
        assert!(is("Application/GRPC;charset=utf-8"));
        assert!(!is("application/grpc-web"), "gRPC-Web reads the HTTP status");
        assert!(!is("application/json"));
        assert!(!is_grpc(&HeaderMap::new()));
    }

    #[test]
    fn messages_are_percent_encoded() {
        let h = status_trailers(14, "50% of café\n");
        assert_eq!(h["grpc-message"], "50%25 of caf%C3%A9");
        assert_eq!(h["grpc-status"], "14");
    }

    #[test]
    fn timeouts_parse_in_every_unit_and_malformed_ones_are_ignored() {
        let t = |v| timeout(&headers("grpc-timeout", v));
        assert_eq!(t("2H"), Some(Duration::from_secs(7200)));
        assert_eq!(t("3M"), Some(Duration::from_secs(180)));
        assert_eq!(t("10S"), Some(Duration::from_secs(10)));
        assert_eq!(t("250m"), Some(Duration::from_millis(250)));
        assert_eq!(t("7u"), Some(Duration::from_micros(7)));
        assert_eq!(t("99999999n"), Some(Duration::from_nanos(99_999_999)));
        for bad in ["", "m", "123", "123456789m", "12x", "-1m", "1.5S", " 1S"] {
            assert_eq!(t(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn the_remaining_time_goes_upstream_rounded_up() {
        assert_eq!(timeout_value(Duration::from_millis(1500)), "1500m");
        assert_eq!(timeout_value(Duration::from_micros(1)), "1m", "never less than is left");
        assert_eq!(timeout_value(Duration::from_secs(200_000)), "200000S");
        assert_eq!(timeout(&headers("grpc-timeout", "1500m")), Some(Duration::from_millis(1500)));
    }
}
