//! Traces end to end: the real binary exports its spans with OTLP to a receiver on loopback
//! (HTTP/protobuf and gRPC, decoded with OpenTelemetry's own protobuf messages), and the
//! upstream sees the trace context each attempt was sent with.
//!
//! The receiver is hyper serving OTLP's two transports (`POST /v1/traces`, and the gRPC
//! `TraceService/Export` over h2c with its length-prefixed message and `grpc-status`
//! trailer): no collector binary can be installed here (it is published on GitHub and Docker
//! Hub, neither reachable), and what is under test is the bytes Tripline sends.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::BodyExt;
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::trace::v1::{span::SpanKind, status::StatusCode, Span};
use prost::Message;

use crate::support::client::{channel_body, full, get_with, Body};
use crate::support::config;
use crate::support::faulty::{Fault, Faulty};
use crate::support::{eventually, free_port, Proxy};

const GRPC_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

/// One export as received: the transport's path and the decoded request.
struct Export {
    path: String,
    grpc: bool,
    request: ExportTraceServiceRequest,
}

/// An OTLP receiver on loopback (HTTP/1.1 and h2c on one port).
struct Receiver {
    addr: SocketAddr,
    got: Arc<Mutex<Vec<Export>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

impl Receiver {
    async fn start() -> Receiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let got: Arc<Mutex<Vec<Export>>> = Arc::default();
        let kept = got.clone();
        let accept = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let kept = kept.clone();
                let service = hyper::service::service_fn(move |req| receive(kept.clone(), req));
                tokio::spawn(async move {
                    let server = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                    let _ = server.serve_connection(TokioIo::new(stream), service).await;
                });
            }
        });
        Receiver { addr, got, accept }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every span received so far, with the export it came in.
    fn spans(&self) -> Vec<(Span, Vec<KeyValue>)> {
        let got = self.got.lock().unwrap();
        let mut out = Vec::new();
        for e in got.iter() {
            for rs in &e.request.resource_spans {
                let resource = rs.resource.as_ref().map(|r| r.attributes.clone()).unwrap_or_default();
                for ss in &rs.scope_spans {
                    assert_eq!(ss.scope.as_ref().map(|s| s.name.as_str()), Some("tripline"));
                    out.extend(ss.spans.iter().map(|s| (s.clone(), resource.clone())));
                }
            }
        }
        out
    }
}

async fn receive(got: Arc<Mutex<Vec<Export>>>, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let path = req.uri().path().to_owned();
    let grpc = req
        .headers()
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
    let body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    let message = if grpc {
        // gRPC's framing: a compressed flag (0: not compressed), a 4-byte length, the message.
        assert!(body.len() >= 5 && body[0] == 0, "a gRPC message, uncompressed");
        let len = u32::from_be_bytes([body[1], body[2], body[3], body[4]]) as usize;
        body.slice(5..5 + len)
    } else {
        body
    };
    let request = ExportTraceServiceRequest::decode(message).expect("an ExportTraceServiceRequest");
    got.lock().unwrap().push(Export { path, grpc, request });
    let answer = ExportTraceServiceResponse::default().encode_to_vec();
    let resp = if grpc {
        let mut framed = vec![0u8];
        framed.extend_from_slice(&(answer.len() as u32).to_be_bytes());
        framed.extend_from_slice(&answer);
        let (tx, body) = channel_body(2);
        tx.send(Frame::data(Bytes::from(framed))).await.unwrap();
        let mut trailers = http::HeaderMap::new();
        trailers.insert("grpc-status", "0".parse().unwrap());
        tx.send(Frame::trailers(trailers)).await.unwrap();
        Response::builder().header("content-type", "application/grpc").body(body).unwrap()
    } else {
        Response::builder().header("content-type", "application/x-protobuf").body(full(answer)).unwrap()
    };
    Ok(resp)
}

fn attr<'a>(attrs: &'a [KeyValue], key: &str) -> Option<&'a AnyValue> {
    attrs.iter().find(|kv| kv.key == key).and_then(|kv| kv.value.as_ref()).and_then(|v| v.value.as_ref())
}

fn str_attr<'a>(attrs: &'a [KeyValue], key: &str) -> Option<&'a str> {
    match attr(attrs, key) {
        Some(AnyValue::StringValue(s)) => Some(s),
        _ => None,
    }
}

fn int_attr(attrs: &[KeyValue], key: &str) -> Option<i64> {
    match attr(attrs, key) {
        Some(AnyValue::IntValue(i)) => Some(*i),
        _ => None,
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The `traceparent` an upstream request carried: (trace id, parent span id, flags).
fn traceparent(headers: &http::HeaderMap) -> (String, String, String) {
    let v = headers.get("traceparent").expect("a traceparent upstream").to_str().unwrap();
    let parts: Vec<&str> = v.split('-').collect();
    assert_eq!(parts.len(), 4, "{v}");
    (parts[1].to_owned(), parts[2].to_owned(), parts[3].to_owned())
}

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CLIENT_SPAN: &str = "00f067aa0ba902b7";

/// Over HTTP/protobuf (`--otlp-endpoint`): a request that is retried once is one server
/// span, child of the client's, with a client span per attempt; each attempt went upstream
/// with its own span as the parent. A B3 caller gets B3 back, and nothing else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_request_is_a_server_span_with_a_client_span_per_attempt_over_http() {
    let receiver = Receiver::start().await;
    let up = Faulty::start("u1", Fault::Healthy).await;
    up.then(Fault::Status(503));
    let port = free_port();
    let yaml =
        config::mesh(port, "HTTP", &[up.addr], "    retries: {attempts: 2, retryOn: 5xx}\n", None, None);
    let mut proxy = Proxy::start_args(&yaml, &["--otlp-endpoint", &receiver.url()]).await;
    let gateway = SocketAddr::from(([127, 0, 0, 1], port));

    let parent = format!("00-{TRACE}-{CLIENT_SPAN}-01");
    let r = get_with(
        gateway,
        "backend.local",
        "/items/1",
        &[("traceparent", &parent), ("tracestate", "vendor=x")],
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200);
    let b3 = "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1";
    assert_eq!(get_with(gateway, "backend.local", "/b3", &[("b3", b3)]).await.unwrap().status, 200);

    let seen = up.seen();
    assert_eq!(seen.len(), 3, "two attempts, then the B3 request");
    let (t1, p1, f1) = traceparent(&seen[0].headers);
    let (t2, p2, f2) = traceparent(&seen[1].headers);
    assert_eq!((t1.as_str(), t2.as_str(), f1.as_str(), f2.as_str()), (TRACE, TRACE, "01", "01"));
    assert_ne!(p1, p2, "each attempt is sent from its own span");
    assert_ne!(p1, CLIENT_SPAN);
    assert_eq!(seen[1].headers["tracestate"], "vendor=x", "tracestate passes untouched");
    let b3_seen = seen[2].headers.get("b3").expect("b3 upstream").to_str().unwrap().to_owned();
    assert!(b3_seen.starts_with("80f198ee56343ba864fe8b2a57d3eff7-") && b3_seen.ends_with("-1"), "{b3_seen}");
    assert!(!b3_seen.contains("e457b5a2e4d86bd1"), "the B3 span is Tripline's: {b3_seen}");
    assert!(!seen[2].headers.contains_key("traceparent"), "a B3 caller's services get B3 only");

    // Two requests, three attempts: the per-request and per-attempt histograms tell them apart.
    let cluster = [("cluster", "outbound|80||backend.local")];
    let requests = proxy.metric("tripline_request_duration_seconds_count", &cluster).await;
    let attempts = proxy.metric("tripline_attempt_duration_seconds_count", &cluster).await;
    assert_eq!((requests, attempts), (2.0, 3.0));

    // SIGTERM: the drain ends with the last spans sent.
    proxy.signal("TERM");
    assert!(proxy.wait_exit(Duration::from_secs(15)).await.is_some_and(|s| s.success()));
    let got = receiver.got.lock().unwrap().iter().map(|e| (e.path.clone(), e.grpc)).collect::<Vec<_>>();
    assert!(!got.is_empty() && got.iter().all(|(p, g)| p == "/v1/traces" && !g), "{got:?}");
    let spans = receiver.spans();
    let ours: Vec<&(Span, Vec<KeyValue>)> = spans.iter().filter(|(s, _)| hex(&s.trace_id) == TRACE).collect();
    assert_eq!(ours.len(), 3, "one server span, two attempts: {ours:#?}");
    let (server, resource) =
        ours.iter().find(|(s, _)| s.kind == SpanKind::Server as i32).map(|(s, r)| (s, r)).unwrap();
    assert_eq!(str_attr(resource, "service.name"), Some("tripline"));
    assert_eq!(hex(&server.parent_span_id), CLIENT_SPAN);
    assert_eq!(str_attr(&server.attributes, "http.request.method"), Some("GET"));
    assert_eq!(str_attr(&server.attributes, "url.path"), Some("/items/1"));
    assert_eq!(int_attr(&server.attributes, "http.response.status_code"), Some(200));
    assert_eq!(int_attr(&server.attributes, "tripline.attempts"), Some(2));
    assert_eq!(str_attr(&server.attributes, "tripline.cluster"), Some("outbound|80||backend.local"));
    assert!(str_attr(&server.attributes, "tripline.route").is_some());
    assert_ne!(server.status.as_ref().map(|s| s.code), Some(StatusCode::Error as i32));
    let mut attempts: Vec<&Span> =
        ours.iter().map(|(s, _)| s).filter(|s| s.kind == SpanKind::Client as i32).collect();
    attempts.sort_by_key(|s| int_attr(&s.attributes, "tripline.attempt"));
    assert_eq!(attempts.len(), 2);
    for (a, sent_as) in attempts.iter().zip([&p1, &p2]) {
        assert_eq!(a.parent_span_id, server.span_id, "an attempt is the request's child");
        assert_eq!(&hex(&a.span_id), sent_as, "the upstream's parent is the attempt's span");
        assert_eq!(str_attr(&a.attributes, "tripline.endpoint"), Some(up.addr.to_string().as_str()));
        assert!(
            a.start_time_unix_nano >= server.start_time_unix_nano
                && a.end_time_unix_nano <= server.end_time_unix_nano
        );
    }
    assert_eq!(int_attr(&attempts[0].attributes, "http.response.status_code"), Some(503));
    assert_eq!(attempts[0].status.as_ref().map(|s| s.code), Some(StatusCode::Error as i32));
    assert_eq!(int_attr(&attempts[1].attributes, "http.request.resend_count"), Some(1));
    assert_eq!(int_attr(&attempts[1].attributes, "http.response.status_code"), Some(200));
    assert!(attempts[0].end_time_unix_nano <= attempts[1].start_time_unix_nano);
}

/// Over gRPC, configured only with OpenTelemetry's variables, sampling 0% of the traces that
/// start here: requests without a context are not recorded but go upstream with a new,
/// unsampled one; a sampled caller's request is, and when a forced-open breaker answers it
/// the server span says why (`tripline.reason`, an error status) and has no attempt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opentelemetry_variables_grpc_and_a_short_circuit_on_the_span() {
    let receiver = Receiver::start().await;
    let up = Faulty::start("u1", Fault::Healthy).await;
    let port = free_port();
    let policy = "  circuitBreaker: {consecutiveFailures: 5, openDuration: 30s}\n";
    let yaml = config::mesh(port, "HTTP", &[up.addr], "", None, Some(policy));
    let endpoint = format!("OTEL_EXPORTER_OTLP_ENDPOINT={}", receiver.url());
    let env = [
        "env",
        endpoint.as_str(),
        "OTEL_EXPORTER_OTLP_PROTOCOL=grpc",
        "OTEL_TRACES_SAMPLER=parentbased_traceidratio",
        "OTEL_TRACES_SAMPLER_ARG=0",
        "OTEL_SERVICE_NAME=gateway-under-test",
        "OTEL_BSP_SCHEDULE_DELAY=100",
    ];
    let proxy = Proxy::start_wrapped(&yaml, &[], &env).await;
    let gateway = SocketAddr::from(([127, 0, 0, 1], port));
    for i in 0..20 {
        let r = get_with(gateway, "backend.local", &format!("/plain/{i}"), &[]).await.unwrap();
        assert_eq!(r.status, 200);
    }
    let fresh: Vec<(String, String, String)> = up.seen().iter().map(|s| traceparent(&s.headers)).collect();
    assert!(fresh.iter().all(|(_, _, flags)| flags == "00"), "unsampled: {fresh:?}");
    let traces: std::collections::HashSet<&String> = fresh.iter().map(|(t, _, _)| t).collect();
    assert_eq!(traces.len(), 20, "each request starts its own trace");

    let forced = proxy.admin_post("/breakers/force-open?cluster=outbound%7C80%7C%7Cbackend.local").await;
    assert_eq!(forced.status, 200, "{}", forced.text());
    let parent = format!("00-{TRACE}-{CLIENT_SPAN}-01");
    let r = get_with(gateway, "backend.local", "/refused", &[("traceparent", &parent)]).await.unwrap();
    assert_eq!((r.status.as_u16(), r.reason()), (503, Some("breaker-open")));

    // Exported by the batch processor every 100 ms, while the proxy runs.
    eventually("the refused request's span", Duration::from_secs(10), || {
        let found = receiver.spans().iter().any(|(s, _)| hex(&s.trace_id) == TRACE);
        async move { found }
    })
    .await;
    let spans = receiver.spans();
    assert_eq!(spans.len(), 1, "only the sampled request is recorded: {spans:#?}");
    let (span, resource) = &spans[0];
    assert_eq!(str_attr(resource, "service.name"), Some("gateway-under-test"));
    assert_eq!(span.kind, SpanKind::Server as i32);
    assert_eq!(str_attr(&span.attributes, "tripline.reason"), Some("breaker-open"));
    assert_eq!(str_attr(&span.attributes, "error.type"), Some("breaker-open"));
    assert_eq!(int_attr(&span.attributes, "tripline.attempts"), Some(0));
    let status = span.status.as_ref().unwrap();
    assert_eq!((status.code, status.message.as_str()), (StatusCode::Error as i32, "breaker-open"));
    let got = receiver.got.lock().unwrap().iter().map(|e| (e.path.clone(), e.grpc)).collect::<Vec<_>>();
    assert!(got.iter().all(|(p, g)| p == GRPC_PATH && *g), "{got:?}");
}
