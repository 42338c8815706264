//! The token cache: the last asset token and access token, kept in the state directory so a
//! restart serves at once without calling Salesforce, and an offline boot serves until the
//! token expires.
//!
//! The file is JSON, mode 0600, written atomically. It records whose tokens these are
//! (instance, client, device, key thumbprint); a file for anything else is *foreign* and is
//! discarded, as is a corrupt one: the cache only ever saves work, so losing it is harmless.
//!
//! Wall time on a device can be wrong after boot (no RTC, NTP not yet synced). A cached token
//! is only restored when the clock reads no earlier than when the file was saved: a clock
//! that went backwards cannot tell how much time has passed, and the token might be expired.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::AssetToken;
use crate::fsutil;
use wire::Secret;
use wire::jose::jws;
use wire::oauth::AssetTokenClaims;

/// The cache file's name in the state directory.
pub const FILE_NAME: &str = "token-cache.json";
const VERSION: u32 = 1;

/// Whose tokens a cache file holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Owner {
    pub instance_url: String,
    pub client_id: String,
    pub device_id: String,
    pub key_thumbprint: String,
    /// The verification setup the cached token passed ([`Verifier::fingerprint`]).
    ///
    /// [`Verifier::fingerprint`]: crate::salesforce::verify::Verifier::fingerprint
    pub verification: String,
}

#[derive(Serialize, Deserialize)]
struct File {
    version: u32,
    owner: Owner,
    /// Wall time of the save (Unix seconds).
    saved_at: i64,
    #[serde(default)]
    asset_token: Option<CachedToken>,
    #[serde(default)]
    access_token: Option<Secret>,
}

#[derive(Serialize, Deserialize)]
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
}

/// Reads and writes the cache file of one agent.
#[derive(Debug, Clone)]
pub struct Cache {
    path: PathBuf,
    owner: Owner,
}

// === impl Cache ===

impl Cache {
    pub fn new(state_dir: &Path, owner: Owner) -> Self {
        Self {
            path: state_dir.join(FILE_NAME),
            owner,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Restores what is still usable at wall time `now`. Never fails: a missing, corrupt,
    /// foreign or stale file yields nothing (with a warning for the unexpected cases).
    pub fn load(&self, now: i64) -> Restored {
        let bytes = match std::fs::read(&self.path) {
            Ok(b) => zeroize::Zeroizing::new(b),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Restored::default(),
            Err(e) => {
                tracing::warn!(file = %self.path.display(), error = %e, "could not read the token cache; ignoring it");
                return Restored::default();
            }
        };
        let file: File = match serde_json::from_slice(&bytes) {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(file = %self.path.display(), error = %e, "the token cache is corrupt; discarding it");
                self.discard();
                return Restored::default();
            }
        };
        if file.version != VERSION || file.owner != self.owner {
            tracing::warn!(file = %self.path.display(),
                "the token cache belongs to another instance, client, device, key or verification setup; discarding it");
            self.discard();
            return Restored::default();
        }
        if now < file.saved_at {
            tracing::warn!(file = %self.path.display(), saved_at = file.saved_at, now,
                "the clock reads earlier than when the token cache was saved; not trusting its asset token");
            return Restored {
                asset_token: None,
                access_token: file.access_token,
            };
        }
        let asset_token = file.asset_token.and_then(|t| restore(t, now));
        Restored {
            asset_token,
            access_token: file.access_token,
        }
    }

    /// Saves the current tokens (atomically, 0600). Failures are logged, not fatal: the
    /// cache is an optimisation.
    pub fn save(&self, asset: Option<&AssetToken>, access: Option<&Secret>, now: i64) {
        let file = File {
            version: VERSION,
            owner: self.owner.clone(),
            saved_at: now,
            asset_token: asset.map(|t| CachedToken {
                jwt: t.jwt.clone(),
                token_type: t.token_type.clone(),
                issued_token_type: t.issued_token_type.clone(),
            }),
            access_token: access.cloned(),
        };
        let bytes = match serde_json::to_vec(&file) {
            Ok(b) => zeroize::Zeroizing::new(b),
            Err(e) => {
                tracing::warn!(error = %e, "could not encode the token cache");
                return;
            }
        };
        if let Err(e) = fsutil::write_secret_atomic(&self.path, &bytes) {
            tracing::warn!(error = %crate::error::chain(&e), "could not save the token cache");
        }
    }

    fn discard(&self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Rebuilds a token from its JWT at wall time `now`: monotonic deadlines from `exp`/`iat`.
fn restore(t: CachedToken, now: i64) -> Option<AssetToken> {
    let parts: jws::Parts<serde_json::Value, AssetTokenClaims> =
        jws::decode_unverified(t.jwt.expose()).ok()?;
    let claims = parts.claims;
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
    use wire::jose::b64url;

    fn owner() -> Owner {
        Owner {
            instance_url: "https://acme.my.salesforce.com".into(),
            client_id: "3MVG".into(),
            device_id: "d1".into(),
            key_thumbprint: "kid".into(),
            verification: "jwks;aud=;iss=".into(),
        }
    }

    fn token(iat: i64, exp: i64) -> AssetToken {
        let claims = format!(r#"{{"iat":{iat},"exp":{exp},"sub":"02i1"}}"#);
        let jwt = format!(
            "{}.{}.{}",
            b64url(b"{}"),
            b64url(claims.as_bytes()),
            b64url(b"sig")
        );
        AssetToken {
            jwt: Secret::new(jwt),
            token_type: "Bearer".into(),
            issued_token_type: "urn:ietf:params:oauth:token-type:jwt".into(),
            claims: serde_json::from_str(&claims).unwrap(),
            received: Instant::now(),
            expires: Instant::now() + Duration::from_secs(60),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn round_trip_restores_remaining_lifetime() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::new(dir.path(), owner());
        cache.save(Some(&token(1000, 1060)), Some(&Secret::new("00D!x")), 1010);
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(cache.path()).unwrap().permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
        let r = cache.load(1030);
        let t = r.asset_token.unwrap();
        // At 1030 (whole seconds) the true time may be up to 1030.999: 29 s are sure.
        assert_eq!(t.remaining(), Duration::from_secs(29));
        assert_eq!(t.lifetime(), Duration::from_secs(59));
        assert_eq!(r.access_token.unwrap().expose(), "00D!x");
        // Expired by now, or possibly in the last second: not restored.
        assert!(cache.load(1060).asset_token.is_none());
        assert!(cache.load(1059).asset_token.is_none());
    }

    #[test]
    fn clock_behind_the_save_is_not_trusted() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::new(dir.path(), owner());
        cache.save(Some(&token(1000, 1060)), None, 1010);
        assert!(cache.load(5).asset_token.is_none());
    }

    #[test]
    fn corrupt_and_foreign_files_are_discarded() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::new(dir.path(), owner());
        std::fs::write(cache.path(), b"{not json").unwrap();
        assert!(cache.load(0).asset_token.is_none());
        assert!(!cache.path().exists());

        let mut other = owner();
        other.key_thumbprint = "another-key".into();
        Cache::new(dir.path(), other).save(Some(&token(1000, 1060)), None, 1010);
        let r = cache.load(1020);
        assert!(r.asset_token.is_none() && r.access_token.is_none());
        assert!(!cache.path().exists());
    }
}
