//! Property-based fuzzing of everything the agent parses from a client: the `/v1/sign`
//! body, the `min_ttl` query, the activation variables, and whole HTTP requests (raw bytes
//! and near-valid requests) sent to a live agent over its socket.
//!
//! The properties: nothing panics; the agent's claims can never be overridden; every
//! answer is a well-formed HTTP/1.1 response with an expected status (no 500); and the
//! agent still serves its token afterwards.

// Helpers outside #[test] functions: unwrap and panic are the point here.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use asset_agent::api::activation::{self, Env};
use asset_agent::api::routes::sign::{self, MAX_LIFETIME, RESERVED};
use asset_agent::api::routes::token::parse_min_ttl;
use asset_agent::client;
use common::{Agent, Device, api, emulator, wait_for_token};
use proptest::prelude::*;
use serde_json::{Map, Value, json};
use wire::clock::Clock;

/// Statuses a request may get. A 500 (or any other 5xx than 503) is a bug.
const EXPECTED: [u16; 8] = [200, 400, 403, 404, 405, 413, 431, 503];

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        ".{0,20}".prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::from),
            prop::collection::btree_map(claim_name(), inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Claim names, often reserved ones.
fn claim_name() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(RESERVED.to_vec()).prop_map(str::to_owned),
        "[a-z_]{1,10}",
        ".{0,6}",
    ]
}

/// A `/v1/sign` body: mostly the documented shape, with arbitrary values and extras.
fn sign_body() -> impl Strategy<Value = Value> {
    (
        prop_oneof![
            ".{0,30}".prop_map(Value::from),
            prop::collection::vec(".{0,10}", 0..4).prop_map(Value::from),
            json_value(),
        ],
        prop::option::of(prop::collection::btree_map(
            claim_name(),
            json_value(),
            0..8,
        )),
        prop::option::of(prop_oneof![(0u64..400).prop_map(Value::from), json_value()]),
        prop::option::of((claim_name(), json_value())),
    )
        .prop_map(|(aud, claims, expires_in, extra)| {
            let mut body = Map::new();
            body.insert("aud".into(), aud);
            if let Some(c) = claims {
                body.insert("claims".into(), Value::Object(c.into_iter().collect()));
            }
            if let Some(e) = expires_in {
                body.insert("expires_in".into(), e);
            }
            if let Some((k, v)) = extra {
                body.insert(k, v);
            }
            Value::Object(body)
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn sign_parse_never_panics_on_bytes(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = sign::parse(&bytes);
    }

    #[test]
    fn agent_claims_can_never_be_overridden(body in sign_body()) {
        let bytes = serde_json::to_vec(&body).unwrap();
        let supplied_reserved = body
            .get("claims")
            .and_then(Value::as_object)
            .is_some_and(|c| c.keys().any(|k| RESERVED.contains(&k.as_str())));
        if let Ok(req) = sign::parse(&bytes) {
            prop_assert!(!supplied_reserved, "accepted a reserved claim: {body}");
            prop_assert!(!req.aud.is_empty());
            prop_assert!((1..=MAX_LIFETIME).contains(&req.lifetime));
            let c = sign::claims(&req, "dev", "thumb", 1000, "jti-1");
            prop_assert_eq!(&c["iss"], &json!("dev"));
            prop_assert_eq!(&c["sub"], &json!("dev"));
            prop_assert_eq!(&c["iat"], &json!(1000));
            prop_assert_eq!(&c["nbf"], &json!(1000));
            prop_assert_eq!(&c["exp"], &json!(1000 + req.lifetime as i64));
            prop_assert_eq!(&c["jti"], &json!("jti-1"));
            prop_assert_eq!(&c["cnf"], &json!({"jkt": "thumb"}));
        }
        if supplied_reserved {
            prop_assert!(sign::parse(&bytes).is_err());
        }
    }

    #[test]
    fn min_ttl_parse_never_panics(query in ".{0,64}") {
        if let Ok(d) = parse_min_ttl(Some(&query)) {
            prop_assert!(d.as_secs() <= u64::from(u32::MAX));
        }
    }

    #[test]
    fn activation_env_never_panics(pid in ".{0,8}", fds in ".{0,8}", names in prop::option::of(".{0,32}")) {
        let env = Env { listen_pid: Some(pid), listen_fds: Some(fds), listen_fdnames: names };
        let _ = activation::choose(&env, 42);
    }
}

/// A request line, headers and body: near-valid, with arbitrary parts.
fn http_request() -> impl Strategy<Value = Vec<u8>> {
    let method = prop_oneof![
        prop::sample::select(vec!["GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS"]),
        Just("G\u{e9}T"),
        Just(""),
    ];
    let path = prop_oneof![
        prop::sample::select(vec![
            "/v1/token",
            "/v1/status",
            "/v1/health/live",
            "/v1/health/ready",
            "/metrics",
            "/v1/sign",
            "/v1/refresh",
            "/",
            "*",
        ])
        .prop_map(str::to_owned),
        "/[a-zA-Z0-9/%._~-]{0,40}",
        "[ -~]{0,40}",
    ];
    let query = prop::option::of(prop_oneof![
        "min_ttl=[0-9]{0,12}",
        "min_ttl=[ -~]{0,12}",
        "[a-z=&%0-9]{0,30}",
    ]);
    let headers = prop::collection::vec(("[A-Za-z-]{1,16}", "[ -~]{0,40}"), 0..6);
    let body = prop_oneof![
        sign_body().prop_map(|v| serde_json::to_vec(&v).unwrap()),
        prop::collection::vec(any::<u8>(), 0..256),
    ];
    let version = prop::sample::select(vec!["HTTP/1.1", "HTTP/1.0", "HTTP/2.0", "HTTP/1.1x"]);
    (method, path, query, version, headers, body, any::<bool>()).prop_map(
        |(m, p, q, v, hs, body, with_length)| {
            let target = match q {
                Some(q) => format!("{p}?{q}"),
                None => p,
            };
            let mut head = format!("{m} {target} {v}\r\nHost: localhost\r\nConnection: close\r\n");
            for (k, val) in hs {
                head.push_str(&format!("{k}: {val}\r\n"));
            }
            if with_length {
                head.push_str(&format!("Content-Length: {}\r\n", body.len()));
            }
            head.push_str("\r\n");
            let mut bytes = head.into_bytes();
            bytes.extend_from_slice(&body);
            bytes
        },
    )
}

/// Checks one answer: empty (the server closed without answering an incomplete request),
/// or an HTTP/1.x status line with an expected status.
fn check_answer(request: &[u8], answer: &str) -> Result<(), TestCaseError> {
    if answer.is_empty() {
        return Ok(());
    }
    let status: u16 = answer
        .strip_prefix("HTTP/1.1 ")
        .or_else(|| answer.strip_prefix("HTTP/1.0 "))
        .and_then(|rest| rest.get(..3))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| TestCaseError::fail(format!("not an HTTP response: {answer:?}")))?;
    prop_assert!(
        EXPECTED.contains(&status),
        "status {status} for {:?}: {answer}",
        String::from_utf8_lossy(request)
    );
    Ok(())
}

/// Whole requests against a live agent: random bytes and near-valid requests. The agent
/// must answer every one sensibly and keep serving its token.
#[test]
fn requests_to_a_live_agent() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (emu, dev, agent) = rt.block_on(async {
        let emu = emulator(Clock::system(), |_| {}).await;
        let dev = Device::new(&emu);
        // min_ttl requests answer at once instead of waiting for a refresh.
        let agent = Agent::start(
            &dev.config(&emu, "", "min_ttl_wait = \"0s\""),
            Clock::system(),
        )
        .await;
        wait_for_token(&dev.socket()).await;
        (emu, dev, agent)
    });
    let socket = dev.socket();
    let wait = Duration::from_secs(5);
    let config = ProptestConfig {
        cases: 256,
        ..ProptestConfig::default()
    };
    let answered = std::cell::Cell::new(0u32);
    proptest!(config, |(request in http_request())| {
        let answer = rt.block_on(api::raw(&socket, &request, wait));
        check_answer(&request, &answer)?;
        answered.set(answered.get() + u32::from(!answer.is_empty()));
    });
    // Most near-valid requests are complete and must have been answered.
    assert!(
        answered.get() > config.cases / 2,
        "only {} answered",
        answered.get()
    );
    proptest!(config, |(bytes in prop::collection::vec(any::<u8>(), 0..2048))| {
        let answer = rt.block_on(api::raw(&socket, &bytes, wait));
        check_answer(&bytes, &answer)?;
    });
    rt.block_on(async {
        let r = client::get_json(&socket, "/v1/token").await.unwrap();
        assert_eq!(r.status, 200, "still serving after the fuzzing");
        agent.stop().await;
    });
    drop(emu);
}
