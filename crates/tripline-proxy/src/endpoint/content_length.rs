//! An upstream response's Content-Length, held to RFC 9110 §8.6 before the client sees it, for
//! all three upstream clients (the lean HTTP/1.1 one, hyper's HTTP/1.1 and HTTP/2).
//!
//! Why here and not left to the clients: the length reaches the client through hyper's
//! HTTP/1.1 server, which trusts the header. An invalid or repeated value there makes it close
//! the client's connection without writing a response, and the client cannot tell that from a
//! crash; a list (`5, 5`) it passes on, for the next hop to read its own way. The
//! `upstream_h1` fuzz target found four ways an upstream gets one through: on a response
//! without a body (HEAD, 304), where no client reads it for framing; beside a
//! Transfer-Encoding; repeated; and as a list framing a body (docs/testing.md).

use http::header::{self, HeaderMap, HeaderValue};

use crate::BoxError;

/// The response's Content-Length and whether the header is already one clean field (a single
/// `1*DIGIT` value), in one lookup. `None` without one; an error unless every value (of every
/// field, comma lists included) is `1*DIGIT` (RFC 9110 §8.6) and all agree. Rust's integer
/// parser also takes a leading `+`, which another hop could read differently.
#[inline]
fn scan(headers: &HeaderMap) -> Result<Option<(u64, bool)>, BoxError> {
    let mut length = None;
    let mut values = 0usize;
    let mut bare = true;
    for v in headers.get_all(header::CONTENT_LENGTH) {
        for part in v.as_bytes().split(|b| *b == b',') {
            let trimmed = part.trim_ascii();
            let n = digits(trimmed).ok_or("invalid upstream Content-Length")?;
            if length.is_some_and(|l| l != n) {
                return Err("conflicting upstream Content-Length values".into());
            }
            length = Some(n);
            values += 1;
            bare &= trimmed.len() == part.len();
        }
    }
    Ok(length.map(|n| (n, bare && values == 1)))
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
    normalize(headers).map(drop)
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

/// Holds a response's Content-Length to [`scan`]'s rules and makes repeated values one
/// field; returns the length. hyper's HTTP/1.1 server, which writes the client's response,
/// trusts the header: it answers a second field by closing the client's connection without a
/// response, and passes a list (`5, 5`) on, which the next hop may read differently (RFC 9110
/// §8.6 lets a recipient accept or reject it). Fuzzers found both: on a HEAD or 304 response,
/// whose length no client reads for framing (`Content-Length: 5` twice on a HEAD response left
/// the client with nothing); on hyper's client, which passes the header on as it came; and on
/// the lean client's responses with a body, which passed a list (`2, 2`) on. An upstream that
/// breaks the rules gets the 502 of any other bad framing. Used for all the lean client's
/// responses and, through [`settle_hyper`], for hyper's.
#[inline]
pub(crate) fn normalize(headers: &mut HeaderMap) -> Result<Option<u64>, BoxError> {
    let Some((n, clean)) = scan(headers)? else { return Ok(None) };
    if !clean {
        // A list (`5, 5`), spaces or several fields: one clean value instead.
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(n));
    }
    Ok(Some(n))
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
