//! The stream idle timeout on HTTP/2 (`--stream-idle-timeout`, Envoy's `stream_idle_timeout`):
//! a stream whose bytes have moved neither way for the timeout is ended, so that a client that
//! never reads a response (its window stays shut) or an upstream that never answers cannot hold
//! what the stream holds (an upstream connection, a `maxConnections` slot) for ever.
//!
//! HTTP/1.1 connections carry one request at a time and are swept from outside
//! (`client_conns`); an HTTP/2 connection carries many, and only its task knows each stream's
//! progress. Each stream keeps the time of its last frame in or out, on the coarse clock the
//! housekeeping task advances (a load, no clock read per frame), and one timer per connection,
//! armed only while it has streams, checks them every quarter of the timeout (at most every
//! second, at least every 100 ms). A stream is idle once it has been quiet for the timeout plus
//! the coarse clock's lag: never early.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::Context;
use std::time::Duration;

use tokio::time::Sleep;

use crate::client_conns::StreamIdleConfig;

/// How stale the coarse clock can be (see `client_conns`).
const COARSE_TICK_MS: u64 = 100;

/// A connection's side of the timeout: its clock and its timer.
pub(super) struct IdleCheck {
    timeout_ms: u64,
    clock: Arc<AtomicU64>,
    period: Duration,
    timer: Option<Pin<Box<Sleep>>>,
}

impl IdleCheck {
    pub(super) fn new(config: &StreamIdleConfig) -> Option<Self> {
        let timeout_ms = u64::try_from(config.timeout.as_millis()).unwrap_or(u64::MAX);
        (timeout_ms > 0).then(|| IdleCheck {
            timeout_ms,
            clock: config.clock.clone(),
            period: (config.timeout / 4).clamp(Duration::from_millis(100), Duration::from_secs(1)),
            timer: None,
        })
    }

    /// The coarse time a stream's progress is stamped with.
    pub(super) fn now(&self) -> u64 {
        self.clock.load(Ordering::Relaxed)
    }

    /// Whether a stream last moved at `progress` is idle now.
    pub(super) fn expired(&self, progress: u64) -> bool {
        self.now().saturating_sub(progress) >= self.timeout_ms.saturating_add(COARSE_TICK_MS)
    }

    /// Whether the streams are to be checked now. The timer runs only while there are streams
    /// (`busy`), and costs a flag check per poll otherwise: it is polled (registering the
    /// task's waker) only when armed again.
    pub(super) fn due(&mut self, busy: bool, cx: &mut Context<'_>) -> bool {
        if !busy {
            self.timer = None;
            return false;
        }
        match &mut self.timer {
            Some(t) if !t.is_elapsed() => false,
            Some(t) => {
                t.as_mut().reset(tokio::time::Instant::now() + self.period);
                let _ = t.as_mut().poll(cx);
                true
            }
            None => {
                let mut t = Box::pin(tokio::time::sleep(self.period));
                let _ = t.as_mut().poll(cx);
                self.timer = Some(t);
                false
            }
        }
    }
}
