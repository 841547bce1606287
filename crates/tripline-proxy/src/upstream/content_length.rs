//! An upstream response's Content-Length, held to RFC 9110 §8.6 before the client sees it, for
//! all three upstream clients (the lean HTTP/1.1 one, hyper's HTTP/1.1 and HTTP/2).
//!
//! Why here and not left to the clients: the length reaches the client through hyper's
//! HTTP/1.1 server, which trusts the header. An invalid or repeated value there makes it close
//! the client's connection without writing a response, and the client cannot tell that from a
//! crash. The `upstream_h1` fuzz target found three ways an upstream gets one through: on a
//! response without a body (HEAD, 304), where no client reads it for framing; beside a
//! Transfer-Encoding; and repeated (docs/testing.md).

use http::header::{self, HeaderMap, HeaderValue};

use crate::body::BoxError;

/// The response's Content-Length: `None` without one, an error unless every value (of every
/// field, comma lists included) is `1*DIGIT` (RFC 9110 §8.6) and all agree. Rust's integer
/// parser also takes a leading `+`, which another hop could read differently.
#[inline]
pub(crate) fn parse(headers: &HeaderMap) -> Result<Option<u64>, BoxError> {
    let mut length = None;
    for v in headers.get_all(header::CONTENT_LENGTH) {
        for part in v.as_bytes().split(|b| *b == b',') {
            let n = digits(part.trim_ascii()).ok_or("invalid upstream Content-Length")?;
            if length.is_some_and(|l| l != n) {
                return Err("conflicting upstream Content-Length values".into());
            }
            length = Some(n);
        }
    }
    Ok(length)
}

/// What hyper's clients leave of a response's framing headers, made safe to pass on. hyper
/// checks the Content-Length that frames a body but hands the header on as it came: beside a
/// Transfer-Encoding (which wins, RFC 9112 §6.3) even an empty or invalid one, and a value
/// repeated as it was repeated. hyper's server, which writes the client's response, trusts the
/// header and closes the client's connection without a response when it is invalid or
/// repeated (the fuzzer found both). So with a Transfer-Encoding the Content-Length goes, and
/// otherwise it is checked and made one field as [`normalize`] does.
pub(crate) fn settle_hyper(headers: &mut HeaderMap) -> Result<(), BoxError> {
    if headers.contains_key(header::TRANSFER_ENCODING) {
        headers.remove(header::CONTENT_LENGTH);
        return Ok(());
    }
    normalize(headers)
}

/// `1*DIGIT` as a number, in one pass; `None` if empty, not digits or over `u64`.
fn digits(s: &[u8]) -> Option<u64> {
    if s.is_empty() {
        return None;
    }
    s.iter().try_fold(0u64, |n, &b| match b {
        b'0'..=b'9' => n.checked_mul(10)?.checked_add(u64::from(b - b'0')),
        _ => None,
    })
}

/// Holds a response's Content-Length to [`parse`]'s rules and makes repeated values one
/// field. A response without a body (to HEAD, or a 304) still tells there the length the body
/// would have had, and the client reads it; hyper's HTTP/1.1 encoder trusts the header and
/// answers a second one by closing the client's connection without a response (a fuzzer found
/// that: an upstream's `Content-Length: 5` twice on a HEAD response left the client with
/// nothing). An upstream that breaks the rules gets the 502 of any other bad framing. Used for
/// the lean client's bodiless responses and, through [`settle_hyper`], for hyper's.
pub(crate) fn normalize(headers: &mut HeaderMap) -> Result<(), BoxError> {
    let Some(n) = parse(headers)? else { return Ok(()) };
    let mut values = headers.get_all(header::CONTENT_LENGTH).iter();
    let plain = values.next().is_some_and(|v| v.as_bytes().iter().all(u8::is_ascii_digit));
    if !plain || values.next().is_some() {
        // A list (`5, 5`), spaces or several fields: one clean value instead.
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(n));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_length_without_a_body_is_checked_and_made_one_field() {
        let head = |fields: &[&'static str]| {
            let mut h = HeaderMap::new();
            for f in fields {
                h.append(header::CONTENT_LENGTH, HeaderValue::from_static(f));
            }
            h
        };
        for (fields, expect) in [
            (&["5"][..], Some("5")),
            (&["5", "5"], Some("5")),
            (&["5, 5"], Some("5")),
            (&[" 007"], Some("7")),
            (&[], None),
        ] {
            let mut h = head(fields);
            normalize(&mut h).unwrap();
            let values: Vec<_> = h.get_all(header::CONTENT_LENGTH).iter().collect();
            assert_eq!(values, expect.into_iter().collect::<Vec<_>>(), "{fields:?}");
        }
        let too_big = "18446744073709551616"; // u64::MAX + 1
        for fields in [&["+2"][..], &["1, 2"], &["5", "6"], &[""], &["-1"], &["5,"], &["0x5"], &[too_big]] {
            assert!(normalize(&mut head(fields)).is_err(), "{fields:?}");
        }
    }
}
