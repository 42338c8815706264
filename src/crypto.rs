//! The one crypto backend, ring: installed for rustls, and a ring-backed `jsonwebtoken`
//! crypto provider (RS256 only).
//!
//! `jsonwebtoken` 12 dropped its ring backend; its remaining backends are aws-lc and
//! RustCrypto, and with neither enabled the first `encode`/`decode` panics. We keep a single
//! crypto backend (ring, which rustls also uses), so this module supplies the provider.
//! Every algorithm other than RS256 is refused with `InvalidAlgorithm`: asset tokens,
//! actor tokens and JWT-bearer assertions are all RS256, and refusing the rest closes the
//! door on algorithm-confusion attacks.

use jsonwebtoken::crypto::{CryptoProvider, JwtSigner, JwtVerifier, KeyUtils};
use jsonwebtoken::errors::{Error, ErrorKind};
use jsonwebtoken::jwk::ThumbprintHash;
use jsonwebtoken::signature;
use jsonwebtoken::{Algorithm, DecodingKey, DecodingKeyKind, EncodingKey};
use ring::signature::{self as sig, KeyPair as _};

static PROVIDER: CryptoProvider = CryptoProvider {
    signer_factory: new_signer,
    verifier_factory: new_verifier,
    key_utils: KeyUtils {
        rsa_pub_components_from_private_key: rsa_components_from_private_key,
        rsa_pub_components_from_public_key: rsa_components_from_public_key,
        ec_pub_components_from_private_key: |_, _| Err(ErrorKind::InvalidAlgorithm.into()),
        ed_pub_components_from_private_key: |_, _| Err(ErrorKind::InvalidAlgorithm.into()),
        compute_digest,
    },
};

/// Installs ring as `jsonwebtoken`'s and rustls's process default (our client configs name
/// ring explicitly; the default is there for any config built without one). Idempotent: a
/// second call, or a provider installed earlier by us, is fine.
pub fn install() {
    if CryptoProvider::try_get_default().is_none() {
        // Losing the race to another thread installing the same provider is harmless.
        let _ = PROVIDER.install_default();
    }
    // Err means a provider is already installed: ours, since ring is the only one built in.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

fn new_signer(alg: &Algorithm, key: &EncodingKey) -> Result<Box<dyn JwtSigner>, Error> {
    if *alg != Algorithm::RS256 {
        return Err(ErrorKind::InvalidAlgorithm.into());
    }
    // EncodingKey::from_rsa_der holds a PKCS#1 RSAPrivateKey, which ring parses directly.
    let pair = sig::RsaKeyPair::from_der(key.as_bytes())
        .map_err(|e| ErrorKind::InvalidRsaKey(e.to_string()))?;
    Ok(Box::new(Rs256Signer(pair)))
}

fn new_verifier(alg: &Algorithm, key: &DecodingKey) -> Result<Box<dyn JwtVerifier>, Error> {
    if *alg != Algorithm::RS256 {
        return Err(ErrorKind::InvalidAlgorithm.into());
    }
    Ok(Box::new(Rs256Verifier(key.clone())))
}

fn rsa_components_from_private_key(der: &[u8]) -> Result<(Vec<u8>, Vec<u8>), Error> {
    let pair =
        sig::RsaKeyPair::from_der(der).map_err(|e| ErrorKind::InvalidRsaKey(e.to_string()))?;
    let c = sig::RsaPublicKeyComponents::<Vec<u8>>::from(pair.public_key());
    Ok((c.n, c.e))
}

/// ring exposes no RSAPublicKey DER parser, and nothing here builds a JWK from a DER
/// public key (we build JWKs from ring key pairs), so this is refused rather than guessed.
fn rsa_components_from_public_key(_der: &[u8]) -> Result<(Vec<u8>, Vec<u8>), Error> {
    Err(ErrorKind::InvalidKeyFormat.into())
}

fn compute_digest(data: &[u8], hash: ThumbprintHash) -> Result<Vec<u8>, Error> {
    let alg = match hash {
        ThumbprintHash::SHA256 => &ring::digest::SHA256,
        ThumbprintHash::SHA384 => &ring::digest::SHA384,
        ThumbprintHash::SHA512 => &ring::digest::SHA512,
        _ => return Err(ErrorKind::InvalidAlgorithm.into()),
    };
    Ok(ring::digest::digest(alg, data).as_ref().to_vec())
}

struct Rs256Signer(sig::RsaKeyPair);

impl signature::Signer<Vec<u8>> for Rs256Signer {
    fn try_sign(&self, msg: &[u8]) -> Result<Vec<u8>, signature::Error> {
        let mut out = vec![0; self.0.public().modulus_len()];
        self.0
            .sign(
                &sig::RSA_PKCS1_SHA256,
                &ring::rand::SystemRandom::new(),
                msg,
                &mut out,
            )
            .map_err(|_| signature::Error::new())?;
        Ok(out)
    }
}

impl JwtSigner for Rs256Signer {
    fn algorithm(&self) -> Algorithm {
        Algorithm::RS256
    }
}

struct Rs256Verifier(DecodingKey);

impl signature::Verifier<Vec<u8>> for Rs256Verifier {
    fn verify(&self, msg: &[u8], signature: &Vec<u8>) -> Result<(), signature::Error> {
        let alg = &sig::RSA_PKCS1_2048_8192_SHA256;
        let ok = match self.0.kind() {
            DecodingKeyKind::SecretOrDer(der) => {
                sig::UnparsedPublicKey::new(alg, der).verify(msg, signature)
            }
            DecodingKeyKind::RsaModulusExponent { n, e } => {
                sig::RsaPublicKeyComponents { n, e }.verify(alg, msg, signature)
            }
        };
        ok.map_err(|_| signature::Error::new())
    }
}

impl JwtVerifier for Rs256Verifier {
    fn algorithm(&self) -> Algorithm {
        Algorithm::RS256
    }
}
