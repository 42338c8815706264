//! The rule helpers `validate` is built from: the problem collector and checks that are
//! not specific to one section (required, non-blank, absolute paths, duration ranges,
//! record ids, the instance URL).
//!
//! A helper records what is wrong (naming the key, the source that set it, and the rule)
//! and returns `None` or a placeholder, so validation carries on and reports everything.

use std::collections::HashMap;
use std::net::IpAddr;
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::Url;

use super::error::Error;
use super::origin::{Origins, env_var_for};
use super::units::HumanDuration;

/// What validation needs besides the raw config.
pub(super) struct Context<'a> {
    pub env: &'a HashMap<String, String>,
    pub euid: u32,
    pub machine_id_path: &'a Path,
    pub origins: &'a Origins,
    /// The main config file, if one was looked for, and whether it existed.
    pub main_file: Option<&'a Path>,
    pub main_found: bool,
}

/// Collects problems while validation carries on.
pub(super) struct Check<'a> {
    pub ctx: &'a Context<'a>,
    pub problems: Vec<Error>,
}

/// Checks `instance_url`: https, or http to a loopback host; no credentials, query or
/// fragment; a site path prefix is kept without its trailing slash.
pub(super) fn instance_url(s: &str) -> Result<Url, String> {
    let mut url = Url::parse(s).map_err(|e| {
        if e == super::url::NO_HOST {
            format!("{s:?} has no host")
        } else {
            format!("{s:?} is not a valid URL: {e}")
        }
    })?;
    match url.scheme() {
        "https" => {}
        "http" if is_loopback(&url) => {}
        "http" => {
            return Err(format!(
                "{s:?} uses plain http; use https (http is allowed only for loopback hosts \
                 127.0.0.0/8, ::1 and localhost, e.g. the emulator)"
            ));
        }
        other => return Err(format!("{s:?} has scheme {other:?}; use https")),
    }
    if url.host_str().is_none() {
        return Err(format!("{s:?} has no host"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("must not contain a user name or password".to_owned());
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(format!("{s:?} must not have a query or fragment"));
    }
    let trimmed = url.path().trim_end_matches('/').to_owned();
    url.set_path(&trimmed);
    Ok(url)
}

/// 127.0.0.0/8, ::1 or `localhost` (which resolvers must map to loopback, RFC 6761).
fn is_loopback(url: &Url) -> bool {
    let Some(host) = url.host_str() else {
        return false;
    };
    host.eq_ignore_ascii_case("localhost")
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

// === impl Check ===

impl Check<'_> {
    pub(super) fn into_error(mut self) -> Error {
        if self.problems.len() == 1
            && let Some(one) = self.problems.pop()
        {
            return one;
        }
        Error::Several(self.problems)
    }

    pub(super) fn invalid(&mut self, key: &str, rule: impl Into<String>) {
        self.problems.push(Error::Invalid {
            key: key.to_owned(),
            origin: self.ctx.origins.get(key),
            rule: rule.into(),
        });
    }

    /// A required key is absent. `condition` says when it is required, if not always.
    pub(super) fn missing(&mut self, key: &str, condition: &str) {
        let var = env_var_for(key);
        let mut hint = match self.ctx.main_file {
            Some(f) if self.ctx.main_found => format!("set it in {} or with {var}", f.display()),
            Some(f) => format!(
                "set it in {} (which does not exist) or with {var}",
                f.display()
            ),
            None => format!("set it in the config file or with {var}"),
        };
        // ASSET_AGENT_SALESFORCE_INSTANCE_URL (one underscore) is a likely typo.
        let single = var.replacen("__", "_", 1);
        if self.ctx.env.contains_key(&single) {
            hint.push_str(&format!(
                " ({single} is not read: section and key are separated by two underscores)"
            ));
        }
        self.problems.push(Error::Missing {
            key: key.to_owned(),
            condition: condition.to_owned(),
            hint,
        });
    }

    /// A string that must be present and not blank.
    pub(super) fn required(
        &mut self,
        key: &str,
        value: Option<String>,
        condition: &str,
    ) -> Option<String> {
        match value {
            None => {
                self.missing(key, condition);
                None
            }
            Some(v) => self.not_blank(key, v),
        }
    }

    pub(super) fn not_blank(&mut self, key: &str, value: String) -> Option<String> {
        if value.trim().is_empty() {
            self.invalid(key, "must not be empty");
            None
        } else {
            Some(value)
        }
    }

    /// Paths must be absolute: relative ones would depend on the working directory, which
    /// is `/` under systemd and something else in a shell.
    pub(super) fn path(&mut self, key: &str, value: Option<PathBuf>) -> Option<PathBuf> {
        let p = value?;
        if p.is_absolute() {
            Some(p)
        } else {
            self.invalid(
                key,
                format!("{:?} must be an absolute path", p.display().to_string()),
            );
            None
        }
    }

    pub(super) fn duration(
        &mut self,
        key: &str,
        value: Option<HumanDuration>,
        default: Duration,
        range: RangeInclusive<Duration>,
    ) -> Duration {
        let d = value.map_or(default, |h| h.0);
        if !range.contains(&d) {
            let f = humantime::format_duration;
            self.invalid(
                key,
                format!(
                    "must be between {} and {}, got {}",
                    f(*range.start()),
                    f(*range.end()),
                    f(d)
                ),
            );
        }
        d
    }

    /// A method-specific key set although another method is selected: most likely the
    /// `method` line was forgotten, which would otherwise fail much later and obscurely.
    pub(super) fn unused<T>(
        &mut self,
        key: &str,
        value: &Option<T>,
        selector: &str,
        want: &str,
        got: &str,
    ) {
        if value.is_some() {
            self.invalid(
                key,
                format!("is only used when {selector} = \"{want}\" (it is \"{got}\")"),
            );
        }
    }

    pub(super) fn max_len(&mut self, key: &str, value: Option<&str>, max: usize) {
        if let Some(v) = value {
            let n = v.chars().count();
            if n > max {
                self.invalid(
                    key,
                    format!("is {n} characters long; at most {max} are allowed"),
                );
            }
        }
    }

    /// A Salesforce record id: 15 or 18 letters and digits starting with the object's
    /// key prefix. Catches an Account id pasted where the Contact id belongs.
    pub(super) fn record_id(
        &mut self,
        key: &str,
        value: Option<String>,
        prefix: &str,
        object: &str,
    ) -> Option<String> {
        let id = value?;
        let shape = matches!(id.len(), 15 | 18) && id.chars().all(|c| c.is_ascii_alphanumeric());
        if shape && id.starts_with(prefix) {
            Some(id)
        } else {
            self.invalid(
                key,
                format!("{id:?} is not a 15- or 18-character {object} id (starting with {prefix})"),
            );
            None
        }
    }
}
