//! The RFC 8693 token exchange (spec §2): access token + actor token → asset token.

use super::error::{Error, Step};
use super::upstream::Upstream;
use wire::Secret;
use wire::oauth::ExchangeResponse;

/// Exchanges `subject` (the access token) and `actor` (the signed actor JWT) for an asset
/// token. Sends exactly the five fields of the spec, and checks that what came back is a
/// JWT bearer token before anyone looks at it.
///
/// # Errors
/// The upstream [`Error`]; a response of the wrong token type is [`Error::Malformed`].
pub async fn exchange(
    up: &Upstream,
    subject: &Secret,
    actor: &Secret,
) -> Result<ExchangeResponse, Error> {
    let form = [
        ("grant_type", wire::oauth::GRANT_TOKEN_EXCHANGE),
        ("subject_token_type", wire::oauth::TOKEN_TYPE_ACCESS_TOKEN),
        ("subject_token", subject.expose()),
        ("actor_token_type", wire::oauth::TOKEN_TYPE_JWT),
        ("actor_token", actor.expose()),
    ];
    let resp: ExchangeResponse = up
        .post_form(Step::Exchange, wire::oauth::TOKEN_PATH, &form)
        .await?;
    if resp.issued_token_type != wire::oauth::TOKEN_TYPE_JWT {
        return Err(Error::Malformed {
            step: Step::Exchange,
            reason: format!(
                "issued_token_type is {:?}, expected {:?}",
                resp.issued_token_type,
                wire::oauth::TOKEN_TYPE_JWT
            ),
        });
    }
    if !resp.token_type.eq_ignore_ascii_case("bearer") {
        return Err(Error::Malformed {
            step: Step::Exchange,
            reason: format!("token_type is {:?}, expected \"Bearer\"", resp.token_type),
        });
    }
    if resp.access_token.is_empty() {
        return Err(Error::Malformed {
            step: Step::Exchange,
            reason: "access_token is empty".to_owned(),
        });
    }
    Ok(resp)
}
