//! Bad configs, each run through `asset-agent check --config` and `asset-agent run
//! --config`: the exit code and every name the message gives (the file, the key, the
//! `ASSET_AGENT_*` variable) must stay what they were when the cases were recorded.
//!
//! Each directory under `tests/data/config-errors/` is one case: the files to copy into a
//! fresh temp dir (`$DIR` in a file stands for that dir), a `case` file of directives, and
//! `expected`, recorded from the binary of the day:
//!
//! - `config PATH`: pass `--config $DIR/PATH` (default `agent.toml`);
//! - `cwd-config PATH`: pass `--config PATH` as given, from `$DIR` as working directory;
//! - `env NAME=VALUE`: set in the otherwise empty environment;
//! - `mode PATH OCTAL`: chmod after copying (git does not keep group-write bits);
//!
//! `expected` holds `check CODE`, `run CODE` and one `check-name NAME` or `run-name NAME`
//! line per name the recorded message contains; `check.out` and `run.out` are the recorded
//! texts, for reading. To record again, with the binary to take as the reference:
//! `ASSET_AGENT_RECORD_CONFIG_ERRORS=/path/to/asset-agent cargo test --test config_errors`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_asset-agent");
const RECORD: &str = "ASSET_AGENT_RECORD_CONFIG_ERRORS";
/// No case gets past loading its config; a run still going after this is a failure.
const RUN_LIMIT: Duration = Duration::from_secs(20);

fn cases_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/config-errors")
}

/// One case, copied into a temp dir and ready to run.
struct Case {
    name: String,
    src: PathBuf,
    dir: tempfile::TempDir,
    config: String,
    from_cwd: bool,
    env: Vec<(String, String)>,
}

/// What one command printed and how it ended.
struct Outcome {
    code: Option<i32>,
    text: String,
}

impl Case {
    fn new(src: &Path) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().to_str().unwrap().to_owned();
        copy_tree(src, dir.path(), &real, true);
        let mut case = Self {
            name: src.file_name().unwrap().to_string_lossy().into_owned(),
            src: src.to_owned(),
            dir,
            config: "agent.toml".to_owned(),
            from_cwd: false,
            env: Vec::new(),
        };
        let directives = fs::read_to_string(src.join("case")).unwrap_or_default();
        for line in directives.lines().filter(|l| !l.trim().is_empty()) {
            let (word, rest) = line.split_once(' ').unwrap_or((line, ""));
            match word {
                "config" => case.config = rest.to_owned(),
                "cwd-config" => {
                    case.config = rest.to_owned();
                    case.from_cwd = true;
                }
                "env" => {
                    let (k, v) = rest.split_once('=').unwrap();
                    case.env.push((k.to_owned(), v.to_owned()));
                }
                "mode" => {
                    let (path, mode) = rest.rsplit_once(' ').unwrap();
                    let mode = u32::from_str_radix(mode, 8).unwrap();
                    let path = case.dir.path().join(path);
                    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
                }
                other => panic!("{}: unknown directive {other:?}", case.name),
            }
        }
        case
    }

    // A plain test thread polls the child: there is no runtime here for a sleep to stall.
    #[allow(clippy::disallowed_methods)]
    fn run(&self, command: &str) -> Outcome {
        let dir = self.dir.path();
        let config = if self.from_cwd {
            self.config.clone()
        } else {
            dir.join(&self.config).display().to_string()
        };
        let mut cmd = Command::new(std::env::var(RECORD).unwrap_or_else(|_| BIN.to_owned()));
        cmd.args([command, "--config", &config])
            .current_dir(dir)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", dir.join("home"))
            .env("XDG_RUNTIME_DIR", dir.join("xdg-run"))
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        let start = Instant::now();
        while child.try_wait().unwrap().is_none() {
            if start.elapsed() > RUN_LIMIT {
                child.kill().unwrap();
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let out = child.wait_with_output().unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        // The temp dir's name changes from run to run; the case files call it $DIR.
        let text = text.replace(dir.to_str().unwrap(), "$DIR");
        Outcome {
            code: out.status.code(),
            text,
        }
    }
}

/// Copies `from` into `to`, putting `real` in place of `$DIR` in every file; at the `top`
/// of a case, its own description is left out.
fn copy_tree(from: &Path, to: &Path, real: &str, top: bool) {
    for entry in fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name();
        if top && is_case_meta(&name.to_string_lossy()) {
            continue;
        }
        let target = to.join(&name);
        if entry.file_type().unwrap().is_dir() {
            fs::create_dir(&target).unwrap();
            copy_tree(&entry.path(), &target, real, false);
        } else {
            let bytes = fs::read(entry.path()).unwrap();
            let bytes = match String::from_utf8(bytes) {
                Ok(text) => text.replace("$DIR", real).into_bytes(),
                Err(e) => e.into_bytes(),
            };
            fs::write(&target, bytes).unwrap();
            fs::set_permissions(&target, fs::Permissions::from_mode(0o644)).unwrap();
        }
    }
}

/// The files that describe a case rather than belong to it.
fn is_case_meta(name: &str) -> bool {
    matches!(name, "case" | "expected" | "check.out" | "run.out")
}

/// The names a message gives: paths under `$DIR` and other `*.toml` words, `ASSET_AGENT_*`
/// variables, and keys in backticks.
fn names(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let word_end = |c: char| c.is_whitespace() || matches!(c, ':' | ',' | ';' | ')' | '(' | '"');
    for word in text.split(word_end) {
        let word = word.trim_end_matches('.');
        if word.starts_with("$DIR") || word.ends_with(".toml") {
            out.insert(word.to_owned());
        }
    }
    let mut rest = text;
    while let Some(at) = rest.find("ASSET_AGENT_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_'))
            .unwrap_or(tail.len());
        out.insert(tail[..end].to_owned());
        rest = &tail[end..];
    }
    for (i, quoted) in text.split('`').enumerate() {
        let key_like = !quoted.is_empty()
            && quoted
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-[]".contains(c));
        if i % 2 == 1 && key_like {
            out.insert(quoted.to_owned());
        }
    }
    out
}

fn all_cases() -> Vec<PathBuf> {
    let mut cases: Vec<PathBuf> = fs::read_dir(cases_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    cases.sort();
    cases
}

fn record(case: &Case, outcomes: &[(&str, Outcome)]) {
    let mut expected = String::new();
    for (command, o) in outcomes {
        let code = o.code.map_or("killed".to_owned(), |c| c.to_string());
        expected.push_str(&format!("{command} {code}\n"));
    }
    for (command, o) in outcomes {
        for name in names(&o.text) {
            expected.push_str(&format!("{command}-name {name}\n"));
        }
        fs::write(case.src.join(format!("{command}.out")), &o.text).unwrap();
    }
    fs::write(case.src.join("expected"), expected).unwrap();
}

#[test]
fn bad_configs_keep_their_exit_codes_and_names() {
    let cases = all_cases();
    assert!(cases.len() >= 70, "found only {} cases", cases.len());
    let mut failures = Vec::new();
    for src in &cases {
        let case = Case::new(src);
        let outcomes = [("check", case.run("check")), ("run", case.run("run"))];
        if std::env::var_os(RECORD).is_some() {
            record(&case, &outcomes);
            continue;
        }
        let expected = fs::read_to_string(src.join("expected")).unwrap();
        for line in expected.lines() {
            let (what, want) = line.split_once(' ').unwrap();
            let (command, name) = match what.split_once("-name") {
                Some((command, _)) => (command, Some(want)),
                None => (what, None),
            };
            let (_, got) = outcomes.iter().find(|(c, _)| *c == command).unwrap();
            let ok = match name {
                Some(name) => got.text.contains(name),
                None => got.code.map_or("killed".to_owned(), |c| c.to_string()) == want,
            };
            if !ok {
                failures.push(format!(
                    "{}: `{command}` should give {}, got exit {:?}:\n{}",
                    case.name,
                    name.map_or(format!("exit {want}"), |n| format!("the name {n:?}")),
                    got.code,
                    got.text
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn names_are_found() {
    let text = "error: unknown key `salesforce.instanse_url` in $DIR/agent.d/10-x.toml \
                (expected one of `instance_url`); or set ASSET_AGENT_SALESFORCE__TIMEOUT.";
    let got: Vec<String> = names(text).into_iter().collect();
    assert_eq!(
        got,
        [
            "$DIR/agent.d/10-x.toml",
            "ASSET_AGENT_SALESFORCE__TIMEOUT",
            "instance_url",
            "salesforce.instanse_url"
        ]
    );
}
