//! Gateway mode: one agent holding many identities. Besides its own (`[asset]`, served at
//! `/v1/token`), a gateway holds **children** (`[children.NAME]` tables and files in the
//! children directory): devices behind it that cannot run an agent (Modbus meters, BLE
//! tags, PLCs), each its own Asset in Salesforce with its own key and asset token.
//!
//! - Each child has its own refresh loop ([`Refresher`]) under the same fleet rules as the
//!   gateway's (retry budget, refresh band, boot spread, on-demand policy), its own key,
//!   and its own token cache in `<state.dir>/children/NAME/`.
//! - All identities share one subject access token, one HTTPS client and one JWKS cache
//!   ([`Flow::sibling`]), and every attempt passes one [`Gate`]: a bounded number in
//!   flight, started a minimum spacing apart, so 200 children booting at once never mean
//!   200 simultaneous exchanges.
//! - [`Children::sync`] applies a reloaded configuration: added children start, removed
//!   ones stop and are no longer served at once (their key and cache stay on disk),
//!   changed ones restart; the others are not touched.
//! - The socket API serves each child under `/v1/assets/NAME/...` to admins and to the
//!   callers its `allow_*`/`signer_*` lists name, and to nobody else (`api::routes::assets`).

mod identity;
mod key;
mod metrics;

pub use identity::{Grant, Identity, Parts, grant};
pub use key::open_key;
pub use metrics::ChildMetrics;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::backoff::OsJitter;
use crate::config::{self, Child};
use crate::keys::OpenError;
use crate::tasks::Tasks;
use crate::token::flow::Flow;
use crate::token::gate::Gate;
use crate::token::refresher::Policy;

/// A child could not be started.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the key of child {name} is unusable")]
    Key {
        name: String,
        #[source]
        source: OpenError,
    },
    #[error("the key of child {name} could not be opened: the runtime is shutting down")]
    KeyTask { name: String },
    #[error(
        "the key of child {name} ({location}) is the key of {other} too (thumbprint {kid}); every identity needs its own key: give children.{name}.key a file or PKCS#11 object of its own"
    )]
    SharedKey {
        name: String,
        location: String,
        other: String,
        kid: String,
    },
    #[error("the state directory of child {name} is unusable")]
    StateDir {
        name: String,
        #[source]
        source: crate::fsutil::Error,
    },
}

/// One running child: its identity, and the configuration it was started from.
pub struct Running {
    pub config: Child,
    pub identity: Arc<Identity>,
}

/// What [`Children::sync`] did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Changes {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub restarted: Vec<String>,
    /// Children that could not be started (logged); they are not served.
    pub failed: Vec<String>,
}

/// How a child's refresh loop is built: a flow sharing the gateway's subject token.
struct Factory {
    template: Flow,
    policy: Policy,
    gate: Arc<Gate>,
    instance_url: String,
    client_id: String,
    auth_method: &'static str,
}

/// The running children, by name.
pub struct Children {
    map: RwLock<BTreeMap<String, Arc<Running>>>,
    /// Whether some running child grants access to a group (`allow_gids`, `signer_gids`):
    /// then a caller's supplementary groups must be read even where the gateway's own
    /// lists would not need them.
    group_grants: AtomicBool,
    /// One [`Children::sync`] at a time (the start-up one and a reload may overlap).
    syncing: tokio::sync::Mutex<()>,
    factory: std::sync::Mutex<Factory>,
    tasks: Tasks,
    cancel: CancellationToken,
}

// === impl Changes ===

impl Changes {
    /// One line for the reload report, `None` when no child changed.
    pub fn summary(&self) -> Option<String> {
        let mut parts = Vec::new();
        for (what, names) in [
            ("added", &self.added),
            ("removed", &self.removed),
            ("restarted", &self.restarted),
            ("failed to start", &self.failed),
        ] {
            if !names.is_empty() {
                parts.push(format!("children {what}: {}", names.join(", ")));
            }
        }
        (!parts.is_empty()).then(|| parts.join("; "))
    }
}

// === impl Children ===

impl Children {
    /// A set of children whose flows are siblings of `template` (a sibling of the
    /// gateway's own flow) and whose loops run under `tasks` until `cancel`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        template: Flow,
        policy: Policy,
        gate: Arc<Gate>,
        sf: &config::Salesforce,
        auth_method: &'static str,
        tasks: Tasks,
        cancel: CancellationToken,
    ) -> Self {
        Self {
            map: RwLock::new(BTreeMap::new()),
            group_grants: AtomicBool::new(false),
            syncing: tokio::sync::Mutex::new(()),
            factory: std::sync::Mutex::new(Factory {
                template,
                policy,
                gate,
                instance_url: sf.instance_url.to_string(),
                client_id: sf.client_id.clone(),
                auth_method,
            }),
            tasks,
            cancel,
        }
    }

    /// The running child `name`.
    pub fn get(&self, name: &str) -> Option<Arc<Running>> {
        self.map.read().ok()?.get(name).cloned()
    }

    /// The identity of the running child `name`.
    pub fn identity(&self, name: &str) -> Option<Arc<Identity>> {
        self.get(name).map(|c| c.identity.clone())
    }

    /// The identities of every running child, by name.
    pub fn identities(&self) -> Vec<Arc<Identity>> {
        self.all().iter().map(|c| c.identity.clone()).collect()
    }

    /// Whether some running child grants access by group, so that a caller's
    /// supplementary groups can decide what it may do.
    pub fn grant_groups(&self) -> bool {
        self.group_grants.load(Ordering::Relaxed)
    }

    /// Recomputes [`Children::grant_groups`] after the map changed.
    fn note_groups(&self, map: &BTreeMap<String, Arc<Running>>) {
        let any = map.values().any(|c| c.identity.grants_groups());
        self.group_grants.store(any, Ordering::Relaxed);
    }

    /// Every running child, by name.
    pub fn all(&self) -> Vec<Arc<Running>> {
        self.map
            .read()
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default()
    }

    /// Makes the running children those of `wanted`: starts new ones, stops removed ones
    /// (no longer served from this moment; key and cache stay), restarts changed ones and
    /// leaves the others alone. Keys are opened (or generated) off the runtime, one
    /// child after another, each child served as soon as it has started.
    pub async fn sync(&self, wanted: &[Child]) -> Changes {
        let _one_at_a_time = self.syncing.lock().await;
        let mut changes = Changes::default();
        let current: BTreeMap<String, Arc<Running>> =
            self.map.read().map(|m| m.clone()).unwrap_or_default();
        for (name, running) in &current {
            match wanted.iter().find(|c| &c.name == name) {
                Some(c) if c == &running.config => {}
                Some(_) => {
                    self.stop(name);
                    changes.restarted.push(name.clone());
                }
                None => {
                    self.stop(name);
                    tracing::info!(child = %name, key = %running.config.key,
                        "child removed: its token is no longer served (its key is kept)");
                    changes.removed.push(name.clone());
                }
            }
        }
        for child in wanted {
            if self.get(&child.name).is_some() {
                continue;
            }
            match self.start(child).await {
                Ok(()) => {
                    if !changes.restarted.contains(&child.name) {
                        changes.added.push(child.name.clone());
                    }
                }
                Err(e) => {
                    tracing::error!(child = %child.name, "could not start the child: {}",
                        crate::error::chain(&e));
                    changes.restarted.retain(|n| n != &child.name);
                    changes.failed.push(child.name.clone());
                }
            }
        }
        changes
    }

    fn stop(&self, name: &str) {
        let removed = self.map.write().ok().and_then(|mut m| {
            let r = m.remove(name);
            self.note_groups(&m);
            r
        });
        if let Some(r) = removed {
            r.identity.stop.cancel();
        }
    }

    /// Starts one child: opens (or generates) its key, builds its flow and cache and
    /// spawns its refresh loop.
    ///
    /// # Errors
    /// See [`Error`].
    async fn start(&self, child: &Child) -> Result<(), Error> {
        let name = child.name.clone();
        crate::fsutil::ensure_dir(&child.state_dir, 0o700).map_err(|source| Error::StateDir {
            name: name.clone(),
            source,
        })?;
        let key = child.key.clone();
        let opened = tokio::task::spawn_blocking(move || open_key(&key))
            .await
            .map_err(|_| Error::KeyTask { name: name.clone() })?
            .map_err(|source| Error::Key {
                name: name.clone(),
                source,
            })?;
        let signer = opened.signer;
        let kid = signer.public_jwk().kid.clone();
        if opened.created {
            tracing::info!(child = %name, key = %opened.location, kid = %kid,
                "child key generated");
        }
        let Ok(factory) = self.factory.lock() else {
            return Ok(());
        };
        // The same key under another name (a path spelt differently, a link, the same
        // token object): whoever may sign for this child would sign as the other identity.
        let other = if factory.template.signer.public_jwk().kid == kid {
            Some("the gateway ([key])".to_owned())
        } else {
            self.all()
                .iter()
                .find(|c| c.name() != name && c.identity.info.key_thumbprint == kid)
                .map(|c| format!("child {}", c.name()))
        };
        if let Some(other) = other {
            return Err(Error::SharedKey {
                name,
                location: opened.location.to_string(),
                other,
                kid,
            });
        }
        let flow = factory.template.sibling(
            signer.clone(),
            crate::actor::Identity::of(&child.asset),
            broadcast::channel(1).0,
        );
        let stop = self.cancel.child_token();
        let (identity, refresher) = Identity::build(Parts {
            name: Some(name.clone()),
            signer,
            flow,
            policy: factory.policy.clone(),
            jitter: Box::new(OsJitter),
            gate: factory.gate.clone(),
            state_dir: &child.state_dir,
            instance_url: factory.instance_url.clone(),
            client_id: factory.client_id.clone(),
            device_id: child.asset.device_id.clone(),
            auth_method: factory.auth_method,
            access: child.access.clone(),
            stop: stop.clone(),
        });
        let running = Arc::new(Running {
            config: child.clone(),
            identity: Arc::new(identity),
        });
        drop(factory);
        if let Ok(mut m) = self.map.write() {
            m.insert(name.clone(), running);
            self.note_groups(&m);
        }
        // The field is not called `name`: a JSON line's span object already has a "name"
        // (the span's, "child"), and most parsers keep only the last of two equal keys.
        let span = tracing::info_span!("child", child = %name);
        let task = tracing::Instrument::instrument(refresher.run(stop.clone()), span);
        self.tasks.spawn_until("child refresh loop", task, stop);
        Ok(())
    }
}

impl std::fmt::Debug for Children {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<String> = self.all().iter().map(|c| c.config.name.clone()).collect();
        f.debug_struct("Children").field("names", &names).finish()
    }
}

// === impl Running ===

impl Running {
    pub fn name(&self) -> &str {
        &self.config.name
    }
}

impl std::fmt::Debug for Running {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Running")
            .field("name", &self.config.name)
            .field("info", &self.identity.info)
            .finish_non_exhaustive()
    }
}
