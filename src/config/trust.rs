//! Who may write a config file: the same rule secrets get (`secure_path`), applied to the
//! main file, its drop-ins and `children.d`. Both the loader and the children's reader use
//! it, so it lives below them.

use std::path::Path;

use super::error::Error;

/// Refuses a config file that a user other than root and this process's could change:
/// the file, every directory on its way and every directory holding a symlink on it must
/// be owned by one of them and not writable by group or others (a sticky directory owned
/// by root excepted). Group-writable is refused even for the agent's own group: strict by
/// default, since whoever can change the file can give itself an identity or a role.
///
/// # Errors
/// [`Error::Untrusted`], whose source names the file or directory and the fix
/// (`chmod go-w`, `chown`); a missing file is `Untrusted` with a not-found source.
pub(crate) fn trusted(path: &Path) -> Result<(), Error> {
    let trust = crate::secure_path::Trust::process();
    crate::secure_path::check_unchangeable("config file", path, &trust).map_err(|source| {
        Error::Untrusted {
            path: path.to_owned(),
            source: Box::new(source),
        }
    })
}
