//! The access log: one line per HTTP request, JSON or text ([`format`]: Envoy-style format
//! strings), written by a dedicated thread so the request path only formats a short line and
//! hands it over a channel. Off by default (as in Istio); when off it costs one branch per
//! request. A file is opened again on [`AccessLog::reopen`] (`SIGUSR1`), for log rotation;
//! lines can be sampled, errors never ([`AccessLog::keeps`]).

pub mod format;

use std::io::Write;
use std::net::SocketAddr;
use std::sync::mpsc::{sync_channel, SyncSender, TryRecvError, TrySendError};
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
    Line(Vec<u8>),
    /// Open the file again (it was renamed away by a log rotation).
    Reopen,
    /// Write out what came before, then say so.
    Flush(SyncSender<()>),
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
/// `tripline_access_log_dropped_total`) rather than slowing requests down. At `TICK`, room
/// for 800,000 lines a second.
const QUEUE: usize = 16 * 1024;

/// How often the writer takes the queued lines and writes them (one `write` per 64 KiB).
const TICK: Duration = Duration::from_millis(20);

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
            Msg::Flush(_) => "Flush",
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
        std::thread::Builder::new().name("tripline-access-log".into()).spawn(move || loop {
            // The writer wakes on its own every `TICK` and takes what is queued: a request
            // path that queues a line never wakes it. (Blocking on the queue, every line
            // woke the thread: a futex and a context switch per request, +70% CPU per
            // request against no access log; docs/benchmarks.md.)
            std::thread::sleep(TICK);
            let mut open = true;
            loop {
                match rx.try_recv() {
                    Ok(Msg::Line(line)) => {
                        let _ = out.write_all(&line);
                    }
                    Ok(Msg::Reopen) => {
                        let _ = out.flush();
                        match open_target(&target) {
                            Ok(w) => out = std::io::BufWriter::with_capacity(64 * 1024, w),
                            Err(e) => tracing::error!(error = %e, "cannot open the access log again; writing to the file it had"),
                        }
                    }
                    Ok(Msg::Flush(done)) => {
                        let _ = out.flush();
                        let _ = done.try_send(());
                    }
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => {
                        open = false;
                        break;
                    }
                }
            }
            let _ = out.flush();
            if !open {
                return;
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
            Format::Text(f) => f.render(entry).into_bytes(),
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

    /// Writes out every line queued so far, waiting up to a second (at shutdown: the writer
    /// takes lines every `TICK`, and the process must not exit with them queued).
    pub fn flush(&self) {
        let (done, written) = sync_channel(1);
        if self.tx.send(Msg::Flush(done)).is_ok() {
            let _ = written.recv_timeout(Duration::from_secs(1));
        }
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
        let (flags, n) = self.flags();
        if n == 0 {
            "-".into()
        } else {
            flags[..n].join(",")
        }
    }

    /// The flags, each once, in order; no allocation.
    fn flags(&self) -> ([&'static str; 4], usize) {
        let mut out = [""; 4];
        let mut n = 0;
        let by_end = match self.body_end {
            BodyEnd::Complete => "",
            BodyEnd::RouteTimeout => "UT",
            BodyEnd::UpstreamReset => "UR",
            BodyEnd::DownstreamDisconnect => "DC",
            BodyEnd::StreamIdleTimeout => "SI",
        };
        let fault = self.fault.unwrap_or("");
        let candidates = [
            self.reason.and_then(crate::reason::envoy_flag).unwrap_or(""),
            by_end,
            if fault.contains("abort") { "FI" } else { "" },
            if fault.contains("delay") { "DI" } else { "" },
        ];
        for f in candidates {
            if !f.is_empty() && !out[..n].contains(&f) {
                out[n] = f;
                n += 1;
            }
        }
        (out, n)
    }

    /// The JSON line, written field by field into one buffer: strings that need no escaping
    /// (nearly all) are copied as they are, numbers by serde_json, the time and addresses
    /// without `fmt`. (A `serde_json::Value` built first cost three times the instructions of
    /// the whole proxied request; a derived struct still 85% more.)
    pub fn to_json_line(&self) -> Vec<u8> {
        let mut j = JsonLine(Vec::with_capacity(640));
        j.0.extend_from_slice(b"{\"start_time\":\"");
        push_time(&mut j.0, self.start);
        j.0.push(b'"');
        let ts = self.start.duration_since(UNIX_EPOCH).unwrap_or_default();
        j.num(key!("start_time_ms"), ts.as_millis() as u64);
        j.ms(key!("duration_ms"), self.duration);
        j.ms(key!("response_head_ms"), self.response_head);
        j.key(key!("upstream_duration_ms"));
        match self.upstream_duration {
            Some(d) => push_ms(&mut j.0, d),
            None => j.0.extend_from_slice(b"null"),
        }
        j.key(key!("downstream"));
        push_addr(&mut j.0, &self.downstream);
        j.str(key!("listener"), self.listener);
        j.str(key!("protocol"), self.protocol);
        j.str(key!("method"), self.method);
        j.str(key!("authority"), self.authority);
        j.str(key!("path"), self.path);
        j.num(key!("status"), u64::from(self.status));
        j.opt(key!("reason"), self.reason);
        j.key(key!("response_flags"));
        let (flags, n) = self.flags();
        j.0.push(b'"');
        if n == 0 {
            j.0.push(b'-');
        }
        for (i, f) in flags[..n].iter().enumerate() {
            if i > 0 {
                j.0.push(b',');
            }
            j.0.extend_from_slice(f.as_bytes());
        }
        j.0.push(b'"');
        j.num(key!("bytes_sent"), self.bytes_sent);
        j.num(key!("bytes_received"), self.bytes_received);
        j.str(key!("response_end"), self.body_end.as_str());
        j.opt(key!("route"), self.route);
        j.opt(key!("cluster"), self.cluster);
        j.key(key!("upstream"));
        match &self.upstream {
            Some(a) => push_addr(&mut j.0, a),
            None => j.0.extend_from_slice(b"null"),
        }
        j.num(key!("attempts"), u64::from(self.attempts));
        j.opt(key!("request_id"), self.request_id);
        j.opt(key!("trace_id"), self.trace_id);
        j.opt(key!("fault"), self.fault);
        j.opt(key!("authz_denied"), self.authz_denied);
        j.opt(key!("authz_audit"), self.authz_audit);
        j.opt(key!("authz_shadow_denied"), self.authz_shadow_denied);
        j.opt(key!("tls_sni"), self.tls_sni);
        j.opt(key!("downstream_identity"), self.downstream_identity);
        j.0.extend_from_slice(b"}\n");
        j.0
    }
}

/// A JSON object being written, field by field.
struct JsonLine(Vec<u8>);

/// `,"name":`, a field's key after the first, made at compile time.
macro_rules! key {
    ($name:literal) => {
        concat!(",\"", $name, "\":").as_bytes()
    };
}
use key;

impl JsonLine {
    /// `k`: `,"name":`, as [`key!`] makes it (one copy of a constant).
    fn key(&mut self, k: &[u8]) {
        self.0.extend_from_slice(k);
    }

    fn str(&mut self, k: &[u8], v: &str) {
        self.key(k);
        push_json_str(&mut self.0, v);
    }

    fn opt(&mut self, k: &[u8], v: Option<&str>) {
        self.key(k);
        match v {
            Some(v) => push_json_str(&mut self.0, v),
            None => self.0.extend_from_slice(b"null"),
        }
    }

    fn num(&mut self, k: &[u8], v: u64) {
        self.key(k);
        let _ = serde_json::to_writer(&mut self.0, &v);
    }

    fn ms(&mut self, k: &[u8], d: Duration) {
        self.key(k);
        push_ms(&mut self.0, d);
    }
}

/// A duration in milliseconds to the microsecond (`1.5`, `0.042`, `12`), with integer
/// arithmetic: formatting an `f64` was a tenth of the line's cost.
fn push_ms(out: &mut Vec<u8>, d: Duration) {
    let us = d.as_micros().min(u128::from(u64::MAX)) as u64;
    push_digits(out, us / 1000, 1);
    let mut frac = us % 1000;
    if frac > 0 {
        let mut width = 3;
        while frac.is_multiple_of(10) {
            frac /= 10;
            width -= 1;
        }
        out.push(b'.');
        push_digits(out, frac, width);
    }
}

/// A JSON string: copied as it is when nothing in it needs escaping, else serde_json's.
fn push_json_str(out: &mut Vec<u8>, s: &str) {
    if !needs_escape(s.as_bytes()) {
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    } else {
        let _ = serde_json::to_writer(out, s);
    }
}

/// Whether JSON needs anything of `b` escaped: a control character, `"` or `\`. Eight bytes
/// at a time (the classic "has a byte less than n / equal to c" bit tricks, exact for the
/// question whether any byte is): a log line's strings are a hundred bytes, and a byte-wise
/// check was the line's largest cost after copying.
fn needs_escape(b: &[u8]) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let special = |x: u64| {
        let below_space = x.wrapping_sub(ONES * 0x20) & !x & HIGH;
        let quote = x ^ (ONES * u64::from(b'"'));
        let backslash = x ^ (ONES * u64::from(b'\\'));
        let zero = |y: u64| y.wrapping_sub(ONES) & !y & HIGH;
        (below_space | zero(quote) | zero(backslash)) != 0
    };
    let mut chunks = b.chunks_exact(8);
    for c in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(c);
        if special(u64::from_le_bytes(word)) {
            return true;
        }
    }
    chunks.remainder().iter().any(|&c| c < 0x20 || c == b'"' || c == b'\\')
}

/// Digits of `v`, at least `width` of them.
fn push_digits(out: &mut Vec<u8>, v: u64, width: usize) {
    let mut buf = [b'0'; 20];
    let mut i = buf.len();
    let mut v = v;
    while v > 0 || buf.len() - i < width.max(1) {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
    }
    out.extend_from_slice(&buf[i..]);
}

/// `"127.0.0.1:5555"`; IPv6 through `fmt` (rare enough).
fn push_addr(out: &mut Vec<u8>, a: &SocketAddr) {
    out.push(b'"');
    match a {
        SocketAddr::V4(v4) => {
            for (i, o) in v4.ip().octets().iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                push_digits(out, u64::from(*o), 1);
            }
            out.push(b':');
            push_digits(out, u64::from(v4.port()), 1);
        }
        SocketAddr::V6(_) => {
            use std::io::Write;
            let _ = write!(out, "{a}");
        }
    }
    out.push(b'"');
}

/// `2023-11-14T22:13:20.123Z` into `out`, without `fmt`.
fn push_time(out: &mut Vec<u8>, t: SystemTime) {
    thread_local! {
        /// The last second formatted on this thread: lines of one second share it.
        static SECOND: std::cell::Cell<(u64, [u8; 19])> = const { std::cell::Cell::new((u64::MAX, [0; 19])) };
    }
    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (cached, text) = SECOND.get();
    let text = if cached == secs {
        text
    } else {
        let mut v = Vec::with_capacity(19);
        let (y, m, d, rem) = tripline_config::certs::civil(secs as i64);
        push_digits(&mut v, y.clamp(0, 9999) as u64, 4);
        for (sep, n) in [(b'-', m), (b'-', d), (b'T', rem / 3600), (b':', rem / 60 % 60), (b':', rem % 60)] {
            v.push(sep);
            push_digits(&mut v, n as u64, 2);
        }
        let mut text = [0u8; 19];
        text.copy_from_slice(&v[..19]);
        SECOND.set((secs, text));
        text
    };
    out.extend_from_slice(&text);
    out.push(b'.');
    push_digits(out, u64::from(since.subsec_millis()), 3);
    out.push(b'Z');
}

/// `2023-11-14T22:13:20.123Z`: UTC, milliseconds.
pub fn rfc3339(t: SystemTime) -> String {
    let mut out = Vec::with_capacity(24);
    push_time(&mut out, t);
    String::from_utf8(out).unwrap_or_default()
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
    fn json_lines_escape_what_needs_it_and_read_back_as_written() {
        let mut e = entry();
        e.path = "/a\"b\\c\u{1}d/é";
        e.authority = "shop.local";
        e.downstream = "[2001:db8::1]:443".parse().unwrap();
        e.upstream = Some("10.0.0.255:65535".parse().unwrap());
        e.upstream_duration = Some(Duration::from_micros(250));
        let line = String::from_utf8(e.to_json_line()).expect("UTF-8");
        assert!(line.ends_with("}\n"));
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["path"], "/a\"b\\c\u{1}d/é");
        assert_eq!(v["downstream"], "[2001:db8::1]:443");
        assert_eq!(v["upstream"], "10.0.0.255:65535");
        assert_eq!(v["start_time"], "2023-11-14T22:13:20.000Z");
        assert_eq!(v["upstream_duration_ms"], 0.25);
        assert_eq!(v["response_flags"], "UO");
        assert_eq!(v["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(v["tls_sni"], serde_json::Value::Null);
        assert_eq!(v.as_object().unwrap().len(), 29, "{line}");
    }

    #[test]
    fn times_are_rfc3339_in_utc() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(UNIX_EPOCH + Duration::from_millis(951_782_400_123)), "2000-02-29T00:00:00.123Z");
        assert_eq!(rfc3339(UNIX_EPOCH + Duration::from_secs(4_102_444_799)), "2099-12-31T23:59:59.000Z");
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
        let line = String::from_utf8(e.to_json_line()).expect("UTF-8");
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

    /// Bytes at the check's edges, mostly ones that need no escaping.
    const BYTES: [u8; 16] =
        [b'a', b'/', b'-', b'0', b'Z', b'!', b'#', b'[', b']', 0x7f, 0x80, 0xff, 0x20, 0x1f, b'"', b'\\'];

    proptest::proptest! {
        /// The word-at-a-time check says what the byte-by-byte one says, for any bytes.
        #[test]
        fn the_escape_check_is_exact(b in proptest::collection::vec(proptest::sample::select(BYTES.to_vec()), 0..40)) {
            let bytewise = b.iter().any(|&c| c < 0x20 || c == b'"' || c == b'\\');
            proptest::prop_assert_eq!(needs_escape(&b), bytewise);
        }
    }

    #[test]
    fn times_of_one_second_share_its_text_and_differ_in_milliseconds() {
        let t = UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        assert_eq!(rfc3339(t), "2023-11-14T22:13:20.123Z");
        assert_eq!(rfc3339(t + Duration::from_millis(800)), "2023-11-14T22:13:20.923Z");
        assert_eq!(rfc3339(t + Duration::from_millis(900)), "2023-11-14T22:13:21.023Z");
    }

    #[test]
    fn milliseconds_are_written_to_the_microsecond() {
        let text = |us: u64| {
            let mut v = Vec::new();
            push_ms(&mut v, Duration::from_micros(us));
            String::from_utf8(v).unwrap()
        };
        assert_eq!(text(1_500), "1.5");
        assert_eq!(text(42), "0.042");
        assert_eq!(text(12_000), "12");
        assert_eq!(text(250), "0.25");
        assert_eq!(text(0), "0");
        assert_eq!(text(123_456_789), "123456.789");
    }
}
