//! The DER structures an RSA key file, a pinned certificate and a public key PEM need,
//! read and written by RustCrypto's `pkcs8`, `pkcs1` and `spki` (on `der`): PKCS#8
//! `PrivateKeyInfo` (RFC 5208) holding an RSA key (RFC 8017, A.1.2), `SubjectPublicKeyInfo`
//! (RFC 5280) holding an RSA public key, and PEM armour (RFC 7468).
//!
//! Reading only answers what an error message needs (the key's algorithm, its size); ring
//! checks the key itself when it loads it. What is ours is the reason given for a refusal.

use pkcs8::der::{self, Encode as _};

/// What a PKCS#8 `PrivateKeyInfo` holds, as far as choosing an error message goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pkcs8 {
    /// An RSA key whose modulus has this many bits.
    Rsa { bits: usize },
    /// A key of another algorithm: its OID, dotted (`1.2.840.10045.2.1` for EC).
    Other { oid: String },
}

/// The structure is not DER of the expected shape: which structure, and the DER decoder's
/// reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what} ({reason})")]
pub struct Malformed {
    what: &'static str,
    reason: String,
}

impl Malformed {
    fn new<E: std::fmt::Display>(what: &'static str) -> impl FnOnce(E) -> Self {
        move |e| Self {
            what,
            reason: e.to_string(),
        }
    }
}

/// Reads a PKCS#8 `PrivateKeyInfo`: its algorithm, and for RSA the modulus size.
///
/// # Errors
/// When `der` is not a `PrivateKeyInfo`, or holds an RSA key that is not an
/// `RSAPrivateKey`.
pub fn read_pkcs8(der: &[u8]) -> Result<Pkcs8, Malformed> {
    let info = pkcs8::PrivateKeyInfo::try_from(der)
        .map_err(Malformed::new("not a PKCS#8 PrivateKeyInfo"))?;
    if info.algorithm.oid != pkcs1::ALGORITHM_OID {
        return Ok(Pkcs8::Other {
            oid: info.algorithm.oid.to_string(),
        });
    }
    let rsa = pkcs1::RsaPrivateKey::try_from(info.private_key)
        .map_err(Malformed::new("not an RSAPrivateKey"))?;
    Ok(Pkcs8::Rsa {
        bits: bit_length(rsa.modulus.as_bytes()),
    })
}

/// The modulus and public exponent (big-endian, without leading zeros) of an RSA
/// `SubjectPublicKeyInfo`; `None` for another algorithm or a malformed structure.
pub fn read_rsa_spki(der: &[u8]) -> Option<(&[u8], &[u8])> {
    let spki = spki::SubjectPublicKeyInfoRef::try_from(der).ok()?;
    if spki.algorithm.oid != pkcs1::ALGORITHM_OID {
        return None;
    }
    let key = pkcs1::RsaPublicKey::try_from(spki.subject_public_key.as_bytes()?).ok()?;
    Some((key.modulus.as_bytes(), key.public_exponent.as_bytes()))
}

/// The SPKI PEM (`-----BEGIN PUBLIC KEY-----`) of the RSA public key with big-endian
/// modulus `n` and exponent `e`; `None` when either is not a positive integer.
pub fn rsa_spki_pem(n: &[u8], e: &[u8]) -> Option<String> {
    use der::EncodePem as _;
    let key = pkcs1::RsaPublicKey {
        modulus: der::asn1::UintRef::new(n).ok()?,
        public_exponent: der::asn1::UintRef::new(e).ok()?,
    };
    if bit_length(n) == 0 || bit_length(e) == 0 {
        return None;
    }
    let key = key.to_der().ok()?;
    let spki = spki::SubjectPublicKeyInfoRef {
        algorithm: spki::AlgorithmIdentifierRef {
            oid: pkcs1::ALGORITHM_OID,
            parameters: Some(der::asn1::AnyRef::NULL),
        },
        subject_public_key: der::asn1::BitStringRef::from_bytes(&key).ok()?,
    };
    spki.to_pem(der::pem::LineEnding::LF).ok()
}

/// The number of significant bits of the unsigned big-endian `be`.
pub fn bit_length(be: &[u8]) -> usize {
    let start = be.iter().position(|&b| b != 0).unwrap_or(be.len());
    let be = &be[start..];
    match be.first() {
        None => 0,
        Some(&top) => (be.len() - 1) * 8 + (8 - top.leading_zeros() as usize),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A PKCS#8 `PrivateKeyInfo` around `key` with the algorithm `oid` (content octets).
    fn info(oid: &[u8], key: &[u8]) -> Vec<u8> {
        let mut alg = vec![0x06, oid.len() as u8];
        alg.extend_from_slice(oid);
        alg.extend_from_slice(&[0x05, 0x00]);
        let mut body = vec![0x02, 0x01, 0x00, 0x30, alg.len() as u8];
        body.extend_from_slice(&alg);
        body.extend_from_slice(&[0x04, key.len() as u8]);
        body.extend_from_slice(key);
        let mut out = vec![0x30, body.len() as u8];
        out.extend_from_slice(&body);
        out
    }

    const RSA: [u8; 9] = [0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];
    const EC: [u8; 7] = [0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];

    /// A two-prime `RSAPrivateKey` of small made-up integers: well-formed DER, not a key.
    fn rsa_key(n: &[u8]) -> Vec<u8> {
        let mut body = vec![0x02, 0x01, 0x00, 0x02, n.len() as u8];
        body.extend_from_slice(n);
        for _ in 0..7 {
            body.extend_from_slice(&[0x02, 0x01, 0x03]);
        }
        let mut out = vec![0x30, body.len() as u8];
        out.extend_from_slice(&body);
        out
    }

    #[test]
    fn reads_the_algorithm_and_the_modulus_size() {
        let der = info(&RSA, &rsa_key(&[0x00, 0x81, 0x02]));
        assert_eq!(read_pkcs8(&der), Ok(Pkcs8::Rsa { bits: 16 }));
        assert_eq!(
            read_pkcs8(&info(&EC, &[0x30, 0x00])),
            Ok(Pkcs8::Other {
                oid: "1.2.840.10045.2.1".to_owned()
            })
        );
    }

    #[test]
    fn reading_refuses_what_der_forbids_with_a_reason() {
        let good = info(&RSA, &rsa_key(&[0x41]));
        assert!(read_pkcs8(&good).is_ok());
        let refused = |der: &[u8], what: &str| {
            let err = read_pkcs8(der).unwrap_err().to_string();
            assert!(err.starts_with(what), "{der:02x?}: {err}");
            assert!(err.contains('('), "no decoder reason: {err}");
        };
        let outer = "not a PKCS#8 PrivateKeyInfo";
        // Long form for a short length, a leading zero length octet, indefinite length.
        let mut long = vec![0x30, 0x81];
        long.extend_from_slice(&good[1..]);
        refused(&long, outer);
        let mut zero = vec![0x30, 0x82, 0x00];
        zero.extend_from_slice(&good[1..]);
        refused(&zero, outer);
        let mut indefinite = vec![0x30, 0x80];
        indefinite.extend_from_slice(&good[2..]);
        indefinite.extend_from_slice(&[0, 0]);
        refused(&indefinite, outer);
        // Cut short, wrong tag, trailing bytes where a whole structure is expected.
        refused(&good[..good.len() - 1], outer);
        let mut tag = good.clone();
        tag[0] = 0x31;
        refused(&tag, outer);
        let mut trailing = good.clone();
        trailing.push(0);
        refused(&trailing, outer);
        refused(&[], outer);
        // An RSA algorithm around something that is not an RSAPrivateKey.
        refused(&info(&RSA, &[0x04, 0x00]), "not an RSAPrivateKey");
        refused(&info(&RSA, &[0x30, 0x00]), "not an RSAPrivateKey");
        // An OID cut short inside its last arc.
        refused(&info(&[0x2a, 0x86], &[0x30, 0x00]), outer);
    }

    #[test]
    fn bit_lengths_count_from_the_top_bit() {
        assert_eq!(bit_length(&[0, 0x01, 0xff]), 9);
        assert_eq!(bit_length(&[0x80, 0]), 16);
        assert_eq!(bit_length(&[]), 0);
    }

    #[test]
    fn public_keys_are_spki_pem_in_lines_of_64() {
        let pem = rsa_spki_pem(&[0xc1; 256], &[1, 0, 1]).unwrap();
        assert!(pem.starts_with(
            "-----BEGIN PUBLIC KEY-----\nMIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA"
        ));
        assert!(pem.ends_with("-----END PUBLIC KEY-----\n"));
        let lines: Vec<&str> = pem.lines().collect();
        // 294 bytes of DER are 392 base64 characters: six full lines and one of 8.
        assert!(lines[1..7].iter().all(|l| l.len() == 64), "{pem}");
        assert_eq!(lines[7].len(), 8);
        assert_eq!(lines.len(), 9);
        // Leading zeros are not part of an INTEGER: the same key.
        let padded = [&[0u8, 0][..], &[0xc1; 256]].concat();
        assert_eq!(rsa_spki_pem(&padded, &[0, 1, 0, 1]).as_ref(), Some(&pem));
        assert_eq!(rsa_spki_pem(&[], &[1, 0, 1]), None);
        assert_eq!(rsa_spki_pem(&[0xc1; 256], &[0]), None);
    }
}
