//! Salesforce's device flow (spec §5): `response_type=device_code` starts it, polls use
//! Salesforce's non-standard `grant_type=device` with `code`, and a person approves or
//! denies the user code (here: a test, or `POST /__emulator/device/approve`).
//!
//! Poll answers follow RFC 8628 §3.5: `authorization_pending` until decided, `slow_down`
//! (and a 5 s longer interval) when polled faster than the interval, `access_denied`,
//! `expired_token` past the code's lifetime. A device code yields tokens once.

use hyper::StatusCode;

use super::common::{Form, Rejection, lock, random_b64url, random_below};
use super::device_auth::{Decision, DeviceAuth};
use super::oauth::{self, DEFAULT_USERNAME};
use super::{Error, Shared};
use wire::Secret;
use wire::http::{self, Reply};
use wire::oauth::DeviceCodeResponse;

/// Letters that cannot be mistaken for digits or each other.
const USER_CODE_LETTERS: &[u8] = b"BCDFGHJKLMNPQRSTVWXZ";

/// Starts a device authorisation.
pub(crate) fn start(shared: &Shared, form: &Form) -> Result<Reply, Rejection> {
    oauth::check_client_id(shared, form.get("client_id"))?;
    let device_code = random_b64url(32)?;
    let user_code = user_code()?;
    let interval = shared.config.device_poll_interval.as_secs().max(1);
    let lifetime =
        i64::try_from(shared.config.device_code_lifetime.as_millis()).unwrap_or(i64::MAX);
    let auth = DeviceAuth {
        user_code: user_code.clone(),
        scope: form
            .get("scope")
            .filter(|s| !s.is_empty())
            .unwrap_or("api refresh_token")
            .to_owned(),
        expires_at_ms: shared.unix_ms().saturating_add(lifetime),
        interval_ms: i64::try_from(interval * 1000).unwrap_or(i64::MAX),
        last_poll_ms: None,
        decision: Decision::Pending,
    };
    lock(&shared.state)
        .devices
        .insert(device_code.clone(), auth);
    tracing::debug!(%user_code, "emulator device authorisation started");
    Ok(http::json(
        StatusCode::OK,
        &DeviceCodeResponse {
            device_code: Secret::new(device_code),
            user_code,
            verification_uri: format!("{}/setup/connect", shared.base_url),
            interval,
        },
    ))
}

/// Answers a device-flow poll.
pub(crate) fn poll(shared: &Shared, form: &Form) -> Result<Reply, Rejection> {
    oauth::check_client_id(shared, form.get("client_id"))?;
    let code = form.require("code")?;
    let now = shared.unix_ms();
    let scope = {
        let mut st = lock(&shared.state);
        let auth = st
            .devices
            .get_mut(code)
            .ok_or_else(|| Rejection::invalid_grant("invalid device code"))?;
        auth.poll(now)?
    };
    let refresh = oauth::new_refresh_token()?;
    lock(&shared.state).add_refresh_token(refresh.expose().to_owned(), DEFAULT_USERNAME.to_owned());
    let resp = oauth::issue(shared, DEFAULT_USERNAME, Some(refresh), &scope)?;
    Ok(http::json(StatusCode::OK, &resp))
}

/// Approves or denies the pending authorisation with `user_code`.
///
/// # Errors
/// [`Error::UnknownUserCode`] when no pending authorisation has that code.
pub(crate) fn decide(shared: &Shared, user_code: &str, approve: bool) -> Result<(), Error> {
    let wanted = normalise(user_code);
    let mut st = lock(&shared.state);
    let auth = st
        .devices
        .values_mut()
        .find(|a| a.decision == Decision::Pending && normalise(&a.user_code) == wanted)
        .ok_or_else(|| Error::UnknownUserCode(user_code.to_owned()))?;
    auth.decision = if approve {
        Decision::Approved
    } else {
        Decision::Denied
    };
    tracing::debug!(user_code, approve, "emulator device authorisation decided");
    Ok(())
}

/// `ABCD-1234`: four consonants, four digits.
fn user_code() -> Result<String, Rejection> {
    let mut code = String::with_capacity(9);
    for _ in 0..4 {
        let i = random_below(USER_CODE_LETTERS.len() as u32)? as usize;
        code.push(char::from(
            USER_CODE_LETTERS.get(i).copied().unwrap_or(b'X'),
        ));
    }
    code.push('-');
    code.push_str(&format!("{:04}", random_below(10_000)?));
    Ok(code)
}

/// User codes compare case-insensitively, ignoring the dash.
fn normalise(code: &str) -> String {
    code.chars()
        .filter(|c| *c != '-')
        .map(|c| c.to_ascii_uppercase())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth() -> DeviceAuth {
        DeviceAuth {
            user_code: "BCDF-0001".into(),
            scope: "api".into(),
            expires_at_ms: 600_000,
            interval_ms: 5_000,
            last_poll_ms: None,
            decision: Decision::Pending,
        }
    }

    fn code(r: Result<String, Rejection>) -> &'static str {
        match r {
            Ok(_) => "ok",
            Err(e) => e.error,
        }
    }

    #[test]
    fn poll_sequence_pending_slow_down_approved_used() {
        let mut a = auth();
        assert_eq!(code(a.poll(0)), "authorization_pending");
        assert_eq!(code(a.poll(1_000)), "slow_down");
        // The interval grew to 10 s and counts from the last poll.
        assert_eq!(code(a.poll(6_000)), "slow_down");
        assert_eq!(code(a.poll(21_000)), "authorization_pending");
        a.decision = Decision::Approved;
        assert_eq!(code(a.poll(40_000)), "ok");
        assert_eq!(code(a.poll(60_000)), "invalid_grant");
    }

    #[test]
    fn denied_and_expired() {
        let mut a = auth();
        a.decision = Decision::Denied;
        assert_eq!(code(a.poll(0)), "access_denied");
        let mut a = auth();
        assert_eq!(code(a.poll(600_000)), "expired_token");
    }

    #[test]
    fn user_code_shape() {
        let c = user_code().unwrap();
        assert_eq!(c.len(), 9);
        assert_eq!(&c[4..5], "-");
        assert!(c[..4].bytes().all(|b| USER_CODE_LETTERS.contains(&b)));
        assert!(c[5..].bytes().all(|b| b.is_ascii_digit()));
        assert_eq!(normalise("bcdf-0001"), "BCDF0001");
    }
}
