//! An RSA private key held in memory as a ring key pair, and the SPKI encoding of an RSA
//! public key. The agent's file-backed device key and the emulator's signing key are both
//! this, once their PEM has been read and checked.

use ring::signature::{self as sig, KeyPair as _};

use super::{RsaPublicJwk, SignError, Signer};

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

/// The rsaEncryption AlgorithmIdentifier (OID 1.2.840.113549.1.1.1, NULL parameters), DER.
const RSA_ALGORITHM_ID: [u8; 15] = [
    0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01, 0x05, 0x00,
];

/// The SPKI PEM (`-----BEGIN PUBLIC KEY-----`) of the RSA public key with big-endian
/// modulus `n` and exponent `e`.
pub fn spki_pem(n: &[u8], e: &[u8]) -> String {
    let pkcs1 = der_tlv(0x30, &[der_uint(n), der_uint(e)].concat());
    let mut bits = vec![0u8]; // no unused bits
    bits.extend_from_slice(&pkcs1);
    let spki = der_tlv(
        0x30,
        &[RSA_ALGORITHM_ID.to_vec(), der_tlv(0x03, &bits)].concat(),
    );
    let b64 = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, spki);
    let mut pem = String::from("-----BEGIN PUBLIC KEY-----\n");
    for line in b64.as_bytes().chunks(64) {
        pem.push_str(&String::from_utf8_lossy(line));
        pem.push('\n');
    }
    pem.push_str("-----END PUBLIC KEY-----\n");
    pem
}

/// A DER INTEGER for the unsigned big-endian `be` (leading zeros stripped, a zero byte
/// added when the top bit is set).
fn der_uint(be: &[u8]) -> Vec<u8> {
    let start = be.iter().position(|&b| b != 0).unwrap_or(be.len());
    let mut body = Vec::with_capacity(be.len() - start + 1);
    match be.get(start) {
        None => body.push(0),
        Some(&top) if top & 0x80 != 0 => body.push(0),
        Some(_) => {}
    }
    body.extend_from_slice(&be[start..]);
    der_tlv(0x02, &body)
}

fn der_tlv(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let len = body.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes
            .iter()
            .position(|&b| b != 0)
            .unwrap_or(bytes.len() - 1);
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
    out.extend_from_slice(body);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn der_lengths_and_integers() {
        assert_eq!(der_tlv(0x04, &[1, 2]), vec![0x04, 2, 1, 2]);
        let long = der_tlv(0x04, &[0u8; 300]);
        assert_eq!(&long[..4], &[0x04, 0x82, 0x01, 0x2c]);
        assert_eq!(der_uint(&[0, 0, 0x01]), vec![0x02, 1, 0x01]);
        assert_eq!(der_uint(&[0x80]), vec![0x02, 2, 0x00, 0x80]);
        assert_eq!(der_uint(&[]), vec![0x02, 1, 0x00]);
    }

    #[test]
    fn spki_pem_has_the_rfc_shape() {
        let pem = spki_pem(&[0xc1; 256], &[1, 0, 1]);
        assert!(pem.starts_with(
            "-----BEGIN PUBLIC KEY-----\nMIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA"
        ));
        assert!(pem.ends_with("-----END PUBLIC KEY-----\n"));
    }
}
