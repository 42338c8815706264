//! `[key]`: where the device key lives, the PEM file (default) or a PKCS#11 token.
//!
//! The table is parsed by [`Check::key`], which takes the dotted prefix of the table it
//! reads (`key` for the agent's own, something longer for a table nested elsewhere), so any
//! `[key]`-shaped table is validated by the same rules and reports the same messages.
//!
//! A PKCS#11 key is addressed by an RFC 7512 URI. The PIN never appears in the config: it
//! is read from `pin_file` (owner-only) when the key is opened, so `pin-value` and
//! `pin-source` in the URI are refused rather than silently ignored.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::rules::Check;
use super::units::{self, Named};
use super::{DEFAULT_KEY_BITS, KEY_BITS};

/// The file name of the default file-backed key in the state directory.
pub const DEFAULT_KEY_FILE: &str = "device-key.pem";

/// `[key]`, validated.
#[derive(Clone, Debug, PartialEq)]
pub struct Key {
    /// Where the key is kept.
    pub backend: KeyBackend,
    /// RSA size used when generating; one of [`KEY_BITS`].
    pub bits: usize,
}

/// `key.backend` with the settings only that backend uses.
#[derive(Clone, Debug, PartialEq)]
pub enum KeyBackend {
    /// PKCS#8 PEM, mode 0600; generated if absent. Default `<state.dir>/device-key.pem`.
    File { path: PathBuf },
    /// A key pair inside a PKCS#11 token (HSM, secure element, TPM 2.0 through
    /// tpm2-pkcs11), generated there on first start.
    Pkcs11(Box<Pkcs11>),
}

/// `key.backend = "pkcs11"`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pkcs11 {
    /// Which token and which object (`token=`/`serial=`/`slot-id=`, `object=`, `id=`).
    pub uri: Pkcs11Uri,
    /// The PKCS#11 module (shared library): `key.module`, or `module-path` in the URI.
    pub module: PathBuf,
    /// The user PIN, in an owner-only file; read when the key is opened, never logged.
    pub pin_file: PathBuf,
    /// Where agents sharing the token serialise key creation: the state directory.
    pub lock_dir: PathBuf,
}

/// An RFC 7512 PKCS#11 URI, reduced to the attributes the agent uses. The query
/// attributes `pin-value` and `pin-source` are refused (the PIN comes from a file the
/// agent checks), and so is every path attribute the agent would otherwise ignore, so a
/// URI never selects less precisely than it reads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pkcs11Uri {
    /// `token=`: the token label (`CK_TOKEN_INFO.label`, trailing blanks trimmed).
    pub token: Option<String>,
    /// `manufacturer=`: the token's manufacturer id.
    pub manufacturer: Option<String>,
    /// `model=`: the token's model.
    pub model: Option<String>,
    /// `serial=`: the token's serial number.
    pub serial: Option<String>,
    /// `slot-id=`: the slot number.
    pub slot_id: Option<u64>,
    /// `object=`: the key's `CKA_LABEL`. Required: a generated key is labelled with it.
    pub object: String,
    /// `id=`: the key's `CKA_ID`; when absent, derived from the object name.
    pub id: Option<Vec<u8>>,
    /// `module-path=`, a query attribute.
    pub module_path: Option<PathBuf>,
}

/// `[key]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default, expecting = "the [key] table")]
pub(crate) struct RawKey {
    pub backend: Option<BackendName>,
    #[serde(deserialize_with = "units::strict_path")]
    pub path: Option<PathBuf>,
    pub bits: Option<usize>,
    #[serde(deserialize_with = "units::strict_string")]
    pub uri: Option<String>,
    #[serde(deserialize_with = "units::strict_path")]
    pub module: Option<PathBuf>,
    #[serde(deserialize_with = "units::strict_path")]
    pub pin_file: Option<PathBuf>,
}

/// `key.backend` as written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum BackendName {
    File,
    Pkcs11,
}

// === impl Key ===

impl Key {
    /// The PEM file of a file-backed key; `None` for a token.
    pub fn file(&self) -> Option<&Path> {
        match &self.backend {
            KeyBackend::File { path } => Some(path),
            KeyBackend::Pkcs11(_) => None,
        }
    }

    /// The `key.backend` spelling.
    pub fn backend_name(&self) -> &'static str {
        match self.backend {
            KeyBackend::File { .. } => "file",
            KeyBackend::Pkcs11(_) => "pkcs11",
        }
    }
}

impl fmt::Display for Key {
    /// Where the key is, for logs and messages: no secret is part of it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.backend {
            KeyBackend::File { path } => write!(f, "{}", path.display()),
            KeyBackend::Pkcs11(p) => write!(f, "{} (module {})", p.uri, p.module.display()),
        }
    }
}

// === impl Pkcs11Uri ===

impl Pkcs11Uri {
    /// Parses an RFC 7512 URI (`pkcs11:token=...;object=...?module-path=...`).
    ///
    /// # Errors
    /// The rule broken, in words fit for "invalid `key.uri`: ...".
    pub fn parse(s: &str) -> Result<Self, String> {
        let rest = s
            .get(..7)
            .filter(|p| p.eq_ignore_ascii_case("pkcs11:"))
            .map(|_| &s[7..])
            .ok_or_else(|| format!("{s:?} is not a PKCS#11 URI: it must start with \"pkcs11:\""))?;
        let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
        let mut uri = Self {
            token: None,
            manufacturer: None,
            model: None,
            serial: None,
            slot_id: None,
            object: String::new(),
            id: None,
            module_path: None,
        };
        let mut object = None;
        let mut seen: Vec<String> = Vec::new();
        let mut once = |name: &str| {
            if seen.iter().any(|n| n == name) {
                return Err(format!("attribute {name:?} appears twice"));
            }
            seen.push(name.to_owned());
            Ok(())
        };
        for attr in path.split(';').filter(|a| !a.is_empty()) {
            let (name, value) = attr
                .split_once('=')
                .ok_or_else(|| format!("{attr:?} is not a name=value attribute"))?;
            once(name)?;
            let text = || pct_decode_utf8(name, value);
            match name {
                "token" => uri.token = Some(text()?),
                "manufacturer" => uri.manufacturer = Some(text()?),
                "model" => uri.model = Some(text()?),
                "serial" => uri.serial = Some(text()?),
                "object" => object = Some(text()?),
                "id" => uri.id = Some(pct_decode(name, value)?),
                "slot-id" => {
                    uri.slot_id =
                        Some(text()?.parse().map_err(|_| {
                            format!("slot-id {value:?} is not a decimal slot number")
                        })?);
                }
                "type" => {
                    let t = text()?;
                    if t != "private" {
                        return Err(format!(
                            "type={t} names the wrong object: the device key is a private key (type=private, or leave type out)"
                        ));
                    }
                }
                other => {
                    return Err(format!(
                        "path attribute {other:?} is not supported: select the token with token=, serial=, manufacturer=, model= or slot-id=, and the key with object= (and id=)"
                    ));
                }
            }
        }
        for attr in query.split('&').filter(|a| !a.is_empty()) {
            let (name, value) = attr
                .split_once('=')
                .ok_or_else(|| format!("{attr:?} is not a name=value attribute"))?;
            once(name)?;
            match name {
                "module-path" => {
                    let p = PathBuf::from(pct_decode_utf8(name, value)?);
                    if !p.is_absolute() {
                        return Err(format!(
                            "module-path {:?} must be an absolute path",
                            p.display().to_string()
                        ));
                    }
                    uri.module_path = Some(p);
                }
                "pin-value" | "pin-source" => {
                    return Err(format!(
                        "{name} is not accepted: the PIN is never part of the config; put it in an owner-only (0600) file and name that file with pin_file"
                    ));
                }
                "module-name" => {
                    return Err(
                        "module-name is not supported: give the module's full path with module (or module-path in the URI)"
                            .to_owned(),
                    );
                }
                other => {
                    return Err(format!(
                        "query attribute {other:?} is not supported (only module-path is)"
                    ));
                }
            }
        }
        uri.object = match object {
            Some(o) if !o.is_empty() => o,
            _ => {
                return Err(
                    "object= is missing: name the key, e.g. pkcs11:token=device;object=asset-agent (a key is generated under that label on first start)"
                        .to_owned(),
                );
            }
        };
        if uri.token.is_none() && uri.serial.is_none() && uri.slot_id.is_none() {
            return Err(
                "no token is selected: add token=<label> (or serial= or slot-id=)".to_owned(),
            );
        }
        Ok(uri)
    }
}

impl fmt::Display for Pkcs11Uri {
    /// The canonical form, without the module path (it is shown apart).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("pkcs11:")?;
        let mut sep = "";
        let mut attr = |f: &mut fmt::Formatter<'_>, name: &str, value: &[u8]| {
            let r = write!(f, "{sep}{name}={}", pct_encode(value));
            sep = ";";
            r
        };
        if let Some(v) = &self.token {
            attr(f, "token", v.as_bytes())?;
        }
        if let Some(v) = &self.manufacturer {
            attr(f, "manufacturer", v.as_bytes())?;
        }
        if let Some(v) = &self.model {
            attr(f, "model", v.as_bytes())?;
        }
        if let Some(v) = &self.serial {
            attr(f, "serial", v.as_bytes())?;
        }
        if let Some(v) = self.slot_id {
            attr(f, "slot-id", v.to_string().as_bytes())?;
        }
        attr(f, "object", self.object.as_bytes())?;
        if let Some(id) = &self.id {
            f.write_str(";id=")?;
            for b in id {
                write!(f, "%{b:02x}")?;
            }
        }
        Ok(())
    }
}

/// RFC 3986 unreserved characters plus the ones RFC 7512 allows unescaped in values.
fn is_plain(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~:[]@!$'()*+,".contains(&b)
}

fn pct_encode(value: &[u8]) -> String {
    let mut out = String::with_capacity(value.len());
    for &b in value {
        if is_plain(b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn pct_decode(name: &str, value: &str) -> Result<Vec<u8>, String> {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| {
                    format!(
                        "{name}={value:?} has a bad percent escape (write %XX with two hex digits)"
                    )
                })?;
            out.push(hex);
            i += 3;
        } else {
            out.push(b);
            i += 1;
        }
    }
    Ok(out)
}

fn pct_decode_utf8(name: &str, value: &str) -> Result<String, String> {
    String::from_utf8(pct_decode(name, value)?)
        .map_err(|_| format!("{name}={value:?} is not UTF-8 once decoded"))
}

// === impl BackendName ===

impl Named for BackendName {
    const NAMES: &'static [(&'static str, Self)] =
        &[("file", Self::File), ("pkcs11", Self::Pkcs11)];
}

impl<'de> Deserialize<'de> for BackendName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        units::named(d)
    }
}

// === impl Check ===

impl Check<'_> {
    /// Validates a `[key]`-shaped table whose dotted name is `prefix` (`"key"` for the
    /// agent's own); a file key defaults to `<state>/device-key.pem`. Problems are recorded
    /// under `<prefix>.<name>`; a placeholder file key is returned when the table is
    /// invalid, so validation carries on.
    pub(crate) fn key(&mut self, prefix: &str, raw: RawKey, state: &Path) -> Key {
        let k = |name: &str| format!("{prefix}.{name}");
        let bits = raw.bits.unwrap_or(DEFAULT_KEY_BITS);
        if !KEY_BITS.contains(&bits) {
            self.invalid(
                &k("bits"),
                format!("must be 2048, 3072 or 4096, got {bits}"),
            );
        }
        let name = raw.backend.unwrap_or(BackendName::File);
        let (selector, got) = (k("backend"), name.name());
        let placeholder = || KeyBackend::File {
            path: state.join(DEFAULT_KEY_FILE),
        };
        let backend = match name {
            BackendName::File => {
                for (key, set) in [
                    ("uri", raw.uri.is_some()),
                    ("module", raw.module.is_some()),
                    ("pin_file", raw.pin_file.is_some()),
                ] {
                    let v = set.then_some(());
                    self.unused(&k(key), &v, &selector, "pkcs11", got);
                }
                let path = self
                    .path(&k("path"), raw.path)
                    .unwrap_or_else(|| state.join(DEFAULT_KEY_FILE));
                KeyBackend::File { path }
            }
            BackendName::Pkcs11 => {
                self.unused(&k("path"), &raw.path, &selector, "file", got);
                let when = format!(" (required when {selector} = \"pkcs11\")");
                let uri = match raw.uri {
                    None => {
                        self.missing(&k("uri"), &when);
                        None
                    }
                    Some(s) => match Pkcs11Uri::parse(s.trim()) {
                        Ok(u) => Some(u),
                        Err(rule) => {
                            self.invalid(&k("uri"), rule);
                            None
                        }
                    },
                };
                let module = self.path(&k("module"), raw.module);
                let module = match (module, uri.as_ref().and_then(|u| u.module_path.clone())) {
                    (Some(m), Some(u)) if m != u => {
                        self.invalid(
                            &k("module"),
                            format!(
                                "{} differs from module-path {} in {}: give the module once",
                                m.display(),
                                u.display(),
                                k("uri")
                            ),
                        );
                        None
                    }
                    (Some(m), _) | (None, Some(m)) => Some(m),
                    (None, None) => {
                        if uri.is_some() {
                            self.missing(
                                &k("module"),
                                &format!(
                                    "{when}; e.g. /usr/lib/softhsm/libsofthsm2.so or /usr/lib/x86_64-linux-gnu/pkcs11/libtpm2_pkcs11.so, or module-path in the URI"
                                ),
                            );
                        }
                        None
                    }
                };
                let pin_file = if raw.pin_file.is_none() {
                    self.missing(&k("pin_file"), &when);
                    None
                } else {
                    self.path(&k("pin_file"), raw.pin_file)
                };
                match (uri, module, pin_file) {
                    (Some(uri), Some(module), Some(pin_file)) => {
                        KeyBackend::Pkcs11(Box::new(Pkcs11 {
                            uri,
                            module,
                            pin_file,
                            lock_dir: state.to_owned(),
                        }))
                    }
                    _ => placeholder(),
                }
            }
        };
        Key { backend, bits }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_attributes_the_agent_uses() {
        let u = Pkcs11Uri::parse(
            "pkcs11:token=My%20Token;object=device-key;id=%01%a2;serial=42;slot-id=3;type=private?module-path=/usr/lib/softhsm/libsofthsm2.so",
        )
        .unwrap();
        assert_eq!(u.token.as_deref(), Some("My Token"));
        assert_eq!(u.object, "device-key");
        assert_eq!(u.id.as_deref(), Some(&[0x01, 0xa2][..]));
        assert_eq!(u.serial.as_deref(), Some("42"));
        assert_eq!(u.slot_id, Some(3));
        assert_eq!(
            u.module_path.as_deref(),
            Some(Path::new("/usr/lib/softhsm/libsofthsm2.so"))
        );
        assert_eq!(
            u.to_string(),
            "pkcs11:token=My%20Token;serial=42;slot-id=3;object=device-key;id=%01%a2"
        );
        assert_eq!(Pkcs11Uri::parse(&u.to_string()).unwrap().module_path, None);
    }

    #[test]
    fn refuses_what_it_cannot_honour() {
        for (uri, says) in [
            ("token=a;object=b", "must start with \"pkcs11:\""),
            ("pkcs11:token=a", "object= is missing"),
            ("pkcs11:object=b", "no token is selected"),
            (
                "pkcs11:token=a;object=b?pin-value=1234",
                "pin-value is not accepted",
            ),
            (
                "pkcs11:token=a;object=b?pin-source=file:/p",
                "pin-source is not accepted",
            ),
            (
                "pkcs11:token=a;object=b?module-name=softhsm2",
                "module-name",
            ),
            ("pkcs11:token=a;object=b?module-path=lib.so", "absolute"),
            ("pkcs11:token=a;object=b;token=c", "appears twice"),
            ("pkcs11:token=a;object=b;type=cert", "type=private"),
            ("pkcs11:token=a;object=b;library-version=1", "not supported"),
            ("pkcs11:token=a;object=b%zz", "percent escape"),
            ("pkcs11:token=a;object=b%ff", "not UTF-8"),
            ("pkcs11:token=a;object", "name=value"),
            ("pkcs11:token=a;object=b;slot-id=x", "slot number"),
        ] {
            let err = Pkcs11Uri::parse(uri).unwrap_err();
            assert!(err.contains(says), "{uri}: {err}");
        }
    }

    #[test]
    fn the_scheme_is_case_insensitive() {
        assert!(Pkcs11Uri::parse("PKCS11:token=a;object=b").is_ok());
    }
}
