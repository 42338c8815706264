//! The grants that yield a subject access token
//! (spec §5): refresh token (with optional rotation) and client credentials, plus the
//! session issuing every grant shares. JWT bearer lives in `bearer`, the device flow in
//! `device`, the token exchange in `exchange`.
//!
//! Access tokens are opaque random strings in Salesforce's `00D…!…` shape; the session
//! they name lasts `session_lifetime` on the emulator clock and there is no `expires_in`,
//! exactly as Salesforce answers, so the agent must learn expiry from a rejection.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hyper::StatusCode;
use hyper::header::{AUTHORIZATION, HeaderMap};

use super::Shared;
use super::common::{Form, Rejection, lock, random_b64url, secrets_equal};
use super::state::{ORG_ID, Session, USER_ID};
use wire::Secret;
use wire::http::{self, Reply};
use wire::oauth::OAuthTokenResponse;

/// Who sessions from the refresh-token and device flows run as.
pub(crate) const DEFAULT_USERNAME: &str = "emulator.user@example.com";
/// The integration user client-credentials sessions run as.
const INTEGRATION_USERNAME: &str = "integration.user@example.com";

/// Whether a grant needs the consumer secret.
#[derive(Clone, Copy, PartialEq, Eq)]
enum SecretRule {
    /// Checked when the app has one (refresh token).
    IfConfigured,
    /// Always (client credentials).
    Required,
}

pub(crate) fn refresh(
    shared: &Shared,
    form: &Form,
    headers: &HeaderMap,
) -> Result<Reply, Rejection> {
    check_client(shared, form, headers, SecretRule::IfConfigured)?;
    let presented = form.require("refresh_token")?;
    let rotated = if shared.config.rotate_refresh_tokens {
        Some(new_refresh_token()?)
    } else {
        None
    };
    let username = {
        let mut st = lock(&shared.state);
        let username = st
            .refresh_token(presented)
            .map(ToOwned::to_owned)
            .ok_or_else(|| Rejection::invalid_grant("expired access/refresh token"))?;
        if let Some(new) = &rotated {
            // The old token dies with this answer: reuse of it is invalid_grant.
            st.revoke_refresh_token(presented);
            st.add_refresh_token(new.expose().to_owned(), username.clone());
        }
        username
    };
    let resp = issue(shared, &username, rotated, "api refresh_token")?;
    Ok(http::json(StatusCode::OK, &resp))
}

pub(crate) fn client_credentials(
    shared: &Shared,
    form: &Form,
    headers: &HeaderMap,
) -> Result<Reply, Rejection> {
    check_client(shared, form, headers, SecretRule::Required)?;
    let resp = issue(shared, INTEGRATION_USERNAME, None, "api")?;
    Ok(http::json(StatusCode::OK, &resp))
}

/// Checks `client_id` (form or HTTP Basic) and, per `rule`, the consumer secret.
fn check_client(
    shared: &Shared,
    form: &Form,
    headers: &HeaderMap,
    rule: SecretRule,
) -> Result<(), Rejection> {
    let basic = basic_credentials(headers)?;
    if basic.is_some() && form.get("client_secret").is_some() {
        return Err(Rejection::invalid_request(
            "client authenticated twice (HTTP Basic and client_secret)",
        ));
    }
    let (id, secret) = match basic {
        Some((id, secret)) => (Some(id), Some(secret)),
        None => (
            form.get("client_id").map(ToOwned::to_owned),
            form.get("client_secret").map(ToOwned::to_owned),
        ),
    };
    check_client_id(shared, id.as_deref())?;
    let expected = match (&shared.config.client_secret, rule) {
        (Some(s), _) => s,
        (None, SecretRule::IfConfigured) => return Ok(()),
        (None, SecretRule::Required) => {
            return Err(Rejection::invalid_client(
                "the app has no consumer secret, so this flow is not enabled",
            ));
        }
    };
    match secret {
        Some(s) if secrets_equal(&s, expected.expose()) => Ok(()),
        Some(_) => Err(Rejection::invalid_client("invalid client credentials")),
        None => Err(Rejection::invalid_client("client_secret is missing")),
    }
}

/// Checks the presented consumer key.
pub(crate) fn check_client_id(shared: &Shared, id: Option<&str>) -> Result<(), Rejection> {
    match id {
        Some(id) if id == shared.config.client_id => Ok(()),
        Some(_) => Err(Rejection::invalid_client("client identifier invalid")),
        None => Err(Rejection::invalid_client("client_id is missing")),
    }
}

fn basic_credentials(headers: &HeaderMap) -> Result<Option<(String, String)>, Rejection> {
    let Some(value) = headers.get(AUTHORIZATION) else {
        return Ok(None);
    };
    let malformed = || Rejection::invalid_client("malformed HTTP Basic credentials");
    let value = value.to_str().map_err(|_| malformed())?;
    let Some(encoded) = value.strip_prefix("Basic ") else {
        return Ok(None);
    };
    let decoded = STANDARD.decode(encoded.trim()).map_err(|_| malformed())?;
    let decoded = String::from_utf8(decoded).map_err(|_| malformed())?;
    let (id, secret) = decoded.split_once(':').ok_or_else(malformed)?;
    Ok(Some((id.to_owned(), secret.to_owned())))
}

/// Opens a session and builds Salesforce's token response for it.
pub(crate) fn issue(
    shared: &Shared,
    username: &str,
    refresh_token: Option<Secret>,
    scope: &str,
) -> Result<OAuthTokenResponse, Rejection> {
    let access_token = new_session(shared, username)?;
    let issued_at = shared.unix_ms().to_string();
    let id = format!("{}/id/{ORG_ID}/{USER_ID}", shared.base_url);
    // Salesforce signs id + issued_at with HMAC-SHA256 keyed by the consumer secret.
    let key_material = shared
        .config
        .client_secret
        .as_ref()
        .map_or(shared.config.client_id.as_str(), Secret::expose);
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key_material.as_bytes());
    let signature = STANDARD.encode(ring::hmac::sign(
        &key,
        format!("{id}{issued_at}").as_bytes(),
    ));
    Ok(OAuthTokenResponse {
        access_token,
        refresh_token,
        instance_url: Some(shared.base_url.clone()),
        id: Some(id),
        token_type: Some("Bearer".to_owned()),
        issued_at: Some(issued_at),
        signature: Some(signature),
        scope: Some(scope.to_owned()),
    })
}

/// A new access token with a live session for `username`.
pub(crate) fn new_session(shared: &Shared, username: &str) -> Result<Secret, Rejection> {
    let token = format!("{}!{}", &ORG_ID[..15], random_b64url(48)?);
    let lifetime = i64::try_from(shared.config.session_lifetime.as_millis()).unwrap_or(i64::MAX);
    let session = Session {
        user_id: USER_ID.to_owned(),
        expires_at_ms: shared.unix_ms().saturating_add(lifetime),
    };
    tracing::debug!(username, "emulator opened a session");
    lock(&shared.state).add_session(token.clone(), session);
    Ok(Secret::new(token))
}

/// A new refresh token string (not yet stored).
pub(crate) fn new_refresh_token() -> Result<Secret, Rejection> {
    Ok(Secret::new(format!("5Aep861{}", random_b64url(48)?)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::Grant;
    use crate::testing;
    use hyper::header::{CONTENT_TYPE, HeaderValue};

    fn form_headers() -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/x-www-form-urlencoded"),
        );
        h
    }

    async fn status_and_error(
        shared: &Shared,
        grant: Grant,
        form: &Form,
        headers: &HeaderMap,
    ) -> (StatusCode, String) {
        let reply = crate::token_endpoint::answer(shared, grant, form, headers).await;
        let status = reply.status();
        let body = http_body_util::BodyExt::collect(reply.into_body())
            .await
            .unwrap()
            .to_bytes();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        (status, v["error"].as_str().unwrap_or("").to_owned())
    }

    #[tokio::test(start_paused = true)]
    async fn refresh_checks_client_and_rotates() {
        let shared = testing::shared(crate::Config {
            rotate_refresh_tokens: true,
            ..testing::config()
        })
        .await;
        let rt = new_refresh_token().unwrap();
        lock(&shared.state).add_refresh_token(rt.expose().into(), "u".into());
        let h = form_headers();
        let base = |rt: &str, secret: &str| {
            Form::from_pairs(&[
                ("grant_type", "refresh_token"),
                ("refresh_token", rt),
                ("client_id", crate::DEFAULT_CLIENT_ID),
                ("client_secret", secret),
            ])
        };
        let (s, e) = status_and_error(
            &shared,
            Grant::RefreshToken,
            &base(rt.expose(), "wrong"),
            &h,
        )
        .await;
        assert_eq!((s, e.as_str()), (StatusCode::BAD_REQUEST, "invalid_client"));
        let (s, _) = status_and_error(
            &shared,
            Grant::RefreshToken,
            &base(rt.expose(), "s3cret"),
            &h,
        )
        .await;
        assert_eq!(s, StatusCode::OK);
        // Rotated away: the old token is dead.
        let (s, e) = status_and_error(
            &shared,
            Grant::RefreshToken,
            &base(rt.expose(), "s3cret"),
            &h,
        )
        .await;
        assert_eq!((s, e.as_str()), (StatusCode::BAD_REQUEST, "invalid_grant"));
        // Wrong content type.
        let (s, e) = status_and_error(
            &shared,
            Grant::RefreshToken,
            &base(rt.expose(), "s3cret"),
            &HeaderMap::new(),
        )
        .await;
        assert_eq!(
            (s, e.as_str()),
            (StatusCode::BAD_REQUEST, "invalid_request")
        );
    }

    #[tokio::test(start_paused = true)]
    async fn client_credentials_accepts_basic_and_rejects_wrong_secret() {
        let shared = testing::shared(testing::config()).await;
        let mut h = form_headers();
        let basic = STANDARD.encode(format!("{}:s3cret", crate::DEFAULT_CLIENT_ID));
        h.insert(
            AUTHORIZATION,
            HeaderValue::from_str(&format!("Basic {basic}")).unwrap(),
        );
        let f = Form::from_pairs(&[("grant_type", "client_credentials")]);
        assert_eq!(
            status_and_error(&shared, Grant::ClientCredentials, &f, &h)
                .await
                .0,
            StatusCode::OK
        );
        let f = Form::from_pairs(&[
            ("grant_type", "client_credentials"),
            ("client_id", crate::DEFAULT_CLIENT_ID),
            ("client_secret", "nope"),
        ]);
        let (s, e) = status_and_error(&shared, Grant::ClientCredentials, &f, &form_headers()).await;
        assert_eq!((s, e.as_str()), (StatusCode::BAD_REQUEST, "invalid_client"));
        let f = Form::from_pairs(&[("grant_type", "password")]);
        assert_eq!(
            status_and_error(&shared, Grant::Unsupported, &f, &form_headers())
                .await
                .1,
            "unsupported_grant_type"
        );
    }
}
