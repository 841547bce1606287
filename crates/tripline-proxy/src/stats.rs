//! The counters the request path writes: plain atomics owned by the cluster, endpoint or
//! connection they describe, resolved once when those are built, never looked up by name per
//! request. A leaf, so that every layer can own its counters; `metrics` reads them at scrape
//! time and encodes them.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::reason::Reason;

/// Upper bounds (seconds) of the request duration histogram.
pub const DURATION_BUCKETS: [f64; 14] =
    [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// A lock-free fixed-bucket histogram.
#[derive(Debug, Default)]
pub struct Histogram {
    /// One per bucket plus +Inf.
    buckets: [AtomicU64; DURATION_BUCKETS.len() + 1],
    sum_micros: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let i = DURATION_BUCKETS.iter().position(|b| secs <= *b).unwrap_or(DURATION_BUCKETS.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_micros.fetch_add(d.as_micros() as u64, Ordering::Relaxed);
    }

    /// (sum in seconds, count, the count of each bucket alone) as `prometheus-client`'s
    /// `encode_histogram` wants them: it adds them up into the cumulative `le` buckets itself
    /// (given cumulative counts, it exported sums of sums, `+Inf` far above `_count`).
    pub fn snapshot(&self) -> (f64, u64, Vec<(f64, u64)>) {
        let mut count = 0;
        let mut out = Vec::with_capacity(self.buckets.len());
        for (i, b) in self.buckets.iter().enumerate() {
            let n = b.load(Ordering::Relaxed);
            count += n;
            out.push((DURATION_BUCKETS.get(i).copied().unwrap_or(f64::INFINITY), n));
        }
        (self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6, count, out)
    }
}

/// Per-status-code request counters (100..=599), indexed directly by code.
#[derive(Debug)]
pub struct StatusCounters {
    codes: Box<[AtomicU64]>,
}

impl Default for StatusCounters {
    fn default() -> Self {
        StatusCounters { codes: (100..600).map(|_| AtomicU64::new(0)).collect() }
    }
}

impl StatusCounters {
    pub fn inc(&self, status: u16) {
        let i = usize::from(status.clamp(100, 599) - 100);
        self.codes[i].fetch_add(1, Ordering::Relaxed);
    }

    pub fn get(&self, status: u16) -> u64 {
        self.codes[usize::from(status.clamp(100, 599) - 100)].load(Ordering::Relaxed)
    }

    pub fn total(&self) -> u64 {
        self.codes.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }

    /// Non-zero (code, count) pairs.
    pub fn nonzero(&self) -> impl Iterator<Item = (u16, u64)> + '_ {
        self.codes.iter().enumerate().filter_map(|(i, c)| {
            let v = c.load(Ordering::Relaxed);
            (v > 0).then_some((i as u16 + 100, v))
        })
    }
}

/// Locally generated responses, by reason.
#[derive(Debug, Default)]
pub struct ReasonCounters {
    counts: [AtomicU64; Reason::ALL.len()],
}

impl ReasonCounters {
    pub fn inc(&self, reason: Reason) {
        self.counts[reason as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn get(&self, reason: Reason) -> u64 {
        self.counts[reason as usize].load(Ordering::Relaxed)
    }
}

/// Process-wide counters that belong to no cluster.
#[derive(Debug, Default)]
pub struct GlobalStats {
    /// Local responses that happen before a cluster is chosen (e.g. `no-route`).
    pub local: ReasonCounters,
    pub reloads_ok: AtomicU64,
    pub reloads_failed: AtomicU64,
    /// Objects from the Kubernetes API server left out of the running config because they
    /// are invalid (`--kubernetes`), at the last load.
    pub kubernetes_rejected: AtomicU64,
    /// Connections the mesh listener passed through to their original destination (no
    /// service of the mesh), by whether the connect worked.
    pub passthrough_connected: AtomicU64,
    pub passthrough_failed: AtomicU64,
    pub downstream_connections: AtomicU64,
    pub downstream_connections_total: AtomicU64,
    /// Access log lines dropped because the writer fell behind.
    pub access_log_dropped: AtomicU64,
    /// Admin connections closed at once because `admin::MAX_CONNECTIONS` were open.
    pub admin_connections_refused: AtomicU64,
    pub http2: Http2Stats,
    /// Requests a route's `fault` delayed, and those it aborted.
    pub faults_delayed: AtomicU64,
    pub faults_aborted: AtomicU64,
    /// Requests sent to a route's fallback, by cause (`pipeline::fallback::Cause` order).
    pub fallbacks: [AtomicU64; 3],
}

/// Copies of requests a route mirrored to this cluster.
#[derive(Debug, Default)]
pub struct MirrorStats {
    /// Copies in flight now (bounded: see `pipeline::mirror`).
    pub in_flight: std::sync::atomic::AtomicU32,
    /// Copies sent.
    pub sent: AtomicU64,
    /// Copies not sent because the cluster had its maximum in flight.
    pub dropped: AtomicU64,
}

/// HTTP/2 client connections: what went wrong on them (Envoy's `http2.rx_reset`,
/// `http2.tx_reset` and its GOAWAY counts).
#[derive(Debug, Default)]
pub struct Http2Stats {
    /// Streams the client reset (RST_STREAM received).
    pub client_resets: AtomicU64,
    /// Streams Tripline reset for an error: malformed requests, flow-control violations,
    /// refused streams, an upstream failing mid-body (not the NO_ERROR reset that tells a
    /// client its response is complete).
    pub proxy_resets: AtomicU64,
    /// Connections Tripline closed with a GOAWAY for an error, by the error code (RFC 9113 §7,
    /// codes 0x1 to 0xd).
    pub(crate) connection_errors: [AtomicU64; 14],
    /// Connections closed (GOAWAY ENHANCE_YOUR_CALM) by an abuse limit, by the limit.
    floods: [AtomicU64; Http2Flood::ALL.len()],
}

impl Http2Stats {
    pub fn connection_error(&self, code: u32) {
        if let Some(c) = self.connection_errors.get(code as usize) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn connection_errors(&self, code: u32) -> u64 {
        self.connection_errors.get(code as usize).map_or(0, |c| c.load(Ordering::Relaxed))
    }

    pub fn flood(&self, kind: Http2Flood) {
        self.floods[kind as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn floods(&self, kind: Http2Flood) -> u64 {
        self.floods[kind as usize].load(Ordering::Relaxed)
    }
}

/// The abuse limits of Tripline's HTTP/2 server (`h2_server`), each of which closes a client
/// connection with GOAWAY ENHANCE_YOUR_CALM (Envoy's `http2.*_flood` statistics). The
/// discriminant indexes counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Http2Flood {
    /// Most of the streams reset before their response (rapid reset, CVE-2023-44487).
    RapidReset,
    /// Over 1,024 streams reset by Tripline for the client's errors (`h2`'s limit).
    StreamErrors,
    /// HEADERS or DATA frames carrying nothing, twice in a row.
    EmptyFrames,
    /// PRIORITY frames beyond 100 per stream opened.
    Priority,
    /// WINDOW_UPDATE frames beyond 10 per DATA frame sent.
    WindowUpdate,
    /// RST_STREAM frames on closed streams beyond one per stream opened (and 100 spare).
    ClosedStreamResets,
}

impl Http2Flood {
    pub const ALL: [Http2Flood; 6] = [
        Http2Flood::RapidReset,
        Http2Flood::StreamErrors,
        Http2Flood::EmptyFrames,
        Http2Flood::Priority,
        Http2Flood::WindowUpdate,
        Http2Flood::ClosedStreamResets,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Http2Flood::RapidReset => "rapid-reset",
            Http2Flood::StreamErrors => "stream-errors",
            Http2Flood::EmptyFrames => "empty-frames",
            Http2Flood::Priority => "priority",
            Http2Flood::WindowUpdate => "window-update",
            Http2Flood::ClosedStreamResets => "closed-stream-resets",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_snapshot_counts_each_bucket_alone() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(300));
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_secs(20));
        let (sum, count, b) = h.snapshot();
        assert_eq!(count, 3);
        assert!((sum - 20.0033).abs() < 1e-6);
        assert_eq!(b[0], (0.0005, 1));
        assert_eq!(b[3], (0.005, 1));
        assert_eq!(*b.last().unwrap(), (f64::INFINITY, 1));
        assert_eq!(b.iter().map(|(_, n)| n).sum::<u64>(), count);
    }

    #[test]
    fn status_counters_clamp_odd_codes() {
        let s = StatusCounters::default();
        s.inc(200);
        s.inc(200);
        s.inc(999);
        assert_eq!(s.get(200), 2);
        assert_eq!(s.get(599), 1);
        assert_eq!(s.nonzero().collect::<Vec<_>>(), vec![(200, 2), (599, 1)]);
    }
}
