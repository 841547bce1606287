//! Injected time. Everything in this crate reads time as [`Nanos`] from a [`Clock`], so tests
//! drive transitions with a [`ManualClock`] and never sleep.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Monotonic nanoseconds since an arbitrary origin (fits 584 years).
pub type Nanos = u64;

/// Converts a duration to nanoseconds, saturating.
pub fn nanos(d: Duration) -> Nanos {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// A source of monotonic time.
pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> Nanos;
}

/// The real clock: `std::time::Instant` relative to when it was created.
#[derive(Debug, Clone)]
pub struct MonotonicClock {
    origin: Instant,
}

impl MonotonicClock {
    pub fn new() -> Self {
        MonotonicClock { origin: Instant::now() }
    }

    /// Converts a reading of this clock back to an `Instant` (for timers).
    pub fn instant_at(&self, at: Nanos) -> Instant {
        self.origin + Duration::from_nanos(at)
    }
}

impl Default for MonotonicClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for MonotonicClock {
    fn now(&self) -> Nanos {
        // Start at 1 so that 0 can mean "never" in atomics.
        nanos(self.origin.elapsed()) + 1
    }
}

/// A clock that moves only when told to; shareable between the test and the code under test.
#[derive(Debug, Clone, Default)]
pub struct ManualClock {
    now: Arc<AtomicU64>,
}

impl ManualClock {
    pub fn new(start: Nanos) -> Self {
        ManualClock { now: Arc::new(AtomicU64::new(start)) }
    }

    pub fn advance(&self, by: Duration) {
        self.now.fetch_add(nanos(by), Ordering::SeqCst);
    }

    pub fn set(&self, at: Nanos) {
        self.now.store(at, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Nanos {
        self.now.load(Ordering::SeqCst)
    }
}

impl<C: Clock + ?Sized> Clock for Arc<C> {
    fn now(&self) -> Nanos {
        (**self).now()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_moves_only_when_told() {
        let c = ManualClock::new(5);
        assert_eq!(c.now(), 5);
        c.advance(Duration::from_millis(2));
        assert_eq!(c.now(), 2_000_005);
        let shared = c.clone();
        shared.set(42);
        assert_eq!(c.now(), 42);
    }

    #[test]
    fn monotonic_clock_never_reads_zero() {
        let c = MonotonicClock::new();
        let a = c.now();
        let b = c.now();
        assert!(a >= 1 && b >= a);
    }
}
