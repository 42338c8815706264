//! The device key: an RSA key that signs actor tokens and never leaves the agent.
//!
//! Everything that signs goes through the [`Signer`] trait (defined with the rest of the
//! JOSE pieces in `wire::jose`), so a key held in a PKCS#11 token or a TPM can replace the
//! PKCS#8 [`FileKey`] without touching the token code.

mod file;

pub use file::{FileKey, LoadError};
pub use wire::jose::{SignError, Signer};
