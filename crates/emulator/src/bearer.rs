//! The JWT-bearer grant (RFC 7523) as Salesforce does it: an RS256 assertion with `iss` =
//! consumer key, `sub` = username, `aud` = the login host or the instance URL, a short
//! `exp`, signed with a key whose certificate is uploaded to the app. Here "uploaded"
//! means registered with the emulator (`Config::jwt_bearer_keys`,
//! `Emulator::register_jwt_bearer_key`, `POST /__emulator/jwt-bearer-keys`). No refresh
//! token is issued.

use hyper::StatusCode;
use serde::Deserialize;

use super::common::{Form, Rejection, lock};
use super::{Shared, actor, oauth};
use wire::http::{self, Reply};
use wire::jose::jws;

/// Audiences Salesforce accepts in a JWT-bearer assertion, besides the instance URL.
const BEARER_AUDIENCES: [&str; 2] = [
    "https://login.salesforce.com",
    "https://test.salesforce.com",
];
/// A JWT-bearer assertion may not expire further ahead than this.
const MAX_ASSERTION_LIFETIME_SECS: i64 = 600;

#[derive(Deserialize)]
struct BearerHeader {
    alg: Option<String>,
}

#[derive(Deserialize)]
struct BearerClaims {
    iss: Option<String>,
    sub: Option<String>,
    aud: Option<Audience>,
    exp: Option<i64>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Audience {
    One(String),
    Many(Vec<String>),
}

/// RFC 7523 as Salesforce does it: an RS256 assertion signed with a key whose
/// certificate is registered with the app, `iss` = consumer key, `sub` = username.
pub(crate) fn grant(shared: &Shared, form: &Form) -> Result<Reply, Rejection> {
    let assertion = form.require("assertion")?;
    let invalid = |why: &str| Rejection::invalid_grant(format!("invalid assertion: {why}"));
    let parts = jws::decode_unverified::<BearerHeader, BearerClaims>(assertion)
        .map_err(|e| invalid(&e.to_string()))?;
    if parts.header.alg.as_deref() != Some("RS256") {
        return Err(invalid("alg must be RS256"));
    }
    let keys = lock(&shared.state).jwt_bearer_keys().to_vec();
    if !keys
        .iter()
        .any(|k| k.verify_rs256(parts.signing_input.as_bytes(), &parts.signature))
    {
        return Err(invalid(
            "signature does not verify with any certificate registered for the app",
        ));
    }
    let c = parts.claims;
    if c.iss.as_deref() != Some(shared.config.client_id.as_str()) {
        return Err(Rejection::invalid_client("client identifier invalid (iss)"));
    }
    let username = c
        .sub
        .filter(|s| !s.is_empty())
        .ok_or_else(|| invalid("sub (username) is missing"))?;
    let auds = match c.aud {
        Some(Audience::One(a)) => vec![a],
        Some(Audience::Many(v)) => v,
        None => Vec::new(),
    };
    let aud_ok = auds
        .iter()
        .any(|a| BEARER_AUDIENCES.contains(&a.as_str()) || *a == shared.base_url);
    if !aud_ok {
        return Err(invalid("audience is invalid"));
    }
    let now = shared.unix();
    let exp = c.exp.ok_or_else(|| invalid("exp is missing"))?;
    if exp + actor::CLOCK_SKEW_SECS <= now {
        return Err(invalid("expired (exp is in the past)"));
    }
    if exp > now + MAX_ASSERTION_LIFETIME_SECS + actor::CLOCK_SKEW_SECS {
        return Err(invalid("exp is more than 10 minutes ahead"));
    }
    let resp = oauth::issue(shared, &username, None, "api")?;
    Ok(http::json(StatusCode::OK, &resp))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing;
    use wire::jose::Signer as _;

    #[tokio::test(start_paused = true)]
    async fn jwt_bearer_rules() {
        let shared = testing::shared(testing::config()).await;
        let key = testing::other_key();
        let now = shared.unix();
        let assertion = |iss: &str, aud: &str, exp: i64| {
            let claims =
                serde_json::json!({"iss": iss, "sub": "dev@example.com", "aud": aud, "exp": exp});
            jws::sign(&key, &claims).unwrap()
        };
        let run = |a: String| {
            let f = Form::from_pairs(&[
                ("grant_type", wire::oauth::GRANT_JWT_BEARER),
                ("assertion", &a),
            ]);
            match grant(&shared, &f) {
                Ok(reply) => (reply.status(), String::new()),
                Err(e) => (e.status, e.error.to_owned()),
            }
        };
        let cid = crate::DEFAULT_CLIENT_ID;
        let good = assertion(cid, "https://login.salesforce.com", now + 300);
        // Key not registered yet.
        assert_eq!(run(good.clone()).1, "invalid_grant");
        lock(&shared.state).add_jwt_bearer_key(key.public_jwk().clone());
        assert_eq!(run(good).0, StatusCode::OK);
        assert_eq!(
            run(assertion(
                "other",
                "https://login.salesforce.com",
                now + 300
            ))
            .1,
            "invalid_client"
        );
        assert_eq!(
            run(assertion(cid, "https://evil.example.com", now + 300)).1,
            "invalid_grant"
        );
        assert_eq!(
            run(assertion(cid, "https://test.salesforce.com", now - 3600)).1,
            "invalid_grant"
        );
        assert_eq!(
            run(assertion(cid, "http://127.0.0.1:1", now + 3600)).1,
            "invalid_grant"
        );
        assert_eq!(
            run(assertion(cid, "http://127.0.0.1:1", now + 60)).0,
            StatusCode::OK
        );
    }
}
