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
            .open(&tmp)?;
        f.write_all(contents)?;
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::fchown(&f, Some(uid), Some(gid))?;
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
        if !rustix::process::geteuid().is_root() {
            return; // only root can give files away
        }
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
    fn foreign_bits() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        fs::write(&p, b"x").unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o640)).unwrap();
        assert_eq!(foreign_access_bits(&p).unwrap(), 0o040);
    }
}
