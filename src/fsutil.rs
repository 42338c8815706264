//! Files that hold secrets: atomic 0600 writes and permission checks.
//!
//! A secret file is written to a temporary file in the same directory (created 0600, never
//! wider), fsynced, renamed over the target, and then the directory is fsynced so the rename
//! itself survives a power cut. A reader therefore sees the old file or the new one, never a
//! torn mix, which matters most for a rotated refresh token: losing it bricks the device.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// A failed secret-file operation, naming the file and the step.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("could not create directory {}", path.display())]
    CreateDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("could not write temporary file {}", path.display())]
    WriteTemp {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("could not rename {} into place", path.display())]
    Rename {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("could not remove {}", path.display())]
    Remove {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("could not sync directory {}", path.display())]
    SyncDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{} has no parent directory", path.display())]
    NoParent { path: PathBuf },
}

/// Writes `contents` to `path` atomically with mode 0600.
///
/// # Errors
/// Any failing step (temp file, fsync, rename, directory fsync) is returned with the path.
pub fn write_secret_atomic(path: &Path, contents: &[u8]) -> Result<(), Error> {
    write_secret_atomic_as(path, contents, None)
}

/// As [`write_secret_atomic`], and when `owner` (uid, gid) is given the file belongs to
/// them before it appears under its name (root writing a file the service user must read).
///
/// # Errors
/// As [`write_secret_atomic`].
pub fn write_secret_atomic_as(
    path: &Path,
    contents: &[u8],
    owner: Option<(u32, u32)>,
) -> Result<(), Error> {
    let (uid, gid) = owner.unzip();
    write_atomic(path, contents, 0o600, uid, gid)
}

/// Writes `contents` to `path` atomically: a temporary file created 0600, given `uid` and
/// `gid` (each left alone when `None`) and then `mode`, fsynced, renamed over `path`, and
/// the directory fsynced. The temporary file is created with `O_EXCL` and the rename
/// replaces a symlink rather than following it, so no link is ever written through.
///
/// # Errors
/// As [`write_secret_atomic`].
pub fn write_atomic(
    path: &Path,
    contents: &[u8],
    mode: u32,
    uid: Option<u32>,
    gid: Option<u32>,
) -> Result<(), Error> {
    let dir = parent_dir(path)?;
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{file_name}.tmp-{}", std::process::id()));
    let write = || -> io::Result<()> {
        // A leftover temp file from a crash is ours to replace.
        let _ = fs::remove_file(&tmp);
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_CLOEXEC)
            .open(&tmp)?;
        f.write_all(contents)?;
        if uid.is_some() || gid.is_some() {
            std::os::unix::fs::fchown(&f, uid, gid)?;
        }
        if mode != 0o600 {
            f.set_permissions(fs::Permissions::from_mode(mode))?;
        }
        f.sync_all()
    };
    if let Err(source) = write() {
        let _ = fs::remove_file(&tmp);
        return Err(Error::WriteTemp { path: tmp, source });
    }
    if let Err(source) = fs::rename(&tmp, path) {
        let _ = fs::remove_file(&tmp);
        return Err(Error::Rename {
            path: path.to_owned(),
            source,
        });
    }
    sync_dir(&dir)
}

/// Removes `path` (not following a symlink) and fsyncs its directory. A missing file is
/// not an error. Returns whether a file was removed.
///
/// # Errors
/// [`Error::Remove`]; [`Error::SyncDir`].
pub fn remove_synced(path: &Path) -> Result<bool, Error> {
    match fs::remove_file(path) {
        Ok(()) => {
            sync_dir(&parent_dir(path)?)?;
            Ok(true)
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(source) => Err(Error::Remove {
            path: path.to_owned(),
            source,
        }),
    }
}

/// Creates `path` with `contents` (0600) only if it does not exist, so that a crash at any
/// moment leaves either no file or the whole file, and never a copy under another name:
/// the data goes into an unnamed `O_TMPFILE` in the directory, which is given its final
/// name in one `linkat` once complete. For key material, which must not linger in a
/// temporary file after a kill. Where the filesystem or `/proc` do not allow that, it falls
/// back to [`write_secret_atomic`] (whose leftovers [`remove_stale_temps`] clears).
///
/// # Errors
/// As [`write_secret_atomic`]; an existing `path` is [`Error::Rename`] with `AlreadyExists`.
pub fn create_secret(path: &Path, contents: &[u8]) -> Result<(), Error> {
    let dir = parent_dir(path)?;
    let unnamed = OpenOptions::new()
        .write(true)
        .mode(0o600)
        .custom_flags(libc::O_TMPFILE | libc::O_CLOEXEC)
        .open(&dir);
    let mut f = match unnamed {
        Ok(f) => f,
        // No O_TMPFILE here (old kernel, some filesystems): the named-temp way.
        Err(_) => return write_secret_atomic(path, contents),
    };
    let write = |f: &mut File| -> io::Result<()> {
        f.write_all(contents)?;
        f.sync_all()
    };
    write(&mut f).map_err(|source| Error::WriteTemp {
        path: dir.clone(),
        source,
    })?;
    let fd = std::os::fd::AsRawFd::as_raw_fd(&f);
    let linked = rustix::fs::linkat(
        rustix::fs::CWD,
        format!("/proc/self/fd/{fd}"),
        rustix::fs::CWD,
        path,
        rustix::fs::AtFlags::SYMLINK_FOLLOW,
    );
    match linked {
        Ok(()) => sync_dir(&dir),
        Err(e) if e == rustix::io::Errno::EXIST => Err(Error::Rename {
            path: path.to_owned(),
            source: io::Error::from(io::ErrorKind::AlreadyExists),
        }),
        // No /proc: the unnamed file is dropped (nothing on disk) and the named way used.
        Err(_) => write_secret_atomic(path, contents),
    }
}

/// Removes what a killed writer left in `dir`: temporary files of this agent's pattern
/// (`.<name>.tmp-<pid>`) whose process is gone. Returns what was removed. Never fails:
/// an unreadable directory simply has nothing removed.
///
/// Only names the agent could have made are touched: regular files (not links) that
/// belong to this process's user, in a directory that belongs to it too and that nobody
/// else can write. In a directory others share (a sink's, possibly sticky and
/// world-writable) use [`remove_stale_temps_of`], which touches only one file's own
/// temporaries.
pub fn remove_stale_temps(dir: &Path) -> Vec<PathBuf> {
    use std::os::unix::fs::MetadataExt as _;
    let euid = rustix::process::geteuid().as_raw();
    let private = fs::symlink_metadata(dir)
        .is_ok_and(|m| m.is_dir() && m.uid() == euid && m.mode() & 0o022 == 0);
    if !private {
        return Vec::new();
    }
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut removed = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if let Some(pid) = temp_pid(&name)
            && let Some(path) = stale_temp(&entry.path(), pid, euid)
        {
            removed.push(path);
        }
    }
    removed
}

/// Removes the temporaries a killed writer of `file` left beside it: exactly
/// `.<file name>.tmp-<pid>` with `pid` gone, a regular file this process's user owns. Safe
/// in a directory other users share: nothing else there is touched.
pub fn remove_stale_temps_of(file: &Path) -> Vec<PathBuf> {
    let euid = rustix::process::geteuid().as_raw();
    let (Ok(dir), Some(own)) = (parent_dir(file), file.file_name()) else {
        return Vec::new();
    };
    let own = own.to_string_lossy();
    let Ok(entries) = fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut removed = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let Some(pid) = temp_pid(&name) else {
            continue;
        };
        if name
            .strip_prefix('.')
            .and_then(|r| r.rsplit_once(".tmp-"))
            .map(|(b, _)| b)
            != Some(own.as_ref())
        {
            continue;
        }
        if let Some(path) = stale_temp(&entry.path(), pid, euid) {
            removed.push(path);
        }
    }
    removed
}

/// Removes `path`, a temporary named for `pid`, when that process is gone and the file is
/// a regular file `euid` owns; returns it when removed.
fn stale_temp(path: &Path, pid: u32, euid: u32) -> Option<PathBuf> {
    use std::os::unix::fs::MetadataExt as _;
    if pid == std::process::id() || Path::new(&format!("/proc/{pid}")).exists() {
        return None;
    }
    let ours = fs::symlink_metadata(path).is_ok_and(|m| m.is_file() && m.uid() == euid);
    (ours && fs::remove_file(path).is_ok()).then(|| path.to_owned())
}

/// The pid in a temporary file name `.<name>.tmp-<pid>`, if `name` is one.
fn temp_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix('.')?;
    let (base, pid) = rest.rsplit_once(".tmp-")?;
    if base.is_empty() || pid.is_empty() || !pid.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    pid.parse().ok()
}

/// Creates `dir` (and parents) with `mode` if it does not exist. An existing directory is
/// left as it is: its owner chose its mode.
///
/// # Errors
/// [`Error::CreateDir`] when the directory cannot be created.
pub fn ensure_dir(dir: &Path, mode: u32) -> Result<(), Error> {
    if dir.is_dir() {
        return Ok(());
    }
    fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(dir)
        .map_err(|source| Error::CreateDir {
            path: dir.to_owned(),
            source,
        })
}

/// The permission bits of `path` that let anyone but the owner read or write it.
///
/// # Errors
/// The `stat` error, if the file cannot be inspected.
pub fn foreign_access_bits(path: &Path) -> io::Result<u32> {
    Ok(fs::metadata(path)?.permissions().mode() & 0o077)
}

fn parent_dir(path: &Path) -> Result<PathBuf, Error> {
    match path.parent() {
        Some(p) if p.as_os_str().is_empty() => Ok(PathBuf::from(".")),
        Some(p) => Ok(p.to_owned()),
        None => Err(Error::NoParent {
            path: path.to_owned(),
        }),
    }
}

fn sync_dir(dir: &Path) -> Result<(), Error> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|source| Error::SyncDir {
            path: dir.to_owned(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_0600_and_replaces() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("secret");
        write_secret_atomic(&p, b"one").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"one");
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        write_secret_atomic(&p, b"two").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        // No temp file left behind.
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn missing_dir_is_an_error_naming_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("nope/secret");
        let err = write_secret_atomic(&p, b"x").unwrap_err();
        assert!(err.to_string().contains("nope"), "{err}");
    }

    #[test]
    fn owner_is_set_before_the_file_appears() {
        testkit::require!(
            testkit::ROOT,
            testkit::is_root(),
            "root, to give a file away: run the tests as root"
        );
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("secret");
        write_secret_atomic_as(&p, b"x", Some((4242, 4343))).unwrap();
        let meta = fs::metadata(&p).unwrap();
        assert_eq!(
            (
                std::os::unix::fs::MetadataExt::uid(&meta),
                std::os::unix::fs::MetadataExt::gid(&meta)
            ),
            (4242, 4343)
        );
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    }

    #[test]
    fn create_secret_leaves_no_named_temporary_and_never_overwrites() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("key.pem");
        create_secret(&p, b"key").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"key");
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
        assert!(create_secret(&p, b"other").is_err());
        assert_eq!(fs::read(&p).unwrap(), b"key");
    }

    #[test]
    fn stale_temporaries_of_dead_processes_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let dead = dir.path().join(".device-key.pem.tmp-4294967");
        let mine = dir
            .path()
            .join(format!(".refresh-token.tmp-{}", std::process::id()));
        let other = dir.path().join("notes.tmp-1");
        for p in [&dead, &mine, &other] {
            fs::write(p, b"x").unwrap();
        }
        assert_eq!(remove_stale_temps(dir.path()), vec![dead.clone()]);
        assert!(!dead.exists() && mine.exists() && other.exists());
        assert_eq!(temp_pid(".a.tmp-12"), Some(12));
        for name in [".tmp-12", ".a.tmp-", ".a.tmp-1x", "a.tmp-12"] {
            assert_eq!(temp_pid(name), None, "{name}");
        }
    }

    /// In a sticky world-writable directory (where a sink may live) the sweep touches
    /// only the sink file's own temporaries, never another user's look-alike.
    #[test]
    fn the_sweep_leaves_other_users_files_in_a_shared_directory() {
        // Without root, the part about another user's files is skipped.
        let root = testkit::available(
            testkit::ROOT,
            testkit::is_root(),
            "root, to plant another user's file: run the tests as root",
        )
        .is_some();
        let dir = tempfile::tempdir().unwrap();
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o1777)).unwrap();
        let notes = dir.path().join(".alice-notes.tmp-999998");
        let alike = dir.path().join(".token.jwt.tmp-999997");
        let ours = dir.path().join(".token.jwt.tmp-999996");
        let unrelated = dir.path().join(".other.tmp-999995");
        for p in [&notes, &alike, &ours, &unrelated] {
            fs::write(p, b"x").unwrap();
        }
        if root {
            // Another user's files, one of them under the sink's own temporary name.
            std::os::unix::fs::chown(&notes, Some(1001), Some(1001)).unwrap();
            std::os::unix::fs::chown(&alike, Some(1001), Some(1001)).unwrap();
        }
        // A directory others can write gets no pattern sweep at all.
        assert_eq!(remove_stale_temps(dir.path()), Vec::<PathBuf>::new());
        assert!(notes.exists() && unrelated.exists());
        // The sink's sweep: only its own file's temporaries that belong to us.
        let removed = remove_stale_temps_of(&dir.path().join("token.jwt"));
        assert!(removed.contains(&ours), "{removed:?}");
        assert!(!ours.exists());
        assert!(notes.exists(), "another user's file was removed");
        assert!(unrelated.exists(), "an unrelated file was removed");
        if root {
            assert!(alike.exists(), "another user's look-alike was removed");
        }
    }

    #[test]
    fn foreign_bits() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        fs::write(&p, b"x").unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o640)).unwrap();
        assert_eq!(foreign_access_bits(&p).unwrap(), 0o040);
    }
}
