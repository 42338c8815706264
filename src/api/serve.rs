//! The accept loop and per-connection serving.
//!
//! Every connection is accepted at once (so the kernel backlog never fills), its caller
//! identified and given a place in the [`Registry`] (which may close an idle connection to
//! make room, or refuse with 503). hyper then serves it with bounded head size, header
//! count and head read time (slowloris and idle keep-alive connections are closed after
//! [`Limits::header_timeout`]); [`TimedIo`] bounds writes to a client that stopped reading.
//! At shutdown the loop stops accepting, every connection finishes its in-flight request
//! (streams end) and the socket file is removed.

use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::UnixStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::conns::{Caps, Full, Registry, Slot};
use super::io::TimedIo;
use super::listen::{Server, ensure_fd_headroom};
use super::peer::Peer;
use super::routes::{self, Caller};
use super::{Limits, Shared};

/// Descriptors kept free besides the API's connections (upstream HTTPS, files, logging).
const FD_RESERVE: u64 = 128;

// === impl Server ===

impl Server {
    /// Serves until `cancel` fires, then stops accepting, lets in-flight requests finish
    /// and removes the socket file (unless systemd owns it).
    pub async fn run(self, shared: Arc<Shared>, cancel: CancellationToken) {
        let limits = shared.limits;
        ensure_fd_headroom(u64::try_from(limits.caps.total).unwrap_or(u64::MAX) + FD_RESERVE);
        let registry = shared
            .state
            .conns
            .get_or_init(|| Registry::new(limits.caps))
            .clone();
        let tracker = TaskTracker::new();
        loop {
            let stream = tokio::select! {
                () = cancel.cancelled() => break,
                r = self.listener.accept() => match r {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        // EMFILE and friends: back off briefly instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            let peer = match Peer::of(&stream) {
                Ok(p) => p,
                Err(e) => {
                    tracing::warn!(error = %e, "could not read the caller's credentials; closing");
                    continue;
                }
            };
            let slot = match registry.admit(peer.uid) {
                Ok(slot) => slot,
                Err(full) => {
                    refuse(&stream, &peer, full);
                    continue;
                }
            };
            let role = shared.policy.role(&peer);
            let caller = Arc::new(Caller {
                peer,
                role,
                shutdown: cancel.clone(),
            });
            tracker.spawn(connection(stream, caller, slot, shared.clone()));
        }
        tracker.close();
        tracker.wait().await;
        self.cleanup();
    }
}

/// Serves one connection until the client closes it, it times out, it is evicted, or the
/// server shuts down (then after its in-flight request).
async fn connection(stream: UnixStream, caller: Arc<Caller>, slot: Slot, shared: Arc<Shared>) {
    let limits: Limits = shared.limits;
    let activity = slot.activity.clone();
    let service = {
        let caller = caller.clone();
        service_fn(move |req| {
            let busy = activity.enter();
            let shared = shared.clone();
            let caller = caller.clone();
            async move {
                Ok::<_, std::convert::Infallible>(routes::handle(shared, caller, req, busy).await)
            }
        })
    };
    let io = TimedIo::new(stream, limits.write_timeout);
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(limits.max_head_bytes)
        .max_headers(limits.max_headers)
        .serve_connection(TokioIo::new(io), service);
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                tracing::debug!(uid = caller.peer.uid, error = %e, "connection ended with an error");
            }
        }
        () = slot.evicted.cancelled() => {
            tracing::debug!(uid = caller.peer.uid, "closed an idle connection to make room");
        }
        () = caller.shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

/// Answers 503 without reading the request, then closes: no room for this caller.
fn refuse(stream: &UnixStream, peer: &Peer, full: Full) {
    tracing::debug!(uid = peer.uid, pid = peer.pid, reason = %full, "refused a connection");
    let body = format!(r#"{{"error":"busy","reason":"{full}"}}"#);
    let response = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    // A new socket's send buffer is empty, so this never blocks; if it cannot be written
    // in full the client learns the same from the closed connection.
    let _ = stream.try_write(response.as_bytes());
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
