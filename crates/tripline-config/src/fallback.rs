//! `fallback` of a `ResiliencePolicy` whose target is a route: what a request gets when the
//! route's destination cannot take it. Istio has no words for this (the brief's "fallback", a
//! 100% abort in front of a route, never reaches the route), so it is Tripline's own.
//!
//! ```yaml
//! spec:
//!   target: {virtualService: inventory, route: items}
//!   fallback:
//!     on: [breakerOpen, noHealthyUpstream, overflow]     # the default: all three
//!     destination: {host: inventory-cache.local}          # or:
//!     # response: {status: 200, headers: {content-type: application/json}, body: '{"items": []}'}
//! ```
//!
//! The fallback is taken only when the request was refused before it went anywhere (so it can
//! be sent again whole), and is marked `x-tripline-reason: fallback-<cause>`. A fallback
//! destination has its own admission, breakers and budget; a refusal there is answered as
//! any refusal is: a fallback never falls back again.

use serde::Serialize;

use crate::decode::{Cx, Schema};
use crate::model::RouteDestination;
use crate::yaml::{Kind, Node};

/// When a fallback is taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct FallbackOn {
    /// The route's or the destination's breaker is open.
    pub breaker_open: bool,
    /// No endpoint of the destination can take a request.
    pub no_healthy_upstream: bool,
    /// The destination's pool is full (`overflow-requests`, `-pending`, `-connections`).
    pub overflow: bool,
}

/// `fallback` as decoded: the destination is resolved to a cluster when the route compiles.
#[derive(Debug, Clone)]
pub struct Fallback {
    pub on: FallbackOn,
    pub to: FallbackTo<RouteDestination>,
}

/// Where a fallback goes: `D` is a destination as written, or its cluster once compiled.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub enum FallbackTo<D> {
    Destination(D),
    Response { status: u16, headers: Vec<(String, String)>, body: String },
}

/// The fallback in a route's plan.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FallbackPlan {
    pub on: FallbackOn,
    pub to: FallbackTo<crate::plan::ClusterId>,
}

const FALLBACK: Schema = Schema::new("Tripline's Fallback", &["on", "destination", "response"]);
const RESPONSE: Schema = Schema::new("Tripline's Fallback response", &["status", "headers", "body"]);
const CAUSES: &[&str] = &["breakerOpen", "noHealthyUpstream", "overflow"];

pub fn fallback(cx: &mut Cx, node: &Node, path: &str) -> Option<Fallback> {
    let f = cx.fields(node, path, &FALLBACK)?;
    let on = match f.value("on") {
        Some((n, p)) => {
            let mut on = FallbackOn { breaker_open: false, no_healthy_upstream: false, overflow: false };
            for (item, ip) in cx.list(n, &p, "causes") {
                match cx.one_of(item, &ip, CAUSES, "")?.as_str() {
                    "breakerOpen" => on.breaker_open = true,
                    "noHealthyUpstream" => on.no_healthy_upstream = true,
                    _ => on.overflow = true,
                }
            }
            if on == (FallbackOn { breaker_open: false, no_healthy_upstream: false, overflow: false }) {
                cx.error(
                    n,
                    &p,
                    format!("a fallback taken on nothing is never taken: list some of {}", CAUSES.join(", ")),
                );
                return None;
            }
            on
        }
        None => FallbackOn { breaker_open: true, no_healthy_upstream: true, overflow: true },
    };
    let to = match (f.value("destination"), f.value("response")) {
        (Some((n, p)), None) => FallbackTo::Destination(crate::model::destination(cx, n, &p)?),
        (None, Some((n, p))) => response(cx, n, &p)?,
        (Some(_), Some((n, p))) => {
            cx.error(n, &p, "a fallback is a `destination` or a `response`, not both");
            return None;
        }
        (None, None) => {
            cx.required(
                &f,
                "destination",
                "{host, subset, port} to send the request to, or `response` to answer it",
            );
            return None;
        }
    };
    Some(Fallback { on, to })
}

fn response(cx: &mut Cx, node: &Node, path: &str) -> Option<FallbackTo<RouteDestination>> {
    let f = cx.fields(node, path, &RESPONSE)?;
    let Some((sn, sp)) = f.value("status") else {
        cx.required(&f, "status", "an HTTP status code (200 to 599)");
        return None;
    };
    let status = cx.int(sn, &sp, 200, 599)? as u16;
    let mut headers = Vec::new();
    if let Some((n, p)) = f.value("headers") {
        let Kind::Map(entries) = &n.kind else {
            cx.error(n, &p, format!("expected a mapping of header names to values, found {}", n.describe()));
            return None;
        };
        for (k, v) in entries {
            let name = k.as_scalar()?.to_ascii_lowercase();
            let vp = crate::decode::join(&p, &name);
            let value = cx.string(v, &vp)?;
            if http::HeaderName::from_bytes(name.as_bytes()).is_err()
                || http::HeaderValue::from_str(&value).is_err()
            {
                cx.error(
                    k,
                    &vp,
                    "not a valid header: a token name and a value of visible ASCII, spaces and tabs",
                );
                return None;
            }
            headers.push((name, value));
        }
    }
    let body = match f.value("body") {
        Some((n, p)) => cx.string(n, &p)?,
        None => String::new(),
    };
    Some(FallbackTo::Response { status, headers, body })
}
