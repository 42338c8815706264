//! Who is calling: SO_PEERCRED of the connection, and whether they may have a token.
//!
//! The kernel fills SO_PEERCRED at connect time, so it cannot be forged by the client. By
//! default the agent serves root, its own uid, and members of the socket's group (by the
//! peer's primary gid, which is what SO_PEERCRED reports).

use serde::Serialize;

/// The credentials of a connected client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Peer {
    pub uid: u32,
    pub gid: u32,
    pub pid: Option<i32>,
}

/// Which callers are allowed.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    /// The agent's effective uid.
    pub own_uid: u32,
    /// The socket file's group.
    pub socket_gid: u32,
    /// Extra uids (`[api] allow_uids`).
    pub allow_uids: Vec<u32>,
    /// Extra gids (`[api] allow_gids`).
    pub allow_gids: Vec<u32>,
}

// === impl Policy ===

impl Policy {
    /// Whether `peer` may read tokens and status.
    pub fn allows(&self, peer: &Peer) -> bool {
        peer.uid == 0
            || peer.uid == self.own_uid
            || peer.gid == self.socket_gid
            || self.allow_uids.contains(&peer.uid)
            || self.allow_gids.contains(&peer.gid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_policy() {
        let p = Policy {
            own_uid: 990,
            socket_gid: 991,
            allow_uids: vec![1000],
            allow_gids: vec![50],
        };
        let peer = |uid, gid| Peer {
            uid,
            gid,
            pid: None,
        };
        let table = [
            (peer(0, 0), true),
            (peer(990, 5), true),
            (peer(1234, 991), true),
            (peer(1000, 1000), true),
            (peer(77, 50), true),
            (peer(65534, 65534), false),
        ];
        for (peer, allowed) in table {
            assert_eq!(p.allows(&peer), allowed, "{peer:?}");
        }
    }
}
