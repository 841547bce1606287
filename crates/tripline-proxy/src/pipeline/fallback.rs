//! `fallback` (a route's ResiliencePolicy): what a request gets when its destination cannot
//! take it, instead of Tripline's 503. Plugs into the end of the upstream-request phase, where
//! `upstream::send` says why it refused: an open breaker, no healthy endpoint, a full pool.
//! Only a request refused before anything of it went out is sent on (the refusal hands it
//! back untouched); a fallback destination has its own admission, breakers and budget, and a
//! refusal there is the answer: a fallback never falls back again.

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Response, StatusCode};
use tripline_config::fallback::{FallbackOn, FallbackPlan, FallbackTo};
use tripline_config::plan::RetryPlan;

use crate::body::ResponseBody;
use crate::cluster::Cluster;
use crate::reason::{Reason, REASON_HEADER};
use crate::stats::GlobalStats;
use crate::upstream::{Refusal, RoutePolicy};

/// Why a fallback was taken; `x-tripline-reason: fallback-<cause>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    BreakerOpen,
    NoHealthyUpstream,
    Overflow,
}

impl Cause {
    pub const ALL: [Cause; 3] = [Cause::BreakerOpen, Cause::NoHealthyUpstream, Cause::Overflow];

    pub fn as_str(self) -> &'static str {
        match self {
            Cause::BreakerOpen => "breaker-open",
            Cause::NoHealthyUpstream => "no-healthy-upstream",
            Cause::Overflow => "overflow",
        }
    }

    /// Counts a fallback taken.
    pub(crate) fn count(self, stats: &GlobalStats) {
        stats.fallbacks[self as usize].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    pub(crate) fn header(self) -> HeaderValue {
        HeaderValue::from_static(match self {
            Cause::BreakerOpen => "fallback-breaker-open",
            Cause::NoHealthyUpstream => "fallback-no-healthy-upstream",
            Cause::Overflow => "fallback-overflow",
        })
    }

    fn of(reason: Reason, on: FallbackOn) -> Option<Cause> {
        match reason {
            Reason::BreakerOpen if on.breaker_open => Some(Cause::BreakerOpen),
            Reason::NoHealthyUpstream if on.no_healthy_upstream => Some(Cause::NoHealthyUpstream),
            Reason::OverflowRequests | Reason::OverflowPending | Reason::OverflowConnections
                if on.overflow =>
            {
                Some(Cause::Overflow)
            }
            _ => None,
        }
    }
}

#[derive(Debug)]
pub struct Fallback {
    on: FallbackOn,
    to: To,
}

#[derive(Debug)]
enum To {
    /// The cluster, and the policy its requests go with: the route's retries, no route
    /// breaker (it may be what refused the request).
    Cluster(Arc<Cluster>, Arc<FallbackPolicy>),
    Response {
        status: StatusCode,
        headers: Vec<(HeaderName, HeaderValue)>,
        body: Bytes,
    },
}

/// The route policy of a request sent to a fallback destination.
#[derive(Debug)]
pub struct FallbackPolicy(RoutePolicy);

impl AsRef<RoutePolicy> for FallbackPolicy {
    fn as_ref(&self) -> &RoutePolicy {
        &self.0
    }
}

/// What to do with a refused request.
pub(crate) enum Taken<'a> {
    /// Send it to this cluster with this policy.
    Send(&'a Arc<Cluster>, &'a Arc<FallbackPolicy>, Cause),
    /// Answer it with the configured response.
    Answer(Box<Response<ResponseBody>>),
}

impl Fallback {
    pub(crate) fn compile(
        plan: &FallbackPlan,
        clusters: &[Arc<Cluster>],
        retry: &RetryPlan,
    ) -> Option<Fallback> {
        let to = match &plan.to {
            FallbackTo::Destination(id) => {
                let policy = RoutePolicy { retry: retry.clone(), breaker: None };
                To::Cluster(clusters.get(*id)?.clone(), Arc::new(FallbackPolicy(policy)))
            }
            FallbackTo::Response { status, headers, body } => To::Response {
                status: StatusCode::from_u16(*status).ok()?,
                headers: headers
                    .iter()
                    .filter_map(|(n, v)| {
                        Some((HeaderName::from_bytes(n.as_bytes()).ok()?, HeaderValue::from_str(v).ok()?))
                    })
                    .collect(),
                body: Bytes::from(body.clone()),
            },
        };
        Some(Fallback { on: plan.on, to })
    }

    /// The cause a refusal would take the fallback for.
    pub(crate) fn cause_of(&self, refusal: &Refusal) -> Option<Cause> {
        Cause::of(refusal.reason, self.on)
    }

    /// Whether `refusal` takes the fallback, and how.
    pub(crate) fn take(&self, refusal: &Refusal) -> Option<Taken<'_>> {
        let cause = Cause::of(refusal.reason, self.on)?;
        match &self.to {
            To::Cluster(cluster, policy) => {
                refusal.request.is_some().then_some(Taken::Send(cluster, policy, cause))
            }
            To::Response { status, headers, body } => {
                let mut resp = Response::new(ResponseBody::local(body.clone()));
                *resp.status_mut() = *status;
                for (n, v) in headers {
                    resp.headers_mut().insert(n.clone(), v.clone());
                }
                resp.headers_mut().insert(REASON_HEADER, cause.header());
                Some(Taken::Answer(Box::new(resp)))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(reason: Reason) -> Refusal {
        Refusal::from(reason)
    }

    #[test]
    fn a_static_fallback_answers_the_causes_it_is_taken_on() {
        let plan = FallbackPlan {
            on: FallbackOn { breaker_open: true, no_healthy_upstream: false, overflow: true },
            to: FallbackTo::Response {
                status: 200,
                headers: vec![("content-type".into(), "application/json".into())],
                body: "[]".into(),
            },
        };
        let f = Fallback::compile(&plan, &[], &RetryPlan::default()).unwrap();
        let Some(Taken::Answer(r)) = f.take(&refused(Reason::OverflowPending)) else { panic!("taken") };
        assert_eq!(
            (r.status(), &r.headers()[REASON_HEADER]),
            (StatusCode::OK, &HeaderValue::from_static("fallback-overflow"))
        );
        assert_eq!(r.headers()["content-type"], "application/json");
        assert!(f.take(&refused(Reason::NoHealthyUpstream)).is_none(), "not on that cause");
        assert!(
            f.take(&refused(Reason::UpstreamReset)).is_none(),
            "never after the upstream had the request"
        );
    }
}
