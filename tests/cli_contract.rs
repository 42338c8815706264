//! The command line's contract, as the hand-written parser kept it before clap came back:
//! for every invocation in tests/data/cli/contract.json (help, version, each kind of
//! mistake, bad configs and bad URLs), the binary exits with the same code, speaks on the
//! same stream, and its text still gives every name the old text gave (options,
//! placeholders, subcommands, environment variables, the offending argument, config keys).
//! tests/data/cli/record.py recorded the file and says how.

#![allow(clippy::unwrap_used)]

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_asset-agent");
const CONTRACT: &str = include_str!("data/cli/contract.json");

#[derive(serde::Deserialize)]
struct Case {
    args: Vec<String>,
    #[serde(default)]
    env: std::collections::BTreeMap<String, String>,
    /// A config file's text; `{config}` in `args` is its path.
    config: Option<String>,
    code: i32,
    /// "stdout", "stderr", "both" or "none": which stream had text.
    stream: String,
    names: Vec<String>,
}

#[test]
fn every_invocation_keeps_its_exit_code_stream_and_names() {
    let cases: Vec<Case> = serde_json::from_str(CONTRACT).unwrap();
    assert!(cases.len() > 100, "the contract lost its cases");
    let home = tempfile::tempdir().unwrap();
    let mut broken = Vec::new();
    for case in &cases {
        let config = home.path().join("agent.toml");
        if let Some(text) = &case.config {
            std::fs::write(&config, text).unwrap();
        }
        let args: Vec<&str> = case
            .args
            .iter()
            .map(|a| {
                if a == "{config}" {
                    config.to_str().unwrap()
                } else {
                    a.as_str()
                }
            })
            .collect();
        let out = Command::new(BIN)
            .args(&args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", home.path())
            .envs(&case.env)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        let stream = match (stdout.is_empty(), stderr.is_empty()) {
            (false, true) => "stdout",
            (true, false) => "stderr",
            (false, false) => "both",
            (true, true) => "none",
        };
        let text = format!("{stdout}{stderr}");
        let missing: Vec<&String> = case
            .names
            .iter()
            .filter(|n| !text.contains(n.as_str()))
            .collect();
        if out.status.code() != Some(case.code) || stream != case.stream || !missing.is_empty() {
            broken.push(format!(
                "{:?} {:?}: exit {:?} (was {}), on {stream} (was {}), missing {missing:?}:\n{text}",
                case.args,
                case.env,
                out.status.code(),
                case.code,
                case.stream
            ));
        }
    }
    assert!(broken.is_empty(), "{}", broken.join("\n---\n"));
}
