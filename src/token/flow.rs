//! One pass of the Asset Token Flow: access token → actor token → exchange → verify.
//!
//! The flow owns the subject access token. Salesforce does not say when it expires, so it
//! is kept until the exchange rejects it (`invalid_grant` or 401); then a new one is
//! obtained and the exchange retried once before the failure counts (spec §2).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::broadcast;
use tokio::time::Instant;

use super::AssetToken;
use crate::actor::{self, Identity};
use crate::keys::Signer;
use crate::salesforce::error::Class;
use crate::salesforce::subject::{self, AccessToken, Credentials};
use crate::salesforce::verify::{self, Verifier};
use crate::salesforce::{self, Upstream, exchange};
use wire::clock::{self, Clock};
use wire::jose::jws;
use wire::oauth::{ActorClaims, AssetTokenClaims};

/// The most upstream calls one [`Flow::fetch`] makes: access token and exchange, each
/// possibly repeated once on corrected time, again after a re-authentication, plus a
/// JWKS fetch.
pub const MAX_CALLS_PER_FETCH: u32 = 9;

/// What happened, step by step, for the demo's narration and for tests. Never carries a
/// token, only what is safe to show.
#[derive(Debug, Clone)]
pub enum Progress {
    AccessTokenObtained {
        method: &'static str,
    },
    AccessTokenRejected,
    ActorMinted {
        claims: Box<ActorClaims>,
    },
    AssetTokenIssued {
        claims: Box<AssetTokenClaims>,
        lifetime: Duration,
    },
    RefreshScheduled {
        in_: Duration,
    },
    RefreshFailed {
        reason: String,
        retry_in: Duration,
    },
}

/// A failed pass, sorted for the refresh loop.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Each variant says what failed ("obtaining the access token failed: ...", "could not
    /// read the refresh token file ..."); a prefix here only repeated it.
    #[error(transparent)]
    Subject(subject::Error),
    #[error("could not mint the actor token")]
    Mint(#[source] jws::Error),
    /// The upstream error names the step ("the token exchange failed: ..."): saying it
    /// here too printed it twice.
    #[error(transparent)]
    Exchange(salesforce::Error),
    #[error("the asset token was rejected")]
    Verify(#[source] verify::Error),
    /// Another identity of the gateway failed to obtain the shared access token moments
    /// ago; this identity waits instead of asking again.
    #[error(
        "obtaining the shared access token failed moments ago for another identity \
         ({reason}); it is asked again in {}s",
        retry_in.as_secs()
    )]
    AccessHeldOff {
        reason: String,
        class: Class,
        retry_in: Duration,
    },
}

// === impl Error ===

impl Error {
    /// Retryable or fatal (re-authentication was already attempted inside the flow).
    pub fn class(&self) -> Class {
        let class = match self {
            Error::Subject(subject::Error::Upstream(e)) | Error::Exchange(e) => e.class(),
            Error::Verify(verify::Error::Jwks(e)) => e.class(),
            // A token that fails verification, or a transient signing problem, may be gone
            // next time (a rotated org key, a glitch): retry with backoff.
            Error::Verify(_) | Error::Mint(_) => Class::Retryable,
            // The rotated token waits in memory and is written before the next grant, so
            // retrying costs Salesforce nothing until the disk takes it.
            Error::Subject(subject::Error::PersistRotated(_)) => Class::Retryable,
            Error::Subject(_) => Class::Fatal,
            Error::AccessHeldOff { class, .. } => *class,
        };
        match class {
            Class::Reauthenticate => Class::Fatal,
            c => c,
        }
    }

    /// The server's `Retry-After`, if any.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Error::Subject(subject::Error::Upstream(e))
            | Error::Exchange(e)
            | Error::Verify(verify::Error::Jwks(e)) => e.retry_after(),
            Error::AccessHeldOff { retry_in, .. } => Some(*retry_in),
            _ => None,
        }
    }

    /// Whether the device waits for enrollment (no refresh token yet).
    pub fn needs_enrollment(&self) -> bool {
        matches!(self, Error::Subject(subject::Error::NoRefreshToken { .. }))
    }

    /// A short machine-readable reason for status and metrics.
    pub fn reason(&self) -> String {
        match self {
            Error::Subject(subject::Error::Upstream(e)) | Error::Exchange(e) => e.reason(),
            Error::Subject(subject::Error::NoRefreshToken { .. }) => "needs_enrollment".into(),
            Error::Subject(subject::Error::PersistRotated(_)) => "store_refresh_token".into(),
            Error::Subject(_) => "credentials".into(),
            Error::Mint(_) => "sign".into(),
            Error::AccessHeldOff { reason, .. } => reason.clone(),
            Error::Verify(verify::Error::Jwks(e)) => format!("jwks_{}", e.reason()),
            Error::Verify(_) => "verify".into(),
        }
    }
}

/// The subject access token, shared by every identity of a gateway: one is obtained at a
/// time (single flight), and one rejected by an exchange is replaced once, not once per
/// identity. When Salesforce refuses or fails the grant, the other identities do not ask
/// again until a hold-off has passed (doubling from [`HOLD_OFF_MIN`] to [`HOLD_OFF_MAX`]
/// while the failures go on): an outage costs one grant per hold-off, not one per child.
/// An identity alone (no children running) is never held off: its own backoff and retry
/// budget pace it, and an admin's refresh still makes its one attempt.
#[derive(Default)]
pub struct SharedAccess {
    token: std::sync::Mutex<Option<AccessToken>>,
    obtaining: tokio::sync::Mutex<()>,
    held_off: std::sync::Mutex<Option<HoldOff>>,
    /// Flows that have fetched and are still alive: the running identities. (A gateway's
    /// template flow, from which children are made, never fetches and is not counted.)
    fetching: std::sync::atomic::AtomicUsize,
}

/// The first hold-off after a failed grant, shared by a gateway's identities.
pub const HOLD_OFF_MIN: Duration = Duration::from_secs(5);
/// The longest hold-off.
pub const HOLD_OFF_MAX: Duration = Duration::from_secs(300);

/// The last failed grant: until when the others wait, and what they report meanwhile.
#[derive(Clone)]
struct HoldOff {
    until: Instant,
    failures: u32,
    reason: String,
    class: Class,
}

/// Everything one pass needs.
pub struct Flow {
    pub upstream: Upstream,
    /// Shared with the other identities of a gateway.
    pub credentials: Arc<Credentials>,
    pub signer: Arc<dyn Signer>,
    pub identity: Identity,
    pub verifier: Verifier,
    pub clock: Clock,
    pub progress: broadcast::Sender<Progress>,
    access: Arc<SharedAccess>,
    /// Whether this flow is counted in `access.fetching`.
    counted: bool,
}

impl Drop for Flow {
    fn drop(&mut self) {
        if self.counted {
            self.access.fetching.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

// === impl SharedAccess ===

impl SharedAccess {
    fn get(&self) -> Option<AccessToken> {
        self.token.lock().ok().and_then(|t| t.clone())
    }

    fn set(&self, token: Option<AccessToken>) {
        if let Ok(mut t) = self.token.lock() {
            *t = token;
        }
    }

    /// The failure the caller must report instead of asking again, while a hold-off runs.
    fn held_off(&self) -> Option<Error> {
        let now = Instant::now();
        let h = self.held_off.lock().ok()?.clone()?;
        (h.until > now).then(|| Error::AccessHeldOff {
            reason: h.reason,
            class: h.class,
            retry_in: h.until - now,
        })
    }

    /// Records a grant Salesforce refused or failed: the others hold off.
    fn failed(&self, err: &salesforce::Error) {
        let Ok(mut held) = self.held_off.lock() else {
            return;
        };
        let failures = held.as_ref().map_or(0, |h| h.failures).saturating_add(1);
        let doubled = HOLD_OFF_MIN.saturating_mul(1 << failures.saturating_sub(1).min(10));
        let wait = doubled
            .min(HOLD_OFF_MAX)
            .max(err.retry_after().unwrap_or_default());
        *held = Some(HoldOff {
            until: Instant::now() + wait,
            failures,
            reason: err.reason(),
            class: err.class(),
        });
    }

    /// A grant succeeded: no hold-off.
    fn succeeded(&self) {
        if let Ok(mut held) = self.held_off.lock() {
            *held = None;
        }
    }

    /// Drops `used` if it is still the shared token (another identity may have replaced
    /// it already).
    fn forget(&self, used: &AccessToken) {
        if let Ok(mut t) = self.token.lock()
            && t.as_ref()
                .is_some_and(|held| held.token.expose() == used.token.expose())
        {
            *t = None;
        }
    }
}

// === impl Flow ===

impl Flow {
    pub fn new(
        upstream: Upstream,
        credentials: Credentials,
        signer: Arc<dyn Signer>,
        identity: Identity,
        verifier: Verifier,
        clock: Clock,
        progress: broadcast::Sender<Progress>,
    ) -> Self {
        Self {
            upstream,
            credentials: Arc::new(credentials),
            signer,
            identity,
            verifier,
            clock,
            progress,
            access: Arc::new(SharedAccess::default()),
            counted: false,
        }
    }

    /// A flow for another identity of the same gateway: its own key, identity and
    /// verifier binding, sharing this flow's HTTPS client, credentials, subject access
    /// token and JWKS cache.
    pub fn sibling(
        &self,
        signer: Arc<dyn Signer>,
        identity: Identity,
        progress: broadcast::Sender<Progress>,
    ) -> Self {
        let verifier = self.verifier.sibling(signer.public_jwk().kid.clone());
        Self {
            upstream: self.upstream.clone(),
            credentials: self.credentials.clone(),
            signer,
            identity,
            verifier,
            clock: self.clock.clone(),
            progress,
            access: self.access.clone(),
            counted: false,
        }
    }

    /// Wall time for JWTs, corrected by the measured skew when it is large.
    pub fn now(&self) -> i64 {
        self.upstream.skew().corrected_unix(&self.clock)
    }

    /// [`Flow::now`] in milliseconds.
    fn now_ms(&self) -> i64 {
        let correction = self.upstream.skew().correction().saturating_mul(1000);
        self.clock.unix_ms().saturating_add(correction)
    }

    /// Obtains a fresh, verified asset token.
    ///
    /// # Errors
    /// The failing step; see [`Error::class`].
    pub async fn fetch(&mut self) -> Result<AssetToken, Error> {
        self.credentials.persist_pending();
        let had_access = self.access.get().is_some();
        // A loop rather than a second call: each call site of an async fn lays out its
        // whole future again.
        let mut reauthenticated = false;
        loop {
            let access = self.obtain_access_token().await?;
            match self.exchange_on_corrected_clock(&access).await {
                Err(Error::Exchange(e))
                    if !reauthenticated && e.class() == Class::Reauthenticate =>
                {
                    self.emit(Progress::AccessTokenRejected);
                    tracing::info!(reason = %e.reason(), reused = had_access,
                        "the exchange refused the access token; obtaining a new one and retrying once");
                    self.access.forget(&access);
                    reauthenticated = true;
                }
                other => return other,
            }
        }
    }

    /// One exchange, repeated at once if its refusal came with a `Date` header that showed
    /// the device clock to be off: the actor token was minted on the wrong time, and a new
    /// one minted on corrected time will do (a device that boots with a wrong clock, or
    /// whose clock jumps, recovers in the same attempt instead of waiting out a backoff).
    async fn exchange_on_corrected_clock(
        &mut self,
        access: &AccessToken,
    ) -> Result<AssetToken, Error> {
        let before = self.upstream.skew().correction();
        // One call site for the exchange (its future is laid out once, not per retry).
        let mut retried = false;
        loop {
            let result = self.exchange_once(access).await;
            match &result {
                Err(Error::Exchange(e))
                    if !retried && e.class() != Class::Retryable && self.clock_moved(before) =>
                {
                    self.warn_clock(before, "actor token");
                    retried = true;
                }
                _ => return result,
            }
        }
    }

    /// Whether the skew correction changed materially since it was `before`.
    fn clock_moved(&self, before: i64) -> bool {
        let skew = self.upstream.skew();
        skew.correction().abs_diff(before) > skew.threshold().unsigned_abs()
    }

    fn warn_clock(&self, before: i64, what: &str) {
        tracing::warn!(
            old_correction_s = before,
            correction_s = self.upstream.skew().correction(),
            "Salesforce refused the {what}, and its Date header shows the device clock is off; retrying at once on corrected time"
        );
    }

    /// Drops the cached access token (a new one is obtained on the next pass).
    pub fn forget_access_token(&mut self) {
        self.access.set(None);
    }

    /// The access token in use, if any (for the token cache).
    pub fn access_token(&self) -> Option<wire::Secret> {
        self.access.get().map(|a| a.token)
    }

    /// Reuses an access token from the token cache; if it has expired meanwhile, the first
    /// exchange says so and the flow gets a new one.
    pub fn restore_access_token(&mut self, token: wire::Secret) {
        if self.access.get().is_none() {
            self.access.set(Some(AccessToken {
                token,
                instance_url: None,
            }));
        }
    }

    async fn obtain_access_token(&mut self) -> Result<AccessToken, Error> {
        if let Some(a) = self.access.get() {
            return Ok(a);
        }
        // Shared with other identities (a gateway's children): after a failed grant they
        // wait out the hold-off instead of each asking Salesforce again.
        if !self.counted {
            self.counted = true;
            self.access.fetching.fetch_add(1, Ordering::Relaxed);
        }
        let shared = self.access.fetching.load(Ordering::Relaxed) > 1;
        if shared && let Some(held) = self.access.held_off() {
            return Err(held);
        }
        // One identity obtains it; the others wait here and then take it.
        let access = self.access.clone();
        let _obtaining = access.obtaining.lock().await;
        if let Some(a) = self.access.get() {
            return Ok(a);
        }
        if shared && let Some(held) = self.access.held_off() {
            return Err(held);
        }
        let before = self.upstream.skew().correction();
        let mut retried = false;
        let a = loop {
            match self.credentials.obtain(&self.upstream).await {
                // A JWT-bearer assertion minted on a wrong clock: same reasoning as for the
                // actor token in `exchange_on_corrected_clock`.
                Err(subject::Error::Upstream(e))
                    if !retried
                        && self.credentials.is_time_sensitive()
                        && e.class() != Class::Retryable
                        && self.clock_moved(before) =>
                {
                    self.warn_clock(before, "JWT-bearer assertion");
                    retried = true;
                }
                other => break other,
            }
        };
        match &a {
            Ok(_) => self.access.succeeded(),
            Err(subject::Error::Upstream(e)) => self.access.failed(e),
            Err(_) => {}
        }
        let a = a.map_err(Error::Subject)?;
        tracing::info!(method = self.credentials.method(), "access token obtained");
        self.emit(Progress::AccessTokenObtained {
            method: self.credentials.method(),
        });
        self.access.set(Some(a.clone()));
        Ok(a)
    }

    async fn exchange_once(&mut self, access: &AccessToken) -> Result<AssetToken, Error> {
        let now = self.now();
        let minted = if self.signer.may_block() {
            // A hardware key: signing must not stall the runtime (and the socket with it).
            let (signer, identity) = (self.signer.clone(), self.identity.clone());
            tokio::task::spawn_blocking(move || actor::mint(signer.as_ref(), &identity, now))
                .await
                .unwrap_or_else(|_| Err(jws::Error::Sign(wire::jose::SignError::default())))
        } else {
            actor::mint(self.signer.as_ref(), &self.identity, now)
        }
        .map_err(Error::Mint)?;
        tracing::debug!(did = %minted.claims.did, jti = %minted.claims.jti, "actor token minted");
        self.emit(Progress::ActorMinted {
            claims: Box::new(minted.claims.clone()),
        });
        let sent_at = Instant::now();
        let resp = exchange::exchange(&self.upstream, &access.token, &minted.jwt)
            .await
            .map_err(Error::Exchange)?;
        let now = self.now();
        let claims = self
            .verifier
            .verify(&self.upstream, &resp.access_token, now)
            .await
            .map_err(Error::Verify)?;
        // Never trust the longer of two lifetimes: the server's expires_in counts from when
        // it answered, exp from its clock; take the smaller and count it from when we sent
        // the request, which is no later than when the server issued the token. exp is in
        // whole seconds and our clock is not: compare in milliseconds, or the token could
        // be served for up to a second past its exp.
        let to_exp_ms = claims
            .exp
            .saturating_mul(1000)
            .saturating_sub(self.now_ms());
        let by_exp = Duration::from_millis(u64::try_from(to_exp_ms).unwrap_or(0));
        let lifetime = resp
            .expires_in
            .map_or(by_exp, |e| Duration::from_secs(e).min(by_exp));
        let token = AssetToken {
            jwt: resp.access_token,
            token_type: resp.token_type,
            issued_token_type: resp.issued_token_type,
            claims,
            received: sent_at,
            expires: sent_at + lifetime,
        };
        tracing::info!(
            asset_id = token.asset_id().unwrap_or("-"),
            expires_at = %clock::rfc3339(token.claims.exp),
            lifetime_s = lifetime.as_secs(),
            "asset token issued and verified"
        );
        self.emit(Progress::AssetTokenIssued {
            claims: Box::new(token.claims.clone()),
            lifetime,
        });
        Ok(token)
    }

    pub(crate) fn emit(&self, p: Progress) {
        // No subscribers is normal outside the demo.
        let _ = self.progress.send(p);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::salesforce::error::Step;
    use hyper::StatusCode;
    use wire::oauth::OAuthError;

    /// The messages main prints: the error, then each `caused by:`.
    fn messages(err: &(dyn std::error::Error + 'static)) -> Vec<String> {
        let mut out = vec![err.to_string()];
        let mut cur = err.source();
        while let Some(e) = cur {
            out.push(e.to_string());
            cur = e.source();
        }
        out
    }

    #[test]
    fn no_cause_repeats_the_text_before_it() {
        let timeout = |step| salesforce::Error::Timeout {
            step,
            timeout: Duration::from_secs(30),
        };
        let refused = salesforce::Error::Status {
            step: Step::Exchange,
            status: StatusCode::BAD_REQUEST,
            oauth: Some(OAuthError {
                error: "invalid_request".into(),
                error_description: Some("bad actor token".into()),
            }),
            retry_after: None,
        };
        let rows = [
            Error::Exchange(timeout(Step::Exchange)),
            Error::Exchange(refused),
            Error::Subject(subject::Error::Upstream(timeout(Step::AccessToken))),
            Error::Verify(verify::Error::Jwks(timeout(Step::Jwks))),
            Error::Verify(verify::Error::Invalid(
                jsonwebtoken::errors::ErrorKind::InvalidSignature.into(),
            )),
        ];
        for err in rows {
            let msgs = messages(&err);
            for (i, earlier) in msgs.iter().enumerate() {
                for later in &msgs[i + 1..] {
                    assert!(!later.starts_with(earlier.as_str()), "{msgs:?}");
                }
            }
            let line = crate::error::chain(&err);
            let parts: Vec<&str> = line.split(": ").collect();
            assert!(parts.windows(2).all(|w| w[0] != w[1]), "{line}");
        }
        assert_eq!(
            crate::error::chain(&Error::Exchange(timeout(Step::Exchange))),
            "the token exchange failed: Salesforce timed out after 30s"
        );
    }
}
