//! The crate's only `unsafe` code: system calls that neither std nor rustix offers
//! safely. Each is one small function with its own SAFETY argument.
//!
//! - Taking ownership of a socket systemd passed us (`LISTEN_FDS`): the fd arrives as a
//!   number, and turning a number into an `OwnedFd` is inherently unsafe.
//! - Reading the peer's supplementary groups (`SO_PEERGROUPS`, Linux 4.13): `SO_PEERCRED`
//!   carries only the primary gid, but "members of the socket's group" are usually members
//!   through a supplementary group (`usermod -aG`). rustix has no wrapper for it, and
//!   `/proc/<pid>/status` is no substitute: it is racy (pid reuse) and hidden by
//!   `ProtectProc=invisible`, which the shipped unit sets.
//! - Reading the peer's credentials (`SO_PEERCRED`) from a plain descriptor: std's
//!   `peer_cred` is unstable, tokio's needs the stream registered with its poller (a
//!   refused connection never is), and rustix's `UCred` holds the pid as non-zero, while the
//!   kernel reports 0 for a peer whose pid is not visible in our pid namespace.
//! - Registering a socket with tokio's poller (`AsyncFd`, whose constructors are `unsafe`:
//!   the descriptor must stay open and the same while registered), for std's sockets only.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd as _, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};

use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

/// `NGROUPS_MAX` on Linux: no process has more supplementary groups.
const NGROUPS_MAX: usize = 65_536;

/// Takes ownership of the inherited descriptor `fd`.
///
/// Callers must pass each inherited descriptor at most once (`activation` guards this with
/// a process-wide flag), since two `OwnedFd`s for one descriptor would close it twice.
///
/// # Errors
/// `EBADF` when `fd` is not open, e.g. a `LISTEN_FDS` that promises more than was passed.
#[allow(unsafe_code)]
pub(super) fn adopt_inherited_fd(fd: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: fcntl(F_GETFD) only reads the descriptor table entry; it dereferences no
    // memory of ours and is sound for any integer (a closed fd yields EBADF).
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is open (checked above) and was handed to this process by its parent
    // (systemd), with LISTEN_PID naming us. Nothing else in the process refers to it: std
    // and tokio never touch descriptors they did not open, and `activation` adopts each
    // inherited descriptor exactly once. So this `OwnedFd` is its sole owner.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Sockets that own their descriptor for their whole life: std's fix it at construction and
/// close it only when dropped.
pub(super) trait OwnsFd: AsRawFd {}

impl OwnsFd for UnixStream {}
impl OwnsFd for UnixListener {}

/// `sock`, registered with the runtime's poller for `interest`.
///
/// # Errors
/// `epoll_ctl`'s (`ENOMEM`, `ENOSPC` past `max_user_watches`); `sock` is closed then.
#[allow(unsafe_code)]
pub(super) fn register<T: OwnsFd>(sock: T, interest: Interest) -> io::Result<AsyncFd<T>> {
    // SAFETY: an `OwnsFd` value's `as_raw_fd` is the same open descriptor for as long as
    // the value lives, and only dropping the value closes it. The `AsyncFd` owns the value
    // until it is dropped or `into_inner` gives it back, so the descriptor stays open and
    // unchanged for as long as it is registered.
    unsafe { AsyncFd::register_with_interest(sock, interest) }.map_err(io::Error::from)
}

/// The uid, gid and pid (0 when not visible in our pid namespace) of the process at the
/// other end of `sock`, as they were when it connected.
///
/// # Errors
/// `ENOTCONN` and the like, from the kernel.
#[allow(unsafe_code)]
pub(super) fn peer_cred(sock: BorrowedFd<'_>) -> io::Result<(u32, u32, i32)> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = libc::socklen_t::try_from(size_of::<libc::ucred>()).map_err(io::Error::other)?;
    // SAFETY: `cred` is a live, writable `ucred` of exactly `len` bytes, every bit pattern of
    // which is valid (three integers); the kernel writes at most `len` bytes into it.
    // `sock` is a borrowed, open fd.
    let rc = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&raw mut cred).cast(),
            &raw mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((cred.uid, cred.gid, cred.pid))
}

/// The supplementary groups of the process at the other end of `sock`, as they were when
/// it connected (the kernel records them at `connect`, like `SO_PEERCRED`).
///
/// # Errors
/// `ENOPROTOOPT` on kernels older than 4.13; the caller then uses the primary gid alone.
#[allow(unsafe_code)]
pub(super) fn peer_groups(sock: BorrowedFd<'_>) -> io::Result<Vec<u32>> {
    let mut groups: Vec<libc::gid_t> = vec![0; 32];
    loop {
        let capacity = groups.len() * size_of::<libc::gid_t>();
        let mut len = libc::socklen_t::try_from(capacity).map_err(io::Error::other)?;
        // SAFETY: `groups` is a live, writable buffer of exactly `len` bytes and `len` is a
        // valid socklen_t; the kernel writes at most `len` bytes into the buffer and stores
        // the size it used (or needed, with ERANGE) in `len`. `sock` is a borrowed, open fd.
        let rc = unsafe {
            libc::getsockopt(
                sock.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_PEERGROUPS,
                groups.as_mut_ptr().cast(),
                &raw mut len,
            )
        };
        let needed = usize::try_from(len).unwrap_or(usize::MAX) / size_of::<libc::gid_t>();
        if rc == 0 {
            groups.truncate(needed.min(groups.len()));
            return Ok(groups);
        }
        let err = io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::ERANGE) && needed > groups.len() {
            groups.resize(needed.min(NGROUPS_MAX), 0);
            continue;
        }
        return Err(err);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd as _;

    #[test]
    fn closed_fd_is_refused() {
        // Far above anything a test process opens.
        let err = adopt_inherited_fd(1_000_000).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EBADF));
    }

    #[test]
    fn peer_cred_of_a_socketpair_is_ours() {
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        let (uid, gid, pid) = peer_cred(a.as_fd()).unwrap();
        assert_eq!(uid, rustix::process::getuid().as_raw());
        assert_eq!(gid, rustix::process::getgid().as_raw());
        assert_eq!(pid, rustix::process::getpid().as_raw_nonzero().get());
    }

    #[test]
    fn peer_groups_of_a_socketpair_are_ours() {
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        let groups = peer_groups(a.as_fd()).unwrap();
        let mine: Vec<u32> = rustix::process::getgroups()
            .unwrap()
            .into_iter()
            .map(|g| g.as_raw())
            .collect();
        let mut got = groups.clone();
        let mut want = mine.clone();
        got.sort_unstable();
        want.sort_unstable();
        assert_eq!(got, want);
    }
}
