//! The routes added on top of the token: `/v1/sign`, `/v1/refresh`, `/v1/token/watch` and
//! `/metrics` (checked with a strict text-format parser), against an in-process agent.

// Helpers outside #[test] functions: unwrap and panic are the point here.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
#[path = "common/prometheus.rs"]
mod prometheus_text;

use std::time::Duration;

use asset_agent::api::routes::sign::{MAX_BODY, RESERVED, Signed};
use asset_agent::client;
use asset_agent::keys::{FileKey, Signer as _};
use common::{Agent, Device, emulator, get, post, wait_for_token};
use emulator::{Grant, Scope};
use serde_json::{Value, json};
use wire::clock::Clock;
use wire::jose::jws;

#[tokio::test]
async fn sign_verifies_against_the_device_key_and_carries_the_callers_aud() {
    let emu = emulator(Clock::system(), |_| {}).await;
    let dev = Device::new(&emu);
    let agent = Agent::start(&dev.config(&emu, "", ""), Clock::system()).await;
    wait_for_token(&dev.socket()).await;
    let key = FileKey::load(&dev.path("device-key.pem")).unwrap();
    let jwk = key.public_jwk();

    let request = json!({
        "aud": "https://backend.example.com",
        "claims": {"nonce": "n-1", "scope": ["telemetry"], "nested": {"iss": "fine here"}},
        "expires_in": 120,
    });
    let r = post(&dev.socket(), "/v1/sign", request.to_string()).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let signed: Signed = serde_json::from_slice(&r.body).unwrap();

    // The signature is the device key's.
    let parts = jws::decode_unverified::<Value, Value>(&signed.jwt).unwrap();
    assert!(jwk.verify_rs256(parts.signing_input.as_bytes(), &parts.signature));
    assert_eq!(parts.header["alg"], "RS256");
    assert_eq!(parts.header["kid"], jwk.kid.as_str());
    assert_eq!(signed.kid, jwk.kid);

    // And an independent JWT library agrees, checking aud and exp as a backend would.
    asset_agent::crypto::install();
    let dk = jsonwebtoken::DecodingKey::from_rsa_components(&jwk.n, &jwk.e).unwrap();
    let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
    v.set_audience(&["https://backend.example.com"]);
    v.set_issuer(&["device-0001"]);
    let claims = jsonwebtoken::decode::<Value>(&signed.jwt, &dk, &v)
        .unwrap()
        .claims;
    assert_eq!(claims["aud"], "https://backend.example.com");
    assert_eq!(claims["sub"], "device-0001");
    assert_eq!(claims["cnf"]["jkt"], jwk.kid.as_str());
    assert_eq!(claims["nonce"], "n-1");
    assert_eq!(claims["nested"]["iss"], "fine here");
    assert_eq!(claims["jti"], signed.jti.as_str());
    assert_eq!(claims["iat"], signed.iat);
    assert_eq!(claims["nbf"], signed.iat);
    assert_eq!(signed.exp - signed.iat, 120);
    assert_eq!(claims["exp"], signed.exp);

    // A list of audiences is kept as a list; two calls never share a jti.
    let r = post(&dev.socket(), "/v1/sign", r#"{"aud":["a","b"]}"#).await;
    let two: Signed = serde_json::from_slice(&r.body).unwrap();
    let parts = jws::decode_unverified::<Value, Value>(&two.jwt).unwrap();
    assert_eq!(parts.claims["aud"], json!(["a", "b"]));
    assert_eq!(two.exp - two.iat, 60, "default lifetime");
    assert_ne!(two.jti, signed.jti);
    agent.stop().await;
}

#[tokio::test]
async fn sign_rejects_reserved_claims_and_bad_bodies_with_400() {
    let emu = emulator(Clock::system(), |_| {}).await;
    let dev = Device::new(&emu);
    let agent = Agent::start(&dev.config(&emu, "", ""), Clock::system()).await;
    wait_for_token(&dev.socket()).await;
    let s = dev.socket();
    let mut bodies: Vec<String> = RESERVED
        .iter()
        .map(|name| json!({"aud": "x", "claims": {*name: 1}}).to_string())
        .collect();
    bodies.extend(
        [
            r#"{"aud":"x","iss":"me"}"#,
            r#"{"aud":"x","cnf":{"jkt":"mine"}}"#,
            r#"{"aud":"x","exp":99999999999}"#,
            r#"{"aud":"x","expires_in":301}"#,
            r#"{"aud":"x","expires_in":0}"#,
            r#"{"aud":""}"#,
            r#"{"claims":{"a":1}}"#,
            r#"{"aud":"x","claims":"iss"}"#,
            "not json",
            "",
            "[]",
        ]
        .map(str::to_owned),
    );
    for body in &bodies {
        let r = post(&s, "/v1/sign", body.clone()).await;
        let text = String::from_utf8_lossy(&r.body);
        assert_eq!(r.status, 400, "{body}: {text}");
        assert!(
            text.contains("\"bad_request\"") && !text.contains("jwt"),
            "{body}: {text}"
        );
    }
    let r = post(
        &s,
        "/v1/sign",
        json!({"aud": "x", "claims": {"iss": "me"}}).to_string(),
    )
    .await;
    assert!(String::from_utf8_lossy(&r.body).contains("\\\"iss\\\" is set by the agent"));
    let huge = format!(
        r#"{{"aud":"x","claims":{{"pad":"{}"}}}}"#,
        "a".repeat(MAX_BODY)
    );
    assert_eq!(post(&s, "/v1/sign", huge).await.status, 413);
    agent.stop().await;
}

#[tokio::test]
async fn refresh_is_admin_single_flight_and_answers_metadata_only() {
    let emu = emulator(Clock::system(), |_| {}).await;
    let dev = Device::new(&emu);
    let agent = Agent::start(&dev.config(&emu, "", ""), Clock::system()).await;
    let first = wait_for_token(&dev.socket()).await;
    let s = dev.socket();

    // Just obtained: fresh, no new exchange.
    let exchanges = emu.grant_count(Grant::TokenExchange);
    let r = post(&s, "/v1/refresh", "").await;
    assert_eq!(r.status, 200);
    let body: Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(body["refreshed"], false, "{body}");
    assert_eq!(emu.grant_count(Grant::TokenExchange), exchanges);

    // Later, five at once: one exchange, all get the new token's metadata, none the token.
    tokio::time::sleep(
        asset_agent::api::routes::refresh::MIN_INTERVAL + Duration::from_millis(200),
    )
    .await;
    let calls = (0..5).map(|_| {
        let s = s.clone();
        async move { post(&s, "/v1/refresh", "").await }
    });
    let answers = futures_join_all(calls).await;
    let mut expiries = Vec::new();
    for r in &answers {
        let text = String::from_utf8_lossy(&r.body);
        assert_eq!(r.status, 200, "{text}");
        assert!(
            !text.contains("eyJ") && !text.contains("\"token\""),
            "{text}"
        );
        let b: Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(b["refreshed"], true, "{b}");
        for field in [
            "expires_at",
            "expires_in",
            "issued_at",
            "asset_id",
            "token_type",
        ] {
            assert!(!b[field].is_null(), "{field} missing: {b}");
        }
        expiries.push(b["issued_at"].clone());
    }
    assert!(expiries.windows(2).all(|w| w[0] == w[1]), "{expiries:?}");
    assert_eq!(emu.grant_count(Grant::TokenExchange), exchanges + 1);
    let now = wait_for_token(&s).await;
    assert_ne!(now["token"], first["token"]);

    // GET is the wrong method.
    let r = client::request(&s, hyper::Method::GET, "/v1/refresh", "*/*")
        .await
        .unwrap();
    assert_eq!(r.status, 405);
    assert_eq!(r.headers["allow"], "POST");
    agent.stop().await;
}

/// An explicit refresh is a person at the device: one attempt now even while the agent
/// waits out failures, then at most one per 10 s. (Salesforce asks for a minute's pause, so
/// the agent's own next retry cannot land inside the counted window.)
#[tokio::test]
async fn refresh_while_backing_off_makes_one_attempt_then_is_rate_limited() {
    let emu = emulator(Clock::system(), |_| {}).await;
    emu.faults()
        .fail_next_with(u32::MAX, 503, Some(Duration::from_secs(60)), Scope::Any)
        .await
        .unwrap();
    let dev = Device::new(&emu);
    let agent = Agent::start(&dev.config(&emu, "", ""), Clock::system()).await;
    for _ in 0..100 {
        let st: Value =
            serde_json::from_slice(&get(&dev.socket(), "/v1/status").await.body).unwrap();
        if st["consecutive_failures"].as_u64().unwrap_or(0) >= 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let before = emu.stats().total;
    let r = post(&dev.socket(), "/v1/refresh", "").await;
    let text = String::from_utf8_lossy(&r.body);
    assert_eq!(r.status, 503, "{text}");
    assert!(text.contains("refresh_failed"), "{text}");
    assert_eq!(emu.stats().total, before + 1, "one attempt, now");
    let r = post(&dev.socket(), "/v1/refresh", "").await;
    let text = String::from_utf8_lossy(&r.body);
    assert_eq!(r.status, 503, "{text}");
    assert!(text.contains("rate_limited"), "{text}");
    assert!(r.headers.contains_key("retry-after"));
    assert_eq!(emu.stats().total, before + 1, "no extra upstream call");
    agent.stop().await;
}

#[tokio::test]
async fn watch_streams_the_current_token_then_each_rotation() {
    let emu = emulator(Clock::system(), |c| {
        c.asset_token_lifetime = Duration::from_secs(4)
    })
    .await;
    let dev = Device::new(&emu);
    let agent = Agent::start(&dev.config(&emu, "", ""), Clock::system()).await;
    let held = wait_for_token(&dev.socket()).await;
    let mut lines = client::watch(&dev.socket()).await.unwrap();
    assert_eq!(lines.status, 200);
    assert_eq!(lines.headers["content-type"], "application/x-ndjson");
    let first = next_json(&mut lines).await;
    assert!(first["token"].is_string(), "{first}");
    let mut seen = vec![first["token"].clone()];
    if first["token"] != held["token"] {
        // A rotation happened between the two requests; fine.
        seen.insert(0, held["token"].clone());
    }
    // 4 s tokens rotate at ~3 s: two more rotations within 10 s each.
    for _ in 0..2 {
        let line = next_json(&mut lines).await;
        if line["token"].is_string() {
            assert!(
                !seen.contains(&line["token"]),
                "one line per rotation, no repeats"
            );
            seen.push(line["token"].clone());
        }
    }
    assert!(seen.len() >= 3, "{seen:?}");

    // The stream ends when the agent shuts down (and shutdown does not hang on it).
    let stop = tokio::spawn(agent.stop());
    let end = tokio::time::timeout(Duration::from_secs(10), async {
        while let Ok(Some(_)) = lines.next_line().await {}
    })
    .await;
    assert!(end.is_ok(), "the stream ended");
    tokio::time::timeout(Duration::from_secs(10), stop)
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn metrics_parse_as_prometheus_text() {
    let emu = emulator(Clock::system(), |_| {}).await;
    let dev = Device::new(&emu);
    let agent = Agent::start(&dev.config(&emu, "", ""), Clock::system()).await;
    wait_for_token(&dev.socket()).await;
    get(&dev.socket(), "/nope").await;
    let r = get(&dev.socket(), "/metrics").await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.headers["content-type"],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    let text = String::from_utf8(r.body.to_vec()).unwrap();
    let m = prometheus_text::parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));

    let one = |name: &str, labels: &[(&str, &str)]| {
        m.value(name, labels)
            .unwrap_or_else(|| panic!("{name}{labels:?} missing from\n{text}"))
    };
    assert_eq!(
        one(
            "asset_agent_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        1.0
    );
    assert_eq!(one("asset_agent_state", &[("state", "ready")]), 1.0);
    assert_eq!(one("asset_agent_token_valid", &[]), 1.0);
    assert!(one("asset_agent_token_expiry_timestamp_seconds", &[]) > 1.7e9);
    assert!(one("asset_agent_refreshes_total", &[("result", "ok")]) >= 1.0);
    assert!(
        one(
            "asset_agent_upstream_request_duration_seconds_count",
            &[("endpoint", "exchange")]
        ) >= 1.0
    );
    assert!(one("asset_agent_clock_skew_seconds", &[]).abs() < 5.0);
    assert!(
        one(
            "asset_agent_api_requests_total",
            &[("route", "/v1/token"), ("status", "200")]
        ) >= 1.0
    );
    assert_eq!(
        one(
            "asset_agent_api_requests_total",
            &[("route", "other"), ("status", "404")]
        ),
        1.0
    );
    assert!(one("asset_agent_api_connections", &[]) >= 1.0);
    for family in [
        "asset_agent_api_denials_total",
        "asset_agent_refresh_consecutive_failures",
        "asset_agent_api_connections_rejected_total",
        "asset_agent_api_connections_evicted_total",
    ] {
        assert!(m.types.contains_key(family), "{family} not declared");
    }
    assert_eq!(
        m.types["asset_agent_upstream_request_duration_seconds"],
        "histogram"
    );
    agent.stop().await;
}

/// The next NDJSON line, within 10 s.
async fn next_json(lines: &mut client::Lines) -> Value {
    let line = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
        .await
        .expect("a line within 10 s")
        .unwrap()
        .expect("stream open");
    serde_json::from_slice(&line).unwrap()
}

/// Waits for all futures (no `futures` dependency for one call).
async fn futures_join_all<F>(futs: impl Iterator<Item = F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futs.map(tokio::spawn).collect();
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.unwrap());
    }
    out
}
