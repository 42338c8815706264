//! `POST /v1/sign` (signer role): proof of possession of the device key.
//!
//! Device software often has to prove to its own backend that it runs on *this* device,
//! e.g. to run a JWT-bearer exchange there. It must never read the key, so the agent signs
//! a short RS256 JWT for it. The caller chooses the audience and may add claims; the agent
//! sets everything a verifier relies on and refuses (400) any attempt to supply those:
//!
//! | claim | value |
//! |---|---|
//! | header `kid` | the device key's RFC 7638 thumbprint |
//! | `iss`, `sub` | the device id |
//! | `aud` | the caller's `aud` (required) |
//! | `iat`, `nbf` | now (corrected by the measured clock skew, like actor tokens) |
//! | `exp` | `iat` + `expires_in` (default 60 s, at most [`MAX_LIFETIME`]) |
//! | `jti` | 128 random bits |
//! | `cnf` | `{"jkt": thumbprint}` (RFC 9449 §6.1) |
//!
//! Request: `{"aud": "https://api.example.com" | [..], "claims": {..}, "expires_in": 60}`.

use hyper::StatusCode;
use hyper::body::Incoming;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::api::Shared;
use crate::api::peer::Caller;
use crate::api::reply::error;
use crate::gateway::Identity;
use wire::clock;
use wire::http::{self, BodyError, Reply};
use wire::jose::jws;
use wire::jose::new_jti;

/// Largest request body accepted.
pub const MAX_BODY: usize = 16 * 1024;
/// Lifetime when the caller names none, in seconds.
pub const DEFAULT_LIFETIME: u64 = 60;
/// Longest lifetime a caller may ask for, in seconds: a proof, not a credential.
pub const MAX_LIFETIME: u64 = 300;
/// Claims only the agent sets.
pub const RESERVED: [&str; 8] = ["iss", "sub", "aud", "iat", "nbf", "exp", "jti", "cnf"];
/// At most this many extra claims.
pub const MAX_CLAIMS: usize = 64;
/// At most this many audiences, each at most [`MAX_AUD_LEN`] bytes.
pub const MAX_AUDIENCES: usize = 16;
pub const MAX_AUD_LEN: usize = 1024;

/// A request the agent will not sign.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("the body must be a JSON object {{\"aud\", \"claims\", \"expires_in\"}}: {0}")]
    Shape(String),
    #[error(
        "aud must be a non-empty string or a list of 1 to {MAX_AUDIENCES} non-empty strings of at most {MAX_AUD_LEN} bytes"
    )]
    Audience,
    #[error("claim {0:?} is set by the agent and cannot be supplied (reserved: {list})", list = RESERVED.join(", "))]
    Reserved(String),
    #[error("claim names must not be empty")]
    EmptyName,
    #[error("at most {MAX_CLAIMS} extra claims")]
    TooManyClaims,
    #[error("expires_in must be between 1 and {MAX_LIFETIME} seconds")]
    Lifetime,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Body {
    aud: Audience,
    #[serde(default)]
    claims: Map<String, Value>,
    #[serde(default)]
    expires_in: Option<u64>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Audience {
    One(String),
    Many(Vec<String>),
}

/// A checked request.
#[derive(Debug, Clone, PartialEq)]
pub struct SignRequest {
    pub aud: Vec<String>,
    pub claims: Map<String, Value>,
    pub lifetime: u64,
}

/// The answer.
#[derive(Debug, Serialize, Deserialize)]
pub struct Signed {
    pub jwt: String,
    pub kid: String,
    pub jti: String,
    pub iat: i64,
    pub exp: i64,
    pub expires_at: String,
}

/// Parses and checks a request body.
///
/// # Errors
/// See [`RequestError`].
pub fn parse(body: &[u8]) -> Result<SignRequest, RequestError> {
    let body: Body =
        serde_json::from_slice(body).map_err(|e| RequestError::Shape(e.to_string()))?;
    let aud = match body.aud {
        Audience::One(a) => vec![a],
        Audience::Many(list) => list,
    };
    if aud.is_empty()
        || aud.len() > MAX_AUDIENCES
        || aud
            .iter()
            .any(|a| a.trim().is_empty() || a.len() > MAX_AUD_LEN)
    {
        return Err(RequestError::Audience);
    }
    if let Some(name) = body.claims.keys().find(|k| RESERVED.contains(&k.as_str())) {
        return Err(RequestError::Reserved(name.clone()));
    }
    if body.claims.keys().any(String::is_empty) {
        return Err(RequestError::EmptyName);
    }
    if body.claims.len() > MAX_CLAIMS {
        return Err(RequestError::TooManyClaims);
    }
    let lifetime = body.expires_in.unwrap_or(DEFAULT_LIFETIME);
    if !(1..=MAX_LIFETIME).contains(&lifetime) {
        return Err(RequestError::Lifetime);
    }
    Ok(SignRequest {
        aud,
        claims: body.claims,
        lifetime,
    })
}

/// The claims to sign: the caller's, then the agent's (which the caller cannot have set,
/// see [`parse`]).
pub fn claims(
    req: &SignRequest,
    device_id: &str,
    jkt: &str,
    now: i64,
    jti: &str,
) -> Map<String, Value> {
    let mut c = req.claims.clone();
    let aud = match req.aud.as_slice() {
        [one] => Value::from(one.as_str()),
        many => Value::from(many.to_vec()),
    };
    let lifetime = i64::try_from(req.lifetime).unwrap_or(0);
    for (k, v) in [
        ("iss", Value::from(device_id)),
        ("sub", Value::from(device_id)),
        ("aud", aud),
        ("iat", Value::from(now)),
        ("nbf", Value::from(now)),
        ("exp", Value::from(now.saturating_add(lifetime))),
        ("jti", Value::from(jti)),
        ("cnf", serde_json::json!({ "jkt": jkt })),
    ] {
        c.insert(k.to_owned(), v);
    }
    c
}

/// Signs with `identity`'s key, as that identity (the device's own, or a child's).
pub async fn reply(
    shared: &Shared,
    identity: &Identity,
    caller: &Caller,
    req: hyper::Request<Incoming>,
) -> Reply {
    let signer = identity.signer.clone();
    let device_id = identity.info.device_id.as_str();
    let read = tokio::time::timeout(shared.limits.body_timeout, http::read_body(req, MAX_BODY));
    let body = match read.await {
        Ok(Ok(b)) => b,
        Ok(Err(BodyError::TooLarge(n))) => {
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                &format!("the request body must be at most {n} bytes"),
            );
        }
        Ok(Err(BodyError::Read)) | Err(_) => {
            return error(
                StatusCode::BAD_REQUEST,
                "bad_request",
                "the request body could not be read in time",
            );
        }
    };
    let request = match parse(&body) {
        Ok(r) => r,
        Err(e) => return error(StatusCode::BAD_REQUEST, "bad_request", &e.to_string()),
    };
    let kid = signer.public_jwk().kid.clone();
    let now = shared.skew.corrected_unix(&shared.clock);
    let jti = new_jti();
    let claims = claims(&request, device_id, &kid, now, &jti);
    let exp = now.saturating_add(i64::try_from(request.lifetime).unwrap_or(0));
    // RSA signing takes milliseconds (far more with a hardware key): off the event loop.
    let signed = tokio::task::spawn_blocking(move || jws::sign(signer.as_ref(), &claims)).await;
    let jwt = match signed {
        Ok(Ok(jwt)) => jwt,
        Ok(Err(e)) => {
            tracing::error!(error = %crate::error::chain(&e), "POST /v1/sign: signing failed");
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "the device key could not sign",
            );
        }
        Err(_) => {
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "signing was interrupted",
            );
        }
    };
    tracing::info!(uid = caller.peer.uid, pid = caller.peer.pid, device_id, aud = ?request.aud,
        jti = %jti, lifetime_s = request.lifetime, "signed a proof-of-possession JWT");
    http::json(
        StatusCode::OK,
        &Signed {
            jwt,
            kid,
            jti,
            iat: now,
            exp,
            expires_at: clock::rfc3339(exp),
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn good_requests() {
        let r = parse(br#"{"aud":"https://api.example.com"}"#).unwrap();
        assert_eq!(r.aud, vec!["https://api.example.com"]);
        assert_eq!(r.lifetime, DEFAULT_LIFETIME);
        let r =
            parse(br#"{"aud":["a","b"],"claims":{"nonce":"n","scope":["x"]},"expires_in":300}"#)
                .unwrap();
        assert_eq!(r.aud.len(), 2);
        assert_eq!(r.claims["nonce"], "n");
        assert_eq!(r.lifetime, 300);
    }

    #[test]
    fn bad_requests() {
        type Check = fn(&RequestError) -> bool;
        let cases: &[(&[u8], Check)] = &[
            (b"", |e| matches!(e, RequestError::Shape(_))),
            (b"[]", |e| matches!(e, RequestError::Shape(_))),
            (br#"{"claims":{}}"#, |e| matches!(e, RequestError::Shape(_))),
            (br#"{"aud":"a","iss":"me"}"#, |e| {
                matches!(e, RequestError::Shape(_))
            }),
            (br#"{"aud":"a","aud":"b"}"#, |e| {
                matches!(e, RequestError::Shape(_))
            }),
            (br#"{"aud":""}"#, |e| *e == RequestError::Audience),
            (br#"{"aud":[]}"#, |e| *e == RequestError::Audience),
            (br#"{"aud":7}"#, |e| matches!(e, RequestError::Shape(_))),
            (br#"{"aud":"a","expires_in":0}"#, |e| {
                *e == RequestError::Lifetime
            }),
            (br#"{"aud":"a","expires_in":301}"#, |e| {
                *e == RequestError::Lifetime
            }),
            (br#"{"aud":"a","expires_in":-5}"#, |e| {
                matches!(e, RequestError::Shape(_))
            }),
            (br#"{"aud":"a","claims":{"":1}}"#, |e| {
                *e == RequestError::EmptyName
            }),
            (br#"{"aud":"a","claims":[1]}"#, |e| {
                matches!(e, RequestError::Shape(_))
            }),
        ];
        for (body, check) in cases {
            let err = parse(body).unwrap_err();
            assert!(check(&err), "{}: {err:?}", String::from_utf8_lossy(body));
        }
        for name in RESERVED {
            let body = format!(r#"{{"aud":"a","claims":{{"{name}":1}}}}"#);
            assert_eq!(
                parse(body.as_bytes()).unwrap_err(),
                RequestError::Reserved(name.to_owned())
            );
        }
    }

    #[test]
    fn agent_claims_win_and_are_complete() {
        let r = parse(br#"{"aud":"x","claims":{"nonce":"n"},"expires_in":30}"#).unwrap();
        let c = claims(&r, "dev-1", "thumb", 1000, "j1");
        assert_eq!(c["iss"], "dev-1");
        assert_eq!(c["sub"], "dev-1");
        assert_eq!(c["aud"], "x");
        assert_eq!(c["iat"], 1000);
        assert_eq!(c["nbf"], 1000);
        assert_eq!(c["exp"], 1030);
        assert_eq!(c["jti"], "j1");
        assert_eq!(c["cnf"]["jkt"], "thumb");
        assert_eq!(c["nonce"], "n");
        let two = parse(br#"{"aud":["x","y"]}"#).unwrap();
        assert_eq!(
            claims(&two, "d", "t", 0, "j")["aud"],
            serde_json::json!(["x", "y"])
        );
    }
}
