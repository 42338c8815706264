//! Who is calling, and what they may do.
//!
//! The kernel records the caller's credentials when it connects (SO_PEERCRED: uid, primary
//! gid, pid; SO_PEERGROUPS: supplementary groups), so a client cannot forge them. Every
//! caller gets at most one [`Role`]; roles are ordered, each including the ones below it:
//!
//! | role | routes | granted to |
//! |---|---|---|
//! | `token` | token, watch, status, health, metrics | the socket's group, `allow_uids`/`allow_gids` |
//! | `signer` | also `POST /v1/sign` | `signer_uids`/`signer_gids` |
//! | `admin` | also `POST /v1/refresh` | root, the agent's own uid, `admin_uids`/`admin_gids` |
//!
//! Anyone else has no role and gets 403 on every route (deny by default).

use std::os::fd::AsFd;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use serde::Serialize;

use crate::config;

/// Who is on the other end of a connection, and how the server is doing.
#[derive(Debug)]
pub struct Caller {
    pub peer: Peer,
    pub role: Option<Role>,
    /// Fires when the server shuts down (streams end then); one for every caller.
    pub shutdown: Arc<CancellationToken>,
}

/// The credentials of a connected client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Peer {
    pub uid: u32,
    /// Primary gid.
    pub gid: u32,
    pub pid: Option<i32>,
    /// Supplementary gids: empty when the kernel could not tell, or when they could not
    /// change the caller's role (see [`Policy::groups_matter`]), so they were not read.
    pub groups: Vec<u32>,
}

/// What a caller may do; ordered so that `a >= b` means "a may do what b may".
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Read tokens, status, health and metrics.
    Token,
    /// Also sign proof-of-possession JWTs with the device key.
    Signer,
    /// Everything, including forcing a refresh.
    Admin,
}

/// A set of uids and gids.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Members {
    pub uids: Vec<u32>,
    pub gids: Vec<u32>,
}

/// Which callers hold which role.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    /// The agent's effective uid (always admin, like root).
    pub own_uid: u32,
    /// The socket file's group (token readers), if known.
    pub socket_gid: Option<u32>,
    pub token: Members,
    pub signer: Members,
    pub admin: Members,
}

// === impl Peer ===

impl Peer {
    /// The credentials of the process at the other end of `stream`: one `SO_PEERCRED`,
    /// and `SO_PEERGROUPS` only when a supplementary group could change its role under
    /// `policy` (root, or a caller whose uid or primary gid already decides, costs no
    /// second system call per connection), or when `child_groups` says a gateway's child
    /// grants access to a group (a child's lists are not part of the role).
    ///
    /// # Errors
    /// When the kernel cannot tell (not a Unix socket).
    pub fn of(stream: &impl AsFd, policy: &Policy, child_groups: bool) -> std::io::Result<Self> {
        let (uid, gid, pid) = super::sys::peer_cred(stream.as_fd())?;
        let mut peer = Self {
            uid,
            gid,
            pid: (pid != 0).then_some(pid),
            groups: Vec::new(),
        };
        let root = peer.uid == 0 || peer.uid == policy.own_uid;
        if (child_groups && !root) || policy.groups_matter(&peer) {
            match super::sys::peer_groups(stream.as_fd()) {
                Ok(g) => peer.groups = g,
                Err(e) => {
                    tracing::debug!(error = %e, "SO_PEERGROUPS unavailable; using the primary gid only");
                }
            }
        }
        Ok(peer)
    }

    fn in_any(&self, gids: &[u32]) -> bool {
        gids.contains(&self.gid) || self.groups.iter().any(|g| gids.contains(g))
    }
}

// === impl Role ===

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Token => "token",
            Role::Signer => "signer",
            Role::Admin => "admin",
        }
    }
}

// === impl Members ===

impl Members {
    fn contains(&self, peer: &Peer) -> bool {
        self.uids.contains(&peer.uid) || peer.in_any(&self.gids)
    }
}

// === impl Policy ===

impl Policy {
    /// The policy `[api]` describes, for an agent running as `own_uid` whose socket belongs
    /// to `socket_gid`.
    pub fn from_config(api: &config::Api, own_uid: u32, socket_gid: Option<u32>) -> Self {
        let members = |uids: &[u32], gids: &[u32]| Members {
            uids: uids.to_vec(),
            gids: gids.to_vec(),
        };
        Self {
            own_uid,
            socket_gid,
            token: members(&api.allow_uids, &api.allow_gids),
            signer: members(&api.signer_uids, &api.signer_gids),
            admin: members(&api.admin_uids, &api.admin_gids),
        }
    }

    /// Who may use the device's own identity besides admins: the token and signer lists,
    /// and the socket's group as token readers (see [`super::authorize::authorize`]).
    pub fn own_access(&self) -> config::Access {
        let mut allow_gids = self.token.gids.clone();
        allow_gids.extend(self.socket_gid);
        config::Access {
            allow_uids: self.token.uids.clone(),
            allow_gids,
            signer_uids: self.signer.uids.clone(),
            signer_gids: self.signer.gids.clone(),
        }
    }

    /// Whether `peer`'s supplementary groups could raise the role its uid and primary gid
    /// give it: some role above that one is granted to a group.
    pub fn groups_matter(&self, peer: &Peer) -> bool {
        let without = Peer {
            groups: Vec::new(),
            ..peer.clone()
        };
        let granted_to_groups = |role: Role| match role {
            Role::Admin => !self.admin.gids.is_empty(),
            Role::Signer => !self.signer.gids.is_empty(),
            Role::Token => !self.token.gids.is_empty() || self.socket_gid.is_some(),
        };
        let has = self.role(&without);
        [Role::Admin, Role::Signer, Role::Token]
            .into_iter()
            .any(|r| has < Some(r) && granted_to_groups(r))
    }

    /// The highest role `peer` holds, or `None`: no access at all.
    pub fn role(&self, peer: &Peer) -> Option<Role> {
        if peer.uid == 0 || peer.uid == self.own_uid || self.admin.contains(peer) {
            Some(Role::Admin)
        } else if self.signer.contains(peer) {
            Some(Role::Signer)
        } else if self.token.contains(peer) || self.socket_gid.is_some_and(|g| peer.in_any(&[g])) {
            Some(Role::Token)
        } else {
            None
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn peer(uid: u32, gid: u32, groups: &[u32]) -> Peer {
        Peer {
            uid,
            gid,
            pid: None,
            groups: groups.to_vec(),
        }
    }

    /// Token, signer and admin each by a uid and a group; the socket's group 991.
    pub(crate) fn sample_policy() -> Policy {
        Policy {
            own_uid: 990,
            socket_gid: Some(991),
            token: Members {
                uids: vec![1000],
                gids: vec![50],
            },
            signer: Members {
                uids: vec![1001],
                gids: vec![60],
            },
            admin: Members {
                uids: vec![1002],
                gids: vec![70],
            },
        }
    }

    #[test]
    fn roles_by_uid_gid_and_supplementary_group() {
        let p = sample_policy();
        let table = [
            (peer(0, 0, &[]), Some(Role::Admin)),
            (peer(990, 5, &[]), Some(Role::Admin)),
            (peer(1002, 5, &[]), Some(Role::Admin)),
            (peer(7, 70, &[]), Some(Role::Admin)),
            (peer(7, 7, &[3, 70]), Some(Role::Admin)),
            (peer(1001, 1001, &[]), Some(Role::Signer)),
            (peer(7, 7, &[60]), Some(Role::Signer)),
            (peer(1234, 991, &[]), Some(Role::Token)),
            (peer(1234, 1234, &[991]), Some(Role::Token)),
            (peer(1000, 1000, &[]), Some(Role::Token)),
            (peer(77, 50, &[]), Some(Role::Token)),
            (peer(65534, 65534, &[]), None),
            (peer(65534, 65534, &[65534, 100]), None),
        ];
        for (peer, role) in table {
            assert_eq!(p.role(&peer), role, "{peer:?}");
        }
        assert!(Role::Admin > Role::Signer && Role::Signer > Role::Token);
    }

    #[test]
    fn groups_are_read_only_when_they_could_raise_the_role() {
        let socket_group = Policy {
            own_uid: 990,
            socket_gid: Some(991),
            ..Policy::default()
        };
        let signer_group = Policy {
            signer: Members {
                uids: vec![],
                gids: vec![60],
            },
            ..socket_group.clone()
        };
        let admin_uid = Policy {
            admin: Members {
                uids: vec![1002],
                gids: vec![],
            },
            ..Policy::default()
        };
        let table = [
            // Root and the agent's own uid are admin whatever their groups.
            (&signer_group, peer(0, 0, &[]), false),
            (&signer_group, peer(990, 5, &[]), false),
            // Primary gid is the socket's: token already; a group could still make it a signer.
            (&socket_group, peer(1234, 991, &[]), false),
            (&signer_group, peer(1234, 991, &[]), true),
            // Not in the socket's group by primary gid: only a supplementary group can tell.
            (&socket_group, peer(1234, 1234, &[]), true),
            // Nothing is granted to any group: groups change nothing.
            (&admin_uid, peer(1234, 1234, &[]), false),
            (&Policy::default(), peer(1234, 1234, &[]), false),
        ];
        for (policy, p, matter) in &table {
            assert_eq!(policy.groups_matter(p), *matter, "{p:?} under {policy:?}");
        }
        // Whenever groups are skipped, reading them would not have changed the role.
        for (policy, p, matter) in &table {
            if !matter {
                let mut with = p.clone();
                with.groups = vec![60, 70, 991];
                assert_eq!(policy.role(&with), policy.role(p), "{p:?}");
            }
        }
    }

    #[test]
    fn without_a_socket_group_only_lists_count() {
        let p = Policy {
            own_uid: 990,
            ..Policy::default()
        };
        assert_eq!(p.role(&peer(5, 5, &[5])), None);
        assert_eq!(p.role(&peer(990, 5, &[])), Some(Role::Admin));
    }
}
