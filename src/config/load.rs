//! Finding and merging the config sources: the main file, its drop-ins and the
//! environment, in that order, merged by the `config` crate (`source.rs` reads each file:
//! why not `config::File` is explained there). The merged values keep their origins, which
//! `origin.rs` turns into the file or variable a validation error names.
//!
//! Every source is also deserialised *on its own* before the merge. That costs a few
//! microseconds and buys error messages that name the file or the environment variable
//! holding an unknown key or a malformed value, which the merged result cannot tell us.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use super::Config;
use super::error::Error;
use super::origin::{ENV_PREFIX, ENV_SEPARATOR, Origins};
use super::paths::{self, DROP_IN_DIR};
use super::raw::{RawConfig, SECTIONS};
use super::rules::Context;
use super::source::{self, FileSource};
use super::validate;

/// `ASSET_AGENT_*` variables that belong to the agent but are not config keys: the config
/// path, the log filter and the socket for client commands.
pub const NON_CONFIG_VARS: [&str; 3] = [
    "ASSET_AGENT_CONFIG",
    "ASSET_AGENT_LOG",
    "ASSET_AGENT_SOCKET",
];

const MERGED: &str = "the merged configuration";

/// What [`Config::load`] needs from the outside world, passed in so tests can fake it.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// `--config PATH`. When `None`, `ASSET_AGENT_CONFIG` from [`env`](Self::env) is used,
    /// then the default path. An explicit path must exist; the default one need not.
    pub path: Option<PathBuf>,
    /// The environment: usually [`LoadOptions::from_process`]'s copy of the process
    /// environment, a fixed map in tests. Supplies `ASSET_AGENT_<SECTION>__<KEY>`
    /// overrides and the variables the default paths depend on (`STATE_DIRECTORY`,
    /// `RUNTIME_DIRECTORY`, `CONFIGURATION_DIRECTORY`, `XDG_*`, `HOME`).
    pub env: HashMap<String, String>,
    /// The effective uid that selects system (0) or per-user default paths; `None` reads
    /// it from `/proc/self/status`.
    pub euid: Option<u32>,
    /// Where the default `asset.device_id` comes from (`/etc/machine-id`).
    pub machine_id_path: PathBuf,
}

/// The `ASSET_AGENT_*` part of the environment, sorted out.
struct EnvKeys {
    /// Config overrides by variable name, sorted so checks report in a stable order.
    keys: BTreeMap<String, String>,
    /// See [`Config::ignored_env`].
    ignored: Vec<String>,
}

// === impl LoadOptions ===

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            path: None,
            env: HashMap::new(),
            euid: None,
            machine_id_path: PathBuf::from("/etc/machine-id"),
        }
    }
}

impl LoadOptions {
    /// Options with `path` (from `--config`) and `env`; the euid is detected and the
    /// machine id read from `/etc/machine-id`.
    pub fn new(path: Option<PathBuf>, env: HashMap<String, String>) -> Self {
        Self {
            path,
            env,
            ..Self::default()
        }
    }

    /// Options for the real process: its environment (variables that are not valid UTF-8
    /// are skipped; none of ours can be) and `path` from `--config`.
    pub fn from_process(path: Option<PathBuf>) -> Self {
        let env = std::env::vars_os()
            .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
            .collect();
        Self {
            path,
            env,
            ..Self::default()
        }
    }
}

// === impl Config ===

impl Config {
    /// Reads the main file, the drop-ins and the environment, merges them and validates
    /// the result.
    ///
    /// # Errors
    /// Any [`Error`]: an explicit file that is missing or unreadable, TOML syntax, an
    /// unknown key, a malformed value, an empty `ASSET_AGENT_*__*` variable, or a broken
    /// rule. Several rule violations come back together as [`Error::Several`].
    pub fn load(opts: &LoadOptions) -> Result<Config, Error> {
        let euid = opts.euid.unwrap_or_else(paths::effective_uid);
        let env = EnvKeys::split(&opts.env)?;
        let explicit = opts.path.clone().or_else(|| {
            opts.env
                .get("ASSET_AGENT_CONFIG")
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        });
        let main = explicit
            .clone()
            .or_else(|| paths::config_file(&opts.env, euid));

        let mut layers = Vec::new();
        let mut main_found = false;
        if let Some(main) = &main {
            match FileSource::read(main)? {
                Some(layer) => {
                    layers.push(layer);
                    main_found = true;
                }
                None if explicit.is_some() => {
                    return Err(Error::FileMissing { path: main.clone() });
                }
                None => {}
            }
            let dir = main.parent().unwrap_or(Path::new("")).join(DROP_IN_DIR);
            for path in source::toml_files(&dir)? {
                layers.extend(FileSource::read(&path)?);
            }
        }

        for layer in &layers {
            layer.deserialize::<RawConfig>()?;
        }
        for (var, value) in &env.keys {
            check_alone(env_source([(var.clone(), value.clone())]), var)?;
        }

        let files: Vec<PathBuf> = layers.iter().map(|l| l.path.clone()).collect();
        let mut builder = config::Config::builder();
        for layer in layers {
            builder = builder.add_source(layer);
        }
        let merged = builder
            .add_source(env_source(env.keys))
            .build()
            .map_err(|e| Error::from_config(e, MERGED))?;
        let origins = Origins::of(&merged, &SECTIONS);
        let raw: RawConfig = merged
            .try_deserialize()
            .map_err(|e| Error::from_config(e, MERGED))?;

        let ctx = Context {
            env: &opts.env,
            euid,
            machine_id_path: &opts.machine_id_path,
            origins: &origins,
            main_file: main.as_deref(),
            main_found,
        };
        // Child files: `gateway.children_dir`, else `children.d` next to the main file.
        let children_dir = match &raw.gateway.children_dir {
            Some(d) if d.is_absolute() => Some(d.clone()),
            Some(_) => None,
            None => main.as_deref().map(|m| {
                m.parent()
                    .unwrap_or(Path::new("/"))
                    .join(super::CHILDREN_DIR)
            }),
        };
        let declared = match &children_dir {
            Some(d) => super::children::read_dir(d)?,
            None => Vec::new(),
        };
        let mut config = validate::validate(raw, &ctx, declared)?;
        config.files = files;
        config.ignored_env = env.ignored;
        Ok(config)
    }
}

/// An environment source over `vars` only. `try_parsing` stays off: it would turn a serial
/// number "00123" into the integer 123. Numbers and booleans still work, because the
/// `config` crate converts strings when a field asks for `u32` or `bool`.
fn env_source(vars: impl IntoIterator<Item = (String, String)>) -> config::Environment {
    config::Environment::with_prefix(ENV_PREFIX.trim_end_matches('_'))
        .prefix_separator("_")
        .separator(ENV_SEPARATOR)
        .source(Some(vars.into_iter().collect()))
}

/// Deserialises one source by itself so an error can name it.
fn check_alone(
    source: impl config::Source + Send + Sync + 'static,
    origin: &str,
) -> Result<(), Error> {
    config::Config::builder()
        .add_source(source)
        .build()
        .and_then(config::Config::try_deserialize::<RawConfig>)
        .map(drop)
        .map_err(|e| Error::from_config(e, origin))
}

// === impl EnvKeys ===

impl EnvKeys {
    /// Only `ASSET_AGENT_` variables with a `__` are config keys. An empty one is an error:
    /// quietly treating it as unset, or as an empty value, would each surprise someone.
    fn split(env: &HashMap<String, String>) -> Result<Self, Error> {
        let mut keys = BTreeMap::new();
        let mut ignored = Vec::new();
        for (var, value) in env {
            let Some(rest) = var.strip_prefix(ENV_PREFIX) else {
                continue;
            };
            if !rest.contains(ENV_SEPARATOR) {
                if !NON_CONFIG_VARS.contains(&var.as_str()) {
                    ignored.push(var.clone());
                }
                continue;
            }
            if value.is_empty() {
                return Err(Error::EmptyEnv { var: var.clone() });
            }
            keys.insert(var.clone(), value.clone());
        }
        ignored.sort();
        Ok(Self { keys, ignored })
    }
}
