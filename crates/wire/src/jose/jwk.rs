//! RSA public keys as JWKs (RFC 7517) and their thumbprints (RFC 7638).

use ring::digest;
use serde::{Deserialize, Serialize};

use super::{b64url, b64url_decode};

/// An RSA public key as a JWK with exactly the members the actor token's `cnf.jwk` carries.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RsaPublicJwk {
    pub kty: String,
    pub kid: String,
    /// Modulus, base64url big-endian without leading zeros.
    pub n: String,
    /// Public exponent, base64url big-endian.
    pub e: String,
}

/// A JWK that cannot be used as an RSA public key.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("JWK kty is {0:?}, expected \"RSA\"")]
    NotRsa(String),
    #[error("JWK member {0} is not valid base64url")]
    Encoding(&'static str),
}

// === impl RsaPublicJwk ===

impl RsaPublicJwk {
    /// Builds the JWK for a modulus and exponent given as big-endian bytes; the `kid` is the
    /// RFC 7638 thumbprint, so it is stable for the key and unique across keys.
    pub fn from_components(n: &[u8], e: &[u8]) -> Self {
        let n = b64url(strip_leading_zeros(n));
        let e = b64url(strip_leading_zeros(e));
        let kid = thumbprint(&n, &e);
        Self {
            kty: "RSA".to_owned(),
            kid,
            n,
            e,
        }
    }

    /// The RFC 7638 SHA-256 thumbprint of this key (ignores `kid`).
    pub fn thumbprint(&self) -> String {
        thumbprint(&self.n, &self.e)
    }

    /// Modulus and exponent as big-endian bytes.
    ///
    /// # Errors
    /// When `kty` is not RSA or a member is not base64url.
    pub fn components(&self) -> Result<(Vec<u8>, Vec<u8>), Error> {
        if self.kty != "RSA" {
            return Err(Error::NotRsa(self.kty.clone()));
        }
        let n = b64url_decode(&self.n).map_err(|_| Error::Encoding("n"))?;
        let e = b64url_decode(&self.e).map_err(|_| Error::Encoding("e"))?;
        Ok((n, e))
    }

    /// Verifies an RS256 signature over `message` with this key.
    pub fn verify_rs256(&self, message: &[u8], signature: &[u8]) -> bool {
        let Ok((n, e)) = self.components() else {
            return false;
        };
        ring::signature::RsaPublicKeyComponents { n, e }
            .verify(
                &ring::signature::RSA_PKCS1_2048_8192_SHA256,
                message,
                signature,
            )
            .is_ok()
    }
}

/// RFC 7638 §3: SHA-256 over the required members in lexicographic order, no whitespace.
fn thumbprint(n: &str, e: &str) -> String {
    // n and e are base64url, so they need no JSON escaping.
    let canonical = format!(r#"{{"e":"{e}","kty":"RSA","n":"{n}"}}"#);
    b64url(digest::digest(&digest::SHA256, canonical.as_bytes()).as_ref())
}

fn strip_leading_zeros(bytes: &[u8]) -> &[u8] {
    let first = bytes.iter().position(|&b| b != 0).unwrap_or(bytes.len());
    &bytes[first..]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example key of RFC 7638 §3.1 and its published thumbprint.
    #[test]
    fn rfc7638_example_thumbprint() {
        let n = "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw";
        let jwk = RsaPublicJwk {
            kty: "RSA".into(),
            kid: "2011-04-29".into(),
            n: n.into(),
            e: "AQAB".into(),
        };
        assert_eq!(
            jwk.thumbprint(),
            "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
        );
    }

    #[test]
    fn from_components_strips_zeros_and_sets_kid() {
        let jwk = RsaPublicJwk::from_components(&[0, 0, 0xc5, 0x01], &[0, 1, 0, 1]);
        assert_eq!(jwk.n, b64url(&[0xc5, 0x01]));
        assert_eq!(jwk.e, "AQAB");
        assert_eq!(jwk.kid, jwk.thumbprint());
    }

    #[test]
    fn non_rsa_is_refused() {
        let jwk = RsaPublicJwk {
            kty: "EC".into(),
            kid: "x".into(),
            n: "AQAB".into(),
            e: "AQAB".into(),
        };
        assert!(matches!(jwk.components(), Err(Error::NotRsa(_))));
        assert!(!jwk.verify_rs256(b"m", b"s"));
    }
}
