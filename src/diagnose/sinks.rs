//! The `sink` check: each `[[sink]]`'s path (the rule `run` applies), group, an existing
//! file's owner and mode, and its rotation hook's PID file or program.

use std::fs;
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};

use super::Finding;
use crate::config::{Config, Group, Hook, Sink};
use crate::sink;

pub(super) fn check(config: &Config) -> Vec<Finding> {
    let euid = rustix::process::geteuid().as_raw();
    // Run as root, the state directory's owner is the service user the agent runs as.
    let service = fs::metadata(&config.state.dir).map_or(euid, |m| m.uid());
    config
        .sinks
        .iter()
        .flat_map(|s| one(s, &[euid, service, 0]))
        .collect()
}

fn one(s: &Sink, trusted: &[u32]) -> Vec<Finding> {
    let p = s.path.display();
    let mut out = Vec::new();
    if let Err(e) = sink::check_path(&s.path, trusted) {
        let text = e.to_string();
        let (message, fix) = match text.split_once(": ") {
            Some((m, f)) => (m.to_owned(), f.to_owned()),
            None => (text.clone(), "choose another sink.path".to_owned()),
        };
        out.push(Finding::error("sink", message, fix));
    }
    let gid = match &s.group {
        None => None,
        Some(Group::Id(g)) => Some(*g),
        Some(Group::Name(n)) => match sink::group_by_name(n) {
            Some(g) => Some(g),
            None => {
                out.push(Finding::error(
                    "sink",
                    format!("sink {p}: group {n:?} is not in /etc/group"),
                    format!("create the group (groupadd {n}) or set sink.group to a gid"),
                ));
                None
            }
        },
    };
    if let Ok(meta) = fs::symlink_metadata(&s.path)
        && meta.is_file()
    {
        let mode = meta.permissions().mode() & 0o7777;
        let wrong_group = gid.is_some_and(|g| g != meta.gid());
        if mode != s.mode || wrong_group {
            out.push(Finding::warning(
                "sink",
                format!(
                    "sink {p} is mode {mode:04o}, group {} (configured: {:04o}{})",
                    meta.gid(),
                    s.mode,
                    gid.map(|g| format!(", group {g}")).unwrap_or_default()
                ),
                "nothing to do if the agent is not running: it rewrites the file with the configured mode and group on the next token",
            ));
        }
    }
    if let Some(Hook::PidFile { path, .. }) = &s.hook {
        let trust = trusted
            .iter()
            .fold(crate::secure_path::Trust::process(), |t, u| t.and(*u));
        match crate::secure_path::open_through_trusted_links("PID file", path, &trust) {
            Ok(_) | Err(crate::secure_path::Error::Inspect { .. }) => {}
            Err(e) => out.push(Finding::error(
                "sink",
                format!("sink {p}: sink.pid_file: {e}"),
                "point sink.pid_file at a path with no symbolic link in a directory others control",
            )),
        }
    }
    match &s.hook {
        Some(Hook::PidFile { path, .. }) => match fs::symlink_metadata(path) {
            Err(_) => out.push(Finding::warning(
                "sink",
                format!("sink {p}: PID file {} does not exist (yet)", path.display()),
                "start the process that writes it, or fix sink.pid_file",
            )),
            Ok(m) if m.file_type().is_symlink() || !m.is_file() => out.push(Finding::error(
                "sink",
                format!(
                    "sink {p}: PID file {} is not a regular file",
                    path.display()
                ),
                "point sink.pid_file at the PID file itself",
            )),
            Ok(m) if m.mode() & 0o022 != 0 || !trusted.contains(&m.uid()) => {
                out.push(Finding::error(
                    "sink",
                    format!(
                        "sink {p}: PID file {} may be rewritten by others (uid {}, mode {:04o}), who would choose what the agent signals",
                        path.display(),
                        m.uid(),
                        m.mode() & 0o7777
                    ),
                    format!("chown root {} && chmod go-w {}", path.display(), path.display()),
                ));
            }
            Ok(_) => {}
        },
        Some(Hook::Command { argv, .. }) => {
            let prog = argv.first().map(String::as_str).unwrap_or_default();
            let runnable = fs::metadata(prog).is_ok_and(|m| m.is_file() && m.mode() & 0o111 != 0);
            if !runnable {
                out.push(Finding::error(
                    "sink",
                    format!("sink {p}: hook program {prog} is not an executable file"),
                    "install it or fix sink.command",
                ));
            }
        }
        Some(Hook::Unit { .. }) | None => {}
    }
    if out.is_empty() {
        out.push(Finding::ok(
            "sink",
            format!(
                "sink {p} ({}, mode {:04o}) can be written",
                s.format.name(),
                s.mode
            ),
        ));
    }
    out
}
