//! Who may do what with an identity: the one rule every route goes through
//! ([`authorize`]), failing closed. The route table (`super::router`) says what each route
//! needs; the identity's lists (`crate::gateway::Identity::grant`) say what a caller holds.

use super::peer::{Caller, Role};
use crate::gateway::{Grant, Identity};

/// A caller may not do what it asked with an identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Denied {
    /// The role the route needs.
    pub needs: Role,
    /// What the caller holds on that identity.
    pub has: Option<Role>,
}

/// Whether `caller` may use `identity` for what needs `needs`. Admins (by their role on
/// the socket) may do everything with every identity; anyone else what the identity's
/// own lists grant (for the device's own identity: `[api]` and the socket's group; for a
/// child: its `allow_*`/`signer_*`). Nothing else grants anything.
///
/// # Errors
/// [`Denied`] when the caller holds less than `needs` on `identity`.
pub fn authorize(caller: &Caller, identity: &Identity, needs: Role) -> Result<(), Denied> {
    let peer = &caller.peer;
    decide(
        caller.role,
        || identity.grant(peer.uid, peer.gid, &peer.groups),
        needs,
    )
}

/// [`authorize`]'s rule: a caller's role on the socket counts only when it is admin; else
/// what the identity's lists `grant`. No grant, or too little, is a refusal.
pub(super) fn decide(
    role: Option<Role>,
    grant: impl FnOnce() -> Option<Grant>,
    needs: Role,
) -> Result<(), Denied> {
    let has = match role {
        Some(Role::Admin) => Some(Role::Admin),
        Some(Role::Signer | Role::Token) | None => grant().map(|g| match g {
            Grant::Token => Role::Token,
            Grant::Signer => Role::Signer,
        }),
    };
    match has {
        Some(h) if h >= needs => Ok(()),
        Some(_) | None => Err(Denied { needs, has }),
    }
}
