//! What the connection remembers of streams that are no longer open, so that a frame arriving
//! on one gets the answer RFC 9113 §5.1 asks for.
//!
//! A closed stream is forgotten as soon as it closes (`Connection::streams` holds open streams
//! only), and a frame on it is then a client error: DATA gets RST_STREAM STREAM_CLOSED, HEADERS
//! closes the connection (STREAM_CLOSED, or PROTOCOL_ERROR for an id the client skipped, which
//! it can never use: §5.1.1). The exception is a stream Tripline reset: the client may have
//! sent frames before it saw the reset, and they must be ignored (§5.1, "closed"). Those
//! streams are remembered here for `RESET_MEMORY`, at most `MAX_RESET_RECORDS` of them, each
//! with what it may still send: no more than one receive window of DATA (all a client can have
//! had in flight) and trailers until it ends its side. Past that, the frames are errors again.

use std::collections::VecDeque;
use std::time::Duration;

use h2::frame::Reason;
use tokio::time::Instant;

use super::MAX_CONCURRENT_STREAMS;
use crate::h2_streams::{IdMap, RECV_WINDOW};

/// How long a stream Tripline reset is remembered: frames the client sent before it saw the
/// RST_STREAM arrive within a round trip; this allows for slow links (h2 allows 1 s).
pub(super) const RESET_MEMORY: Duration = Duration::from_secs(10);
/// At most this many streams are remembered; the oldest go first.
const MAX_RESET_RECORDS: usize = MAX_CONCURRENT_STREAMS as usize;
/// Ranges of skipped stream ids remembered (only the error code of a HEADERS on one depends on
/// it: an id in a forgotten range gets STREAM_CLOSED instead of PROTOCOL_ERROR).
const MAX_SKIPPED_RANGES: usize = 16;

/// A stream Tripline reset, whose late frames are ignored.
#[derive(Debug)]
struct ResetStream {
    expires: Instant,
    /// Flow-controlled bytes the client may still send on it.
    budget: u32,
    /// The client ended its side: nothing more may come.
    ended: bool,
}

/// What to do with a frame on a stream that is not open.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Verdict {
    /// Sent before the client learnt of Tripline's reset: ignored.
    Ignore,
    /// A client error, with the code to answer it with.
    Error(Reason),
}

#[derive(Debug, Default)]
pub(super) struct ClosedStreams {
    reset: IdMap<ResetStream>,
    /// The `reset` ids, oldest first, with their expiry (an id reset again later is listed
    /// twice; only the entry matching the record's expiry removes it).
    order: VecDeque<(u32, Instant)>,
    /// Ranges of ids the client skipped when it opened a stream (inclusive, odd ids).
    skipped: VecDeque<(u32, u32)>,
}

impl ClosedStreams {
    /// Tripline sent RST_STREAM on `id`; `ended`: the client had already ended its side.
    pub fn reset_by_us(&mut self, id: u32, ended: bool) {
        let now = Instant::now();
        while let Some(&(old, expires)) = self.order.front() {
            if expires > now && self.order.len() < MAX_RESET_RECORDS {
                break;
            }
            self.order.pop_front();
            if self.reset.get(&old).is_some_and(|r| r.expires == expires) {
                self.reset.remove(&old);
            }
        }
        let expires = now + RESET_MEMORY;
        self.reset.insert(id, ResetStream { expires, budget: RECV_WINDOW, ended });
        self.order.push_back((id, expires));
    }

    /// The client opened stream `id`, its previous highest being `last`: the ids between them
    /// are closed for good.
    pub fn opened(&mut self, last: u32, id: u32) {
        // Client ids are odd: the next after `last` is `last + 2` (1 for the first stream).
        let next = if last == 0 { 1 } else { last + 2 };
        if id > next {
            if self.skipped.len() == MAX_SKIPPED_RANGES {
                self.skipped.pop_front();
            }
            self.skipped.push_back((next, id - 2));
        }
    }

    /// DATA with `len` flow-controlled bytes on closed stream `id`.
    pub fn data(&mut self, id: u32, len: u32, end: bool) -> Verdict {
        let Some(r) = self.live(id) else { return Verdict::Error(Reason::STREAM_CLOSED) };
        if r.ended {
            self.reset.remove(&id);
            return Verdict::Error(Reason::STREAM_CLOSED);
        }
        let Some(left) = r.budget.checked_sub(len) else {
            // More than any window the client had: a flow-control violation.
            self.reset.remove(&id);
            return Verdict::Error(Reason::FLOW_CONTROL_ERROR);
        };
        r.budget = left;
        r.ended = end;
        Verdict::Ignore
    }

    /// HEADERS on closed stream `id` (an answer is a connection error): trailers are ignored
    /// on a stream Tripline reset before the client ended it, anything else is an error.
    pub fn headers(&mut self, id: u32, end: bool) -> Verdict {
        if let Some(r) = self.live(id) {
            if !r.ended && end {
                r.ended = true;
                return Verdict::Ignore;
            }
            self.reset.remove(&id);
            return Verdict::Error(Reason::STREAM_CLOSED);
        }
        if self.skipped.iter().any(|&(lo, hi)| (lo..=hi).contains(&id)) {
            // A stream id lower than one already used, never opened (RFC 9113 §5.1.1).
            return Verdict::Error(Reason::PROTOCOL_ERROR);
        }
        Verdict::Error(Reason::STREAM_CLOSED)
    }

    /// The record of a stream Tripline reset, unless it expired.
    fn live(&mut self, id: u32) -> Option<&mut ResetStream> {
        let now = Instant::now();
        match self.reset.get(&id) {
            Some(r) if r.expires <= now => {
                self.reset.remove(&id);
                None
            }
            _ => self.reset.get_mut(&id),
        }
    }

    /// Streams remembered as reset by Tripline (for tests).
    #[cfg(test)]
    pub fn remembered(&self) -> usize {
        self.reset.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn late_data_on_a_stream_tripline_reset_is_ignored_up_to_one_window() {
        let mut c = ClosedStreams::default();
        c.reset_by_us(1, false);
        assert_eq!(c.data(1, RECV_WINDOW - 10, false), Verdict::Ignore);
        assert_eq!(c.data(1, 10, false), Verdict::Ignore);
        assert_eq!(c.data(1, 1, false), Verdict::Error(Reason::FLOW_CONTROL_ERROR));
        assert_eq!(c.data(1, 1, false), Verdict::Error(Reason::STREAM_CLOSED), "forgotten after the error");
    }

    #[tokio::test(start_paused = true)]
    async fn nothing_is_ignored_after_the_client_ended_its_side() {
        let mut c = ClosedStreams::default();
        c.reset_by_us(1, false);
        assert_eq!(c.data(1, 5, true), Verdict::Ignore);
        assert_eq!(c.data(1, 5, false), Verdict::Error(Reason::STREAM_CLOSED));
        c.reset_by_us(3, false);
        assert_eq!(c.headers(3, true), Verdict::Ignore, "trailers the client sent before the reset");
        assert_eq!(c.headers(3, true), Verdict::Error(Reason::STREAM_CLOSED));
        c.reset_by_us(5, true);
        assert_eq!(c.data(5, 1, false), Verdict::Error(Reason::STREAM_CLOSED));
        c.reset_by_us(7, false);
        assert_eq!(
            c.headers(7, false),
            Verdict::Error(Reason::STREAM_CLOSED),
            "a HEADERS that is not trailers"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_reset_stream_is_remembered_for_a_limited_time() {
        let mut c = ClosedStreams::default();
        c.reset_by_us(1, false);
        tokio::time::advance(RESET_MEMORY - Duration::from_millis(1)).await;
        assert_eq!(c.data(1, 1, false), Verdict::Ignore);
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(c.data(1, 1, false), Verdict::Error(Reason::STREAM_CLOSED));
    }

    #[tokio::test(start_paused = true)]
    async fn the_record_is_bounded_and_forgets_the_oldest_first() {
        let mut c = ClosedStreams::default();
        for i in 0..MAX_RESET_RECORDS as u32 + 10 {
            c.reset_by_us(2 * i + 1, false);
        }
        assert_eq!(c.remembered(), MAX_RESET_RECORDS);
        assert_eq!(c.data(1, 1, false), Verdict::Error(Reason::STREAM_CLOSED), "the oldest is gone");
        let newest = 2 * (MAX_RESET_RECORDS as u32 + 9) + 1;
        assert_eq!(c.data(newest, 1, false), Verdict::Ignore);
        // Expired records are dropped as new ones come, not only when looked up.
        tokio::time::advance(RESET_MEMORY).await;
        c.reset_by_us(1, false);
        assert_eq!(c.remembered(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_stream_reset_twice_is_remembered_from_the_second_reset() {
        let mut c = ClosedStreams::default();
        c.reset_by_us(1, false);
        tokio::time::advance(RESET_MEMORY / 2).await;
        c.reset_by_us(1, false);
        tokio::time::advance(RESET_MEMORY / 2).await;
        // The first reset's expiry passed; its queue entry must not remove the second record.
        c.reset_by_us(3, false);
        assert_eq!(c.data(1, 1, false), Verdict::Ignore);
    }

    #[test]
    fn a_headers_on_a_skipped_id_is_a_protocol_error_on_a_used_one_stream_closed() {
        let mut c = ClosedStreams::default();
        c.opened(0, 1);
        c.opened(1, 7); // 3 and 5 skipped
        assert_eq!(c.headers(1, true), Verdict::Error(Reason::STREAM_CLOSED));
        assert_eq!(c.headers(3, true), Verdict::Error(Reason::PROTOCOL_ERROR));
        assert_eq!(c.headers(5, false), Verdict::Error(Reason::PROTOCOL_ERROR));
        assert_eq!(c.headers(7, true), Verdict::Error(Reason::STREAM_CLOSED));
        let mut c = ClosedStreams::default();
        c.opened(0, 5); // 1 and 3 skipped
        assert_eq!(c.headers(1, true), Verdict::Error(Reason::PROTOCOL_ERROR));
    }
}
