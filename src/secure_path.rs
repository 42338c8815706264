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

/// Every existing directory from the file's parent up to `/`, resolved (a symlinked
/// directory such as `/var/run` is judged by where it leads).
fn check_dirs(what: &'static str, path: &Path, trust: &Trust) -> Result<(), Error> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    };
    let Some(existing) = parent.ancestors().find(|a| a.exists()) else {
        return Ok(());
    };
    let real = fs::canonicalize(existing).map_err(|source| Error::Inspect {
        what,
        path: existing.to_owned(),
        source,
    })?;
    for dir in real.ancestors() {
        let meta = fs::metadata(dir).map_err(|source| Error::Inspect {
            what,
            path: dir.to_owned(),
            source,
        })?;
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
    }
    Ok(())
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
