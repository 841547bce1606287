//! The socket type hyper and h2 drive: a `TcpStream` whose small vectored writes go out as one
//! `send`.
//!
//! hyper writes a response as a head buffer plus body buffers and h2 writes a frame head plus
//! its payload, both through `writev`. On Linux `writev` on a socket costs more kernel time than
//! `send` (it goes through the VFS layer: `fdget_pos`, iovec import, `rw_verify_area`), about
//! 0.2 µs a call on the benchmark machine, two calls per proxied HTTP/1.1 request. HAProxy
//! copies into one buffer and calls `send`; so do we when the buffers are small. Large writes
//! (bodies) keep `writev`, where the copy would cost more than the syscall saves.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// Vectored writes up to this many bytes in total are copied into one buffer and sent with a
/// single `send`. A response head plus a small body fits; a body chunk of a large download
/// does not and is written with `writev` as is.
const COALESCE_MAX: usize = 2048;

thread_local! {
    static JOINED: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(Vec::with_capacity(COALESCE_MAX));
}

/// A TCP stream for hyper/h2 connections (wrap it in `hyper_util::rt::TokioIo`).
#[derive(Debug)]
pub struct TcpIo {
    stream: TcpStream,
}

impl TcpIo {
    pub fn new(stream: TcpStream) -> Self {
        TcpIo { stream }
    }
}

impl AsyncRead for TcpIo {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for TcpIo {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let stream = Pin::new(&mut self.get_mut().stream);
        let mut nonempty = bufs.iter().filter(|b| !b.is_empty());
        let (Some(first), second) = (nonempty.next(), nonempty.next()) else {
            return Poll::Ready(Ok(0));
        };
        let Some(second) = second else {
            return stream.poll_write(cx, first);
        };
        let total: usize = bufs.iter().map(|b| b.len()).sum();
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

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
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
}
