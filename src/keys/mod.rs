//! The device key: an RSA key that signs actor tokens and never leaves the agent.
//!
//! Everything that signs goes through the [`Signer`] trait (defined with the rest of the
//! JOSE pieces in `wire::jose`), so a key held in a PKCS#11 token or a TPM replaces the
//! PKCS#8 [`FileKey`] without touching the token code. [`open`] is the one way a `[key]`
//! table becomes a signer: `run`, `check --exchange` and `key show|generate` all use it.
//!
//! A backend's signature may block (a TPM takes tens of milliseconds), so async code signs
//! through `tokio::task::spawn_blocking`, never on the runtime's thread.

mod file;
mod pkcs11;

use std::sync::Arc;

pub use file::{FileKey, LoadError};
pub use pkcs11::{Error as Pkcs11Error, Pkcs11Key};
pub use wire::jose::{SignError, Signer};

use crate::config::{self, KeyBackend};
use crate::secure_path::Trust;

/// Whether [`open`] may create the key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Open it, generating it first when it does not exist (`run`, `key generate`).
    OpenOrCreate,
    /// Open it only if it exists (`check`, `key show`): never creates state.
    Existing,
}

/// An opened device key.
pub struct Opened {
    /// Signs with the key; cheap to clone and share between tasks.
    pub signer: Arc<dyn Signer>,
    /// Whether this call generated the key.
    pub created: bool,
    /// Where the key is, for messages: the PEM path or the token URI and module.
    pub location: String,
}

/// The device key could not be opened. Each message names where the key is and the fix.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error(transparent)]
    File(#[from] LoadError),
    #[error(transparent)]
    Pkcs11(#[from] Pkcs11Error),
}

// === impl OpenError ===

impl OpenError {
    /// See [`Pkcs11Error::is_transient`]; a key file is never transient.
    pub fn is_transient(&self) -> bool {
        matches!(self, OpenError::Pkcs11(e) if e.is_transient())
    }
}

// === impl Opened ===

impl std::fmt::Debug for Opened {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Opened")
            .field("location", &self.location)
            .field("created", &self.created)
            .field("kid", &self.signer.public_jwk().kid)
            .finish()
    }
}

/// Opens the device key `key` describes, generating it first when `mode` allows and it
/// does not exist. Holds no state between calls besides what a backend must share per
/// process, so several keys (of several identities) can be open at once.
///
/// This blocks (key generation, a token's login): call it from `spawn_blocking` in async
/// code.
///
/// # Errors
/// An [`OpenError`] naming the file or token and the fix.
pub fn open(key: &config::Key, mode: Mode) -> Result<Opened, OpenError> {
    open_trusting(key, mode, &Trust::process())
}

/// As [`open`], with files judged by [`crate::secure_path`]'s rule for the uids in `trust`
/// (`check` run by root on behalf of the service user).
///
/// # Errors
/// As [`open`].
pub fn open_trusting(key: &config::Key, mode: Mode, trust: &Trust) -> Result<Opened, OpenError> {
    match &key.backend {
        KeyBackend::File { path } => {
            let (signer, created) = match mode {
                Mode::OpenOrCreate => FileKey::load_or_generate(path, key.bits)?,
                Mode::Existing => (FileKey::load_trusting(path, trust)?, false),
            };
            Ok(Opened {
                signer: Arc::new(signer),
                created,
                location: path.display().to_string(),
            })
        }
        KeyBackend::Pkcs11(p) => {
            let create = mode == Mode::OpenOrCreate;
            let (signer, created) = Pkcs11Key::open(p, key.bits, create, &p.lock_dir, trust)?;
            Ok(Opened {
                location: signer.location(),
                signer: Arc::new(signer),
                created,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn file_key(path: PathBuf) -> config::Key {
        config::Key {
            backend: KeyBackend::File { path },
            bits: 2048,
        }
    }

    #[test]
    fn existing_never_creates_and_create_is_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let key = file_key(dir.path().join("k.pem"));
        let err = open(&key, Mode::Existing).unwrap_err();
        assert!(
            matches!(err, OpenError::File(LoadError::Read { .. })),
            "{err}"
        );
        assert!(!dir.path().join("k.pem").exists());
        let first = open(&key, Mode::OpenOrCreate).unwrap();
        assert!(first.created);
        let again = open(&key, Mode::Existing).unwrap();
        assert!(!again.created);
        assert_eq!(first.signer.public_jwk(), again.signer.public_jwk());
        assert_eq!(
            again.location,
            dir.path().join("k.pem").display().to_string()
        );
    }
}
