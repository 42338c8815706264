//! Getting a listening socket: from systemd (socket activation) or by binding the
//! configured path ourselves.

use std::os::unix::fs::{FileTypeExt as _, MetadataExt as _, PermissionsExt as _};
use std::os::unix::net::{UnixListener, UnixStream as StdUnixStream};
use std::path::{Path, PathBuf};

use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::net::UnixStream;

use super::Error;
use super::activation::{self, Activated};

/// A listening socket, ready to serve. Connections are accepted as plain non-blocking
/// sockets, so the listener is polled directly rather than through tokio's
/// `UnixListener`, and a caller with no place is refused before it is registered.
pub struct Server {
    pub(super) listener: AsyncFd<UnixListener>,
    path: PathBuf,
    /// Whether systemd owns the socket (then it is neither chmod-ed nor removed by us).
    activated: bool,
}

// === impl Server ===

impl Server {
    /// The socket systemd passed (`LISTEN_FDS`), else `path` bound by [`Server::bind`].
    ///
    /// # Errors
    /// See [`Error`].
    pub async fn listen(path: &Path) -> Result<Self, Error> {
        match activation::take(&activation::Env::from_process()).map_err(Error::Activation)? {
            Some(a) => Self::activated(a, path),
            None => Self::bind(path).await,
        }
    }

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
        let listener = UnixListener::bind(path)
            .and_then(polled)
            .map_err(|source| Error::Bind {
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
            activated: false,
        })
    }

    fn activated(a: Activated, configured: &Path) -> Result<Self, Error> {
        let path = a.path.clone().unwrap_or_else(|| configured.to_owned());
        if a.path.as_deref().is_some_and(|p| p != configured) {
            tracing::info!(inherited = %path.display(), configured = %configured.display(),
                "serving the socket systemd passed, not api.socket");
        }
        tracing::info!(fd = a.fd, name = a.name.as_deref().unwrap_or("-"),
            socket = %path.display(), "using the socket passed by systemd (socket activation)");
        let listener = polled(a.listener).map_err(|source| Error::Bind {
            path: path.clone(),
            source,
        })?;
        Ok(Self {
            listener,
            path,
            activated: true,
        })
    }

    /// Accepts a connection: non-blocking, close-on-exec, not registered with the poller.
    ///
    /// # Errors
    /// `accept4`'s (`EMFILE` and the like).
    pub(super) async fn accept(&self) -> std::io::Result<StdUnixStream> {
        use rustix::net::SocketFlags;
        loop {
            let mut ready = self.listener.readable().await?;
            let accepted = ready.try_io(|l| {
                rustix::net::accept_with(l.get_ref(), SocketFlags::NONBLOCK | SocketFlags::CLOEXEC)
                    .map_err(std::io::Error::from)
            });
            if let Ok(accepted) = accepted {
                return accepted.map(StdUnixStream::from);
            }
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the socket came from systemd.
    pub fn is_activated(&self) -> bool {
        self.activated
    }

    /// The group owning the socket file (allowed to read tokens by default), if it has one.
    pub fn socket_gid(&self) -> Option<u32> {
        std::fs::metadata(&self.path).ok().map(|m| m.gid())
    }

    /// Removes the socket file at shutdown, unless systemd owns it.
    pub(super) fn cleanup(&self) {
        if !self.activated {
            let _ = std::fs::remove_file(&self.path);
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

/// Raises the soft open-files limit towards the hard one when `wanted` descriptors would
/// not fit (each connection holds one). Systemd's default soft limit is 1024.
pub(super) fn ensure_fd_headroom(wanted: u64) {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let lim = getrlimit(Resource::Nofile);
    let current = lim.current.unwrap_or(u64::MAX);
    if current >= wanted {
        return;
    }
    let target = lim
        .maximum
        .map_or(wanted, |max| max.min(wanted.max(current)));
    let raised = setrlimit(
        Resource::Nofile,
        Rlimit {
            current: Some(target),
            maximum: lim.maximum,
        },
    );
    match raised {
        Ok(()) if target >= wanted => {
            tracing::debug!(from = current, to = target, "raised the open-files limit");
        }
        _ => tracing::warn!(
            limit = current,
            wanted,
            "the open-files limit is below api.max_connections; raise LimitNOFILE= or lower api.max_connections"
        ),
    }
}

/// `listener`, non-blocking and registered with the poller for accepting.
fn polled(listener: UnixListener) -> std::io::Result<AsyncFd<UnixListener>> {
    listener.set_nonblocking(true)?;
    super::sys::register(listener, Interest::READABLE)
}
