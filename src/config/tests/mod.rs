//! Loading end to end: files, drop-ins, environment and defaults (`rules.rs`: every
//! validation rule).
//! Everything runs in a temp dir with a fixed environment map; nothing reads the real
//! environment or `/etc`.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::*;

mod children;
mod rules;
mod sources;

pub(super) const MACHINE_ID: &str = "0123456789abcdef0123456789abcdef";

/// The smallest valid config.
pub(super) const MINIMAL: &str = r#"
[salesforce]
instance_url = "https://acme.my.salesforce.com"
client_id = "3MVG9abc"

[asset]
name = "Pump 7"
serial_number = "SN-0007"
"#;

pub(super) struct Fixture {
    pub dir: tempfile::TempDir,
    pub env: HashMap<String, String>,
    pub euid: u32,
}

impl Fixture {
    /// A non-root user with HOME and XDG_RUNTIME_DIR inside the temp dir.
    pub(super) fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("machine-id"), format!("{MACHINE_ID}\n")).unwrap();
        let mut f = Self {
            env: HashMap::new(),
            euid: 1000,
            dir,
        };
        let home = f.path("home");
        let run = f.path("run");
        f.set("HOME", home.to_str().unwrap());
        f.set("XDG_RUNTIME_DIR", run.to_str().unwrap());
        f
    }

    pub(super) fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub(super) fn set(&mut self, var: &str, value: &str) -> &mut Self {
        self.env.insert(var.to_owned(), value.to_owned());
        self
    }

    pub(super) fn write(&self, rel: &str, text: &str) -> PathBuf {
        let p = self.path(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(&p, text).unwrap();
        p
    }

    pub(super) fn opts(&self, path: Option<PathBuf>) -> LoadOptions {
        LoadOptions {
            path,
            env: self.env.clone(),
            euid: Some(self.euid),
            machine_id_path: self.path("machine-id"),
        }
    }

    /// Writes `etc/agent.toml` and loads it as `--config`.
    pub(super) fn load(&self, text: &str) -> Result<Config, Error> {
        let main = self.write("etc/agent.toml", text);
        Config::load(&self.opts(Some(main)))
    }
}

pub(super) fn err_text(r: Result<Config, Error>) -> String {
    let err = r.unwrap_err();
    let mut text = err.to_string();
    let mut cause = std::error::Error::source(&err);
    while let Some(c) = cause {
        text.push_str(&format!(": {c}"));
        cause = c.source();
    }
    text
}

#[test]
fn defaults() {
    let f = Fixture::new();
    let c = f.load(MINIMAL).unwrap();
    let data = f.path("home/.local/share/asset-agent");
    assert_eq!(
        c.salesforce.instance_url.as_str(),
        "https://acme.my.salesforce.com/"
    );
    assert_eq!(c.salesforce.client_id, "3MVG9abc");
    assert_eq!(c.salesforce.client_secret_file, None);
    assert_eq!(c.salesforce.ca_file, None);
    assert_eq!(c.salesforce.timeout, Duration::from_secs(10));
    assert_eq!(c.auth.method, AuthMethod::RefreshToken);
    assert_eq!(c.auth.refresh_token_file, data.join("refresh-token"));
    assert_eq!(c.asset.device_id, MACHINE_ID);
    assert_eq!(c.asset.token_name, format!("Asset Token: {MACHINE_ID}"));
    assert_eq!(
        (c.asset.account_id, c.asset.contact_id, c.asset.id),
        (None, None, None)
    );
    assert_eq!(c.key.file(), Some(data.join("device-key.pem").as_path()));
    assert_eq!(c.key.bits, 2048);
    assert!((c.token.refresh_at - 0.8).abs() < 1e-9);
    assert_eq!(c.token.verify, Verify::Jwks);
    assert!(c.token.audience.is_empty());
    assert_eq!(c.token.issuer, None);
    assert_eq!(c.token.leeway, Duration::from_secs(30));
    assert_eq!(c.token.backoff_max, Duration::from_secs(300));
    assert_eq!(c.token.min_ttl_wait, Duration::from_secs(2));
    assert_eq!(c.token.ready_timeout, Duration::from_secs(10));
    assert_eq!(c.state.dir, data);
    assert_eq!(c.api.socket, f.path("run/asset-agent/agent.sock"));
    assert!(c.api.allow_uids.is_empty() && c.api.allow_gids.is_empty());
    assert_eq!(c.log.level, "info");
    assert_eq!(c.log.format, LogFormat::Text);
    assert_eq!(c.files, vec![f.path("etc/agent.toml")]);
}

#[test]
fn root_defaults_are_system_paths() {
    let mut f = Fixture::new();
    f.euid = 0;
    let c = f.load(MINIMAL).unwrap();
    assert_eq!(c.state.dir, Path::new("/var/lib/asset-agent"));
    assert_eq!(
        c.key.file(),
        Some(Path::new("/var/lib/asset-agent/device-key.pem"))
    );
    assert_eq!(c.api.socket, Path::new("/run/asset-agent/agent.sock"));
}

#[test]
fn systemd_directories_are_honoured() {
    let mut f = Fixture::new();
    let (conf, state, run) = (f.path("sd/conf"), f.path("sd/state"), f.path("sd/run"));
    f.set("CONFIGURATION_DIRECTORY", conf.to_str().unwrap())
        .set("STATE_DIRECTORY", state.to_str().unwrap())
        .set("RUNTIME_DIRECTORY", run.to_str().unwrap());
    f.write("sd/conf/agent.toml", MINIMAL);
    f.write("sd/conf/agent.d/10-key.toml", "[key]\nbits = 4096\n");
    let c = Config::load(&f.opts(None)).unwrap();
    assert_eq!(c.state.dir, state);
    assert_eq!(c.key.file(), Some(state.join("device-key.pem").as_path()));
    assert_eq!(c.key.bits, 4096);
    assert_eq!(c.auth.refresh_token_file, state.join("refresh-token"));
    assert_eq!(c.api.socket, run.join("agent.sock"));
    assert_eq!(c.files.len(), 2);
}

#[test]
fn a_pkcs11_key_takes_its_module_from_the_uri_or_the_setting() {
    let f = Fixture::new();
    let c = f
        .load(&format!(
            "{MINIMAL}\n[key]\nbackend = \"pkcs11\"\nuri = \"pkcs11:token=dev;object=agent?module-path=/usr/lib/softhsm/libsofthsm2.so\"\npin_file = \"/etc/asset-agent/pin\"\n"
        ))
        .unwrap();
    assert_eq!(c.key.file(), None);
    let KeyBackend::Pkcs11(p) = &c.key.backend else {
        panic!("{:?}", c.key)
    };
    assert_eq!(p.module, Path::new("/usr/lib/softhsm/libsofthsm2.so"));
    assert_eq!(p.pin_file, Path::new("/etc/asset-agent/pin"));
    assert_eq!(p.uri.object, "agent");
    assert_eq!(
        c.key.to_string(),
        "pkcs11:token=dev;object=agent (module /usr/lib/softhsm/libsofthsm2.so)"
    );
    let mut f = Fixture::new();
    f.set("ASSET_AGENT_KEY__BACKEND", "pkcs11")
        .set("ASSET_AGENT_KEY__URI", "pkcs11:token=dev;object=agent")
        .set("ASSET_AGENT_KEY__MODULE", "/m.so")
        .set("ASSET_AGENT_KEY__PIN_FILE", "/pin");
    let c = f.load(MINIMAL).unwrap();
    assert!(matches!(&c.key.backend, KeyBackend::Pkcs11(p) if p.module == Path::new("/m.so")));
}

#[test]
fn explicit_settings_beat_systemd_defaults() {
    let mut f = Fixture::new();
    f.set("STATE_DIRECTORY", "/var/lib/sd");
    let c = f
        .load(&format!("{MINIMAL}\n[state]\ndir = \"/srv/agent\"\n"))
        .unwrap();
    assert_eq!(c.state.dir, Path::new("/srv/agent"));
    assert_eq!(c.key.file(), Some(Path::new("/srv/agent/device-key.pem")));
}

#[test]
fn missing_files() {
    let mut f = Fixture::new();
    // An explicit path must exist.
    let err = Config::load(&f.opts(Some(f.path("nope.toml")))).unwrap_err();
    assert!(matches!(err, Error::FileMissing { .. }), "{err}");
    assert!(err.to_string().contains("nope.toml"), "{err}");
    // So must ASSET_AGENT_CONFIG.
    let nope = f.path("nope2.toml");
    f.set("ASSET_AGENT_CONFIG", nope.to_str().unwrap());
    let err = Config::load(&f.opts(None)).unwrap_err();
    assert!(err.to_string().contains("nope2.toml"), "{err}");
    f.env.remove("ASSET_AGENT_CONFIG");
    // The default path may be missing if the environment has the required keys ...
    let text = err_text(Config::load(&f.opts(None)));
    assert!(text.contains("salesforce.instance_url"), "{text}");
    assert!(text.contains("which does not exist"), "{text}");
    assert!(
        text.contains("ASSET_AGENT_SALESFORCE__INSTANCE_URL"),
        "{text}"
    );
    f.set(
        "ASSET_AGENT_SALESFORCE__INSTANCE_URL",
        "https://acme.my.salesforce.com",
    )
    .set("ASSET_AGENT_SALESFORCE__CLIENT_ID", "3MVG9abc")
    .set("ASSET_AGENT_ASSET__NAME", "Pump 7")
    .set("ASSET_AGENT_ASSET__SERIAL_NUMBER", "SN-0007");
    let c = Config::load(&f.opts(None)).unwrap();
    assert!(c.files.is_empty());
    assert_eq!(c.asset.name, "Pump 7");
}

#[test]
fn unknown_keys_name_key_and_file() {
    let f = Fixture::new();
    let typo = MINIMAL.replace("instance_url", "instanse_url");
    let rows: [(&str, &str); 3] = [
        (&typo, "salesforce.instanse_url"),
        ("[mqttt]\nurl = \"mqtts://broker:8883\"\n", "`mqttt`"),
        ("unexpected = 1\n", "`unexpected`"),
    ];
    for (text, key) in rows {
        let err = f.load(text).unwrap_err();
        assert!(matches!(err, Error::UnknownKey { .. }), "{err}");
        let msg = err.to_string();
        assert!(msg.contains(key), "{msg}");
        assert!(msg.contains("agent.toml"), "{msg}");
    }
    // In a drop-in: the drop-in is named, not the main file.
    f.write(
        "etc/agent.d/20-token.toml",
        "[token]\nrefresh_att = \"80%\"\n",
    );
    let msg = f.load(MINIMAL).unwrap_err().to_string();
    assert!(
        msg.contains("token.refresh_att") && msg.contains("20-token.toml"),
        "{msg}"
    );
    fs::remove_file(f.path("etc/agent.d/20-token.toml")).unwrap();
    // In the environment: the variable is named.
    let mut f = f;
    f.set("ASSET_AGENT_SALESFORCE__INSTANSE_URL", "https://x.example");
    let msg = f.load(MINIMAL).unwrap_err().to_string();
    assert!(msg.contains("salesforce.instanse_url"), "{msg}");
    assert!(
        msg.contains("ASSET_AGENT_SALESFORCE__INSTANSE_URL"),
        "{msg}"
    );
}

#[test]
fn syntax_error_names_the_file() {
    let f = Fixture::new();
    let err = f.load("[salesforce\n").unwrap_err();
    assert!(matches!(err, Error::Syntax { .. }), "{err}");
    assert!(err.to_string().contains("agent.toml"), "{err}");
}

#[test]
fn identifiers_stay_exact_strings() {
    let f = Fixture::new();
    let text = MINIMAL
        .replace("\"SN-0007\"", "\"00123\"")
        .replace("\"3MVG9abc\"", "\"000042\"");
    let c = f.load(&text).unwrap();
    assert_eq!(c.asset.serial_number, "00123");
    assert_eq!(c.salesforce.client_id, "000042");

    let mut f = Fixture::new();
    f.set("ASSET_AGENT_ASSET__SERIAL_NUMBER", "00123")
        .set("ASSET_AGENT_SALESFORCE__CLIENT_ID", "0012")
        .set("ASSET_AGENT_ASSET__DEVICE_ID", "007")
        .set("ASSET_AGENT_ASSET__NAME", "1e3");
    let c = f.load(MINIMAL).unwrap();
    assert_eq!(c.asset.serial_number, "00123");
    assert_eq!(c.salesforce.client_id, "0012");
    assert_eq!(c.asset.device_id, "007");
    assert_eq!(c.asset.name, "1e3");
    assert_eq!(c.asset.token_name, "Asset Token: 007");
}

#[test]
fn env_strings_become_numbers_and_lists() {
    let mut f = Fixture::new();
    f.set("ASSET_AGENT_KEY__BITS", "4096")
        .set("ASSET_AGENT_API__ALLOW_UIDS", "0,1000")
        .set("ASSET_AGENT_API__ALLOW_GIDS", " 990 ")
        .set(
            "ASSET_AGENT_TOKEN__AUDIENCE",
            "https://a.example,https://b.example",
        )
        .set("ASSET_AGENT_TOKEN__REFRESH_AT", "0.75")
        .set("ASSET_AGENT_TOKEN__LEEWAY", "1m")
        .set("ASSET_AGENT_LOG__FORMAT", "json");
    let c = f.load(MINIMAL).unwrap();
    assert_eq!(c.key.bits, 4096);
    assert_eq!(c.api.allow_uids, vec![0, 1000]);
    assert_eq!(c.api.allow_gids, vec![990]);
    assert_eq!(
        c.token.audience,
        vec!["https://a.example", "https://b.example"]
    );
    assert!((c.token.refresh_at - 0.75).abs() < 1e-9);
    assert_eq!(c.token.leeway, Duration::from_secs(60));
    assert_eq!(c.log.format, LogFormat::Json);
    // TOML lists still work, and a list key accepts one string.
    let c = f
        .load(&format!(
            "{MINIMAL}\n[token]\naudience = \"https://c.example\"\n"
        ))
        .unwrap();
    assert_eq!(
        c.token.audience,
        vec!["https://a.example", "https://b.example"]
    );
    f.env.remove("ASSET_AGENT_TOKEN__AUDIENCE");
    let c = f
        .load(&format!(
            "{MINIMAL}\n[token]\naudience = \"https://c.example\"\n"
        ))
        .unwrap();
    assert_eq!(c.token.audience, vec!["https://c.example"]);
}

#[test]
fn empty_env_var_is_an_error_naming_it() {
    let mut f = Fixture::new();
    f.set("ASSET_AGENT_ASSET__ACCOUNT_ID", "");
    let err = f.load(MINIMAL).unwrap_err();
    assert!(matches!(err, Error::EmptyEnv { .. }), "{err}");
    assert!(
        err.to_string().contains("ASSET_AGENT_ASSET__ACCOUNT_ID"),
        "{err}"
    );
}

#[test]
fn non_config_vars_are_not_keys() {
    let mut f = Fixture::new();
    f.set("ASSET_AGENT_LOG", "debug")
        .set("ASSET_AGENT_SOCKET", "")
        .set(
            "ASSET_AGENT_SALESFORCE_INSTANCE_URL",
            "https://typo.example",
        )
        .set("OTHER__THING", "x");
    let c = f.load(MINIMAL).unwrap();
    assert_eq!(c.log.level, "info");
    assert_eq!(c.ignored_env, vec!["ASSET_AGENT_SALESFORCE_INSTANCE_URL"]);
    // ... and the single-underscore typo is pointed out when the key is missing.
    let text = err_text(f.load("[log]\nlevel = \"info\"\n"));
    assert!(text.contains("two underscores"), "{text}");
}

#[test]
fn precedence_env_over_drop_in_over_main() {
    let mut f = Fixture::new();
    let main = format!("{MINIMAL}\n[token]\nrefresh_at = \"50%\"\nleeway = \"10s\"\n");
    assert!((f.load(&main).unwrap().token.refresh_at - 0.5).abs() < 1e-9);
    f.write("etc/agent.d/10-a.toml", "[token]\nrefresh_at = \"60%\"\n");
    let c = f.load(&main).unwrap();
    assert!((c.token.refresh_at - 0.6).abs() < 1e-9);
    // Tables merge: the main file's leeway survives the drop-in.
    assert_eq!(c.token.leeway, Duration::from_secs(10));
    f.set("ASSET_AGENT_TOKEN__REFRESH_AT", "70%");
    assert!((f.load(&main).unwrap().token.refresh_at - 0.7).abs() < 1e-9);
}

#[test]
fn drop_ins_apply_in_name_order() {
    let f = Fixture::new();
    // Written out of order; hidden and non-.toml files are ignored.
    f.write("etc/agent.d/20-b.toml", "[token]\nrefresh_at = \"65%\"\n");
    f.write(
        "etc/agent.d/10-a.toml",
        "[token]\nrefresh_at = \"60%\"\n[key]\nbits = 3072\n",
    );
    f.write(
        "etc/agent.d/.30-hidden.toml",
        "[token]\nrefresh_at = \"11%\"\n",
    );
    f.write(
        "etc/agent.d/40-off.toml.disabled",
        "[token]\nrefresh_at = \"12%\"\n",
    );
    let c = f.load(MINIMAL).unwrap();
    assert!((c.token.refresh_at - 0.65).abs() < 1e-9);
    assert_eq!(c.key.bits, 3072);
    let names: Vec<_> = c
        .files
        .iter()
        .map(|p| p.file_name().unwrap().to_owned())
        .collect();
    assert_eq!(names, ["agent.toml", "10-a.toml", "20-b.toml"]);
}

#[test]
fn validation_errors_name_the_source() {
    let f = Fixture::new();
    f.write("etc/agent.d/50-bad.toml", "[token]\nrefresh_at = \"99%\"\n");
    let msg = f.load(MINIMAL).unwrap_err().to_string();
    assert!(
        msg.contains("token.refresh_at") && msg.contains("50-bad.toml"),
        "{msg}"
    );
    let mut f = f;
    f.set("ASSET_AGENT_TOKEN__REFRESH_AT", "1%");
    let msg = f.load(MINIMAL).unwrap_err().to_string();
    assert!(msg.contains("ASSET_AGENT_TOKEN__REFRESH_AT"), "{msg}");
}

#[test]
fn summary_is_one_safe_line() {
    let f = Fixture::new();
    let c = f.load(MINIMAL).unwrap();
    let s = c.redacted_summary();
    assert!(!s.contains('\n'), "{s}");
    for want in [
        "instance_url=https://acme.my.salesforce.com/",
        "auth=refresh_token",
        "refresh_at=80%",
        "verify=jwks",
        "serial_number=\"SN-0007\"",
    ] {
        assert!(s.contains(want), "{want} not in {s}");
    }
    assert_eq!(s, c.to_string());
}

/// A string key given another TOML type is refused, naming the file, the key, the type given
/// and the fix; before, `0x1F` silently became the serial number "31".
#[test]
fn non_string_values_for_string_keys_are_refused() {
    let cases = [
        (
            "client_id = \"3MVG9abc\"",
            "client_id = 42",
            "salesforce.client_id",
            "an integer (42)",
            "client_id = \"42\"",
        ),
        (
            "name = \"Pump 7\"",
            "name = true",
            "asset.name",
            "a boolean (true)",
            "name = \"true\"",
        ),
        (
            "serial_number = \"SN-0007\"",
            "serial_number = 0x1F",
            "asset.serial_number",
            "an integer (31)",
            "serial_number = \"0x1F\"",
        ),
        (
            "serial_number = \"SN-0007\"",
            "serial_number = 123.5 # old",
            "asset.serial_number",
            "a float",
            "serial_number = \"123.5\"",
        ),
        (
            "name = \"Pump 7\"",
            "name = [\"a\"]",
            "asset.name",
            "an array",
            "name = \"...\"",
        ),
        (
            "[asset]\n",
            "[asset]\naccount_id = 11\n",
            "asset.account_id",
            "an integer (11)",
            "account_id = \"11\"",
        ),
        (
            "[asset]\n",
            "[key]\npath = 7\n[asset]\n",
            "key.path",
            "an integer (7)",
            "path = \"7\"",
        ),
        (
            "[asset]\n",
            "[log]\nlevel = 3\n[asset]\n",
            "log.level",
            "an integer (3)",
            "level = \"3\"",
        ),
        (
            "[asset]\n",
            "[mqtt]\nurl = \"mqtt://127.0.0.1\"\nclient_id = 5\n[asset]\n",
            "mqtt.client_id",
            "an integer (5)",
            "client_id = \"5\"",
        ),
    ];
    for (from, to, key, given, fix) in cases {
        let f = Fixture::new();
        let text = MINIMAL.replacen(from, to, 1);
        let err = err_text(f.load(&text));
        let file = f.path("etc/agent.toml").display().to_string();
        for want in [file.as_str(), key, "must be a string", given, fix] {
            assert!(err.contains(want), "{to}: {want:?} missing in: {err}");
        }
    }
}

/// Environment overrides are strings by nature and keep working, exactly as written.
#[test]
fn env_overrides_of_string_keys_stay_exact() {
    let mut f = Fixture::new();
    f.set("ASSET_AGENT_ASSET__SERIAL_NUMBER", "0x1F");
    f.set("ASSET_AGENT_SALESFORCE__CLIENT_ID", "42");
    f.set("ASSET_AGENT_ASSET__NAME", "true");
    let c = f.load(MINIMAL).unwrap();
    assert_eq!(c.asset.serial_number, "0x1F");
    assert_eq!(c.salesforce.client_id, "42");
    assert_eq!(c.asset.name, "true");
}

use proptest::prelude::*;

proptest::proptest! {
    /// The loader never panics on arbitrary file contents: it loads or names a problem.
    #[test]
    fn arbitrary_files_load_or_fail_cleanly(text in "(\\PC|\n){0,300}") {
        let f = Fixture::new();
        let _ = f.load(&text);
    }

    /// Arbitrary scalar values for every string key of the minimal file: a TOML string is
    /// kept exactly, anything else refused with the fix.
    #[test]
    fn string_keys_take_strings_exactly(
        key in proptest::sample::select(vec!["client_id", "name", "serial_number"]),
        value in proptest::prop_oneof![
            "[A-Za-z0-9._#\"\\\\-]{1,20}".prop_map(|s| (serde_json::to_string(&s).unwrap(), true)),
            proptest::num::i64::ANY.prop_map(|n| (n.to_string(), false)),
            proptest::bool::ANY.prop_map(|b| (b.to_string(), false)),
            (0u32..0xFFFF).prop_map(|n| (format!("0x{n:X}"), false)),
        ],
    ) {
        let (written, is_string) = value;
        let f = Fixture::new();
        let line = |k: &str| MINIMAL.lines().find(|l| l.starts_with(&format!("{k} ="))).unwrap().to_owned();
        let text = MINIMAL.replacen(&line(key), &format!("{key} = {written}"), 1);
        let r = f.load(&text);
        if is_string {
            let c = r.unwrap();
            let got = match key {
                "client_id" => c.salesforce.client_id,
                "name" => c.asset.name,
                _ => c.asset.serial_number,
            };
            let want: String = serde_json::from_str(&written).unwrap();
            if !want.trim().is_empty() {
                prop_assert_eq!(got, want);
            }
        } else {
            let err = err_text(r);
            prop_assert!(err.contains("must be a string"), "{}", err);
            prop_assert!(err.contains("quote it"), "{}", err);
        }
    }
}

#[test]
fn a_drop_in_sink_list_replaces_the_main_files() {
    let f = Fixture::new();
    f.write(
        "etc/agent.d/10-sinks.toml",
        "[[sink]]\npath = \"/run/b.jwt\"\nformat = \"json\"\n",
    );
    let c = f
        .load(&format!(
            "{MINIMAL}\n[[sink]]\npath = \"/run/a.jwt\"\nmode = \"0600\"\n"
        ))
        .unwrap();
    let sinks: Vec<_> = c.sinks.iter().map(|s| (s.path.clone(), s.mode)).collect();
    assert_eq!(sinks, [(std::path::PathBuf::from("/run/b.jwt"), 0o640)]);
}
