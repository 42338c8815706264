//! A client connection as hyper serves it: [`TimedIo`], with a write timeout, and
//! [`Hangup`], a watch on the client closing its end.
//!
//! hyper bounds how long a client may take to *send* its request head
//! (`header_read_timeout`), but not how long it may take to *read* the answer. A client that
//! stops reading would park its connection (and, for a watch stream, its producer) forever.
//! [`TimedIo`] fails a write that has made no progress for the timeout, which ends the
//! connection.

use std::future::Future as _;
use std::io;
use std::os::unix::net::UnixStream as StdUnixStream;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::UnixStream;
use tokio::time::Sleep;

/// A Unix stream whose writes fail after stalling for `timeout`.
#[derive(Debug)]
pub struct TimedIo {
    inner: UnixStream,
    timeout: Duration,
    /// Running while a write is pending.
    stalled: Option<Pin<Box<Sleep>>>,
}

/// See [`TimedIo::hangup`].
#[derive(Debug)]
pub struct Hangup(AsyncFd<StdUnixStream>);

// === impl Hangup ===

impl Hangup {
    /// Resolves when the client has closed its end (`POLLHUP`): not when it only shut down
    /// its writing side.
    pub async fn wait(&self) {
        loop {
            let Ok(mut ready) = self.0.writable().await else {
                return;
            };
            if ready.ready().is_write_closed() {
                return;
            }
            // Writable and open: wait for the next change (the poller is edge-triggered).
            ready.clear_ready();
        }
    }
}

// === impl TimedIo ===

impl TimedIo {
    pub fn new(inner: UnixStream, timeout: Duration) -> Self {
        Self {
            inner,
            timeout,
            stalled: None,
        }
    }

    /// A watch on the client closing its end altogether, for as long as hyper serves the
    /// connection.
    ///
    /// hyper serves with `half_close`, so a client that shuts down its writing side after
    /// its request (`socat`, `nc -N`) still gets the answer; hyper then reads nothing while
    /// it answers, and would not notice a client that closed for good during a long answer
    /// (a watch stream, whose place must be freed at once). The watch is a second
    /// descriptor of the same socket, registered for the hang-up alone.
    ///
    /// # Errors
    /// `dup` or registering it with the poller failed.
    pub fn hangup(&self) -> io::Result<Hangup> {
        use std::os::fd::AsFd as _;
        let fd = self.inner.as_fd().try_clone_to_owned()?;
        super::sys::register(StdUnixStream::from(fd), Interest::WRITABLE).map(Hangup)
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
    use tokio::io::AsyncWriteExt as _;

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
