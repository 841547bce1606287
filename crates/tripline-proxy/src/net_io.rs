//! The socket type every proxied HTTP connection uses, client side and upstream: a `TcpStream`
//! whose small writes are held until the event loop has run every ready task, then sent
//! together, one `send` per connection.
//!
//! Why hold them: a proxy's work comes in bursts. One `epoll_wait` wakes dozens of connections;
//! each reads a request and writes it upstream, or reads a response and writes it back. Written
//! at once, the sends trickle out a couple of microseconds apart, and each can wake a peer
//! process (the upstream, the client) that had just gone back to sleep: a cross-CPU wakeup the
//! sender pays for in kernel time. Sent together at the end of the burst, one wakeup serves
//! them all. HAProxy and Envoy work this way (they read everything ready, then write), and on
//! the benchmark machine the peers' context switches per request halved. See
//! docs/architecture.md ("Deferred writes").
//!
//! How: the one thread of a single-worker runtime runs a flusher task
//! ([`defer_writes_on_this_thread`]). While the proxy is quiet (the last tick ended with at
//! most one write held), the first small write of a tick goes out at once and wakes the
//! flusher: a request alone in its tick is not held back, which cost about 9 µs per write (the
//! rest of the writer's poll, before the flusher ran), 30–50 µs of p50 at 5,000 requests per
//! second. Every other small write is copied into its connection's outbox, the outbox joins
//! the thread's queue, and the write reports success. Waking the flusher puts it at
//! the back of the runtime's run queue, behind every task already woken, so it runs when the
//! burst has been handled and sends each queued outbox. `poll_flush` does not wait for it (the
//! bytes go out within the same tick); `poll_shutdown` and drop send what is held first.
//!
//! Whatever the flusher cannot send (a full socket buffer) stays in the outbox and the owning
//! task is woken: its next read, write or flush pushes the rest out the usual way, waiting for
//! the socket to become writable, and further writes wait behind it. An outbox never holds more
//! than [`DEFER_MAX`] bytes, so backpressure is kept. On a multi-threaded runtime there is no
//! flusher (a task may move between threads) and writes go straight out.
//!
//! Small vectored writes (hyper's head plus body, h2's frame head plus payload) are joined into
//! one `send` either way: on Linux `writev` on a socket costs more kernel time than `send` (the
//! VFS layer: `fdget_pos`, iovec import, `rw_verify_area`), about 0.2 µs a call here.

use std::cell::RefCell;
use std::io::{self, IoSlice, Write};
use std::mem::ManuallyDrop;
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{ready, Context, Poll, Waker};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// Writes up to this many bytes (all slices together) are deferred, or when there is no
/// flusher joined into one `send`. Larger ones (body chunks of a download) go out at once with
/// `writev`: copying them would cost more than the syscall saves.
const COALESCE_MAX: usize = 2048;

/// An outbox holding this much is sent at once instead of waiting for the end of the tick.
const DEFER_MAX: usize = 16 * 1024;

thread_local! {
    /// The scratch buffer small vectored writes are joined in when they are not deferred.
    static JOINED: RefCell<Vec<u8>> = RefCell::new(Vec::with_capacity(COALESCE_MAX));
    /// This thread's flush queue, when it runs a flusher.
    static QUEUE: RefCell<Option<Arc<FlushQueue>>> = const { RefCell::new(None) };
}

/// Starts deferring small writes made on this thread: spawns the flusher task. Call it from
/// inside a current-thread runtime, once; on a multi-threaded runtime it does nothing (the
/// flusher could run on another thread than the writers).
pub fn defer_writes_on_this_thread() {
    if tokio::runtime::Handle::current().runtime_flavor() != tokio::runtime::RuntimeFlavor::CurrentThread {
        return;
    }
    let queue = Arc::new(FlushQueue {
        open: AtomicBool::new(true),
        sent_this_tick: AtomicBool::new(false),
        last_batch: AtomicUsize::new(0),
        inner: Mutex::default(),
    });
    QUEUE.with_borrow_mut(|q| *q = Some(queue.clone()));
    let mut flusher = Flusher { queue, spare: Vec::new() };
    tokio::spawn(std::future::poll_fn(move |cx| {
        flusher.queue.flush(cx, &mut flusher.spare);
        Poll::<()>::Pending
    }));
}

/// The flusher task's state. When the runtime shuts down and drops it, the queue closes and
/// later writes on this thread go straight out instead of waiting for a flusher that is gone.
struct Flusher {
    queue: Arc<FlushQueue>,
    spare: Vec<Arc<Outbox>>,
}

impl Drop for Flusher {
    fn drop(&mut self) {
        self.queue.open.store(false, Ordering::Relaxed);
    }
}

/// The outboxes with bytes due at the end of this tick, and the flusher's waker.
struct FlushQueue {
    /// The flusher task is alive.
    open: AtomicBool,
    /// A small write of this tick went out at once: the ones after it are held.
    sent_this_tick: AtomicBool,
    /// Outboxes the flusher sent at the end of the last tick. More than one: the proxy is busy,
    /// and every write waits for the tick's end, so each burst wakes a peer once.
    last_batch: AtomicUsize,
    inner: Mutex<QueueInner>,
}

#[derive(Default)]
struct QueueInner {
    due: Vec<Arc<Outbox>>,
    flusher: Option<Waker>,
}

impl FlushQueue {
    /// Whether a small write goes out at once: the first of its tick does (and wakes the
    /// flusher, which ends the tick), unless writes are already held or the last tick was busy.
    fn send_now(&self) -> bool {
        if self.last_batch.load(Ordering::Relaxed) > 1 || self.sent_this_tick.swap(true, Ordering::Relaxed) {
            return false;
        }
        let q = lock(&self.inner);
        if !q.due.is_empty() {
            return false;
        }
        if let Some(w) = &q.flusher {
            w.wake_by_ref();
        }
        true
    }

    fn push(&self, outbox: Arc<Outbox>) {
        let mut q = lock(&self.inner);
        q.due.push(outbox);
        // The first outbox of a tick wakes the flusher, which goes to the back of the run queue.
        if q.due.len() == 1 {
            if let Some(w) = &q.flusher {
                w.wake_by_ref();
            }
        }
    }

    /// The flusher's body: sends every due outbox, in the order they were queued.
    fn flush(&self, cx: &mut Context<'_>, spare: &mut Vec<Arc<Outbox>>) {
        // The tick is over: the next one's first write goes out at once again.
        self.sent_this_tick.store(false, Ordering::Relaxed);
        {
            let mut q = lock(&self.inner);
            if !q.flusher.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                q.flusher = Some(cx.waker().clone());
            }
            std::mem::swap(&mut q.due, spare);
        }
        self.last_batch.store(spare.len(), Ordering::Relaxed);
        for outbox in spare.drain(..) {
            outbox.send_due();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // No code path panics while holding these locks; recover the data rather than spread a
    // poison panic through every connection if one ever did.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Bytes written but not yet sent, shared between a connection and its thread's flusher.
struct Outbox {
    /// The connection's socket. Used by the flusher only while `held.closed` is false, checked
    /// under the lock: the connection sets it, under the lock, before its socket closes.
    fd: RawFd,
    /// The flusher left bytes it could not send: the owner must push them out.
    stalled: AtomicBool,
    held: Mutex<Held>,
}

#[derive(Default)]
struct Held {
    buf: Vec<u8>,
    /// In the flush queue: the flusher will send `buf` at the end of this tick.
    queued: bool,
    /// The connection is gone and its socket may be closed: never touch `fd` again.
    closed: bool,
    /// A deferred send failed; the owner's next write or flush reports it.
    error: Option<io::Error>,
    /// The failed send was the first of a fresh outbox: none of its bytes reached the socket.
    failed_unsent: bool,
    /// The owning task, woken when the flusher leaves bytes or an error behind.
    owner: Option<Waker>,
}

impl Outbox {
    /// Run by the flusher: one `send` of everything held.
    fn send_due(&self) {
        let mut held = lock(&self.held);
        held.queued = false;
        if held.closed || held.buf.is_empty() {
            return;
        }
        loop {
            match send_on_fd(self.fd, &held.buf) {
                Ok(n) if n == held.buf.len() => {
                    held.buf.clear();
                    // A burst of small writes can grow the buffer; don't keep that per idle
                    // connection.
                    if held.buf.capacity() > 4 * COALESCE_MAX {
                        held.buf = Vec::new();
                    }
                    return;
                }
                Ok(n) => {
                    held.buf.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => {
                    // Partial sends leave the loop, so an error here is on this batch's first
                    // send: none of its bytes reached the socket.
                    held.buf.clear();
                    held.failed_unsent = true;
                    held.error = Some(e);
                }
            }
            break;
        }
        // Bytes or an error left: the owner takes over.
        self.stalled.store(true, Ordering::Relaxed);
        if let Some(w) = held.owner.take() {
            w.wake();
        }
    }
}

/// `send(2)` on a socket the caller guarantees open (see [`Outbox::fd`]).
fn send_on_fd(fd: RawFd, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: the fd belongs to a live `TcpStream`: the caller holds the outbox lock and saw
    // `closed` false, and the stream's owner sets `closed` under that lock before dropping it.
    // `ManuallyDrop` keeps this borrowed handle from closing the fd. std's TCP write is
    // `send(..., MSG_NOSIGNAL)`, and the socket is non-blocking (tokio made it so).
    let stream = ManuallyDrop::new(unsafe { std::net::TcpStream::from_raw_fd(fd) });
    (&*stream).write(buf)
}

/// A TCP stream for hyper/h2 connections (wrap it in `hyper_util::rt::TokioIo`) and the lean
/// HTTP/1.1 client.
#[derive(Debug)]
pub struct TcpIo {
    stream: TcpStream,
    /// Created at the first deferred write.
    outbox: Option<Arc<Outbox>>,
}

impl std::fmt::Debug for Outbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbox").field("fd", &self.fd).finish_non_exhaustive()
    }
}

impl TcpIo {
    pub fn new(stream: TcpStream) -> Self {
        TcpIo { stream, outbox: None }
    }

    /// Moves an idle socket to this thread's event loop: a pooled connection that another
    /// worker opened, taken by this one. `None`, and the socket closed, unless it is idle and
    /// alive: nothing held for sending, and a non-blocking peek finds the peer has neither
    /// closed it nor sent anything. The peek is needed because the new registration knows no
    /// readiness until this thread's event loop next polls, so `poll_read_ready` could not tell.
    pub fn rehome_idle(self) -> Option<TcpIo> {
        if let Some(o) = &self.outbox {
            let held = lock(&o.held);
            if held.queued || !held.buf.is_empty() || held.error.is_some() {
                return None;
            }
        }
        let mut this = ManuallyDrop::new(self);
        if let Some(o) = this.outbox.take() {
            // Nothing to send and in no flush queue (only the owner, us, adds to it): retire
            // it, and the next deferred write makes a fresh one on this thread.
            let mut held = lock(&o.held);
            held.closed = true;
            held.owner = None;
        }
        // SAFETY: `this` is neither used nor dropped after this read, so the stream is moved
        // out exactly once (`TcpIo`'s `Drop` only concerns the outbox, retired above).
        let stream = unsafe { std::ptr::read(&this.stream) };
        let moved = stream.into_std().ok()?;
        match moved.peek(&mut [0u8; 1]) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            // Closed by the peer (`Ok(0)`), bytes nobody asked for, or an error.
            _ => return None,
        }
        TcpStream::from_std(moved).ok().map(TcpIo::new)
    }

    /// The socket, for reading directly (the lean client does).
    pub fn stream(&self) -> &TcpStream {
        &self.stream
    }

    /// Pushes out bytes the flusher could not send, registering for writability if the socket
    /// is still full. Readers that bypass `poll_read` call it so held bytes are never stranded.
    pub fn poll_unstall(&mut self, cx: &mut Context<'_>) {
        let Some(outbox) = &self.outbox else { return };
        if !outbox.stalled.load(Ordering::Relaxed) {
            return;
        }
        let mut held = lock(&outbox.held);
        // Pending: still full, the task is registered for writability and comes back here. An
        // error is reported by the next write or flush; the reader sees the socket's own.
        if let Poll::Ready(Err(e)) = outbox.drain(&mut self.stream, cx, &mut held) {
            held.error = Some(e);
        }
    }

    /// Whether a deferred write failed before any of its bytes reached the socket (the lean
    /// client then knows its request was never sent).
    pub fn failed_unsent(&self) -> bool {
        self.outbox.as_ref().is_some_and(|o| {
            let held = lock(&o.held);
            held.error.is_some() && held.failed_unsent
        })
    }

    /// Sends everything held, waiting for the socket if it is full; a deferred error surfaces
    /// here.
    fn poll_send_held(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let Some(outbox) = &self.outbox else { return Poll::Ready(Ok(())) };
        let mut held = lock(&outbox.held);
        if let Some(e) = held.error.take() {
            return Poll::Ready(Err(e));
        }
        outbox.drain(&mut self.stream, cx, &mut held)
    }

    /// Defers `bufs` (at most [`COALESCE_MAX`] bytes in all) to the end of the tick, if this
    /// thread has a flusher and this is not the tick's first write; `None` to write now.
    fn poll_defer(
        &mut self,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
        total: usize,
    ) -> Option<Poll<io::Result<usize>>> {
        QUEUE.with_borrow(|queue| {
            let queue = queue.as_ref().filter(|q| q.open.load(Ordering::Relaxed))?;
            if queue.send_now() {
                return None;
            }
            Some(self.defer(queue, cx, bufs, total))
        })
    }

    fn defer(
        &mut self,
        queue: &FlushQueue,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
        total: usize,
    ) -> Poll<io::Result<usize>> {
        let fd = self.stream.as_raw_fd();
        let outbox = self.outbox.get_or_insert_with(|| {
            Arc::new(Outbox { fd, stalled: AtomicBool::new(false), held: Mutex::new(Held::default()) })
        });
        let mut held = lock(&outbox.held);
        if let Some(e) = held.error.take() {
            return Poll::Ready(Err(e));
        }
        // Bytes the flusher could not send must go first, and new ones wait behind them; an
        // outbox that grew large in this tick is sent now.
        if (!held.queued && !held.buf.is_empty()) || held.buf.len() + total > DEFER_MAX {
            ready!(outbox.drain(&mut self.stream, cx, &mut held))?;
        }
        for b in bufs {
            held.buf.extend_from_slice(b);
        }
        if !held.owner.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            held.owner = Some(cx.waker().clone());
        }
        if !held.queued {
            held.queued = true;
            held.failed_unsent = false;
            drop(held);
            queue.push(outbox.clone());
        }
        Poll::Ready(Ok(total))
    }
}

impl Outbox {
    /// Writes out `held.buf` on the owner's stream (tokio's write: a full socket registers the
    /// task for writability). Once it returns `Ready` nothing is held (after an error the rest
    /// is dropped), so any stall is over.
    fn drain(&self, stream: &mut TcpStream, cx: &mut Context<'_>, held: &mut Held) -> Poll<io::Result<()>> {
        while !held.buf.is_empty() {
            match ready!(Pin::new(&mut *stream).poll_write(cx, &held.buf)) {
                Ok(n) if n > 0 => {
                    held.buf.drain(..n);
                }
                failed => {
                    held.buf.clear();
                    self.stalled.store(false, Ordering::Relaxed);
                    return Poll::Ready(Err(failed.err().unwrap_or_else(|| io::ErrorKind::WriteZero.into())));
                }
            }
        }
        self.stalled.store(false, Ordering::Relaxed);
        Poll::Ready(Ok(()))
    }
}

impl Drop for TcpIo {
    fn drop(&mut self) {
        let Some(outbox) = &self.outbox else { return };
        let mut held = lock(&outbox.held);
        // A response written just before the connection closed still goes out (best effort:
        // the socket is not waited for).
        if !held.closed && held.error.is_none() && !held.buf.is_empty() {
            let _ = self.stream.try_write(&held.buf);
        }
        held.closed = true;
        held.buf = Vec::new();
        held.owner = None;
    }
}

impl AsyncRead for TcpIo {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        // Held bytes are pushed out by whatever the owner polls next; errors wait for a write.
        this.poll_unstall(cx);
        Pin::new(&mut this.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for TcpIo {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        if total == 0 {
            return Poll::Ready(Ok(0));
        }
        if total <= COALESCE_MAX {
            if let Some(result) = this.poll_defer(cx, bufs, total) {
                return result;
            }
        }
        // Written now: whatever is held goes first.
        ready!(this.poll_send_held(cx))?;
        let stream = Pin::new(&mut this.stream);
        let mut nonempty = bufs.iter().filter(|b| !b.is_empty());
        let (Some(first), second) = (nonempty.next(), nonempty.next()) else {
            return Poll::Ready(Ok(0));
        };
        let Some(second) = second else {
            return stream.poll_write(cx, first);
        };
        if total > COALESCE_MAX {
            return stream.poll_write_vectored(cx, bufs);
        }
        // A per-thread scratch buffer: no allocation, and no zeroing a stack array per write.
        JOINED.with_borrow_mut(|joined| {
            joined.clear();
            for b in [first, second].into_iter().chain(nonempty) {
                joined.extend_from_slice(b);
            }
            // A partial send reports how many bytes of the concatenation went out, which is
            // what a vectored write reports too, so the caller advances its buffers the same way.
            stream.poll_write(cx, joined)
        })
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    /// Held bytes that are queued go out at the end of this tick without the caller waiting;
    /// bytes the flusher could not send are pushed out here.
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(outbox) = &this.outbox {
            let mut held = lock(&outbox.held);
            if let Some(e) = held.error.take() {
                return Poll::Ready(Err(e));
            }
            if !held.queued && !held.buf.is_empty() {
                ready!(outbox.drain(&mut this.stream, cx, &mut held))?;
            }
        }
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_send_held(cx))?;
        Pin::new(&mut this.stream).poll_shutdown(cx)
    }
}

/// Where a connection was going before iptables redirected it to this socket
/// (`SO_ORIGINAL_DST`): the local address itself for one that was not redirected. `None`
/// when the kernel keeps no record of it (no connection tracking).
pub fn original_destination(stream: &TcpStream) -> Option<std::net::SocketAddr> {
    let socket = socket2::SockRef::from(stream);
    let v6 = stream.local_addr().ok()?.is_ipv6();
    let found = if v6 { socket.original_dst_v6() } else { socket.original_dst_v4() };
    found.ok()?.as_socket()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn pair() -> (TcpIo, TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        (TcpIo::new(client), server)
    }

    /// Small writes are joined, large ones go out vectored; either way the peer reads the bytes
    /// in order, and empty slices anywhere are skipped.
    #[tokio::test]
    async fn vectored_writes_arrive_in_order_whatever_their_size() {
        let (mut io, mut peer) = pair().await;
        let big = vec![b'x'; COALESCE_MAX + 10];
        let cases: Vec<Vec<&[u8]>> =
            vec![vec![b"", b"head ", b"", b"body"], vec![b"only"], vec![b"a", &big, b"z"], vec![]];
        let mut expected = Vec::new();
        for case in &cases {
            let mut slices: Vec<IoSlice<'_>> = case.iter().map(|s| IoSlice::new(s)).collect();
            let mut rest = &mut slices[..];
            // Loop like a codec does until every byte is written (a send may be partial).
            while rest.iter().any(|s| !s.is_empty()) {
                let n = io.write_vectored(rest).await.unwrap();
                IoSlice::advance_slices(&mut rest, n);
            }
            expected.extend(case.iter().flat_map(|s| s.iter().copied()));
        }
        io.shutdown().await.unwrap();
        let mut got = Vec::new();
        peer.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, expected);
    }

    /// A connected pair with 4 KiB socket buffers, so a reader that lags fills them quickly.
    async fn small_buffer_pair() -> (TcpIo, TcpStream) {
        let listener = tokio::net::TcpSocket::new_v4().unwrap();
        listener.set_recv_buffer_size(4096).unwrap();
        listener.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let listener = listener.listen(1).unwrap();
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_send_buffer_size(4096).unwrap();
        let io = TcpIo::new(socket.connect(listener.local_addr().unwrap()).await.unwrap());
        let (peer, _) = listener.accept().await.unwrap();
        (io, peer)
    }

    /// Makes the tick's first small write on a connection of its own: it goes out at once
    /// (without yielding, so the tick goes on), and the writes after it are held until the
    /// tick ends. Returns the connection, to keep it open.
    async fn open_the_tick() -> (TcpIo, TcpStream) {
        let (mut first, peer) = pair().await;
        // A fresh tick (the flusher, if woken, runs first), then its first write.
        tokio::task::yield_now().await;
        first.write_all(b"!").await.unwrap();
        (first, peer)
    }

    /// The bytes waiting on `peer`'s socket, unread, asked of the socket itself: a raw
    /// non-blocking `recv(MSG_PEEK)` (std's `peek`, on a duplicate of the descriptor, which
    /// shares the socket and its non-blocking mode). tokio's `try_read` (and `peek`) answer
    /// `WouldBlock` from the readiness the event loop last saw, without a system call: "nothing
    /// arrived" read through them can be "the event loop has not looked yet", and a check that
    /// bytes were held could never fail.
    fn arrived(peer: &TcpStream) -> Vec<u8> {
        use std::os::fd::AsFd;
        let socket = std::net::TcpStream::from(peer.as_fd().try_clone_to_owned().unwrap());
        let mut buf = vec![0u8; 64 * 1024];
        match socket.peek(&mut buf) {
            Ok(n) => buf[..n].to_vec(),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Vec::new(),
            Err(e) => panic!("peek: {e}"),
        }
    }

    fn nothing_arrived(peer: &TcpStream) -> bool {
        arrived(peer).is_empty()
    }

    /// An idle pooled connection moves to another thread's event loop (another worker borrowed
    /// it) and works there, deferred writes included.
    #[tokio::test]
    async fn an_idle_socket_moves_to_another_event_loop() {
        defer_writes_on_this_thread();
        let (mut io, mut peer) = pair().await;
        io.write_all(b"here ").await.unwrap();
        tokio::task::yield_now().await;
        let moved = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async move {
                defer_writes_on_this_thread();
                let mut io = io.rehome_idle().expect("an idle, live socket moves");
                io.write_all(b"there").await.unwrap();
                io.shutdown().await.unwrap();
            });
        });
        moved.join().unwrap();
        let mut got = Vec::new();
        peer.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"here there");
    }

    /// A socket is not moved (and is closed) when it would not serve a request: the peer
    /// closed it or sent bytes nobody asked for, or bytes are still held for sending. A
    /// fresh registration knows no readiness yet, so the move itself must look.
    #[tokio::test]
    async fn a_closed_chatty_or_busy_socket_is_not_moved() {
        defer_writes_on_this_thread();
        let (io, peer) = pair().await;
        drop(peer);
        io.stream().readable().await.unwrap();
        assert!(io.rehome_idle().is_none(), "moved a socket the peer closed");

        let (io, mut peer) = pair().await;
        peer.write_all(b"HTTP/1.1 408 Request Timeout\r\n\r\n").await.unwrap();
        io.stream().readable().await.unwrap();
        assert!(io.rehome_idle().is_none(), "moved a socket with unread bytes");

        let (mut io, mut peer) = pair().await;
        let _first = open_the_tick().await;
        io.write_all(b"held").await.unwrap();
        assert!(io.rehome_idle().is_none(), "moved a socket with bytes held for sending");
        // Dropped rather than moved: what was held still went out, then the close.
        let mut got = Vec::new();
        peer.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"held");
    }

    /// One poll of a task (as when a burst of requests is handled) writes on several
    /// connections: the tick's first write leaves at once (the read of it inside
    /// `open_the_tick` would hang otherwise), nothing else leaves until the tick ends, then each
    /// connection's bytes arrive whole and in order, and a large write that follows goes out
    /// behind the held bytes.
    #[tokio::test]
    async fn small_writes_leave_together_when_the_tick_ends() {
        defer_writes_on_this_thread();
        let (mut a, mut peer_a) = pair().await;
        let (mut b, mut peer_b) = pair().await;
        let _first = open_the_tick().await;
        a.write_all(b"one ").await.unwrap();
        b.write_all(b"two").await.unwrap();
        a.write_all(b"three").await.unwrap();
        a.flush().await.unwrap();
        assert!(nothing_arrived(&peer_a) && nothing_arrived(&peer_b), "sent before the tick ended");
        tokio::task::yield_now().await;
        let mut got = [0u8; 9];
        peer_a.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"one three");
        let mut got = [0u8; 3];
        peer_b.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"two");

        let big = vec![b'x'; DEFER_MAX * 2];
        a.write_all(b"head ").await.unwrap();
        a.write_all(&big).await.unwrap();
        a.shutdown().await.unwrap();
        let mut got = Vec::new();
        peer_a.read_to_end(&mut got).await.unwrap();
        assert_eq!(&got[..5], b"head ");
        assert_eq!(got.len(), 5 + big.len());
    }

    /// A request alone in its tick is not held back: the tick's first small write leaves at
    /// once, before the task yields.
    #[tokio::test]
    async fn the_first_write_of_a_tick_leaves_at_once() {
        defer_writes_on_this_thread();
        let (mut io, peer) = pair().await;
        tokio::task::yield_now().await;
        io.write_all(b"now").await.unwrap();
        assert_eq!(arrived(&peer), b"now", "the first write of the tick was held");
    }

    /// Busy ticks keep every write for the tick's end (each burst wakes a peer once); when the
    /// proxy is quiet again, the first write of a tick leaves at once again.
    #[tokio::test]
    async fn after_a_busy_tick_even_the_first_write_waits() {
        defer_writes_on_this_thread();
        let (mut a, _peer_a) = pair().await;
        let (mut b, _peer_b) = pair().await;
        let (mut c, mut peer_c) = pair().await;
        let _first = open_the_tick().await;
        a.write_all(b"a").await.unwrap();
        b.write_all(b"b").await.unwrap();
        // The flusher sends the two held writes: a busy tick.
        tokio::task::yield_now().await;
        c.write_all(b"held").await.unwrap();
        assert!(nothing_arrived(&peer_c), "the first write after a busy tick went out at once");
        // That tick ends with one write held: quiet again.
        tokio::task::yield_now().await;
        let mut got = [0u8; 4];
        peer_c.read_exact(&mut got).await.unwrap();
        tokio::task::yield_now().await;
        c.write_all(b"now").await.unwrap();
        assert_eq!(arrived(&peer_c), b"now", "a quiet tick's first write was held");
    }

    /// A reader that stops reading: deferred writes fill the socket, the flusher leaves bytes
    /// behind, and the writer is then held back (its write waits) instead of buffering without
    /// end. When the reader resumes, every byte arrives, in order.
    #[tokio::test]
    async fn a_full_socket_holds_the_writer_back_and_loses_nothing() {
        defer_writes_on_this_thread();
        let (mut io, mut peer) = small_buffer_pair().await;
        let (mut opener, _opener_peer) = pair().await;

        let message = |n: u32| format!("{n:09}\n").into_bytes();
        let mut sent = Vec::new();
        let mut n = 0;
        loop {
            // Another connection makes each tick's first write, so this one's are held.
            opener.write_all(b"!").await.unwrap();
            let msg = message(n);
            let step = std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut io).poll_write(cx, &msg))).await;
            match step {
                Poll::Ready(written) => {
                    assert_eq!(written.unwrap(), msg.len(), "a small write is taken whole");
                    sent.extend_from_slice(&msg);
                }
                Poll::Pending => break,
            }
            let held = io.outbox.as_ref().map_or(0, |o| lock(&o.held).buf.len());
            assert!(held <= DEFER_MAX, "{held} bytes held");
            // The flusher runs between writes, as it would between request bursts.
            tokio::task::yield_now().await;
            n += 1;
            assert!(n < 1_000_000, "the writer was never held back");
        }
        assert!(n > 10, "held back after only {n} writes");

        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            peer.read_to_end(&mut got).await.unwrap();
            got
        });
        for n in n..n + 1000 {
            let msg = message(n);
            io.write_all(&msg).await.unwrap();
            sent.extend_from_slice(&msg);
        }
        io.shutdown().await.unwrap();
        let got = reader.await.unwrap();
        assert_eq!(got.len(), sent.len());
        assert!(got == sent, "bytes arrived out of order");
    }

    /// A response written just before its connection is dropped still reaches the client.
    #[tokio::test]
    async fn bytes_held_when_the_connection_is_dropped_are_still_sent() {
        defer_writes_on_this_thread();
        let (mut io, mut peer) = pair().await;
        let _first = open_the_tick().await;
        io.write_all(b"last words").await.unwrap();
        assert!(nothing_arrived(&peer), "the write was not held");
        drop(io);
        let mut got = Vec::new();
        peer.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"last words");
    }

    /// The peer reset the connection: the deferred send fails in the flusher, and the writer
    /// hears of it at its next flush, knowing none of those bytes were sent.
    #[tokio::test]
    async fn a_failed_deferred_send_is_reported_to_the_writer() {
        defer_writes_on_this_thread();
        let (mut io, peer) = pair().await;
        peer.set_zero_linger().unwrap();
        drop(peer);
        // Loopback delivers the reset before `drop` returns; the tick that follows lets the event
        // loop see it, and its first write goes elsewhere so this one is deferred.
        let _first = open_the_tick().await;
        io.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        tokio::task::yield_now().await;
        assert!(io.failed_unsent());
        assert!(io.flush().await.is_err());
    }

    /// One step of a writer in the property test below.
    #[derive(Debug, Clone)]
    enum Step {
        /// A write of this many bytes, as one slice or split in three (vectored).
        Write {
            len: usize,
            vectored: bool,
        },
        Flush,
        /// Let the event loop run (the flusher and the reader get their turn).
        Yield,
    }

    fn step() -> impl proptest::strategy::Strategy<Value = Step> {
        use proptest::prelude::*;
        prop_oneof![
            6 => (1usize..6000, any::<bool>()).prop_map(|(len, vectored)| Step::Write { len, vectored }),
            1 => Just(Step::Flush),
            3 => Just(Step::Yield),
        ]
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]
        /// Whatever mix of small (deferred) and large (direct) writes, flushes and event-loop
        /// turns, against a reader slower than the writer through 4 KiB socket buffers (so the
        /// flusher is regularly left with bytes it cannot send): the reader gets exactly the
        /// bytes written, in order, and no outbox ever holds more than `DEFER_MAX`.
        #[test]
        fn deferred_writes_keep_every_byte_in_order(steps in proptest::collection::vec(step(), 1..40)) {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            let (sent, got) = rt.block_on(async move {
                defer_writes_on_this_thread();
                let (mut io, mut peer) = small_buffer_pair().await;
                let reader = tokio::spawn(async move {
                    let mut got = Vec::new();
                    let mut chunk = [0u8; 1500];
                    loop {
                        match peer.read(&mut chunk).await.unwrap() {
                            0 => return got,
                            n => got.extend_from_slice(&chunk[..n]),
                        }
                        // Slower than the writer: one read per turn of the event loop.
                        tokio::task::yield_now().await;
                    }
                });
                let mut sent: Vec<u8> = Vec::new();
                for (i, step) in steps.iter().enumerate() {
                    match *step {
                        Step::Write { len, vectored } => {
                            let data: Vec<u8> = (0..len).map(|k| ((sent.len() + k) * 31 + i) as u8).collect();
                            let mut rest = &data[..];
                            while !rest.is_empty() {
                                let n = if vectored {
                                    let (a, b) = rest.split_at(rest.len() / 3);
                                    let (b, c) = b.split_at(b.len() / 2);
                                    io.write_vectored(&[IoSlice::new(a), IoSlice::new(b), IoSlice::new(c)]).await
                                } else {
                                    io.write(rest).await
                                }
                                .unwrap();
                                rest = &rest[n..];
                            }
                            sent.extend_from_slice(&data);
                        }
                        Step::Flush => io.flush().await.unwrap(),
                        Step::Yield => tokio::task::yield_now().await,
                    }
                    let held = io.outbox.as_ref().map_or(0, |o| lock(&o.held).buf.len());
                    assert!(held <= DEFER_MAX, "{held} bytes held");
                }
                io.shutdown().await.unwrap();
                (sent, reader.await.unwrap())
            });
            proptest::prop_assert_eq!(got.len(), sent.len());
            proptest::prop_assert!(got == sent, "bytes arrived out of order");
        }
    }

    /// Where no flusher runs (a multi-threaded runtime), writes go out at once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn without_a_flusher_writes_go_out_at_once() {
        defer_writes_on_this_thread();
        let (mut io, mut peer) = pair().await;
        io.write_all(b"now").await.unwrap();
        let mut got = [0u8; 3];
        peer.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"now");
        assert!(io.outbox.is_none());
    }
}
