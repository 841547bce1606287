//! A three-state circuit breaker (closed, open, half-open) with a lock-free admit path.
//!
//! # Semantics
//!
//! - **Closed** admits everything. It trips to open on any enabled rule: `consecutive_failures`
//!   in a row; a `failure_ratio` over the sliding window once it holds `min_requests`; a
//!   `slow_calls` ratio (latency ≥ threshold) likewise. Ratios are evaluated when a failure or a
//!   slow call is recorded (a success cannot make a ratio worse), so a healthy burst of 10× the
//!   traffic never even reads the window.
//! - **Open** rejects with `retry_after` until the open duration elapses. The duration is
//!   `open_duration × open_multiplier^(n−1)` for the n-th consecutive opening, capped at
//!   `max_open_duration`, then jittered by ±`open_jitter` (after the cap, so breakers at the cap
//!   still spread out and do not re-probe in lock step). The count n resets when the breaker trips
//!   after having stayed closed for at least `max_open_duration`.
//! - **Half-open** admits at most `probes` requests at once (one slot each, taken with a CAS).
//!   It closes as soon as `ceil(probe_success_ratio × probes)` of them succeed, and re-opens as
//!   soon as that has become impossible; one flaky probe therefore does not re-open a breaker that
//!   needs 2 of 3. A probe not finished within `probe_timeout` counts as failed, and the whole
//!   half-open episode ends `probe_timeout` after its first probe at the latest, deciding on the
//!   success ratio of the probes completed so far. So a breaker can never be stuck half-open
//!   (resilience4j#935, Sentinel#1638). Expiry is resolved by the admit path and by [`tick`].
//!   Dropping an unrecorded probe admission frees its slot without counting it; if *no* probe
//!   completed by the end of the episode the breaker re-opens without growing its open time.
//! - Results of admissions taken in an earlier state (before a trip, or before a recovery) are
//!   ignored, so a slow failure from before an outage cannot re-trip a recovered breaker.
//!
//! # Modes
//!
//! [`Mode::DryRun`] runs the same state machine and reports the same transitions but never
//! rejects: an admission that would have been rejected says so ([`Admission::would_reject`]).
//! [`CircuitBreaker::force_open`] and [`CircuitBreaker::force_closed`] freeze the breaker for an
//! operator (force-open rejects even in dry run: it is an explicit order); [`CircuitBreaker::reset`]
//! returns to a fresh closed state.
//!
//! # Observability
//!
//! Every transition is a [`Transition`] with its evidence ("5 consecutive 503 in 120 ms"), kept in
//! a history of the last [`HISTORY`] and passed to the listener set with
//! [`CircuitBreaker::with_listener`] (called outside any lock). Transitions take a mutex; the
//! admit and record paths of a closed breaker are a few atomic operations.
//!
//! [`tick`]: CircuitBreaker::tick

use crate::classify::{Classifier, Outcome};
use crate::clock::{nanos, Nanos};
use crate::rng::{Rng, SplitMix};
use crate::window::{SlidingWindow, WindowCounts};
use std::collections::VecDeque;
use std::fmt;
use std::ops::Deref;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::*};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

/// How many transitions a breaker remembers.
pub const HISTORY: usize = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum State {
    Closed = 0,
    Open = 1,
    HalfOpen = 2,
    ForcedOpen = 3,
    ForcedClosed = 4,
}

impl State {
    fn from_bits(b: u64) -> State {
        match b & 0xff {
            1 => State::Open,
            2 => State::HalfOpen,
            3 => State::ForcedOpen,
            4 => State::ForcedClosed,
            _ => State::Closed,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            State::Closed => "closed",
            State::Open => "open",
            State::HalfOpen => "half-open",
            State::ForcedOpen => "forced-open",
            State::ForcedClosed => "forced-closed",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Enforcing,
    /// Record and report, never reject.
    DryRun,
}

/// Trip when `ratio` of the calls in the window failed, once it holds `min_requests`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RatioRule {
    pub ratio: f64,
    pub min_requests: u32,
}

/// Trip when `ratio` of the calls in the window took at least `threshold`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SlowCallRule {
    pub threshold: Duration,
    pub ratio: f64,
    pub min_requests: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct BreakerConfig {
    pub mode: Mode,
    /// Trip after this many failures in a row (`None` or 0: disabled). Default 5.
    pub consecutive_failures: Option<u32>,
    /// Default: 50% over at least 20 requests.
    pub failure_ratio: Option<RatioRule>,
    /// Default: disabled.
    pub slow_calls: Option<SlowCallRule>,
    /// Sliding window length (default 10 s) and its number of buckets (default 10).
    pub window: Duration,
    pub window_buckets: u32,
    /// First open duration (default 5 s), growth per re-open (2.0), cap (60 s), jitter (±0.2).
    pub open_duration: Duration,
    pub open_multiplier: f64,
    pub max_open_duration: Duration,
    pub open_jitter: f64,
    /// Probes admitted at once in half-open, and the sample the decision is made on (default 3,
    /// clamped to 1..=64).
    pub probes: u32,
    /// Fraction of probes that must succeed to close (default 0.6: 2 of 3).
    pub probe_success_ratio: f64,
    /// A probe not finished by then counts as failed (default 5 s).
    pub probe_timeout: Duration,
    pub classifier: Classifier,
}

impl BreakerConfig {
    /// How many probe requests a half-open breaker lets through (`probes`, held to 1..=64), and
    /// how many of them must succeed for it to close (`probe_success_ratio` of them, rounded up,
    /// at least one; a ratio that is not a number means all of them).
    pub fn probe_plan(&self) -> (u32, u32) {
        let probes = self.probes.clamp(1, 64);
        let ratio =
            if self.probe_success_ratio.is_finite() { self.probe_success_ratio.clamp(0.0, 1.0) } else { 1.0 };
        let need = ((ratio * f64::from(probes)).ceil() as u32).clamp(1, probes);
        (probes, need)
    }
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            mode: Mode::Enforcing,
            consecutive_failures: Some(5),
            failure_ratio: Some(RatioRule { ratio: 0.5, min_requests: 20 }),
            slow_calls: None,
            window: Duration::from_secs(10),
            window_buckets: 10,
            open_duration: Duration::from_secs(5),
            open_multiplier: 2.0,
            max_open_duration: Duration::from_secs(60),
            open_jitter: 0.2,
            probes: 3,
            probe_success_ratio: 0.6,
            probe_timeout: Duration::from_secs(5),
            classifier: Classifier::default(),
        }
    }
}

/// Why a transition happened (a metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    ConsecutiveFailures,
    FailureRatio,
    SlowCallRatio,
    OpenElapsed,
    ProbesSucceeded,
    ProbesFailed,
    NoProbeCompleted,
    Forced,
    Reset,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::ConsecutiveFailures => "consecutive-failures",
            Reason::FailureRatio => "failure-ratio",
            Reason::SlowCallRatio => "slow-call-ratio",
            Reason::OpenElapsed => "open-elapsed",
            Reason::ProbesSucceeded => "probes-succeeded",
            Reason::ProbesFailed => "probes-failed",
            Reason::NoProbeCompleted => "no-probe-completed",
            Reason::Forced => "forced",
            Reason::Reset => "reset",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Transition {
    pub from: State,
    pub to: State,
    pub at: Nanos,
    pub reason: Reason,
    /// Human-readable evidence, e.g. "failure ratio 0.42 >= 0.30 over 10 s, 215 requests".
    pub evidence: String,
    /// When entering open: when it will let probes through.
    pub open_until: Option<Nanos>,
}

impl fmt::Display for Transition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} -> {} ({}): {}",
            self.from.as_str(),
            self.to.as_str(),
            self.reason.as_str(),
            self.evidence
        )
    }
}

/// A refusal: the caller should answer 503 with `x-tripline-reason: breaker-open` and
/// `Retry-After`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rejected {
    pub retry_after: Duration,
    pub state: State,
}

/// A point-in-time view for the admin API.
#[derive(Debug, Clone, PartialEq)]
pub struct BreakerSnapshot {
    pub state: State,
    pub mode: Mode,
    pub since: Nanos,
    pub open_until: Option<Nanos>,
    pub consecutive_failures: u32,
    pub window: WindowCounts,
    pub probes_in_flight: u32,
    pub probe_successes: u32,
    pub probe_failures: u32,
    /// Consecutive openings (drives the growth of the open duration).
    pub opens: u32,
    /// Dry run: requests an enforcing breaker would have refused.
    pub dry_run_rejections: u64,
}

type Listener = Box<dyn Fn(&Transition) + Send + Sync>;

#[derive(Debug, Default)]
struct Core {
    history: VecDeque<Transition>,
    ok: u32,
    failed: u32,
    timed_out: u32,
    opens: u32,
    since: Nanos,
    closed_at: Nanos,
}

#[derive(Debug, Clone, Copy)]
struct Probe {
    slot: usize,
    deadline: Nanos,
    seq: u64,
}

const MIXED: u32 = u32::MAX;

fn pack(s: State, seq: u64) -> u64 {
    seq << 8 | s as u64
}

fn unpack(w: u64) -> (State, u64) {
    (State::from_bits(w), w >> 8)
}

/// Formats a duration for evidence strings: "120 ms", "10 s", "1.5 s".
pub(crate) fn human(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        format!("{ms} ms")
    } else if ms.is_multiple_of(1000) {
        format!("{} s", ms / 1000)
    } else {
        format!("{:.1} s", d.as_secs_f64())
    }
}

pub struct CircuitBreaker {
    /// State in the low 8 bits, a sequence number (bumped on every transition) above.
    word: AtomicU64,
    open_until: AtomicU64,
    consecutive: AtomicU32,
    streak_kind: AtomicU32,
    streak_start: AtomicU64,
    window: SlidingWindow,
    /// Probe deadlines; 0 = free slot.
    slots: Box<[AtomicU64]>,
    /// First probe's deadline in this half-open episode; 0 = no probe yet.
    episode_deadline: AtomicU64,
    slow: Option<Nanos>,
    need: u32,
    /// Dry run: requests an enforcing breaker would have refused.
    dry_run_rejections: AtomicU64,
    core: Mutex<Core>,
    rng: Box<dyn Rng>,
    listener: Option<Listener>,
    /// Shared by breakers made from one config (a cluster's endpoint breakers): 440 bytes
    /// each otherwise.
    cfg: Arc<BreakerConfig>,
}

impl fmt::Debug for CircuitBreaker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitBreaker").field("state", &self.state()).field("config", &self.cfg).finish()
    }
}

impl CircuitBreaker {
    /// A breaker with jitter seeded from entropy.
    pub fn new(cfg: BreakerConfig) -> Self {
        Self::with_rng(cfg, Box::new(SplitMix::from_entropy()))
    }

    /// A breaker with injected randomness (tests, reproducible simulations).
    pub fn with_rng(cfg: BreakerConfig, rng: Box<dyn Rng>) -> Self {
        Self::with_shared_config(Arc::new(cfg), rng)
    }

    /// A breaker that shares its config with others made from the same `Arc` (one per
    /// endpoint of a cluster), with jitter seeded from entropy.
    pub fn shared(cfg: Arc<BreakerConfig>) -> Self {
        Self::with_shared_config(cfg, Box::new(SplitMix::from_entropy()))
    }

    /// [`shared`](Self::shared) with injected randomness.
    pub fn with_shared_config(mut cfg: Arc<BreakerConfig>, rng: Box<dyn Rng>) -> Self {
        let (probes, need) = cfg.probe_plan();
        if probes != cfg.probes {
            Arc::make_mut(&mut cfg).probes = probes;
        }
        CircuitBreaker {
            word: AtomicU64::new(pack(State::Closed, 0)),
            open_until: AtomicU64::new(0),
            consecutive: AtomicU32::new(0),
            streak_kind: AtomicU32::new(0),
            streak_start: AtomicU64::new(0),
            window: SlidingWindow::new(cfg.window, cfg.window_buckets),
            slots: (0..cfg.probes).map(|_| AtomicU64::new(0)).collect(),
            episode_deadline: AtomicU64::new(0),
            slow: cfg.slow_calls.map(|s| nanos(s.threshold)),
            need,
            dry_run_rejections: AtomicU64::new(0),
            core: Mutex::new(Core::default()),
            rng,
            listener: None,
            cfg,
        }
    }

    /// Calls `f` on every transition, outside any lock (log a line, bump a metric).
    pub fn with_listener(mut self, f: impl Fn(&Transition) + Send + Sync + 'static) -> Self {
        self.listener = Some(Box::new(f));
        self
    }

    pub fn config(&self) -> &BreakerConfig {
        &self.cfg
    }

    pub fn state(&self) -> State {
        unpack(self.word.load(Acquire)).0
    }

    /// Whether the breaker keeps traffic away right now: open and enforcing, or forced open
    /// by an operator. A dry-run breaker goes through the same states but never refuses, so a
    /// caller that routes around open breakers (endpoint choice, retry suppression) must ask
    /// this rather than [`state`](Self::state).
    pub fn refuses_traffic(&self) -> bool {
        match self.state() {
            State::ForcedOpen => true,
            State::Open => self.cfg.mode == Mode::Enforcing,
            _ => false,
        }
    }

    /// Dry run: how many requests an enforcing breaker would have refused.
    pub fn dry_run_rejections(&self) -> u64 {
        self.dry_run_rejections.load(Relaxed)
    }

    /// Asks to send one request. Lock-free unless it triggers a transition.
    #[inline]
    pub fn try_acquire(&self, now: Nanos) -> Result<Admission<'_>, Rejected> {
        self.admit_decision(now).map(|d| AdmissionOf::new(self, d))
    }

    /// Like [`try_acquire`](Self::try_acquire), but the admission owns a handle to the breaker,
    /// so it can travel with a request across tasks (e.g. inside a streaming response body).
    #[inline]
    pub fn try_acquire_owned(self: &std::sync::Arc<Self>, now: Nanos) -> Result<OwnedAdmission, Rejected> {
        self.admit_decision(now).map(|d| AdmissionOf::new(self.clone(), d))
    }

    #[inline]
    fn admit_decision(&self, now: Nanos) -> Result<Decision, Rejected> {
        for _ in 0..4 {
            let (st, seq) = unpack(self.word.load(Acquire));
            match st {
                State::Closed | State::ForcedClosed => return Ok(self.admission(None, seq, false)),
                State::ForcedOpen => {
                    return Err(Rejected { retry_after: self.cfg.open_duration, state: st });
                }
                State::Open => {
                    let until = self.open_until.load(Acquire);
                    if now < until {
                        return self.reject(st, seq, Duration::from_nanos(until - now));
                    }
                    self.enter_half_open(seq, now);
                }
                State::HalfOpen => {
                    if self.resolve_expired(seq, now) {
                        continue;
                    }
                    if let Some(p) = self.take_slot(seq, now) {
                        return Ok(self.admission(Some(p), seq, false));
                    }
                    return self.reject(st, seq, self.probe_retry_after(now));
                }
            }
        }
        // The state kept changing under us: refuse this one, briefly.
        let (st, seq) = unpack(self.word.load(Acquire));
        self.reject(st, seq, Duration::from_millis(1))
    }

    fn admission(&self, probe: Option<Probe>, seq: u64, would_reject: bool) -> Decision {
        Decision { probe, seq, would_reject }
    }

    fn reject(&self, state: State, seq: u64, retry_after: Duration) -> Result<Decision, Rejected> {
        match self.cfg.mode {
            Mode::DryRun => {
                self.dry_run_rejections.fetch_add(1, Relaxed);
                Ok(self.admission(None, seq, true))
            }
            Mode::Enforcing => Err(Rejected { retry_after, state }),
        }
    }

    fn take_slot(&self, seq: u64, now: Nanos) -> Option<Probe> {
        let deadline = now.saturating_add(nanos(self.cfg.probe_timeout)).max(1);
        for (slot, s) in self.slots.iter().enumerate() {
            if s.load(Acquire) == 0 && s.compare_exchange(0, deadline, AcqRel, Acquire).is_ok() {
                let _ = self.episode_deadline.compare_exchange(0, deadline, AcqRel, Acquire);
                return Some(Probe { slot, deadline, seq });
            }
        }
        None
    }

    fn probe_retry_after(&self, now: Nanos) -> Duration {
        let soonest = self.slots.iter().map(|s| s.load(Acquire)).filter(|&d| d > now).min();
        soonest.map_or(self.cfg.probe_timeout, |d| Duration::from_nanos(d - now))
    }

    /// Moves an open breaker whose time is up to half-open, and resolves expired probes.
    /// Call it periodically (for example every second) so that state is current even without
    /// traffic; the admit path does the same work lazily.
    pub fn tick(&self, now: Nanos) {
        let (st, seq) = unpack(self.word.load(Acquire));
        match st {
            State::Open if now >= self.open_until.load(Acquire) => self.enter_half_open(seq, now),
            State::HalfOpen => {
                self.resolve_expired(seq, now);
            }
            _ => {}
        }
    }

    fn with_core(&self, f: impl FnOnce(&mut Core, &mut Vec<Transition>)) {
        let mut events = Vec::new();
        {
            let mut core = self.core.lock().unwrap_or_else(PoisonError::into_inner);
            f(&mut core, &mut events);
        }
        if let Some(l) = &self.listener {
            for e in &events {
                l(e);
            }
        }
    }

    fn push(&self, core: &mut Core, events: &mut Vec<Transition>, t: Transition) {
        core.since = t.at;
        if core.history.len() == HISTORY {
            core.history.pop_front();
        }
        core.history.push_back(t.clone());
        events.push(t);
    }

    fn open_duration(&self, opens: u32) -> Duration {
        let base = self.cfg.open_duration.as_secs_f64();
        let mult = if self.cfg.open_multiplier.is_finite() { self.cfg.open_multiplier.max(1.0) } else { 1.0 };
        let grown = base * mult.powi(opens.saturating_sub(1).min(64) as i32);
        let capped = grown.min(self.cfg.max_open_duration.as_secs_f64());
        let j = if self.cfg.open_jitter.is_finite() { self.cfg.open_jitter.clamp(0.0, 1.0) } else { 0.0 };
        let jittered = capped * (1.0 + j * (2.0 * self.rng.unit() - 1.0));
        Duration::try_from_secs_f64(jittered).unwrap_or(self.cfg.max_open_duration)
    }

    #[allow(clippy::too_many_arguments)]
    fn open(
        &self,
        core: &mut Core,
        events: &mut Vec<Transition>,
        from: State,
        seq: u64,
        now: Nanos,
        reason: Reason,
        evidence: String,
        grow: bool,
    ) {
        if from == State::Closed && now.saturating_sub(core.closed_at) >= nanos(self.cfg.max_open_duration) {
            core.opens = 0;
        }
        if grow || core.opens == 0 {
            core.opens = core.opens.saturating_add(1);
        }
        let d = self.open_duration(core.opens);
        let until = now.saturating_add(nanos(d)).max(1);
        self.open_until.store(until, Release);
        self.word.store(pack(State::Open, seq + 1), Release);
        let evidence = format!("{evidence}; open for {}", human(d));
        self.push(
            core,
            events,
            Transition { from, to: State::Open, at: now, reason, evidence, open_until: Some(until) },
        );
    }

    /// Publishes a new state (bumping the sequence) and records the transition.
    #[allow(clippy::too_many_arguments)]
    fn set_state(
        &self,
        core: &mut Core,
        events: &mut Vec<Transition>,
        (from, to): (State, State),
        seq: u64,
        now: Nanos,
        reason: Reason,
        evidence: String,
        open_until: Option<Nanos>,
    ) {
        self.word.store(pack(to, seq + 1), Release);
        self.push(core, events, Transition { from, to, at: now, reason, evidence, open_until });
    }

    fn clear_slots(&self) {
        for s in self.slots.iter() {
            s.store(0, Release);
        }
    }

    fn close(&self, core: &mut Core, events: &mut Vec<Transition>, seq: u64, now: Nanos, evidence: String) {
        self.consecutive.store(0, Relaxed);
        self.window.reset();
        self.clear_slots();
        core.closed_at = now;
        let states = (State::HalfOpen, State::Closed);
        self.set_state(core, events, states, seq, now, Reason::ProbesSucceeded, evidence, None);
    }

    fn enter_half_open(&self, seq: u64, now: Nanos) {
        self.with_core(|core, events| {
            if self.word.load(Acquire) != pack(State::Open, seq) || now < self.open_until.load(Acquire) {
                return;
            }
            self.clear_slots();
            self.episode_deadline.store(0, Release);
            (core.ok, core.failed, core.timed_out) = (0, 0, 0);
            let evidence =
                format!("open for {} elapsed", human(Duration::from_nanos(now.saturating_sub(core.since))));
            let states = (State::Open, State::HalfOpen);
            self.set_state(core, events, states, seq, now, Reason::OpenElapsed, evidence, None);
        });
    }

    /// Counts expired probes as failed and ends an overdue episode. Returns whether it locked.
    fn resolve_expired(&self, seq: u64, now: Nanos) -> bool {
        let ep = self.episode_deadline.load(Acquire);
        let overdue = ep != 0 && now >= ep;
        if !overdue && !self.slots.iter().any(|s| matches!(s.load(Acquire), d if d != 0 && d <= now)) {
            return false;
        }
        self.with_core(|core, events| {
            if self.word.load(Acquire) != pack(State::HalfOpen, seq) {
                return;
            }
            for s in self.slots.iter() {
                let d = s.load(Acquire);
                if d != 0 && d <= now && s.compare_exchange(d, 0, AcqRel, Acquire).is_ok() {
                    core.failed += 1;
                    core.timed_out += 1;
                }
            }
            self.decide(core, events, seq, now);
        });
        true
    }

    fn decide(&self, core: &mut Core, events: &mut Vec<Transition>, seq: u64, now: Nanos) {
        let n = self.slots.len() as u32;
        let (ok, failed) = (core.ok, core.failed);
        let done = ok + failed;
        let timeouts =
            if core.timed_out > 0 { format!(" ({} timed out)", core.timed_out) } else { String::new() };
        let ep = self.episode_deadline.load(Acquire);
        let overdue = ep != 0 && now >= ep;
        if ok >= self.need {
            self.close(core, events, seq, now, format!("{ok} of {done} probes succeeded"));
        } else if failed > n - self.need {
            let evidence = format!("{failed} of {done} probes failed{timeouts}");
            self.open(core, events, State::HalfOpen, seq, now, Reason::ProbesFailed, evidence, true);
        } else if overdue && done == 0 {
            let evidence = format!("no probe completed within {}", human(self.cfg.probe_timeout));
            self.open(core, events, State::HalfOpen, seq, now, Reason::NoProbeCompleted, evidence, false);
        } else if overdue {
            let r = ok as f64 / done as f64;
            let evidence =
                format!("{ok} of {done} probes succeeded within {}{timeouts}", human(self.cfg.probe_timeout));
            if r >= self.cfg.probe_success_ratio {
                self.close(core, events, seq, now, evidence);
            } else {
                self.open(core, events, State::HalfOpen, seq, now, Reason::ProbesFailed, evidence, true);
            }
        }
    }

    fn probe_done(&self, p: Probe, failed: bool, now: Nanos) {
        self.with_core(|core, events| {
            if self.word.load(Acquire) != pack(State::HalfOpen, p.seq) {
                return;
            }
            let Some(slot) = self.slots.get(p.slot) else { return };
            if slot.compare_exchange(p.deadline, 0, AcqRel, Acquire).is_err() {
                return; // already counted as timed out
            }
            if now >= p.deadline {
                core.failed += 1;
                core.timed_out += 1;
            } else if failed {
                core.failed += 1;
            } else {
                core.ok += 1;
            }
            self.decide(core, events, p.seq, now);
        });
    }

    fn trip(&self, seq: u64, now: Nanos, reason: Reason, evidence: impl FnOnce() -> String) {
        self.with_core(|core, events| {
            if self.word.load(Acquire) == pack(State::Closed, seq) {
                self.open(core, events, State::Closed, seq, now, reason, evidence(), true);
            }
        });
    }

    fn record_closed(&self, seq: u64, outcome: &Outcome, failure: bool, slow: bool, now: Nanos) {
        self.window.record(now, failure, slow);
        if failure {
            let n = self.consecutive.fetch_add(1, AcqRel).wrapping_add(1);
            let kind = outcome.kind_code();
            if n == 1 {
                self.streak_start.store(now, Relaxed);
                self.streak_kind.store(kind, Relaxed);
            } else if self.streak_kind.load(Relaxed) != kind {
                self.streak_kind.store(MIXED, Relaxed);
            }
            if let Some(t) = self.cfg.consecutive_failures.filter(|&t| t > 0 && n >= t) {
                self.trip(seq, now, Reason::ConsecutiveFailures, || {
                    let what = if self.streak_kind.load(Relaxed) == kind {
                        outcome.to_string()
                    } else {
                        format!("failures (last {outcome})")
                    };
                    let took = Duration::from_nanos(now.saturating_sub(self.streak_start.load(Relaxed)));
                    format!("{t} consecutive {what} in {}", human(took))
                });
            }
        } else if self.consecutive.load(Relaxed) != 0 {
            self.consecutive.store(0, Relaxed);
        }
        let ratio = self.cfg.failure_ratio.filter(|_| failure);
        let slow_rule = self.cfg.slow_calls.filter(|_| slow);
        if ratio.is_none() && slow_rule.is_none() {
            return;
        }
        let c = self.window.totals(now);
        let span = human(self.window.span());
        if let Some(r) = ratio.filter(|r| c.requests >= r.min_requests as u64 && c.failure_ratio() >= r.ratio)
        {
            self.trip(seq, now, Reason::FailureRatio, || {
                format!(
                    "failure ratio {:.2} >= {:.2} over {span}, {} requests",
                    c.failure_ratio(),
                    r.ratio,
                    c.requests
                )
            });
        } else if let Some(r) =
            slow_rule.filter(|r| c.requests >= r.min_requests as u64 && c.slow_ratio() >= r.ratio)
        {
            self.trip(seq, now, Reason::SlowCallRatio, || {
                format!(
                    "slow-call ratio {:.2} >= {:.2} (>= {}) over {span}, {} requests",
                    c.slow_ratio(),
                    r.ratio,
                    human(r.threshold),
                    c.requests
                )
            });
        }
    }

    fn force(&self, to: State, reason: Reason, now: Nanos, note: &str) {
        self.with_core(|core, events| {
            let (from, seq) = unpack(self.word.load(Acquire));
            self.consecutive.store(0, Relaxed);
            if to != State::ForcedOpen {
                self.window.reset();
                core.closed_at = now;
            }
            if reason == Reason::Reset {
                core.opens = 0;
            }
            self.set_state(core, events, (from, to), seq, now, reason, note.to_string(), None);
        });
    }

    /// Operator order: reject everything until [`reset`](Self::reset) or `force_closed`.
    pub fn force_open(&self, now: Nanos, note: &str) {
        self.force(State::ForcedOpen, Reason::Forced, now, note);
    }

    /// Operator order: admit everything and never trip (outcomes still feed the window).
    pub fn force_closed(&self, now: Nanos, note: &str) {
        self.force(State::ForcedClosed, Reason::Forced, now, note);
    }

    /// Back to a fresh closed breaker: counters, window and open-duration growth cleared.
    pub fn reset(&self, now: Nanos, note: &str) {
        self.force(State::Closed, Reason::Reset, now, note);
    }

    /// The last transitions, oldest first.
    pub fn history(&self) -> Vec<Transition> {
        self.core.lock().unwrap_or_else(PoisonError::into_inner).history.iter().cloned().collect()
    }

    pub fn snapshot(&self, now: Nanos) -> BreakerSnapshot {
        let core = self.core.lock().unwrap_or_else(PoisonError::into_inner);
        let state = self.state();
        BreakerSnapshot {
            state,
            mode: self.cfg.mode,
            since: core.since,
            open_until: (state == State::Open).then(|| self.open_until.load(Acquire)),
            consecutive_failures: self.consecutive.load(Relaxed),
            window: self.window.totals(now),
            probes_in_flight: if state == State::HalfOpen {
                self.slots.iter().filter(|s| s.load(Acquire) != 0).count() as u32
            } else {
                0
            },
            probe_successes: core.ok,
            probe_failures: core.failed,
            opens: core.opens,
            dry_run_rejections: self.dry_run_rejections(),
        }
    }
}

/// What the admit path decided, before it is bound to a breaker handle.
struct Decision {
    probe: Option<Probe>,
    seq: u64,
    would_reject: bool,
}

/// Permission to send one request. Record its outcome with [`AdmissionOf::record`]; dropping it
/// unrecorded frees a probe slot without counting anything. `B` is how it refers to its
/// breaker: a borrow ([`Admission`]) or an `Arc` ([`OwnedAdmission`]).
#[must_use = "record the outcome, or drop the admission to cancel"]
pub struct AdmissionOf<B: Deref<Target = CircuitBreaker>> {
    breaker: B,
    probe: Option<Probe>,
    seq: u64,
    would_reject: bool,
}

/// An admission borrowing its breaker.
pub type Admission<'a> = AdmissionOf<&'a CircuitBreaker>;
/// An admission owning a handle to its breaker.
pub type OwnedAdmission = AdmissionOf<std::sync::Arc<CircuitBreaker>>;

impl<B: Deref<Target = CircuitBreaker>> AdmissionOf<B> {
    fn new(breaker: B, d: Decision) -> Self {
        AdmissionOf { breaker, probe: d.probe, seq: d.seq, would_reject: d.would_reject }
    }
}

impl<B: Deref<Target = CircuitBreaker>> fmt::Debug for AdmissionOf<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Admission")
            .field("probe", &self.is_probe())
            .field("would_reject", &self.would_reject)
            .finish()
    }
}

impl<B: Deref<Target = CircuitBreaker>> AdmissionOf<B> {
    /// Whether this request is a half-open probe (the proxy should cap its timeout at the
    /// probe timeout and may tag it in the access log).
    pub fn is_probe(&self) -> bool {
        self.probe.is_some()
    }

    /// Dry run only: an enforcing breaker would have rejected this request.
    pub fn would_reject(&self) -> bool {
        self.would_reject
    }

    /// Records the outcome of the request this admission let through.
    #[inline]
    pub fn record(mut self, outcome: &Outcome, latency: Duration, now: Nanos) {
        let b: &CircuitBreaker = &self.breaker;
        let class = b.cfg.classifier.classify(outcome);
        if class.ignored || self.would_reject {
            return; // a local rejection says nothing about the upstream; Drop frees the slot
        }
        let slow = b.slow.is_some_and(|t| nanos(latency) >= t);
        if let Some(p) = self.probe.take() {
            b.probe_done(p, class.failure || slow, now);
            return;
        }
        let (st, seq) = unpack(b.word.load(Acquire));
        if seq != self.seq {
            return;
        }
        match st {
            State::Closed => b.record_closed(seq, outcome, class.failure, slow, now),
            State::ForcedClosed => b.window.record(now, class.failure, slow),
            _ => {}
        }
    }
}

impl<B: Deref<Target = CircuitBreaker>> Drop for AdmissionOf<B> {
    fn drop(&mut self) {
        if let Some(p) = self.probe.take() {
            if self.breaker.word.load(Acquire) == pack(State::HalfOpen, p.seq) {
                if let Some(s) = self.breaker.slots.get(p.slot) {
                    let _ = s.compare_exchange(p.deadline, 0, AcqRel, Acquire);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::SplitMix;

    /// A breaker that never sees a result allocates no window; the first result does, and
    /// counts as it always did.
    #[test]
    fn the_window_is_allocated_by_the_first_result() {
        let b = CircuitBreaker::with_rng(BreakerConfig::default(), Box::new(SplitMix::seeded(1)));
        b.tick(1_000);
        let admitted = b.try_acquire(1_000).expect("closed");
        assert_eq!(b.snapshot(1_000).window, WindowCounts::default());
        b.reset(1_000, "test");
        assert!(!b.window.is_allocated(), "admitting, ticking, reading and resetting allocate nothing");
        drop(admitted);
        b.try_acquire(2_000).expect("closed").record(&Outcome::Http(503), Duration::from_millis(1), 2_000);
        assert!(b.window.is_allocated());
        let w = b.snapshot(2_000).window;
        assert_eq!((w.requests, w.failures, b.snapshot(2_000).consecutive_failures), (1, 1, 1));
    }
}
