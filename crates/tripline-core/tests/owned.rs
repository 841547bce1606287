//! Owned guards (`*_owned`) behave exactly like the borrowed ones and can cross threads, which
//! is what a proxy needs when a response body outlives the function that admitted it.

use std::sync::Arc;
use std::time::Duration;

use tripline_core::breaker::{BreakerConfig, CircuitBreaker, State};
use tripline_core::budget::{RetryBudget, RetryBudgetConfig};
use tripline_core::classify::Outcome;
use tripline_core::outlier::{OutlierConfig, OutlierDetector};

#[test]
fn owned_admissions_recorded_on_another_thread_trip_the_breaker() {
    let cfg =
        BreakerConfig { consecutive_failures: Some(3), failure_ratio: None, ..BreakerConfig::default() };
    let breaker = Arc::new(CircuitBreaker::new(cfg));
    for i in 0..3u64 {
        let adm = breaker.try_acquire_owned(i + 1).expect("closed breaker admits");
        std::thread::spawn(move || adm.record(&Outcome::Http(503), Duration::from_millis(1), i + 1))
            .join()
            .unwrap();
    }
    assert_eq!(breaker.state(), State::Open);
    assert!(breaker.try_acquire_owned(10).is_err());
}

#[test]
fn owned_passes_eject_and_owned_retry_permits_free_their_slot() {
    let cfg = OutlierConfig {
        consecutive_5xx_errors: Some(2),
        max_ejection_percent: 100,
        ..OutlierConfig::default()
    };
    let detector = OutlierDetector::new(cfg);
    let eps = detector.update_endpoints(&["a", "b"], 1);
    for _ in 0..2 {
        let pass = eps[0].admit_owned(2).expect("healthy endpoint admits");
        std::thread::spawn(move || pass.record(&Outcome::Http(500), Duration::from_millis(1), 2))
            .join()
            .unwrap();
    }
    assert!(!eps[0].is_available(3), "two consecutive 5xx eject endpoint a");
    assert!(eps[1].is_available(3));

    let budget =
        Arc::new(RetryBudget::new(RetryBudgetConfig { min_retry_concurrency: 1, ..Default::default() }));
    let permit = budget.try_retry_owned(0).expect("one retry allowed");
    assert!(budget.try_retry_owned(0).is_err(), "the second concurrent retry is over budget");
    std::thread::spawn(move || drop(permit)).join().unwrap();
    assert!(budget.try_retry_owned(0).is_ok());
}
