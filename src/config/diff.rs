//! Which keys differ between two configurations: what a reload reports and decides on.
//!
//! Each section is listed once, field by field, with the key each field comes from, and
//! destructured without `..`: a field added to a config type does not compile until it is
//! given its key here, so a reload can never miss a setting. Only key *names* come out,
//! never values, so nothing here can leak a secret (the config holds paths to secrets
//! anyway).
//!
//! Keys are the dotted names of the file (`api.signer_uids`). A setting checked as a
//! whole is one key: `sink` (the `[[sink]]` list) and `children` (`[children.NAME]` and
//! the children directory's files). Fields derived from one key report that key (`mqtt.url`
//! for the broker's host, port and TLS). Where the configuration came from (the files
//! read, ignored variables, `gateway.children_dir`) is not a setting: it matters only
//! through what it yields.

use std::path::PathBuf;

use super::{
    Api, Asset, Auth, AuthMethod, ClientCert, Config, JwtBearer, Key, KeyBackend, Log, Mqtt,
    Pkcs11, Salesforce, State, Token, Verify,
};

/// Compares `$a` and `$b` (each an `Option<&$ty>`) field by field: `field => "key"` for
/// each field, then `ignoring { field, ... }` for those that are no setting of their own.
/// The closure is never called: its pattern makes the list exhaustive, so a compile error
/// on it (the pattern "does not mention" a field, or "requires `..`") means a field of
/// `$ty` has no key here yet.
macro_rules! fields {
    ($diff:ident, $a:expr, $b:expr, $ty:ident {
        $($field:ident => $key:literal),* $(,)?
    } $(ignoring { $($skip:ident),* $(,)? })?) => {{
        let _every_field_has_a_key = |s: &$ty| {
            let $ty { $($field: _,)* $($($skip: _,)*)? } = s;
        };
        let (a, b): (Option<&$ty>, Option<&$ty>) = ($a, $b);
        $($diff.field($key, a.map(|s| &s.$field), b.map(|s| &s.$field));)*
    }};
}

/// The dotted keys whose values differ between `old` and `new`, section by section, each
/// once.
pub fn changed_keys(old: &Config, new: &Config) -> Vec<&'static str> {
    let Config {
        salesforce,
        auth,
        asset,
        key,
        token,
        state,
        api,
        mqtt,
        sinks,
        log,
        // Where the configuration came from, not what it says.
        gateway: _,
        children,
        files: _,
        ignored_env: _,
    } = old;
    let mut d = Diff::default();
    fields!(d, Some(salesforce), Some(&new.salesforce), Salesforce {
        instance_url => "salesforce.instance_url",
        client_id => "salesforce.client_id",
        client_secret_file => "salesforce.client_secret_file",
        ca_file => "salesforce.ca_file",
        timeout => "salesforce.timeout",
    });
    self::auth(&mut d, auth, &new.auth);
    fields!(d, Some(asset), Some(&new.asset), Asset {
        device_id => "asset.device_id",
        name => "asset.name",
        serial_number => "asset.serial_number",
        account_id => "asset.account_id",
        contact_id => "asset.contact_id",
        id => "asset.id",
        token_name => "asset.token_name",
    });
    self::key(&mut d, key, &new.key);
    self::token(&mut d, token, &new.token);
    fields!(d, Some(state), Some(&new.state), State {
        dir => "state.dir",
    });
    fields!(d, Some(api), Some(&new.api), Api {
        socket => "api.socket",
        allow_uids => "api.allow_uids",
        allow_gids => "api.allow_gids",
        signer_uids => "api.signer_uids",
        signer_gids => "api.signer_gids",
        admin_uids => "api.admin_uids",
        admin_gids => "api.admin_gids",
        max_connections => "api.max_connections",
        max_connections_per_uid => "api.max_connections_per_uid",
    });
    self::mqtt(&mut d, mqtt.as_ref(), new.mqtt.as_ref());
    d.field("sink", Some(sinks), Some(&new.sinks));
    fields!(d, Some(log), Some(&new.log), Log {
        level => "log.level",
        format => "log.format",
    });
    d.field("children", Some(children), Some(&new.children));
    d.keys
}

/// The keys found so far.
#[derive(Default)]
struct Diff {
    keys: Vec<&'static str>,
}

// === impl Diff ===

impl Diff {
    /// Records `key` when `a` and `b` differ (and it is not recorded yet).
    fn field<T: PartialEq + ?Sized>(&mut self, key: &'static str, a: Option<&T>, b: Option<&T>) {
        if a != b && !self.keys.contains(&key) {
            self.keys.push(key);
        }
    }
}

/// `[auth]`: the method, then the settings only some methods use.
fn auth(d: &mut Diff, a: &Auth, b: &Auth) {
    let Auth {
        method,
        refresh_token_file,
    } = a;
    d.field("auth.method", Some(method.name()), Some(b.method.name()));
    d.field(
        "auth.refresh_token_file",
        Some(refresh_token_file),
        Some(&b.refresh_token_file),
    );
    fields!(d, jwt_bearer(method), jwt_bearer(&b.method), JwtBearer {
        username => "auth.username",
        assertion_key_file => "auth.assertion_key_file",
        audience => "auth.audience",
    });
    d.field("auth.scope", scope(method), scope(&b.method));
}

fn jwt_bearer(m: &AuthMethod) -> Option<&JwtBearer> {
    match m {
        AuthMethod::JwtBearer(j) => Some(j),
        AuthMethod::RefreshToken
        | AuthMethod::ClientCredentials
        | AuthMethod::DeviceFlow { .. } => None,
    }
}

fn scope(m: &AuthMethod) -> Option<&String> {
    match m {
        AuthMethod::DeviceFlow { scope } => scope.as_ref(),
        AuthMethod::RefreshToken | AuthMethod::ClientCredentials | AuthMethod::JwtBearer(_) => None,
    }
}

/// `[key]`: the backend, then the settings only that backend uses.
fn key(d: &mut Diff, a: &Key, b: &Key) {
    let Key { backend, bits } = a;
    d.field(
        "key.backend",
        Some(a.backend_name()),
        Some(b.backend_name()),
    );
    d.field("key.path", file(backend), file(&b.backend));
    fields!(d, pkcs11(backend), pkcs11(&b.backend), Pkcs11 {
        uri => "key.uri",
        module => "key.module",
        pin_file => "key.pin_file",
    } ignoring {
        // Always `state.dir`.
        lock_dir,
    });
    d.field("key.bits", Some(bits), Some(&b.bits));
}

fn file(k: &KeyBackend) -> Option<&PathBuf> {
    match k {
        KeyBackend::File { path } => Some(path),
        KeyBackend::Pkcs11(_) => None,
    }
}

fn pkcs11(k: &KeyBackend) -> Option<&Pkcs11> {
    match k {
        KeyBackend::Pkcs11(p) => Some(p),
        KeyBackend::File { .. } => None,
    }
}

/// `[token]`, where `token.verify` also decides whether `token.certificate` is used.
fn token(d: &mut Diff, a: &Token, b: &Token) {
    fields!(d, Some(a), Some(b), Token {
        refresh_at => "token.refresh_at",
        audience => "token.audience",
        issuer => "token.issuer",
        leeway => "token.leeway",
        backoff_max => "token.backoff_max",
        min_ttl_wait => "token.min_ttl_wait",
        refresh => "token.refresh",
        demand_window => "token.demand_window",
        ready_timeout => "token.ready_timeout",
    } ignoring {
        // Below.
        verify,
    });
    d.field("token.verify", Some(a.verify.name()), Some(b.verify.name()));
    d.field(
        "token.certificate",
        certificate(&a.verify),
        certificate(&b.verify),
    );
}

fn certificate(v: &Verify) -> Option<&PathBuf> {
    match v {
        Verify::Certificate(path) => Some(path),
        Verify::Jwks | Verify::None => None,
    }
}

/// `[mqtt]`: on or off by `mqtt.url`, then each setting.
fn mqtt(d: &mut Diff, a: Option<&Mqtt>, b: Option<&Mqtt>) {
    d.field("mqtt.url", Some(&a.is_some()), Some(&b.is_some()));
    let (Some(a), Some(b)) = (a, b) else {
        return;
    };
    fields!(d, Some(a), Some(b), Mqtt {
        url => "mqtt.url",
        // Derived from the URL.
        host => "mqtt.url",
        port => "mqtt.url",
        tls => "mqtt.url",
        client_id => "mqtt.client_id",
        username => "mqtt.username",
        topic_prefix => "mqtt.topic_prefix",
        publish_prefix => "mqtt.publish_prefix",
        ca_file => "mqtt.ca_file",
        keep_alive => "mqtt.keep_alive",
        reconnect_margin => "mqtt.reconnect_margin",
        reconnect_on_rotation => "mqtt.reconnect_on_rotation",
        heartbeat => "mqtt.heartbeat",
        queue => "mqtt.queue",
        backoff_max => "mqtt.backoff_max",
    } ignoring {
        // Below.
        client_cert,
    });
    fields!(d, a.client_cert.as_ref(), b.client_cert.as_ref(), ClientCert {
        cert_file => "mqtt.client_cert_file",
        key_file => "mqtt.client_key_file",
    });
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::super::tests::{Fixture, MINIMAL};
    use super::*;

    /// The sections whose every key has its own name in a reload report: all but the
    /// gateway's, whose `children` are reported as one key.
    fn keyed_section(section: &str) -> bool {
        crate::config::raw::SECTIONS.contains(&section)
            && !matches!(section, "gateway" | "children")
    }

    const JWT: &str = "[auth]\nmethod = \"jwt_bearer\"\nusername = \"fleet@acme.com\"\nassertion_key_file = \"/etc/a/jwt.pem\"\n";
    const DEVICE_FLOW: &str = "[auth]\nmethod = \"device_flow\"\n";
    const PKCS11: &str = "[key]\nbackend = \"pkcs11\"\nuri = \"pkcs11:token=a;object=b\"\nmodule = \"/m.so\"\npin_file = \"/pin\"\n";
    const CERT: &str = "[token]\nverify = \"certificate\"\ncertificate = \"/a.pem\"\n";
    const MQTT: &str = "[mqtt]\nurl = \"mqtts://broker.acme.com:8883\"\n";
    const MQTT_TLS: &str = "[mqtt]\nurl = \"mqtts://broker.acme.com:8883\"\nclient_cert_file = \"/c.pem\"\nclient_key_file = \"/k.pem\"\n";

    /// One row per change: `(setting, value)` pairs set through the environment on top of
    /// `MINIMAL` + a context, and the keys the diff must report, in order.
    type Row = (
        &'static [(&'static str, &'static str)],
        &'static str,
        &'static [&'static str],
    );

    const ROWS: &[Row] = &[
        (
            &[("salesforce.instance_url", "https://beta.my.salesforce.com")],
            "",
            &["salesforce.instance_url"],
        ),
        (
            &[("salesforce.client_id", "3MVG9xyz")],
            "",
            &["salesforce.client_id"],
        ),
        (
            &[("salesforce.client_secret_file", "/s")],
            "",
            &["salesforce.client_secret_file"],
        ),
        (
            &[("salesforce.ca_file", "/ca.pem")],
            "",
            &["salesforce.ca_file"],
        ),
        (&[("salesforce.timeout", "3s")], "", &["salesforce.timeout"]),
        (&[("auth.method", "device_flow")], "", &["auth.method"]),
        (
            &[("auth.refresh_token_file", "/rt")],
            "",
            &["auth.refresh_token_file"],
        ),
        (
            &[("auth.username", "other@acme.com")],
            JWT,
            &["auth.username"],
        ),
        (
            &[("auth.assertion_key_file", "/other.pem")],
            JWT,
            &["auth.assertion_key_file"],
        ),
        (
            &[("auth.audience", "https://test.salesforce.com")],
            JWT,
            &["auth.audience"],
        ),
        (&[("auth.scope", "api")], DEVICE_FLOW, &["auth.scope"]),
        // The token's default name is made from the device id.
        (
            &[("asset.device_id", "d9")],
            "",
            &["asset.device_id", "asset.token_name"],
        ),
        (&[("asset.name", "Pump 8")], "", &["asset.name"]),
        (
            &[("asset.serial_number", "SN-0008")],
            "",
            &["asset.serial_number"],
        ),
        (
            &[("asset.account_id", "001000000000001AAA")],
            "",
            &["asset.account_id"],
        ),
        (
            &[("asset.contact_id", "003000000000001AAA")],
            "",
            &["asset.contact_id"],
        ),
        (&[("asset.id", "02i000000000001AAA")], "", &["asset.id"]),
        (&[("asset.token_name", "T")], "", &["asset.token_name"]),
        (
            &[
                ("key.backend", "pkcs11"),
                ("key.uri", "pkcs11:token=a;object=b"),
                ("key.module", "/m.so"),
                ("key.pin_file", "/pin"),
            ],
            "",
            &[
                "key.backend",
                "key.path",
                "key.uri",
                "key.module",
                "key.pin_file",
            ],
        ),
        (&[("key.path", "/k.pem")], "", &["key.path"]),
        (&[("key.bits", "4096")], "", &["key.bits"]),
        (
            &[("key.uri", "pkcs11:token=a;object=c")],
            PKCS11,
            &["key.uri"],
        ),
        (&[("key.module", "/n.so")], PKCS11, &["key.module"]),
        (&[("key.pin_file", "/pin2")], PKCS11, &["key.pin_file"]),
        (&[("token.refresh_at", "50%")], "", &["token.refresh_at"]),
        (&[("token.refresh", "eager")], "", &["token.refresh"]),
        (
            &[("token.demand_window", "1m")],
            "",
            &["token.demand_window"],
        ),
        (
            &[
                ("token.verify", "certificate"),
                ("token.certificate", "/a.pem"),
            ],
            "",
            &["token.verify", "token.certificate"],
        ),
        (
            &[("token.certificate", "/b.pem")],
            CERT,
            &["token.certificate"],
        ),
        (
            &[("token.audience", "https://ingest.acme.com")],
            "",
            &["token.audience"],
        ),
        (
            &[("token.issuer", "https://acme.my.salesforce.com")],
            "",
            &["token.issuer"],
        ),
        (&[("token.leeway", "1m")], "", &["token.leeway"]),
        (&[("token.backoff_max", "1m")], "", &["token.backoff_max"]),
        (&[("token.min_ttl_wait", "5s")], "", &["token.min_ttl_wait"]),
        (
            &[("token.ready_timeout", "1m")],
            "",
            &["token.ready_timeout"],
        ),
        (
            &[("state.dir", "/srv/agent")],
            "",
            &["auth.refresh_token_file", "key.path", "state.dir"],
        ),
        (&[("api.socket", "/run/x.sock")], "", &["api.socket"]),
        (&[("api.allow_uids", "1000")], "", &["api.allow_uids"]),
        (&[("api.allow_gids", "990")], "", &["api.allow_gids"]),
        (&[("api.signer_uids", "1001")], "", &["api.signer_uids"]),
        (&[("api.signer_gids", "991")], "", &["api.signer_gids"]),
        (&[("api.admin_uids", "1002")], "", &["api.admin_uids"]),
        (&[("api.admin_gids", "992")], "", &["api.admin_gids"]),
        (
            &[("api.max_connections", "100")],
            "",
            &["api.max_connections"],
        ),
        (
            &[("api.max_connections_per_uid", "10")],
            "",
            &["api.max_connections_per_uid"],
        ),
        // MQTT turned on, then each of its settings.
        (
            &[("mqtt.url", "mqtts://broker.acme.com:8883")],
            "",
            &["mqtt.url"],
        ),
        (
            &[("mqtt.url", "mqtts://other.acme.com:8883")],
            MQTT,
            &["mqtt.url"],
        ),
        (&[("mqtt.client_id", "c9")], MQTT, &["mqtt.client_id"]),
        (&[("mqtt.username", "u9")], MQTT, &["mqtt.username"]),
        (
            // The default publish prefix is made from it.
            &[("mqtt.topic_prefix", "fleet")],
            MQTT,
            &["mqtt.topic_prefix", "mqtt.publish_prefix"],
        ),
        (
            &[("mqtt.publish_prefix", "fleet/x/")],
            MQTT,
            &["mqtt.publish_prefix"],
        ),
        (&[("mqtt.ca_file", "/ca.pem")], MQTT, &["mqtt.ca_file"]),
        (
            &[("mqtt.client_cert_file", "/c2.pem")],
            MQTT_TLS,
            &["mqtt.client_cert_file"],
        ),
        (
            &[("mqtt.client_key_file", "/k2.pem")],
            MQTT_TLS,
            &["mqtt.client_key_file"],
        ),
        (&[("mqtt.keep_alive", "45s")], MQTT, &["mqtt.keep_alive"]),
        (
            &[("mqtt.reconnect_margin", "20s")],
            MQTT,
            &["mqtt.reconnect_margin"],
        ),
        (
            &[("mqtt.reconnect_on_rotation", "true")],
            MQTT,
            &["mqtt.reconnect_on_rotation"],
        ),
        (&[("mqtt.heartbeat", "2m")], MQTT, &["mqtt.heartbeat"]),
        (&[("mqtt.queue", "8")], MQTT, &["mqtt.queue"]),
        (&[("mqtt.backoff_max", "2m")], MQTT, &["mqtt.backoff_max"]),
        (&[("log.level", "debug")], "", &["log.level"]),
        (&[("log.format", "json")], "", &["log.format"]),
    ];

    /// `ASSET_AGENT_API__SIGNER_UIDS` for `api.signer_uids`.
    fn var(key: &str) -> String {
        let (section, name) = key.split_once('.').unwrap();
        format!(
            "ASSET_AGENT_{}__{}",
            section.to_ascii_uppercase(),
            name.to_ascii_uppercase()
        )
    }

    #[test]
    fn each_setting_is_reported_by_its_own_key() {
        let mut wrong = Vec::new();
        for (set, context, want) in ROWS {
            let mut f = Fixture::new();
            let text = format!("{MINIMAL}\n{context}");
            let old = f.load(&text).unwrap();
            for (key, value) in *set {
                f.set(&var(key), value);
            }
            let new = f.load(&text).unwrap_or_else(|e| panic!("{set:?}: {e}"));
            let (there, back) = (changed_keys(&old, &new), changed_keys(&new, &old));
            if there != *want || back != *want {
                wrong.push(format!(
                    "{set:?} on {context:?}: {there:?}, undone {back:?}"
                ));
            }
            assert!(changed_keys(&new, &new).is_empty());
        }
        assert!(wrong.is_empty(), "{wrong:#?}");
    }

    /// Every key config/agent.toml documents in these sections has a row above, so a key
    /// added there (as docs/architecture.md asks) without a way to report it fails here.
    #[test]
    fn every_documented_key_has_a_row() {
        let mut section = "";
        let mut documented = BTreeSet::new();
        for line in include_str!("../../config/agent.toml").lines() {
            let line = line.strip_prefix("# ").unwrap_or(line);
            if line.starts_with('[') {
                section = line.trim_matches(|c| c == '[' || c == ']');
            } else if let Some((key, _)) = line.split_once(" = ")
                && !key.is_empty()
                && key.chars().all(|c| c.is_ascii_lowercase() || c == '_')
                && keyed_section(section)
            {
                documented.insert(format!("{section}.{key}"));
            }
        }
        assert!(documented.len() > 50, "{documented:?}");
        let tested: BTreeSet<String> = ROWS
            .iter()
            .flat_map(|(set, _, _)| set.iter().map(|(k, _)| (*k).to_owned()))
            .collect();
        let missing: Vec<_> = documented.difference(&tested).collect();
        assert!(missing.is_empty(), "keys no row changes: {missing:?}");
    }

    #[test]
    fn lists_and_origins() {
        let f = Fixture::new();
        let old = f.load(MINIMAL).unwrap();
        let sink = f
            .load(&format!("{MINIMAL}\n[[sink]]\npath = \"/run/a/app.jwt\"\n"))
            .unwrap();
        assert_eq!(changed_keys(&old, &sink), ["sink"]);
        let child = f
            .load(&format!(
                "{MINIMAL}\n[children.pump-7]\ndevice_id = \"c1\"\nname = \"P\"\nserial_number = \"C-1\"\n"
            ))
            .unwrap();
        assert_eq!(changed_keys(&old, &child), ["children"]);
        // Where it came from is no setting.
        let mut moved = old.clone();
        moved
            .files
            .push("/etc/asset-agent/agent.d/10-x.toml".into());
        moved.ignored_env.push("ASSET_AGENT_TYPO".to_owned());
        moved.gateway.children_dir = Some("/elsewhere".into());
        assert!(changed_keys(&old, &moved).is_empty());
    }
}
