//! Child identities (gateway mode): `[children.NAME]` tables in the config and one file per
//! child in the children directory (`[gateway] children_dir`, default `children.d` next to
//! the main file), so a gateway gains a child by dropping `pump-7.toml` there and reloading.
//!
//! A child's file holds the same keys as its table (`device_id`, `name`, `serial_number`,
//! ..., the caller lists and a `[key]` table shaped like the top-level `[key]`); the child is
//! named after the file. Every problem names the file, the dotted key and the rule.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::error::Error;
use super::raw::{RawAsset, RawChild};
use super::rules::Check;
use super::source::{self, FileSource};
use super::units::List;
use super::{Asset, Key, KeyBackend};

/// The directory of child files next to the main config file, unless `gateway.children_dir`
/// names another.
pub const CHILDREN_DIR: &str = "children.d";
/// At most this many children (each holds a refresh loop, a key and a cache file).
pub const MAX_CHILDREN: usize = 10_000;
/// Longest child name: it is a path component and a URL segment.
pub const MAX_CHILD_NAME: usize = 64;

/// `[gateway]`: where child files are read from.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct Gateway {
    /// The children directory, if any (it need not exist).
    pub children_dir: Option<PathBuf>,
}

/// A child identity: its own Asset, key, token and caller policy.
#[derive(Clone, Debug, PartialEq)]
pub struct Child {
    /// The child's name: `[a-z0-9][a-z0-9_-]*`, used in socket paths and state paths.
    pub name: String,
    /// What its actor token says (same rules as `[asset]`).
    pub asset: Asset,
    /// Its device key (one per child; generated on first use).
    pub key: Key,
    /// Who may use it besides admins.
    pub access: Access,
    /// Where the child's token cache and (by default) key live: `<state.dir>/children/NAME`.
    pub state_dir: PathBuf,
    /// The file it was declared in, when it came from the children directory.
    pub file: Option<PathBuf>,
}

/// Which callers may use a child: its token, watch stream and status (`allow_*`), and also
/// its `sign` route (`signer_*`). Admins may use every child; nobody else may.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct Access {
    pub allow_uids: Vec<u32>,
    pub allow_gids: Vec<u32>,
    pub signer_uids: Vec<u32>,
    pub signer_gids: Vec<u32>,
}

/// A child as read, before validation.
pub(crate) struct Declared {
    pub name: String,
    pub raw: RawChild,
    /// The children-directory file, or `None` for a `[children.NAME]` table.
    pub file: Option<PathBuf>,
}

/// Reads every `*.toml` in `dir` (sorted; hidden files skipped; a missing directory has no
/// children) as one child each.
///
/// # Errors
/// The directory or a file cannot be read, a file is not TOML or has an unknown key.
pub(crate) fn read_dir(dir: &Path) -> Result<Vec<Declared>, Error> {
    let mut out = Vec::new();
    for path in source::toml_files(dir)? {
        // A file gone since the listing was never a child.
        let Some(file) = FileSource::read(&path)? else {
            continue;
        };
        let raw: RawChild = file.deserialize()?;
        let name = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        out.push(Declared {
            name,
            raw,
            file: Some(path),
        });
    }
    Ok(out)
}

/// Whether `name` may name a child: lowercase letters, digits, `-` and `_`, starting with a
/// letter or digit, at most [`MAX_CHILD_NAME`] long.
pub fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
        && name.len() <= MAX_CHILD_NAME
}

/// What makes two configured keys one key, as far as the configuration can tell.
#[derive(Debug)]
enum KeyIdentity {
    /// A key file: the path with every existing directory resolved (`..` and symlinks),
    /// and the file's device and inode when it exists (hard links).
    File {
        resolved: PathBuf,
        inode: Option<(u64, u64)>,
    },
    /// A PKCS#11 object: the module, and the URI that selects the token and object.
    Pkcs11 {
        module: PathBuf,
        uri: Box<super::Pkcs11Uri>,
    },
}

// === impl KeyIdentity ===

impl KeyIdentity {
    fn of(key: &Key) -> Self {
        match &key.backend {
            KeyBackend::File { path } => {
                use std::os::unix::fs::MetadataExt as _;
                Self::File {
                    resolved: resolve(path),
                    inode: std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino())),
                }
            }
            KeyBackend::Pkcs11(p) => Self::Pkcs11 {
                module: resolve(&p.module),
                uri: Box::new(p.uri.clone()),
            },
        }
    }

    fn same(&self, other: &Self) -> bool {
        match (self, other) {
            (
                Self::File {
                    resolved: a,
                    inode: ia,
                },
                Self::File {
                    resolved: b,
                    inode: ib,
                },
            ) => a == b || ia.is_some() && ia == ib,
            (
                Self::Pkcs11 {
                    module: ma,
                    uri: ua,
                },
                Self::Pkcs11 {
                    module: mb,
                    uri: ub,
                },
            ) => ma == mb && ua == ub,
            _ => false,
        }
    }
}

/// `path` with its longest existing prefix resolved (symlinks, `..`) and the rest kept:
/// a key file that does not exist yet is compared by where it will be created.
fn resolve(path: &Path) -> PathBuf {
    let mut rest = Vec::new();
    let mut at = path;
    loop {
        if let Ok(real) = std::fs::canonicalize(at) {
            return rest.iter().rev().fold(real, |p, c| p.join(c));
        }
        match (at.parent(), at.file_name()) {
            (Some(parent), Some(name)) => {
                rest.push(name.to_owned());
                at = parent;
            }
            // `..` that cannot be resolved, or the root: compare as written.
            _ => return path.to_owned(),
        }
    }
}

// === impl Check: children ===

impl Check<'_> {
    /// Validates every declared child against each other and the gateway's own `[asset]`
    /// and `[key]`. Problems in a child file name that file.
    pub(super) fn children(
        &mut self,
        declared: Vec<Declared>,
        state: &Path,
        own: Option<&Asset>,
        own_key: &Key,
    ) -> Vec<Child> {
        let mut by_name: BTreeMap<String, Child> = BTreeMap::new();
        if declared.len() > MAX_CHILDREN {
            self.invalid(
                "children",
                format!("at most {MAX_CHILDREN} children, got {}", declared.len()),
            );
        }
        for d in declared {
            let before = self.problems.len();
            let file = d.file.clone();
            let child = self.child(d, state);
            if let Some(file) = &file {
                for p in &mut self.problems[before..] {
                    if let Error::Invalid { origin, .. } = p {
                        origin.get_or_insert_with(|| file.display().to_string());
                    }
                }
            }
            let Some(child) = child else { continue };
            if let Some(first) = by_name.get(&child.name) {
                let where_ = |f: &Option<PathBuf>, n: &str| {
                    f.as_ref()
                        .map_or(format!("[children.{n}]"), |p| p.display().to_string())
                };
                let rule = format!(
                    "is declared twice: in {} and in {}; remove one",
                    where_(&first.file, &first.name),
                    where_(&child.file, &child.name)
                );
                self.invalid(&format!("children.{}", child.name), rule);
                continue;
            }
            by_name.insert(child.name.clone(), child);
        }
        let children: Vec<Child> = by_name.into_values().collect();
        self.children_distinct(&children, own, own_key);
        children
    }

    /// Device ids, serial numbers and keys must not repeat: two identities with one
    /// serial number would be linked to one Asset, and one key would bind both. Key files
    /// are compared as the files they are (however the path is spelt: `..`, a symlinked
    /// directory, a hard link), PKCS#11 keys by module, token and object; a child whose
    /// key turns out to be another identity's once opened is refused then (`gateway`).
    fn children_distinct(&mut self, children: &[Child], own: Option<&Asset>, own_key: &Key) {
        let mut device_ids: BTreeMap<&str, String> = BTreeMap::new();
        let mut serials: BTreeMap<&str, String> = BTreeMap::new();
        let mut keys: Vec<(KeyIdentity, String)> = Vec::new();
        if let Some(a) = own {
            device_ids.insert(&a.device_id, "asset".to_owned());
            serials.insert(&a.serial_number, "asset".to_owned());
        }
        keys.push((KeyIdentity::of(own_key), "key".to_owned()));
        for c in children {
            let at = format!("children.{}", c.name);
            if let Some(other) = device_ids.insert(&c.asset.device_id, at.clone()) {
                self.invalid(
                    &format!("{at}.device_id"),
                    format!(
                        "{:?} is also {other}.device_id; every identity needs its own device id",
                        c.asset.device_id
                    ),
                );
            }
            if let Some(other) = serials.insert(&c.asset.serial_number, at.clone()) {
                self.invalid(
                    &format!("{at}.serial_number"),
                    format!(
                        "{:?} is also {other}.serial_number; Salesforce would link both to one Asset",
                        c.asset.serial_number
                    ),
                );
            }
            let id = KeyIdentity::of(&c.key);
            if let Some((_, other)) = keys.iter().find(|(k, _)| k.same(&id)) {
                let (field, what) = match &c.key.backend {
                    KeyBackend::File { path } => ("path", path.display().to_string()),
                    KeyBackend::Pkcs11(p) => ("uri", format!("object {:?}", p.uri.object)),
                };
                self.invalid(
                    &format!("{at}.key.{field}"),
                    format!(
                        "{what} is also `{other}.{field}` (or its default), the same key; every identity needs its own key: give {at} a key of its own"
                    ),
                );
            }
            keys.push((id, format!("{at}.key")));
        }
    }

    fn child(&mut self, mut d: Declared, state: &Path) -> Option<Child> {
        let at = format!("children.{}", d.name);
        if !valid_name(&d.name) {
            let rule = format!(
                "{:?} is not a valid child name: use 1 to {MAX_CHILD_NAME} lowercase letters, digits, '-' or '_', starting with a letter or digit{}",
                d.name,
                d.file
                    .as_ref()
                    .map_or(String::new(), |_| " (rename the file)".to_owned())
            );
            self.invalid(&at, rule);
            return None;
        }
        let r = &d.raw;
        let Some(device_id) = r.device_id.clone() else {
            self.child_missing(&at, "device_id", d.file.as_deref());
            return None;
        };
        let asset = self.asset_fields(
            &at,
            RawAsset {
                device_id: Some(device_id),
                name: r.name.clone(),
                serial_number: r.serial_number.clone(),
                account_id: r.account_id.clone(),
                contact_id: r.contact_id.clone(),
                id: r.id.clone(),
                token_name: r.token_name.clone(),
            },
            d.file.as_deref(),
        );
        let state_dir = state.join("children").join(&d.name);
        let raw_key = d.raw.key.take().unwrap_or_default();
        let key = self.key(&format!("{at}.key"), raw_key, &state_dir);
        let r = &d.raw;
        let list = |l: &Option<List<u32>>| l.as_ref().map(|l| l.0.clone()).unwrap_or_default();
        Some(Child {
            name: d.name,
            asset: asset?,
            key,
            access: Access {
                allow_uids: list(&r.allow_uids),
                allow_gids: list(&r.allow_gids),
                signer_uids: list(&r.signer_uids),
                signer_gids: list(&r.signer_gids),
            },
            state_dir,
            file: d.file,
        })
    }

    fn child_missing(&mut self, at: &str, field: &str, file: Option<&Path>) {
        let hint = match file {
            Some(f) => format!("set {field} = \"...\" in {}", f.display()),
            None => format!("set {field} = \"...\" in the [{at}] table"),
        };
        self.problems.push(Error::Missing {
            key: format!("{at}.{field}"),
            condition: String::new(),
            hint,
        });
    }

    /// The Asset fields of a child, with `[asset]`'s rules under the `at.` prefix.
    fn asset_fields(&mut self, at: &str, mut raw: RawAsset, file: Option<&Path>) -> Option<Asset> {
        let mut complete = true;
        for (field, value) in [
            ("name", &mut raw.name),
            ("serial_number", &mut raw.serial_number),
        ] {
            if value.is_none() {
                self.child_missing(at, field, file);
                complete = false;
                // A stand-in, so the other fields are still checked (and not reported
                // missing a second time).
                *value = Some("-".to_owned());
            }
        }
        let asset = self.asset_at(at, raw);
        asset.filter(|_| complete)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in ["pump-7", "a", "0", "ble_tag_12"] {
            assert!(valid_name(ok), "{ok}");
        }
        let long = "a".repeat(MAX_CHILD_NAME + 1);
        for bad in [
            "",
            "Pump",
            "-a",
            "_a",
            "a/b",
            "a.b",
            "..",
            "a b",
            long.as_str(),
        ] {
            assert!(!valid_name(bad), "{bad}");
        }
    }
}
