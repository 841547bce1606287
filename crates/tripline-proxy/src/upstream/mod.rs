//! Sending a request to a cluster: the resilience gates, endpoint choice, connection, retries,
//! and the in-flight guard that records the outcome when the response ends.
//!
//! Order, as in DESIGN.md: cluster breaker → admission limit → (per attempt) endpoint pick over
//! available endpoints, skipping ones already tried → outlier pass and endpoint breaker →
//! pooled connection → per-try timeout → classify → retry decision (retryOn, idempotency,
//! replayable body, breaker state, retry budget, backoff within the deadline).
//!
//! [`send`] runs that loop; one try at one endpoint is an [`attempt::Attempt`] (connection
//! and send within the time limits), what it means for the endpoint is recorded by its
//! [`InFlight`] guard, and whether to try again is the pure [`retry::decide`].

mod hash_key;
pub use hash_key::{ip_hash, request_hash, RequestHash};
mod attempt;
pub mod retry;

pub use crate::endpoint::X_TRIPLINE_ATTEMPT;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use http::{header, Method, Request, Response};
use tripline_core::backoff::{parse_retry_after, Backoff};
use tripline_core::breaker::OwnedAdmission;
use tripline_core::budget::{ActiveRequestOf, RetryBudget, RetryPermitOf};
use tripline_core::classify::{grpc, LocalReason, Outcome};
use tripline_core::clock::Nanos;
use tripline_core::limits::Permit;
use tripline_core::outlier::OwnedPass;
use tripline_core::rng::Rng;

use crate::client_fault::ClientFault;
use crate::cluster::{Cluster, ClusterState, Endpoint, IgnoringHold, Member};
use crate::endpoint::body::{RequestBody, UpstreamBody};
use crate::endpoint::pool::{Reusable, SendError};
use crate::endpoint::replay::Replay;
use crate::reason::Reason;
use crate::resilience::{self, ResilienceStats};
use crate::upload::Upload;
use attempt::{Attempt, Sent};
use retry::Verdict;

/// What [`send`] needs of the route a request took: its retry policy and its own breaker (a
/// ResiliencePolicy that targets the route). The router's `Route` holds one.
#[derive(Debug, Default)]
pub struct RoutePolicy {
    pub retry: tripline_config::plan::RetryPlan,
    pub breaker: Option<Arc<tripline_core::breaker::CircuitBreaker>>,
}

/// Guards that belong to the whole request (all its attempts).
#[derive(Debug)]
struct RequestGuards {
    _active: Permit,
    _budget: ActiveRequestOf<Arc<RetryBudget>>,
    cluster_breaker: Option<OwnedAdmission>,
    route_breaker: Option<OwnedAdmission>,
    stats: Arc<ResilienceStats>,
    retried: bool,
    /// `resilience::now()` when the request was admitted.
    start: Nanos,
}

/// One attempt in flight to one endpoint. Dropping it records the outcome into the endpoint's
/// outlier state and breaker (and, for the last attempt, the destination breaker), releases
/// every slot, and gives the connection back if the response was read to its end.
#[derive(Debug)]
pub struct InFlight {
    state: Arc<ClusterState>,
    endpoint: Arc<Endpoint>,
    max_uses: Option<u32>,
    /// `resilience::now()` when the attempt started. One clock read at each end of an attempt:
    /// on a VM a read costs tens of nanoseconds, and a request used to make eight.
    start: Nanos,
    conn: Option<Reusable>,
    complete: bool,
    outcome: Outcome,
    pass: Option<OwnedPass>,
    endpoint_breaker: Option<OwnedAdmission>,
    _retry: Option<RetryPermitOf<Arc<RetryBudget>>>,
    request: Option<RequestGuards>,
    /// 1 for the first attempt.
    attempt: u32,
    /// How the client's request body is doing: a failure it caused is not the upstream's.
    upload: Option<Arc<Upload>>,
}

impl InFlight {
    fn new(
        cluster: &Cluster,
        member: &Member,
        pass: Option<OwnedPass>,
        breaker: Option<OwnedAdmission>,
        now: Nanos,
    ) -> Box<Self> {
        let endpoint = member.ep.clone();
        endpoint.active.fetch_add(1, Ordering::Relaxed);
        endpoint.requests_total.fetch_add(1, Ordering::Relaxed);
        Box::new(InFlight {
            state: cluster.state.clone(),
            endpoint,
            max_uses: cluster.limits().max_requests_per_connection,
            start: now,
            conn: None,
            complete: false,
            // Until the attempt says otherwise: an attempt abandoned mid-way (the client went
            // away, the request future was dropped) says nothing about the upstream. Timeouts
            // are detected and recorded by the attempt itself.
            outcome: Outcome::Local(LocalReason::Cancelled),
            pass,
            endpoint_breaker: breaker,
            _retry: None,
            request: None,
            attempt: 1,
            upload: None,
        })
    }

    /// Which attempt this is (1 = the first).
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    pub fn endpoint(&self) -> &Arc<Endpoint> {
        &self.endpoint
    }

    /// Marks how the response ended and releases everything.
    pub fn finish(mut self: Box<Self>, complete: bool) {
        self.complete = complete;
        if !complete {
            self.outcome = Outcome::Reset;
        }
    }

    /// The route deadline passed while the response body was streaming: recorded as a timeout
    /// (for breakers and outlier detection) and counted as a `route-timeout`.
    pub fn time_out(mut self: Box<Self>) {
        self.complete = false;
        self.outcome = Outcome::Timeout;
        self.state.stats.local.inc(Reason::RouteTimeout);
    }

    /// Counts a response Tripline ended itself under its cluster's local responses.
    pub fn count_local(&self, reason: Reason) {
        self.state.stats.local.inc(reason);
    }

    /// Marks the response as already complete (empty body) without releasing yet.
    pub fn mark_complete(&mut self) {
        self.complete = true;
    }

    /// The lean client's connection, back from a response body that was read to its end.
    pub fn reuse_connection(&mut self, conn: Box<crate::endpoint::h1::RawConn>) {
        self.conn = Some(Reusable(crate::endpoint::pool::H1Link::Raw(conn)));
    }

    /// The connection will not be reused (e.g. it was upgraded to a tunnel).
    pub fn forget_connection(&mut self) {
        self.conn = None;
    }

    /// A gRPC status arrived in the trailers: it decides the outcome.
    pub fn set_grpc_status(&mut self, code: u8) {
        self.outcome = Outcome::grpc(code, None);
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let now = resilience::now();
        let since = |start: Nanos| Duration::from_nanos(now.saturating_sub(start));
        let latency = since(self.start);
        if let Some(local) = self.upload.as_ref().and_then(|u| u.blame(&self.outcome)) {
            self.outcome = Outcome::Local(local);
        }
        self.endpoint.active.fetch_sub(1, Ordering::Relaxed);
        self.state.stats.attempt_duration.observe(latency);
        if !matches!(self.outcome, Outcome::Local(_)) {
            self.endpoint.duration.get_or_init(Box::default).observe(latency);
            if !is_success(&self.outcome) {
                self.endpoint.failures_total.fetch_add(1, Ordering::Relaxed);
            }
        }
        if let Some(p) = self.pass.take() {
            p.record(&self.outcome, latency, now);
        }
        if let Some(b) = self.endpoint_breaker.take() {
            b.record(&self.outcome, latency, now);
        }
        if let Some(r) = self.request.take() {
            // The request's last attempt: the request ends with it.
            self.state.stats.request_duration.observe(since(r.start));
            if let Some(b) = r.cluster_breaker {
                b.record(&self.outcome, since(r.start), now);
            }
            if let Some(b) = r.route_breaker {
                b.record(&self.outcome, since(r.start), now);
            }
            if r.retried && is_success(&self.outcome) {
                r.stats.retries_succeeded.fetch_add(1, Ordering::Relaxed);
            }
        }
        if let Some(conn) = self.conn.take() {
            if self.complete {
                self.endpoint.pool.give_back(conn, self.max_uses, now);
                self.state.notify_released();
            }
        }
    }
}

fn is_success(o: &Outcome) -> bool {
    match o {
        Outcome::Success => true,
        Outcome::Http(s) => *s < 500,
        Outcome::Grpc(c) => !matches!(*c, grpc::UNAVAILABLE | grpc::INTERNAL | grpc::DEADLINE_EXCEEDED),
        _ => false,
    }
}

/// Why Tripline answers a request itself, and for how long the client should back off.
#[derive(Debug)]
pub struct Refusal {
    pub reason: Reason,
    pub retry_after: Option<Duration>,
    /// Attempts sent to upstreams before giving up (0: refused before any).
    pub attempts: u32,
    /// The request, untouched, when it was refused before anything of it went out (a
    /// fallback can send it elsewhere).
    pub request: Option<Box<Request<RequestBody>>>,
}

impl From<Reason> for Refusal {
    fn from(reason: Reason) -> Self {
        Refusal { reason, retry_after: None, attempts: 0, request: None }
    }
}

impl Refusal {
    fn with_request(mut self, req: Option<Request<RequestBody>>) -> Self {
        self.request = req.map(Box::new);
        self
    }
}

/// The result of sending a request to a cluster: the upstream's response with its in-flight
/// guard, or why Tripline answers itself.
///
/// The guard is boxed: it is a few hundred bytes that would otherwise be copied at every
/// `await` boundary and `return` between here and hyper's response slot.
pub type SendResult = Result<(Response<UpstreamBody>, Box<InFlight>), Refusal>;

/// The refusal for an attempt that ended without a response.
fn failure_reason(outcome: &Outcome, deadline: Option<Instant>) -> Reason {
    match outcome {
        Outcome::ConnectFailure => Reason::UpstreamConnectFailure,
        Outcome::Timeout if deadline.is_some_and(|d| Instant::now() >= d) => Reason::RouteTimeout,
        Outcome::Timeout => Reason::UpstreamTimeout,
        _ => Reason::UpstreamReset,
    }
}

/// The endpoints a request has tried, by identity (an endpoint keeps its `Arc` across endpoint
/// set rebuilds), however many the cluster has. The first attempt's is kept inline: a request
/// that is not retried allocates nothing.
#[derive(Default)]
struct Tried {
    first: Option<usize>,
    more: Vec<usize>,
}

impl Tried {
    /// The endpoint's address in memory: compared, never followed.
    fn id(m: &Member) -> usize {
        Arc::as_ptr(&m.ep) as usize
    }

    fn contains(&self, m: &Member) -> bool {
        let p = Self::id(m);
        self.first == Some(p) || self.more.contains(&p)
    }

    fn add(&mut self, m: &Member) {
        let p = Self::id(m);
        match self.first {
            None => self.first = Some(p),
            Some(_) => self.more.push(p),
        }
    }
}

/// Picks an available endpoint, preferring ones not tried yet, that its outlier state and
/// breaker admit. Returns `Err` with the reason when none will take the request.
fn admit_endpoint(
    cluster: &Cluster,
    hash: Option<u64>,
    rng: &dyn Rng,
    tried: &mut Tried,
    now: Nanos,
) -> Result<(Member, Option<OwnedPass>, Option<OwnedAdmission>), Refusal> {
    let set = cluster.endpoints.load();
    let members = &set.members;
    let mut breaker_refusal = None;
    // A few picks: skip endpoints already tried (when others exist) and ones whose probe
    // slots or breaker refuse.
    for round in 0..4 {
        let Some(i) = set.balancer.pick(members, hash, rng).or_else(|| pick_ignoring_holds(&set, hash, rng))
        else {
            break;
        };
        if round < 2 && members.len() > 1 && tried.contains(&members[i]) {
            // Retry elsewhere if the balancer offers another endpoint.
            if let Some(j) = (1..members.len()).map(|k| (i + k) % members.len()).find(|&j| {
                !tried.contains(&members[j])
                    && tripline_core::balancer::EndpointView::is_available(&members[j])
            }) {
                if let Some(admitted) = try_member(&members[j], now, &mut breaker_refusal) {
                    tried.add(&members[j]);
                    return Ok(admitted);
                }
            }
        }
        if let Some(admitted) = try_member(&members[i], now, &mut breaker_refusal) {
            tried.add(&members[i]);
            return Ok(admitted);
        }
    }
    Err(breaker_refusal.unwrap_or(Reason::NoHealthyUpstream.into()))
}

/// Whether some endpoint of the cluster may be picked now.
fn any_available(cluster: &Cluster) -> bool {
    cluster.endpoints.load().members.iter().any(tripline_core::balancer::EndpointView::is_available)
}

/// When no endpoint is available and some are only held (`Retry-After`), picks among them as
/// if they were not: the rare path, so the view is built here.
fn pick_ignoring_holds(set: &crate::cluster::EndpointSet, hash: Option<u64>, rng: &dyn Rng) -> Option<usize> {
    if !set.members.iter().any(Member::held) {
        return None;
    }
    let view: Vec<IgnoringHold> = set.members.iter().map(IgnoringHold).collect();
    set.balancer.pick(&view, hash, rng)
}

type Admitted = (Member, Option<OwnedPass>, Option<OwnedAdmission>);

fn try_member(m: &Member, now: u64, breaker_refusal: &mut Option<Refusal>) -> Option<Admitted> {
    let pass = match &m.outlier {
        Some(o) => Some(o.admit_owned(now)?),
        None => None,
    };
    let adm = match &m.breaker {
        Some(b) => match b.try_acquire_owned(now) {
            Ok(a) => Some(a),
            Err(r) => {
                *breaker_refusal = Some(Refusal {
                    reason: Reason::BreakerOpen,
                    retry_after: Some(r.retry_after),
                    attempts: 0,
                    request: None,
                });
                return None;
            }
        },
        None => None,
    };
    Some((m.clone(), pass, adm))
}

/// Classifies a response head: (outcome, status if HTTP-classified, grpc code if present).
fn classify_response<B>(resp: &Response<B>) -> (Outcome, Option<u16>, Option<u8>) {
    let h = resp.headers();
    let status = resp.status().as_u16();
    let retry_after = || {
        h.get(header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, std::time::SystemTime::now()))
    };
    let grpc_code =
        h.get(&crate::grpc::GRPC_STATUS).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u8>().ok());
    // The next hop answered itself, or passed on its upstream's error once it had retried it:
    // its decision, not its failure (`LocalReason::NextHop`). Never a success, so a success
    // is not looked at (the headers' lookups would cost every request).
    if (status >= 400 || grpc_code.is_some_and(|c| c != 0)) && crate::reason::from_next_hop(h) {
        let http = if grpc_code.is_some() { None } else { Some(status) };
        return (Outcome::Local(LocalReason::NextHop), http, grpc_code);
    }
    if let Some(code) = grpc_code {
        let ra = if code == grpc::RESOURCE_EXHAUSTED { retry_after() } else { None };
        return (Outcome::grpc(code, ra), None, Some(code));
    }
    let ra = if status == 429 || status == 503 { retry_after() } else { None };
    (Outcome::http(status, ra), Some(status), None)
}

/// Asks a breaker (route or destination) to admit the request. An owned admission is recorded
/// when the request ends; a dry-run breaker admits, and counts what it would have refused.
fn admit_breaker(
    breaker: Option<&Arc<tripline_core::breaker::CircuitBreaker>>,
    now: u64,
) -> Result<Option<OwnedAdmission>, Refusal> {
    let Some(b) = breaker else { return Ok(None) };
    match b.try_acquire_owned(now) {
        Ok(a) => Ok(Some(a)),
        Err(r) => Err(Refusal {
            reason: Reason::BreakerOpen,
            retry_after: Some(r.retry_after),
            attempts: 0,
            request: None,
        }),
    }
}

/// What follows a request as it is sent, besides its route and cluster.
#[derive(Debug, Default, Clone)]
pub struct Observers {
    /// The client's request body: a failure it caused is not the upstream's.
    pub upload: Option<Arc<Upload>>,
    /// A sampled request's span: each attempt is a child span, and its id goes upstream.
    pub span: Option<Arc<crate::spans::RequestSpan>>,
}

/// Sends a request to a cluster, with the route's retry policy. `deadline` is when the
/// route timeout fires (retries and backoff must fit before it).
///
/// Takes its context by `Arc` so the future is `'static` and can be boxed before the caller's
/// own future exists (see `http_proxy::handle`).
pub async fn send<R: AsRef<RoutePolicy> + Send + Sync + 'static>(
    cluster: Arc<Cluster>,
    route: Arc<R>,
    req: Request<RequestBody>,
    hash: Option<u64>,
    shared: Arc<crate::Shared>,
    deadline: Option<Instant>,
    observers: Observers,
) -> SendResult {
    let Observers { upload, span } = observers;
    let (cluster, route, rng): (&Cluster, &RoutePolicy, &dyn Rng) =
        (&cluster, (*route).as_ref(), &shared.rng);
    let state = &cluster.state;
    let res = &cluster.resilience;
    let policy = &route.retry;
    let mut now = resilience::now();
    let admitted = admit_breaker(route.breaker.as_ref(), now).and_then(|route_breaker| {
        let cluster_breaker = admit_breaker(res.breaker.as_ref(), now)?;
        let active = state.active.try_acquire().ok_or(Refusal::from(Reason::OverflowRequests))?;
        Ok((route_breaker, cluster_breaker, active))
    });
    let (route_breaker, cluster_breaker, active) = match admitted {
        Ok(admitted) => admitted,
        Err(refusal) => return Err(refusal.with_request(Some(req))),
    };
    let mut guards = Some(RequestGuards {
        _active: active,
        _budget: res.budget.start_request_owned(now),
        cluster_breaker,
        route_breaker,
        stats: res.stats.clone(),
        retried: false,
        start: now,
    });
    // The copy for a retry is made when a request is handed to hyper (which consumes it);
    // the lean HTTP/1.1 client only borrows the request, which then serves as its own copy.
    let mut replay: Option<Replay> = None;
    let mut tried = Tried::default();
    let mut retry_permit = None;
    let mut attempt: u32 = 0;
    // The request while we own it: until hyper takes it, or for good when the lean client
    // (which only borrows it) sends it. It stays in place rather than moving per attempt.
    let mut held = Some(req);
    loop {
        attempt += 1;
        // `x-tripline-attempt` is added where the attempt goes out (`Attempt::send`).
        if let Some(r) = held.as_mut() {
            if let Some(d) = deadline {
                // A gRPC client's deadline goes upstream as the time that is left.
                if let Some(t) = r.headers_mut().get_mut(&crate::grpc::GRPC_TIMEOUT) {
                    *t = crate::grpc::timeout_value(d.saturating_duration_since(Instant::now()));
                }
            }
        }
        // The attempt in a scope of its own: what it holds is gone before the backoff's wait,
        // which keeps the request's (boxed) future small.
        let (delay, permit) = {
            let (member, pass, ep_breaker) = match admit_endpoint(cluster, hash, rng, &mut tried, now) {
                Ok(admitted) => admitted,
                Err(refusal) if attempt == 1 => return Err(refusal.with_request(held.take())),
                Err(refusal) => return Err(refusal),
            };
            if let (Some(span), Some(r)) = (&span, held.as_mut()) {
                span.begin_attempt(attempt, member.ep.address, r.headers_mut(), rng);
            }
            let mut inflight = InFlight::new(cluster, &member, pass, ep_breaker, now);
            inflight._retry = retry_permit.take();
            inflight.attempt = attempt;
            inflight.upload = upload.clone();
            let attempted = Attempt { cluster, endpoint: &member.ep, policy, deadline, now, number: attempt };
            let mut response = None;
            let sent = attempted.send(&mut held, &mut replay, &mut response, &mut inflight.conn).await;
            let Sent { failed, unprocessed } = match sent {
                Ok(sent) => sent,
                Err(reason) => {
                    // A local overflow, or the route deadline passing while we waited for a
                    // connection, says nothing about the upstream.
                    inflight.outcome = Outcome::Local(LocalReason::Overflow);
                    if let Some(span) = &span {
                        span.end_attempt(None, &inflight.outcome, true);
                    }
                    let untouched = if attempt == 1 { held.take() } else { None };
                    let refusal = Refusal { reason, retry_after: None, attempts: attempt - 1, request: None };
                    return Err(refusal.with_request(untouched));
                }
            };

            let (outcome, status, grpc_code) = match (&response, failed) {
                (Some(resp), _) => classify_response(resp),
                (None, failed) => (failed.unwrap_or(Outcome::Reset), None, None),
            };
            inflight.outcome = outcome;
            if let Outcome::RateLimited { retry_after: Some(wait) } = outcome {
                // The endpoint asked for time: the balancer leaves it alone until then.
                member.ep.hold.set(resilience::now(), wait);
            }
            if let (None, Some(u)) = (&response, &upload) {
                // The client broke its request (or is still sending it at the deadline): not the
                // upstream's failure, and nothing to retry. The guard records it as local.
                if u.blame(&outcome).is_some() {
                    if let Some(span) = &span {
                        span.end_attempt(None, &Outcome::Local(LocalReason::Cancelled), true);
                    }
                    inflight.request = guards.take();
                    let reason = u.fault().map_or(Reason::RequestTimeout, ClientFault::reason);
                    return Err(Refusal { reason, retry_after: None, attempts: attempt, request: None });
                }
            }

            // Decide whether to retry; every "no" finalises with what we have.
            let ended = retry::Ended { outcome, status, grpc: grpc_code, unprocessed };
            let verdict = retry::decide(policy, attempt, &ended, || retry::Again {
                idempotent: retry::idempotent(&req_method(held.as_ref(), &replay)),
                replayable: held.is_some() || replay.as_ref().is_some_and(Replay::can_replay),
                breaker_refuses: res.breaker.as_ref().is_some_and(|b| b.refuses_traffic()),
            });
            match verdict {
                Verdict::NotReplayable => res.stats.retries_not_replayable.fetch_add(1, Ordering::Relaxed),
                Verdict::BreakerOpen => res.stats.retries_suppressed_breaker.fetch_add(1, Ordering::Relaxed),
                _ => 0,
            };
            let retry = verdict == Verdict::Retry;
            let permit = if retry {
                match res.budget.try_retry_owned(resilience::now()) {
                    Ok(p) => Some(p),
                    Err(_) => {
                        res.stats.retries_refused_budget.fetch_add(1, Ordering::Relaxed);
                        None
                    }
                }
            } else {
                None
            };
            // `Retry-After` is the endpoint's: the endpoint is now held, and a retry that can go
            // to another endpoint need not wait for it.
            let retry_after = match outcome {
                Outcome::RateLimited { retry_after } if !any_available(cluster) => retry_after,
                _ => None,
            };
            let backoff = Backoff::new(policy.backoff_base, policy.backoff_max);
            let remaining = deadline.map_or(Duration::MAX, |d| d.saturating_duration_since(Instant::now()));
            let delay =
                permit.as_ref().and_then(|_| backoff.delay_for(attempt - 1, retry_after, remaining, rng));

            // The request to send next: the original if it never left, else the replayed copy.
            let next = delay.and_then(|d| {
                held.take().or_else(|| replay.as_mut().and_then(Replay::next_request)).map(|r| (d, r))
            });
            if let Some(span) = &span {
                span.end_attempt(status, &outcome, next.is_none());
            }
            let Some((delay, next)) = next else {
                // Final attempt.
                inflight.request = guards.take();
                return match response {
                    Some(mut resp) => {
                        // Only where this hop called a service with its policy: a sidecar's
                        // inbound side passes its workload's errors on as the workload's.
                        if matches!(outcome, Outcome::Http(500..)) && !cluster.is_inbound() {
                            resp.headers_mut().insert(
                                crate::reason::UPSTREAM_FAILED_HEADER,
                                http::HeaderValue::from(attempt),
                            );
                        }
                        Ok((resp, inflight))
                    }
                    None => Err(Refusal {
                        reason: failure_reason(&outcome, deadline),
                        retry_after: None,
                        attempts: attempt,
                        request: None,
                    }),
                };
            };
            res.stats.retries_attempted.fetch_add(1, Ordering::Relaxed);
            if let Some(g) = guards.as_mut() {
                g.retried = true;
            }
            held = Some(next);
            (delay, permit)
        };
        tokio::time::sleep(delay).await;
        now = resilience::now();
        retry_permit = permit;
    }
}

fn req_method(pending: Option<&Request<RequestBody>>, replay: &Option<Replay>) -> Method {
    match (pending, replay) {
        (Some(r), _) => r.method().clone(),
        (None, Some(rp)) => rp.method().clone(),
        // Neither: retries are off for this route; the most conservative answer.
        (None, None) => Method::POST,
    }
}

/// Runs one attempt with the per-try/route time limit, if any.
async fn within<T>(
    limit: Option<Duration>,
    attempt: impl std::future::Future<Output = Result<T, SendError>>,
) -> Result<T, SendError> {
    match limit {
        // Boxed: a timer is the rare case, and kept out of the request future it would
        // otherwise enlarge.
        Some(t) => Box::pin(tokio::time::timeout(t, attempt)).await.unwrap_or(Err(SendError::TimedOut)),
        None => attempt.await,
    }
}
