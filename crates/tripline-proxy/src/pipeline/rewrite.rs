//! `rewrite` (Istio's `HTTPRewrite`): the path and authority the upstream is sent, with
//! Envoy's semantics, since that is what Istio users' rewrites were written against:
//! - `uri` replaces the prefix the request matched (a `prefix` uri match; a route without a
//!   uri match matches the prefix `/`), else the whole path; the query is kept. As in Envoy,
//!   it is a plain replacement: prefix `/api/` with `uri: /` turns `/api/users` into `/users`,
//!   prefix `/api` with `uri: /` turns it into `//users`.
//! - `uriRegexRewrite` replaces every match of its pattern in the path (not the query).
//! - `authority` replaces `Host` / `:authority`.

use http::uri::{Authority, PathAndQuery};
use http::{HeaderValue, Request, Uri};
use tripline_config::plan::{RewritePlan, StringMatch};

#[derive(Debug)]
pub(crate) struct Rewrite {
    path: PathRewrite,
    authority: Option<(Authority, HeaderValue)>,
}

#[derive(Debug)]
enum PathRewrite {
    None,
    Prefix(String),
    Regex(regex::Regex, String),
}

impl Rewrite {
    pub(crate) fn compile(plan: &RewritePlan) -> Rewrite {
        let path = match (&plan.uri, &plan.uri_regex) {
            (Some(uri), _) => PathRewrite::Prefix(uri.clone()),
            (None, Some((re, with))) => PathRewrite::Regex(re.clone(), with.clone()),
            (None, None) => PathRewrite::None,
        };
        let authority = plan
            .authority
            .as_deref()
            .and_then(|a| Some((Authority::try_from(a).ok()?, HeaderValue::from_str(a).ok()?)));
        Rewrite { path, authority }
    }

    /// Rewrites the request before it is prepared for the upstream. `matched` is the uri match
    /// of the route's match entry that took the request (`None`: the entry had no uri match).
    pub(crate) fn apply<B>(&self, req: &mut Request<B>, matched: Option<&StringMatch>) {
        let new_path = match &self.path {
            PathRewrite::None => None,
            PathRewrite::Prefix(with) => Some(replace_prefix(req.uri(), matched, with)),
            PathRewrite::Regex(re, with) => {
                let uri = req.uri();
                let path = re.replace_all(uri.path(), with.as_str());
                Some(match uri.query() {
                    Some(q) => format!("{path}?{q}"),
                    None => path.into_owned(),
                })
            }
        };
        if let Some(pq) = new_path.and_then(|p| PathAndQuery::try_from(p).ok()) {
            let mut parts = std::mem::take(req.uri_mut()).into_parts();
            parts.path_and_query = Some(pq);
            *req.uri_mut() = Uri::from_parts(parts).unwrap_or_default();
        }
        if let Some((authority, value)) = &self.authority {
            if req.uri().authority().is_some() {
                let mut parts = std::mem::take(req.uri_mut()).into_parts();
                parts.authority = Some(authority.clone());
                *req.uri_mut() = Uri::from_parts(parts).unwrap_or_default();
            }
            req.headers_mut().insert(http::header::HOST, value.clone());
        }
    }
}

/// `uri`'s replacement: of the matched prefix, else of the whole path; the query kept.
fn replace_prefix(uri: &Uri, matched: Option<&StringMatch>, with: &str) -> String {
    let path = uri.path();
    let rest = match matched {
        Some(StringMatch::Prefix(p)) => path.get(p.len()..).unwrap_or(""),
        Some(_) => "",
        None => path.strip_prefix('/').unwrap_or(path),
    };
    match uri.query() {
        Some(q) => format!("{with}{rest}?{q}"),
        None => format!("{with}{rest}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rewrite(uri: Option<&str>, regex: Option<(&str, &str)>, authority: Option<&str>) -> Rewrite {
        Rewrite::compile(&RewritePlan {
            uri: uri.map(Into::into),
            uri_regex: regex.map(|(r, w)| (regex::Regex::new(r).unwrap(), w.to_string())),
            authority: authority.map(Into::into),
        })
    }

    fn applied(r: &Rewrite, target: &str, matched: Option<StringMatch>) -> (String, Option<String>) {
        let mut req = Request::get(target).header("host", "orig.local").body(()).unwrap();
        r.apply(&mut req, matched.as_ref());
        let host = req.headers().get("host").map(|h| h.to_str().unwrap().to_string());
        (req.uri().to_string(), host)
    }

    #[test]
    fn uri_replaces_the_matched_prefix_or_the_whole_path() {
        let r = rewrite(Some("/v2/"), None, None);
        let prefix = || Some(StringMatch::Prefix("/api/".into()));
        assert_eq!(applied(&r, "/api/users?id=1", prefix()).0, "/v2/users?id=1");
        assert_eq!(
            applied(&r, "/API/users", Some(StringMatch::Prefix("/api/".into()))).0,
            "/v2/users",
            "ignoreUriCase"
        );
        assert_eq!(applied(&r, "/exact?q", Some(StringMatch::Exact("/exact".into()))).0, "/v2/?q");
        assert_eq!(applied(&r, "/any/thing", None).0, "/v2/any/thing", "no uri match: the prefix `/`");
        let envoy = rewrite(Some("/"), None, None);
        assert_eq!(applied(&envoy, "/api/users", Some(StringMatch::Prefix("/api".into()))).0, "//users");
    }

    #[test]
    fn regex_rewrites_the_path_and_keeps_the_query() {
        let r = rewrite(None, Some(("^/service/([^/]+)(/.*)$", "${2}/instance/${1}")), None);
        assert_eq!(
            applied(&r, "/service/foo/v1/api?x=/service/a/b", None).0,
            "/v1/api/instance/foo?x=/service/a/b"
        );
        assert_eq!(applied(&r, "/other", None).0, "/other", "no match, no change");
    }

    #[test]
    fn authority_replaces_host_and_an_absolute_target_s_authority() {
        let r = rewrite(None, None, Some("new.local:8080"));
        assert_eq!(applied(&r, "/x", None), ("/x".into(), Some("new.local:8080".into())));
        assert_eq!(applied(&r, "http://orig.local/x", None).0, "http://new.local:8080/x");
    }
}
