//! Faulty HTTP upstreams (HTTP/1.1 and h2c) for the resilience tests: a behaviour switchable
//! while the test runs (or queued for the next requests only), and a log of every request
//! received (method, `x-tripline-attempt`, when), counted on arrival, before any fault is
//! applied. Times are the runtime's clock, virtual under paused time (the proxy's in-process
//! tests share this file).
//!
//! A healthy answer is `200` with `x-upstream-id` and a JSON body `{"id", "attempt"}`.
//! A "refuse connections" upstream is just a closed port: see [`refusing_addr`].

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::Ordering::SeqCst;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::BodyExt;
use hyper::body::{Frame, Incoming};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::client::{channel_body, full, Body, BoxError};
use super::upstream::{serve_http, ActiveGuard, UpstreamState};

/// What the upstream does with each request.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Fault {
    /// `200` at once.
    Healthy,
    /// Always this status (e.g. 500, 503).
    Status(u16),
    /// This status after this delay.
    SlowStatus { status: u16, delay: Duration },
    /// `500` for `percent`% of requests, chosen by a seeded generator (the same sequence of
    /// answers on every run, given the same order of arrival).
    FailPercent { percent: u32, seed: u64 },
    /// `200` after this delay.
    Slow(Duration),
    /// `200` with `content-length: 1000`, 10 bytes of body, then the connection is dropped.
    ResetMidResponse,
    /// `200` with `content-length: 1000` and 10 bytes of body; the other 990 after this delay.
    StallMidResponse(Duration),
    /// `429` with `Retry-After: <secs>`.
    RateLimited { retry_after_secs: u32 },
    /// `503` with `x-tripline-reason: breaker-open`: the next hop is a Tripline whose breaker
    /// is open. (This and the next: the proxy's in-process tests, which share this file; the
    /// end-to-end chain of real hops is the pressure lab's `call-chain`.)
    #[allow(dead_code)]
    NextHopRefusal,
    /// `500` with `x-tripline-upstream-failed: 3`: the next hop is a Tripline passing on its
    /// upstream's error after three attempts.
    #[allow(dead_code)]
    NextHopPassedOn,
}

/// One request as the upstream received it.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: String,
    /// `x-tripline-attempt` (0 when absent).
    pub attempt: u32,
    pub at: Instant,
    pub headers: http::HeaderMap,
}

struct State {
    id: String,
    fault: Mutex<Fault>,
    /// Faults for the next requests, in order of arrival, before `fault` again.
    next: Mutex<VecDeque<Fault>>,
    rng: Mutex<u64>,
    seen: Mutex<Vec<Seen>>,
    /// Connection and in-flight counters, as for the other test upstreams.
    counters: Arc<UpstreamState>,
}

pub struct Faulty {
    pub addr: SocketAddr,
    state: Arc<State>,
    accept: JoinHandle<()>,
}

impl Drop for Faulty {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// An address on 127.0.0.1 where nothing listens: connecting is refused.
pub fn refusing_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], super::free_port()))
}

impl Faulty {
    pub async fn start(id: &str, fault: Fault) -> Faulty {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seed = match fault {
            Fault::FailPercent { seed, .. } => seed,
            _ => 1,
        };
        let state = Arc::new(State {
            id: id.to_owned(),
            fault: Mutex::new(fault),
            next: Mutex::default(),
            rng: Mutex::new(seed.max(1)),
            seen: Mutex::new(Vec::new()),
            counters: UpstreamState::new(id, Duration::ZERO),
        });
        let st = state.clone();
        let accept = serve_http(listener, state.counters.clone(), move |_, _, req| handle(st.clone(), req));
        Faulty { addr, state, accept }
    }

    /// Switches the behaviour for the requests that arrive from now on.
    pub fn set(&self, fault: Fault) {
        *self.state.fault.lock().unwrap() = fault;
    }

    /// Queues `fault` for one request: the next to arrive that no earlier `then` claimed.
    #[allow(dead_code)] // the proxy's in-process tests use it
    pub fn then(&self, fault: Fault) {
        self.state.next.lock().unwrap().push_back(fault);
    }

    /// Every request received so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.state.seen.lock().unwrap().clone()
    }

    /// Requests received so far.
    pub fn requests(&self) -> usize {
        self.state.seen.lock().unwrap().len()
    }

    /// Requests received with this method.
    pub fn count_method(&self, method: &str) -> usize {
        self.state.seen.lock().unwrap().iter().filter(|s| s.method == method).count()
    }

    /// The most requests in flight at once.
    pub fn max_active(&self) -> usize {
        self.state.counters.max_active.load(SeqCst)
    }
}

/// xorshift64: small, seeded, good enough to pick which requests fail.
fn next(rng: &Mutex<u64>) -> u64 {
    let mut x = rng.lock().unwrap();
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    *x
}

async fn handle(st: Arc<State>, req: Request<Incoming>) -> Result<Response<Body>, BoxError> {
    let attempt = req
        .headers()
        .get("x-tripline-attempt")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u32>().ok())
        .unwrap_or(0);
    st.seen.lock().unwrap().push(Seen {
        method: req.method().to_string(),
        attempt,
        at: Instant::now(),
        headers: req.headers().clone(),
    });
    let _active = ActiveGuard::new(&st.counters);
    let queued = st.next.lock().unwrap().pop_front();
    let fault = queued.unwrap_or_else(|| *st.fault.lock().unwrap());
    // Read the request body fully, as a real server would before answering.
    let _ = req.into_body().collect().await;
    let json = |status: u16| -> Result<Response<Body>, BoxError> {
        let body = serde_json::json!({"id": st.id, "attempt": attempt}).to_string();
        Ok(Response::builder()
            .status(status)
            .header("content-type", "application/json")
            .header("x-upstream-id", &st.id)
            .body(full(body))?)
    };
    match fault {
        Fault::Healthy => json(200),
        Fault::Status(s) => json(s),
        Fault::SlowStatus { status, delay } => {
            tokio::time::sleep(delay).await;
            json(status)
        }
        Fault::FailPercent { percent, .. } => {
            if next(&st.rng) % 100 < u64::from(percent) {
                json(500)
            } else {
                json(200)
            }
        }
        Fault::Slow(d) => {
            tokio::time::sleep(d).await;
            json(200)
        }
        Fault::NextHopRefusal => Ok(Response::builder()
            .status(503)
            .header("x-tripline-reason", "breaker-open")
            .header("x-upstream-id", &st.id)
            .body(full("breaker open"))?),
        Fault::NextHopPassedOn => Ok(Response::builder()
            .status(500)
            .header("x-tripline-upstream-failed", "3")
            .header("x-upstream-id", &st.id)
            .body(full("upstream error"))?),
        Fault::RateLimited { retry_after_secs } => Ok(Response::builder()
            .status(429)
            .header("retry-after", retry_after_secs.to_string())
            .header("x-upstream-id", &st.id)
            .body(full("slow down"))?),
        Fault::StallMidResponse(stall) => {
            let (tx, out) = channel_body(2);
            tokio::spawn(async move {
                let _ = tx.send(Frame::data(Bytes::from_static(b"partial..."))).await;
                tokio::time::sleep(stall).await;
                let _ = tx.send(Frame::data(Bytes::from(vec![b'.'; 990]))).await;
            });
            Ok(Response::builder()
                .status(200)
                .header("content-length", "1000")
                .header("x-upstream-id", &st.id)
                .body(out)?)
        }
        Fault::ResetMidResponse => {
            let (tx, out) = channel_body(2);
            tokio::spawn(async move {
                let _ = tx.send(Frame::data(Bytes::from_static(b"partial..."))).await;
                // Give the head and the first bytes time to leave, then end the body 990 bytes
                // short of its content-length: hyper drops the connection.
                tokio::time::sleep(Duration::from_millis(20)).await;
                drop(tx);
            });
            Ok(Response::builder()
                .status(200)
                .header("content-length", "1000")
                .header("x-upstream-id", &st.id)
                .body(out)?)
        }
    }
}
