//! MQTT uplink acceptance against an embedded rumqttd whose auth handler verifies
//! each CONNECT's password as an asset token (emulator JWKS, expired ones refused).
//! Real time: rumqttd runs its own threads, so tokio's paused clock cannot drive it; the
//! token lifetimes are a few seconds instead of 60.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
#[path = "common/prometheus.rs"]
mod prometheus_text;

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use asset_agent::config::{Config, LoadOptions};
use asset_agent::mqtt;
use common::mqtt::{Mode, MqttBroker, Observer, Proxy, eventually, post_json, request};
use common::{Agent, Device, emulator, get};
use serde_json::json;
use wire::clock::Clock;

const STATUS: &str = "devices/device-0001/agent/status";
const CMD: &str = "devices/device-0001/agent/cmd";
const RESPONSE: &str = "devices/device-0001/agent/response";
const HEARTBEAT: &str = "devices/device-0001/agent/heartbeat";

/// The harness config with `[mqtt]` pointing at `addr` plus `mqtt_extra`.
fn config(
    dev: &Device,
    emu: &emulator::Emulator,
    addr: std::net::SocketAddr,
    token_extra: &str,
    mqtt_extra: &str,
) -> Config {
    let path = dev.write_config(emu, "", token_extra);
    let mut text = std::fs::read_to_string(&path).unwrap();
    text.push_str(&format!(
        "\n[mqtt]\nurl = \"mqtt://{addr}\"\nkeep_alive = \"5s\"\n{mqtt_extra}\n"
    ));
    std::fs::write(&path, text).unwrap();
    Config::load(&LoadOptions::new(Some(path), HashMap::new())).unwrap()
}

fn handle(agent: &Agent) -> mqtt::Handle {
    agent.running.shared.mqtt.clone().expect("mqtt configured")
}

fn connected(h: &mqtt::Handle) -> bool {
    h.stats().state() == mqtt::State::Connected
}

/// By default the session stays up across token rotations: the fresh token goes into the
/// options for the next reconnect, and the broker sees one login (and the MQTT session
/// keeps an on-demand refresher refreshing).
#[tokio::test]
async fn stays_connected_across_rotations_by_default() {
    let emu = common::emulator(Clock::system(), |c| {
        c.asset_token_lifetime = Duration::from_secs(4);
    })
    .await;
    let broker = MqttBroker::start(emu.jwks());
    let dev = Device::new(&emu);
    let cfg = config(
        &dev,
        &emu,
        broker.addr,
        "refresh_at = \"50%\"",
        "heartbeat = \"1s\"",
    );
    let agent = Agent::start(&cfg, Clock::system()).await;
    let h = handle(&agent);
    let tokens = agent.running.tokens.clone();
    let rotated = eventually(Duration::from_secs(30), || {
        tokens.snapshot().refreshes_ok >= 4
    })
    .await;
    assert!(rotated, "{:?}", tokens.snapshot());
    assert_eq!(broker.accepted().len(), 1, "{:?}", broker.accepted());
    let s = h.status();
    assert_eq!(
        (s.rotations, s.reconnects, s.disconnects),
        (0, 0, 0),
        "{s:?}"
    );
    assert!(tokens.demand().active && tokens.demand().holders == 1);
    agent.stop().await;
}

#[tokio::test]
async fn connects_with_the_token_and_rotates_before_every_expiry() {
    let emu = emulator(Clock::system(), |c| {
        c.asset_token_lifetime = Duration::from_secs(4);
    })
    .await;
    let broker = MqttBroker::start(emu.jwks());
    let mut observer = Observer::start(broker.addr, STATUS).await;
    let dev = Device::new(&emu);
    let cfg = config(
        &dev,
        &emu,
        broker.addr,
        "refresh_at = \"50%\"",
        "reconnect_on_rotation = true\nreconnect_margin = \"1500ms\"\nheartbeat = \"1s\"",
    );
    let agent = Agent::start(&cfg, Clock::system()).await;
    let h = handle(&agent);

    // The first login and five rotations.
    let six = eventually(Duration::from_secs(30), || broker.accepted().len() >= 6).await;
    let logins = broker.accepted();
    assert!(six, "only {} logins: {logins:?}", logins.len());
    for (i, l) in logins.iter().enumerate() {
        assert_eq!(l.client_id, "device-0001");
        assert_eq!(l.username, "device-0001");
        let claims = common::verify_with_jwks(&emu, &l.jwt);
        assert_eq!(claims["exp"].as_i64(), Some(l.exp));
        if i > 0 {
            let prev = &logins[i - 1];
            assert_ne!(l.jwt, prev.jwt, "login {i} reused the previous token");
            assert!(l.exp > prev.exp, "login {i} used an older token");
            // The session moved to the new token before the old one expired, so a broker
            // enforcing `exp` never had to cut it.
            eprintln!(
                "login {i}: {:.2}s before the previous token's exp, {:.2}s after the previous login",
                prev.exp as f64 - l.at,
                l.at - prev.at
            );
            assert!(
                l.at < prev.exp as f64,
                "login {i} at {:.2} came after the previous token's exp {}",
                l.at,
                prev.exp
            );
        }
    }
    let s = h.stats();
    assert_eq!(s.disconnects.load(Ordering::Relaxed), 0, "{:?}", h.status());
    assert_eq!(s.auth_refusals.load(Ordering::Relaxed), 0);
    assert!(s.rotations.load(Ordering::Relaxed) >= 5);
    assert!(broker.refused().is_empty(), "{:?}", broker.refused());

    // Presence stayed "online" throughout: the Last Will never fired.
    let seen: Vec<String> = observer
        .drain()
        .iter()
        .map(|m| String::from_utf8_lossy(&m.payload).into_owned())
        .collect();
    assert!(seen.iter().all(|p| p == "online"), "{seen:?}");
    assert!(!seen.is_empty());

    // Status shows the uplink (asked between two rotations).
    let mut status = serde_json::Value::Null;
    for _ in 0..40 {
        status = serde_json::from_slice(&get(&dev.socket(), "/v1/status").await.body).unwrap();
        if status["mqtt"]["state"] == "connected" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(status["mqtt"]["state"], "connected", "{status}");
    assert_eq!(status["mqtt"]["client_id"], "device-0001");
    assert!(status["mqtt"]["rotations"].as_u64().unwrap() >= 5);
    assert!(status["mqtt"]["session_token_expires_at"].is_string());

    // A clean stop says "offline" itself (the Last Will is discarded by DISCONNECT).
    agent.stop().await;
    let mut last = observer
        .next_on(STATUS, Duration::from_secs(5))
        .await
        .unwrap();
    while &last.payload[..] == b"online" {
        // The "online" of the last rotation may still have been on its way.
        last = observer
            .next_on(STATUS, Duration::from_secs(5))
            .await
            .unwrap();
    }
    assert_eq!(&last.payload[..], b"offline");
}

#[tokio::test]
async fn refused_login_forces_one_refresh_then_backs_off() {
    let emu = emulator(Clock::system(), |_| {}).await;
    let broker = MqttBroker::start(emu.jwks());
    broker.refuse_all.store(true, Ordering::SeqCst);
    let dev = Device::new(&emu);
    let cfg = config(&dev, &emu, broker.addr, "", "backoff_max = \"2s\"");
    let agent = Agent::start(&cfg, Clock::system()).await;
    let h = handle(&agent);

    // The broker counts a refusal when it sends the CONNACK, the agent when it reads it:
    // wait for both.
    assert!(
        eventually(Duration::from_secs(15), || {
            broker.refused().len() >= 4 && h.stats().auth_refusals.load(Ordering::Relaxed) >= 4
        })
        .await
    );
    let refused = broker.refused();
    // Backoff: never faster than the 1 s floor, never slower than the 2 s cap (+ slack).
    for w in refused.windows(2) {
        let gap = w[1] - w[0];
        assert!((0.9..3.0).contains(&gap), "gap {gap:.2}s in {refused:?}");
    }
    let s = h.stats();
    assert_eq!(s.forced_refreshes.load(Ordering::Relaxed), 1);
    assert!(s.auth_refusals.load(Ordering::Relaxed) >= 4);
    // The initial token and exactly one forced refresh.
    assert_eq!(agent.running.tokens.snapshot().refreshes_ok, 2);
    assert_eq!(h.status().state, mqtt::State::Backoff);
    // Local publishes are refused while there is no session.
    let (code, body) = post_json(
        &dev.socket(),
        "/v1/mqtt/publish",
        &json!({"topic": "devices/device-0001/t", "payload": "x"}),
    )
    .await;
    assert_eq!(
        (code, body["error"].as_str()),
        (503, Some("mqtt_disconnected"))
    );

    // Once the broker accepts again, the agent gets in within the backoff cap.
    broker.refuse_all.store(false, Ordering::SeqCst);
    assert!(eventually(Duration::from_secs(5), || connected(&h)).await);
    assert_eq!(broker.accepted().len(), 1);
    agent.stop().await;
}

#[tokio::test]
async fn local_publish_commands_and_heartbeat() {
    let emu = emulator(Clock::system(), |_| {}).await;
    let broker = MqttBroker::start(emu.jwks());
    let mut observer = Observer::start(broker.addr, "devices/device-0001/#").await;
    let dev = Device::new(&emu);
    let cfg = config(&dev, &emu, broker.addr, "", "heartbeat = \"1s\"");
    let agent = Agent::start(&cfg, Clock::system()).await;
    let h = handle(&agent);
    assert!(eventually(Duration::from_secs(10), || connected(&h)).await);
    let sock = dev.socket();

    // Publish through the socket: a string, a JSON value, base64.
    let (code, body) = post_json(
        &sock,
        "/v1/mqtt/publish",
        &json!({"topic": "devices/device-0001/telemetry", "payload": "21.5", "qos": 1}),
    )
    .await;
    assert_eq!(code, 202, "{body}");
    let m = observer
        .next_on("devices/device-0001/telemetry", Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(&m.payload[..], b"21.5");
    post_json(
        &sock,
        "/v1/mqtt/publish",
        &json!({"topic": "devices/device-0001/j", "payload": {"t": 1}, "qos": 0, "retain": true}),
    )
    .await;
    let m = observer
        .next_on("devices/device-0001/j", Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(&m.payload[..], br#"{"t":1}"#);
    post_json(
        &sock,
        "/v1/mqtt/publish",
        &json!({"topic": "devices/device-0001/b", "payload_base64": "AAEC"}),
    )
    .await;
    let m = observer
        .next_on("devices/device-0001/b", Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(&m.payload[..], &[0u8, 1, 2]);

    // What is refused, and how.
    let rows = [
        (
            json!({"topic": "devices/other/t", "payload": "x"}),
            403,
            "bad_topic",
        ),
        (
            json!({"topic": STATUS, "payload": "offline"}),
            403,
            "bad_topic",
        ),
        (
            json!({"topic": "devices/device-0001/#", "payload": "x"}),
            400,
            "bad_topic",
        ),
        (
            json!({"topic": "devices/device-0001/t", "qos": 2}),
            400,
            "bad_request",
        ),
        (json!({"payload": "x"}), 400, "bad_request"),
        (
            json!({"topic": "devices/device-0001/t", "payload_base64": "!!"}),
            400,
            "bad_request",
        ),
    ];
    for (body, want, code_name) in rows {
        let (code, reply) = post_json(&sock, "/v1/mqtt/publish", &body).await;
        assert_eq!(
            (code, reply["error"].as_str()),
            (want, Some(code_name)),
            "{body}"
        );
    }
    let (code, _) = request(&sock, hyper::Method::GET, "/v1/mqtt/publish", String::new()).await;
    assert_eq!(code, 405);
    let big = "x".repeat(mqtt::MAX_PAYLOAD + 1);
    let (code, _) = post_json(
        &sock,
        "/v1/mqtt/publish",
        &json!({"topic": "devices/device-0001/t", "payload": big}),
    )
    .await;
    assert_eq!(code, 413);

    // Heartbeat: agent state and token expiry, never the token.
    let hb = observer
        .next_on(HEARTBEAT, Duration::from_secs(5))
        .await
        .unwrap();
    let hb: serde_json::Value = serde_json::from_slice(&hb.payload).unwrap();
    assert_eq!(hb["state"], "ready", "{hb}");
    assert_eq!(hb["device_id"], "device-0001");
    assert!(hb["token_expires_at"].as_str().unwrap().ends_with('Z'));
    assert!(!hb.to_string().contains("eyJ"));

    // Commands: refresh answers with the new token's expiry; anything else gets an error.
    let before = agent.running.tokens.snapshot().refreshes_ok;
    observer
        .client
        .publish(
            CMD,
            rumqttc::QoS::AtLeastOnce,
            false,
            r#"{"command":"refresh","id":"r1"}"#,
        )
        .await
        .unwrap();
    let a = observer
        .next_on(RESPONSE, Duration::from_secs(10))
        .await
        .unwrap();
    let a: serde_json::Value = serde_json::from_slice(&a.payload).unwrap();
    assert_eq!(
        (a["id"].as_str(), a["ok"].as_bool()),
        (Some("r1"), Some(true)),
        "{a}"
    );
    assert!(a["expires_in"].as_u64().unwrap() > 0);
    assert_eq!(agent.running.tokens.snapshot().refreshes_ok, before + 1);
    for (cmd, err) in [
        ("reboot", "unknown_command"),
        ("\u{1}garbage words", "bad_command"),
        ("{\"id\":3}", "bad_command"),
    ] {
        observer
            .client
            .publish(CMD, rumqttc::QoS::AtLeastOnce, false, cmd)
            .await
            .unwrap();
        let a = observer
            .next_on(RESPONSE, Duration::from_secs(5))
            .await
            .unwrap();
        let a: serde_json::Value = serde_json::from_slice(&a.payload).unwrap();
        assert_eq!(
            (a["ok"].as_bool(), a["error"].as_str()),
            (Some(false), Some(err)),
            "{cmd}: {a}"
        );
    }
    assert!(connected(&h), "commands never take the session down");
    assert_eq!(h.stats().commands.load(Ordering::Relaxed), 4);

    // The counters are in /metrics, in valid exposition format.
    let text = String::from_utf8(get(&sock, "/metrics").await.body.to_vec()).unwrap();
    let m = prometheus_text::parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert_eq!(m.value("asset_agent_mqtt_connects_total", &[]), Some(1.0));
    assert_eq!(m.value("asset_agent_mqtt_commands_total", &[]), Some(4.0));
    assert_eq!(
        m.value("asset_agent_mqtt_local_accepted_total", &[]),
        Some(3.0)
    );
    assert_eq!(m.value("asset_agent_mqtt_connected", &[]), Some(1.0));
    assert_eq!(
        m.value("asset_agent_mqtt_state", &[("state", "connected")]),
        Some(1.0)
    );
    agent.stop().await;
}

#[tokio::test]
async fn queue_full_is_503_and_qos1_survives_a_lost_session() {
    let emu = emulator(Clock::system(), |_| {}).await;
    let broker = MqttBroker::start(emu.jwks());
    let proxy = Proxy::start(broker.addr).await;
    let mut observer = Observer::start(broker.addr, "devices/device-0001/q/#").await;
    let dev = Device::new(&emu);
    let cfg = config(
        &dev,
        &emu,
        proxy.addr,
        "",
        "queue = 4\nbackoff_max = \"2s\"",
    );
    let agent = Agent::start(&cfg, Clock::system()).await;
    let h = handle(&agent);
    assert!(eventually(Duration::from_secs(10), || connected(&h)).await);
    let sock = dev.socket();

    // A stalled network: nothing is acknowledged, so the in-flight window fills, then the
    // queue, then the agent answers 503.
    proxy.set(Mode::Stall);
    let mut accepted = Vec::new();
    let mut full = None;
    for i in 0..(usize::from(mqtt::MAX_INFLIGHT) + 20) {
        let (code, body) = post_json(
            &sock,
            "/v1/mqtt/publish",
            &json!({"topic": "devices/device-0001/q/data", "payload": i.to_string()}),
        )
        .await;
        match code {
            202 => accepted.push(i),
            503 => {
                full = Some(body);
                break;
            }
            other => panic!("unexpected {other}: {body}"),
        }
        // Let the session move it on before the next one.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let full = full.expect("the queue filled up");
    assert_eq!(full["error"], "queue_full", "{full}");
    assert!(accepted.len() >= 4, "{accepted:?}");
    // The agent stays healthy meanwhile.
    assert_eq!(get(&sock, "/v1/health/live").await.status, 200);
    assert_eq!(get(&sock, "/v1/token").await.status, 200);
    assert!(h.stats().local_rejected_full.load(Ordering::Relaxed) >= 1);

    // The network breaks: the session is lost with everything unacknowledged.
    proxy.set(Mode::Down);
    assert!(eventually(Duration::from_secs(5), || !connected(&h)).await);
    let (code, body) = post_json(
        &sock,
        "/v1/mqtt/publish",
        &json!({"topic": "devices/device-0001/q/late", "payload": "x"}),
    )
    .await;
    assert_eq!(
        (code, body["error"].as_str()),
        (503, Some("mqtt_disconnected"))
    );

    // It comes back: every accepted QoS 1 message arrives (at least once).
    proxy.set(Mode::Pass);
    // One topic: brokers keep order per topic, not across topics (rumqttd does not).
    let want: std::collections::BTreeSet<usize> = accepted.iter().copied().collect();
    let mut got = std::collections::BTreeSet::new();
    let mut first_seen = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while got != want && tokio::time::Instant::now() < deadline {
        if let Ok(Some(m)) =
            tokio::time::timeout(Duration::from_millis(200), observer.rx.recv()).await
            && m.topic == "devices/device-0001/q/data"
        {
            let n: usize = String::from_utf8_lossy(&m.payload).parse().unwrap();
            if got.insert(n) {
                first_seen.push(n);
            }
        }
    }
    assert_eq!(
        got,
        want,
        "lost: {:?}",
        want.difference(&got).collect::<Vec<_>>()
    );
    // Sent again in the order they were accepted (duplicates aside).
    assert!(first_seen.is_sorted(), "{first_seen:?}");
    eprintln!(
        "accepted {} before the queue was full; {} carried over the lost session",
        accepted.len(),
        h.stats().requeued.load(Ordering::Relaxed)
    );
    let s = h.stats();
    assert!(s.disconnects.load(Ordering::Relaxed) >= 1);
    assert!(s.requeued.load(Ordering::Relaxed) >= 1);
    assert!(connected(&h));
    agent.stop().await;
}

#[tokio::test]
async fn resubscribes_when_the_broker_lost_the_session() {
    let emu = emulator(Clock::system(), |_| {}).await;
    let first = MqttBroker::start(emu.jwks());
    let proxy = Proxy::start(first.addr).await;
    let dev = Device::new(&emu);
    let cfg = config(&dev, &emu, proxy.addr, "", "backoff_max = \"1s\"");
    let agent = Agent::start(&cfg, Clock::system()).await;
    let h = handle(&agent);
    assert!(eventually(Duration::from_secs(10), || connected(&h)).await);

    // The broker is replaced by one that knows nothing of the agent's session.
    let second = MqttBroker::start(emu.jwks());
    let mut observer = Observer::start(second.addr, RESPONSE).await;
    proxy.set(Mode::Down);
    assert!(eventually(Duration::from_secs(5), || !connected(&h)).await);
    proxy.set_upstream(second.addr);
    proxy.set(Mode::Pass);
    assert!(eventually(Duration::from_secs(10), || second.accepted().len() == 1).await);
    assert!(eventually(Duration::from_secs(5), || connected(&h)).await);

    // Commands still arrive: the agent subscribed again on the new broker.
    let mut answered = false;
    for _ in 0..20 {
        observer
            .client
            .publish(CMD, rumqttc::QoS::AtLeastOnce, false, "ping")
            .await
            .unwrap();
        if let Some(a) = observer.next_on(RESPONSE, Duration::from_millis(500)).await {
            let a: serde_json::Value = serde_json::from_slice(&a.payload).unwrap();
            assert_eq!(a["error"], "unknown_command");
            answered = true;
            break;
        }
    }
    assert!(answered, "no answer from the new broker: not resubscribed");
    agent.stop().await;
}
