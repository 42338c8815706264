//! The accept loop and per-connection serving.
//!
//! Every connection is accepted at once (so the kernel backlog never fills), its caller
//! identified and given a place in the [`Registry`] (which may close an idle connection to
//! make room, or refuse with 503). The loop itself polls each new connection once, so one
//! whose request is already there is often answered and closed without a task; the rest
//! become tasks, which get their turn at least every [`ACCEPT_BATCH`] accepts. hyper
//! serves every request, with bounded head size, header count and head read time
//! (slowloris and idle keep-alive connections are closed after
//! [`Limits::header_timeout`]); [`TimedIo`] bounds writes to a client that stopped
//! reading. No code here parses HTTP.
//! At shutdown the loop stops accepting, every connection finishes its in-flight request
//! (streams end) and the socket file is removed.

use std::os::unix::net::UnixStream as StdUnixStream;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::UnixStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::conns::{Caps, Full, Registry, Slot};
use super::io::TimedIo;
use super::listen::{Server, ensure_fd_headroom};
use super::peer::Caller;
use super::peer::Peer;
use super::router;
use super::{Limits, Shared};

/// Descriptors kept free besides the API's connections (upstream HTTPS, files, logging).
const FD_RESERVE: u64 = 128;
/// Refused connections being answered at once; past it they are closed unanswered.
const MAX_REFUSING: usize = 64;
/// How long a refused connection is given to send its request and read the 503.
const REFUSE_TIME: Duration = Duration::from_secs(1);
/// Connections accepted (and served, when they can be at once) before the accept loop lets
/// the other tasks run: the connections waiting on the poller, the refresh loop. Clients
/// answered inside the loop connect again at once, so under load the backlog never runs
/// dry, and a connection whose request came late would otherwise wait for tokio's budget
/// (128 accepts). A burst of up to this many connections is still accepted at once.
const ACCEPT_BATCH: u32 = 16;

// === impl Server ===

impl Server {
    /// Serves until `cancel` fires, then stops accepting, lets in-flight requests finish
    /// and removes the socket file (unless systemd owns it).
    pub async fn run(self, shared: Arc<Shared>, cancel: CancellationToken) {
        let limits = shared.limits;
        // Two descriptors per connection hyper serves (see `TimedIo::hangup`).
        ensure_fd_headroom(
            u64::try_from(limits.caps.total)
                .unwrap_or(u64::MAX)
                .saturating_mul(2)
                .saturating_add(FD_RESERVE),
        );
        let registry = shared
            .state
            .conns
            .get_or_init(|| Registry::new(limits.caps))
            .clone();
        let tracker = TaskTracker::new();
        // One builder for every connection: its timer is reference-counted, so building it
        // per connection cost an allocation each time.
        let http = Arc::new(http_builder(limits));
        let refusals = Arc::new(Semaphore::new(MAX_REFUSING));
        // Shared by every connection's caller: a handle each would cost a lock to take and
        // another to give back.
        let shutdown = Arc::new(cancel);
        let stopped = shutdown.cancelled();
        tokio::pin!(stopped);
        let mut accepted: u32 = 0;
        loop {
            // Accepting first: the stop is looked at only when no connection is waiting
            // (tokio's budget makes even a flood of them pause now and then).
            let stream = tokio::select! {
                biased;
                r = self.accept() => match r {
                    Ok(stream) => stream,
                    Err(e) => {
                        // EMFILE and friends: back off briefly instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
                () = &mut stopped => break,
            };
            let child_groups = shared.children.as_ref().is_some_and(|c| c.grant_groups());
            let peer = match Peer::of(&stream, &shared.policy, child_groups) {
                Ok(p) => p,
                Err(e) => {
                    tracing::warn!(error = %e, "could not read the caller's credentials; closing");
                    continue;
                }
            };
            let slot = match registry.admit(peer.uid) {
                Ok(slot) => slot,
                Err(full) => {
                    tracing::debug!(uid = peer.uid, pid = peer.pid, reason = %full, "refused a connection");
                    // Past the refusal budget, just close: the client sees a reset.
                    if let Ok(permit) = refusals.clone().try_acquire_owned() {
                        tracker.spawn(crate::spawn::boxed(refuse(stream, full, permit)));
                    }
                    continue;
                }
            };
            let role = shared.policy.role(&peer);
            let caller = Caller {
                peer,
                role,
                shutdown: shutdown.clone(),
            };
            let mut conn = Box::pin(connection(
                stream,
                caller,
                slot,
                shared.clone(),
                http.clone(),
            ));
            // Polled here once before it becomes a task. A client that sent its request
            // before it was accepted and asked to close is answered and gone within this
            // poll: no task is made for it, and its answer goes out before the next
            // accept. Otherwise the connection waits on a socket or timer that now holds
            // this loop's waker, a spurious wake-up at most: the task it becomes is polled
            // at once, and from then on every wake-up is its own.
            if poll_once(conn.as_mut()).await.is_pending() {
                tracker.spawn(conn);
            }
            accepted = accepted.wrapping_add(1);
            if accepted.is_multiple_of(ACCEPT_BATCH) {
                tokio::task::yield_now().await;
            }
        }
        tracker.close();
        tracker.wait().await;
        self.cleanup();
    }
}

/// Polls `fut` once.
async fn poll_once<F: Future + Unpin>(mut fut: F) -> Poll<F::Output> {
    std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut fut).poll(cx))).await
}

/// Serves one connection until the client closes it, it times out, it is evicted, or the
/// server shuts down (then after its in-flight request).
async fn connection(
    stream: StdUnixStream,
    caller: Caller,
    slot: Slot,
    shared: Arc<Shared>,
    http: Arc<http1::Builder>,
) {
    let io = match UnixStream::from_std(stream) {
        Ok(s) => TimedIo::new(s, shared.limits.write_timeout),
        Err(e) => {
            tracing::debug!(uid = caller.peer.uid, error = %e, "could not register the connection");
            return;
        }
    };
    let hangup = match io.hangup() {
        Ok(h) => h,
        Err(e) => {
            tracing::debug!(uid = caller.peer.uid, error = %e, "could not watch the connection for a hang-up");
            return;
        }
    };
    by_hyper(io, hangup, Arc::new(caller), slot, shared, http).await;
}

/// hyper serves the connection.
async fn by_hyper(
    io: TimedIo,
    hangup: super::io::Hangup,
    caller: Arc<Caller>,
    slot: Slot,
    shared: Arc<Shared>,
    http: Arc<http1::Builder>,
) {
    let activity = slot.activity.clone();
    let service = {
        let caller = caller.clone();
        service_fn(move |req| {
            let busy = activity.enter();
            let shared = shared.clone();
            let caller = caller.clone();
            async move {
                if upgrade_with_body(&req) {
                    return Ok(refuse_upgrade(&shared, req).await);
                }
                Ok::<_, std::convert::Infallible>(router::handle(shared, caller, req, busy).await)
            }
        })
    };
    let conn = http.serve_connection(TokioIo::new(io), service);
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                tracing::debug!(uid = caller.peer.uid, error = %e, "connection ended with an error");
            }
        }
        () = hangup.wait() => {
            tracing::debug!(uid = caller.peer.uid, "the client closed the connection");
        }
        () = slot.evicted() => {
            tracing::debug!(uid = caller.peer.uid, "closed an idle connection to make room");
        }
        () = caller.shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

/// Whether `req` asks for a protocol upgrade (`Upgrade`) and carries a body. The agent
/// upgrades nothing; hyper, for such a request whose route does not read the body, ends
/// the connection unanswered when the body comes after the head. Without a body, `Upgrade` is ignored and the request served as usual.
fn upgrade_with_body(req: &hyper::Request<hyper::body::Incoming>) -> bool {
    use hyper::body::Body as _;
    req.headers().contains_key(hyper::header::UPGRADE) && !req.body().is_end_stream()
}

/// 400 for [`upgrade_with_body`], after reading the body (bounded as `POST /v1/sign`'s),
/// so the answer is not lost to a reset; the connection closes after it.
async fn refuse_upgrade(
    shared: &Shared,
    req: hyper::Request<hyper::body::Incoming>,
) -> super::body::ApiReply {
    let limit = super::routes::sign::MAX_BODY;
    let _ = tokio::time::timeout(
        shared.limits.body_timeout,
        wire::http::read_body(req, limit),
    )
    .await;
    let mut reply = super::reply::error(
        hyper::StatusCode::BAD_REQUEST,
        "bad_request",
        "the agent upgrades no connection: send the request without Upgrade, or without a body",
    );
    reply.headers_mut().insert(
        hyper::header::CONNECTION,
        hyper::header::HeaderValue::from_static("close"),
    );
    super::body::full(reply)
}

/// How hyper serves every connection: bounded head size (and hyper's own header-count cap,
/// [`super::MAX_HEADERS`]) and head read time.
fn http_builder(limits: Limits) -> http1::Builder {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(limits.max_head_bytes)
        .max_header_size(limits.max_head_bytes)
        .half_close(true);
    builder
}

/// Answers 503 and closes: no room for this caller. The request head is read first (for
/// at most [`REFUSE_TIME`]), because closing a Unix socket with unread data resets it and
/// the client would see an error instead of the answer.
async fn refuse(stream: StdUnixStream, full: Full, _permit: OwnedSemaphorePermit) {
    let Ok(mut stream) = UnixStream::from_std(stream) else {
        return;
    };
    let body = format!(r#"{{"error":"busy","reason":"{full}"}}"#);
    let response = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    let exchange = async {
        let mut head = Vec::new();
        let mut buf = [0u8; 1024];
        while head.len() < 16 * 1024 && !head.windows(4).any(|w| w == b"\r\n\r\n") {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => head.extend_from_slice(&buf[..n]),
            }
        }
        let _ = stream.write_all(response.as_bytes()).await;
        let _ = stream.shutdown().await;
    };
    let _ = tokio::time::timeout(REFUSE_TIME, exchange).await;
}

impl Limits {
    /// Caps from `[api]`, fixed timeouts and sizes, and how long `POST /v1/refresh` waits.
    pub fn from_config(api: &crate::config::Api, refresh_wait: Duration) -> Self {
        Self {
            caps: Caps {
                total: api.max_connections,
                per_uid: api.max_connections_per_uid,
            },
            refresh_wait,
            ..Self::default()
        }
    }
}
