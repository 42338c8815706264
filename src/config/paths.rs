//! Default locations of the config file, state directory and socket.
//!
//! Three regimes, tried in order (README, "Configuration"):
//! 1. under systemd, `CONFIGURATION_DIRECTORY`, `STATE_DIRECTORY` and `RUNTIME_DIRECTORY`
//!    (set by `ConfigurationDirectory=` etc.) win, whatever user the service runs as;
//! 2. as root: `/etc/asset-agent`, `/var/lib/asset-agent`, `/run/asset-agent`;
//! 3. as any other user: the XDG base directories, as the `directories` crate computes
//!    them.
//!
//! Everything is read from the environment map handed to `Config::load`, never from the
//! process environment, so tests stay hermetic. Only when that map has neither the XDG
//! variable nor `HOME` do we ask `directories` (which can fall back to the passwd entry).

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use directories::BaseDirs;

/// The config file of the system service.
pub const SYSTEM_CONFIG_FILE: &str = "/etc/asset-agent/agent.toml";
/// The state directory of the system service.
pub const SYSTEM_STATE_DIR: &str = "/var/lib/asset-agent";
/// The socket of the system service.
pub const SYSTEM_SOCKET: &str = "/run/asset-agent/agent.sock";
/// Drop-ins live in this directory next to the main config file.
pub const DROP_IN_DIR: &str = "agent.d";

/// Our directory name under the XDG base directories.
const APP_DIR: &str = "asset-agent";
const CONFIG_FILE_NAME: &str = "agent.toml";
const SOCKET_NAME: &str = "agent.sock";

/// The effective uid of this process, without libc.
///
/// `/proc/self/status` has "Uid: real effective saved fs". The owner of `/proc/self` is the
/// euid too, but becomes root once the process marks itself non-dumpable, so it is only
/// the fallback. If neither can be read we assume "not root", the safer guess: it selects
/// per-user paths, which cannot clobber the system service's files.
pub(crate) fn effective_uid() -> u32 {
    let from_status = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| parse_status_euid(&s));
    from_status
        .or_else(|| std::fs::metadata("/proc/self").ok().map(|m| m.uid()))
        .unwrap_or(u32::MAX)
}

fn parse_status_euid(status: &str) -> Option<u32> {
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(2)?.parse().ok()
}

/// The default config file: `$CONFIGURATION_DIRECTORY/agent.toml`, the system file for root,
/// else `$XDG_CONFIG_HOME/asset-agent/agent.toml`. `None` if no home can be found.
pub(crate) fn config_file(env: &HashMap<String, String>, euid: u32) -> Option<PathBuf> {
    if let Some(dir) = systemd_dir(env, "CONFIGURATION_DIRECTORY") {
        return Some(dir.join(CONFIG_FILE_NAME));
    }
    if euid == 0 {
        return Some(PathBuf::from(SYSTEM_CONFIG_FILE));
    }
    xdg_dir(env, "XDG_CONFIG_HOME", ".config", |b| Some(b.config_dir()))
        .map(|d| d.join(APP_DIR).join(CONFIG_FILE_NAME))
}

/// The default state directory: `$STATE_DIRECTORY`, `/var/lib/asset-agent` for root, else
/// `$XDG_DATA_HOME/asset-agent`.
pub(crate) fn state_dir(env: &HashMap<String, String>, euid: u32) -> Option<PathBuf> {
    if let Some(dir) = systemd_dir(env, "STATE_DIRECTORY") {
        return Some(dir);
    }
    if euid == 0 {
        return Some(PathBuf::from(SYSTEM_STATE_DIR));
    }
    xdg_dir(env, "XDG_DATA_HOME", ".local/share", |b| Some(b.data_dir())).map(|d| d.join(APP_DIR))
}

/// The default socket: `$RUNTIME_DIRECTORY/agent.sock`, `/run/asset-agent/agent.sock` for
/// root, else `$XDG_RUNTIME_DIR/asset-agent/agent.sock`. There is no fallback under `HOME`:
/// a home directory may be on NFS, where sockets do not work.
pub(crate) fn socket(env: &HashMap<String, String>, euid: u32) -> Option<PathBuf> {
    if let Some(dir) = systemd_dir(env, "RUNTIME_DIRECTORY") {
        return Some(dir.join(SOCKET_NAME));
    }
    if euid == 0 {
        return Some(PathBuf::from(SYSTEM_SOCKET));
    }
    let dir = absolute(get(env, "XDG_RUNTIME_DIR")).or_else(|| {
        if env.contains_key("HOME") {
            None
        } else {
            BaseDirs::new().and_then(|b| b.runtime_dir().map(Path::to_path_buf))
        }
    })?;
    Some(dir.join(APP_DIR).join(SOCKET_NAME))
}

/// The directory systemd exports in `var`. With several `StateDirectory=` entries systemd
/// joins them with ':'; the first is ours.
fn systemd_dir(env: &HashMap<String, String>, var: &str) -> Option<PathBuf> {
    let first = env.get(var)?.split(':').next()?;
    absolute(Some(first))
}

/// `$var` if absolute (the XDG spec says to ignore relative values), else `$HOME/fallback`,
/// else what `directories` finds.
fn xdg_dir(
    env: &HashMap<String, String>,
    var: &str,
    fallback: &str,
    from_dirs: fn(&BaseDirs) -> Option<&Path>,
) -> Option<PathBuf> {
    if let Some(dir) = absolute(get(env, var)) {
        return Some(dir);
    }
    if let Some(home) = absolute(get(env, "HOME")) {
        return Some(home.join(fallback));
    }
    BaseDirs::new().and_then(|b| from_dirs(&b).map(Path::to_path_buf))
}

fn get<'a>(env: &'a HashMap<String, String>, var: &str) -> Option<&'a str> {
    env.get(var).map(String::as_str)
}

fn absolute(value: Option<&str>) -> Option<PathBuf> {
    value.map(PathBuf::from).filter(|p| p.is_absolute())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn defaults_per_regime() {
        type Row<'a> = (&'a [(&'a str, &'a str)], u32, &'a str, &'a str, &'a str);
        let rows: &[Row<'_>] = &[
            // root, no systemd
            (
                &[("HOME", "/root")],
                0,
                "/etc/asset-agent/agent.toml",
                "/var/lib/asset-agent",
                "/run/asset-agent/agent.sock",
            ),
            // systemd directories win, even for root
            (
                &[
                    ("CONFIGURATION_DIRECTORY", "/etc/sd-conf"),
                    ("STATE_DIRECTORY", "/var/lib/sd-state:/var/lib/other"),
                    ("RUNTIME_DIRECTORY", "/run/sd-run"),
                ],
                0,
                "/etc/sd-conf/agent.toml",
                "/var/lib/sd-state",
                "/run/sd-run/agent.sock",
            ),
            // a user with XDG variables
            (
                &[
                    ("HOME", "/home/u"),
                    ("XDG_CONFIG_HOME", "/xdg/conf"),
                    ("XDG_DATA_HOME", "/xdg/data"),
                    ("XDG_RUNTIME_DIR", "/run/user/1000"),
                ],
                1000,
                "/xdg/conf/asset-agent/agent.toml",
                "/xdg/data/asset-agent",
                "/run/user/1000/asset-agent/agent.sock",
            ),
            // a user with only HOME (relative XDG values are ignored, per the spec)
            (
                &[
                    ("HOME", "/home/u"),
                    ("XDG_CONFIG_HOME", "rel"),
                    ("XDG_RUNTIME_DIR", "/run/user/1000"),
                ],
                1000,
                "/home/u/.config/asset-agent/agent.toml",
                "/home/u/.local/share/asset-agent",
                "/run/user/1000/asset-agent/agent.sock",
            ),
        ];
        for (vars, euid, conf, state, sock) in rows {
            let e = env(vars);
            assert_eq!(config_file(&e, *euid).unwrap(), Path::new(conf), "{vars:?}");
            assert_eq!(state_dir(&e, *euid).unwrap(), Path::new(state), "{vars:?}");
            assert_eq!(socket(&e, *euid).unwrap(), Path::new(sock), "{vars:?}");
        }
    }

    #[test]
    fn user_without_runtime_dir_has_no_socket_default() {
        assert_eq!(socket(&env(&[("HOME", "/home/u")]), 1000), None);
    }

    #[test]
    fn euid_from_status() {
        let status = "Name:\tx\nUid:\t1000\t0\t0\t0\nGid:\t1\t1\t1\t1\n";
        assert_eq!(parse_status_euid(status), Some(0));
        assert_eq!(parse_status_euid("Name:\tx\n"), None);
        // The real one parses to something.
        assert!(
            std::fs::read_to_string("/proc/self/status")
                .ok()
                .and_then(|s| parse_status_euid(&s))
                .is_some()
        );
    }
}
