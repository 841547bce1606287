//! A request's HEADERS frame turned into an `http::Request`, with the checks RFC 9113 §8.3
//! asks of a server. The codec already rejected what the header block itself gets wrong
//! (pseudo-headers after regular ones, repeated pseudo-headers, connection-specific fields,
//! upper-case names), as a stream error.

use http::header::CONTENT_LENGTH;
use http::{uri, HeaderMap, Method, Request, Version};

use h2::frame::Pseudo;

/// The request head, and its declared body length.
pub struct Head {
    pub request: Request<()>,
    pub content_length: Option<u64>,
}

/// Why a request is malformed (answered with RST_STREAM PROTOCOL_ERROR).
pub type Malformed = &'static str;

pub fn head(pseudo: Pseudo, fields: HeaderMap) -> Result<Head, Malformed> {
    let method = pseudo.method.ok_or("missing :method")?;
    if pseudo.status.is_some() {
        return Err(":status in a request");
    }
    // Extended CONNECT (RFC 8441) is not offered in SETTINGS, so a client must not use it.
    if pseudo.protocol.is_some() {
        return Err(":protocol without SETTINGS_ENABLE_CONNECT_PROTOCOL");
    }
    let connect = method == Method::CONNECT;
    let mut parts = uri::Parts::default();
    if let Some(a) = pseudo.authority {
        parts.authority = Some(uri::Authority::try_from(&*a).map_err(|_| "bad :authority")?);
    }
    if connect {
        if pseudo.scheme.is_some() || pseudo.path.is_some() {
            return Err(":scheme or :path in CONNECT");
        }
        if parts.authority.is_none() {
            return Err("CONNECT without :authority");
        }
    } else {
        let scheme = pseudo.scheme.ok_or("missing :scheme")?;
        let path = pseudo.path.ok_or("missing :path")?;
        if path.is_empty() {
            return Err("empty :path");
        }
        // A URI cannot hold a scheme without an authority: then the scheme is only checked.
        let scheme: uri::Scheme = scheme.parse().map_err(|_| "bad :scheme")?;
        if parts.authority.is_some() {
            parts.scheme = Some(scheme);
        }
        parts.path_and_query = Some(uri::PathAndQuery::try_from(&*path).map_err(|_| "bad :path")?);
    }
    let content_length = content_length(&fields)?;
    let mut request = Request::new(());
    *request.method_mut() = method;
    *request.uri_mut() = uri::Uri::from_parts(parts).map_err(|_| "bad request target")?;
    *request.version_mut() = Version::HTTP_2;
    *request.headers_mut() = fields;
    Ok(Head { request, content_length })
}

/// The declared body length: every `content-length` field must agree (RFC 9110 §8.6).
fn content_length(fields: &HeaderMap) -> Result<Option<u64>, Malformed> {
    let mut found = None;
    for v in fields.get_all(CONTENT_LENGTH) {
        let s = std::str::from_utf8(v.as_bytes()).map_err(|_| "bad content-length")?;
        let n: u64 = s.trim().parse().map_err(|_| "bad content-length")?;
        if found.is_some_and(|f| f != n) {
            return Err("conflicting content-length");
        }
        found = Some(n);
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn pseudo(method: Method, path: Option<&str>) -> Pseudo {
        let mut p = Pseudo::request(method, uri::Uri::from_static("http://example.com/"), None);
        p.path =
            path.map(|s| h2::frame::BytesStr::try_from(bytes::Bytes::copy_from_slice(s.as_bytes())).unwrap());
        p
    }

    #[test]
    fn a_request_keeps_its_target_authority_and_fields() {
        let mut fields = HeaderMap::new();
        fields.insert("x-a", HeaderValue::from_static("1"));
        fields.insert(CONTENT_LENGTH, HeaderValue::from_static("5"));
        let h = head(pseudo(Method::POST, Some("/a?b=c")), fields).unwrap();
        assert_eq!(h.request.uri(), "http://example.com/a?b=c");
        assert_eq!(h.request.method(), Method::POST);
        assert_eq!(h.request.version(), Version::HTTP_2);
        assert_eq!(h.request.headers()["x-a"], "1");
        assert_eq!(h.content_length, Some(5));
    }

    #[test]
    fn malformed_requests_are_named() {
        assert_eq!(head(pseudo(Method::GET, None), HeaderMap::new()).err(), Some("missing :path"));
        assert_eq!(head(pseudo(Method::GET, Some("")), HeaderMap::new()).err(), Some("empty :path"));
        let mut two = HeaderMap::new();
        two.append(CONTENT_LENGTH, HeaderValue::from_static("1"));
        two.append(CONTENT_LENGTH, HeaderValue::from_static("2"));
        assert_eq!(head(pseudo(Method::POST, Some("/")), two).err(), Some("conflicting content-length"));
        let mut p = pseudo(Method::GET, Some("/"));
        p.status = Some(http::StatusCode::OK);
        assert_eq!(head(p, HeaderMap::new()).err(), Some(":status in a request"));
    }
}
