//! Table-driven checks of every validation rule: each row names the key and a piece of
//! the rule text the error must contain.

use std::fs;
use std::path::Path;

use super::super::*;
use super::{Fixture, MINIMAL, err_text};

#[test]
fn missing_required_keys_are_all_reported() {
    let f = Fixture::new();
    let err = f.load("[log]\nlevel = \"debug\"\n").unwrap_err();
    let keys: Vec<String> = err
        .problems()
        .iter()
        .map(|p| match p {
            Error::Missing { key, .. } => key.clone(),
            other => panic!("unexpected {other}"),
        })
        .collect();
    for want in [
        "salesforce.instance_url",
        "salesforce.client_id",
        "asset.name",
        "asset.serial_number",
    ] {
        assert!(keys.iter().any(|k| k == want), "{want} not in {keys:?}");
    }
}

/// Each row appends sections to MINIMAL; the error must name the key and the rule.
#[test]
fn invalid_values_in_files() {
    let rows: &[(&str, &str, &str)] = &[
        ("[key]\nbits = \"big\"", "key.bits", "big"),
        ("[key]\nbits = 1024", "key.bits", "2048, 3072 or 4096"),
        ("[key]\npath = \"keys/device.pem\"", "key.path", "absolute"),
        ("[key]\nbackend = \"tpm\"", "key.backend", "\"pkcs11\""),
        (
            "[key]\nuri = \"pkcs11:token=t;object=o\"",
            "key.uri",
            "only used when key.backend = \"pkcs11\"",
        ),
        (
            "[key]\nbackend = \"pkcs11\"\npin_file = \"/p\"\nmodule = \"/m.so\"",
            "key.uri",
            "required when key.backend = \"pkcs11\"",
        ),
        (
            "[key]\nbackend = \"pkcs11\"\nuri = \"pkcs11:token=t;object=o\"\nmodule = \"/m.so\"",
            "key.pin_file",
            "required when key.backend = \"pkcs11\"",
        ),
        (
            "[key]\nbackend = \"pkcs11\"\nuri = \"pkcs11:token=t;object=o\"\npin_file = \"/p\"",
            "key.module",
            "libsofthsm2.so",
        ),
        (
            "[key]\nbackend = \"pkcs11\"\nuri = \"pkcs11:token=t;object=o?pin-value=1\"\nmodule = \"/m.so\"\npin_file = \"/p\"",
            "key.uri",
            "pin-value is not accepted",
        ),
        (
            "[key]\nbackend = \"pkcs11\"\nuri = \"pkcs11:token=t;object=o?module-path=/a.so\"\nmodule = \"/m.so\"\npin_file = \"/p\"",
            "key.module",
            "give the module once",
        ),
        (
            "[key]\nbackend = \"pkcs11\"\nuri = \"pkcs11:token=t;object=o\"\nmodule = \"/m.so\"\npin_file = \"pin\"",
            "key.pin_file",
            "absolute",
        ),
        (
            "[key]\nbackend = \"pkcs11\"\npath = \"/k.pem\"\nuri = \"pkcs11:token=t;object=o\"\nmodule = \"/m.so\"\npin_file = \"/p\"",
            "key.path",
            "only used when key.backend = \"file\"",
        ),
        (
            "[token]\nrefresh_at = \"99%\"",
            "token.refresh_at",
            "between 10% and 95%, got 99%",
        ),
        (
            "[token]\nrefresh_at = \"5%\"",
            "token.refresh_at",
            "between 10% and 95%",
        ),
        ("[token]\nrefresh_at = 0.96", "token.refresh_at", "got 96%"),
        ("[token]\nrefresh_at = 80", "token.refresh_at", "ambiguous"),
        (
            "[token]\nrefresh_at = \"most\"",
            "token.refresh_at",
            "not a fraction",
        ),
        ("[token]\nleeway = 30", "token.leeway", "no unit"),
        (
            "[token]\nleeway = \"1h\"",
            "token.leeway",
            "between 0s and 10m",
        ),
        (
            "[token]\nbackoff_max = \"soon\"",
            "token.backoff_max",
            "not a duration",
        ),
        (
            "[token]\nverify = \"certificate\"",
            "token.certificate",
            "required when token.verify",
        ),
        ("[token]\nverify = \"maybe\"", "token.verify", "not one of"),
        (
            "[token]\ncertificate = \"/c.pem\"",
            "token.certificate",
            "only used when",
        ),
        ("[token]\naudience = [\"\"]", "token.audience", "empty"),
        ("[auth]\nmethod = \"saml\"", "auth.method", "\"jwt_bearer\""),
        (
            "[auth]\nmethod = \"jwt_bearer\"\nassertion_key_file = \"/k.pem\"",
            "auth.username",
            "required when auth.method = \"jwt_bearer\"",
        ),
        (
            "[auth]\nmethod = \"jwt_bearer\"\nusername = \"u@acme.com\"",
            "auth.assertion_key_file",
            "required when",
        ),
        (
            "[auth]\nusername = \"u@acme.com\"",
            "auth.username",
            "only used when",
        ),
        ("[auth]\nscope = \"api\"", "auth.scope", "device_flow"),
        (
            "[auth]\nmethod = \"client_credentials\"",
            "salesforce.client_secret_file",
            "client_credentials",
        ),
        ("[api]\nallow_uids = [-1]", "api.allow_uids", "-1"),
        ("[api]\nallow_uids = \"root\"", "api.allow_uids", "root"),
        (
            "[api]\nmax_connections = 0",
            "api.max_connections",
            "between 1",
        ),
        (
            "[api]\nmax_connections = 10\nmax_connections_per_uid = 11",
            "api.max_connections_per_uid",
            "api.max_connections (10)",
        ),
        ("[api]\nadmin_gids = [-3]", "api.admin_gids", "-3"),
        (
            "[api]\nsocket = \"/x/../../../../../../../../../../../../../../../../../../../../../../../../../../../../../../../../../a.sock\"",
            "api.socket",
            "at most 107",
        ),
        ("[log]\nformat = \"xml\"", "log.format", "not one of"),
        (
            "[log]\nlevel = \"asset_agent=loud\"",
            "log.level",
            "not a valid tracing filter",
        ),
        ("[log]\nlevel = \"\"", "log.level", "must not be empty"),
    ];
    let f = Fixture::new();
    for (extra, key, rule) in rows {
        let text = err_text(f.load(&format!("{MINIMAL}\n{extra}\n")));
        assert!(text.contains(key), "{extra:?}: {text}");
        assert!(text.contains(rule), "{extra:?}: {text}");
    }
}

/// Values from the environment, where everything is a string.
#[test]
fn invalid_values_in_env() {
    let rows: &[(&str, &str, &str, &str)] = &[
        (
            "SALESFORCE__INSTANCE_URL",
            "http://acme.my.salesforce.com",
            "salesforce.instance_url",
            "plain http",
        ),
        (
            "SALESFORCE__INSTANCE_URL",
            "ftp://acme.example",
            "salesforce.instance_url",
            "use https",
        ),
        (
            "SALESFORCE__INSTANCE_URL",
            "acme.my.salesforce.com",
            "salesforce.instance_url",
            "not a valid URL",
        ),
        (
            "SALESFORCE__INSTANCE_URL",
            "https://",
            "salesforce.instance_url",
            "\"https://\" has no host",
        ),
        (
            "SALESFORCE__INSTANCE_URL",
            "https://u:p@acme.example",
            "salesforce.instance_url",
            "password",
        ),
        (
            "SALESFORCE__INSTANCE_URL",
            "https://acme.example/?x=1",
            "salesforce.instance_url",
            "query",
        ),
        (
            "SALESFORCE__CLIENT_ID",
            "3MVG9 abc",
            "salesforce.client_id",
            "whitespace",
        ),
        (
            "SALESFORCE__TIMEOUT",
            "0s",
            "salesforce.timeout",
            "between 1s and 10m",
        ),
        ("ASSET__NAME", "   ", "asset.name", "must not be empty"),
        (
            "ASSET__ACCOUNT_ID",
            "0035g00000ABCDE",
            "asset.account_id",
            "Account id",
        ),
        ("ASSET__ID", "02i5g", "asset.id", "18-character"),
        ("KEY__BITS", "lots", "key.bits", "lots"),
        (
            "TOKEN__REFRESH_AT",
            "0.99",
            "token.refresh_at",
            "between 10% and 95%",
        ),
        ("API__ALLOW_GIDS", "10,,20", "api.allow_gids", "empty item"),
    ];
    for (var, value, key, rule) in rows {
        let mut f = Fixture::new();
        let var = format!("ASSET_AGENT_{var}");
        f.set(&var, value);
        let text = err_text(f.load(MINIMAL));
        assert!(
            text.contains(key) && text.contains(rule),
            "{var}={value}: {text}"
        );
        assert!(text.contains(&var), "the variable is named: {text}");
    }
}

#[test]
fn instance_urls() {
    let ok = [
        (
            "https://acme.my.salesforce.com",
            "https://acme.my.salesforce.com/",
        ),
        (
            "https://acme.my.salesforce.com/",
            "https://acme.my.salesforce.com/",
        ),
        (
            "https://acme.my.site.com/support/",
            "https://acme.my.site.com/support",
        ),
        (
            "https://acme.my.site.com/s/support",
            "https://acme.my.site.com/s/support",
        ),
        ("http://127.0.0.1:8080", "http://127.0.0.1:8080/"),
        ("http://127.1.2.3/", "http://127.1.2.3/"),
        ("http://localhost", "http://localhost/"),
        ("http://LOCALHOST:3000/site/", "http://localhost:3000/site"),
        ("http://[::1]:8080", "http://[::1]:8080/"),
    ];
    for (input, want) in ok {
        let got = rules::instance_url(input).map(|u| u.to_string());
        assert_eq!(got.as_deref(), Ok(want), "{input}");
    }
    let bad = [
        "http://acme.my.salesforce.com",
        "http://10.0.0.1:8080",
        "http://localhost.evil.example",
        "http://[::2]",
        "http://0.0.0.0",
        "mailto:x@acme.example",
        "https://acme.example/#frag",
        "",
    ];
    for input in bad {
        assert!(rules::instance_url(input).is_err(), "{input}");
    }
}

#[test]
fn site_path_prefix_is_kept() {
    let mut f = Fixture::new();
    f.set(
        "ASSET_AGENT_SALESFORCE__INSTANCE_URL",
        "https://acme.my.site.com/devices/",
    );
    let c = f.load(MINIMAL).unwrap();
    assert_eq!(
        c.salesforce.instance_url.as_str(),
        "https://acme.my.site.com/devices"
    );
}

#[test]
fn several_problems_come_together() {
    let f = Fixture::new();
    let err = f
        .load(&format!(
            "{MINIMAL}\n[key]\nbits = 1024\n[token]\nrefresh_at = \"99%\"\n"
        ))
        .unwrap_err();
    assert_eq!(err.problems().len(), 2, "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("key.bits") && msg.contains("token.refresh_at"),
        "{msg}"
    );
}

#[test]
fn auth_methods() {
    let f = Fixture::new();
    let jwt = "[auth]\nmethod = \"jwt_bearer\"\nusername = \"fleet@acme.com\"\nassertion_key_file = \"/etc/asset-agent/jwt.pem\"\n";
    let c = f.load(&format!("{MINIMAL}\n{jwt}")).unwrap();
    let AuthMethod::JwtBearer(j) = &c.auth.method else {
        panic!("{:?}", c.auth.method)
    };
    assert_eq!(j.username, "fleet@acme.com");
    assert_eq!(j.assertion_key_file, Path::new("/etc/asset-agent/jwt.pem"));
    assert_eq!(j.audience, "https://login.salesforce.com");

    let cc = MINIMAL.replace(
        "client_id = \"3MVG9abc\"",
        "client_id = \"3MVG9abc\"\nclient_secret_file = \"/etc/asset-agent/client-secret\"",
    );
    let c = f
        .load(&format!("{cc}\n[auth]\nmethod = \"client_credentials\"\n"))
        .unwrap();
    assert_eq!(c.auth.method, AuthMethod::ClientCredentials);

    let c = f
        .load(&format!(
            "{MINIMAL}\n[auth]\nmethod = \"device_flow\"\nscope = \"api refresh_token\"\n"
        ))
        .unwrap();
    let scope = Some("api refresh_token".to_owned());
    assert_eq!(c.auth.method, AuthMethod::DeviceFlow { scope });
}

#[test]
fn verify_certificate() {
    let f = Fixture::new();
    let text = format!(
        "{MINIMAL}\n[token]\nverify = \"certificate\"\ncertificate = \"/etc/asset-agent/signing.crt\"\n"
    );
    let c = f.load(&text).unwrap();
    assert_eq!(
        c.token.verify,
        Verify::Certificate("/etc/asset-agent/signing.crt".into())
    );
}

#[test]
fn device_id_needs_machine_id_or_key() {
    let f = Fixture::new();
    fs::write(f.path("machine-id"), "\n").unwrap();
    let err = f.load(MINIMAL).unwrap_err();
    assert!(matches!(err, Error::DeviceId { .. }), "{err}");
    assert!(err.to_string().contains("asset.device_id"), "{err}");
    fs::remove_file(f.path("machine-id")).unwrap();
    assert!(f.load(MINIMAL).is_err());
    let c = f
        .load(&MINIMAL.replace("[asset]\n", "[asset]\ndevice_id = \"pump-7\"\n"))
        .unwrap();
    assert_eq!(c.asset.device_id, "pump-7");
}
