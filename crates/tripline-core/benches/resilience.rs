//! The per-request cost of the resilience engine: one breaker admit + record and one outlier
//! admit + record, uncontended and with two threads on the same endpoint.
//!
//! `cargo bench -p tripline-core --bench resilience -- --warm-up-time 1 --measurement-time 3`

use criterion::{criterion_group, criterion_main, Criterion};
use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Barrier};
use std::time::{Duration, Instant};
use tripline_core::breaker::{BreakerConfig, CircuitBreaker};
use tripline_core::classify::Outcome;
use tripline_core::outlier::{Endpoint, LatencyRule, OutlierConfig, OutlierDetector, SuccessRateRule};
use tripline_core::rng::SplitMix;

const LATENCY: Duration = Duration::from_millis(3);

/// One request: admit through the breaker and the endpoint, then record both outcomes.
#[inline]
fn cycle(b: &CircuitBreaker, ep: &Endpoint, now: u64, i: u64) {
    // One failure in 100, scattered: the breaker and the detectors stay closed/healthy.
    let outcome = if i % 100 == 99 { Outcome::Http(503) } else { Outcome::Http(200) };
    let a = b.try_acquire(now).expect("closed");
    let p = ep.admit(now).expect("healthy");
    p.record(black_box(&outcome), LATENCY, now);
    a.record(black_box(&outcome), LATENCY, now);
}

fn setup(all_detectors: bool) -> (CircuitBreaker, OutlierDetector) {
    let b = CircuitBreaker::with_rng(BreakerConfig::default(), Box::new(SplitMix::seeded(1)));
    let mut cfg = OutlierConfig::default();
    if all_detectors {
        cfg.consecutive_gateway_errors = Some(5);
        cfg.success_rate = Some(SuccessRateRule::default());
        cfg.latency = Some(LatencyRule::default());
    }
    (b, OutlierDetector::with_rng(cfg, Box::new(SplitMix::seeded(2))))
}

/// A second thread, started once (so it keeps its counter stripe), that runs `iters` cycles on
/// the same breaker and endpoint whenever the measuring thread does.
struct Helper {
    jobs: mpsc::Sender<(u64, u64)>,
    start: Arc<Barrier>,
    done: mpsc::Receiver<()>,
}

impl Helper {
    fn spawn(b: Arc<CircuitBreaker>, ep: Arc<Endpoint>) -> Helper {
        let (jobs, rx) = mpsc::channel::<(u64, u64)>();
        let (done_tx, done) = mpsc::channel();
        let start = Arc::new(Barrier::new(2));
        let go = start.clone();
        std::thread::spawn(move || {
            for (base, iters) in rx {
                go.wait();
                for i in 0..iters {
                    cycle(&b, &ep, base + i * 1_000 + 500, i);
                }
                let _ = done_tx.send(());
            }
        });
        Helper { jobs, start, done }
    }
}

/// Runs `iters` cycles on this thread (alongside the helper, if any); returns this thread's time.
fn timed(b: &CircuitBreaker, ep: &Endpoint, iters: u64, helper: Option<&Helper>) -> Duration {
    // Simulated time moves forward across samples (1 µs per request), as a real clock would.
    static CLOCK: AtomicU64 = AtomicU64::new(1);
    let base = CLOCK.fetch_add(iters * 1_000 + 1_000, Ordering::Relaxed);
    if let Some(h) = helper {
        h.jobs.send((base, iters)).expect("helper alive");
        h.start.wait();
    }
    let t0 = Instant::now();
    for i in 0..iters {
        cycle(b, ep, base + i * 1_000, i);
    }
    let elapsed = t0.elapsed();
    if let Some(h) = helper {
        h.done.recv().expect("helper alive");
    }
    elapsed
}

fn bench(c: &mut Criterion) {
    for (name, all) in [("default", false), ("all-detectors", true)] {
        let mut g = c.benchmark_group(format!("admit-record/{name}"));
        for threads in [1usize, 2] {
            let (b, d) = setup(all);
            let b = Arc::new(b);
            let ep = d.update_endpoints(&["10.0.0.1:8080", "10.0.0.2:8080"], 1).remove(0);
            let helper = (threads == 2).then(|| Helper::spawn(b.clone(), ep.clone()));
            g.bench_function(format!("{threads}-thread"), |bench| {
                bench.iter_custom(|iters| timed(&b, &ep, iters, helper.as_ref()));
            });
        }
        g.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
