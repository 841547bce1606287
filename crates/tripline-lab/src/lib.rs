//! The pressure lab (`tripline lab`): the brief's failure modes as reproducible scenarios.
//! Each scenario starts its own fault upstreams ([`fault`]), the real `tripline` binary with
//! one operator's policy ([`config`], [`proxy`]), and an open-loop load generator
//! ([`load`]); it watches from three sides (clients, upstreams, the admin API:
//! [`observed`]) and checks what a user would ([`scenarios`]); the run writes a report with
//! plots ([`report`], [`plot`]).
//!
//! Everything runs on one machine's loopback: the figures are for comparing proxies and
//! runs in one sitting, not absolute capacity.

#![forbid(unsafe_code)]

pub mod config;
pub mod fault;
pub mod load;
pub mod observed;
pub mod peers;
pub mod plot;
pub mod proxy;
pub mod report;
pub mod scenarios;
pub mod timeline;

use std::io::{IsTerminal, Write as _};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::fault::FaultUpstream;
use crate::load::Load;
use crate::observed::Observed;
use crate::peers::Kind;
use crate::proxy::{Running, HOST};
use crate::scenarios::{Mode, Scenario, Spec};
use crate::timeline::Epoch;

/// What `tripline lab run` was asked.
pub struct Options {
    /// Scenario names; empty: all (or the short suite with `short`).
    pub names: Vec<String>,
    /// Proxies to run each scenario through (`tripline`, `envoy`, `nginx`, `haproxy`).
    pub peers: Vec<String>,
    pub out: PathBuf,
    pub short: bool,
    /// The `tripline` binary to test.
    pub tripline: PathBuf,
}

/// `tripline lab list`.
pub fn list() -> String {
    let mut s = String::new();
    for sc in scenarios::ALL {
        let short = if sc.in_short_suite { " [short suite]" } else { "" };
        s.push_str(&format!("{:<24} {}{short}\n{:<24} {}\n", sc.name, sc.title, "", sc.about));
    }
    s
}

/// Runs the scenarios through each proxy; returns whether every check of Tripline's passed
/// (the peers' results are the comparison, not the verdict). The report is written to
/// `opts.out` whatever the outcome; `Err` is for a run that could not be made at all.
pub async fn run(opts: &Options) -> Result<bool, String> {
    let chosen = scenarios::select(&opts.names, opts.short)?;
    let kinds = opts.peers.iter().map(|p| Kind::parse(p)).collect::<Result<Vec<_>, _>>()?;
    let mode = Mode { short: opts.short };
    std::fs::create_dir_all(&opts.out).map_err(|e| format!("creating {}: {e}", opts.out.display()))?;
    let mut binaries = Vec::new();
    let mut missing = Vec::new();
    for k in kinds {
        match k {
            Kind::Tripline => binaries.push((k, opts.tripline.clone())),
            peer => match peer.find() {
                Some(bin) => binaries.push((peer, bin)),
                None => missing.push(peer.name()),
            },
        }
    }
    let mut results = Vec::new();
    for sc in chosen {
        let dir = opts.out.join(sc.name);
        std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        for (kind, bin) in &binaries {
            let Some(r) = run_one(sc, mode, *kind, bin, &dir).await else { continue };
            print_result(&r);
            results.push(r);
        }
    }
    let mode_name = if opts.short { "short" } else { "full" };
    let mut header = format!(
        "Mode: {mode_name} ({} requests a second at full pressure); {} cores; {}. Command: `tripline lab run{}{}{}`.",
        mode.rps(),
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        binaries.iter().map(|(k, b)| format!("{} = {}", k.name(), b.display())).collect::<Vec<_>>().join(", "),
        if opts.short { " --short" } else { "" },
        if opts.peers.len() > 1 || opts.peers.first().is_some_and(|p| p != "tripline") {
            format!(" --peers {}", opts.peers.join(","))
        } else {
            String::new()
        },
        opts.names.iter().map(|n| format!(" {n}")).collect::<String>(),
    );
    if !missing.is_empty() {
        let msg = format!(
            "Not installed, so not run: {} (`../shared/bench/setup-peers.sh` installs them).",
            missing.join(", ")
        );
        eprintln!("{msg}");
        header.push_str(&format!("\n\n{msg}"));
    }
    let write = |name: &str, text: String| {
        let p = opts.out.join(name);
        std::fs::write(&p, text).map_err(|e| format!("writing {}: {e}", p.display()))
    };
    write("report.md", report::markdown(&results, &header))?;
    let json = report::json(&results, mode_name);
    write("report.json", serde_json::to_string_pretty(&json).unwrap_or_default())?;
    eprintln!("report: {}", opts.out.join("report.md").display());
    Ok(results.iter().filter(|r| r.proxy == Kind::Tripline).all(report::Result::passed))
}

fn print_result(r: &report::Result) {
    let verdict = if r.passed() { "pass" } else { "FAIL" };
    eprintln!("{:<24} {:<9} {verdict}", r.scenario.name, r.proxy.name());
    match &r.checks {
        Ok(checks) => {
            for c in checks {
                let v = match (c.applicable, c.pass) {
                    (false, _) => "n/a ",
                    (true, true) => "ok  ",
                    (true, false) => "FAIL",
                };
                eprintln!("  {v} {}: {}", c.name, c.detail);
            }
        }
        Err(e) => eprintln!("  not run: {e}"),
    }
}

/// A progress bar on stderr when it is a terminal: the scenario and how far into it.
fn progress(label: String, length: Duration) -> impl Fn(Duration) + Sync {
    let tty = std::io::stderr().is_terminal();
    move |at: Duration| {
        if !tty {
            return;
        }
        let frac = (at.as_secs_f64() / length.as_secs_f64()).clamp(0.0, 1.0);
        let filled = (frac * 30.0) as usize;
        eprint!(
            "\r{label:<34} [{}{}] {:>5.1}/{:.0} s",
            "#".repeat(filled),
            "-".repeat(30 - filled),
            at.as_secs_f64(),
            length.as_secs_f64()
        );
        let _ = std::io::stderr().flush();
    }
}

/// Runs one scenario through one proxy; `None` for a call chain through a peer (the chain is
/// of Tripline hops).
async fn run_one(
    sc: &'static Scenario,
    mode: Mode,
    kind: Kind,
    exe: &Path,
    dir: &Path,
) -> Option<report::Result> {
    let spec = (sc.spec)(mode);
    if spec.hops > 1 && kind != Kind::Tripline {
        return None;
    }
    Some(run_spec(sc, &spec, mode, kind, exe, dir).await)
}

async fn run_spec(
    sc: &'static Scenario,
    spec: &Spec,
    mode: Mode,
    kind: Kind,
    exe: &Path,
    dir: &Path,
) -> report::Result {
    let fail = |e: String| report::Result {
        scenario: sc,
        proxy: kind,
        checks: Err(e),
        series: serde_json::Value::Null,
    };
    let epoch = Epoch::default();
    let length = spec.length();
    let mut upstreams = Vec::new();
    for (i, s) in spec.upstreams.iter().enumerate() {
        match FaultUpstream::start(s.clone(), epoch.clone(), i as u64 + 1, length).await {
            Ok(u) => upstreams.push(u),
            Err(e) => return fail(format!("starting a fault upstream: {e}")),
        }
    }
    let addrs: Vec<_> = upstreams.iter().map(|u| u.addr).collect();
    // The proxies from the upstreams' side: the last hop first, each in front of the one
    // started before it; each samples its own cluster.
    let mut hops: Vec<Running> = Vec::new();
    let mut samplers = Vec::new();
    for h in 0..spec.hops {
        let next = hops.last().map_or(addrs.clone(), |p| vec![p.listen]);
        let hop_dir =
            if spec.hops > 1 { dir.join(format!("hop{}", spec.hops - h)) } else { dir.to_path_buf() };
        if let Err(e) = std::fs::create_dir_all(&hop_dir) {
            return fail(format!("creating {}: {e}", hop_dir.display()));
        }
        let proxy = match Running::start(kind, exe, &spec.policy, &next, &hop_dir).await {
            Ok(t) => t,
            Err(e) => return fail(e),
        };
        samplers
            .push(proxy.admin.map(|admin| tokio::spawn(proxy::sample(admin, next, epoch.clone(), length))));
        hops.push(proxy);
    }
    let first = hops.last().expect("at least one hop");
    let load = Load {
        target: first.listen,
        host: HOST,
        stages: spec.stages.clone(),
        timeout: Duration::from_secs(5),
        max_in_flight: 20_000,
    };
    let label = format!("{} / {}", sc.name, kind.name());
    let records = load::run(&load, &epoch, &progress(label, length)).await;
    if std::io::stderr().is_terminal() {
        eprint!("\r{:100}\r", "");
    }
    let mut sampled = Vec::new();
    for s in samplers {
        sampled.push(match s {
            Some(s) => s.await.unwrap_or_default(),
            None => Vec::new(),
        });
    }
    for p in hops {
        p.stop().await;
    }
    // The last hop's samples, then the others' from the clients' side.
    let samples = sampled.remove(0);
    sampled.reverse();
    let observed = Observed {
        records,
        attempts: upstreams.iter().map(FaultUpstream::attempts).collect(),
        samples,
        upper: sampled,
        state: kind == Kind::Tripline,
    };
    let checks = (sc.checks)(spec, &observed);
    let (panels, series) = report::panels(spec, &observed);
    let title =
        format!("{} through {} ({})", sc.title, kind.name(), if mode.short { "short" } else { "full" });
    let svg = plot::svg(&title, length.as_secs_f64(), &panels);
    if let Err(e) = std::fs::write(dir.join(format!("{}.svg", kind.name())), svg) {
        return fail(format!("writing the plot: {e}"));
    }
    report::Result { scenario: sc, proxy: kind, checks: Ok(checks), series }
}
