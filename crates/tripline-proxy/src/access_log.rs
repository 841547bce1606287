//! JSON access log: one line per HTTP request, written by a dedicated thread so the request path
//! only formats a short line and hands it over a channel. Off by default (as in Istio); when
//! off it costs one branch per request.

use std::io::Write;
use std::net::SocketAddr;
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

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
    tx: SyncSender<String>,
}

impl AccessLog {
    /// Opens the target and starts the writer thread.
    pub fn open(target: &Target) -> std::io::Result<AccessLog> {
        let mut out: Box<dyn Write + Send> = match target {
            Target::Stdout => Box::new(std::io::stdout()),
            Target::Stderr => Box::new(std::io::stderr()),
            Target::File(p) => Box::new(std::fs::OpenOptions::new().create(true).append(true).open(p)?),
        };
        let (tx, rx) = sync_channel::<String>(QUEUE);
        std::thread::Builder::new().name("tripline-access-log".into()).spawn(move || {
            let mut buf = std::io::BufWriter::with_capacity(64 * 1024, &mut out);
            while let Ok(line) = rx.recv() {
                let _ = buf.write_all(line.as_bytes());
                // Drain what is queued, then flush once: a burst costs one write.
                while let Ok(more) = rx.try_recv() {
                    let _ = buf.write_all(more.as_bytes());
                }
                let _ = buf.flush();
            }
        })?;
        Ok(AccessLog { tx })
    }

    /// Queues one line; `false` when it was dropped because the writer is behind (or gone).
    pub fn write(&self, entry: &Entry<'_>) -> bool {
        !matches!(
            self.tx.try_send(entry.to_json_line()),
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_))
        )
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
    pub status: u16,
    /// `x-tripline-reason` when Tripline answered itself.
    pub reason: Option<&'a str>,
    /// From the request to the response head (`duration` runs to the body's end).
    pub response_head: Duration,
    /// Response body bytes handed to the client's connection.
    pub bytes_sent: u64,
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
    pub fn to_json_line(&self) -> String {
        let ts = self.start.duration_since(UNIX_EPOCH).unwrap_or_default();
        let mut line = serde_json::json!({
            "start_time_ms": ts.as_millis() as u64,
            "duration_ms": self.duration.as_secs_f64() * 1e3,
            "response_head_ms": self.response_head.as_secs_f64() * 1e3,
            "downstream": self.downstream.to_string(),
            "listener": self.listener,
            "protocol": self.protocol,
            "method": self.method,
            "authority": self.authority,
            "path": self.path,
            "status": self.status,
            "reason": self.reason,
            "bytes_sent": self.bytes_sent,
            "response_end": self.body_end.as_str(),
            "route": self.route,
            "cluster": self.cluster,
            "upstream": self.upstream.map(|a| a.to_string()),
            "attempts": self.attempts,
            "request_id": self.request_id,
            "fault": self.fault,
            "authz_denied": self.authz_denied,
            "authz_audit": self.authz_audit,
            "authz_shadow_denied": self.authz_shadow_denied,
            "tls_sni": self.tls_sni,
            "downstream_identity": self.downstream_identity,
        })
        .to_string();
        line.push('\n');
        line
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_request_logs_its_reason() {
        let e = Entry {
            start: UNIX_EPOCH + Duration::from_millis(1_700_000_000_000),
            duration: Duration::from_micros(1500),
            downstream: "127.0.0.1:5555".parse().unwrap(),
            listener: "edge/http",
            protocol: "HTTP/1.1",
            method: "GET",
            authority: "shop.local",
            path: "/cart",
            status: 503,
            reason: Some("breaker-open"),
            response_head: Duration::from_micros(1400),
            bytes_sent: 54,
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
        };
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
