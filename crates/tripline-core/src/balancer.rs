//! Load balancers over a fixed endpoint set.
//!
//! A [`Balancer`] is built once per endpoint set (on config load, reload or DNS change) and
//! then picks lock-free: round robin is one `fetch_add` into a weight-expanded table, least
//! request is power-of-two-choices on active requests, ring hash and Maglev are a lookup in a
//! precomputed table. Endpoints that are not available (ejected, breaker open) are skipped;
//! when none is available the pick fails and the caller answers `no-healthy-upstream`.
//!
//! Hashing stability: ring points and Maglev preferences derive from each endpoint's *key*
//! (its address), not its position, so adding or removing one endpoint moves only the keys
//! that belonged to it (ring hash) or about 1/N of them (Maglev).

use std::sync::atomic::{AtomicUsize, Ordering};

use crate::rng::{mix64, Rng};

/// What a balancer needs to know about an endpoint at pick time.
pub trait EndpointView {
    /// Requests in flight to this endpoint.
    fn active_requests(&self) -> u32;
    /// May receive traffic now (not ejected, breaker not open).
    fn is_available(&self) -> bool;
}

impl<T: EndpointView> EndpointView for std::sync::Arc<T> {
    fn active_requests(&self) -> u32 {
        (**self).active_requests()
    }
    fn is_available(&self) -> bool {
        (**self).is_available()
    }
}

/// Static facts about an endpoint, given when the balancer is built.
#[derive(Debug, Clone, Copy)]
pub struct EndpointSpec {
    /// Stable identity used for hashing (e.g. a hash of the socket address).
    pub key: u64,
    pub weight: u32,
}

/// The algorithm, as configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    RoundRobin,
    LeastRequest,
    Random,
    RingHash { minimum_ring_size: u64 },
    Maglev { table_size: u64 },
}

/// A built balancer for one endpoint set.
#[derive(Debug)]
pub struct Balancer {
    kind: Kind,
    /// Cumulative weights, for weighted random picks.
    cumulative: Vec<u64>,
    total_weight: u64,
}

#[derive(Debug)]
enum Kind {
    RoundRobin {
        table: Vec<u32>,
        next: AtomicUsize,
    },
    LeastRequest,
    Random,
    /// Sorted (point, endpoint index).
    Ring(Vec<(u64, u32)>),
    Maglev(Vec<u32>),
}

/// Ring size cap, as Envoy's default maximum.
const MAX_RING: u64 = 8 * 1024 * 1024;
/// Round robin table cap: weights are scaled down to fit.
const MAX_RR_TABLE: u64 = 4096;

impl Balancer {
    pub fn new(algorithm: Algorithm, endpoints: &[EndpointSpec]) -> Self {
        let weights: Vec<u64> = endpoints.iter().map(|e| u64::from(e.weight.max(1))).collect();
        let mut cumulative = Vec::with_capacity(weights.len());
        let mut total = 0u64;
        for w in &weights {
            total += w;
            cumulative.push(total);
        }
        let kind = match algorithm {
            Algorithm::RoundRobin => {
                Kind::RoundRobin { table: rr_table(&weights), next: AtomicUsize::new(0) }
            }
            Algorithm::LeastRequest => Kind::LeastRequest,
            Algorithm::Random => Kind::Random,
            Algorithm::RingHash { minimum_ring_size } => {
                Kind::Ring(ring(endpoints, &weights, minimum_ring_size))
            }
            Algorithm::Maglev { table_size } => Kind::Maglev(maglev(endpoints, &weights, table_size)),
        };
        Balancer { kind, cumulative, total_weight: total }
    }

    /// Picks an endpoint index. `hash` is the request's hash key for ring hash / Maglev
    /// (absent key: a random pick, as Envoy does). `None` when no endpoint is available.
    pub fn pick<E: EndpointView>(&self, endpoints: &[E], hash: Option<u64>, rng: &dyn Rng) -> Option<usize> {
        let n = endpoints.len();
        if n == 0 {
            return None;
        }
        match (&self.kind, hash) {
            (Kind::RoundRobin { table, next }, _) => {
                // An unavailable slot takes the next turn, not the next slot: its share goes
                // to every endpoint by weight rather than all to the one after it.
                let mut turn = next.fetch_add(1, Ordering::Relaxed);
                for _ in 0..table.len() {
                    let i = table[turn % table.len()] as usize;
                    if i < n && endpoints[i].is_available() {
                        return Some(i);
                    }
                    turn = next.fetch_add(1, Ordering::Relaxed);
                }
                first_available(endpoints, turn)
            }
            (Kind::LeastRequest, _) => self.least_request(endpoints, rng),
            (Kind::Ring(points), Some(h)) if !points.is_empty() => {
                let start = points.partition_point(|&(p, _)| p < h);
                (0..points.len())
                    .map(|i| points[(start + i) % points.len()].1 as usize)
                    .find(|&i| i < n && endpoints[i].is_available())
            }
            (Kind::Maglev(table), Some(h)) if !table.is_empty() => {
                let slot = (h % table.len() as u64) as usize;
                let i = table[slot] as usize;
                if i < n && endpoints[i].is_available() {
                    Some(i)
                } else {
                    // Walk the table from the slot: deterministic per key, spreads the load of an
                    // unavailable endpoint over the others.
                    (1..table.len())
                        .map(|k| table[(slot + k) % table.len()] as usize)
                        .find(|&i| i < n && endpoints[i].is_available())
                }
            }
            _ => self.weighted_random(endpoints, rng),
        }
    }

    /// A weighted-random available endpoint. An unavailable pick is drawn again (a few times),
    /// so the share of an ejected or held endpoint spreads over the others by weight: taking
    /// the next available one instead gave its neighbour all of it (the pressure lab saw the
    /// endpoint after a held one take 30% more than the rest).
    fn weighted_random<E: EndpointView>(&self, endpoints: &[E], rng: &dyn Rng) -> Option<usize> {
        let n = endpoints.len();
        for _ in 0..4 {
            let i = self.random_index(rng).min(n - 1);
            if endpoints[i].is_available() {
                return Some(i);
            }
        }
        // Most are unavailable: a scan from a random place.
        first_available(endpoints, rng.below(n as u64) as usize)
    }

    fn random_index(&self, rng: &dyn Rng) -> usize {
        if self.total_weight == 0 {
            return 0;
        }
        let r = rng.below(self.total_weight);
        self.cumulative.partition_point(|&c| c <= r)
    }

    /// Power of two choices: two weighted-random candidates, the one with fewer active
    /// requests wins (ties go to the first). Unavailable candidates are replaced by a scan.
    fn least_request<E: EndpointView>(&self, endpoints: &[E], rng: &dyn Rng) -> Option<usize> {
        let n = endpoints.len();
        let a = self.weighted_random(endpoints, rng)?;
        if n == 1 {
            return Some(a);
        }
        let mut b = self.random_index(rng).min(n - 1);
        if b == a {
            b = (a + 1 + rng.below((n - 1) as u64) as usize) % n;
        }
        if !endpoints[b].is_available() {
            return Some(a);
        }
        if endpoints[b].active_requests() < endpoints[a].active_requests() {
            Some(b)
        } else {
            Some(a)
        }
    }
}

fn first_available<E: EndpointView>(endpoints: &[E], from: usize) -> Option<usize> {
    let n = endpoints.len();
    (0..n).map(|k| (from + k) % n).find(|&i| endpoints[i].is_available())
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// Interleaved weighted round-robin table: each endpoint appears `weight/g` times, spread
/// evenly (smooth WRR order computed once here, so picking needs no lock).
fn rr_table(weights: &[u64]) -> Vec<u32> {
    if weights.is_empty() {
        return Vec::new();
    }
    let g = weights.iter().copied().fold(0, gcd).max(1);
    let mut scaled: Vec<u64> = weights.iter().map(|w| w / g).collect();
    let sum: u64 = scaled.iter().sum();
    if sum > MAX_RR_TABLE {
        scaled = scaled.iter().map(|w| (w * MAX_RR_TABLE / sum).max(1)).collect();
    }
    let total: i64 = scaled.iter().sum::<u64>() as i64;
    let mut current = vec![0i64; scaled.len()];
    let mut table = Vec::with_capacity(total as usize);
    for _ in 0..total {
        let mut best = 0;
        for (i, w) in scaled.iter().enumerate() {
            current[i] += *w as i64;
            if current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= total;
        table.push(best as u32);
    }
    table
}

/// Every endpoint at the highest weight gets `minimum_ring_size` points, lighter ones
/// proportionally fewer. The replica count of an endpoint never depends on how many other
/// endpoints there are, so adding or removing one leaves every other endpoint's points (and
/// keys) where they were. (Envoy sizes the whole ring instead, which moves keys between
/// surviving hosts when the host count changes.)
fn ring(endpoints: &[EndpointSpec], weights: &[u64], minimum: u64) -> Vec<(u64, u32)> {
    if endpoints.is_empty() {
        return Vec::new();
    }
    let max_w = *weights.iter().max().unwrap_or(&1);
    let per_endpoint = minimum.clamp(1, MAX_RING / endpoints.len() as u64);
    let mut points = Vec::with_capacity(per_endpoint as usize * endpoints.len());
    for (i, (e, w)) in endpoints.iter().zip(weights).enumerate() {
        let replicas = (per_endpoint * w).div_ceil(max_w).max(1);
        for r in 0..replicas {
            points.push((mix64(e.key ^ mix64(r)), i as u32));
        }
    }
    points.sort_unstable();
    points
}

/// Maglev lookup table (Eisenbud et al., 2016). `table_size` should be prime; Istio's
/// default is 65537.
fn maglev(endpoints: &[EndpointSpec], weights: &[u64], table_size: u64) -> Vec<u32> {
    let m = table_size.max(1);
    let n = endpoints.len();
    if n == 0 {
        return Vec::new();
    }
    let max_w = *weights.iter().max().unwrap_or(&1);
    let offsets: Vec<u64> = endpoints.iter().map(|e| mix64(e.key) % m).collect();
    let skips: Vec<u64> = endpoints.iter().map(|e| mix64(e.key ^ 0x5bd1_e995) % (m.max(2) - 1) + 1).collect();
    let mut next = vec![0u64; n];
    let mut table = vec![u32::MAX; m as usize];
    let mut filled = 0u64;
    let mut credit = vec![0u64; n];
    'fill: loop {
        for i in 0..n {
            // Weighted Maglev: an endpoint takes a turn only once it has earned a full weight.
            credit[i] += weights[i];
            if credit[i] < max_w {
                continue;
            }
            credit[i] -= max_w;
            loop {
                let slot = ((offsets[i] + next[i] * skips[i]) % m) as usize;
                next[i] += 1;
                if table[slot] == u32::MAX {
                    table[slot] = i as u32;
                    filled += 1;
                    break;
                }
                if next[i] > m * 4 {
                    // Only possible when m is not prime; fall back to the first free slot.
                    if let Some(free) = table.iter().position(|&t| t == u32::MAX) {
                        table[free] = i as u32;
                        filled += 1;
                    }
                    break;
                }
            }
            if filled == m {
                break 'fill;
            }
        }
    }
    table
}

/// FNV-1a then SplitMix finaliser: a fast, stable 64-bit hash for request keys and
/// endpoint identities (not for untrusted-input hash tables).
pub fn hash_bytes(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    mix64(h)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::SplitMix;
    use std::cell::Cell;

    struct Ep {
        active: Cell<u32>,
        up: bool,
    }
    impl EndpointView for Ep {
        fn active_requests(&self) -> u32 {
            self.active.get()
        }
        fn is_available(&self) -> bool {
            self.up
        }
    }
    fn eps(n: usize) -> Vec<Ep> {
        (0..n).map(|_| Ep { active: Cell::new(0), up: true }).collect()
    }
    fn specs(keys: &[u64]) -> Vec<EndpointSpec> {
        keys.iter().map(|&k| EndpointSpec { key: hash_bytes(&k.to_le_bytes()), weight: 1 }).collect()
    }

    #[test]
    fn round_robin_cycles_and_honours_weights() {
        let s = vec![EndpointSpec { key: 1, weight: 1 }, EndpointSpec { key: 2, weight: 3 }];
        let b = Balancer::new(Algorithm::RoundRobin, &s);
        let e = eps(2);
        let rng = SplitMix::seeded(1);
        let mut count = [0; 2];
        for _ in 0..400 {
            count[b.pick(&e, None, &rng).unwrap()] += 1;
        }
        assert_eq!(count, [100, 300]);
    }

    #[test]
    fn round_robin_skips_unavailable() {
        let b = Balancer::new(Algorithm::RoundRobin, &specs(&[1, 2, 3]));
        let mut e = eps(3);
        e[1].up = false;
        let rng = SplitMix::seeded(1);
        for _ in 0..30 {
            assert_ne!(b.pick(&e, None, &rng), Some(1));
        }
        for x in &mut e {
            x.up = false;
        }
        assert_eq!(b.pick(&e, None, &rng), None);
    }

    /// Three of ten endpoints out: each of the other seven gets a seventh of the picks, with
    /// every algorithm that is not a hash; none inherits its unavailable neighbour's share.
    #[test]
    fn an_unavailable_endpoint_s_share_spreads_over_the_rest() {
        let keys: Vec<u64> = (1..=10).collect();
        for algorithm in [Algorithm::RoundRobin, Algorithm::Random, Algorithm::LeastRequest] {
            let b = Balancer::new(algorithm, &specs(&keys));
            let mut e = eps(10);
            for x in &mut e[..3] {
                x.up = false;
            }
            let rng = SplitMix::seeded(5);
            let mut count = [0u32; 10];
            for _ in 0..70_000 {
                count[b.pick(&e, None, &rng).unwrap()] += 1;
            }
            assert_eq!(count[..3], [0, 0, 0], "{algorithm:?}");
            for c in &count[3..] {
                assert!((9_300..=10_700).contains(c), "{algorithm:?}: {count:?}");
            }
        }
    }

    #[test]
    fn least_request_avoids_the_busy_endpoint() {
        let b = Balancer::new(Algorithm::LeastRequest, &specs(&[1, 2, 3]));
        let e = eps(3);
        e[0].active.set(50);
        let rng = SplitMix::seeded(9);
        let mut count = [0; 3];
        for _ in 0..3000 {
            count[b.pick(&e, None, &rng).unwrap()] += 1;
        }
        // Endpoint 0 only wins when both candidates are itself, which P2C never draws.
        assert_eq!(count[0], 0, "{count:?}");
        assert!(count[1] > 1000 && count[2] > 1000, "{count:?}");
    }

    #[test]
    fn random_is_weighted() {
        let s = vec![EndpointSpec { key: 1, weight: 9 }, EndpointSpec { key: 2, weight: 1 }];
        let b = Balancer::new(Algorithm::Random, &s);
        let e = eps(2);
        let rng = SplitMix::seeded(3);
        let hits0 = (0..10_000).filter(|_| b.pick(&e, None, &rng) == Some(0)).count();
        assert!((8_700..9_300).contains(&hits0), "{hits0}");
    }

    fn moved_keys(algorithm: Algorithm) -> (usize, usize) {
        // Endpoints A B C D; remove C. Keys on A, B, D must stay (ring) or mostly stay (Maglev).
        let before_keys = [10u64, 20, 30, 40];
        let after_keys = [10u64, 20, 40];
        let before = Balancer::new(algorithm, &specs(&before_keys));
        let after = Balancer::new(algorithm, &specs(&after_keys));
        let rng = SplitMix::seeded(5);
        let (e4, e3) = (eps(4), eps(3));
        let mut kept_elsewhere = 0;
        let mut moved = 0;
        for k in 0..5000u64 {
            let h = hash_bytes(&k.to_le_bytes());
            let was = before_keys[before.pick(&e4, Some(h), &rng).unwrap()];
            let now = after_keys[after.pick(&e3, Some(h), &rng).unwrap()];
            if was != 30 {
                if was == now {
                    kept_elsewhere += 1;
                } else {
                    moved += 1;
                }
            }
        }
        (kept_elsewhere, moved)
    }

    #[test]
    fn ring_hash_moves_only_the_removed_endpoints_keys() {
        let (kept, moved) = moved_keys(Algorithm::RingHash { minimum_ring_size: 1024 });
        assert!(kept > 3000);
        assert_eq!(moved, 0);
    }

    #[test]
    fn maglev_moves_few_keys_when_an_endpoint_leaves() {
        let (kept, moved) = moved_keys(Algorithm::Maglev { table_size: 65537 });
        assert!(moved * 20 < kept, "kept {kept} moved {moved}");
    }

    /// Endpoints A B D, then C added: how many keys stay and how many move to C, and how
    /// many move between the old endpoints (which must not happen with a ring).
    fn added_keys(algorithm: Algorithm) -> (usize, usize, usize) {
        let before_keys = [10u64, 20, 40];
        let after_keys = [10u64, 20, 30, 40];
        let before = Balancer::new(algorithm, &specs(&before_keys));
        let after = Balancer::new(algorithm, &specs(&after_keys));
        let rng = SplitMix::seeded(5);
        let (e3, e4) = (eps(3), eps(4));
        let (mut stayed, mut to_new, mut between_old) = (0, 0, 0);
        for k in 0..5000u64 {
            let h = hash_bytes(&k.to_le_bytes());
            let was = before_keys[before.pick(&e3, Some(h), &rng).unwrap()];
            match after_keys[after.pick(&e4, Some(h), &rng).unwrap()] {
                30 => to_new += 1,
                now if now == was => stayed += 1,
                _ => between_old += 1,
            }
        }
        (stayed, to_new, between_old)
    }

    #[test]
    fn an_added_endpoint_takes_keys_only_from_the_others() {
        let (stayed, to_new, between) = added_keys(Algorithm::RingHash { minimum_ring_size: 1024 });
        assert_eq!(between, 0, "ring hash moved keys between endpoints that stayed");
        assert!((900..1600).contains(&to_new) && stayed > 3000, "stayed {stayed}, to the new one {to_new}");
        let (stayed, to_new, between) = added_keys(Algorithm::Maglev { table_size: 65537 });
        assert!(between * 20 < stayed, "Maglev moved {between} keys between old endpoints ({stayed} stayed)");
        assert!((900..1600).contains(&to_new), "Maglev gave the new endpoint {to_new} of 5000 keys");
    }

    #[test]
    fn hashing_is_sticky_and_skips_unavailable() {
        let b = Balancer::new(Algorithm::RingHash { minimum_ring_size: 1024 }, &specs(&[1, 2, 3]));
        let mut e = eps(3);
        let rng = SplitMix::seeded(1);
        let h = hash_bytes(b"user-42");
        let first = b.pick(&e, Some(h), &rng).unwrap();
        for _ in 0..10 {
            assert_eq!(b.pick(&e, Some(h), &rng), Some(first));
        }
        e[first].up = false;
        let second = b.pick(&e, Some(h), &rng).unwrap();
        assert_ne!(second, first);
        assert_eq!(b.pick(&e, Some(h), &rng), Some(second));
    }

    #[test]
    fn maglev_spreads_evenly() {
        let b = Balancer::new(Algorithm::Maglev { table_size: 65537 }, &specs(&[1, 2, 3]));
        let e = eps(3);
        let rng = SplitMix::seeded(1);
        let mut count = [0; 3];
        for k in 0..30_000u64 {
            count[b.pick(&e, Some(hash_bytes(&k.to_le_bytes())), &rng).unwrap()] += 1;
        }
        for c in count {
            assert!((9_000..11_000).contains(&c), "{count:?}");
        }
    }
}
