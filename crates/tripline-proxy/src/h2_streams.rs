//! What an HTTP/2 connection of [`crate::h2_server`] shares with its requests: the request bodies still arriving, the
//! connection's receive window, and which streams need polling.
//!
//! Everything else (stream states, send windows, the codec) belongs to the connection task
//! alone. The request body is the one thing that leaves it: the request path hands it to the
//! upstream client, which reads it from inside its own task (on the upstream connection's home
//! worker, usually this one). The lock is held for a few instructions, and no request's waker
//! is woken while it is held: it may be a stream's, which takes the same lock (the connection
//! task's waker is, and never does).
//!
//! A module beside `h2_server` rather than inside it: the request body travels down the layers
//! (into [`crate::upload`] and the upstream client), and those must not depend on the server.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Wake, Waker};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};

use crate::client_fault::{ClientBodyError, ClientFault};
use crate::BoxError;

/// The receive window Tripline advertises for each stream and for the connection (hyper's
/// defaults, which Tripline used before it had its own server).
pub const RECV_WINDOW: u32 = 1024 * 1024;

/// A map keyed by stream id. Ids are distinct odd numbers, so a multiplicative hash spreads
/// them without SipHash's cost.
pub type IdMap<V> = HashMap<u32, V, BuildHasherDefault<IdHasher>>;

#[derive(Default)]
pub struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3);
        }
    }
    fn write_u32(&mut self, id: u32) {
        // The table picks buckets from the low bits: fold the product's high half (which every
        // bit of the id reaches) into them, or ids a client picks to differ only in their high
        // bits would all share a bucket.
        let h = u64::from(id).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        self.0 = h ^ (h >> 32);
    }
}

/// One connection's shared state.
#[derive(Default)]
pub struct Shared(Mutex<State>);

#[derive(Default)]
pub struct State {
    /// Streams whose future or body was woken, to be polled by the connection task.
    pub ready: Vec<u32>,
    /// The connection task's waker.
    pub conn_waker: Option<Waker>,
    /// Request bodies still held by their requests.
    pub bodies: IdMap<Inbound>,
    /// What the client may still send on the connection as a whole.
    pub conn_window: i64,
    /// Bytes the requests have taken that are not yet given back to the client.
    conn_unacked: u32,
    /// WINDOW_UPDATEs to send: (stream id, increment); stream 0 is the connection.
    pub updates: Vec<(u32, u32)>,
}

/// A request body as it arrives: the chunks not yet read, the trailers, and its window.
#[derive(Default)]
pub struct Inbound {
    pub chunks: VecDeque<Bytes>,
    pub trailers: Option<HeaderMap>,
    /// The client sent END_STREAM.
    pub end: bool,
    /// The stream was reset (by the client, or by Tripline for a protocol error).
    pub reset: bool,
    waker: Option<Waker>,
    /// What the client may still send on this stream.
    pub window: i64,
    unacked: u32,
}

impl Inbound {
    pub fn new() -> Self {
        Inbound { window: i64::from(RECV_WINDOW), ..Inbound::default() }
    }

    /// Everything the client sent has been read: nothing more will come.
    fn ended(&self) -> bool {
        self.end && !self.reset && self.chunks.is_empty() && self.trailers.is_none()
    }

    /// The waker of the request reading the body, to be woken once the lock is released.
    pub fn take_waker(&mut self) -> Option<Waker> {
        self.waker.take()
    }
}

impl Shared {
    pub fn new() -> Arc<Self> {
        let shared = Arc::new(Shared::default());
        shared.lock().conn_window = i64::from(RECV_WINDOW);
        shared
    }

    pub fn lock(&self) -> MutexGuard<'_, State> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl State {
    /// Gives `n` bytes the client sent back to its connection window (they were read, or
    /// thrown away).
    pub fn release_conn(&mut self, n: u32) {
        self.conn_unacked += n;
        // Batched: one WINDOW_UPDATE per half window, as h2 and nginx do; but at once when the
        // client has less than half a window left, which happens when other streams' bodies
        // sit unread (a request waiting for an upstream connection): holding the update back
        // then would stall every upload on the connection, the one that would free them too.
        if self.conn_unacked > 0
            && (self.conn_unacked >= RECV_WINDOW / 2 || self.conn_window < i64::from(RECV_WINDOW / 2))
        {
            self.conn_window += i64::from(self.conn_unacked);
            self.updates.push((0, self.conn_unacked));
            self.conn_unacked = 0;
            self.wake_conn();
        }
    }

    /// Gives `n` bytes read from stream `id` back to the stream's window and the connection's.
    pub fn release_stream(&mut self, id: u32, n: u32) {
        if let Some(inb) = self.bodies.get_mut(&id) {
            inb.unacked += n;
            // No update for a request that has ended: the client sends nothing more.
            if !inb.end && inb.unacked >= RECV_WINDOW / 2 {
                inb.window += i64::from(inb.unacked);
                self.updates.push((id, inb.unacked));
                inb.unacked = 0;
                self.wake_conn();
            }
        }
        self.release_conn(n);
    }

    /// Gives back `n` bytes thrown away from stream `id`, whose request no longer reads its
    /// body: to the connection, and to the stream if the client has `more` to send, so that it
    /// can finish (as `h2` does).
    pub fn release_discarded(&mut self, id: u32, n: u32, more: bool) {
        if more && n > 0 {
            self.updates.push((id, n));
            self.wake_conn();
        }
        self.release_conn(n);
    }

    pub fn wake_conn(&mut self) {
        if let Some(w) = &self.conn_waker {
            w.wake_by_ref();
        }
    }

    /// Remembers the connection task's waker.
    pub fn register(&mut self, waker: &Waker) {
        if !self.conn_waker.as_ref().is_some_and(|w| w.will_wake(waker)) {
            self.conn_waker = Some(waker.clone());
        }
    }
}

/// A stream's waker: records the stream as ready and wakes the connection task, so that a
/// wakeup polls that stream and not every stream of the connection.
pub struct StreamWaker {
    id: u32,
    queued: AtomicBool,
    shared: Arc<Shared>,
}

impl StreamWaker {
    pub fn new(id: u32, shared: Arc<Shared>) -> Arc<Self> {
        Arc::new(StreamWaker { id, queued: AtomicBool::new(false), shared })
    }

    /// Called by the connection task just before it polls the stream.
    pub fn clear(&self) {
        self.queued.store(false, Ordering::Relaxed);
    }
}

impl Wake for StreamWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if !self.queued.swap(true, Ordering::Relaxed) {
            let mut st = self.shared.lock();
            st.ready.push(self.id);
            st.wake_conn();
        }
    }
}

/// The body of a request that came over HTTP/2, read by the request path as it arrives. Each
/// chunk read is given back to the client's flow-control windows.
pub struct RecvBody {
    shared: Option<Arc<Shared>>,
    id: u32,
    /// Bytes still to come, when the request declared a `content-length`.
    remaining: Option<u64>,
    done: bool,
}

impl std::fmt::Debug for RecvBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecvBody").field("stream", &self.id).field("done", &self.done).finish()
    }
}

impl RecvBody {
    /// A request without a body (its HEADERS carried END_STREAM).
    pub fn empty() -> Self {
        RecvBody { shared: None, id: 0, remaining: Some(0), done: true }
    }

    pub fn new(shared: Arc<Shared>, id: u32, content_length: Option<u64>) -> Self {
        RecvBody { shared: Some(shared), id, remaining: content_length, done: false }
    }
}

impl Body for RecvBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let Some(shared) = this.shared.as_ref().filter(|_| !this.done) else { return Poll::Ready(None) };
        let mut st = shared.lock();
        let st = &mut *st;
        let Some(inb) = st.bodies.get_mut(&this.id) else {
            // The connection closed: the client is gone.
            this.done = true;
            let gone = ClientBodyError::new(
                ClientFault::Disconnected,
                "client connection closed during the request body",
            );
            return Poll::Ready(Some(Err(gone.into())));
        };
        if let Some(chunk) = inb.chunks.pop_front() {
            let n = chunk.len() as u32;
            if let Some(r) = this.remaining.as_mut() {
                *r = r.saturating_sub(u64::from(n));
            }
            // Known to be the last: an HTTP/1.1 client stops polling once it has written the
            // declared length, and a retry's copy of the body must know it is complete.
            this.done = inb.ended();
            st.release_stream(this.id, n);
            return Poll::Ready(Some(Ok(Frame::data(chunk))));
        }
        if inb.reset {
            this.done = true;
            // Reset by the client, or by Tripline for the client's protocol error: the stream
            // (and the request with it) is gone either way, and no response will be read.
            let gone = ClientBodyError::new(
                ClientFault::Disconnected,
                "the request's stream was reset during its body",
            );
            return Poll::Ready(Some(Err(gone.into())));
        }
        if let Some(t) = inb.trailers.take() {
            this.done = true;
            return Poll::Ready(Some(Ok(Frame::trailers(t))));
        }
        if inb.end {
            this.done = true;
            return Poll::Ready(None);
        }
        if !inb.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            inb.waker = Some(cx.waker().clone());
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        if self.done {
            return true;
        }
        let Some(shared) = &self.shared else { return true };
        shared.lock().bodies.get(&self.id).is_some_and(Inbound::ended)
    }

    fn size_hint(&self) -> SizeHint {
        match self.remaining {
            Some(n) => SizeHint::with_exact(n),
            None => SizeHint::default(),
        }
    }
}

impl Drop for RecvBody {
    /// A body dropped unread (the request was refused, or answered before its body ended): what
    /// it still holds goes back to the connection window, and later data for the stream is
    /// thrown away as it comes (see `Connection::recv_data`).
    fn drop(&mut self) {
        let Some(shared) = self.shared.take() else { return };
        let mut st = shared.lock();
        if let Some(inb) = st.bodies.remove(&self.id) {
            let held = inb.chunks.iter().map(Bytes::len).sum::<usize>() as u32;
            // The stream's window too, if the client still sends, or it would stay shut: what
            // was held, and what was read but not yet given back (already given back to the
            // connection as it was read).
            let stream_share = held + inb.unacked;
            if !inb.end && !inb.reset && stream_share > 0 {
                st.updates.push((self.id, stream_share));
                st.wake_conn();
            }
            st.release_conn(held);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::hash::BuildHasher;

    #[test]
    fn a_connection_window_held_by_an_unread_body_is_refilled_at_once() {
        let mut st = State { conn_window: i64::from(RECV_WINDOW), ..State::default() };
        // 600 kB sits unread in one stream's body; 424 kB of another's arrived and was read.
        st.conn_window -= 600_000 + 424_000;
        st.release_conn(424_000);
        assert_eq!(
            st.updates,
            vec![(0, 424_000)],
            "the client gets its window back without waiting for 512 KiB"
        );
        assert_eq!(st.conn_window, i64::from(RECV_WINDOW) - 600_000);
        // With the window mostly open, updates are batched by half windows.
        let mut st = State { conn_window: i64::from(RECV_WINDOW) - 1_000, ..State::default() };
        st.release_conn(1_000);
        assert!(st.updates.is_empty());
    }

    #[test]
    fn ids_differing_only_in_high_bits_spread_over_buckets() {
        let build = BuildHasherDefault::<IdHasher>::default();
        let buckets: std::collections::HashSet<u64> =
            (0..64u32).map(|k| build.hash_one(1 + (k << 11)) & 1023).collect();
        assert!(buckets.len() > 48, "64 ids landed in {} of 1024 buckets", buckets.len());
    }
}
