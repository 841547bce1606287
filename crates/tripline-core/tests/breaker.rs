//! Circuit breaker transitions, driven exactly with a manual clock.

use std::sync::{Arc, Mutex};
use std::time::Duration;
use tripline_core::breaker::*;
use tripline_core::classify::{LocalReason, Outcome};
use tripline_core::clock::{Clock, ManualClock};
use tripline_core::rng::SplitMix;

const FAST: Duration = Duration::from_millis(5);

fn exact() -> BreakerConfig {
    BreakerConfig { open_jitter: 0.0, ..Default::default() }
}

fn breaker(cfg: BreakerConfig) -> CircuitBreaker {
    CircuitBreaker::with_rng(cfg, Box::new(SplitMix::seeded(1)))
}

fn call(b: &CircuitBreaker, clock: &ManualClock, o: Outcome) {
    b.try_acquire(clock.now()).expect("admitted").record(&o, FAST, clock.now());
}

fn trip(b: &CircuitBreaker, clock: &ManualClock) {
    for _ in 0..5 {
        call(b, clock, Outcome::Http(503));
    }
    assert_eq!(b.state(), State::Open);
}

#[test]
fn consecutive_failures_trip_with_evidence_and_reject_with_retry_after() {
    let clock = ManualClock::new(1_000);
    let b = breaker(exact());
    for i in 0..4 {
        call(&b, &clock, Outcome::Http(503));
        assert_eq!(b.state(), State::Closed, "after {} failures", i + 1);
        clock.advance(Duration::from_millis(30));
    }
    call(&b, &clock, Outcome::Http(503));
    assert_eq!(b.state(), State::Open);
    let h = b.history();
    assert_eq!(h.len(), 1);
    assert_eq!((h[0].from, h[0].to, h[0].reason), (State::Closed, State::Open, Reason::ConsecutiveFailures));
    assert_eq!(h[0].evidence, "5 consecutive 503 in 120 ms; open for 5 s");
    assert_eq!(h[0].open_until, Some(clock.now() + 5_000_000_000));
    clock.advance(Duration::from_secs(2));
    let r = b.try_acquire(clock.now()).unwrap_err();
    assert_eq!(r, Rejected { retry_after: Duration::from_secs(3), state: State::Open });
}

#[test]
fn a_success_breaks_the_streak_and_mixed_streaks_say_so() {
    let clock = ManualClock::new(1);
    let b = breaker(exact());
    for _ in 0..4 {
        call(&b, &clock, Outcome::Http(503));
    }
    call(&b, &clock, Outcome::Http(200));
    for _ in 0..4 {
        call(&b, &clock, Outcome::Http(502));
    }
    assert_eq!(b.state(), State::Closed);
    call(&b, &clock, Outcome::ConnectFailure);
    assert_eq!(b.state(), State::Open);
    assert_eq!(
        b.history()[0].evidence,
        "5 consecutive failures (last connect-failure) in 0 ms; open for 5 s"
    );
}

#[test]
fn failure_ratio_trips_only_with_enough_requests() {
    let clock = ManualClock::new(1);
    let cfg = BreakerConfig {
        consecutive_failures: None,
        failure_ratio: Some(RatioRule { ratio: 0.3, min_requests: 20 }),
        ..exact()
    };
    let b = breaker(cfg);
    for _ in 0..14 {
        call(&b, &clock, Outcome::Http(200));
    }
    for _ in 0..5 {
        call(&b, &clock, Outcome::Http(500));
    }
    assert_eq!(b.state(), State::Closed, "19 requests < 20");
    call(&b, &clock, Outcome::Http(500));
    assert_eq!(b.state(), State::Open);
    let t = &b.history()[0];
    assert_eq!(t.reason, Reason::FailureRatio);
    assert_eq!(t.evidence, "failure ratio 0.30 >= 0.30 over 10 s, 20 requests; open for 5 s");
}

#[test]
fn failures_older_than_the_window_are_forgotten() {
    let clock = ManualClock::new(1);
    let cfg = BreakerConfig {
        consecutive_failures: None,
        failure_ratio: Some(RatioRule { ratio: 0.5, min_requests: 10 }),
        ..exact()
    };
    let b = breaker(cfg);
    for _ in 0..9 {
        call(&b, &clock, Outcome::Http(500));
    }
    clock.advance(Duration::from_secs(11));
    call(&b, &clock, Outcome::Http(500));
    assert_eq!(b.state(), State::Closed);
    assert_eq!(b.snapshot(clock.now()).window.requests, 1);
}

#[test]
fn healthy_burst_at_ten_times_the_traffic_never_trips() {
    let clock = ManualClock::new(1);
    let b = breaker(exact());
    // 1% scattered errors at 10k requests per second for 30 s.
    for i in 0..300_000u32 {
        let o = if i % 100 == 7 { Outcome::Http(503) } else { Outcome::Http(200) };
        call(&b, &clock, o);
        clock.advance(Duration::from_micros(100));
    }
    assert_eq!(b.state(), State::Closed);
    assert!(b.history().is_empty());
}

#[test]
fn slow_call_ratio_trips() {
    let clock = ManualClock::new(1);
    let threshold = Duration::from_millis(800);
    let cfg = BreakerConfig {
        slow_calls: Some(SlowCallRule { threshold, ratio: 0.5, min_requests: 4 }),
        ..exact()
    };
    let b = breaker(cfg);
    for latency in [10, 900, 10] {
        b.try_acquire(clock.now()).unwrap().record(
            &Outcome::Http(200),
            Duration::from_millis(latency),
            clock.now(),
        );
    }
    assert_eq!(b.state(), State::Closed);
    b.try_acquire(clock.now()).unwrap().record(&Outcome::Http(200), threshold, clock.now());
    assert_eq!(b.state(), State::Open);
    assert_eq!(
        b.history()[0].evidence,
        "slow-call ratio 0.50 >= 0.50 (>= 800 ms) over 10 s, 4 requests; open for 5 s"
    );
}

#[test]
fn local_rejections_and_rate_limits_never_trip() {
    let clock = ManualClock::new(1);
    let b = breaker(exact());
    for _ in 0..100 {
        call(&b, &clock, Outcome::Local(LocalReason::Overflow));
        call(&b, &clock, Outcome::http(429, Some(Duration::from_secs(1))));
    }
    assert_eq!(b.state(), State::Closed);
    assert_eq!(b.snapshot(clock.now()).window.failures, 0);
}

#[test]
fn open_time_grows_per_reopen_is_capped_and_resets_after_a_quiet_period() {
    let clock = ManualClock::new(1);
    let cfg = BreakerConfig { max_open_duration: Duration::from_secs(15), ..exact() };
    let b = breaker(cfg);
    trip(&b, &clock);
    let mut opened = Vec::new();
    for _ in 0..3 {
        let until = b.snapshot(clock.now()).open_until.unwrap();
        opened.push(Duration::from_nanos(until - clock.now()));
        clock.set(until);
        let probe = b.try_acquire(clock.now()).unwrap();
        assert!(probe.is_probe());
        assert_eq!(b.state(), State::HalfOpen);
        let p2 = b.try_acquire(clock.now()).unwrap();
        probe.record(&Outcome::Http(503), FAST, clock.now());
        p2.record(&Outcome::Http(503), FAST, clock.now());
        assert_eq!(b.state(), State::Open, "2 of 3 probes failed: a close is impossible");
    }
    opened.push(Duration::from_nanos(b.snapshot(clock.now()).open_until.unwrap() - clock.now()));
    let secs: Vec<_> = opened.iter().map(|d| d.as_secs()).collect();
    assert_eq!(secs, [5, 10, 15, 15]);
    assert!(b.history().last().unwrap().evidence.starts_with("2 of 2 probes failed; open for 15 s"));

    // Recover, stay closed longer than the cap, trip again: back to the base duration.
    let until = b.snapshot(clock.now()).open_until.unwrap();
    clock.set(until);
    for _ in 0..2 {
        call(&b, &clock, Outcome::Http(200));
    }
    assert_eq!(b.state(), State::Closed);
    clock.advance(Duration::from_secs(16));
    trip(&b, &clock);
    let until = b.snapshot(clock.now()).open_until.unwrap();
    assert_eq!(Duration::from_nanos(until - clock.now()), Duration::from_secs(5));
}

#[test]
fn jitter_spreads_breakers_that_opened_together() {
    let clock = ManualClock::new(1);
    let mut seen = Vec::new();
    for seed in 0..20 {
        let b = CircuitBreaker::with_rng(BreakerConfig::default(), Box::new(SplitMix::seeded(seed)));
        trip(&b, &clock);
        let d = b.snapshot(clock.now()).open_until.unwrap() - clock.now();
        assert!((4_000_000_000..=6_000_000_000).contains(&d), "±20% of 5 s: {d}");
        seen.push(d);
    }
    seen.sort_unstable();
    seen.dedup();
    assert!(seen.len() >= 15, "20 breakers should not reopen in lock step: {seen:?}");
}

#[test]
fn half_open_admits_at_most_n_probes_and_closes_on_the_ratio() {
    let clock = ManualClock::new(1);
    let b = breaker(exact());
    trip(&b, &clock);
    clock.advance(Duration::from_secs(5));
    let probes: Vec<_> = (0..3).map(|_| b.try_acquire(clock.now()).unwrap()).collect();
    assert!(probes.iter().all(|p| p.is_probe()));
    let r = b.try_acquire(clock.now()).unwrap_err();
    assert_eq!(r, Rejected { retry_after: Duration::from_secs(5), state: State::HalfOpen });
    assert_eq!(b.snapshot(clock.now()).probes_in_flight, 3);
    let mut probes = probes.into_iter();
    clock.advance(Duration::from_millis(100));
    probes.next().unwrap().record(&Outcome::Http(200), FAST, clock.now());
    probes.next().unwrap().record(&Outcome::Http(503), FAST, clock.now());
    assert_eq!(b.state(), State::HalfOpen, "one flaky probe does not re-open");
    probes.next().unwrap().record(&Outcome::Http(200), FAST, clock.now());
    assert_eq!(b.state(), State::Closed);
    let t = b.history().last().unwrap().clone();
    assert_eq!((t.from, t.to, t.reason), (State::HalfOpen, State::Closed, Reason::ProbesSucceeded));
    assert_eq!(t.evidence, "2 of 3 probes succeeded");
    // Fresh start: the failures from before the outage are gone.
    let s = b.snapshot(clock.now());
    assert_eq!((s.consecutive_failures, s.window.requests), (0, 0));
    assert!(b.try_acquire(clock.now()).is_ok());
}

#[test]
fn probes_that_never_finish_count_as_failed_after_the_probe_timeout() {
    let clock = ManualClock::new(1);
    let b = breaker(exact());
    trip(&b, &clock);
    clock.advance(Duration::from_secs(5));
    let held: Vec<_> = (0..3).map(|_| b.try_acquire(clock.now()).unwrap()).collect();
    clock.advance(Duration::from_millis(4_999));
    b.tick(clock.now());
    assert_eq!(b.state(), State::HalfOpen);
    clock.advance(Duration::from_millis(1));
    b.tick(clock.now());
    assert_eq!(b.state(), State::Open);
    let t = b.history().last().unwrap().clone();
    assert_eq!(t.reason, Reason::ProbesFailed);
    assert_eq!(t.evidence, "3 of 3 probes failed (3 timed out); open for 10 s");
    // Their late results change nothing.
    for p in held {
        p.record(&Outcome::Http(200), FAST, clock.now());
    }
    assert_eq!(b.state(), State::Open);
}

#[test]
fn the_admit_path_also_resolves_expired_probes() {
    let clock = ManualClock::new(1);
    let b = breaker(BreakerConfig { probes: 1, probe_success_ratio: 1.0, ..exact() });
    trip(&b, &clock);
    clock.advance(Duration::from_secs(5));
    let stuck = b.try_acquire(clock.now()).unwrap();
    assert!(b.try_acquire(clock.now()).is_err());
    clock.advance(Duration::from_secs(5));
    // No tick: the next caller finds the probe expired, re-opens, and is rejected.
    let r = b.try_acquire(clock.now()).unwrap_err();
    assert_eq!(r.state, State::Open);
    drop(stuck);
}

#[test]
fn an_episode_ends_within_the_probe_timeout_of_its_first_probe() {
    let clock = ManualClock::new(1);
    let b = breaker(exact());
    trip(&b, &clock);
    clock.advance(Duration::from_secs(5));
    let p = b.try_acquire(clock.now()).unwrap();
    clock.advance(Duration::from_millis(10));
    p.record(&Outcome::Http(200), FAST, clock.now());
    assert_eq!(b.state(), State::HalfOpen, "1 success of the 2 needed; little traffic");
    clock.advance(Duration::from_millis(4_990));
    b.tick(clock.now());
    assert_eq!(b.state(), State::Closed);
    assert_eq!(b.history().last().unwrap().evidence, "1 of 1 probes succeeded within 5 s");
}

#[test]
fn dropped_probes_free_their_slot_without_counting() {
    let clock = ManualClock::new(1);
    let b = breaker(exact());
    trip(&b, &clock);
    clock.advance(Duration::from_secs(5));
    let probes: Vec<_> = (0..3).map(|_| b.try_acquire(clock.now()).unwrap()).collect();
    assert!(b.try_acquire(clock.now()).is_err());
    drop(probes);
    let s = b.snapshot(clock.now());
    assert_eq!((s.probes_in_flight, s.probe_failures, s.probe_successes), (0, 0, 0));
    let again = b.try_acquire(clock.now()).unwrap();
    assert!(again.is_probe());
    drop(again);
    // Nothing ever completed: re-open, but without growing the open time.
    clock.advance(Duration::from_secs(5));
    b.tick(clock.now());
    let t = b.history().last().unwrap().clone();
    assert_eq!((t.to, t.reason), (State::Open, Reason::NoProbeCompleted));
    assert_eq!(t.evidence, "no probe completed within 5 s; open for 5 s");
}

#[test]
fn results_of_requests_admitted_before_a_transition_are_ignored() {
    let clock = ManualClock::new(1);
    let b = breaker(exact());
    let slow_one = b.try_acquire(clock.now()).unwrap();
    trip(&b, &clock);
    clock.advance(Duration::from_secs(5));
    for _ in 0..2 {
        call(&b, &clock, Outcome::Http(200));
    }
    assert_eq!(b.state(), State::Closed);
    slow_one.record(&Outcome::Http(503), FAST, clock.now());
    assert_eq!(b.snapshot(clock.now()).consecutive_failures, 0);
}

#[test]
fn tick_moves_an_idle_open_breaker_to_half_open() {
    let clock = ManualClock::new(1);
    let b = breaker(exact());
    trip(&b, &clock);
    clock.advance(Duration::from_millis(4_999));
    b.tick(clock.now());
    assert_eq!(b.state(), State::Open);
    clock.advance(Duration::from_millis(1));
    b.tick(clock.now());
    assert_eq!(b.state(), State::HalfOpen);
    assert_eq!(b.history().last().unwrap().evidence, "open for 5 s elapsed");
}

#[test]
fn dry_run_reports_transitions_but_never_rejects() {
    let clock = ManualClock::new(1);
    let b = breaker(BreakerConfig { mode: Mode::DryRun, ..exact() });
    for _ in 0..5 {
        let a = b.try_acquire(clock.now()).unwrap();
        assert!(!a.would_reject());
        a.record(&Outcome::Http(503), FAST, clock.now());
    }
    assert_eq!(b.state(), State::Open);
    assert!(!b.refuses_traffic(), "open in dry run, yet nothing is kept away");
    let a = b.try_acquire(clock.now()).unwrap();
    assert!(a.would_reject() && !a.is_probe());
    a.record(&Outcome::Http(200), FAST, clock.now());
    clock.advance(Duration::from_secs(5));
    let probes: Vec<_> = (0..3).map(|_| b.try_acquire(clock.now()).unwrap()).collect();
    assert!(probes.iter().all(|p| p.is_probe()));
    assert!(b.try_acquire(clock.now()).unwrap().would_reject());
    assert_eq!(b.dry_run_rejections(), 2, "each request it would have refused is counted");
    assert_eq!(b.snapshot(clock.now()).dry_run_rejections, 2);
    for p in probes {
        p.record(&Outcome::Http(200), FAST, clock.now());
    }
    assert_eq!(b.state(), State::Closed);
    assert_eq!(b.history().len(), 3);
    // An operator's force-open is obeyed in dry run too.
    b.force_open(clock.now(), "by admin");
    assert!(b.refuses_traffic());
}

#[test]
fn an_enforcing_open_breaker_refuses_traffic() {
    let clock = ManualClock::new(1);
    let b = breaker(exact());
    for _ in 0..5 {
        b.try_acquire(clock.now()).unwrap().record(&Outcome::Http(503), FAST, clock.now());
    }
    assert_eq!(b.state(), State::Open);
    assert!(b.refuses_traffic());
    assert_eq!(b.dry_run_rejections(), 0);
}

#[test]
fn operators_can_force_open_force_closed_and_reset() {
    let clock = ManualClock::new(1);
    let b = breaker(exact());
    b.force_open(clock.now(), "POST /breakers/reviews/open by admin");
    assert_eq!(b.try_acquire(clock.now()).unwrap_err().state, State::ForcedOpen);
    clock.advance(Duration::from_secs(3600));
    b.tick(clock.now());
    assert_eq!(b.state(), State::ForcedOpen, "forced states do not time out");

    b.force_closed(clock.now(), "by admin");
    for _ in 0..50 {
        call(&b, &clock, Outcome::Http(503));
    }
    assert_eq!(b.state(), State::ForcedClosed);
    assert_eq!(b.snapshot(clock.now()).window.failures, 50, "still measured");

    b.reset(clock.now(), "by admin");
    assert_eq!(b.state(), State::Closed);
    assert_eq!(b.snapshot(clock.now()).window.requests, 0);
    let reasons: Vec<_> = b.history().iter().map(|t| (t.to, t.reason, t.evidence.clone())).collect();
    assert_eq!(
        reasons[0],
        (State::ForcedOpen, Reason::Forced, "POST /breakers/reviews/open by admin".into())
    );
    assert_eq!(reasons[2].1, Reason::Reset);
    trip(&b, &clock);
}

#[test]
fn listener_sees_every_transition_once_and_history_is_bounded() {
    let clock = ManualClock::new(1);
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = seen.clone();
    let b = breaker(exact()).with_listener(move |t| sink.lock().unwrap().push(t.to_string()));
    for _ in 0..10 {
        trip(&b, &clock);
        b.reset(clock.now(), "test");
    }
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 20);
    assert_eq!(seen[0], "closed -> open (consecutive-failures): 5 consecutive 503 in 0 ms; open for 5 s");
    assert_eq!(b.history().len(), HISTORY);
    assert_eq!(b.history().last().unwrap().reason, Reason::Reset);
}

#[test]
fn concurrent_callers_never_hold_more_than_n_probes() {
    let clock = ManualClock::new(1);
    let b = breaker(exact());
    trip(&b, &clock);
    clock.advance(Duration::from_secs(5));
    let now = clock.now();
    let admitted = std::sync::atomic::AtomicU32::new(0);
    let all_tried = std::sync::Barrier::new(4);
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                let mut held = Vec::new();
                for _ in 0..1000 {
                    if let Ok(a) = b.try_acquire(now) {
                        admitted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        held.push(a);
                    }
                }
                all_tried.wait(); // hold the probes until every thread has tried
                drop(held);
            });
        }
    });
    assert_eq!(admitted.into_inner(), 3);
}

/// A cluster's endpoint breakers share one config (it was 440 bytes a breaker) but nothing
/// else: one tripping leaves the others closed. A shared config out of range is clamped in a
/// copy of the breaker's own, not in the others'.
#[test]
fn breakers_made_from_one_config_share_it_and_trip_alone() {
    let clock = ManualClock::new(1_000);
    let cfg = Arc::new(exact());
    let a = CircuitBreaker::with_shared_config(cfg.clone(), Box::new(SplitMix::seeded(1)));
    let b = CircuitBreaker::with_shared_config(cfg.clone(), Box::new(SplitMix::seeded(2)));
    assert!(std::ptr::eq(a.config(), b.config()) && std::ptr::eq(a.config(), &*cfg));
    trip(&a, &clock);
    assert_eq!(b.state(), State::Closed);
    call(&b, &clock, Outcome::Http(200));
    assert_eq!(b.snapshot(clock.now()).window.requests, 1);

    let wide = Arc::new(BreakerConfig { probes: 100, ..exact() });
    let c = CircuitBreaker::with_shared_config(wide.clone(), Box::new(SplitMix::seeded(3)));
    assert_eq!((c.config().probes, wide.probes), (64, 100));
}

/// What `tripline validate --explain` prints is what a breaker does: probes held to 1..=64,
/// a ratio's share of them rounded up, at least one, all of them for a ratio that is no number.
#[test]
fn the_probe_plan_is_what_a_half_open_breaker_does() {
    let plan = |probes, ratio| BreakerConfig { probes, probe_success_ratio: ratio, ..exact() }.probe_plan();
    assert_eq!(plan(5, 0.6), (5, 3));
    assert_eq!(plan(0, 0.6), (1, 1));
    assert_eq!(plan(100, 1.0), (64, 64));
    assert_eq!(plan(4, 0.0), (4, 1));
    assert_eq!(plan(4, f64::NAN), (4, 4));
    assert_eq!(plan(4, 7.0), (4, 4));
}
