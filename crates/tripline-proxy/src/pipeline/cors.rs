//! `corsPolicy` (Istio's `CorsPolicy`), as Envoy's CORS filter applies it:
//! - a preflight (`OPTIONS` with `Origin` and `Access-Control-Request-Method`) from an allowed
//!   origin is answered by the proxy (200, the allowed methods, headers, max age and
//!   credentials); from another origin it goes on to the upstream (`unmatchedPreflights:
//!   FORWARD`, Istio's default) or is answered without CORS headers (`IGNORE`), so the
//!   browser refuses it;
//! - an actual request from an allowed origin gets `Access-Control-Allow-Origin` (the origin
//!   itself, with `Vary: Origin`), `-Allow-Credentials` and `-Expose-Headers` on its response;
//!   from another origin the response is left as the upstream gave it.

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{HeaderMap, Method, Request, Response, StatusCode};
use tripline_config::plan::{CorsPlan, StringMatch};

use crate::body::ResponseBody;

#[derive(Debug)]
pub(crate) struct Cors {
    origins: Vec<StringMatch>,
    methods: Option<HeaderValue>,
    headers: Option<HeaderValue>,
    expose: Option<HeaderValue>,
    max_age: Option<HeaderValue>,
    credentials: bool,
    forward_unmatched: bool,
}

/// What CORS makes of one request.
pub(crate) enum Verdict {
    /// Not a cross-origin request, or one from an origin not allowed: nothing to add.
    None,
    /// A preflight the proxy answers.
    Answer(Box<Response<ResponseBody>>),
    /// An actual request from an allowed origin: its response gets the CORS headers.
    Allowed(HeaderValue),
}

impl Cors {
    pub(crate) fn compile(plan: &CorsPlan) -> Cors {
        let list = |l: &[String]| (!l.is_empty()).then(|| HeaderValue::from_str(&l.join(",")).ok()).flatten();
        Cors {
            origins: plan.allow_origins.clone(),
            methods: list(&plan.allow_methods),
            headers: list(&plan.allow_headers),
            expose: list(&plan.expose_headers),
            max_age: plan.max_age.map(|d| HeaderValue::from(d.as_secs())),
            credentials: plan.allow_credentials,
            forward_unmatched: plan.forward_unmatched_preflights,
        }
    }

    fn allows(&self, origin: &str) -> bool {
        self.origins.iter().any(|m| matches!(m, StringMatch::Exact(e) if e == "*") || m.matches(origin))
    }

    pub(crate) fn on_request<B>(&self, req: &Request<B>) -> Verdict {
        let Some(origin) = req.headers().get(header::ORIGIN) else { return Verdict::None };
        let allowed = origin.to_str().is_ok_and(|o| self.allows(o));
        let preflight = req.method() == Method::OPTIONS
            && req.headers().contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
        match (preflight, allowed) {
            (true, true) => Verdict::Answer(Box::new(self.preflight(origin.clone()))),
            (true, false) if !self.forward_unmatched => Verdict::Answer(Box::new(empty(StatusCode::OK))),
            (false, true) => Verdict::Allowed(origin.clone()),
            _ => Verdict::None,
        }
    }

    fn preflight(&self, origin: HeaderValue) -> Response<ResponseBody> {
        let mut resp = empty(StatusCode::OK);
        let h = resp.headers_mut();
        self.allow(h, origin);
        for (name, value) in [
            (header::ACCESS_CONTROL_ALLOW_METHODS, &self.methods),
            (header::ACCESS_CONTROL_ALLOW_HEADERS, &self.headers),
            (header::ACCESS_CONTROL_MAX_AGE, &self.max_age),
        ] {
            if let Some(v) = value {
                h.insert(name, v.clone());
            }
        }
        resp
    }

    /// The response phase for an allowed actual request.
    pub(crate) fn on_response(&self, headers: &mut HeaderMap, origin: HeaderValue) {
        self.allow(headers, origin);
        if let Some(expose) = &self.expose {
            headers.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, expose.clone());
        }
    }

    fn allow(&self, h: &mut HeaderMap, origin: HeaderValue) {
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        h.append(header::VARY, HeaderValue::from_static("Origin"));
        if self.credentials {
            h.insert(header::ACCESS_CONTROL_ALLOW_CREDENTIALS, HeaderValue::from_static("true"));
        }
    }
}

fn empty(status: StatusCode) -> Response<ResponseBody> {
    let mut resp = Response::new(ResponseBody::local(Bytes::new()));
    *resp.status_mut() = status;
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn cors(forward: bool) -> Cors {
        Cors::compile(&CorsPlan {
            allow_origins: vec![
                StringMatch::Exact("https://shop.example.com".into()),
                StringMatch::Regex(regex::Regex::new("^https://.*\\.partner\\.com$").unwrap()),
            ],
            allow_methods: vec!["GET".into(), "POST".into()],
            allow_headers: vec!["x-token".into()],
            expose_headers: vec!["x-trace".into()],
            max_age: Some(Duration::from_secs(600)),
            allow_credentials: true,
            forward_unmatched_preflights: forward,
        })
    }

    fn req(method: Method, origin: Option<&str>, preflight: bool) -> Request<()> {
        let mut b = Request::builder().method(method).uri("/");
        if let Some(o) = origin {
            b = b.header("origin", o);
        }
        if preflight {
            b = b.header("access-control-request-method", "POST");
        }
        b.body(()).unwrap()
    }

    #[test]
    fn an_allowed_preflight_is_answered_with_the_policy() {
        let Verdict::Answer(r) =
            cors(true).on_request(&req(Method::OPTIONS, Some("https://a.partner.com"), true))
        else {
            panic!("answered")
        };
        let h = r.headers();
        assert_eq!(h["access-control-allow-origin"], "https://a.partner.com");
        assert_eq!(h["access-control-allow-methods"], "GET,POST");
        assert_eq!(h["access-control-allow-headers"], "x-token");
        assert_eq!(h["access-control-max-age"], "600");
        assert_eq!(h["access-control-allow-credentials"], "true");
    }

    #[test]
    fn unmatched_preflights_are_forwarded_or_answered_bare() {
        let other = || req(Method::OPTIONS, Some("https://evil.example"), true);
        assert!(matches!(cors(true).on_request(&other()), Verdict::None), "FORWARD");
        let Verdict::Answer(r) = cors(false).on_request(&other()) else { panic!("IGNORE answers") };
        assert!(!r.headers().contains_key("access-control-allow-origin"));
    }

    #[test]
    fn actual_requests_from_allowed_origins_get_the_headers() {
        let c = cors(true);
        let Verdict::Allowed(origin) =
            c.on_request(&req(Method::GET, Some("https://shop.example.com"), false))
        else {
            panic!("allowed")
        };
        let mut h = HeaderMap::new();
        c.on_response(&mut h, origin);
        assert_eq!(
            (h["access-control-allow-origin"].to_str().unwrap(), h["vary"].to_str().unwrap()),
            ("https://shop.example.com", "Origin")
        );
        assert_eq!(h["access-control-expose-headers"], "x-trace");
        assert!(matches!(c.on_request(&req(Method::GET, None, false)), Verdict::None), "same-origin");
        assert!(matches!(
            c.on_request(&req(Method::GET, Some("https://evil.example"), false)),
            Verdict::None
        ));
    }
}
