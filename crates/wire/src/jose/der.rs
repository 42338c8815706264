//! The few DER structures an RSA key file and a pinned certificate need: PKCS#8
//! `PrivateKeyInfo` (RFC 5208) holding an RSA key (RFC 8017, A.1.2), `SubjectPublicKeyInfo`
//! (RFC 5280) holding an RSA public key, and PEM armour (RFC 7468).
//!
//! Reading only walks the structure to answer what an error message needs (the key's
//! algorithm, its size); ring checks the key itself when it loads it. Writing builds the
//! private key's buffers at their final size, so no copy of key material is left behind
//! by a reallocation, and wipes them on drop.

use zeroize::Zeroizing;

const SEQUENCE: u8 = 0x30;
const INTEGER: u8 = 0x02;
const BIT_STRING: u8 = 0x03;
const OCTET_STRING: u8 = 0x04;
const OID: u8 = 0x06;

/// The rsaEncryption OID (1.2.840.113549.1.1.1), content octets.
const RSA_ENCRYPTION: [u8; 9] = [0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];

/// The rsaEncryption AlgorithmIdentifier (the OID, NULL parameters), DER.
pub(super) const RSA_ALGORITHM_ID: [u8; 15] = [
    0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01, 0x05, 0x00,
];

/// What a PKCS#8 `PrivateKeyInfo` holds, as far as choosing an error message goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pkcs8 {
    /// An RSA key whose modulus has this many bits.
    Rsa { bits: usize },
    /// A key of another algorithm: its OID, dotted (`1.2.840.10045.2.1` for EC).
    Other { oid: String },
}

/// The structure is not DER of the expected shape.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Malformed(&'static str);

/// Reads a PKCS#8 `PrivateKeyInfo`: its algorithm, and for RSA the modulus size.
///
/// # Errors
/// When `der` is not a `PrivateKeyInfo`, or holds an RSA key that is not an
/// `RSAPrivateKey`.
pub fn read_pkcs8(der: &[u8]) -> Result<Pkcs8, Malformed> {
    let info = whole(der, SEQUENCE, "not a PKCS#8 PrivateKeyInfo")?;
    let (_version, rest) = take(info, INTEGER, "no PKCS#8 version")?;
    let (algorithm, rest) = take(rest, SEQUENCE, "no PKCS#8 algorithm")?;
    let (oid, _params) = take(algorithm, OID, "no algorithm OID")?;
    if oid != RSA_ENCRYPTION {
        return Ok(Pkcs8::Other {
            oid: dotted(oid).ok_or(Malformed("unreadable algorithm OID"))?,
        });
    }
    let (key, _attributes) = take(rest, OCTET_STRING, "no private key")?;
    let rsa = whole(key, SEQUENCE, "not an RSAPrivateKey")?;
    let (_version, rest) = take(rsa, INTEGER, "no RSAPrivateKey version")?;
    let (n, _) = take(rest, INTEGER, "no modulus")?;
    Ok(Pkcs8::Rsa {
        bits: bit_length(n),
    })
}

/// The modulus and public exponent (big-endian, as DER has them) of an RSA
/// `SubjectPublicKeyInfo`; `None` for another algorithm or a malformed structure.
pub fn read_rsa_spki(der: &[u8]) -> Option<(&[u8], &[u8])> {
    let spki = whole(der, SEQUENCE, "").ok()?;
    let (algorithm, rest) = take(spki, SEQUENCE, "").ok()?;
    let (oid, _params) = take(algorithm, OID, "").ok()?;
    if oid != RSA_ENCRYPTION {
        return None;
    }
    let (bits, _) = take(rest, BIT_STRING, "").ok()?;
    let (&unused, key) = bits.split_first()?;
    if unused != 0 {
        return None;
    }
    let key = whole(key, SEQUENCE, "").ok()?;
    let (n, rest) = take(key, INTEGER, "").ok()?;
    let (e, rest) = take(rest, INTEGER, "").ok()?;
    rest.is_empty().then_some((strip(n), strip(e)))
}

/// The big-endian components of an RSA private key, in `RSAPrivateKey` order.
#[derive(Clone, Copy)]
pub struct RsaPrivateParts<'a> {
    pub n: &'a [u8],
    pub e: &'a [u8],
    pub d: &'a [u8],
    pub p: &'a [u8],
    pub q: &'a [u8],
    pub dp: &'a [u8],
    pub dq: &'a [u8],
    pub qinv: &'a [u8],
}

/// The PKCS#8 PEM (`-----BEGIN PRIVATE KEY-----`) of an RSA private key.
pub fn rsa_pkcs8_pem(parts: &RsaPrivateParts<'_>) -> Zeroizing<String> {
    let ints = [
        &[0u8][..],
        parts.n,
        parts.e,
        parts.d,
        parts.p,
        parts.q,
        parts.dp,
        parts.dq,
        parts.qinv,
    ];
    let body_len = ints.iter().map(|i| uint_len(i)).sum();
    let mut body = Zeroizing::new(Vec::with_capacity(body_len));
    for i in ints {
        push_uint(&mut body, i);
    }
    let rsa = tlv(SEQUENCE, &body);
    let mut info_body = Zeroizing::new(Vec::with_capacity(
        uint_len(&[0]) + RSA_ALGORITHM_ID.len() + tlv_len(rsa.len()),
    ));
    push_uint(&mut info_body, &[0]);
    info_body.extend_from_slice(&RSA_ALGORITHM_ID);
    push_tlv(&mut info_body, OCTET_STRING, &rsa);
    pem("PRIVATE KEY", &tlv(SEQUENCE, &info_body))
}

/// PEM armour: `label` and the base64 of `der` in lines of 64.
pub fn pem(label: &str, der: &[u8]) -> Zeroizing<String> {
    let b64 = Zeroizing::new(base64::Engine::encode(
        &base64::engine::general_purpose::STANDARD,
        der,
    ));
    let frame = "-----BEGIN -----\n".len() * 2 + 2 * label.len();
    let mut out = Zeroizing::new(String::with_capacity(
        frame + b64.len() + b64.len().div_ceil(64),
    ));
    out.push_str("-----BEGIN ");
    out.push_str(label);
    out.push_str("-----\n");
    // Base64 is ASCII, so every 64-byte chunk is on a character boundary.
    let mut rest = b64.as_str();
    while !rest.is_empty() {
        let (line, tail) = rest.split_at(rest.len().min(64));
        out.push_str(line);
        out.push('\n');
        rest = tail;
    }
    out.push_str("-----END ");
    out.push_str(label);
    out.push_str("-----\n");
    out
}

/// A DER TLV of `tag` around `body`, in a buffer of exactly its size.
pub(super) fn tlv(tag: u8, body: &[u8]) -> Zeroizing<Vec<u8>> {
    let mut out = Zeroizing::new(Vec::with_capacity(tlv_len(body.len())));
    push_tlv(&mut out, tag, body);
    out
}

/// A DER INTEGER for the unsigned big-endian `be` (leading zeros stripped, a zero byte
/// added when the top bit is set).
pub(super) fn uint(be: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(uint_len(be));
    push_uint(&mut out, be);
    out
}

fn push_uint(out: &mut Vec<u8>, be: &[u8]) {
    let be = strip(be);
    let pad = be.first().is_none_or(|&top| top & 0x80 != 0);
    push_header(out, INTEGER, be.len() + usize::from(pad));
    if pad {
        out.push(0);
    }
    out.extend_from_slice(be);
}

fn uint_len(be: &[u8]) -> usize {
    let be = strip(be);
    let pad = be.first().is_none_or(|&top| top & 0x80 != 0);
    tlv_len(be.len() + usize::from(pad))
}

fn push_tlv(out: &mut Vec<u8>, tag: u8, body: &[u8]) {
    push_header(out, tag, body.len());
    out.extend_from_slice(body);
}

fn push_header(out: &mut Vec<u8>, tag: u8, len: usize) {
    out.push(tag);
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
}

fn tlv_len(body: usize) -> usize {
    let len_octets = if body < 0x80 {
        1
    } else {
        1 + (usize::BITS - body.leading_zeros()).div_ceil(8) as usize
    };
    1 + len_octets + body
}

/// The body of the one TLV that `input` must be entirely.
fn whole<'a>(input: &'a [u8], tag: u8, what: &'static str) -> Result<&'a [u8], Malformed> {
    match take(input, tag, what)? {
        (body, []) => Ok(body),
        _ => Err(Malformed(what)),
    }
}

/// The body of the TLV of `tag` at the start of `input`, and what follows it. Definite
/// lengths only, in their shortest form (DER).
fn take<'a>(
    input: &'a [u8],
    tag: u8,
    what: &'static str,
) -> Result<(&'a [u8], &'a [u8]), Malformed> {
    let bad = || Malformed(what);
    let (&t, rest) = input.split_first().ok_or_else(bad)?;
    let (&first, mut rest) = rest.split_first().ok_or_else(bad)?;
    if t != tag {
        return Err(bad());
    }
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let octets = usize::from(first & 0x7f);
        if octets == 0 || octets > 4 || rest.len() < octets || rest[0] == 0 {
            return Err(bad());
        }
        let (len_bytes, tail) = rest.split_at(octets);
        rest = tail;
        let len = len_bytes
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
        if len < 0x80 {
            return Err(bad());
        }
        len
    };
    if rest.len() < len {
        return Err(bad());
    }
    Ok(rest.split_at(len))
}

/// `be` without its leading zero bytes.
fn strip(be: &[u8]) -> &[u8] {
    let start = be.iter().position(|&b| b != 0).unwrap_or(be.len());
    &be[start..]
}

/// The number of significant bits of the unsigned big-endian `be`.
pub fn bit_length(be: &[u8]) -> usize {
    let be = strip(be);
    match be.first() {
        None => 0,
        Some(&top) => (be.len() - 1) * 8 + (8 - top.leading_zeros() as usize),
    }
}

/// An OID's content octets in dotted form; `None` when an arc overflows or is cut short.
fn dotted(oid: &[u8]) -> Option<String> {
    let mut arcs = Vec::new();
    let mut value: u64 = 0;
    for (i, &b) in oid.iter().enumerate() {
        value = value.checked_mul(128)? | u64::from(b & 0x7f);
        if b & 0x80 == 0 {
            if arcs.is_empty() {
                let first = (value / 40).min(2);
                arcs.push(first);
                arcs.push(value - first * 40);
            } else {
                arcs.push(value);
            }
            value = 0;
        } else if i + 1 == oid.len() {
            return None;
        }
    }
    if arcs.is_empty() {
        return None;
    }
    Some(
        arcs.iter()
            .map(u64::to_string)
            .collect::<Vec<_>>()
            .join("."),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths_and_integers() {
        assert_eq!(*tlv(0x04, &[1, 2]), vec![0x04, 2, 1, 2]);
        let long = tlv(0x04, &[0u8; 300]);
        assert_eq!(&long[..4], &[0x04, 0x82, 0x01, 0x2c]);
        assert_eq!(long.len(), tlv_len(300));
        assert_eq!(long.capacity(), long.len());
        assert_eq!(uint(&[0, 0, 0x01]), vec![0x02, 1, 0x01]);
        assert_eq!(uint(&[0x80]), vec![0x02, 2, 0x00, 0x80]);
        assert_eq!(uint(&[]), vec![0x02, 1, 0x00]);
        for n in [0usize, 1, 0x7f, 0x80, 0xff, 0x100, 0xffff, 0x10000] {
            assert_eq!(tlv(0x04, &vec![0; n]).len(), tlv_len(n), "{n}");
        }
    }

    #[test]
    fn reading_refuses_what_der_forbids() {
        // Long form for a short length, a leading zero length octet, indefinite length.
        assert!(take(&[0x04, 0x81, 0x05, 1, 2, 3, 4, 5], 0x04, "x").is_err());
        assert!(take(&[0x04, 0x82, 0x00, 0x81], 0x04, "x").is_err());
        assert!(take(&[0x30, 0x80, 0, 0], 0x30, "x").is_err());
        // Cut short, wrong tag, trailing bytes where a whole TLV is expected.
        assert!(take(&[0x04, 3, 1, 2], 0x04, "x").is_err());
        assert!(take(&[0x04, 0], 0x30, "x").is_err());
        assert!(whole(&[0x04, 0, 0], 0x04, "x").is_err());
        assert_eq!(
            take(&[0x04, 1, 9, 7], 0x04, "x"),
            Ok((&[9u8][..], &[7u8][..]))
        );
    }

    #[test]
    fn oids_read_dotted() {
        assert_eq!(
            dotted(&RSA_ENCRYPTION).as_deref(),
            Some("1.2.840.113549.1.1.1")
        );
        // id-ecPublicKey
        assert_eq!(
            dotted(&[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01]).as_deref(),
            Some("1.2.840.10045.2.1")
        );
        assert_eq!(dotted(&[0x2a, 0x86]), None);
        assert_eq!(dotted(&[]), None);
    }

    #[test]
    fn bit_lengths_count_from_the_top_bit() {
        assert_eq!(bit_length(&[0, 0x01, 0xff]), 9);
        assert_eq!(bit_length(&[0x80, 0]), 16);
        assert_eq!(bit_length(&[]), 0);
    }

    #[test]
    fn pem_lines_are_64_characters() {
        let pem = pem("PRIVATE KEY", &[0xab; 100]);
        let lines: Vec<&str> = pem.lines().collect();
        assert_eq!(lines[0], "-----BEGIN PRIVATE KEY-----");
        // 100 bytes are 136 base64 characters.
        assert_eq!(lines[1].len(), 64);
        assert_eq!(lines[2].len(), 64);
        assert_eq!(lines[3].len(), 8);
        assert_eq!(lines[4], "-----END PRIVATE KEY-----");
        assert_eq!(lines.len(), 5);
    }
}
