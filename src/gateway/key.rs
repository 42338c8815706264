//! Opening a child's key: the one place that turns a child's `key` table into a signer.

use std::sync::Arc;

use crate::config::Key;
use crate::keys::{FileKey, LoadError, Signer};

/// Opens the key `key` describes, generating it on first use; the flag says whether it
/// was generated now.
///
/// # Errors
/// The key file is unreadable, unsafe or not an RSA key, or could not be generated.
pub fn open_key(key: &Key) -> Result<(Arc<dyn Signer>, bool), LoadError> {
    let (k, created) = FileKey::load_or_generate(&key.path, key.bits)?;
    Ok((Arc::new(k), created))
}
