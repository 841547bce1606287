//! Outlier detection: ejection, probing back, the cap, the periodic detectors, endpoint updates.

use std::sync::{Arc, Mutex};
use std::time::Duration;
use tripline_core::classify::{LocalReason, Outcome};
use tripline_core::clock::{Clock, ManualClock};
use tripline_core::outlier::*;
use tripline_core::rng::SplitMix;

const FAST: Duration = Duration::from_millis(5);

fn detector(cfg: OutlierConfig) -> OutlierDetector {
    OutlierDetector::with_rng(cfg, Box::new(SplitMix::seeded(7)))
}

fn hosts(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("10.0.0.{i}:8080")).collect()
}

fn send(ep: &Endpoint, clock: &ManualClock, o: Outcome) -> bool {
    match ep.admit(clock.now()) {
        Some(p) => {
            p.record(&o, FAST, clock.now());
            true
        }
        None => false,
    }
}

fn send_n(ep: &Endpoint, clock: &ManualClock, o: Outcome, n: usize) {
    for _ in 0..n {
        send(ep, clock, o);
    }
}

#[test]
fn five_consecutive_5xx_eject_then_a_probe_brings_it_back() {
    let clock = ManualClock::new(1);
    let events = Arc::new(Mutex::new(Vec::new()));
    let sink = events.clone();
    let d = detector(OutlierConfig { max_ejection_percent: 50, ..Default::default() })
        .with_listener(move |e| sink.lock().unwrap().push(e.to_string()));
    let eps = d.update_endpoints(&hosts(2), clock.now());
    let bad = &eps[0];
    send_n(bad, &clock, Outcome::Http(503), 4);
    assert_eq!(bad.health(), Health::Healthy);
    send(bad, &clock, Outcome::Http(503));
    assert_eq!(bad.health(), Health::Ejected);
    assert!(!bad.is_available(clock.now()));
    assert!(bad.admit(clock.now()).is_none(), "no traffic while ejected");
    assert_eq!((d.ejections_active(), d.ejections_total(Detector::Consecutive5xx)), (1, 1));

    clock.advance(Duration::from_secs(30));
    assert!(bad.is_available(clock.now()));
    let probe = bad.admit(clock.now()).unwrap();
    assert!(probe.is_probe());
    assert_eq!(bad.health(), Health::Probing);
    assert!(!bad.is_available(clock.now()), "one probe at a time");
    assert!(bad.admit(clock.now()).is_none());
    probe.record(&Outcome::Http(200), FAST, clock.now());
    assert_eq!(bad.health(), Health::Healthy);
    assert_eq!(d.ejections_active(), 0);
    assert_eq!(
        *events.lock().unwrap(),
        [
            "10.0.0.0:8080: healthy -> ejected (consecutive-5xx): 5 consecutive 5xx (last 503); ejection #1 for 30 s",
            "10.0.0.0:8080: ejected -> probing: ejection time over (0 ms ago); admitting probes",
            "10.0.0.0:8080: probing -> healthy: 1 probe(s) succeeded",
        ]
    );
    assert_eq!(d.history().len(), 3);
}

#[test]
fn a_failed_probe_re_ejects_for_longer_and_healthy_intervals_decay_the_count() {
    let clock = ManualClock::new(1);
    let d = detector(OutlierConfig { max_ejection_percent: 100, ..Default::default() });
    let eps = d.update_endpoints(&hosts(1), clock.now());
    let ep = &eps[0];
    send_n(ep, &clock, Outcome::Http(500), 5);
    clock.advance(Duration::from_secs(30));
    assert!(send(ep, &clock, Outcome::Reset));
    let s = ep.snapshot();
    assert_eq!((s.health, s.times_ejected), (Health::Ejected, 2));
    assert_eq!(s.until, Some(clock.now() + 60_000_000_000), "30 s x 2");
    assert_eq!(d.ejections_total(Detector::ProbeFailed), 1);
    assert_eq!(d.ejections_active(), 1);

    clock.advance(Duration::from_secs(60));
    assert!(send(ep, &clock, Outcome::Http(200)));
    assert_eq!(ep.health(), Health::Healthy);
    d.sweep(clock.now());
    assert_eq!(ep.snapshot().times_ejected, 1);
    d.sweep(clock.now());
    d.sweep(clock.now());
    assert_eq!(ep.snapshot().times_ejected, 0);
    send_n(ep, &clock, Outcome::Http(500), 5);
    assert_eq!(ep.snapshot().until, Some(clock.now() + 30_000_000_000), "back to the base time");
}

#[test]
fn ejection_time_is_capped_and_jittered() {
    let clock = ManualClock::new(1);
    let cfg = OutlierConfig {
        max_ejection_percent: 100,
        max_ejection_time: Duration::from_secs(45),
        max_ejection_time_jitter: Duration::from_secs(2),
        ..Default::default()
    };
    let d = detector(cfg);
    let ep = &d.update_endpoints(&hosts(1), clock.now())[0];
    let mut times = Vec::new();
    for _ in 0..4 {
        send_n(ep, &clock, Outcome::Http(500), 5);
        let until = ep.snapshot().until.unwrap();
        times.push(Duration::from_nanos(until - clock.now()));
        clock.set(until);
        let p = ep.admit(clock.now()).unwrap();
        p.record(&Outcome::Http(200), FAST, clock.now());
    }
    let bases = [30, 45, 45, 45];
    for (t, base) in times.iter().zip(bases) {
        assert!(*t >= Duration::from_secs(base) && *t <= Duration::from_secs(base + 2), "{times:?}");
    }
    assert!(times.iter().any(|t| t.subsec_nanos() != 0), "jitter applied: {times:?}");
}

#[test]
fn gateway_errors_count_separately() {
    let clock = ManualClock::new(1);
    let cfg = OutlierConfig {
        consecutive_5xx_errors: None,
        consecutive_gateway_errors: Some(3),
        max_ejection_percent: 100,
        ..Default::default()
    };
    let d = detector(cfg);
    let ep = &d.update_endpoints(&hosts(1), clock.now())[0];
    for o in [502, 504, 500, 503, 502] {
        send(ep, &clock, Outcome::Http(o));
    }
    assert_eq!(ep.health(), Health::Healthy, "a non-gateway 500 broke the streak");
    send(ep, &clock, Outcome::Timeout);
    assert_eq!(ep.health(), Health::Ejected, "without the split, a timeout is a gateway error");
    assert_eq!(d.ejections_total(Detector::ConsecutiveGateway), 1);
}

#[test]
fn split_local_origin_failures_have_their_own_counter() {
    let clock = ManualClock::new(1);
    let cfg = OutlierConfig {
        split_external_local_origin_errors: true,
        consecutive_local_origin_failures: Some(3),
        max_ejection_percent: 100,
        ..Default::default()
    };
    let d = detector(cfg);
    let ep = &d.update_endpoints(&hosts(1), clock.now())[0];
    send_n(ep, &clock, Outcome::Http(503), 4);
    send_n(ep, &clock, Outcome::ConnectFailure, 2);
    assert_eq!(ep.snapshot().consecutive_5xx, 4, "local failures do not touch the 5xx streak");
    assert_eq!(ep.snapshot().consecutive_local_origin, 2);
    send(ep, &clock, Outcome::Http(404));
    assert_eq!((ep.snapshot().consecutive_5xx, ep.snapshot().consecutive_local_origin), (0, 0));
    send_n(ep, &clock, Outcome::ConnectFailure, 3);
    assert_eq!(ep.health(), Health::Ejected);
    assert_eq!(d.ejections_total(Detector::ConsecutiveLocalOrigin), 1);

    // Without the split, connect failures are 5xx.
    let d = detector(OutlierConfig { max_ejection_percent: 100, ..Default::default() });
    let ep = &d.update_endpoints(&hosts(1), clock.now())[0];
    send_n(ep, &clock, Outcome::ConnectFailure, 5);
    assert_eq!(d.ejections_total(Detector::Consecutive5xx), 1);
}

#[test]
fn local_rejections_never_eject() {
    let clock = ManualClock::new(1);
    let d = detector(OutlierConfig { max_ejection_percent: 100, ..Default::default() });
    let ep = &d.update_endpoints(&hosts(1), clock.now())[0];
    for r in [LocalReason::Overflow, LocalReason::BreakerOpen, LocalReason::RetryBudget] {
        send_n(ep, &clock, Outcome::Local(r), 100);
    }
    send_n(ep, &clock, Outcome::http(429, None), 100);
    assert_eq!(ep.health(), Health::Healthy);
    assert_eq!(ep.snapshot().consecutive_5xx, 0);
}

#[test]
fn cap_rounding_for_small_clusters() {
    let caps = |r| (1..=12).map(|n| ejection_cap(n, 10, r)).collect::<Vec<_>>();
    assert_eq!(caps(CapRounding::Floor), [0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1]);
    assert_eq!(caps(CapRounding::Ceil), [1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2]);
    assert_eq!(caps(CapRounding::AtLeastOne), [1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1]);
    assert_eq!(ejection_cap(3, 50, CapRounding::Floor), 1);
    assert_eq!(ejection_cap(3, 50, CapRounding::Ceil), 2);
    assert_eq!(ejection_cap(3, 100, CapRounding::AtLeastOne), 3);
    assert_eq!(ejection_cap(3, 250, CapRounding::Ceil), 3, "never more than the hosts");
    assert_eq!(ejection_cap(5, 0, CapRounding::AtLeastOne), 0);
    assert_eq!(ejection_cap(0, 10, CapRounding::AtLeastOne), 0);
}

#[test]
fn the_cap_holds_in_a_three_host_cluster() {
    let clock = ManualClock::new(1);
    let d = detector(OutlierConfig::default());
    let eps = d.update_endpoints(&hosts(3), clock.now());
    assert_eq!(d.ejection_cap(), 1);
    send_n(&eps[0], &clock, Outcome::Http(500), 5);
    send_n(&eps[1], &clock, Outcome::Http(500), 5);
    assert_eq!(eps[0].health(), Health::Ejected);
    assert_eq!(eps[1].health(), Health::Healthy, "10% of 3 hosts: one ejection");
    assert_eq!(d.ejections_capped(), 1);

    let floor = detector(OutlierConfig { cap_rounding: CapRounding::Floor, ..Default::default() });
    let eps = floor.update_endpoints(&hosts(3), clock.now());
    send_n(&eps[0], &clock, Outcome::Http(500), 5);
    assert_eq!(eps[0].health(), Health::Healthy, "Floor: 10% of 3 hosts ejects nothing");
}

#[test]
fn enforcing_zero_detects_but_does_not_eject() {
    let clock = ManualClock::new(1);
    let cfg = OutlierConfig {
        enforcing: Enforcing { consecutive_5xx: 0, ..Default::default() },
        max_ejection_percent: 100,
        ..Default::default()
    };
    let d = detector(cfg);
    let ep = &d.update_endpoints(&hosts(1), clock.now())[0];
    send_n(ep, &clock, Outcome::Http(500), 10);
    assert_eq!(ep.health(), Health::Healthy);
    assert_eq!(d.detected_not_enforced(Detector::Consecutive5xx), 2);
}

/// Sends `ok` successes and `fail` (≤ `ok`) 500s, alternating so no consecutive rule fires.
fn traffic(ep: &Endpoint, clock: &ManualClock, ok: usize, fail: usize, latency: Duration) {
    for i in 0..ok + fail {
        let failing = i < 2 * fail && i % 2 == 1;
        let o = if failing { Outcome::Http(500) } else { Outcome::Http(200) };
        ep.admit(clock.now()).unwrap().record(&o, latency, clock.now());
    }
}

/// Six endpoints under success-rate detection; all but the first served 99 successes and 1
/// failure. The caller decides what the first one served.
fn five_healthy_and_one_under_test() -> (ManualClock, OutlierDetector, Vec<Arc<Endpoint>>) {
    let clock = ManualClock::new(1);
    let cfg = OutlierConfig {
        consecutive_5xx_errors: None,
        success_rate: Some(SuccessRateRule::default()),
        max_ejection_percent: 50,
        ..Default::default()
    };
    let d = detector(cfg);
    let eps = d.update_endpoints(&hosts(6), clock.now());
    for ep in &eps[1..] {
        traffic(ep, &clock, 99, 1, FAST);
    }
    (clock, d, eps)
}

#[test]
fn success_rate_ejects_the_statistical_outlier() {
    let (clock, d, eps) = five_healthy_and_one_under_test();
    traffic(&eps[0], &clock, 50, 50, FAST);
    d.sweep(clock.now());
    assert_eq!(eps[0].health(), Health::Ejected);
    assert!(eps[1..].iter().all(|e| e.health() == Health::Healthy));
    let e = d.history().pop().unwrap();
    assert_eq!(e.detector, Some(Detector::SuccessRate));
    assert!(e.evidence.starts_with("success rate 50.0% < "), "{}", e.evidence);
    assert!(e.evidence.contains("over 10 s, 100 requests"), "{}", e.evidence);

    // Counts are per interval: the next sweep sees nothing and ejects nothing more.
    d.sweep(clock.now());
    assert_eq!(d.ejections_active(), 1);
}

#[test]
fn success_rate_needs_enough_hosts_and_volume() {
    let (clock, d, eps) = five_healthy_and_one_under_test();
    traffic(&eps[0], &clock, 40, 40, FAST); // 80 requests < 100
    d.sweep(clock.now());
    assert_eq!(d.ejections_active(), 0);
}

#[test]
fn failure_percentage_ejects_above_the_threshold() {
    let clock = ManualClock::new(1);
    let cfg = OutlierConfig {
        consecutive_5xx_errors: None,
        failure_percentage: Some(FailurePercentageRule { threshold: 40, ..Default::default() }),
        max_ejection_percent: 50,
        ..Default::default()
    };
    let d = detector(cfg);
    let eps = d.update_endpoints(&hosts(5), clock.now());
    for ep in &eps[1..] {
        traffic(ep, &clock, 70, 30, FAST);
    }
    traffic(&eps[0], &clock, 55, 45, FAST);
    d.sweep(clock.now());
    assert_eq!(eps[0].health(), Health::Ejected);
    assert_eq!(d.ejections_active(), 1);
    assert_eq!(
        d.history()[0].evidence,
        "failure percentage 45.0% >= 40% over 10 s, 100 requests; ejection #1 for 30 s"
    );
}

#[test]
fn latency_ejection_compares_with_the_cluster_median() {
    let clock = ManualClock::new(1);
    let cfg = OutlierConfig {
        latency: Some(LatencyRule::default()),
        max_ejection_percent: 50,
        ..Default::default()
    };
    let d = detector(cfg);
    let eps = d.update_endpoints(&hosts(3), clock.now());
    traffic(&eps[0], &clock, 100, 0, Duration::from_millis(500));
    traffic(&eps[1], &clock, 100, 0, Duration::from_millis(10));
    traffic(&eps[2], &clock, 100, 0, Duration::from_millis(12));
    d.sweep(clock.now());
    assert_eq!(eps[0].health(), Health::Ejected);
    assert_eq!(d.ejections_total(Detector::Latency), 1);
    let e = &d.history()[0].evidence;
    assert_eq!(
        e,
        "p90 latency 491 ms > 3 x cluster median 11 ms over 10 s, 100 requests; ejection #1 for 30 s"
    );

    // 4x slower but under min_latency (50 ms): fine.
    let cfg = OutlierConfig {
        latency: Some(LatencyRule::default()),
        max_ejection_percent: 50,
        ..Default::default()
    };
    let d = detector(cfg);
    let eps = d.update_endpoints(&hosts(3), clock.now());
    traffic(&eps[0], &clock, 100, 0, Duration::from_millis(8));
    traffic(&eps[1], &clock, 100, 0, Duration::from_millis(2));
    traffic(&eps[2], &clock, 100, 0, Duration::from_millis(2));
    d.sweep(clock.now());
    assert_eq!(d.ejections_active(), 0);
}

#[test]
fn panic_threshold() {
    let clock = ManualClock::new(1);
    let d =
        detector(OutlierConfig { min_health_percent: 50, max_ejection_percent: 100, ..Default::default() });
    let eps = d.update_endpoints(&hosts(4), clock.now());
    send_n(&eps[0], &clock, Outcome::Http(500), 5);
    send_n(&eps[1], &clock, Outcome::Http(500), 5);
    assert!(!d.in_panic(), "2 of 4 healthy is not below 50%");
    send_n(&eps[2], &clock, Outcome::Http(500), 5);
    assert!(d.in_panic());
    let off = detector(OutlierConfig { max_ejection_percent: 100, ..Default::default() });
    let eps = off.update_endpoints(&hosts(1), clock.now());
    send_n(&eps[0], &clock, Outcome::Http(500), 5);
    assert!(!off.in_panic(), "Istio's default 0% disables panic mode");
}

#[test]
fn endpoint_updates_keep_state_of_endpoints_that_stay() {
    let clock = ManualClock::new(1);
    let d = detector(OutlierConfig { max_ejection_percent: 50, ..Default::default() });
    let eps = d.update_endpoints(&["a", "b", "c", "d"], clock.now());
    send_n(&eps[0], &clock, Outcome::Http(500), 5);
    send_n(&eps[1], &clock, Outcome::Http(500), 3);
    let after = d.update_endpoints(&["b", "a", "e", "f"], clock.now());
    assert!(Arc::ptr_eq(&after[1], &eps[0]), "same handle for an endpoint that stays");
    assert_eq!(after[1].health(), Health::Ejected);
    assert_eq!(after[0].snapshot().consecutive_5xx, 3);
    assert_eq!(after[2].health(), Health::Healthy);
    assert_eq!(d.endpoints().len(), 4);

    // Removing an ejected endpoint frees its place under the cap.
    let last = d.update_endpoints(&["b", "e", "f"], clock.now());
    assert_eq!(d.ejections_active(), 0);
    send_n(&eps[0], &clock, Outcome::Http(500), 20);
    assert_eq!(d.ejections_active(), 0, "a removed endpoint's late results do nothing");
    send_n(&last[0], &clock, Outcome::Http(500), 2);
    assert_eq!(last[0].health(), Health::Ejected);
}

#[test]
fn shrinking_below_the_ejected_count_lets_endpoints_back() {
    let clock = ManualClock::new(1);
    let d = detector(OutlierConfig { max_ejection_percent: 50, ..Default::default() });
    let eps = d.update_endpoints(&hosts(4), clock.now());
    send_n(&eps[0], &clock, Outcome::Http(500), 5);
    clock.advance(Duration::from_secs(1));
    send_n(&eps[1], &clock, Outcome::Http(500), 5);
    assert_eq!(d.ejections_active(), 2);
    let kept = d.update_endpoints(&[&hosts(4)[0], &hosts(4)[1]], clock.now());
    assert_eq!(d.ejection_cap(), 1);
    assert_eq!(d.ejections_active(), 1);
    assert_eq!(kept[0].health(), Health::Healthy, "the one closest to its return goes back");
    assert_eq!(kept[1].health(), Health::Ejected);
}

#[test]
fn a_dropped_probe_frees_its_slot() {
    let clock = ManualClock::new(1);
    let d = detector(OutlierConfig { max_ejection_percent: 100, probe_successes: 2, ..Default::default() });
    let ep = &d.update_endpoints(&hosts(1), clock.now())[0];
    send_n(ep, &clock, Outcome::Http(500), 5);
    clock.advance(Duration::from_secs(30));
    let p = ep.admit(clock.now()).unwrap();
    assert!(ep.admit(clock.now()).is_none());
    drop(p);
    assert_eq!(ep.snapshot().probes_in_flight, 0);
    assert!(send(ep, &clock, Outcome::Http(200)));
    assert_eq!(ep.health(), Health::Probing, "2 successes needed");
    assert!(send(ep, &clock, Outcome::Http(200)));
    assert_eq!(ep.health(), Health::Healthy);
}

#[test]
fn sweep_starts_probing_without_traffic() {
    let clock = ManualClock::new(1);
    let d = detector(OutlierConfig { max_ejection_percent: 100, ..Default::default() });
    let ep = &d.update_endpoints(&hosts(1), clock.now())[0];
    send_n(ep, &clock, Outcome::Http(500), 5);
    clock.advance(Duration::from_secs(29));
    d.sweep(clock.now());
    assert_eq!(ep.health(), Health::Ejected);
    clock.advance(Duration::from_secs(1));
    d.sweep(clock.now());
    assert_eq!(ep.health(), Health::Probing);
}
