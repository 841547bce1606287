//! The resilience engine wired into the proxy: per-cluster breaker, outlier detector and retry
//! budget built from the plan, their transitions turned into log lines and counters, and the
//! clock they all read.
//!
//! A cluster's [`ClusterResilience`] is kept across reloads while its configuration is
//! unchanged, so a reload never resets a breaker or forgets an ejection.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};

use tripline_config::plan::ResiliencePlan;
use tripline_core::breaker::{BreakerConfig, CircuitBreaker, Reason as BreakerReason, State, Transition};
use tripline_core::budget::RetryBudget;
use tripline_core::clock::{nanos, Nanos};
use tripline_core::outlier::{OutlierDetector, OutlierEvent};

/// The time every breaker, detector and pool reads: the tokio runtime's clock
/// (`tokio::time::Instant`), in nanoseconds. The proxy's timers, deadlines and timeouts are
/// the runtime's too, so they all agree. In a running proxy that is the monotonic clock; a
/// test that pauses the runtime's time (`#[tokio::test(start_paused = true)]`) moves all of
/// them at once by advancing it, and asserts exact behaviour without waiting.
///
/// Readings are offset so that a runtime paused before the first reading (tests run in
/// parallel, each with its own paused clock) still reads positive, increasing times.
pub fn now() -> Nanos {
    static ORIGIN: OnceLock<std::time::Instant> = OnceLock::new();
    const OFFSET: Nanos = 1 << 42;
    let origin = *ORIGIN.get_or_init(std::time::Instant::now);
    let at = tokio::time::Instant::now().into_std();
    match at.checked_duration_since(origin) {
        Some(d) => OFFSET.saturating_add(nanos(d)),
        None => OFFSET.saturating_sub(nanos(origin.saturating_duration_since(at))),
    }
}

pub const STATES: [State; 5] =
    [State::Closed, State::Open, State::HalfOpen, State::ForcedOpen, State::ForcedClosed];
pub const BREAKER_REASONS: [BreakerReason; 9] = [
    BreakerReason::ConsecutiveFailures,
    BreakerReason::FailureRatio,
    BreakerReason::SlowCallRatio,
    BreakerReason::OpenElapsed,
    BreakerReason::ProbesSucceeded,
    BreakerReason::ProbesFailed,
    BreakerReason::NoProbeCompleted,
    BreakerReason::Forced,
    BreakerReason::Reset,
];

fn state_index(s: State) -> usize {
    STATES.iter().position(|x| *x == s).unwrap_or(0)
}

fn reason_index(r: BreakerReason) -> usize {
    BREAKER_REASONS.iter().position(|x| *x == r).unwrap_or(0)
}

/// Counters of the resilience engine for one cluster (its own breaker and its endpoints').
#[derive(Debug, Default)]
pub struct ResilienceStats {
    /// Transitions into each state, by reason: `[to][reason]`.
    transitions: [[AtomicU64; BREAKER_REASONS.len()]; STATES.len()],
    pub retries_attempted: AtomicU64,
    pub retries_succeeded: AtomicU64,
    pub retries_refused_budget: AtomicU64,
    pub retries_suppressed_breaker: AtomicU64,
    pub retries_not_replayable: AtomicU64,
}

impl ResilienceStats {
    fn count(&self, t: &Transition) {
        self.transitions[state_index(t.to)][reason_index(t.reason)].fetch_add(1, Ordering::Relaxed);
    }

    /// Non-zero `(to, reason, count)` rows.
    pub fn transitions(&self) -> Vec<(State, BreakerReason, u64)> {
        let mut out = Vec::new();
        for (si, row) in self.transitions.iter().enumerate() {
            for (ri, c) in row.iter().enumerate() {
                let v = c.load(Ordering::Relaxed);
                if v > 0 {
                    out.push((STATES[si], BREAKER_REASONS[ri], v));
                }
            }
        }
        out
    }
}

/// The resilience objects of one cluster.
#[derive(Debug)]
pub struct ClusterResilience {
    pub plan: ResiliencePlan,
    /// The cluster's name, shared by its endpoint breakers' log lines.
    cluster: Arc<str>,
    /// `plan.endpoint_breaker`, shared by every endpoint breaker of the cluster.
    endpoint_breaker: Option<Arc<BreakerConfig>>,
    /// The destination breaker (whole cluster or subset).
    pub breaker: Option<Arc<CircuitBreaker>>,
    pub outlier: Option<Arc<OutlierDetector>>,
    pub budget: Arc<RetryBudget>,
    pub stats: Arc<ResilienceStats>,
    /// When the outlier detector last swept.
    pub last_sweep: AtomicU64,
    /// Where its breakers list themselves while open or half-open.
    timed: Arc<TimedBreakers>,
}

impl ClusterResilience {
    /// Builds the resilience objects, reusing those of `previous` whose config is unchanged.
    pub fn build(
        cluster: &str,
        plan: &ResiliencePlan,
        previous: Option<&ClusterResilience>,
        timed: &Arc<TimedBreakers>,
    ) -> Arc<Self> {
        let stats = previous.map(|p| p.stats.clone()).unwrap_or_default();
        let name: Arc<str> = cluster.into();
        let breaker = match (&plan.breaker, previous) {
            (Some(cfg), Some(p)) if p.plan.breaker.as_ref() == Some(cfg) => p.breaker.clone(),
            (Some(cfg), _) => Some(new_breaker(Arc::new(cfg.clone()), &name, &Arc::from(""), &stats, timed)),
            (None, _) => None,
        };
        let outlier = match (&plan.outlier, previous) {
            (Some(cfg), Some(p)) if p.plan.outlier.as_ref() == Some(cfg) => p.outlier.clone(),
            (Some(cfg), _) => {
                let name = name.clone();
                Some(Arc::new(OutlierDetector::new(cfg.clone()).with_listener(move |e: &OutlierEvent| {
                    log_outlier(&name, e);
                })))
            }
            (None, _) => None,
        };
        let budget = match previous {
            Some(p) if p.plan.retry_budget == plan.retry_budget => p.budget.clone(),
            _ => Arc::new(RetryBudget::new(plan.retry_budget)),
        };
        Arc::new(ClusterResilience {
            plan: plan.clone(),
            cluster: name,
            endpoint_breaker: plan.endpoint_breaker.clone().map(Arc::new),
            breaker,
            outlier,
            budget,
            stats,
            last_sweep: AtomicU64::new(previous.map_or(0, |p| p.last_sweep.load(Ordering::Relaxed))),
            timed: timed.clone(),
        })
    }

    /// A new per-endpoint breaker, if the plan asks for them.
    pub fn endpoint_breaker(&self, endpoint: &Arc<str>) -> Option<Arc<CircuitBreaker>> {
        let cfg = self.endpoint_breaker.as_ref()?;
        Some(new_breaker(cfg.clone(), &self.cluster, endpoint, &self.stats, &self.timed))
    }

    /// Sweeps the outlier detector if its `interval` is up; returns when its next sweep is due
    /// (`None`: the cluster has no detector). Its breakers are ticked through
    /// [`TimedBreakers`] instead, and only while open or half-open.
    pub fn sweep_outliers(&self, now: Nanos) -> Option<Nanos> {
        let o = self.outlier.as_ref()?;
        let interval = nanos(o.config().interval).max(1);
        let last = self.last_sweep.load(Ordering::Relaxed);
        if now.saturating_sub(last) >= interval
            && self.last_sweep.compare_exchange(last, now, Ordering::AcqRel, Ordering::Relaxed).is_ok()
        {
            o.sweep(now);
            return Some(now.saturating_add(interval));
        }
        Some(self.last_sweep.load(Ordering::Relaxed).saturating_add(interval))
    }
}

/// A destination breaker (`endpoint` empty) or an endpoint breaker, logging and counting its
/// transitions.
fn new_breaker(
    cfg: Arc<BreakerConfig>,
    cluster: &Arc<str>,
    endpoint: &Arc<str>,
    stats: &Arc<ResilienceStats>,
    timed: &Arc<TimedBreakers>,
) -> Arc<CircuitBreaker> {
    let (cluster, endpoint) = (cluster.clone(), endpoint.clone());
    let scope = if endpoint.is_empty() { "destination" } else { "endpoint" };
    let (stats, timed) = (stats.clone(), timed.clone());
    Arc::new_cyclic(|me: &Weak<CircuitBreaker>| {
        let me = me.clone();
        CircuitBreaker::shared(cfg).with_listener(move |t: &Transition| {
            stats.count(t);
            timed.watch(&me, t);
            log_transition(scope, &cluster, &endpoint, t);
        })
    })
}

/// The clusters' breakers (destination and endpoint) that are open or half-open: the only ones
/// a housekeeping tick has anything to do for (move an open one to half-open when its time is
/// up, resolve expired probes). A breaker puts itself here by its transition out of closed;
/// the tick forgets it once it is closed again or gone. Visiting every breaker instead, ten
/// times a second, took 4.7% of a core on an idle proxy with 100,000 endpoints, in bursts of
/// cache misses that showed in the requests' p99 (docs/benchmarks.md).
#[derive(Debug, Default)]
pub struct TimedBreakers {
    list: std::sync::Mutex<Vec<Weak<CircuitBreaker>>>,
}

fn timed_state(s: State) -> bool {
    matches!(s, State::Open | State::HalfOpen)
}

impl TimedBreakers {
    /// Called with each transition of `me` (a lock per transition, never per request).
    fn watch(&self, me: &Weak<CircuitBreaker>, t: &Transition) {
        if timed_state(t.to) && !timed_state(t.from) {
            self.lock().push(me.clone());
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Weak<CircuitBreaker>>> {
        self.list.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Ticks every open or half-open breaker and forgets the others. The ticks run outside
    /// the lock: a tick's transition comes back to [`TimedBreakers::watch`].
    pub fn tick(&self, now: Nanos) {
        let mut due = Vec::new();
        {
            let mut list = self.lock();
            // A breaker that closed and opened again between two ticks is listed twice.
            list.sort_by_key(|w| w.as_ptr() as usize);
            list.dedup_by(|a, b| a.ptr_eq(b));
            list.retain(|w| match w.upgrade() {
                Some(b) if timed_state(b.state()) => {
                    due.push(b);
                    true
                }
                _ => false,
            });
        }
        for b in due {
            b.tick(now);
        }
    }

    /// How many breakers are listed (open or half-open, or closed since the last tick).
    pub fn listed(&self) -> usize {
        self.lock().len()
    }
}

/// Breakers that belong to VirtualService routes (a ResiliencePolicy targeting a route), kept
/// by route name across reloads while their config is unchanged.
#[derive(Debug, Default)]
pub struct RouteBreakers {
    pub breakers: std::collections::BTreeMap<String, Arc<CircuitBreaker>>,
    pub stats: Arc<ResilienceStats>,
}

impl RouteBreakers {
    /// The breakers for a plan's routes, reusing those whose config did not change.
    pub fn build(&self, routes: &[(&str, &BreakerConfig)]) -> RouteBreakers {
        let mut breakers = std::collections::BTreeMap::new();
        for (name, cfg) in routes {
            let b = match self.breakers.get(*name) {
                Some(b) if b.config() == *cfg => b.clone(),
                _ => {
                    let route: Arc<str> = (*name).into();
                    let stats = self.stats.clone();
                    Arc::new(CircuitBreaker::new((*cfg).clone()).with_listener(move |t: &Transition| {
                        stats.count(t);
                        log_transition("route", &route, "", t);
                    }))
                }
            };
            breakers.insert(name.to_string(), b);
        }
        RouteBreakers { breakers, stats: self.stats.clone() }
    }
}

/// One structured line per breaker transition. `cluster` is the route name for route breakers.
fn log_transition(scope: &str, cluster: &str, endpoint: &str, t: &Transition) {
    if t.to == State::Open || t.to == State::ForcedOpen {
        tracing::warn!(
            target: "tripline::breaker",
            cluster, endpoint, scope,
            from = t.from.as_str(), to = t.to.as_str(), reason = t.reason.as_str(), evidence = %t.evidence,
            "circuit breaker opened"
        );
    } else {
        tracing::info!(
            target: "tripline::breaker",
            cluster, endpoint, scope,
            from = t.from.as_str(), to = t.to.as_str(), reason = t.reason.as_str(), evidence = %t.evidence,
            "circuit breaker transition"
        );
    }
}

/// One structured line per ejection, probe start and return.
fn log_outlier(cluster: &str, e: &OutlierEvent) {
    tracing::warn!(
        target: "tripline::outlier",
        cluster,
        endpoint = %e.endpoint,
        from = e.from.as_str(),
        to = e.to.as_str(),
        detector = e.detector.map(|d| d.as_str()).unwrap_or(""),
        evidence = %e.evidence,
        "outlier detection"
    );
}
