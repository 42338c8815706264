//! What both sides of the wire share: the agent and the Salesforce emulator.
//!
//! A leaf crate (it depends on no other crate of the workspace), so the crate graph is the
//! layer diagram: the agent and the emulator each depend on this, and neither can reach
//! the other's internals.
//!
//! Layout:
//! - [`oauth`]: serde types for what crosses the wire to Salesforce (the token endpoint,
//!   the device flow, the token exchange, JWKS);
//! - [`jose`]: RSA JWKs and thumbprints, the [`jose::Signer`] seam, compact JWS, `jti`;
//! - [`clock`]: wall-clock time, the one place it is read;
//! - [`secret`]: a string that never prints itself;
//! - [`http`]: the small HTTP/1.1 server helpers both servers use;
//! - [`report`]: how the workspace's binaries print a failure and its causes.

pub mod clock;
pub mod http;
pub mod jose;
pub mod oauth;
pub mod report;
pub mod secret;

pub use secret::Secret;
