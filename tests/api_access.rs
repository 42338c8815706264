//! Access control by SO_PEERCRED, with real clients under other uids (`setpriv` + `curl`,
//! and the `asset-agent` binary itself): deny by default, allowed by primary or
//! supplementary gid, and per-route roles.

// Helpers outside #[test] functions: unwrap and panic are the point here.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use asset_agent::api::router::Route;
use common::api::{
    NEEDS_ROOT, NOBODY, as_user, config_with_api, curl_as, has_jwt, open_to_everyone, public_binary,
};
use common::{Agent, Device, emulator, wait_for_token};
use wire::clock::Clock;

const SIGN_BODY: &str = r#"{"aud":"https://backend.example.com"}"#;

/// Every route, unknown paths and wrong methods: 403 and nothing else for a stranger.
#[tokio::test]
async fn a_stranger_gets_403_on_every_route_and_no_token_bytes() {
    testkit::require!(testkit::ROOT, testkit::is_root(), "{NEEDS_ROOT}");
    let emu = emulator(Clock::system(), |_| {}).await;
    let dev = Device::new(&emu);
    let agent = Agent::start(&config_with_api(&dev, &emu, ""), Clock::system()).await;
    wait_for_token(&dev.socket()).await;
    open_to_everyone(&dev);
    let socket = dev.socket();

    let mut requests: Vec<(String, String, Option<&str>)> = Route::ALL
        .iter()
        .map(|r| {
            let body = (r.method() == hyper::Method::POST).then_some(SIGN_BODY);
            (r.method().to_string(), r.path().to_owned(), body)
        })
        .collect();
    requests.push(("GET".into(), "/v1/token?min_ttl=5".into(), None));
    requests.push(("GET".into(), "/nope".into(), None));
    // Child routes too, on an agent that is not a gateway (it has no children).
    requests.push(("GET".into(), "/v1/assets".into(), None));
    requests.push(("GET".into(), "/v1/assets/pump-7/token".into(), None));
    requests.push((
        "POST".into(),
        "/v1/assets/pump-7/sign".into(),
        Some(SIGN_BODY),
    ));
    requests.push(("DELETE".into(), "/v1/token".into(), None));
    requests.push(("GET".into(), "/v1/refresh".into(), None));
    let n = requests.len();
    let socket2 = socket.clone();
    let results = tokio::task::spawn_blocking(move || {
        requests
            .into_iter()
            .map(|(m, p, b)| {
                let r = curl_as(NOBODY, NOBODY, &[], &socket2, &m, &p, b);
                (format!("{m} {p}"), r)
            })
            .collect::<Vec<_>>()
    })
    .await
    .unwrap();
    for (what, r) in &results {
        assert_eq!(r.status, 403, "{what}: {r:?}");
        assert!(!has_jwt(&r.body), "{what} leaked token bytes: {}", r.body);
        assert!(r.body.contains("\"forbidden\""), "{what}: {}", r.body);
        assert!(r.body.contains("uid 65534"), "{what}: {}", r.body);
    }
    // Counted as denials of the token role (the least any route needs).
    let metrics = common::get(&socket, "/metrics").await;
    let text = String::from_utf8_lossy(&metrics.body);
    let line = text
        .lines()
        .find(|l| l.starts_with("asset_agent_api_denials_total{role=\"token\"}"))
        .unwrap_or_else(|| panic!("no denial counter in {text}"));
    let count: u64 = line.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(count >= n as u64, "{line}");
    agent.stop().await;
}

/// Allowed by primary gid and by supplementary gid; token readers cannot sign or refresh;
/// signers can sign but not refresh; admins can refresh.
#[tokio::test]
async fn roles_by_gid_and_uid() {
    testkit::require!(testkit::ROOT, testkit::is_root(), "{NEEDS_ROOT}");
    const READERS: u32 = 4242;
    const SIGNERS: u32 = 4343;
    const ADMIN: u32 = 4444;
    let emu = emulator(Clock::system(), |_| {}).await;
    let dev = Device::new(&emu);
    let config = config_with_api(
        &dev,
        &emu,
        &format!("allow_gids = [{READERS}]\nsigner_gids = [{SIGNERS}]\nadmin_uids = [{ADMIN}]"),
    );
    let agent = Agent::start(&config, Clock::system()).await;
    wait_for_token(&dev.socket()).await;
    open_to_everyone(&dev);
    let s = dev.socket();

    let results = tokio::task::spawn_blocking(move || {
        let token = "/v1/token";
        vec![
            // (who, request, expected)
            (
                "reader by primary gid",
                curl_as(NOBODY, READERS, &[], &s, "GET", token, None),
                200,
            ),
            (
                "reader by supplementary gid",
                curl_as(NOBODY, NOBODY, &[READERS], &s, "GET", token, None),
                200,
            ),
            (
                "reader: status",
                curl_as(NOBODY, READERS, &[], &s, "GET", "/v1/status", None),
                200,
            ),
            (
                "reader: metrics",
                curl_as(NOBODY, READERS, &[], &s, "GET", "/metrics", None),
                200,
            ),
            (
                "reader: sign",
                curl_as(
                    NOBODY,
                    READERS,
                    &[],
                    &s,
                    "POST",
                    "/v1/sign",
                    Some(SIGN_BODY),
                ),
                403,
            ),
            (
                "reader: refresh",
                curl_as(NOBODY, READERS, &[], &s, "POST", "/v1/refresh", None),
                403,
            ),
            (
                "signer: sign",
                curl_as(
                    NOBODY,
                    NOBODY,
                    &[SIGNERS],
                    &s,
                    "POST",
                    "/v1/sign",
                    Some(SIGN_BODY),
                ),
                200,
            ),
            (
                "signer: token",
                curl_as(NOBODY, SIGNERS, &[], &s, "GET", token, None),
                200,
            ),
            (
                "signer: refresh",
                curl_as(NOBODY, SIGNERS, &[], &s, "POST", "/v1/refresh", None),
                403,
            ),
            (
                "admin uid: refresh",
                curl_as(ADMIN, NOBODY, &[], &s, "POST", "/v1/refresh", None),
                200,
            ),
            (
                "admin uid: sign",
                curl_as(ADMIN, NOBODY, &[], &s, "POST", "/v1/sign", Some(SIGN_BODY)),
                200,
            ),
            (
                "stranger",
                curl_as(NOBODY, NOBODY, &[], &s, "GET", token, None),
                403,
            ),
        ]
    })
    .await
    .unwrap();
    for (who, r, want) in results {
        assert_eq!(r.status, want, "{who}: {r:?}");
        if want == 403 {
            assert!(!has_jwt(&r.body), "{who}: {}", r.body);
        }
        if who == "reader: refresh" {
            assert!(
                r.body.contains("needs the admin role") && r.body.contains("has token"),
                "{}",
                r.body
            );
        }
    }
    agent.stop().await;
}

/// The CLI run by a stranger says what is wrong and what to do, naming the socket and the
/// group to join; both when the agent refuses (403) and when the file system does.
#[tokio::test]
async fn cli_explains_denials() {
    testkit::require!(testkit::ROOT, testkit::is_root(), "{NEEDS_ROOT}");
    let emu = emulator(Clock::system(), |_| {}).await;
    let dev = Device::new(&emu);
    let agent = Agent::start(&config_with_api(&dev, &emu, ""), Clock::system()).await;
    wait_for_token(&dev.socket()).await;
    let bin = public_binary(dev.dir.path());
    let socket = dev.socket();
    let run = |args: &'static [&'static str]| {
        let (bin, socket) = (bin.clone(), socket.clone());
        tokio::task::spawn_blocking(move || {
            let out = as_user(NOBODY, NOBODY, &[], bin.to_str().unwrap())
                .args(args)
                .arg("--socket")
                .arg(&socket)
                .env_remove("ASSET_AGENT_CONFIG")
                .output()
                .unwrap();
            (
                out.status.code(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            )
        })
    };

    // The socket directory is 0750 root:root: the kernel refuses the connection.
    let (code, err) = run(&["token"]).await.unwrap();
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("permission denied on"), "{err}");
    assert!(err.contains(&socket.display().to_string()), "{err}");
    assert!(err.contains("join the group 'root'"), "{err}");

    // Reachable, but the agent refuses by SO_PEERCRED.
    open_to_everyone(&dev);
    for cmd in [&["token"], &["status"], &["refresh"], &["watch"]] {
        let (code, err) = run(cmd).await.unwrap();
        let cmd = cmd[0];
        assert_eq!(code, Some(1), "{cmd}: {err}");
        assert!(
            err.contains("access denied by the agent at"),
            "{cmd}: {err}"
        );
        assert!(err.contains(&socket.display().to_string()), "{cmd}: {err}");
        assert!(err.contains("uid 65534"), "{cmd}: {err}");
        assert!(err.contains("join the group"), "{cmd}: {err}");
        assert!(!has_jwt(&err));
    }
    agent.stop().await;
}
