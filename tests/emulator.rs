//! The built-in Salesforce emulator driven over real HTTP with reqwest: every grant, the
//! token exchange with Asset registration, the control routes and each fault kind.
//!
//! Tests run on tokio's paused clock with the emulator on `Clock::tokio_driven()`, so
//! device-flow intervals, delays and expiry are crossed with `tokio::time::advance` (or
//! the auto-advance of an idle runtime), never by sleeping.

// Helpers outside #[test] functions are test code too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::time::Duration;

use asset_agent::keys::{FileKey, Signer as _};
use emulator::{self, Config, Emulator, Endpoint, FaultKind, Grant, Registration, Scope};
use reqwest::StatusCode;
use reqwest::header::{DATE, HeaderMap, RETRY_AFTER};
use serde_json::Value;
use wire::clock::Clock;
use wire::jose::jws;
use wire::oauth::{
    ActorClaims, AssetFields, AssetTokenClaims, Confirmation, DeviceCodeResponse, ExchangeResponse,
    Jwks, OAuthTokenResponse,
};
use wire::secret::Secret;

const EMULATOR_KEY: &str = include_str!("data/emulator-key.pem");
const OTHER_KEY: &str = include_str!("data/other-key.pem");
const DEVICE_KEY: &str = include_str!("data/device-key.pem");
const SECRET: &str = "s3cret";

struct Harness {
    emu: Emulator,
    http: reqwest::Client,
    clock: Clock,
    device: FileKey,
}

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: String,
}

impl Answer {
    fn json<T: serde::de::DeserializeOwned>(&self) -> T {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }

    fn error(&self) -> String {
        self.json::<Value>()["error"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }
}

fn key(name: &str, pem: &str) -> FileKey {
    FileKey::from_pem(Path::new(name), pem.as_bytes()).unwrap()
}

async fn start(edit: impl FnOnce(&mut Config)) -> Harness {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let clock = Clock::tokio_driven();
    let mut config = Config {
        client_secret: Some(Secret::new(SECRET)),
        signing_key_pem: Some(Secret::new(EMULATOR_KEY)),
        impostor_key_pem: Some(Secret::new(OTHER_KEY)),
        clock: clock.clone(),
        ..Config::default()
    };
    edit(&mut config);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let emu = Emulator::start(config, listener).await.unwrap();
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    Harness {
        emu,
        http,
        clock,
        device: key("device", DEVICE_KEY),
    }
}

impl Harness {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.emu.base_url())
    }

    async fn answer(resp: reqwest::Response) -> Answer {
        Answer {
            status: resp.status(),
            headers: resp.headers().clone(),
            body: resp.text().await.unwrap(),
        }
    }

    async fn token(&self, form: &[(&str, &str)]) -> Answer {
        let resp = self
            .http
            .post(self.url(wire::oauth::TOKEN_PATH))
            .form(form)
            .send()
            .await
            .unwrap();
        Self::answer(resp).await
    }

    async fn control_get(&self, path: &str) -> Answer {
        let url = format!("{}{}{path}", self.emu.base_url(), emulator::CONTROL_PREFIX);
        Self::answer(self.http.get(url).send().await.unwrap()).await
    }

    async fn control_post(&self, path: &str, body: &Value) -> Answer {
        let url = format!("{}{}{path}", self.emu.base_url(), emulator::CONTROL_PREFIX);
        Self::answer(self.http.post(url).json(body).send().await.unwrap()).await
    }

    async fn refresh(&self, refresh_token: &str) -> Answer {
        self.token(&[
            ("grant_type", wire::oauth::GRANT_REFRESH_TOKEN),
            ("refresh_token", refresh_token),
            ("client_id", emulator::DEFAULT_CLIENT_ID),
            ("client_secret", SECRET),
        ])
        .await
    }

    async fn access_token(&self) -> Secret {
        let rt = self.emu.mint_refresh_token().unwrap();
        let a = self.refresh(rt.expose()).await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.body);
        a.json::<OAuthTokenResponse>().access_token
    }

    fn actor(&self, asset: AssetFields, jti: &str) -> String {
        self.actor_at(asset, jti, self.clock.unix())
    }

    /// An actor token issued at `now` (Unix seconds) by the device's clock.
    fn actor_at(&self, asset: AssetFields, jti: &str, now: i64) -> String {
        let claims = ActorClaims {
            did: "a531798d-0001".into(),
            name: "Asset Token: a531798d-0001".into(),
            asset,
            cnf: Confirmation {
                jwk: self.device.public_jwk().clone(),
            },
            iat: now,
            exp: now + 300,
            jti: jti.into(),
        };
        jws::sign(&self.device, &claims).unwrap()
    }

    async fn exchange(&self, access: &str, actor: &str) -> Answer {
        self.token(&[
            ("grant_type", wire::oauth::GRANT_TOKEN_EXCHANGE),
            ("subject_token_type", wire::oauth::TOKEN_TYPE_ACCESS_TOKEN),
            ("subject_token", access),
            ("actor_token_type", wire::oauth::TOKEN_TYPE_JWT),
            ("actor_token", actor),
        ])
        .await
    }

    /// The asset token's claims if it verifies against the published JWKS.
    async fn verify(&self, token: &str) -> Option<AssetTokenClaims> {
        let jwks: Jwks = self
            .http
            .get(self.url(wire::oauth::JWKS_PATH))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let entry = &jwks.keys[0];
        asset_agent::crypto::install();
        let key = jsonwebtoken::DecodingKey::from_rsa_components(
            entry.n.as_deref().unwrap(),
            entry.e.as_deref().unwrap(),
        )
        .unwrap();
        let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
        v.set_audience(&[emulator::DEFAULT_AUDIENCE]);
        v.set_issuer(&[self.emu.base_url()]);
        v.leeway = 3600;
        jsonwebtoken::decode::<AssetTokenClaims>(token, &key, &v)
            .ok()
            .map(|d| d.claims)
    }
}

fn serial(sn: &str) -> AssetFields {
    AssetFields {
        name: Some(format!("Asset: {sn}")),
        serial_number: Some(sn.into()),
        ..AssetFields::default()
    }
}

#[tokio::test(start_paused = true)]
async fn refresh_grant_rotates_and_old_token_dies() {
    let h = start(|c| c.rotate_refresh_tokens = true).await;
    let rt = h.emu.mint_refresh_token().unwrap();
    let a = h.refresh(rt.expose()).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    assert!(a.headers.contains_key(DATE));
    let r: OAuthTokenResponse = a.json();
    assert_eq!(r.instance_url.as_deref(), Some(h.emu.base_url()));
    assert_eq!(r.token_type.as_deref(), Some("Bearer"));
    assert!(r.issued_at.unwrap().parse::<i64>().is_ok());
    assert!(!a.body.contains("expires_in"));
    assert!(h.emu.issued_access_tokens().contains(&r.access_token));
    let new_rt = r
        .refresh_token
        .expect("rotation returns a new refresh token");
    assert_ne!(new_rt, rt);

    let old = h.refresh(rt.expose()).await;
    assert_eq!(
        (old.status, old.error().as_str()),
        (StatusCode::BAD_REQUEST, "invalid_grant")
    );
    assert_eq!(h.refresh(new_rt.expose()).await.status, StatusCode::OK);

    // Wrong client id, wrong secret.
    let a = h
        .token(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", "x"),
            ("client_id", "nope"),
            ("client_secret", SECRET),
        ])
        .await;
    assert_eq!(a.error(), "invalid_client");
    let stats = h.emu.stats();
    assert_eq!(stats.grant(Grant::RefreshToken), 4);
    assert_eq!(stats.success(Grant::RefreshToken), 2);
}

#[tokio::test(start_paused = true)]
async fn client_credentials_form_and_basic() {
    let h = start(|_| {}).await;
    let a = h
        .token(&[
            ("grant_type", "client_credentials"),
            ("client_id", emulator::DEFAULT_CLIENT_ID),
            ("client_secret", SECRET),
        ])
        .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    assert!(a.json::<OAuthTokenResponse>().refresh_token.is_none());

    let resp = h
        .http
        .post(h.url(wire::oauth::TOKEN_PATH))
        .basic_auth(emulator::DEFAULT_CLIENT_ID, Some(SECRET))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);

    let a = h
        .token(&[
            ("grant_type", "client_credentials"),
            ("client_id", emulator::DEFAULT_CLIENT_ID),
            ("client_secret", "wrong"),
        ])
        .await;
    assert_eq!(
        (a.status, a.error().as_str()),
        (StatusCode::BAD_REQUEST, "invalid_client")
    );
    let a = h.token(&[("grant_type", "password")]).await;
    assert_eq!(a.error(), "unsupported_grant_type");
}

#[tokio::test(start_paused = true)]
async fn jwt_bearer_needs_a_registered_key() {
    let h = start(|_| {}).await;
    let signer = key("other", OTHER_KEY);
    let now = h.clock.unix();
    let claims = serde_json::json!({
        "iss": emulator::DEFAULT_CLIENT_ID,
        "sub": "device@example.com",
        "aud": "https://login.salesforce.com",
        "exp": now + 180,
    });
    let assertion = jws::sign(&signer, &claims).unwrap();
    let form = [
        ("grant_type", wire::oauth::GRANT_JWT_BEARER),
        ("assertion", assertion.as_str()),
    ];
    let a = h.token(&form).await;
    assert_eq!(
        (a.status, a.error().as_str()),
        (StatusCode::BAD_REQUEST, "invalid_grant")
    );

    let jwk = serde_json::to_value(signer.public_jwk()).unwrap();
    assert_eq!(
        h.control_post("/jwt-bearer-keys", &jwk).await.status,
        StatusCode::OK
    );
    let a = h.token(&form).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    assert!(a.json::<OAuthTokenResponse>().refresh_token.is_none());
}

#[tokio::test(start_paused = true)]
async fn device_flow_pending_slow_down_approve() {
    let h = start(|_| {}).await;
    let a = h
        .token(&[
            ("response_type", "device_code"),
            ("client_id", emulator::DEFAULT_CLIENT_ID),
            ("scope", "api refresh_token"),
        ])
        .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    let dc: DeviceCodeResponse = a.json();
    assert_eq!(
        dc.verification_uri,
        format!("{}/setup/connect", h.emu.base_url())
    );
    assert_eq!(dc.interval, 5);
    let poll = [
        ("grant_type", wire::oauth::GRANT_DEVICE),
        ("client_id", emulator::DEFAULT_CLIENT_ID),
        ("code", dc.device_code.expose()),
    ];
    assert_eq!(h.token(&poll).await.error(), "authorization_pending");
    assert_eq!(h.token(&poll).await.error(), "slow_down");
    // slow_down added 5 s: wait the new 10 s interval.
    tokio::time::advance(Duration::from_secs(11)).await;
    assert_eq!(h.token(&poll).await.error(), "authorization_pending");

    let a = h
        .control_post(
            "/device/approve",
            &serde_json::json!({"user_code": dc.user_code}),
        )
        .await;
    assert_eq!(a.status, StatusCode::OK);
    tokio::time::advance(Duration::from_secs(11)).await;
    let a = h.token(&poll).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    let r: OAuthTokenResponse = a.json();
    let rt = r
        .refresh_token
        .expect("device flow returns a refresh token");
    assert_eq!(h.refresh(rt.expose()).await.status, StatusCode::OK);

    // A denied one, and an unknown user code.
    let dc: DeviceCodeResponse = h
        .token(&[
            ("response_type", "device_code"),
            ("client_id", emulator::DEFAULT_CLIENT_ID),
        ])
        .await
        .json();
    h.emu.deny_device(&dc.user_code).unwrap();
    let poll = [
        ("grant_type", "device"),
        ("client_id", emulator::DEFAULT_CLIENT_ID),
        ("code", dc.device_code.expose()),
    ];
    assert_eq!(h.token(&poll).await.error(), "access_denied");
    assert!(h.emu.approve_device("ZZZZ-0000").is_err());
}

#[tokio::test(start_paused = true)]
async fn exchange_issues_verifiable_token_and_links_assets() {
    let h = start(|_| {}).await;
    let at = h.access_token().await;

    let a = h
        .exchange(at.expose(), &h.actor(serial("SN-1"), "j1"))
        .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    let r: ExchangeResponse = a.json();
    assert_eq!(r.issued_token_type, wire::oauth::TOKEN_TYPE_JWT);
    assert_eq!(r.token_type, "Bearer");
    assert_eq!(r.expires_in, Some(60));
    let claims = h
        .verify(r.access_token.expose())
        .await
        .expect("verifies with /id/keys");
    let assets = h.emu.assets();
    assert_eq!(assets.len(), 1);
    assert_eq!(claims.sub.as_deref(), Some(assets[0].id.as_str()));
    assert_eq!(claims.did.as_deref(), Some("a531798d-0001"));
    assert_eq!(claims.cnf.unwrap().jwk, *h.device.public_jwk());
    assert_eq!(claims.exp - claims.iat.unwrap(), 60);

    // Same serial number: linked. By Id: linked. Unknown Id: refused.
    let a = h
        .exchange(at.expose(), &h.actor(serial("SN-1"), "j2"))
        .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    let by_id = AssetFields {
        id: Some(assets[0].id.clone()),
        ..AssetFields::default()
    };
    assert_eq!(
        h.exchange(at.expose(), &h.actor(by_id, "j3")).await.status,
        StatusCode::OK
    );
    let unknown = AssetFields {
        id: Some("02iNOPE".into()),
        ..AssetFields::default()
    };
    assert_eq!(
        h.exchange(at.expose(), &h.actor(unknown, "j4"))
            .await
            .error(),
        "invalid_grant"
    );
    // A reused jti is refused.
    assert_eq!(
        h.exchange(at.expose(), &h.actor(serial("SN-1"), "j1"))
            .await
            .error(),
        "invalid_grant"
    );

    let assets: Vec<emulator::Asset> = h.control_get("/assets").await.json();
    assert_eq!(assets.len(), 1);
    let events: Vec<emulator::AssetTokenEvent> = h.control_get("/events").await.json();
    let how: Vec<_> = events.iter().map(|e| e.registration).collect();
    assert_eq!(
        how,
        [
            Registration::Created,
            Registration::Linked,
            Registration::Linked
        ]
    );
    assert_eq!(events[0].device_id, "a531798d-0001");
    assert!(
        events[0]
            .device_key
            .starts_with("-----BEGIN PUBLIC KEY-----")
    );
    assert_eq!(events[0].connected_app_name, emulator::DEFAULT_CLIENT_ID);

    // Strictness: an extra field, a wrong token type, an unknown subject token.
    let a = h
        .token(&[
            ("grant_type", wire::oauth::GRANT_TOKEN_EXCHANGE),
            ("subject_token_type", wire::oauth::TOKEN_TYPE_JWT),
            ("subject_token", at.expose()),
            ("actor_token_type", wire::oauth::TOKEN_TYPE_JWT),
            ("actor_token", "x"),
        ])
        .await;
    assert_eq!(a.error(), "invalid_request");
    assert!(a.body.contains("subject_token_type"));
    assert_eq!(
        h.exchange("unknown", &h.actor(serial("SN-9"), "j9"))
            .await
            .error(),
        "invalid_grant"
    );

    let pem = h.control_get("/asset-signing-cert.pem").await;
    assert!(pem.body.starts_with("-----BEGIN CERTIFICATE-----"));
    assert_eq!(pem.body, h.emu.certificate_pem());
}

#[tokio::test(start_paused = true)]
async fn fault_fail_next_with_retry_after_and_counters() {
    let h = start(|_| {}).await;
    let rt = h.emu.mint_refresh_token().unwrap();
    h.emu
        .faults()
        .fail_next_with(2, 503, Some(Duration::from_secs(7)), Scope::TokenEndpoint)
        .await
        .unwrap();
    // The JWKS is outside the scope: untouched.
    assert_eq!(
        h.http
            .get(h.url(wire::oauth::JWKS_PATH))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    for _ in 0..2 {
        let a = h.refresh(rt.expose()).await;
        assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(a.headers[RETRY_AFTER], "7");
        assert_eq!(a.error(), "temporarily_unavailable");
    }
    assert_eq!(h.refresh(rt.expose()).await.status, StatusCode::OK);

    // Over HTTP: a 429 for exchanges only.
    let fault = serde_json::json!({"kind": "fail", "count": 1, "status": 429, "scope": {"grant": "token_exchange"}});
    assert_eq!(
        h.control_post("/faults", &fault).await.status,
        StatusCode::OK
    );
    assert_eq!(h.refresh(rt.expose()).await.status, StatusCode::OK);
    let at = h.access_token().await;
    assert_eq!(
        h.exchange(at.expose(), &h.actor(serial("S"), "j"))
            .await
            .status,
        StatusCode::TOO_MANY_REQUESTS
    );

    let stats = h.emu.stats();
    assert_eq!(stats.faulted, 3);
    assert_eq!(stats.fault(FaultKind::Status), 3);
    assert_eq!(h.emu.request_count(Endpoint::Token), 6);
    assert_eq!(h.emu.request_count(Endpoint::Jwks), 1);
    assert_eq!(stats.total, 7);
    let over_http: emulator::Stats = h.control_get("/stats").await.json();
    assert_eq!(over_http.faulted, 3);
    assert!(over_http.control >= 1);
}

#[tokio::test(start_paused = true)]
async fn fault_delay_uses_tokio_time() {
    let h = start(|_| {}).await;
    h.emu
        .faults()
        .delay(Duration::from_secs(30), Some(1), Scope::Any)
        .await
        .unwrap();
    let t0 = tokio::time::Instant::now();
    assert_eq!(
        h.http
            .get(h.url(wire::oauth::JWKS_PATH))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    assert!(t0.elapsed() >= Duration::from_secs(30));
    let t1 = tokio::time::Instant::now();
    h.http
        .get(h.url(wire::oauth::JWKS_PATH))
        .send()
        .await
        .unwrap();
    assert!(t1.elapsed() < Duration::from_secs(30));
    assert_eq!(h.emu.stats().fault(FaultKind::Delay), 1);
}

#[tokio::test(start_paused = true)]
async fn fault_malformed_json_wrong_type_and_bad_signature() {
    let h = start(|_| {}).await;
    let at = h.access_token().await;
    let faults = h.emu.faults();

    faults.malformed_json(1);
    let a = h.exchange(at.expose(), &h.actor(serial("S"), "j1")).await;
    assert_eq!(a.status, StatusCode::OK);
    assert!(serde_json::from_str::<Value>(&a.body).is_err());

    faults.wrong_issued_token_type(1);
    let r: ExchangeResponse = h
        .exchange(at.expose(), &h.actor(serial("S"), "j2"))
        .await
        .json();
    assert_eq!(r.issued_token_type, wire::oauth::TOKEN_TYPE_ACCESS_TOKEN);

    faults.bad_signature(1);
    let r: ExchangeResponse = h
        .exchange(at.expose(), &h.actor(serial("S"), "j3"))
        .await
        .json();
    assert!(h.verify(r.access_token.expose()).await.is_none());
    let r: ExchangeResponse = h
        .exchange(at.expose(), &h.actor(serial("S"), "j4"))
        .await
        .json();
    assert!(h.verify(r.access_token.expose()).await.is_some());

    let stats = h.emu.stats();
    assert_eq!(stats.faulted, 3);
    assert_eq!(stats.success(Grant::TokenExchange), 1);
}

#[tokio::test(start_paused = true)]
async fn fault_expire_sessions_and_revoke_refresh_tokens() {
    let h = start(|_| {}).await;
    let at = h.access_token().await;
    assert_eq!(
        h.exchange(at.expose(), &h.actor(serial("S"), "j1"))
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(
        h.control_post(
            "/faults",
            &serde_json::json!({"kind": "expire_access_tokens"})
        )
        .await
        .status,
        StatusCode::OK
    );
    let a = h.exchange(at.expose(), &h.actor(serial("S"), "j2")).await;
    assert_eq!(
        (a.status, a.error().as_str()),
        (StatusCode::BAD_REQUEST, "invalid_grant")
    );

    // Sessions also end by themselves after session_lifetime.
    let at = h.access_token().await;
    tokio::time::advance(emulator::DEFAULT_SESSION_LIFETIME).await;
    assert_eq!(
        h.exchange(at.expose(), &h.actor(serial("S"), "j3"))
            .await
            .error(),
        "invalid_grant"
    );

    let rt = h.emu.mint_refresh_token().unwrap();
    assert!(h.emu.faults().revoke_refresh_token(&rt));
    assert_eq!(h.refresh(rt.expose()).await.error(), "invalid_grant");
    let rt: Value = h.control_post("/refresh-tokens", &Value::Null).await.json();
    let rt = rt["refresh_token"].as_str().unwrap().to_owned();
    let fault = serde_json::json!({"kind": "revoke_refresh_token", "refresh_token": rt});
    h.control_post("/faults", &fault).await;
    assert_eq!(h.refresh(&rt).await.error(), "invalid_grant");
}

#[tokio::test(start_paused = true)]
async fn fault_skewed_clock_shows_in_date_and_tokens() {
    let h = start(|_| {}).await;
    h.emu.faults().skew_clock(3600);
    let a = Harness::answer(
        h.http
            .get(h.url(wire::oauth::JWKS_PATH))
            .send()
            .await
            .unwrap(),
    )
    .await;
    let date = httpdate::parse_http_date(a.headers[DATE].to_str().unwrap()).unwrap();
    let skew = wire::clock::unix_seconds(date) - h.clock.unix();
    assert!((3599..=3601).contains(&skew), "{skew}");
    // The test's clock (shared with the emulator's config) is not moved.
    assert_eq!(h.clock.offset(), 0);

    // A device whose clock agrees with the skewed emulator gets a token stamped in
    // emulator time.
    let at = h.access_token().await;
    let emu_now = wire::clock::unix_seconds(h.emu.now());
    let a = h
        .exchange(at.expose(), &h.actor_at(serial("S"), "j", emu_now))
        .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    let r: ExchangeResponse = a.json();
    let parts = jws::decode_unverified::<Value, AssetTokenClaims>(r.access_token.expose()).unwrap();
    let iat_skew = parts.claims.iat.unwrap() - h.clock.unix();
    assert!((3599..=3601).contains(&iat_skew), "{iat_skew}");
    // A device an hour behind the emulator sends an actor token that is already expired.
    let a = h.exchange(at.expose(), &h.actor(serial("S"), "j2")).await;
    assert_eq!(a.error(), "invalid_grant");
    assert!(a.body.contains("expired"), "{}", a.body);
    h.emu.faults().clear();
    assert_eq!(h.emu.faults().pending().clock_skew_secs, 0);
}

#[tokio::test(start_paused = true)]
async fn fault_stop_and_resume_accepting() {
    let h = start(|_| {}).await;
    let faults = h.emu.faults();
    faults.stop_accepting().await;
    assert!(!faults.pending().accepting);
    let err = h
        .http
        .get(h.url(wire::oauth::JWKS_PATH))
        .send()
        .await
        .unwrap_err();
    assert!(err.is_connect(), "{err}");
    faults.resume_accepting().await.unwrap();
    assert_eq!(
        h.http
            .get(h.url(wire::oauth::JWKS_PATH))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );

    // Over HTTP, with an automatic resume: the control answer still arrives.
    let fault = serde_json::json!({"kind": "stop_accepting", "resume_after_millis": 5000});
    let a = h.control_post("/faults", &fault).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    assert!(
        h.http
            .get(h.url(wire::oauth::JWKS_PATH))
            .send()
            .await
            .is_err()
    );
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(
        h.http
            .get(h.url(wire::oauth::JWKS_PATH))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    h.emu.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn bad_fault_is_refused_and_unknown_routes_404() {
    let h = start(|_| {}).await;
    let a = h
        .control_post(
            "/faults",
            &serde_json::json!({"kind": "fail", "count": 1, "status": 200}),
        )
        .await;
    assert_eq!(
        (a.status, a.error().as_str()),
        (StatusCode::BAD_REQUEST, "invalid_request")
    );
    let a = h
        .control_post("/faults", &serde_json::json!({"kind": "explode"}))
        .await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert_eq!(h.control_get("/nope").await.status, StatusCode::NOT_FOUND);
    let a = Harness::answer(h.http.get(h.url("/services/data")).send().await.unwrap()).await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    assert!(a.headers.contains_key(DATE));
    let published = h.emu.jwks();
    let kid = key("emulator", EMULATOR_KEY).public_jwk().kid.clone();
    assert_eq!(published.keys[0].kid.as_deref(), Some(kid.as_str()));
}
