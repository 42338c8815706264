//! Interop with a real Mosquitto: the agent binary connects, a local app publishes through
//! the socket, `mosquitto_sub` receives it, and killing the agent fires its Last Will.
//!
//! The broker: `ASSET_AGENT_TEST_MOSQUITTO=host:port` (what `.ci/run` starts), else one
//! this test starts on a free port when `mosquitto` is installed. Without either the test
//! prints a notice and passes, unless `ASSET_AGENT_REQUIRE_MOSQUITTO=1` (CI) makes that a
//! failure. Anonymous access: Mosquitto cannot check a JWT without a plugin, so this is
//! about the protocol, presence and the socket route; token checks are in tests/mqtt.rs.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::Write as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use common::mqtt::post_json;
use common::{BIN, Device, emulator, wait_for_token};
use serde_json::json;
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;
use wire::clock::Clock;

/// A Mosquitto to talk to, and the process if this test started it.
struct Mosquitto {
    addr: String,
    _child: Option<Child>,
    _dir: Option<tempfile::TempDir>,
}

fn which(name: &str) -> Option<PathBuf> {
    ["/usr/sbin", "/usr/bin", "/usr/local/sbin", "/usr/local/bin"]
        .iter()
        .map(|d| Path::new(d).join(name))
        .find(|p| p.exists())
}

async fn mosquitto() -> Option<Mosquitto> {
    if let Ok(addr) = std::env::var("ASSET_AGENT_TEST_MOSQUITTO") {
        return Some(Mosquitto {
            addr,
            _child: None,
            _dir: None,
        });
    }
    let bin = which("mosquitto")?;
    which("mosquitto_sub")?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    // Started as root, Mosquitto drops to user `mosquitto`: keep its files readable.
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let conf = dir.path().join("mosquitto.conf");
    let mut f = std::fs::File::create(&conf).unwrap();
    writeln!(
        f,
        "listener {port} 127.0.0.1\nallow_anonymous true\npersistence false"
    )
    .unwrap();
    std::fs::set_permissions(&conf, std::fs::Permissions::from_mode(0o644)).unwrap();
    let child = Command::new(bin)
        .arg("-c")
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .ok()?;
    let addr = format!("127.0.0.1:{port}");
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(&addr).await.is_ok() {
            return Some(Mosquitto {
                addr,
                _child: Some(child),
                _dir: Some(dir),
            });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("mosquitto did not start listening on {addr}");
}

/// `mosquitto_sub -v` on `filter`: each line is "topic payload".
fn subscribe(addr: &str, filter: &str) -> (Child, mpsc::UnboundedReceiver<String>) {
    let (host, port) = addr.rsplit_once(':').unwrap();
    let mut child = Command::new(which("mosquitto_sub").unwrap())
        .args(["-h", host, "-p", port, "-v", "-q", "1", "-t", filter])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            let _ = tx.send(line);
        }
    });
    (child, rx)
}

async fn expect_line(rx: &mut mpsc::UnboundedReceiver<String>, want: &str) {
    let found = tokio::time::timeout(Duration::from_secs(15), async {
        while let Some(line) = rx.recv().await {
            if line == want {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(found, Ok(true), "mosquitto_sub never printed {want:?}");
}

#[tokio::test]
async fn mosquitto_interop_publish_and_last_will() {
    let broker = testkit::require!(
        testkit::MOSQUITTO,
        mosquitto().await,
        "mosquitto (apt-get install mosquitto mosquitto-clients, or a running broker's \
         address in ASSET_AGENT_TEST_MOSQUITTO)"
    );
    let emu = emulator(Clock::system(), |_| {}).await;
    let dev = Device::new(&emu);
    // A fresh device id per run, so retained messages from earlier runs cannot interfere.
    let id = format!(
        "interop-{}-{}",
        std::process::id(),
        common::mqtt::wall() as u64
    );
    let path = dev.write_config(&emu, "", "");
    let text = std::fs::read_to_string(&path).unwrap().replace(
        "device_id = \"device-0001\"",
        &format!("device_id = \"{id}\""),
    ) + &format!(
        "\n[mqtt]\nurl = \"mqtt://{}\"\nkeep_alive = \"5s\"\n",
        broker.addr
    );
    std::fs::write(&path, text).unwrap();

    let (_sub, mut lines) = subscribe(&broker.addr, &format!("devices/{id}/#"));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut agent = Command::new(BIN)
        .args(["run", "--config"])
        .arg(&path)
        .env("ASSET_AGENT_LOG", "trace")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let token = wait_for_token(&dev.socket()).await;
    expect_line(&mut lines, &format!("devices/{id}/agent/status online")).await;

    // A local app publishes through the agent's session.
    let topic = format!("devices/{id}/telemetry");
    let (code, body) = post_json(
        &dev.socket(),
        "/v1/mqtt/publish",
        &json!({"topic": topic, "payload": "hello from the socket", "qos": 1}),
    )
    .await;
    assert_eq!(code, 202, "{body}");
    expect_line(&mut lines, &format!("{topic} hello from the socket")).await;

    // Killed without a goodbye: Mosquitto publishes the Last Will, retained.
    agent.start_kill().unwrap();
    let _ = agent.wait().await;
    expect_line(&mut lines, &format!("devices/{id}/agent/status offline")).await;
    let (host, port) = broker.addr.rsplit_once(':').unwrap();
    let retained = Command::new(which("mosquitto_sub").unwrap())
        .args(["-h", host, "-p", port, "-C", "1", "-W", "5"])
        .args(["-t", &format!("devices/{id}/agent/status")])
        .output()
        .await
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&retained.stdout).trim(), "offline");

    // Even at trace level the agent never logged the token it logged in with.
    let mut log = String::new();
    agent
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut log)
        .await
        .unwrap();
    assert!(log.contains("MQTT session up"), "{log}");
    let jwt = token["token"].as_str().unwrap();
    assert!(!log.contains(jwt));
    for part in jwt.split('.').skip(1) {
        assert!(!log.contains(part), "the log leaks part of the token");
    }
}
