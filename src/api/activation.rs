//! systemd socket activation (`sd_listen_fds(3)`): when systemd (or
//! `systemd-socket-activate`) created the socket, it passes it as fd 3 onwards and says so
//! in `LISTEN_PID`, `LISTEN_FDS` and `LISTEN_FDNAMES`.
//!
//! Why support it: the socket exists before the agent starts, so clients connecting early
//! in boot wait in the backlog instead of failing, and the agent can restart without the
//! socket ever disappearing.
//!
//! The variables are only honoured when `LISTEN_PID` is our pid, so a child that inherited
//! them by accident ignores them. They are not removed from the environment (that needs
//! `unsafe` in Rust 2024 and buys nothing: the agent starts no children).

use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};

use rustix::io::FdFlags;
use rustix::net::SocketType;

use super::sys;

/// The first inherited descriptor (`SD_LISTEN_FDS_START`).
const FIRST_FD: i32 = 3;
/// With several sockets passed, the API socket is the one named this
/// (`FileDescriptorName=api` in the .socket unit).
pub const FD_NAME: &str = "api";
/// Sanity bound on `LISTEN_FDS`.
const MAX_FDS: usize = 64;

/// Inherited descriptors are adopted at most once per process (see [`sys::adopt_inherited_fd`]).
static TAKEN: AtomicBool = AtomicBool::new(false);

/// The activation variables are set for us but unusable.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("LISTEN_FDS={0:?} is not a number of descriptors between 1 and {MAX_FDS}")]
    Count(String),
    #[error(
        "systemd passed {count} sockets ({names}) and none is named \"{FD_NAME}\"; set FileDescriptorName={FD_NAME} on the API socket"
    )]
    Ambiguous { count: usize, names: String },
    #[error("the inherited descriptor {fd} is unusable")]
    Fd {
        fd: i32,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the inherited descriptor {fd} is not a listening Unix stream socket (check ListenStream= in the .socket unit)"
    )]
    NotAListener { fd: i32 },
}

/// The socket systemd passed us.
#[derive(Debug)]
pub struct Activated {
    pub listener: UnixListener,
    /// Its path, if it is bound to one.
    pub path: Option<PathBuf>,
    pub fd: i32,
    pub name: Option<String>,
}

/// The activation variables, read from the process environment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Env {
    pub listen_pid: Option<String>,
    pub listen_fds: Option<String>,
    pub listen_fdnames: Option<String>,
}

impl Env {
    pub fn from_process() -> Self {
        let var = |k| std::env::var(k).ok();
        Self {
            listen_pid: var("LISTEN_PID"),
            listen_fds: var("LISTEN_FDS"),
            listen_fdnames: var("LISTEN_FDNAMES"),
        }
    }
}

/// Which inherited descriptor is the API socket, if the variables are meant for `pid`.
///
/// # Errors
/// When they are meant for us but do not make sense.
pub fn choose(env: &Env, pid: u32) -> Result<Option<(i32, Option<String>)>, Error> {
    let for_us = env
        .listen_pid
        .as_deref()
        .and_then(|p| p.trim().parse::<u32>().ok())
        .is_some_and(|p| p == pid);
    if !for_us {
        return Ok(None);
    }
    let raw = env.listen_fds.clone().unwrap_or_default();
    let count = raw
        .trim()
        .parse::<usize>()
        .ok()
        .filter(|n| (1..=MAX_FDS).contains(n))
        .ok_or(Error::Count(raw))?;
    let names: Vec<&str> = env
        .listen_fdnames
        .as_deref()
        .map(|n| n.split(':').collect())
        .unwrap_or_default();
    let name_of = |i: usize| names.get(i).map(|s| (*s).to_owned());
    let index = if count == 1 {
        0
    } else {
        names
            .iter()
            .take(count)
            .position(|n| *n == FD_NAME)
            .ok_or_else(|| Error::Ambiguous {
                count,
                names: if names.is_empty() {
                    "unnamed".to_owned()
                } else {
                    names.join(", ")
                },
            })?
    };
    // `index` < count <= MAX_FDS, so this cannot overflow.
    let fd = FIRST_FD + i32::try_from(index).unwrap_or(0);
    Ok(Some((fd, name_of(index))))
}

/// The API socket passed by systemd, if any. Only the first call in a process can return
/// one.
///
/// # Errors
/// See [`Error`].
pub fn take(env: &Env) -> Result<Option<Activated>, Error> {
    let Some((fd, name)) = choose(env, std::process::id())? else {
        return Ok(None);
    };
    if TAKEN.swap(true, Ordering::SeqCst) {
        return Ok(None);
    }
    let err = |source| Error::Fd { fd, source };
    let owned = sys::adopt_inherited_fd(fd).map_err(err)?;
    // The fd came without CLOEXEC (it had to survive exec); no child of ours should get it.
    rustix::io::fcntl_setfd(&owned, FdFlags::CLOEXEC).map_err(|e| err(e.into()))?;
    let stream = rustix::net::sockopt::socket_type(&owned).is_ok_and(|t| t == SocketType::STREAM);
    let listening = rustix::net::sockopt::socket_acceptconn(&owned).unwrap_or(false);
    if !stream || !listening {
        return Err(Error::NotAListener { fd });
    }
    let listener = UnixListener::from(owned);
    // local_addr fails on a socket that is not AF_UNIX.
    let addr = listener
        .local_addr()
        .map_err(|_| Error::NotAListener { fd })?;
    listener.set_nonblocking(true).map_err(err)?;
    Ok(Some(Activated {
        path: addr.as_pathname().map(ToOwned::to_owned),
        listener,
        fd,
        name,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pid: &str, fds: &str, names: Option<&str>) -> Env {
        Env {
            listen_pid: Some(pid.into()),
            listen_fds: Some(fds.into()),
            listen_fdnames: names.map(Into::into),
        }
    }

    #[test]
    fn choose_follows_sd_listen_fds() {
        assert_eq!(choose(&Env::default(), 42).unwrap(), None);
        assert_eq!(choose(&env("41", "1", None), 42).unwrap(), None, "not ours");
        assert_eq!(choose(&env("42", "1", None), 42).unwrap(), Some((3, None)));
        assert_eq!(
            choose(&env("42", "1", Some("whatever")), 42).unwrap(),
            Some((3, Some("whatever".into())))
        );
        assert_eq!(
            choose(&env("42", "3", Some("metrics:api:other")), 42).unwrap(),
            Some((4, Some("api".into())))
        );
        assert!(matches!(
            choose(&env("42", "2", Some("a:b")), 42),
            Err(Error::Ambiguous { count: 2, .. })
        ));
        assert!(matches!(
            choose(&env("42", "2", None), 42),
            Err(Error::Ambiguous { .. })
        ));
        for bad in ["0", "-1", "x", "", "65"] {
            assert!(
                matches!(choose(&env("42", bad, None), 42), Err(Error::Count(_))),
                "{bad}"
            );
        }
    }
}
