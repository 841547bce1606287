//! The request pipeline: the phases a request goes through between the client's connection
//! and the upstream layer, and the route features that plug into them. Each feature is a
//! module of its own, compiled from the route's plan once per reload into [`Features`]; a
//! route without features has none (`Route::features` is `None`), so its requests run exactly
//! the path they ran before features existed: one branch more.
//!
//! The phases, in order (`http_proxy` drives them; `docs/architecture.md` tells where to add
//! a feature):
//!
//! 1. **Request**, before a destination is chosen: route match (`router`), CORS preflights
//!    ([`cors`]), rate limits ([`rate_limit`]), fault injection ([`fault`]), answers of the
//!    route's own ([`answer`]: redirect, direct response). A
//!    feature here may answer the request itself ([`Step::Answer`]) or hold it
//!    ([`Step::Forward`] with a delay).
//! 2. **Upstream request**, once the destination is chosen and before the request is
//!    prepared for it: path and authority rewrite ([`rewrite`]); then, after the proxy's own
//!    headers (`x-forwarded-*`, `x-request-id`) are set, the header edits of the destination
//!    and of the route ([`header_edits`]), the route's last so that its `set` wins, as in
//!    Envoy; last, copies for the route's mirrors ([`mirror`]), of the request as sent.
//! 3. **Response**: the response header edits of the destination and the route, then the
//!    CORS headers of an allowed cross-origin request ([`ResponseEdits`]), applied to every
//!    response the route gives, Tripline's own answers included.
//! 4. **Logging**: the access log line, written when the response body ends (`http_proxy`'s
//!    `PendingLog`).
//!
//! The upstream layer below (`upstream::send`: admission, breakers, retries, attempts) knows
//! nothing of these phases.

pub(crate) mod answer;
pub mod authz;
pub(crate) mod cors;
pub mod fallback;
pub(crate) mod fault;
pub(crate) mod header_edits;
pub(crate) mod mirror;
pub mod rate_limit;
pub(crate) mod rewrite;

use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, Request, Response};
use tripline_config::plan::{FaultPlan, Fraction, RouteFeatures, StringMatch};
use tripline_core::rng::Rng;

use crate::body::ResponseBody;
use crate::cluster::Cluster;
use crate::endpoint::body::RequestBody;
use crate::local_reply::Reply;
use crate::reason::Reason;
use crate::stats::GlobalStats;
use crate::Shared;
use answer::Answer;
use cors::Cors;
use fallback::Fallback;
use header_edits::HeaderEdits;
use mirror::Mirrors;
use rate_limit::{RateLimiter, RateLimiters};
use rewrite::Rewrite;
use tokio::time::Instant;

/// A route's features, compiled from its plan.
#[derive(Debug)]
pub struct Features {
    fault: Option<FaultPlan>,
    answer: Option<Answer>,
    rewrite: Option<Rewrite>,
    headers: Option<Arc<HeaderEdits>>,
    mirrors: Option<Mirrors>,
    cors: Option<Arc<Cors>>,
    rate_limit: Option<Arc<RateLimiter>>,
    fallback: Option<Arc<Fallback>>,
}

/// What the request phase decided.
pub(crate) enum Step {
    /// Go on to a destination, after the delay if there is one.
    Forward { delay: Option<Duration> },
    /// The route answers the request itself (after the delay, for a delayed abort).
    Answer { delay: Option<Duration>, response: Box<Response<ResponseBody>> },
}

/// What the request phase needs of the request's context besides the request.
pub(crate) struct RequestCx<'a> {
    pub(crate) grpc: bool,
    pub(crate) peer: IpAddr,
    pub(crate) rng: &'a dyn Rng,
    pub(crate) stats: &'a GlobalStats,
    /// What the fault did, for the access log.
    pub(crate) injected: &'a mut Injected,
}

/// What the request phase did that the access log shows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Injected {
    pub(crate) delayed: bool,
    pub(crate) aborted: bool,
}

impl Injected {
    /// The access log's `fault` field.
    pub(crate) fn as_str(self) -> Option<&'static str> {
        match (self.delayed, self.aborted) {
            (false, false) => None,
            (true, false) => Some("delay"),
            (false, true) => Some("abort"),
            (true, true) => Some("delay+abort"),
        }
    }
}

impl Features {
    /// `None` when the route does nothing but forward. `clusters` are the plan's, by index.
    pub fn compile(
        plan: &RouteFeatures,
        clusters: &[Arc<Cluster>],
        limiters: &RateLimiters,
        retry: &tripline_config::plan::RetryPlan,
    ) -> Option<Box<Features>> {
        if plan.is_empty() {
            return None;
        }
        Some(Box::new(Features {
            fault: plan.fault.clone(),
            answer: plan.answer.as_ref().map(Answer::compile),
            rewrite: plan.rewrite.as_ref().map(Rewrite::compile),
            headers: HeaderEdits::compile(&plan.headers).map(Arc::new),
            mirrors: Mirrors::compile(&plan.mirrors, clusters),
            cors: plan.cors.as_ref().map(|c| Arc::new(Cors::compile(c))),
            rate_limit: plan.rate_limit.as_ref().and_then(|r| limiters.get(&r.policy).cloned()),
            fallback: plan
                .fallback
                .as_ref()
                .and_then(|f| Fallback::compile(f, clusters, retry))
                .map(Arc::new),
        }))
    }

    /// The request phase: CORS answers preflights, the rate limit takes its tokens, the
    /// fault is drawn, then a route that answers itself answers. Notes in `edits` what the
    /// response phase must add.
    pub(crate) fn on_request<B>(
        &self,
        req: &Request<B>,
        cx: RequestCx<'_>,
        edits: &mut Option<Box<ResponseEdits>>,
    ) -> Step {
        let RequestCx { grpc, peer, rng, stats, injected } = cx;
        if let Some(cors) = &self.cors {
            match cors.on_request(req) {
                cors::Verdict::None => {}
                cors::Verdict::Answer(response) => return Step::Answer { delay: None, response },
                cors::Verdict::Allowed(origin) => {
                    edits.get_or_insert_with(Box::default).cors = Some((cors.clone(), origin));
                }
            }
        }
        if let Some(limiter) = &self.rate_limit {
            match limiter.check(req, peer) {
                rate_limit::Verdict::Admitted(None) => {}
                rate_limit::Verdict::Admitted(Some(headers)) => {
                    edits.get_or_insert_with(Box::default).rate_limit = Some(headers);
                }
                rate_limit::Verdict::Limited { retry_after } => {
                    stats.local.inc(Reason::RateLimited);
                    let reason = Reason::RateLimited;
                    let mut response = if grpc { reason.grpc_response() } else { reason.response() };
                    // Whole seconds, rounded up: a client that honours it never comes back early.
                    let secs = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
                    response
                        .headers_mut()
                        .insert(http::header::RETRY_AFTER, http::HeaderValue::from(secs.max(1)));
                    return Step::Answer { delay: None, response: Box::new(response) };
                }
            }
        }
        let drawn = self.fault.as_ref().map(|f| fault::draw(f, rng)).unwrap_or_default();
        if drawn.delay.is_some() {
            injected.delayed = true;
            stats.faults_delayed.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(with) = drawn.abort {
            injected.aborted = true;
            stats.faults_aborted.fetch_add(1, Ordering::Relaxed);
            return Step::Answer {
                delay: drawn.delay,
                response: Box::new(fault::abort_response(with, grpc)),
            };
        }
        match &self.answer {
            Some(answer) => Step::Answer { delay: drawn.delay, response: Box::new(answer.respond(req)) },
            None => Step::Forward { delay: drawn.delay },
        }
    }

    /// The upstream-request phase, before the request is prepared: the rewrite. `matched` is
    /// the uri match of the match entry that took the request.
    pub(crate) fn rewrite<B>(&self, req: &mut Request<B>, matched: Option<&StringMatch>) {
        if let Some(rewrite) = &self.rewrite {
            rewrite.apply(req, matched);
        }
    }

    pub(crate) fn has_rewrite(&self) -> bool {
        self.rewrite.is_some()
    }

    /// The route's fallback, if it has one.
    pub(crate) fn fallback(&self) -> Option<&Arc<Fallback>> {
        self.fallback.as_ref()
    }

    /// The route's `headers`, when they edit anything.
    pub(crate) fn headers(&self) -> Option<&Arc<HeaderEdits>> {
        self.headers.as_ref()
    }

    /// The upstream-request phase's last step: copies for the route's mirrors, of the request
    /// as its upstream will get it.
    pub(crate) fn mirror(
        &self,
        req: &mut Request<RequestBody>,
        deadline: Option<Instant>,
        shared: &Arc<Shared>,
    ) {
        if let Some(mirrors) = &self.mirrors {
            mirrors.send_copies(req, deadline, shared);
        }
    }
}

/// One draw against a share; no random number is spent on 0% or 100%.
pub(crate) fn drawn(share: Fraction, rng: &dyn Rng) -> bool {
    match share.0 {
        0 => false,
        s if s >= Fraction::MILLION => true,
        s => rng.below(u64::from(Fraction::MILLION)) < u64::from(s),
    }
}

/// The upstream-request phase, after the proxy's own headers: the destination's edits, then
/// the route's.
pub(crate) fn edit_request(
    headers: &mut HeaderMap,
    destination: Option<&HeaderEdits>,
    route: Option<&HeaderEdits>,
) {
    for edits in [destination, route].into_iter().flatten() {
        if let Some(request) = &edits.request {
            request.apply(headers);
        }
    }
}

/// The response phase's header edits: the destination's, then the route's. Boxed and only
/// made for a route or destination that edits responses, so other requests carry 8 bytes.
#[derive(Debug, Default)]
pub(crate) struct ResponseEdits {
    pub(crate) destination: Option<Arc<HeaderEdits>>,
    pub(crate) route: Option<Arc<HeaderEdits>>,
    /// The route's CORS policy and the allowed origin of the request.
    pub(crate) cors: Option<(Arc<Cors>, http::HeaderValue)>,
    /// `x-ratelimit-limit`, `-remaining`, `-reset` of the tightest bucket.
    pub(crate) rate_limit: Option<Box<[http::HeaderValue; 3]>>,
}

impl ResponseEdits {
    /// Notes `edits` (of the destination or of the route) if they touch the response.
    pub(crate) fn keep(slot: &mut Option<Box<ResponseEdits>>, edits: Option<&Arc<HeaderEdits>>, route: bool) {
        let Some(edits) = edits.filter(|e| e.response.is_some()) else { return };
        let kept = slot.get_or_insert_with(Box::default);
        let place = if route { &mut kept.route } else { &mut kept.destination };
        *place = Some(edits.clone());
    }

    pub(crate) fn apply(&self, headers: &mut HeaderMap) {
        for edits in [&self.destination, &self.route].into_iter().flatten() {
            if let Some(response) = &edits.response {
                response.apply(headers);
            }
        }
        if let Some((cors, origin)) = &self.cors {
            cors.on_response(headers, origin.clone());
        }
        if let Some([limit, remaining, reset]) = self.rate_limit.as_deref() {
            headers.insert("x-ratelimit-limit", limit.clone());
            headers.insert("x-ratelimit-remaining", remaining.clone());
            headers.insert("x-ratelimit-reset", reset.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tripline_config::plan::{AbortWith, Answer as AnswerPlan, Fraction, HeaderOps, HeaderPlan};
    use tripline_core::rng::SplitMix;

    #[test]
    fn a_route_without_features_compiles_to_nothing() {
        let (limiters, retry) = (RateLimiters::default(), Default::default());
        assert!(Features::compile(&RouteFeatures::default(), &[], &limiters, &retry).is_none());
    }

    fn cx<'a>(rng: &'a dyn Rng, stats: &'a GlobalStats, injected: &'a mut Injected) -> RequestCx<'a> {
        RequestCx { grpc: false, peer: [127, 0, 0, 1].into(), rng, stats, injected }
    }

    #[test]
    fn an_abort_comes_before_the_route_s_own_answer_and_is_counted() {
        let plan = RouteFeatures {
            fault: Some(FaultPlan {
                delay: None,
                abort: Some((AbortWith::Http(503), Fraction(Fraction::MILLION))),
            }),
            answer: Some(AnswerPlan::Direct { status: 200, body: Vec::new() }),
            ..Default::default()
        };
        let f = Features::compile(&plan, &[], &RateLimiters::default(), &Default::default()).unwrap();
        let (stats, mut injected) = (GlobalStats::default(), Injected::default());
        let req = Request::get("/").body(()).unwrap();
        let Step::Answer { delay: None, response } =
            f.on_request(&req, cx(&SplitMix::seeded(1), &stats, &mut injected), &mut None)
        else {
            panic!("the abort answers")
        };
        assert_eq!(response.status(), 503);
        assert_eq!(injected.as_str(), Some("abort"));
        assert_eq!(stats.faults_aborted.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn the_route_s_set_wins_over_the_destination_s() {
        let edits = |v: &str| {
            let ops = HeaderOps { set: vec![("x-who".into(), v.into())], ..Default::default() };
            Arc::new(HeaderEdits::compile(&HeaderPlan { request: ops.clone(), response: ops }).unwrap())
        };
        let (dest, route) = (edits("destination"), edits("route"));
        let mut h = HeaderMap::new();
        edit_request(&mut h, Some(&dest), Some(&route));
        assert_eq!(h["x-who"], "route");
        let mut slot = None;
        ResponseEdits::keep(&mut slot, Some(&route), true);
        ResponseEdits::keep(&mut slot, Some(&dest), false);
        let mut h = HeaderMap::new();
        slot.unwrap().apply(&mut h);
        assert_eq!(h["x-who"], "route");
    }
}
