//! An endpoint's hold: the time it asked for. An endpoint that answers `429` (or a gRPC
//! `RESOURCE_EXHAUSTED`) with `Retry-After` is saying "not me, not now"; until then the
//! balancer sends its traffic to the others. Without this, a rate-limiting endpoint answers
//! fast, has the fewest requests in flight, and least-request balancing sends it *more*
//! traffic (the pressure lab's `rate-limiting-endpoint` scenario measured 113% of a fair
//! share and 23% of client requests refused). Envoy and Linkerd have no such hold.
//!
//! A hold is not an ejection: it is not a failure, not counted against the ejection cap, and
//! when every endpoint is held the balancer ignores the holds (the upstreams' own 429s then
//! reach clients, as without it). One atomic word; the request path reads it with one relaxed
//! load and reads the clock only while a hold is set.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use tripline_core::clock::Nanos;

/// The longest hold honoured: a `Retry-After` date far off is a misconfigured upstream, not a
/// reason to drop an endpoint for hours.
pub const MAX_HOLD: Duration = Duration::from_secs(30);

/// Until when (in [`crate::resilience::now`]'s nanoseconds) the endpoint asked to be left
/// alone; 0 when it has not.
#[derive(Debug, Default)]
pub struct Hold(AtomicU64);

impl Hold {
    /// The endpoint asked for `retry_after` at `now` (at most [`MAX_HOLD`]); a longer hold
    /// already set stands.
    pub fn set(&self, now: Nanos, retry_after: Duration) {
        let d = retry_after.min(MAX_HOLD).as_nanos() as u64;
        if d > 0 {
            self.0.fetch_max(now.saturating_add(d).max(1), Relaxed);
        }
    }

    /// Whether the hold lasts at `now()`; an expired one is cleared, so that later checks are
    /// one load again. `now` is only called while a hold is set.
    pub fn is_held(&self, now: impl FnOnce() -> Nanos) -> bool {
        let until = self.0.load(Relaxed);
        if until == 0 {
            return false;
        }
        if now() < until {
            return true;
        }
        // A newer, longer hold set meanwhile is kept.
        let _ = self.0.compare_exchange(until, 0, Relaxed, Relaxed);
        false
    }

    /// Time left on the hold at `now`, for the admin API.
    pub fn left(&self, now: Nanos) -> Option<Duration> {
        let until = self.0.load(Relaxed);
        (until > now).then(|| Duration::from_nanos(until - now))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Nanos = 1_000_000_000;

    #[test]
    fn a_hold_lasts_its_retry_after_capped_and_then_clears() {
        let h = Hold::default();
        assert!(!h.is_held(|| unreachable!("no clock read without a hold")));
        h.set(10 * S, Duration::from_secs(2));
        assert!(h.is_held(|| 11 * S));
        assert_eq!(h.left(11 * S), Some(Duration::from_secs(1)));
        assert!(!h.is_held(|| 12 * S), "over at exactly its end");
        assert!(!h.is_held(|| unreachable!("cleared: no clock read")));
        h.set(0, Duration::from_secs(3600));
        assert!(h.is_held(|| 29 * S) && !h.is_held(|| 30 * S), "capped at 30 s");
    }

    #[test]
    fn a_shorter_hold_does_not_cut_a_longer_one() {
        let h = Hold::default();
        h.set(0, Duration::from_secs(5));
        h.set(S, Duration::from_secs(1));
        assert!(h.is_held(|| 4 * S));
        h.set(0, Duration::ZERO);
        assert!(h.is_held(|| 4 * S), "Retry-After: 0 sets nothing");
    }
}
