//! A write timeout for client connections.
//!
//! hyper bounds how long a client may take to *send* its request head
//! (`header_read_timeout`), but not how long it may take to *read* the answer. A client that
//! stops reading would park its connection (and, for a watch stream, its producer) forever.
//! [`TimedIo`] fails a write that has made no progress for the timeout, which ends the
//! connection. It also hands back bytes already read: when the fast path passes a
//! connection to hyper, hyper reads them first.

use std::future::Future as _;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf as _, Bytes};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::UnixStream;
use tokio::time::Sleep;

/// A Unix stream whose writes fail after stalling for `timeout`.
#[derive(Debug)]
pub struct TimedIo {
    inner: UnixStream,
    timeout: Duration,
    /// Running while a write is pending.
    stalled: Option<Pin<Box<Sleep>>>,
    /// Read before the stream.
    unread: Bytes,
}

// === impl TimedIo ===

impl TimedIo {
    pub fn new(inner: UnixStream, timeout: Duration) -> Self {
        Self {
            inner,
            timeout,
            stalled: None,
            unread: Bytes::new(),
        }
    }

    /// Makes `bytes` the next to be read, before anything more from the stream.
    pub fn unread(&mut self, bytes: Bytes) {
        self.unread = bytes;
    }

    /// Maps a pending write to a timeout error once it has been pending too long.
    fn check<T>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        match polled {
            Poll::Ready(r) => {
                self.stalled = None;
                Poll::Ready(r)
            }
            Poll::Pending => {
                let timeout = self.timeout;
                let timer = self
                    .stalled
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
                if timer.as_mut().poll(cx).is_ready() {
                    self.stalled = None;
                    Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "the client stopped reading",
                    )))
                } else {
                    Poll::Pending
                }
            }
        }
    }
}

impl AsyncRead for TimedIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.unread.is_empty() {
            let n = self.unread.len().min(buf.remaining());
            buf.put_slice(&self.unread[..n]);
            self.unread.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for TimedIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.check(cx, polled)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.check(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.inner).poll_flush(cx);
        self.check(cx, polled)
    }

    /// A no-op: hyper shuts a connection down only to close it, and the stream is dropped
    /// (closed) right after. On a Unix stream, `close` ends the peer's reads just as
    /// `shutdown(SHUT_WR)` would, with nothing to linger or flush; skipping it saves one
    /// system call per connection.
    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    #[tokio::test]
    async fn unread_bytes_come_before_the_stream() {
        let (a, mut b) = UnixStream::pair().unwrap();
        let mut io = TimedIo::new(a, Duration::from_secs(1));
        io.unread(Bytes::from_static(b"abcdef"));
        b.write_all(b"gh").await.unwrap();
        drop(b);
        let mut small = [0u8; 4];
        assert_eq!(io.read(&mut small).await.unwrap(), 4);
        assert_eq!(&small, b"abcd");
        let mut rest = Vec::new();
        io.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest, b"efgh");
    }

    #[tokio::test]
    async fn a_client_that_never_reads_times_the_write_out() {
        let (a, _b) = UnixStream::pair().unwrap();
        let mut io = TimedIo::new(a, Duration::from_millis(200));
        let chunk = vec![0u8; 64 * 1024];
        let started = tokio::time::Instant::now();
        let err = loop {
            if let Err(e) = io.write_all(&chunk).await {
                break e;
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "never timed out"
            );
        };
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    }
}
