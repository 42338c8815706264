//! Gateway mode: one agent holding its own identity and child identities, each its own
//! Asset with its own key and token; per-child caller policy; children added and removed
//! by reload; one child's failure isolated; one shared subject token and a boot that does
//! not send every child's exchange at once (paused time, exact request counts).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::{BTreeSet, HashMap};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use asset_agent::config::{Config, LoadOptions};
use common::api::{NEEDS_ROOT, NOBODY, curl_as, has_jwt, open_to_everyone};
use common::{Agent, BIN, Device, emulator, get, rig, wait_for_token, write_0600};
use emulator::{Emulator, Grant};
use wire::clock::Clock;
use wire::jose::RsaPublicJwk;

const CHILD_KEYS: [&str; 3] = [
    include_str!("data/child-1-key.pem"),
    include_str!("data/child-2-key.pem"),
    include_str!("data/child-3-key.pem"),
];

/// The uid of a "Modbus bridge" allowed pump-7 only.
const BRIDGE: u32 = 4242;

/// A `[children.NAME]` table with a checked-in key written to the device directory.
fn child_table(dev: &Device, name: &str, serial: &str, key_pem: &str, extra: &str) -> String {
    let key = dev.path(&format!("{name}-key.pem"));
    if !key.exists() {
        write_0600(&key, key_pem.as_bytes());
    }
    format!(
        "\n[children.{name}]\ndevice_id = \"gw-{name}\"\nname = \"{name}\"\nserial_number = \"{serial}\"\n{extra}\n[children.{name}.key]\npath = \"{}\"\n",
        key.display()
    )
}

/// Key `i` (up to 209) of a set of distinct 2048-bit keys made from pairs of checked-in
/// primes: tests that boot many children give each its own key, as every identity must
/// have, without generating hundreds of keys.
fn distinct_key(i: usize) -> String {
    use rsa::pkcs8::EncodePrivateKey as _;
    let primes: Vec<rsa::BigUint> = include_str!("data/primes-1024.txt")
        .lines()
        .map(|l| rsa::BigUint::parse_bytes(l.trim().as_bytes(), 16).unwrap())
        .collect();
    let pairs = (0..primes.len()).flat_map(|a| (a + 1..primes.len()).map(move |b| (a, b)));
    let (a, b) = pairs.clone().nth(i).unwrap();
    let key = rsa::RsaPrivateKey::from_p_q(
        primes[a].clone(),
        primes[b].clone(),
        rsa::BigUint::from(65_537_u32),
    )
    .unwrap();
    key.to_pkcs8_pem(rsa::pkcs8::LineEnding::LF)
        .unwrap()
        .to_string()
}

/// The device's config with `tail` appended (children tables), loaded.
fn config_with(dev: &Device, emu: &Emulator, token_extra: &str, tail: &str) -> (PathBuf, Config) {
    let path = dev.write_config(emu, "", token_extra);
    let mut toml = std::fs::read_to_string(&path).unwrap();
    toml.push_str(tail);
    std::fs::write(&path, toml).unwrap();
    (path.clone(), load(&path))
}

fn load(path: &Path) -> Config {
    Config::load(&LoadOptions::new(Some(path.to_owned()), HashMap::new())).unwrap()
}

fn three_children(dev: &Device) -> String {
    [
        child_table(
            dev,
            "pump-7",
            "P-7",
            CHILD_KEYS[0],
            &format!("allow_uids = [{BRIDGE}]"),
        ),
        child_table(dev, "meter-2", "M-2", CHILD_KEYS[1], ""),
        child_table(dev, "tag-9", "T-9", CHILD_KEYS[2], ""),
    ]
    .concat()
}

/// Polls `path` as the agent's own uid (an admin) until it answers 200 (bounded).
async fn wait_ok(socket: &Path, path: &str) -> serde_json::Value {
    for _ in 0..200 {
        let r = get(socket, path).await;
        if r.status == 200 {
            return serde_json::from_slice(&r.body).unwrap();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{path}: no 200 within 20 s");
}

/// The thumbprint of the key a token's `cnf.jwk` binds.
fn cnf_thumbprint(emu: &Emulator, jwt: &str) -> String {
    let claims = common::verify_with_jwks(emu, jwt);
    let jwk: RsaPublicJwk = serde_json::from_value(claims["cnf"]["jwk"].clone()).unwrap();
    jwk.thumbprint()
}

#[tokio::test]
async fn three_children_each_with_its_own_asset_key_and_token() {
    let emu = emulator(Clock::system(), |_| {}).await;
    let dev = Device::new(&emu);
    let (_, config) = config_with(&dev, &emu, "", &three_children(&dev));
    assert_eq!(config.children.len(), 3);
    let agent = Agent::start(&config, Clock::system()).await;
    let socket = dev.socket();
    let own = wait_for_token(&socket).await;
    let mut tokens = vec![("gateway".to_owned(), own)];
    for name in ["meter-2", "pump-7", "tag-9"] {
        let t = wait_ok(&socket, &format!("/v1/assets/{name}/token")).await;
        assert_eq!(t["device_id"], format!("gw-{name}"));
        tokens.push((name.to_owned(), t));
    }
    // Four Assets, four keys, four tokens: nothing shared between identities.
    let assets = emu.assets();
    assert_eq!(assets.len(), 4, "{assets:?}");
    let ids: BTreeSet<String> = tokens
        .iter()
        .map(|(_, t)| t["asset_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids.len(), 4);
    let mut thumbprints = BTreeSet::new();
    for (name, t) in &tokens {
        let jwt = t["token"].as_str().unwrap();
        let jkt = cnf_thumbprint(&emu, jwt);
        let asset = assets
            .iter()
            .find(|a| Some(a.id.as_str()) == t["asset_id"].as_str())
            .unwrap();
        assert_eq!(asset.device_key_thumbprint, jkt, "{name}");
        assert_eq!(asset.device_id, t["device_id"].as_str().unwrap(), "{name}");
        if name != "gateway" {
            let status = wait_ok(&socket, &format!("/v1/assets/{name}/status")).await;
            assert_eq!(status["key_thumbprint"], jkt.as_str(), "{name}");
            assert_eq!(status["state"], "ready");
        }
        thumbprints.insert(jkt);
    }
    assert_eq!(thumbprints.len(), 4, "one key per identity");
    // One subject token for all four identities.
    assert_eq!(emu.grant_count(Grant::RefreshToken), 1);
    assert_eq!(emu.grant_count(Grant::TokenExchange), 4);
    // The gateway's status lists the children; metrics are labelled per identity.
    let status = wait_ok(&socket, "/v1/status").await;
    let names: Vec<&str> = status["children"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["meter-2", "pump-7", "tag-9"]);
    let metrics = String::from_utf8(get(&socket, "/metrics").await.body.to_vec()).unwrap();
    for name in ["meter-2", "pump-7", "tag-9"] {
        let line = format!("asset_agent_identity_token_valid{{identity=\"{name}\"}} 1");
        assert!(metrics.contains(&line), "{line} in {metrics}");
    }
    assert!(metrics.contains("asset_agent_children 3"), "{metrics}");
    // The CLI takes the identity's name.
    let s = socket.clone();
    let (raw, status_json) = tokio::task::spawn_blocking(move || {
        let cli = |args: &[&str]| {
            let out = std::process::Command::new(BIN)
                .args(args)
                .arg("--socket")
                .arg(&s)
                .output()
                .unwrap();
            assert!(out.status.success(), "{args:?}: {out:?}");
            String::from_utf8(out.stdout).unwrap()
        };
        (
            cli(&["token", "pump-7", "--raw"]),
            cli(&["status", "meter-2", "--json"]),
        )
    })
    .await
    .unwrap();
    let pump_jwt = tokens.iter().find(|(n, _)| n == "pump-7").unwrap().1["token"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(raw.trim(), pump_jwt);
    let status_json: serde_json::Value = serde_json::from_str(&status_json).unwrap();
    assert_eq!(status_json["device_id"], "gw-meter-2");
    // Signing with a child's key: the child's kid, the child's device id.
    let signed = asset_agent::client::post_json(
        &socket,
        "/v1/assets/pump-7/sign",
        &br#"{"aud":"https://backend.example.com"}"#[..],
    )
    .await
    .unwrap();
    assert_eq!(signed.status, 200);
    let signed: serde_json::Value = serde_json::from_slice(&signed.body).unwrap();
    let pump = &tokens.iter().find(|(n, _)| n == "pump-7").unwrap().1;
    assert_eq!(
        signed["kid"].as_str().unwrap(),
        cnf_thumbprint(&emu, pump["token"].as_str().unwrap())
    );
    agent.stop().await;
}

/// The uid allowed pump-7 gets pump-7's token and 403 everywhere else; a stranger gets
/// 403 for pump-7 too.
#[tokio::test]
async fn a_caller_allowed_one_child_gets_403_elsewhere() {
    testkit::require!(testkit::ROOT, testkit::is_root(), "{NEEDS_ROOT}");
    let emu = emulator(Clock::system(), |_| {}).await;
    let dev = Device::new(&emu);
    let (_, config) = config_with(&dev, &emu, "", &three_children(&dev));
    let agent = Agent::start(&config, Clock::system()).await;
    let socket = dev.socket();
    wait_for_token(&socket).await;
    for name in ["meter-2", "pump-7", "tag-9"] {
        wait_ok(&socket, &format!("/v1/assets/{name}/token")).await;
    }
    open_to_everyone(&dev);
    let s = socket.clone();
    let results = tokio::task::spawn_blocking(move || {
        let get = |uid: u32, path: &str| {
            (
                path.to_owned(),
                uid,
                curl_as(uid, uid, &[], &s, "GET", path, None),
            )
        };
        vec![
            get(BRIDGE, "/v1/assets/pump-7/token"),
            get(BRIDGE, "/v1/assets/pump-7/status"),
            get(BRIDGE, "/v1/assets/meter-2/token"),
            get(BRIDGE, "/v1/assets/tag-9/token/watch"),
            get(BRIDGE, "/v1/assets/no-such/token"),
            get(BRIDGE, "/v1/token"),
            get(BRIDGE, "/v1/status"),
            get(BRIDGE, "/v1/assets"),
            (
                "/v1/assets/pump-7/sign".to_owned(),
                BRIDGE,
                curl_as(
                    BRIDGE,
                    BRIDGE,
                    &[],
                    &s,
                    "POST",
                    "/v1/assets/pump-7/sign",
                    Some(r#"{"aud":"x"}"#),
                ),
            ),
            get(NOBODY, "/v1/assets/pump-7/token"),
            get(NOBODY, "/v1/assets"),
        ]
    })
    .await
    .unwrap();
    let status = |path: &str, uid: u32| {
        results
            .iter()
            .find(|(p, u, _)| p == path && *u == uid)
            .map(|(_, _, r)| r)
            .unwrap()
    };
    let pump = status("/v1/assets/pump-7/token", BRIDGE);
    assert_eq!(pump.status, 200, "{pump:?}");
    let body: serde_json::Value = serde_json::from_str(&pump.body).unwrap();
    assert_eq!(body["device_id"], "gw-pump-7");
    assert_eq!(status("/v1/assets/pump-7/status", BRIDGE).status, 200);
    let listed: serde_json::Value =
        serde_json::from_str(&status("/v1/assets", BRIDGE).body).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed}");
    assert_eq!(listed[0]["name"], "pump-7");
    for (path, uid, r) in &results {
        if (path == "/v1/assets/pump-7/token"
            || path == "/v1/assets/pump-7/status"
            || path == "/v1/assets")
            && *uid == BRIDGE
        {
            continue;
        }
        assert_eq!(r.status, 403, "uid {uid} {path}: {r:?}");
        assert!(
            !has_jwt(&r.body),
            "uid {uid} {path} leaked a token: {}",
            r.body
        );
    }
    agent.stop().await;
}

/// A child's `allow_gids` counts a caller's supplementary groups, also when the caller
/// already holds a role on the gateway by uid (then the gateway's own lists would not need
/// its groups, but the child's do).
#[tokio::test]
async fn a_child_granted_to_a_supplementary_group_serves_its_members() {
    testkit::require!(testkit::ROOT, testkit::is_root(), "{NEEDS_ROOT}");
    const MODBUS_GID: u32 = 4343;
    let emu = emulator(Clock::system(), |_| {}).await;
    let dev = Device::new(&emu);
    let tail = format!(
        "allow_uids = [{BRIDGE}]\n{}{}",
        child_table(
            &dev,
            "pump-7",
            "P-7",
            CHILD_KEYS[0],
            &format!("allow_gids = [{MODBUS_GID}]"),
        ),
        child_table(&dev, "meter-2", "M-2", CHILD_KEYS[1], ""),
    );
    let (_, config) = config_with(&dev, &emu, "", &tail);
    let agent = Agent::start(&config, Clock::system()).await;
    let socket = dev.socket();
    wait_for_token(&socket).await;
    wait_ok(&socket, "/v1/assets/pump-7/token").await;
    open_to_everyone(&dev);
    let s = socket.clone();
    let (member, outsider, other_child, own) = tokio::task::spawn_blocking(move || {
        let get =
            |groups: &[u32], path: &str| curl_as(BRIDGE, BRIDGE, groups, &s, "GET", path, None);
        (
            get(&[MODBUS_GID], "/v1/assets/pump-7/token"),
            get(&[], "/v1/assets/pump-7/token"),
            get(&[MODBUS_GID], "/v1/assets/meter-2/token"),
            get(&[MODBUS_GID], "/v1/token"),
        )
    })
    .await
    .unwrap();
    assert_eq!(member.status, 200, "{member:?}");
    let body: serde_json::Value = serde_json::from_str(&member.body).unwrap();
    assert_eq!(body["device_id"], "gw-pump-7");
    assert_eq!(outsider.status, 403, "{outsider:?}");
    assert_eq!(other_child.status, 403, "{other_child:?}");
    assert_eq!(
        own.status, 200,
        "allow_uids still gives the gateway's token: {own:?}"
    );
    agent.stop().await;
}

/// A child added (a file dropped in children.d) and one removed (its table deleted), then
/// the reload applied: the removed one is not served from that moment, its key stays; the
/// untouched child keeps its token and makes no new exchange.
#[tokio::test]
async fn reload_adds_and_removes_children_without_disturbing_the_others() {
    let emu = emulator(Clock::system(), |_| {}).await;
    let dev = Device::new(&emu);
    let keep = child_table(&dev, "pump-7", "P-7", CHILD_KEYS[0], "");
    let drop_ = child_table(&dev, "meter-2", "M-2", CHILD_KEYS[1], "");
    let (path, config) = config_with(&dev, &emu, "", &format!("{keep}{drop_}"));
    let agent = Agent::start(&config, Clock::system()).await;
    let socket = dev.socket();
    wait_for_token(&socket).await;
    let before = wait_ok(&socket, "/v1/assets/pump-7/token").await;
    wait_ok(&socket, "/v1/assets/meter-2/token").await;
    let exchanges = emu.grant_count(Grant::TokenExchange);
    assert_eq!(exchanges, 3);

    // meter-2's table goes; tag-9 arrives as a file in children.d.
    let toml = std::fs::read_to_string(&path).unwrap().replace(&drop_, "");
    std::fs::write(&path, toml).unwrap();
    let dir = dev.path("children.d");
    std::fs::create_dir(&dir).unwrap();
    let key = dev.path("tag-9-key.pem");
    write_0600(&key, CHILD_KEYS[2].as_bytes());
    std::fs::write(
        dir.join("tag-9.toml"),
        format!(
            "device_id = \"gw-tag-9\"\nname = \"tag-9\"\nserial_number = \"T-9\"\n[key]\npath = \"{}\"\n",
            key.display()
        ),
    )
    .unwrap();
    let new = load(&path);
    assert_eq!(
        new.children
            .iter()
            .map(|c| c.name.as_str())
            .collect::<Vec<_>>(),
        ["pump-7", "tag-9"]
    );
    // A watch stream open on meter-2 when it goes.
    let mut watching = asset_agent::client::watch_path(&socket, "/v1/assets/meter-2/token/watch")
        .await
        .unwrap();
    let first = watching.next_line().await.unwrap().unwrap();
    assert!(has_jwt(&String::from_utf8_lossy(&first)));
    let changes = agent.running.apply_children(&new).await;
    // The open stream ends with the child: nothing more is served on it.
    let end = tokio::time::timeout(Duration::from_secs(10), watching.next_line())
        .await
        .expect("the removed child's watch stream stayed open");
    assert!(matches!(end, Ok(None)), "{end:?}");
    assert_eq!(changes.added, ["tag-9"]);
    assert_eq!(changes.removed, ["meter-2"]);
    assert!(changes.restarted.is_empty() && changes.failed.is_empty());
    // Gone at once (an admin is told it does not exist), its key kept.
    assert_eq!(get(&socket, "/v1/assets/meter-2/token").await.status, 404);
    assert!(dev.path("meter-2-key.pem").exists());
    let added = wait_ok(&socket, "/v1/assets/tag-9/token").await;
    assert_eq!(added["device_id"], "gw-tag-9");
    let after = wait_ok(&socket, "/v1/assets/pump-7/token").await;
    assert_eq!(before["token"], after["token"], "pump-7 untouched");
    assert_eq!(
        emu.grant_count(Grant::TokenExchange),
        exchanges + 1,
        "only tag-9 exchanged"
    );
    // Applying the same list again changes nothing.
    assert_eq!(agent.running.apply_children(&new).await, Default::default());
    agent.stop().await;
}

/// A child whose Asset Salesforce refuses (an `id` that does not exist) fails on its own:
/// the gateway and the other children are served as if nothing happened.
#[tokio::test]
async fn one_childs_refused_asset_does_not_affect_the_others() {
    let emu = emulator(Clock::system(), |_| {}).await;
    let dev = Device::new(&emu);
    let tail = [
        child_table(&dev, "pump-7", "P-7", CHILD_KEYS[0], ""),
        child_table(
            &dev,
            "ghost",
            "G-1",
            CHILD_KEYS[1],
            "id = \"02i000000000000AAA\"",
        ),
        child_table(&dev, "tag-9", "T-9", CHILD_KEYS[2], ""),
    ]
    .concat();
    let (_, config) = config_with(&dev, &emu, "", &tail);
    let agent = Agent::start(&config, Clock::system()).await;
    let socket = dev.socket();
    wait_for_token(&socket).await;
    wait_ok(&socket, "/v1/assets/pump-7/token").await;
    wait_ok(&socket, "/v1/assets/tag-9/token").await;
    let mut ghost = serde_json::Value::Null;
    for _ in 0..100 {
        ghost = wait_ok(&socket, "/v1/assets/ghost/status").await;
        if ghost["consecutive_failures"].as_u64().unwrap_or(0) >= 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(ghost["state"], "failing", "{ghost}");
    assert_eq!(get(&socket, "/v1/assets/ghost/token").await.status, 503);
    let status = wait_ok(&socket, "/v1/status").await;
    assert_eq!(status["state"], "ready");
    let states: Vec<(String, String)> = status["children"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["name"].as_str().unwrap().to_owned(),
                c["state"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        states,
        [
            ("ghost".to_owned(), "failing".to_owned()),
            ("pump-7".to_owned(), "ready".to_owned()),
            ("tag-9".to_owned(), "ready".to_owned()),
        ]
    );
    let s = socket.clone();
    let human = tokio::task::spawn_blocking(move || {
        std::process::Command::new(BIN)
            .args(["status", "--socket"])
            .arg(&s)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let human = String::from_utf8_lossy(&human.stdout);
    assert!(human.contains("children:     3 (2 ready"), "{human}");
    assert!(human.contains("  ghost: failing ("), "{human}");
    assert_eq!(emu.assets().len(), 3, "no Asset for the refused child");
    agent.stop().await;
}

/// `n` children booting at once on paused time: the exchanges are started 100 ms apart
/// (never more than one per 100 ms window), one access token serves them all, and every
/// child holds its token once the last slot has passed. Returns the exchanges per window.
async fn boot_through_the_gate(n: usize) -> Vec<u64> {
    let clock = Clock::tokio_driven();
    let emu = emulator(clock.clone(), |_| {}).await;
    let dev = Device::new(&emu);
    let tail: String = (0..n)
        .map(|i| {
            child_table(
                &dev,
                &format!("c{i:03}"),
                &format!("S-{i}"),
                &distinct_key(i),
                "",
            )
        })
        .collect();
    let (_, config) = config_with(&dev, &emu, rig::FAST_503, &tail);
    let agent = rig::start_agent(&config, clock, rig::JITTER).await;
    // Count exchanges per 100 ms of virtual time, until one window past the last slot.
    let start = tokio::time::Instant::now();
    let mut per_window = Vec::new();
    let mut seen = 0;
    let windows = u32::try_from(n).unwrap() + 5;
    for w in 1..=windows {
        tokio::time::sleep_until(
            start + Duration::from_millis(100) * w - Duration::from_millis(50),
        )
        .await;
        let now = emu.grant_count(Grant::TokenExchange);
        per_window.push(now - seen);
        seen = now;
    }
    // The gateway and every child, one exchange each, at most one per window.
    assert_eq!(seen, n as u64 + 1, "{per_window:?}");
    assert!(per_window.iter().all(|n| *n <= 1), "{per_window:?}");
    assert_eq!(emu.grant_count(Grant::RefreshToken), 1);
    let socket = dev.socket();
    for i in 0..n {
        let r = get(&socket, &format!("/v1/assets/c{i:03}/token")).await;
        assert_eq!(r.status, 200, "c{i:03}");
    }
    agent.stop().await;
    per_window
}

#[tokio::test(start_paused = true)]
async fn twenty_children_boot_through_the_gate() {
    boot_through_the_gate(20).await;
}

/// The upstream peak at boot for the 200-children gateway of docs/benchmarks.md.
#[tokio::test(start_paused = true)]
async fn two_hundred_children_boot_at_ten_exchanges_a_second() {
    let per_window = boot_through_the_gate(200).await;
    let per_second: Vec<u64> = per_window.chunks(10).map(|c| c.iter().sum()).collect();
    let peak = per_second.iter().copied().max().unwrap();
    let busy = per_window.iter().rposition(|n| *n > 0).unwrap() + 1;
    println!(
        "200 children: 201 exchanges over {:.1} s of virtual time, peak {peak} per second, 1 access token",
        busy as f64 / 10.0
    );
    assert!(peak <= 10, "{per_second:?}");
}

/// The daemon itself: a child file dropped into children.d and SIGHUP, then the file
/// removed and `asset-agent reload` (what `systemctl reload` runs): added, then no longer
/// served, the gateway's own token served throughout.
#[tokio::test]
async fn the_daemon_applies_children_on_sighup_and_reload() {
    let emu = emulator(Clock::system(), |_| {}).await;
    let dev = Device::new(&emu);
    let config = dev.write_config(&emu, "", "");
    let log = dev.path("agent.log");
    let mut child = tokio::process::Command::new(BIN)
        .args(["run", "--config"])
        .arg(&config)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let socket = dev.socket();
    let own = wait_for_token(&socket).await;
    assert_eq!(get(&socket, "/v1/assets/pump-7/token").await.status, 404);

    let dir = dev.path("children.d");
    std::fs::create_dir(&dir).unwrap();
    let key = dev.path("pump-7-key.pem");
    write_0600(&key, CHILD_KEYS[0].as_bytes());
    std::fs::write(
        dir.join("pump-7.toml"),
        format!(
            "device_id = \"gw-pump-7\"\nname = \"Pump 7\"\nserial_number = \"P-7\"\n[key]\npath = \"{}\"\n",
            key.display()
        ),
    )
    .unwrap();
    let pid = rustix::process::Pid::from_raw(i32::try_from(child.id().unwrap()).unwrap()).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::HUP).unwrap();
    let pump = wait_ok(&socket, "/v1/assets/pump-7/token").await;
    assert_eq!(pump["device_id"], "gw-pump-7");

    std::fs::remove_file(dir.join("pump-7.toml")).unwrap();
    let out = tokio::process::Command::new(BIN)
        .args(["reload", "--socket"])
        .arg(&socket)
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(text.contains("children removed: pump-7"), "{text}");
    assert_eq!(get(&socket, "/v1/assets/pump-7/token").await.status, 404);
    assert!(key.exists(), "the removed child's key is kept");
    let after = wait_for_token(&socket).await;
    assert_eq!(
        own["token"], after["token"],
        "the gateway's own token untouched"
    );
    child.kill().await.unwrap();
}

/// A child whose key cannot be opened at start (here a key file whose contents are not a
/// key yet, as a token not plugged in would be) is not served; once the key is there, a
/// reload with an unchanged configuration starts it, and the gateway's own token is
/// untouched.
#[tokio::test]
async fn a_reload_retries_a_child_whose_key_would_not_open() {
    child_key_fixed_then_reloaded(
        |key| write_0600(key, b"not a key yet\n"),
        |key| write_0600(key, CHILD_KEYS[0].as_bytes()),
        "could not start the child",
    )
    .await;
}

/// A child key file others can read stops only that child (with the file and the fix),
/// not the gateway: its own token is served, and the child starts once the mode is fixed
/// and the agent reloaded.
#[tokio::test]
async fn a_child_key_others_can_read_stops_only_that_child() {
    child_key_fixed_then_reloaded(
        |key| {
            write_0600(key, CHILD_KEYS[0].as_bytes());
            std::fs::set_permissions(key, std::fs::Permissions::from_mode(0o644)).unwrap();
        },
        |key| std::fs::set_permissions(key, std::fs::Permissions::from_mode(0o600)).unwrap(),
        "chmod 600",
    )
    .await;
}

/// A child whose key file is a copy of the gateway's (another path, another file, the same
/// key) is not started: it would sign as the gateway for its own signer callers. Caught
/// once the key is open, by its thumbprint; with a key of its own it starts on reload.
#[tokio::test]
async fn a_child_holding_the_gateways_key_is_not_started() {
    child_key_fixed_then_reloaded(
        |key| write_0600(key, common::DEVICE_KEY.as_bytes()),
        |key| write_0600(key, CHILD_KEYS[0].as_bytes()),
        "is the key of the gateway ([key]) too",
    )
    .await;
}

/// Starts a gateway whose child pump-7 has a key `break_key` made unusable, checks that the
/// gateway serves its own token and logs `want` for the child, then `fix_key`es it and
/// reloads: the child is added and the gateway's own token untouched.
async fn child_key_fixed_then_reloaded(
    break_key: impl Fn(&Path),
    fix_key: impl Fn(&Path),
    want: &str,
) {
    let emu = emulator(Clock::system(), |_| {}).await;
    let dev = Device::new(&emu);
    let config = dev.write_config(&emu, "", "");
    let dir = dev.path("children.d");
    std::fs::create_dir(&dir).unwrap();
    let key = dev.path("pump-7-key.pem");
    break_key(&key);
    std::fs::write(
        dir.join("pump-7.toml"),
        format!(
            "device_id = \"gw-pump-7\"\nname = \"Pump 7\"\nserial_number = \"P-7\"\n[key]\npath = \"{}\"\n",
            key.display()
        ),
    )
    .unwrap();
    let log = dev.path("agent.log");
    let mut child = tokio::process::Command::new(BIN)
        .args(["run", "--config"])
        .arg(&config)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let socket = dev.socket();
    let own = wait_for_token(&socket).await;
    for _ in 0..200 {
        if std::fs::read_to_string(&log)
            .unwrap()
            .contains("could not start the child")
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("could not start the child"), "{text}");
    assert!(text.contains(want), "{text}");
    assert_eq!(get(&socket, "/v1/assets/pump-7/token").await.status, 404);

    fix_key(&key);
    let out = tokio::process::Command::new(BIN)
        .args(["reload", "--socket"])
        .arg(&socket)
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(text.contains("children added: pump-7"), "{text}");
    let pump = wait_ok(&socket, "/v1/assets/pump-7/token").await;
    assert_eq!(pump["device_id"], "gw-pump-7");
    let after = wait_for_token(&socket).await;
    assert_eq!(
        own["token"], after["token"],
        "the gateway's own token untouched"
    );
    child.kill().await.unwrap();
}

/// A credentials outage (every refresh-token grant answered 503) while twenty children
/// boot: the gateway's identities share one hold-off, doubling from 5 s, so Salesforce
/// sees one grant per hold-off, not one per child and retry; when the grant works again,
/// every identity gets its token from one access token.
#[tokio::test(start_paused = true)]
async fn a_credentials_outage_costs_one_grant_per_hold_off_not_one_per_child() {
    let n: u64 = 20;
    let clock = Clock::tokio_driven();
    let emu = emulator(clock.clone(), |_| {}).await;
    emu.faults()
        .fail_next_with(1000, 503, None, emulator::Scope::Grant(Grant::RefreshToken))
        .await
        .unwrap();
    let dev = Device::new(&emu);
    let tail: String = (0..n)
        .map(|i| {
            child_table(
                &dev,
                &format!("c{i:03}"),
                &format!("S-{i}"),
                &distinct_key(usize::try_from(i).unwrap()),
                "",
            )
        })
        .collect();
    let (_, config) = config_with(&dev, &emu, rig::FAST_503, &tail);
    let agent = rig::start_agent(&config, clock, rig::JITTER).await;
    let start = tokio::time::Instant::now();
    tokio::time::sleep_until(start + Duration::from_secs(300)).await;
    // Hold-offs of 5, 10, 20, 40, 80 and 160 s: grants at about 0, 5, 15, 35, 75 and
    // 155 s. Without the shared hold-off the 21 identities' own backoffs asked ~190 times.
    let outage = emu.grant_count(Grant::RefreshToken);
    assert!((3..=6).contains(&outage), "{outage} grants in the outage");
    assert_eq!(emu.grant_count(Grant::TokenExchange), 0);

    emu.faults().clear();
    // The last hold-off ends at about 315 s; each identity then exchanges once (tokens
    // live 60 s and nothing asks for them, so they are read as soon as all are issued).
    while emu.grant_count(Grant::TokenExchange) < n + 1 {
        assert!(
            start.elapsed() < Duration::from_secs(700),
            "not all identities recovered"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        emu.grant_count(Grant::RefreshToken),
        outage + 1,
        "one grant once Salesforce answers again"
    );
    let socket = dev.socket();
    assert_eq!(get(&socket, "/v1/token").await.status, 200);
    for i in 0..n {
        let r = get(&socket, &format!("/v1/assets/c{i:03}/token")).await;
        assert_eq!(r.status, 200, "c{i:03}");
    }
    agent.stop().await;
}

/// Config files others could change are not read, by `check`, `run` or a reload: a 0666
/// agent.toml stops `run` with exit 78 and fails `check`, naming the file and
/// `chmod go-w`; a child's file that another user (uid 1001) owns, dropped into children.d
/// while the agent runs, is refused by the reload (no identity added) and by `check`,
/// naming the file and `chown`. Root only for the foreign owner.
#[tokio::test]
async fn config_files_others_could_change_are_refused_by_run_reload_and_check() {
    let bin = BIN;
    let emu = emulator(Clock::system(), |_| {}).await;
    let dev = Device::new(&emu);
    let config = dev.write_config(&emu, "", "");
    let config_s = config.display().to_string();
    let run_bin = |args: &[&str]| {
        let mut c = tokio::process::Command::new(bin);
        c.args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default());
        c
    };
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o666)).unwrap();
    // Bounded: an agent that accepted the file would run on.
    let out = tokio::time::timeout(
        Duration::from_secs(20),
        run_bin(&["run", "--config", &config_s])
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("run refused the file and exited")
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{stderr}");
    assert!(
        stderr.contains(&format!("chmod go-w {config_s}")),
        "{stderr}"
    );
    let out = run_bin(&["check", "--config", &config_s])
        .output()
        .await
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "{text}");
    assert!(text.contains(&format!("chmod go-w {config_s}")), "{text}");
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o644)).unwrap();

    testkit::require!(
        testkit::ROOT,
        testkit::is_root(),
        "root, to give a child's file to another user: run the tests as root"
    );
    let log = dev.path("agent.log");
    let mut agent = run_bin(&["run", "--config", &config_s])
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let socket = dev.socket();
    wait_for_token(&socket).await;
    let dir = dev.path("children.d");
    std::fs::create_dir(&dir).unwrap();
    let evil = dir.join("evil.toml");
    write_0600(
        &evil,
        b"device_id = \"evil\"\nname = \"evil\"\nserial_number = \"E-1\"\nsigner_uids = [1001]\n",
    );
    std::fs::set_permissions(&evil, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::os::unix::fs::chown(&evil, Some(1001), Some(1001)).unwrap();
    let socket_s = socket.display().to_string();
    let out = run_bin(&["reload", "--socket", &socket_s])
        .output()
        .await
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "{text}");
    assert!(text.contains(&evil.display().to_string()), "{text}");
    assert!(text.contains("chown"), "{text}");
    assert_eq!(get(&socket, "/v1/assets/evil/token").await.status, 404);
    let out = run_bin(&["check", "--config", &config_s])
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{text}");
    assert!(text.contains(&evil.display().to_string()), "{text}");
    agent.kill().await.unwrap();
}
