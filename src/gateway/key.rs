//! Opening a child's key: its `key` table (shaped like the top-level `[key]`: a file, or a
//! PKCS#11 token object) through the same [`keys::open`] as the gateway's own key.

use crate::config::Key;
use crate::keys::{self, Mode, OpenError, Opened};

/// Opens the key `key` describes, generating it on first use.
///
/// This blocks (key generation, a token's login).
///
/// # Errors
/// As [`keys::open`].
pub fn open_key(key: &Key) -> Result<Opened, OpenError> {
    keys::open(key, Mode::OpenOrCreate)
}
