//! Verifying asset tokens before anyone is handed one (spec §4).
//!
//! The agent checks every asset token it receives: RS256 signature by the org's asset-signing
//! key, `exp`/`nbf`, and `iss`/`aud` when configured. A token that fails is never stored or
//! served; catching a misconfigured org here beats every backend rejecting the device.
//!
//! Keys come from the org's JWKS at `{instance_url}/id/keys` (selected by `kid`, cached, and
//! re-fetched when an unknown `kid` shows up, at most once per [`JWKS_REFETCH_MIN`]), or from
//! a pinned PEM certificate. `verify = "none"` skips the signature (and says so loudly at
//! start-up) but still refuses expired tokens.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use tokio::sync::Mutex;
use tokio::time::Instant;

use super::error::{Error as UpstreamError, Step};
use super::upstream::Upstream;
use wire::Secret;
use wire::jose::RsaPublicJwk;
use wire::oauth::{AssetTokenClaims, Jwks};

/// An unknown `kid` triggers a JWKS re-fetch at most this often, so a stream of bad tokens
/// cannot turn the agent into a JWKS hammer.
pub const JWKS_REFETCH_MIN: Duration = Duration::from_secs(30);

/// An asset token that must not be used.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The upstream error names the step ("fetching the asset-token signing keys failed").
    #[error(transparent)]
    Jwks(UpstreamError),
    #[error("the asset token is signed with key {kid:?}, which {instance}/id/keys does not list")]
    UnknownKid { kid: String, instance: String },
    #[error("the asset token header has no kid, so its signing key cannot be chosen")]
    NoKid,
    #[error("the asset token failed verification")]
    Invalid(#[source] jsonwebtoken::errors::Error),
    #[error("the asset token expired at {exp} (now {now})")]
    Expired { exp: i64, now: i64 },
    #[error("the asset token is not valid before {nbf} (now {now})")]
    NotYetValid { nbf: i64, now: i64 },
    #[error(
        "the asset token is bound (cnf.jwk) to key {found}, not to this device's key {expected}"
    )]
    WrongKey { found: String, expected: String },
    #[error(
        "the asset token is signed with key {kid:?}, which is not among the signing keys kept offline"
    )]
    KeyNotKept { kid: String },
}

/// The pinned certificate could not be used.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("could not read the asset-signing certificate {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    #[error("the asset-signing certificate {} is not a valid X.509 certificate", path.display())]
    Parse { path: PathBuf },
    #[error("the asset-signing certificate {} does not hold an RSA key", path.display())]
    NotRsa { path: PathBuf },
}

/// Where the signing key comes from.
#[derive(Debug)]
pub enum Keys {
    /// The org's JWKS, cached by kid (one cache shared by every identity of a gateway).
    Jwks(std::sync::Arc<Mutex<JwksCache>>),
    /// A pinned certificate's key; `kid` is not consulted.
    Pinned(RsaPublicJwk),
    /// No signature check (`verify = "none"`).
    Unverified,
}

/// The org's signing keys as last fetched (or restored from the token cache).
#[derive(Debug, Default)]
pub struct JwksCache {
    keys: HashMap<String, RsaPublicJwk>,
    fetched_at: Option<Instant>,
}

/// Checks asset tokens; see the module docs.
#[derive(Debug)]
pub struct Verifier {
    keys: Keys,
    audience: Vec<String>,
    issuer: Option<String>,
    leeway: Duration,
    /// The device key's RFC 7638 thumbprint: a token whose `cnf.jwk` names another key was
    /// issued for someone else and is refused.
    bound_to: Option<String>,
}

// === impl Verifier ===

impl Verifier {
    pub fn new(
        keys: Keys,
        audience: Vec<String>,
        issuer: Option<String>,
        leeway: Duration,
    ) -> Self {
        Self {
            keys,
            audience,
            issuer,
            leeway,
            bound_to: None,
        }
    }

    /// Also requires a token's `cnf.jwk`, when it has one, to be the key with `thumbprint`
    /// (the device key the actor token bound).
    #[must_use]
    pub fn bound_to(mut self, thumbprint: String) -> Self {
        self.bound_to = Some(thumbprint);
        self
    }

    /// A verifier with the same keys (the same JWKS cache), audience, issuer and leeway,
    /// bound to another device key: for another identity of a gateway.
    pub fn sibling(&self, thumbprint: String) -> Self {
        let keys = match &self.keys {
            Keys::Jwks(cache) => Keys::Jwks(cache.clone()),
            Keys::Pinned(jwk) => Keys::Pinned(jwk.clone()),
            Keys::Unverified => Keys::Unverified,
        };
        Self {
            keys,
            audience: self.audience.clone(),
            issuer: self.issuer.clone(),
            leeway: self.leeway,
            bound_to: Some(thumbprint),
        }
    }

    /// Verifies with keys from the org's JWKS.
    pub fn jwks() -> Keys {
        Keys::Jwks(std::sync::Arc::new(Mutex::new(JwksCache::default())))
    }

    /// Verifies with the key of the PEM certificate at `path`.
    ///
    /// # Errors
    /// When the file is unreadable, not a certificate, or not an RSA key.
    pub fn pinned(path: &Path) -> Result<Keys, CertError> {
        use rustls::pki_types::CertificateDer;
        use rustls::pki_types::pem::PemObject as _;
        let der = CertificateDer::from_pem_file(path).map_err(|source| CertError::Read {
            path: path.to_owned(),
            source,
        })?;
        let parse = || CertError::Parse {
            path: path.to_owned(),
        };
        let cert = webpki::EndEntityCert::try_from(&der).map_err(|_| parse())?;
        let spki_der = cert.subject_public_key_info();
        let Some((n, e)) = wire::jose::der::read_rsa_spki(spki_der.as_ref()) else {
            return Err(CertError::NotRsa {
                path: path.to_owned(),
            });
        };
        Ok(Keys::Pinned(RsaPublicJwk::from_components(n, e)))
    }

    /// What this verifier accepts, as a short string: a token cached under another
    /// verification setup (another pinned key, audience or issuer) must not be reused.
    pub fn fingerprint(&self) -> String {
        let keys = match &self.keys {
            Keys::Jwks(_) => "jwks".to_owned(),
            Keys::Pinned(jwk) => format!("certificate:{}", jwk.thumbprint()),
            Keys::Unverified => "none".to_owned(),
        };
        format!(
            "{keys};aud={};iss={}",
            self.audience.join(","),
            self.issuer.as_deref().unwrap_or("")
        )
    }

    /// Whether signatures are checked at all.
    pub fn checks_signature(&self) -> bool {
        !matches!(self.keys, Keys::Unverified)
    }

    /// Verifies `token` at `now` (Unix seconds, skew-corrected) and returns its claims.
    ///
    /// # Errors
    /// See [`Error`]. JWKS fetch failures are retryable; everything else means the token
    /// is unusable.
    pub async fn verify(
        &self,
        up: &Upstream,
        token: &Secret,
        now: i64,
    ) -> Result<AssetTokenClaims, Error> {
        let jwk = match &self.keys {
            Keys::Jwks(cache) => {
                let kid = kid_of(token)?;
                Some(self.jwks_key(cache, up, &kid).await?)
            }
            Keys::Pinned(jwk) => Some(jwk.clone()),
            Keys::Unverified => None,
        };
        self.check(token, jwk.as_ref(), now)
    }

    /// Verifies `token` exactly as [`Verifier::verify`] does, but only with the keys already
    /// held (pinned, or JWKS keys fetched or [seeded](Verifier::seed)): no network. For a
    /// token restored from the cache at start-up, which must pass the same checks as a
    /// fresh one.
    ///
    /// # Errors
    /// As [`Verifier::verify`]; [`Error::KeyNotKept`] when the token's `kid` is not held.
    pub fn verify_offline(&self, token: &Secret, now: i64) -> Result<AssetTokenClaims, Error> {
        let jwk = match &self.keys {
            Keys::Jwks(cache) => {
                let kid = kid_of(token)?;
                let held = cache
                    .try_lock()
                    .ok()
                    .and_then(|c| c.keys.get(&kid).cloned());
                Some(held.ok_or(Error::KeyNotKept { kid })?)
            }
            Keys::Pinned(jwk) => Some(jwk.clone()),
            Keys::Unverified => None,
        };
        self.check(token, jwk.as_ref(), now)
    }

    /// The org signing keys held (JWKS mode), for keeping with the token cache so an
    /// offline restart can verify without fetching them. Empty in the other modes, whose
    /// key comes from the configuration.
    pub fn known_keys(&self) -> Vec<RsaPublicJwk> {
        let Keys::Jwks(cache) = &self.keys else {
            return Vec::new();
        };
        let Ok(cache) = cache.try_lock() else {
            return Vec::new();
        };
        let mut keys: Vec<_> = cache.keys.values().cloned().collect();
        keys.sort_by(|a, b| a.kid.cmp(&b.kid));
        keys
    }

    /// Starts the JWKS cache with `keys` (kept with the token cache). They count as never
    /// fetched, so an unknown `kid` still fetches the JWKS at once.
    pub fn seed(&self, keys: Vec<RsaPublicJwk>) {
        let Keys::Jwks(cache) = &self.keys else {
            return;
        };
        if let Ok(mut cache) = cache.try_lock()
            && cache.keys.is_empty()
        {
            cache.keys = keys
                .into_iter()
                .filter(|k| k.kty == "RSA")
                .map(|k| (k.kid.clone(), k))
                .collect();
        }
    }

    /// Signature (with `jwk`; none for `verify = "none"`), `iss`, `aud`, `exp`, `nbf` and
    /// `cnf`, at `now`.
    fn check(
        &self,
        token: &Secret,
        jwk: Option<&RsaPublicJwk>,
        now: i64,
    ) -> Result<AssetTokenClaims, Error> {
        crate::crypto::install();
        let mut validation = Validation::new(Algorithm::RS256);
        // Time is checked below against our clock (virtual in tests, skew-corrected on
        // devices), not jsonwebtoken's SystemTime.
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.set_required_spec_claims(&["exp"]);
        if self.audience.is_empty() {
            validation.validate_aud = false;
        } else {
            validation.set_audience(&self.audience);
        }
        if let Some(iss) = &self.issuer {
            validation.set_issuer(&[iss]);
        }
        let claims = match jwk {
            None => {
                jsonwebtoken::dangerous::insecure_decode::<AssetTokenClaims>(token.expose())
                    .map_err(Error::Invalid)?
                    .claims
            }
            Some(jwk) => decode(token, jwk, &validation)?,
        };
        let leeway = i64::try_from(self.leeway.as_secs()).unwrap_or(i64::MAX);
        // exp is strict: an expired token is never accepted, whatever the leeway.
        if claims.exp <= now {
            return Err(Error::Expired {
                exp: claims.exp,
                now,
            });
        }
        if let Some(nbf) = claims.nbf.filter(|nbf| *nbf > now.saturating_add(leeway)) {
            return Err(Error::NotYetValid { nbf, now });
        }
        if let (Some(expected), Some(cnf)) = (&self.bound_to, &claims.cnf) {
            let found = cnf.jwk.thumbprint();
            if &found != expected {
                return Err(Error::WrongKey {
                    found,
                    expected: expected.clone(),
                });
            }
        }
        Ok(claims)
    }

    async fn jwks_key(
        &self,
        cache: &Mutex<JwksCache>,
        up: &Upstream,
        kid: &str,
    ) -> Result<RsaPublicJwk, Error> {
        let mut cache = cache.lock().await;
        if let Some(jwk) = cache.keys.get(kid) {
            return Ok(jwk.clone());
        }
        let recently = cache
            .fetched_at
            .is_some_and(|at| at.elapsed() < JWKS_REFETCH_MIN);
        if !recently {
            let jwks: Jwks = up
                .get_json(Step::Jwks, wire::oauth::JWKS_PATH)
                .await
                .map_err(Error::Jwks)?;
            cache.keys = rsa_keys(jwks);
            cache.fetched_at = Some(Instant::now());
            tracing::debug!(keys = cache.keys.len(), "asset-token signing keys fetched");
        }
        cache
            .keys
            .get(kid)
            .cloned()
            .ok_or_else(|| Error::UnknownKid {
                kid: kid.to_owned(),
                instance: up.url(""),
            })
    }
}

/// The `kid` of a token's header.
fn kid_of(token: &Secret) -> Result<String, Error> {
    let header = jsonwebtoken::decode_header(token.expose()).map_err(Error::Invalid)?;
    header.kid.ok_or(Error::NoKid)
}

fn decode(
    token: &Secret,
    jwk: &RsaPublicJwk,
    validation: &Validation,
) -> Result<AssetTokenClaims, Error> {
    let key = DecodingKey::from_rsa_components(&jwk.n, &jwk.e).map_err(Error::Invalid)?;
    jsonwebtoken::decode::<AssetTokenClaims>(token.expose(), &key, validation)
        .map(|data| data.claims)
        .map_err(Error::Invalid)
}

/// The RSA signing keys of a JWKS by kid; other key types and keys without kid are skipped.
fn rsa_keys(jwks: Jwks) -> HashMap<String, RsaPublicJwk> {
    jwks.keys
        .into_iter()
        .filter(|k| k.kty == "RSA" && k.use_.as_deref().is_none_or(|u| u == "sig"))
        .filter_map(|k| {
            Some((
                k.kid.clone()?,
                RsaPublicJwk {
                    kty: k.kty,
                    kid: k.kid?,
                    n: k.n?,
                    e: k.e?,
                },
            ))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use wire::oauth::JwksEntry;

    #[test]
    fn jwks_keeps_rsa_signing_keys_only() {
        let entry = |kty: &str, kid: Option<&str>, use_: Option<&str>| JwksEntry {
            kty: kty.into(),
            kid: kid.map(Into::into),
            n: Some("AQAB".into()),
            e: Some("AQAB".into()),
            alg: None,
            use_: use_.map(Into::into),
        };
        let keys = rsa_keys(Jwks {
            keys: vec![
                entry("RSA", Some("a"), None),
                entry("RSA", Some("b"), Some("sig")),
                entry("RSA", Some("c"), Some("enc")),
                entry("EC", Some("d"), None),
                entry("RSA", None, None),
            ],
        });
        let mut kids: Vec<_> = keys.keys().cloned().collect();
        kids.sort();
        assert_eq!(kids, ["a", "b"]);
    }

    #[test]
    fn pinned_certificate_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("asset.crt");
        std::fs::write(
            &p,
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let err = Verifier::pinned(&p).unwrap_err().to_string();
        assert!(err.contains("asset.crt"), "{err}");
    }
}
