//! One rule for every secret and state file, the same in `run` and `check`.
//!
//! Modelled on OpenSSH's `StrictModes`: a secret is only trusted when nobody but its owner
//! (us, or root) can read or replace it. That takes more than the file's own mode: whoever
//! can write to a directory on the way can rename the file away and put their own in its
//! place. So the file must be owner-only and owned by a trusted uid, and it and every
//! directory above it must not be writable by group or others, except a sticky directory
//! owned by root (like `/tmp`), where nobody can remove what others own. The last component
//! must not be a symlink: files are opened with `O_NOFOLLOW`, and a symlink is refused with a
//! message rather than failing as an obscure `ELOOP`.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read as _};
use std::os::unix::fs::{MetadataExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

/// The sticky bit (`S_ISVTX`).
const STICKY: u32 = 0o1000;

/// Why a secret file is not trusted. Each message names the path and the fix.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{what} {} is a symbolic link; the agent does not follow links to secrets: replace it with the file itself", path.display())]
    Symlink { what: &'static str, path: PathBuf },
    #[error("{what} {} is not a regular file", path.display())]
    NotFile { what: &'static str, path: PathBuf },
    #[error("{what} {} is readable or writable by others (mode {mode:04o}); fix it with: chmod 600 {}", path.display(), path.display())]
    Mode {
        what: &'static str,
        path: PathBuf,
        mode: u32,
    },
    #[error("{what} {} belongs to uid {uid}, which is neither this user nor root; fix it with: chown {} {}", path.display(), owner_hint(.trusted), path.display())]
    Owner {
        what: &'static str,
        path: PathBuf,
        uid: u32,
        trusted: Vec<u32>,
    },
    #[error("{what} {} is in directory {}, which others can write (mode {mode:04o}) and so could replace it; fix it with: chmod go-w {}", path.display(), dir.display(), dir.display())]
    OpenDir {
        what: &'static str,
        path: PathBuf,
        dir: PathBuf,
        mode: u32,
    },
    #[error("{what} {} is in directory {}, which belongs to uid {uid}, neither this user nor root, and so could replace it; fix it with: chown {} {}", path.display(), dir.display(), owner_hint(.trusted), dir.display())]
    DirOwner {
        what: &'static str,
        path: PathBuf,
        dir: PathBuf,
        uid: u32,
        trusted: Vec<u32>,
    },
    #[error("{what} {} can be changed by group or others (mode {mode:04o}); fix it with: chmod go-w {}", path.display(), path.display())]
    Writable {
        what: &'static str,
        path: PathBuf,
        mode: u32,
    },
    #[error("{what} {} goes through too many symbolic links, or a component that is not a directory", path.display())]
    BadPath { what: &'static str, path: PathBuf },
    #[error("could not inspect {what} {}", path.display())]
    Inspect {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// The uids a secret and its directories may belong to.
#[derive(Debug, Clone)]
pub struct Trust {
    uids: Vec<u32>,
}

// === impl Trust ===

impl Trust {
    /// This process's effective uid and root.
    pub fn process() -> Self {
        let euid = rustix::process::geteuid().as_raw();
        Self {
            uids: vec![euid, 0],
        }
    }

    /// Also trusts `uid` (`check` run as root, looking at the service user's files).
    #[must_use]
    pub fn and(mut self, uid: u32) -> Self {
        if !self.uids.contains(&uid) {
            self.uids.push(uid);
        }
        self
    }

    fn allows(&self, uid: u32) -> bool {
        self.uids.contains(&uid)
    }
}

// === impl Error ===

impl Error {
    /// Whether the file simply does not exist (not a refusal).
    pub fn is_not_found(&self) -> bool {
        matches!(self, Error::Inspect { source, .. } if source.kind() == io::ErrorKind::NotFound)
    }

    /// What the file is, as named in messages (`"token cache"`).
    pub fn what(&self) -> &'static str {
        match self {
            Error::Symlink { what, .. }
            | Error::NotFile { what, .. }
            | Error::Mode { what, .. }
            | Error::Owner { what, .. }
            | Error::OpenDir { what, .. }
            | Error::DirOwner { what, .. }
            | Error::Writable { what, .. }
            | Error::BadPath { what, .. }
            | Error::Inspect { what, .. } => what,
        }
    }

    /// Whether the file itself is refused (a link, not a regular file, its mode or owner),
    /// rather than a directory on its way: a file that only saves work can then be discarded
    /// and written again, safely, in the same place.
    pub fn is_about_the_file(&self) -> bool {
        matches!(
            self,
            Error::Symlink { .. }
                | Error::NotFile { .. }
                | Error::Mode { .. }
                | Error::Owner { .. }
                | Error::Writable { .. }
        )
    }
}

/// Checks `path` (a secret or state file called `what` in messages) and every directory
/// above it. A missing file is fine here (`Ok(false)`): its directories are still checked,
/// since the agent will create it there.
///
/// # Errors
/// The first rule broken; see [`Error`].
pub fn check(what: &'static str, path: &Path, trust: &Trust) -> Result<bool, Error> {
    let exists = match fs::symlink_metadata(path) {
        Ok(meta) => {
            check_file(what, path, &meta, trust)?;
            true
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => false,
        Err(source) => {
            return Err(Error::Inspect {
                what,
                path: path.to_owned(),
                source,
            });
        }
    };
    check_dirs(what, path, trust)?;
    Ok(exists)
}

/// Opens `path` for reading without following a symlink in its last component.
///
/// # Errors
/// The `open` error; `ELOOP` when it is a symlink.
pub fn open_nofollow(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
}

/// Checks `path` as [`check`] does, then reads it through an `O_NOFOLLOW` descriptor whose
/// own metadata is checked again (the file cannot be swapped between check and read).
///
/// # Errors
/// [`Error::Inspect`] with `NotFound` when it does not exist; any broken rule.
pub fn read(what: &'static str, path: &Path, trust: &Trust) -> Result<Zeroizing<Vec<u8>>, Error> {
    let inspect = |source| Error::Inspect {
        what,
        path: path.to_owned(),
        source,
    };
    if !check(what, path, trust)? {
        return Err(inspect(io::Error::from(io::ErrorKind::NotFound)));
    }
    let mut file = match open_nofollow(path) {
        Ok(f) => f,
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            return Err(Error::Symlink {
                what,
                path: path.to_owned(),
            });
        }
        Err(e) => return Err(inspect(e)),
    };
    let meta = file.metadata().map_err(inspect)?;
    check_file(what, path, &meta, trust)?;
    let mut buf = Zeroizing::new(Vec::new());
    file.read_to_end(&mut buf).map_err(inspect)?;
    Ok(buf)
}

fn check_file(
    what: &'static str,
    path: &Path,
    meta: &fs::Metadata,
    trust: &Trust,
) -> Result<(), Error> {
    let path = path.to_owned();
    if meta.file_type().is_symlink() {
        return Err(Error::Symlink { what, path });
    }
    if !meta.is_file() {
        return Err(Error::NotFile { what, path });
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(Error::Mode { what, path, mode });
    }
    if !trust.allows(meta.uid()) {
        return Err(Error::Owner {
            what,
            path,
            uid: meta.uid(),
            trusted: trust.uids.clone(),
        });
    }
    Ok(())
}

/// Every directory on the way to the file, as the kernel would walk it: each directory
/// the path passes through, including each one holding a symlink on the path and each
/// one a symlink leads through, must pass the rule. (Judging only where the path leads
/// let the owner of a directory holding a symlink re-point it.) Directories that do not
/// exist yet are not judged; the existing ones above them are.
fn check_dirs(what: &'static str, path: &Path, trust: &Trust) -> Result<(), Error> {
    walk_dirs(&parent_of(path), &mut |step| match step {
        Step::Dir(dir, meta) => dir_rule(what, path, dir, meta, trust),
        Step::Link(..) => Ok(()),
    })
    .map_err(|e| e.into_error(what, path))
    .map(drop)
}

/// The directory holding `path` (`.` for a bare name).
fn parent_of(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    }
}

/// The rule for a directory above a secret or a config file: owned by a trusted uid, and
/// not writable by group or others unless sticky and owned by root (`/tmp`).
fn dir_rule(
    what: &'static str,
    path: &Path,
    dir: &Path,
    meta: &fs::Metadata,
    trust: &Trust,
) -> Result<(), Error> {
    let mode = meta.mode() & 0o7777;
    let shared_sticky = mode & STICKY != 0 && meta.uid() == 0;
    if mode & 0o022 != 0 && !shared_sticky {
        return Err(Error::OpenDir {
            what,
            path: path.to_owned(),
            dir: dir.to_owned(),
            mode,
        });
    }
    if !trust.allows(meta.uid()) {
        return Err(Error::DirOwner {
            what,
            path: path.to_owned(),
            dir: dir.to_owned(),
            uid: meta.uid(),
            trusted: trust.uids.clone(),
        });
    }
    Ok(())
}

/// What [`walk_dirs`] shows its judge.
#[derive(Debug)]
pub enum Step<'a> {
    /// A directory the walk enters (`/` first), with its metadata.
    Dir(&'a Path, &'a fs::Metadata),
    /// A symbolic link the walk is about to follow: the directory holding it (entered, and
    /// so already shown as a [`Step::Dir`]) and that directory's metadata.
    Link(&'a Path, &'a fs::Metadata),
}

/// Where [`walk_dirs`] ended.
#[derive(Debug, PartialEq, Eq)]
pub struct Walked {
    /// The directory reached, every symlink on the way resolved.
    pub resolved: PathBuf,
    /// The components from the first one that does not exist on (empty when it all does).
    pub missing: PathBuf,
}

/// Why [`walk_dirs`] stopped.
#[derive(Debug)]
pub enum WalkError<E> {
    /// The judge refused a step.
    Refused(E),
    /// A component is not a directory, or there are too many links (`ELOOP`).
    BadPath(PathBuf),
    /// A component could not be inspected.
    Inspect(PathBuf, io::Error),
}

impl WalkError<Error> {
    fn into_error(self, what: &'static str, path: &Path) -> Error {
        match self {
            WalkError::Refused(e) => e,
            WalkError::BadPath(_) => Error::BadPath {
                what,
                path: path.to_owned(),
            },
            WalkError::Inspect(at, source) => Error::Inspect {
                what,
                path: at,
                source,
            },
        }
    }
}

/// Most symbolic links followed on one path (the kernel's limit).
const MAX_LINKS: usize = 40;

/// Walks the directory `dir` from `/` one component at a time, following symbolic links as
/// the kernel does, and shows `judge` every directory it enters and every link it follows
/// (with the directory holding it), so a rule can hold for the whole way and not only for
/// where it leads. A relative `dir` starts from the working directory. The walk stops at
/// the first component that does not exist.
///
/// Run again before each use of the path (the sinks do), it also holds at use time: a
/// directory that passed cannot be changed by anyone the rule does not trust.
///
/// # Errors
/// The judge's refusal; a component that is a file; too many links; an `lstat` error.
pub fn walk_dirs<E>(
    dir: &Path,
    judge: &mut dyn FnMut(Step<'_>) -> Result<(), E>,
) -> Result<Walked, WalkError<E>> {
    use std::collections::VecDeque;
    use std::ffi::OsString;
    use std::path::Component;
    let start = if dir.is_absolute() {
        dir.to_owned()
    } else {
        std::env::current_dir()
            .map_err(|e| WalkError::Inspect(dir.to_owned(), e))?
            .join(dir)
    };
    let names = |p: &Path| -> Vec<OsString> {
        p.components()
            .filter_map(|c| match c {
                Component::Normal(n) => Some(n.to_owned()),
                Component::ParentDir => Some(OsString::from("..")),
                Component::RootDir | Component::CurDir | Component::Prefix(_) => None,
            })
            .collect()
    };
    let lstat = |p: &Path| fs::symlink_metadata(p).map_err(|e| WalkError::Inspect(p.to_owned(), e));
    let mut queue: VecDeque<OsString> = names(&start).into();
    let mut cur = PathBuf::from("/");
    let mut meta = lstat(&cur)?;
    judge(Step::Dir(&cur, &meta)).map_err(WalkError::Refused)?;
    let mut links = 0;
    while let Some(name) = queue.pop_front() {
        if name == ".." {
            // Every directory above `cur` was entered on the way down, and judged.
            cur.pop();
            meta = lstat(&cur)?;
            continue;
        }
        let next = cur.join(&name);
        let m = match fs::symlink_metadata(&next) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let missing = std::iter::once(name).chain(queue).collect();
                return Ok(Walked {
                    resolved: cur,
                    missing,
                });
            }
            Err(e) => return Err(WalkError::Inspect(next, e)),
        };
        if m.file_type().is_symlink() {
            links += 1;
            if links > MAX_LINKS {
                return Err(WalkError::BadPath(next));
            }
            judge(Step::Link(&cur, &meta)).map_err(WalkError::Refused)?;
            let target = fs::read_link(&next).map_err(|e| WalkError::Inspect(next.clone(), e))?;
            if target.is_absolute() {
                cur = PathBuf::from("/");
                meta = lstat(&cur)?;
            }
            for n in names(&target).into_iter().rev() {
                queue.push_front(n);
            }
            continue;
        }
        if !m.is_dir() {
            return Err(WalkError::BadPath(next));
        }
        judge(Step::Dir(&next, &m)).map_err(WalkError::Refused)?;
        cur = next;
        meta = m;
    }
    Ok(Walked {
        resolved: cur,
        missing: PathBuf::new(),
    })
}

/// Checks a file others may read but must not change (a configuration file): it and every
/// directory on its way are owned by root or a trusted uid and not writable by group or
/// others (a sticky directory owned by root excepted); a symlink to it is followed only
/// through directories that pass the same rule. Group-writable is refused even when the
/// group is the agent's own: whoever can change the file can give itself an identity.
///
/// # Errors
/// The first rule broken; [`Error::Inspect`] with `NotFound` when it does not exist.
pub fn check_unchangeable(what: &'static str, path: &Path, trust: &Trust) -> Result<(), Error> {
    let mut at = path.to_owned();
    for _ in 0..MAX_LINKS {
        let walked = walk_dirs(&parent_of(&at), &mut |step| match step {
            Step::Dir(dir, meta) => dir_rule(what, path, dir, meta, trust),
            Step::Link(..) => Ok(()),
        })
        .map_err(|e| e.into_error(what, path))?;
        let Some(name) = at.file_name() else {
            return Err(Error::NotFile {
                what,
                path: path.to_owned(),
            });
        };
        let real = walked.resolved.join(walked.missing).join(name);
        let meta = fs::symlink_metadata(&real).map_err(|source| Error::Inspect {
            what,
            path: path.to_owned(),
            source,
        })?;
        if meta.file_type().is_symlink() {
            // Held by a directory that passed: follow it, and judge where it leads.
            let target = fs::read_link(&real).map_err(|source| Error::Inspect {
                what,
                path: real.clone(),
                source,
            })?;
            at = real.parent().unwrap_or(Path::new("/")).join(target);
            continue;
        }
        if !meta.is_file() {
            return Err(Error::NotFile {
                what,
                path: path.to_owned(),
            });
        }
        let mode = meta.mode() & 0o7777;
        if mode & 0o022 != 0 {
            return Err(Error::Writable {
                what,
                path: real,
                mode,
            });
        }
        if !trust.allows(meta.uid()) {
            return Err(Error::Owner {
                what,
                path: real,
                uid: meta.uid(),
                trusted: trust.uids.clone(),
            });
        }
        return Ok(());
    }
    Err(Error::BadPath {
        what,
        path: path.to_owned(),
    })
}

/// Opens `path` for reading (a PID file: the agent signals the process it names) without
/// following a symlink in its last component, and following one elsewhere on the path only
/// when the directory holding it passes the directory rule: owned by a trusted uid and not
/// writable by group or others (a sticky directory owned by root excepted). The PID file's
/// own directory may belong to the application that writes it; a link on the way that its
/// owner could re-point would let them choose the process instead. Opened non-blocking, so
/// a FIFO put in its place cannot stall the caller.
///
/// # Errors
/// [`Error::OpenDir`] / [`Error::DirOwner`] naming the directory that holds the link;
/// [`Error::Symlink`]; [`Error::Inspect`] with the `open` error.
pub fn open_through_trusted_links(
    what: &'static str,
    path: &Path,
    trust: &Trust,
) -> Result<File, Error> {
    let walked = walk_dirs(&parent_of(path), &mut |step| match step {
        Step::Dir(..) => Ok(()),
        Step::Link(dir, meta) => dir_rule(what, path, dir, meta, trust),
    })
    .map_err(|e| e.into_error(what, path))?;
    let inspect = |source| Error::Inspect {
        what,
        path: path.to_owned(),
        source,
    };
    let Some(name) = path.file_name() else {
        return Err(Error::NotFile {
            what,
            path: path.to_owned(),
        });
    };
    if !walked.missing.as_os_str().is_empty() {
        return Err(inspect(io::Error::from(io::ErrorKind::NotFound)));
    }
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
        .open(walked.resolved.join(name))
        .map_err(|e| {
            if e.raw_os_error() == Some(libc::ELOOP) {
                Error::Symlink {
                    what,
                    path: path.to_owned(),
                }
            } else {
                inspect(e)
            }
        })
}

fn owner_hint(trusted: &[u32]) -> String {
    trusted
        .first()
        .map_or_else(|| "0".to_owned(), u32::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    fn chmod(p: &Path, mode: u32) {
        fs::set_permissions(p, fs::Permissions::from_mode(mode)).unwrap();
    }

    fn secret(dir: &Path) -> PathBuf {
        let p = dir.join("secret");
        crate::fsutil::write_secret_atomic(&p, b"s3cret").unwrap();
        p
    }

    #[test]
    fn owner_only_file_in_private_dir_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let p = secret(dir.path());
        assert_eq!(&*read("secret", &p, &Trust::process()).unwrap(), b"s3cret");
        assert!(check("secret", &p, &Trust::process()).unwrap());
        assert!(!check("secret", &dir.path().join("absent"), &Trust::process()).unwrap());
    }

    #[test]
    fn group_or_world_access_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = secret(dir.path());
        for mode in [0o644, 0o640, 0o604, 0o620, 0o660] {
            chmod(&p, mode);
            let err = read("secret", &p, &Trust::process()).unwrap_err();
            assert!(matches!(err, Error::Mode { .. }), "{mode:o}: {err}");
            assert!(err.to_string().contains("chmod 600"), "{err}");
        }
    }

    #[test]
    fn a_directory_others_can_write_is_refused_at_any_depth() {
        let top = tempfile::tempdir().unwrap();
        let inner = top.path().join("a/b");
        fs::create_dir_all(&inner).unwrap();
        let p = secret(&inner);
        for dir in [inner.clone(), top.path().join("a"), top.path().to_owned()] {
            for mode in [0o777, 0o775, 0o757] {
                chmod(&dir, mode);
                let err = read("secret", &p, &Trust::process()).unwrap_err();
                assert!(
                    matches!(&err, Error::OpenDir { dir: d, .. } if fs::canonicalize(&dir).unwrap() == *d),
                    "{}: {mode:o}: {err}",
                    dir.display()
                );
                assert!(err.to_string().contains("chmod go-w"), "{err}");
                // A missing file in that directory is refused too: it would be created there.
                assert!(check("secret", &dir.join("new"), &Trust::process()).is_err());
            }
            chmod(&dir, 0o700);
        }
        // Sticky and owned by us (not root): refused; /tmp itself (sticky, root) is fine.
        chmod(&inner, 0o1777);
        if !rustix::process::geteuid().is_root() {
            assert!(read("secret", &p, &Trust::process()).is_err());
        }
        chmod(&inner, 0o700);
        assert!(read("secret", &p, &Trust::process()).is_ok());
    }

    #[test]
    fn a_symlink_is_refused_and_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let target = secret(dir.path());
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let err = read("secret", &link, &Trust::process()).unwrap_err();
        assert!(matches!(err, Error::Symlink { .. }), "{err}");
        assert!(err.to_string().contains("symbolic link"), "{err}");
        assert!(open_nofollow(&link).is_err());
    }

    #[test]
    fn a_foreign_owner_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = secret(dir.path());
        let me = rustix::process::geteuid().as_raw();
        // Trust neither us nor root: our own file is then foreign.
        let nobody = Trust {
            uids: vec![u32::MAX - 1],
        };
        let err = read("secret", &p, &nobody).unwrap_err();
        assert!(
            matches!(err, Error::Owner { uid, .. } if uid == me),
            "{err}"
        );
    }
}
