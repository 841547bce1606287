//! The run's clock and its time buckets: the load generator, the fault upstreams and the admin
//! sampler all place what they saw on one timeline, so a check can ask "what did the clients
//! see in the second after the fault began" and a plot can put them side by side.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// The width of a bucket: fine enough to see an ejection within a second happen.
pub const BUCKET: Duration = Duration::from_millis(100);

/// The moment the load starts, shared by everything in a run. Before it is set (upstreams
/// starting, the proxy getting ready) everything is at time zero.
#[derive(Clone, Default)]
pub struct Epoch(Arc<OnceLock<Instant>>);

impl Epoch {
    /// Sets time zero to now; later calls change nothing.
    pub fn start(&self) -> Instant {
        *self.0.get_or_init(Instant::now)
    }

    /// Time since the start (zero before it).
    pub fn elapsed(&self) -> Duration {
        self.0.get().map(|t| t.elapsed()).unwrap_or_default()
    }
}

/// The bucket a time falls in.
pub fn bucket(at: Duration) -> usize {
    (at.as_millis() / BUCKET.as_millis()) as usize
}

/// Counts per bucket, written from many tasks without a lock.
pub struct Counts(Vec<AtomicU64>);

impl Counts {
    /// Room for `length` of run; later events go in the last bucket.
    pub fn new(length: Duration) -> Self {
        Counts((0..=bucket(length) + 1).map(|_| AtomicU64::new(0)).collect())
    }

    pub fn add(&self, at: Duration) {
        let i = bucket(at).min(self.0.len() - 1);
        self.0[i].fetch_add(1, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> Vec<u64> {
        self.0.iter().map(|c| c.load(Ordering::Relaxed)).collect()
    }
}

/// The sum of `series` over the buckets of `[from, to)`.
pub fn sum(series: &[u64], from: Duration, to: Duration) -> u64 {
    let (a, b) = (bucket(from).min(series.len()), bucket(to).min(series.len()));
    series[a..b].iter().sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_land_in_their_bucket_and_sums_take_half_open_ranges() {
        let c = Counts::new(Duration::from_secs(1));
        for ms in [0, 99, 100, 950, 5_000] {
            c.add(Duration::from_millis(ms));
        }
        let s = c.snapshot();
        assert_eq!((s[0], s[1], s[9]), (2, 1, 1));
        assert_eq!(*s.last().unwrap(), 1, "past the end: the last bucket");
        assert_eq!(sum(&s, Duration::ZERO, Duration::from_millis(200)), 3);
        assert_eq!(sum(&s, Duration::from_millis(100), Duration::from_secs(1)), 2);
    }
}
