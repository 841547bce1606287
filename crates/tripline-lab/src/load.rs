//! The open-loop load generator: requests leave at the times the rate says, whether or not
//! earlier ones have come back, and each one's latency is measured from when it should have
//! left. A closed loop (send, wait, send) slows down with the server it measures and hides
//! the queue ("coordinated omission"); an open loop is what many independent clients do.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::timeline::Epoch;

/// A request rate, in force until `until` (from the start of the run).
#[derive(Clone, Copy, Debug)]
pub struct Stage {
    pub until: Duration,
    pub rps: f64,
}

/// What the clients saw of a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A 2xx.
    Ok,
    /// Any other status passed on from the upstream (no `x-tripline-reason`).
    UpstreamError,
    /// Tripline answered itself (`x-tripline-reason`): a refusal, a fast 503, a 429.
    Local,
    /// No response: the connection failed or was closed, or the client timed out.
    NoResponse,
    /// Never sent: the generator had its most requests in flight already.
    NotSent,
}

/// One request, as the client saw it.
#[derive(Clone, Debug)]
pub struct Record {
    /// When it should have left, from the start of the run.
    pub intended: Duration,
    /// From `intended` to the end of the response body.
    pub latency: Duration,
    pub status: u16,
    pub outcome: Outcome,
}

/// The generator's settings.
pub struct Load {
    pub target: SocketAddr,
    /// The `Host` of every request.
    pub host: &'static str,
    pub stages: Vec<Stage>,
    /// A request without a complete response this long after it should have left is
    /// [`Outcome::NoResponse`].
    pub timeout: Duration,
    /// Requests in flight beyond which the next are [`Outcome::NotSent`] (bounds memory when
    /// nothing answers).
    pub max_in_flight: usize,
}

/// The rate in force at `at`; `None` past the last stage.
pub fn rate_at(stages: &[Stage], at: Duration) -> Option<f64> {
    stages.iter().find(|s| at < s.until).map(|s| s.rps)
}

/// The times requests should leave at, from zero to the end of the last stage.
pub fn schedule(stages: &[Stage]) -> Vec<Duration> {
    let mut out = Vec::new();
    let mut at = Duration::ZERO;
    while let Some(rps) = rate_at(stages, at) {
        out.push(at);
        at += Duration::from_secs_f64(1.0 / rps.max(0.001));
    }
    out
}

/// Runs the load; returns every request's record, in the order they were meant to leave.
/// `progress` is called now and then with the time into the run.
pub async fn run(load: &Load, epoch: &Epoch, progress: &(dyn Fn(Duration) + Sync)) -> Vec<Record> {
    let times = schedule(&load.stages);
    let pool = Arc::new(Pool { target: load.target, idle: Mutex::new(Vec::new()) });
    let records = Arc::new(Mutex::new(Vec::with_capacity(times.len())));
    let in_flight = Arc::new(AtomicUsize::new(0));
    let t0 = epoch.start();
    let mut last_progress = Duration::ZERO;
    for intended in times {
        tokio::time::sleep_until((t0 + intended).into()).await;
        if intended >= last_progress + Duration::from_millis(250) {
            progress(intended);
            last_progress = intended;
        }
        if in_flight.load(Ordering::Relaxed) >= load.max_in_flight {
            let r = Record { intended, latency: Duration::ZERO, status: 0, outcome: Outcome::NotSent };
            records.lock().unwrap().push(r);
            continue;
        }
        in_flight.fetch_add(1, Ordering::Relaxed);
        let (pool, records, in_flight) = (pool.clone(), records.clone(), in_flight.clone());
        let (host, timeout) = (load.host, load.timeout);
        tokio::spawn(async move {
            let due = t0 + intended;
            let (status, outcome) =
                match tokio::time::timeout_at((due + timeout).into(), pool.get(host)).await {
                    Ok(Ok(r)) => r,
                    Ok(Err(_)) | Err(_) => (0, Outcome::NoResponse),
                };
            let r = Record { intended, latency: due.elapsed(), status, outcome };
            records.lock().unwrap().push(r);
            in_flight.fetch_sub(1, Ordering::Relaxed);
        });
    }
    // Wait for the last answers (each is bounded by the timeout).
    let deadline = Instant::now() + load.timeout + Duration::from_secs(1);
    while in_flight.load(Ordering::Relaxed) > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut out = std::mem::take(&mut *records.lock().unwrap());
    out.sort_by_key(|r| r.intended);
    out
}

/// Keep-alive HTTP/1.1 connections to the proxy, as a client's connection pool keeps them.
struct Pool {
    target: SocketAddr,
    idle: Mutex<Vec<SendRequest<Empty<Bytes>>>>,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl Pool {
    /// One GET; returns its status and outcome once its body has been read.
    async fn get(&self, host: &str) -> Result<(u16, Outcome), BoxError> {
        let reused = self.idle.lock().unwrap().pop();
        let (mut conn, was_reused) = match reused {
            Some(c) if !c.is_closed() => (c, true),
            _ => (self.connect().await?, false),
        };
        let response = match conn.send_request(request(host)).await {
            Ok(r) => r,
            // A kept connection the proxy closed before the request went out: any client
            // sends it again on a new one.
            Err(e) if was_reused && e.is_canceled() => {
                conn = self.connect().await?;
                conn.send_request(request(host)).await?
            }
            Err(e) => return Err(e.into()),
        };
        let status = response.status();
        let local = response.headers().contains_key("x-tripline-reason");
        response.into_body().collect().await?;
        if !conn.is_closed() {
            self.idle.lock().unwrap().push(conn);
        }
        let outcome = match () {
            _ if local => Outcome::Local,
            _ if status.is_success() => Outcome::Ok,
            _ => Outcome::UpstreamError,
        };
        Ok((status.as_u16(), outcome))
    }

    async fn connect(&self) -> Result<SendRequest<Empty<Bytes>>, BoxError> {
        let stream = TcpStream::connect(self.target).await?;
        stream.set_nodelay(true)?;
        let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(conn);
        Ok(send)
    }
}

fn request(host: &str) -> Request<Empty<Bytes>> {
    Request::get("/").header(http::header::HOST, host).body(Empty::new()).expect("a valid request")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schedule_follows_each_stage_s_rate_and_ends_with_the_last() {
        let stages = [
            Stage { until: Duration::from_secs(1), rps: 10.0 },
            Stage { until: Duration::from_secs(2), rps: 100.0 },
        ];
        let times = schedule(&stages);
        let first = times.iter().filter(|t| **t < Duration::from_secs(1)).count();
        assert_eq!((first, times.len() - first), (10, 100));
        assert!(times.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(rate_at(&stages, Duration::from_secs(2)), None);
    }

    /// Against a real fault upstream on loopback (no proxy): every scheduled request is
    /// recorded once, its outcome is what the upstream answered, and the upstream counted the
    /// same requests.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_request_is_recorded_with_the_upstream_s_answer() {
        use crate::fault::{schedule, Behaviour, FaultUpstream};
        let epoch = Epoch::default();
        let length = Duration::from_millis(500);
        let half = Behaviour::Errors { ratio: 0.5, latency: Duration::from_millis(1) };
        let up = FaultUpstream::start(schedule(&[(Duration::ZERO, half)]), epoch.clone(), 7, length)
            .await
            .unwrap();
        let load = Load {
            target: up.addr,
            host: "lab.local",
            stages: vec![Stage { until: length, rps: 100.0 }],
            timeout: Duration::from_secs(5),
            max_in_flight: 1000,
        };
        let records = run(&load, &epoch, &|_| ()).await;
        assert_eq!(records.len(), 50);
        let ok = records.iter().filter(|r| r.outcome == Outcome::Ok).count();
        let failed =
            records.iter().filter(|r| r.outcome == Outcome::UpstreamError && r.status == 500).count();
        assert_eq!(ok + failed, 50, "{records:?}");
        assert!((10..=40).contains(&failed), "about half fail: {failed}");
        assert_eq!(up.attempts().iter().sum::<u64>(), 50);
        assert_eq!(up.failed().iter().sum::<u64>(), failed as u64);
        assert!(
            records.iter().all(|r| r.latency >= Duration::from_millis(1)),
            "latency includes the upstream's"
        );
    }
}
