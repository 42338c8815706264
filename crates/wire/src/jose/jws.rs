//! Compact JWS (RFC 7515) signing with a [`Signer`], and unverified peeking at a JWT.
//!
//! Signing goes through the [`Signer`] trait rather than `jsonwebtoken::EncodingKey` so that
//! a key that never leaves hardware (PKCS#11, TPM) can sign actor tokens the same way the
//! PKCS#8 file key does.

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{SignError, Signer};
use super::{b64url, b64url_decode};

/// A JWS that could not be produced or parsed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("could not serialise the JWT {0}")]
    Serialize(&'static str, #[source] serde_json::Error),
    #[error("could not sign the JWT")]
    Sign(#[source] SignError),
    #[error("not a compact JWS: expected three dot-separated parts")]
    Shape,
    #[error("JWT {0} is not valid base64url JSON")]
    Part(&'static str),
}

/// The protected header this agent puts on everything it signs.
#[derive(Debug, Serialize)]
struct Header<'a> {
    alg: &'static str,
    typ: &'static str,
    kid: &'a str,
}

/// Signs `claims` as a compact RS256 JWS with `typ: JWT` and `kid` = the signer's key id.
///
/// # Errors
/// When the claims cannot be serialised or the signer fails.
pub fn sign<C: Serialize>(signer: &dyn Signer, claims: &C) -> Result<String, Error> {
    let header = Header {
        alg: "RS256",
        typ: "JWT",
        kid: &signer.public_jwk().kid,
    };
    let header = serde_json::to_vec(&header).map_err(|e| Error::Serialize("header", e))?;
    let claims = serde_json::to_vec(claims).map_err(|e| Error::Serialize("claims", e))?;
    let mut jws = b64url(&header);
    jws.push('.');
    jws.push_str(&b64url(&claims));
    let signature = signer.sign_rs256(jws.as_bytes()).map_err(Error::Sign)?;
    jws.push('.');
    jws.push_str(&b64url(&signature));
    Ok(jws)
}

/// The three parts of a compact JWS, decoded but **not verified**.
pub struct Parts<H, C> {
    pub header: H,
    pub claims: C,
    /// `base64url(header) "." base64url(claims)`: what the signature covers.
    pub signing_input: String,
    pub signature: Vec<u8>,
}

/// Splits and decodes a compact JWS without verifying it. Callers must verify
/// `signature` over `signing_input` before trusting anything in it.
///
/// # Errors
/// When the token is not three base64url parts of JSON of the expected shapes.
pub fn decode_unverified<H: DeserializeOwned, C: DeserializeOwned>(
    token: &str,
) -> Result<Parts<H, C>, Error> {
    let mut it = token.split('.');
    let (Some(h), Some(c), Some(s), None) = (it.next(), it.next(), it.next(), it.next()) else {
        return Err(Error::Shape);
    };
    Ok(Parts {
        header: json_part(h, "header")?,
        claims: json_part(c, "claims")?,
        signing_input: format!("{h}.{c}"),
        signature: b64url_decode(s).map_err(|_| Error::Part("signature"))?,
    })
}

fn json_part<T: DeserializeOwned>(part: &str, name: &'static str) -> Result<T, Error> {
    b64url_decode(part)
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .ok_or(Error::Part(name))
}
