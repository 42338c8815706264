//! An RSA private key held in memory as a ring key pair, and the SPKI encoding of an RSA
//! public key. The agent's file-backed device key and the emulator's signing key are both
//! this, once their PEM has been read and checked.

use ring::signature::{self as sig, KeyPair as _};

use super::{RsaPublicJwk, SignError, Signer, der};

/// A PKCS#8 RSA private key, signing RS256 with ring.
pub struct RsaKey {
    pair: sig::RsaKeyPair,
    jwk: RsaPublicJwk,
}

// === impl RsaKey ===

impl RsaKey {
    /// Parses a PKCS#8 DER `PrivateKeyInfo` holding an RSA key.
    ///
    /// # Errors
    /// ring's reason when the key is not a usable RSA key (wrong algorithm, malformed, or a
    /// size ring does not sign with).
    pub fn from_pkcs8(der: &[u8]) -> Result<Self, ring::error::KeyRejected> {
        let pair = sig::RsaKeyPair::from_pkcs8(der)?;
        let c = sig::RsaPublicKeyComponents::<Vec<u8>>::from(pair.public_key());
        let jwk = RsaPublicJwk::from_components(&c.n, &c.e);
        Ok(Self { pair, jwk })
    }
}

impl Signer for RsaKey {
    fn public_jwk(&self) -> &RsaPublicJwk {
        &self.jwk
    }

    fn sign_rs256(&self, message: &[u8]) -> Result<Vec<u8>, SignError> {
        let mut out = vec![0; self.pair.public().modulus_len()];
        self.pair
            .sign(
                &sig::RSA_PKCS1_SHA256,
                &ring::rand::SystemRandom::new(),
                message,
                &mut out,
            )
            .map_err(|_| SignError::default())?;
        Ok(out)
    }

    fn bits(&self) -> usize {
        self.pair.public().modulus_len() * 8
    }
}

impl std::fmt::Debug for RsaKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RsaKey")
            .field("kid", &self.jwk.kid)
            .finish_non_exhaustive()
    }
}

/// The SPKI PEM (`-----BEGIN PUBLIC KEY-----`) of the RSA public key with big-endian
/// modulus `n` and exponent `e`; `None` when either is not a positive integer.
pub fn spki_pem(n: &[u8], e: &[u8]) -> Option<String> {
    der::rsa_spki_pem(n, e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spki_pem_has_the_rfc_shape() {
        let pem = spki_pem(&[0xc1; 256], &[1, 0, 1]).unwrap();
        assert!(pem.starts_with(
            "-----BEGIN PUBLIC KEY-----\nMIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA"
        ));
        assert!(pem.ends_with("-----END PUBLIC KEY-----\n"));
    }

    #[test]
    fn an_spki_reads_back_its_modulus_and_exponent() {
        let mut n = vec![0xc1; 256];
        n[255] = 0x07;
        let pem = spki_pem(&n, &[1, 0, 1]).unwrap();
        let b64: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        let der = base64::Engine::decode(&base64::engine::general_purpose::STANDARD, b64).unwrap();
        assert_eq!(der::read_rsa_spki(&der), Some((&n[..], &[1u8, 0, 1][..])));
        // Trailing garbage, a cut, another algorithm: not an RSA key.
        let mut longer = der.clone();
        longer.push(0);
        assert_eq!(der::read_rsa_spki(&longer), None);
        assert_eq!(der::read_rsa_spki(&der[..der.len() - 1]), None);
        let mut ec = der.clone();
        ec[12] = 0x3d; // one byte of the OID changed
        assert_eq!(der::read_rsa_spki(&ec), None);
    }
}
