//! `POST /services/oauth2/token`: checks the form encoding and hands each grant to the
//! module that implements it (`oauth` for refresh token and client credentials, `bearer`,
//! `device`, `exchange`).

use hyper::header::{CONTENT_TYPE, HeaderMap};

use super::common::{Form, Rejection};
use super::stats::Grant;
use super::{Shared, bearer, device, exchange, oauth};
use wire::http::Reply;

/// Answers one token-endpoint request of kind `grant`.
pub(crate) async fn answer(
    shared: &Shared,
    grant: Grant,
    form: &Form,
    headers: &HeaderMap,
) -> Reply {
    let result = match check_content_type(headers) {
        Err(e) => Err(e),
        Ok(()) => match grant {
            Grant::RefreshToken => oauth::refresh(shared, form, headers),
            Grant::ClientCredentials => oauth::client_credentials(shared, form, headers),
            Grant::JwtBearer => bearer::grant(shared, form),
            Grant::DeviceCode => device::start(shared, form),
            Grant::Device => device::poll(shared, form),
            Grant::TokenExchange => exchange::exchange(shared, form).await,
            Grant::Unsupported => Err(match form.get("grant_type") {
                None | Some("") => Rejection::invalid_request("grant_type is missing"),
                Some(_) => Rejection::unsupported_grant_type("grant type not supported"),
            }),
        },
    };
    match result {
        Ok(reply) => {
            tracing::debug!(?grant, "emulator token request granted");
            reply
        }
        Err(rej) => {
            tracing::debug!(?grant, error = rej.error, description = %rej.description, "emulator token request refused");
            rej.into_reply()
        }
    }
}

fn check_content_type(headers: &HeaderMap) -> Result<(), Rejection> {
    let ok = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.to_ascii_lowercase()
                .starts_with("application/x-www-form-urlencoded")
        });
    if ok {
        Ok(())
    } else {
        Err(Rejection::invalid_request(
            "Content-Type must be application/x-www-form-urlencoded",
        ))
    }
}
