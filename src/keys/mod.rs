//! The device key: an RSA key that signs actor tokens and never leaves the agent.
//!
//! Everything that signs goes through the [`Signer`] trait, so a key held in a PKCS#11
//! token or a TPM can replace the PKCS#8 [`FileKey`] without touching the token code.

mod file;

pub use file::{FileKey, LoadError};

use crate::jose::RsaPublicJwk;

/// Signing failed inside the key backend.
#[derive(Debug, thiserror::Error)]
#[error("the device key could not sign")]
pub struct SignError;

/// An RSA key that can sign RS256 and tell its public half.
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
    fn public_key_pem(&self) -> Result<String, SignError>;

    /// Key size in bits.
    fn bits(&self) -> usize;
}
