//! One attempt: a pooled connection to the chosen endpoint, and the request sent on it within
//! the per-try and route time limits.
//!
//! A pooled connection found dead before the request went out is replaced (up to three times,
//! so a flapping upstream cannot spin us) without it counting as an attempt. What the attempt
//! means for the endpoint's health is recorded by its [`super::InFlight`] guard, which `send`
//! holds; whether to try again is [`super::retry`]'s.

use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use tokio::time::Instant;
use tripline_config::plan::{RetryPlan, UpstreamProtocol};
use tripline_core::classify::Outcome;
use tripline_core::clock::Nanos;

use super::within;
use crate::cluster::{Cluster, Endpoint};
use crate::endpoint::body::{RequestBody, UpstreamBody};
use crate::endpoint::h1;
use crate::endpoint::pool::{self, Conn, H1Link, Reusable, SendError};
use crate::endpoint::replay::Replay;
use crate::reason::Reason;

/// An attempt about to be made: where to, and under which limits.
pub(super) struct Attempt<'a> {
    pub cluster: &'a Cluster,
    pub endpoint: &'a Arc<Endpoint>,
    pub policy: &'a RetryPlan,
    /// When the route timeout fires.
    pub deadline: Option<Instant>,
    pub now: Nanos,
    /// Which attempt this is, from 1: sent upstream as `x-tripline-attempt`.
    pub number: u32,
}

/// How an attempt went, apart from its response (which goes straight where the caller keeps
/// it: a response head is a few hundred bytes, and each move of it a `memcpy`).
pub(super) struct Sent {
    /// How the attempt failed; `None` when a response came.
    pub failed: Option<Outcome>,
    /// The upstream did not process the request: it never went out (and is back in `held`),
    /// or an HTTP/2 upstream refused the stream.
    pub unprocessed: bool,
}

impl Attempt<'_> {
    /// Sends the request: `held` while we own it (the lean HTTP/1.1 client only borrows it;
    /// hyper's takes it, after a copy is kept in `replay` when the route retries). A response
    /// goes to `response`, with the connection to give back once its body is read in `conn`.
    /// `Err` when no connection could be had for a reason that says nothing about the
    /// upstream: a local overflow, or the route deadline passing while waiting for one.
    pub async fn send(
        &self,
        held: &mut Option<Request<RequestBody>>,
        replay: &mut Option<Replay>,
        response: &mut Option<Response<UpstreamBody>>,
        conn: &mut Option<Reusable>,
    ) -> Result<Sent, Reason> {
        let mut failed = Some(Outcome::Reset);
        // Until a send goes out: the request never reached an upstream, so it is safe to send
        // again whatever the method.
        let mut never_sent = true;
        let mut refused = false;
        for _ in 0..3 {
            let Some(r) = held.as_ref() else { break };
            let simple = self.cluster.protocol() == UpstreamProtocol::Http1 && h1::is_simple(r);
            let checkout = pool::checkout(self.cluster.pool_cx(), self.endpoint, self.now, simple);
            let checked_out = match self.deadline {
                Some(d) => tokio::time::timeout_at(d, checkout).await.unwrap_or(Err(Reason::RouteTimeout)),
                None => checkout.await,
            };
            let checked = match checked_out {
                Ok(c) => c,
                Err(Reason::UpstreamConnectFailure) => {
                    failed = Some(Outcome::ConnectFailure);
                    break;
                }
                Err(reason) => return Err(reason),
            };
            let limit = self.limit();
            let sent = match checked {
                Conn::H1(H1Link::Raw(c)) => within(limit, h1::send(c, r, self.number)).await,
                hyper_conn => {
                    let Some(mut r) = held.take() else { break };
                    if self.policy.attempts > 0 && replay.is_none() {
                        *replay = Some(Replay::capture(&mut r, self.policy.max_replay_bytes));
                    }
                    // Boxed: hyper's send future is large and this is the less common path;
                    // inline it would grow every request's future.
                    within(limit, Box::pin(hyper_conn.send(r, self.number))).await
                }
            };
            let state = &self.cluster.state;
            match sent {
                Ok((resp, reusable)) => {
                    *response = Some(resp);
                    *conn = reusable;
                    failed = None;
                }
                Err(SendError::NotSent(back)) => {
                    if let Some(back) = back {
                        *held = Some(*back);
                    }
                    continue;
                }
                Err(SendError::Reset(e)) => {
                    tracing::debug!(cluster = %state.name, endpoint = %self.endpoint.address, error = %e, "upstream reset");
                    failed = Some(Outcome::Reset);
                }
                Err(SendError::Refused(e)) => {
                    tracing::debug!(cluster = %state.name, endpoint = %self.endpoint.address, error = %e, "upstream refused the stream");
                    failed = Some(Outcome::Reset);
                    refused = true;
                }
                Err(SendError::TimedOut) => failed = Some(Outcome::Timeout),
            }
            never_sent = false;
            break;
        }
        // Hyper took it and never gave it back: it is gone (only the replay copy is left).
        let never_sent = never_sent && held.is_some();
        Ok(Sent { failed, unprocessed: never_sent || refused })
    }

    /// The attempt ends at the per-try timeout or the route deadline, whichever is first, so a
    /// timeout is recorded against the endpoint rather than the attempt being dropped (which
    /// would say nothing about the upstream).
    fn limit(&self) -> Option<Duration> {
        let left = || self.deadline.map(|d| d.saturating_duration_since(Instant::now()));
        match (self.policy.per_try_timeout, left()) {
            (Some(t), Some(l)) => Some(t.min(l)),
            (t, l) => t.or(l),
        }
    }
}
