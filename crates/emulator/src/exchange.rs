//! The RFC 8693 token exchange (spec §2-§4): access token + actor token → asset token.
//!
//! Steps, each refusing with a precise RFC 6749 error: exactly the five form fields with
//! the right token types; a live subject access token; a valid actor token (`actor`); an
//! unused `jti`; Asset registration (Id → SerialNumber → create). Then the asset token is
//! signed, an AssetTokenEvent is logged and the RFC 8693 response returned. The
//! wrong-token-type and bad-signature faults are applied here, at issuing time.

use hyper::StatusCode;

use super::armed::Spoiled;
use super::common::{Form, Rejection, lock, random_b64url};
use super::state::{AssetTokenEvent, Registrant, SessionCheck};
use super::stats::FaultKind;
use super::{Shared, actor, signing};
use wire::Secret;
use wire::clock::rfc3339;
use wire::http::{self, Reply};
use wire::jose::jws;
use wire::oauth::{
    AssetTokenClaims, Confirmation, ExchangeResponse, TOKEN_TYPE_ACCESS_TOKEN, TOKEN_TYPE_JWT,
};

/// The only fields a token exchange may carry (spec §2).
const FIELDS: [&str; 5] = [
    "grant_type",
    "subject_token_type",
    "subject_token",
    "actor_token_type",
    "actor_token",
];
/// The id the emulated connected app has in `AssetTokenEvent.ConnectedAppId`.
const CONNECTED_APP_ID: &str = "0H4EM0000000001AAA";

/// Answers a token-exchange request.
pub(crate) async fn exchange(shared: &Shared, form: &Form) -> Result<Reply, Rejection> {
    check_fields(form)?;
    let subject = form.require("subject_token")?;
    let actor_token = form.require("actor_token")?;
    let now_ms = shared.unix_ms();
    let now = now_ms.div_euclid(1000);

    let user_id = match lock(&shared.state).session(subject, now_ms) {
        SessionCheck::Live(s) => s.user_id.clone(),
        // Salesforce's wording for a dead session; status per config (400 by default).
        SessionCheck::Expired => {
            return Err(subject_rejection(shared, "expired access/refresh token"));
        }
        SessionCheck::Unknown => {
            return Err(subject_rejection(
                shared,
                "invalid subject_token: unknown access token",
            ));
        }
    };
    let actor = actor::validate(actor_token, now)?;
    let device_key = signing::jwk_to_pem(&actor.jwk).ok_or_else(|| {
        Rejection::invalid_grant("actor_token: cnf.jwk is not a valid RSA public key")
    })?;

    let (asset, registration) = {
        let mut st = lock(&shared.state);
        if let Some(jti) = &actor.jti
            && !st.use_jti(jti, actor.exp, now)
        {
            return Err(Rejection::invalid_grant(
                "actor_token: jti has already been used",
            ));
        }
        st.register(Registrant {
            fields: &actor.asset,
            did: &actor.did,
            thumbprint: actor.jwk.thumbprint(),
            created_date: rfc3339(now),
        })
        .map_err(|e| Rejection::invalid_grant(e.to_string()))?
    };

    let lifetime = i64::try_from(shared.config.asset_token_lifetime.as_secs()).unwrap_or(i64::MAX);
    let exp = now.saturating_add(lifetime);
    let name = actor
        .name
        .clone()
        .unwrap_or_else(|| format!("Asset Token: {}", actor.did));
    let claims = AssetTokenClaims {
        iss: Some(shared.base_url.clone()),
        sub: Some(asset.id.clone()),
        aud: shared.config.audiences.clone(),
        exp,
        nbf: Some(now),
        iat: Some(now),
        jti: Some(random_b64url(16)?),
        did: Some(actor.did.clone()),
        name: Some(name.clone()),
        cnf: Some(Confirmation {
            jwk: actor.jwk.clone(),
        }),
    };
    let (wrong_type, bad_signature) = {
        let mut f = lock(&shared.faults);
        (f.take_wrong_type(), f.take_bad_signature())
    };
    let signed = if bad_signature {
        let impostor = shared
            .keys
            .impostor()
            .await
            .map_err(|_| Rejection::server_error("could not load the impostor key"))?;
        jws::sign(&impostor, &claims)
    } else {
        jws::sign(shared.keys.signer(), &claims)
    };
    let token = signed.map_err(|_| Rejection::server_error("could not sign the asset token"))?;
    {
        let mut stats = lock(&shared.stats);
        if wrong_type {
            stats.record_fault(FaultKind::WrongIssuedTokenType);
        }
        if bad_signature {
            stats.record_fault(FaultKind::BadSignature);
        }
    }

    lock(&shared.state).push_event(AssetTokenEvent {
        replay_id: 0,
        name,
        asset_id: asset.id.clone(),
        asset_name: asset.name.clone(),
        asset_serial_number: asset.serial_number.clone(),
        device_id: actor.did.clone(),
        device_key,
        actor_token_payload: actor.payload.clone(),
        connected_app_id: CONNECTED_APP_ID.to_owned(),
        connected_app_name: shared.config.client_id.clone(),
        expiration: rfc3339(exp),
        user_id,
        created_date: rfc3339(now),
        registration,
    });
    tracing::debug!(asset_id = %asset.id, ?registration, wrong_type, bad_signature, "emulator issued an asset token");

    let mut reply = http::json(
        StatusCode::OK,
        &ExchangeResponse {
            access_token: Secret::new(token),
            issued_token_type: if wrong_type {
                TOKEN_TYPE_ACCESS_TOKEN
            } else {
                TOKEN_TYPE_JWT
            }
            .to_owned(),
            token_type: "Bearer".to_owned(),
            expires_in: u64::try_from(lifetime).ok(),
        },
    );
    if wrong_type || bad_signature {
        reply.extensions_mut().insert(Spoiled);
    }
    Ok(reply)
}

/// Exactly the five fields, each once and non-empty, with the two token types right.
fn check_fields(form: &Form) -> Result<(), Rejection> {
    if let Some(extra) = form.keys().find(|k| !FIELDS.contains(k)) {
        return Err(Rejection::invalid_request(format!(
            "unexpected field {extra}: a token exchange carries exactly {}",
            FIELDS.join(", ")
        )));
    }
    for field in FIELDS {
        if form.count(field) > 1 {
            return Err(Rejection::invalid_request(format!("{field} is repeated")));
        }
        form.require(field)?;
    }
    if form.get("subject_token_type") != Some(TOKEN_TYPE_ACCESS_TOKEN) {
        return Err(Rejection::invalid_request(format!(
            "subject_token_type must be {TOKEN_TYPE_ACCESS_TOKEN}"
        )));
    }
    if form.get("actor_token_type") != Some(wire::oauth::TOKEN_TYPE_JWT) {
        return Err(Rejection::invalid_request(format!(
            "actor_token_type must be {TOKEN_TYPE_JWT}"
        )));
    }
    Ok(())
}

fn subject_rejection(shared: &Shared, description: &str) -> Rejection {
    Rejection::new(
        shared.config.subject_token_error_status,
        "invalid_grant",
        description,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::actor::tests::{NOW, claims};
    use crate::{Config, Registration, testing};
    use std::time::Duration;
    use wire::oauth::GRANT_TOKEN_EXCHANGE;

    fn form(subject: &str, actor: &str) -> Vec<(String, String)> {
        vec![
            ("grant_type".into(), GRANT_TOKEN_EXCHANGE.into()),
            ("subject_token_type".into(), TOKEN_TYPE_ACCESS_TOKEN.into()),
            ("subject_token".into(), subject.into()),
            ("actor_token_type".into(), TOKEN_TYPE_JWT.into()),
            ("actor_token".into(), actor.into()),
        ]
    }

    fn as_form(pairs: &[(String, String)]) -> Form {
        let v: Vec<(&str, &str)> = pairs
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        Form::from_pairs(&v)
    }

    #[test]
    fn fields_must_be_exactly_the_five() {
        let good = form("at", "jwt");
        assert!(check_fields(&as_form(&good)).is_ok());
        let mut extra = good.clone();
        extra.push(("client_id".into(), "x".into()));
        assert!(
            check_fields(&as_form(&extra))
                .unwrap_err()
                .description
                .contains("client_id")
        );
        let missing: Vec<_> = good
            .iter()
            .filter(|(k, _)| k != "actor_token")
            .cloned()
            .collect();
        assert_eq!(
            check_fields(&as_form(&missing)).unwrap_err().description,
            "actor_token is missing"
        );
        let mut dup = good.clone();
        dup.push(("subject_token".into(), "again".into()));
        assert!(
            check_fields(&as_form(&dup))
                .unwrap_err()
                .description
                .contains("repeated")
        );
        let mut wrong = good.clone();
        wrong[1].1 = TOKEN_TYPE_JWT.into();
        let e = check_fields(&as_form(&wrong)).unwrap_err();
        assert_eq!(e.error, "invalid_request");
        assert!(e.description.contains("subject_token_type"));
        let mut wrong = good;
        wrong[3].1 = TOKEN_TYPE_ACCESS_TOKEN.into();
        assert!(
            check_fields(&as_form(&wrong))
                .unwrap_err()
                .description
                .contains("actor_token_type")
        );
    }

    #[tokio::test(start_paused = true)]
    async fn exchange_registers_logs_and_refuses_dead_sessions() {
        let shared = testing::shared(Config {
            subject_token_error_status: StatusCode::UNAUTHORIZED,
            ..testing::config()
        })
        .await;
        // Put the emulator clock on the actor tokens' NOW.
        shared.set_skew(NOW - shared.unix());
        let key = testing::device_key();
        let at = crate::oauth::new_session(&shared, "u").unwrap();
        let actor = jws::sign(&key, &claims(&key)).unwrap();
        let reply = exchange(&shared, &as_form(&form(at.expose(), &actor)))
            .await
            .unwrap();
        assert_eq!(reply.status(), StatusCode::OK);
        {
            let st = lock(&shared.state);
            assert_eq!(st.assets().len(), 1);
            assert_eq!(st.events()[0].registration, Registration::Created);
            assert_eq!(st.events()[0].connected_app_name, shared.config.client_id);
        }
        // Same jti again: replay.
        let e = exchange(&shared, &as_form(&form(at.expose(), &actor)))
            .await
            .unwrap_err();
        assert!(e.description.contains("jti"), "{e:?}");
        // New jti, same serial: linked.
        let mut c = claims(&key);
        c["jti"] = serde_json::json!("jti-2");
        let actor2 = jws::sign(&key, &c).unwrap();
        exchange(&shared, &as_form(&form(at.expose(), &actor2)))
            .await
            .unwrap();
        assert_eq!(
            lock(&shared.state).events()[1].registration,
            Registration::Linked
        );
        // Unknown Asset.Id.
        c["jti"] = serde_json::json!("jti-3");
        c["Asset"]["Id"] = serde_json::json!("02iNOPE");
        let e = exchange(
            &shared,
            &as_form(&form(at.expose(), &jws::sign(&key, &c).unwrap())),
        )
        .await
        .unwrap_err();
        assert_eq!(
            (e.error, e.description.as_str()),
            ("invalid_grant", "Asset.Id 02iNOPE does not exist")
        );
        // Unknown and expired subject tokens use the configured status.
        let e = exchange(&shared, &as_form(&form("nope", &actor)))
            .await
            .unwrap_err();
        assert_eq!(
            (e.status, e.error),
            (StatusCode::UNAUTHORIZED, "invalid_grant")
        );
        tokio::time::advance(Duration::from_secs(3 * 3600)).await;
        let e = exchange(&shared, &as_form(&form(at.expose(), &actor)))
            .await
            .unwrap_err();
        assert_eq!(e.description, "expired access/refresh token");
    }
}
