//! What happened to one upstream attempt ([`Outcome`]), and what it means for the upstream's
//! health ([`Class`]), according to a configurable [`Classifier`].
//!
//! Three rules matter more than the details:
//!
//! - **Local rejections never count against the upstream.** When Tripline itself refuses a
//!   request (overflow, open breaker, exhausted retry budget, no healthy endpoint) the outcome is
//!   [`Outcome::Local`], and every consumer in this crate ignores it. Envoy counts its own
//!   overflow 503s as upstream failures and so ejects healthy hosts under load (envoy#25487).
//! - **Rate limiting is its own class.** HTTP 429 and gRPC `RESOURCE_EXHAUSTED` mean "alive but
//!   asking you to slow down": they carry a `Retry-After` and are not failures unless
//!   [`Classifier::rate_limited_is_failure`] says so.
//! - **Local-origin failures** (connect failure, reset, timeout: the upstream never produced a
//!   response) are flagged separately so outlier detection can count them apart when
//!   `splitExternalLocalOriginErrors` is set. Without the split they behave like a gateway
//!   error (Envoy maps them to 503/504 the same way).

use std::fmt;
use std::time::Duration;

/// gRPC status codes (the `grpc-status` trailer), by name.
pub mod grpc {
    pub const OK: u8 = 0;
    pub const CANCELLED: u8 = 1;
    pub const UNKNOWN: u8 = 2;
    pub const INVALID_ARGUMENT: u8 = 3;
    pub const DEADLINE_EXCEEDED: u8 = 4;
    pub const NOT_FOUND: u8 = 5;
    pub const ALREADY_EXISTS: u8 = 6;
    pub const PERMISSION_DENIED: u8 = 7;
    pub const RESOURCE_EXHAUSTED: u8 = 8;
    pub const FAILED_PRECONDITION: u8 = 9;
    pub const ABORTED: u8 = 10;
    pub const OUT_OF_RANGE: u8 = 11;
    pub const UNIMPLEMENTED: u8 = 12;
    pub const INTERNAL: u8 = 13;
    pub const UNAVAILABLE: u8 = 14;
    pub const DATA_LOSS: u8 = 15;
    pub const UNAUTHENTICATED: u8 = 16;

    /// The names, indexed by code (what Istio's `grpcStatus` takes).
    pub const NAMES: [&str; 17] = [
        "OK",
        "CANCELLED",
        "UNKNOWN",
        "INVALID_ARGUMENT",
        "DEADLINE_EXCEEDED",
        "NOT_FOUND",
        "ALREADY_EXISTS",
        "PERMISSION_DENIED",
        "RESOURCE_EXHAUSTED",
        "FAILED_PRECONDITION",
        "ABORTED",
        "OUT_OF_RANGE",
        "UNIMPLEMENTED",
        "INTERNAL",
        "UNAVAILABLE",
        "DATA_LOSS",
        "UNAUTHENTICATED",
    ];

    /// The canonical upper-case name, or `None` for a code outside 0..=16.
    pub fn name(code: u8) -> Option<&'static str> {
        NAMES.get(code as usize).copied()
    }

    /// The code of a canonical name (`UNAVAILABLE` → 14).
    pub fn code(name: &str) -> Option<u8> {
        NAMES.iter().position(|n| *n == name).map(|i| i as u8)
    }
}

/// Why Tripline refused a request itself, without asking the upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LocalReason {
    /// An admission limit (connections, pending, requests) was full.
    Overflow,
    /// A circuit breaker was open (or its half-open probes were all busy).
    BreakerOpen,
    /// The retry budget refused a retry.
    RetryBudget,
    /// No endpoint was available (all ejected, none discovered).
    NoHealthyUpstream,
    /// The client went away (or the request was abandoned) before the upstream answered: it
    /// says nothing about the upstream's health.
    Cancelled,
    /// The client broke its request (a malformed body, or one still arriving at the
    /// deadline): the upstream's failure to answer it is the client's fault.
    ClientFault,
    /// The next hop is a proxy that answered itself (a Tripline refusal or fallback, marked by
    /// its `x-tripline-reason`): its decision, taken with what it knows of its own upstreams.
    /// Not the endpoint's failure, and not retried here, so breakers do not cascade up a call
    /// chain and retries do not multiply across hops (as Envoy does not retry a response
    /// marked `x-envoy-overloaded`).
    NextHop,
}

impl LocalReason {
    /// The value of the `x-tripline-reason` header and the metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            LocalReason::Overflow => "overflow",
            LocalReason::BreakerOpen => "breaker-open",
            LocalReason::RetryBudget => "retry-budget",
            LocalReason::NoHealthyUpstream => "no-healthy-upstream",
            LocalReason::Cancelled => "cancelled",
            LocalReason::ClientFault => "client-fault",
            LocalReason::NextHop => "next-hop",
        }
    }
}

/// The result of one attempt against one upstream endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A response the caller considers successful without further classification.
    Success,
    /// An HTTP response with this status (use [`Outcome::http`] to turn 429 into `RateLimited`).
    Http(u16),
    /// A gRPC response with this `grpc-status` (use [`Outcome::grpc`] for `RESOURCE_EXHAUSTED`).
    Grpc(u8),
    /// The upstream asked us to slow down (HTTP 429, gRPC `RESOURCE_EXHAUSTED`).
    RateLimited { retry_after: Option<Duration> },
    /// TCP connect failed or was refused.
    ConnectFailure,
    /// The connection or stream was reset before a complete response.
    Reset,
    /// The per-try timeout fired before a response.
    Timeout,
    /// Tripline refused the request itself: never counted against the upstream.
    Local(LocalReason),
}

impl Outcome {
    /// An HTTP response; 429 becomes [`Outcome::RateLimited`] carrying `retry_after`.
    pub fn http(status: u16, retry_after: Option<Duration>) -> Outcome {
        if status == 429 {
            Outcome::RateLimited { retry_after }
        } else {
            Outcome::Http(status)
        }
    }

    /// A gRPC response; `RESOURCE_EXHAUSTED` becomes [`Outcome::RateLimited`].
    pub fn grpc(code: u8, retry_after: Option<Duration>) -> Outcome {
        if code == grpc::RESOURCE_EXHAUSTED {
            Outcome::RateLimited { retry_after }
        } else {
            Outcome::Grpc(code)
        }
    }

    /// A small number identifying the kind of outcome (same status → same code), used to tell
    /// whether a streak of failures was all the same thing.
    pub(crate) fn kind_code(&self) -> u32 {
        match *self {
            Outcome::Success => 1,
            Outcome::Http(s) => 0x1_0000 | s as u32,
            Outcome::Grpc(c) => 0x2_0000 | c as u32,
            Outcome::RateLimited { .. } => 2,
            Outcome::ConnectFailure => 3,
            Outcome::Reset => 4,
            Outcome::Timeout => 5,
            Outcome::Local(r) => 0x3_0000 | r as u32,
        }
    }
}

impl fmt::Display for Outcome {
    /// Short, log-friendly: `503`, `grpc UNAVAILABLE`, `connect-failure`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Outcome::Success => f.write_str("success"),
            Outcome::Http(s) => write!(f, "{s}"),
            Outcome::Grpc(c) => match grpc::name(c) {
                Some(n) => write!(f, "grpc {n}"),
                None => write!(f, "grpc {c}"),
            },
            Outcome::RateLimited { .. } => f.write_str("rate-limited"),
            Outcome::ConnectFailure => f.write_str("connect-failure"),
            Outcome::Reset => f.write_str("reset"),
            Outcome::Timeout => f.write_str("timeout"),
            Outcome::Local(r) => write!(f, "local {}", r.as_str()),
        }
    }
}

/// What an outcome means for the upstream's health.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Class {
    /// Counts against the upstream (breaker failure, outlier "5xx").
    pub failure: bool,
    /// A gateway error (502/503/504, gRPC UNAVAILABLE/DEADLINE_EXCEEDED, or local-origin).
    pub gateway_error: bool,
    /// No response was produced: connect failure, reset, timeout.
    pub local_origin: bool,
    /// 429 / RESOURCE_EXHAUSTED.
    pub rate_limited: bool,
    /// Tripline's own rejection: every consumer must ignore it.
    pub ignored: bool,
}

/// Maps outcomes to [`Class`]es. Lookups are a bit test: cheap enough for every request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Classifier {
    /// HTTP statuses (0..1024) that are failures; statuses ≥ 1024 are always failures.
    failure_status: [u64; 16],
    /// HTTP statuses that are gateway errors.
    gateway_status: [u64; 16],
    /// gRPC codes (bit per code) that are failures; codes above 16 count as `UNKNOWN`.
    grpc_failure: u32,
    /// gRPC codes that are gateway errors.
    grpc_gateway: u32,
    /// Whether 429 / RESOURCE_EXHAUSTED count as failures (default: no).
    pub rate_limited_is_failure: bool,
    /// Whether a failed TCP connect counts as a failure (default: yes).
    pub connect_failure_is_failure: bool,
    /// Whether a connection or stream reset before a complete response counts (default: yes).
    pub reset_is_failure: bool,
    /// Whether a per-try timeout counts (default: yes).
    pub timeout_is_failure: bool,
}

impl Default for Classifier {
    /// 5xx are failures; 502/503/504 are gateway errors; gRPC UNAVAILABLE, DEADLINE_EXCEEDED,
    /// INTERNAL, UNKNOWN and DATA_LOSS are failures, the first two also gateway errors.
    fn default() -> Self {
        let mut c = Classifier::empty();
        c.add_failure_range(500, 599);
        for s in [502, 503, 504] {
            c.add_gateway_status(s);
        }
        for code in
            [grpc::UNAVAILABLE, grpc::DEADLINE_EXCEEDED, grpc::INTERNAL, grpc::UNKNOWN, grpc::DATA_LOSS]
        {
            c.add_grpc_failure(code);
        }
        c.add_grpc_gateway(grpc::UNAVAILABLE);
        c.add_grpc_gateway(grpc::DEADLINE_EXCEEDED);
        c
    }
}

fn set_bit(bits: &mut [u64; 16], s: u16) {
    if let Some(w) = bits.get_mut(s as usize / 64) {
        *w |= 1 << (s % 64);
    }
}

fn bit(bits: &[u64; 16], s: u16) -> Option<bool> {
    bits.get(s as usize / 64).map(|w| w & (1 << (s % 64)) != 0)
}

impl Classifier {
    /// Nothing is a failure (build up from here).
    pub fn empty() -> Self {
        Classifier {
            failure_status: [0; 16],
            gateway_status: [0; 16],
            grpc_failure: 0,
            grpc_gateway: 0,
            rate_limited_is_failure: false,
            connect_failure_is_failure: true,
            reset_is_failure: true,
            timeout_is_failure: true,
        }
    }

    /// This classifier with its HTTP failures replaced by the statuses in `ranges` (inclusive);
    /// a gateway status stays one only while it is still a failure. gRPC and local-origin
    /// settings are kept. (Linkerd's `responseClasses` say which HTTP statuses fail.)
    pub fn with_http_failures(&self, ranges: &[(u16, u16)]) -> Classifier {
        let mut c = self.clone();
        c.failure_status = [0; 16];
        for &(lo, hi) in ranges {
            c.add_failure_range(lo, hi);
        }
        for (g, f) in c.gateway_status.iter_mut().zip(c.failure_status) {
            *g &= f;
        }
        c
    }

    /// Marks HTTP statuses `lo..=hi` as failures.
    pub fn add_failure_range(&mut self, lo: u16, hi: u16) -> &mut Self {
        for s in lo..=hi.min(1023) {
            set_bit(&mut self.failure_status, s);
        }
        self
    }

    /// Marks an HTTP status as a gateway error (and a failure).
    pub fn add_gateway_status(&mut self, s: u16) -> &mut Self {
        set_bit(&mut self.gateway_status, s);
        set_bit(&mut self.failure_status, s);
        self
    }

    /// Marks a gRPC code as a failure.
    pub fn add_grpc_failure(&mut self, code: u8) -> &mut Self {
        if code < 32 {
            self.grpc_failure |= 1 << code;
        }
        self
    }

    /// Marks a gRPC code as a gateway error (and a failure).
    pub fn add_grpc_gateway(&mut self, code: u8) -> &mut Self {
        if code < 32 {
            self.grpc_gateway |= 1 << code;
            self.grpc_failure |= 1 << code;
        }
        self
    }

    pub fn classify(&self, outcome: &Outcome) -> Class {
        let mut c = Class::default();
        match *outcome {
            Outcome::Success => {}
            Outcome::Http(s) => {
                c.failure = bit(&self.failure_status, s).unwrap_or(true);
                c.gateway_error = bit(&self.gateway_status, s).unwrap_or(false);
            }
            Outcome::Grpc(code) => {
                let code = if code > 16 { grpc::UNKNOWN } else { code };
                c.failure = self.grpc_failure & (1 << code) != 0;
                c.gateway_error = self.grpc_gateway & (1 << code) != 0;
            }
            Outcome::RateLimited { .. } => {
                c.rate_limited = true;
                c.failure = self.rate_limited_is_failure;
            }
            Outcome::ConnectFailure | Outcome::Reset | Outcome::Timeout => {
                c.failure = match *outcome {
                    Outcome::ConnectFailure => self.connect_failure_is_failure,
                    Outcome::Reset => self.reset_is_failure,
                    _ => self.timeout_is_failure,
                };
                c.gateway_error = c.failure;
                c.local_origin = true;
            }
            Outcome::Local(_) => c.ignored = true,
        }
        c
    }
}

/// Whether `latency` counts as a slow call for `threshold` (`None` disables slow calls).
pub fn is_slow(latency: Duration, threshold: Option<Duration>) -> bool {
    threshold.is_some_and(|t| latency >= t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_failures_replaced_keep_grpc_and_drop_gateway_statuses_no_longer_failing() {
        let c = Classifier::default().with_http_failures(&[(500, 502), (504, 599)]);
        assert!(c.classify(&Outcome::Http(500)).failure);
        assert!(!c.classify(&Outcome::Http(503)).failure && !c.classify(&Outcome::Http(503)).gateway_error);
        assert!(c.classify(&Outcome::Http(502)).gateway_error);
        assert!(!c.classify(&Outcome::Http(404)).failure);
        assert!(c.classify(&Outcome::grpc(grpc::UNAVAILABLE, None)).failure);
        let fours = Classifier::default().with_http_failures(&[(400, 499)]);
        assert!(fours.classify(&Outcome::Http(404)).failure && !fours.classify(&Outcome::Http(500)).failure);
    }

    #[test]
    fn default_classification_matches_istio_expectations() {
        let c = Classifier::default();
        let f = |o| c.classify(&o);
        assert!(!f(Outcome::Success).failure);
        assert!(!f(Outcome::Http(200)).failure);
        assert!(!f(Outcome::Http(404)).failure);
        assert!(f(Outcome::Http(500)).failure && !f(Outcome::Http(500)).gateway_error);
        assert!(f(Outcome::Http(503)).failure && f(Outcome::Http(503)).gateway_error);
        assert!(f(Outcome::Http(1500)).failure, "nonsense statuses are failures");
        assert!(f(Outcome::Grpc(grpc::UNAVAILABLE)).gateway_error);
        assert!(f(Outcome::Grpc(grpc::INTERNAL)).failure);
        assert!(!f(Outcome::Grpc(grpc::INTERNAL)).gateway_error);
        assert!(!f(Outcome::Grpc(grpc::NOT_FOUND)).failure);
        assert!(f(Outcome::Grpc(200)).failure, "unknown codes are UNKNOWN");
        let t = f(Outcome::Timeout);
        assert!(t.failure && t.local_origin && t.gateway_error);
    }

    #[test]
    fn rate_limited_is_its_own_class() {
        let mut c = Classifier::default();
        let o = Outcome::http(429, Some(Duration::from_secs(2)));
        assert_eq!(o, Outcome::RateLimited { retry_after: Some(Duration::from_secs(2)) });
        assert_eq!(Outcome::grpc(grpc::RESOURCE_EXHAUSTED, None), Outcome::RateLimited { retry_after: None });
        let k = c.classify(&o);
        assert!(k.rate_limited && !k.failure);
        c.rate_limited_is_failure = true;
        assert!(c.classify(&o).failure);
    }

    #[test]
    fn local_rejections_are_ignored() {
        let k = Classifier::default().classify(&Outcome::Local(LocalReason::Overflow));
        assert!(k.ignored && !k.failure && !k.gateway_error);
    }

    #[test]
    fn custom_ranges() {
        let mut c = Classifier::empty();
        c.add_failure_range(502, 504).add_grpc_failure(grpc::CANCELLED).add_failure_range(900, 5000);
        assert!(!c.classify(&Outcome::Http(500)).failure);
        assert!(c.classify(&Outcome::Http(503)).failure);
        assert!(c.classify(&Outcome::Http(1023)).failure);
        assert!(c.classify(&Outcome::Grpc(grpc::CANCELLED)).failure);
        assert!(!c.classify(&Outcome::Grpc(grpc::UNAVAILABLE)).failure);
        assert!(is_slow(Duration::from_millis(10), Some(Duration::from_millis(10))));
        assert!(!is_slow(Duration::from_secs(10), None));
    }

    #[test]
    fn labels_are_log_friendly() {
        assert_eq!(Outcome::Http(503).to_string(), "503");
        assert_eq!(Outcome::Grpc(14).to_string(), "grpc UNAVAILABLE");
        assert_eq!(Outcome::Grpc(99).to_string(), "grpc 99");
        assert_eq!(Outcome::Local(LocalReason::BreakerOpen).to_string(), "local breaker-open");
    }
}
