//! What an HTTP/1.1 upstream connection runs over: a TCP socket (with the deferred writes of
//! [`crate::net_io`]), TLS over that socket ([`crate::tls::client`]), or an in-memory pipe.
//!
//! Why an enum: the lean client ([`super::h1`]) reads from the socket by readiness (no
//! `ReadBuf` per read, a stale "readable" flag cleared so that the pool's liveness check costs
//! no syscall), which `AsyncRead` cannot express; the other transports read the usual way. The
//! pipe (`tokio::io::duplex`) lets tests and the `upstream_h1` fuzz target drive the client
//! and hyper's client above it with no socket and no kernel in between, thousands of
//! connections a second on paused time. TLS reads through rustls, which decrypts whole records
//! into the buffer it is given. One `match` per read or write costs nothing next to the
//! syscall behind it.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{ready, Context, Poll, Waker};

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, DuplexStream, Interest, ReadBuf};
use tokio::net::TcpStream;

use crate::net_io::TcpIo;
use crate::tls::client::ClientStream;

/// An upstream connection's byte stream.
#[derive(Debug)]
pub enum UpstreamIo {
    Tcp(TcpIo),
    /// Boxed: rustls's connection state is a few kilobytes, the other variants a few words.
    Tls(Box<ClientStream>),
    /// One end of a `tokio::io::duplex` pipe, the upstream at the other (tests, fuzzing).
    Memory(DuplexStream),
}

impl UpstreamIo {
    pub fn tcp(stream: TcpStream) -> Self {
        UpstreamIo::Tcp(TcpIo::new(stream))
    }

    /// The TCP socket, if it is one.
    pub fn tcp_stream(&self) -> Option<&TcpStream> {
        match self {
            UpstreamIo::Tcp(io) => Some(io.stream()),
            UpstreamIo::Tls(tls) => Some(tls.get_ref().0.stream()),
            UpstreamIo::Memory(_) => None,
        }
    }

    pub fn peer_addr(&self) -> Option<SocketAddr> {
        self.tcp_stream().and_then(|s| s.peer_addr().ok())
    }

    /// Reads what is there into `buf`'s spare capacity; `Ok(0)` is the end of the stream.
    #[inline]
    pub fn poll_read_buf(&mut self, cx: &mut Context<'_>, buf: &mut BytesMut) -> Poll<io::Result<usize>> {
        match self {
            UpstreamIo::Tcp(io) => {
                // The request head may still sit in the socket's outbox (see `net_io`).
                io.poll_unstall(cx);
                loop {
                    ready!(io.stream().poll_read_ready(cx))?;
                    match io.stream().try_read_buf(buf) {
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                        done => return Poll::Ready(done),
                    }
                }
            }
            // `read_buf`'s future holds nothing between polls: a new one per poll is the same.
            UpstreamIo::Tls(tls) => std::pin::pin!(tls.read_buf(buf)).poll(cx),
            UpstreamIo::Memory(pipe) => std::pin::pin!(pipe.read_buf(buf)).poll(cx),
        }
    }

    /// Whether an idle connection can take a request: false when the peer closed it, or sent
    /// bytes nobody asked for, while it sat idle. On TCP the event loop keeps the socket's
    /// readiness up to date, so this costs no syscall unless the socket became readable.
    pub fn is_idle_usable(&mut self) -> bool {
        let mut cx = Context::from_waker(Waker::noop());
        match self {
            UpstreamIo::Tcp(io) => match io.stream().poll_read_ready(&mut cx) {
                Poll::Pending => true,
                Poll::Ready(Err(_)) => false,
                Poll::Ready(Ok(())) => {
                    let mut probe = [0u8; 1];
                    matches!(io.stream().try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
                }
            },
            // rustls handles what may arrive while idle (TLS 1.3 session tickets) and reports
            // no data; a byte of data, `close_notify` or an error make it unusable.
            UpstreamIo::Tls(tls) => {
                let mut probe = [0u8; 1];
                Pin::new(&mut **tls).poll_read(&mut cx, &mut ReadBuf::new(&mut probe)).is_pending()
            }
            // A byte read here is one nobody asked for: the connection is dropped either way.
            UpstreamIo::Memory(pipe) => {
                let mut probe = [0u8; 1];
                Pin::new(pipe).poll_read(&mut cx, &mut ReadBuf::new(&mut probe)).is_pending()
            }
        }
    }

    /// Called when the last read emptied the socket: clears its stale "readable" flag, so that
    /// [`UpstreamIo::is_idle_usable`] can skip the probe. Tokio clears only if no event arrived
    /// since, and never clears "closed".
    pub fn forget_readable(&self) {
        if let UpstreamIo::Tcp(io) = self {
            let _ = io.stream().try_io(Interest::READABLE, || Err::<(), _>(io::ErrorKind::WouldBlock.into()));
        }
    }

    /// Whether a deferred write failed before any of its bytes reached the socket.
    pub fn failed_unsent(&self) -> bool {
        match self {
            UpstreamIo::Tcp(io) => io.failed_unsent(),
            // rustls hands its records to the socket at once: a write it took that the socket
            // could not take failed there.
            UpstreamIo::Tls(tls) => tls.get_ref().0.failed_unsent(),
            UpstreamIo::Memory(_) => false,
        }
    }

    /// Moves an idle connection to this thread's event loop (see [`TcpIo::rehome_idle`]); a
    /// pipe belongs to no event loop. A TLS connection is not moved (tokio-rustls cannot be
    /// taken apart and put together around a new socket): it closes, and the worker opens its
    /// own, resuming the TLS session.
    pub fn rehome_idle(self) -> Option<Self> {
        match self {
            UpstreamIo::Tcp(io) => io.rehome_idle().map(UpstreamIo::Tcp),
            UpstreamIo::Tls(_) => None,
            memory => Some(memory),
        }
    }
}

/// Forwards to the transport, for hyper.
macro_rules! each {
    ($self:ident, $io:ident => $e:expr) => {
        match $self.get_mut() {
            UpstreamIo::Tcp($io) => $e,
            UpstreamIo::Tls($io) => {
                let $io = &mut **$io;
                $e
            }
            UpstreamIo::Memory($io) => $e,
        }
    };
}

impl AsyncRead for UpstreamIo {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        each!(self, io => Pin::new(io).poll_read(cx, buf))
    }
}

impl AsyncWrite for UpstreamIo {
    #[inline]
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        each!(self, io => Pin::new(io).poll_write(cx, buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        each!(self, io => Pin::new(io).poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            UpstreamIo::Tcp(io) => io.is_write_vectored(),
            UpstreamIo::Tls(io) => io.is_write_vectored(),
            UpstreamIo::Memory(io) => io.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        each!(self, io => Pin::new(io).poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        each!(self, io => Pin::new(io).poll_shutdown(cx))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn an_idle_pipe_is_usable_until_the_peer_writes_or_closes() {
        let (client, mut server) = tokio::io::duplex(1024);
        let mut io = UpstreamIo::Memory(client);
        assert!(io.is_idle_usable(), "a quiet peer");
        server.write_all(b"HTTP/1.1 200 OK\r\n").await.unwrap();
        assert!(!io.is_idle_usable(), "bytes nobody asked for");

        let (client, server) = tokio::io::duplex(1024);
        let mut io = UpstreamIo::Memory(client);
        drop(server);
        assert!(!io.is_idle_usable(), "a closed peer");
    }

    #[tokio::test]
    async fn a_pipe_reads_into_spare_capacity_and_then_its_end() {
        let (client, mut server) = tokio::io::duplex(1024);
        let mut io = UpstreamIo::Memory(client);
        server.write_all(b"hello").await.unwrap();
        drop(server);
        let mut buf = BytesMut::with_capacity(64);
        let n = std::future::poll_fn(|cx| io.poll_read_buf(cx, &mut buf)).await.unwrap();
        assert_eq!((n, &buf[..]), (5, &b"hello"[..]));
        let n = std::future::poll_fn(|cx| io.poll_read_buf(cx, &mut buf)).await.unwrap();
        assert_eq!(n, 0, "the end of the stream");
        assert!(io.rehome_idle().is_some(), "a pipe belongs to no event loop");
    }
}
