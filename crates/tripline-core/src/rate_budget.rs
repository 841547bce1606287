//! A retry budget by rate, as Linkerd's `ServiceProfile.retryBudget` (and Finagle's
//! `RetryBudget`, which it follows) defines it: over the last `ttl`, retries may number at most
//! `retryRatio` × the original requests, plus `minRetriesPerSecond` × `ttl` so that a client
//! sending little can still retry.
//!
//! Tripline's own budget ([`crate::budget`]) bounds retries *in flight* against requests in
//! flight; this one bounds retries *over time* against requests over time. A cluster with a
//! ServiceProfile budget has both: a retry must fit each.
//!
//! Counting is the striped, time-bucketed [`SlidingWindow`] the breakers use: a request is
//! one `record`, a retry one `record` flagged in the window's `failures` field (so
//! `failures` counts retries, and `requests - failures` the original requests). Taking a
//! retry reads the window and then records; two workers taking the last retry at the same
//! instant may both get it, so concurrent retries can overshoot the budget by at most one per
//! worker thread. A single thread (and every test here) sees it exact.

use std::time::Duration;

use crate::clock::Nanos;
use crate::window::SlidingWindow;

/// Buckets in the window: the budget forgets a tenth of `ttl` at a time.
const BUCKETS: u32 = 10;

/// Linkerd's `retryBudget`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateBudgetConfig {
    /// Retries allowed per original request (`retryRatio`, 0.2: one retry per five requests).
    pub retry_ratio: f64,
    /// Retries allowed each second whatever the request rate (`minRetriesPerSecond`).
    pub min_retries_per_second: u32,
    /// How long a request or a retry counts (`ttl`, Linkerd's range 1 s..60 s).
    pub ttl: Duration,
}

impl Default for RateBudgetConfig {
    /// Linkerd's defaults: 0.2, 10 per second, 10 s.
    fn default() -> Self {
        RateBudgetConfig { retry_ratio: 0.2, min_retries_per_second: 10, ttl: Duration::from_secs(10) }
    }
}

impl RateBudgetConfig {
    /// Retries allowed over the window for `requests` original requests in it.
    pub fn allowed(&self, requests: u64) -> f64 {
        let ratio = if self.retry_ratio.is_finite() { self.retry_ratio.max(0.0) } else { 0.0 };
        ratio * requests as f64 + self.min_retries_per_second as f64 * self.ttl.as_secs_f64()
    }
}

/// Why the rate budget refused a retry: the window's counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateExhausted {
    /// Retries already in the window.
    pub retries: u64,
    /// Original requests in the window.
    pub requests: u64,
}

/// The budget's window of requests and retries.
#[derive(Debug)]
pub struct RateBudget {
    config: RateBudgetConfig,
    window: SlidingWindow,
}

impl RateBudget {
    pub fn new(config: RateBudgetConfig) -> Self {
        RateBudget { config, window: SlidingWindow::new(config.ttl, BUCKETS) }
    }

    pub fn config(&self) -> &RateBudgetConfig {
        &self.config
    }

    /// Counts an original request at `now` (a deposit).
    #[inline]
    pub fn deposit(&self, now: Nanos) {
        self.window.record(now, false, false);
    }

    /// Takes one retry at `now` if the window allows it (a withdrawal).
    pub fn try_withdraw(&self, now: Nanos) -> Result<(), RateExhausted> {
        let t = self.window.totals(now);
        let (retries, requests) = (t.failures, t.requests - t.failures);
        if (retries + 1) as f64 <= self.config.allowed(requests) {
            self.window.record(now, true, false);
            Ok(())
        } else {
            Err(RateExhausted { retries, requests })
        }
    }

    /// (original requests, retries) in the window at `now`.
    pub fn counts(&self, now: Nanos) -> (u64, u64) {
        let t = self.window.totals(now);
        (t.requests - t.failures, t.failures)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: Nanos = 1_000_000_000;

    #[test]
    fn the_reserve_lets_a_quiet_client_retry() {
        // 1 per second over 10 s: ten retries with no request at all, then none.
        let b = RateBudget::new(RateBudgetConfig {
            retry_ratio: 0.2,
            min_retries_per_second: 1,
            ttl: Duration::from_secs(10),
        });
        for _ in 0..10 {
            b.try_withdraw(SEC).unwrap();
        }
        assert_eq!(b.try_withdraw(SEC), Err(RateExhausted { retries: 10, requests: 0 }));
    }

    #[test]
    fn requests_earn_retries_at_the_ratio_and_both_expire_after_ttl() {
        let b = RateBudget::new(RateBudgetConfig {
            retry_ratio: 0.2,
            min_retries_per_second: 0,
            ttl: Duration::from_secs(10),
        });
        for _ in 0..50 {
            b.deposit(SEC);
        }
        let granted = (0..100).filter(|_| b.try_withdraw(2 * SEC).is_ok()).count();
        assert_eq!(granted, 10, "0.2 of 50 requests");
        // Eleven seconds later the window holds neither the requests nor the retries.
        assert_eq!(b.counts(13 * SEC), (0, 0));
        assert!(b.try_withdraw(13 * SEC).is_err(), "no requests, no reserve: nothing");
        b.deposit(13 * SEC);
        b.deposit(13 * SEC);
        b.deposit(13 * SEC);
        b.deposit(13 * SEC);
        b.deposit(13 * SEC);
        assert!(b.try_withdraw(13 * SEC).is_ok());
        assert!(b.try_withdraw(13 * SEC).is_err());
    }

    #[test]
    fn a_nan_or_negative_ratio_earns_nothing() {
        for ratio in [f64::NAN, -1.0, f64::INFINITY] {
            let b = RateBudget::new(RateBudgetConfig {
                retry_ratio: ratio,
                min_retries_per_second: 0,
                ..Default::default()
            });
            b.deposit(SEC);
            assert!(b.try_withdraw(SEC).is_err(), "{ratio}");
        }
    }
}
