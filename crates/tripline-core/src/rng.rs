//! Injected, seedable randomness. [`SplitMix`] is a lock-free generator that many threads can
//! share: each draw is one `fetch_add` on a counter followed by the SplitMix64 finaliser, so a
//! seeded single-threaded sequence is exactly reproducible in tests.

use std::sync::atomic::{AtomicU64, Ordering};

const GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

/// A source of random numbers.
pub trait Rng: Send + Sync + 'static {
    fn next_u64(&self) -> u64;

    /// Uniform in `0..n` (Lemire's multiply-shift; `n` must be > 0).
    fn below(&self, n: u64) -> u64 {
        debug_assert!(n > 0);
        ((self.next_u64() as u128 * n as u128) >> 64) as u64
    }

    /// Uniform in `[0, 1)`.
    fn unit(&self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

/// The SplitMix64 finaliser: a good 64-bit mixing function, also used for hashing keys.
pub fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[derive(Debug)]
pub struct SplitMix {
    state: AtomicU64,
}

impl SplitMix {
    pub fn seeded(seed: u64) -> Self {
        SplitMix { state: AtomicU64::new(seed) }
    }

    /// Seeded from the time and the address of a stack value: fine for load balancing and
    /// jitter, not for cryptography.
    pub fn from_entropy() -> Self {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        let local = 0u8;
        Self::seeded(mix64(t ^ (&local as *const u8 as u64)))
    }
}

impl Rng for SplitMix {
    fn next_u64(&self) -> u64 {
        mix64(self.state.fetch_add(GAMMA, Ordering::Relaxed).wrapping_add(GAMMA))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_sequence() {
        let a = SplitMix::seeded(7);
        let b = SplitMix::seeded(7);
        for _ in 0..100 {
            assert_eq!(a.next_u64(), b.next_u64());
        }
    }

    #[test]
    fn below_stays_in_range_and_covers_it() {
        let r = SplitMix::seeded(1);
        let mut seen = [0u32; 5];
        for _ in 0..10_000 {
            seen[r.below(5) as usize] += 1;
        }
        for count in seen {
            assert!((1_700..2_300).contains(&count), "{seen:?}");
        }
        for _ in 0..1000 {
            let u = r.unit();
            assert!((0.0..1.0).contains(&u));
        }
    }
}
