//! The local API: HTTP/1.1 + JSON over a Unix socket, so `curl --unix-socket` and any
//! language's HTTP client can fetch the asset token.
//!
//! The socket lives in a directory only the agent and its group can enter and is itself
//! mode 0660; every connection's SO_PEERCRED is checked against [`peer::Policy`] before a
//! request is answered.

pub mod peer;
pub mod routes;
pub mod status;

use std::io;
use std::os::unix::fs::{FileTypeExt as _, MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::clock::{Clock, Skew};
use crate::token::refresher::Handle;

/// At most this many connections are served at once; more wait in the kernel backlog.
pub const MAX_CONNECTIONS: usize = 256;
/// A client must send its request headers within this time.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);

/// The socket could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("could not create the socket directory {}", path.display())]
    Dir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{} exists and is not a socket; refusing to replace it", path.display())]
    NotASocket { path: PathBuf },
    #[error("another agent is already serving {}", path.display())]
    InUse { path: PathBuf },
    #[error("could not remove the stale socket {}", path.display())]
    RemoveStale {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("could not bind {}", path.display())]
    Bind {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("could not set the permissions of {}", path.display())]
    Chmod {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// What the agent shows about itself.
#[derive(Debug, Clone)]
pub struct Info {
    pub device_id: String,
    pub key_thumbprint: String,
    pub auth_method: &'static str,
}

/// State every request handler reads.
#[derive(Debug)]
pub struct Shared {
    pub tokens: Handle,
    pub info: Info,
    pub policy: peer::Policy,
    pub clock: Clock,
    pub skew: Arc<Skew>,
    /// How long `GET /v1/token?min_ttl=` may wait for a refresh.
    pub min_ttl_wait: Duration,
    /// The MQTT uplink, when `[mqtt]` is configured (`POST /v1/mqtt/publish`, status).
    pub mqtt: Option<crate::mqtt::Handle>,
}

/// A bound socket, ready to serve.
pub struct Server {
    listener: UnixListener,
    path: PathBuf,
}

// === impl Server ===

impl Server {
    /// Binds `path`: creates its directory (0750) if needed, removes a stale socket left by
    /// a crash (but never a live one or a non-socket), and sets the socket to 0660.
    ///
    /// # Errors
    /// See [`Error`].
    pub async fn bind(path: &Path) -> Result<Self, Error> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            prepare_dir(dir)?;
        }
        match std::fs::symlink_metadata(path) {
            Ok(meta) if meta.file_type().is_socket() => {
                if UnixStream::connect(path).await.is_ok() {
                    return Err(Error::InUse {
                        path: path.to_owned(),
                    });
                }
                std::fs::remove_file(path).map_err(|source| Error::RemoveStale {
                    path: path.to_owned(),
                    source,
                })?;
                tracing::debug!(socket = %path.display(), "removed a stale socket");
            }
            Ok(_) => {
                return Err(Error::NotASocket {
                    path: path.to_owned(),
                });
            }
            Err(_) => {}
        }
        let listener = UnixListener::bind(path).map_err(|source| Error::Bind {
            path: path.to_owned(),
            source,
        })?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660)).map_err(
            |source| Error::Chmod {
                path: path.to_owned(),
                source,
            },
        )?;
        Ok(Self {
            listener,
            path: path.to_owned(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The group owning the socket file (allowed by default).
    pub fn socket_gid(&self) -> u32 {
        std::fs::metadata(&self.path).map_or(u32::MAX, |m| m.gid())
    }

    /// Serves until `cancel` fires, then stops accepting, lets in-flight requests finish
    /// and removes the socket file.
    pub async fn run(self, shared: Arc<Shared>, cancel: CancellationToken) {
        let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        let tracker = TaskTracker::new();
        loop {
            let permit = tokio::select! {
                () = cancel.cancelled() => break,
                p = slots.clone().acquire_owned() => match p {
                    Ok(p) => p,
                    Err(_) => break,
                },
            };
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
            let shared = shared.clone();
            let cancel = cancel.clone();
            tracker.spawn(async move {
                serve_connection(stream, shared, cancel).await;
                drop(permit);
            });
        }
        tracker.close();
        tracker.wait().await;
        let _ = std::fs::remove_file(&self.path);
    }
}

async fn serve_connection(stream: UnixStream, shared: Arc<Shared>, cancel: CancellationToken) {
    let peer = match stream.peer_cred() {
        Ok(c) => peer::Peer {
            uid: c.uid(),
            gid: c.gid(),
            pid: c.pid(),
        },
        Err(e) => {
            tracing::warn!(error = %e, "could not read the caller's credentials; closing");
            return;
        }
    };
    let service = service_fn(move |req| {
        let shared = shared.clone();
        async move { Ok::<_, std::convert::Infallible>(routes::handle(shared, peer, req).await) }
    });
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .max_buf_size(16 * 1024)
        .serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        }
        () = cancel.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

/// Creates the socket directory 0750, or tightens one we own that others can enter.
fn prepare_dir(dir: &Path) -> Result<(), Error> {
    let err = |source| Error::Dir {
        path: dir.to_owned(),
        source,
    };
    match std::fs::metadata(dir) {
        Ok(meta) => {
            let mode = meta.permissions().mode();
            if mode & 0o007 != 0 && meta.uid() == rustix::process::geteuid().as_raw() {
                std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode & 0o7770))
                    .map_err(err)?;
                tracing::info!(dir = %dir.display(), "removed world access from the socket directory");
            } else if mode & 0o007 != 0 {
                tracing::warn!(dir = %dir.display(), "the socket directory is open to everyone; the socket's own mode 0660 still applies");
            }
            Ok(())
        }
        Err(_) => {
            use std::os::unix::fs::DirBuilderExt as _;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o750)
                .create(dir)
                .map_err(err)
        }
    }
}
