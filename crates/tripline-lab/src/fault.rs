//! Fault upstreams: HTTP/1.1 servers on loopback whose behaviour follows a schedule over the
//! run's time (healthy, errors at a ratio, slow, slowing down under load, 429 with
//! Retry-After, reset, hang), each counting the attempts it received per time bucket, so a
//! check sees what reached the upstreams, not what the proxy says it sent.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tripline_core::rng::{Rng, SplitMix};

use crate::timeline::{Counts, Epoch};

/// What an upstream does with each request.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Behaviour {
    /// `200` after `latency`, plus `per_in_flight` for each other request it is serving: an
    /// upstream that slows down under load, as real ones do.
    Healthy { latency: Duration, per_in_flight: Duration },
    /// `500` for this share of requests (seeded), `200` for the rest, after `latency`.
    Errors { ratio: f64, latency: Duration },
    /// This status, at once (a 503 from an overloaded server, say).
    Status(u16),
    /// `429` with `Retry-After: secs`.
    RateLimited { retry_after_secs: u32 },
    /// The connection is closed without a response.
    Reset,
    /// No response until the client gives up.
    Hang,
}

impl Behaviour {
    /// Healthy, answering in 2 ms, plus 0.2 ms per request in flight.
    pub const HEALTHY: Behaviour =
        Behaviour::Healthy { latency: Duration::from_millis(2), per_in_flight: Duration::from_micros(200) };

    /// `500` for every request, at once.
    pub const FAILING: Behaviour = Behaviour::Errors { ratio: 1.0, latency: Duration::ZERO };
}

/// A behaviour from a time of the run on (until the next one).
#[derive(Clone, Copy, Debug)]
pub struct Phase {
    pub from: Duration,
    pub behaviour: Behaviour,
}

/// An upstream's schedule: phases in time order, the first from zero.
pub type Schedule = Vec<Phase>;

/// A schedule that starts healthy and takes `behaviour` at each time given.
pub fn schedule(changes: &[(Duration, Behaviour)]) -> Schedule {
    let mut s = vec![Phase { from: Duration::ZERO, behaviour: Behaviour::HEALTHY }];
    s.extend(changes.iter().map(|&(from, behaviour)| Phase { from, behaviour }));
    s
}

/// The behaviour in force at `at`.
pub fn behaviour_at(schedule: &Schedule, at: Duration) -> Behaviour {
    schedule.iter().rev().find(|p| p.from <= at).map(|p| p.behaviour).unwrap_or(Behaviour::HEALTHY)
}

struct State {
    schedule: Schedule,
    epoch: Epoch,
    rng: SplitMix,
    in_flight: AtomicU64,
    /// Attempts received, per bucket, counted on arrival.
    attempts: Counts,
    /// Of those, the ones answered with an error (5xx, 429, reset, hang).
    failed: Counts,
}

/// A running fault upstream.
pub struct FaultUpstream {
    pub addr: SocketAddr,
    state: Arc<State>,
    task: tokio::task::JoinHandle<()>,
}

impl FaultUpstream {
    /// Binds a loopback port and serves `schedule`; `seed` fixes which requests an error
    /// ratio fails. `length` is how long the run lasts (its buckets).
    pub async fn start(
        schedule: Schedule,
        epoch: Epoch,
        seed: u64,
        length: Duration,
    ) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(State {
            schedule,
            epoch,
            rng: SplitMix::seeded(seed),
            in_flight: AtomicU64::new(0),
            attempts: Counts::new(length),
            failed: Counts::new(length),
        });
        let s = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                let _ = stream.set_nodelay(true);
                let s = s.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |_req: Request<Incoming>| answer(s.clone()));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Ok(FaultUpstream { addr, state, task })
    }

    /// Attempts received per bucket.
    pub fn attempts(&self) -> Vec<u64> {
        self.state.attempts.snapshot()
    }

    /// Attempts answered with an error per bucket.
    pub fn failed(&self) -> Vec<u64> {
        self.state.failed.snapshot()
    }
}

impl Drop for FaultUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Counts a request in flight for as long as it is held.
struct InFlight<'a>(&'a AtomicU64);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Hyper ends a connection whose service fails: that is how [`Behaviour::Reset`] resets.
#[derive(Debug)]
struct ResetByLab;

impl std::fmt::Display for ResetByLab {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("connection reset by the lab's fault upstream")
    }
}

impl std::error::Error for ResetByLab {}

async fn answer(s: Arc<State>) -> Result<Response<Full<Bytes>>, ResetByLab> {
    let at = s.epoch.elapsed();
    s.attempts.add(at);
    let others = s.in_flight.fetch_add(1, Ordering::Relaxed);
    let _held = InFlight(&s.in_flight);
    let status = match behaviour_at(&s.schedule, at) {
        Behaviour::Healthy { latency, per_in_flight } => {
            tokio::time::sleep(latency + per_in_flight * others as u32).await;
            StatusCode::OK
        }
        Behaviour::Errors { ratio, latency } => {
            tokio::time::sleep(latency).await;
            if s.rng.unit() < ratio {
                StatusCode::INTERNAL_SERVER_ERROR
            } else {
                StatusCode::OK
            }
        }
        Behaviour::Status(code) => StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        Behaviour::RateLimited { retry_after_secs } => {
            s.failed.add(at);
            let mut r = Response::new(Full::new(Bytes::from_static(b"slow down\n")));
            *r.status_mut() = StatusCode::TOO_MANY_REQUESTS;
            r.headers_mut().insert(http::header::RETRY_AFTER, retry_after_secs.into());
            return Ok(r);
        }
        Behaviour::Reset => {
            s.failed.add(at);
            return Err(ResetByLab);
        }
        Behaviour::Hang => {
            s.failed.add(at);
            match std::future::pending::<Infallible>().await {}
        }
    };
    if status != StatusCode::OK {
        s.failed.add(at);
    }
    let mut r = Response::new(Full::new(Bytes::from_static(b"ok\n")));
    *r.status_mut() = status;
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_phase_in_force_is_the_last_that_has_begun() {
        let s = schedule(&[
            (Duration::from_secs(2), Behaviour::FAILING),
            (Duration::from_secs(5), Behaviour::Reset),
        ]);
        assert_eq!(behaviour_at(&s, Duration::from_millis(1999)), Behaviour::HEALTHY);
        assert_eq!(behaviour_at(&s, Duration::from_secs(2)), Behaviour::FAILING);
        assert_eq!(behaviour_at(&s, Duration::from_secs(60)), Behaviour::Reset);
    }
}
