//! The retry budget: always on, so that static retry counts cannot multiply into a storm.
//!
//! A retry is admitted only if, once admitted, retries in flight stay within
//! `min(max_retries, max(min_retry_concurrency, percent% × active requests))`
//! (defaults: 20%, at least 3, `http.maxRetries` unlimited), like Envoy's `retry_budget` but
//! on by default.
//!
//! "In flight" includes retries *waiting in backoff*: the proxy takes the [`RetryPermit`] before
//! it sleeps and holds it until the retry attempt has finished. Envoy releases the budget during
//! the backoff sleep, so a burst of failures can schedule far more retries than the budget
//! (envoy#30205). Both guards are RAII: dropping them, on any path, gives the slot back.
//!
//! The budget is checked when a retry is admitted. If active requests then finish, retries
//! already admitted keep running even if the limit shrinks below them; new ones are refused.
//!
//! A cluster may also have a budget by rate ([`crate::rate_budget`], Linkerd's
//! `ServiceProfile.retryBudget`): then a retry must fit both.

use crate::clock::Nanos;
use crate::rate_budget::{RateBudget, RateBudgetConfig, RateExhausted};
use crate::window::StripedCounter;
use std::ops::Deref;
use std::sync::atomic::{AtomicU64, Ordering::*};
use std::sync::Arc;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryBudgetConfig {
    /// Retries in flight as a percentage of active requests (Istio `retryBudget.percent`).
    pub percent: f64,
    /// Retries always allowed regardless of load (`retryBudget.minRetryConcurrency`).
    pub min_retry_concurrency: u32,
    /// Hard cap on retries in flight (`connectionPool.http.maxRetries`).
    pub max_retries: u32,
    /// A budget by rate besides (Linkerd's `retryBudget`); `None`: none.
    pub rate: Option<RateBudgetConfig>,
}

impl Default for RetryBudgetConfig {
    fn default() -> Self {
        RetryBudgetConfig { percent: 20.0, min_retry_concurrency: 3, max_retries: u32::MAX, rate: None }
    }
}

/// Why a retry was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BudgetExhausted {
    /// Retries in flight were at the limit for the requests in flight.
    InFlight { in_flight: u64, limit: u64, active: u64 },
    /// The budget by rate was spent (see [`crate::rate_budget`]).
    Rate(RateExhausted),
}

impl std::fmt::Display for BudgetExhausted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BudgetExhausted::InFlight { in_flight, limit, active } => write!(
                f,
                "retry budget exhausted: {in_flight} retries in flight, limit {limit} for {active} active requests"
            ),
            BudgetExhausted::Rate(r) => write!(
                f,
                "retry budget exhausted: {} retries for {} requests within the budget's ttl",
                r.retries, r.requests
            ),
        }
    }
}

/// Per-cluster retry budget. Counting active requests is one striped add per request.
#[derive(Debug)]
pub struct RetryBudget {
    config: RetryBudgetConfig,
    active: StripedCounter,
    retries: AtomicU64,
    rate: Option<RateBudget>,
}

impl RetryBudget {
    pub fn new(config: RetryBudgetConfig) -> Self {
        let rate = config.rate.map(RateBudget::new);
        RetryBudget { config, active: StripedCounter::new(), retries: AtomicU64::new(0), rate }
    }

    pub fn config(&self) -> &RetryBudgetConfig {
        &self.config
    }

    /// Marks one request active for as long as the guard lives (including all its retries),
    /// and counts it at `now` for the budget by rate, if any.
    pub fn start_request(&self, now: Nanos) -> ActiveRequest<'_> {
        self.begin(now);
        ActiveRequestOf { budget: self }
    }

    /// Like [`start_request`](Self::start_request), with a guard that owns a budget handle.
    pub fn start_request_owned(self: &Arc<Self>, now: Nanos) -> ActiveRequestOf<Arc<RetryBudget>> {
        self.begin(now);
        ActiveRequestOf { budget: self.clone() }
    }

    #[inline]
    fn begin(&self, now: Nanos) {
        self.active.add(1);
        if let Some(r) = &self.rate {
            r.deposit(now);
        }
    }

    /// The budget by rate, if the cluster has one.
    pub fn rate(&self) -> Option<&RateBudget> {
        self.rate.as_ref()
    }

    /// Active requests now.
    pub fn active(&self) -> u64 {
        // Guards add and subtract on possibly different stripes; a transiently "negative" sum
        // (a subtraction seen before its addition) reads as zero.
        let s = self.active.sum();
        if s > u64::MAX / 2 {
            0
        } else {
            s
        }
    }

    /// Retries in flight now (admitted and not yet finished, including those in backoff).
    pub fn retries_in_flight(&self) -> u64 {
        self.retries.load(Relaxed)
    }

    /// The limit for a given number of active requests.
    pub fn limit_for(&self, active: u64) -> u64 {
        let pct = if self.config.percent.is_finite() { self.config.percent.clamp(0.0, 100.0) } else { 0.0 };
        let by_load = (active as f64 * pct / 100.0).floor() as u64;
        by_load.max(self.config.min_retry_concurrency as u64).min(self.config.max_retries as u64)
    }

    /// Takes a retry slot at `now`; hold the permit through the backoff sleep and the retry
    /// attempt.
    pub fn try_retry(&self, now: Nanos) -> Result<RetryPermit<'_>, BudgetExhausted> {
        self.take_retry(now).map(|()| RetryPermitOf { budget: self })
    }

    /// Like [`try_retry`](Self::try_retry), with a permit that owns a budget handle.
    pub fn try_retry_owned(
        self: &Arc<Self>,
        now: Nanos,
    ) -> Result<RetryPermitOf<Arc<RetryBudget>>, BudgetExhausted> {
        self.take_retry(now).map(|()| RetryPermitOf { budget: self.clone() })
    }

    fn take_retry(&self, now: Nanos) -> Result<(), BudgetExhausted> {
        let active = self.active();
        let limit = self.limit_for(active);
        self.retries
            .fetch_update(AcqRel, Relaxed, |r| (r < limit).then_some(r + 1))
            .map_err(|in_flight| BudgetExhausted::InFlight { in_flight, limit, active })?;
        // The slot is taken first: a retry the rate refuses gives it back at once.
        if let Some(Err(e)) = self.rate.as_ref().map(|r| r.try_withdraw(now)) {
            self.retries.fetch_sub(1, AcqRel);
            return Err(BudgetExhausted::Rate(e));
        }
        Ok(())
    }
}

/// An active request; dropping it ends the request. `B` is a borrow or an `Arc` of the budget.
#[must_use = "the request counts as active only while the guard lives"]
#[derive(Debug)]
pub struct ActiveRequestOf<B: Deref<Target = RetryBudget>> {
    budget: B,
}

pub type ActiveRequest<'a> = ActiveRequestOf<&'a RetryBudget>;

impl<B: Deref<Target = RetryBudget>> Drop for ActiveRequestOf<B> {
    fn drop(&mut self) {
        self.budget.active.sub(1);
    }
}

/// A retry in flight; dropping it frees the slot.
#[must_use = "the retry slot is released as soon as the permit is dropped"]
#[derive(Debug)]
pub struct RetryPermitOf<B: Deref<Target = RetryBudget>> {
    budget: B,
}

pub type RetryPermit<'a> = RetryPermitOf<&'a RetryBudget>;

impl<B: Deref<Target = RetryBudget>> Drop for RetryPermitOf<B> {
    fn drop(&mut self) {
        self.budget.retries.fetch_sub(1, AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minimum_concurrency_applies_at_low_load() {
        let b = RetryBudget::new(RetryBudgetConfig::default());
        let _r = b.start_request(0);
        let p: Vec<_> = (0..3).map(|_| b.try_retry(0).unwrap()).collect();
        let e = b.try_retry(0).unwrap_err();
        assert_eq!(e, BudgetExhausted::InFlight { in_flight: 3, limit: 3, active: 1 });
        drop(p);
        assert_eq!(b.retries_in_flight(), 0);
        assert!(b.try_retry(0).is_ok());
    }

    #[test]
    fn percent_of_active_requests_applies_at_high_load() {
        let b = RetryBudget::new(RetryBudgetConfig::default());
        let reqs: Vec<_> = (0..100).map(|_| b.start_request(0)).collect();
        assert_eq!(b.active(), 100);
        let permits: Vec<_> = std::iter::from_fn(|| b.try_retry(0).ok()).take(1000).collect();
        assert_eq!(permits.len(), 20);
        drop(permits);
        drop(reqs);
        assert_eq!(b.active(), 0);
    }

    #[test]
    fn hard_cap_wins() {
        let b = RetryBudget::new(RetryBudgetConfig { max_retries: 1, ..Default::default() });
        let _p = b.try_retry(0).unwrap();
        assert!(matches!(b.try_retry(0).unwrap_err(), BudgetExhausted::InFlight { limit: 1, .. }));
        let none = RetryBudget::new(RetryBudgetConfig {
            percent: f64::NAN,
            min_retry_concurrency: 0,
            max_retries: 9,
            rate: None,
        });
        assert!(none.try_retry(0).is_err(), "a NaN percent allows nothing beyond the minimum");
    }

    #[test]
    fn permit_held_through_backoff_counts() {
        // The proxy takes the permit, sleeps, then sends: while it sleeps, the slot is taken.
        let b = RetryBudget::new(RetryBudgetConfig { min_retry_concurrency: 1, ..Default::default() });
        let waiting = b.try_retry(0).unwrap();
        assert!(b.try_retry(0).is_err());
        drop(waiting);
        assert!(b.try_retry(0).is_ok());
    }

    #[test]
    fn with_a_rate_budget_a_retry_must_fit_both_and_a_refused_one_frees_its_slot() {
        let rate = RateBudgetConfig {
            retry_ratio: 0.5,
            min_retries_per_second: 0,
            ttl: std::time::Duration::from_secs(1),
        };
        let b = RetryBudget::new(RetryBudgetConfig { rate: Some(rate), ..Default::default() });
        let _r = (b.start_request(0), b.start_request(0));
        // Two requests earn one retry by rate, although three fit in flight.
        let first = b.try_retry(0).unwrap();
        assert_eq!(
            b.try_retry(0).unwrap_err(),
            BudgetExhausted::Rate(RateExhausted { retries: 1, requests: 2 })
        );
        assert_eq!(b.retries_in_flight(), 1, "the refused retry gave its slot back");
        drop(first);
        assert!(b.try_retry(0).is_err(), "a finished retry still counts by rate until the ttl");
        assert!(b.try_retry(0).is_err());
    }
}
