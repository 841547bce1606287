//! `fault` (Istio's `HTTPFaultInjection`): delay and abort, each drawn on its own for every
//! request, so that over many requests the shares are the configured percentages (Envoy's
//! fault filter draws the same way). A delayed request is held before it is routed upstream;
//! the route timeout starts after the delay, as it does in Envoy, whose router comes after its
//! fault filter. An abort is Tripline's own answer, marked `x-tripline-reason: fault-abort`.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode};
use tripline_config::plan::{AbortWith, FaultPlan};
use tripline_core::rng::Rng;

use crate::body::ResponseBody;
use crate::reason::{grpc_of_http, REASON_HEADER};

pub(crate) const FAULT_ABORT: &str = "fault-abort";

/// What the draw decided for one request.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Drawn {
    pub(crate) delay: Option<Duration>,
    pub(crate) abort: Option<AbortWith>,
}

/// Draws each part of the fault for one request.
pub(crate) fn draw(plan: &FaultPlan, rng: &dyn Rng) -> Drawn {
    Drawn {
        delay: plan.delay.filter(|d| super::drawn(d.share, rng)).map(|d| d.fixed),
        abort: plan.abort.filter(|(_, share)| super::drawn(*share, rng)).map(|(with, _)| with),
    }
}

/// The injected abort. `grpcStatus` answers as a gRPC server does (trailers-only, HTTP 200);
/// an `httpStatus` answers a gRPC client the same way, with the status Envoy maps it to, as
/// every other answer of Tripline's does.
pub(crate) fn abort_response(with: AbortWith, grpc_client: bool) -> Response<ResponseBody> {
    let grpc_code = match with {
        AbortWith::Grpc(code) => Some(code),
        AbortWith::Http(status) if grpc_client => {
            Some(grpc_of_http(StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE)))
        }
        AbortWith::Http(_) => None,
    };
    let body =
        if grpc_code.is_some() { Bytes::new() } else { Bytes::from_static(b"fault injected: abort\n") };
    let mut resp = Response::new(ResponseBody::local(body));
    let h = resp.headers_mut();
    h.insert(REASON_HEADER, HeaderValue::from_static(FAULT_ABORT));
    match (with, grpc_code) {
        (_, Some(code)) => {
            h.insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
            crate::grpc::set_status(h, code, "fault injected: abort");
        }
        (AbortWith::Http(status), None) => {
            h.insert(http::header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
            *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
        }
        (AbortWith::Grpc(_), None) => unreachable!("a gRPC abort always has its code"),
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use tripline_config::plan::{FaultDelayPlan, Fraction};
    use tripline_core::rng::SplitMix;

    fn plan(delay_pct: f64, abort_pct: f64) -> FaultPlan {
        FaultPlan {
            delay: Some(FaultDelayPlan {
                fixed: Duration::from_millis(50),
                share: Fraction::of_percent(delay_pct),
            }),
            abort: Some((AbortWith::Http(503), Fraction::of_percent(abort_pct))),
        }
    }

    #[test]
    fn shares_hold_in_aggregate_and_the_parts_are_independent() {
        let rng = SplitMix::seeded(7);
        let (n, p) = (100_000u32, plan(10.0, 25.0));
        let (mut delays, mut aborts, mut both) = (0u32, 0u32, 0u32);
        for _ in 0..n {
            let d = draw(&p, &rng);
            delays += u32::from(d.delay.is_some());
            aborts += u32::from(d.abort.is_some());
            both += u32::from(d.delay.is_some() && d.abort.is_some());
        }
        // Within 4 sigma of n*p: binomial, sigma = sqrt(n p (1-p)).
        let near = |got: u32, share: f64| {
            let (mean, sigma) = (f64::from(n) * share, (f64::from(n) * share * (1.0 - share)).sqrt());
            (f64::from(got) - mean).abs() < 4.0 * sigma
        };
        assert!(near(delays, 0.10), "{delays}");
        assert!(near(aborts, 0.25), "{aborts}");
        assert!(near(both, 0.025), "independent draws: {both}");
    }

    #[test]
    fn zero_and_hundred_percent_are_exact_and_spend_no_randomness() {
        let rng = SplitMix::seeded(1);
        let before = SplitMix::seeded(1).next_u64();
        assert_eq!(draw(&plan(0.0, 100.0), &rng), Drawn { delay: None, abort: Some(AbortWith::Http(503)) });
        assert_eq!(rng.next_u64(), before, "no number was drawn");
    }

    #[test]
    fn an_abort_says_it_was_injected() {
        let r = abort_response(AbortWith::Http(500), false);
        assert_eq!(r.status(), 500);
        assert_eq!(r.headers()[REASON_HEADER], FAULT_ABORT);
        let g = abort_response(AbortWith::Grpc(14), false);
        assert_eq!(g.status(), 200);
        assert_eq!(g.headers()["grpc-status"], "14");
        let mapped = abort_response(AbortWith::Http(503), true);
        assert_eq!(
            (mapped.status(), &mapped.headers()["grpc-status"]),
            (StatusCode::OK, &HeaderValue::from(14u16))
        );
    }
}
