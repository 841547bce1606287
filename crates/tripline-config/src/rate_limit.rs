//! `rateLimit` of a `ResiliencePolicy` whose target is a route: local token buckets, named as
//! Envoy's local rate limit names them, applied by the proxy before the request goes
//! anywhere.
//!
//! ```yaml
//! spec:
//!   target: {virtualService: shop, route: api}
//!   rateLimit:
//!     tokenBucket: {maxTokens: 200, tokensPerFill: 100, fillInterval: 1s}   # the whole route
//!     descriptors:                       # each a bucket per value of its key, on top
//!     - key: {header: x-user-id}
//!       tokenBucket: {maxTokens: 10, tokensPerFill: 10, fillInterval: 1s}
//!     - key: {remoteAddress: {}}
//!       tokenBucket: {maxTokens: 20, tokensPerFill: 20, fillInterval: 1s}
//!     - key: {pathPrefix: /api/export}
//!       tokenBucket: {maxTokens: 1, tokensPerFill: 1, fillInterval: 10s}
//!     shadow: false             # true: count what would be limited, limit nothing
//!     responseHeaders: true     # x-ratelimit-limit / -remaining / -reset on every response
//! ```
//!
//! A request is admitted when every bucket that applies to it has a token (a descriptor whose
//! key the request lacks, such as a missing header, does not apply).

use std::time::Duration;

use serde::Serialize;

use crate::decode::{Cx, Schema};
use crate::yaml::Node;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RateLimitPlan {
    /// The policy's name (metrics are labelled with it).
    pub policy: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bucket: Option<TokenBucket>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub descriptors: Vec<Descriptor>,
    pub shadow: bool,
    pub response_headers: bool,
}

/// Envoy's `TokenBucket`: holds at most `max_tokens`, gains `tokens_per_fill` every
/// `fill_interval`; each request takes one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct TokenBucket {
    pub max_tokens: u32,
    pub tokens_per_fill: u32,
    #[serde(serialize_with = "crate::model::ser_duration")]
    pub fill_interval: Duration,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Descriptor {
    pub key: DescriptorKey,
    pub bucket: TokenBucket,
}

/// What separates one descriptor's buckets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum DescriptorKey {
    /// A bucket per value of the header (lower-cased name); requests without it are not
    /// limited by this descriptor.
    Header(String),
    /// A bucket per client IP address.
    RemoteAddress,
    /// One bucket for the paths under the prefix.
    PathPrefix(String),
}

const RATE_LIMIT: Schema =
    Schema::new("Tripline's RateLimit", &["tokenBucket", "descriptors", "shadow", "responseHeaders"]);
const TOKEN_BUCKET: Schema =
    Schema::new("Tripline's TokenBucket", &["maxTokens", "tokensPerFill", "fillInterval"]);
const DESCRIPTOR: Schema = Schema::new("Tripline's RateLimit descriptor", &["key", "tokenBucket"]);
const KEY: Schema = Schema::new("Tripline's RateLimit key", &["header", "remoteAddress", "pathPrefix"]);

/// `rateLimit`; `policy` names the policy.
pub fn rate_limit(cx: &mut Cx, node: &Node, path: &str, policy: &str) -> Option<RateLimitPlan> {
    let f = cx.fields(node, path, &RATE_LIMIT)?;
    let bucket = match f.value("tokenBucket") {
        Some((n, p)) => Some(token_bucket(cx, n, &p)?),
        None => None,
    };
    let mut descriptors = Vec::new();
    if let Some((n, p)) = f.value("descriptors") {
        for (dn, dp) in cx.list(n, &p, "descriptors") {
            let df = cx.fields(dn, &dp, &DESCRIPTOR)?;
            let (Some((kn, kp)), Some((bn, bp))) = (df.value("key"), df.value("tokenBucket")) else {
                let missing = if df.has("key") { "tokenBucket" } else { "key" };
                cx.required(&df, missing, "a descriptor's key and its token bucket");
                return None;
            };
            descriptors.push(Descriptor { key: key(cx, kn, &kp)?, bucket: token_bucket(cx, bn, &bp)? });
        }
    }
    if bucket.is_none() && descriptors.is_empty() {
        cx.error(
            node,
            path,
            "a rate limit needs a `tokenBucket`, or `descriptors` with theirs: as written it limits nothing",
        );
        return None;
    }
    let flag = |cx: &mut Cx, name: &str| match f.value(name) {
        Some((n, p)) => cx.bool(n, &p),
        None => Some(false),
    };
    let shadow = flag(cx, "shadow")?;
    let response_headers = flag(cx, "responseHeaders")?;
    Some(RateLimitPlan { policy: policy.to_string(), bucket, descriptors, shadow, response_headers })
}

fn token_bucket(cx: &mut Cx, node: &Node, path: &str) -> Option<TokenBucket> {
    let f = cx.fields(node, path, &TOKEN_BUCKET)?;
    let Some((mn, mp)) = f.value("maxTokens") else {
        cx.required(&f, "maxTokens", "the most requests admitted at once (the burst)");
        return None;
    };
    let max_tokens = cx.u32(mn, &mp, 1)?;
    let tokens_per_fill = match f.value("tokensPerFill") {
        Some((n, p)) => cx.u32(n, &p, 1)?,
        None => 1,
    };
    let Some((fn_, fp)) = f.value("fillInterval") else {
        cx.required(&f, "fillInterval", "how often `tokensPerFill` tokens are added, e.g. 1s");
        return None;
    };
    let fill_interval = cx.duration(fn_, &fp, false)?;
    if fill_interval < Duration::from_millis(1) {
        cx.error(fn_, &fp, "expected at least 1ms: a shorter fill interval is not a rate a proxy can keep");
        return None;
    }
    Some(TokenBucket { max_tokens, tokens_per_fill, fill_interval })
}

fn key(cx: &mut Cx, node: &Node, path: &str) -> Option<DescriptorKey> {
    let f = cx.fields(node, path, &KEY)?;
    let given: Vec<&str> =
        ["header", "remoteAddress", "pathPrefix"].into_iter().filter(|k| f.get(k).is_some()).collect();
    if given.len() != 1 {
        cx.error(node, path, "expected exactly one of header, remoteAddress, pathPrefix");
        return None;
    }
    match given[0] {
        "header" => {
            let (n, p) = f.value("header")?;
            let name = cx.name(n, &p)?.to_ascii_lowercase();
            if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
                cx.error(n, &p, format!("`{name}` is not a valid header name"));
                return None;
            }
            Some(DescriptorKey::Header(name))
        }
        "pathPrefix" => {
            let (n, p) = f.value("pathPrefix")?;
            let prefix = cx.name(n, &p)?;
            if !prefix.starts_with('/') {
                cx.error(n, &p, format!("`{prefix}` is not a path: a path prefix starts with `/`"));
                return None;
            }
            Some(DescriptorKey::PathPrefix(prefix))
        }
        _ => Some(DescriptorKey::RemoteAddress),
    }
}
