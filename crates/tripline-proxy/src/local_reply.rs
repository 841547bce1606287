//! Responses Tripline generates itself. Each carries its reason in `x-tripline-reason`, so a
//! 503 is never anonymous: the same reason is counted in metrics and shown in the access log.
//!
//! A gRPC client (`content-type: application/grpc*`) reads a status from `grpc-status`, not
//! from the HTTP status: it is answered the way gRPC servers answer an error, as Envoy does,
//! with HTTP 200 and a trailers-only response (`grpc-status` mapped from the HTTP status,
//! `grpc-message` saying why), `x-tripline-reason` kept. Otherwise a gRPC client reports only
//! "Received http2 header with status: 503". See `crate::grpc`.

use bytes::Bytes;
use http::{HeaderValue, Response};

use crate::body::ResponseBody;
use crate::reason::{Reason, REASON_HEADER};

/// The responses for a [`Reason`], built where the pipeline answers a request itself.
pub trait Reply {
    /// The response sent to the client.
    fn response(self) -> Response<ResponseBody>;
    /// The response, with `body` saying in more words what is wrong.
    fn response_with(self, body: &'static str) -> Response<ResponseBody>;
    /// The response for a gRPC client: trailers-only (an empty body, so the head ends the
    /// stream), HTTP 200, `grpc-status` and `grpc-message` in it.
    fn grpc_response(self) -> Response<ResponseBody>;
}

impl Reply for Reason {
    fn response(self) -> Response<ResponseBody> {
        self.response_with(self.body())
    }

    fn response_with(self, body: &'static str) -> Response<ResponseBody> {
        let mut resp = Response::new(ResponseBody::local(Bytes::from_static(body.as_bytes())));
        *resp.status_mut() = self.status();
        let h = resp.headers_mut();
        h.insert(REASON_HEADER, HeaderValue::from_static(self.as_str()));
        h.insert(http::header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        resp
    }

    fn grpc_response(self) -> Response<ResponseBody> {
        let mut resp = Response::new(ResponseBody::local(Bytes::new()));
        let h = resp.headers_mut();
        h.insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
        crate::grpc::set_status(h, self.grpc_status(), self.body());
        h.insert(REASON_HEADER, HeaderValue::from_static(self.as_str()));
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reason::grpc_of_http;
    use http::StatusCode;
    use tripline_core::classify::grpc;

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
        assert_eq!(Reason::DownstreamDisconnect.response().status(), 499);
    }

    #[test]
    fn grpc_clients_get_a_trailers_only_status_they_can_read() {
        let cases = [
            (Reason::BreakerOpen, grpc::UNAVAILABLE),
            (Reason::OverflowPending, grpc::UNAVAILABLE),
            (Reason::NoHealthyUpstream, grpc::UNAVAILABLE),
            (Reason::UpstreamConnectFailure, grpc::UNAVAILABLE),
            (Reason::UpstreamReset, grpc::UNAVAILABLE),
            (Reason::RouteTimeout, grpc::DEADLINE_EXCEEDED),
            (Reason::UpstreamTimeout, grpc::DEADLINE_EXCEEDED),
            (Reason::NoRoute, grpc::UNIMPLEMENTED),
            (Reason::BadRequestBody, grpc::INTERNAL),
        ];
        for (reason, code) in cases {
            let r = reason.grpc_response();
            assert_eq!(r.status(), 200, "{reason:?}");
            let h = r.headers();
            assert_eq!(h["grpc-status"], code.to_string().as_str(), "{reason:?}");
            assert_eq!(h[REASON_HEADER], reason.as_str());
            assert_eq!(h["content-type"], "application/grpc");
            assert!(!h["grpc-message"].is_empty());
            assert!(http_body::Body::is_end_stream(r.body()), "trailers-only: no body");
        }
        assert_eq!(grpc_of_http(StatusCode::TOO_MANY_REQUESTS), grpc::RESOURCE_EXHAUSTED);
    }
}
