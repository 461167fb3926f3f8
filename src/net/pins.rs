//! The peers this node talks to, pinned by node id, and the ids it refused.
//!
//! One `PeerPins` is shared by the TLS verifiers of every connection and by the daemon that edits
//! it (`meshd peers add/remove`), so a change applies to the next handshake without a restart.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use crate::model::NodeId;

/// Refused ids kept at most. Anyone can make a new key per attempt, so an unbounded record would
/// let a stranger grow this node's memory (and the daemon's persisted list) at will.
pub const MAX_PENDING: usize = 128;

/// A node id that tried to connect and was refused because it is not in the peer list: what an
/// operator needs to decide whether to run `meshd peers add`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Refused {
    pub id: NodeId,
    /// The address of the latest attempt, when the handshake knew it.
    pub addr: Option<SocketAddr>,
    /// The latest attempt, in Unix seconds.
    pub last_seen: u64,
    pub attempts: u64,
}

/// The live, shared set of allowed peers. Clones share the same set.
#[derive(Debug, Clone, Default)]
pub struct PeerPins {
    inner: Arc<RwLock<Pins>>,
}

#[derive(Debug, Default)]
struct Pins {
    allowed: HashSet<NodeId>,
    refused: HashMap<NodeId, Refused>,
    /// While this node has an open invite, a stranger completes the handshake, but only to
    /// present it (`net::join`); its connection carries nothing else.
    joiners_welcome: bool,
}

/// How a handshake was decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Admission {
    Peer,
    /// A stranger let in only to present an invite.
    Joiner,
    Refused,
}

impl PeerPins {
    pub fn new() -> Self {
        Self::default()
    }

    /// Allows `id`; it is no longer pending, since the operator has decided.
    pub fn allow(&self, id: NodeId) {
        let mut pins = self.write();
        pins.refused.remove(&id);
        pins.allowed.insert(id);
    }

    /// Stops allowing `id` for new handshakes; connections already open are the caller's to close.
    pub fn revoke(&self, id: NodeId) {
        self.write().allowed.remove(&id);
    }

    pub fn is_allowed(&self, id: NodeId) -> bool {
        self.read().allowed.contains(&id)
    }

    /// The refused ids, most recent attempt first.
    pub fn pending(&self) -> Vec<Refused> {
        let mut pending: Vec<Refused> = self.read().refused.values().cloned().collect();
        pending.sort_by(|a, b| b.last_seen.cmp(&a.last_seen).then(a.id.cmp(&b.id)));
        pending
    }

    /// Forgets every refused id (`meshd peers pending --clear`); one that dials again is
    /// listed again.
    pub fn forget_refused(&self) {
        self.write().refused.clear();
    }

    /// Lets strangers through the handshake to present an invite, or stops doing so.
    pub fn welcome_joiners(&self, welcome: bool) {
        self.write().joiners_welcome = welcome;
    }

    /// Decides one handshake: a peer, a stranger let in to present an invite, or a refusal,
    /// which is recorded. One lock for all, so an `allow` racing with the handshake never
    /// leaves an allowed id listed as pending.
    pub(crate) fn admit(&self, id: NodeId, addr: Option<SocketAddr>, now: u64) -> Admission {
        let mut pins = self.write();
        if pins.allowed.contains(&id) {
            return Admission::Peer;
        }
        if pins.joiners_welcome {
            return Admission::Joiner;
        }
        pins.record_refusal(id, addr, now);
        Admission::Refused
    }

    /// Records a stranger that was let in to join and presented no valid invite.
    pub(crate) fn refuse(&self, id: NodeId, addr: Option<SocketAddr>, now: u64) {
        self.write().record_refusal(id, addr, now);
    }

    // A panic elsewhere cannot leave two plain sets half-updated, so a poisoned lock is still
    // sound to use; refusing all peers forever because of it would be worse.
    fn read(&self) -> RwLockReadGuard<'_, Pins> {
        self.inner.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, Pins> {
        self.inner.write().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Pins {
    fn record_refusal(&mut self, id: NodeId, addr: Option<SocketAddr>, now: u64) {
        if !self.refused.contains_key(&id) && self.refused.len() >= MAX_PENDING {
            self.evict_oldest();
        }
        let entry = self.refused.entry(id).or_insert(Refused {
            id,
            addr: None,
            last_seen: now,
            attempts: 0,
        });
        entry.addr = addr.or(entry.addr);
        entry.last_seen = entry.last_seen.max(now);
        entry.attempts = entry.attempts.saturating_add(1);
    }

    fn evict_oldest(&mut self) {
        let oldest = self
            .refused
            .values()
            .min_by_key(|r| (r.last_seen, r.id))
            .map(|r| r.id);
        if let Some(id) = oldest {
            self.refused.remove(&id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u32) -> NodeId {
        NodeId::from_public_key(&n.to_be_bytes())
    }

    fn addr(port: u16) -> Option<SocketAddr> {
        Some(SocketAddr::from(([192, 0, 2, 1], port)))
    }

    #[test]
    fn refusals_are_counted_and_keep_the_latest_known_address() {
        let pins = PeerPins::new();
        assert_eq!(pins.admit(id(1), addr(1), 100), Admission::Refused);
        assert_eq!(pins.admit(id(1), None, 200), Admission::Refused);
        assert_eq!(pins.admit(id(1), addr(2), 150), Admission::Refused);
        let pending = pins.pending();
        assert_eq!(
            pending,
            vec![Refused {
                id: id(1),
                addr: addr(2),
                last_seen: 200,
                attempts: 3
            }]
        );
    }

    #[test]
    fn allow_admits_and_clears_pending_and_revoke_undoes_it() {
        let pins = PeerPins::new();
        assert_eq!(pins.admit(id(1), addr(1), 100), Admission::Refused);
        pins.allow(id(1));
        assert!(pins.pending().is_empty());
        assert_eq!(
            pins.clone().admit(id(1), addr(1), 101),
            Admission::Peer,
            "clones share the set"
        );
        assert!(pins.pending().is_empty(), "an allowed id is not pending");
        pins.revoke(id(1));
        assert!(!pins.is_allowed(id(1)));
        assert_eq!(pins.admit(id(1), addr(1), 102), Admission::Refused);
    }

    #[test]
    fn strangers_pass_only_while_joiners_are_welcome_and_are_not_listed_until_refused() {
        let pins = PeerPins::new();
        pins.welcome_joiners(true);
        assert_eq!(pins.admit(id(1), addr(1), 100), Admission::Joiner);
        assert!(pins.pending().is_empty());
        pins.refuse(id(1), addr(1), 101);
        assert_eq!(pins.pending()[0].attempts, 1);
        pins.welcome_joiners(false);
        assert_eq!(pins.admit(id(2), addr(1), 102), Admission::Refused);
    }

    #[test]
    fn pending_is_bounded_and_forgets_the_oldest_first() {
        let pins = PeerPins::new();
        for n in 0..MAX_PENDING as u32 + 10 {
            pins.admit(id(n), None, 1_000 + u64::from(n));
        }
        let pending = pins.pending();
        assert_eq!(pending.len(), MAX_PENDING);
        assert_eq!(pending[0].id, id(MAX_PENDING as u32 + 9), "newest first");
        assert!(
            pending.iter().all(|r| r.last_seen >= 1_010),
            "oldest evicted"
        );
    }
}
