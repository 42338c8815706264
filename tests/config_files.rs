//! Every TOML file shipped under `config/` must load and validate, so an example can never
//! rot. `config/agent.toml` must also document every key the schema knows, and the
//! defaults it shows in comments must be the real ones.

// Test helpers outside #[test] functions: unwrap and panic are the point here.
#![allow(clippy::unwrap_used, clippy::panic)]

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};

use asset_agent::config::{Config, Error, LoadOptions};

/// A fixed environment: a non-root user whose home and runtime dir are in `dir`, and a
/// machine id in a temp file. Nothing comes from the real environment.
fn options(dir: &Path, path: PathBuf, euid: u32) -> LoadOptions {
    let machine_id = dir.join("machine-id");
    fs::write(&machine_id, "0123456789abcdef0123456789abcdef\n").unwrap();
    let env: HashMap<String, String> = [
        ("HOME", dir.join("home")),
        ("XDG_RUNTIME_DIR", dir.join("run")),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.display().to_string()))
    .collect();
    LoadOptions {
        path: Some(path),
        env,
        euid: Some(euid),
        machine_id_path: machine_id,
    }
}

fn config_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("config")
}

fn toml_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            toml_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "toml") {
            out.push(path);
        }
    }
}

#[test]
fn every_shipped_file_loads() {
    let mut files = Vec::new();
    toml_files(&config_dir(), &mut files);
    files.sort();
    assert!(
        files.len() >= 6,
        "expected agent.toml and the examples, found {files:?}"
    );
    let tmp = tempfile::tempdir().unwrap();
    for file in &files {
        match Config::load(&options(tmp.path(), file.clone(), 1000)) {
            Ok(config) => {
                assert_eq!(config.files.first(), Some(file));
                assert!(!config.redacted_summary().is_empty());
            }
            Err(e) => panic!("{} does not load: {e}", file.display()),
        }
    }
}

/// The key names the schema accepts in `section` ("" for the top level), taken from the
/// unknown-key error, so a key added to the schema but not to agent.toml fails this test.
fn schema_keys(tmp: &Path, section: &str) -> Vec<String> {
    let text = if section.is_empty() {
        "zzz_not_a_key = 1\n".to_owned()
    } else if ARRAYS.contains(&section) {
        format!("[[{section}]]\nzzz_not_a_key = 1\n")
    } else {
        format!("[{section}]\nzzz_not_a_key = 1\n")
    };
    let path = tmp.join(format!("probe-{section}.toml"));
    fs::write(&path, text).unwrap();
    match Config::load(&options(tmp, path, 1000)) {
        Err(Error::UnknownKey { expected, .. }) => expected
            .split('`')
            .skip(1)
            .step_by(2)
            .map(str::to_owned)
            .collect(),
        other => panic!("expected an unknown-key error, got {other:?}"),
    }
}

/// Arrays of tables: documented as a commented-out `# [[name]]` example.
const ARRAYS: [&str; 1] = ["sink"];

/// Splits agent.toml into (section, line) pairs.
fn lines_by_section(text: &str) -> Vec<(String, &str)> {
    let mut section = String::new();
    let mut out = Vec::new();
    for line in text.lines() {
        let array = line.strip_prefix("# [[").and_then(|l| l.strip_suffix("]]"));
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.to_owned();
        } else if let Some(name) = array {
            section = name.to_owned();
        }
        out.push((section.clone(), line));
    }
    out
}

#[test]
fn agent_toml_documents_every_key() {
    let tmp = tempfile::tempdir().unwrap();
    let text = fs::read_to_string(config_dir().join("agent.toml")).unwrap();
    let lines = lines_by_section(&text);
    let sections = schema_keys(tmp.path(), "");
    assert!(sections.contains(&"salesforce".to_owned()), "{sections:?}");
    for section in &sections {
        if section == "children" {
            continue;
        }
        assert!(
            text.contains(&format!("\n[{section}]\n"))
                || ARRAYS.contains(&section.as_str())
                    && text.contains(&format!("\n# [[{section}]]\n")),
            "[{section}] missing"
        );
        let keys = schema_keys(tmp.path(), section);
        assert!(!keys.is_empty(), "no keys found for [{section}]");
        for key in keys {
            let documented = lines.iter().any(|(s, l)| {
                s == section
                    && (l.starts_with(&format!("{key} = "))
                        || l.starts_with(&format!("# {key} = ")))
            });
            assert!(
                documented,
                "{section}.{key} is not documented in agent.toml"
            );
        }
    }
}

/// `[children.NAME]` tables are optional, so agent.toml documents them commented out:
/// every key a child table accepts must appear there as `# key = `.
#[test]
fn agent_toml_documents_every_child_key() {
    let tmp = tempfile::tempdir().unwrap();
    let text = fs::read_to_string(config_dir().join("agent.toml")).unwrap();
    let keys = schema_keys(tmp.path(), "children.probe");
    assert!(keys.contains(&"device_id".to_owned()), "{keys:?}");
    let child = &text[text.find("\n[gateway]\n").expect("[gateway] documented")..];
    for key in keys {
        let documented = child.lines().any(|l| {
            l.starts_with(&format!("# {key} = ")) || l == format!("# [children.pump-7.{key}]")
        });
        assert!(
            documented,
            "children.NAME.{key} is not documented in agent.toml"
        );
    }
}

/// Uncommenting the `# key = default` lines must not change the loaded config.
#[test]
fn agent_toml_defaults_are_true() {
    const DEFAULTED: &[(&str, &str)] = &[
        ("salesforce", "timeout"),
        ("auth", "method"),
        ("auth", "refresh_token_file"),
        ("key", "path"),
        ("key", "bits"),
        ("token", "refresh_at"),
        ("token", "verify"),
        ("token", "leeway"),
        ("token", "backoff_max"),
        ("token", "min_ttl_wait"),
        ("token", "refresh"),
        ("token", "demand_window"),
        ("token", "ready_timeout"),
        ("state", "dir"),
        ("api", "socket"),
        ("api", "max_connections"),
        ("api", "max_connections_per_uid"),
        ("mqtt", "topic_prefix"),
        ("mqtt", "keep_alive"),
        ("mqtt", "reconnect_on_rotation"),
        ("mqtt", "reconnect_margin"),
        ("mqtt", "heartbeat"),
        ("mqtt", "queue"),
        ("mqtt", "backoff_max"),
        ("log", "level"),
        ("log", "format"),
    ];
    let tmp = tempfile::tempdir().unwrap();
    let shipped = config_dir().join("agent.toml");
    let text = fs::read_to_string(&shipped).unwrap();
    let mut found = Vec::new();
    let mut uncommented = String::new();
    for (section, line) in lines_by_section(&text) {
        let default = DEFAULTED
            .iter()
            .find(|(s, k)| *s == section && line.starts_with(&format!("# {k} = ")));
        match default {
            Some(sk) => {
                found.push(*sk);
                uncommented.push_str(&line[2..]);
            }
            None => uncommented.push_str(line),
        }
        uncommented.push('\n');
    }
    for sk in DEFAULTED {
        assert!(
            found.contains(sk),
            "no `# {} = ...` default line in [{}]",
            sk.1,
            sk.0
        );
    }
    let explicit = tmp.path().join("explicit.toml");
    fs::write(&explicit, uncommented).unwrap();
    // As root, so the documented system paths are the defaults.
    let a = Config::load(&options(tmp.path(), shipped, 0)).unwrap();
    let mut b = Config::load(&options(tmp.path(), explicit, 0)).unwrap();
    b.files = a.files.clone();
    // The children directory defaults to children.d next to the file that was read.
    assert_eq!(b.gateway.children_dir, Some(tmp.path().join("children.d")));
    b.gateway.children_dir = a.gateway.children_dir.clone();
    assert_eq!(a, b);
}
