//! The scenarios: the brief's failure modes, each a schedule of faults on upstreams started
//! by the lab, a request rate over time, and the checks a user would make of what happened.
//! Numbers in the checks are the issue's; times scale down in `--short` mode so the CI
//! version fits in minutes on two cores.

use std::time::Duration;

use crate::config::{Policy, POLICY};
use crate::fault::{schedule, Behaviour, Schedule};
use crate::load::{Outcome, Stage};
use crate::observed::{ms, Observed};
use crate::timeline::BUCKET;

/// How hard and how long.
#[derive(Clone, Copy, Debug)]
pub struct Mode {
    /// CI's version: a fifth of the rate, shorter phases.
    pub short: bool,
}

impl Mode {
    /// The scenario rate: 1,000 requests a second, 200 in short mode.
    pub fn rps(self) -> f64 {
        if self.short {
            200.0
        } else {
            1000.0
        }
    }

    /// `short` seconds in short mode, else `full`.
    fn secs(self, short: f64, full: f64) -> Duration {
        Duration::from_secs_f64(if self.short { short } else { full })
    }
}

/// A scenario made concrete for a mode.
pub struct Spec {
    /// One schedule per upstream.
    pub upstreams: Vec<Schedule>,
    pub stages: Vec<Stage>,
    pub policy: Policy,
    /// When the fault begins (for a healthy scenario, when the pressure does).
    pub fault_at: Duration,
    /// When the fault ends, if it does.
    pub heal_at: Option<Duration>,
}

impl Spec {
    /// How long the run lasts.
    pub fn length(&self) -> Duration {
        self.stages.last().map(|s| s.until).unwrap_or_default()
    }
}

/// One check's result.
#[derive(Clone, Debug)]
pub struct Check {
    pub name: &'static str,
    pub pass: bool,
    /// What was measured, for the report.
    pub detail: String,
}

fn check(name: &'static str, pass: bool, detail: String) -> Check {
    Check { name, pass, detail }
}

pub struct Scenario {
    pub name: &'static str,
    pub title: &'static str,
    /// What it does and what Tripline must achieve, one paragraph.
    pub about: &'static str,
    pub spec: fn(Mode) -> Spec,
    pub checks: fn(&Spec, &Observed) -> Vec<Check>,
    /// In the CI version (`--short` with no names).
    pub in_short_suite: bool,
}

/// Every scenario, in the order.
pub const ALL: &[Scenario] = &[
    Scenario {
        name: "healthy-spike",
        title: "Healthy spike",
        about: "10x the request rate on healthy upstreams that slow down under load: no breaker \
                trips, no ejection, no locally generated 5xx.",
        spec: healthy_spike,
        checks: healthy_spike_checks,
        in_short_suite: true,
    },
    Scenario {
        name: "hard-failure",
        title: "Hard failure",
        about: "One of five endpoints returns 500: ejected within 1 s; fewer than 0.5% of client \
                requests see its errors (retries hide the rest).",
        spec: hard_failure,
        checks: hard_failure_checks,
        in_short_suite: true,
    },
    Scenario {
        name: "recovery",
        title: "Recovery",
        about: "The failed endpoint heals: back in rotation within two ejection periods, let in by \
                bounded probes, and it stays (no phantom outage).",
        spec: recovery,
        checks: recovery_checks,
        in_short_suite: true,
    },
    Scenario {
        name: "total-failure",
        title: "Total failure",
        about: "Every endpoint fails, then heals: upstream attempts stay within the retry budget \
                (1.2x the client requests), the breaker opens and answers a fast 503 with its \
                reason, and recovery brings no storm.",
        spec: total_failure,
        checks: total_failure_checks,
        in_short_suite: true,
    },
    Scenario {
        name: "ejection-cap",
        title: "Ejection cap",
        about: "Seven of ten endpoints fail in different ways (500s, half 500s, resets, hangs, \
                429s), then others do: ejected endpoints never exceed maxEjectionPercent.",
        spec: ejection_cap,
        checks: ejection_cap_checks,
        in_short_suite: true,
    },
];

/// The scenarios `names` names, or the suite when it is empty; an unknown name is an error
/// listing the known ones.
pub fn select(names: &[String], short: bool) -> Result<Vec<&'static Scenario>, String> {
    if names.is_empty() {
        return Ok(ALL.iter().filter(|s| !short || s.in_short_suite).collect());
    }
    names
        .iter()
        .map(|n| {
            ALL.iter().find(|s| s.name == n).ok_or_else(|| {
                let known: Vec<&str> = ALL.iter().map(|s| s.name).collect();
                format!("no scenario `{n}`; the scenarios are: {}", known.join(", "))
            })
        })
        .collect()
}

fn steady(mode: Mode, length: Duration) -> Vec<Stage> {
    vec![Stage { until: length, rps: mode.rps() }]
}

fn all_healthy(n: usize) -> Vec<Schedule> {
    (0..n).map(|_| schedule(&[])).collect()
}

// 1. Healthy spike.

fn healthy_spike(mode: Mode) -> Spec {
    let (base, spike, after) = (mode.secs(4.0, 10.0), mode.secs(10.0, 30.0), mode.secs(3.0, 10.0));
    let quiet = mode.rps() / 10.0;
    Spec {
        upstreams: all_healthy(5),
        stages: vec![
            Stage { until: base, rps: quiet },
            Stage { until: base + spike, rps: mode.rps() },
            Stage { until: base + spike + after, rps: quiet },
        ],
        policy: POLICY,
        fault_at: base,
        heal_at: Some(base + spike),
    }
}

fn healthy_spike_checks(spec: &Spec, o: &Observed) -> Vec<Check> {
    let all = o.tally(Duration::ZERO, spec.length());
    let not_closed = o.samples.iter().filter(|s| s.breaker != "closed").count();
    let ejections: u64 = o.samples.last().map(|s| s.times_ejected.iter().sum()).unwrap_or(0);
    let (spike_from, spike_to) = (spec.fault_at, spec.heal_at.unwrap_or(spec.length()));
    let p99 = |from, to| o.latency(from, to, Outcome::Ok, 0.99).map(ms).unwrap_or_else(|| "-".into());
    vec![
        check(
            "no breaker trips",
            not_closed == 0 && ejections == 0,
            format!(
                "breaker not closed in {not_closed} of {} samples; {ejections} ejections",
                o.samples.len()
            ),
        ),
        check(
            "no locally generated 5xx",
            all.local_5xx == 0,
            format!(
                "{} local 5xx of {} requests; p99 {} before the spike, {} during",
                all.local_5xx,
                all.requests,
                p99(Duration::ZERO, spike_from),
                p99(spike_from, spike_to)
            ),
        ),
        check(
            "clients see no errors",
            all.errors() == 0,
            format!("{} of {} requests without a 2xx", all.errors(), all.requests),
        ),
    ]
}

// 2. Hard failure.

fn hard_failure(mode: Mode) -> Spec {
    let fault = mode.secs(2.0, 5.0);
    let mut upstreams = all_healthy(5);
    upstreams[0] = schedule(&[(fault, Behaviour::FAILING)]);
    Spec {
        upstreams,
        stages: steady(mode, fault + mode.secs(6.0, 15.0)),
        policy: POLICY,
        fault_at: fault,
        heal_at: None,
    }
}

/// When upstream `i` was first seen ejected at or after `from`.
fn first_ejected(o: &Observed, i: usize, from: Duration) -> Option<Duration> {
    o.samples.iter().find(|s| s.at >= from && s.health.get(i).is_some_and(|h| h != "healthy")).map(|s| s.at)
}

fn hard_failure_checks(spec: &Spec, o: &Observed) -> Vec<Check> {
    let f = spec.fault_at;
    let ejected = first_ejected(o, 0, f).map(|t| t - f);
    let after = o.tally(f, spec.length());
    let leaked = o.attempts_of(0, f, spec.length());
    vec![
        check(
            "ejected within 1 s",
            ejected.is_some_and(|d| d <= Duration::from_secs(1)),
            match ejected {
                Some(d) => format!("ejected {} after its first 500 (seen by /breakers every 100 ms)", ms(d)),
                None => "never seen ejected".into(),
            },
        ),
        check(
            "fewer than 0.5% of requests see its errors",
            after.error_ratio() < 0.005,
            format!(
                "{} of {} requests after the fault without a 2xx ({:.3}%); the failing endpoint got {leaked} attempts",
                after.errors(),
                after.requests,
                after.error_ratio() * 100.0
            ),
        ),
    ]
}

// 3. Recovery.

fn recovery(mode: Mode) -> Spec {
    let (fault, heal) = (mode.secs(2.0, 5.0), mode.secs(3.0, 6.0));
    let mut upstreams = all_healthy(5);
    upstreams[0] = schedule(&[(fault, Behaviour::FAILING), (heal, Behaviour::HEALTHY)]);
    Spec {
        upstreams,
        stages: steady(mode, heal + mode.secs(9.0, 14.0)),
        policy: POLICY,
        fault_at: fault,
        heal_at: Some(heal),
    }
}

/// Windows of half a second from `from` to `to` in which upstream `i` had at least half its
/// fair share of the attempts: `(start, in rotation)`.
fn share_windows(o: &Observed, i: usize, from: Duration, to: Duration) -> Vec<(Duration, bool)> {
    let n = o.attempts.len() as f64;
    let step = Duration::from_millis(500);
    let mut out = Vec::new();
    let mut at = from;
    while at + step <= to {
        let all = o.attempts(at, at + step) as f64;
        let mine = o.attempts_of(i, at, at + step) as f64;
        out.push((at, all > 0.0 && mine >= 0.5 * all / n));
        at += step;
    }
    out
}

fn recovery_checks(spec: &Spec, o: &Observed) -> Vec<Check> {
    let heal = spec.heal_at.expect("recovery heals");
    let end = spec.length();
    // The ejection in force when it healed: base × times ejected (the multiplier), as Envoy.
    let times = o
        .samples(Duration::ZERO, heal + Duration::from_millis(100))
        .last()
        .map(|s| s.times_ejected[0])
        .unwrap_or(0);
    let allowed = 2 * spec.policy.base_ejection * times.max(1) as u32;
    let windows = share_windows(o, 0, heal, end);
    let back = windows.iter().position(|w| w.1);
    let back_at = back.map(|i| windows[i].0);
    let stayed = back.map(|i| windows[i..].iter().filter(|w| !w.1).count());
    // Probes, as the upstream saw them: the attempts it received while /breakers said it was
    // out of rotation (from the bucket after the first such sample to the bucket of the
    // last), at most `concurrency` for each time it was let back to be probed.
    let out: Vec<Duration> = o.samples.iter().filter(|s| s.health[0] != "healthy").map(|s| s.at).collect();
    let (probes, rounds) = match (out.first(), out.last()) {
        (Some(a), Some(b)) if b > a => {
            let ejections = o.samples.last().map(|s| s.times_ejected[0]).unwrap_or(0);
            (o.attempts_of(0, *a + BUCKET, *b), ejections.max(1))
        }
        _ => (0, 1),
    };
    let probe_limit = u64::from(spec.policy.probe_concurrency) * rounds;
    let last = o.samples.last();
    let settled = last.is_some_and(|s| s.breaker == "closed" && s.health.iter().all(|h| h == "healthy"));
    let after = o.tally(heal, end);
    vec![
        check(
            "back in rotation within two ejection periods",
            back_at.is_some_and(|t| t - heal <= allowed),
            match back_at {
                Some(t) => format!(
                    "full share {} after healing (ejected {times} times: allowed {})",
                    ms(t - heal),
                    ms(allowed)
                ),
                None => "never back to half its share".into(),
            },
        ),
        check(
            "let in by bounded probes",
            !out.is_empty() && probes <= probe_limit,
            format!(
                "out of rotation for {}; it received {probes} attempts meanwhile (limit {probe_limit}: {} probe(s) after each of {rounds} ejection(s))",
                out.first().zip(out.last()).map(|(a, b)| ms(*b - *a)).unwrap_or_else(|| "never".into()),
                spec.policy.probe_concurrency
            ),
        ),
        check(
            "no phantom outage",
            stayed == Some(0) && settled && after.errors() == 0,
            format!(
                "{} half-second windows below half its share once back; at the end: {}; {} client errors after healing",
                stayed.unwrap_or(0),
                last.map(|s| format!("breaker {}, endpoints {}", s.breaker, s.health.join("/"))).unwrap_or_default(),
                after.errors()
            ),
        ),
    ]
}

// 5. Total failure.

fn total_failure(mode: Mode) -> Spec {
    let (fault, heal) = (mode.secs(2.0, 5.0), mode.secs(8.0, 20.0));
    let upstreams =
        (0..5).map(|_| schedule(&[(fault, Behaviour::FAILING), (heal, Behaviour::HEALTHY)])).collect();
    Spec {
        upstreams,
        stages: steady(mode, heal + mode.secs(8.0, 15.0)),
        policy: POLICY,
        fault_at: fault,
        heal_at: Some(heal),
    }
}

/// The most attempts the retry budget allows for `requests` over `span`.
fn budget(p: &Policy, requests: u64, span: Duration) -> f64 {
    (1.0 + p.retry_ratio) * requests as f64 + f64::from(p.min_retries_per_second) * span.as_secs_f64()
}

fn total_failure_checks(spec: &Spec, o: &Observed) -> Vec<Check> {
    let (f, h, end) = (spec.fault_at, spec.heal_at.expect("total failure heals"), spec.length());
    let during = o.tally(f, h);
    let attempts = o.attempts(f, h);
    let allowed = budget(&spec.policy, during.requests, h - f);
    let opened = o.samples(f, h).any(|s| s.breaker == "open");
    let fast = o.latency(f, h, Outcome::Local, 0.99);
    // Recovery, second by second: attempts against the budget for that second's requests.
    let mut worst = (0.0f64, Duration::ZERO);
    let mut at = h;
    while at + Duration::from_secs(1) <= end {
        let next = at + Duration::from_secs(1);
        let ratio = o.attempts(at, next) as f64 / budget(&spec.policy, o.tally(at, next).requests, next - at);
        if ratio > worst.0 {
            worst = (ratio, at - h);
        }
        at = next;
    }
    let last = o.tally(end - Duration::from_secs(2), end);
    vec![
        check(
            "upstream attempts within the retry budget",
            attempts as f64 <= allowed,
            format!(
                "{attempts} attempts for {} requests while failing ({:.2}x; budget {:.0})",
                during.requests,
                attempts as f64 / during.requests.max(1) as f64,
                allowed
            ),
        ),
        check("the breaker opens", opened, format!("open in {} samples", o.samples(f, h).filter(|s| s.breaker == "open").count())),
        check(
            "a fast 503 with its reason",
            during.local_5xx > 0 && fast.is_some_and(|d| d <= Duration::from_millis(50)),
            format!(
                "{} of {} requests answered by Tripline, p99 {}",
                during.local_5xx,
                during.requests,
                fast.map(ms).unwrap_or_else(|| "-".into())
            ),
        ),
        check(
            "no storm on recovery",
            worst.0 <= 1.0 && last.error_ratio() < 0.01,
            format!(
                "busiest second after healing at {:.2} of the budget (+{}); last 2 s: {} of {} requests without a 2xx",
                worst.0,
                ms(worst.1),
                last.errors(),
                last.requests
            ),
        ),
    ]
}

// 9. Ejection cap.

fn ejection_cap(mode: Mode) -> Spec {
    let (fault, turn) = (mode.secs(2.0, 5.0), mode.secs(6.0, 15.0));
    let half = Behaviour::Errors { ratio: 0.5, latency: Duration::ZERO };
    let first = [
        Behaviour::FAILING,
        Behaviour::FAILING,
        half,
        half,
        Behaviour::Reset,
        Behaviour::Hang,
        Behaviour::RateLimited { retry_after_secs: 1 },
    ];
    let mut upstreams = all_healthy(10);
    // The first seven fail from `fault`; at `turn` they heal and the other three fail.
    for (i, b) in first.iter().enumerate() {
        upstreams[i] = schedule(&[(fault, *b), (turn, Behaviour::HEALTHY)]);
    }
    for u in upstreams.iter_mut().skip(7) {
        *u = schedule(&[(turn, Behaviour::FAILING)]);
    }
    Spec {
        upstreams,
        stages: steady(mode, turn + mode.secs(4.0, 10.0)),
        policy: POLICY,
        fault_at: fault,
        heal_at: Some(turn),
    }
}

fn ejection_cap_checks(spec: &Spec, o: &Observed) -> Vec<Check> {
    let cap = spec.policy.ejection_cap(spec.upstreams.len()) as u64;
    let most_active = o.samples.iter().map(|s| s.ejections_active).max().unwrap_or(0);
    let most_ejected = o
        .samples
        .iter()
        .map(|s| s.health.iter().filter(|h| *h == "ejected").count() as u64)
        .max()
        .unwrap_or(0);
    let ever: u64 = o.samples.last().map(|s| s.times_ejected.iter().sum()).unwrap_or(0);
    vec![check(
        "ejected endpoints never exceed maxEjectionPercent",
        most_active <= cap && most_ejected <= cap && ever > 0,
        format!(
            "at most {most_active} ejections active, {most_ejected} endpoints ejected at once (cap {cap} of {}: {}%); {ever} ejections in all",
            spec.upstreams.len(),
            spec.policy.max_ejection_percent
        ),
    )]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_kebab_case_and_select_finds_them() {
        for s in ALL {
            assert!(s.name.chars().all(|c| c.is_ascii_lowercase() || c == '-'), "{}", s.name);
            assert_eq!(ALL.iter().filter(|t| t.name == s.name).count(), 1);
        }
        let picked = select(&["recovery".into()], false).unwrap();
        assert_eq!(picked.len(), 1);
        let e = select(&["nope".into()], false).err().unwrap();
        assert!(e.contains("healthy-spike"), "{e}");
    }

    #[test]
    fn the_short_suite_fits_ci() {
        let total: Duration =
            select(&[], true).unwrap().iter().map(|s| (s.spec)(Mode { short: true }).length()).sum();
        assert!(total <= Duration::from_secs(180), "{total:?}");
    }

    #[test]
    fn the_budget_allows_the_ratio_plus_the_floor() {
        let b = budget(&POLICY, 1000, Duration::from_secs(2));
        assert_eq!(b, 1200.0 + 10.0);
    }
}
