//! The HTTP request path: route → cluster → admission → endpoint → connection → response.
//!
//! Resilience gates (breaker, retries, fault injection) slot in between route selection and
//! [`upstream::send`]; every early exit is a [`Reason`] so the refusal is always explained.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::SystemTime;

use tokio::time::Instant;

use http::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;

use crate::access_log::{BodyEnd, BodyLog, Entry};
use crate::body::ResponseBody;
use crate::client_conns::{ClientConn, ConnSignal, RequestMark, StreamIdle};
use crate::cluster::Cluster;
use crate::endpoint::body::RequestBody;
use crate::grpc::is_grpc;
use crate::headers::{is_upgrade, prepare_request, strip_hop_by_hop, Client};
use crate::listener::ListenerRuntime;
use crate::local_reply::Reply;
use crate::pipeline::fallback::{Fallback, Taken};
use crate::pipeline::header_edits::HeaderEdits;
use crate::pipeline::{self, Injected, ResponseEdits, Step};
use crate::reason::{Reason, REASON_HEADER};
use crate::router::Route;
use crate::upload::ClientBody;
use crate::upload::Watched;
use crate::upstream;
use crate::Shared;

/// Per-connection context shared by the requests of one client connection.
pub struct ConnContext {
    pub shared: Arc<Shared>,
    pub listener: Arc<ListenerRuntime>,
    pub peer: SocketAddr,
    /// `peer`'s IP as a header value, for `x-forwarded-for`.
    pub peer_value: http::HeaderValue,
    /// The connection's registration with `client_conns` (request-head timeout, drain).
    pub conn: crate::client_conns::ConnHandle,
    /// What its TLS handshake settled (set once, after the handshake; never for a plaintext
    /// connection, also on a PERMISSIVE listener that takes both).
    pub tls: std::sync::OnceLock<crate::tls::TlsInfo>,
}

impl ConnContext {
    /// The connection is TLS: requests are `https` (routing's `scheme`, the
    /// `x-forwarded-proto` sent upstream).
    pub fn https(&self) -> bool {
        self.tls.get().is_some()
    }
}

/// The connection context is what a request's [`RequestMark`] holds: it owns the handle.
impl ClientConn for ConnContext {
    fn conn(&self) -> &crate::client_conns::ConnHandle {
        &self.conn
    }
}

/// The service. Routing and the rewrite of the request for the upstream happen before the
/// returned future exists, so that future holds a few pointers rather than the request: hyper
/// moves it into every HTTP/2 stream task and into the HTTP/1 connection's request slot.
pub fn handle(
    ctx: Arc<ConnContext>,
    mut req: Request<ClientBody>,
) -> impl Future<Output = Result<Response<ResponseBody>, Infallible>> + Send + 'static {
    if ctx.https() && req.uri().scheme().is_none() {
        crate::headers::https_target(&mut req);
    }
    // The trace context first: what a sampled request sends upstream is its own span.
    let traced = ctx.shared.tracer.get().map(|t| t.on_request(req.headers_mut(), &ctx.shared.rng));
    let (trace_id, span) = traced.map_or((None, None), |t| (Some(t.trace_id), t.span));
    let log = match (&ctx.shared.access_log, &span) {
        (None, None) => None,
        (log, _) => {
            let headers = log.as_ref().map_or(&[][..], |l| l.headers());
            Some(LogStart::of(&req, headers, trace_id))
        }
    };
    let mut trace = Trace { on: log.is_some(), span, ..Trace::default() };
    let h2 = req.version() == http::Version::HTTP_2;
    let grpc = is_grpc(req.headers());
    // The response phase's header edits, for a route (or destination) that has them.
    let mut edits: Option<Box<ResponseEdits>> = None;
    let started = match refuse(&req) {
        Some(unfit) => {
            ctx.shared.global.local.inc(unfit.reason());
            Err(Refused::Unfit(unfit))
        }
        None => {
            route(&ctx, &req, grpc, &mut trace, &mut edits).map(|r| start(&ctx, r, req, grpc, &mut trace))
        }
    };
    // Written if the future is dropped before the response head: the client left.
    let mut waiting = LogIfAbandoned(log.map(|start| PendingLog::new(ctx.clone(), start, trace.clone())));
    let mut mark = RequestMark::new(ctx, h2);
    async move {
        let mut resp = match started {
            Ok(s) => s.finish(&mut trace, mark.signal(), h2).await,
            Err(Refused::Reason(reason)) => reply(reason, grpc),
            Err(Refused::Answered(delay, resp)) => {
                if let Some(delay) = delay {
                    Box::pin(tokio::time::sleep(delay)).await; // boxed: a timer inline would grow every request's future
                }
                *resp
            }
            Err(Refused::Unfit(unfit)) => unfit.response(h2),
        };
        if let Some(edits) = &edits {
            edits.apply(resp.headers_mut());
        }
        if let Some(mut pending) = waiting.0.take() {
            // The line is written when the response body ends, so it tells how it ended.
            pending.at_head(trace, &resp);
            resp.body_mut().log_on_end(pending);
        }
        mark.head_ready();
        resp.body_mut().end_request_with(mark);
        Ok(resp)
    }
}

/// Tripline's own answer: for a gRPC client, a trailers-only gRPC status it can read.
fn reply(reason: Reason, grpc: bool) -> Response<ResponseBody> {
    if grpc {
        reason.grpc_response()
    } else {
        reason.response()
    }
}

/// Why a request is answered without being forwarded.
enum Refused {
    /// Routing refused it (`no-route`, `no-healthy-upstream`), with `x-tripline-reason`.
    Reason(Reason),
    /// The route answers it (a fault's abort, a redirect, a direct response), after the
    /// fault's delay if one was drawn.
    Answered(Option<std::time::Duration>, Box<Response<ResponseBody>>),
    /// Not fit to be routed at all (see [`refuse`]).
    Unfit(Unfit),
}

/// A request refused before routing.
enum Unfit {
    /// A request the parser let through that is malformed all the same, answered like the
    /// parser's own 400s; what is wrong with it.
    Malformed(&'static str),
    /// `CONNECT`: Tripline proxies requests, it does not open tunnels.
    Connect,
}

impl Unfit {
    fn reason(&self) -> Reason {
        match self {
            Unfit::Malformed(_) => Reason::BadRequest,
            Unfit::Connect => Reason::ConnectNotSupported,
        }
    }

    /// The answer to a refused request that never reached routing. An HTTP/1 connection
    /// closes after it, as after the parser's 400s (a CONNECT client may already be sending
    /// the tunnel's bytes); HTTP/2 has no `Connection` header, and its other streams are
    /// unaffected.
    fn response(self, h2: bool) -> Response<ResponseBody> {
        let mut resp = match self {
            Unfit::Malformed(why) => Reason::BadRequest.response_with(why),
            Unfit::Connect => {
                let mut resp = Reason::ConnectNotSupported.response();
                // RFC 9110 §15.5.6: a 405 lists the methods that are allowed.
                resp.headers_mut().insert(
                    http::header::ALLOW,
                    http::HeaderValue::from_static("GET, HEAD, POST, PUT, DELETE, OPTIONS, TRACE, PATCH"),
                );
                resp
            }
        };
        if !h2 {
            resp.headers_mut().insert(http::header::CONNECTION, http::HeaderValue::from_static("close"));
        }
        resp
    }
}

/// Why a request that hyper's parser (or ours, for HTTP/2) accepts must not be forwarded:
/// - `CONNECT` (RFC 9110 §9.3.6) asks for a tunnel, which Tripline does not open: `405`.
/// - RFC 9112 §3.2: an HTTP/1.1 request without `Host` (even in absolute form), and any
///   request with several `Host` lines or an invalid one (see [`valid_host`]). HTTP/1.0 may
///   leave it out.
/// - RFC 9112 §3.2.3: the authority form (`host:port`) is for `CONNECT` only.
/// - RFC 9110 §4.2.4: a target with user information (`http://user@host/`) is an error.
/// - RFC 9113 §8.3.1: an HTTP/2 request whose `Host` names another authority than its
///   `:authority` is malformed (a proxy would route by one and forward the other).
/// - RFC 9112 §3.2.4, RFC 9113 §8.3.1: the target `*` is for `OPTIONS` only.
fn refuse<B>(req: &Request<B>) -> Option<Unfit> {
    if req.method() == http::Method::CONNECT {
        return Some(Unfit::Connect);
    }
    let mut hosts = req.headers().get_all(http::header::HOST).iter();
    let (first, second) = (hosts.next(), hosts.next());
    let bad_host = match (first, second) {
        (None, _) => req.version() == http::Version::HTTP_11,
        (Some(host), None) => !valid_host(host.as_bytes()),
        (Some(_), Some(_)) => true,
    };
    if bad_host {
        return Some(Unfit::Malformed("an HTTP/1.1 request needs exactly one valid Host header\n"));
    }
    let uri = req.uri();
    if let Some(authority) = uri.authority() {
        if uri.scheme().is_none() {
            return Some(Unfit::Malformed("the authority form (host:port) is for CONNECT only\n"));
        }
        if authority.as_str().contains('@') {
            return Some(Unfit::Malformed("a request target must not carry user information\n"));
        }
        let differs =
            first.is_some_and(|h| !h.as_bytes().eq_ignore_ascii_case(authority.as_str().as_bytes()));
        if req.version() == http::Version::HTTP_2 && differs {
            return Some(Unfit::Malformed("the Host header names another authority than :authority\n"));
        }
    }
    if uri.path() == "*" && req.method() != http::Method::OPTIONS {
        return Some(Unfit::Malformed("only an OPTIONS request may have the target *\n"));
    }
    None
}

/// RFC 9110 §7.2 and §4.2.1: `Host` is the target's authority, `uri-host [":" port]`; for an
/// `http` URI the host is not empty, and it has no user information.
fn valid_host(host: &[u8]) -> bool {
    !host.is_empty() && !host.contains(&b'@') && http::uri::Authority::try_from(host).is_ok()
}

/// What the access log records of a request before it is forwarded.
struct LogStart {
    start: SystemTime,
    t0: Instant,
    method: http::Method,
    /// The target as the client sent it (a shared copy: cloning a parsed `Uri` takes a
    /// reference, where the strings it holds were three allocations and copies a request).
    uri: http::Uri,
    /// `Host`, for a target that names no authority.
    host: Option<http::HeaderValue>,
    protocol: &'static str,
    trace_id: Option<u128>,
    /// The headers the text format logs, in its order.
    headers: Vec<Option<String>>,
}

impl LogStart {
    /// `trace_id`: the trace phase's, when traces are on (else read from the request).
    fn of(req: &Request<ClientBody>, headers: &[http::HeaderName], trace_id: Option<u128>) -> Self {
        let uri = req.uri();
        LogStart {
            start: SystemTime::now(),
            t0: Instant::now(),
            method: req.method().clone(),
            uri: uri.clone(),
            host: if uri.authority().is_none() {
                req.headers().get(http::header::HOST).cloned()
            } else {
                None
            },
            protocol: match req.version() {
                http::Version::HTTP_09 => "HTTP/0.9",
                http::Version::HTTP_10 => "HTTP/1.0",
                http::Version::HTTP_2 => "HTTP/2.0",
                http::Version::HTTP_3 => "HTTP/3.0",
                _ => "HTTP/1.1",
            },
            trace_id: trace_id.or_else(|| crate::spans::trace_id(req.headers())),
            headers: headers
                .iter()
                .map(|h| req.headers().get(h).map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned()))
                .collect(),
        }
    }
}

/// An access log line waiting for its response body to end (or be cut off): Envoy logs at
/// the end of the stream too, so the duration covers the body and a cut shows.
pub(crate) struct PendingLog {
    ctx: Arc<ConnContext>,
    start: LogStart,
    trace: Trace,
    status: u16,
    reason: Option<http::HeaderValue>,
    /// From the request to the response head.
    head_after: std::time::Duration,
    bytes_sent: u64,
}

impl std::fmt::Debug for PendingLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingLog")
            .field("status", &self.status)
            .field("bytes_sent", &self.bytes_sent)
            .finish()
    }
}

impl PendingLog {
    /// A line for a request that has no response yet: status 0, as Envoy logs a request whose
    /// client left first.
    fn new(ctx: Arc<ConnContext>, start: LogStart, trace: Trace) -> Box<Self> {
        Box::new(PendingLog {
            ctx,
            head_after: std::time::Duration::ZERO,
            start,
            trace,
            status: 0,
            reason: None,
            bytes_sent: 0,
        })
    }

    /// The response head is ready.
    fn at_head(&mut self, trace: Trace, resp: &Response<ResponseBody>) {
        self.head_after = self.start.t0.elapsed();
        self.trace = trace;
        self.status = resp.status().as_u16();
        self.reason = resp.headers().get(REASON_HEADER).cloned();
    }
}

impl BodyLog for PendingLog {
    /// Counts body bytes handed to the client's connection.
    fn sent(&mut self, n: usize) {
        self.bytes_sent += n as u64;
    }

    /// Writes the line and finishes the request's spans.
    fn finish(self: Box<Self>, end: BodyEnd) {
        let shared = &self.ctx.shared;
        if shared.access_log.is_none() && self.trace.span.is_none() {
            return;
        }
        // hyper drops the body of a response that has none on the wire (HEAD, 204, 304)
        // without reading it: that is not a client leaving.
        let bodiless = self.status != 0
            && (self.start.method == http::Method::HEAD || matches!(self.status, 100..=199 | 204 | 304));
        let end = if end == BodyEnd::DownstreamDisconnect && bodiless { BodyEnd::Complete } else { end };
        let (start, trace) = (&self.start, &self.trace);
        let mut trace_hex = [0u8; 32];
        let entry = Entry {
            start: start.start,
            duration: start.t0.elapsed(),
            response_head: self.head_after,
            downstream: self.ctx.peer,
            listener: &self.ctx.listener.name,
            protocol: start.protocol,
            method: start.method.as_str(),
            authority: start
                .uri
                .authority()
                .map(|a| a.as_str())
                .or_else(|| start.host.as_ref().and_then(|h| h.to_str().ok()))
                .unwrap_or(""),
            path: start.uri.path(),
            target: start.uri.path_and_query().map_or(start.uri.path(), |p| p.as_str()),
            scheme: start.uri.scheme_str(),
            bytes_received: trace.upload.as_ref().map_or(0, |u| u.received()),
            upstream_duration: trace.upstream.map(|_| self.head_after),
            trace_id: start.trace_id.map(|t| crate::spans::context::trace_id_text(t, &mut trace_hex)),
            headers: &start.headers,
            status: self.status,
            reason: self.reason.as_ref().and_then(|v| v.to_str().ok()),
            bytes_sent: self.bytes_sent,
            body_end: end,
            route: trace.route.as_deref(),
            cluster: trace.cluster.as_deref(),
            upstream: trace.upstream,
            attempts: trace.attempts,
            request_id: trace.request_id.as_ref().and_then(|v| v.to_str().ok()),
            fault: trace.fault.as_str(),
            authz_denied: trace.authz.as_ref().and_then(|d| d.denied_by.as_deref()),
            authz_audit: trace.authz.as_ref().and_then(|d| d.audited_by.as_deref()),
            authz_shadow_denied: trace.authz.as_ref().and_then(|d| d.shadow_denied_by.as_deref()),
            tls_sni: self.ctx.tls.get().and_then(|t| t.sni.as_deref()),
            downstream_identity: self.ctx.tls.get().and_then(|t| t.peer_identity.as_deref()),
        };
        if let (Some(tracer), Some(span)) = (shared.tracer.get(), &trace.span) {
            tracer.finish(span, &entry);
        }
        let Some(log) = &shared.access_log else { return };
        if !log.keeps(&entry, || tripline_core::rng::Rng::next_u64(&shared.rng) as u32) {
            return;
        }
        let queued = log.write(&entry);
        if !queued {
            shared.global.access_log_dropped.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

/// The access log line of a request still waiting for its response head.
struct LogIfAbandoned(Option<Box<PendingLog>>);

impl Drop for LogIfAbandoned {
    fn drop(&mut self) {
        if let Some(pending) = self.0.take() {
            pending.finish(BodyEnd::DownstreamDisconnect);
        }
    }
}

/// What the access log and the request's span want to know about it; filled only when `on`.
#[derive(Default, Clone)]
struct Trace {
    on: bool,
    /// The request's span, when it is sampled.
    span: Option<Arc<crate::spans::RequestSpan>>,
    route: Option<Arc<str>>,
    cluster: Option<Arc<str>>,
    upstream: Option<SocketAddr>,
    attempts: u32,
    request_id: Option<http::HeaderValue>,
    /// What the route's `fault` did to the request.
    fault: Injected,
    /// The AuthorizationPolicies named in the decision; boxed, as most requests have none
    /// and this is part of every request's future.
    authz: Option<Box<pipeline::authz::Decision>>,
    /// The client's request body, for the bytes read of it.
    upload: Option<Arc<crate::upload::Upload>>,
}

/// Where a request goes: its route, the destination picked, and the route deadline.
struct Routed {
    route: Arc<Route>,
    cluster: Arc<Cluster>,
    /// The destination's `headers`, when it has any.
    destination_headers: Option<Arc<HeaderEdits>>,
    deadline: Option<Instant>,
    /// The fault's delay, drawn for this request.
    delay: Option<std::time::Duration>,
    /// The listener's `trust_client`.
    trust_client: bool,
}

/// The request phase: finds the route, runs its features (fault, its own answer) and picks
/// the destination, or says why Tripline answers itself (`no-route`, `no-healthy-upstream`;
/// already counted). Notes the route's response header edits in `edits`.
fn route(
    ctx: &ConnContext,
    req: &Request<ClientBody>,
    grpc: bool,
    trace: &mut Trace,
    edits: &mut Option<Box<ResponseEdits>>,
) -> Result<Routed, Refused> {
    let (route, trust_client) = {
        let config = ctx.listener.config.load();
        if let Some(authz) = &config.authz {
            authorize(ctx, authz, config.trusted_proxies, req, trace)?;
        }
        if config.https_redirect {
            return Err(Refused::Answered(None, Box::new(pipeline::answer::to_https(req))));
        }
        (config.find(req).cloned(), config.trust_client)
    };
    let Some(route) = route else {
        ctx.shared.global.local.inc(Reason::NoRoute);
        return Err(Refused::Reason(Reason::NoRoute));
    };
    if trace.on {
        trace.route = Some(route.name.clone());
    }
    let mut delay = None;
    if let Some(features) = &route.features {
        ResponseEdits::keep(edits, features.headers(), true);
        let cx = pipeline::RequestCx {
            grpc,
            peer: ctx.peer.ip(),
            rng: &ctx.shared.rng,
            stats: &ctx.shared.global,
            injected: &mut trace.fault,
        };
        match features.on_request(req, cx, edits) {
            Step::Forward { delay: d } => delay = d,
            Step::Answer { delay, response } => return Err(Refused::Answered(delay, response)),
        }
    }
    let Some(destination) = route.pick(&ctx.shared.rng) else {
        ctx.shared.global.local.inc(Reason::NoHealthyUpstream);
        return Err(Refused::Reason(Reason::NoHealthyUpstream));
    };
    let (cluster, destination_headers) = (destination.cluster.clone(), destination.headers.clone());
    ResponseEdits::keep(edits, destination_headers.as_ref(), false);
    if trace.on {
        trace.cluster = Some(cluster.state.name.clone());
    }
    // The route timeout is enforced inside `upstream::send` (connection wait, each attempt,
    // backoff), so a timeout is recorded against the endpoint that was slow instead of the
    // request simply being dropped. A gRPC client's own deadline (`grpc-timeout`) counts
    // too, capped by the route's (Envoy's `grpc_timeout_header_max`, which Istio sets to the
    // route timeout).
    let client = if grpc { crate::grpc::timeout(req.headers()) } else { None };
    let timeout = match (route.timeout, client) {
        (Some(r), Some(c)) => Some(r.min(c)),
        (r, c) => r.or(c),
    };
    // The route timeout starts after a fault's delay, as Envoy's router comes after its
    // fault filter.
    let deadline = timeout.map(|t| Instant::now() + delay.unwrap_or_default() + t);
    Ok(Routed { route, cluster, destination_headers, deadline, delay, trust_client })
}

/// The request phase's first step, before any route is looked at: the proxy's
/// AuthorizationPolicies ([`pipeline::authz`]).
fn authorize(
    ctx: &ConnContext,
    authz: &pipeline::authz::Authz,
    trusted_proxies: u32,
    req: &Request<ClientBody>,
    trace: &mut Trace,
) -> Result<(), Refused> {
    let peer = ctx.peer.ip();
    let path = pipeline::authz::normalize_path(req.uri().path_and_query().map_or("/", |p| p.as_str()));
    let facts = pipeline::authz::Facts {
        peer,
        remote: crate::headers::forwarded_client(req.headers(), trusted_proxies).unwrap_or(peer),
        port: ctx.listener.bind.port(),
        tls: ctx.tls.get(),
        http: Some(pipeline::authz::HttpFacts {
            uri: req.uri(),
            method: req.method().as_str(),
            path: &path,
            headers: req.headers(),
        }),
    };
    let decision = authz.check(&facts);
    let denied = decision.denied_by.is_some();
    if trace.on && decision != pipeline::authz::Decision::default() {
        trace.authz = Some(Box::new(decision));
    }
    if denied {
        ctx.shared.global.local.inc(Reason::RbacDenied);
        return Err(Refused::Reason(Reason::RbacDenied));
    }
    Ok(())
}

fn local(cluster: &Cluster, refusal: impl Into<upstream::Refusal>, grpc: bool) -> Response<ResponseBody> {
    let refusal = refusal.into();
    cluster.state.stats.local.inc(refusal.reason);
    let mut resp = reply(refusal.reason, grpc);
    if let Some(ra) = refusal.retry_after {
        // Whole seconds, rounded up: a client that honours it never comes back too early.
        let secs = ra.as_secs() + u64::from(ra.subsec_nanos() > 0);
        resp.headers_mut().insert(http::header::RETRY_AFTER, http::HeaderValue::from(secs.max(1)));
    }
    resp
}

/// A request on its way upstream: the boxed send future and what the response needs.
struct Started {
    cluster: Arc<Cluster>,
    deadline: Option<Instant>,
    /// A gRPC request: refusals and failures are told in `grpc-status`.
    grpc: bool,
    upgrade: Option<hyper::upgrade::OnUpgrade>,
    /// The sticky cookie to set on the upstream's response (`httpCookie.ttl`).
    set_cookie: Option<http::HeaderValue>,
    /// The fault's delay: the request waits before `send` is first polled.
    delay: Option<std::time::Duration>,
    /// The route's fallback, for a route that has one.
    fallback: Option<Box<FallbackCx>>,
    send: Pin<Box<dyn Future<Output = upstream::SendResult> + Send>>,
}

/// What sending a refused request to the route's fallback takes.
struct FallbackCx {
    fallback: Arc<Fallback>,
    shared: Arc<crate::Shared>,
    observers: upstream::Observers,
}

/// Rewrites the request for the upstream and creates (boxed) the future that sends it.
fn start(
    ctx: &ConnContext,
    routed: Routed,
    mut req: Request<ClientBody>,
    grpc: bool,
    trace: &mut Trace,
) -> Started {
    let Routed { route, cluster, destination_headers, deadline, delay, trust_client } = routed;
    let hashed = match cluster.hash_key() {
        Some(key) => upstream::request_hash(key, &req, ctx.peer, ctx.shared.sticky_secret),
        None => upstream::RequestHash::default(),
    };
    let upgrade = is_upgrade(&req).then(|| hyper::upgrade::on(&mut req));
    let (parts, body) = req.into_parts();
    let body = Watched::new(body, ctx.conn.signal());
    let upload = body.upload().cloned();
    if trace.on {
        trace.upload = upload.clone();
    }
    let mut up_req = Request::from_parts(parts, RequestBody::Stream(body));
    if crate::headers::authority(&up_req).is_none() {
        // An HTTP/1.0 client (or an HTTP/2 one without `:authority`) gave no host; the
        // upstream gets the destination's, with its port unless 80, as nginx's `proxy_pass`
        // sends.
        if let Some(host) = destination_host(&cluster.plan) {
            up_req.headers_mut().insert(http::header::HOST, host);
        }
    }
    if let Some(features) = route.features.as_ref().filter(|f| f.has_rewrite()) {
        let matched = route.matched_uri(&up_req);
        features.rewrite(&mut up_req, matched);
    }
    let client = if trust_client { Client::Trusted } else { Client::Edge };
    prepare_request(
        &mut up_req,
        cluster.protocol(),
        &ctx.peer_value,
        client,
        ctx.tls.get(),
        upgrade.is_some(),
        &ctx.shared.rng,
    );
    let route_headers = route.features.as_ref().and_then(|f| f.headers());
    if destination_headers.is_some() || route_headers.is_some() {
        pipeline::edit_request(
            up_req.headers_mut(),
            destination_headers.as_deref(),
            route_headers.map(|h| &**h),
        );
    }
    if let Some(features) = &route.features {
        features.mirror(&mut up_req, deadline, &ctx.shared);
    }
    if trace.on {
        trace.request_id = up_req.headers().get(&crate::headers::X_REQUEST_ID).cloned();
    }
    let observers = upstream::Observers { upload, span: trace.span.clone() };
    let fallback = route.features.as_ref().and_then(|f| f.fallback()).map(|fallback| {
        Box::new(FallbackCx {
            fallback: fallback.clone(),
            shared: ctx.shared.clone(),
            observers: observers.clone(),
        })
    });
    let send =
        upstream::send(cluster.clone(), route, up_req, hashed.hash, ctx.shared.clone(), deadline, observers);
    Started {
        cluster,
        deadline,
        grpc,
        upgrade,
        set_cookie: hashed.set_cookie,
        delay,
        fallback,
        send: Box::pin(send),
    }
}

/// `host` or `host:port` of a cluster's destination, for a request that named none.
fn destination_host(plan: &tripline_config::plan::ClusterPlan) -> Option<http::HeaderValue> {
    let host = if plan.port == 80 { plan.host.clone() } else { format!("{}:{}", plan.host, plan.port) };
    http::HeaderValue::try_from(host).ok()
}

impl Started {
    /// Awaits the upstream's response head and turns it into the client's response. The wait
    /// ends early when the stream idle timeout fires on the client's connection (`signal`):
    /// `408 stream-idle-timeout` (counted by the sweep that fired it), and an HTTP/1
    /// connection closes after it.
    async fn finish(self, trace: &mut Trace, signal: &ConnSignal, h2: bool) -> Response<ResponseBody> {
        let Started { mut cluster, deadline, grpc, upgrade, set_cookie, delay, fallback, mut send } = self;
        if let Some(delay) = delay {
            Box::pin(tokio::time::sleep(delay)).await; // boxed: a timer inline would grow every request's future
        }
        let sent = match StreamIdle::new(signal, send.as_mut()).await {
            Some(sent) => sent,
            None => {
                cluster.state.stats.local.inc(Reason::StreamIdleTimeout);
                let mut resp = reply(Reason::StreamIdleTimeout, grpc);
                if !h2 {
                    resp.headers_mut()
                        .insert(http::header::CONNECTION, http::HeaderValue::from_static("close"));
                }
                return resp;
            }
        };
        let (mut resp, mut inflight) = match sent {
            Ok(sent) => sent,
            Err(refusal) => {
                trace.attempts = refusal.attempts;
                let Some(fb) = fallback else { return local(&cluster, refusal, grpc) };
                match fb.fallback.take(&refusal) {
                    None => return local(&cluster, refusal, grpc),
                    Some(Taken::Answer(resp)) => {
                        if let Some(cause) = fb.fallback.cause_of(&refusal) {
                            cause.count(&fb.shared.global);
                        }
                        return *resp;
                    }
                    Some(Taken::Send(to, policy, cause)) => {
                        let (to, policy) = (to.clone(), policy.clone());
                        cause.count(&fb.shared.global);
                        let Some(mut req) = refusal.request else {
                            return local(&cluster, Reason::NoHealthyUpstream, grpc);
                        };
                        crate::headers::for_protocol(&mut req, to.protocol());
                        if trace.on {
                            trace.cluster = Some(to.state.name.clone());
                        }
                        cluster = to.clone();
                        let sent = upstream::send(
                            to,
                            policy,
                            *req,
                            None,
                            fb.shared.clone(),
                            deadline,
                            fb.observers.clone(),
                        );
                        // Boxed: inline, this rarely taken path's future would grow every
                        // request's future (and its copies) by the size of a whole send.
                        match Box::pin(sent).await {
                            Ok((mut resp, inflight)) => {
                                resp.headers_mut().insert(REASON_HEADER, cause.header());
                                (resp, inflight)
                            }
                            // A fallback never falls back again.
                            Err(refusal) => return local(&cluster, refusal, grpc),
                        }
                    }
                }
            }
        };
        if trace.on {
            trace.upstream = Some(inflight.endpoint().address);
            trace.attempts = inflight.attempt();
        }
        cluster.state.stats.codes.inc(resp.status().as_u16());

        if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
            // RFC 9110 §15.2.2: a switch answers an HTTP/1.1 request that asked for one, and
            // names the protocol. Anything else leaves the connection in an unknown protocol:
            // it is closed (dropped with the response), and the client gets a 502.
            let named = resp.version() == http::Version::HTTP_11
                && resp.headers().contains_key(http::header::UPGRADE);
            let Some(client_upgrade) = upgrade.filter(|_| named) else {
                // Recorded as a reset, for breakers and outlier detection.
                inflight.finish(false);
                return local(&cluster, crate::reason::Reason::UpstreamReset, grpc);
            };
            inflight.forget_connection();
            let upstream_upgrade = hyper::upgrade::on(&mut resp);
            tokio::spawn(tunnel(client_upgrade, upstream_upgrade, inflight));
            let (mut parts, _) = resp.into_parts();
            // A WebSocket client becomes sticky from its handshake.
            client_head(&mut parts, true, set_cookie);
            return Response::from_parts(parts, ResponseBody::local(bytes::Bytes::new()));
        }
        let (mut parts, body) = resp.into_parts();
        client_head(&mut parts, false, set_cookie);
        let mut body = ResponseBody::upstream(body, inflight, deadline);
        if grpc && parts.status == StatusCode::OK {
            body.end_with_grpc_status();
        }
        Response::from_parts(parts, body)
    }
}

/// Turns an upstream's response head into the client's: our own protocol version, whatever
/// the upstream spoke; no hop-by-hop headers (`Upgrade` kept for a switch); the sticky cookie.
/// And RFC 9110 §8.6: no `Content-Length` on a 1xx or 204 response. An upstream that sends
/// one anyway would have the client (or hyper's encoder, which trusts the header) wait for a
/// body that never comes.
fn client_head(parts: &mut http::response::Parts, upgrade: bool, set_cookie: Option<http::HeaderValue>) {
    parts.version = http::Version::default();
    strip_hop_by_hop(&mut parts.headers, upgrade);
    if parts.status.is_informational() || parts.status == StatusCode::NO_CONTENT {
        parts.headers.remove(http::header::CONTENT_LENGTH);
    }
    if let Some(cookie) = set_cookie {
        parts.headers.append(http::header::SET_COOKIE, cookie);
    }
}

/// Joins the client's and the upstream's upgraded connections and copies bytes both ways.
async fn tunnel(
    client: hyper::upgrade::OnUpgrade,
    upstream: hyper::upgrade::OnUpgrade,
    inflight: Box<upstream::InFlight>,
) {
    match tokio::try_join!(client, upstream) {
        Ok((c, u)) => {
            let (mut c, mut u) = (TokioIo::new(c), TokioIo::new(u));
            let _ = tokio::io::copy_bidirectional(&mut c, &mut u).await;
        }
        Err(e) => tracing::debug!(error = %e, "upgrade failed"),
    }
    drop(inflight);
}
