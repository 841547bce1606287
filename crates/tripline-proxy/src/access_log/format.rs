//! Access log lines as text, from an Envoy-style format string (what Istio's
//! `meshConfig.accessLogFormat` takes): literal text with `%OPERATOR%`s, each replaced by a
//! field of the request or `-` when it has none. Parsed once at start, so an unknown operator
//! is an error then, not a silent `-` in every line.
//!
//! Operators: `START_TIME`, `REQ(NAME)` and `REQ(NAME?OTHER)` (a request header, or the
//! pseudo-headers `:METHOD`, `:PATH` (with the query), `:AUTHORITY`, `:SCHEME`), each with an
//! optional `:N` to keep the first N characters, `RESP(X-TRIPLINE-REASON)`,
//! `RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)`, `PROTOCOL`, `RESPONSE_CODE`, `RESPONSE_FLAGS`,
//! `RESPONSE_CODE_DETAILS`, `BYTES_RECEIVED`, `BYTES_SENT`, `DURATION`, `RESPONSE_DURATION`,
//! `UPSTREAM_HOST`, `UPSTREAM_CLUSTER`, `ROUTE_NAME`, `DOWNSTREAM_REMOTE_ADDRESS`,
//! `DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT`, `DOWNSTREAM_PEER_URI_SAN`,
//! `REQUESTED_SERVER_NAME`, `UPSTREAM_REQUEST_ATTEMPT_COUNT`, `TRACE_ID`; `%%` is a `%`.

use std::fmt::Write;

use super::{rfc3339, Entry};

/// Envoy's default format (what Istio logs with `accessLogEncoding: TEXT`).
pub const ENVOY_DEFAULT: &str = "[%START_TIME%] \"%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%\" %RESPONSE_CODE% %RESPONSE_FLAGS% %BYTES_RECEIVED% %BYTES_SENT% %DURATION% %RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% \"%REQ(X-FORWARDED-FOR)%\" \"%REQ(USER-AGENT)%\" \"%REQ(X-REQUEST-ID)%\" \"%REQ(:AUTHORITY)%\" \"%UPSTREAM_HOST%\"\n";

/// A parsed format string.
#[derive(Debug, Clone, PartialEq)]
pub struct TextFormat {
    parts: Vec<Part>,
    /// The request headers `REQ` names, lower-cased, in the order [`Entry::headers`] holds
    /// their values.
    headers: Vec<http::HeaderName>,
}

#[derive(Debug, Clone, PartialEq)]
enum Part {
    Text(String),
    Field(Field, Option<usize>),
}

#[derive(Debug, Clone, PartialEq)]
enum Field {
    StartTime,
    /// Alternatives, the first present wins.
    Req(Vec<Source>),
    Reason,
    UpstreamServiceTime,
    Protocol,
    ResponseCode,
    ResponseFlags,
    ResponseCodeDetails,
    BytesReceived,
    BytesSent,
    Duration,
    ResponseDuration,
    UpstreamHost,
    UpstreamCluster,
    RouteName,
    DownstreamAddress,
    DownstreamIp,
    DownstreamPeerUriSan,
    RequestedServerName,
    Attempts,
    TraceId,
}

#[derive(Debug, Clone, PartialEq)]
enum Source {
    Method,
    Path,
    Authority,
    Scheme,
    /// Index into [`TextFormat::headers`].
    Header(usize),
}

impl TextFormat {
    /// Parses `format`; the error says which operator, and what is supported.
    pub fn parse(format: &str) -> Result<TextFormat, String> {
        let mut parts = Vec::new();
        let mut headers: Vec<http::HeaderName> = Vec::new();
        let mut rest = format;
        let mut text = String::new();
        while let Some(i) = rest.find('%') {
            text.push_str(&rest[..i]);
            rest = &rest[i + 1..];
            if let Some(after) = rest.strip_prefix('%') {
                text.push('%');
                rest = after;
                continue;
            }
            let Some(end) = rest.find('%') else {
                return Err(format!("an operator is not closed by `%` in the access log format: `%{rest}`"));
            };
            let op = &rest[..end];
            rest = &rest[end + 1..];
            if !text.is_empty() {
                parts.push(Part::Text(std::mem::take(&mut text)));
            }
            let (field, limit) = parse_operator(op, &mut headers)?;
            parts.push(Part::Field(field, limit));
        }
        text.push_str(rest);
        if !text.is_empty() {
            parts.push(Part::Text(text));
        }
        Ok(TextFormat { parts, headers })
    }

    /// The request headers the format logs: captured at the request's start.
    pub fn headers(&self) -> &[http::HeaderName] {
        &self.headers
    }

    /// One line (the format's own newline, or one added).
    pub fn render(&self, e: &Entry<'_>) -> String {
        let mut out = String::with_capacity(256);
        for part in &self.parts {
            match part {
                Part::Text(t) => out.push_str(t),
                Part::Field(f, limit) => {
                    let start = out.len();
                    value(f, e, &mut out);
                    if out.len() == start {
                        out.push('-');
                    } else if let Some(n) = limit {
                        if let Some((cut, _)) = out[start..].char_indices().nth(*n) {
                            out.truncate(start + cut);
                        }
                    }
                }
            }
        }
        if !out.ends_with('\n') {
            out.push('\n');
        }
        out
    }
}

fn parse_operator(op: &str, headers: &mut Vec<http::HeaderName>) -> Result<(Field, Option<usize>), String> {
    // `REQ(X):N` truncates; so may any other operator.
    let (body, limit) = match op.rsplit_once("):") {
        Some((b, n)) => (
            format!("{b})"),
            Some(n.parse::<usize>().map_err(|_| format!("`%{op}%`: `:{n}` is not a length"))?),
        ),
        None => (op.to_string(), None),
    };
    let field = if let Some(inner) = body.strip_prefix("REQ(").and_then(|b| b.strip_suffix(')')) {
        let mut sources = Vec::new();
        for name in inner.split('?') {
            sources.push(match name.to_ascii_uppercase().as_str() {
                ":METHOD" => Source::Method,
                ":PATH" => Source::Path,
                ":AUTHORITY" => Source::Authority,
                ":SCHEME" => Source::Scheme,
                _ => {
                    let h = http::HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes())
                        .map_err(|_| format!("`%{op}%`: `{name}` is not a header name"))?;
                    let i = headers.iter().position(|x| *x == h).unwrap_or_else(|| {
                        headers.push(h);
                        headers.len() - 1
                    });
                    Source::Header(i)
                }
            });
        }
        Field::Req(sources)
    } else {
        match body.as_str() {
            "START_TIME" => Field::StartTime,
            "RESP(X-TRIPLINE-REASON)" => Field::Reason,
            "RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)" => Field::UpstreamServiceTime,
            "PROTOCOL" => Field::Protocol,
            "RESPONSE_CODE" => Field::ResponseCode,
            "RESPONSE_FLAGS" => Field::ResponseFlags,
            "RESPONSE_CODE_DETAILS" => Field::ResponseCodeDetails,
            "BYTES_RECEIVED" => Field::BytesReceived,
            "BYTES_SENT" => Field::BytesSent,
            "DURATION" => Field::Duration,
            "RESPONSE_DURATION" => Field::ResponseDuration,
            "UPSTREAM_HOST" => Field::UpstreamHost,
            "UPSTREAM_CLUSTER" => Field::UpstreamCluster,
            "ROUTE_NAME" => Field::RouteName,
            "DOWNSTREAM_REMOTE_ADDRESS" => Field::DownstreamAddress,
            "DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT" => Field::DownstreamIp,
            "DOWNSTREAM_PEER_URI_SAN" => Field::DownstreamPeerUriSan,
            "REQUESTED_SERVER_NAME" => Field::RequestedServerName,
            "UPSTREAM_REQUEST_ATTEMPT_COUNT" => Field::Attempts,
            "TRACE_ID" => Field::TraceId,
            _ if body.starts_with("RESP(") => {
                return Err(format!("`%{op}%`: of the response headers, Tripline logs X-TRIPLINE-REASON and X-ENVOY-UPSTREAM-SERVICE-TIME"));
            }
            _ => {
                return Err(format!(
                    "unknown access log operator `%{op}%` (docs/configuration.md lists those Tripline knows)"
                ))
            }
        }
    };
    Ok((field, limit))
}

/// Appends the field's value; nothing when the request has none (the caller writes `-`).
fn value(f: &Field, e: &Entry<'_>, out: &mut String) {
    let ms = |d: std::time::Duration| d.as_millis().to_string();
    match f {
        Field::StartTime => out.push_str(&rfc3339(e.start)),
        Field::Req(sources) => {
            for s in sources {
                let v = match s {
                    Source::Method => Some(e.method),
                    Source::Path => Some(e.target),
                    Source::Authority => Some(e.authority),
                    Source::Scheme => e.scheme,
                    Source::Header(i) => e.headers.get(*i).and_then(|v| v.as_deref()),
                };
                if let Some(v) = v.filter(|v| !v.is_empty()) {
                    out.push_str(v);
                    return;
                }
            }
        }
        Field::Reason => out.push_str(e.reason.unwrap_or("")),
        Field::UpstreamServiceTime => {
            if let Some(d) = e.upstream_duration {
                out.push_str(&ms(d));
            }
        }
        Field::Protocol => out.push_str(e.protocol),
        Field::ResponseCode => {
            let _ = write!(out, "{}", e.status);
        }
        Field::ResponseFlags => out.push_str(&e.response_flags()),
        Field::ResponseCodeDetails => match (e.reason, e.upstream) {
            (Some(r), _) => out.push_str(r),
            (None, Some(_)) => out.push_str("via_upstream"),
            (None, None) => {}
        },
        Field::BytesReceived => {
            let _ = write!(out, "{}", e.bytes_received);
        }
        Field::BytesSent => {
            let _ = write!(out, "{}", e.bytes_sent);
        }
        Field::Duration => out.push_str(&ms(e.duration)),
        Field::ResponseDuration => out.push_str(&ms(e.response_head)),
        Field::UpstreamHost => {
            if let Some(u) = e.upstream {
                let _ = write!(out, "{u}");
            }
        }
        Field::UpstreamCluster => out.push_str(e.cluster.unwrap_or("")),
        Field::RouteName => out.push_str(e.route.unwrap_or("")),
        Field::DownstreamAddress => {
            let _ = write!(out, "{}", e.downstream);
        }
        Field::DownstreamIp => {
            let _ = write!(out, "{}", e.downstream.ip());
        }
        Field::DownstreamPeerUriSan => out.push_str(e.downstream_identity.unwrap_or("")),
        Field::RequestedServerName => out.push_str(e.tls_sni.unwrap_or("")),
        Field::Attempts => {
            let _ = write!(out, "{}", e.attempts);
        }
        Field::TraceId => out.push_str(e.trace_id.unwrap_or("")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::access_log::tests::entry;

    #[test]
    fn envoy_s_default_format_renders_as_envoy_writes_it() {
        let f = TextFormat::parse(ENVOY_DEFAULT).unwrap();
        assert_eq!(
            f.headers().iter().map(|h| h.as_str()).collect::<Vec<_>>(),
            ["x-envoy-original-path", "x-forwarded-for", "user-agent", "x-request-id"]
        );
        let headers = [None, None, Some("curl/8.0".to_string()), Some("abc".to_string())];
        let mut e = entry();
        e.headers = &headers;
        assert_eq!(
            f.render(&e),
            "[2023-11-14T22:13:20.000Z] \"GET /cart?x=1 HTTP/1.1\" 503 UO 12 54 1 - \"-\" \"curl/8.0\" \"abc\" \"shop.local\" \"-\"\n"
        );
    }

    #[test]
    fn operators_truncate_and_percent_escapes_and_unknown_ones_are_refused() {
        let f = TextFormat::parse("%REQ(:PATH):4% 100%% %UPSTREAM_CLUSTER% %TRACE_ID%").unwrap();
        assert_eq!(
            f.render(&entry()),
            "/car 100% outbound|80||shop.local 4bf92f3577b34da6a3ce929d0e0e4736\n"
        );
        for (bad, says) in [
            ("%NOPE%", "unknown access log operator `%NOPE%`"),
            ("%REQ(:PATH)", "not closed"),
            ("%RESP(SERVER)%", "of the response headers"),
            ("%REQ(X):y%", "not a length"),
        ] {
            let e = TextFormat::parse(bad).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }
}
