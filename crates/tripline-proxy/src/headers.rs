//! Header rewriting between client and upstream (RFC 9110 section 7.6.1): hop-by-hop headers
//! are removed, `x-forwarded-for` is appended, `x-request-id` is generated when absent, and the
//! request target is put in the form the upstream protocol needs.

use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{Authority, Scheme, Uri};
use http::{Request, Version};
use tripline_config::plan::UpstreamProtocol;
use tripline_core::rng::Rng;

pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub static X_FORWARDED_CLIENT_CERT: HeaderName = HeaderName::from_static("x-forwarded-client-cert");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// True when the request asks to switch protocols (WebSocket and friends, HTTP/1.1 only).
pub fn is_upgrade<B>(req: &Request<B>) -> bool {
    req.version() == Version::HTTP_11
        && req.headers().contains_key(header::UPGRADE)
        && connection_has(req.headers(), "upgrade")
}

fn connection_has(headers: &HeaderMap, token: &str) -> bool {
    headers.get_all(header::CONNECTION).iter().any(|v| has_token(v.as_bytes(), token.as_bytes()))
}

/// Whether a comma-separated header value lists `token` (case-insensitive).
pub(crate) fn has_token(value: &[u8], token: &[u8]) -> bool {
    value.split(|b| *b == b',').any(|t| t.trim_ascii().eq_ignore_ascii_case(token))
}

/// The fixed hop-by-hop headers (RFC 9110 section 7.6.1 and the de-facto ones), in the bit
/// order [`hop_index`] uses.
const HOP_BY_HOP: [&HeaderName; 8] = [
    &header::CONNECTION,
    &header::TE,
    &header::TRANSFER_ENCODING,
    &header::UPGRADE,
    &header::PROXY_AUTHENTICATE,
    &header::PROXY_AUTHORIZATION,
    &KEEP_ALIVE,
    &PROXY_CONNECTION,
];

/// The bit [`scan`] sets for `x-forwarded-client-cert`, after those of [`HOP_BY_HOP`].
const XFCC_BIT: u16 = 1 << 8;

/// The position of `name` in [`HOP_BY_HOP`].
fn hop_index(name: &HeaderName) -> Option<usize> {
    name_index(name).filter(|&i| i < HOP_BY_HOP.len())
}

/// The headers the request path looks for in every message: [`HOP_BY_HOP`] by position, then
/// `x-forwarded-client-cert` (8). A match on the (lower-case) name: every message passes each
/// of its header names through here, so it must cost a length check, not nine `HeaderName`
/// comparisons or a hash lookup per name looked for.
fn name_index(name: &HeaderName) -> Option<usize> {
    Some(match name.as_str() {
        "x-forwarded-client-cert" => 8,
        "connection" => 0,
        "te" => 1,
        "transfer-encoding" => 2,
        "upgrade" => 3,
        "proxy-authenticate" => 4,
        "proxy-authorization" => 5,
        "keep-alive" => 6,
        "proxy-connection" => 7,
        _ => return None,
    })
}

/// Whether `name` is one of the fixed hop-by-hop headers.
pub(crate) fn is_hop_by_hop(name: &HeaderName) -> bool {
    hop_index(name).is_some()
}

/// Removes hop-by-hop headers. With `keep_upgrade`, `Connection: upgrade` and `Upgrade`
/// survive (the upgrade is passed through end to end).
///
/// One pass over the names finds which are present, so a message without any (the common
/// case) costs a few comparisons, and one with `Connection: keep-alive` costs one removal.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    strip_scanned(headers, keep_upgrade, scan(headers));
}

/// Which of the headers [`name_index`] knows are present, one bit each, in one pass.
fn scan(headers: &HeaderMap) -> u16 {
    let mut present = 0u16;
    for name in headers.keys() {
        if let Some(i) = name_index(name) {
            present |= 1 << i;
        }
    }
    present
}

fn strip_scanned(headers: &mut HeaderMap, keep_upgrade: bool, present: u16) {
    let present = present & !XFCC_BIT;
    if present == 0 && !keep_upgrade {
        return;
    }
    let has = |h: &HeaderName| hop_index(h).is_some_and(|i| present & (1 << i) != 0);
    if has(&header::CONNECTION) {
        // Headers named in Connection are hop-by-hop too (the usual `close` / `keep-alive`
        // tokens are not header names we would carry). Except `Host` and `Content-Length`:
        // they say where a request goes and where a message ends, so a peer naming them
        // (`Connection: close, host`) must not make us forward a request without a host or
        // re-frame a body.
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|t| !t.eq_ignore_ascii_case("close") && !t.eq_ignore_ascii_case("keep-alive"))
            .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
            .filter(|n| n != header::HOST && n != header::CONTENT_LENGTH)
            .filter(|n| !(keep_upgrade && n == header::UPGRADE))
            .collect();
        for n in named {
            headers.remove(n);
        }
    }
    for (i, h) in HOP_BY_HOP.iter().enumerate() {
        if present & (1 << i) == 0 {
            continue;
        }
        let keep = if *h == header::TE {
            // gRPC needs `te: trailers` end to end; anything else in TE is hop-by-hop.
            headers.get(header::TE).is_some_and(|te| te.as_bytes().eq_ignore_ascii_case(b"trailers"))
        } else {
            keep_upgrade && *h == header::UPGRADE
        };
        if !keep {
            headers.remove(*h);
        }
    }
    if keep_upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
}

/// The request's authority: the URI's (HTTP/2, absolute-form) or the Host header's.
pub fn authority<B>(req: &Request<B>) -> Option<&str> {
    authority_of(req.uri(), req.headers())
}

/// [`authority`] from a request's parts.
pub fn authority_of<'a>(uri: &'a Uri, headers: &'a HeaderMap) -> Option<&'a str> {
    uri.authority().map(Authority::as_str).or_else(|| headers.get(header::HOST)?.to_str().ok())
}

/// The client's address as `trusted` proxies in front of the listener report it: the entry of
/// `x-forwarded-for` that many from its end (each proxy appends the address it was reached
/// from; Envoy's `xff_num_trusted_hops`). `None` without trusted proxies, or when the header
/// has fewer entries or that one is not an address.
pub fn forwarded_client(headers: &HeaderMap, trusted: u32) -> Option<IpAddr> {
    if trusted == 0 {
        return None;
    }
    // From the end, across the header's lines, without collecting them: this runs per request.
    let mut left = trusted;
    for value in headers.get_all(&X_FORWARDED_FOR).iter().rev() {
        for entry in value.to_str().ok()?.rsplit(',') {
            left -= 1;
            if left == 0 {
                return entry.trim().parse().ok();
            }
        }
    }
    None
}

/// The host of an authority, as routes match it: the port stripped (`host:port`,
/// `[v6]:port`), and a trailing dot (`a.local.`, the same name fully qualified) too.
pub fn host_of(authority: &str) -> &str {
    if let Some(rest) = authority.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    let host = match authority.rsplit_once(':') {
        Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => authority,
    };
    host.strip_suffix('.').unwrap_or(host)
}

/// A random UUIDv4 string, for `x-request-id`.
pub fn request_id(rng: &dyn Rng) -> HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let (a, b) = (rng.next_u64(), rng.next_u64());
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&a.to_le_bytes());
    bytes[8..].copy_from_slice(&b.to_le_bytes());
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let mut out = [0u8; 36];
    let mut j = 0;
    for (i, byte) in bytes.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            out[j] = b'-';
            j += 1;
        }
        out[j] = HEX[usize::from(byte >> 4)];
        out[j + 1] = HEX[usize::from(byte & 0xf)];
        j += 2;
    }
    HeaderValue::from_bytes(&out).unwrap_or_else(|_| HeaderValue::from_static("invalid"))
}

/// Gives an HTTP/1.1 request that came over TLS its scheme: the absolute form
/// `https://<Host><path>`, as an HTTP/2 request carries `:scheme`. Routing's `scheme` match and
/// redirects then see `https`; forwarding writes the origin form again for an HTTP/1.1
/// upstream. A request without a valid `Host` is left alone (it is refused anyway).
pub fn https_target<B>(req: &mut Request<B>) {
    let Some(host) =
        req.headers().get(header::HOST).and_then(|h| http::uri::Authority::try_from(h.as_bytes()).ok())
    else {
        return;
    };
    let mut parts = req.uri().clone().into_parts();
    parts.scheme = Some(http::uri::Scheme::HTTPS);
    parts.authority = Some(host);
    if parts.path_and_query.is_none() {
        parts.path_and_query = Some(http::uri::PathAndQuery::from_static("/"));
    }
    match http::Uri::from_parts(parts) {
        Ok(uri) => *req.uri_mut() = uri,
        Err(e) => tracing::debug!(error = %e, "request target not made absolute"),
    }
}

/// Who the client is, for the headers that describe the request: at the edge (a Gateway with
/// no trusted proxy in front), a client's `x-forwarded-proto` and `x-request-id` are not
/// believed (it could pose as having come over TLS, or reuse another request's id to poison
/// traces and logs); a trusted client's are passed on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Client {
    Edge,
    Trusted,
}

/// Rewrites a client request for the upstream: hop-by-hop headers, forwarding headers,
/// request id, and the request target (origin-form + Host for HTTP/1.1, absolute URI for
/// HTTP/2). `tls`: what the connection's TLS handshake settled, for a TLS client.
///
/// `x-forwarded-client-cert` is Envoy's `SANITIZE_SET` (Istio's default): the client's own is
/// never passed on (a plaintext caller could claim any identity to the application), and a
/// client that presented a verified certificate gets one naming it.
pub fn prepare_request<B>(
    req: &mut Request<B>,
    protocol: UpstreamProtocol,
    peer: &HeaderValue,
    client: Client,
    tls: Option<&crate::tls::TlsInfo>,
    upgrade: bool,
    rng: &dyn Rng,
) {
    let https = tls.is_some();
    let headers = req.headers_mut();
    let present = scan(headers);
    strip_scanned(headers, upgrade, present);
    // The client's `Expect: 100-continue` was answered by our server side when we started
    // reading the body; the upstream gets the body straight away.
    if headers.contains_key(header::EXPECT) {
        headers.remove(header::EXPECT);
    }
    append_forwarded_for(headers, peer);
    match tls.and_then(|t| t.xfcc.as_ref()) {
        Some(xfcc) => {
            headers.insert(&X_FORWARDED_CLIENT_CERT, xfcc.clone());
        }
        // Found by the scan above, so a request without one (nearly all) costs no lookup.
        None if present & XFCC_BIT != 0 => {
            headers.remove(&X_FORWARDED_CLIENT_CERT);
        }
        None => {}
    }
    let proto = HeaderValue::from_static(if https { "https" } else { "http" });
    match client {
        Client::Edge => {
            // The scheme the client used with Tripline.
            headers.insert(&X_FORWARDED_PROTO, proto);
            headers.insert(&X_REQUEST_ID, request_id(rng));
        }
        Client::Trusted => {
            // `entry`: one hash lookup each instead of a `contains_key` and an `insert`.
            headers.entry(&X_FORWARDED_PROTO).or_insert(proto);
            headers.entry(&X_REQUEST_ID).or_insert_with(|| request_id(rng));
        }
    }
    for_protocol(req, protocol);
}

/// The request in the shape its upstream's protocol wants: the authority in the URI for
/// HTTP/2, in `Host` for HTTP/1.1 (with an origin-form target). A fallback uses it alone to
/// send a request prepared for another cluster.
pub fn for_protocol<B>(req: &mut Request<B>, protocol: UpstreamProtocol) {
    match protocol {
        UpstreamProtocol::Http2 => {
            // HTTP/2 carries the authority in the URI; an HTTP/1.1 client gave it as Host.
            let host = req.headers_mut().remove(header::HOST);
            let mut parts = std::mem::take(req.uri_mut()).into_parts();
            parts.scheme = Some(Scheme::HTTP);
            if parts.authority.is_none() {
                parts.authority = host.and_then(|h| Authority::try_from(h.as_bytes()).ok());
            }
            if parts.path_and_query.is_none() {
                parts.path_and_query = Some(http::uri::PathAndQuery::from_static("/"));
            }
            *req.uri_mut() = Uri::from_parts(parts).unwrap_or_default();
            *req.version_mut() = Version::HTTP_2;
        }
        _ => {
            // HTTP/1.1 wants the authority as Host. An HTTP/2 client gave it in the URI, and an
            // absolute-form target's authority replaces the client's Host (RFC 9112 §3.2.2):
            // the request was routed by it, so it is what the upstream must see.
            if let Some(v) = req.uri().authority().and_then(|a| HeaderValue::from_str(a.as_str()).ok()) {
                req.headers_mut().insert(header::HOST, v);
            }
            if req.uri().scheme().is_some() || req.uri().authority().is_some() {
                let pq = req.uri().path_and_query().cloned();
                let mut parts = http::uri::Parts::default();
                parts.path_and_query = pq.or_else(|| Some(http::uri::PathAndQuery::from_static("/")));
                *req.uri_mut() = Uri::from_parts(parts).unwrap_or_default();
            }
            *req.version_mut() = Version::HTTP_11;
        }
    }
}

/// The client address as a header value, computed once per connection.
pub fn peer_value(peer: IpAddr) -> HeaderValue {
    HeaderValue::from_str(&peer.to_string()).unwrap_or_else(|_| HeaderValue::from_static("unknown"))
}

fn append_forwarded_for(headers: &mut HeaderMap, peer: &HeaderValue) {
    match headers.entry(&X_FORWARDED_FOR) {
        header::Entry::Vacant(v) => {
            v.insert(peer.clone());
        }
        header::Entry::Occupied(mut o) => {
            // Every line the client sent, in order, as one list (RFC 9110 §5.3), then the
            // client's address. Joined as bytes: a value need not be UTF-8 to be passed on.
            let mut joined = Vec::new();
            for v in o.iter() {
                joined.extend_from_slice(v.as_bytes());
                joined.extend_from_slice(b", ");
            }
            joined.extend_from_slice(peer.as_bytes());
            // Valid values joined by ", " are valid: the fallback is never taken.
            o.insert(HeaderValue::from_bytes(&joined).unwrap_or_else(|_| peer.clone()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tripline_core::rng::SplitMix;

    #[test]
    fn removes_hop_by_hop_and_connection_listed_headers() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, "close, x-secret".parse().unwrap());
        h.insert("x-secret", "1".parse().unwrap());
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        h.insert(header::TE, "gzip".parse().unwrap());
        h.insert(header::UPGRADE, "websocket".parse().unwrap());
        h.insert("x-keep", "yes".parse().unwrap());
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 1, "{h:?}");
        assert_eq!(h["x-keep"], "yes");
    }

    #[test]
    fn connection_cannot_name_host_or_content_length_away() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, "close, Host, content-length, x-secret".parse().unwrap());
        h.insert(header::HOST, "backend.local".parse().unwrap());
        h.insert(header::CONTENT_LENGTH, "5".parse().unwrap());
        h.insert("x-secret", "1".parse().unwrap());
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 2, "{h:?}");
        assert_eq!(h[header::HOST], "backend.local");
        assert_eq!(h[header::CONTENT_LENGTH], "5");
    }

    #[test]
    fn keeps_te_trailers_for_grpc_and_upgrade_when_asked() {
        let mut h = HeaderMap::new();
        h.insert(header::TE, "trailers".parse().unwrap());
        h.insert(header::CONNECTION, "Upgrade".parse().unwrap());
        h.insert(header::UPGRADE, "websocket".parse().unwrap());
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h[header::TE], "trailers");
        assert_eq!(h[header::UPGRADE], "websocket");
        assert_eq!(h[header::CONNECTION], "upgrade");
    }

    #[test]
    fn request_id_is_a_v4_uuid() {
        let id = request_id(&SplitMix::seeded(1));
        let s = id.to_str().unwrap();
        assert_eq!(s.len(), 36);
        assert_eq!(&s[14..15], "4");
        assert_eq!(s.matches('-').count(), 4);
        assert_ne!(request_id(&SplitMix::seeded(2)), id);
    }

    #[test]
    fn host_of_strips_ports() {
        assert_eq!(host_of("a.example:8080"), "a.example");
        assert_eq!(host_of("a.example"), "a.example");
        assert_eq!(host_of("[::1]:80"), "::1");
        assert_eq!(host_of("a.example.:8080"), "a.example");
        assert_eq!(host_of("a.example."), "a.example");
    }

    #[test]
    fn h2_client_to_h1_upstream_gets_origin_form_and_host() {
        let mut req = Request::builder()
            .version(Version::HTTP_2)
            .uri("http://api.local:8080/v1/x?q=1")
            .header("x-forwarded-for", "10.0.0.1")
            .body(())
            .unwrap();
        prepare_request(
            &mut req,
            UpstreamProtocol::Http1,
            &peer_value([127, 0, 0, 1].into()),
            Client::Trusted,
            None,
            false,
            &SplitMix::seeded(1),
        );
        assert_eq!(req.uri(), "/v1/x?q=1");
        assert_eq!(req.headers()[header::HOST], "api.local:8080");
        assert_eq!(req.headers()["x-forwarded-for"], "10.0.0.1, 127.0.0.1");
        assert!(req.headers().contains_key("x-request-id"));
        assert_eq!(req.version(), Version::HTTP_11);
    }

    #[test]
    fn an_absolute_form_target_decides_the_host_the_upstream_gets() {
        let mut req = Request::builder()
            .uri("http://internal.local/admin")
            .header("host", "backend.local")
            .body(())
            .unwrap();
        prepare_request(
            &mut req,
            UpstreamProtocol::Http1,
            &peer_value([127, 0, 0, 1].into()),
            Client::Trusted,
            None,
            false,
            &SplitMix::seeded(1),
        );
        assert_eq!(req.uri(), "/admin");
        assert_eq!(req.headers()[header::HOST], "internal.local");
    }

    #[test]
    fn at_the_edge_the_clients_scheme_and_request_id_are_not_believed() {
        let request = || {
            Request::builder()
                .uri("/p")
                .header("host", "svc.local")
                .header("x-forwarded-proto", "https")
                .header("x-request-id", "chosen-by-the-client")
                .body(())
                .unwrap()
        };
        let peer = peer_value([127, 0, 0, 1].into());
        let mut edge = request();
        prepare_request(
            &mut edge,
            UpstreamProtocol::Http1,
            &peer,
            Client::Edge,
            None,
            false,
            &SplitMix::seeded(1),
        );
        assert_eq!(edge.headers()["x-forwarded-proto"], "http", "the scheme it used with Tripline");
        assert_eq!(edge.headers()["x-request-id"], request_id(&SplitMix::seeded(1)), "a fresh id");
        assert_eq!(edge.headers().get_all("x-request-id").iter().count(), 1);
        let mut trusted = request();
        prepare_request(
            &mut trusted,
            UpstreamProtocol::Http1,
            &peer,
            Client::Trusted,
            None,
            false,
            &SplitMix::seeded(1),
        );
        assert_eq!(trusted.headers()["x-forwarded-proto"], "https");
        assert_eq!(trusted.headers()["x-request-id"], "chosen-by-the-client");
    }

    #[test]
    fn x_forwarded_for_keeps_every_line_the_client_sent() {
        let mut h = HeaderMap::new();
        h.append(&X_FORWARDED_FOR, HeaderValue::from_static("10.0.0.1, 10.0.0.2"));
        h.append(&X_FORWARDED_FOR, HeaderValue::from_static("10.0.0.3"));
        h.append(&X_FORWARDED_FOR, HeaderValue::from_bytes(b"caf\xe9").unwrap());
        append_forwarded_for(&mut h, &peer_value([127, 0, 0, 1].into()));
        let all: Vec<&[u8]> = h.get_all(&X_FORWARDED_FOR).iter().map(HeaderValue::as_bytes).collect();
        assert_eq!(all, [&b"10.0.0.1, 10.0.0.2, 10.0.0.3, caf\xe9, 127.0.0.1"[..]]);
    }

    #[test]
    fn a_client_s_own_forwarded_client_cert_is_dropped_and_a_verified_certificate_s_is_set() {
        let forged = || {
            Request::builder()
                .uri("/")
                .header("host", "app")
                .header("x-forwarded-client-cert", "URI=spiffe://cluster.local/ns/admin/sa/root")
                .body(())
                .unwrap()
        };
        let prepare = |req: &mut Request<()>, tls: Option<&crate::tls::TlsInfo>| {
            let peer = peer_value([127, 0, 0, 1].into());
            prepare_request(
                req,
                UpstreamProtocol::Http1,
                &peer,
                Client::Trusted,
                tls,
                false,
                &SplitMix::seeded(1),
            );
        };
        let mut plaintext = forged();
        prepare(&mut plaintext, None);
        assert!(!plaintext.headers().contains_key("x-forwarded-client-cert"));
        assert_eq!(plaintext.headers()["x-forwarded-proto"], "http");
        let caller = crate::tls::TlsInfo {
            peer_identity: Some("spiffe://cluster.local/ns/shop/sa/web".into()),
            xfcc: Some(HeaderValue::from_static("URI=spiffe://cluster.local/ns/shop/sa/web")),
            ..Default::default()
        };
        let mut mtls = forged();
        prepare(&mut mtls, Some(&caller));
        let all: Vec<_> = mtls.headers().get_all("x-forwarded-client-cert").iter().collect();
        assert_eq!(all, ["URI=spiffe://cluster.local/ns/shop/sa/web"]);
        // TLS without a client certificate: https, and no identity claimed.
        let mut simple = forged();
        prepare(&mut simple, Some(&crate::tls::TlsInfo::default()));
        assert!(!simple.headers().contains_key("x-forwarded-client-cert"));
        assert_eq!(simple.headers()["x-forwarded-proto"], "https");
    }

    #[test]
    fn h1_client_to_h2_upstream_gets_absolute_uri() {
        let mut req = Request::builder().uri("/p").header("host", "svc.local").body(()).unwrap();
        prepare_request(
            &mut req,
            UpstreamProtocol::Http2,
            &peer_value([127, 0, 0, 1].into()),
            Client::Trusted,
            None,
            false,
            &SplitMix::seeded(1),
        );
        assert_eq!(req.uri(), "http://svc.local/p");
        assert!(!req.headers().contains_key(header::HOST));
        assert_eq!(req.version(), Version::HTTP_2);
    }

    #[test]
    fn the_forwarded_client_is_as_many_entries_from_the_end_as_there_are_trusted_proxies() {
        let mut h = HeaderMap::new();
        h.append("x-forwarded-for", HeaderValue::from_static("203.0.113.7, 10.0.0.1"));
        h.append("x-forwarded-for", HeaderValue::from_static("10.0.0.2"));
        assert_eq!(forwarded_client(&h, 0), None, "no trusted proxy: the peer is the client");
        assert_eq!(forwarded_client(&h, 1), Some("10.0.0.2".parse().unwrap()));
        assert_eq!(forwarded_client(&h, 3), Some("203.0.113.7".parse().unwrap()));
        assert_eq!(forwarded_client(&h, 4), None, "fewer entries than trusted proxies");
        h.insert("x-forwarded-for", HeaderValue::from_static("not-an-ip"));
        assert_eq!(forwarded_client(&h, 1), None);
        assert_eq!(forwarded_client(&HeaderMap::new(), 1), None);
    }
}
