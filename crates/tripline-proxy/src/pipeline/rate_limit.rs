//! Local rate limits (`rateLimit` of a ResiliencePolicy on a route): token buckets shared by
//! every worker, so the limit is the configured one whatever the worker count, and kept
//! across reloads while their config is unchanged (a reload is not a fresh burst).
//!
//! Each bucket is a GCRA (the "virtual scheduling" form of a token bucket): one atomic word,
//! the theoretical arrival time of the next request, moved by compare-and-swap. No lock, and
//! the same admissions as a bucket of `maxTokens` refilled continuously at
//! `tokensPerFill / fillInterval` (Envoy refills in steps of `tokensPerFill`; the long-run rate
//! is the same, without the step's burst at each fill).
//!
//! Keyed descriptors (a header's value, the client's address) have a bucket per key, in
//! [`SHARDS`] shards of at most [`KEYS_PER_SHARD`]. A bucket that is full again is the same as
//! a new one, so when a shard is full the full ones are dropped; if none is, the new key shares
//! one overflow bucket with the others that did not fit, which can only be stricter than the
//! configured limit, never looser.

use std::collections::hash_map::RandomState;
use std::collections::{BTreeMap, HashMap};
use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use http::{HeaderValue, Request};
use tripline_config::rate_limit::{DescriptorKey, RateLimitPlan, TokenBucket};

use tripline_core::clock::Nanos;

use crate::resilience::now;

pub const SHARDS: usize = 16;
pub const KEYS_PER_SHARD: usize = 4096;

/// One token bucket.
#[derive(Debug)]
pub(crate) struct Gcra {
    /// When the bucket is next due a request: `interval` later per request admitted.
    tat: AtomicU64,
    /// Time one token takes to come back.
    interval: Nanos,
    /// How far ahead of now `tat` may run: `maxTokens - 1` intervals.
    burst: Nanos,
    max_tokens: u32,
}

/// What a bucket said to one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Take {
    /// Admitted; the tokens left and the time until the bucket is full again.
    Admitted { remaining: u32, full_in: Nanos },
    /// Refused; the time until a token is there.
    Refused { retry_after: Nanos },
}

impl Gcra {
    pub(crate) fn new(b: &TokenBucket) -> Gcra {
        let interval = (b.fill_interval.as_nanos() as u64 / u64::from(b.tokens_per_fill)).max(1);
        Gcra {
            tat: AtomicU64::new(0),
            interval,
            burst: interval * u64::from(b.max_tokens - 1),
            max_tokens: b.max_tokens,
        }
    }

    pub(crate) fn take(&self, now: Nanos) -> Take {
        let mut tat = self.tat.load(Ordering::Acquire);
        loop {
            let due = tat.max(now);
            if due - now > self.burst {
                return Take::Refused { retry_after: due - now - self.burst };
            }
            let next = due + self.interval;
            match self.tat.compare_exchange_weak(tat, next, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => {
                    let ahead = next - now;
                    let remaining = (self.burst + self.interval).saturating_sub(ahead) / self.interval;
                    return Take::Admitted { remaining: remaining as u32, full_in: ahead };
                }
                Err(current) => tat = current,
            }
        }
    }

    /// Gives back a token taken for a request another bucket then refused.
    fn give_back(&self) {
        let _ = self
            .tat
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |t| Some(t.saturating_sub(self.interval)));
    }

    /// Full again: indistinguishable from a new bucket.
    fn is_full(&self, now: Nanos) -> bool {
        self.tat.load(Ordering::Acquire) <= now
    }
}

/// The buckets of one keyed descriptor.
#[derive(Debug)]
struct Keyed {
    key: DescriptorKey,
    bucket: TokenBucket,
    hasher: RandomState,
    shards: Vec<RwLock<HashMap<u64, Gcra>>>,
    overflow: Gcra,
}

impl Keyed {
    fn take(&self, key: &[u8], now: Nanos) -> Take {
        let hash = self.hasher.hash_one(key);
        let shard = &self.shards[hash as usize % SHARDS];
        if let Some(g) = shard.read().unwrap_or_else(|e| e.into_inner()).get(&hash) {
            return g.take(now);
        }
        let mut map = shard.write().unwrap_or_else(|e| e.into_inner());
        if map.len() >= KEYS_PER_SHARD && !map.contains_key(&hash) {
            map.retain(|_, g| !g.is_full(now));
            if map.len() >= KEYS_PER_SHARD {
                return self.overflow.take(now);
            }
        }
        map.entry(hash).or_insert_with(|| Gcra::new(&self.bucket)).take(now)
    }
}

/// A policy's decisions, for metrics.
#[derive(Debug, Default)]
pub struct Decisions {
    pub allowed: AtomicU64,
    pub limited: AtomicU64,
    /// Would have been limited; admitted because the policy is in shadow mode.
    pub shadow_limited: AtomicU64,
}

/// One policy's rate limit.
#[derive(Debug)]
pub struct RateLimiter {
    plan: RateLimitPlan,
    route: Option<Gcra>,
    /// Descriptors without a key of their own (`pathPrefix`) hold one bucket.
    prefixes: Vec<(String, Gcra)>,
    keyed: Vec<Keyed>,
    pub decisions: Decisions,
}

/// What the rate limit decided for one request.
#[derive(Debug)]
pub(crate) enum Verdict {
    /// Admitted, with the `x-ratelimit-*` headers when the policy asks for them.
    Admitted(Option<Box<[HeaderValue; 3]>>),
    /// Refused: answer 429 with `Retry-After`.
    Limited { retry_after: Duration },
}

impl RateLimiter {
    pub fn new(plan: &RateLimitPlan) -> RateLimiter {
        let mut prefixes = Vec::new();
        let mut keyed = Vec::new();
        for d in &plan.descriptors {
            match &d.key {
                DescriptorKey::PathPrefix(p) => prefixes.push((p.clone(), Gcra::new(&d.bucket))),
                key => keyed.push(Keyed {
                    key: key.clone(),
                    bucket: d.bucket,
                    hasher: RandomState::new(),
                    shards: (0..SHARDS).map(|_| RwLock::default()).collect(),
                    overflow: Gcra::new(&d.bucket),
                }),
            }
        }
        RateLimiter {
            plan: plan.clone(),
            route: plan.bucket.as_ref().map(Gcra::new),
            prefixes,
            keyed,
            decisions: Decisions::default(),
        }
    }

    pub fn policy(&self) -> &str {
        &self.plan.policy
    }

    /// Takes a token from every bucket that applies to the request; one refusal refuses it
    /// (and gives back the tokens taken).
    pub(crate) fn check<B>(&self, req: &Request<B>, peer: IpAddr) -> Verdict {
        let now = now();
        let mut taken: Vec<&Gcra> = Vec::new();
        let mut tightest: Option<(u32, u32, Nanos)> = None;
        let mut note = |max: u32, t: Take| {
            if let Take::Admitted { remaining, full_in } = t {
                if tightest.is_none_or(|(_, r, _)| remaining < r) {
                    tightest = Some((max, remaining, full_in));
                }
            }
            t
        };
        let mut refused = None;
        for (prefix, g) in &self.prefixes {
            if refused.is_some() {
                break;
            }
            if req.uri().path().starts_with(prefix.as_str()) {
                match note(g.max_tokens, g.take(now)) {
                    Take::Refused { retry_after } => refused = Some(retry_after),
                    Take::Admitted { .. } => taken.push(g),
                }
            }
        }
        for k in &self.keyed {
            if refused.is_some() {
                break;
            }
            let octets;
            let key: &[u8] = match &k.key {
                DescriptorKey::Header(name) => match req.headers().get(name.as_str()) {
                    Some(v) => v.as_bytes(),
                    None => continue,
                },
                _ => {
                    octets = match peer.to_canonical() {
                        IpAddr::V4(a) => a.to_ipv6_mapped().octets(),
                        IpAddr::V6(a) => a.octets(),
                    };
                    &octets
                }
            };
            if let Take::Refused { retry_after } = note(k.bucket.max_tokens, k.take(key, now)) {
                refused = Some(retry_after);
            }
        }
        if let (Some(g), None) = (&self.route, refused) {
            if let Take::Refused { retry_after } = note(g.max_tokens, g.take(now)) {
                refused = Some(retry_after);
            }
        }
        match refused {
            Some(retry_after) => {
                // Keyed buckets are not given back: their entry may be shared by now.
                taken.iter().for_each(|g| g.give_back());
                if self.plan.shadow {
                    self.decisions.shadow_limited.fetch_add(1, Ordering::Relaxed);
                    return Verdict::Admitted(None);
                }
                self.decisions.limited.fetch_add(1, Ordering::Relaxed);
                Verdict::Limited { retry_after: Duration::from_nanos(retry_after) }
            }
            None => {
                self.decisions.allowed.fetch_add(1, Ordering::Relaxed);
                let headers = self.plan.response_headers.then_some(tightest).flatten().map(
                    |(max, remaining, full_in)| {
                        let reset = full_in.div_ceil(1_000_000_000);
                        Box::new([
                            HeaderValue::from(max),
                            HeaderValue::from(remaining),
                            HeaderValue::from(reset),
                        ])
                    },
                );
                Verdict::Admitted(headers)
            }
        }
    }
}

/// The rate limiters of a config's routes by policy name, kept across reloads while their
/// config is unchanged.
#[derive(Debug, Default)]
pub struct RateLimiters {
    pub limiters: BTreeMap<String, Arc<RateLimiter>>,
}

impl RateLimiters {
    pub fn build(&self, plans: &[&RateLimitPlan]) -> RateLimiters {
        let limiters = plans
            .iter()
            .map(|p| {
                let limiter = match self.limiters.get(&p.policy) {
                    Some(l) if l.plan == **p => l.clone(),
                    _ => Arc::new(RateLimiter::new(p)),
                };
                (p.policy.clone(), limiter)
            })
            .collect();
        RateLimiters { limiters }
    }

    pub(crate) fn get(&self, policy: &str) -> Option<&Arc<RateLimiter>> {
        self.limiters.get(policy)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use tripline_config::rate_limit::Descriptor;

    fn bucket(max: u32, per_fill: u32, every_ms: u64) -> TokenBucket {
        TokenBucket {
            max_tokens: max,
            tokens_per_fill: per_fill,
            fill_interval: Duration::from_millis(every_ms),
        }
    }

    const SEC: Nanos = 1_000_000_000;

    #[test]
    fn a_bucket_admits_its_burst_then_its_rate() {
        let g = Gcra::new(&bucket(5, 10, 1000));
        let t0 = 10 * SEC;
        for i in 0..5 {
            assert!(
                matches!(g.take(t0), Take::Admitted { remaining, .. } if remaining == 4 - i),
                "burst {i}"
            );
        }
        assert_eq!(g.take(t0), Take::Refused { retry_after: SEC / 10 });
        assert!(matches!(g.take(t0 + SEC / 10), Take::Admitted { remaining: 0, .. }), "one token per 100ms");
        assert!(g.is_full(t0 + SEC), "full again after a second idle");
    }

    proptest! {
        /// Over any window, a bucket admits at most its burst plus its rate times the window,
        /// and, when asked often enough, at least the rate.
        #[test]
        fn admissions_stay_within_burst_plus_rate(
            max in 1u32..50, per_fill in 1u32..50, every_ms in 1u64..2000, steps in proptest::collection::vec(0u64..50_000_000, 1..400)
        ) {
            let g = Gcra::new(&bucket(max, per_fill, every_ms));
            let (mut now, start, mut admitted) = (SEC, SEC, 0u64);
            for step in steps {
                now += step;
                if matches!(g.take(now), Take::Admitted { .. }) {
                    admitted += 1;
                }
            }
            let interval = (every_ms * 1_000_000 / u64::from(per_fill)).max(1);
            let allowed = u64::from(max) + (now - start) / interval;
            prop_assert!(admitted <= allowed, "{} admitted, at most {}", admitted, allowed);
        }
    }

    fn limiter(plan: RateLimitPlan) -> RateLimiter {
        RateLimiter::new(&plan)
    }

    fn plan(bucket_: Option<TokenBucket>, descriptors: Vec<Descriptor>, shadow: bool) -> RateLimitPlan {
        RateLimitPlan { policy: "p".into(), bucket: bucket_, descriptors, shadow, response_headers: true }
    }

    fn get(user: Option<&str>) -> Request<()> {
        let mut b = Request::get("/api/x");
        if let Some(u) = user {
            b = b.header("x-user", u);
        }
        b.body(()).unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn each_key_has_its_own_bucket_and_the_route_bucket_covers_all() {
        let d = Descriptor { key: DescriptorKey::Header("x-user".into()), bucket: bucket(2, 1, 60_000) };
        let l = limiter(plan(Some(bucket(5, 1, 60_000)), vec![d], false));
        let ip: IpAddr = [127, 0, 0, 1].into();
        let admitted = |user| matches!(l.check(&get(user), ip), Verdict::Admitted(_));
        assert!(admitted(Some("a")) && admitted(Some("a")));
        assert!(!admitted(Some("a")), "a's bucket is empty");
        assert!(admitted(Some("b")) && admitted(Some("b")), "b has its own");
        assert!(admitted(None), "no header: only the route's bucket applies");
        assert!(!admitted(None), "the route's 5 are used: a, a, b, b, anonymous");
        assert_eq!(l.decisions.limited.load(Ordering::Relaxed), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn shadow_mode_counts_and_admits_and_headers_say_what_is_left() {
        let l = limiter(plan(Some(bucket(1, 1, 1000)), vec![], true));
        let ip: IpAddr = [127, 0, 0, 1].into();
        let Verdict::Admitted(Some(h)) = l.check(&get(None), ip) else { panic!("admitted with headers") };
        assert_eq!([h[0].to_str().unwrap(), h[1].to_str().unwrap(), h[2].to_str().unwrap()], ["1", "0", "1"]);
        assert!(matches!(l.check(&get(None), ip), Verdict::Admitted(None)), "shadow: admitted");
        assert_eq!(l.decisions.shadow_limited.load(Ordering::Relaxed), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_refusal_gives_back_the_other_buckets_tokens() {
        let d = Descriptor { key: DescriptorKey::PathPrefix("/api".into()), bucket: bucket(3, 1, 60_000) };
        let l = limiter(plan(Some(bucket(1, 1, 60_000)), vec![d], false));
        let ip: IpAddr = [127, 0, 0, 1].into();
        assert!(matches!(l.check(&get(None), ip), Verdict::Admitted(_)));
        for _ in 0..5 {
            assert!(matches!(l.check(&get(None), ip), Verdict::Limited { .. }), "the route bucket is empty");
        }
        let left = l.prefixes[0].1.take(now());
        assert!(
            matches!(left, Take::Admitted { remaining: 1, .. }),
            "only the admitted request's token is gone: {left:?}"
        );
    }

    #[test]
    fn full_shards_drop_full_buckets_then_share_the_overflow() {
        let k = Keyed {
            key: DescriptorKey::RemoteAddress,
            bucket: bucket(1, 1, 60_000),
            hasher: RandomState::new(),
            shards: (0..SHARDS).map(|_| RwLock::default()).collect(),
            overflow: Gcra::new(&bucket(1, 1, 60_000)),
        };
        let t0 = SEC;
        let mut overflowed = 0;
        for i in 0..(SHARDS * KEYS_PER_SHARD + 2000) as u32 {
            if let Take::Refused { .. } = k.take(&i.to_be_bytes(), t0) {
                overflowed += 1;
            }
        }
        assert!(overflowed >= 1999, "keys over the cap share one bucket: {overflowed}");
        let total: usize = k.shards.iter().map(|s| s.read().unwrap().len()).sum();
        assert!(total <= SHARDS * KEYS_PER_SHARD);
        // A minute later every bucket is full again and makes room for new keys.
        assert!(matches!(k.take(b"new", t0 + 61 * SEC), Take::Admitted { .. }));
    }
}
