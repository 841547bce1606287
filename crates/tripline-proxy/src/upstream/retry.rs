//! The retry decision: after an attempt, may the request be sent again, and if not, why.
//!
//! Pure: no clock, no shared state, no I/O. `send` gathers the facts (how the attempt ended,
//! the method, whether the body can be sent again, the destination breaker), asks
//! [`decide`], and acts on the verdict (a retry-budget permit, the backoff, the counters).
//! The budget is shared state (`tripline_core::budget`) and the backoff its own pure function
//! (`tripline_core::backoff`), so neither is here.

use tripline_config::plan::{RetryOn, RetryPlan};
use tripline_core::classify::{grpc, Outcome};

/// How an attempt ended, as the decision sees it.
#[derive(Debug, Clone, Copy)]
pub struct Ended {
    pub outcome: Outcome,
    /// The response status, when the response is classified by its HTTP status.
    pub status: Option<u16>,
    /// The `grpc-status` of a trailers-only response.
    pub grpc: Option<u8>,
    /// The upstream did not process the request: it never went out (the connection handed
    /// it back), or an HTTP/2 upstream refused the stream.
    pub unprocessed: bool,
}

/// What the decision needs to know about the request beyond its last attempt. Asked for only
/// when the policy covers how the attempt ended: most attempts succeed and never need it.
#[derive(Debug, Clone, Copy)]
pub struct Again {
    /// The method is idempotent (RFC 9110 §9.2.2).
    pub idempotent: bool,
    /// The request, or the copy kept of it, can be sent again.
    pub replayable: bool,
    /// The destination breaker refuses traffic (open, not in dry run).
    pub breaker_refuses: bool,
}

/// The answer, with the reason when it is no.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Retry,
    /// The route's retries are used up.
    Exhausted,
    /// `retryOn` does not cover how the attempt ended.
    NotCovered,
    /// A method that is not idempotent reached an upstream, and the route does not opt in to
    /// retrying those.
    NotIdempotent,
    /// The body was not kept (larger than `max_replay_bytes`), so there is nothing to send.
    NotReplayable,
    /// The destination breaker is open: a retry would only add load.
    BreakerOpen,
}

pub(crate) use crate::endpoint::idempotent;

/// Whether `attempt` (1 for the first) may be followed by another, under `policy`.
pub fn decide(policy: &RetryPlan, attempt: u32, ended: &Ended, again: impl FnOnce() -> Again) -> Verdict {
    if attempt > policy.attempts {
        return Verdict::Exhausted;
    }
    if matches!(ended.outcome, Outcome::Local(_)) {
        // The next hop decided (`LocalReason::NextHop`): retrying here would multiply retries
        // across hops, or knock on a breaker it has open.
        return Verdict::NotCovered;
    }
    // A request the upstream did not process is covered by `refused-stream` as well.
    let covered = covers(&policy.retry_on, &policy.status_codes, ended)
        || (ended.unprocessed && policy.retry_on.refused_stream);
    if !covered {
        return Verdict::NotCovered;
    }
    let again = again();
    // The upstream did no work on a request it never got or refused: safe whatever the method.
    if !ended.unprocessed && !again.idempotent && !policy.retry_non_idempotent {
        Verdict::NotIdempotent
    } else if !again.replayable {
        Verdict::NotReplayable
    } else if again.breaker_refuses {
        Verdict::BreakerOpen
    } else {
        Verdict::Retry
    }
}

/// Whether `retryOn` (with its numeric `codes`) covers how the attempt ended. A gRPC status
/// decides alone; then the HTTP status; an attempt without a response by how it failed.
fn covers(on: &RetryOn, codes: &[u16], ended: &Ended) -> bool {
    if let Some(c) = ended.grpc {
        return match c {
            grpc::CANCELLED => on.grpc_cancelled,
            grpc::DEADLINE_EXCEEDED => on.grpc_deadline_exceeded,
            grpc::INTERNAL => on.grpc_internal,
            grpc::RESOURCE_EXHAUSTED => on.grpc_resource_exhausted,
            grpc::UNAVAILABLE => on.grpc_unavailable,
            _ => false,
        };
    }
    if let Some(s) = ended.status {
        return (on.server_error && s >= 500)
            || (on.gateway_error && matches!(s, 502..=504))
            || (on.retriable_4xx && s == 409)
            || (on.retriable_status_codes && codes.contains(&s));
    }
    match ended.outcome {
        Outcome::ConnectFailure => on.connect_failure || on.server_error || on.gateway_error,
        Outcome::Reset | Outcome::Timeout => on.reset || on.server_error || on.gateway_error,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn http(status: u16) -> Ended {
        Ended { outcome: Outcome::http(status, None), status: Some(status), grpc: None, unprocessed: false }
    }

    fn failed(outcome: Outcome) -> Ended {
        Ended { outcome, status: None, grpc: None, unprocessed: false }
    }

    fn grpc_status(code: u8) -> Ended {
        Ended { outcome: Outcome::grpc(code, None), status: None, grpc: Some(code), unprocessed: false }
    }

    const GET: Again = Again { idempotent: true, replayable: true, breaker_refuses: false };
    const POST: Again = Again { idempotent: false, ..GET };

    fn policy(retry_on: &str) -> RetryPlan {
        let mut p = RetryPlan {
            attempts: 2,
            retry_on: RetryOn::default(),
            status_codes: vec![],
            ..Default::default()
        };
        for on in retry_on.split(',').filter(|s| !s.is_empty()) {
            match on {
                "5xx" => p.retry_on.server_error = true,
                "gateway-error" => p.retry_on.gateway_error = true,
                "reset" => p.retry_on.reset = true,
                "connect-failure" => p.retry_on.connect_failure = true,
                "refused-stream" => p.retry_on.refused_stream = true,
                "retriable-4xx" => p.retry_on.retriable_4xx = true,
                "unavailable" => p.retry_on.grpc_unavailable = true,
                "cancelled" => p.retry_on.grpc_cancelled = true,
                code => {
                    p.retry_on.retriable_status_codes = true;
                    p.status_codes.push(code.parse().expect("a status code"));
                }
            }
        }
        p
    }

    /// Istio's default policy: 2 retries on connect-failure, refused-stream, unavailable,
    /// cancelled and 503 — and nothing else.
    #[test]
    fn istios_default_policy_retries_what_it_names() {
        let p = RetryPlan::default();
        let d = |e: Ended| decide(&p, 1, &e, || GET);
        assert_eq!(d(http(503)), Verdict::Retry);
        assert_eq!(d(failed(Outcome::ConnectFailure)), Verdict::Retry);
        assert_eq!(d(Ended { unprocessed: true, ..failed(Outcome::Reset) }), Verdict::Retry);
        assert_eq!(d(grpc_status(grpc::UNAVAILABLE)), Verdict::Retry);
        assert_eq!(d(grpc_status(grpc::CANCELLED)), Verdict::Retry);
        for not in [http(500), http(502), http(504), http(200), http(404), http(409)] {
            assert_eq!(d(not), Verdict::NotCovered, "{:?}", not.status);
        }
        assert_eq!(d(failed(Outcome::Reset)), Verdict::NotCovered);
        assert_eq!(d(failed(Outcome::Timeout)), Verdict::NotCovered);
        assert_eq!(d(grpc_status(grpc::INTERNAL)), Verdict::NotCovered);
    }

    #[test]
    fn each_retry_on_condition_covers_its_outcomes() {
        use Verdict::{NotCovered, Retry};
        let cases = [
            ("5xx", http(500), Retry),
            ("5xx", http(599), Retry),
            ("5xx", failed(Outcome::ConnectFailure), Retry),
            ("5xx", failed(Outcome::Timeout), Retry),
            ("5xx", http(499), NotCovered),
            ("gateway-error", http(502), Retry),
            ("gateway-error", http(504), Retry),
            ("gateway-error", http(500), NotCovered),
            ("gateway-error", failed(Outcome::Reset), Retry),
            ("reset", failed(Outcome::Reset), Retry),
            // The per-try timeout counts as a reset, as in Envoy.
            ("reset", failed(Outcome::Timeout), Retry),
            ("reset", failed(Outcome::ConnectFailure), NotCovered),
            ("reset", http(503), NotCovered),
            ("connect-failure", failed(Outcome::ConnectFailure), Retry),
            ("connect-failure", failed(Outcome::Reset), NotCovered),
            ("retriable-4xx", http(409), Retry),
            ("retriable-4xx", http(429), NotCovered),
            ("429,503", http(429), Retry),
            ("429,503", http(502), NotCovered),
            // A gRPC status decides alone, whatever the HTTP side would say.
            ("5xx", grpc_status(grpc::UNAVAILABLE), NotCovered),
            ("unavailable", grpc_status(grpc::UNAVAILABLE), Retry),
            ("unavailable", grpc_status(grpc::OK), NotCovered),
        ];
        for (on, ended, want) in cases {
            assert_eq!(decide(&policy(on), 1, &ended, || GET), want, "retryOn {on}, {ended:?}");
        }
    }

    #[test]
    fn a_request_the_upstream_never_processed_is_retried_whatever_the_method() {
        let p = policy("5xx,refused-stream");
        let refused = Ended { unprocessed: true, ..failed(Outcome::Reset) };
        assert_eq!(decide(&p, 1, &refused, || POST), Verdict::Retry);
        // ... but a POST that reached the upstream is not, unless the route opts in.
        assert_eq!(decide(&p, 1, &http(503), || POST), Verdict::NotIdempotent);
        let opted = RetryPlan { retry_non_idempotent: true, ..p.clone() };
        assert_eq!(decide(&opted, 1, &http(503), || POST), Verdict::Retry);
        // Never sent is covered by `refused-stream` even when `retryOn` names nothing else.
        assert_eq!(decide(&policy("refused-stream"), 1, &refused, || GET), Verdict::Retry);
        assert_eq!(
            decide(&policy("5xx"), 1, &Ended { unprocessed: true, ..http(200) }, || GET),
            Verdict::NotCovered
        );
    }

    #[test]
    fn the_reasons_for_no_come_in_order() {
        let p = policy("5xx");
        let d = |attempt, again| decide(&p, attempt, &http(503), || again);
        assert_eq!(d(3, GET), Verdict::Exhausted);
        assert_eq!(d(2, GET), Verdict::Retry);
        assert_eq!(d(1, Again { replayable: false, breaker_refuses: true, ..POST }), Verdict::NotIdempotent);
        assert_eq!(d(1, Again { replayable: false, breaker_refuses: true, ..GET }), Verdict::NotReplayable);
        assert_eq!(d(1, Again { breaker_refuses: true, ..GET }), Verdict::BreakerOpen);
        assert_eq!(
            decide(&RetryPlan { attempts: 0, ..p.clone() }, 1, &http(503), || GET),
            Verdict::Exhausted
        );
    }

    /// A success is never followed by the request facts being asked for: the common path does
    /// not pay for them.
    #[test]
    fn an_outcome_not_covered_never_asks_about_the_request() {
        let v = decide(&policy("5xx"), 1, &http(200), || unreachable!("asked about the request"));
        assert_eq!(v, Verdict::NotCovered);
        let v = decide(&policy("5xx"), 3, &http(503), || unreachable!("asked about the request"));
        assert_eq!(v, Verdict::Exhausted);
    }

    fn any_outcome() -> impl Strategy<Value = Ended> {
        prop_oneof![
            (100u16..600).prop_map(http),
            prop_oneof![Just(Outcome::ConnectFailure), Just(Outcome::Reset), Just(Outcome::Timeout)]
                .prop_map(failed),
            (0u8..17).prop_map(grpc_status),
        ]
        .prop_flat_map(|e| any::<bool>().prop_map(move |unprocessed| Ended { unprocessed, ..e }))
    }

    fn any_policy() -> impl Strategy<Value = RetryPlan> {
        (0u32..4, proptest::collection::vec(any::<bool>(), 12), proptest::collection::vec(400u16..600, 0..3))
            .prop_map(|(attempts, b, status_codes)| RetryPlan {
                attempts,
                retry_on: RetryOn {
                    server_error: b[0],
                    gateway_error: b[1],
                    reset: b[2],
                    connect_failure: b[3],
                    refused_stream: b[4],
                    retriable_4xx: b[5],
                    retriable_status_codes: b[6],
                    grpc_cancelled: b[7],
                    grpc_deadline_exceeded: b[8],
                    grpc_internal: b[9],
                    grpc_resource_exhausted: b[10],
                    grpc_unavailable: b[11],
                },
                status_codes,
                retry_non_idempotent: b[0] && b[11],
                ..Default::default()
            })
    }

    proptest! {
        /// The invariants every retry honours, for any policy, outcome and request: never past
        /// the route's attempts, never a processed non-idempotent request unless opted in,
        /// never without a body to send, never into an open breaker, never a response the
        /// policy does not name.
        #[test]
        fn no_retry_breaks_a_rule(
            p in any_policy(),
            attempt in 1u32..6,
            e in any_outcome(),
            idempotent: bool,
            replayable: bool,
            breaker_refuses: bool,
        ) {
            let v = decide(&p, attempt, &e, || Again { idempotent, replayable, breaker_refuses });
            if v == Verdict::Retry {
                prop_assert!(attempt <= p.attempts);
                prop_assert!(e.unprocessed || idempotent || p.retry_non_idempotent);
                prop_assert!(replayable && !breaker_refuses);
                if let (Some(s), false) = (e.status, e.unprocessed) {
                    prop_assert!(s >= 500 || s == 409 || p.status_codes.contains(&s), "status {}", s);
                }
            } else if attempt <= p.attempts && idempotent && replayable && !breaker_refuses {
                // With nothing else in the way, only the policy's coverage says no.
                prop_assert_eq!(v, Verdict::NotCovered);
            }
        }
    }
}
