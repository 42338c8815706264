//! A config file as a source for the `config` crate: found exactly, checked, read and
//! parsed here, then merged, deserialised and traced (`Value::origin`) by the crate.
//!
//! Why not `config::File`: it names the file relative to the working directory in every
//! origin (a path given as `/etc/asset-agent/agent.toml` comes back as
//! `../../etc/asset-agent/agent.toml`), it quietly loads `agent.toml` when `--config agent`
//! is missing, and it replaces bytes that are not UTF-8 instead of refusing the file; and
//! `File::from_str` sets no origin at all. `tests/sources.rs` pins each of these, so the
//! day the crate changes, this module can go. What is left here is the part the crate has
//! no hook for: the trust rule, an exact path, and the origin as the path was given.
//!
//! Every source is also deserialised *on its own* ([`FileSource::deserialize`]): an
//! unknown key or a malformed value is then reported with the file that holds it, even
//! when a later source overrides the value.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use config::{FileFormat, Format, Map, Value};
use serde::de::DeserializeOwned;

use super::error::Error;
use super::units;

/// A parsed config file.
#[derive(Clone, Debug)]
pub(crate) struct FileSource {
    pub path: PathBuf,
    map: Map<String, Value>,
    /// The file as written, for quoting a value back in an error.
    text: String,
}

/// `dir/*.toml`, sorted by name: the drop-ins and the children directory. Hidden files
/// (editor swap files, `.#foo.toml`) are skipped; a missing directory holds no files.
///
/// # Errors
/// [`Error::ReadDropIns`] when the directory exists but cannot be listed.
pub(crate) fn toml_files(dir: &Path) -> Result<Vec<PathBuf>, Error> {
    let listing_failed = |source| Error::ReadDropIns {
        dir: dir.to_owned(),
        source,
    };
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(listing_failed(e)),
    };
    let mut found = Vec::new();
    for entry in entries {
        let entry = entry.map_err(listing_failed)?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let path = entry.path();
        if name.ends_with(".toml") && !name.starts_with('.') && path.is_file() {
            found.push(path);
        }
    }
    found.sort_by(|a, b| a.file_name().cmp(&b.file_name()));
    Ok(found)
}

// === impl FileSource ===

impl FileSource {
    /// Reads and parses exactly `path` once it passes the trust rule; `None` if it does
    /// not exist.
    ///
    /// # Errors
    /// [`Error::Untrusted`], [`Error::ReadFile`] (a directory, not UTF-8, no permission)
    /// or [`Error::Syntax`].
    pub(crate) fn read(path: &Path) -> Result<Option<Self>, Error> {
        match super::trust::trusted(path) {
            Err(Error::Untrusted { source, .. }) if source.is_not_found() => return Ok(None),
            other => other?,
        }
        let text = match fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(Error::ReadFile {
                    path: path.to_owned(),
                    source,
                });
            }
        };
        let text = text.strip_prefix('\u{feff}').unwrap_or(&text).to_owned();
        let origin = path.display().to_string();
        let map = FileFormat::Toml
            .parse(Some(&origin), &text)
            .map_err(|source| Error::Syntax {
                path: path.to_owned(),
                source,
            })?;
        Ok(Some(Self {
            path: path.to_owned(),
            map,
            text,
        }))
    }

    /// The file as it was given, which every value from it carries as its origin.
    pub(crate) fn origin(&self) -> String {
        self.path.display().to_string()
    }

    /// This file alone as a `T`, so an error names the file.
    ///
    /// # Errors
    /// [`Error::UnknownKey`] or [`Error::Invalid`], naming this file.
    pub(crate) fn deserialize<T: DeserializeOwned>(&self) -> Result<T, Error> {
        config::Config::builder()
            .add_source(self.clone())
            .build()
            .and_then(config::Config::try_deserialize::<T>)
            .map_err(|e| self.explain(Error::from_config(e, &self.origin())))
    }

    /// Completes a "not a string" error with the value as this file spells it and the fix:
    /// `0x1F` is reported as written, not as the 31 TOML made of it.
    fn explain(&self, err: Error) -> Error {
        match err {
            Error::Invalid { key, origin, rule } if rule.starts_with(units::NOT_A_STRING) => {
                let name = key.rsplit('.').next().unwrap_or(&key).to_owned();
                let scalar = !rule.ends_with("an array") && !rule.ends_with("a table");
                let rule = match self.written(&key).filter(|_| scalar) {
                    Some(written) => format!("{rule}; quote it: {name} = \"{written}\""),
                    None => format!("{rule}; write it in quotes: {name} = \"...\""),
                };
                Error::Invalid { key, origin, rule }
            }
            other => other,
        }
    }

    /// The text of the value at dotted `key` (`asset.serial_number`, `sink[1].mode`), as the
    /// TOML parser located it in the file.
    fn written(&self, key: &str) -> Option<&str> {
        use toml::de::DeTable;
        let doc = DeTable::parse(&self.text).ok()?;
        let mut table = doc.get_ref();
        let mut parts = key.split('.').peekable();
        while let Some(part) = parts.next() {
            let (name, index) = match part.split_once('[') {
                Some((name, i)) => (name, Some(i.trim_end_matches(']').parse::<usize>().ok()?)),
                None => (part, None),
            };
            let mut value = table.get(name)?;
            if let Some(i) = index {
                value = value.get_ref().as_array()?.get(i)?;
            }
            if parts.peek().is_none() {
                return self.text.get(value.span()).map(str::trim);
            }
            table = value.get_ref().as_table()?;
        }
        None
    }
}

impl config::Source for FileSource {
    fn clone_into_box(&self) -> Box<dyn config::Source + Send + Sync> {
        Box::new(self.clone())
    }

    fn collect(&self) -> Result<Map<String, Value>, config::ConfigError> {
        Ok(self.map.clone())
    }
}
