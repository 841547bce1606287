//! What the admin API accepts, given that any web page the operator opens can send requests
//! to it: the admin port trips breakers (`POST /breakers/force-open`) and shows the whole
//! config (`/config_dump`), and it listens on loopback, where a browser reaches it.
//!
//! - **DNS rebinding**: a page on `evil.example` whose name is made to resolve to 127.0.0.1
//!   can read the admin API's answers as same-origin. Its requests carry `Host:
//!   evil.example`; only an IP address or `localhost` is accepted as `Host` (a name that
//!   resolves to an IP is exactly what rebinding abuses).
//! - **Cross-site requests** (CSRF): any page can POST to `http://127.0.0.1:15000/...` without
//!   reading the answer, in a form or with `fetch` in `no-cors` mode. Browsers mark such
//!   requests with `Origin` (and `Sec-Fetch-Site`), and the only bodies they can send without
//!   a CORS preflight are the form types. A POST from another origin, or with a form body, is
//!   refused; command-line tools (`curl -X POST`) send neither.
//! - **Anyone on the network**, when the admin API listens beyond loopback: with
//!   `--admin-token-file`, the endpoints that change state want `Authorization: Bearer
//!   <token>` ([`TokenFile`]). Reading (metrics, config, state) stays open, as Envoy's admin
//!   port is: scrapers and probes carry no secret.

use std::path::{Path, PathBuf};

use http::{header, HeaderMap, Method, StatusCode};

/// Why a request to the admin API is refused, and the answer that says so.
#[derive(Debug, PartialEq, Eq)]
pub struct Refusal {
    pub status: StatusCode,
    pub why: String,
}

/// Checks a request to the admin API (see the module docs).
pub fn check(method: &Method, headers: &HeaderMap) -> Result<(), Refusal> {
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("");
    if !host_allowed(host) {
        return Err(Refusal {
            status: StatusCode::FORBIDDEN,
            why: format!(
                "admin: Host `{host}` is not allowed: use an IP address or localhost (names are refused against DNS rebinding)\n"
            ),
        });
    }
    if *method == Method::GET || *method == Method::HEAD {
        return Ok(());
    }
    if let Some(origin) = headers.get(header::ORIGIN) {
        let same = origin.to_str().ok().and_then(|o| o.strip_prefix("http://")).is_some_and(|o| o == host);
        if !same {
            return Err(Refusal {
                status: StatusCode::FORBIDDEN,
                why: "admin: cross-origin requests are refused (CSRF protection); use curl or the admin port itself\n"
                    .into(),
            });
        }
    }
    let site = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok());
    if site.is_some_and(|s| s != "same-origin" && s != "none") {
        return Err(Refusal {
            status: StatusCode::FORBIDDEN,
            why: "admin: cross-site requests are refused (CSRF protection)\n".into(),
        });
    }
    let form = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).is_some_and(|ct| {
        let ct = ct.split(';').next().unwrap_or("").trim();
        ["application/x-www-form-urlencoded", "multipart/form-data", "text/plain"]
            .iter()
            .any(|f| ct.eq_ignore_ascii_case(f))
    });
    if form {
        return Err(Refusal {
            status: StatusCode::UNSUPPORTED_MEDIA_TYPE,
            why: "admin: a POST with a form body is refused (a web page can send one cross-site); send no body, e.g. curl -X POST\n"
                .into(),
        });
    }
    Ok(())
}

/// `localhost` (and its subdomains, which resolve to loopback by RFC 6761), or an IP literal,
/// with or without a port.
fn host_allowed(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(v6) => return v6.split(']').next().is_some_and(|ip| ip.parse::<std::net::Ipv6Addr>().is_ok()),
        None => host.rsplit_once(':').map_or(host, |(h, port)| {
            if port.bytes().all(|b| b.is_ascii_digit()) {
                h
            } else {
                host
            }
        }),
    };
    let name = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
    name == "localhost" || name.ends_with(".localhost") || name.parse::<std::net::Ipv4Addr>().is_ok()
}

/// The shortest token accepted: 128 bits of hex, so that guessing is out of reach.
pub const MIN_TOKEN_LEN: usize = 32;

/// `--admin-token-file`: the bearer token that the admin API's state-changing endpoints want.
/// The file is read again for each such request (they are rare), so rotating the token is
/// rewriting the file, with no restart or signal; a file that cannot be read or holds no
/// valid token refuses every such request (fail closed) and says why.
#[derive(Debug)]
pub struct TokenFile {
    path: PathBuf,
}

impl TokenFile {
    /// Checks the file once, so that a wrong path or a bad token stops the proxy at start.
    pub fn open(path: &Path) -> Result<TokenFile, String> {
        let text = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        token(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(TokenFile { path: path.to_path_buf() })
    }

    /// Whether `headers` carry the token now in the file.
    pub async fn authorize(&self, headers: &HeaderMap) -> Result<(), Refusal> {
        // Off the event loop: a file on a slow or hung mount must not stall the workers' loop.
        let path = self.path.clone();
        let read = tokio::task::spawn_blocking(move || std::fs::read(path)).await;
        let text = read.unwrap_or_else(|e| Err(std::io::Error::other(e))).map_err(|e| Refusal {
            status: StatusCode::SERVICE_UNAVAILABLE,
            why: format!(
                "admin: the token file {} cannot be read ({e}): nothing can change state until it can\n",
                self.path.display()
            ),
        })?;
        let expected = token(&text).map_err(|e| Refusal {
            status: StatusCode::SERVICE_UNAVAILABLE,
            why: format!("admin: the token file {}: {e}\n", self.path.display()),
        })?;
        match bearer(headers) {
            Some(given) if same(given, expected) => Ok(()),
            Some(_) => Err(Refusal { status: StatusCode::UNAUTHORIZED, why: "admin: wrong bearer token\n".into() }),
            None => Err(Refusal {
                status: StatusCode::UNAUTHORIZED,
                why: "admin: this endpoint changes state and wants `Authorization: Bearer <token>` (the token in --admin-token-file)\n".into(),
            }),
        }
    }
}

/// The token in a token file's contents: one line of visible ASCII (what a header value can
/// carry unchanged), at least [`MIN_TOKEN_LEN`] characters; a final newline is allowed.
fn token(text: &[u8]) -> Result<&[u8], String> {
    let t = text.strip_suffix(b"\n").unwrap_or(text);
    let t = t.strip_suffix(b"\r").unwrap_or(t);
    if let Some(bad) = t.iter().find(|b| !b.is_ascii_graphic()) {
        return Err(format!(
            "the token holds a byte that is not visible ASCII (0x{bad:02x}); write one line of letters, digits and punctuation, e.g. `openssl rand -hex 32`"
        ));
    }
    if t.len() < MIN_TOKEN_LEN {
        return Err(format!(
            "the token is {} characters long; use at least {MIN_TOKEN_LEN} (e.g. `openssl rand -hex 32`)",
            t.len()
        ));
    }
    Ok(t)
}

/// The credentials of `Authorization: Bearer <credentials>` (the scheme is case-insensitive,
/// RFC 9110 §11.1).
fn bearer(headers: &HeaderMap) -> Option<&[u8]> {
    let value = headers.get(header::AUTHORIZATION)?.as_bytes();
    let (scheme, rest) = value.split_at(value.iter().position(|&b| b == b' ')?);
    scheme.eq_ignore_ascii_case(b"bearer").then(|| rest.trim_ascii())
}

/// Compares without stopping at the first difference, so the time taken does not tell an
/// attacker how much of a guess was right (the length can show; the token's length is no
/// secret worth keeping).
fn same(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn only_ip_addresses_and_localhost_are_accepted_as_host() {
        for ok in [
            "127.0.0.1:15000",
            "127.0.0.1",
            "10.1.2.3:15000",
            "[::1]:15000",
            "localhost:15000",
            "LOCALHOST",
            "a.localhost",
        ] {
            assert!(check(&Method::GET, &headers(&[("host", ok)])).is_ok(), "{ok}");
        }
        for bad in ["evil.example", "evil.example:15000", "127.0.0.1.evil.example", "", "[nothex]:1"] {
            let e = check(&Method::GET, &headers(&[("host", bad)])).unwrap_err();
            assert_eq!(e.status, StatusCode::FORBIDDEN, "{bad}");
        }
        assert!(check(&Method::GET, &HeaderMap::new()).is_err(), "no Host at all");
    }

    #[test]
    fn cross_site_and_form_posts_are_refused_and_curl_is_not() {
        let curl = headers(&[("host", "127.0.0.1:15000"), ("user-agent", "curl/8")]);
        assert!(check(&Method::POST, &curl).is_ok());
        let same = headers(&[("host", "127.0.0.1:15000"), ("origin", "http://127.0.0.1:15000")]);
        assert!(check(&Method::POST, &same).is_ok(), "a page served by the admin port itself");
        let refused = [
            headers(&[("host", "127.0.0.1:15000"), ("origin", "http://evil.example")]),
            headers(&[("host", "127.0.0.1:15000"), ("origin", "null")]),
            headers(&[("host", "127.0.0.1:15000"), ("sec-fetch-site", "cross-site")]),
            headers(&[("host", "127.0.0.1:15000"), ("content-type", "application/x-www-form-urlencoded")]),
            headers(&[("host", "127.0.0.1:15000"), ("content-type", "text/plain;charset=UTF-8")]),
            headers(&[("host", "127.0.0.1:15000"), ("content-type", "multipart/form-data; boundary=x")]),
        ];
        for h in refused {
            assert!(check(&Method::POST, &h).is_err(), "{h:?}");
        }
        // Reading is guarded by the Host check alone: another origin cannot read the answers.
        let get = headers(&[("host", "127.0.0.1:15000"), ("origin", "http://evil.example")]);
        assert!(check(&Method::GET, &get).is_ok());
    }

    const TOKEN: &str = "0123456789abcdef0123456789abcdef";

    #[test]
    fn a_token_file_holds_one_line_of_visible_ascii_long_enough() {
        assert_eq!(token(format!("{TOKEN}\n").as_bytes()).unwrap(), TOKEN.as_bytes());
        assert_eq!(token(format!("{TOKEN}\r\n").as_bytes()).unwrap(), TOKEN.as_bytes());
        assert!(token(b"").unwrap_err().contains("0 characters long"));
        assert!(token(b"short\n").unwrap_err().contains("use at least 32"));
        assert!(token(format!("{TOKEN} x").as_bytes()).unwrap_err().contains("0x20"));
        assert!(token(format!("{TOKEN}\n\n").as_bytes()).unwrap_err().contains("0x0a"), "one line");
        assert!(token("é0123456789abcdef0123456789abcdef".as_bytes()).unwrap_err().contains("0xc3"));
    }

    #[test]
    fn the_bearer_scheme_is_case_insensitive_and_anything_else_is_no_token() {
        assert_eq!(bearer(&headers(&[("authorization", "Bearer abc")])), Some(&b"abc"[..]));
        assert_eq!(bearer(&headers(&[("authorization", "bearer  abc ")])), Some(&b"abc"[..]));
        assert_eq!(bearer(&headers(&[("authorization", "Basic YWJj")])), None);
        assert_eq!(bearer(&headers(&[("authorization", "Bearer")])), None);
        assert_eq!(bearer(&HeaderMap::new()), None);
        assert!(same(b"abc", b"abc"));
        assert!(!same(b"abc", b"abd"));
        assert!(!same(b"abc", b"abcd"));
    }

    #[tokio::test]
    async fn the_token_is_read_for_each_request_and_a_broken_file_refuses_all() {
        let dir = std::env::temp_dir().join(format!("tripline-admin-token-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("token");
        std::fs::write(&path, format!("{TOKEN}\n")).unwrap();
        let file = TokenFile::open(&path).unwrap();
        let with = |t: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::AUTHORIZATION, format!("Bearer {t}").parse().unwrap());
            h
        };
        assert!(file.authorize(&with(TOKEN)).await.is_ok());
        assert_eq!(file.authorize(&HeaderMap::new()).await.unwrap_err().status, StatusCode::UNAUTHORIZED);
        assert_eq!(file.authorize(&with("nope")).await.unwrap_err().status, StatusCode::UNAUTHORIZED);
        let rotated = "fedcba9876543210fedcba9876543210";
        std::fs::write(&path, rotated).unwrap();
        assert_eq!(file.authorize(&with(TOKEN)).await.unwrap_err().status, StatusCode::UNAUTHORIZED);
        assert!(file.authorize(&with(rotated)).await.is_ok());
        std::fs::write(&path, "short").unwrap();
        assert_eq!(file.authorize(&with(rotated)).await.unwrap_err().status, StatusCode::SERVICE_UNAVAILABLE);
        std::fs::remove_file(&path).unwrap();
        let gone = file.authorize(&with(rotated)).await.unwrap_err();
        assert_eq!(gone.status, StatusCode::SERVICE_UNAVAILABLE, "fails closed: {}", gone.why);
        assert!(TokenFile::open(&path).unwrap_err().contains("cannot read"));
        std::fs::write(&path, "short").unwrap();
        assert!(TokenFile::open(&path).unwrap_err().contains("use at least 32"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
