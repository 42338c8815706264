//! Where a sink may write: the rule `run` applies at start and `check` reports.
//!
//! A token file is meant to be read by others (its group), so it is not held to
//! [`secure_path`](crate::secure_path)'s owner-only rule. What must not happen is the agent
//! writing a token somewhere another user controls: through a symbolic link they planted,
//! over a file they own, in a directory anyone can write without the sticky bit (where
//! anyone could swap the file for their own between our writes), or below a directory
//! another user owns (its owner can rename or replace anything under it, sticky bit or
//! not: OpenSSH's StrictModes rule).

use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};

use crate::secure_path::{Step, WalkError, walk_dirs};

/// The sticky bit (`S_ISVTX`).
const STICKY: u32 = 0o1000;

/// Why a sink path is refused. Each message names the path and the fix.
#[derive(Debug, thiserror::Error)]
pub enum PathError {
    #[error("sink path {} is a symbolic link; the agent never writes a token through a link: set sink.path to the real location", path.display())]
    Symlink { path: PathBuf },
    #[error("sink path {} exists and is not a regular file: remove it or choose another sink.path", path.display())]
    NotFile { path: PathBuf },
    #[error("sink file {} belongs to uid {uid}, neither the agent's user nor root, so someone else put it there: remove it (rm {}) and let the agent create it", path.display(), path.display())]
    Owner { path: PathBuf, uid: u32 },
    #[error("sink path {} is in directory {}, which anyone can write (mode {mode:04o}) without the sticky bit, so anyone could replace the token: fix it with: chmod o-w {}", path.display(), dir.display(), dir.display())]
    OpenDir {
        path: PathBuf,
        dir: PathBuf,
        mode: u32,
    },
    #[error("sink path {} is below directory {} (on the path, or holding a symbolic link on it), which belongs to uid {uid}, neither the agent's user nor root, so that user could replace the token or re-point the link: put sinks in a directory the agent's user or root owns (e.g. install -d -o asset-agent -g GROUP -m 0750 /run/asset-agent-sinks/NAME)", path.display(), dir.display())]
    DirOwner {
        path: PathBuf,
        dir: PathBuf,
        uid: u32,
    },
    #[error("the directory of sink path {} does not exist: create it (install -d -m 0755 {})", path.display(), dir.display())]
    NoDir { path: PathBuf, dir: PathBuf },
    #[error("could not inspect sink path {}", path.display())]
    Inspect {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Checks `path` for a sink; `trusted` are the uids an existing file and every directory
/// above it may belong to.
///
/// # Errors
/// The first rule broken; see [`PathError`].
pub fn check(path: &Path, trusted: &[u32]) -> Result<(), PathError> {
    let inspect = |p: &Path, source| PathError::Inspect {
        path: p.to_owned(),
        source,
    };
    let dir = path.parent().unwrap_or(Path::new("/"));
    match fs::metadata(dir) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => {
            return Err(PathError::NoDir {
                path: path.to_owned(),
                dir: dir.to_owned(),
            });
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(PathError::NoDir {
                path: path.to_owned(),
                dir: dir.to_owned(),
            });
        }
        Err(e) => return Err(inspect(dir, e)),
    }
    match fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() => {
            return Err(PathError::Symlink {
                path: path.to_owned(),
            });
        }
        Ok(m) if !m.is_file() => {
            return Err(PathError::NotFile {
                path: path.to_owned(),
            });
        }
        Ok(m) if !trusted.contains(&m.uid()) => {
            return Err(PathError::Owner {
                path: path.to_owned(),
                uid: m.uid(),
            });
        }
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(inspect(path, e)),
    }
    // Every directory on the way, as the kernel walks it (a symlink's holder included:
    // whoever owns it could re-point the link), meets the rule, not only where it leads.
    let walked = walk_dirs(dir, &mut |step| match step {
        Step::Dir(d, meta) => dir_rule(path, d, meta, trusted),
        Step::Link(..) => Ok(()),
    })
    .map_err(|e| match e {
        WalkError::Refused(e) => e,
        WalkError::BadPath(at) => PathError::NoDir {
            path: path.to_owned(),
            dir: at,
        },
        WalkError::Inspect(at, source) => inspect(&at, source),
    })?;
    if !walked.missing.as_os_str().is_empty() {
        return Err(PathError::NoDir {
            path: path.to_owned(),
            dir: dir.to_owned(),
        });
    }
    Ok(())
}

/// A directory above a sink: owned by a trusted uid, and not writable by others unless
/// sticky (group-writable is the sink's group's business).
fn dir_rule(path: &Path, d: &Path, meta: &fs::Metadata, trusted: &[u32]) -> Result<(), PathError> {
    if !trusted.contains(&meta.uid()) {
        return Err(PathError::DirOwner {
            path: path.to_owned(),
            dir: d.to_owned(),
            uid: meta.uid(),
        });
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o002 != 0 && mode & STICKY == 0 {
        return Err(PathError::OpenDir {
            path: path.to_owned(),
            dir: d.to_owned(),
            mode,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    fn me() -> Vec<u32> {
        vec![rustix::process::geteuid().as_raw(), 0]
    }

    #[test]
    fn each_refusal_names_its_fix() {
        let tmp = tempfile::tempdir().unwrap();
        let base = tmp.path();
        fs::set_permissions(base, fs::Permissions::from_mode(0o755)).unwrap();
        let ok = base.join("token");
        check(&ok, &me()).unwrap();
        fs::write(&ok, "x").unwrap();
        check(&ok, &me()).unwrap();

        let link = base.join("link");
        std::os::unix::fs::symlink(&ok, &link).unwrap();
        let e = check(&link, &me()).unwrap_err();
        assert!(matches!(e, PathError::Symlink { .. }), "{e}");

        let dir = base.join("adir");
        fs::create_dir(&dir).unwrap();
        let e = check(&dir, &me()).unwrap_err();
        assert!(matches!(e, PathError::NotFile { .. }), "{e}");

        let e = check(&ok, &[u32::MAX]).unwrap_err();
        assert!(e.to_string().contains("rm "), "{e}");

        let open = base.join("open");
        fs::create_dir(&open).unwrap();
        fs::set_permissions(&open, fs::Permissions::from_mode(0o777)).unwrap();
        let e = check(&open.join("token"), &me()).unwrap_err();
        assert!(e.to_string().contains("chmod o-w"), "{e}");
        fs::set_permissions(&open, fs::Permissions::from_mode(0o1777)).unwrap();
        check(&open.join("token"), &me()).unwrap();

        let e = check(&base.join("missing/token"), &me()).unwrap_err();
        assert!(e.to_string().contains("install -d"), "{e}");

        // Below a directory another user owns, also when reached through a link: that
        // user could swap the file. (Here "another user" is every uid but u32::MAX, so the
        // first directory of the walk, `/`, is already theirs.)
        let theirs = base.join("theirs");
        fs::create_dir(&theirs).unwrap();
        let via = base.join("via");
        std::os::unix::fs::symlink(&theirs, &via).unwrap();
        let e = check(&via.join("token"), &[u32::MAX]).unwrap_err();
        match &e {
            PathError::DirOwner { dir, .. } => assert_eq!(dir, Path::new("/"), "{e}"),
            other => panic!("{other}"),
        }
        assert!(e.to_string().contains("install -d -o asset-agent"), "{e}");
    }

    /// A symlink on the path, held by a directory another user owns, is refused although
    /// it leads to a directory that passes: its owner could re-point it at any time (to a
    /// directory only root may write, which the agent running as root would then write).
    /// Also when the link is higher up than the sink's own directory. Root only (chown).
    #[test]
    fn a_symlink_held_by_another_users_directory_is_refused() {
        testkit::require!(
            testkit::ROOT,
            testkit::is_root(),
            "root, to chown: run the tests as root"
        );
        let tmp = tempfile::tempdir().unwrap();
        let base = tmp.path();
        fs::set_permissions(base, fs::Permissions::from_mode(0o755)).unwrap();
        let sinks = base.join("sinks");
        fs::create_dir_all(sinks.join("inner")).unwrap();
        let home = base.join("home");
        fs::create_dir(&home).unwrap();
        std::os::unix::fs::chown(&home, Some(1001), Some(1001)).unwrap();
        std::os::unix::fs::symlink(&sinks, home.join("tokens")).unwrap();
        // The link itself belongs to root: only its directory is the other user's.
        check(&sinks.join("token"), &me()).unwrap();
        for path in [home.join("tokens/token"), home.join("tokens/inner/token")] {
            let e = check(&path, &me()).unwrap_err();
            match &e {
                PathError::DirOwner { dir, uid, .. } => {
                    assert_eq!((dir, *uid), (&home, 1001), "{e}");
                }
                other => panic!("{}: {other}", path.display()),
            }
        }
    }
}
