//! Envoy's HTTP/2 flood limits, with Envoy's defaults: frames that cost a client nothing to send
//! and are not bounded by anything else (no flow control, no answer that backpressure would
//! hold up) are counted, and a connection past a limit is closed with GOAWAY
//! ENHANCE_YOUR_CALM. Each limit grows with what the client legitimately does (streams opened,
//! DATA frames received from Tripline), so a well-behaved client never reaches one.
//!
//! What is not here, and why:
//! - CONTINUATION floods: `h2`'s codec assembles header blocks and allows at most a few
//!   CONTINUATION frames per block (`max_continuation_frames`), so empty ones cannot repeat.
//! - Envoy's `max_outbound_frames` and `max_outbound_control_frames`: Tripline has no outbound
//!   frame queue to bound. A stream's frames are made only when the codec has room for them,
//!   and control frames (acks, resets) stop the reading at `MAX_CONTROL_QUEUE` until the
//!   client reads its answers (see `Connection::read`).
//! - PING and SETTINGS floods: each asks for an answer, so the same control-queue backpressure
//!   holds them.

use crate::stats::Http2Flood;

/// Envoy's `max_consecutive_inbound_frames_with_empty_payload`: HEADERS or DATA frames in a row
/// with an empty payload (padding aside) and without END_STREAM, which carry nothing.
const MAX_CONSECUTIVE_EMPTY_FRAMES: u32 = 1;
/// Envoy's `max_inbound_priority_frames_per_stream`: PRIORITY frames allowed per stream opened
/// (plus one stream's worth). Tripline ignores priorities, but each frame is still read.
const MAX_PRIORITY_FRAMES_PER_STREAM: u64 = 100;
/// Envoy's `max_inbound_window_update_frames_per_data_frame_sent`: WINDOW_UPDATE frames
/// allowed per DATA frame Tripline sent (Envoy's formula: 5 + 2 × (streams opened + this ×
/// DATA frames sent)).
const MAX_WINDOW_UPDATES_PER_DATA_FRAME_SENT: u64 = 10;
/// RST_STREAM frames on streams that are already closed: a client may reset a stream whose
/// response has just ended (RFC 9113 §5.1 allows for the race), once per stream, so the
/// allowance is one per stream opened plus this many. No Envoy counterpart: nghttp2 counts
/// such frames with the other frames that need no answer.
const SPARE_RESETS_ON_CLOSED_STREAMS: u64 = 100;

/// What a connection's client has sent of the frames the limits watch.
#[derive(Debug, Default)]
pub(super) struct Flood {
    empty_in_a_row: u32,
    priority: u64,
    window_updates: u64,
    resets_on_closed: u64,
}

impl Flood {
    /// A HEADERS or DATA frame: `empty` when it carries nothing (no payload beyond its padding,
    /// no END_STREAM).
    #[inline]
    pub fn payload_frame(&mut self, empty: bool) -> Option<Http2Flood> {
        if !empty {
            self.empty_in_a_row = 0;
            return None;
        }
        self.empty_in_a_row += 1;
        (self.empty_in_a_row > MAX_CONSECUTIVE_EMPTY_FRAMES).then_some(Http2Flood::EmptyFrames)
    }

    #[inline]
    pub fn priority(&mut self, opened: u32) -> Option<Http2Flood> {
        self.priority += 1;
        (self.priority > MAX_PRIORITY_FRAMES_PER_STREAM * (1 + u64::from(opened)))
            .then_some(Http2Flood::Priority)
    }

    #[inline]
    pub fn window_update(&mut self, opened: u32, data_frames_sent: u64) -> Option<Http2Flood> {
        self.window_updates += 1;
        let allowed = 5 + 2 * (u64::from(opened) + MAX_WINDOW_UPDATES_PER_DATA_FRAME_SENT * data_frames_sent);
        (self.window_updates > allowed).then_some(Http2Flood::WindowUpdate)
    }

    #[inline]
    pub fn reset_on_closed_stream(&mut self, opened: u32) -> Option<Http2Flood> {
        self.resets_on_closed += 1;
        (self.resets_on_closed > u64::from(opened) + SPARE_RESETS_ON_CLOSED_STREAMS)
            .then_some(Http2Flood::ClosedStreamResets)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_empty_frame_is_allowed_two_in_a_row_are_not() {
        let mut f = Flood::default();
        assert_eq!(f.payload_frame(true), None);
        assert_eq!(f.payload_frame(false), None, "a frame with a payload starts the count again");
        assert_eq!(f.payload_frame(true), None);
        assert_eq!(f.payload_frame(true), Some(Http2Flood::EmptyFrames));
    }

    #[test]
    fn priority_frames_are_allowed_per_stream_opened() {
        let mut f = Flood::default();
        for _ in 0..100 {
            assert_eq!(f.priority(0), None);
        }
        assert_eq!(f.priority(0), Some(Http2Flood::Priority));
        // With a stream opened, a hundred more.
        let mut f = Flood::default();
        assert!((0..200).all(|_| f.priority(1).is_none()));
        assert_eq!(f.priority(1), Some(Http2Flood::Priority));
    }

    #[test]
    fn window_updates_are_allowed_per_data_frame_sent() {
        let mut f = Flood::default();
        assert!((0..5).all(|_| f.window_update(0, 0).is_none()));
        assert_eq!(f.window_update(0, 0), Some(Http2Flood::WindowUpdate));
        // One stream and one DATA frame sent: 5 + 2 × (1 + 10) = 27.
        let mut f = Flood::default();
        assert!((0..27).all(|_| f.window_update(1, 1).is_none()));
        assert_eq!(f.window_update(1, 1), Some(Http2Flood::WindowUpdate));
    }

    #[test]
    fn resets_on_closed_streams_are_allowed_once_per_stream_and_a_hundred_more() {
        let mut f = Flood::default();
        assert!((0..110).all(|_| f.reset_on_closed_stream(10).is_none()));
        assert_eq!(f.reset_on_closed_stream(10), Some(Http2Flood::ClosedStreamResets));
    }
}
