//! `SIGHUP` (`systemctl reload asset-agent`): re-read the configuration, all or nothing.
//!
//! The new configuration is loaded exactly as at start (file, drop-ins, environment) and
//! validated in full. Then:
//! - if it is **invalid**, every problem is logged and the running configuration stays;
//! - if it changes only **live** keys ([`LIVE_KEYS`]), they take effect at once;
//! - if it changes any key that needs a **restart**, *nothing* is applied and the log names
//!   those keys: the agent never runs half on the old file and half on the new one.
//!
//! Which keys changed comes from the config types themselves ([`config::changed_keys`]),
//! so a setting added later is named too, never lumped together or missed.
//!
//! What is live, and why the rest is not:
//! - `log.level` is live: raising it to `debug` to diagnose a problem must not cost the
//!   state being diagnosed.
//! - A gateway's children (`[children.NAME]`, the files in `gateway.children_dir`) are
//!   live: the daemon hands the new list to `gateway::Children::sync`, which starts added
//!   children, stops removed ones and restarts changed ones, leaving the others alone.
//!   Every valid reload, an unchanged one too, also tries again the children that could
//!   not be started (a key that would not open: a token not yet plugged in, a PIN file
//!   being fixed).
//! - Everything else needs `systemctl restart asset-agent`. The Salesforce client,
//!   credentials, verifier, identity and key are built once into the refresh loop, the
//!   socket is bound once, and the refresh policy and allow lists are owned by value by
//!   the refresh loop and the API server. A restart costs little: the token cache serves
//!   the last live asset token immediately, so clients see no gap beyond the socket
//!   re-bind (none with socket activation).
//! - Secret *files* (refresh token, client secret, keys) are read when needed or at start;
//!   replacing one's contents is not a config change and needs a restart to take effect.
//!
//! Two ways in: `SIGHUP`, which can only log the outcome, and `POST /v1/reload` (what
//! `asset-agent reload`, the unit's `ExecReload=`, calls), which waits for it, so a refused
//! reload makes `systemctl reload` fail with the reason. The daemon owns the running
//! configuration, so the API (`api::routes::reload`) hands it a request and waits for the
//! report.

use crate::api::routes::reload::Report;

use crate::config::{self, Config};
use crate::logging::{self, LevelChange};

/// Keys a reload applies without a restart.
pub const LIVE_KEYS: &[&str] = &["log.level", "children"];

/// What a reload did.
#[derive(Debug)]
pub enum Outcome {
    /// The file says what is running already.
    Unchanged,
    /// These live keys were applied.
    Applied {
        keys: Vec<&'static str>,
        /// Set when `ASSET_AGENT_LOG`/`RUST_LOG` keep precedence over `log.level`.
        note: Option<String>,
    },
    /// Valid, but these keys need a restart; nothing was applied.
    NeedsRestart { keys: Vec<&'static str> },
    /// The new configuration is invalid; nothing was applied.
    Invalid(Box<config::Error>),
}

// === impl Outcome ===

impl Outcome {
    /// What the API answers.
    pub fn report(&self) -> Report {
        let (accepted, outcome) = match self {
            Outcome::Unchanged => (true, "unchanged"),
            Outcome::Applied { .. } => (true, "applied"),
            Outcome::NeedsRestart { .. } => (false, "needs_restart"),
            Outcome::Invalid(_) => (false, "invalid"),
        };
        Report {
            accepted,
            outcome,
            summary: self.summary(),
        }
    }

    /// One line for the log and for systemd's `STATUS=`.
    pub fn summary(&self) -> String {
        match self {
            Outcome::Unchanged => "configuration reloaded: no changes".to_owned(),
            Outcome::Applied { keys, note } => {
                let mut s = format!("configuration reloaded: applied {}", keys.join(", "));
                if let Some(n) = note {
                    s.push_str(&format!(" ({n})"));
                }
                s
            }
            Outcome::NeedsRestart { keys } => format!(
                "reload refused, running configuration kept: {} changed and need `systemctl restart asset-agent`",
                keys.join(", ")
            ),
            Outcome::Invalid(e) => format!(
                "reload refused, running configuration kept: the new configuration is invalid: {}",
                crate::error::chain(e.as_ref())
            ),
        }
    }
}

/// Reloads: `load` reads the new configuration; `running` is replaced only when every
/// difference is live and was applied.
pub fn reload(
    running: &mut Config,
    load: impl FnOnce() -> Result<Config, config::Error>,
) -> Outcome {
    let new = match load() {
        Ok(c) => c,
        Err(e) => return Outcome::Invalid(Box::new(e)),
    };
    let keys = config::changed_keys(running, &new);
    if keys.is_empty() {
        return Outcome::Unchanged;
    }
    let restart: Vec<&'static str> = keys
        .iter()
        .copied()
        .filter(|k| !LIVE_KEYS.contains(k))
        .collect();
    if !restart.is_empty() {
        return Outcome::NeedsRestart { keys: restart };
    }
    let mut note = None;
    if keys.contains(&"log.level") {
        match logging::set_level(&new.log.level) {
            Ok(LevelChange::Applied) => {}
            Ok(LevelChange::OverriddenBy(var)) => {
                note = Some(format!("{var} is set and still decides the log filter"));
            }
            Err(e) => note = Some(crate::error::chain(&e)),
        }
    }
    *running = new;
    Outcome::Applied { keys, note }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::LoadOptions;
    use std::collections::HashMap;

    const BASE: &str = r#"
[salesforce]
instance_url = "https://acme.my.salesforce.com"
client_id = "3MVG9abc"
[asset]
device_id = "d1"
name = "Pump 7"
serial_number = "00123"
[state]
dir = "/var/lib/asset-agent"
[api]
socket = "/run/asset-agent/agent.sock"
"#;

    fn load(toml: &str) -> Result<Config, config::Error> {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("agent.toml");
        std::fs::write(&p, toml).unwrap();
        let mut c = Config::load(&LoadOptions::new(Some(p), HashMap::new()))?;
        c.files.clear();
        Ok(c)
    }

    #[test]
    fn unchanged_and_live_changes() {
        let mut running = load(BASE).unwrap();
        assert!(matches!(
            reload(&mut running, || load(BASE)),
            Outcome::Unchanged
        ));
        let debug = format!("{BASE}\n[log]\nlevel = \"debug\"\n");
        let out = reload(&mut running, || load(&debug));
        let Outcome::Applied { keys, .. } = &out else {
            panic!("{out:?}")
        };
        assert_eq!(keys, &["log.level"]);
        assert_eq!(running.log.level, "debug");
    }

    #[test]
    fn restart_keys_apply_nothing() {
        let mut running = load(BASE).unwrap();
        let before = running.clone();
        let changed = format!(
            "{}\n[token]\nrefresh_at = \"50%\"\n[log]\nlevel = \"debug\"\n",
            BASE.replace("Pump 7", "Pump 8")
        );
        let out = reload(&mut running, || load(&changed));
        let Outcome::NeedsRestart { keys } = &out else {
            panic!("{out:?}")
        };
        assert_eq!(keys, &["asset.name", "token.refresh_at"]);
        assert_eq!(running, before, "nothing applied, not even log.level");
        assert!(
            out.summary().contains("systemctl restart"),
            "{}",
            out.summary()
        );
    }

    #[test]
    fn children_are_live_but_not_with_a_restart_key() {
        let mut running = load(BASE).unwrap();
        let child = "\n[children.pump-7]\ndevice_id = \"c1\"\nname = \"Pump 7b\"\nserial_number = \"C-1\"\n";
        let added = format!("{BASE}{child}");
        let out = reload(&mut running, || load(&added));
        let Outcome::Applied { keys, .. } = &out else {
            panic!("{out:?}")
        };
        assert_eq!(keys, &["children"]);
        assert_eq!(running.children.len(), 1);
        // With a restart key beside it, nothing is applied, the child neither.
        let both = format!(
            "{}\n[token]\nrefresh_at = \"50%\"\n",
            BASE.replace("d1", "d2")
        );
        let out = reload(&mut running, || load(&both));
        assert!(matches!(out, Outcome::NeedsRestart { .. }), "{out:?}");
        assert_eq!(running.children.len(), 1);
    }

    #[test]
    fn invalid_config_is_refused_with_every_problem() {
        let mut running = load(BASE).unwrap();
        let before = running.clone();
        let bad = BASE
            .replace("https://", "http://")
            .replace("[asset]", "[asset]\nbogus = 1");
        let out = reload(&mut running, || load(&bad));
        assert!(matches!(out, Outcome::Invalid(_)), "{out:?}");
        assert_eq!(running, before);
        assert!(out.summary().contains("bogus"), "{}", out.summary());
    }
}
