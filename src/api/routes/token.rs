//! `GET /v1/token`: the current asset token, as JSON or `text/plain`, optionally with at
//! least `min_ttl` seconds left (waiting up to `api.min_ttl_wait` for a refresh).
//!
//! The JSON body is [`Prepared`] once per token: all of it but `expires_in` is fixed for the
//! token's life, so a request copies no JSON and serialises nothing; the whole body is
//! rebuilt at most once a second, when `expires_in` changes.

use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use bytes::{BufMut as _, Bytes, BytesMut};

use hyper::body::Incoming;
use hyper::header::ACCEPT;
use hyper::{Request, StatusCode};
use serde::Serialize;

use crate::api::Shared;
use crate::api::reply::{error, with_retry_after};
use crate::token::AssetToken;
use crate::token::refresher::Handle;
use wire::clock;
use wire::http::{self, Reply};

/// The answer of `GET /v1/token` (and each line of the watch stream).
#[derive(Serialize)]
pub struct TokenBody<'a> {
    pub token: &'a str,
    pub token_type: &'a str,
    pub issued_token_type: &'a str,
    pub expires_at: String,
    pub expires_in: u64,
    pub asset_id: Option<&'a str>,
    pub device_id: &'a str,
}

/// The `GET /v1/token` body of the token last served, kept between requests. One belongs
/// beside each token handle (the identity whose token it renders), not in a global.
#[derive(Debug, Default)]
pub struct Prepared {
    last: Mutex<Option<Rendered>>,
}

/// One token's body, split around `expires_in`.
#[derive(Debug)]
struct Rendered {
    /// The token rendered. Weak: a replaced token is not kept alive by its body, and the
    /// allocation it pins means no later token can be mistaken for it by address.
    token: Weak<AssetToken>,
    /// Everything up to and including `"expires_in":`.
    head: Bytes,
    /// Everything after the number.
    tail: Bytes,
    /// `expires_in` of `whole`.
    secs: u64,
    whole: Bytes,
}

impl<'a> TokenBody<'a> {
    pub fn new(shared: &'a Shared, token: &'a AssetToken) -> Self {
        Self::of(&shared.info.device_id, token)
    }

    /// The body for `token` of the device `device_id` (also what a JSON file sink holds).
    pub fn of(device_id: &'a str, token: &'a AssetToken) -> Self {
        Self {
            token: token.jwt.expose(),
            token_type: &token.token_type,
            issued_token_type: &token.issued_token_type,
            expires_at: clock::rfc3339(token.claims.exp),
            expires_in: token.remaining().as_secs(),
            asset_id: token.asset_id(),
            device_id,
        }
    }
}

// === impl Prepared ===

impl Prepared {
    /// The JSON body for `token`: the bytes of the last answer while `expires_in` is the
    /// same, else re-joined from the parts rendered when this token was first served.
    /// `None` only if the body could not be serialised at all.
    pub fn body(&self, device_id: &str, token: &Arc<AssetToken>) -> Option<Bytes> {
        let secs = token.remaining().as_secs();
        let mut last = self.last.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(r) = last
            .as_mut()
            .filter(|r| std::ptr::eq(r.token.as_ptr(), Arc::as_ptr(token)))
        {
            if r.secs != secs {
                r.whole = join(&r.head, secs, &r.tail);
                r.secs = secs;
            }
            return Some(r.whole.clone());
        }
        // A new token: drop the old body (it holds the old JWT) before rendering.
        *last = None;
        let rendered = Rendered::new(device_id, token, secs)?;
        let whole = rendered.whole.clone();
        *last = Some(rendered);
        Some(whole)
    }
}

// === impl Rendered ===

impl Rendered {
    /// Serialises the body once with `expires_in` 0 and splits it at that number. The key
    /// cannot occur anywhere else unescaped: inside a JSON string every `"` is `\"`.
    fn new(device_id: &str, token: &Arc<AssetToken>, secs: u64) -> Option<Self> {
        const KEY: &[u8] = br#","expires_in":0"#;
        let mut body = TokenBody::of(device_id, token);
        body.expires_in = 0;
        let json = serde_json::to_vec(&body).ok()?;
        let at = json.windows(KEY.len()).position(|w| w == KEY)?;
        let json = Bytes::from(json);
        let head = json.slice(..at + KEY.len() - 1);
        let tail = json.slice(at + KEY.len()..);
        Some(Self {
            token: Arc::downgrade(token),
            whole: join(&head, secs, &tail),
            head,
            tail,
            secs,
        })
    }
}

/// `head`, `secs` in decimal, `tail`.
fn join(head: &[u8], secs: u64, tail: &[u8]) -> Bytes {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    let mut n = secs;
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    let digits = &digits[at..];
    let mut out = BytesMut::with_capacity(head.len() + digits.len() + tail.len());
    out.put_slice(head);
    out.put_slice(digits);
    out.put_slice(tail);
    out.freeze()
}

/// `min_ttl` from a query string: absent is zero.
///
/// # Errors
/// A message for the 400 answer.
pub fn parse_min_ttl(query: Option<&str>) -> Result<Duration, &'static str> {
    let value = query.and_then(|q| {
        http::form_urlencoded_pairs(q.as_bytes())
            .into_iter()
            .find(|(k, _)| k == "min_ttl")
            .map(|(_, v)| v)
    });
    match value.map(|v| v.parse::<u32>()) {
        None => Ok(Duration::ZERO),
        Some(Ok(secs)) => Ok(Duration::from_secs(secs.into())),
        Some(Err(_)) => Err("min_ttl must be a whole number of seconds"),
    }
}

/// Answers `GET /v1/token`.
pub async fn reply(shared: &Shared, req: &Request<Incoming>) -> Reply {
    reply_for(
        shared,
        &shared.tokens,
        &shared.token_body,
        &shared.info.device_id,
        req,
    )
    .await
}

/// Answers a token request for the identity whose tokens `tokens` holds (the gateway's
/// own, or a child's).
pub async fn reply_for(
    shared: &Shared,
    tokens: &Handle,
    prepared: &Prepared,
    device_id: &str,
    req: &Request<Incoming>,
) -> Reply {
    let min_ttl = match parse_min_ttl(req.uri().query()) {
        Ok(t) => t,
        Err(reason) => return error(StatusCode::BAD_REQUEST, "bad_request", reason),
    };
    let token = match tokens.token_with(min_ttl, shared.min_ttl_wait).await {
        Ok(t) => t,
        Err(_) => return unavailable_for(tokens, min_ttl),
    };
    let plain = req
        .headers()
        .get(ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/plain") && !v.contains("application/json"));
    if plain {
        let mut body = token.jwt.expose().to_owned();
        body.push('\n');
        return http::with_type(StatusCode::OK, "text/plain; charset=utf-8", body);
    }
    match prepared.body(device_id, &token) {
        Some(body) => http::with_type(StatusCode::OK, "application/json", body),
        None => http::json(StatusCode::OK, &TokenBody::of(device_id, &token)),
    }
}

/// The JSON answer for a held token.
pub fn token_reply(shared: &Shared, token: &Arc<AssetToken>) -> Reply {
    match shared.token_body.body(&shared.info.device_id, token) {
        Some(body) => http::with_type(StatusCode::OK, "application/json", body),
        None => http::json(StatusCode::OK, &TokenBody::new(shared, token)),
    }
}

/// Why no token can be served, and when to ask again.
pub fn unavailable_reason(shared: &Shared, min_ttl: Duration) -> (String, Duration) {
    unavailable_reason_for(&shared.tokens, min_ttl)
}

/// [`unavailable_reason`] for the identity whose tokens `tokens` holds.
pub fn unavailable_reason_for(tokens: &Handle, min_ttl: Duration) -> (String, Duration) {
    let snap = tokens.snapshot();
    let retry = snap
        .next_refresh
        .map(|n| n.saturating_duration_since(tokio::time::Instant::now()))
        .unwrap_or(Duration::from_secs(1))
        .clamp(Duration::from_secs(1), Duration::from_secs(300));
    let reason = match (&snap.last_error, min_ttl.is_zero()) {
        (Some(e), _) => format!("no valid asset token ({}): {e}", snap.state.as_str()),
        (None, false) => format!(
            "no asset token with at least {}s left could be obtained in time",
            min_ttl.as_secs()
        ),
        (None, true) => format!("no asset token yet ({})", snap.state.as_str()),
    };
    (reason, retry)
}

/// 503 + `Retry-After` + `{"error":"unavailable","reason"}`.
pub fn unavailable(shared: &Shared, min_ttl: Duration) -> Reply {
    unavailable_for(&shared.tokens, min_ttl)
}

/// [`unavailable`] for the identity whose tokens `tokens` holds.
pub fn unavailable_for(tokens: &Handle, min_ttl: Duration) -> Reply {
    let (reason, retry) = unavailable_reason_for(tokens, min_ttl);
    with_retry_after(
        error(StatusCode::SERVICE_UNAVAILABLE, "unavailable", &reason),
        retry,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::Instant;
    use wire::Secret;
    use wire::oauth::AssetTokenClaims;

    fn token(jwt: &str, sub: Option<&str>, lifetime: Duration) -> Arc<AssetToken> {
        Arc::new(AssetToken {
            jwt: Secret::new(jwt),
            token_type: "Bearer".into(),
            issued_token_type: "urn:ietf:params:oauth:token-type:jwt".into(),
            claims: AssetTokenClaims {
                iss: None,
                sub: sub.map(Into::into),
                aud: vec![],
                exp: 1_700_000_000,
                nbf: None,
                iat: None,
                jti: None,
                did: None,
                name: None,
                cnf: None,
            },
            received: Instant::now(),
            expires: Instant::now() + lifetime,
        })
    }

    /// What the answer was before it was prepared: the body serialised per request.
    fn serialised(device_id: &str, token: &AssetToken) -> Vec<u8> {
        serde_json::to_vec(&TokenBody::of(device_id, token)).unwrap()
    }

    fn json(body: &Bytes) -> serde_json::Value {
        serde_json::from_slice(body).unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn prepared_body_is_the_serialised_body_byte_for_byte() {
        let cases = [
            ("eyJ.a.b", Some("02i000000000001AAA"), "device-0001"),
            ("eyJ.a.b", None, "device-0001"),
            // Quotes and the key itself inside strings are escaped, so never split on.
            (
                r#"x","expires_in":0,"y"#,
                Some(r#"","expires_in":0"#),
                "dev\\ice \"1\" \u{e9}",
            ),
        ];
        for (jwt, sub, device) in cases {
            for secs in [0, 9, 10, 3599, 86_400 * 365] {
                let t = token(jwt, sub, Duration::from_secs(secs));
                let p = Prepared::default();
                let got = p.body(device, &t).unwrap();
                assert_eq!(&got[..], &serialised(device, &t)[..], "{jwt} {secs}");
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn one_body_per_second_then_expires_in_counts_down() {
        let t = token("eyJ.a.b", Some("sub"), Duration::from_secs(60));
        let p = Prepared::default();
        assert_eq!(json(&p.body("d", &t).unwrap())["expires_in"], 60);
        tokio::time::advance(Duration::from_millis(1)).await;
        let first = p.body("d", &t).unwrap();
        assert_eq!(json(&first)["expires_in"], 59);
        tokio::time::advance(Duration::from_millis(998)).await;
        // Same token, same whole second left (59.001 s): the same bytes, shared.
        let again = p.body("d", &t).unwrap();
        assert_eq!(first.as_ptr(), again.as_ptr());
        tokio::time::advance(Duration::from_millis(2)).await;
        let later = p.body("d", &t).unwrap();
        assert_ne!(first.as_ptr(), later.as_ptr());
        assert_eq!(&later[..], &serialised("d", &t)[..]);
        assert_eq!(json(&later)["expires_in"], 58);
        tokio::time::advance(Duration::from_secs(59)).await;
        assert_eq!(json(&p.body("d", &t).unwrap())["expires_in"], 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_new_token_is_rendered_anew_and_the_old_one_not_kept_alive() {
        let old = token("eyJ.old", Some("sub"), Duration::from_secs(60));
        let p = Prepared::default();
        assert_eq!(json(&p.body("d", &old).unwrap())["token"], "eyJ.old");
        let weak = Arc::downgrade(&old);
        drop(old);
        assert!(
            weak.upgrade().is_none(),
            "the prepared body holds no strong reference"
        );
        let new = token("eyJ.new", Some("sub"), Duration::from_secs(60));
        assert_eq!(json(&p.body("d", &new).unwrap())["token"], "eyJ.new");
        // Another identity's holder renders its own token and device.
        let q = Prepared::default();
        let other = token("eyJ.other", None, Duration::from_secs(5));
        let v = json(&q.body("e", &other).unwrap());
        assert_eq!(
            (v["token"].as_str(), v["device_id"].as_str()),
            (Some("eyJ.other"), Some("e"))
        );
        assert_eq!(json(&p.body("d", &new).unwrap())["token"], "eyJ.new");
    }

    #[test]
    fn min_ttl_parsing() {
        assert_eq!(parse_min_ttl(None), Ok(Duration::ZERO));
        assert_eq!(parse_min_ttl(Some("a=b")), Ok(Duration::ZERO));
        assert_eq!(
            parse_min_ttl(Some("min_ttl=30")),
            Ok(Duration::from_secs(30))
        );
        assert_eq!(
            parse_min_ttl(Some("min_ttl=%33")),
            Ok(Duration::from_secs(3))
        );
        for bad in [
            "min_ttl=",
            "min_ttl=-1",
            "min_ttl=1.5",
            "min_ttl=99999999999",
        ] {
            assert!(parse_min_ttl(Some(bad)).is_err(), "{bad}");
        }
    }
}
