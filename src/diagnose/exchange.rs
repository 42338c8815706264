//! `check --exchange`: one real pass of the Asset Token Flow through the agent's own
//! code (`token::flow`): access token, actor token, exchange, verification.
//!
//! It is not side-effect free, and says so in the README: Salesforce registers or links the
//! Asset exactly as for the running agent, and a rotated refresh token is stored. The
//! token itself is verified and then dropped: never printed, never cached.

use super::Finding;
use crate::config::{AuthMethod, Config};
use crate::error::chain;
use crate::token::flow;
use wire::clock::Clock;

pub(super) async fn check(config: &Config, clock: &Clock) -> Finding {
    let shares_refresh_token = matches!(
        config.auth.method,
        AuthMethod::RefreshToken | AuthMethod::DeviceFlow { .. }
    );
    if shares_refresh_token && std::os::unix::net::UnixStream::connect(&config.api.socket).is_ok() {
        return Finding::warning(
            "exchange",
            "skipped: an agent is running and uses the same refresh token; if Salesforce rotates it, one of the two would be left with a dead token",
            "stop the agent (systemctl stop asset-agent), run `asset-agent check --exchange`, start it again",
        );
    }
    let mut flow = match crate::agent::dry_run_flow(config, clock.clone()).await {
        Ok(f) => f,
        Err(e) => {
            return Finding::error(
                "exchange",
                format!("cannot set up the flow: {}", chain(&e)),
                "fix the findings above (key, credentials) first",
            );
        }
    };
    match flow.fetch().await {
        Ok(token) => Finding::ok(
            "exchange",
            format!(
                "exchanged and verified an asset token for {} (lifetime {}s); it was discarded",
                token.asset_id().unwrap_or("an asset"),
                token.lifetime().as_secs()
            ),
        ),
        Err(e) => Finding::error("exchange", chain(&e), fix(&e)),
    }
}

fn fix(e: &flow::Error) -> String {
    let reason = e.reason();
    match reason.as_str() {
        "needs_enrollment" => "run `asset-agent enroll`, or store a refresh token".to_owned(),
        "invalid_grant" => "the grant was refused: the refresh token is revoked or expired (enroll again), or the JWT-bearer user is not pre-authorised for the app".to_owned(),
        "invalid_client" | "invalid_client_id" => "check salesforce.client_id (and the client secret) against the connected app".to_owned(),
        "verify" => "the asset token failed verification: check token.verify, token.audience and token.issuer against the connected app".to_owned(),
        "connect" | "timeout" => "Salesforce could not be reached: see the dns/connect/tls findings".to_owned(),
        r if r.starts_with("http_5") => "Salesforce reported a server error: try again later".to_owned(),
        r if r.starts_with("jwks_") => "the org's signing keys could not be fetched: see the tls finding".to_owned(),
        _ => format!("Salesforce refused the flow ({reason}): check the connected app's Asset Token settings for this client"),
    }
}
