//! One identity the agent holds: the device's own (`[asset]`, `[key]`) or a gateway
//! child's (`[children.NAME]`). Both are the same type, built by the one function
//! [`Identity::build`]: a key, a flow (a sibling of the gateway's for a child), a refresh
//! loop with its handle and token cache, the status facts, and who may use it.

use std::path::Path;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::backoff::Jitter;
use crate::config::Access;
use crate::keys::Signer;
use crate::token::body::Prepared;
use crate::token::cache::{Cache, Owner};
use crate::token::flow::Flow;
use crate::token::gate::Gate;
use crate::token::refresher::{Handle, Policy, Refresher};
use crate::token::status::Info;

/// What a caller may do with one identity by its lists alone (admins may do everything,
/// which the API decides from the caller's role).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Grant {
    /// Its token, watch stream and status.
    Token,
    /// Also `sign` with its key.
    Signer,
}

/// One identity: its key, its tokens, its facts and who may use it.
pub struct Identity {
    /// `None` for the device's own identity, the child's name otherwise.
    pub name: Option<String>,
    pub tokens: Handle,
    pub signer: Arc<dyn Signer>,
    pub info: Info,
    /// Its `GET .../token` body, prepared once per token.
    pub token_body: Prepared,
    /// Who may use it besides admins.
    pub access: Access,
    /// Fires when the identity stops (a child removed or restarted by a reload).
    pub(crate) stop: CancellationToken,
}

/// Everything [`Identity::build`] needs.
pub struct Parts<'a> {
    pub name: Option<String>,
    pub signer: Arc<dyn Signer>,
    /// Its flow: the gateway's own, or a sibling of it.
    pub flow: Flow,
    pub policy: Policy,
    pub jitter: Box<dyn Jitter>,
    pub gate: Arc<Gate>,
    /// Where its token cache lives.
    pub state_dir: &'a Path,
    pub instance_url: String,
    pub client_id: String,
    pub device_id: String,
    pub auth_method: &'static str,
    pub access: Access,
    pub stop: CancellationToken,
}

// === impl Identity ===

impl Identity {
    /// Builds an identity and the refresh loop that keeps its token; the caller runs the
    /// loop (until `parts.stop`).
    pub fn build(parts: Parts<'_>) -> (Self, Refresher) {
        let kid = parts.signer.public_jwk().kid.clone();
        let cache = Cache::new(
            parts.state_dir,
            Owner {
                instance_url: parts.instance_url,
                client_id: parts.client_id,
                device_id: parts.device_id.clone(),
                key_thumbprint: kid.clone(),
                verification: parts.flow.verifier.fingerprint(),
            },
            parts.signer.clone(),
        );
        let (refresher, tokens) =
            Refresher::new(parts.flow, parts.policy, parts.jitter, Some(cache));
        let identity = Self {
            name: parts.name,
            tokens,
            signer: parts.signer,
            info: Info {
                device_id: parts.device_id,
                key_thumbprint: kid,
                auth_method: parts.auth_method,
            },
            token_body: Prepared::default(),
            access: parts.access,
            stop: parts.stop,
        };
        (identity, refresher.with_gate(parts.gate))
    }

    /// Whether this is the device's own identity.
    pub fn is_own(&self) -> bool {
        self.name.is_none()
    }

    /// What a caller with `uid`, primary `gid` and supplementary `groups` may do with it by
    /// its lists.
    pub fn grant(&self, uid: u32, gid: u32, groups: &[u32]) -> Option<Grant> {
        grant(&self.access, uid, gid, groups)
    }

    /// Whether its lists grant anything to a group (then a caller's supplementary groups
    /// must be read).
    pub fn grants_groups(&self) -> bool {
        !self.access.allow_gids.is_empty() || !self.access.signer_gids.is_empty()
    }
}

/// What `access` grants a caller with `uid`, primary `gid` and supplementary `groups`.
pub fn grant(access: &Access, uid: u32, gid: u32, groups: &[u32]) -> Option<Grant> {
    let member = |uids: &[u32], gids: &[u32]| {
        uids.contains(&uid) || gids.contains(&gid) || groups.iter().any(|g| gids.contains(g))
    };
    if member(&access.signer_uids, &access.signer_gids) {
        Some(Grant::Signer)
    } else if member(&access.allow_uids, &access.allow_gids) {
        Some(Grant::Token)
    } else {
        None
    }
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("name", &self.name)
            .field("info", &self.info)
            .field("access", &self.access)
            .finish_non_exhaustive()
    }
}
