//! Invariants that must hold for any sequence of outcomes and time steps:
//! ejected endpoints never exceed the cap; probes in flight never exceed N; every breaker leaves
//! half-open within the probe timeout of its first probe; retries in flight never exceed the budget.

use proptest::prelude::*;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tripline_core::breaker::{Admission, BreakerConfig, CircuitBreaker, Mode, RatioRule, State};
use tripline_core::budget::{BudgetExhausted, RetryBudget, RetryBudgetConfig};
use tripline_core::classify::{LocalReason, Outcome};
use tripline_core::clock::{nanos, Clock, ManualClock};
use tripline_core::outlier::*;
use tripline_core::rate_budget::{RateBudget, RateBudgetConfig};
use tripline_core::rng::SplitMix;

fn outcome() -> impl Strategy<Value = Outcome> {
    prop_oneof![
        4 => Just(Outcome::Http(200)),
        3 => Just(Outcome::Http(503)),
        1 => Just(Outcome::Http(500)),
        1 => Just(Outcome::ConnectFailure),
        1 => Just(Outcome::Timeout),
        1 => Just(Outcome::Http(404)),
        1 => Just(Outcome::http(429, None)),
        1 => Just(Outcome::Local(LocalReason::Overflow)),
    ]
}

#[derive(Debug, Clone)]
enum OutlierOp {
    Send { ep: usize, outcome: Outcome, latency_ms: u64 },
    HoldProbe { ep: usize },
    Advance { ms: u64 },
    Sweep,
    Update { keep: u16, add: u8 },
}

fn outlier_op() -> impl Strategy<Value = OutlierOp> {
    prop_oneof![
        8 => (0..16usize, outcome(), 0..300u64)
            .prop_map(|(ep, outcome, latency_ms)| OutlierOp::Send { ep, outcome, latency_ms }),
        1 => (0..16usize).prop_map(|ep| OutlierOp::HoldProbe { ep }),
        3 => (0..20_000u64).prop_map(|ms| OutlierOp::Advance { ms }),
        1 => Just(OutlierOp::Sweep),
        1 => (any::<u16>(), 0..4u8).prop_map(|(keep, add)| OutlierOp::Update { keep, add }),
    ]
}

fn rounding() -> impl Strategy<Value = CapRounding> {
    prop_oneof![Just(CapRounding::Floor), Just(CapRounding::Ceil), Just(CapRounding::AtLeastOne)]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn ejections_never_exceed_the_cap(
        hosts in 1..12usize,
        percent in 0..=100u32,
        rounding in rounding(),
        split in any::<bool>(),
        seed in any::<u64>(),
        ops in prop::collection::vec(outlier_op(), 1..300),
    ) {
        let clock = ManualClock::new(1);
        let cfg = OutlierConfig {
            max_ejection_percent: percent,
            cap_rounding: rounding,
            split_external_local_origin_errors: split,
            consecutive_gateway_errors: Some(2),
            success_rate: Some(SuccessRateRule { minimum_hosts: 2, request_volume: 5, stdev_factor: 0.5 }),
            failure_percentage: Some(FailurePercentageRule { threshold: 30, minimum_hosts: 1, request_volume: 3 }),
            latency: Some(LatencyRule { minimum_hosts: 2, request_volume: 3, min_latency: Duration::from_millis(1), ..Default::default() }),
            max_ejection_time_jitter: Duration::from_secs(3),
            probe_concurrency: 2,
            ..Default::default()
        };
        let d = OutlierDetector::with_rng(cfg, Box::new(SplitMix::seeded(seed)));
        let mut next_id = hosts;
        let mut ids: Vec<String> = (0..hosts).map(|i| i.to_string()).collect();
        let mut eps = d.update_endpoints(&ids, clock.now());
        for op in ops {
            let mut held = Vec::new();
            match op {
                OutlierOp::Send { ep, outcome, latency_ms } => {
                    if let Some(e) = eps.get(ep % eps.len().max(1)) {
                        if let Some(p) = e.admit(clock.now()) {
                            p.record(&outcome, Duration::from_millis(latency_ms), clock.now());
                        }
                    }
                }
                OutlierOp::HoldProbe { ep } => {
                    if let Some(e) = eps.get(ep % eps.len().max(1)) {
                        let limit = d.config().probe_concurrency;
                        while let Some(p) = e.admit(clock.now()) {
                            if !p.is_probe() { break; }
                            held.push(p);
                            prop_assert!(held.len() as u32 <= limit, "probe slots exceeded");
                        }
                    }
                }
                OutlierOp::Advance { ms } => clock.advance(Duration::from_millis(ms)),
                OutlierOp::Sweep => d.sweep(clock.now()),
                OutlierOp::Update { keep, add } => {
                    ids.retain({ let mut i = 0; move |_| { i += 1; keep & (1 << (i % 16)) != 0 } });
                    for _ in 0..add {
                        ids.push(next_id.to_string());
                        next_id += 1;
                    }
                    eps = d.update_endpoints(&ids, clock.now());
                }
            }
            drop(held);
            let cap = ejection_cap(eps.len() as u32, percent, rounding);
            let unhealthy = eps.iter().filter(|e| e.health() != Health::Healthy).count() as u32;
            prop_assert_eq!(d.ejection_cap(), cap);
            prop_assert!(d.ejections_active() <= cap, "{} ejected > cap {}", d.ejections_active(), cap);
            prop_assert_eq!(unhealthy, d.ejections_active(), "the count matches the endpoints");
        }
    }
}

#[derive(Debug, Clone)]
enum BreakerOp {
    Acquire,
    Record { which: usize, outcome: Outcome, latency_ms: u64 },
    Drop { which: usize },
    Advance { ms: u64 },
}

fn breaker_op() -> impl Strategy<Value = BreakerOp> {
    prop_oneof![
        4 => Just(BreakerOp::Acquire),
        4 => (any::<usize>(), outcome(), 0..2_000u64)
            .prop_map(|(which, outcome, latency_ms)| BreakerOp::Record { which, outcome, latency_ms }),
        1 => any::<usize>().prop_map(|which| BreakerOp::Drop { which }),
        3 => (0..3_000u64).prop_map(|ms| BreakerOp::Advance { ms }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn probes_are_bounded_and_half_open_always_ends(
        probes in 1..5u32,
        ratio in 0.0..=1.0f64,
        dry_run in any::<bool>(),
        timeout_ms in 1..5_000u64,
        seed in any::<u64>(),
        ops in prop::collection::vec(breaker_op(), 1..400),
    ) {
        let clock = ManualClock::new(1);
        let cfg = BreakerConfig {
            mode: if dry_run { Mode::DryRun } else { Mode::Enforcing },
            consecutive_failures: Some(3),
            failure_ratio: Some(RatioRule { ratio: 0.5, min_requests: 4 }),
            open_duration: Duration::from_millis(500),
            max_open_duration: Duration::from_secs(4),
            probes,
            probe_success_ratio: ratio,
            probe_timeout: Duration::from_millis(timeout_ms),
            ..Default::default()
        };
        let entered = Arc::new(Mutex::new(0u64));
        let sink = entered.clone();
        let b = CircuitBreaker::with_rng(cfg, Box::new(SplitMix::seeded(seed))).with_listener(move |t| {
            if t.to == State::HalfOpen {
                *sink.lock().unwrap() += 1;
            }
        });
        // (admission, half-open episode it was admitted in)
        let mut held: Vec<(Admission<'_>, u64)> = Vec::new();
        let mut first_probe: Option<(u64, u64)> = None; // (episode, time)
        for op in ops {
            match op {
                BreakerOp::Acquire => {
                    if let Ok(a) = b.try_acquire(clock.now()) {
                        let episode = *entered.lock().unwrap();
                        if a.is_probe() && first_probe.is_none_or(|(e, _)| e != episode) {
                            first_probe = Some((episode, clock.now()));
                        }
                        held.push((a, episode));
                    }
                }
                BreakerOp::Record { which, outcome, latency_ms } => {
                    if !held.is_empty() {
                        let (a, _) = held.swap_remove(which % held.len());
                        a.record(&outcome, Duration::from_millis(latency_ms), clock.now());
                    }
                }
                BreakerOp::Drop { which } => {
                    if !held.is_empty() {
                        drop(held.swap_remove(which % held.len()));
                    }
                }
                BreakerOp::Advance { ms } => clock.advance(Duration::from_millis(ms)),
            }
            b.tick(clock.now());
            let episode = *entered.lock().unwrap();
            let state = b.state();
            if state == State::HalfOpen {
                let in_flight = held.iter().filter(|(a, e)| a.is_probe() && *e == episode).count() as u32;
                prop_assert!(in_flight <= probes, "{} probes held > {}", in_flight, probes);
                if let Some((e, t0)) = first_probe {
                    if e == episode {
                        prop_assert!(
                            clock.now() < t0 + nanos(Duration::from_millis(timeout_ms)),
                            "still half-open {} ns after the first probe", clock.now() - t0
                        );
                    }
                }
            }
            prop_assert!(b.snapshot(clock.now()).probes_in_flight <= probes);
        }
    }
}

#[derive(Debug, Clone)]
enum BudgetOp {
    Start,
    End { which: usize },
    Retry { which: usize },
    RetryDone { which: usize },
}

fn budget_op() -> impl Strategy<Value = BudgetOp> {
    prop_oneof![
        3 => Just(BudgetOp::Start),
        2 => any::<usize>().prop_map(|which| BudgetOp::End { which }),
        4 => any::<usize>().prop_map(|which| BudgetOp::Retry { which }),
        2 => any::<usize>().prop_map(|which| BudgetOp::RetryDone { which }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn retries_in_flight_never_exceed_the_budget(
        percent in 0.0..=100.0f64,
        min in 0..5u32,
        max_retries in 0..20u32,
        ops in prop::collection::vec(budget_op(), 1..400),
    ) {
        let budget = RetryBudget::new(RetryBudgetConfig { percent, min_retry_concurrency: min, max_retries, rate: None });
        // Each request holds its retries; ending a request ends its retries first.
        let mut requests = Vec::new();
        let mut retries: Vec<(usize, _)> = Vec::new();
        let mut next = 0usize;
        for op in ops {
            match op {
                BudgetOp::Start => {
                    requests.push((next, budget.start_request(0)));
                    next += 1;
                }
                BudgetOp::End { which } => {
                    if !requests.is_empty() {
                        let (id, guard) = requests.swap_remove(which % requests.len());
                        retries.retain(|(owner, _)| *owner != id);
                        drop(guard);
                    }
                }
                BudgetOp::Retry { which } => {
                    if !requests.is_empty() {
                        let id = requests[which % requests.len()].0;
                        let active = requests.len() as u64;
                        let limit = (active as f64 * percent / 100.0).floor() as u64;
                        let limit = limit.max(min as u64).min(max_retries as u64);
                        let before = retries.len() as u64;
                        match budget.try_retry(0) {
                            Ok(p) => {
                                prop_assert!(before < limit, "granted at {} of {}", before, limit);
                                retries.push((id, p));
                            }
                            Err(e) => {
                                prop_assert!(before >= limit, "refused at {} of {}", before, limit);
                                prop_assert_eq!(e, BudgetExhausted::InFlight { in_flight: before, limit, active });
                            }
                        }
                    }
                }
                BudgetOp::RetryDone { which } => {
                    if !retries.is_empty() {
                        drop(retries.swap_remove(which % retries.len()));
                    }
                }
            }
            prop_assert_eq!(budget.retries_in_flight(), retries.len() as u64);
            prop_assert_eq!(budget.active(), requests.len() as u64);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Linkerd's budget by rate: whatever the mix of requests, retries and time passing, the
    /// retries within the last ttl (the window's ten buckets) never exceed `retryRatio` × the
    /// requests within it plus `minRetriesPerSecond` × ttl, and a retry is refused only when
    /// one more would exceed it.
    #[test]
    fn retries_by_rate_never_exceed_ratio_times_requests_plus_the_reserve(
        ratio in 0.0..2.0f64,
        min_per_sec in 0..5u32,
        ttl_ms in 100..5_000u64,
        ops in prop::collection::vec((any::<bool>(), 0..400u64), 1..300),
    ) {
        let cfg = RateBudgetConfig { retry_ratio: ratio, min_retries_per_second: min_per_sec, ttl: Duration::from_millis(ttl_ms) };
        let budget = RateBudget::new(cfg);
        let width = nanos(cfg.ttl) / 10;
        let mut now = 0u64;
        // (time, is_retry) of everything counted.
        let mut events: Vec<(u64, bool)> = Vec::new();
        for (is_retry, advance_ms) in ops {
            now += advance_ms * 1_000_000;
            let current = now / width;
            let inside = |t: u64| t / width + 10 > current;
            let requests = events.iter().filter(|(t, r)| !r && inside(*t)).count() as u64;
            let retries = events.iter().filter(|(t, r)| *r && inside(*t)).count() as u64;
            prop_assert_eq!(budget.counts(now), (requests, retries));
            if is_retry {
                let fits = (retries + 1) as f64 <= cfg.allowed(requests);
                prop_assert_eq!(budget.try_withdraw(now).is_ok(), fits, "{} retries, {} requests", retries, requests);
                if fits {
                    events.push((now, true));
                    prop_assert!((retries + 1) as f64 <= ratio * requests as f64 + min_per_sec as f64 * cfg.ttl.as_secs_f64());
                }
            } else {
                budget.deposit(now);
                events.push((now, false));
            }
        }
    }
}

#[test]
fn concurrent_retries_never_exceed_the_budget() {
    let budget = RetryBudget::new(RetryBudgetConfig { min_retry_concurrency: 5, ..Default::default() });
    let _req = budget.start_request(0);
    let peak = std::sync::atomic::AtomicU64::new(0);
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                for _ in 0..20_000 {
                    if let Ok(p) = budget.try_retry(0) {
                        peak.fetch_max(budget.retries_in_flight(), std::sync::atomic::Ordering::SeqCst);
                        drop(p);
                    }
                }
            });
        }
    });
    let peak = peak.into_inner();
    assert!((1..=5).contains(&peak), "peak {peak}");
    assert_eq!(budget.retries_in_flight(), 0);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// Hostile input (headers, statuses, configs with NaN and extremes) never panics.
    #[test]
    fn no_panic_on_any_input(
        header in ".{0,40}",
        status in any::<u16>(),
        code in any::<u8>(),
        micros in any::<u64>(),
        index in any::<usize>(),
        hosts in any::<u32>(),
        percent in any::<u32>(),
        ratio in prop_oneof![Just(f64::NAN), Just(f64::INFINITY), Just(-1.0), any::<f64>()],
        probes in any::<u32>(),
        secs in any::<u64>(),
    ) {
        use tripline_core::backoff::{parse_retry_after, Backoff};
        use tripline_core::classify::Classifier;
        use tripline_core::window::{histogram_index, histogram_value};
        let _ = parse_retry_after(&header, std::time::SystemTime::now());
        let _ = parse_retry_after(&format!("Sun, 06 Nov {header} 08:49:37 GMT"), std::time::UNIX_EPOCH);
        let c = Classifier::default();
        let _ = c.classify(&Outcome::Http(status));
        let _ = c.classify(&Outcome::grpc(code, None));
        let _ = histogram_value(histogram_index(Duration::from_micros(micros)));
        let _ = histogram_value(index);
        let _ = ejection_cap(hosts, percent, CapRounding::Ceil);
        let rng = SplitMix::seeded(secs);
        let _ = Backoff::new(Duration::from_secs(secs), Duration::from_secs(secs)).delay(probes, &rng);
        let _ = RetryBudget::new(RetryBudgetConfig { percent: ratio, min_retry_concurrency: probes, max_retries: percent, rate: None }).try_retry(0);
        let rate = RateBudget::new(RateBudgetConfig { retry_ratio: ratio, min_retries_per_second: probes, ttl: Duration::from_micros(micros) });
        rate.deposit(secs);
        let _ = rate.try_withdraw(secs);

        let clock = ManualClock::new(micros);
        let cfg = BreakerConfig {
            consecutive_failures: Some(1),
            failure_ratio: Some(RatioRule { ratio, min_requests: 0 }),
            open_duration: Duration::from_secs(secs),
            open_multiplier: ratio,
            max_open_duration: Duration::from_secs(secs / 2),
            open_jitter: ratio,
            probes,
            probe_success_ratio: ratio,
            probe_timeout: Duration::from_secs(secs),
            window: Duration::from_nanos(secs),
            window_buckets: probes,
            ..Default::default()
        };
        let b = CircuitBreaker::with_rng(cfg, Box::new(SplitMix::seeded(secs)));
        for step in 0..6u64 {
            if let Ok(a) = b.try_acquire(clock.now()) {
                a.record(&Outcome::Http(status), Duration::from_micros(micros), clock.now());
            }
            clock.set(micros.saturating_add(step.saturating_mul(secs)));
            b.tick(clock.now());
        }
        let _ = b.snapshot(clock.now());
    }
}
