//! One rule for every secret and state file, the same in `run` and `check`: each secret
//! (device key, refresh token, client secret, JWT-bearer assertion key, token cache) put in a
//! directory others can write, or reached through a symlink, is refused by `run` (a
//! configuration error, exit 78, before any upstream call) and reported as an error by
//! `check`; a 0644 refresh token is refused at start like a 0644 key. A token cache that is
//! itself a link (or 0644) is the exception: it is discarded, not refused.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::{Path, PathBuf};

use asset_agent::agent::{self, Options};
use asset_agent::config::{Config, LoadOptions};
use asset_agent::keys::FileKey;
use common::{BIN, Device, chmod, emulator, write_0600};
use emulator::Emulator;
use serde_json::Value;
use tokio_util::sync::CancellationToken;
use wire::clock::Clock;

#[derive(Clone, Copy, Debug)]
enum File {
    DeviceKey,
    RefreshToken,
    ClientSecret,
    AssertionKey,
    TokenCache,
}

const ALL: [File; 5] = [
    File::DeviceKey,
    File::RefreshToken,
    File::ClientSecret,
    File::AssertionKey,
    File::TokenCache,
];

#[derive(Clone, Copy, Debug)]
enum Attack {
    /// The secret sits in a 0777 directory (no sticky bit): anyone can replace it.
    OpenDir,
    /// The secret's path is a symlink to the real file.
    Symlink,
}

/// Writes the config for `secret` under `attack`; returns it and the path that must be named.
fn setup(dev: &Device, emu: &Emulator, secret: File, attack: Attack) -> (PathBuf, PathBuf) {
    let open = dev.path("open");
    std::fs::create_dir_all(&open).unwrap();
    let real = dev.path("real");
    std::fs::create_dir_all(&real).unwrap();
    let name = match secret {
        File::DeviceKey => "device-key.pem",
        File::RefreshToken => "refresh-token",
        File::ClientSecret => "client-secret",
        File::AssertionKey => "assertion-key.pem",
        File::TokenCache => asset_agent::token::cache::FILE_NAME,
    };
    let contents: Vec<u8> = match secret {
        File::DeviceKey => std::fs::read(dev.path("device-key.pem")).unwrap(),
        File::RefreshToken => std::fs::read(dev.path("refresh-token")).unwrap(),
        File::ClientSecret => b"s3cret-of-the-app".to_vec(),
        File::AssertionKey => common::OTHER_KEY.as_bytes().to_vec(),
        File::TokenCache => b"cache".to_vec(),
    };
    let placed = match attack {
        Attack::OpenDir => {
            let p = open.join(name);
            write_0600(&p, &contents);
            chmod(&open, 0o777);
            p
        }
        Attack::Symlink => {
            write_0600(&real.join(name), &contents);
            let p = dev.path(&format!("link-{name}"));
            std::os::unix::fs::symlink(real.join(name), &p).unwrap();
            p
        }
    };
    let config = dev.write_config(emu, "", "");
    let mut text = std::fs::read_to_string(&config).unwrap();
    let dir = dev.dir.path().display().to_string();
    let placed_s = placed.display().to_string();
    match secret {
        File::DeviceKey => {
            text = text.replace(&format!("{dir}/device-key.pem"), &placed_s);
        }
        File::RefreshToken => {
            text = text.replace(&format!("{dir}/refresh-token"), &placed_s);
        }
        File::ClientSecret => {
            text = text.replacen("[auth]\n", "[auth]\nmethod = \"client_credentials\"\n", 1);
            text = text.replacen(
                "timeout = \"5s\"\n",
                &format!("timeout = \"5s\"\nclient_secret_file = \"{placed_s}\"\n"),
                1,
            );
        }
        File::AssertionKey => {
            text = text.replacen(
                "[auth]\n",
                &format!(
                    "[auth]\nmethod = \"jwt_bearer\"\nusername = \"fleet@example.com\"\nassertion_key_file = \"{placed_s}\"\n"
                ),
                1,
            );
        }
        File::TokenCache => {
            let state = placed.parent().unwrap().display().to_string();
            text = text.replace(&format!("dir = \"{dir}\""), &format!("dir = \"{state}\""));
            if let Attack::Symlink = attack {
                // The cache is looked up as <state>/token-cache.json: make that the link.
                let link = dev.path("state").join(name);
                std::fs::create_dir_all(dev.path("state")).unwrap();
                chmod(&dev.path("state"), 0o700);
                std::fs::rename(&placed, &link).unwrap();
                text = text.replace(
                    &format!("dir = \"{state}\""),
                    &format!("dir = \"{}\"", dev.path("state").display()),
                );
                std::fs::write(&config, &text).unwrap();
                return (config, link);
            }
        }
    }
    std::fs::write(&config, text).unwrap();
    (config, placed)
}

async fn run_check(config: &Path) -> (Option<i32>, Value) {
    let out = tokio::process::Command::new(BIN)
        .args(["check", "--json", "--config"])
        .arg(config)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .output()
        .await
        .unwrap();
    let report: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code(), report)
}

fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text.push_str(&format!(": {c}"));
        cause = c.source();
    }
    text
}

#[tokio::test]
async fn open_directories_and_symlinks_are_refused_for_every_secret_in_run_and_check() {
    for secret in ALL {
        for attack in [Attack::OpenDir, Attack::Symlink] {
            let emu = emulator(Clock::system(), |c| {
                c.client_secret = Some("s3cret-of-the-app".to_owned().into());
            })
            .await;
            let key = FileKey::from_pem(Path::new("k"), common::OTHER_KEY.as_bytes()).unwrap();
            emu.register_jwt_bearer_key(asset_agent::keys::Signer::public_jwk(&key).clone());
            let dev = Device::new(&emu);
            let (config_path, named) = setup(&dev, &emu, secret, attack);
            let config = Config::load(&LoadOptions::new(
                Some(config_path.clone()),
                Default::default(),
            ))
            .unwrap();
            let what = format!("{secret:?} / {attack:?}");
            if let (File::TokenCache, Attack::Symlink) = (secret, attack) {
                // Only saves work: discarded at start with a warning (tests/lifecycle.rs),
                // which `check` says.
                let (code, report) = run_check(&config_path).await;
                assert_eq!(code, Some(0), "{what}: {report:#}");
                let named_s = named.display().to_string();
                let warned = report["findings"].as_array().unwrap().iter().any(|f| {
                    f["severity"] == "warning" && f["message"].as_str().unwrap().contains(&named_s)
                });
                assert!(warned, "{what}: no warning naming {named_s}: {report:#}");
                continue;
            }

            // run: refused before any upstream call, as a configuration error (exit 78).
            let result = agent::start(&config, Options::default(), CancellationToken::new()).await;
            let err = match result {
                Ok(_) => panic!("{what}: the agent started"),
                Err(e) => e,
            };
            assert!(err.is_config(), "{what}: {}", chain(&err));
            let text = chain(&err);
            let named_s = named.display().to_string();
            assert!(text.contains(&named_s), "{what}: {text}");
            match attack {
                Attack::OpenDir => assert!(text.contains("chmod go-w"), "{what}: {text}"),
                Attack::Symlink => assert!(text.contains("symbolic link"), "{what}: {text}"),
            }
            assert_eq!(emu.stats().total, 0, "{what}: nothing sent upstream");

            // check: the same rule, an error finding naming the file.
            let (code, report) = run_check(&config_path).await;
            assert_eq!(code, Some(1), "{what}: {report:#}");
            let found = report["findings"].as_array().unwrap().iter().any(|f| {
                f["severity"] == "error" && f["message"].as_str().unwrap().contains(&named_s)
            });
            assert!(found, "{what}: no error naming {named_s}: {report:#}");
            chmod(&dev.path("open"), 0o700);
        }
    }
}

/// A 0644 refresh token used to be retried for ever at the backoff cap by `run` while
/// `check` called it an error; now `run` exits 78 like for a 0644 key.
#[tokio::test]
async fn a_world_readable_refresh_token_exits_78_like_a_key() {
    for file in ["refresh-token", "device-key.pem"] {
        let emu = emulator(Clock::system(), |_| {}).await;
        let dev = Device::new(&emu);
        let config = dev.write_config(&emu, "", "");
        chmod(&dev.path(file), 0o644);
        let out = tokio::process::Command::new(BIN)
            .args(["run", "--config"])
            .arg(&config)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .output()
            .await
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(78), "{file}: {stderr}");
        assert!(stderr.contains("chmod 600"), "{file}: {stderr}");
        assert_eq!(emu.stats().total, 0, "{file}: nothing sent upstream");
        let (code, _) = run_check(&config).await;
        assert_eq!(code, Some(1), "{file}");
    }
}
