//! `[mqtt]`: the optional MQTT uplink (src/mqtt). Off unless `mqtt.url` is set.
//!
//! The other keys may be set without `url` (a site-wide drop-in can carry the tuning while
//! a per-device one sets the broker); they then have no effect.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::Url;

use super::rules::Check;

/// Default for `mqtt.topic_prefix`.
pub const DEFAULT_MQTT_TOPIC_PREFIX: &str = "devices";
/// Default for `mqtt.keep_alive`.
pub const DEFAULT_MQTT_KEEP_ALIVE: Duration = Duration::from_secs(30);
/// Default for `mqtt.reconnect_margin`: how long before the session token's `exp` the
/// session is re-established with a fresh token.
pub const DEFAULT_MQTT_RECONNECT_MARGIN: Duration = Duration::from_secs(10);
/// Default for `mqtt.heartbeat`.
pub const DEFAULT_MQTT_HEARTBEAT: Duration = Duration::from_secs(60);
/// Default for `mqtt.queue`: local publishes waiting for the broker.
pub const DEFAULT_MQTT_QUEUE: usize = 64;
/// Largest `mqtt.queue`.
pub const MAX_MQTT_QUEUE: usize = 10_000;
/// Default for `mqtt.backoff_max`.
pub const DEFAULT_MQTT_BACKOFF_MAX: Duration = Duration::from_secs(60);

/// `[mqtt]`, validated: present only when `mqtt.url` is set.
#[derive(Clone, Debug, PartialEq)]
pub struct Mqtt {
    /// The broker, `mqtt://` (loopback only: the password is the asset token) or
    /// `mqtts://`, as written.
    pub url: Url,
    /// As rumqttc wants it: a name, an IPv4 address or a bracketed IPv6 address.
    pub host: String,
    /// Default 1883 for `mqtt://`, 8883 for `mqtts://`.
    pub port: u16,
    /// Whether the scheme is `mqtts`.
    pub tls: bool,
    /// Default: `asset.device_id`.
    pub client_id: String,
    /// Default: `asset.device_id`. The password is always the current asset token.
    pub username: String,
    /// The agent's own topics are `{topic_prefix}/{device_id}/agent/...`.
    pub topic_prefix: String,
    /// Local apps may publish only to topics starting with this.
    /// Default `{topic_prefix}/{device_id}/`.
    pub publish_prefix: String,
    /// Extra trust anchors (PEM) for the broker, added to the system (or bundled) roots.
    pub ca_file: Option<PathBuf>,
    /// A TLS client certificate chain (PEM) and its key, for brokers that want both.
    pub client_cert: Option<ClientCert>,
    pub keep_alive: Duration,
    pub reconnect_margin: Duration,
    /// `mqtt.reconnect_on_rotation`: end the session `reconnect_margin` before its token's
    /// `exp` and log in again with the fresh token. Only brokers that cut sessions at `exp`
    /// need it; otherwise a new token is used at the next (unplanned) reconnect.
    pub reconnect_on_rotation: bool,
    pub heartbeat: Duration,
    /// Capacity of the local publish queue.
    pub queue: usize,
    /// Ceiling of the backoff between connection attempts.
    pub backoff_max: Duration,
}

/// `mqtt.client_cert_file` and `mqtt.client_key_file`.
#[derive(Clone, Debug, PartialEq)]
pub struct ClientCert {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

/// `[mqtt]` as written.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields, default, expecting = "the [mqtt] table")]
pub(crate) struct RawMqtt {
    #[serde(deserialize_with = "super::units::strict_string")]
    pub url: Option<String>,
    #[serde(deserialize_with = "super::units::strict_string")]
    pub client_id: Option<String>,
    #[serde(deserialize_with = "super::units::strict_string")]
    pub username: Option<String>,
    #[serde(deserialize_with = "super::units::strict_string")]
    pub topic_prefix: Option<String>,
    #[serde(deserialize_with = "super::units::strict_string")]
    pub publish_prefix: Option<String>,
    #[serde(deserialize_with = "super::units::strict_path")]
    pub ca_file: Option<PathBuf>,
    #[serde(deserialize_with = "super::units::strict_path")]
    pub client_cert_file: Option<PathBuf>,
    #[serde(deserialize_with = "super::units::strict_path")]
    pub client_key_file: Option<PathBuf>,
    pub keep_alive: Option<super::units::HumanDuration>,
    pub reconnect_margin: Option<super::units::HumanDuration>,
    pub reconnect_on_rotation: Option<bool>,
    pub heartbeat: Option<super::units::HumanDuration>,
    pub queue: Option<usize>,
    pub backoff_max: Option<super::units::HumanDuration>,
}

// === impl Check ===

impl Check<'_> {
    /// Validates `[mqtt]`; `device_id` is `None` when `[asset]` was itself invalid.
    pub(super) fn mqtt(&mut self, raw: RawMqtt, device_id: Option<&str>) -> Option<Mqtt> {
        let secs = Duration::from_secs;
        let keep_alive = self.duration(
            "mqtt.keep_alive",
            raw.keep_alive,
            DEFAULT_MQTT_KEEP_ALIVE,
            secs(5)..=secs(1200),
        );
        let reconnect_margin = self.duration(
            "mqtt.reconnect_margin",
            raw.reconnect_margin,
            DEFAULT_MQTT_RECONNECT_MARGIN,
            secs(1)..=secs(600),
        );
        let heartbeat = self.duration(
            "mqtt.heartbeat",
            raw.heartbeat,
            DEFAULT_MQTT_HEARTBEAT,
            secs(1)..=secs(86_400),
        );
        let backoff_max = self.duration(
            "mqtt.backoff_max",
            raw.backoff_max,
            DEFAULT_MQTT_BACKOFF_MAX,
            secs(1)..=secs(3600),
        );
        let queue = raw.queue.unwrap_or(DEFAULT_MQTT_QUEUE);
        if !(1..=MAX_MQTT_QUEUE).contains(&queue) {
            self.invalid(
                "mqtt.queue",
                format!("must be between 1 and {MAX_MQTT_QUEUE}, got {queue}"),
            );
        }
        let topic_prefix = raw
            .topic_prefix
            .unwrap_or_else(|| DEFAULT_MQTT_TOPIC_PREFIX.to_owned());
        if let Err(rule) = topic_level_path(&topic_prefix) {
            self.invalid("mqtt.topic_prefix", rule);
        }
        let ca_file = self.path("mqtt.ca_file", raw.ca_file);
        let cert = self.path("mqtt.client_cert_file", raw.client_cert_file);
        let key = self.path("mqtt.client_key_file", raw.client_key_file);
        let client_cert = match (cert, key) {
            (Some(cert_file), Some(key_file)) => Some(ClientCert {
                cert_file,
                key_file,
            }),
            (Some(_), None) => {
                self.missing(
                    "mqtt.client_key_file",
                    " (required with mqtt.client_cert_file)",
                );
                None
            }
            (None, Some(_)) => {
                self.missing(
                    "mqtt.client_cert_file",
                    " (required with mqtt.client_key_file)",
                );
                None
            }
            (None, None) => None,
        };
        let url = raw.url?;
        let (url, host, port, tls) = match broker_url(&url) {
            Ok(parts) => parts,
            Err(rule) => {
                self.invalid("mqtt.url", rule);
                return None;
            }
        };
        if !tls && (ca_file.is_some() || client_cert.is_some()) {
            self.invalid(
                "mqtt.url",
                "is mqtt:// (no TLS) but mqtt.ca_file or a client certificate is set; use mqtts://",
            );
        }
        let device_id = device_id?;
        let one_level = if device_id.contains('/') {
            Err(format!("{device_id:?} must not contain '/'"))
        } else {
            topic_level_path(device_id)
        };
        if let Err(rule) = one_level {
            self.invalid(
                "asset.device_id",
                format!("is part of the MQTT topics when mqtt.url is set: {rule}"),
            );
        }
        let client_id = match raw.client_id {
            Some(id) => self.not_blank("mqtt.client_id", id)?,
            None => device_id.to_owned(),
        };
        let username = match raw.username {
            Some(u) => self.not_blank("mqtt.username", u)?,
            None => device_id.to_owned(),
        };
        let publish_prefix = raw
            .publish_prefix
            .unwrap_or_else(|| format!("{topic_prefix}/{device_id}/"));
        if publish_prefix.is_empty() {
            self.invalid("mqtt.publish_prefix", "must not be empty");
        } else if publish_prefix.contains(['+', '#', '\0']) || publish_prefix.starts_with('$') {
            self.invalid(
                "mqtt.publish_prefix",
                "must not contain '+', '#' or NUL nor start with '$'",
            );
        }
        Some(Mqtt {
            url,
            host,
            port,
            tls,
            client_id,
            username,
            topic_prefix,
            publish_prefix,
            ca_file,
            client_cert,
            keep_alive,
            reconnect_margin,
            reconnect_on_rotation: raw.reconnect_on_rotation.unwrap_or(false),
            heartbeat,
            queue,
            backoff_max,
        })
    }
}

/// Checks one or more topic levels that become part of the agent's topic names: not empty,
/// no wildcard, no NUL, no leading or trailing `/`, not a `$` system topic.
fn topic_level_path(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err("must not be empty".to_owned());
    }
    if s.contains(['+', '#', '\0']) {
        return Err(format!("{s:?} must not contain '+', '#' or NUL"));
    }
    if s.starts_with('/') || s.ends_with('/') || s.contains("//") {
        return Err(format!(
            "{s:?} must not start or end with '/' or contain '//'"
        ));
    }
    if s.starts_with('$') {
        return Err(format!("{s:?} must not start with '$'"));
    }
    Ok(())
}

/// Parses the broker URL into (url, host, port, tls). Plain `mqtt://` is allowed only to a
/// loopback host, because the MQTT password is the asset token: a bearer credential must
/// not cross a network in clear text.
fn broker_url(s: &str) -> Result<(Url, String, u16, bool), String> {
    let url = Url::parse(s).map_err(|e| format!("{s:?} is not a valid URL: {e}"))?;
    let tls = match url.scheme() {
        "mqtts" => true,
        "mqtt" => false,
        other => {
            return Err(format!(
                "{s:?} has scheme {other:?}; use mqtts:// or mqtt://"
            ));
        }
    };
    // An IPv6 literal keeps its brackets: rumqttc joins host and port as "{host}:{port}".
    let host = match url.host_str() {
        Some(h) if !h.is_empty() => h,
        _ => return Err(format!("{s:?} has no host")),
    };
    if !url.username().is_empty() || url.password().is_some() {
        return Err("must not contain a user name or password".to_owned());
    }
    if !matches!(url.path(), "" | "/") || url.query().is_some() || url.fragment().is_some() {
        return Err(format!("{s:?} must not have a path, query or fragment"));
    }
    let loopback = host.eq_ignore_ascii_case("localhost")
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    if !tls && !loopback {
        return Err(format!(
            "{s:?} would send the asset token in clear text; use mqtts:// (mqtt:// is allowed \
             only for loopback hosts)"
        ));
    }
    let port = url.port().unwrap_or(if tls { 8883 } else { 1883 });
    let host = host.to_owned();
    Ok((url, host, port, tls))
}

#[cfg(test)]
mod tests {
    use super::super::tests::{Fixture, MINIMAL, err_text};
    use super::*;

    fn load(extra: &str) -> Result<super::super::Config, super::super::Error> {
        Fixture::new().load(&format!("{MINIMAL}\n[mqtt]\n{extra}\n"))
    }

    #[test]
    fn off_without_url_and_defaults_with_it() {
        assert_eq!(load("queue = 5").unwrap().mqtt, None);
        let m = load(r#"url = "mqtts://broker.example.com""#)
            .unwrap()
            .mqtt
            .unwrap();
        let id = super::super::tests::MACHINE_ID;
        assert_eq!(
            (m.host.as_str(), m.port, m.tls),
            ("broker.example.com", 8883, true)
        );
        assert_eq!((m.client_id.as_str(), m.username.as_str()), (id, id));
        assert_eq!(m.topic_prefix, "devices");
        assert_eq!(m.publish_prefix, format!("devices/{id}/"));
        assert_eq!(m.keep_alive, DEFAULT_MQTT_KEEP_ALIVE);
        assert_eq!(m.reconnect_margin, DEFAULT_MQTT_RECONNECT_MARGIN);
        assert_eq!(m.heartbeat, DEFAULT_MQTT_HEARTBEAT);
        assert_eq!(m.queue, DEFAULT_MQTT_QUEUE);
        assert_eq!(m.backoff_max, DEFAULT_MQTT_BACKOFF_MAX);
        let m = load(r#"url = "mqtt://127.0.0.1""#).unwrap().mqtt.unwrap();
        assert_eq!((m.port, m.tls), (1883, false));
        let m = load(r#"url = "mqtt://[::1]:1999""#).unwrap().mqtt.unwrap();
        assert_eq!((m.host.as_str(), m.port), ("[::1]", 1999));
    }

    #[test]
    fn bad_values_are_named() {
        let cases = [
            (r#"url = "mqtt://broker.example.com""#, "clear text"),
            (r#"url = "https://broker.example.com""#, "use mqtts://"),
            (r#"url = "mqtts://broker.example.com/x""#, "path"),
            (r#"url = "mqtts://u:p@broker.example.com""#, "user name"),
            ("url = \"mqtts://b\"\nqueue = 0", "mqtt.queue"),
            (
                "url = \"mqtts://b\"\nkeep_alive = \"1s\"",
                "mqtt.keep_alive",
            ),
            (
                "url = \"mqtts://b\"\ntopic_prefix = \"a/#\"",
                "mqtt.topic_prefix",
            ),
            (
                "url = \"mqtts://b\"\ntopic_prefix = \"/a\"",
                "mqtt.topic_prefix",
            ),
            (
                "url = \"mqtts://b\"\npublish_prefix = \"a/+/\"",
                "mqtt.publish_prefix",
            ),
            (
                "url = \"mqtts://b\"\nclient_cert_file = \"/c.pem\"",
                "client_key_file",
            ),
            (
                "url = \"mqtt://localhost\"\nca_file = \"/ca.pem\"",
                "use mqtts://",
            ),
            ("url = \"mqtts://b\"\nusername = \" \"", "mqtt.username"),
            ("url = \"mqtts://b\"\nbogus = 1", "bogus"),
        ];
        for (extra, want) in cases {
            let text = err_text(load(extra));
            assert!(text.contains(want), "{extra}: {text}");
        }
    }

    #[test]
    fn device_id_must_fit_in_a_topic() {
        let f = Fixture::new();
        let text = MINIMAL.replace("[asset]\n", "[asset]\ndevice_id = \"a/b\"\n");
        let ok = f.load(&text);
        assert!(ok.is_ok(), "without mqtt any device id is fine");
        let text = format!("{text}\n[mqtt]\nurl = \"mqtts://b\"\n");
        assert!(err_text(f.load(&text)).contains("asset.device_id"));
    }
}

#[cfg(test)]
mod documented_defaults {
    use super::super::tests::{Fixture, MINIMAL};

    /// The `# key = value` lines of agent.toml's [mqtt] section, uncommented, give the
    /// same tuning as the defaults (tests/config_files.rs cannot see it: url is off there).
    #[test]
    fn agent_toml_mqtt_defaults_are_true() {
        let text = include_str!("../../config/agent.toml");
        let section: String = text
            .split("\n[mqtt]\n")
            .nth(1)
            .and_then(|rest| rest.split("\n[").next())
            // A commented-out table after [mqtt] (`# [[sink]]`) is not part of it.
            .and_then(|rest| rest.split("\n# [").next())
            .unwrap()
            .lines()
            .filter_map(|l| l.strip_prefix("# "))
            .filter(|l| {
                l.split_once(" = ")
                    .is_some_and(|(k, _)| k.chars().all(|c| c.is_ascii_lowercase() || c == '_'))
                    && !l.contains("_file")
            })
            .map(|l| format!("{l}\n"))
            .collect();
        for key in [
            "keep_alive",
            "reconnect_margin",
            "heartbeat",
            "queue",
            "backoff_max",
        ] {
            assert!(section.contains(&format!("{key} = ")), "{key} undocumented");
        }
        let f = Fixture::new();
        let explicit = f
            .load(&format!("{MINIMAL}\n[mqtt]\n{section}"))
            .unwrap()
            .mqtt
            .unwrap();
        let url = "url = \"mqtts://broker.acme.com:8883\"";
        let defaults = f
            .load(&format!("{MINIMAL}\n[mqtt]\n{url}\n"))
            .unwrap()
            .mqtt
            .unwrap();
        assert_eq!(explicit.topic_prefix, defaults.topic_prefix);
        assert_eq!(explicit.keep_alive, defaults.keep_alive);
        assert_eq!(explicit.reconnect_margin, defaults.reconnect_margin);
        assert_eq!(explicit.heartbeat, defaults.heartbeat);
        assert_eq!(explicit.queue, defaults.queue);
        assert_eq!(explicit.backoff_max, defaults.backoff_max);
        assert_eq!(explicit.url, defaults.url);
    }
}
