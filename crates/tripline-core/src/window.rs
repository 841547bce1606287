//! Lock-free counters for the hot path: a time-bucketed [`SlidingWindow`] (requests, failures,
//! slow calls), a [`StripedCounter`], and a log-bucketed [`LatencyHistogram`].
//!
//! All of them are *striped*: each thread writes to its own cache line (chosen once per thread),
//! and readers sum the stripes. Two threads recording outcomes for the same endpoint therefore do
//! not bounce one cache line between cores, which is what keeps the per-request cost flat under
//! contention. Reads (evaluating a ratio, a sweep) are rarer and pay for the sum.
//!
//! Precision trade-offs, chosen for speed and documented because they are observable:
//! - A window of `M` buckets of width `w` covers the current, partial bucket plus the `M - 1`
//!   before it: between `(M - 1)·w` and `M·w` of history.
//! - When a thread rolls a stale bucket over to a new epoch, an increment racing with the reset
//!   on the same stripe can be lost. Stripes are per thread, so this needs more threads than
//!   stripes and a bucket boundary at the same instant; it undercounts by one at most.
//! - Each bucket holds at most 2²¹−1 (about two million) of each counter per stripe.
//!
//! The window's buckets and the histogram's counts are allocated at the first record, not
//! when they are made: a proxy keeps a breaker window (768 bytes with the default 10 buckets)
//! and a latency histogram (3.5 KiB) for every endpoint in its config, and most endpoints of a
//! mesh never see a request. Until the first record they read as empty; after it they behave
//! exactly as if allocated from the start. The check costs the record path one load.

use crate::clock::Nanos;
use std::cell::Cell;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::*};
use std::sync::OnceLock;
use std::time::Duration;

/// Number of stripes per counter; a power of two.
pub const STRIPES: usize = 4;

/// Aligns its content to a cache line so that neighbours do not false-share.
#[derive(Debug, Default)]
#[repr(align(64))]
pub struct CachePadded<T>(pub T);

static NEXT_STRIPE: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    static STRIPE: Cell<usize> = const { Cell::new(usize::MAX) };
}

/// This thread's stripe, assigned round-robin on first use.
#[inline]
pub fn stripe() -> usize {
    STRIPE.with(|s| {
        let v = s.get();
        if v != usize::MAX {
            return v;
        }
        let v = NEXT_STRIPE.fetch_add(1, Relaxed) % STRIPES;
        s.set(v);
        v
    })
}

/// A `u64` counter that many threads add to without contending. Additions and subtractions wrap,
/// so a value added on one thread and subtracted on another still sums correctly.
#[derive(Debug, Default)]
pub struct StripedCounter {
    cells: [CachePadded<AtomicU64>; STRIPES],
}

impl StripedCounter {
    pub fn new() -> Self {
        Self::default()
    }

    #[inline]
    pub fn add(&self, v: u64) {
        self.cells[stripe()].0.fetch_add(v, Relaxed);
    }

    #[inline]
    pub fn sub(&self, v: u64) {
        self.cells[stripe()].0.fetch_sub(v, Relaxed);
    }

    /// The current total.
    pub fn sum(&self) -> u64 {
        self.cells.iter().fold(0u64, |a, c| a.wrapping_add(c.0.load(Relaxed)))
    }

    /// Reads the total and resets it to zero (for per-interval counts).
    pub fn take(&self) -> u64 {
        self.cells.iter().fold(0u64, |a, c| a.wrapping_add(c.0.swap(0, Relaxed)))
    }
}

const FIELD_BITS: u32 = 21;
const FIELD_MASK: u64 = (1 << FIELD_BITS) - 1;

/// Totals over a window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct WindowCounts {
    pub requests: u64,
    pub failures: u64,
    pub slow: u64,
}

impl WindowCounts {
    pub fn failure_ratio(&self) -> f64 {
        ratio(self.failures, self.requests)
    }

    pub fn slow_ratio(&self) -> f64 {
        ratio(self.slow, self.requests)
    }
}

fn ratio(a: u64, b: u64) -> f64 {
    if b == 0 {
        0.0
    } else {
        a as f64 / b as f64
    }
}

#[derive(Debug, Default)]
struct Bucket {
    epoch: AtomicU64,
    /// requests | failures << 21 | slow << 42
    counts: AtomicU64,
}

type Lines = Box<[CachePadded<[Bucket; 4]>]>;

/// Requests, failures and slow calls over the last `span`, in `buckets` time buckets.
#[derive(Debug)]
pub struct SlidingWindow {
    width: Nanos,
    buckets: u64,
    lines_per_stripe: usize,
    /// The buckets, four to a cache line, `lines_per_stripe` lines per stripe; allocated by
    /// the first record.
    lines: OnceLock<Lines>,
}

impl SlidingWindow {
    /// `span` is split into `buckets` buckets (at least 1; the width is at least 1 ns).
    /// Allocates nothing until the first [`record`](Self::record).
    pub fn new(span: Duration, buckets: u32) -> Self {
        let buckets = buckets.clamp(1, 1024) as u64;
        let width = (crate::clock::nanos(span) / buckets).max(1);
        let lines_per_stripe = (buckets as usize).div_ceil(4);
        SlidingWindow { width, buckets, lines_per_stripe, lines: OnceLock::new() }
    }

    /// The time covered by the window.
    pub fn span(&self) -> Duration {
        Duration::from_nanos(self.width.saturating_mul(self.buckets))
    }

    /// Whether anything was ever recorded (the buckets are allocated).
    pub fn is_allocated(&self) -> bool {
        self.lines.get().is_some()
    }

    #[inline]
    fn lines(&self) -> &[CachePadded<[Bucket; 4]>] {
        self.lines
            .get_or_init(|| (0..self.lines_per_stripe * STRIPES).map(|_| CachePadded::default()).collect())
    }

    #[inline]
    fn bucket<'a>(&self, lines: &'a [CachePadded<[Bucket; 4]>], stripe: usize, i: usize) -> &'a Bucket {
        &lines[stripe * self.lines_per_stripe + i / 4].0[i % 4]
    }

    /// Counts one call at `now`.
    #[inline]
    pub fn record(&self, now: Nanos, failure: bool, slow: bool) {
        let epoch = now / self.width;
        let b = self.bucket(self.lines(), stripe(), (epoch % self.buckets) as usize);
        let seen = b.epoch.load(Acquire);
        if seen < epoch && b.epoch.compare_exchange(seen, epoch, AcqRel, Acquire).is_ok() {
            b.counts.store(0, Release);
        }
        let delta = 1 | (failure as u64) << FIELD_BITS | (slow as u64) << (2 * FIELD_BITS);
        b.counts.fetch_add(delta, Relaxed);
    }

    /// Totals of the buckets still inside the window at `now`.
    pub fn totals(&self, now: Nanos) -> WindowCounts {
        let current = now / self.width;
        let mut t = WindowCounts::default();
        let Some(lines) = self.lines.get() else { return t };
        for s in 0..STRIPES {
            for i in 0..self.buckets as usize {
                let b = self.bucket(lines, s, i);
                let e = b.epoch.load(Acquire);
                if e + self.buckets > current && e <= current {
                    let c = b.counts.load(Relaxed);
                    t.requests += c & FIELD_MASK;
                    t.failures += (c >> FIELD_BITS) & FIELD_MASK;
                    t.slow += (c >> (2 * FIELD_BITS)) & FIELD_MASK;
                }
            }
        }
        t
    }

    /// Forgets everything (for example when a breaker closes again).
    pub fn reset(&self) {
        for line in self.lines.get().into_iter().flat_map(|l| l.iter()) {
            for b in &line.0 {
                b.counts.store(0, Relaxed);
                b.epoch.store(0, Relaxed);
            }
        }
    }
}

/// Number of histogram buckets: 4 per power of two of microseconds, up to about 4.5 minutes.
pub const HISTOGRAM_BUCKETS: usize = 112;

/// The bucket index of a latency: 4 sub-buckets per octave of microseconds (≤ 25% wide).
pub fn histogram_index(latency: Duration) -> usize {
    let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
    if us < 4 {
        return us as usize;
    }
    let msb = 63 - us.leading_zeros() as u64;
    let sub = (us >> (msb - 2)) & 3;
    (((msb - 1) * 4 + sub) as usize).min(HISTOGRAM_BUCKETS - 1)
}

/// The representative latency (the middle) of histogram bucket `i`.
pub fn histogram_value(i: usize) -> Duration {
    let i = i.min(HISTOGRAM_BUCKETS - 1);
    if i < 4 {
        return Duration::from_micros(i as u64);
    }
    let msb = (i / 4 + 1) as u32;
    let sub = (i % 4) as u64;
    let lo = (4 + sub) << (msb - 2);
    let hi = (5 + sub) << (msb - 2);
    Duration::from_micros((lo + hi) / 2)
}

type Stripes = Box<[CachePadded<[AtomicU64; HISTOGRAM_BUCKETS]>]>;

/// A striped latency histogram, read-and-reset once per interval by the outlier sweep. Its
/// counts are allocated by the first record.
#[derive(Debug, Default)]
pub struct LatencyHistogram {
    stripes: OnceLock<Stripes>,
}

impl LatencyHistogram {
    #[inline]
    pub fn record(&self, latency: Duration) {
        let stripes = self.stripes.get_or_init(|| {
            (0..STRIPES).map(|_| CachePadded(std::array::from_fn(|_| AtomicU64::new(0)))).collect()
        });
        stripes[stripe()].0[histogram_index(latency)].fetch_add(1, Relaxed);
    }

    /// Whether anything was ever recorded (the counts are allocated).
    pub fn is_allocated(&self) -> bool {
        self.stripes.get().is_some()
    }

    /// Adds the counts into `acc` and resets them.
    pub fn take_into(&self, acc: &mut [u64; HISTOGRAM_BUCKETS]) {
        for s in self.stripes.get().into_iter().flat_map(|s| s.iter()) {
            for (a, c) in acc.iter_mut().zip(s.0.iter()) {
                *a += c.swap(0, Relaxed);
            }
        }
    }
}

/// The `q` quantile (0..=1) of histogram counts, or `None` when empty.
pub fn percentile(hist: &[u64; HISTOGRAM_BUCKETS], q: f64) -> Option<Duration> {
    let total: u64 = hist.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).clamp(1, total);
    let mut seen = 0;
    for (i, &c) in hist.iter().enumerate() {
        seen += c;
        if seen >= rank {
            return Some(histogram_value(i));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Nanos = 1_000_000_000;

    #[test]
    fn window_counts_and_forgets_old_buckets() {
        let w = SlidingWindow::new(Duration::from_secs(10), 10);
        assert_eq!(w.span(), Duration::from_secs(10));
        w.record(S / 2, true, false);
        w.record(S, false, true);
        w.record(3 * S, false, false);
        assert_eq!(w.totals(3 * S), WindowCounts { requests: 3, failures: 1, slow: 1 });
        // The bucket [0, 1s) leaves the window at 10s; [1s, 2s) at 11s.
        assert_eq!(w.totals(10 * S).requests, 2);
        assert_eq!(w.totals(11 * S).requests, 1);
        assert_eq!(w.totals(14 * S).requests, 0);
        // Reusing a slot for a new epoch resets it.
        w.record(13 * S, true, false);
        assert_eq!(w.totals(13 * S), WindowCounts { requests: 1, failures: 1, slow: 0 });
        w.reset();
        assert_eq!(w.totals(13 * S), WindowCounts::default());
    }

    #[test]
    fn window_and_histogram_allocate_at_their_first_record() {
        let w = SlidingWindow::new(Duration::from_secs(10), 10);
        w.reset();
        assert_eq!(w.totals(5 * S), WindowCounts::default());
        assert!(!w.is_allocated(), "reading and resetting allocate nothing");
        w.record(5 * S, true, false);
        assert!(w.is_allocated());
        assert_eq!(w.totals(5 * S), WindowCounts { requests: 1, failures: 1, slow: 0 });

        let h = LatencyHistogram::default();
        let mut acc = [0; HISTOGRAM_BUCKETS];
        h.take_into(&mut acc);
        assert_eq!((acc, h.is_allocated()), ([0; HISTOGRAM_BUCKETS], false));
        h.record(Duration::from_millis(10));
        h.take_into(&mut acc);
        assert!(h.is_allocated());
        assert_eq!(acc.iter().sum::<u64>(), 1);
        assert_eq!(percentile(&acc, 0.5), Some(histogram_value(histogram_index(Duration::from_millis(10)))));
    }

    #[test]
    fn window_sums_across_threads() {
        let w = SlidingWindow::new(Duration::from_secs(1), 4);
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for i in 0..1000 {
                        w.record(5, i % 2 == 0, false);
                    }
                });
            }
        });
        assert_eq!(w.totals(5), WindowCounts { requests: 4000, failures: 2000, slow: 0 });
        assert!((w.totals(5).failure_ratio() - 0.5).abs() < 1e-9);
    }

    #[test]
    fn striped_counter_balances_across_threads() {
        let c = StripedCounter::new();
        c.add(5);
        std::thread::scope(|s| {
            s.spawn(|| c.sub(3));
        });
        assert_eq!(c.sum(), 2);
        assert_eq!(c.take(), 2);
        assert_eq!(c.sum(), 0);
    }

    #[test]
    fn histogram_buckets_are_monotonic_and_tight() {
        let mut last = 0;
        for us in [0u64, 1, 3, 4, 5, 7, 8, 100, 1_000, 50_000, 1_000_000, 10_000_000] {
            let i = histogram_index(Duration::from_micros(us));
            assert!(i >= last, "{us}");
            last = i;
            let v = histogram_value(i).as_micros() as f64;
            assert!((v - us as f64).abs() <= us as f64 * 0.25 + 1.0, "{us} -> {v}");
        }
        assert_eq!(histogram_index(Duration::from_secs(100_000)), HISTOGRAM_BUCKETS - 1);
    }

    #[test]
    fn percentile_of_recorded_latencies() {
        let h = LatencyHistogram::default();
        for _ in 0..90 {
            h.record(Duration::from_millis(10));
        }
        for _ in 0..10 {
            h.record(Duration::from_millis(500));
        }
        let mut acc = [0; HISTOGRAM_BUCKETS];
        h.take_into(&mut acc);
        let p50 = percentile(&acc, 0.5).unwrap();
        let p99 = percentile(&acc, 0.99).unwrap();
        assert!(p50 >= Duration::from_millis(8) && p50 <= Duration::from_millis(12), "{p50:?}");
        assert!(p99 >= Duration::from_millis(400) && p99 <= Duration::from_millis(600), "{p99:?}");
        let mut again = [0; HISTOGRAM_BUCKETS];
        h.take_into(&mut again);
        assert_eq!(percentile(&again, 0.5), None, "take resets");
    }
}
