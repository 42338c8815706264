//! Where each configuration value came from (a file or an environment variable), so a
//! validation error can name it, and how keys map to `ASSET_AGENT_*` variables.

use std::collections::HashMap;

pub(crate) const ENV_PREFIX: &str = "ASSET_AGENT_";
/// Separates the section from the key in a variable name (`SALESFORCE__INSTANCE_URL`).
pub(crate) const ENV_SEPARATOR: &str = "__";
/// The origin the `config` crate gives every environment value.
pub(crate) const CONFIG_CRATE_ENV_ORIGIN: &str = "the environment";

/// Which source each merged leaf value came from, for naming it in validation errors.
#[derive(Debug, Default)]
pub(crate) struct Origins(HashMap<String, String>);

/// The variable that overrides dotted `key`: `token.refresh_at` → `ASSET_AGENT_TOKEN__REFRESH_AT`.
pub(crate) fn env_var_for(key: &str) -> String {
    format!(
        "{ENV_PREFIX}{}",
        key.to_uppercase().replace('.', ENV_SEPARATOR)
    )
}

// === impl Origins ===

impl Origins {
    /// Reads the origin of every leaf of `sections` in the merged config.
    pub(crate) fn of(merged: &config::Config, sections: &[&str]) -> Self {
        let mut map = HashMap::new();
        // An array of tables (`[[sink]]`): each entry is named by its own source.
        if let Ok(entries) = merged.get_array("sink") {
            for (i, entry) in entries.iter().enumerate() {
                if let Some(origin) = entry.origin() {
                    map.insert(format!("sink[{i}]"), origin.to_owned());
                }
            }
        }
        for &section in sections {
            let Ok(table) = merged.get_table(section) else {
                continue;
            };
            for (key, value) in table {
                let dotted = format!("{section}.{key}");
                let origin = match value.origin() {
                    Some(CONFIG_CRATE_ENV_ORIGIN) => env_var_for(&dotted),
                    Some(o) => o.to_owned(),
                    None => continue,
                };
                map.insert(dotted, origin);
            }
        }
        Self(map)
    }

    /// The file or variable that set dotted `key`, if any did. An array entry's key
    /// (`sink[0].mode`) is named by the source of the whole array.
    pub(crate) fn get(&self, key: &str) -> Option<String> {
        self.0.get(key).cloned().or_else(|| {
            let (entry, _) = key.split_once("].")?;
            self.0.get(&format!("{entry}]")).cloned()
        })
    }
}
