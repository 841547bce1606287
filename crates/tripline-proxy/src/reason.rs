//! Why Tripline answered a request itself: the reason every local reply, counter and access
//! log line carries (`x-tripline-reason`), with its HTTP status, its words, and the gRPC status a
//! gRPC client is given. A leaf: every layer names reasons, and only the pipeline builds the
//! responses (`local_reply`).

use http::StatusCode;
use tripline_core::classify::grpc;

/// Why Tripline answered instead of an upstream. The discriminant indexes counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    OverflowConnections,
    OverflowPending,
    OverflowRequests,
    NoRoute,
    NoHealthyUpstream,
    UpstreamConnectFailure,
    UpstreamReset,
    RouteTimeout,
    BreakerOpen,
    UpstreamTimeout,
    /// An HTTP/1.x request on an `HTTP2`/`GRPC` listener, which speaks h2c only.
    Http2Only,
    /// A request the parsers let through that no upstream should get (see
    /// `http_proxy::malformed`).
    BadRequest,
    /// The client's request body broke the protocol (bad chunked framing, wrong length).
    BadRequestBody,
    /// The client left before its request was complete; logged, rarely seen by anyone.
    DownstreamDisconnect,
    /// The client was still sending its request body when the route timeout passed.
    RequestTimeout,
    /// Neither the client nor the upstream moved the request for the stream idle timeout.
    StreamIdleTimeout,
    /// `CONNECT`, which Tripline does not tunnel.
    ConnectNotSupported,
    /// The request's header fields are over `--max-request-headers-kb` or
    /// `--max-request-headers`: answered by the server that read them, before routing.
    RequestHeadersTooLarge,
    /// A route's rate limit had no token for the request.
    RateLimited,
    /// An AuthorizationPolicy denied the request (see `pipeline::authz`).
    RbacDenied,
}

pub const REASON_HEADER: &str = "x-tripline-reason";

/// On an upstream's 5xx that Tripline passes on once its retries are spent: how many attempts
/// it made. A Tripline one hop up reads it, as it reads [`REASON_HEADER`], as the next hop's
/// decision: the error was its upstream's, already retried and counted where it happened.
pub const UPSTREAM_FAILED_HEADER: &str = "x-tripline-upstream-failed";

/// The two headers as names, for lookups on the response path: a `&str` name is parsed and
/// checked at each lookup (450 instructions each, measured with callgrind).
pub static REASON_NAME: http::HeaderName = http::HeaderName::from_static(REASON_HEADER);
pub static UPSTREAM_FAILED_NAME: http::HeaderName = http::HeaderName::from_static(UPSTREAM_FAILED_HEADER);

/// The response comes from a next hop that is a Tripline and decided: it answered itself, or
/// passed on its upstream's error after retrying it.
pub fn from_next_hop(h: &http::HeaderMap) -> bool {
    h.contains_key(&REASON_NAME) || h.contains_key(&UPSTREAM_FAILED_NAME)
}

/// Envoy's response flag for a reason (`x-tripline-reason`), as access logs and Istio's
/// `response_flags` label show it: `UO` a breaker open or a pool full, `UH` no healthy
/// upstream, `NR` no route, `UF` a connect failure, `UR` an upstream reset, `UT` a timeout,
/// `DC` the client left, `SI` stream idle, `DPE` a malformed request, `RL` rate limited.
pub fn envoy_flag(reason: &str) -> Option<&'static str> {
    Some(match reason {
        "overflow-connections" | "overflow-pending" | "overflow-requests" | "breaker-open" => "UO",
        "no-healthy-upstream" => "UH",
        "no-route" => "NR",
        "upstream-connect-failure" => "UF",
        "upstream-reset" => "UR",
        "route-timeout" | "upstream-timeout" | "request-timeout" => "UT",
        "downstream-disconnect" => "DC",
        "stream-idle-timeout" => "SI",
        "bad-request"
        | "bad-request-body"
        | "http2-only"
        | "request-headers-too-large"
        | "connect-not-supported" => "DPE",
        "rate-limited" => "RL",
        _ => return None,
    })
}

/// Everything fixed about a reason.
struct Info {
    name: &'static str,
    status: u16,
    body: &'static str,
}

impl Reason {
    pub const ALL: [Reason; 20] = [
        Reason::OverflowConnections,
        Reason::OverflowPending,
        Reason::OverflowRequests,
        Reason::NoRoute,
        Reason::NoHealthyUpstream,
        Reason::UpstreamConnectFailure,
        Reason::UpstreamReset,
        Reason::RouteTimeout,
        Reason::BreakerOpen,
        Reason::UpstreamTimeout,
        Reason::Http2Only,
        Reason::BadRequest,
        Reason::BadRequestBody,
        Reason::DownstreamDisconnect,
        Reason::RequestTimeout,
        Reason::StreamIdleTimeout,
        Reason::ConnectNotSupported,
        Reason::RequestHeadersTooLarge,
        Reason::RateLimited,
        Reason::RbacDenied,
    ];

    fn info(self) -> Info {
        let (name, status, body) = match self {
            Reason::OverflowConnections => {
                ("overflow-connections", 503, "upstream connection pool is full\n")
            }
            Reason::OverflowPending => {
                ("overflow-pending", 503, "too many requests waiting for an upstream connection\n")
            }
            Reason::OverflowRequests => {
                ("overflow-requests", 503, "too many concurrent requests to the upstream\n")
            }
            Reason::NoRoute => ("no-route", 404, "no route matches this request\n"),
            Reason::NoHealthyUpstream => ("no-healthy-upstream", 503, "no healthy upstream\n"),
            Reason::UpstreamConnectFailure => {
                ("upstream-connect-failure", 503, "could not connect to the upstream\n")
            }
            Reason::UpstreamReset => ("upstream-reset", 502, "the upstream reset the connection\n"),
            Reason::RouteTimeout => {
                ("route-timeout", 504, "the upstream did not answer within the route timeout\n")
            }
            Reason::BreakerOpen => (
                "breaker-open",
                503,
                "circuit breaker open: the upstream is failing and is being let back carefully\n",
            ),
            Reason::UpstreamTimeout => {
                ("upstream-timeout", 504, "the upstream did not answer within the per-try timeout\n")
            }
            Reason::Http2Only => {
                ("http2-only", 505, "this listener speaks HTTP/2 only (h2c with prior knowledge)\n")
            }
            Reason::BadRequest => ("bad-request", 400, "malformed request\n"),
            Reason::BadRequestBody => (
                "bad-request-body",
                400,
                "the request body is malformed (its chunked framing or length is wrong)\n",
            ),
            Reason::DownstreamDisconnect => {
                ("downstream-disconnect", 499, "the client left before its request was complete\n")
            }
            Reason::RequestTimeout => (
                "request-timeout",
                408,
                "the request body was still arriving when the route timeout passed\n",
            ),
            Reason::StreamIdleTimeout => {
                ("stream-idle-timeout", 408, "the request made no progress for the stream idle timeout\n")
            }
            Reason::ConnectNotSupported => (
                "connect-not-supported",
                405,
                "CONNECT is not supported: Tripline does not tunnel through HTTP proxies\n",
            ),
            Reason::RequestHeadersTooLarge => (
                "request-headers-too-large",
                431,
                "the request's header fields are over the proxy's limit (size or count)\n",
            ),
            Reason::RateLimited => {
                ("rate-limited", 429, "rate limit reached: retry after the time in Retry-After\n")
            }
            Reason::RbacDenied => ("rbac-denied", 403, "denied by an authorization policy\n"),
        };
        Info { name, status, body }
    }

    pub fn as_str(self) -> &'static str {
        self.info().name
    }

    pub fn status(self) -> StatusCode {
        StatusCode::from_u16(self.info().status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    pub(crate) fn body(self) -> &'static str {
        self.info().body
    }

    /// The gRPC status a gRPC client is given: Envoy's mapping of HTTP statuses
    /// (`Grpc::Utility::httpToGrpcStatus`), except that timeouts are `DEADLINE_EXCEEDED`.
    pub fn grpc_status(self) -> u8 {
        match self {
            Reason::RouteTimeout
            | Reason::UpstreamTimeout
            | Reason::RequestTimeout
            | Reason::StreamIdleTimeout => grpc::DEADLINE_EXCEEDED,
            Reason::DownstreamDisconnect => grpc::CANCELLED,
            _ => grpc_of_http(self.status()),
        }
    }
}

/// Envoy's mapping of an HTTP status to a gRPC status.
pub(crate) fn grpc_of_http(status: StatusCode) -> u8 {
    match status.as_u16() {
        400 => grpc::INTERNAL,
        401 => grpc::UNAUTHENTICATED,
        403 => grpc::PERMISSION_DENIED,
        404 => grpc::UNIMPLEMENTED,
        429 => grpc::RESOURCE_EXHAUSTED,
        502..=504 => grpc::UNAVAILABLE,
        _ => grpc::UNKNOWN,
    }
}
