//! The emulated org's asset-token signing key and the forms it is published in: the JWKS
//! at `/id/keys` and a self-signed X.509 certificate (what an admin would download from
//! Setup and hand to a device backend).
//!
//! The key is a PKCS#8 PEM parsed into a [`RsaKey`], so the emulator signs with the same
//! ring code as the agent. Without a configured key a fresh 2048-bit one is
//! generated on a blocking thread (slow in debug builds, hence tests pass a fixture key).
//! A second "impostor" key backs the bad-signature fault; it is only generated if that
//! fault is used without one configured.

use rsa::pkcs8::{EncodePrivateKey as _, EncodePublicKey as _, LineEnding};
use tokio::sync::OnceCell;

use super::Error;
use wire::Secret;
use wire::jose::RsaPublicJwk;
use wire::jose::{RsaKey, SignError, Signer};
use wire::oauth::{Jwks, JwksEntry};

/// Why a configured signing key could not be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("not a PKCS#8 PEM ('-----BEGIN PRIVATE KEY-----')")]
    Pem,
    #[error("not a usable RSA key: {0}")]
    Rejected(String),
}

/// Parses a PKCS#8 PEM RSA private key.
///
/// # Errors
/// [`KeyError`] when it is not PEM, not PKCS#8 or not an RSA key ring can sign with.
pub fn key_from_pem(pem: &[u8]) -> Result<RsaKey, KeyError> {
    let (label, der) = rsa::pkcs8::der::pem::decode_vec(pem).map_err(|_| KeyError::Pem)?;
    if label != "PRIVATE KEY" {
        return Err(KeyError::Pem);
    }
    RsaKey::from_pkcs8(&der).map_err(|e| KeyError::Rejected(e.to_string()))
}

/// Size of generated keys.
const GENERATED_BITS: usize = 2048;

/// The signing key with its published forms, and the impostor key for faults.
pub(crate) struct Keys {
    key: RsaKey,
    jwks: Jwks,
    certificate_pem: String,
    impostor_pem: Option<Secret>,
    impostor: OnceCell<RsaKey>,
}

/// Signs with another key while claiming the emulator's `kid`, so verifiers pick the right
/// JWK and then find the signature wrong: what a botched key rotation looks like.
pub(crate) struct Impostor<'a> {
    jwk: &'a RsaPublicJwk,
    key: &'a RsaKey,
}

// === impl Keys ===

impl Keys {
    /// Loads (or generates) the signing key and derives its JWKS and certificate.
    ///
    /// # Errors
    /// When a configured key is not a usable RSA PKCS#8 key, generation fails or the
    /// certificate cannot be made.
    pub async fn load(signing: Option<Secret>, impostor: Option<Secret>) -> Result<Self, Error> {
        let pem = match signing {
            Some(pem) => pem,
            None => generate_pem().await?,
        };
        let key =
            crate::signing::key_from_pem(pem.expose().as_bytes()).map_err(Error::SigningKey)?;
        let certificate_pem = certificate(&pem)?;
        let jwk = key.public_jwk();
        let jwks = Jwks {
            keys: vec![JwksEntry {
                kty: "RSA".to_owned(),
                kid: Some(jwk.kid.clone()),
                n: Some(jwk.n.clone()),
                e: Some(jwk.e.clone()),
                alg: Some("RS256".to_owned()),
                use_: Some("sig".to_owned()),
            }],
        };
        Ok(Self {
            key,
            jwks,
            certificate_pem,
            impostor_pem: impostor,
            impostor: OnceCell::new(),
        })
    }

    pub fn signer(&self) -> &RsaKey {
        &self.key
    }

    pub fn jwks(&self) -> &Jwks {
        &self.jwks
    }

    pub fn certificate_pem(&self) -> &str {
        &self.certificate_pem
    }

    /// The impostor signer, loading or generating its key on first use.
    ///
    /// # Errors
    /// As [`Keys::load`].
    pub async fn impostor(&self) -> Result<Impostor<'_>, Error> {
        let key = self
            .impostor
            .get_or_try_init(|| async {
                let pem = match self.impostor_pem.clone() {
                    Some(pem) => pem,
                    None => generate_pem().await?,
                };
                crate::signing::key_from_pem(pem.expose().as_bytes()).map_err(Error::SigningKey)
            })
            .await?;
        Ok(Impostor {
            jwk: self.key.public_jwk(),
            key,
        })
    }
}

// === impl Impostor ===

impl Signer for Impostor<'_> {
    fn public_jwk(&self) -> &RsaPublicJwk {
        self.jwk
    }

    fn sign_rs256(&self, message: &[u8]) -> Result<Vec<u8>, SignError> {
        self.key.sign_rs256(message)
    }

    fn public_key_pem(&self) -> Result<String, SignError> {
        self.key.public_key_pem()
    }

    fn bits(&self) -> usize {
        self.key.bits()
    }
}

/// A fresh RSA key as PKCS#8 PEM, generated off the async threads.
async fn generate_pem() -> Result<Secret, Error> {
    tokio::task::spawn_blocking(|| {
        let key = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, GENERATED_BITS)
            .map_err(|_| Error::GenerateKey)?;
        let pem = key
            .to_pkcs8_pem(LineEnding::LF)
            .map_err(|_| Error::GenerateKey)?;
        Ok(Secret::new(pem.as_str()))
    })
    .await
    .map_err(|_| Error::GenerateKey)?
}

/// A self-signed certificate for the key, as the org's "asset token signing certificate".
fn certificate(pem: &Secret) -> Result<String, Error> {
    let pair = rcgen::KeyPair::from_pkcs8_pem_and_sign_algo(pem.expose(), &rcgen::PKCS_RSA_SHA256)
        .map_err(Error::Certificate)?;
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "Assets");
    params.distinguished_name.push(
        rcgen::DnType::OrganizationName,
        "asset-agent Salesforce emulator",
    );
    Ok(params.self_signed(&pair).map_err(Error::Certificate)?.pem())
}

/// An RSA JWK as an SPKI PEM (`AssetTokenEvent.DeviceKey`), or `None` if it is not a
/// valid RSA public key.
pub(crate) fn jwk_to_pem(jwk: &RsaPublicJwk) -> Option<String> {
    let (n, e) = jwk.components().ok()?;
    let key = rsa::RsaPublicKey::new(
        rsa::BigUint::from_bytes_be(&n),
        rsa::BigUint::from_bytes_be(&e),
    )
    .ok()?;
    key.to_public_key_pem(LineEnding::LF).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const EMULATOR_KEY: &str = include_str!("../../../tests/data/emulator-key.pem");
    const OTHER_KEY: &str = include_str!("../../../tests/data/other-key.pem");

    #[tokio::test]
    async fn jwks_and_certificate_describe_the_key() {
        let keys = Keys::load(
            Some(Secret::new(EMULATOR_KEY)),
            Some(Secret::new(OTHER_KEY)),
        )
        .await
        .unwrap();
        let entry = &keys.jwks().keys[0];
        let jwk = keys.signer().public_jwk();
        assert_eq!(entry.kid.as_deref(), Some(jwk.kid.as_str()));
        assert_eq!(entry.n.as_deref(), Some(jwk.n.as_str()));
        assert_eq!(entry.alg.as_deref(), Some("RS256"));
        assert!(
            keys.certificate_pem()
                .starts_with("-----BEGIN CERTIFICATE-----")
        );
        assert!(
            jwk_to_pem(jwk)
                .unwrap()
                .starts_with("-----BEGIN PUBLIC KEY-----")
        );

        let impostor = keys.impostor().await.unwrap();
        assert_eq!(impostor.public_jwk().kid, jwk.kid);
        let sig = impostor.sign_rs256(b"m").unwrap();
        assert!(!jwk.verify_rs256(b"m", &sig));
    }

    #[tokio::test]
    async fn bad_key_is_an_error() {
        let err = Keys::load(Some(Secret::new("junk")), None)
            .await
            .err()
            .unwrap();
        assert!(matches!(err, Error::SigningKey(_)), "{err}");
    }
}
