//! The consistent-hash key of a request (`DestinationRule` `consistentHash`), and the sticky
//! cookie Tripline sets when the key is a cookie the client has not got yet.

use std::net::SocketAddr;

use http::{HeaderValue, Request};
use tripline_config::plan::{HashKey, NewCookie};
use tripline_core::balancer::hash_bytes;
use tripline_core::rng::mix64;

/// What consistent hashing takes from a request.
#[derive(Debug, Default)]
pub struct RequestHash {
    /// The key's hash; `None` when the request lacks the key (the balancer then picks freely).
    pub hash: Option<u64>,
    /// A `Set-Cookie` for the response: the request came without the hash cookie and
    /// `httpCookie.ttl` asks Tripline to create one. Its value is what `hash` hashes, so the
    /// client's next requests go where this one went.
    pub set_cookie: Option<HeaderValue>,
}

/// Hashes a request under `key`. A missing (or empty) cookie with `generate` gets a value
/// derived from the client connection's address and port and the process's `secret`: every
/// request of one connection gets the same value, so a browser's first requests racing on one
/// HTTP/2 connection all land on one endpoint and receive one cookie (Envoy hashes the
/// connection's addresses for the same reason); other connections, even from one NAT, get
/// others; and the secret keeps the values unpredictable.
pub fn request_hash<B>(key: &HashKey, req: &Request<B>, peer: SocketAddr, secret: u64) -> RequestHash {
    let hash = key_hash(key, req, peer);
    match key {
        HashKey::Cookie { name, generate: Some(new) } if hash.is_none() => {
            let value = format!("{:016x}", mix64(secret ^ connection_hash(peer)));
            RequestHash {
                hash: Some(hash_bytes(value.as_bytes())),
                set_cookie: set_cookie(name, &value, new),
            }
        }
        _ => RequestHash { hash, set_cookie: None },
    }
}

fn key_hash<B>(key: &HashKey, req: &Request<B>, peer: SocketAddr) -> Option<u64> {
    match key {
        HashKey::Header(name) => req.headers().get(name.as_str()).map(|v| hash_bytes(v.as_bytes())),
        HashKey::SourceIp => Some(ip_hash(peer)),
        HashKey::Cookie { name, .. } => cookie(req, name.as_bytes()).map(hash_bytes),
        HashKey::QueryParameter(name) => req
            .uri()
            .query()
            .and_then(|q| q.split('&').filter_map(|kv| kv.split_once('=')).find(|(k, _)| k == name))
            .map(|(_, v)| hash_bytes(v.as_bytes())),
    }
}

/// The value of cookie `name` in the request's `Cookie` headers: as bytes, so that another
/// cookie's UTF-8 value does not hide it; without the quotes RFC 6265 allows (and Envoy
/// writes); `None` when absent or empty, as Envoy treats an empty one.
fn cookie<'r, B>(req: &'r Request<B>, name: &[u8]) -> Option<&'r [u8]> {
    req.headers()
        .get_all(http::header::COOKIE)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b';'))
        .filter_map(|pair| {
            let eq = pair.iter().position(|&b| b == b'=')?;
            (pair[..eq].trim_ascii() == name).then(|| pair[eq + 1..].trim_ascii())
        })
        .map(|v| v.strip_prefix(b"\"").and_then(|v| v.strip_suffix(b"\"")).unwrap_or(v))
        .find(|v| !v.is_empty())
}

/// The client connection, by its address and port.
fn connection_hash(peer: SocketAddr) -> u64 {
    ip_hash(peer) ^ mix64(u64::from(peer.port()))
}

/// `name=value; Max-Age=…; Path=…; HttpOnly` and the configured attributes. `HttpOnly` as
/// Envoy sets it: the cookie is for routing, not for scripts.
fn set_cookie(name: &str, value: &str, new: &NewCookie) -> Option<HeaderValue> {
    let mut s = format!("{name}={value}");
    if let Some(age) = new.max_age {
        // Whole seconds, rounded up: a 500ms ttl must not become 0, which deletes the cookie.
        s += &format!("; Max-Age={}", age.as_secs() + u64::from(age.subsec_nanos() > 0));
    }
    if let Some(path) = &new.path {
        s += &format!("; Path={path}");
    }
    s += "; HttpOnly";
    for (attr, v) in &new.attributes {
        s += "; ";
        s += attr;
        if let Some(v) = v {
            s += "=";
            s += v;
        }
    }
    // The config checked every part, so this cannot fail; if it did, no cookie is better
    // than a broken one.
    HeaderValue::try_from(s).ok()
}

/// The hash of the client's address without its port: every connection of a client hashes
/// alike (`useSourceIp`, and TCP routes).
pub fn ip_hash(peer: SocketAddr) -> u64 {
    match peer.ip() {
        std::net::IpAddr::V4(ip) => hash_bytes(&ip.octets()),
        std::net::IpAddr::V6(ip) => hash_bytes(&ip.octets()),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const SECRET: u64 = 0x5eed;

    fn get(uri: &str, headers: &[(&str, &str)]) -> Request<()> {
        let mut b = Request::builder().uri(uri);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap()
    }

    const PEER: ([u8; 4], u16) = ([10, 1, 2, 3], 40000);

    /// The hash of the request under `key`, with the client at `PEER`.
    fn hash(key: &HashKey, req: &Request<()>) -> Option<u64> {
        let hashed = request_hash(key, req, PEER.into(), SECRET);
        assert!(hashed.set_cookie.is_none());
        hashed.hash
    }

    #[test]
    fn each_hash_key_reads_its_own_part_of_the_request() {
        let user = |v: &str| Some(hash_bytes(v.as_bytes()));

        let header = HashKey::Header("x-user".into());
        assert_eq!(hash(&header, &get("/", &[("x-user", "bob")])), user("bob"));
        assert_eq!(hash(&header, &get("/", &[])), None);

        let cookie = HashKey::Cookie { name: "session".into(), generate: None };
        assert_eq!(hash(&cookie, &get("/", &[("cookie", "a=1; session=bob; b=2")])), user("bob"));
        assert_eq!(hash(&cookie, &get("/", &[("cookie", "a=1"), ("cookie", "session=bob")])), user("bob"));
        assert_eq!(hash(&cookie, &get("/", &[("cookie", "mysession=bob")])), None, "a different cookie");
        assert_eq!(
            hash(&cookie, &get("/", &[("cookie", "session=\"bob\"")])),
            user("bob"),
            "quotes are not the value"
        );
        assert_eq!(hash(&cookie, &get("/", &[("cookie", "session=; x=1")])), None, "empty counts as absent");
        let mut utf8 = get("/", &[]);
        utf8.headers_mut()
            .insert("cookie", HeaderValue::from_bytes("name=Zoë; session=bob".as_bytes()).unwrap());
        assert_eq!(hash(&cookie, &utf8), user("bob"), "another cookie's UTF-8 value does not hide it");

        let query = HashKey::QueryParameter("user".into());
        assert_eq!(hash(&query, &get("/p?x=1&user=bob", &[])), user("bob"));
        assert_eq!(hash(&query, &get("/p?username=bob", &[])), None);
        assert_eq!(hash(&query, &get("/p", &[])), None);

        // The client's address without its port: every connection of one client hashes alike.
        let ip = hash(&HashKey::SourceIp, &get("/", &[]));
        assert_eq!(ip, Some(ip_hash(([10, 1, 2, 3], 50000).into())));
        assert_ne!(ip, Some(ip_hash(([10, 1, 2, 4], 40000).into())));
    }

    fn sticky(max_age: Option<Duration>, path: Option<&str>, attributes: &[(&str, Option<&str>)]) -> HashKey {
        let attributes = attributes.iter().map(|(k, v)| (k.to_string(), v.map(str::to_string))).collect();
        HashKey::Cookie {
            name: "route".into(),
            generate: Some(NewCookie { max_age, path: path.map(str::to_string), attributes }),
        }
    }

    #[test]
    fn a_missing_cookie_is_created_and_its_value_is_what_gets_hashed() {
        let key = sticky(
            Some(Duration::from_secs(3600)),
            Some("/"),
            &[("SameSite", Some("Strict")), ("Secure", None)],
        );
        let first = request_hash(&key, &get("/", &[]), PEER.into(), SECRET);
        let header = first.set_cookie.expect("a cookie for a client without one");
        let header = header.to_str().unwrap();
        let value = header.strip_prefix("route=").and_then(|r| r.split(';').next()).unwrap();
        assert_eq!(value.len(), 16, "{header}");
        assert_eq!(
            &header["route=".len() + 16..],
            "; Max-Age=3600; Path=/; HttpOnly; SameSite=Strict; Secure"
        );

        // The client sends it back: same hash, and no new cookie.
        let cookie = format!("route={value}");
        let back = request_hash(&key, &get("/", &[("cookie", &cookie)]), PEER.into(), SECRET);
        assert_eq!(back.hash, first.hash);
        assert!(back.set_cookie.is_none());

        // Requests racing on the same connection before the cookie arrives get the same one.
        let racing = request_hash(&key, &get("/other", &[]), PEER.into(), SECRET);
        assert_eq!(racing.hash, first.hash);
        assert_eq!(racing.set_cookie.unwrap().to_str().unwrap(), header);

        // Another connection, even from the same address, and another proxy process (secret)
        // give other values.
        let other_port = request_hash(&key, &get("/", &[]), ([10, 1, 2, 3], 40001).into(), SECRET);
        assert_ne!(other_port.hash, first.hash);
        let other_secret = request_hash(&key, &get("/", &[]), PEER.into(), SECRET + 1);
        assert_ne!(other_secret.hash, first.hash);
    }

    #[test]
    fn a_zero_ttl_makes_a_session_cookie_and_subsecond_ttls_round_up() {
        let cookie = |key: &HashKey| {
            let h = request_hash(key, &get("/", &[]), PEER.into(), SECRET).set_cookie.unwrap();
            h.to_str().unwrap()["route=".len() + 16..].to_string()
        };
        assert_eq!(cookie(&sticky(None, None, &[])), "; HttpOnly");
        assert_eq!(cookie(&sticky(Some(Duration::from_millis(1500)), None, &[])), "; Max-Age=2; HttpOnly");
    }
}
