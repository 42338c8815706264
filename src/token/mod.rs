//! The asset token: obtaining one ([`flow`]), keeping it fresh ([`refresher`], which does
//! what its [`schedule`] decides) and describing the agent's state ([`status`]).
//!
//! The current token is published through a `watch` channel of `Option<Arc<AssetToken>>`.
//! Its expiry is a *monotonic* deadline computed when it was received, so a wall-clock jump
//! (NTP stepping the clock after boot) cannot make an expired token look valid or a valid
//! one look expired. Readers must still check [`AssetToken::is_live`] at the moment they
//! serve: the refresher clears an expired token, but a reader must not rely on timing.

pub mod body;
pub mod cache;
pub mod flow;
pub mod gate;
pub(crate) mod metrics;
pub mod refresher;
pub mod schedule;
pub mod status;

use std::time::Duration;

use tokio::time::Instant;

use wire::Secret;
use wire::oauth::AssetTokenClaims;

/// A verified asset token.
#[derive(Debug, Clone)]
pub struct AssetToken {
    pub jwt: Secret,
    pub token_type: String,
    pub issued_token_type: String,
    pub claims: AssetTokenClaims,
    /// When the agent received it (monotonic).
    pub received: Instant,
    /// When it stops being valid (monotonic).
    pub expires: Instant,
}

// === impl AssetToken ===

impl AssetToken {
    /// Time left before expiry, zero once expired.
    pub fn remaining(&self) -> Duration {
        self.remaining_at(Instant::now())
    }

    /// Time left at `now` before expiry, zero once expired.
    pub fn remaining_at(&self, now: Instant) -> Duration {
        self.expires.saturating_duration_since(now)
    }

    /// Whether the token may still be handed out.
    pub fn is_live(&self) -> bool {
        self.is_live_at(Instant::now())
    }

    /// Whether the token may still be handed out at `now`.
    pub fn is_live_at(&self, now: Instant) -> bool {
        now < self.expires
    }

    /// Its whole validity period as received.
    pub fn lifetime(&self) -> Duration {
        self.expires.saturating_duration_since(self.received)
    }

    /// The Asset record id (the `sub` claim).
    pub fn asset_id(&self) -> Option<&str> {
        self.claims.sub.as_deref()
    }
}

/// The current token, as published by the refresher.
pub type Current = tokio::sync::watch::Receiver<Option<std::sync::Arc<AssetToken>>>;

/// The live token in `current`, if there is one.
pub fn live(current: &Current) -> Option<std::sync::Arc<AssetToken>> {
    current.borrow().as_ref().filter(|t| t.is_live()).cloned()
}
