//! Admission limits: a counter with a ceiling, handed out as RAII permits.
//!
//! Used for Envoy-style connection-pool limits (connections, pending requests, active requests,
//! retries). Acquiring is one `fetch_update` on an atomic; releasing happens when the permit is
//! dropped, so an early return or a cancelled future can never leak a slot.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

/// A shared counter with a maximum. Cheap to clone (an `Arc`).
#[derive(Debug, Clone)]
pub struct Limit {
    inner: Arc<LimitInner>,
}

#[derive(Debug)]
struct LimitInner {
    current: AtomicU32,
    max: AtomicU32,
}

impl Limit {
    pub fn new(max: u32) -> Self {
        Limit { inner: Arc::new(LimitInner { current: AtomicU32::new(0), max: AtomicU32::new(max) }) }
    }

    /// Takes a slot if one is free; `None` means the limit is reached (overflow).
    pub fn try_acquire(&self) -> Option<Permit> {
        let max = self.inner.max.load(Ordering::Relaxed);
        self.inner
            .current
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |c| if c < max { Some(c + 1) } else { None })
            .ok()
            .map(|_| Permit { limit: self.inner.clone() })
    }

    /// Takes a slot even past the maximum (for work that is already committed).
    pub fn acquire_unchecked(&self) -> Permit {
        self.inner.current.fetch_add(1, Ordering::AcqRel);
        Permit { limit: self.inner.clone() }
    }

    /// Slots in use now.
    pub fn current(&self) -> u32 {
        self.inner.current.load(Ordering::Relaxed)
    }

    pub fn max(&self) -> u32 {
        self.inner.max.load(Ordering::Relaxed)
    }

    /// Changes the ceiling (on config reload). Slots already held stay held.
    pub fn set_max(&self, max: u32) {
        self.inner.max.store(max, Ordering::Relaxed);
    }
}

/// A held slot of a [`Limit`]; released on drop.
#[derive(Debug)]
pub struct Permit {
    limit: Arc<LimitInner>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.limit.current.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_past_the_ceiling_and_frees_on_drop() {
        let l = Limit::new(2);
        let a = l.try_acquire().expect("first");
        let _b = l.try_acquire().expect("second");
        assert!(l.try_acquire().is_none(), "third must overflow");
        assert_eq!(l.current(), 2);
        drop(a);
        assert_eq!(l.current(), 1);
        assert!(l.try_acquire().is_some());
    }

    #[test]
    fn lowering_the_ceiling_keeps_held_slots() {
        let l = Limit::new(3);
        let held: Vec<_> = (0..3).map(|_| l.try_acquire().unwrap()).collect();
        l.set_max(1);
        assert!(l.try_acquire().is_none());
        drop(held);
        assert!(l.try_acquire().is_some());
    }

    #[test]
    fn concurrent_acquirers_never_exceed_the_ceiling() {
        let l = Limit::new(5);
        let peak = Arc::new(AtomicU32::new(0));
        std::thread::scope(|s| {
            for _ in 0..4 {
                let l = l.clone();
                let peak = peak.clone();
                s.spawn(move || {
                    for _ in 0..10_000 {
                        if let Some(p) = l.try_acquire() {
                            peak.fetch_max(l.current(), Ordering::Relaxed);
                            drop(p);
                        }
                    }
                });
            }
        });
        assert!(peak.load(Ordering::Relaxed) <= 5);
        assert_eq!(l.current(), 0);
    }
}
