//! Strict validation of the device's actor token (spec §3).
//!
//! The rule for error codes: problems that stop us from even verifying the token (not a
//! compact JWS, undecodable JSON, wrong claim types, no `kid` or `cnf.jwk`) are
//! `invalid_request`, "malformed" in RFC 8693 §2.2.2 terms; everything decided after
//! looking at a well-formed token (algorithm, key binding, signature, `did`, `Asset`,
//! time window) is `invalid_grant`, "bad actor token" in the spec's list.
//!
//! This is a pure function of the token and the emulator's time, so it is tested
//! table-driven without a server or a clock.

use serde::Deserialize;

use super::common::Rejection;
use wire::clock::rfc3339;
use wire::jose::{RsaPublicJwk, jws};
use wire::oauth::{AssetFields, Confirmation};

/// How far in the future an `iat` (or a JWT-bearer `exp` in the past) may be: the device
/// clock and ours disagree a little.
pub(crate) const CLOCK_SKEW_SECS: i64 = 60;
/// The longest actor token accepted (`exp - iat`).
pub(crate) const MAX_LIFETIME_SECS: i64 = 600;
/// Salesforce's minimum for the device key (`AssetTokenEvent.DeviceKey`).
const MIN_RSA_BITS: usize = 2048;

#[derive(Deserialize)]
struct Header {
    alg: Option<String>,
    kid: Option<String>,
}

/// The claims with everything optional, so a missing one is named precisely.
#[derive(Deserialize)]
struct Claims {
    did: Option<String>,
    #[serde(rename = "Name")]
    name: Option<String>,
    #[serde(rename = "Asset")]
    asset: Option<AssetFields>,
    cnf: Option<Confirmation>,
    iat: Option<i64>,
    exp: Option<i64>,
    jti: Option<String>,
}

/// A verified actor token.
#[derive(Debug, Clone)]
pub(crate) struct Actor {
    pub did: String,
    pub name: Option<String>,
    pub asset: AssetFields,
    /// The device key it is signed with and binds (`cnf.jwk`).
    pub jwk: RsaPublicJwk,
    pub exp: i64,
    pub jti: Option<String>,
    /// The claims as JSON text (`AssetTokenEvent.ActorTokenPayload`).
    pub payload: String,
}

/// Verifies `token` at Unix time `now`.
///
/// # Errors
/// `invalid_request` for a malformed token, `invalid_grant` for a bad one, each with a
/// description naming the rule broken.
pub(crate) fn validate(token: &str, now: i64) -> Result<Actor, Rejection> {
    let malformed = |why: String| Rejection::invalid_request(format!("actor_token: {why}"));
    let bad = |why: String| Rejection::invalid_grant(format!("actor_token: {why}"));

    let parts = jws::decode_unverified::<Header, serde_json::Value>(token)
        .map_err(|e| malformed(e.to_string()))?;
    let claims: Claims = serde_json::from_value(parts.claims.clone())
        .map_err(|e| malformed(format!("claims are malformed: {e}")))?;
    match parts.header.alg.as_deref() {
        Some("RS256") => {}
        Some(other) => return Err(bad(format!("alg must be RS256, not {other}"))),
        None => return Err(malformed("header has no alg".to_owned())),
    }
    let kid = parts
        .header
        .kid
        .ok_or_else(|| malformed("header has no kid".to_owned()))?;
    let jwk = claims
        .cnf
        .map(|c| c.jwk)
        .ok_or_else(|| malformed("cnf.jwk claim is missing".to_owned()))?;
    if kid != jwk.kid {
        return Err(bad("header kid does not match cnf.jwk.kid".to_owned()));
    }
    let (n, _) = jwk
        .components()
        .map_err(|e| bad(format!("cnf.jwk is not a usable RSA key: {e}")))?;
    let bits = bit_length(&n);
    if bits < MIN_RSA_BITS {
        return Err(bad(format!(
            "cnf.jwk is a {bits}-bit RSA key; at least {MIN_RSA_BITS} bits are required"
        )));
    }
    if !jwk.verify_rs256(parts.signing_input.as_bytes(), &parts.signature) {
        return Err(bad("signature does not verify with cnf.jwk".to_owned()));
    }

    let did = claims
        .did
        .filter(|d| !d.is_empty())
        .ok_or_else(|| bad("did claim is missing or empty".to_owned()))?;
    let asset = claims
        .asset
        .ok_or_else(|| bad("Asset claim is missing".to_owned()))?;
    let iat = claims
        .iat
        .ok_or_else(|| bad("iat claim is missing".to_owned()))?;
    let exp = claims
        .exp
        .ok_or_else(|| bad("exp claim is missing".to_owned()))?;
    if exp <= now {
        return Err(bad(format!(
            "expired at {} (emulator time {})",
            rfc3339(exp),
            rfc3339(now)
        )));
    }
    if iat > now + CLOCK_SKEW_SECS {
        return Err(bad(format!(
            "iat {} is in the future (emulator time {}, allowed skew {CLOCK_SKEW_SECS} s)",
            rfc3339(iat),
            rfc3339(now)
        )));
    }
    if exp <= iat {
        return Err(bad("exp must be after iat".to_owned()));
    }
    if exp - iat > MAX_LIFETIME_SECS {
        return Err(bad(format!(
            "lifetime exp - iat = {} s exceeds {MAX_LIFETIME_SECS} s",
            exp - iat
        )));
    }
    Ok(Actor {
        did,
        name: claims.name.filter(|n| !n.is_empty()),
        asset,
        jwk,
        exp,
        jti: claims.jti.filter(|j| !j.is_empty()),
        payload: parts.claims.to_string(),
    })
}

/// Bits in a big-endian unsigned integer.
fn bit_length(be: &[u8]) -> usize {
    let start = be.iter().position(|&b| b != 0).unwrap_or(be.len());
    match be.get(start) {
        Some(first) => (be.len() - start) * 8 - first.leading_zeros() as usize,
        None => 0,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::testing;
    use serde_json::{Value, json};
    use wire::jose::{RsaKey, Signer as _};
    use wire::jose::{b64url, b64url_decode};

    pub(crate) const NOW: i64 = 1_800_000_000;

    /// Good actor claims for `key`, issued at `NOW`.
    pub(crate) fn claims(key: &RsaKey) -> Value {
        json!({
            "did": "a531798d-0001",
            "Name": "Asset Token: a531798d-0001",
            "Asset": {"Name": "Asset: a531798d-0001", "SerialNumber": "a531798d-0001"},
            "cnf": {"jwk": key.public_jwk()},
            "iat": NOW,
            "exp": NOW + 300,
            "jti": "jti-1",
        })
    }

    fn sign(key: &RsaKey, claims: &Value) -> String {
        jws::sign(key, claims).unwrap()
    }

    fn with(key: &RsaKey, edit: impl FnOnce(&mut Value)) -> String {
        let mut c = claims(key);
        edit(&mut c);
        sign(key, &c)
    }

    /// Replaces the header of a signed token (the signature then covers another header).
    fn reheader(token: &str, header: Value) -> String {
        let mut parts: Vec<&str> = token.split('.').collect();
        let h = b64url(header.to_string().as_bytes());
        parts[0] = &h;
        parts.join(".")
    }

    #[test]
    fn actor_validation_table() {
        let key = testing::device_key();
        let other = testing::other_key();
        let kid = key.public_jwk().kid.clone();
        let good = sign(&key, &claims(&key));

        let tampered = {
            let mut parts: Vec<String> = good.split('.').map(str::to_owned).collect();
            let mut c: Value = serde_json::from_slice(&b64url_decode(&parts[1]).unwrap()).unwrap();
            c["did"] = json!("someone-else");
            parts[1] = b64url(c.to_string().as_bytes());
            parts.join(".")
        };
        let mut short_jwk = key.public_jwk().clone();
        short_jwk.n = b64url(&b64url_decode(&short_jwk.n).unwrap()[..128]);

        // (name, token, emulator time, Ok or (error code, text in the description))
        type Case<'a> = (&'a str, String, i64, Result<(), (&'a str, &'a str)>);
        let cases: Vec<Case<'_>> = vec![
            ("good", good.clone(), NOW, Ok(())),
            (
                "good within skew",
                with(&key, |c| c["iat"] = json!(NOW + 30)),
                NOW,
                Ok(()),
            ),
            (
                "not a jws",
                "abc".into(),
                NOW,
                Err(("invalid_request", "compact JWS")),
            ),
            (
                "garbage claims",
                "e30.bm90anNvbg.AA".into(),
                NOW,
                Err(("invalid_request", "claims")),
            ),
            (
                "wrong claim type",
                with(&key, |c| c["iat"] = json!("soon")),
                NOW,
                Err(("invalid_request", "malformed")),
            ),
            (
                "alg none",
                reheader(&good, json!({"alg": "none", "kid": kid})),
                NOW,
                Err(("invalid_grant", "RS256")),
            ),
            (
                "no kid",
                reheader(&good, json!({"alg": "RS256"})),
                NOW,
                Err(("invalid_request", "no kid")),
            ),
            (
                "kid mismatch",
                with(&key, |c| c["cnf"]["jwk"]["kid"] = json!("devicekey")),
                NOW,
                Err(("invalid_grant", "kid")),
            ),
            (
                "no cnf",
                with(&key, |c| {
                    c.as_object_mut().unwrap().remove("cnf");
                }),
                NOW,
                Err(("invalid_request", "cnf.jwk")),
            ),
            (
                "bad signature",
                tampered,
                NOW,
                Err(("invalid_grant", "signature")),
            ),
            (
                "signed by another key",
                sign(&other, &claims(&key)),
                NOW,
                Err(("invalid_grant", "kid")),
            ),
            (
                "short key",
                with(&key, |c| c["cnf"]["jwk"] = json!(short_jwk)),
                NOW,
                Err(("invalid_grant", "1024-bit")),
            ),
            (
                "missing did",
                with(&key, |c| {
                    c.as_object_mut().unwrap().remove("did");
                }),
                NOW,
                Err(("invalid_grant", "did")),
            ),
            (
                "empty did",
                with(&key, |c| c["did"] = json!("")),
                NOW,
                Err(("invalid_grant", "did")),
            ),
            (
                "missing Asset",
                with(&key, |c| {
                    c.as_object_mut().unwrap().remove("Asset");
                }),
                NOW,
                Err(("invalid_grant", "Asset")),
            ),
            (
                "missing exp",
                with(&key, |c| {
                    c.as_object_mut().unwrap().remove("exp");
                }),
                NOW,
                Err(("invalid_grant", "exp")),
            ),
            (
                "expired",
                good.clone(),
                NOW + 300,
                Err(("invalid_grant", "expired")),
            ),
            (
                "future iat",
                with(&key, |c| {
                    c["iat"] = json!(NOW + 120);
                    c["exp"] = json!(NOW + 400);
                }),
                NOW,
                Err(("invalid_grant", "future")),
            ),
            (
                "exp before iat",
                with(&key, |c| {
                    c["iat"] = json!(NOW + 10);
                    c["exp"] = json!(NOW + 5);
                }),
                NOW,
                Err(("invalid_grant", "after iat")),
            ),
            (
                "too long",
                with(&key, |c| c["exp"] = json!(NOW + 601)),
                NOW,
                Err(("invalid_grant", "exceeds")),
            ),
        ];
        for (name, token, now, want) in cases {
            let got = validate(&token, now);
            match (got, want) {
                (Ok(actor), Ok(())) => {
                    assert_eq!(actor.did, "a531798d-0001", "{name}");
                    assert_eq!(actor.jwk, *key.public_jwk(), "{name}");
                }
                (Err(e), Err((code, needle))) => {
                    assert_eq!(e.error, code, "{name}: {}", e.description);
                    assert!(e.description.contains(needle), "{name}: {}", e.description);
                }
                (got, want) => panic!("{name}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn bit_length_counts_from_top_bit() {
        assert_eq!(bit_length(&[0, 0x01, 0xff]), 9);
        assert_eq!(bit_length(&[0x80; 256]), 2048);
        assert_eq!(bit_length(&[]), 0);
    }
}
