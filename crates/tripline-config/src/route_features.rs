//! What an HTTP route does besides choosing a destination, as Istio's `HTTPRoute` says it:
//! `headers`, `rewrite`, `redirect`, `directResponse` and `fault`, decoded with their
//! diagnostics and kept as plain data in the route's plan. The proxy compiles each into its
//! request-pipeline feature once per reload (see `tripline_proxy::pipeline`).
//!
//! Header names and values are checked here with the `http` crate's own rules, so a name the
//! proxy could not send is a config error with its line, never a request-time surprise.

use std::time::Duration;

use serde::Serialize;

use crate::decode::{join, Cx, Fields, Schema};
use crate::plan::StringMatch;
use crate::yaml::{Kind, Node, Pos};
use crate::Severity;

/// The features of one `http[]` entry; `Default` is "forward the request unchanged".
#[derive(Debug, Clone, Default, Serialize)]
pub struct RouteFeatures {
    /// `headers` at the route level.
    #[serde(skip_serializing_if = "HeaderPlan::is_empty")]
    pub headers: HeaderPlan,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rewrite: Option<RewritePlan>,
    /// `redirect` or `directResponse`: the route answers by itself and has no destination.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub answer: Option<Answer>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fault: Option<FaultPlan>,
    /// `mirror` / `mirrors[]`, resolved to clusters when the route is compiled.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub mirrors: Vec<MirrorPlan>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cors: Option<CorsPlan>,
    /// From the `rateLimit` of the ResiliencePolicy that targets the route.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<crate::rate_limit::RateLimitPlan>,
    /// From the `fallback` of the ResiliencePolicy that targets the route.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fallback: Option<crate::fallback::FallbackPlan>,
}

impl RouteFeatures {
    /// Whether the route does nothing but forward (the proxy then runs no feature code).
    pub fn is_empty(&self) -> bool {
        self.headers.is_empty()
            && self.rewrite.is_none()
            && self.answer.is_none()
            && self.fault.is_none()
            && self.mirrors.is_empty()
            && self.cors.is_none()
            && self.rate_limit.is_none()
            && self.fallback.is_none()
    }
}

/// Istio's `CorsPolicy`: which cross-origin callers a browser may let read the route's
/// responses, and the preflight answers the proxy gives itself.
#[derive(Debug, Clone, Serialize)]
pub struct CorsPlan {
    /// `allowOrigins` (and the deprecated exact `allowOrigin`); `*` as an exact origin allows
    /// every origin.
    pub allow_origins: Vec<StringMatch>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub allow_methods: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub allow_headers: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub expose_headers: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "crate::model::ser_opt_duration")]
    pub max_age: Option<Duration>,
    pub allow_credentials: bool,
    /// `unmatchedPreflights: FORWARD` (Istio's default): a preflight from an origin not allowed
    /// goes on to the upstream; `IGNORE`: the proxy answers it, without CORS headers.
    pub forward_unmatched_preflights: bool,
}

/// A mirror: copies of a share of the route's requests go to `cluster`, their responses
/// discarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct MirrorPlan {
    pub cluster: crate::plan::ClusterId,
    pub share: Fraction,
}

/// Istio's `Headers`: edits of the request sent upstream and of the response sent back.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct HeaderPlan {
    #[serde(skip_serializing_if = "HeaderOps::is_empty")]
    pub request: HeaderOps,
    #[serde(skip_serializing_if = "HeaderOps::is_empty")]
    pub response: HeaderOps,
}

impl HeaderPlan {
    pub fn is_empty(&self) -> bool {
        self.request.is_empty() && self.response.is_empty()
    }
}

/// Istio's `HeaderOperations`, applied in the order remove, set, add (names lower-cased).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct HeaderOps {
    /// Replaces every value of the header.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub set: Vec<(String, String)>,
    /// Appends a value, keeping those already there.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub add: Vec<(String, String)>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub remove: Vec<String>,
}

impl HeaderOps {
    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.add.is_empty() && self.remove.is_empty()
    }
}

/// Istio's `HTTPRewrite`.
#[derive(Debug, Clone, Serialize)]
pub struct RewritePlan {
    /// `uri`: replaces the prefix the request matched with (a `prefix` match), else the whole
    /// path; the query is kept.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uri: Option<String>,
    /// `uriRegexRewrite`: every match of the pattern in the path replaced; `\1` in the
    /// rewrite (RE2's spelling) is stored as `${1}`, the `regex` crate's.
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "ser_regex_rewrite")]
    pub uri_regex: Option<(regex::Regex, String)>,
    /// `authority`: the `Host` / `:authority` sent upstream.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub authority: Option<String>,
}

fn ser_regex_rewrite<S: serde::Serializer>(
    r: &Option<(regex::Regex, String)>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match r {
        Some((re, with)) => s.serialize_str(&format!("s/{}/{with}/", re.as_str())),
        None => s.serialize_none(),
    }
}

/// A route that answers by itself.
#[derive(Debug, Clone, Serialize)]
pub enum Answer {
    Redirect(RedirectPlan),
    /// `directResponse`: a status and a body (from `body.string` or base64 `body.bytes`).
    Direct {
        status: u16,
        body: Vec<u8>,
    },
}

/// Istio's `HTTPRedirect`: `Location` is the request's URL with the parts written here
/// replaced.
#[derive(Debug, Clone, Serialize)]
pub struct RedirectPlan {
    /// Replaces the path (and the query, if it has a `?`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uri: Option<String>,
    /// Replaces the host (and its port, if it names one).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub authority: Option<String>,
    pub port: RedirectPort,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scheme: Option<String>,
    /// `redirectCode`, 301 by default.
    pub status: u16,
}

/// The port of a redirect's `Location`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum RedirectPort {
    /// Neither `port` nor `derivePort`: the request's port, unless `authority` or `scheme`
    /// changed (then none, the scheme's default).
    Unchanged,
    /// `port: N`.
    Fixed(u16),
    /// `derivePort: FROM_PROTOCOL_DEFAULT`: none written, the scheme's default.
    ProtocolDefault,
    /// `derivePort: FROM_REQUEST_PORT`: the port the request was sent to.
    RequestPort,
}

/// Istio's `HTTPFaultInjection`, each part drawn independently per request.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FaultPlan {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delay: Option<FaultDelayPlan>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub abort: Option<(AbortWith, Fraction)>,
}

/// `fault.delay`: requests held for `fixed` before they go on.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct FaultDelayPlan {
    #[serde(serialize_with = "crate::model::ser_duration")]
    pub fixed: Duration,
    pub share: Fraction,
}

/// A share of requests, in millionths (Istio's percentages have up to 4 decimals).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Fraction(pub u32);

impl Fraction {
    pub const MILLION: u32 = 1_000_000;

    pub fn of_percent(percent: f64) -> Fraction {
        Fraction((percent.clamp(0.0, 100.0) * 10_000.0).round() as u32)
    }
}

/// What an injected abort answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum AbortWith {
    /// `httpStatus`.
    Http(u16),
    /// `grpcStatus`, as its code (a trailers-only gRPC response).
    Grpc(u8),
}

const HEADERS: Schema = Schema::new("Istio's Headers", &["request", "response"]);
const HEADER_OPS: Schema = Schema::new("Istio's HeaderOperations", &["set", "add", "remove"]);
const REWRITE: Schema = Schema::new("Istio's HTTPRewrite", &["uri", "authority", "uriRegexRewrite"]);
const REGEX_REWRITE: Schema = Schema::new("Istio's RegexRewrite", &["match", "rewrite"]);
const REDIRECT: Schema = Schema::new(
    "Istio's HTTPRedirect",
    &["uri", "authority", "port", "derivePort", "scheme", "redirectCode"],
);
const DIRECT: Schema = Schema::new("Istio's HTTPDirectResponse", &["status", "body"]);
const BODY: Schema = Schema::new("Istio's HTTPBody", &["string", "bytes"]);
const CORS: Schema = Schema::new(
    "Istio's CorsPolicy",
    &[
        "allowOrigins",
        "allowOrigin",
        "allowMethods",
        "allowHeaders",
        "exposeHeaders",
        "maxAge",
        "allowCredentials",
        "unmatchedPreflights",
    ],
);

/// `corsPolicy`.
pub fn cors(cx: &mut Cx, node: &Node, path: &str) -> Option<CorsPlan> {
    let f = cx.fields(node, path, &CORS)?;
    let mut allow_origins = Vec::new();
    if let Some((n, p)) = f.value("allowOrigins") {
        for (on, op) in cx.list(n, &p, "string matches") {
            allow_origins.push(crate::model::string_match(cx, on, &op)?);
        }
    }
    if let Some((n, p)) = f.value("allowOrigin") {
        allow_origins.extend(cx.strings(n, &p).into_iter().map(|(o, _, _)| StringMatch::Exact(o)));
    }
    if allow_origins.is_empty() {
        cx.required(&f, "allowOrigins", "the origins allowed, e.g. [{exact: https://shop.example.com}]");
        return None;
    }
    let words = |cx: &mut Cx, field: &str, header_names: bool| -> Option<Vec<String>> {
        let Some((n, p)) = f.value(field) else { return Some(Vec::new()) };
        let mut out = Vec::new();
        for (w, pos, wp) in cx.strings(n, &p) {
            let ok = if header_names {
                http::HeaderName::from_bytes(w.as_bytes()).is_ok()
            } else {
                http::Method::from_bytes(w.as_bytes()).is_ok()
            };
            if !ok {
                let what = if header_names { "header name" } else { "method" };
                cx.report(Severity::Error, pos, &wp, format!("`{w}` is not a valid {what}"));
                return None;
            }
            out.push(w);
        }
        Some(out)
    };
    let allow_methods = words(cx, "allowMethods", false)?;
    let allow_headers = words(cx, "allowHeaders", true)?;
    let expose_headers = words(cx, "exposeHeaders", true)?;
    let max_age = match f.value("maxAge") {
        Some((n, p)) => Some(cx.duration(n, &p, true)?),
        None => None,
    };
    let allow_credentials = match f.value("allowCredentials") {
        Some((n, p)) => cx.bool(n, &p)?,
        None => false,
    };
    let forward_unmatched_preflights = match f.value("unmatchedPreflights") {
        Some((n, p)) => cx.one_of(n, &p, &["FORWARD", "IGNORE", "UNSPECIFIED"], "")? != "IGNORE",
        None => true,
    };
    Some(CorsPlan {
        allow_origins,
        allow_methods,
        allow_headers,
        expose_headers,
        max_age,
        allow_credentials,
        forward_unmatched_preflights,
    })
}

/// `headers` of a route or of one of its destinations.
pub fn headers(cx: &mut Cx, node: &Node, path: &str) -> HeaderPlan {
    let Some(f) = cx.fields(node, path, &HEADERS) else { return HeaderPlan::default() };
    let mut plan = HeaderPlan::default();
    if let Some((n, p)) = f.value("request") {
        plan.request = header_ops(cx, n, &p, true);
    }
    if let Some((n, p)) = f.value("response") {
        plan.response = header_ops(cx, n, &p, false);
    }
    plan
}

/// Headers the proxy owns on the way up: an edit of them would break the request's framing
/// or routing rather than change what the upstream sees.
const PROXY_OWNED: &[&str] =
    &["content-length", "transfer-encoding", "connection", "keep-alive", "upgrade", "te", "trailer"];

fn header_ops(cx: &mut Cx, node: &Node, path: &str, request: bool) -> HeaderOps {
    let Some(f) = cx.fields(node, path, &HEADER_OPS) else { return HeaderOps::default() };
    let mut ops = HeaderOps::default();
    let check_name = |cx: &mut Cx, name: &str, at: Pos, p: &str| -> Option<String> {
        let lower = name.to_ascii_lowercase();
        let error = |cx: &mut Cx, msg: String| cx.report(Severity::Error, at, p, msg);
        if http::HeaderName::from_bytes(lower.as_bytes()).is_err() {
            error(cx, format!("`{name}` is not a valid header name (RFC 9110 §5.1 token characters only)"));
            return None;
        }
        if PROXY_OWNED.contains(&lower.as_str()) || (request && lower == "host") {
            let fix = if lower == "host" { "; use `rewrite.authority` to change it" } else { "" };
            error(cx, format!("`{name}` is managed by the proxy and cannot be edited here{fix}"));
            return None;
        }
        Some(lower)
    };
    for (field, list) in [("set", &mut ops.set), ("add", &mut ops.add)] {
        let Some((n, p)) = f.value(field) else { continue };
        let Kind::Map(entries) = &n.kind else {
            cx.error(n, &p, format!("expected a mapping of header names to values, found {}", n.describe()));
            continue;
        };
        for (k, v) in entries {
            let Some(name) = k.as_scalar() else { continue };
            let vp = join(&p, name);
            let Some(name) = check_name(cx, name, k.pos, &vp) else { continue };
            let Some(value) = cx.string(v, &vp) else { continue };
            if http::HeaderValue::from_str(&value).is_err() {
                cx.error(
                    v,
                    &vp,
                    "not a valid header value: visible ASCII, spaces and tabs only, no line breaks",
                );
                continue;
            }
            list.push((name, value));
        }
    }
    if let Some((n, p)) = f.value("remove") {
        for (name, pos, np) in cx.strings(n, &p) {
            if let Some(name) = check_name(cx, &name, pos, &np) {
                ops.remove.push(name);
            }
        }
    }
    ops
}

pub fn rewrite(cx: &mut Cx, node: &Node, path: &str) -> Option<RewritePlan> {
    let f = cx.fields(node, path, &REWRITE)?;
    let uri = f.value("uri").and_then(|(n, p)| cx.string(n, &p));
    let uri_regex = match f.value("uriRegexRewrite") {
        Some((n, p)) => Some(regex_rewrite(cx, n, &p)?),
        None => None,
    };
    if let (Some(_), Some(_), Some((n, p))) = (&uri, &uri_regex, f.value("uriRegexRewrite")) {
        cx.error(n, &p, "`uri` and `uriRegexRewrite` both rewrite the path: keep one");
        return None;
    }
    if let Some(u) = &uri {
        if !u.is_empty() && !u.starts_with('/') {
            let (n, p) = f.value("uri")?;
            cx.error(n, &p, format!("`{u}` is not a path: a rewritten uri starts with `/`"));
            return None;
        }
    }
    let authority = match f.value("authority") {
        Some((n, p)) => Some(authority(cx, n, &p)?),
        None => None,
    };
    Some(RewritePlan { uri, uri_regex, authority })
}

/// `host` or `host:port`.
fn authority(cx: &mut Cx, node: &Node, path: &str) -> Option<String> {
    let a = cx.name(node, path)?;
    if http::uri::Authority::try_from(a.as_str()).is_err() || a.contains('@') {
        cx.error(node, path, format!("`{a}` is not an authority: expected host or host:port"));
        return None;
    }
    Some(a)
}

fn regex_rewrite(cx: &mut Cx, node: &Node, path: &str) -> Option<(regex::Regex, String)> {
    let f = cx.fields(node, path, &REGEX_REWRITE)?;
    let Some((mn, mp)) = f.value("match") else {
        cx.required(&f, "match", "an RE2 regular expression");
        return None;
    };
    let pattern = cx.name(mn, &mp)?;
    let re = match regex::RegexBuilder::new(&pattern).size_limit(1 << 20).build() {
        Ok(re) => re,
        Err(e) => {
            cx.error(
                mn,
                &mp,
                format!("invalid regex (RE2 syntax expected): {}", crate::model::regex_error(&e)),
            );
            return None;
        }
    };
    let Some((rn, rp)) = f.value("rewrite") else {
        cx.required(&f, "rewrite", "the replacement, with \\1 for the first group");
        return None;
    };
    let with = cx.string(rn, &rp)?;
    let (with, highest) = re2_replacement(&with);
    if highest >= re.captures_len() {
        cx.error(
            rn,
            &rp,
            format!(
                "`\\{highest}` names a group the pattern does not have ({} groups)",
                re.captures_len() - 1
            ),
        );
        return None;
    }
    Some((re, with))
}

/// RE2's replacement (`\1`, `\\` for a backslash) in the `regex` crate's spelling (`${1}`,
/// `$$` for a dollar), and the highest group it names.
fn re2_replacement(s: &str) -> (String, usize) {
    let (mut out, mut highest) = (String::with_capacity(s.len()), 0);
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '$' => out.push_str("$$"),
            '\\' => match chars.peek().copied() {
                Some(d @ '0'..='9') => {
                    chars.next();
                    let n = d as usize - '0' as usize;
                    highest = highest.max(n);
                    out.push_str(&format!("${{{n}}}"));
                }
                Some('\\') => {
                    chars.next();
                    out.push('\\');
                }
                _ => out.push('\\'),
            },
            c => out.push(c),
        }
    }
    (out, highest)
}

/// `redirect` and `directResponse` (at most one of them, and no `route` beside).
pub fn answer(cx: &mut Cx, f: &Fields<'_>) -> Option<Answer> {
    let given: Vec<&str> = ["route", "redirect", "directResponse"].into_iter().filter(|k| f.has(k)).collect();
    if given.len() > 1 {
        let (n, p) = f.value(given[1])?;
        cx.error(
            n,
            &p,
            format!(
                "an HTTP route has one of route, redirect, directResponse: found {}",
                given.join(" and ")
            ),
        );
        return None;
    }
    if let Some((n, p)) = f.value("redirect") {
        return redirect(cx, n, &p).map(Answer::Redirect);
    }
    let (n, p) = f.value("directResponse")?;
    direct_response(cx, n, &p)
}

fn redirect(cx: &mut Cx, node: &Node, path: &str) -> Option<RedirectPlan> {
    let f = cx.fields(node, path, &REDIRECT)?;
    let uri = match f.value("uri") {
        Some((n, p)) => {
            let u = cx.name(n, &p)?;
            if !u.starts_with('/') || http::uri::PathAndQuery::try_from(u.as_str()).is_err() {
                cx.error(n, &p, format!("`{u}` is not a path: a redirect's uri starts with `/`"));
                return None;
            }
            Some(u)
        }
        None => None,
    };
    let authority = match f.value("authority") {
        Some((n, p)) => Some(authority(cx, n, &p)?),
        None => None,
    };
    let scheme = match f.value("scheme") {
        Some((n, p)) => Some(cx.one_of(n, &p, &["http", "https"], "")?),
        None => None,
    };
    let port = match (f.value("port"), f.value("derivePort")) {
        (Some((n, p)), None) => RedirectPort::Fixed(cx.port(n, &p)?),
        (None, Some((n, p))) => {
            match cx.one_of(n, &p, &["FROM_PROTOCOL_DEFAULT", "FROM_REQUEST_PORT"], "")?.as_str() {
                "FROM_PROTOCOL_DEFAULT" => RedirectPort::ProtocolDefault,
                _ => RedirectPort::RequestPort,
            }
        }
        (None, None) => RedirectPort::Unchanged,
        (Some(_), Some((n, p))) => {
            cx.error(n, &p, "`port` and `derivePort` both set the redirect's port: keep one");
            return None;
        }
    };
    let status = match f.value("redirectCode") {
        Some((n, p)) => {
            let code = cx.int(n, &p, 300, 399)? as u16;
            if !matches!(code, 301 | 302 | 303 | 307 | 308) {
                cx.error(
                    n,
                    &p,
                    format!("redirectCode {code} is not a redirect: expected 301, 302, 303, 307 or 308"),
                );
                return None;
            }
            code
        }
        None => 301,
    };
    Some(RedirectPlan { uri, authority, port, scheme, status })
}

fn direct_response(cx: &mut Cx, node: &Node, path: &str) -> Option<Answer> {
    let f = cx.fields(node, path, &DIRECT)?;
    let Some((sn, sp)) = f.value("status") else {
        cx.required(&f, "status", "an HTTP status code (200 to 599)");
        return None;
    };
    let status = cx.int(sn, &sp, 200, 599)? as u16;
    let body = match f.value("body") {
        Some((n, p)) => {
            let bf = cx.fields(n, &p, &BODY)?;
            match (bf.value("string"), bf.value("bytes")) {
                (Some((n, p)), None) => cx.string(n, &p)?.into_bytes(),
                (None, Some((n, p))) => {
                    let text = cx.string(n, &p)?;
                    match base64_decode(&text) {
                        Some(b) => b,
                        None => {
                            cx.error(
                                n,
                                &p,
                                "`bytes` is not base64 (standard alphabet, as protobuf's JSON writes bytes)",
                            );
                            return None;
                        }
                    }
                }
                (Some(_), Some((n, p))) => {
                    cx.error(n, &p, "a body is `string` or `bytes`, not both");
                    return None;
                }
                (None, None) => Vec::new(),
            }
        }
        None => Vec::new(),
    };
    Some(Answer::Direct { status, body })
}

/// Standard base64 (RFC 4648 §4; padding optional, whitespace skipped), as protobuf's JSON
/// mapping writes `bytes`; `None` for anything else.
fn base64_decode(text: &str) -> Option<Vec<u8>> {
    let digit = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let clean: Vec<u8> = text.bytes().filter(|c| !c.is_ascii_whitespace()).collect();
    let data = clean.strip_suffix(b"==").or_else(|| clean.strip_suffix(b"=")).unwrap_or(&clean);
    if data.len() % 4 == 1 || (data.len() != clean.len() && !clean.len().is_multiple_of(4)) {
        return None;
    }
    let mut out = Vec::with_capacity(data.len() * 3 / 4);
    for chunk in data.chunks(4) {
        let mut acc = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            acc |= digit(c)? << (18 - 6 * i);
        }
        let bytes = acc.to_be_bytes();
        out.extend_from_slice(&bytes[1..chunk.len()]);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_as_protobuf_writes_it() {
        assert_eq!(base64_decode("aGVsbG8=").unwrap(), b"hello");
        assert_eq!(base64_decode("aGVsbG8").unwrap(), b"hello");
        assert_eq!(base64_decode("aGVs bG8h").unwrap(), b"hell\x6f!");
        assert_eq!(base64_decode("").unwrap(), b"");
        assert_eq!(base64_decode("/w==").unwrap(), [0xff]);
        assert!(base64_decode("a").is_none());
        assert!(base64_decode("aGV*").is_none());
        assert!(base64_decode("aGVsbG8=x").is_none());
    }

    #[test]
    fn re2_groups_become_regex_crate_groups() {
        assert_eq!(re2_replacement(r"/v2/\1/x"), ("/v2/${1}/x".to_string(), 1));
        assert_eq!(re2_replacement(r"\2-\1"), ("${2}-${1}".to_string(), 2));
        assert_eq!(re2_replacement(r"$5 \\ z"), ("$$5 \\ z".to_string(), 0));
        let re = regex::Regex::new("^/api/(v[0-9])/(.*)$").unwrap();
        let (with, _) = re2_replacement(r"/\2/\1");
        assert_eq!(re.replace_all("/api/v1/users", with.as_str()), "/users/v1");
    }

    #[test]
    fn fractions_are_millionths() {
        assert_eq!(Fraction::of_percent(10.0), Fraction(100_000));
        assert_eq!(Fraction::of_percent(0.0001), Fraction(1));
        assert_eq!(Fraction::of_percent(100.0).0, Fraction::MILLION);
    }
}
