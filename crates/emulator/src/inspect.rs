//! Inspection and control routes under `/__emulator/`, for the demo and for tests that
//! run the emulator out of process. Each mirrors a method on [`super::Emulator`] or
//! [`super::Faults`]; none is subject to faults or counted in `Stats::total`.
//!
//! | route | does |
//! |---|---|
//! | `GET /__emulator/assets` | the Asset table |
//! | `GET /__emulator/events` | the AssetTokenEvent log |
//! | `GET /__emulator/stats` | request counters |
//! | `GET /__emulator/asset-signing-cert.pem` | the signing certificate |
//! | `POST /__emulator/refresh-tokens` | mint a refresh token → `{"refresh_token"}` |
//! | `POST /__emulator/access-tokens` | mint an access token → `{"access_token"}` |
//! | `POST /__emulator/device/approve`, `/deny` | `{"user_code"}` |
//! | `POST /__emulator/jwt-bearer-keys` | register an RSA JWK for JWT bearer |
//! | `GET /__emulator/faults` | what is armed |
//! | `POST /__emulator/faults` | inject a [`super::Fault`] (JSON) |
//! | `DELETE /__emulator/faults` | clear faults |

use std::sync::Arc;

use hyper::body::Incoming;
use hyper::{Method, Request, StatusCode};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::common::{Rejection, lock};
use super::faults::{Fault, Faults};
use super::oauth::{self, DEFAULT_USERNAME};
use super::{CONTROL_PREFIX, Error, Shared};
use wire::Secret;
use wire::http::{self, Reply};
use wire::jose::RsaPublicJwk;

/// Control bodies are small JSON documents.
const MAX_BODY: usize = 64 * 1024;

#[derive(Deserialize)]
struct UserCode {
    user_code: String,
}

/// Answers one control request.
pub(crate) async fn handle(shared: &Arc<Shared>, req: Request<Incoming>) -> Reply {
    let method = req.method().clone();
    let path = req
        .uri()
        .path()
        .strip_prefix(CONTROL_PREFIX)
        .unwrap_or_default()
        .to_owned();
    let result = route(shared, &method, &path, req).await;
    match result {
        Ok(reply) => reply,
        Err(rej) => {
            tracing::debug!(%method, %path, error = rej.error, "emulator control request refused");
            rej.into_reply()
        }
    }
}

async fn route(
    shared: &Arc<Shared>,
    method: &Method,
    path: &str,
    req: Request<Incoming>,
) -> Result<Reply, Rejection> {
    match (method, path) {
        (&Method::GET, "/assets") => Ok(ok(&lock(&shared.state).assets().to_vec())),
        (&Method::GET, "/events") => Ok(ok(&lock(&shared.state).events().to_vec())),
        (&Method::GET, "/stats") => Ok(ok(&lock(&shared.stats).clone())),
        (&Method::GET, "/asset-signing-cert.pem") => Ok(http::with_type(
            StatusCode::OK,
            "application/x-pem-file",
            shared.keys.certificate_pem().to_owned(),
        )),
        (&Method::POST, "/refresh-tokens") => {
            let token = mint_refresh_token(shared)?;
            Ok(ok(&serde_json::json!({ "refresh_token": token })))
        }
        (&Method::POST, "/access-tokens") => {
            let token = mint_access_token(shared)?;
            Ok(ok(&serde_json::json!({ "access_token": token })))
        }
        (&Method::POST, "/device/approve" | "/device/deny") => {
            let body: UserCode = json_body(req).await?;
            super::device::decide(shared, &body.user_code, path.ends_with("approve"))
                .map_err(|e| not_found(&e))?;
            Ok(ok(&serde_json::json!({ "user_code": body.user_code })))
        }
        (&Method::POST, "/jwt-bearer-keys") => {
            let jwk: RsaPublicJwk = json_body(req).await?;
            if jwk.components().is_err() {
                return Err(Rejection::invalid_request("not an RSA public JWK"));
            }
            let kid = jwk.kid.clone();
            lock(&shared.state).add_jwt_bearer_key(jwk);
            Ok(ok(&serde_json::json!({ "kid": kid })))
        }
        (&Method::GET, "/faults") => Ok(ok(&Faults::new(shared.clone()).pending())),
        (&Method::POST, "/faults") => {
            let fault: Fault = json_body(req).await?;
            let faults = Faults::new(shared.clone());
            faults.inject(fault).await.map_err(|e| match e {
                Error::BadFault(why) => Rejection::invalid_request(why),
                other => Rejection::server_error(other.to_string()),
            })?;
            Ok(ok(&faults.pending()))
        }
        (&Method::DELETE, "/faults") => {
            let faults = Faults::new(shared.clone());
            faults.clear();
            Ok(ok(&faults.pending()))
        }
        _ => Err(Rejection::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "no such control route",
        )),
    }
}

/// A refresh token for the default user, live until revoked or rotated away.
pub(crate) fn mint_refresh_token(shared: &Shared) -> Result<Secret, Rejection> {
    let token = oauth::new_refresh_token()?;
    lock(&shared.state).add_refresh_token(token.expose().to_owned(), DEFAULT_USERNAME.to_owned());
    tracing::debug!("emulator minted a refresh token");
    Ok(token)
}

/// An access token for the default user, skipping any grant.
pub(crate) fn mint_access_token(shared: &Shared) -> Result<Secret, Rejection> {
    oauth::new_session(shared, DEFAULT_USERNAME)
}

async fn json_body<T: DeserializeOwned>(req: Request<Incoming>) -> Result<T, Rejection> {
    let body = http::read_body(req, MAX_BODY)
        .await
        .map_err(|e| Rejection::invalid_request(e.to_string()))?;
    serde_json::from_slice(&body)
        .map_err(|e| Rejection::invalid_request(format!("bad JSON body: {e}")))
}

fn not_found(e: &Error) -> Rejection {
    Rejection::new(StatusCode::NOT_FOUND, "not_found", e.to_string())
}

/// A 200 JSON answer.
fn ok<T: Serialize + ?Sized>(body: &T) -> Reply {
    http::json(StatusCode::OK, body)
}
