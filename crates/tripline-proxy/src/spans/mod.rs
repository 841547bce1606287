//! Traces: a span for every sampled request (kind server) and one for each attempt it made
//! upstream (kind client, its child), with the trace context propagated to the upstream
//! ([`context`]: W3C and B3) and sampled parent-based by ratio ([`sampler`]).
//!
//! The request path pays for what is sampled only: an unsampled request is forwarded with the
//! context it came with (or, when it came with none, a new one marked unsampled, so the
//! services behind follow the decision); a sampled request gets a [`RequestSpan`], which each
//! attempt writes its span id into (`upstream::send`) and which is finished with the access
//! log's view of the request ([`Entry`]) when its response body ends. The finished spans go
//! to a [`SpanSink`]: the `tripline` binary's OTLP exporter (OpenTelemetry's batch processor,
//! on threads of its own), or a test's collector.
//!
//! Attributes follow OpenTelemetry's HTTP semantic conventions, with Tripline's own under
//! `tripline.*`: the route, cluster, endpoint, attempt, and the reason when Tripline answered
//! itself (`tripline.reason`: the span where a request was short-circuited says why).

pub mod context;
pub mod sampler;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use http::HeaderMap;
use tripline_core::classify::Outcome;
use tripline_core::rng::Rng;

use crate::access_log::{BodyEnd, Entry};
use context::Formats;
pub use sampler::Sampler;

/// The trace a request belongs to, as Tripline propagates it ([`context`]): W3C
/// `traceparent`, else B3 (`b3`, then `X-B3-TraceId` with `X-B3-SpanId`). Only valid ids.
pub fn trace_id(headers: &http::HeaderMap) -> Option<u128> {
    context::extract(headers).and_then(|i| i.ids).map(|(trace, _)| trace)
}

/// A finished span, as a sink receives it.
#[derive(Debug, Clone, PartialEq)]
pub struct SpanRecord {
    pub name: String,
    pub kind: SpanKind,
    pub trace_id: u128,
    pub span_id: u64,
    /// The span's parent: the caller's span for a request, the request's for an attempt.
    pub parent_id: Option<u64>,
    /// The parent is in another process (the caller's span).
    pub parent_remote: bool,
    pub start: SystemTime,
    pub end: SystemTime,
    pub attributes: Vec<(&'static str, Value)>,
    /// Set when the span failed, with what went wrong.
    pub error: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpanKind {
    /// The request as Tripline received it.
    Server,
    /// One attempt to an upstream.
    Client,
}

/// An attribute's value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Str(String),
    Int(i64),
}

impl SpanRecord {
    /// An attribute's value, for tests and sinks that look one up.
    pub fn attribute(&self, key: &str) -> Option<&Value> {
        self.attributes.iter().find(|(k, _)| *k == key).map(|(_, v)| v)
    }
}

/// Where finished spans go. `export` is called on the request path: it must only hand the
/// spans over (a queue), never wait.
pub trait SpanSink: Send + Sync + 'static {
    fn export(&self, spans: Vec<SpanRecord>);
    /// Sends what is queued, waiting at most until the exporter's own timeout; at shutdown.
    fn flush(&self) {}
}

/// The tracer: the sampler and where spans go.
pub struct Tracer {
    sampler: Sampler,
    sink: Box<dyn SpanSink>,
}

impl std::fmt::Debug for Tracer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tracer").field("sampler", &self.sampler).finish_non_exhaustive()
    }
}

impl Tracer {
    pub fn new(sampler: Sampler, sink: Box<dyn SpanSink>) -> Tracer {
        Tracer { sampler, sink }
    }

    /// The request phase's first step: reads the request's trace context and decides whether
    /// it is recorded. An unrecorded request that came without a context gets one (a new
    /// trace, marked unsampled); a recorded one gets its span, whose id goes upstream until
    /// an attempt replaces it with its own.
    pub fn on_request(&self, headers: &mut HeaderMap, rng: &dyn Rng) -> Traced {
        let incoming = context::extract(headers);
        let ids = incoming.and_then(|i| i.ids);
        let trace_id = ids.map_or_else(|| new_trace_id(rng), |(t, _)| t);
        let sampled = self.sampler.sample(incoming.and_then(|i| i.sampled), trace_id);
        let formats = incoming.map_or(Formats::DEFAULT, |i| i.formats);
        if !sampled {
            if ids.is_none() {
                context::inject(headers, formats, trace_id, new_span_id(rng), None, false);
            }
            return Traced { trace_id, span: None };
        }
        let span_id = new_span_id(rng);
        let parent = ids.map(|(_, s)| s);
        context::inject(headers, formats, trace_id, span_id, parent, true);
        let span = Arc::new(RequestSpan {
            trace_id,
            span_id,
            parent,
            formats,
            start: SystemTime::now(),
            attempts: Mutex::new(Vec::new()),
        });
        Traced { trace_id, span: Some(span) }
    }

    /// The logging phase: the request's spans, finished with what the access log knows of it,
    /// handed to the sink.
    pub fn finish(&self, span: &RequestSpan, entry: &Entry<'_>) {
        let end = SystemTime::now();
        let attempts = std::mem::take(&mut *span.attempts.lock().unwrap_or_else(|e| e.into_inner()));
        let mut spans = Vec::with_capacity(1 + attempts.len());
        spans.push(span.server_span(entry, end));
        for a in attempts {
            spans.push(span.attempt_span(a, entry, end));
        }
        self.sink.export(spans);
    }

    /// At shutdown: sends what is queued.
    pub fn flush(&self) {
        self.sink.flush();
    }
}

/// What the trace phase decided for a request.
#[derive(Debug)]
pub struct Traced {
    /// The trace it belongs to: its caller's, or one started here.
    pub trace_id: u128,
    /// Its span, when it is sampled.
    pub span: Option<Arc<RequestSpan>>,
}

fn new_trace_id(rng: &dyn Rng) -> u128 {
    ((u128::from(rng.next_u64()) << 64) | u128::from(rng.next_u64())).max(1)
}

fn new_span_id(rng: &dyn Rng) -> u64 {
    rng.next_u64().max(1)
}

/// A sampled request's span while the request runs: its ids, and its attempts so far.
#[derive(Debug)]
pub struct RequestSpan {
    pub trace_id: u128,
    pub span_id: u64,
    /// The caller's span.
    pub parent: Option<u64>,
    formats: Formats,
    start: SystemTime,
    /// Locked by the request's own task only (an attempt begins, ends; the response ends):
    /// never contended, and only sampled requests have one.
    attempts: Mutex<Vec<AttemptRecord>>,
}

/// One attempt upstream.
#[derive(Debug)]
struct AttemptRecord {
    number: u32,
    span_id: u64,
    endpoint: SocketAddr,
    start: SystemTime,
    /// `None` for the attempt whose response the client gets: it ends with the response body.
    end: Option<SystemTime>,
    status: Option<u16>,
    /// How it failed without a response.
    error: Option<&'static str>,
}

impl RequestSpan {
    /// An attempt goes out to `endpoint`: its span begins, and its id is the parent the
    /// upstream sees.
    pub fn begin_attempt(&self, number: u32, endpoint: SocketAddr, headers: &mut HeaderMap, rng: &dyn Rng) {
        let span_id = new_span_id(rng);
        context::inject(headers, self.formats, self.trace_id, span_id, Some(self.span_id), true);
        let record = AttemptRecord {
            number,
            span_id,
            endpoint,
            start: SystemTime::now(),
            end: None,
            status: None,
            error: None,
        };
        self.attempts.lock().unwrap_or_else(|e| e.into_inner()).push(record);
    }

    /// The attempt's response head came (`status`) or it failed (`outcome`). `last`: the
    /// client gets this response, and the attempt ends with its body.
    pub fn end_attempt(&self, status: Option<u16>, outcome: &Outcome, last: bool) {
        let mut attempts = self.attempts.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(a) = attempts.last_mut() {
            a.status = status;
            a.error = match outcome {
                Outcome::ConnectFailure => Some("connect-failure"),
                Outcome::Reset => Some("reset"),
                Outcome::Timeout => Some("timeout"),
                Outcome::Local(_) => Some("local"),
                _ => None,
            }
            .filter(|_| status.is_none());
            if !(last && status.is_some()) {
                a.end = Some(SystemTime::now());
            }
        }
    }

    fn server_span(&self, e: &Entry<'_>, end: SystemTime) -> SpanRecord {
        let name = match e.route {
            Some(route) => format!("{} {route}", e.method),
            None => e.method.to_owned(),
        };
        let mut attributes = vec![
            ("http.request.method", Value::Str(e.method.to_owned())),
            ("url.path", Value::Str(e.path.to_owned())),
            ("url.scheme", Value::Str(e.scheme.unwrap_or("http").to_owned())),
            ("network.protocol.version", Value::Str(protocol_version(e.protocol).to_owned())),
            ("client.address", Value::Str(e.downstream.ip().to_string())),
            ("client.port", Value::Int(i64::from(e.downstream.port()))),
            ("tripline.listener", Value::Str(e.listener.to_owned())),
            ("tripline.attempts", Value::Int(i64::from(e.attempts))),
            ("tripline.response_flags", Value::Str(e.response_flags())),
        ];
        let (host, port) = split_authority(e.authority);
        if !host.is_empty() {
            attributes.push(("server.address", Value::Str(host.to_owned())));
        }
        if let Some(port) = port {
            attributes.push(("server.port", Value::Int(i64::from(port))));
        }
        if e.status != 0 {
            attributes.push(("http.response.status_code", Value::Int(i64::from(e.status))));
        }
        let optional = [
            ("tripline.route", e.route),
            ("tripline.cluster", e.cluster),
            ("tripline.reason", e.reason),
            ("tripline.request_id", e.request_id),
        ];
        for (k, v) in optional {
            if let Some(v) = v {
                attributes.push((k, Value::Str(v.to_owned())));
            }
        }
        if let Some(up) = e.upstream {
            attributes.push(("tripline.endpoint", Value::Str(up.to_string())));
        }
        if e.body_end != BodyEnd::Complete {
            attributes.push(("tripline.response_end", Value::Str(e.body_end.as_str().to_owned())));
        }
        // Semantic conventions: a server span fails on a 5xx (a 4xx is the client's); here
        // also when the response was cut off or never sent.
        let error = if let Some(reason) = e.reason.filter(|_| e.status >= 500) {
            Some(reason.to_owned())
        } else if e.status >= 500 {
            Some(e.status.to_string())
        } else if e.status == 0 || e.body_end != BodyEnd::Complete {
            Some(e.body_end.as_str().to_owned())
        } else {
            None
        };
        if let Some(err) = &error {
            attributes.push(("error.type", Value::Str(err.clone())));
        }
        SpanRecord {
            name,
            kind: SpanKind::Server,
            trace_id: self.trace_id,
            span_id: self.span_id,
            parent_id: self.parent,
            parent_remote: self.parent.is_some(),
            start: self.start,
            end,
            attributes,
            error,
        }
    }

    fn attempt_span(&self, a: AttemptRecord, e: &Entry<'_>, end: SystemTime) -> SpanRecord {
        let mut attributes = vec![
            ("http.request.method", Value::Str(e.method.to_owned())),
            ("server.address", Value::Str(a.endpoint.ip().to_string())),
            ("server.port", Value::Int(i64::from(a.endpoint.port()))),
            ("network.peer.address", Value::Str(a.endpoint.ip().to_string())),
            ("tripline.attempt", Value::Int(i64::from(a.number))),
            ("tripline.endpoint", Value::Str(a.endpoint.to_string())),
        ];
        if a.number > 1 {
            attributes.push(("http.request.resend_count", Value::Int(i64::from(a.number - 1))));
        }
        if let Some(cluster) = e.cluster {
            attributes.push(("tripline.cluster", Value::Str(cluster.to_owned())));
        }
        if let Some(status) = a.status {
            attributes.push(("http.response.status_code", Value::Int(i64::from(status))));
        }
        // A client span fails on a 4xx or 5xx, or without a response.
        let error = match (a.status, a.error) {
            (Some(s), _) if s >= 400 => Some(s.to_string()),
            (None, Some(err)) => Some(err.to_owned()),
            (None, None) => Some("reset".to_owned()),
            _ => None,
        };
        if let Some(err) = &error {
            attributes.push(("error.type", Value::Str(err.clone())));
        }
        SpanRecord {
            name: e.method.to_owned(),
            kind: SpanKind::Client,
            trace_id: self.trace_id,
            span_id: a.span_id,
            parent_id: Some(self.span_id),
            parent_remote: false,
            start: a.start,
            end: a.end.unwrap_or(end),
            attributes,
            error,
        }
    }
}

/// `HTTP/1.1` → `1.1`, `HTTP/2.0` → `2` (the conventions' `network.protocol.version`).
fn protocol_version(protocol: &str) -> &str {
    match protocol.strip_prefix("HTTP/") {
        Some("2.0") => "2",
        Some("3.0") => "3",
        Some(v) => v,
        None => protocol,
    }
}

/// `host[:port]`, an IPv6 host in brackets.
fn split_authority(authority: &str) -> (&str, Option<u16>) {
    let (host, port) = match authority.rfind(':') {
        Some(i) if !authority[i..].contains(']') => (&authority[..i], authority[i + 1..].parse().ok()),
        _ => (authority, None),
    };
    (host.trim_start_matches('[').trim_end_matches(']'), port)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trace_ids_come_from_traceparent_then_b3() {
        let text =
            |h: &http::HeaderMap| trace_id(h).map(|t| context::trace_id_text(t, &mut [0; 32]).to_owned());
        let mut h = http::HeaderMap::new();
        assert_eq!(text(&h), None);
        h.insert("x-b3-traceid", "463ac35c9f6413ad".parse().unwrap());
        h.insert("x-b3-spanid", "e457b5a2e4d86bd1".parse().unwrap());
        assert_eq!(text(&h).as_deref(), Some("463ac35c9f6413ad"), "a 64-bit id stays 16 digits");
        h.insert("b3", "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1".parse().unwrap());
        assert_eq!(text(&h).as_deref(), Some("80f198ee56343ba864fe8b2a57d3eff7"));
        h.insert("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".parse().unwrap());
        assert_eq!(text(&h).as_deref(), Some("4bf92f3577b34da6a3ce929d0e0e4736"));
        h.insert("traceparent", "00-00000000000000000000000000000000-00f067aa0ba902b7-01".parse().unwrap());
        assert_eq!(
            text(&h).as_deref(),
            Some("80f198ee56343ba864fe8b2a57d3eff7"),
            "an all-zero id is invalid"
        );
    }

    /// The sink of these tests: keeps what it is given.
    #[derive(Default, Clone)]
    struct Kept(Arc<Mutex<Vec<SpanRecord>>>);

    impl SpanSink for Kept {
        fn export(&self, spans: Vec<SpanRecord>) {
            self.0.lock().unwrap().extend(spans);
        }
    }

    /// The access log tests' refused request (`GET shop.local/cart`, `503 breaker-open`).
    fn entry() -> Entry<'static> {
        let mut e = crate::access_log::tests::entry();
        (e.authority, e.route) = ("reviews.default:9080", Some("reviews"));
        e
    }

    #[test]
    fn a_short_circuited_request_says_why_on_its_span() {
        let kept = Kept::default();
        let tracer = Tracer::new(Sampler::default(), Box::new(kept.clone()));
        let rng = tripline_core::rng::SplitMix::seeded(7);
        let mut h = HeaderMap::new();
        h.insert("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".parse().unwrap());
        let span = tracer.on_request(&mut h, &rng).span.expect("sampled by its parent");
        tracer.finish(&span, &entry());
        let spans = kept.0.lock().unwrap();
        assert_eq!(spans.len(), 1, "no attempt was made");
        let s = &spans[0];
        assert_eq!(
            (s.kind, s.trace_id, s.parent_id),
            (SpanKind::Server, 0x4bf92f3577b34da6a3ce929d0e0e4736, Some(0x00f067aa0ba902b7))
        );
        assert!(s.parent_remote);
        assert_eq!(s.name, "GET reviews");
        assert_eq!(s.error.as_deref(), Some("breaker-open"));
        assert_eq!(s.attribute("tripline.reason"), Some(&Value::Str("breaker-open".into())));
        assert_eq!(s.attribute("server.address"), Some(&Value::Str("reviews.default".into())));
        assert_eq!(s.attribute("server.port"), Some(&Value::Int(9080)));
        assert_eq!(s.attribute("http.response.status_code"), Some(&Value::Int(503)));
    }

    #[test]
    fn attempts_are_children_and_each_goes_upstream_with_its_own_id() {
        let kept = Kept::default();
        let tracer = Tracer::new(Sampler::default(), Box::new(kept.clone()));
        let rng = tripline_core::rng::SplitMix::seeded(1);
        let mut h = HeaderMap::new();
        let span = tracer.on_request(&mut h, &rng).span.expect("no parent: always_on decides");
        let ep: SocketAddr = "10.1.0.1:8080".parse().unwrap();
        span.begin_attempt(1, ep, &mut h, &rng);
        let first = context::extract(&h).unwrap().ids.unwrap();
        span.end_attempt(None, &Outcome::Reset, false);
        span.begin_attempt(2, ep, &mut h, &rng);
        let second = context::extract(&h).unwrap().ids.unwrap();
        span.end_attempt(Some(200), &Outcome::Http(200), true);
        assert_eq!(first.0, span.trace_id);
        assert_ne!(first.1, second.1, "each attempt is its own parent upstream");
        let mut e = entry();
        (e.status, e.reason, e.attempts, e.upstream) = (200, None, 2, Some(ep));
        tracer.finish(&span, &e);
        let spans = kept.0.lock().unwrap();
        assert_eq!(spans.len(), 3);
        assert_eq!(spans[0].error, None);
        assert_eq!(spans[0].parent_id, None);
        let (a1, a2) = (&spans[1], &spans[2]);
        assert_eq!((a1.kind, a1.parent_id, a1.span_id), (SpanKind::Client, Some(span.span_id), first.1));
        assert_eq!(a1.error.as_deref(), Some("reset"));
        assert_eq!(a1.attribute("http.request.resend_count"), None);
        assert_eq!(a2.span_id, second.1);
        assert_eq!(a2.attribute("http.request.resend_count"), Some(&Value::Int(1)));
        assert_eq!(a2.attribute("http.response.status_code"), Some(&Value::Int(200)));
        assert_eq!(a2.error, None);
        assert!(a1.end <= a2.start && a2.end >= a2.start);
    }

    #[test]
    fn an_unsampled_request_starts_an_unsampled_trace_or_keeps_its_callers() {
        let kept = Kept::default();
        let tracer = Tracer::new(Sampler::ratio(0.0), Box::new(kept.clone()));
        let rng = tripline_core::rng::SplitMix::seeded(3);
        let mut fresh = HeaderMap::new();
        let traced = tracer.on_request(&mut fresh, &rng);
        assert!(traced.span.is_none());
        let got = context::extract(&fresh).expect("a context for the services behind");
        assert_eq!(got.sampled, Some(false));
        assert_eq!(got.ids.map(|(t, _)| t), Some(traced.trace_id), "the access log shows the trace sent on");
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";
        let mut theirs = HeaderMap::new();
        theirs.insert("traceparent", tp.parse().unwrap());
        assert!(tracer.on_request(&mut theirs, &rng).span.is_none());
        assert_eq!(theirs["traceparent"], tp, "passed on as it came");
        assert!(kept.0.lock().unwrap().is_empty());
    }

    #[test]
    fn authorities_split() {
        assert_eq!(split_authority("a.b:80"), ("a.b", Some(80)));
        assert_eq!(split_authority("a.b"), ("a.b", None));
        assert_eq!(split_authority("[::1]:8080"), ("::1", Some(8080)));
        assert_eq!(split_authority("[::1]"), ("::1", None));
    }
}
