//! What a run saw, from three sides: every client request ([`Record`]), every attempt each
//! upstream received (per bucket), and the proxy's `/breakers` every bucket ([`Sample`]);
//! and the questions checks ask of it.

use std::time::Duration;

use crate::load::{Outcome, Record};
use crate::proxy::Sample;
use crate::timeline::{sum, BUCKET};

pub struct Observed {
    pub records: Vec<Record>,
    /// Per upstream, attempts received per bucket.
    pub attempts: Vec<Vec<u64>>,
    pub samples: Vec<Sample>,
    /// In a call chain, the `/breakers` samples of the hops before the last, from the
    /// clients' side (the last hop's are `samples`).
    pub upper: Vec<Vec<Sample>>,
    /// Whether `samples` come from the proxy's state API (Tripline's `/breakers`); the peers
    /// have none the lab reads, and their checks rest on what clients and upstreams saw.
    pub state: bool,
}

/// The window the upstream-side measures look through: long enough that an endpoint in
/// rotation gets several attempts at the scenarios' rates, short enough to time an ejection.
pub const WINDOW: Duration = Duration::from_millis(500);

/// The client requests meant to leave in a time range, by outcome.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    pub requests: u64,
    pub ok: u64,
    pub upstream_errors: u64,
    pub local: u64,
    /// Of `local`, those with a 5xx status.
    pub local_5xx: u64,
    pub no_response: u64,
    pub not_sent: u64,
}

impl Tally {
    /// Requests that did not get a 2xx.
    pub fn errors(&self) -> u64 {
        self.requests - self.ok
    }

    pub fn error_ratio(&self) -> f64 {
        if self.requests == 0 {
            0.0
        } else {
            self.errors() as f64 / self.requests as f64
        }
    }
}

impl Observed {
    /// The requests meant to leave in `[from, to)`.
    pub fn in_range(&self, from: Duration, to: Duration) -> impl Iterator<Item = &Record> {
        self.records.iter().filter(move |r| r.intended >= from && r.intended < to)
    }

    pub fn tally(&self, from: Duration, to: Duration) -> Tally {
        let mut t = Tally::default();
        for r in self.in_range(from, to) {
            t.requests += 1;
            match r.outcome {
                Outcome::Ok => t.ok += 1,
                Outcome::UpstreamError => t.upstream_errors += 1,
                Outcome::Local => {
                    t.local += 1;
                    t.local_5xx += u64::from(r.status >= 500);
                }
                Outcome::NoResponse => t.no_response += 1,
                Outcome::NotSent => t.not_sent += 1,
            }
        }
        t
    }

    /// Attempts all upstreams received in `[from, to)`.
    pub fn attempts(&self, from: Duration, to: Duration) -> u64 {
        self.attempts.iter().map(|a| sum(a, from, to)).sum()
    }

    /// Attempts upstream `i` received in `[from, to)`.
    pub fn attempts_of(&self, i: usize, from: Duration, to: Duration) -> u64 {
        sum(&self.attempts[i], from, to)
    }

    /// The samples taken in `[from, to)`.
    pub fn samples(&self, from: Duration, to: Duration) -> impl Iterator<Item = &Sample> {
        self.samples.iter().filter(move |s| s.at >= from && s.at < to)
    }

    /// Upstream `i`'s attempts over [`WINDOW`] from `at`, as a fraction of a fair share (all
    /// attempts over the number of upstreams); `None` when a fair share is under 5 attempts
    /// (too few to tell).
    pub fn share(&self, i: usize, at: Duration) -> Option<f64> {
        let fair = self.attempts(at, at + WINDOW) as f64 / self.attempts.len() as f64;
        (fair >= 5.0).then(|| self.attempts_of(i, at, at + WINDOW) as f64 / fair)
    }

    /// Whether upstream `i` was out of rotation over [`WINDOW`] from `at`, as the upstream
    /// saw it: nothing at all while a fair share was 5 attempts or more. (Only nothing: a
    /// balancer that merely avoids a slow or busy endpoint still sends it some.)
    pub fn out(&self, i: usize, at: Duration) -> bool {
        self.share(i, at) == Some(0.0)
    }

    /// The first time from `from`, in steps of a bucket, at which upstream `i` was
    /// [out of rotation](Self::out).
    pub fn out_at(&self, i: usize, from: Duration, to: Duration) -> Option<Duration> {
        let mut at = from;
        while at + WINDOW <= to {
            if self.out(i, at) {
                return Some(at);
            }
            at += BUCKET;
        }
        None
    }

    /// The most upstreams [out of rotation](Self::out) at once, over the windows in
    /// `[from, to)`.
    pub fn most_out(&self, from: Duration, to: Duration) -> usize {
        let mut most = 0;
        let mut at = from;
        while at + WINDOW <= to {
            let out = (0..self.attempts.len()).filter(|i| self.out(*i, at)).count();
            most = most.max(out);
            at += BUCKET;
        }
        most
    }

    /// Spans of at least `min` in which upstream `i` received nothing while the others did:
    /// its ejections, as the upstream saw them.
    pub fn gaps(&self, i: usize, from: Duration, to: Duration, min: Duration) -> Vec<(Duration, Duration)> {
        let mut out = Vec::new();
        let mut start = None;
        let mut at = from;
        while at < to {
            let next = at + BUCKET;
            let idle = self.attempts_of(i, at, next) == 0 && self.attempts(at, next) > 0;
            match (idle, start) {
                (true, None) => start = Some(at),
                (false, Some(s)) => {
                    if at - s >= min {
                        out.push((s, at));
                    }
                    start = None;
                }
                _ => {}
            }
            at = next;
        }
        out.extend(start.filter(|s| to - *s >= min).map(|s| (s, to)));
        out
    }

    /// The `q` quantile (0..=1) of the latencies of the requests in `[from, to)` with this
    /// outcome.
    pub fn latency(&self, from: Duration, to: Duration, outcome: Outcome, q: f64) -> Option<Duration> {
        let mut l: Vec<Duration> =
            self.in_range(from, to).filter(|r| r.outcome == outcome).map(|r| r.latency).collect();
        quantile(&mut l, q)
    }
}

/// The `q` quantile (0..=1) by the nearest-rank method; `None` when empty.
pub fn quantile(values: &mut [Duration], q: f64) -> Option<Duration> {
    if values.is_empty() {
        return None;
    }
    values.sort_unstable();
    let rank = ((q * values.len() as f64).ceil() as usize).clamp(1, values.len());
    Some(values[rank - 1])
}

/// Milliseconds with one decimal, for details.
pub fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_quantiles() {
        let mut v: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(quantile(&mut v, 0.99), Some(Duration::from_millis(99)));
        assert_eq!(quantile(&mut v, 0.5), Some(Duration::from_millis(50)));
        assert_eq!(quantile(&mut v, 0.0), Some(Duration::from_millis(1)));
        assert_eq!(quantile(&mut [], 0.5), None);
    }

    #[test]
    fn a_tally_counts_each_outcome_in_range() {
        let r = |ms, status, outcome| Record {
            intended: Duration::from_millis(ms),
            latency: Duration::ZERO,
            status,
            outcome,
        };
        let o = Observed {
            records: vec![
                r(0, 200, Outcome::Ok),
                r(10, 500, Outcome::UpstreamError),
                r(20, 503, Outcome::Local),
                r(30, 429, Outcome::Local),
                r(40, 0, Outcome::NoResponse),
                r(2_000, 200, Outcome::Ok),
            ],
            attempts: vec![],
            samples: vec![],
            upper: vec![],
            state: false,
        };
        let t = o.tally(Duration::ZERO, Duration::from_secs(1));
        assert_eq!(
            (t.requests, t.ok, t.upstream_errors, t.local, t.local_5xx, t.no_response),
            (5, 1, 1, 2, 1, 1)
        );
        assert_eq!(t.errors(), 4);
    }

    /// Two upstreams, 10 attempts a bucket between them; the first gets none from 1 s to 2 s.
    #[test]
    fn an_upstream_falls_out_of_rotation_when_it_stops_receiving() {
        let buckets = 40;
        let first: Vec<u64> = (0..buckets).map(|b| if (10..20).contains(&b) { 0 } else { 5 }).collect();
        let second: Vec<u64> = (0..buckets).map(|b| if (10..20).contains(&b) { 10 } else { 5 }).collect();
        let o = Observed {
            records: vec![],
            attempts: vec![first, second],
            samples: vec![],
            upper: vec![],
            state: false,
        };
        let s = |ms| Duration::from_millis(ms);
        assert_eq!(o.share(0, s(0)), Some(1.0));
        assert_eq!(o.out_at(0, s(0), s(4000)), Some(s(1000)));
        assert_eq!(o.out_at(1, s(0), s(4000)), None);
        assert_eq!(o.most_out(s(0), s(4000)), 1);
        assert_eq!(o.gaps(0, s(0), s(4000), s(300)), [(s(1000), s(2000))]);
        assert_eq!(o.gaps(1, s(0), s(4000), s(300)), []);
    }
}
