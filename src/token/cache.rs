//! The token cache: the last asset token and access token, kept in the state directory so a
//! restart serves at once without calling Salesforce, and an offline boot serves until the
//! token expires.
//!
//! The file is a compact JWS signed with the device key (through [`Signer`], so a key in
//! hardware signs it the same way), mode 0600, written atomically. Its payload records whose
//! tokens these are (instance, client, device, key thumbprint, verification setup) and the
//! org's signing keys the token was verified with, so an offline restart can verify it again
//! without a JWKS fetch. On restore the file's signature must verify with the device key,
//! and the asset token must pass exactly the checks a fresh one does (signature, `iss`,
//! `aud`, `exp`, `nbf`, `cnf`). A file that fails any of this, a corrupt one, or one for
//! anything else is discarded with a warning naming it: the cache only ever saves work, so
//! losing it costs one exchange.
//!
//! Wall time on a device can be wrong after boot (no RTC, NTP not yet synced). A cached token
//! is only restored when the clock reads no earlier than when the file was saved: a clock
//! that went backwards cannot tell how much time has passed, and the token might be expired.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::AssetToken;
use crate::fsutil;
use crate::keys::Signer;
use crate::salesforce::verify::{self, Verifier};
use crate::secure_path::{self, Trust};
use wire::Secret;
use wire::jose::{RsaPublicJwk, jws};
use wire::oauth::AssetTokenClaims;

/// The cache file's name in the state directory.
pub const FILE_NAME: &str = "token-cache.json";
const VERSION: u32 = 2;

/// Whose tokens a cache file holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Owner {
    pub instance_url: String,
    pub client_id: String,
    pub device_id: String,
    pub key_thumbprint: String,
    /// The verification setup the cached token passed ([`Verifier::fingerprint`]).
    pub verification: String,
}

/// The signed payload.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Body {
    version: u32,
    owner: Owner,
    /// Wall time of the save (Unix seconds).
    saved_at: i64,
    #[serde(default)]
    asset_token: Option<CachedToken>,
    #[serde(default)]
    access_token: Option<Secret>,
    /// The org's signing keys held when saving (JWKS mode), for verifying offline.
    #[serde(default)]
    jwks: Vec<RsaPublicJwk>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct CachedToken {
    jwt: Secret,
    token_type: String,
    issued_token_type: String,
}

/// What a cache file gave back.
#[derive(Debug, Default)]
pub struct Restored {
    pub asset_token: Option<AssetToken>,
    pub access_token: Option<Secret>,
    /// The lifetime of the cached asset token, even an expired one: it tells the refresh
    /// loop that this is a restart and what refresh interval to scale its spread to.
    pub lifetime: Option<Duration>,
}

/// Why a cache file was not used.
#[derive(Debug, thiserror::Error)]
pub enum Rejected {
    #[error("it is not a JWS of the expected shape")]
    Corrupt(#[source] jws::Error),
    #[error("it is not signed by this device's key (altered, or written by another key)")]
    Signature,
    #[error("it belongs to another instance, client, device, key or verification setup")]
    Foreign,
    #[error("its asset token fails verification")]
    Token(#[source] verify::Error),
}

/// Reads and writes the cache file of one agent.
#[derive(Clone)]
pub struct Cache {
    path: PathBuf,
    owner: Owner,
    signer: Arc<dyn Signer>,
}

// === impl Cache ===

impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache")
            .field("path", &self.path)
            .field("owner", &self.owner)
            .finish_non_exhaustive()
    }
}

impl Cache {
    pub fn new(state_dir: &Path, owner: Owner, signer: Arc<dyn Signer>) -> Self {
        Self {
            path: state_dir.join(FILE_NAME),
            owner,
            signer,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Restores what is still usable at wall time `now`, verifying the asset token with
    /// `verifier` (whose JWKS cache is seeded with the keys kept in the file). Never fails:
    /// a missing, corrupt, altered, foreign, unverifiable or stale file yields nothing (with
    /// a warning naming the file for the unexpected cases), and a fresh token is fetched.
    pub fn load(&self, now: i64, verifier: &Verifier) -> Restored {
        let bytes = match secure_path::read("token cache", &self.path, &Trust::process()) {
            Ok(b) => b,
            Err(e) if e.is_not_found() => return Restored::default(),
            // A link, or a file others may read or that another user owns: its content is
            // not trusted, and the next save puts a private file in its place (the rename
            // replaces a link, never follows it).
            Err(e) if e.is_about_the_file() => {
                tracing::warn!(file = %self.path.display(), error = %crate::error::chain(&e),
                    "discarding the token cache; fetching a fresh token");
                self.discard();
                return Restored::default();
            }
            Err(e) => {
                tracing::warn!(file = %self.path.display(), error = %crate::error::chain(&e),
                    "not using the token cache; fetching a fresh token");
                return Restored::default();
            }
        };
        let body = match self.open(&bytes) {
            Ok(body) => body,
            Err(e) => {
                tracing::warn!(file = %self.path.display(), error = %crate::error::chain(&e),
                    "discarding the token cache; fetching a fresh token");
                self.discard();
                return Restored::default();
            }
        };
        verifier.seed(body.jwks);
        if now < body.saved_at {
            tracing::warn!(file = %self.path.display(), saved_at = body.saved_at, now,
                "the clock reads earlier than when the token cache was saved; not trusting its asset token");
            return Restored {
                asset_token: None,
                access_token: body.access_token,
                lifetime: None,
            };
        }
        let lifetime = body.asset_token.as_ref().and_then(lifetime);
        let asset_token = body.asset_token.and_then(|t| {
            match verifier.verify_offline(&t.jwt, now) {
                Ok(claims) => restore(t, claims, now),
                Err(verify::Error::Expired { .. }) => None,
                Err(e) => {
                    let e = Rejected::Token(e);
                    tracing::warn!(file = %self.path.display(), error = %crate::error::chain(&e),
                        "not serving the cached asset token; fetching a fresh one");
                    None
                }
            }
        });
        Restored {
            asset_token,
            access_token: body.access_token,
            lifetime,
        }
    }

    /// Checks the file's signature and owner and returns its payload.
    pub(crate) fn open(&self, bytes: &[u8]) -> Result<Body, Rejected> {
        let text = std::str::from_utf8(bytes)
            .map_err(|_| Rejected::Corrupt(jws::Error::Shape))?
            .trim();
        let parts: jws::Parts<serde_json::Value, Body> =
            jws::decode_unverified(text).map_err(Rejected::Corrupt)?;
        let key = self.signer.public_jwk();
        if parts.header.get("kid").and_then(serde_json::Value::as_str) != Some(key.kid.as_str())
            || !key.verify_rs256(parts.signing_input.as_bytes(), &parts.signature)
        {
            return Err(Rejected::Signature);
        }
        let body = parts.claims;
        if body.version != VERSION || body.owner != self.owner {
            return Err(Rejected::Foreign);
        }
        Ok(body)
    }

    /// Whether [`Cache::save`] may block for long: signing on a hardware token.
    pub fn may_block(&self) -> bool {
        self.signer.may_block()
    }

    /// Saves the current tokens and the org keys held (signed, atomically, 0600).
    /// Failures are logged, not fatal: the cache is an optimisation.
    pub fn save(
        &self,
        asset: Option<&AssetToken>,
        access: Option<&Secret>,
        jwks: Vec<RsaPublicJwk>,
        now: i64,
    ) {
        let body = Body {
            version: VERSION,
            owner: self.owner.clone(),
            saved_at: now,
            asset_token: asset.map(|t| CachedToken {
                jwt: t.jwt.clone(),
                token_type: t.token_type.clone(),
                issued_token_type: t.issued_token_type.clone(),
            }),
            access_token: access.cloned(),
            jwks,
        };
        let signed = match jws::sign(self.signer.as_ref(), &body) {
            Ok(s) => zeroize::Zeroizing::new(s),
            Err(e) => {
                tracing::warn!(error = %crate::error::chain(&e), "could not sign the token cache; not saving it");
                return;
            }
        };
        if let Err(e) = fsutil::write_secret_atomic(&self.path, signed.as_bytes()) {
            tracing::warn!(error = %crate::error::chain(&e), "could not save the token cache");
        }
    }

    fn discard(&self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The whole validity period of a cached token (`exp - iat`), expired or not: only used
/// to scale the boot spread, never to serve the token.
fn lifetime(t: &CachedToken) -> Option<Duration> {
    let parts: jws::Parts<serde_json::Value, AssetTokenClaims> =
        jws::decode_unverified(t.jwt.expose()).ok()?;
    let c = parts.claims;
    u64::try_from(c.exp - c.iat?)
        .ok()
        .filter(|s| *s > 0)
        .map(Duration::from_secs)
}

/// Rebuilds a verified token at wall time `now`: monotonic deadlines from `exp`/`iat`.
fn restore(t: CachedToken, claims: AssetTokenClaims, now: i64) -> Option<AssetToken> {
    // `now` is whole seconds and the true time up to a second later: count the token as
    // expiring a second early rather than serve it past its exp.
    let left = u64::try_from(claims.exp - now - 1)
        .ok()
        .filter(|s| *s > 0)?;
    let age = u64::try_from(now - claims.iat.unwrap_or(now)).unwrap_or(0);
    let mono = Instant::now();
    let received = mono.checked_sub(Duration::from_secs(age)).unwrap_or(mono);
    Some(AssetToken {
        jwt: t.jwt,
        token_type: t.token_type,
        issued_token_type: t.issued_token_type,
        claims,
        received,
        expires: mono + Duration::from_secs(left),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::FileKey;
    use crate::salesforce::verify::Keys;
    use wire::jose::b64url;
    use wire::oauth::Confirmation;

    fn device() -> Arc<dyn Signer> {
        Arc::new(
            FileKey::from_pem(
                Path::new("device-key.pem"),
                include_bytes!("../../tests/data/device-key.pem"),
            )
            .unwrap(),
        )
    }

    /// The org's asset-token signing key.
    fn org() -> FileKey {
        FileKey::from_pem(
            Path::new("emulator-key.pem"),
            include_bytes!("../../tests/data/emulator-key.pem"),
        )
        .unwrap()
    }

    fn other() -> Arc<dyn Signer> {
        Arc::new(
            FileKey::from_pem(
                Path::new("other-key.pem"),
                include_bytes!("../../tests/data/other-key.pem"),
            )
            .unwrap(),
        )
    }

    fn owner() -> Owner {
        Owner {
            instance_url: "https://acme.my.salesforce.com".into(),
            client_id: "3MVG".into(),
            device_id: "d1".into(),
            key_thumbprint: "kid".into(),
            verification: "jwks;aud=;iss=".into(),
        }
    }

    /// A verifier in JWKS mode bound to the device key, holding no keys yet.
    fn verifier() -> Verifier {
        Verifier::new(
            Verifier::jwks(),
            vec!["https://acme.my.salesforce.com".into()],
            Some("https://acme.my.salesforce.com".into()),
            Duration::from_secs(30),
        )
        .bound_to(device().public_jwk().kid.clone())
    }

    fn claims(iat: i64, exp: i64) -> AssetTokenClaims {
        AssetTokenClaims {
            iss: Some("https://acme.my.salesforce.com".into()),
            sub: Some("02i1".into()),
            aud: vec!["https://acme.my.salesforce.com".into()],
            exp,
            nbf: Some(iat),
            iat: Some(iat),
            jti: Some("j".into()),
            did: Some("d1".into()),
            name: None,
            cnf: Some(Confirmation {
                jwk: device().public_jwk().clone(),
            }),
        }
    }

    fn token_from(claims: &AssetTokenClaims, signer: &dyn Signer) -> AssetToken {
        AssetToken {
            jwt: Secret::new(jws::sign(signer, claims).unwrap()),
            token_type: "Bearer".into(),
            issued_token_type: "urn:ietf:params:oauth:token-type:jwt".into(),
            claims: claims.clone(),
            received: Instant::now(),
            expires: Instant::now() + Duration::from_secs(60),
        }
    }

    fn token(iat: i64, exp: i64) -> AssetToken {
        token_from(&claims(iat, exp), &org())
    }

    fn cache(dir: &Path) -> Cache {
        Cache::new(dir, owner(), device())
    }

    fn org_keys() -> Vec<RsaPublicJwk> {
        vec![org().public_jwk().clone()]
    }

    #[tokio::test(start_paused = true)]
    async fn round_trip_restores_remaining_lifetime() {
        let dir = tempfile::tempdir().unwrap();
        let cache = cache(dir.path());
        cache.save(
            Some(&token(1000, 1060)),
            Some(&Secret::new("00D!x")),
            org_keys(),
            1010,
        );
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(cache.path()).unwrap().permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
        let r = cache.load(1030, &verifier());
        let t = r.asset_token.unwrap();
        // At 1030 (whole seconds) the true time may be up to 1030.999: 29 s are sure.
        assert_eq!(t.remaining(), Duration::from_secs(29));
        assert_eq!(t.lifetime(), Duration::from_secs(59));
        assert_eq!(r.access_token.unwrap().expose(), "00D!x");
        // Expired by now, or possibly in the last second: not restored.
        assert!(cache.load(1060, &verifier()).asset_token.is_none());
        assert!(cache.load(1059, &verifier()).asset_token.is_none());
    }

    #[test]
    fn the_kept_jwks_verifies_offline_and_seeds_the_verifier() {
        let dir = tempfile::tempdir().unwrap();
        let cache = cache(dir.path());
        cache.save(Some(&token(1000, 1060)), None, org_keys(), 1010);
        let v = verifier();
        assert!(v.known_keys().is_empty());
        assert!(cache.load(1020, &v).asset_token.is_some());
        // The next fresh token signed by the same org key needs no JWKS fetch.
        assert_eq!(v.known_keys(), org_keys());
        // Saved without the org's keys (nothing fetched yet): cannot verify offline, so
        // the token is not served.
        cache.save(Some(&token(1000, 1060)), None, Vec::new(), 1010);
        assert!(cache.load(1020, &verifier()).asset_token.is_none());
    }

    /// A token altered inside a cache file that is still correctly signed (as by someone
    /// holding the device key): its claims no longer match the org's signature.
    #[test]
    fn an_altered_claim_with_the_old_signature_is_not_served() {
        let dir = tempfile::tempdir().unwrap();
        let cache = cache(dir.path());
        let good = token(1000, 1060);
        let mut parts = good.jwt.expose().split('.');
        let (h, _, sig) = (
            parts.next().unwrap(),
            parts.next().unwrap(),
            parts.next().unwrap(),
        );
        let mut altered = claims(1000, 1060);
        altered.exp = 99_999;
        altered.sub = Some("02iEVIL".into());
        let forged = format!(
            "{h}.{}.{sig}",
            b64url(&serde_json::to_vec(&altered).unwrap())
        );
        let mut bad = good;
        bad.jwt = Secret::new(forged);
        cache.save(Some(&bad), None, org_keys(), 1010);
        assert!(cache.load(1020, &verifier()).asset_token.is_none());
        // Every check a fresh token gets: another signer, aud, iss, cnf.
        let mut c = claims(1000, 1060);
        for (what, token) in [
            ("signer", token_from(&c, other().as_ref())),
            ("aud", {
                c.aud = vec!["https://other".into()];
                token_from(&c, &org())
            }),
            ("iss", {
                c = claims(1000, 1060);
                c.iss = Some("https://other".into());
                token_from(&c, &org())
            }),
            ("cnf", {
                c = claims(1000, 1060);
                c.cnf = Some(Confirmation {
                    jwk: other().public_jwk().clone(),
                });
                token_from(&c, &org())
            }),
        ] {
            cache.save(Some(&token), None, org_keys(), 1010);
            assert!(
                cache.load(1020, &verifier()).asset_token.is_none(),
                "{what}"
            );
        }
    }

    #[test]
    fn an_edited_file_is_discarded() {
        let dir = tempfile::tempdir().unwrap();
        let cache = cache(dir.path());
        cache.save(Some(&token(1000, 1060)), None, org_keys(), 1010);
        let text = std::fs::read_to_string(cache.path()).unwrap();
        let mut parts: Vec<String> = text.split('.').map(str::to_owned).collect();
        let mut body: serde_json::Value =
            serde_json::from_slice(&wire::jose::b64url_decode(&parts[1]).unwrap()).unwrap();
        body["saved_at"] = 1011.into();
        parts[1] = b64url(&serde_json::to_vec(&body).unwrap());
        crate::fsutil::write_secret_atomic(cache.path(), parts.join(".").as_bytes()).unwrap();
        assert!(cache.load(1020, &verifier()).asset_token.is_none());
        assert!(!cache.path().exists());

        // Signed by another key: not this device's file.
        Cache::new(dir.path(), owner(), other()).save(
            Some(&token(1000, 1060)),
            None,
            org_keys(),
            1010,
        );
        assert!(matches!(
            cache.open(&std::fs::read(cache.path()).unwrap()),
            Err(Rejected::Signature)
        ));
    }

    #[test]
    fn clock_behind_the_save_is_not_trusted() {
        let dir = tempfile::tempdir().unwrap();
        let cache = cache(dir.path());
        cache.save(Some(&token(1000, 1060)), None, org_keys(), 1010);
        assert!(cache.load(5, &verifier()).asset_token.is_none());
    }

    #[test]
    fn corrupt_and_foreign_files_are_discarded() {
        let dir = tempfile::tempdir().unwrap();
        let cache = cache(dir.path());
        crate::fsutil::write_secret_atomic(cache.path(), b"{not json").unwrap();
        assert!(cache.load(0, &verifier()).asset_token.is_none());
        assert!(!cache.path().exists());

        let mut other = owner();
        other.key_thumbprint = "another-key".into();
        Cache::new(dir.path(), other, device()).save(
            Some(&token(1000, 1060)),
            None,
            org_keys(),
            1010,
        );
        let r = cache.load(1020, &verifier());
        assert!(r.asset_token.is_none() && r.access_token.is_none());
        assert!(!cache.path().exists());
    }

    #[test]
    fn a_symlinked_or_open_cache_is_not_read() {
        let dir = tempfile::tempdir().unwrap();
        let real = tempfile::tempdir().unwrap();
        cache(real.path()).save(Some(&token(1000, 1060)), None, org_keys(), 1010);
        let cache = cache(dir.path());
        std::os::unix::fs::symlink(real.path().join(FILE_NAME), cache.path()).unwrap();
        assert!(cache.load(1020, &verifier()).asset_token.is_none());
    }

    #[test]
    fn pinned_and_unverified_modes_keep_no_jwks() {
        let v = Verifier::new(Keys::Unverified, Vec::new(), None, Duration::ZERO);
        assert!(v.known_keys().is_empty());
    }

    proptest::proptest! {
        /// The parser never panics on any input, and anything not signed by the device key
        /// is refused.
        #[test]
        fn arbitrary_files_are_refused_without_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            let dir = tempfile::tempdir().unwrap();
            let cache = cache(dir.path());
            proptest::prop_assert!(cache.open(&bytes).is_err());
        }

        /// JWS-shaped input with arbitrary JSON-ish payload: refused, never a panic.
        #[test]
        fn arbitrary_jws_shapes_are_refused(h in ".{0,40}", p in ".{0,200}", sig in "[A-Za-z0-9_-]{0,64}") {
            let dir = tempfile::tempdir().unwrap();
            let cache = cache(dir.path());
            let text = format!("{}.{}.{sig}", b64url(h.as_bytes()), b64url(p.as_bytes()));
            proptest::prop_assert!(cache.open(text.as_bytes()).is_err());
        }

        /// A valid file with one byte changed anywhere is refused.
        #[test]
        fn any_flipped_byte_is_refused(at in 0usize..4096, bit in 0u8..8) {
            let dir = tempfile::tempdir().unwrap();
            let cache = cache(dir.path());
            cache.save(Some(&token(1000, 1060)), Some(&Secret::new("00D!x")), org_keys(), 1010);
            let mut bytes = std::fs::read(cache.path()).unwrap();
            let i = at % bytes.len();
            bytes[i] ^= 1 << bit;
            proptest::prop_assert!(cache.open(&bytes).is_err());
        }
    }
}
