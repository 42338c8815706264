//! The subject access token (spec §5): how the agent proves who it acts for before the
//! exchange. Salesforce sends no `expires_in`, so an access token is kept until the exchange
//! rejects it.
//!
//! The methods are variants of [`Credentials`]; each turns configuration into a fresh
//! access token with one call to the token endpoint.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

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
/// by a running agent without a restart. A rotated token is kept in memory first (never
/// dropped: the old one is already dead) and written to the file on the state directory's
/// file-work lane ([`crate::filework`]); the grant waits up to [`PERSIST_WAIT`] for that
/// write. If it fails (a read-only or full disk) or does not finish in time (a frozen
/// filesystem, a stalled SD card), the token is also copied to the fallback file in the
/// runtime directory (a tmpfs that survives a crash of the agent, though not a reboot), and
/// the agent goes on serving with the new tokens; the write is retried before every pass
/// and completes on its own when the disk answers again. At start, a fallback copy newer
/// than the file is the token to use.
#[derive(Debug)]
pub struct RefreshToken {
    client_id: String,
    client_secret: Option<Secret>,
    store: Arc<Store>,
}

/// How long a grant that rotated the refresh token waits for it to reach the disk before
/// it goes on (with the token in memory and in the fallback copy).
pub const PERSIST_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// Where the refresh token is kept, shared with the file-work threads.
#[derive(Debug)]
struct Store {
    path: PathBuf,
    /// Where a rotated token that could not be stored waits, crash-safe (runtime dir).
    fallback: Option<PathBuf>,
    memory: Mutex<Memory>,
    /// Serialises the fallback copy's writes and removal (file-work threads only: the
    /// runtime thread never waits on a write through `memory`).
    fallback_turn: Mutex<()>,
}

#[derive(Debug, Default)]
struct Memory {
    /// The token last read from or written to the file.
    last: Option<Secret>,
    /// A rotated token that is not in the file yet.
    unsaved: Option<Secret>,
    /// A write of `unsaved` is queued or running.
    persisting: bool,
    /// The last token whose failed write was logged (once per token, not per retry).
    reported: Option<Secret>,
}

// === impl RefreshToken ===

impl RefreshToken {
    pub fn new(client_id: String, client_secret: Option<Secret>, path: PathBuf) -> Self {
        Self {
            client_id,
            client_secret,
            store: Arc::new(Store {
                path,
                fallback: None,
                memory: Mutex::new(Memory::default()),
                fallback_turn: Mutex::new(()),
            }),
        }
    }

    /// Keeps a rotated token that cannot be stored in `path` too (see the type's docs), and
    /// picks up a copy a crashed agent left there when it is newer than the file.
    #[must_use]
    pub fn with_fallback(mut self, path: PathBuf) -> Self {
        if let Some(token) = newer_copy(&path, &self.store.path) {
            tracing::warn!(file = %path.display(), "a rotated refresh token that was never stored is waiting here; using it and storing it now");
            self.store.memory().unsaved = Some(token);
        }
        match Arc::get_mut(&mut self.store) {
            Some(store) => store.fallback = Some(path),
            None => {
                let store = Store {
                    path: self.store.path.clone(),
                    fallback: Some(path),
                    memory: Mutex::new(std::mem::take(&mut *self.store.memory())),
                    fallback_turn: Mutex::new(()),
                };
                self.store = Arc::new(store);
            }
        }
        self
    }

    /// Retries storing a rotated token that is still waiting (before every pass, so a disk
    /// that comes back is used at once). Returns at once: the write runs on the state
    /// directory's file-work lane.
    pub fn persist_pending(&self) {
        drop(self.start_persist());
    }

    pub fn path(&self) -> &Path {
        &self.store.path
    }

    /// Queues the write of the unsaved token, unless one is queued already; the future
    /// says whether the file holds it (false: failed, or nothing to write).
    fn start_persist(&self) -> Option<impl std::future::Future<Output = bool> + use<>> {
        {
            let mut memory = self.store.memory();
            if memory.unsaved.is_none() || memory.persisting {
                return None;
            }
            memory.persisting = true;
        }
        let store = self.store.clone();
        let done = crate::filework::Lane::for_file(&store.path).submit(move || store.persist_all());
        Some(async move { done.await.unwrap_or(false) })
    }

    /// The token to use now: a rotated one still waiting to be persisted (its write queued
    /// again if none is), else the file's.
    fn current(&self) -> Result<Secret, Error> {
        let unsaved = self.store.memory().unsaved.clone();
        if let Some(token) = unsaved {
            drop(self.start_persist());
            return Ok(token);
        }
        let token = read_refresh_token(&self.store.path)?;
        let mut memory = self.store.memory();
        if memory.last.as_ref().is_some_and(|last| *last != token) {
            tracing::info!(file = %self.store.path.display(), "the refresh token file changed; using the new token");
        }
        memory.last = Some(token.clone());
        Ok(token)
    }

    /// Whether the file now holds a token other than the one last used (someone ran
    /// `asset-agent enroll` or replaced it), so a failing agent can retry at once.
    pub fn changed(&self) -> bool {
        match read_refresh_token(&self.store.path) {
            Ok(token) => self.store.memory().last.as_ref() != Some(&token),
            Err(_) => false,
        }
    }

    /// Waits (within [`PERSIST_WAIT`], and not at all while the state directory's lane is
    /// stalled) for a write started by [`Self::start_persist`]; whether the file holds the
    /// token, `None` when not known in time.
    async fn wait_stored(&self, done: impl std::future::Future<Output = bool>) -> Option<bool> {
        if crate::filework::Lane::for_file(&self.store.path).is_stalled() {
            return None;
        }
        tokio::time::timeout(PERSIST_WAIT, done).await.ok()
    }

    async fn obtain(&self, up: &Upstream) -> Result<AccessToken, Error> {
        // A rotated token still waiting for the disk is stored first, if the disk answers.
        if let Some(done) = self.start_persist() {
            self.wait_stored(done).await;
        }
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
            // Rotation: the old token is already dead at Salesforce. The new one is in
            // memory at once; the file gets it on the file-work lane, waited for a bounded
            // time (see the type's docs), so a stalled disk never holds the refresh loop.
            self.store.memory().unsaved = Some(rotated.clone());
            let stored = match self.start_persist() {
                Some(done) => self.wait_stored(done).await,
                // A write is queued already (it writes the newest token), on a stalled lane.
                None => None,
            };
            match stored {
                Some(true) => {
                    tracing::info!(file = %self.store.path.display(), "refresh token rotated and stored");
                }
                // Refused: `persist` logged it and kept the copy.
                Some(false) => {}
                None => {
                    tracing::warn!(file = %self.store.path.display(),
                        "the state directory has not stored the rotated refresh token (its filesystem does not answer within {} s); serving on, keeping it in memory and in the runtime directory until it does",
                        PERSIST_WAIT.as_secs());
                    let store = self.store.clone();
                    if let Some(fallback) = store.fallback.clone() {
                        let copied = crate::filework::Lane::for_file(&fallback)
                            .submit(move || store.keep_in_fallback(&rotated));
                        let _ = tokio::time::timeout(PERSIST_WAIT, copied).await;
                    }
                }
            }
        }
        Ok(AccessToken {
            token: resp.access_token,
            instance_url: resp.instance_url,
        })
    }
}

// === impl Store ===

impl Store {
    fn memory(&self) -> std::sync::MutexGuard<'_, Memory> {
        self.memory
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Writes the unsaved token until the file holds the newest (a rotation may come
    /// while a write runs). On a file-work thread. Returns whether the file holds it.
    fn persist_all(&self) -> bool {
        loop {
            let token = {
                let mut memory = self.memory();
                match memory.unsaved.clone() {
                    Some(token) => token,
                    None => {
                        memory.persisting = false;
                        return true;
                    }
                }
            };
            if !self.persist(&token) {
                self.memory().persisting = false;
                return false;
            }
        }
    }

    /// Writes `token` to the file; if that fails, it stays in memory and goes to the
    /// fallback file for the next attempt. Returns whether the file holds it.
    fn persist(&self, token: &Secret) -> bool {
        let result = fsutil::write_secret_atomic(&self.path, token.expose().as_bytes());
        let mut memory = self.memory();
        match result {
            Ok(()) => {
                let recovered = memory.reported.take().is_some();
                memory.last = Some(token.clone());
                let stored = memory.unsaved.as_ref() == Some(token);
                if stored {
                    memory.unsaved = None;
                }
                drop(memory);
                // After a copy being written now (it sees `unsaved` cleared otherwise).
                if let (true, Some(fallback)) = (stored, &self.fallback) {
                    let _turn = self.fallback_turn();
                    let _ = std::fs::remove_file(fallback);
                }
                if recovered {
                    tracing::info!(file = %self.path.display(), "the rotated refresh token is stored now");
                }
                true
            }
            Err(e) => {
                let first = memory.reported.as_ref() != Some(token);
                memory.reported = Some(token.clone());
                drop(memory);
                let kept = self
                    .fallback
                    .as_ref()
                    .filter(|_| self.keep_in_fallback(token));
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

    /// Copies `token` to the fallback file while it is still the unsaved one (in turn with
    /// the copy's removal, so a store that completes meanwhile cannot leave a stale copy).
    /// Whether the fallback holds it.
    fn keep_in_fallback(&self, token: &Secret) -> bool {
        let Some(fallback) = &self.fallback else {
            return false;
        };
        let _turn = self.fallback_turn();
        if self.memory().unsaved.as_ref() != Some(token) {
            return false;
        }
        fsutil::write_secret_atomic(fallback, token.expose().as_bytes()).is_ok()
    }

    fn fallback_turn(&self) -> std::sync::MutexGuard<'_, ()> {
        self.fallback_turn
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
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
