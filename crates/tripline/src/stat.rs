//! `tripline stat`: a terminal table of every cluster and endpoint with traffic (success rate,
//! requests per second, p50/p99, requests in flight, breaker and ejection state), like
//! `linkerd viz stat`, from two snapshots of the admin API's `/stats` taken `--interval`
//! apart; `--watch` redraws it every interval. The demo draws its live summary with the same
//! [`table`].
//!
//! Rates and percentiles are over the interval only (the difference of two snapshots), so
//! a breaker that opened a minute ago does not hide behind an hour of successes. Percentiles
//! interpolate within the histogram's bucket, as Prometheus' `histogram_quantile` does.

use std::io::{IsTerminal, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Args;
use serde_json::Value;

#[derive(Args)]
pub struct StatArgs {
    /// The admin API of the proxy to look at.
    #[arg(long, default_value = "127.0.0.1:15000", value_name = "ADDR")]
    pub admin: SocketAddr,
    /// Redraw the table every interval until interrupted.
    #[arg(long)]
    pub watch: bool,
    /// The time the rates and percentiles are measured over (`2s`, `500ms`, `1m`).
    #[arg(long, default_value = "2s", value_parser = parse_interval, value_name = "DURATION")]
    pub interval: Duration,
    /// Every cluster, also those without traffic.
    #[arg(long)]
    pub all: bool,
}

fn parse_interval(s: &str) -> Result<Duration, String> {
    match tripline_config::decode::parse_duration(s) {
        Ok(d) if d >= Duration::from_millis(100) => Ok(d),
        Ok(_) => Err("at least 100ms".into()),
        Err(e) => Err(e.to_string()),
    }
}

pub fn run(args: StatArgs) -> ExitCode {
    let tty = std::io::stdout().is_terminal();
    let path = if args.all { "/stats?all" } else { "/stats" };
    let mut before = match snapshot(args.admin, path) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("tripline stat: {e}");
            return ExitCode::FAILURE;
        }
    };
    loop {
        std::thread::sleep(args.interval);
        let after = match snapshot(args.admin, path) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("tripline stat: {e}");
                return ExitCode::FAILURE;
            }
        };
        let text = table(&rows(&before.1, &after.1, after.0.duration_since(before.0)));
        let mut out = std::io::stdout().lock();
        // Only a terminal gets the escape that clears it; a pipe or a file gets plain tables.
        let clear = if args.watch && tty { "\x1b[2J\x1b[H" } else { "" };
        let _ = write!(out, "{clear}{text}");
        if args.watch && !tty {
            let _ = writeln!(out);
        }
        let _ = out.flush();
        if !args.watch {
            return ExitCode::SUCCESS;
        }
        before = after;
    }
}

/// `GET path` on the admin API, and when the answer came.
fn snapshot(admin: SocketAddr, path: &str) -> Result<(Instant, Value), String> {
    let fail = |e: std::io::Error| {
        format!(
            "cannot read {path} from the admin API at {admin}: {e} (is `tripline run` there? use --admin)"
        )
    };
    let mut s = TcpStream::connect_timeout(&admin, Duration::from_secs(2)).map_err(fail)?;
    s.set_read_timeout(Some(Duration::from_secs(10))).map_err(fail)?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n", admin.ip()).map_err(fail)?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).map_err(fail)?;
    let at = Instant::now();
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").ok_or_else(|| format!("{admin} did not answer HTTP"))?;
    if !head.starts_with("HTTP/1.1 200") {
        return Err(format!("{admin}{path}: {}", head.lines().next().unwrap_or("")));
    }
    let value =
        serde_json::from_str(body).map_err(|e| format!("{admin}{path}: not the JSON expected: {e}"))?;
    Ok((at, value))
}

/// One line of the table.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// A cluster's name, or an endpoint's (its `instance` label, else its address).
    pub name: String,
    pub endpoint: bool,
    /// Over the interval; `None` without requests.
    pub success: Option<f64>,
    pub rps: f64,
    pub p50: Option<f64>,
    pub p99: Option<f64>,
    pub active: u64,
    pub breaker: String,
    pub outlier: String,
}

/// The rows for the clusters in `after` (with their endpoints below each), against `before`
/// taken `elapsed` earlier.
pub fn rows(before: &Value, after: &Value, elapsed: Duration) -> Vec<Row> {
    let secs = elapsed.as_secs_f64().max(1e-3);
    let bounds: Vec<f64> =
        after["duration_buckets_le"].as_array().into_iter().flatten().filter_map(Value::as_f64).collect();
    let find = |list: &Value, key: &str, name: &str| -> Value {
        list.as_array().into_iter().flatten().find(|c| c[key] == name).cloned().unwrap_or(Value::Null)
    };
    let delta = |a: &Value, b: &Value, key: &str| {
        a[key].as_u64().unwrap_or(0).saturating_sub(b[key].as_u64().unwrap_or(0))
    };
    let mut out = Vec::new();
    for c in after["clusters"].as_array().into_iter().flatten() {
        let name = c["name"].as_str().unwrap_or("?");
        let was = find(&before["clusters"], "name", name);
        let requests = delta(c, &was, "requests");
        let failed = delta(c, &was, "server_errors") + delta(c, &was, "refused");
        let hist = histogram_delta(&c["duration_counts"], &was["duration_counts"]);
        out.push(Row {
            name: name.to_string(),
            endpoint: false,
            success: ratio(requests, failed),
            rps: requests as f64 / secs,
            p50: quantile(&hist, &bounds, 0.5),
            p99: quantile(&hist, &bounds, 0.99),
            active: c["active"].as_u64().unwrap_or(0),
            breaker: c["breaker"].as_str().unwrap_or("-").to_string(),
            outlier: String::new(),
        });
        for e in c["endpoints"].as_array().into_iter().flatten() {
            let address = e["address"].as_str().unwrap_or("?");
            let was = find(&was["endpoints"], "address", address);
            let attempts = delta(e, &was, "attempts");
            let hist = histogram_delta(&e["duration_counts"], &was["duration_counts"]);
            out.push(Row {
                name: e["name"].as_str().unwrap_or(address).to_string(),
                endpoint: true,
                success: ratio(attempts, delta(e, &was, "failures")),
                rps: attempts as f64 / secs,
                p50: quantile(&hist, &bounds, 0.5),
                p99: quantile(&hist, &bounds, 0.99),
                active: e["active"].as_u64().unwrap_or(0),
                breaker: e["breaker"].as_str().unwrap_or("-").to_string(),
                outlier: e["outlier"].as_str().unwrap_or("-").to_string(),
            });
        }
    }
    out
}

fn ratio(total: u64, failed: u64) -> Option<f64> {
    (total > 0).then(|| 1.0 - failed.min(total) as f64 / total as f64)
}

fn histogram_delta(after: &Value, before: &Value) -> Vec<u64> {
    let now: Vec<u64> = after.as_array().into_iter().flatten().map(|v| v.as_u64().unwrap_or(0)).collect();
    let was: Vec<u64> = before.as_array().into_iter().flatten().map(|v| v.as_u64().unwrap_or(0)).collect();
    now.iter().enumerate().map(|(i, n)| n.saturating_sub(was.get(i).copied().unwrap_or(0))).collect()
}

/// The `q` quantile (seconds) of a histogram given each bucket's own count (`counts[i]` for
/// `bounds[i-1] < x <= bounds[i]`, the last above every bound), interpolating linearly
/// within the bucket; the largest bound when it falls above it; `None` when empty.
pub fn quantile(counts: &[u64], bounds: &[f64], q: f64) -> Option<f64> {
    let total: u64 = counts.iter().sum();
    if total == 0 || bounds.is_empty() {
        return None;
    }
    let rank = q * total as f64;
    let mut seen = 0u64;
    for (i, &n) in counts.iter().enumerate() {
        if n > 0 && (seen + n) as f64 >= rank {
            let Some(&hi) = bounds.get(i) else { return bounds.last().copied() };
            let lo = if i == 0 { 0.0 } else { bounds[i - 1] };
            return Some(lo + (hi - lo) * ((rank - seen as f64) / n as f64).clamp(0.0, 1.0));
        }
        seen += n;
    }
    bounds.last().copied()
}

/// The table, a header and one line per row (endpoints indented under their cluster).
pub fn table(rows: &[Row]) -> String {
    let names: Vec<String> =
        rows.iter().map(|r| if r.endpoint { format!("  {}", r.name) } else { r.name.clone() }).collect();
    let width = names.iter().map(|n| n.chars().count()).max().unwrap_or(0).max("CLUSTER / ENDPOINT".len());
    let mut out = format!(
        "{:<width$}  {:>8}  {:>8}  {:>9}  {:>9}  {:>6}  {:<9}  {}\n",
        "CLUSTER / ENDPOINT", "SUCCESS", "RPS", "P50", "P99", "ACTIVE", "BREAKER", "OUTLIER"
    );
    if rows.is_empty() {
        out.push_str("(no cluster has had traffic yet; --all lists every one)\n");
    }
    for (r, name) in rows.iter().zip(&names) {
        let success = r.success.map_or("-".to_string(), |s| format!("{:.2}%", s * 100.0));
        let line = format!(
            "{name:<width$}  {success:>8}  {:>8.1}  {:>9}  {:>9}  {:>6}  {:<9}  {}",
            r.rps,
            latency(r.p50),
            latency(r.p99),
            r.active,
            r.breaker,
            r.outlier
        );
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

fn latency(s: Option<f64>) -> String {
    match s {
        None => "-".into(),
        Some(s) if s < 1e-3 => format!("{:.0}µs", s * 1e6),
        Some(s) if s < 1.0 => format!("{:.1}ms", s * 1e3),
        Some(s) => format!("{s:.2}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const BOUNDS: [f64; 3] = [0.01, 0.1, 1.0];

    #[test]
    fn quantiles_interpolate_within_the_bucket_and_stop_at_the_largest_bound() {
        // 100 in (0, 10ms], 100 in (10ms, 100ms].
        let c = [100, 100, 0, 0];
        assert_eq!(quantile(&c, &BOUNDS, 0.5), Some(0.01));
        let p99 = quantile(&c, &BOUNDS, 0.99).unwrap();
        assert!((p99 - (0.01 + 0.09 * 0.98)).abs() < 1e-12, "{p99}");
        assert_eq!(quantile(&[0, 0, 0, 5], &BOUNDS, 0.5), Some(1.0), "above every bound: the largest");
        assert_eq!(quantile(&[0, 0, 0, 0], &BOUNDS, 0.5), None);
    }

    #[test]
    fn rows_are_over_the_interval_only() {
        let snap = |requests: u64, errors: u64, attempts: [u64; 2], failures: [u64; 2], hist: [u64; 4]| {
            json!({"duration_buckets_le": BOUNDS, "clusters": [{
            "name": "outbound|80||shop", "requests": requests, "server_errors": errors, "refused": 0,
            "active": 2, "breaker": "closed", "duration_counts": hist,
            "endpoints": [
                {"address": "10.0.0.1:80", "name": null, "attempts": attempts[0], "failures": failures[0], "active": 1,
                 "duration_counts": null, "outlier": "healthy", "breaker": null},
                {"address": "10.0.0.2:80", "name": "flaky", "attempts": attempts[1], "failures": failures[1], "active": 1,
                 "duration_counts": hist, "outlier": "ejected", "breaker": null},
            ]}]})
        };
        // An hour of successes before; in the 2 s, 100 requests of which 50 failed.
        let before = snap(100_000, 0, [50_000, 50_000], [0, 0], [100_000, 0, 0, 0]);
        let after = snap(100_100, 50, [50_050, 50_050], [0, 50], [100_050, 50, 0, 0]);
        let r = rows(&before, &after, Duration::from_secs(2));
        assert_eq!(r.len(), 3);
        assert_eq!((r[0].success, r[0].rps), (Some(0.5), 50.0));
        assert_eq!(r[0].p50, Some(0.01));
        assert_eq!((r[1].name.as_str(), r[1].success, r[1].p50), ("10.0.0.1:80", Some(1.0), None));
        assert_eq!(
            (r[2].name.as_str(), r[2].success, r[2].outlier.as_str()),
            ("flaky", Some(0.0), "ejected")
        );
        let t = table(&r);
        assert!(t.lines().next().unwrap().starts_with("CLUSTER / ENDPOINT"));
        assert!(t.contains("  flaky"), "{t}");
        assert!(t.contains("50.00%") && t.contains("0.00%") && t.contains("ejected"), "{t}");
        assert!(!t.contains('\x1b'), "no escapes in the table itself");
    }
}
