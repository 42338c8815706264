//! The JSON body a token is served as: `GET /v1/token`, each line of the watch stream, a
//! JSON file sink.
//!
//! The body is [`Prepared`] once per token: all of it but `expires_in` is fixed for the
//! token's life, so a request copies no JSON and serialises nothing; the whole body is
//! rebuilt at most once a second, when `expires_in` changes.

use std::sync::{Arc, Mutex, PoisonError, Weak};

use bytes::{BufMut as _, Bytes, BytesMut};
use serde::Serialize;
use tokio::time::Instant;

use super::AssetToken;
use wire::clock;

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
    /// The JSON body for `token` at `now`: the bytes of the last answer while `expires_in`
    /// is the same, else re-joined from the parts rendered when this token was first
    /// served. `None` only if the body could not be serialised at all.
    pub fn body(&self, device_id: &str, token: &Arc<AssetToken>, now: Instant) -> Option<Bytes> {
        let secs = token.remaining_at(now).as_secs();
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
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
                let got = p.body(device, &t, Instant::now()).unwrap();
                assert_eq!(&got[..], &serialised(device, &t)[..], "{jwt} {secs}");
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn one_body_per_second_then_expires_in_counts_down() {
        let t = token("eyJ.a.b", Some("sub"), Duration::from_secs(60));
        let p = Prepared::default();
        assert_eq!(
            json(&p.body("d", &t, Instant::now()).unwrap())["expires_in"],
            60
        );
        tokio::time::advance(Duration::from_millis(1)).await;
        let first = p.body("d", &t, Instant::now()).unwrap();
        assert_eq!(json(&first)["expires_in"], 59);
        tokio::time::advance(Duration::from_millis(998)).await;
        // Same token, same whole second left (59.001 s): the same bytes, shared.
        let again = p.body("d", &t, Instant::now()).unwrap();
        assert_eq!(first.as_ptr(), again.as_ptr());
        tokio::time::advance(Duration::from_millis(2)).await;
        let later = p.body("d", &t, Instant::now()).unwrap();
        assert_ne!(first.as_ptr(), later.as_ptr());
        assert_eq!(&later[..], &serialised("d", &t)[..]);
        assert_eq!(json(&later)["expires_in"], 58);
        tokio::time::advance(Duration::from_secs(59)).await;
        assert_eq!(
            json(&p.body("d", &t, Instant::now()).unwrap())["expires_in"],
            0
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_new_token_is_rendered_anew_and_the_old_one_not_kept_alive() {
        let old = token("eyJ.old", Some("sub"), Duration::from_secs(60));
        let p = Prepared::default();
        assert_eq!(
            json(&p.body("d", &old, Instant::now()).unwrap())["token"],
            "eyJ.old"
        );
        let weak = Arc::downgrade(&old);
        drop(old);
        assert!(
            weak.upgrade().is_none(),
            "the prepared body holds no strong reference"
        );
        let new = token("eyJ.new", Some("sub"), Duration::from_secs(60));
        assert_eq!(
            json(&p.body("d", &new, Instant::now()).unwrap())["token"],
            "eyJ.new"
        );
        // Another identity's holder renders its own token and device.
        let q = Prepared::default();
        let other = token("eyJ.other", None, Duration::from_secs(5));
        let v = json(&q.body("e", &other, Instant::now()).unwrap());
        assert_eq!(
            (v["token"].as_str(), v["device_id"].as_str()),
            (Some("eyJ.other"), Some("e"))
        );
        assert_eq!(
            json(&p.body("d", &new, Instant::now()).unwrap())["token"],
            "eyJ.new"
        );
    }
}
