//! No key material outside the key file, whatever moment a kill hits `key generate`: the
//! key is written to an unnamed file that gets its name only when complete. Stale
//! temporary files an older build (or a killed rotation) left are removed at start.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::Path;
use std::time::Duration;

use common::BIN;

fn config(dir: &Path) -> std::path::PathBuf {
    let p = dir.join("agent.toml");
    std::fs::write(
        &p,
        format!(
            "[salesforce]\ninstance_url = \"https://acme.my.salesforce.com\"\nclient_id = \"3MVG\"\n\
             [asset]\ndevice_id = \"d1\"\nname = \"Pump\"\nserial_number = \"1\"\n\
             [key]\npath = \"{0}/state/device-key.pem\"\n[state]\ndir = \"{0}/state\"\n\
             [api]\nsocket = \"{0}/run/agent.sock\"\n",
            dir.display()
        ),
    )
    .unwrap();
    p
}

fn key_generate(config: &Path) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(BIN);
    cmd.args(["key", "generate", "--config"])
        .arg(config)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    cmd
}

/// What the state directory holds besides a complete key file.
fn leftovers(state: &Path) -> Vec<String> {
    std::fs::read_dir(state)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n != "device-key.pem")
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn kills_during_key_generation_never_leave_key_material_behind() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path());
    let state = dir.path().join("state");
    let (mut killed, mut completed) = (0, 0);
    // Kill at spread-out moments: before, during and after generation and the write.
    for i in 0..40u64 {
        let mut child = key_generate(&config).spawn().unwrap();
        tokio::time::sleep(Duration::from_millis((i * 7) % 250)).await;
        let _ = child.start_kill();
        let status = child.wait().await.unwrap();
        if status.success() {
            completed += 1;
        } else {
            killed += 1;
        }
        assert_eq!(leftovers(&state), Vec::<String>::new(), "after run {i}");
        let key = state.join("device-key.pem");
        if key.exists() {
            // Whatever exists is the whole key, owner-only.
            asset_agent::keys::FileKey::load(&key).unwrap();
            std::fs::remove_file(&key).unwrap();
        }
    }
    assert!(killed > 0, "no run was killed ({completed} completed)");
}

#[tokio::test]
async fn stale_temporary_key_files_are_removed_by_key_generate() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path());
    let state = dir.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    let stale = state.join(".device-key.pem.tmp-4194999");
    std::fs::write(&stale, "-----BEGIN PRIVATE KEY-----\n").unwrap();
    let status = key_generate(&config).status().await.unwrap();
    assert!(status.success());
    assert!(!stale.exists(), "the stale temporary key is gone");
    assert_eq!(leftovers(&state), Vec::<String>::new());
}
