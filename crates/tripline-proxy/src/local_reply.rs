//! Responses Tripline generates itself. Each carries its reason in `x-tripline-reason`, so a
//! 503 is never anonymous: the same reason is counted in metrics and shown in the access log.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode};

use crate::body::ResponseBody;

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
}

pub const REASON_HEADER: &str = "x-tripline-reason";

impl Reason {
    pub const ALL: [Reason; 11] = [
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
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::OverflowConnections => "overflow-connections",
            Reason::OverflowPending => "overflow-pending",
            Reason::OverflowRequests => "overflow-requests",
            Reason::NoRoute => "no-route",
            Reason::NoHealthyUpstream => "no-healthy-upstream",
            Reason::UpstreamConnectFailure => "upstream-connect-failure",
            Reason::UpstreamReset => "upstream-reset",
            Reason::RouteTimeout => "route-timeout",
            Reason::BreakerOpen => "breaker-open",
            Reason::UpstreamTimeout => "upstream-timeout",
            Reason::Http2Only => "http2-only",
        }
    }

    pub fn status(self) -> StatusCode {
        match self {
            Reason::NoRoute => StatusCode::NOT_FOUND,
            Reason::UpstreamReset => StatusCode::BAD_GATEWAY,
            Reason::RouteTimeout | Reason::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            Reason::Http2Only => StatusCode::HTTP_VERSION_NOT_SUPPORTED,
            _ => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    pub(crate) fn body(self) -> &'static str {
        match self {
            Reason::OverflowConnections => "upstream connection pool is full\n",
            Reason::OverflowPending => "too many requests waiting for an upstream connection\n",
            Reason::OverflowRequests => "too many concurrent requests to the upstream\n",
            Reason::NoRoute => "no route matches this request\n",
            Reason::NoHealthyUpstream => "no healthy upstream\n",
            Reason::UpstreamConnectFailure => "could not connect to the upstream\n",
            Reason::UpstreamReset => "the upstream reset the connection\n",
            Reason::RouteTimeout => "the upstream did not answer within the route timeout\n",
            Reason::BreakerOpen => {
                "circuit breaker open: the upstream is failing and is being let back carefully\n"
            }
            Reason::UpstreamTimeout => "the upstream did not answer within the per-try timeout\n",
            Reason::Http2Only => "this listener speaks HTTP/2 only (h2c with prior knowledge)\n",
        }
    }

    /// The response sent to the client.
    pub fn response(self) -> Response<ResponseBody> {
        let mut resp = Response::new(ResponseBody::local(Bytes::from_static(self.body().as_bytes())));
        *resp.status_mut() = self.status();
        let h = resp.headers_mut();
        h.insert(REASON_HEADER, HeaderValue::from_static(self.as_str()));
        h.insert(http::header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_has_a_distinct_name_and_index() {
        for (i, r) in Reason::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i);
        }
        let mut names: Vec<_> = Reason::ALL.iter().map(|r| r.as_str()).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), Reason::ALL.len());
    }

    #[test]
    fn response_carries_the_reason() {
        let r = Reason::OverflowPending.response();
        assert_eq!(r.status(), 503);
        assert_eq!(r.headers()[REASON_HEADER], "overflow-pending");
        assert_eq!(Reason::RouteTimeout.response().status(), 504);
        assert_eq!(Reason::NoRoute.response().status(), 404);
    }
}
