//! JOSE pieces: RSA JWKs and their RFC 7638 thumbprints, compact JWS signing through a
//! [`crate::keys::Signer`], and the ring-backed crypto provider that `jsonwebtoken` needs
//! for verification.
//!
//! One crypto backend: everything here is ring. `jsonwebtoken` 12 ships no ring backend and
//! panics on first use without a provider, so [`provider::install`] is called before any
//! JWT is decoded (it is idempotent and cheap).

pub mod jwk;
pub mod jws;
pub mod provider;

pub use jwk::RsaPublicJwk;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// base64url without padding, as JOSE uses everywhere.
pub fn b64url(data: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(data)
}

/// Decodes base64url without padding.
///
/// # Errors
/// When `data` is not valid unpadded base64url.
pub fn b64url_decode(data: &str) -> Result<Vec<u8>, base64::DecodeError> {
    URL_SAFE_NO_PAD.decode(data)
}
