//! Snapshot tests of `--help` for every command: the binary's text is compared exactly
//! with tests/snapshots/help/<words>.txt (`asset-agent.txt` for the top level,
//! `key-show.txt` for `asset-agent key show`). A command without a snapshot, or a snapshot
//! without a command, fails.
//!
//! After a deliberate change to the help, regenerate them and review the diff:
//!
//! ```sh
//! UPDATE_SNAPSHOTS=1 cargo test --test cli_help
//! ```

#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_asset-agent");

fn snapshot_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/snapshots/help")
}

fn updating() -> bool {
    std::env::var_os("UPDATE_SNAPSHOTS").is_some_and(|v| v == "1")
}

/// Every command's words after `asset-agent`, from clap's own tree (`[]` for the top
/// level), `help` subcommands included.
fn every_command() -> Vec<Vec<String>> {
    fn visit(cmd: &clap::Command, path: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
        out.push(path.clone());
        if cmd.get_name() == "help" {
            // clap gives `help` a copy of its siblings, to name them; not commands.
            return;
        }
        for sub in cmd.get_subcommands() {
            path.push(sub.get_name().to_owned());
            visit(sub, path, out);
            path.pop();
        }
    }
    let mut root = asset_agent::cli::command();
    root.build();
    let mut out = Vec::new();
    visit(&root, &mut Vec::new(), &mut out);
    out
}

fn file_name(path: &[String]) -> String {
    if path.is_empty() {
        "asset-agent.txt".to_owned()
    } else {
        format!("{}.txt", path.join("-"))
    }
}

/// The binary's answer to `args`: (exit code, stdout, stderr).
fn run(args: &[String]) -> (Option<i32>, String, String) {
    let out = Command::new(BIN)
        .args(args)
        .env_remove("ASSET_AGENT_CONFIG")
        .env_remove("ASSET_AGENT_SOCKET")
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

/// The help of the command at `path`: `--help`, or for a `help` subcommand (whose
/// `--help` is a subcommand name) `help help`, which prints it.
fn help_args(path: &[String]) -> Vec<String> {
    let mut args = path.to_vec();
    if path.last().is_some_and(|w| w == "help") {
        args.push("help".to_owned());
    } else {
        args.push("--help".to_owned());
    }
    args
}

#[test]
fn help_of_every_command_matches_its_snapshot() {
    let dir = snapshot_dir();
    let mut differ = Vec::new();
    for path in every_command() {
        let args = help_args(&path);
        let (code, stdout, stderr) = run(&args);
        assert_eq!(code, Some(0), "{args:?}: {stderr}");
        assert!(stderr.is_empty(), "{args:?}: {stderr}");
        let file = dir.join(file_name(&path));
        if updating() {
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(&file, &stdout).unwrap();
            continue;
        }
        match std::fs::read_to_string(&file) {
            Ok(want) if want == stdout => {}
            Ok(want) => differ.push(format!(
                "{args:?} differs from {}:\n--- want\n{want}--- got\n{stdout}",
                file.display()
            )),
            Err(e) => differ.push(format!(
                "{args:?} has no snapshot {} ({e}); run UPDATE_SNAPSHOTS=1 cargo test --test cli_help",
                file.display()
            )),
        }
    }
    assert!(differ.is_empty(), "{}", differ.join("\n"));
}

#[test]
fn every_snapshot_is_a_command_and_every_command_has_one() {
    let commands: BTreeSet<String> = every_command().iter().map(|p| file_name(p)).collect();
    // The top level, key, help at both levels, and the eleven commands.
    assert_eq!(commands.len(), 15, "{commands:?}");
    if updating() {
        return;
    }
    let files: BTreeSet<String> = std::fs::read_dir(snapshot_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(
        files, commands,
        "snapshots on the left, commands on the right"
    );
}

/// `-h`, `--help` and `help WORDS` print the same text.
#[test]
fn short_long_and_subcommand_help_agree() {
    for path in every_command() {
        if path.iter().any(|w| w == "help") {
            continue;
        }
        let (_, long, _) = run(&help_args(&path));
        let mut short = path.clone();
        short.push("-h".to_owned());
        assert_eq!(run(&short).1, long, "{short:?}");
        let mut topic = vec!["help".to_owned()];
        topic.extend(path.iter().cloned());
        let (code, text, stderr) = run(&topic);
        assert_eq!(code, Some(0), "{topic:?}: {stderr}");
        assert_eq!(text, long, "{topic:?}");
    }
}
