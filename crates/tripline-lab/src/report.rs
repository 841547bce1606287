//! The report a run leaves in its `--out` directory: `report.md` (a table of every check),
//! `report.json` (the same, with the time series behind the plots) and, per scenario and
//! proxy, `<scenario>/<proxy>.svg`.

use std::fmt::Write as _;
use std::time::Duration;

use serde_json::{json, Value};

use crate::load::Outcome;
use crate::observed::{quantile, Observed};
use crate::peers::Kind;
use crate::plot::{Line, Panel};
use crate::scenarios::{Check, Scenario, Spec};
use crate::timeline::BUCKET;

/// One scenario through one proxy.
pub struct Result {
    pub scenario: &'static Scenario,
    pub proxy: Kind,
    /// The checks, or why the scenario could not run.
    pub checks: std::result::Result<Vec<Check>, String>,
    /// The plotted series, for `report.json`.
    pub series: Value,
}

impl Result {
    pub fn passed(&self) -> bool {
        self.checks.as_ref().is_ok_and(|c| c.iter().all(|c| c.pass))
    }
}

/// Plot step: a quarter of a second (2.5 buckets would not divide).
const STEP: Duration = Duration::from_millis(200);

fn per_step(v: &[u64]) -> Vec<f64> {
    let k = (STEP.as_millis() / BUCKET.as_millis()) as usize;
    v.chunks(k).map(|c| c.iter().sum::<u64>() as f64 / STEP.as_secs_f64()).collect()
}

fn points(v: &[f64]) -> Vec<(f64, f64)> {
    v.iter().enumerate().map(|(i, y)| (i as f64 * STEP.as_secs_f64(), *y)).collect()
}

/// The panels of a run: what clients sent and got, what each upstream received, what the
/// proxy's breaker and outlier detection were doing, and the clients' latency.
pub fn panels(spec: &Spec, o: &Observed) -> (Vec<Panel>, Value) {
    let steps = (spec.length().as_millis() / STEP.as_millis()) as usize + 1;
    let mut sent = vec![0u64; steps];
    let mut errors = vec![0u64; steps];
    let mut local = vec![0u64; steps];
    let mut lat: Vec<Vec<Duration>> = vec![Vec::new(); steps];
    for r in &o.records {
        let i = ((r.intended.as_millis() / STEP.as_millis()) as usize).min(steps - 1);
        sent[i] += 1;
        errors[i] += u64::from(r.outcome != Outcome::Ok);
        local[i] += u64::from(r.outcome == Outcome::Local);
        if matches!(r.outcome, Outcome::Ok | Outcome::UpstreamError | Outcome::Local) {
            lat[i].push(r.latency);
        }
    }
    let rate = |v: &[u64]| v.iter().map(|c| *c as f64 / STEP.as_secs_f64()).collect::<Vec<_>>();
    let (p50, p99): (Vec<f64>, Vec<f64>) = lat
        .iter_mut()
        .map(|l| {
            let q =
                |l: &mut Vec<Duration>, q| quantile(l, q).map(|d| d.as_secs_f64() * 1000.0).unwrap_or(0.0);
            (q(l, 0.5), q(l, 0.99))
        })
        .unzip();
    let attempts: Vec<Vec<f64>> = o.attempts.iter().map(|a| per_step(a)).collect();
    let sample_t: Vec<f64> = o.samples.iter().map(|s| s.at.as_secs_f64()).collect();
    let ejected: Vec<f64> = o.samples.iter().map(|s| s.ejections_active as f64).collect();
    let breaker: Vec<f64> = o
        .samples
        .iter()
        .map(|s| match s.breaker.as_str() {
            "open" | "forced-open" => 2.0,
            "half-open" => 1.0,
            _ => 0.0,
        })
        .collect();
    let at = |t: &[f64], v: &[f64]| t.iter().copied().zip(v.iter().copied()).collect::<Vec<_>>();
    let panels = vec![
        Panel {
            title: "Clients: requests sent, errors, Tripline's own answers".into(),
            unit: "per second",
            lines: vec![
                Line { name: "sent".into(), points: points(&rate(&sent)) },
                Line { name: "not 2xx".into(), points: points(&rate(&errors)) },
                Line { name: "answered by proxy".into(), points: points(&rate(&local)) },
            ],
        },
        Panel {
            title: "Upstream attempts, per endpoint".into(),
            unit: "per second",
            lines: attempts
                .iter()
                .enumerate()
                .map(|(i, a)| Line { name: format!("endpoint {i}"), points: points(a) })
                .collect(),
        },
        Panel {
            title: "Ejected endpoints; breaker (0 closed, 1 half-open, 2 open)".into(),
            unit: "count",
            lines: vec![
                Line { name: "ejected".into(), points: at(&sample_t, &ejected) },
                Line { name: "breaker".into(), points: at(&sample_t, &breaker) },
            ],
        },
        Panel {
            title: "Client latency, from when each request should have left".into(),
            unit: "ms",
            lines: vec![
                Line { name: "p50".into(), points: points(&p50) },
                Line { name: "p99".into(), points: points(&p99) },
            ],
        },
    ];
    let series = json!({
        "step_seconds": STEP.as_secs_f64(),
        "client_sent_per_s": rate(&sent),
        "client_not_2xx_per_s": rate(&errors),
        "client_local_per_s": rate(&local),
        "latency_p50_ms": p50,
        "latency_p99_ms": p99,
        "upstream_attempts_per_s": attempts,
        "samples": {"t": sample_t, "ejections_active": ejected, "breaker": breaker},
    });
    (panels, series)
}

fn verdict(c: &Check) -> &'static str {
    match (c.applicable, c.pass) {
        (false, _) => "n/a",
        (true, true) => "pass",
        (true, false) => "**FAIL**",
    }
}

/// `report.md`: a table of every check (a row) by proxy (a column), then each scenario with
/// what was measured through each proxy and its plots.
pub fn markdown(results: &[Result], header: &str) -> String {
    let mut proxies: Vec<Kind> = Vec::new();
    let mut scenarios: Vec<&'static Scenario> = Vec::new();
    for r in results {
        if !proxies.contains(&r.proxy) {
            proxies.push(r.proxy);
        }
        if !scenarios.iter().any(|s| s.name == r.scenario.name) {
            scenarios.push(r.scenario);
        }
    }
    let names: Vec<&str> = proxies.iter().map(|k| k.name()).collect();
    let mut s = format!(
        "# Tripline pressure lab\n\n{header}\n\n| Scenario | Check | {} |\n|---|---|{}\n",
        names.join(" | "),
        "---|".repeat(names.len())
    );
    let of = |sc: &Scenario, k: Kind| results.iter().find(|r| r.scenario.name == sc.name && r.proxy == k);
    for sc in &scenarios {
        // The checks as the first proxy that ran lists them (every proxy has the same).
        let Some(names) = proxies.iter().find_map(|k| of(sc, *k).and_then(|r| r.checks.as_ref().ok())) else {
            let _ = writeln!(s, "| {} | (not run) |{}", sc.name, " **FAIL** |".repeat(proxies.len()));
            continue;
        };
        for (i, c) in names.iter().enumerate() {
            let cells: Vec<&str> = proxies
                .iter()
                .map(|k| match of(sc, *k).map(|r| &r.checks) {
                    Some(Ok(cs)) => cs.get(i).map(verdict).unwrap_or("-"),
                    Some(Err(_)) => "not run",
                    None => "Tripline only",
                })
                .collect();
            let _ = writeln!(s, "| {} | {} | {} |", sc.name, c.name, cells.join(" | "));
        }
    }
    s.push_str("\n## Scenarios\n");
    for sc in &scenarios {
        let _ = write!(s, "\n### {}\n\n{}\n\n", sc.title, sc.about);
        for k in &proxies {
            let Some(r) = of(sc, *k) else { continue };
            match &r.checks {
                Ok(checks) => {
                    let _ = writeln!(s, "**{}**\n", k.name());
                    for c in checks {
                        let _ = writeln!(s, "- {} {}: {}", verdict(c), c.name, c.detail);
                    }
                    let _ =
                        writeln!(s, "\n![{} through {}]({}/{}.svg)\n", sc.name, k.name(), sc.name, k.name());
                }
                Err(e) => {
                    let _ = writeln!(s, "**{}**: not run: {e}\n", k.name());
                }
            }
        }
    }
    s
}

/// `report.json`: `passed` is Tripline's verdict; each result has its own.
pub fn json(results: &[Result], mode: &str) -> Value {
    json!({
        "mode": mode,
        "passed": results.iter().filter(|r| r.proxy == Kind::Tripline).all(Result::passed),
        "scenarios": results.iter().map(|r| json!({
            "name": r.scenario.name,
            "proxy": r.proxy.name(),
            "passed": r.passed(),
            "error": r.checks.as_ref().err(),
            "checks": r.checks.as_ref().map(|c| c.iter().map(|c| json!({"name": c.name, "pass": c.pass, "applicable": c.applicable, "detail": c.detail})).collect::<Vec<_>>()).unwrap_or_default(),
            "series": r.series,
        })).collect::<Vec<_>>(),
    })
}
