//! The crate's only `unsafe` code: two system calls that neither std nor rustix offers
//! safely. Each is one small function with its own SAFETY argument.
//!
//! - Taking ownership of a socket systemd passed us (`LISTEN_FDS`): the fd arrives as a
//!   number, and turning a number into an `OwnedFd` is inherently unsafe.
//! - Reading the peer's supplementary groups (`SO_PEERGROUPS`, Linux 4.13): `SO_PEERCRED`
//!   carries only the primary gid, but "members of the socket's group" are usually members
//!   through a supplementary group (`usermod -aG`). rustix has no wrapper for it, and
//!   `/proc/<pid>/status` is no substitute: it is racy (pid reuse) and hidden by
//!   `ProtectProc=invisible`, which the shipped unit sets.

use std::io;
use std::os::fd::{AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd, RawFd};

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
