//! Client connections: [`Conn`], the fast path's, registered with the poller only when
//! it must be, and [`TimedIo`], hyper's, with a write timeout.
//!
//! hyper bounds how long a client may take to *send* its request head
//! (`header_read_timeout`), but not how long it may take to *read* the answer. A client that
//! stops reading would park its connection (and, for a watch stream, its producer) forever.
//! [`TimedIo`] fails a write that has made no progress for the timeout, which ends the
//! connection. It also hands back bytes already read: when the fast path passes a
//! connection to hyper, hyper reads them first.

use std::future::Future as _;
use std::io;
use std::os::unix::net::UnixStream as StdUnixStream;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf as _, Bytes};
use rustix::io::Errno;
use rustix::net::SendFlags;
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::UnixStream;
use tokio::time::Sleep;

/// What a read makes room for at least; a token request's head is 100 to 300 bytes.
const READ_CHUNK: usize = 1024;

/// A client connection as the fast path uses it: plain reads and writes on a non-blocking
/// socket, registered with the runtime's poller only when one would block.
///
/// - Not at all at first: a client has usually sent its request by the time it is
///   accepted, so a one-request connection is read, answered and closed without the two
///   `epoll_ctl` calls that registering and deregistering it cost.
/// - Then for reading only. Registered for writing too, as a tokio `UnixStream` is, every
///   answer the client reads frees send-buffer space, which wakes the agent from `epoll`
///   for nothing: a second wake-up for every keep-alive request. An answer (a few KiB)
///   rarely fills the send buffer; when one does, the connection is registered for
///   writing from then on.
/// - A short read means the socket is drained for now: readiness is cleared then, so the
///   next read waits for the poller instead of failing with `EAGAIN` first.
///
/// A write that makes no progress for the write timeout fails, as [`TimedIo`]'s do.
#[derive(Debug)]
pub struct Conn {
    state: State,
    write_timeout: Duration,
}

#[derive(Debug)]
enum State {
    Fresh(StdUnixStream),
    Polled {
        fd: AsyncFd<StdUnixStream>,
        writes: bool,
    },
    /// Registration failed (and the socket was closed).
    Gone,
}

// === impl Conn ===

impl Conn {
    /// `stream` must be non-blocking.
    pub fn new(stream: StdUnixStream, write_timeout: Duration) -> Self {
        Self {
            state: State::Fresh(stream),
            write_timeout,
        }
    }

    /// Reads what the client sent into `buf`'s spare capacity (at least [`READ_CHUNK`]
    /// is made);
    /// `Ok(0)` is the end of the stream.
    ///
    /// # Errors
    /// The socket's, or registering it with the poller failed.
    pub async fn read_buf(&mut self, buf: &mut Vec<u8>) -> io::Result<usize> {
        if buf.capacity() - buf.len() < READ_CHUNK {
            buf.reserve(READ_CHUNK);
        }
        let spare = buf.capacity() - buf.len();
        loop {
            match &self.state {
                State::Fresh(stream) => {
                    match rustix::io::read(stream, rustix::buffer::spare_capacity(buf)) {
                        Ok(n) => return Ok(n),
                        Err(Errno::AGAIN) => self.register(false)?,
                        Err(Errno::INTR) => {}
                        Err(e) => return Err(e.into()),
                    }
                }
                State::Polled { fd, .. } => {
                    let mut ready = fd.readable().await?;
                    match rustix::io::read(fd.get_ref(), rustix::buffer::spare_capacity(buf)) {
                        Ok(n) => {
                            if n < spare {
                                ready.clear_ready();
                            }
                            return Ok(n);
                        }
                        Err(Errno::AGAIN) => ready.clear_ready(),
                        Err(Errno::INTR) => {}
                        Err(e) => return Err(e.into()),
                    }
                }
                State::Gone => return Err(io::ErrorKind::NotConnected.into()),
            }
        }
    }

    /// Writes all of `data`.
    ///
    /// # Errors
    /// The socket's; `TimedOut` when the client read nothing for the write timeout.
    pub async fn write_all(&mut self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            let stream = match &self.state {
                State::Fresh(stream) => stream,
                State::Polled { fd, .. } => fd.get_ref(),
                State::Gone => return Err(io::ErrorKind::NotConnected.into()),
            };
            // MSG_NOSIGNAL: a client that left is an error here, not a SIGPIPE.
            match rustix::net::send(stream, data, SendFlags::NOSIGNAL) {
                Ok(n) => data = &data[n..],
                Err(Errno::AGAIN) => self.writable().await?,
                Err(Errno::INTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Waits until the socket takes more, registering it for writing if it is not yet.
    async fn writable(&mut self) -> io::Result<()> {
        if !matches!(self.state, State::Polled { writes: true, .. }) {
            self.register(true)?;
        }
        let State::Polled { fd, .. } = &self.state else {
            return Err(io::ErrorKind::NotConnected.into());
        };
        let mut ready = tokio::time::timeout(self.write_timeout, fd.writable())
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "the client stopped reading"))??;
        // The write is tried again; should it block, this waits for the next edge.
        ready.clear_ready();
        Ok(())
    }

    /// (Re-)registers the socket: for reading, and for writing if `writes`.
    fn register(&mut self, writes: bool) -> io::Result<()> {
        let stream = match std::mem::replace(&mut self.state, State::Gone) {
            State::Fresh(stream) => stream,
            State::Polled { fd, .. } => fd.into_inner(),
            State::Gone => return Err(io::ErrorKind::NotConnected.into()),
        };
        let interest = if writes {
            Interest::READABLE | Interest::WRITABLE
        } else {
            Interest::READABLE
        };
        self.state = State::Polled {
            fd: super::sys::register(stream, interest)?,
            writes,
        };
        Ok(())
    }

    /// The connection as hyper takes it over.
    ///
    /// # Errors
    /// Registering it with the poller failed.
    pub fn into_timed(self) -> io::Result<TimedIo> {
        let stream = match self.state {
            State::Fresh(stream) => stream,
            State::Polled { fd, .. } => fd.into_inner(),
            State::Gone => return Err(io::ErrorKind::NotConnected.into()),
        };
        Ok(TimedIo::new(
            UnixStream::from_std(stream)?,
            self.write_timeout,
        ))
    }
}

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
            unread: Bytes::new(),
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

    fn pair() -> (Conn, StdUnixStream) {
        let (a, b) = StdUnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        (Conn::new(a, Duration::from_millis(200)), b)
    }

    #[tokio::test]
    async fn a_conn_reads_what_was_sent_and_waits_for_more() {
        use std::io::Write as _;
        let (mut conn, mut client) = pair();
        client.write_all(b"first").unwrap();
        let mut buf = Vec::new();
        // Already there: read without registering.
        assert_eq!(conn.read_buf(&mut buf).await.unwrap(), 5);
        assert!(matches!(conn.state, State::Fresh(_)));
        let writer = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            client.write_all(b" second").unwrap();
            client
        });
        // Not there yet: registered for reading, then woken.
        assert_eq!(conn.read_buf(&mut buf).await.unwrap(), 7);
        assert!(matches!(conn.state, State::Polled { writes: false, .. }));
        assert_eq!(buf, b"first second");
        drop(writer.await.unwrap());
        assert_eq!(conn.read_buf(&mut buf).await.unwrap(), 0);
    }

    #[tokio::test]
    async fn a_conn_writes_past_a_full_buffer_and_times_out_on_a_client_that_never_reads() {
        use std::io::Read as _;
        let (mut conn, mut client) = pair();
        let big = vec![7u8; 4 << 20];
        let reader = std::thread::spawn(move || {
            let mut got = vec![0u8; 4 << 20];
            client.read_exact(&mut got).unwrap();
            (client, got)
        });
        conn.write_all(&big).await.unwrap();
        assert!(matches!(conn.state, State::Polled { writes: true, .. }));
        let (client, got) = reader.join().unwrap();
        assert_eq!(got, big);
        let err = conn.write_all(&big).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        drop(client);
    }

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
