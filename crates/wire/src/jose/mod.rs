//! JOSE pieces both sides of the wire use: RSA JWKs and their RFC 7638 thumbprints, the
//! [`Signer`] seam every signing key implements, an in-memory ring RSA key, compact JWS
//! signing and unverified decoding, fresh `jti` values, and the DER and PEM of RSA keys.
//!
//! One crypto backend: everything here is ring.

pub mod der;
pub mod jwk;
pub mod jws;
mod key;

pub use jwk::RsaPublicJwk;
pub use key::{RsaKey, spki_pem};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// base64url without padding, as JOSE uses everywhere.
pub fn b64url(data: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(data)
}

/// 128 random bits, base64url: unique per token for replay protection.
pub fn new_jti() -> String {
    use ring::rand::SecureRandom as _;
    let mut bytes = [0u8; 16];
    // SystemRandom only fails if the OS RNG is unavailable; a time-derived id is then
    // still unique enough for replay detection, which is all jti is for.
    if ring::rand::SystemRandom::new().fill(&mut bytes).is_err() {
        let nanos = crate::clock::Clock::system()
            .now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        bytes = nanos.to_le_bytes();
    }
    b64url(&bytes)
}

/// Decodes base64url without padding.
///
/// # Errors
/// When `data` is not valid unpadded base64url.
pub fn b64url_decode(data: &str) -> Result<Vec<u8>, base64::DecodeError> {
    URL_SAFE_NO_PAD.decode(data)
}

/// Signing failed inside the key backend. The cause, when the backend has one (a token's
/// error naming the module and the fix), is the source; the text never holds key material.
#[derive(Debug, Default, thiserror::Error)]
#[error("the device key could not sign")]
pub struct SignError {
    #[source]
    source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl SignError {
    /// A failure whose cause is `source`.
    pub fn caused_by(source: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        Self {
            source: Some(source.into()),
        }
    }
}

/// An RSA key that can sign RS256 and tell its public half. The device key (a PKCS#8 file
/// or a key inside a hardware token) and the emulator's signing key both implement it, so
/// JWS signing never sees key material.
pub trait Signer: Send + Sync {
    /// The public key as a JWK whose `kid` is its RFC 7638 thumbprint.
    fn public_jwk(&self) -> &RsaPublicJwk;

    /// RSASSA-PKCS1-v1_5 with SHA-256 over `message`.
    ///
    /// # Errors
    /// When the backend fails to sign.
    fn sign_rs256(&self, message: &[u8]) -> Result<Vec<u8>, SignError>;

    /// The public key as an SPKI PEM (`-----BEGIN PUBLIC KEY-----`).
    ///
    /// # Errors
    /// When the backend cannot export its public key.
    fn public_key_pem(&self) -> Result<String, SignError> {
        let jwk = self.public_jwk();
        let n = b64url_decode(&jwk.n).map_err(|_| SignError::default())?;
        let e = b64url_decode(&jwk.e).map_err(|_| SignError::default())?;
        spki_pem(&n, &e).ok_or_else(SignError::default)
    }

    /// Key size in bits.
    fn bits(&self) -> usize;

    /// Whether signing may block for long (a hardware token): async callers then sign on
    /// a blocking thread. In-memory keys answer `false` and are signed with inline.
    fn may_block(&self) -> bool {
        false
    }
}
