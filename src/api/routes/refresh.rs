//! `POST /v1/refresh` (admin): refresh now and answer with the new token's metadata.
//!
//! The token itself is not in the answer: an operator forcing a refresh (after rotating
//! the connected app, say) needs to know it worked and until when, and a token in the
//! output of an admin script ends up in its logs. `GET /v1/token` is one call away.
//!
//! An explicit refresh is a person (or their script) at the device: it makes one attempt
//! now, even while the loop waits out failures, so an admin who fixed something does not
//! wait for the next retry. Limits, so that a looping script cannot turn into a stream of
//! exchanges: concurrent calls queue behind one another and share one attempt (a caller
//! that finds a token obtained after it asked takes that one); a token obtained less than
//! [`MIN_INTERVAL`] before the call counts as fresh; at most one attempt per
//! [`ADMIN_INTERVAL`] (503 `rate_limited` + `Retry-After` otherwise); and the attempt takes
//! a credit of the refresher's retry budget like any other (503 `retry_budget` when none is
//! left), so the budget still bounds the device's upstream rate.

use std::sync::Arc;
use std::time::Duration;

use hyper::StatusCode;
use serde::Serialize;
use tokio::time::Instant;

use crate::api::Shared;
use crate::api::reply::{error, with_retry_after};
use crate::gateway::Identity;
use crate::token::refresher::{ADMIN_INTERVAL, BUDGET_PER_INTERVAL, Refused};
use crate::token::{AssetToken, live};
use wire::clock;
use wire::http::{self, Reply};

/// A token younger than this is not refreshed again.
pub const MIN_INTERVAL: Duration = Duration::from_secs(5);

/// The answer.
#[derive(Debug, Serialize)]
pub struct Refreshed<'a> {
    /// True when the token was obtained after the call arrived; false when the held token
    /// was already fresh (obtained less than [`MIN_INTERVAL`] before).
    pub refreshed: bool,
    pub token_type: &'a str,
    pub issued_token_type: &'a str,
    pub issued_at: Option<String>,
    pub expires_at: String,
    pub expires_in: u64,
    pub asset_id: Option<&'a str>,
    pub device_id: &'a str,
}

enum Outcome {
    New(Arc<AssetToken>),
    Failed,
    Gone,
}

pub async fn reply(shared: &Shared, identity: &Identity) -> Reply {
    let arrived = Instant::now();
    // Concurrent calls queue here, so they share one exchange: whoever comes after a
    // successful refresh finds a token obtained after it asked, and takes that.
    let Ok(_one_at_a_time) =
        tokio::time::timeout(shared.limits.refresh_wait, shared.state.refresh_gate.lock()).await
    else {
        return timed_out(shared);
    };
    let held = live(&identity.tokens.current);
    if let Some(t) = &held {
        if t.received >= arrived {
            return answer(identity, t, true);
        }
        if t.received + MIN_INTERVAL > arrived {
            return answer(identity, t, false);
        }
    }
    let mut current = identity.tokens.current.clone();
    let mut status = identity.tokens.status.clone();
    current.borrow_and_update();
    let failed_before = status.borrow_and_update().refreshes_failed;
    match identity.tokens.admin_refresh().await {
        Ok(()) => {}
        Err(Refused::RateLimited { retry_in }) => {
            let reason = format!(
                "an explicit refresh was attempted less than {}s ago; the next one is allowed in {}s",
                ADMIN_INTERVAL.as_secs(),
                retry_in.as_secs().max(1)
            );
            return with_retry_after(
                error(StatusCode::SERVICE_UNAVAILABLE, "rate_limited", &reason),
                retry_in,
            );
        }
        Err(Refused::Budget { retry_in }) => {
            let snap = identity.tokens.snapshot();
            let reason = format!(
                "the retry budget (at most {} upstream attempts per refresh interval) is spent; the next attempt is allowed in {}s{}",
                BUDGET_PER_INTERVAL,
                retry_in.as_secs().max(1),
                snap.last_error
                    .as_deref()
                    .map(|e| format!(" (last error: {e})"))
                    .unwrap_or_default()
            );
            return with_retry_after(
                error(StatusCode::SERVICE_UNAVAILABLE, "retry_budget", &reason),
                retry_in,
            );
        }
        Err(Refused::Stopped) => {
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "the agent is shutting down",
            );
        }
    }
    let wait = async {
        loop {
            tokio::select! {
                changed = current.changed() => {
                    if changed.is_err() {
                        return Outcome::Gone;
                    }
                    let fresh = current.borrow_and_update().as_ref().filter(|t| t.is_live()).cloned();
                    if let Some(t) = fresh
                        && held.as_ref().is_none_or(|h| !Arc::ptr_eq(h, &t))
                    {
                        return Outcome::New(t);
                    }
                }
                changed = status.changed() => {
                    if changed.is_err() {
                        return Outcome::Gone;
                    }
                    if status.borrow_and_update().refreshes_failed > failed_before {
                        return Outcome::Failed;
                    }
                }
            }
        }
    };
    match tokio::time::timeout(shared.limits.refresh_wait, wait).await {
        Ok(Outcome::New(t)) => answer(identity, &t, true),
        Ok(Outcome::Failed) => {
            let snap = identity.tokens.snapshot();
            let retry = snap.next_refresh.map_or(Duration::from_secs(1), |n| {
                n.saturating_duration_since(Instant::now())
            });
            let reason = format!(
                "the refresh failed: {}",
                snap.last_error.as_deref().unwrap_or("unknown error")
            );
            with_retry_after(
                error(StatusCode::SERVICE_UNAVAILABLE, "refresh_failed", &reason),
                retry,
            )
        }
        Ok(Outcome::Gone) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "the agent is shutting down",
        ),
        Err(_) => timed_out(shared),
    }
}

fn timed_out(shared: &Shared) -> Reply {
    with_retry_after(
        error(
            StatusCode::SERVICE_UNAVAILABLE,
            "timeout",
            &format!(
                "no new token within {}s; the refresh may still complete (see /v1/status)",
                shared.limits.refresh_wait.as_secs()
            ),
        ),
        Duration::from_secs(5),
    )
}

fn answer(identity: &Identity, t: &AssetToken, refreshed: bool) -> Reply {
    http::json(
        StatusCode::OK,
        &Refreshed {
            refreshed,
            token_type: &t.token_type,
            issued_token_type: &t.issued_token_type,
            issued_at: t.claims.iat.map(clock::rfc3339),
            expires_at: clock::rfc3339(t.claims.exp),
            expires_in: t.remaining().as_secs(),
            asset_id: t.asset_id(),
            device_id: &identity.info.device_id,
        },
    )
}
