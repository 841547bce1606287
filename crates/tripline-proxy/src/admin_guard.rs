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
}
