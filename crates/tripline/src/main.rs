//! `tripline`: the command line. `run` serves a config, `validate` checks one, `demo` runs an
//! embedded config against built-in demo upstreams.

mod alloc;
mod crds;
mod demo;
mod explain;
mod fd_limit;
mod iptables;
mod lab;
mod low_priority;
mod otlp;
mod run;
mod stat;
mod validate;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// mimalloc: per-thread free lists suit a proxy's many small, short-lived allocations (header
/// maps, futures) better than glibc's malloc; see docs/benchmarks.md for the measurement, and
/// `alloc` for why it is called directly.
#[global_allocator]
static ALLOC: alloc::MiMalloc = alloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "tripline",
    version,
    about = "A service-mesh data plane configured with the Istio networking API",
    long_about = "Tripline is a sidecar or gateway proxy configured with Istio's Gateway, ServiceEntry, \
                  VirtualService and DestinationRule. It protects services from each other with \
                  connection-pool limits, timeouts, load balancing, outlier ejection with probing, \
                  circuit breakers (a Tripline ResiliencePolicy) and budgeted retries, and every \
                  response it refuses carries the reason in x-tripline-reason."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy with a configuration (files or directories of multi-document YAML).
    Run(Box<RunArgs>),
    /// Check a configuration without running it. Exit code 0: clean; 1: warnings only; 2: errors.
    Validate(validate::ValidateArgs),
    /// Run an embedded demo: the proxy plus three built-in upstreams (steady, flaky, slow).
    Demo(DemoArgs),
    /// Set (or remove) the iptables rules that send a pod's TCP through its sidecar.
    Iptables(iptables::IptablesArgs),
    /// Print the CustomResourceDefinitions of the kinds Tripline reads (for `kubectl apply -f -`).
    Crds,
    /// A table of every cluster and endpoint with traffic (success rate, requests per second,
    /// p50/p99, breaker and ejection state), from a running proxy's admin API.
    Stat(stat::StatArgs),
    /// The pressure lab: the brief's failure modes (healthy spikes, hard failures, recovery,
    /// total failure, the ejection cap) run against fault upstreams with pass/fail checks.
    Lab(lab::LabArgs),
}

#[derive(Args, Clone)]
pub struct LogArgs {
    /// Log level: error, warn, info, debug, trace or off; or a filter of comma-separated
    /// directives, each a level or `target=level` (e.g. `info,tripline_proxy=debug`).
    #[arg(long, default_value = "info", env = "TRIPLINE_LOG", value_name = "LEVEL|FILTER", value_parser = parse_log_filter)]
    pub log_level: String,
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

#[derive(Copy, Clone, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Args)]
pub struct RunArgs {
    /// Config file or directory (every *.yaml / *.yml inside). Repeatable.
    #[arg(short = 'c', long = "config", required_unless_present = "kubernetes", value_name = "PATH")]
    pub config: Vec<PathBuf>,
    /// Read Services, EndpointSlices and the mesh's custom resources from the Kubernetes API
    /// server too (the kubeconfig KUBECONFIG names, else the pod's service account), beside
    /// any `-c` files; as Istio's sidecar, every Service is routable on the mesh listener.
    #[arg(long)]
    pub kubernetes: bool,
    /// Where `tripline iptables` redirects inbound TCP (e.g. 0.0.0.0:15006): each connection
    /// is served by the Sidecar ingress port it was for, which then binds no port of its own;
    /// one for another port goes on to where it was going.
    #[arg(long, value_name = "ADDR")]
    pub inbound_capture: Option<SocketAddr>,
    /// With --kubernetes: watch this namespace only (default: every namespace).
    #[arg(long, value_name = "NAMESPACE", requires = "kubernetes")]
    pub namespace: Option<String>,
    /// With --kubernetes: write the `Accepted` condition of the custom resources Tripline
    /// reads: `False` with the error on an invalid one, `True` once it is fixed. Give it to
    /// one proxy (the gateway), not every sidecar.
    #[arg(long, requires = "kubernetes")]
    pub report_status: bool,
    /// Admin API address (/ready, /metrics, /clusters, /config_dump).
    #[arg(long, default_value = "127.0.0.1:15000", value_name = "ADDR")]
    pub admin: SocketAddr,
    /// A file holding the bearer token that the admin API's state-changing endpoints
    /// (`POST /breakers/...`) then want in `Authorization: Bearer <token>`. Read again for
    /// each such request: rewrite the file to rotate the token.
    #[arg(long, value_name = "PATH")]
    pub admin_token_file: Option<PathBuf>,
    /// Worker threads, each with its own event loop; connections go to the least loaded
    /// [default: number of cores].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    pub workers: Option<u16>,
    /// Where the mesh listener binds (VirtualServices without `gateways`).
    #[arg(long, default_value = "127.0.0.1:15001", value_name = "ADDR")]
    pub mesh_bind: SocketAddr,
    /// How long SIGTERM waits for in-flight requests before exiting.
    #[arg(long, default_value = "5s", value_parser = parse_duration, value_name = "DURATION")]
    pub drain_timeout: Duration,
    /// How often config files are checked for changes (SIGHUP reloads at once).
    #[arg(long, default_value = "1s", value_parser = parse_duration, value_name = "DURATION")]
    pub watch_interval: Duration,
    /// Access log, one line per HTTP request: stdout, stderr or a file path (opened again on
    /// SIGUSR1, for log rotation) [default: off].
    #[arg(long, value_name = "TARGET")]
    pub access_log: Option<tripline_proxy::access_log::Target>,
    /// Also expose Istio's standard metrics on /metrics (istio_requests_total,
    /// istio_request_duration_milliseconds, istio_tcp_*), so Istio's dashboards and queries
    /// work unchanged; `source_workload` is the `app` of --workload-labels.
    #[arg(long)]
    pub istio_metrics: bool,
    /// Export a span per sampled request, and one per attempt it made upstream, with OTLP to
    /// this collector: a base URL such as http://127.0.0.1:4318 (HTTP/protobuf; `/v1/traces`
    /// is added) or http://127.0.0.1:4317 with `--otlp-protocol grpc`. Without it,
    /// OTEL_EXPORTER_OTLP_TRACES_ENDPOINT or OTEL_EXPORTER_OTLP_ENDPOINT turn traces on, as
    /// in OpenTelemetry's SDKs [default: off].
    #[arg(long, value_name = "URL")]
    pub otlp_endpoint: Option<String>,
    /// `grpc` or `http/protobuf` [default: OTEL_EXPORTER_OTLP_TRACES_PROTOCOL,
    /// OTEL_EXPORTER_OTLP_PROTOCOL, else http/protobuf].
    #[arg(long, value_name = "PROTOCOL")]
    pub otlp_protocol: Option<String>,
    /// The share of the traces that start here to record, 0 to 1 (parent-based: a caller's
    /// decision stands) [default: OTEL_TRACES_SAMPLER and OTEL_TRACES_SAMPLER_ARG, else
    /// parentbased_always_on].
    #[arg(long, value_parser = parse_sample_ratio, value_name = "RATIO")]
    pub trace_sample: Option<f64>,
    /// The access log's lines: `json`, `text` (Envoy's default format), or an Envoy-style
    /// format string such as `%START_TIME% %REQ(:METHOD)% %REQ(:PATH)% %RESPONSE_CODE% %DURATION%`.
    #[arg(long, default_value = "json", value_name = "FORMAT", requires = "access_log")]
    pub access_log_format: tripline_proxy::access_log::Format,
    /// The share of successful requests logged, 0 to 1; errors (5xx, Tripline's own answers,
    /// cut responses, clients that left) always are.
    #[arg(long, default_value_t = 1.0, value_parser = parse_ratio, value_name = "RATIO", requires = "access_log")]
    pub access_log_sample: f64,
    /// Close a client connection that has had no request in flight this long: the time a
    /// client gets to send a complete request head after connecting or after its previous
    /// response (slow-loris protection; idle HTTP/1.1 keep-alive connections close too).
    /// HTTP/2 connections, once they have made a request, are only closed by the client.
    #[arg(long, default_value = "30s", value_parser = parse_duration, value_name = "DURATION")]
    pub header_timeout: Duration,
    /// End a request whose bytes have moved neither way this long (Envoy's
    /// `stream_idle_timeout`): a client that stops reading its response, or sends its body a
    /// byte at a time, would otherwise hold an upstream connection as long as it likes.
    /// Waiting for the response head: `408 stream-idle-timeout`; once it is under way the
    /// response is cut (HTTP/2: the stream is reset, the connection serves on). `0s` turns it off.
    #[arg(long, default_value = "5m", value_parser = parse_duration, value_name = "DURATION")]
    pub stream_idle_timeout: Duration,
    /// The largest request header a client may send, in KiB; a larger one gets 431. HTTP/1.1
    /// counts the header fields' names and values, HTTP/2 the header list as
    /// SETTINGS_MAX_HEADER_LIST_SIZE does (which Tripline advertises).
    #[arg(long, default_value_t = 60, value_name = "KIB",
        value_parser = clap::value_parser!(u32).range(1..=i64::from(tripline_proxy::header_limits::HeaderLimits::MAX_KB)))]
    pub max_request_headers_kb: u32,
    /// The most header fields a request may have (HTTP/1.1's Host among them; HTTP/2's
    /// pseudo-header fields not counted); more get 431.
    #[arg(long, default_value_t = 100, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub max_request_headers: u32,
    /// How often `resolution: DNS` hosts are re-resolved.
    #[arg(long, default_value = "30s", value_parser = parse_duration, value_name = "DURATION")]
    pub dns_refresh: Duration,
    #[command(flatten)]
    pub workload: WorkloadArgs,
    #[command(flatten)]
    pub log: LogArgs,
}

/// The workload this proxy runs for: what a VirtualService match's `sourceLabels` and
/// `sourceNamespace` are checked against (a match naming them never applies without them),
/// which AuthorizationPolicy, PeerAuthentication and Sidecar apply, and where its TLS
/// credentials are (what a `credentialName` names).
#[derive(Args, Clone, Default)]
pub struct WorkloadArgs {
    /// The workload's labels, `key=value,key=value` (Kubernetes gives them later).
    #[arg(long, value_parser = parse_labels, value_name = "LABELS")]
    pub workload_labels: Option<std::collections::BTreeMap<String, String>>,
    /// The workload's namespace.
    #[arg(long, value_name = "NAMESPACE")]
    pub workload_namespace: Option<String>,
    /// Where a TLS setting's `credentialName: NAME` is read from: the directory DIR/NAME/ with
    /// the Kubernetes Secret's keys as files (tls.crt, tls.key, ca.crt), until Secrets are read.
    #[arg(long, value_name = "DIR")]
    pub credentials_dir: Option<PathBuf>,
    /// The workload's own identity for ISTIO_MUTUAL: a directory holding an X.509 SVID as
    /// SPIRE's spiffe-helper (svid.pem, svid_key.pem, svid_bundle.pem), cert-manager's
    /// csi-driver-spiffe (tls.crt, tls.key, ca.crt) or Istio (cert-chain.pem, key.pem,
    /// root-cert.pem) write it; re-read when the files change.
    #[arg(long, value_name = "DIR")]
    pub identity_dir: Option<PathBuf>,
}

impl WorkloadArgs {
    pub fn apply(&self, opts: &mut tripline_config::LoadOptions) {
        opts.workload_labels = self.workload_labels.clone().unwrap_or_default();
        opts.workload_namespace = self.workload_namespace.clone();
        opts.credentials_dir = self.credentials_dir.clone();
        opts.identity_dir = self.identity_dir.clone();
    }
}

/// `key=value,key=value`.
fn parse_labels(text: &str) -> Result<std::collections::BTreeMap<String, String>, String> {
    text.split(',')
        .filter(|kv| !kv.trim().is_empty())
        .map(|kv| match kv.split_once('=') {
            Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.trim().to_string())),
            _ => Err(format!("`{kv}` is not a label: expected key=value, e.g. app=checkout,version=v2")),
        })
        .collect()
}

#[derive(Args)]
pub struct DemoArgs {
    /// Where the demo gateway listens.
    #[arg(long, default_value = "127.0.0.1:18000", value_name = "ADDR")]
    pub listen: SocketAddr,
    /// Admin API address.
    #[arg(long, default_value = "127.0.0.1:15000", value_name = "ADDR")]
    pub admin: SocketAddr,
    /// Built-in client traffic in requests per second (0 turns it off).
    #[arg(long, default_value_t = 20)]
    pub rps: u32,
    /// Stop after this long (default: run until Ctrl-C).
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    pub duration: Option<Duration>,
    /// Print the config the demo runs (with --listen filled in) and exit.
    #[arg(long)]
    pub print_config: bool,
    #[command(flatten)]
    pub log: LogArgs,
}

/// Parses `1.5s`, `250ms`, `2m`, `1h`, `100us`.
pub fn parse_ratio(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(r) if r > 0.0 && r <= 1.0 => Ok(r),
        _ => Err(format!(
            "`{s}`: a ratio above 0 and at most 1 (0.01 logs one successful request in a hundred)"
        )),
    }
}

fn parse_sample_ratio(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
        _ => Err(format!("`{s}`: a ratio from 0 to 1 (0.01 records one trace in a hundred)")),
    }
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num.parse().map_err(|_| format!("`{s}` is not a duration (try 500ms, 2s, 1m)"))?;
    let secs = match unit {
        "h" => n * 3600.0,
        "m" => n * 60.0,
        "s" | "" => n,
        "ms" => n / 1e3,
        "us" | "µs" => n / 1e6,
        "ns" => n / 1e9,
        _ => return Err(format!("`{s}` has an unknown unit (use h, m, s, ms, us)")),
    };
    if !secs.is_finite() || secs < 0.0 {
        return Err(format!("`{s}` is not a duration"));
    }
    Ok(Duration::from_secs_f64(secs))
}

const LOG_LEVELS: [&str; 6] = ["error", "warn", "info", "debug", "trace", "off"];

/// Checks a `--log-level` / `TRIPLINE_LOG` value: a level, or tracing filter directives in
/// which every bare word is a level. tracing reads a bare word that is not a level as a target
/// name (`debugg` logs only a target called `debugg`, that is nothing), so a typo would turn
/// all logging off without a word; here it is a usage error instead.
/// An empty value (`TRIPLINE_LOG=`) means the default, `info`.
pub fn parse_log_filter(s: &str) -> Result<String, String> {
    if s.trim().is_empty() {
        return Ok("info".to_string());
    }
    let directives: Vec<&str> = s.split(',').map(str::trim).collect();
    let why = directives.iter().find_map(|&d| {
        if d.is_empty() {
            Some("it has an empty directive (a comma too many)".to_string())
        } else if !d.contains(['=', '[']) && !LOG_LEVELS.iter().any(|l| d.eq_ignore_ascii_case(l)) {
            Some(format!("`{d}` is not a level"))
        } else {
            d.parse::<tracing_subscriber::filter::Directive>().err().map(|e| format!("`{d}`: {e}"))
        }
    });
    // Passed on trimmed: tracing's parser trims a directive but then slices it by the trimmed
    // positions, so ` hyper=off` (after `warn,`) would fail there and fall back to `info`.
    let filter = directives.join(",");
    let why =
        why.or_else(|| tracing_subscriber::EnvFilter::try_new(&filter).err().map(|e| format!("`{s}`: {e}")));
    match why {
        None => Ok(filter),
        Some(why) => Err(format!(
            "{why}; --log-level and TRIPLINE_LOG take a level ({}) or directives like `info,tripline_proxy=debug`",
            LOG_LEVELS.join(", ")
        )),
    }
}

pub fn init_logging(log: &LogArgs) {
    // `parse_log_filter` has checked the value with the same parser; should it still fail,
    // say so rather than log at another level without a word.
    let filter = tracing_subscriber::EnvFilter::try_new(&log.log_level).unwrap_or_else(|e| {
        eprintln!("tripline: --log-level `{}`: {e}; logging at info", log.log_level);
        tracing_subscriber::EnvFilter::new("info")
    });
    let ansi = colour(std::io::IsTerminal::is_terminal(&std::io::stderr()), std::env::var_os("NO_COLOR"));
    let builder =
        tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    match log.log_format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => builder.init(),
    }
}

/// Whether log lines are coloured: only on a terminal, and not when `NO_COLOR` is set to
/// anything but the empty string (no-color.org). Escapes in a file or a pipe are noise.
fn colour(terminal: bool, no_color: Option<std::ffi::OsString>) -> bool {
    terminal && no_color.is_none_or(|v| v.is_empty())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run(args) => run::run(*args),
        Command::Iptables(args) => iptables::run(args),
        Command::Crds => {
            print!("{}", crds::yaml());
            ExitCode::SUCCESS
        }
        Command::Validate(args) => validate::run(args),
        Command::Demo(args) => demo::run(args),
        Command::Stat(args) => stat::run(args),
        Command::Lab(args) => lab::run(args),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logs_are_coloured_only_on_a_terminal_without_no_color() {
        assert!(colour(true, None));
        assert!(!colour(false, None), "a file or a pipe gets no escapes");
        assert!(!colour(true, Some("1".into())));
        assert!(colour(true, Some("".into())), "an empty NO_COLOR does not count (no-color.org)");
    }

    #[test]
    fn durations_parse_like_istio() {
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert!(parse_duration("fast").is_err());
        assert!(parse_duration("3 parsecs").is_err());
    }

    #[test]
    fn log_filters_are_levels_or_directives_whose_bare_words_are_levels() {
        for good in [
            "info",
            "WARN",
            "off",
            "info,tripline_proxy=debug",
            "tripline=trace",
            "tripline_proxy[conn]=debug",
        ] {
            assert_eq!(parse_log_filter(good).as_deref(), Ok(good), "{good}");
            assert!(tracing_subscriber::EnvFilter::try_new(good).is_ok(), "{good}");
        }
        // Spaces after commas are dropped: tracing's own parser would reject ` hyper=off`.
        assert_eq!(parse_log_filter("warn, hyper=off ").as_deref(), Ok("warn,hyper=off"));
        assert_eq!(parse_log_filter("").as_deref(), Ok("info"), "TRIPLINE_LOG= is the default");
        for (bad, says) in [
            ("debugg", "`debugg` is not a level"),
            ("verbose", "`verbose` is not a level"),
            ("info,tripline_proxy", "`tripline_proxy` is not a level"),
            ("warn,,", "empty directive"),
            ("tripline=loud", "`tripline=loud`"),
        ] {
            let e = parse_log_filter(bad).unwrap_err();
            assert!(e.contains(says), "{bad:?}: {e}");
            assert!(e.contains("error, warn, info, debug, trace, off"), "{bad:?} lists the levels: {e}");
        }
    }

    #[test]
    fn cli_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
