//! Outlier detection per cluster: Istio's `outlierDetection` fields with Envoy's semantics, plus
//! latency ejection and probe-based return.
//!
//! # Detectors
//!
//! - **Consecutive errors**, evaluated on the record path, so ejection is immediate:
//!   `consecutive_5xx_errors` (default 5; every failure per the [`Classifier`]),
//!   `consecutive_gateway_errors` (502/503/504 and their gRPC peers), and, with
//!   `split_external_local_origin_errors`, `consecutive_local_origin_failures` (connect failure,
//!   reset, timeout). Without the split, local-origin failures count as gateway 5xx (as in Envoy).
//!   Any non-failure response resets the counters.
//! - **Success rate** (each `interval`): among endpoints with at least `request_volume` requests,
//!   if there are at least `minimum_hosts`, eject those below `mean − stdev_factor × stdev`.
//! - **Failure percentage** (each `interval`): eject endpoints whose failure percentage is at
//!   least `threshold`, same eligibility rules.
//! - **Latency** (each `interval`, not in Envoy, envoy#288): an endpoint whose `percentile`
//!   latency exceeds `factor` times the cluster's *and* `min_latency`. The cluster's value is the
//!   median of the eligible endpoints' percentiles, not the percentile of the merged samples, so
//!   that one very slow endpoint in a small cluster cannot hide by dragging the reference up.
//!
//! Each detection is enforced with its `enforcing` percentage (a seeded random draw), and only if
//! the ejection cap allows it. Local rejections ([`crate::classify::Outcome::Local`]) never count.
//!
//! # Ejection time
//!
//! `base_ejection_time × n` for the n-th ejection, capped at `max_ejection_time`, plus a random
//! `[0, max_ejection_time_jitter]`. `n` decreases by one per `interval` while healthy.
//!
//! # The ejection cap (`max_ejection_percent`) and small clusters
//!
//! At most `cap(hosts)` endpoints are ejected or probing at once, where with `p` =
//! `max_ejection_percent` (0..=100) and [`CapRounding`]:
//!
//! - `Floor`: `floor(hosts × p / 100)` — 10% of 9 hosts ejects nothing.
//! - `Ceil`: `ceil(hosts × p / 100)` — 10% of 11 hosts allows 2.
//! - `AtLeastOne` (default): `max(1, floor(hosts × p / 100))` when `p > 0` — 10% of 3 hosts
//!   allows 1, and so does 10% of 1 host: a single failing endpoint can be ejected, letting the
//!   caller fail fast; set `min_health_percent` to spread over it anyway.
//!
//! `p = 0` never ejects; the cap never exceeds `hosts`. Envoy instead compares the percentage
//! *before* the ejection with `p`, so small clusters swing between "nothing" and "one more than
//! the percentage says" (envoy#3263, #26877). When the endpoint set shrinks below what is
//! already ejected, the endpoints closest to their return are let back at once so the cap still
//! holds.
//!
//! # Probing instead of a timed return
//!
//! Envoy re-admits an ejected host when its time is up, with full traffic. Here an endpoint whose
//! ejection time is over becomes **probing**: [`Endpoint::admit`] lets through at most
//! `probe_concurrency` requests at once; after `probe_successes` successes it is healthy again,
//! and one failure re-ejects it for a longer time (the count n grows). A probe pass dropped
//! without a result frees its slot.
//!
//! # Panic threshold
//!
//! [`OutlierDetector::in_panic`] is true when fewer than `min_health_percent` of the endpoints
//! are healthy (Istio's default 0 disables it); the balancer should then spread load over all
//! endpoints, ejected or not.
//!
//! # Cost
//!
//! [`Endpoint::admit`] on a healthy endpoint is one atomic load; [`Pass::record`] is a few atomic
//! operations on per-thread stripes. [`OutlierDetector::sweep`] and endpoint updates take a lock.

use crate::breaker::human;
use crate::classify::{Class, Classifier, Outcome};
use crate::clock::{nanos, Nanos};
use crate::rng::{Rng, SplitMix};
use crate::window::{percentile, LatencyHistogram, StripedCounter, HISTOGRAM_BUCKETS};
use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering::*};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

/// How many events a detector remembers.
pub const EVENT_HISTORY: usize = 32;

/// How `max_ejection_percent` becomes a number of endpoints (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CapRounding {
    Floor,
    Ceil,
    #[default]
    AtLeastOne,
}

/// The number of endpoints that may be ejected at once out of `hosts`.
pub fn ejection_cap(hosts: u32, percent: u32, rounding: CapRounding) -> u32 {
    let (n, p) = (hosts as u64, percent.min(100) as u64);
    let cap = match rounding {
        CapRounding::Floor => n * p / 100,
        CapRounding::Ceil => (n * p).div_ceil(100),
        CapRounding::AtLeastOne if p > 0 && n > 0 => (n * p / 100).max(1),
        CapRounding::AtLeastOne => 0,
    };
    cap.min(n) as u32
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SuccessRateRule {
    pub minimum_hosts: u32,
    pub request_volume: u32,
    pub stdev_factor: f64,
}

impl Default for SuccessRateRule {
    fn default() -> Self {
        SuccessRateRule { minimum_hosts: 5, request_volume: 100, stdev_factor: 1.9 }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FailurePercentageRule {
    pub threshold: u32,
    pub minimum_hosts: u32,
    pub request_volume: u32,
}

impl Default for FailurePercentageRule {
    fn default() -> Self {
        FailurePercentageRule { threshold: 85, minimum_hosts: 5, request_volume: 50 }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LatencyRule {
    /// Which percentile to compare (0..=1), default 0.9.
    pub percentile: f64,
    /// Eject above `factor ×` the cluster's value, default 3.
    pub factor: f64,
    pub minimum_hosts: u32,
    pub request_volume: u32,
    /// Never eject an endpoint faster than this (3 × 1 ms is not a problem), default 50 ms.
    pub min_latency: Duration,
}

impl Default for LatencyRule {
    fn default() -> Self {
        LatencyRule {
            percentile: 0.9,
            factor: 3.0,
            minimum_hosts: 3,
            request_volume: 50,
            min_latency: Duration::from_millis(50),
        }
    }
}

/// Percentage (0..=100) of detections actually enforced, per detector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Enforcing {
    pub consecutive_5xx: u32,
    pub consecutive_gateway: u32,
    pub consecutive_local_origin: u32,
    pub success_rate: u32,
    pub failure_percentage: u32,
    pub latency: u32,
}

impl Default for Enforcing {
    /// All 100: a detector that is configured is enforced (Envoy defaults some to 0, which
    /// surprises Istio users who set `consecutiveGatewayErrors`).
    fn default() -> Self {
        Enforcing {
            consecutive_5xx: 100,
            consecutive_gateway: 100,
            consecutive_local_origin: 100,
            success_rate: 100,
            failure_percentage: 100,
            latency: 100,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct OutlierConfig {
    pub consecutive_5xx_errors: Option<u32>,
    pub consecutive_gateway_errors: Option<u32>,
    pub consecutive_local_origin_failures: Option<u32>,
    pub split_external_local_origin_errors: bool,
    pub interval: Duration,
    pub base_ejection_time: Duration,
    pub max_ejection_time: Duration,
    pub max_ejection_time_jitter: Duration,
    pub max_ejection_percent: u32,
    pub cap_rounding: CapRounding,
    pub min_health_percent: u32,
    pub success_rate: Option<SuccessRateRule>,
    pub failure_percentage: Option<FailurePercentageRule>,
    pub latency: Option<LatencyRule>,
    pub enforcing: Enforcing,
    /// Probe requests at once to an endpoint whose ejection is over (default 1).
    pub probe_concurrency: u32,
    /// Successful probes needed to return (default 1).
    pub probe_successes: u32,
    pub classifier: Classifier,
}

impl Default for OutlierConfig {
    fn default() -> Self {
        OutlierConfig {
            consecutive_5xx_errors: Some(5),
            consecutive_gateway_errors: None,
            consecutive_local_origin_failures: Some(5),
            split_external_local_origin_errors: false,
            interval: Duration::from_secs(10),
            base_ejection_time: Duration::from_secs(30),
            max_ejection_time: Duration::from_secs(300),
            max_ejection_time_jitter: Duration::ZERO,
            max_ejection_percent: 10,
            cap_rounding: CapRounding::AtLeastOne,
            min_health_percent: 0,
            success_rate: None,
            failure_percentage: None,
            latency: None,
            enforcing: Enforcing::default(),
            probe_concurrency: 1,
            probe_successes: 1,
            classifier: Classifier::default(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Detector {
    Consecutive5xx,
    ConsecutiveGateway,
    ConsecutiveLocalOrigin,
    SuccessRate,
    FailurePercentage,
    Latency,
    ProbeFailed,
}

impl Detector {
    pub const ALL: [Detector; 7] = [
        Detector::Consecutive5xx,
        Detector::ConsecutiveGateway,
        Detector::ConsecutiveLocalOrigin,
        Detector::SuccessRate,
        Detector::FailurePercentage,
        Detector::Latency,
        Detector::ProbeFailed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Detector::Consecutive5xx => "consecutive-5xx",
            Detector::ConsecutiveGateway => "consecutive-gateway",
            Detector::ConsecutiveLocalOrigin => "consecutive-local-origin",
            Detector::SuccessRate => "success-rate",
            Detector::FailurePercentage => "failure-percentage",
            Detector::Latency => "latency",
            Detector::ProbeFailed => "probe-failed",
        }
    }

    fn enforcing(self, e: &Enforcing) -> u32 {
        match self {
            Detector::Consecutive5xx => e.consecutive_5xx,
            Detector::ConsecutiveGateway => e.consecutive_gateway,
            Detector::ConsecutiveLocalOrigin => e.consecutive_local_origin,
            Detector::SuccessRate => e.success_rate,
            Detector::FailurePercentage => e.failure_percentage,
            Detector::Latency => e.latency,
            Detector::ProbeFailed => 100,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Health {
    Healthy = 0,
    Ejected = 1,
    Probing = 2,
}

impl Health {
    fn from_u8(v: u8) -> Health {
        match v {
            1 => Health::Ejected,
            2 => Health::Probing,
            _ => Health::Healthy,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Health::Healthy => "healthy",
            Health::Ejected => "ejected",
            Health::Probing => "probing",
        }
    }
}

/// One change of an endpoint's health, with its evidence.
#[derive(Debug, Clone, PartialEq)]
pub struct OutlierEvent {
    pub endpoint: String,
    pub from: Health,
    pub to: Health,
    /// The detector, for ejections.
    pub detector: Option<Detector>,
    pub at: Nanos,
    /// For ejections: when probing may start.
    pub until: Option<Nanos>,
    pub evidence: String,
}

impl fmt::Display for OutlierEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {} -> {}", self.endpoint, self.from.as_str(), self.to.as_str())?;
        if let Some(d) = self.detector {
            write!(f, " ({})", d.as_str())?;
        }
        write!(f, ": {}", self.evidence)
    }
}

type Listener = Box<dyn Fn(&OutlierEvent) + Send + Sync>;

struct Shared {
    cfg: OutlierConfig,
    /// Endpoints ejected or probing.
    ejected: AtomicU32,
    hosts: AtomicU32,
    ejections_total: [AtomicU64; 7],
    not_enforced: [AtomicU64; 7],
    capped: AtomicU64,
    rng: Box<dyn Rng>,
    listener: OnceLock<Listener>,
    history: Mutex<VecDeque<OutlierEvent>>,
}

impl Shared {
    fn cap(&self) -> u32 {
        ejection_cap(self.hosts.load(Acquire), self.cfg.max_ejection_percent, self.cfg.cap_rounding)
    }

    fn emit(&self, e: OutlierEvent) {
        {
            let mut h = self.history.lock().unwrap_or_else(PoisonError::into_inner);
            if h.len() == EVENT_HISTORY {
                h.pop_front();
            }
            h.push_back(e.clone());
        }
        if let Some(l) = self.listener.get() {
            l(&e);
        }
    }

    fn ejection_time(&self, n: u32) -> Duration {
        let c = &self.cfg;
        let t =
            c.base_ejection_time.saturating_mul(n.max(1)).min(c.max_ejection_time.max(c.base_ejection_time));
        let jitter = nanos(c.max_ejection_time_jitter);
        let extra = if jitter == 0 { 0 } else { self.rng.below(jitter.saturating_add(1)) };
        t.saturating_add(Duration::from_nanos(extra))
    }
}

const FIELD: u32 = 21;
const MASK: u64 = (1 << FIELD) - 1;
const F5XX: u32 = 0;
const FGW: u32 = FIELD;
const FLO: u32 = 2 * FIELD;

fn field(v: u64, at: u32) -> u32 {
    ((v >> at) & MASK) as u32
}

fn bump(v: u64, at: u32) -> u64 {
    let n = (field(v, at) as u64 + 1).min(MASK);
    (v & !(MASK << at)) | n << at
}

fn clear(v: u64, at: u32) -> u64 {
    v & !(MASK << at)
}

/// One endpoint's outlier state: keep the `Arc` next to the endpoint in the balancer.
pub struct Endpoint {
    id: String,
    shared: Arc<Shared>,
    health: AtomicU8,
    until: AtomicU64,
    /// Consecutive 5xx | gateway << 21 | local-origin << 42.
    consecutive: AtomicU64,
    /// Requests | failures << 32, this interval.
    interval: StripedCounter,
    latency: Option<LatencyHistogram>,
    probes_in_flight: AtomicU32,
    probe_ok: AtomicU32,
    times_ejected: AtomicU32,
    removed: AtomicBool,
}

impl Shared {
    fn in_panic(&self) -> bool {
        let hosts = self.hosts.load(Acquire) as u64;
        let healthy = hosts.saturating_sub(self.ejected.load(Acquire) as u64);
        hosts > 0 && healthy * 100 < self.cfg.min_health_percent.min(100) as u64 * hosts
    }
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Endpoint").field("id", &self.id).field("health", &self.health()).finish()
    }
}

/// An admin view of one endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointSnapshot {
    pub id: String,
    pub health: Health,
    pub until: Option<Nanos>,
    pub times_ejected: u32,
    pub consecutive_5xx: u32,
    pub consecutive_gateway: u32,
    pub consecutive_local_origin: u32,
    pub probes_in_flight: u32,
}

impl Endpoint {
    fn new(id: String, shared: Arc<Shared>) -> Self {
        let latency = shared.cfg.latency.map(|_| LatencyHistogram::default());
        Endpoint {
            id,
            shared,
            health: AtomicU8::new(Health::Healthy as u8),
            until: AtomicU64::new(0),
            consecutive: AtomicU64::new(0),
            interval: StripedCounter::new(),
            latency,
            probes_in_flight: AtomicU32::new(0),
            probe_ok: AtomicU32::new(0),
            times_ejected: AtomicU32::new(0),
            removed: AtomicBool::new(false),
        }
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn health(&self) -> Health {
        Health::from_u8(self.health.load(Acquire))
    }

    /// Its detector's [`OutlierDetector::in_panic`]: read where the balancer needs it, so
    /// nothing has to copy it to the clusters periodically.
    #[inline]
    pub fn detector_in_panic(&self) -> bool {
        self.shared.in_panic()
    }

    /// Whether the balancer may pick this endpoint now: healthy, or its ejection is over and a
    /// probe slot is free. Atomic loads only; it reserves nothing (see [`Endpoint::admit`]).
    #[inline]
    pub fn is_available(&self, now: Nanos) -> bool {
        match self.health() {
            Health::Healthy => true,
            Health::Ejected => {
                now >= self.until.load(Acquire)
                    && self.probes_in_flight.load(Acquire) < self.shared.cfg.probe_concurrency
            }
            Health::Probing => self.probes_in_flight.load(Acquire) < self.shared.cfg.probe_concurrency,
        }
    }

    /// Lets one request through to this endpoint, or `None` when it is ejected or its probe
    /// slots are busy. A healthy endpoint costs one atomic load.
    #[inline]
    pub fn admit(&self, now: Nanos) -> Option<Pass<'_>> {
        self.decide(now).map(|probe| Pass { endpoint: self, probe })
    }

    /// Like [`admit`](Self::admit), with a pass that owns a handle to the endpoint, so it can
    /// travel with a request across tasks.
    #[inline]
    pub fn admit_owned(self: &Arc<Self>, now: Nanos) -> Option<OwnedPass> {
        self.decide(now).map(|probe| PassOf { endpoint: self.clone(), probe })
    }

    /// `Some(is_probe)` when a request may go through.
    #[inline]
    fn decide(&self, now: Nanos) -> Option<bool> {
        match self.health() {
            Health::Healthy => Some(false),
            Health::Ejected => {
                if now < self.until.load(Acquire) {
                    return None;
                }
                self.start_probing(now);
                self.admit_probe()
            }
            Health::Probing => self.admit_probe(),
        }
    }

    fn admit_probe(&self) -> Option<bool> {
        if self.health() != Health::Probing {
            return None;
        }
        let max = self.shared.cfg.probe_concurrency.max(1);
        self.probes_in_flight.fetch_update(AcqRel, Acquire, |n| (n < max).then_some(n + 1)).ok()?;
        Some(true)
    }

    fn start_probing(&self, now: Nanos) {
        self.probe_ok.store(0, Release);
        let (e, p) = (Health::Ejected as u8, Health::Probing as u8);
        if self.health.compare_exchange(e, p, AcqRel, Acquire).is_ok() {
            let ejected_for = Duration::from_nanos(now.saturating_sub(self.until.load(Acquire)));
            self.shared.emit(OutlierEvent {
                endpoint: self.id.clone(),
                from: Health::Ejected,
                to: Health::Probing,
                detector: None,
                at: now,
                until: None,
                evidence: format!("ejection time over ({} ago); admitting probes", human(ejected_for)),
            });
        }
    }

    /// Ejects (from healthy, within the cap) or re-ejects (from probing). Returns whether it did.
    fn eject(&self, from: Health, detector: Detector, now: Nanos, evidence: impl FnOnce() -> String) -> bool {
        let sh = &self.shared;
        if self.removed.load(Acquire) || self.health() != from {
            return false;
        }
        let pct = detector.enforcing(&sh.cfg.enforcing).min(100) as u64;
        if pct < 100 && sh.rng.below(100) >= pct {
            sh.not_enforced[detector as usize].fetch_add(1, Relaxed);
            return false;
        }
        if from == Health::Healthy {
            let cap = sh.cap();
            if sh.ejected.fetch_update(AcqRel, Acquire, |e| (e < cap).then_some(e + 1)).is_err() {
                sh.capped.fetch_add(1, Relaxed);
                return false;
            }
        }
        let n = self.times_ejected.load(Acquire).saturating_add(1);
        let until = now.saturating_add(nanos(sh.ejection_time(n)));
        self.until.store(until, Release);
        if self.health.compare_exchange(from as u8, Health::Ejected as u8, AcqRel, Acquire).is_err() {
            if from == Health::Healthy {
                sh.ejected.fetch_sub(1, AcqRel);
            }
            return false;
        }
        self.times_ejected.store(n, Release);
        self.consecutive.store(0, Release);
        sh.ejections_total[detector as usize].fetch_add(1, Relaxed);
        let evidence = format!(
            "{}; ejection #{n} for {}",
            evidence(),
            human(Duration::from_nanos(until.saturating_sub(now)))
        );
        sh.emit(OutlierEvent {
            endpoint: self.id.clone(),
            from,
            to: Health::Ejected,
            detector: Some(detector),
            at: now,
            until: Some(until),
            evidence,
        });
        true
    }

    fn set_healthy(&self, from: Health, now: Nanos, evidence: String) -> bool {
        if self.health.compare_exchange(from as u8, Health::Healthy as u8, AcqRel, Acquire).is_err() {
            return false;
        }
        self.consecutive.store(0, Release);
        self.shared.ejected.fetch_sub(1, AcqRel);
        let e = OutlierEvent {
            endpoint: self.id.clone(),
            from,
            to: Health::Healthy,
            detector: None,
            at: now,
            until: None,
            evidence,
        };
        self.shared.emit(e);
        true
    }

    fn record_probe(&self, class: Class, now: Nanos) {
        if class.failure {
            self.eject(Health::Probing, Detector::ProbeFailed, now, || "probe failed".to_string());
        } else {
            let ok = self.probe_ok.fetch_add(1, AcqRel) + 1;
            let need = self.shared.cfg.probe_successes.max(1);
            if ok >= need {
                self.set_healthy(Health::Probing, now, format!("{ok} probe(s) succeeded"));
            }
        }
    }

    fn record(&self, outcome: &Outcome, class: Class, latency: Duration, now: Nanos) {
        if self.health() != Health::Healthy {
            return; // admitted before an ejection: no longer evidence either way
        }
        let cfg = &self.shared.cfg;
        let local = class.local_origin && cfg.split_external_local_origin_errors;
        if !local {
            self.interval.add(1 | (class.failure as u64) << 32);
            if let Some(h) = &self.latency {
                h.record(latency);
            }
        }
        if !class.failure {
            // Any response that is not a failure resets every streak (one load when none runs).
            if self.consecutive.load(Relaxed) != 0 {
                self.consecutive.store(0, Relaxed);
            }
            return;
        }
        let update = |v: u64| -> u64 {
            if local {
                return bump(v, FLO);
            }
            let v = bump(v, F5XX);
            let v = if class.gateway_error { bump(v, FGW) } else { clear(v, FGW) };
            if cfg.split_external_local_origin_errors {
                clear(v, FLO) // a response arrived: the connection itself worked
            } else {
                v
            }
        };
        let prev = self.consecutive.fetch_update(AcqRel, Relaxed, |v| Some(update(v))).unwrap_or(0);
        let v = update(prev);
        let rules = [
            (
                local,
                cfg.consecutive_local_origin_failures,
                FLO,
                Detector::ConsecutiveLocalOrigin,
                "local-origin failures",
            ),
            (!local, cfg.consecutive_5xx_errors, F5XX, Detector::Consecutive5xx, "5xx"),
            (!local, cfg.consecutive_gateway_errors, FGW, Detector::ConsecutiveGateway, "gateway errors"),
        ];
        for (applies, threshold, at, detector, what) in rules {
            let Some(t) = threshold.filter(|&t| applies && t > 0) else { continue };
            if field(v, at) >= t {
                self.consecutive.fetch_update(AcqRel, Relaxed, |v| Some(clear(v, at))).ok();
                let n = field(v, at);
                if self.eject(Health::Healthy, detector, now, || {
                    format!("{n} consecutive {what} (last {outcome})")
                }) {
                    return;
                }
            }
        }
    }

    pub fn snapshot(&self) -> EndpointSnapshot {
        let h = self.health();
        let c = self.consecutive.load(Acquire);
        EndpointSnapshot {
            id: self.id.clone(),
            health: h,
            until: (h == Health::Ejected).then(|| self.until.load(Acquire)),
            times_ejected: self.times_ejected.load(Acquire),
            consecutive_5xx: field(c, F5XX),
            consecutive_gateway: field(c, FGW),
            consecutive_local_origin: field(c, FLO),
            probes_in_flight: self.probes_in_flight.load(Acquire),
        }
    }
}

/// Permission to send one request to an endpoint; record the outcome with [`PassOf::record`].
/// `E` is how it refers to the endpoint: a borrow ([`Pass`]) or an `Arc` ([`OwnedPass`]).
#[must_use = "record the outcome, or drop the pass to cancel"]
pub struct PassOf<E: std::ops::Deref<Target = Endpoint>> {
    endpoint: E,
    probe: bool,
}

/// A pass borrowing its endpoint.
pub type Pass<'a> = PassOf<&'a Endpoint>;
/// A pass owning a handle to its endpoint.
pub type OwnedPass = PassOf<Arc<Endpoint>>;

impl<E: std::ops::Deref<Target = Endpoint>> fmt::Debug for PassOf<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pass").field("endpoint", &self.endpoint.id).field("probe", &self.probe).finish()
    }
}

impl<E: std::ops::Deref<Target = Endpoint>> PassOf<E> {
    pub fn is_probe(&self) -> bool {
        self.probe
    }

    #[inline]
    pub fn record(self, outcome: &Outcome, latency: Duration, now: Nanos) {
        let ep: &Endpoint = &self.endpoint;
        let class = ep.shared.cfg.classifier.classify(outcome);
        if class.ignored {
            return;
        }
        if self.probe {
            ep.record_probe(class, now);
        } else {
            ep.record(outcome, class, latency, now);
        }
    }
}

impl<E: std::ops::Deref<Target = Endpoint>> Drop for PassOf<E> {
    fn drop(&mut self) {
        if self.probe {
            self.endpoint.probes_in_flight.fetch_sub(1, AcqRel);
        }
    }
}

/// The outlier detector of one cluster (or subset).
pub struct OutlierDetector {
    shared: Arc<Shared>,
    endpoints: Mutex<Vec<Arc<Endpoint>>>,
}

impl fmt::Debug for OutlierDetector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OutlierDetector").field("config", &self.shared.cfg).finish()
    }
}

struct Sample {
    ep: Arc<Endpoint>,
    requests: u64,
    failures: u64,
    hist: Option<Box<[u64; HISTOGRAM_BUCKETS]>>,
}

impl OutlierDetector {
    pub fn new(cfg: OutlierConfig) -> Self {
        Self::with_rng(cfg, Box::new(SplitMix::from_entropy()))
    }

    pub fn with_rng(cfg: OutlierConfig, rng: Box<dyn Rng>) -> Self {
        let shared = Shared {
            cfg,
            ejected: AtomicU32::new(0),
            hosts: AtomicU32::new(0),
            ejections_total: Default::default(),
            not_enforced: Default::default(),
            capped: AtomicU64::new(0),
            rng,
            listener: OnceLock::new(),
            history: Mutex::new(VecDeque::new()),
        };
        OutlierDetector { shared: Arc::new(shared), endpoints: Mutex::new(Vec::new()) }
    }

    /// Calls `f` on every event (outside the detector's locks). Only the first listener is kept.
    pub fn with_listener(self, f: impl Fn(&OutlierEvent) + Send + Sync + 'static) -> Self {
        let _ = self.shared.listener.set(Box::new(f));
        self
    }

    pub fn config(&self) -> &OutlierConfig {
        &self.shared.cfg
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Arc<Endpoint>>> {
        self.endpoints.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Replaces the endpoint set (config reload, discovery): endpoints that stay keep their state
    /// and their handles; new ones start healthy; removed ones stop counting. Returns the handles
    /// in the order of `ids` (duplicates share one handle).
    pub fn update_endpoints<S: AsRef<str>>(&self, ids: &[S], now: Nanos) -> Vec<Arc<Endpoint>> {
        let mut eps = self.lock();
        let mut old: HashMap<String, Arc<Endpoint>> = eps.drain(..).map(|e| (e.id.clone(), e)).collect();
        let mut handles = Vec::with_capacity(ids.len());
        let mut kept: HashMap<&str, Arc<Endpoint>> = HashMap::new();
        for id in ids {
            let id = id.as_ref();
            let ep = match kept.get(id) {
                Some(ep) => ep.clone(),
                None => {
                    let ep = old
                        .remove(id)
                        .unwrap_or_else(|| Arc::new(Endpoint::new(id.to_string(), self.shared.clone())));
                    kept.insert(id, ep.clone());
                    eps.push(ep.clone());
                    ep
                }
            };
            handles.push(ep);
        }
        for gone in old.into_values() {
            gone.removed.store(true, Release);
            let h = gone.health();
            if h != Health::Healthy
                && gone.health.compare_exchange(h as u8, Health::Healthy as u8, AcqRel, Acquire).is_ok()
            {
                self.shared.ejected.fetch_sub(1, AcqRel);
            }
        }
        self.shared.hosts.store(eps.len() as u32, Release);
        // The set shrank under what is ejected: let back those closest to their return.
        let mut out: Vec<_> = eps.iter().filter(|e| e.health() != Health::Healthy).cloned().collect();
        out.sort_by_key(|e| e.until.load(Acquire));
        let cap = self.shared.cap();
        for ep in out {
            if self.shared.ejected.load(Acquire) <= cap {
                break;
            }
            let from = ep.health();
            ep.set_healthy(from, now, format!("returned early: ejection cap is now {cap}"));
        }
        handles
    }

    pub fn endpoint(&self, id: &str) -> Option<Arc<Endpoint>> {
        self.lock().iter().find(|e| e.id == id).cloned()
    }

    pub fn endpoints(&self) -> Vec<Arc<Endpoint>> {
        self.lock().clone()
    }

    /// Endpoints ejected or probing.
    pub fn ejections_active(&self) -> u32 {
        self.shared.ejected.load(Acquire)
    }

    /// The current cap on [`ejections_active`](Self::ejections_active).
    pub fn ejection_cap(&self) -> u32 {
        self.shared.cap()
    }

    pub fn ejections_total(&self, d: Detector) -> u64 {
        self.shared.ejections_total[d as usize].load(Relaxed)
    }

    /// Detections skipped by an enforcing percentage below 100.
    pub fn detected_not_enforced(&self, d: Detector) -> u64 {
        self.shared.not_enforced[d as usize].load(Relaxed)
    }

    /// Detections refused because the ejection cap was reached.
    pub fn ejections_capped(&self) -> u64 {
        self.shared.capped.load(Relaxed)
    }

    /// Fewer than `min_health_percent` of the endpoints are healthy: balance over all of them.
    #[inline]
    pub fn in_panic(&self) -> bool {
        self.shared.in_panic()
    }

    /// The last events, oldest first.
    pub fn history(&self) -> Vec<OutlierEvent> {
        self.shared.history.lock().unwrap_or_else(PoisonError::into_inner).iter().cloned().collect()
    }

    /// The periodic pass, every `interval`: decays ejection counts, starts probing endpoints
    /// whose time is over, and runs the success-rate, failure-percentage and latency detectors on
    /// this interval's counts (which it resets).
    pub fn sweep(&self, now: Nanos) {
        let eps = self.lock().clone();
        let mut samples = Vec::with_capacity(eps.len());
        for ep in eps {
            let packed = ep.interval.take();
            // An endpoint that never recorded a latency has no histogram to read.
            let hist = ep.latency.as_ref().filter(|h| h.is_allocated()).map(|h| {
                let mut acc = Box::new([0u64; HISTOGRAM_BUCKETS]);
                h.take_into(&mut acc);
                acc
            });
            match ep.health() {
                Health::Healthy => {
                    let t = ep.times_ejected.load(Acquire);
                    if t > 0 {
                        ep.times_ejected.store(t - 1, Release);
                    }
                    let (requests, failures) = (packed & 0xffff_ffff, packed >> 32);
                    samples.push(Sample { ep, requests, failures, hist });
                }
                Health::Ejected if now >= ep.until.load(Acquire) => ep.start_probing(now),
                _ => {}
            }
        }
        let span = human(self.shared.cfg.interval);
        self.success_rate(&samples, now, &span);
        self.failure_percentage(&samples, now, &span);
        self.latency(&samples, now, &span);
    }

    fn success_rate(&self, samples: &[Sample], now: Nanos, span: &str) {
        let Some(rule) = self.shared.cfg.success_rate else { return };
        let eligible: Vec<_> =
            samples.iter().filter(|s| s.requests >= rule.request_volume.max(1) as u64).collect();
        if eligible.len() < rule.minimum_hosts.max(1) as usize {
            return;
        }
        let rate = |s: &Sample| 100.0 * (s.requests - s.failures.min(s.requests)) as f64 / s.requests as f64;
        let n = eligible.len() as f64;
        let mean = eligible.iter().map(|s| rate(s)).sum::<f64>() / n;
        let var = eligible.iter().map(|s| (rate(s) - mean).powi(2)).sum::<f64>() / n;
        let threshold = mean - rule.stdev_factor * var.sqrt();
        for s in eligible {
            let r = rate(s);
            if r < threshold {
                s.ep.eject(Health::Healthy, Detector::SuccessRate, now, || {
                    format!(
                        "success rate {r:.1}% < {threshold:.1}% (mean {mean:.1}% - {} x stdev {:.1}%) over {span}, {} requests",
                        rule.stdev_factor,
                        var.sqrt(),
                        s.requests
                    )
                });
            }
        }
    }

    fn failure_percentage(&self, samples: &[Sample], now: Nanos, span: &str) {
        let Some(rule) = self.shared.cfg.failure_percentage else { return };
        let eligible: Vec<_> =
            samples.iter().filter(|s| s.requests >= rule.request_volume.max(1) as u64).collect();
        if eligible.len() < rule.minimum_hosts as usize {
            return;
        }
        for s in eligible {
            let pct = 100.0 * s.failures as f64 / s.requests as f64;
            if pct >= rule.threshold as f64 {
                s.ep.eject(Health::Healthy, Detector::FailurePercentage, now, || {
                    format!(
                        "failure percentage {pct:.1}% >= {}% over {span}, {} requests",
                        rule.threshold, s.requests
                    )
                });
            }
        }
    }

    fn latency(&self, samples: &[Sample], now: Nanos, span: &str) {
        let Some(rule) = self.shared.cfg.latency else { return };
        let q = rule.percentile;
        let mut eligible: Vec<(&Sample, Duration, u64)> = samples
            .iter()
            .filter_map(|s| {
                let h = s.hist.as_deref()?;
                let volume: u64 = h.iter().sum();
                let p = percentile(h, q)?;
                (volume >= rule.request_volume.max(1) as u64).then_some((s, p, volume))
            })
            .collect();
        if eligible.len() < rule.minimum_hosts.max(1) as usize {
            return;
        }
        eligible.sort_by_key(|e| e.1);
        let median = eligible[eligible.len() / 2].1;
        let factor = if rule.factor.is_finite() { rule.factor.max(1.0) } else { f64::MAX };
        let limit = Duration::try_from_secs_f64(median.as_secs_f64() * factor).unwrap_or(Duration::MAX);
        for (s, p, volume) in eligible {
            if p > limit && p >= rule.min_latency {
                s.ep.eject(Health::Healthy, Detector::Latency, now, || {
                    format!(
                        "p{} latency {} > {} x cluster median {} over {span}, {volume} requests",
                        (q * 100.0).round(),
                        human(p),
                        rule.factor,
                        human(median)
                    )
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::SplitMix;

    /// An endpoint that never sees a request has no latency histogram, and the sweep does not
    /// make one; its first result does.
    #[test]
    fn the_latency_histogram_is_allocated_by_the_first_result() {
        let cfg = OutlierConfig { latency: Some(LatencyRule::default()), ..Default::default() };
        let d = OutlierDetector::with_rng(cfg, Box::new(SplitMix::seeded(1)));
        let eps = d.update_endpoints(&["a:1", "b:1"], 0);
        let allocated = |e: &Endpoint| e.latency.as_ref().expect("latency rule on").is_allocated();
        d.sweep(10_000_000_000);
        assert!(!allocated(&eps[0]) && !allocated(&eps[1]));
        eps[0].admit(1).expect("healthy").record(&Outcome::Http(200), Duration::from_millis(3), 1);
        assert!(allocated(&eps[0]) && !allocated(&eps[1]));
    }
}
