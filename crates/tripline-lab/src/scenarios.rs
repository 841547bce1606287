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
    /// Proxies in series between the clients and the upstreams, each with the policy (a call
    /// chain); 1 but for `call-chain`, which runs Tripline hops only.
    pub hops: usize,
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
    /// False when the proxy cannot be asked (a peer has no state API the lab reads): the
    /// check is reported as not applicable, and `pass` is true.
    pub applicable: bool,
    /// What was measured, for the report.
    pub detail: String,
}

fn check(name: &'static str, pass: bool, detail: String) -> Check {
    Check { name, pass, applicable: true, detail }
}

/// A check only Tripline's state API can answer, asked of a peer.
fn not_applicable(name: &'static str) -> Check {
    Check {
        name,
        pass: true,
        applicable: false,
        detail: "needs the proxy's state API (Tripline's /breakers)".into(),
    }
}

/// `detail`, and what /breakers said when the proxy has it.
fn with_state(o: &Observed, detail: String, state: impl FnOnce() -> String) -> String {
    if o.state {
        format!("{detail}; /breakers: {}", state())
    } else {
        detail
    }
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
        name: "flapping-endpoint",
        title: "Flapping endpoint",
        about: "An endpoint fails for 1.5 s, works for 0.5 s, and again: each re-ejection lasts \
                longer, never past maxEjectionTime, and probes stay within the limit.",
        spec: flapping,
        checks: flapping_checks,
        in_short_suite: false,
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
        name: "slow-endpoint",
        title: "Slow endpoint",
        about: "One of five endpoints answers 20x slower, without errors: traffic moves away \
                from it.",
        spec: slow_endpoint,
        checks: slow_endpoint_checks,
        in_short_suite: false,
    },
    Scenario {
        name: "rate-limiting-endpoint",
        title: "Rate-limiting endpoint",
        about: "One of five endpoints answers 429 with Retry-After: 1 s, at once: it gets less \
                traffic, and nothing within its Retry-After (a fast 429 is not a healthy answer).",
        spec: rate_limiting,
        checks: rate_limiting_checks,
        in_short_suite: true,
    },
    Scenario {
        name: "call-chain",
        title: "Call chain",
        about: "A -> B -> C with Tripline in front of A's calls and of B's, every instance of C \
                failing for a while: only B's hop, in front of C, opens; A's does not trip on \
                its fast refusals, retries do not multiply across hops, and clients get B's \
                reason fast.",
        spec: call_chain,
        checks: call_chain_checks,
        in_short_suite: true,
    },
    Scenario {
        name: "ejection-cap",
        title: "Ejection cap",
        about: "Seven of ten endpoints fail in different ways (500s, half 500s, resets, slow \
                500s, 503s), then others do: ejected endpoints never exceed maxEjectionPercent.",
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
        hops: 1,
        fault_at: base,
        heal_at: Some(base + spike),
    }
}

fn healthy_spike_checks(spec: &Spec, o: &Observed) -> Vec<Check> {
    let all = o.tally(Duration::ZERO, spec.length());
    let not_closed = o.samples.iter().filter(|s| s.breaker != "closed").count();
    let ejections: u64 = o.samples.last().map(|s| s.times_ejected.iter().sum()).unwrap_or(0);
    let dropped = o.most_out(Duration::ZERO, spec.length());
    // The upstreams answered nothing but 200: every 5xx a client saw, the proxy made.
    let made = o.in_range(Duration::ZERO, spec.length()).filter(|r| r.status >= 500).count();
    let (spike_from, spike_to) = (spec.fault_at, spec.heal_at.unwrap_or(spec.length()));
    let p99 = |from, to| o.latency(from, to, Outcome::Ok, 0.99).map(ms).unwrap_or_else(|| "-".into());
    vec![
        check(
            "no breaker trips",
            dropped == 0 && not_closed == 0 && ejections == 0,
            with_state(
                o,
                format!("{dropped} endpoints fell out of rotation as the upstreams saw it"),
                || {
                    format!(
                        "breaker not closed in {not_closed} of {} samples, {ejections} ejections",
                        o.samples.len()
                    )
                },
            ),
        ),
        check(
            "no locally generated 5xx",
            made == 0,
            format!(
                "{made} 5xx of {} requests (the upstreams sent none); p99 {} before the spike, {} during",
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
        hops: 1,
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
    let out = o.out_at(0, f, spec.length()).map(|t| t - f);
    let ejected = first_ejected(o, 0, f).map(|t| t - f);
    let after = o.tally(f, spec.length());
    let leaked = o.attempts_of(0, f, spec.length());
    vec![
        check(
            "ejected within 1 s",
            out.is_some_and(|d| d <= Duration::from_secs(1)),
            with_state(
                o,
                match out {
                    Some(d) => format!("out of rotation {} after its first 500", ms(d)),
                    None => "never out of rotation".into(),
                },
                || ejected.map(|d| format!("ejected after {}", ms(d))).unwrap_or_else(|| "never ejected".into()),
            ),
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
        hops: 1,
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
    let out = out_of_rotation(o, 0);
    let (probes, rounds) = probes_while_out(o, 0, &out);
    let probe_limit = u64::from(spec.policy.probe_concurrency) * rounds;
    let last = o.samples.last();
    let settled =
        !o.state || last.is_some_and(|s| s.breaker == "closed" && s.health.iter().all(|h| h == "healthy"));
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
        if o.state {
            check(
                "let in by bounded probes",
                !out.is_empty() && probes <= probe_limit,
                format!(
                    "out of rotation for {}; it received {probes} attempts meanwhile (limit {probe_limit}: {} probe(s) after each of {rounds} ejection(s))",
                    ms(out.iter().map(|(a, b)| *b - *a).sum()),
                    spec.policy.probe_concurrency
                ),
            )
        } else {
            not_applicable("let in by bounded probes")
        },
        check(
            "no phantom outage",
            stayed == Some(0) && settled && after.errors() == 0,
            with_state(
                o,
                format!(
                    "{} half-second windows below half its share once back; {} client errors after healing",
                    stayed.unwrap_or(0),
                    after.errors()
                ),
                || {
                    last.map(|s| {
                        format!("at the end breaker {}, endpoints {}", s.breaker, s.health.join("/"))
                    })
                    .unwrap_or_default()
                },
            ),
        ),
    ]
}

/// The spans `(from, to)` in which /breakers showed upstream `i` out of rotation (ejected or
/// being probed), from the first such sample to the last of each run.
fn out_of_rotation(o: &Observed, i: usize) -> Vec<(Duration, Duration)> {
    runs(o, i, |h| h != "healthy")
}

/// The spans in which /breakers showed upstream `i` with health `pred`.
fn runs(o: &Observed, i: usize, pred: impl Fn(&str) -> bool) -> Vec<(Duration, Duration)> {
    let mut out: Vec<(Duration, Duration)> = Vec::new();
    let mut open: Option<(Duration, Duration)> = None;
    for s in &o.samples {
        if pred(&s.health[i]) {
            open = Some(open.map_or((s.at, s.at), |(a, _)| (a, s.at)));
        } else if let Some(r) = open.take() {
            out.push(r);
        }
    }
    out.extend(open);
    out
}

/// Probes as the upstream saw them: the attempts it received within the spans it was out of
/// rotation (from the bucket after a span's first sample to its last one's: attempts already
/// in flight when it was ejected are not probes), and the ejections they may follow.
fn probes_while_out(o: &Observed, i: usize, out: &[(Duration, Duration)]) -> (u64, u64) {
    let probes = out.iter().filter(|(a, b)| b > a).map(|(a, b)| o.attempts_of(i, *a + BUCKET, *b)).sum();
    let ejections = o.samples.last().map(|s| s.times_ejected[i]).unwrap_or(0);
    (probes, ejections.max(1))
}

/// How long each ejection of upstream `i` lasted: from the sample where its ejection count
/// went up to the first where it was no longer ejected or was ejected again (a failed probe
/// ejects it again at once, so /breakers may never show it in between).
fn ejection_lengths(o: &Observed, i: usize) -> Vec<Duration> {
    let mut out = Vec::new();
    let mut current: Option<Duration> = None;
    let mut count = 0;
    for s in &o.samples {
        let again = s.times_ejected[i] > count;
        count = s.times_ejected[i];
        if let Some(start) = current {
            if again || s.health[i] != "ejected" {
                out.push(s.at - start);
                current = None;
            }
        }
        if again {
            current = Some(s.at);
        }
    }
    out
}

// 4. Flapping endpoint.

fn flapping(mode: Mode) -> Spec {
    let start = mode.secs(2.0, 4.0);
    let end = start + mode.secs(24.0, 36.0);
    let mut changes = Vec::new();
    let mut at = start;
    while at < end {
        changes.push((at, Behaviour::FAILING));
        changes.push((at + Duration::from_millis(1500), Behaviour::HEALTHY));
        at += Duration::from_secs(2);
    }
    let mut upstreams = all_healthy(5);
    upstreams[0] = schedule(&changes);
    Spec { upstreams, stages: steady(mode, end), policy: POLICY, hops: 1, fault_at: start, heal_at: None }
}

fn flapping_checks(spec: &Spec, o: &Observed) -> Vec<Check> {
    let p = &spec.policy;
    // Tripline's /breakers counts ejections exactly; for a peer, each span of 300 ms or more
    // in which the endpoint received nothing is one.
    let ejections = if o.state {
        ejection_lengths(o, 0)
    } else {
        o.gaps(0, spec.fault_at, spec.length(), Duration::from_millis(300))
            .iter()
            .map(|(a, b)| *b - *a)
            .collect()
    };
    let slack = 2 * BUCKET;
    let longest = ejections.iter().max().copied().unwrap_or_default();
    // Growth: some ejection lasted at least twice the base time (the second of a run of
    // ejections does), and none was shorter than the one before by more than the decay a
    // healthy interval may bring (one base time).
    let grew = longest + slack >= 2 * p.base_ejection;
    let shrank = ejections.windows(2).filter(|w| w[1] + p.base_ejection + slack < w[0]).count();
    let out = out_of_rotation(o, 0);
    let (probes, rounds) = probes_while_out(o, 0, &out);
    let limit = u64::from(p.probe_concurrency) * rounds;
    let list: Vec<String> = ejections.iter().map(|d| format!("{:.1}", d.as_secs_f64())).collect();
    vec![
        check(
            "each re-ejection lasts longer, capped",
            grew && shrank == 0 && longest <= p.max_ejection + slack,
            format!(
                "ejections of {} (base {} s, cap {} s)",
                if list.is_empty() { "none".to_string() } else { format!("{} s", list.join(", ")) },
                p.base_ejection.as_secs_f64(),
                p.max_ejection.as_secs_f64()
            ),
        ),
        if o.state {
            check(
                "probes never exceed the limit",
                probes <= limit,
                format!("{probes} attempts while out of rotation, for {rounds} ejections (limit {limit})"),
            )
        } else {
            not_applicable("probes never exceed the limit")
        },
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
        hops: 1,
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
    // Once the failure is established (2 s in), an open breaker (or its equivalent) sends
    // the failing upstreams a fraction of the requests.
    let settled = (f + Duration::from_secs(2)).min(h);
    let (late_attempts, late_requests) = (o.attempts(settled, h), o.tally(settled, h).requests);
    let shed = (late_attempts as f64) <= 0.5 * late_requests as f64;
    let open_samples = o.samples(f, h).filter(|s| s.breaker == "open").count();
    // Answers the proxy made itself: Tripline's carry their reason; a peer's are the 5xx
    // other than the upstreams' 500s, and carry none.
    let fast = o.latency(f, h, Outcome::Local, 0.99);
    let mut made: Vec<Duration> =
        o.in_range(f, h).filter(|r| r.status >= 502 || r.status == 0).map(|r| r.latency).collect();
    let made_p99 = crate::observed::quantile(&mut made, 0.99);
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
        check(
            "the breaker opens",
            shed && (!o.state || open_samples > 0),
            with_state(
                o,
                format!(
                    "{late_attempts} attempts for {late_requests} requests from 2 s into the failure ({:.2}x)",
                    late_attempts as f64 / late_requests.max(1) as f64
                ),
                || format!("open in {open_samples} samples"),
            ),
        ),
        if o.state {
            check(
                "a fast 503 with its reason",
                during.local_5xx > 0 && fast.is_some_and(|d| d <= Duration::from_millis(50)),
                format!(
                    "{} of {} requests answered by Tripline with x-tripline-reason, p99 {}",
                    during.local_5xx,
                    during.requests,
                    fast.map(ms).unwrap_or_else(|| "-".into())
                ),
            )
        } else {
            check(
                "a fast 503 with its reason",
                false,
                format!(
                    "{} of {} requests answered by the proxy itself (502, 503, 504 or no response), p99 {}; none says why",
                    made.len(),
                    during.requests,
                    made_p99.map(ms).unwrap_or_else(|| "-".into())
                ),
            )
        },
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

// 6. Slow endpoint.

/// Five endpoints, the first taking `behaviour` at 2 s (5 s full) for the rest of the run.
fn one_of_five(mode: Mode, behaviour: Behaviour) -> Spec {
    let fault = mode.secs(2.0, 5.0);
    let mut upstreams = all_healthy(5);
    upstreams[0] = schedule(&[(fault, behaviour)]);
    Spec {
        upstreams,
        stages: steady(mode, fault + mode.secs(8.0, 15.0)),
        policy: POLICY,
        hops: 1,
        fault_at: fault,
        heal_at: None,
    }
}

/// From 1 s after the fault to the end: upstream 0's attempts, everyone's, and upstream 0's
/// share as a fraction of a fair one.
fn first_share(spec: &Spec, o: &Observed) -> (u64, u64, f64) {
    let (from, to) = (spec.fault_at + Duration::from_secs(1), spec.length());
    let (mine, all) = (o.attempts_of(0, from, to), o.attempts(from, to));
    let fair = all as f64 / spec.upstreams.len() as f64;
    (mine, all, mine as f64 / fair.max(1.0))
}

fn slow_endpoint(mode: Mode) -> Spec {
    let slow =
        Behaviour::Healthy { latency: Duration::from_millis(40), per_in_flight: Duration::from_millis(4) };
    one_of_five(mode, slow)
}

fn slow_endpoint_checks(spec: &Spec, o: &Observed) -> Vec<Check> {
    let (from, to) = (spec.fault_at + Duration::from_secs(1), spec.length());
    let (slow, all, share) = first_share(spec, o);
    let errors = o.tally(spec.fault_at, to);
    let p99 = o.latency(from, to, Outcome::Ok, 0.99);
    vec![
        check(
            "traffic moves away from it",
            share < 0.5,
            format!(
                "{slow} of {all} attempts from 1 s after it slowed ({:.0}% of a fair share); client p99 {}",
                100.0 * share,
                p99.map(ms).unwrap_or_else(|| "-".into())
            ),
        ),
        check(
            "clients see no errors",
            errors.errors() == 0,
            format!("{} of {} requests without a 2xx", errors.errors(), errors.requests),
        ),
    ]
}

// 7. Rate-limiting endpoint.

fn rate_limiting(mode: Mode) -> Spec {
    one_of_five(mode, Behaviour::RateLimited { retry_after_secs: 1 })
}

fn rate_limiting_checks(spec: &Spec, o: &Observed) -> Vec<Check> {
    let (from, to) = (spec.fault_at + Duration::from_secs(1), spec.length());
    let (limited, all, share) = first_share(spec, o);
    // Retry-After: 1 s honoured by the proxy: at most one attempt a second, plus one.
    let honoured = (to - from).as_secs_f64().ceil() as u64 + 1;
    let clients = o.tally(spec.fault_at, to);
    vec![
        check(
            "it gets less traffic",
            share < 0.5,
            format!(
                "{limited} of {all} attempts from 1 s after its first 429 ({:.0}% of a fair share)",
                100.0 * share
            ),
        ),
        check(
            "Retry-After is honoured",
            limited <= honoured,
            format!(
                "{limited} attempts in {:.0} s; Retry-After: 1 allows {honoured}; clients got {} answers without a 2xx of {}",
                (to - from).as_secs_f64(),
                clients.errors(),
                clients.requests
            ),
        ),
    ]
}

// 8. Call chain.

/// A's hop calls B's hop, which calls C's five instances: as sidecars' outbound sides, each
/// applying the policy to the service it calls. (C's own inbound side would pass C's 500s on
/// unchanged, and B's hop would judge C by them all the same.)
fn call_chain(mode: Mode) -> Spec {
    Spec { hops: 2, ..total_failure(mode) }
}

fn call_chain_checks(spec: &Spec, o: &Observed) -> Vec<Check> {
    let (f, h) = (spec.fault_at, spec.heal_at.expect("the chain's upstreams heal"));
    let during = o.tally(f, h);
    let attempts = o.attempts(f, h);
    let allowed = budget(&spec.policy, during.requests, h - f);
    let last_opened = o.samples(f, h).filter(|s| s.breaker == "open").count();
    let tripped: Vec<String> = o
        .upper
        .iter()
        .enumerate()
        .map(|(i, samples)| {
            let open = samples.iter().filter(|s| s.breaker != "closed").count();
            let ejections: u64 = samples.last().map(|s| s.times_ejected.iter().sum()).unwrap_or(0);
            format!(
                "hop {}: breaker not closed in {open} of {} samples, {ejections} ejections",
                i + 1,
                samples.len()
            )
        })
        .collect();
    let upper_quiet = o.upper.iter().all(|samples| {
        samples.iter().all(|s| s.breaker == "closed")
            && samples.last().is_some_and(|s| s.times_ejected.iter().all(|n| *n == 0))
    });
    let settled = (f + Duration::from_secs(2)).min(h);
    let late = o.tally(settled, h);
    let fast = o.latency(settled, h, Outcome::Local, 0.99);
    vec![
        check(
            "only the hop in front of the failing service opens",
            o.state && last_opened > 0 && upper_quiet && o.upper.len() + 1 == spec.hops,
            format!("hop {}: open in {last_opened} samples; {}", spec.hops, tripped.join("; ")),
        ),
        check(
            "retries do not multiply across hops",
            attempts as f64 <= allowed,
            format!(
                "{attempts} attempts at the upstreams for {} client requests while failing ({:.2}x; one hop's budget {:.0})",
                during.requests,
                attempts as f64 / during.requests.max(1) as f64,
                allowed
            ),
        ),
        check(
            "clients get the last hop's reason, fast",
            late.local * 2 >= late.requests && fast.is_some_and(|d| d <= Duration::from_millis(50)),
            format!(
                "from 2 s into the failure, {} of {} requests answered with x-tripline-reason, p99 {}",
                late.local,
                late.requests,
                fast.map(ms).unwrap_or_else(|| "-".into())
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
        // Slow 500s rather than a hang: least-request balancers avoid an endpoint holding
        // many requests, and that is not an ejection; the upstream's count could not tell.
        Behaviour::Errors { ratio: 1.0, latency: Duration::from_millis(300) },
        Behaviour::Status(503),
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
        hops: 1,
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
    let most_out = o.most_out(Duration::ZERO, spec.length()) as u64;
    vec![check(
        "ejected endpoints never exceed maxEjectionPercent",
        most_out <= cap && most_active <= cap && most_ejected <= cap && most_out > 0,
        with_state(
            o,
            format!(
                "at most {most_out} of {} endpoints out of rotation at once, as the upstreams saw it (cap {cap}: {}%)",
                spec.upstreams.len(),
                spec.policy.max_ejection_percent
            ),
            || format!("at most {most_active} ejections active, {most_ejected} ejected at once, {ever} in all"),
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

    /// A failed probe ejects again without a sample in between: the count going up splits
    /// ejections; going back to healthy ends one; probing and healthy time are out of them.
    #[test]
    fn ejections_are_split_by_the_count_and_ended_by_health() {
        let states = [
            ("healthy", 0),
            ("ejected", 1),
            ("ejected", 1),
            ("ejected", 2),
            ("ejected", 2),
            ("ejected", 2),
            ("probing", 2),
            ("healthy", 2),
            ("ejected", 3),
        ];
        let samples = states
            .iter()
            .enumerate()
            .map(|(i, (h, n))| crate::proxy::Sample {
                at: Duration::from_secs(i as u64),
                health: vec![h.to_string()],
                times_ejected: vec![*n],
                ..Default::default()
            })
            .collect();
        let o =
            Observed { records: vec![], attempts: vec![vec![0; 100]], samples, upper: vec![], state: true };
        let secs = |v: &[u64]| v.iter().map(|s| Duration::from_secs(*s)).collect::<Vec<_>>();
        assert_eq!(ejection_lengths(&o, 0), secs(&[2, 3]), "the third is still going");
        assert_eq!(
            out_of_rotation(&o, 0),
            [
                (Duration::from_secs(1), Duration::from_secs(6)),
                (Duration::from_secs(8), Duration::from_secs(8))
            ]
        );
    }

    #[test]
    fn the_budget_allows_the_ratio_plus_the_floor() {
        let b = budget(&POLICY, 1000, Duration::from_secs(2));
        assert_eq!(b, 1200.0 + 10.0);
    }
}
