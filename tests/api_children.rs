//! The child routes under attack: a caller allowed one child (`a`) tries to reach the
//! others (`ab`, a name `a` is a prefix of, and `b`) through every spelling of the path a
//! hostile local user might try: percent-encoding, encoded slashes and dots, doubled and
//! trailing slashes, dot segments, case, absolute-form targets, query strings and
//! fragments, look-alike letters, HEAD and other methods. Each spelling must be refused
//! (400, 403, 404, 405) or reach the same authorisation as the canonical path: never
//! another child's token, status, stream or signature.
//!
//! Clients run under other uids (`setpriv`), so the test needs root; CI runs it as root
//! with `ASSET_AGENT_REQUIRE_ROOT` set, where a skip is a failure.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use asset_agent::config::{Config, LoadOptions};
use common::api::{NEEDS_ROOT, as_user, open_to_everyone};
use common::{Agent, Device, emulator, get, wait_for_token, write_0600};
use wire::clock::Clock;

const CHILD_KEYS: [&str; 3] = [
    include_str!("data/child-1-key.pem"),
    include_str!("data/child-2-key.pem"),
    include_str!("data/child-3-key.pem"),
];

/// Allowed child `a` only; no role on the gateway.
const BRIDGE: u32 = 4242;
/// Allowed child `a` (as a signer), and the token role on the gateway (`[api] allow_uids`).
const HOLDER: u32 = 4343;

/// The other children, by name: what must never reach the callers.
const OTHERS: [&str; 2] = ["ab", "b"];

fn child_table(dev: &Device, name: &str, key_pem: &str, extra: &str) -> String {
    let key = dev.path(&format!("{name}-key.pem"));
    write_0600(&key, key_pem.as_bytes());
    format!(
        "\n[children.{name}]\ndevice_id = \"gw-{name}\"\nname = \"{name}\"\nserial_number = \"S-{name}\"\n{extra}\n[children.{name}.key]\npath = \"{}\"\n",
        key.display()
    )
}

/// What the client got: status, and everything it read (head and body).
#[derive(Debug)]
struct Got {
    status: u16,
    text: String,
}

/// `method target` sent as written (no normalisation by the client) as `uid`.
fn send(uid: u32, socket: &Path, method: &str, target: &str, accept: Option<&str>) -> Got {
    let mut c: Command = as_user(uid, uid, &[], "curl");
    c.args([
        "-s",
        "-i",
        "--path-as-is",
        "--max-time",
        "3",
        "--unix-socket",
    ])
    .arg(socket)
    .args(["-w", "\n%{http_code}"]);
    match method {
        // curl waits for a body after HEAD unless it knows it sent one.
        "HEAD" => {
            c.arg("--head");
        }
        "POST" => {
            c.args([
                "-X",
                "POST",
                "-H",
                "content-type: application/json",
                "--data-binary",
                r#"{"aud":"x"}"#,
            ]);
        }
        other => {
            c.args(["-X", other]);
        }
    }
    if let Some(a) = accept {
        c.args(["-H", &format!("accept: {a}")]);
    }
    c.arg("--request-target").arg(target);
    c.arg("http://localhost/");
    let out = c.output().expect("setpriv and curl are installed");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (text, code) = text.rsplit_once('\n').unwrap_or(("", text.as_str()));
    Got {
        status: code.trim().parse().unwrap_or(0),
        text: text.to_owned(),
    }
}

/// Every spelling of a path to child `victim`'s `action` (`token`, `token/watch`,
/// `status`, `sign`) that the attack tries.
fn spellings(victim: &str, action: &str) -> Vec<String> {
    let enc: String = victim.bytes().map(|b| format!("%{b:02X}")).collect();
    let enc_lower: String = victim.bytes().map(|b| format!("%{b:02x}")).collect();
    let upper = victim.to_uppercase();
    // Fullwidth and Cyrillic look-alikes of the victim's letters.
    let fullwidth: String = victim
        .chars()
        .map(|c| char::from_u32(u32::from(c) - 0x61 + 0xFF41).unwrap_or(c))
        .collect();
    let cyrillic: String = victim
        .chars()
        .map(|c| if c == 'a' { '\u{430}' } else { c })
        .collect();
    let action_enc = action.replace('/', "%2F");
    let mut v = vec![
        format!("/v1/assets/{victim}/{action}"),
        format!("/v1/assets/{enc}/{action}"),
        format!("/v1/assets/{enc_lower}/{action}"),
        format!("/v1/assets/a%2F..%2F{victim}/{action}"),
        format!("/v1/assets/a%2f%2e%2e%2f{victim}/{action}"),
        format!("/v1/assets/a/../{victim}/{action}"),
        format!("/v1/assets/a/%2e%2e/{victim}/{action}"),
        format!("/v1/assets/a/%2E%2E/{victim}/{action}"),
        format!("/v1/assets/a/.%2e/{victim}/{action}"),
        format!("/v1/assets/a/{action}/../../{victim}/{action}"),
        format!("/v1/assets/a/{action}/%2e%2e/%2e%2e/{victim}/{action}"),
        format!("/v1/assets/./{victim}/{action}"),
        format!("/v1/assets/{victim}/./{action}"),
        format!("/v1/assets/%2e/{victim}/{action}"),
        format!("/v1/assets//{victim}/{action}"),
        format!("/v1/assets/{victim}//{action}"),
        format!("//v1/assets/{victim}/{action}"),
        format!("/v1//assets/{victim}/{action}"),
        format!("/v1/assets/{victim}/{action}/"),
        format!("/v1/assets/{victim}/{action}//"),
        format!("/v1/assets/{victim}/{action}/."),
        format!("/v1/assets/{victim}/{action_enc}"),
        format!("/v1/assets%2F{victim}/{action}"),
        format!("/v1/assets/{victim}%2F{action_enc}"),
        format!("/V1/ASSETS/{upper}/{}", action.to_uppercase()),
        format!("/v1/assets/{upper}/{action}"),
        format!("/v1/assets/{victim}/{}", action.to_uppercase()),
        format!("http://localhost/v1/assets/{victim}/{action}"),
        format!("HTTP://LOCALHOST/v1/assets/{victim}/{action}"),
        format!("http://localhost/v1/assets/a/../{victim}/{action}"),
        format!("http://a@localhost:80/v1/assets/{victim}/{action}"),
        format!("http://localhost/v1/assets/a/{action}?/../../{victim}/{action}"),
        format!("/v1/assets/{victim}/{action}?name=a"),
        format!("/v1/assets/{victim}/{action}?/v1/assets/a/{action}"),
        format!("/v1/assets/{victim}/{action}#/v1/assets/a/{action}"),
        format!("/v1/assets/{victim}/{action}%23"),
        format!("/v1/assets/{victim}/{action}%3Fx"),
        format!("/v1/assets/{victim}%00/{action}"),
        format!("/v1/assets/{victim}%20/{action}"),
        format!("/v1/assets/{victim};a/{action}"),
        format!("/v1/assets/a;/../{victim}/{action}"),
        format!("/v1/assets/{victim}\\{action}"),
        format!("/v1/assets/a\\..\\{victim}/{action}"),
        format!("/v1/assets/{fullwidth}/{action}"),
        format!("/v1/assets/{cyrillic}/{action}"),
        format!("/v1/assets/{victim}\u{200b}/{action}"),
        format!("/v1/assets/a{}/{action}", &victim[victim.len() - 1..]),
        format!("/v1/assets/a/{action}/../../../assets/{victim}/{action}"),
        format!("/v1/token/../assets/{victim}/{action}"),
        format!("*/v1/assets/{victim}/{action}"),
        format!("localhost/v1/assets/{victim}/{action}"),
    ];
    v.sort();
    v.dedup();
    v
}

/// What the callers must never see, and what child `a`'s answers look like.
struct Secrets {
    /// Each other child's device id and current JWT.
    marks: Vec<String>,
    /// Child `a`'s current JWT.
    a_token: String,
}

/// Whether `text` is one of child `a`'s answers: its device id in plain JSON, its token,
/// or a JWT (a signature) whose claims name it.
fn is_childs_a(text: &str, s: &Secrets) -> bool {
    let jwt_names_a = text
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.'))
        .filter(|w| w.starts_with("eyJ"))
        .filter_map(|w| w.split('.').nth(1))
        .filter_map(|claims| wire::jose::b64url_decode(claims).ok())
        .any(|claims| String::from_utf8_lossy(&claims).contains("\"gw-a\""));
    text.contains("\"gw-a\"") || text.contains(s.a_token.as_str()) || jwt_names_a
}

fn check(caller: u32, method: &str, target: &str, accept: Option<&str>, got: &Got, s: &Secrets) {
    let what = format!("uid {caller} {method} {target:?} (accept {accept:?})");
    for mark in &s.marks {
        assert!(
            !got.text.contains(mark.as_str()),
            "{what} leaked another child's {mark:.20}...: {got:?}"
        );
    }
    // Anything that is not a refusal must be the allowed child's own answer. No route
    // answers HEAD, so a HEAD is never 200.
    if !matches!(got.status, 400 | 403 | 404 | 405 | 414 | 431) {
        assert!(
            got.status == 200 && method != "HEAD" && is_childs_a(&got.text, s),
            "{what}: neither refused nor child a's answer: {got:?}"
        );
    }
}

/// The agent's own uid (root here, an admin) fetches a child's token.
async fn token_of(socket: &Path, name: &str) -> String {
    for _ in 0..200 {
        let r = get(socket, &format!("/v1/assets/{name}/token")).await;
        if r.status == 200 {
            let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
            return v["token"].as_str().unwrap().to_owned();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("child {name}: no token within 20 s");
}

#[tokio::test]
async fn a_caller_allowed_one_child_reaches_no_other_whatever_the_spelling() {
    testkit::require!(testkit::ROOT, testkit::is_root(), "{NEEDS_ROOT}");
    let emu = emulator(Clock::system(), |_| {}).await;
    let dev = Device::new(&emu);
    let path = dev.write_config(&emu, "", "");
    let mut toml = std::fs::read_to_string(&path).unwrap();
    toml.push_str(&format!("allow_uids = [{HOLDER}]\n"));
    toml.push_str(&child_table(
        &dev,
        "a",
        CHILD_KEYS[0],
        &format!("allow_uids = [{BRIDGE}]\nsigner_uids = [{HOLDER}]"),
    ));
    toml.push_str(&child_table(&dev, "ab", CHILD_KEYS[1], ""));
    toml.push_str(&child_table(&dev, "b", CHILD_KEYS[2], ""));
    std::fs::write(&path, toml).unwrap();
    let config = Config::load(&LoadOptions::new(Some(path), HashMap::new())).unwrap();
    assert_eq!(config.children.len(), 3);
    let agent = Agent::start(&config, Clock::system()).await;
    let socket = dev.socket();
    wait_for_token(&socket).await;
    let a_token = token_of(&socket, "a").await;
    let mut marks = Vec::new();
    for name in OTHERS {
        marks.push(token_of(&socket, name).await);
        marks.push(format!("gw-{name}"));
    }
    let secrets = Secrets { marks, a_token };
    open_to_everyone(&dev);

    // The canonical paths first: the allowed child answers, the others are 403.
    let s = socket.clone();
    let canonical = tokio::task::spawn_blocking(move || {
        let mut out = Vec::new();
        for uid in [BRIDGE, HOLDER] {
            out.push((uid, "a", send(uid, &s, "GET", "/v1/assets/a/token", None)));
            for victim in OTHERS {
                for (method, action) in [
                    ("GET", "token"),
                    ("GET", "token/watch"),
                    ("GET", "status"),
                    ("POST", "sign"),
                ] {
                    let target = format!("/v1/assets/{victim}/{action}");
                    out.push((uid, victim, send(uid, &s, method, &target, None)));
                }
            }
        }
        out
    })
    .await
    .unwrap();
    for (uid, name, got) in &canonical {
        if *name == "a" {
            assert_eq!(got.status, 200, "uid {uid} child a: {got:?}");
            assert!(got.text.contains("gw-a"), "{got:?}");
        } else {
            assert_eq!(got.status, 403, "uid {uid} child {name}: {got:?}");
        }
    }

    // Then every spelling, method and `Accept`, from both callers, a few clients at once.
    let mut cases = Vec::new();
    for victim in OTHERS {
        for method in ["PUT", "DELETE", "OPTIONS", "PATCH"] {
            cases.push((method, format!("/v1/assets/{victim}/token"), None));
            cases.push((method, format!("/v1/assets/{victim}/sign"), None));
        }
    }
    for victim in OTHERS {
        for action in ["token", "token/watch", "status", "sign"] {
            for target in spellings(victim, action) {
                for method in ["GET", "HEAD", "POST"] {
                    cases.push((method, target.clone(), None));
                }
                if action == "token" {
                    cases.push(("GET", target.clone(), Some("text/plain")));
                }
            }
        }
    }
    let total = cases.len() * 2;
    let chunks: Vec<Vec<_>> = cases
        .chunks(cases.len().div_ceil(8))
        .map(<[_]>::to_vec)
        .collect();
    let mut checked = 0;
    for uid in [BRIDGE, HOLDER] {
        let mut workers = Vec::new();
        for chunk in chunks.clone() {
            let s = socket.clone();
            workers.push(tokio::task::spawn_blocking(move || {
                chunk
                    .into_iter()
                    .map(|(method, target, accept)| {
                        let got = send(uid, &s, method, &target, accept);
                        (method, target, accept, got)
                    })
                    .collect::<Vec<_>>()
            }));
        }
        for w in workers {
            for (method, target, accept, got) in w.await.unwrap() {
                check(uid, method, &target, accept, &got, &secrets);
                checked += 1;
            }
        }
    }
    assert_eq!(checked, total);
    agent.stop().await;
}
