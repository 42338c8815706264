//! The subject access token (spec §5): how the agent proves who it acts for before the
//! exchange. Salesforce sends no `expires_in`, so an access token is kept until the exchange
//! rejects it.
//!
//! The methods are variants of [`Credentials`]; each turns configuration into a fresh
//! access token with one call to the token endpoint.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::error::{Error as UpstreamError, Step};
use super::upstream::Upstream;
use crate::fsutil;
use crate::secure_path::{self, Trust};
use wire::Secret;
use wire::oauth::OAuthTokenResponse;

/// An access token for the connected app.
#[derive(Debug, Clone)]
pub struct AccessToken {
    pub token: Secret,
    /// The instance the grant answered for, as Salesforce reported it.
    pub instance_url: Option<String>,
}

/// Why no access token could be had.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    #[error("could not read the refresh token file {}", path.display())]
    ReadRefreshToken {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "no refresh token yet: {} does not exist or is empty. Store the connected app's refresh token there (mode 0600), or run 'asset-agent enroll' for the device flow",
        path.display()
    )]
    NoRefreshToken { path: PathBuf },
    #[error(
        "the refresh token file {} is readable by others (mode {mode:04o}); fix it with: chmod 600 {}",
        path.display(), path.display()
    )]
    RefreshTokenPermissions { path: PathBuf, mode: u32 },
    #[error("the refresh token file is not safe to use")]
    UnsafeRefreshToken(#[source] secure_path::Error),
    #[error("could not store the rotated refresh token; the old one is no longer valid")]
    PersistRotated(#[source] fsutil::Error),
    #[error("could not sign the JWT-bearer assertion")]
    Assertion(#[source] wire::jose::jws::Error),
}

/// How the agent obtains its subject access token.
pub enum Credentials {
    /// `grant_type=refresh_token`; the token lives in a file and is rewritten on rotation.
    /// Also the steady state of the device flow, once enrolled.
    RefreshToken(RefreshToken),
    /// `grant_type=client_credentials`: runs as the app's integration user.
    ClientCredentials { client_id: String, secret: Secret },
    /// The JWT bearer grant (RFC 7523): an assertion signed with a key whose certificate is
    /// uploaded to the connected app.
    JwtBearer(JwtBearer),
}

/// Settings of the JWT bearer grant.
pub struct JwtBearer {
    pub client_id: String,
    pub username: String,
    pub audience: String,
    pub key: std::sync::Arc<dyn crate::keys::Signer>,
    /// Clock-skew correction for the assertion's timestamps.
    pub skew: std::sync::Arc<crate::skew::Skew>,
    pub clock: wire::clock::Clock,
}

/// How long a JWT-bearer assertion is valid (Salesforce accepts up to a few minutes).
pub const ASSERTION_LIFETIME_SECS: i64 = 180;

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.method())
    }
}

// === impl Credentials ===

impl Credentials {
    /// Obtains a new access token.
    ///
    /// # Errors
    /// See [`Error`].
    pub async fn obtain(&self, up: &Upstream) -> Result<AccessToken, Error> {
        match self {
            Credentials::RefreshToken(rt) => rt.obtain(up).await,
            Credentials::ClientCredentials { client_id, secret } => {
                let form = [
                    ("grant_type", wire::oauth::GRANT_CLIENT_CREDENTIALS),
                    ("client_id", client_id.as_str()),
                    ("client_secret", secret.expose()),
                ];
                let resp: OAuthTokenResponse = up
                    .post_form(Step::AccessToken, wire::oauth::TOKEN_PATH, &form)
                    .await?;
                Ok(resp.into())
            }
            Credentials::JwtBearer(jb) => {
                let assertion = jb.assertion()?;
                let form = [
                    ("grant_type", wire::oauth::GRANT_JWT_BEARER),
                    ("assertion", assertion.expose()),
                ];
                let resp: OAuthTokenResponse = up
                    .post_form(Step::AccessToken, wire::oauth::TOKEN_PATH, &form)
                    .await?;
                Ok(resp.into())
            }
        }
    }

    /// Retries storing a rotated refresh token that is still waiting for the disk.
    pub fn persist_pending(&self) {
        if let Credentials::RefreshToken(rt) = self {
            rt.persist_pending();
        }
    }

    /// Whether the stored credential changed since it was last used (a refresh token
    /// re-enrolled or replaced while the agent was failing).
    pub fn changed(&self) -> bool {
        match self {
            Credentials::RefreshToken(rt) => rt.changed(),
            _ => false,
        }
    }

    /// Whether the grant carries timestamps the server checks (the JWT-bearer assertion),
    /// so a wrong device clock can make it fail.
    pub fn is_time_sensitive(&self) -> bool {
        matches!(self, Credentials::JwtBearer(_))
    }

    /// The method's name as configured (`refresh_token`, ...).
    pub fn method(&self) -> &'static str {
        match self {
            Credentials::RefreshToken(_) => "refresh_token",
            Credentials::ClientCredentials { .. } => "client_credentials",
            Credentials::JwtBearer(_) => "jwt_bearer",
        }
    }
}

impl From<OAuthTokenResponse> for AccessToken {
    fn from(resp: OAuthTokenResponse) -> Self {
        Self {
            token: resp.access_token,
            instance_url: resp.instance_url,
        }
    }
}

// === impl JwtBearer ===

impl JwtBearer {
    /// The RFC 7523 assertion: iss = client_id, sub = username, aud, exp a few minutes
    /// ahead, on skew-corrected time so a device with a wrong clock still gets in.
    ///
    /// # Errors
    /// [`Error::Assertion`] when signing fails.
    pub fn assertion(&self) -> Result<Secret, Error> {
        #[derive(serde::Serialize)]
        struct Claims<'a> {
            iss: &'a str,
            sub: &'a str,
            aud: &'a str,
            iat: i64,
            exp: i64,
            jti: String,
        }
        let now = self.skew.corrected_unix(&self.clock);
        let claims = Claims {
            iss: &self.client_id,
            sub: &self.username,
            aud: &self.audience,
            iat: now,
            exp: now + ASSERTION_LIFETIME_SECS,
            jti: wire::jose::new_jti(),
        };
        wire::jose::jws::sign(self.key.as_ref(), &claims)
            .map(Secret::new)
            .map_err(Error::Assertion)
    }
}

/// The refresh-token grant with optional rotation.
///
/// The file is the source of truth and is read before every grant, so a token stored by
/// `asset-agent enroll` (first enrollment, or re-enrollment after a revocation) is picked up
/// by a running agent without a restart. A rotated token is written to the file before it
/// is used; if that write fails (a read-only or full disk), the token is kept in memory (never
/// dropped: the old one is already dead), copied to the fallback file in the runtime
/// directory (a tmpfs that survives a crash of the agent, though not a reboot), and the
/// agent goes on serving with the new tokens; the write is retried before every pass. At
/// start, a fallback copy newer than the file is the token to use.
#[derive(Debug)]
pub struct RefreshToken {
    client_id: String,
    client_secret: Option<Secret>,
    path: PathBuf,
    /// Where a rotated token that could not be stored waits, crash-safe (runtime dir).
    fallback: Option<PathBuf>,
    memory: Mutex<Memory>,
}

#[derive(Debug, Default)]
struct Memory {
    /// The token last read from or written to the file.
    last: Option<Secret>,
    /// A rotated token that could not be persisted yet.
    unsaved: Option<Secret>,
}

// === impl RefreshToken ===

impl RefreshToken {
    pub fn new(client_id: String, client_secret: Option<Secret>, path: PathBuf) -> Self {
        Self {
            client_id,
            client_secret,
            path,
            fallback: None,
            memory: Mutex::new(Memory::default()),
        }
    }

    /// Keeps a rotated token that cannot be stored in `path` too (see the type's docs), and
    /// picks up a copy a crashed agent left there when it is newer than the file.
    #[must_use]
    pub fn with_fallback(mut self, path: PathBuf) -> Self {
        if let Some(token) = newer_copy(&path, &self.path) {
            tracing::warn!(file = %path.display(), "a rotated refresh token that was never stored is waiting here; using it and storing it now");
            self.memory().unsaved = Some(token);
        }
        self.fallback = Some(path);
        self
    }

    /// Retries storing a rotated token that is still waiting (before every pass, so a disk
    /// that comes back is used at once).
    pub fn persist_pending(&self) {
        let unsaved = self.memory().unsaved.clone();
        if let Some(token) = unsaved {
            self.persist(&token);
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn memory(&self) -> std::sync::MutexGuard<'_, Memory> {
        self.memory
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The token to use now: a rotated one still waiting to be persisted (persisted first),
    /// else the file's.
    fn current(&self) -> Result<Secret, Error> {
        let unsaved = self.memory().unsaved.clone();
        if let Some(token) = unsaved {
            self.persist(&token);
            return Ok(token);
        }
        let token = read_refresh_token(&self.path)?;
        let mut memory = self.memory();
        if memory.last.as_ref().is_some_and(|last| *last != token) {
            tracing::info!(file = %self.path.display(), "the refresh token file changed; using the new token");
        }
        memory.last = Some(token.clone());
        Ok(token)
    }

    /// Writes `token` to the file; if that fails, keeps it in memory and in the fallback
    /// file for the next attempt. Returns whether the file holds it.
    fn persist(&self, token: &Secret) -> bool {
        let result = fsutil::write_secret_atomic(&self.path, token.expose().as_bytes());
        let was_unsaved = self.memory().unsaved.is_some();
        let mut memory = self.memory();
        match result {
            Ok(()) => {
                memory.last = Some(token.clone());
                memory.unsaved = None;
                drop(memory);
                if let Some(fallback) = &self.fallback {
                    let _ = std::fs::remove_file(fallback);
                }
                if was_unsaved {
                    tracing::info!(file = %self.path.display(), "the rotated refresh token is stored now");
                }
                true
            }
            Err(e) => {
                let first = memory.unsaved.as_ref() != Some(token);
                memory.unsaved = Some(token.clone());
                drop(memory);
                let kept = self.fallback.as_ref().filter(|fallback| {
                    fsutil::write_secret_atomic(fallback, token.expose().as_bytes()).is_ok()
                });
                let err = Error::PersistRotated(e);
                if first {
                    match kept {
                        Some(f) => {
                            tracing::error!(file = %self.path.display(), kept_in = %f.display(),
                            error = %crate::error::chain(&err),
                            "could not store the rotated refresh token; serving on, keeping it in memory and in the runtime directory, and retrying before every refresh")
                        }
                        None => {
                            tracing::error!(file = %self.path.display(), error = %crate::error::chain(&err),
                            "could not store the rotated refresh token; serving on, keeping it in memory only, and retrying before every refresh")
                        }
                    }
                }
                false
            }
        }
    }

    /// Whether the file now holds a token other than the one last used (someone ran
    /// `asset-agent enroll` or replaced it), so a failing agent can retry at once.
    pub fn changed(&self) -> bool {
        match read_refresh_token(&self.path) {
            Ok(token) => self.memory().last.as_ref() != Some(&token),
            Err(_) => false,
        }
    }

    async fn obtain(&self, up: &Upstream) -> Result<AccessToken, Error> {
        let refresh = self.current()?;
        let mut form = vec![
            ("grant_type", wire::oauth::GRANT_REFRESH_TOKEN),
            ("refresh_token", refresh.expose()),
            ("client_id", self.client_id.as_str()),
        ];
        if let Some(secret) = &self.client_secret {
            form.push(("client_secret", secret.expose()));
        }
        let resp: OAuthTokenResponse = up
            .post_form(Step::AccessToken, wire::oauth::TOKEN_PATH, &form)
            .await?;
        if let Some(rotated) = resp
            .refresh_token
            .filter(|r| !r.is_empty() && *r != refresh)
        {
            // Rotation: the old token is already dead at Salesforce. Persist the new one
            // before anything else; if the disk refuses it, it waits in memory and in the
            // runtime directory, and the agent serves on with the new access token.
            if self.persist(&rotated) {
                tracing::info!(file = %self.path.display(), "refresh token rotated and stored");
            }
        }
        Ok(AccessToken {
            token: resp.access_token,
            instance_url: resp.instance_url,
        })
    }
}

/// The token in `copy` if it is a usable refresh token file no older than `file`.
fn newer_copy(copy: &Path, file: &Path) -> Option<Secret> {
    let mtime = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let copied = mtime(copy)?;
    if mtime(file).is_some_and(|f| f > copied) {
        return None;
    }
    read_refresh_token(copy).ok()
}

/// Reads a refresh token file: owner-only permissions, surrounding whitespace trimmed.
///
/// # Errors
/// [`Error::NoRefreshToken`] when missing or empty, else the read or permission error.
pub fn read_refresh_token(path: &Path) -> Result<Secret, Error> {
    read_refresh_token_trusting(path, &Trust::process())
}

/// As [`read_refresh_token`], judging the file by [`secure_path`]'s rule for `trust`.
///
/// # Errors
/// As [`read_refresh_token`]; [`Error::UnsafeRefreshToken`] when another user could read or
/// replace it (a symlink, an open directory, a foreign owner).
pub fn read_refresh_token_trusting(path: &Path, trust: &Trust) -> Result<Secret, Error> {
    let raw = secure_path::read("refresh token file", path, trust).map_err(|e| match e {
        e if e.is_not_found() => Error::NoRefreshToken {
            path: path.to_owned(),
        },
        secure_path::Error::Mode { path, mode, .. } => {
            Error::RefreshTokenPermissions { path, mode }
        }
        secure_path::Error::Inspect { path, source, .. } => {
            Error::ReadRefreshToken { path, source }
        }
        other => Error::UnsafeRefreshToken(other),
    })?;
    let raw = std::str::from_utf8(&raw).map_err(|_| Error::ReadRefreshToken {
        path: path.to_owned(),
        source: io::Error::new(io::ErrorKind::InvalidData, "not UTF-8"),
    })?;
    let token = raw.trim();
    if token.is_empty() {
        return Err(Error::NoRefreshToken {
            path: path.to_owned(),
        });
    }
    Ok(Secret::new(token))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn reads_trimmed_and_checks_mode() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("rt");
        assert!(matches!(
            read_refresh_token(&p),
            Err(Error::NoRefreshToken { .. })
        ));
        fsutil::write_secret_atomic(&p, b"  5Aep861\n").unwrap();
        assert_eq!(read_refresh_token(&p).unwrap().expose(), "5Aep861");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = read_refresh_token(&p).unwrap_err().to_string();
        assert!(err.contains("chmod 600"), "{err}");
        fsutil::write_secret_atomic(&p, b"\n").unwrap();
        assert!(matches!(
            read_refresh_token(&p),
            Err(Error::NoRefreshToken { .. })
        ));
    }
}
