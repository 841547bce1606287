//! Routes that answer by themselves: `redirect` (Istio's `HTTPRedirect`) and `directResponse`
//! (`HTTPDirectResponse`). Neither is a refusal, so neither carries `x-tripline-reason`; the
//! access log shows the route that answered.

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode};
use tripline_config::plan::{Answer as AnswerPlan, RedirectPlan, RedirectPort};

use crate::body::ResponseBody;

#[derive(Debug)]
pub(crate) enum Answer {
    Redirect(RedirectPlan),
    Direct { status: StatusCode, body: Bytes },
}

impl Answer {
    pub(crate) fn compile(plan: &AnswerPlan) -> Answer {
        match plan {
            AnswerPlan::Redirect(r) => Answer::Redirect(r.clone()),
            AnswerPlan::Direct { status, body } => Answer::Direct {
                status: StatusCode::from_u16(*status).unwrap_or(StatusCode::OK),
                body: Bytes::from(body.clone()),
            },
        }
    }

    pub(crate) fn respond<B>(&self, req: &Request<B>) -> Response<ResponseBody> {
        match self {
            Answer::Direct { status, body } => {
                let mut resp = Response::new(ResponseBody::local(body.clone()));
                *resp.status_mut() = *status;
                if !body.is_empty() {
                    resp.headers_mut()
                        .insert(http::header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
                }
                resp
            }
            Answer::Redirect(r) => {
                let mut resp = Response::new(ResponseBody::local(Bytes::new()));
                *resp.status_mut() = StatusCode::from_u16(r.status).unwrap_or(StatusCode::MOVED_PERMANENTLY);
                if let Ok(location) = HeaderValue::try_from(location(r, req)) {
                    resp.headers_mut().insert(http::header::LOCATION, location);
                }
                resp
            }
        }
    }
}

/// A plaintext server's `tls.httpsRedirect`: `301` to the same host and path over `https`
/// (its default port, as Istio's redirect), before any route is looked at.
pub(crate) fn to_https<B>(req: &Request<B>) -> Response<ResponseBody> {
    let (host, _) = split_port(crate::headers::authority(req).unwrap_or(""));
    let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let mut resp = Response::new(ResponseBody::local(Bytes::new()));
    *resp.status_mut() = StatusCode::MOVED_PERMANENTLY;
    if let Ok(location) = HeaderValue::try_from(format!("https://{host}{path}")) {
        resp.headers_mut().insert(http::header::LOCATION, location);
    }
    resp
}

/// The redirect's `Location`: the request's URL with the parts the redirect names replaced.
fn location<B>(r: &RedirectPlan, req: &Request<B>) -> String {
    let req_scheme = req.uri().scheme_str().unwrap_or("http");
    let scheme = r.scheme.as_deref().unwrap_or(req_scheme);
    let (req_host, req_port) = split_port(crate::headers::authority(req).unwrap_or(""));
    let (host, written_port) = match &r.authority {
        Some(a) => split_port(a),
        None => (req_host, None),
    };
    let port = match r.port {
        RedirectPort::Fixed(p) => Some(p.to_string()),
        RedirectPort::ProtocolDefault => None,
        RedirectPort::RequestPort => req_port.map(str::to_string),
        RedirectPort::Unchanged if r.authority.is_some() => written_port.map(str::to_string),
        RedirectPort::Unchanged if r.scheme.as_deref().is_some_and(|s| s != req_scheme) => None,
        RedirectPort::Unchanged => req_port.map(str::to_string),
    };
    let default = if scheme == "https" { "443" } else { "80" };
    let port = port.filter(|p| p != default).map(|p| format!(":{p}")).unwrap_or_default();
    let path_and_query = match &r.uri {
        Some(u) if u.contains('?') => u.clone(),
        Some(u) => match req.uri().query() {
            Some(q) => format!("{u}?{q}"),
            None => u.clone(),
        },
        None => req.uri().path_and_query().map_or("/".into(), |pq| pq.as_str().to_string()),
    };
    format!("{scheme}://{host}{port}{path_and_query}")
}

/// `host` and `port` of `host[:port]`, an IPv6 host kept in its brackets.
fn split_port(authority: &str) -> (&str, Option<&str>) {
    let host_end = if authority.starts_with('[') { authority.find(']').map_or(0, |i| i + 1) } else { 0 };
    match authority[host_end..].rfind(':') {
        Some(i) if authority[host_end + i + 1..].bytes().all(|b| b.is_ascii_digit()) => {
            (&authority[..host_end + i], Some(&authority[host_end + i + 1..]))
        }
        _ => (authority, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(
        uri: Option<&str>,
        authority: Option<&str>,
        port: RedirectPort,
        scheme: Option<&str>,
    ) -> RedirectPlan {
        RedirectPlan {
            uri: uri.map(Into::into),
            authority: authority.map(Into::into),
            port,
            scheme: scheme.map(Into::into),
            status: 301,
        }
    }

    fn loc(r: &RedirectPlan, host: &str, target: &str) -> String {
        location(r, &Request::get(target).header("host", host).body(()).unwrap())
    }

    #[test]
    fn location_replaces_only_what_the_redirect_names() {
        let uri = plan(Some("/v2/items"), None, RedirectPort::Unchanged, None);
        assert_eq!(loc(&uri, "shop.local:8080", "/items?page=2"), "http://shop.local:8080/v2/items?page=2");
        let host = plan(None, Some("new.local"), RedirectPort::Unchanged, None);
        assert_eq!(loc(&host, "shop.local:8080", "/a"), "http://new.local/a");
        let https = plan(None, None, RedirectPort::Unchanged, Some("https"));
        assert_eq!(
            loc(&https, "shop.local:8080", "/a"),
            "https://shop.local/a",
            "a new scheme drops the old port"
        );
        let fixed = plan(None, None, RedirectPort::Fixed(8443), Some("https"));
        assert_eq!(loc(&fixed, "shop.local", "/a"), "https://shop.local:8443/a");
        let default = plan(None, None, RedirectPort::Fixed(443), Some("https"));
        assert_eq!(
            loc(&default, "shop.local", "/a"),
            "https://shop.local/a",
            "the scheme's default port is not written"
        );
        let from_req = plan(None, Some("b.local"), RedirectPort::RequestPort, None);
        assert_eq!(loc(&from_req, "a.local:9000", "/a"), "http://b.local:9000/a");
        let proto = plan(None, None, RedirectPort::ProtocolDefault, None);
        assert_eq!(loc(&proto, "a.local:9000", "/a"), "http://a.local/a");
        let query = plan(Some("/new?x=1"), None, RedirectPort::Unchanged, None);
        assert_eq!(
            loc(&query, "a.local", "/old?y=2"),
            "http://a.local/new?x=1",
            "a uri with a query replaces it"
        );
        assert_eq!(loc(&uri, "[::1]:8080", "/"), "http://[::1]:8080/v2/items");
    }

    #[test]
    fn a_direct_response_has_its_status_and_body() {
        let a = Answer::compile(&AnswerPlan::Direct { status: 418, body: b"teapot".to_vec() });
        let r = a.respond(&Request::get("/").body(()).unwrap());
        assert_eq!(r.status(), 418);
        assert_eq!(r.headers()["content-type"], "text/plain");
        assert!(!r.headers().contains_key(crate::reason::REASON_HEADER));
    }
}
