//! The access log: one line per HTTP request, JSON or text ([`format`]: Envoy-style format
//! strings), written by a dedicated thread so the request path only formats a short line and
//! hands it over a channel. Off by default (as in Istio); when off it costs one branch per
//! request. A file is opened again on [`AccessLog::reopen`] (`SIGUSR1`), for log rotation;
//! lines can be sampled, errors never ([`AccessLog::keeps`]).

pub mod format;

use std::io::Write;
use std::net::SocketAddr;
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub use format::TextFormat;

/// How lines are written.
#[derive(Debug, Clone, PartialEq)]
pub enum Format {
    Json,
    Text(TextFormat),
}

impl std::str::FromStr for Format {
    type Err = String;
    /// `json`, `text` (Envoy's default format), or a format string with `%OPERATOR%`s.
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "json" => Ok(Format::Json),
            "text" => Ok(Format::Text(TextFormat::parse(format::ENVOY_DEFAULT)?)),
            f if f.contains('%') => Ok(Format::Text(TextFormat::parse(f)?)),
            other => Err(format!("`{other}`: the access log format is json, text, or a format string with %OPERATOR%s (Envoy's: `[%START_TIME%] \"%REQ(:METHOD)% ...`)")),
        }
    }
}

/// How the access log is written: where, in what format, and which share of the lines.
#[derive(Debug, Clone)]
pub struct Options {
    pub target: Target,
    pub format: Format,
    /// The share of successful requests logged (0 < ratio <= 1); errors always are.
    pub sample: f64,
}

impl Options {
    pub fn new(target: Target) -> Options {
        Options { target, format: Format::Json, sample: 1.0 }
    }
}

/// What the writer thread is sent.
enum Msg {
    Line(String),
    /// Open the file again (it was renamed away by a log rotation).
    Reopen,
}

/// Where access log lines go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Stdout,
    Stderr,
    File(std::path::PathBuf),
}

impl std::str::FromStr for Target {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "stdout" | "-" => Ok(Target::Stdout),
            "stderr" => Ok(Target::Stderr),
            "" => Err("empty access log target (use stdout, stderr or a file path)".into()),
            path => Ok(Target::File(path.into())),
        }
    }
}

/// Lines waiting for the writer; beyond this, lines are dropped (the caller counts them in
/// `tripline_access_log_dropped_total`) rather than slowing requests down.
const QUEUE: usize = 16 * 1024;

/// A handle to the access log writer.
#[derive(Debug)]
pub struct AccessLog {
    tx: SyncSender<Msg>,
    format: Format,
    /// `sample` as a threshold on a random `u32`; `u32::MAX`: every line.
    keep_below: u32,
}

impl std::fmt::Debug for Msg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Msg::Line(_) => "Line",
            Msg::Reopen => "Reopen",
        })
    }
}

fn open_target(target: &Target) -> std::io::Result<Box<dyn Write + Send>> {
    Ok(match target {
        Target::Stdout => Box::new(std::io::stdout()),
        Target::Stderr => Box::new(std::io::stderr()),
        Target::File(p) => Box::new(std::fs::OpenOptions::new().create(true).append(true).open(p)?),
    })
}

impl AccessLog {
    /// Opens the target and starts the writer thread (JSON, every line).
    pub fn open(target: &Target) -> std::io::Result<AccessLog> {
        AccessLog::start(Options::new(target.clone()))
    }

    /// Opens the target and starts the writer thread.
    pub fn start(opts: Options) -> std::io::Result<AccessLog> {
        let mut out = std::io::BufWriter::with_capacity(64 * 1024, open_target(&opts.target)?);
        let (tx, rx) = sync_channel::<Msg>(QUEUE);
        let target = opts.target.clone();
        std::thread::Builder::new().name("tripline-access-log".into()).spawn(move || {
            while let Ok(msg) = rx.recv() {
                let mut next = Some(msg);
                // Drain what is queued, then flush once: a burst costs one write.
                while let Some(msg) = next {
                    match msg {
                        Msg::Line(line) => {
                            let _ = out.write_all(line.as_bytes());
                        }
                        Msg::Reopen => {
                            let _ = out.flush();
                            match open_target(&target) {
                                Ok(w) => out = std::io::BufWriter::with_capacity(64 * 1024, w),
                                Err(e) => tracing::error!(error = %e, "cannot open the access log again; writing to the file it had"),
                            }
                        }
                    }
                    next = rx.try_recv().ok();
                }
                let _ = out.flush();
            }
        })?;
        let sample = if opts.sample.is_finite() { opts.sample.clamp(0.0, 1.0) } else { 1.0 };
        let keep_below = if sample >= 1.0 { u32::MAX } else { (sample * f64::from(u32::MAX)) as u32 };
        Ok(AccessLog { tx, format: opts.format, keep_below })
    }

    /// The request headers the format logs, to capture when a request starts.
    pub fn headers(&self) -> &[http::HeaderName] {
        match &self.format {
            Format::Json => &[],
            Format::Text(f) => f.headers(),
        }
    }

    /// Whether a request's line is written: every error (a 5xx, Tripline's own answer, a
    /// response cut off, a client that left), and the sampled share of the rest. `random`
    /// draws a random number, only when sampling decides.
    pub fn keeps(&self, entry: &Entry<'_>, random: impl FnOnce() -> u32) -> bool {
        self.keep_below == u32::MAX
            || entry.status >= 500
            || entry.status == 0
            || entry.reason.is_some()
            || entry.body_end != BodyEnd::Complete
            || random() < self.keep_below
    }

    /// Queues one line; `false` when it was dropped because the writer is behind (or gone).
    pub fn write(&self, entry: &Entry<'_>) -> bool {
        let line = match &self.format {
            Format::Json => entry.to_json_line(),
            Format::Text(f) => f.render(entry),
        };
        !matches!(
            self.tx.try_send(Msg::Line(line)),
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_))
        )
    }

    /// Opens the file again after the lines queued so far (a log rotation renamed it away;
    /// `SIGUSR1`). Nothing for stdout and stderr.
    pub fn reopen(&self) {
        // Blocking: a reopen must not be lost to a full queue.
        let _ = self.tx.send(Msg::Reopen);
    }
}

/// An access log line waiting for its response body to end: the body reports the bytes it
/// sends and how it ended. Implemented by the request path's pending line (a layer above the
/// body, which holds it by this trait).
pub trait BodyLog: Send + Sync + std::fmt::Debug {
    /// Body bytes handed to the client's connection.
    fn sent(&mut self, n: usize);
    /// The body ended: writes the line.
    fn finish(self: Box<Self>, end: BodyEnd);
}

/// How a response body ended, as the access log's `response_end` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyEnd {
    /// Sent to its end.
    Complete,
    /// Cut off by the route timeout while streaming (Envoy's `UT` flag).
    RouteTimeout,
    /// The upstream failed while streaming: reset, closed early, malformed (Envoy's `UR`/`UC`).
    UpstreamReset,
    /// The client went away before the body was sent (Envoy's `DC`).
    DownstreamDisconnect,
    /// Nothing moved for the stream idle timeout: the client stopped reading (Envoy's `SI`).
    StreamIdleTimeout,
}

impl BodyEnd {
    pub fn as_str(self) -> &'static str {
        match self {
            BodyEnd::Complete => "complete",
            BodyEnd::RouteTimeout => "route-timeout",
            BodyEnd::UpstreamReset => "upstream-reset",
            BodyEnd::DownstreamDisconnect => "downstream-disconnect",
            BodyEnd::StreamIdleTimeout => "stream-idle-timeout",
        }
    }
}

/// One request, as the access log shows it.
#[derive(Debug)]
pub struct Entry<'a> {
    pub start: SystemTime,
    pub duration: Duration,
    pub downstream: SocketAddr,
    pub listener: &'a str,
    pub protocol: &'a str,
    pub method: &'a str,
    pub authority: &'a str,
    pub path: &'a str,
    /// The request target as sent: the path with its query (Envoy's `:PATH`).
    pub target: &'a str,
    /// `http` or `https` when known.
    pub scheme: Option<&'a str>,
    pub status: u16,
    /// `x-tripline-reason` when Tripline answered itself.
    pub reason: Option<&'a str>,
    /// From the request to the response head (`duration` runs to the body's end).
    pub response_head: Duration,
    /// Response body bytes handed to the client's connection.
    pub bytes_sent: u64,
    /// Request body bytes read from the client.
    pub bytes_received: u64,
    /// For a response from an upstream: from the request to its head (Envoy's
    /// `x-envoy-upstream-service-time`, here including connecting and retries).
    pub upstream_duration: Option<Duration>,
    /// The trace the request belongs to (W3C `traceparent`, else B3), if the client sent one.
    pub trace_id: Option<&'a str>,
    /// The values of the request headers the text format logs ([`AccessLog::headers`]).
    pub headers: &'a [Option<String>],
    pub body_end: BodyEnd,
    pub route: Option<&'a str>,
    pub cluster: Option<&'a str>,
    pub upstream: Option<SocketAddr>,
    pub attempts: u32,
    pub request_id: Option<&'a str>,
    /// What the route's `fault` did: `delay`, `abort` or `delay+abort`.
    pub fault: Option<&'a str>,
    /// The AuthorizationPolicy that denied the request (`none`: no ALLOW policy matched).
    pub authz_denied: Option<&'a str>,
    /// The AUDIT AuthorizationPolicy that matched the request.
    pub authz_audit: Option<&'a str>,
    /// The dry-run AuthorizationPolicy that would have denied the request.
    pub authz_shadow_denied: Option<&'a str>,
    /// On a TLS listener: the SNI the client sent, and its certificate's identity (SPIFFE ID).
    pub tls_sni: Option<&'a str>,
    pub downstream_identity: Option<&'a str>,
}

impl Entry<'_> {
    /// Envoy's response flags for what happened (`UO` a breaker or a full pool, `UH` no
    /// healthy upstream, `NR` no route, `UF` a failed connect, `UR` an upstream reset, `UT` a
    /// timeout, `DC` the client left, `SI` stream idle, `DPE` a malformed request, `RL` rate
    /// limited, `FI`/`DI` an injected abort/delay), comma-separated; `-` for none.
    pub fn response_flags(&self) -> String {
        let mut flags: Vec<&str> = Vec::new();
        flags.push(self.reason.and_then(crate::reason::envoy_flag).unwrap_or(""));
        flags.push(match self.body_end {
            BodyEnd::Complete => "",
            BodyEnd::RouteTimeout => "UT",
            BodyEnd::UpstreamReset => "UR",
            BodyEnd::DownstreamDisconnect => "DC",
            BodyEnd::StreamIdleTimeout => "SI",
        });
        if let Some(f) = self.fault {
            if f.contains("abort") {
                flags.push("FI");
            }
            if f.contains("delay") {
                flags.push("DI");
            }
        }
        let mut kept: Vec<&str> = Vec::new();
        for f in flags.into_iter().filter(|f| !f.is_empty()) {
            if !kept.contains(&f) {
                kept.push(f);
            }
        }
        if kept.is_empty() {
            "-".into()
        } else {
            kept.join(",")
        }
    }

    /// The JSON line: a struct serialized straight into the line (a `serde_json::Value`
    /// built first cost three times the instructions of the whole proxied request).
    pub fn to_json_line(&self) -> String {
        let ts = self.start.duration_since(UNIX_EPOCH).unwrap_or_default();
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        let line = JsonLine {
            start_time: rfc3339(self.start),
            start_time_ms: ts.as_millis() as u64,
            duration_ms: ms(self.duration),
            response_head_ms: ms(self.response_head),
            upstream_duration_ms: self.upstream_duration.map(ms),
            downstream: Shown(&self.downstream),
            listener: self.listener,
            protocol: self.protocol,
            method: self.method,
            authority: self.authority,
            path: self.path,
            status: self.status,
            reason: self.reason,
            response_flags: self.response_flags(),
            bytes_sent: self.bytes_sent,
            bytes_received: self.bytes_received,
            response_end: self.body_end.as_str(),
            route: self.route,
            cluster: self.cluster,
            upstream: self.upstream.as_ref().map(Shown),
            attempts: self.attempts,
            request_id: self.request_id,
            trace_id: self.trace_id,
            fault: self.fault,
            authz_denied: self.authz_denied,
            authz_audit: self.authz_audit,
            authz_shadow_denied: self.authz_shadow_denied,
            tls_sni: self.tls_sni,
            downstream_identity: self.downstream_identity,
        };
        let mut out = Vec::with_capacity(512);
        // Serializing strings and numbers cannot fail.
        let _ = serde_json::to_writer(&mut out, &line);
        out.push(b'\n');
        String::from_utf8(out).unwrap_or_default()
    }
}

/// A value written with its `Display` (an address), without a `String` first.
struct Shown<'a, T>(&'a T);

impl<T: std::fmt::Display> serde::Serialize for Shown<'_, T> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self.0)
    }
}

/// The JSON line's fields, in the order they are written.
#[derive(serde::Serialize)]
struct JsonLine<'a> {
    start_time: String,
    start_time_ms: u64,
    duration_ms: f64,
    response_head_ms: f64,
    upstream_duration_ms: Option<f64>,
    downstream: Shown<'a, SocketAddr>,
    listener: &'a str,
    protocol: &'a str,
    method: &'a str,
    authority: &'a str,
    path: &'a str,
    status: u16,
    reason: Option<&'a str>,
    response_flags: String,
    bytes_sent: u64,
    bytes_received: u64,
    response_end: &'a str,
    route: Option<&'a str>,
    cluster: Option<&'a str>,
    upstream: Option<Shown<'a, SocketAddr>>,
    attempts: u32,
    request_id: Option<&'a str>,
    trace_id: Option<&'a str>,
    fault: Option<&'a str>,
    authz_denied: Option<&'a str>,
    authz_audit: Option<&'a str>,
    authz_shadow_denied: Option<&'a str>,
    tls_sni: Option<&'a str>,
    downstream_identity: Option<&'a str>,
}

/// `2023-11-14T22:13:20.123Z`: UTC, milliseconds (the config crate's whole-second
/// RFC 3339, with the milliseconds put in).
pub fn rfc3339(t: SystemTime) -> String {
    let whole = tripline_config::certs::rfc3339(t);
    let ms = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.subsec_millis());
    format!("{}.{ms:03}Z", whole.trim_end_matches('Z'))
}

/// The trace id of a request: W3C `traceparent` (`00-<32 hex>-<16 hex>-<2 hex>`), else B3's
/// `x-b3-traceid`, else the single `b3` header's first field. Only well-formed ids.
pub fn trace_id(headers: &http::HeaderMap) -> Option<String> {
    let hex = |s: &str, lens: &[usize]| lens.contains(&s.len()) && s.bytes().all(|b| b.is_ascii_hexdigit());
    if let Some(tp) = headers.get("traceparent").and_then(|v| v.to_str().ok()) {
        let mut parts = tp.split('-');
        if let (Some(_), Some(id)) = (parts.next(), parts.next()) {
            if hex(id, &[32]) && id.bytes().any(|b| b != b'0') {
                return Some(id.to_ascii_lowercase());
            }
        }
    }
    let b3 = headers
        .get("x-b3-traceid")
        .and_then(|v| v.to_str().ok())
        .or_else(|| headers.get("b3").and_then(|v| v.to_str().ok()).and_then(|v| v.split('-').next()));
    b3.filter(|id| hex(id, &[16, 32])).map(str::to_ascii_lowercase)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A refused request, as the format tests render it.
    pub(crate) fn entry() -> Entry<'static> {
        Entry {
            start: UNIX_EPOCH + Duration::from_millis(1_700_000_000_000),
            duration: Duration::from_micros(1500),
            downstream: "127.0.0.1:5555".parse().unwrap(),
            listener: "edge/http",
            protocol: "HTTP/1.1",
            method: "GET",
            authority: "shop.local",
            path: "/cart",
            target: "/cart?x=1",
            scheme: Some("http"),
            status: 503,
            reason: Some("breaker-open"),
            response_head: Duration::from_micros(1400),
            bytes_sent: 54,
            bytes_received: 12,
            upstream_duration: None,
            trace_id: Some("4bf92f3577b34da6a3ce929d0e0e4736"),
            headers: &[],
            body_end: BodyEnd::Complete,
            fault: None,
            authz_denied: None,
            authz_audit: None,
            authz_shadow_denied: None,
            tls_sni: None,
            downstream_identity: None,
            route: Some("shop/http[0]"),
            cluster: Some("outbound|80||shop.local"),
            upstream: None,
            attempts: 0,
            request_id: Some("abc"),
        }
    }

    #[test]
    fn times_are_rfc3339_in_utc() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(UNIX_EPOCH + Duration::from_millis(951_782_400_123)), "2000-02-29T00:00:00.123Z");
        assert_eq!(rfc3339(UNIX_EPOCH + Duration::from_secs(4_102_444_799)), "2099-12-31T23:59:59.000Z");
    }

    #[test]
    fn trace_ids_come_from_traceparent_then_b3() {
        let mut h = http::HeaderMap::new();
        assert_eq!(trace_id(&h), None);
        h.insert("b3", "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1".parse().unwrap());
        assert_eq!(trace_id(&h).as_deref(), Some("80f198ee56343ba864fe8b2a57d3eff7"));
        h.insert("x-b3-traceid", "463ac35c9f6413ad".parse().unwrap());
        assert_eq!(trace_id(&h).as_deref(), Some("463ac35c9f6413ad"));
        h.insert("traceparent", "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01".parse().unwrap());
        assert_eq!(trace_id(&h).as_deref(), Some("4bf92f3577b34da6a3ce929d0e0e4736"));
        h.insert("traceparent", "00-00000000000000000000000000000000-00f067aa0ba902b7-01".parse().unwrap());
        assert_eq!(trace_id(&h).as_deref(), Some("463ac35c9f6413ad"), "an all-zero id is invalid");
    }

    #[test]
    fn response_flags_say_what_happened_as_envoy_does() {
        let mut e = entry();
        assert_eq!(e.response_flags(), "UO");
        e.reason = None;
        assert_eq!(e.response_flags(), "-");
        e.body_end = BodyEnd::DownstreamDisconnect;
        e.fault = Some("delay+abort");
        assert_eq!(e.response_flags(), "DC,FI,DI");
    }

    #[test]
    fn errors_are_always_kept_and_the_rest_sampled() {
        let (tx, _rx) = sync_channel(1);
        let log = AccessLog { tx, format: Format::Json, keep_below: u32::MAX / 10 };
        let mut e = entry();
        assert!(log.keeps(&e, || u32::MAX), "a refusal is always logged");
        e.reason = None;
        e.status = 200;
        assert!(!log.keeps(&e, || u32::MAX / 2));
        assert!(log.keeps(&e, || 7));
        e.status = 502;
        assert!(log.keeps(&e, || u32::MAX / 2));
    }

    #[test]
    fn a_refused_request_logs_its_reason() {
        let mut e = entry();
        e.bytes_received = 0;
        e.trace_id = None;
        let line = e.to_json_line();
        assert!(line.ends_with('\n'));
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["reason"], "breaker-open");
        assert_eq!(v["status"], 503);
        assert_eq!(v["duration_ms"], 1.5);
        assert_eq!(v["upstream"], serde_json::Value::Null);
        assert_eq!(v["response_head_ms"], 1.4);
        assert_eq!(v["bytes_sent"], 54);
        assert_eq!(v["response_end"], "complete");
    }

    #[test]
    fn targets_parse() {
        assert_eq!("stdout".parse::<Target>(), Ok(Target::Stdout));
        assert_eq!("/var/log/a.log".parse::<Target>(), Ok(Target::File("/var/log/a.log".into())));
        assert!("".parse::<Target>().is_err());
    }
}
