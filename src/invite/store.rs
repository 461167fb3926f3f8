//! The invites this node made, in its sled store (tree `invites`): each used at most once.

use serde::{Deserialize, Serialize};

use super::ticket::{proof, proof_matches, InviteId, InviteSecret};
use crate::model::access::Access;
use crate::model::NodeId;

/// How long a used or expired invite is kept: a replay of its join is answered the same
/// meanwhile.
const KEEP_DONE: u64 = 24 * 3600;

/// An invite as the inviter keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Invite {
    pub secret: InviteSecret,
    /// Unix seconds after which the invite is refused.
    pub expires: u64,
    /// What the joiner may read and write here.
    pub access: Access,
    /// The name the joiner gets in this node's peer list, when the inviter chose one.
    pub name: Option<String>,
    pub used: Option<Used>,
}

/// An invite a join presented validly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Redeemed {
    /// Used now, by this joiner.
    First(Invite),
    /// Used before by the same joiner, which asks again (its answer was lost): whatever was
    /// decided then stands.
    Again(Invite),
}

/// Who used an invite, and when (Unix seconds).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Used {
    pub by: NodeId,
    pub at: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum InviteError {
    #[error("invite store: {0}; check the disk, then restart meshd")]
    Storage(#[from] sled::Error),
    #[error("the invite store holds a damaged record: {0}")]
    Corrupt(#[from] serde_json::Error),
    #[error("cannot make a random invite secret: {0}")]
    Random(#[from] getrandom::Error),
}

/// Why a join was refused, worded for the operator of the joining node.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("the inviting node has no such invite (it was never made there, or that node's store was reset); ask for a new ticket with `meshd invite`")]
    Unknown,
    #[error("this ticket was already used (by node {by}); a ticket pairs one node only: ask for a new one with `meshd invite`")]
    Used { by: NodeId },
    #[error("this ticket expired {ago} ago; ask for a new one with `meshd invite` (`--expires` makes it last longer)")]
    Expired { ago: String },
    #[error(
        "the ticket's secret does not match its invite: the ticket was altered; copy it again"
    )]
    BadProof,
}

/// A valid join held for the operator's approval (`[invites] approve`): the peer it becomes
/// once approved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldJoin {
    pub id: NodeId,
    /// The invite's name for it, else the name it gave.
    pub name: Option<String>,
    /// Where this node dials it once approved.
    pub addresses: Vec<String>,
    /// What it may read and write here once approved: the invite's offer.
    pub access: Access,
    /// Unix seconds.
    pub at: u64,
}

#[derive(Clone)]
pub struct Invites {
    tree: sled::Tree,
    /// `HeldJoin`s by joiner id (tree `joins-held`).
    held: sled::Tree,
}

impl Invites {
    /// Opens the invites, dropping those done with for a day (`prune`).
    pub fn open(db: &sled::Db) -> Result<Invites, sled::Error> {
        let invites = Invites {
            tree: db.open_tree("invites")?,
            held: db.open_tree("joins-held")?,
        };
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        if let Err(e) = invites.prune(now) {
            // Housekeeping only: the invites still answer as before.
            tracing::warn!("old invites not pruned: {e}");
        }
        Ok(invites)
    }

    /// Removes the invites used or expired more than `KEEP_DONE` before `now`: they only
    /// answer a replay of a join, which comes within seconds, and an invite is made for each
    /// pairing, so the tree (which `any_open` reads whole) would otherwise only grow. Returns
    /// how many went.
    pub fn prune(&self, now: u64) -> Result<usize, InviteError> {
        let mut done = Vec::new();
        for record in self.tree.iter() {
            let (id, value) = record?;
            let invite: Invite = serde_json::from_slice(&value)?;
            let ended = invite.used.as_ref().map_or(invite.expires, |used| used.at);
            if ended.saturating_add(KEEP_DONE) < now {
                done.push(id);
            }
        }
        for id in &done {
            self.tree.remove(id)?;
        }
        if !done.is_empty() {
            self.tree.flush()?;
        }
        Ok(done.len())
    }

    /// Holds a join for approval, durable on return.
    pub fn hold(&self, join: &HeldJoin) -> Result<(), InviteError> {
        self.held
            .insert(join.id.as_bytes(), serde_json::to_vec(join)?)?;
        self.held.flush()?;
        Ok(())
    }

    /// The joins waiting for approval, oldest first.
    pub fn held(&self) -> Result<Vec<HeldJoin>, InviteError> {
        let mut joins = Vec::new();
        for record in self.held.iter() {
            let (_, value) = record?;
            joins.push(serde_json::from_slice::<HeldJoin>(&value)?);
        }
        joins.sort_by_key(|join| join.at);
        Ok(joins)
    }

    /// The join `id` made, while it waits.
    pub fn held_join(&self, id: &NodeId) -> Result<Option<HeldJoin>, InviteError> {
        Ok(match self.held.get(id.as_bytes())? {
            Some(value) => Some(serde_json::from_slice(&value)?),
            None => None,
        })
    }

    /// Takes the join `id` made out of the waiting list (approved or denied).
    pub fn release(&self, id: &NodeId) -> Result<Option<HeldJoin>, InviteError> {
        let taken = self.held.remove(id.as_bytes())?;
        self.held.flush()?;
        Ok(match taken {
            Some(value) => Some(serde_json::from_slice(&value)?),
            None => None,
        })
    }

    /// Makes a new invite, durable on return.
    pub fn create(
        &self,
        expires: u64,
        access: Access,
        name: Option<String>,
    ) -> Result<(InviteId, InviteSecret), InviteError> {
        let mut id = [0u8; 8];
        let mut secret = [0u8; 32];
        getrandom::fill(&mut id)?;
        getrandom::fill(&mut secret)?;
        let invite = Invite {
            secret: InviteSecret(secret),
            expires,
            access,
            name,
            used: None,
        };
        self.tree.insert(id, serde_json::to_vec(&invite)?)?;
        self.tree.flush()?;
        Ok((InviteId(id), invite.secret))
    }

    /// Whether an invite may still be used: strangers are then let through the TLS
    /// handshake, to present it.
    pub fn any_open(&self, now: u64) -> Result<bool, InviteError> {
        for record in self.tree.iter() {
            let (_, value) = record?;
            let invite: Invite = serde_json::from_slice(&value)?;
            if invite.used.is_none() && invite.expires > now {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Uses invite `id` for `joiner`, whose node id TLS proved, if `presented` proves the
    /// secret and the invite is neither expired nor used by another node. Marked used (and
    /// flushed) before it returns, atomically: of two joiners racing with one ticket, one
    /// wins. The node that used it may present it again and is answered the same.
    pub fn redeem(
        &self,
        id: InviteId,
        presented: &[u8],
        joiner: NodeId,
        inviter: NodeId,
        now: u64,
    ) -> Result<Result<Redeemed, Refusal>, InviteError> {
        loop {
            let Some(stored) = self.tree.get(id.0)? else {
                return Ok(Err(Refusal::Unknown));
            };
            let invite: Invite = serde_json::from_slice(&stored)?;
            if !proof_matches(&proof(&invite.secret, id, joiner, inviter), presented) {
                return Ok(Err(Refusal::BadProof));
            }
            match &invite.used {
                // The same node asking again (its first answer was lost): the same answer.
                Some(used) if used.by == joiner => return Ok(Ok(Redeemed::Again(invite))),
                Some(used) => return Ok(Err(Refusal::Used { by: used.by })),
                None => {}
            }
            if invite.expires <= now {
                let ago = std::time::Duration::from_secs(now - invite.expires);
                let ago = humantime::format_duration(ago).to_string();
                return Ok(Err(Refusal::Expired { ago }));
            }
            let used = Invite {
                used: Some(Used {
                    by: joiner,
                    at: now,
                }),
                ..invite
            };
            let swapped =
                self.tree
                    .compare_and_swap(id.0, Some(stored), Some(serde_json::to_vec(&used)?))?;
            if swapped.is_ok() {
                self.tree.flush()?;
                return Ok(Ok(Redeemed::First(used)));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn invites() -> Invites {
        let db = sled::Config::new().temporary(true).open().unwrap();
        Invites::open(&db).unwrap()
    }

    fn ids() -> (NodeId, NodeId) {
        (
            NodeId::from_public_key(b"joiner"),
            NodeId::from_public_key(b"inviter"),
        )
    }

    #[test]
    fn an_invite_is_used_once_then_refused_with_who_used_it() {
        let invites = invites();
        let (joiner, inviter) = ids();
        let (id, secret) = invites
            .create(2_000, Access::default_for_peer(), None)
            .unwrap();
        assert!(invites.any_open(1_000).unwrap());
        let shown = proof(&secret, id, joiner, inviter);
        let used = invites.redeem(id, &shown, joiner, inviter, 1_000).unwrap();
        let Ok(Redeemed::First(used)) = used else {
            panic!("{used:?}")
        };
        assert_eq!(used.used.unwrap().by, joiner);
        let retried = invites.redeem(id, &shown, joiner, inviter, 1_001).unwrap();
        assert!(
            matches!(retried, Ok(Redeemed::Again(_))),
            "the same joiner asking again: {retried:?}"
        );
        let other = NodeId::from_public_key(b"other");
        let theirs = proof(&secret, id, other, inviter);
        let again = invites.redeem(id, &theirs, other, inviter, 1_001).unwrap();
        assert_eq!(again, Err(Refusal::Used { by: joiner }));
        assert!(!invites.any_open(1_000).unwrap());
    }

    #[test]
    fn invites_done_with_for_a_day_are_pruned_and_the_rest_kept() {
        let invites = invites();
        let (joiner, inviter) = ids();
        let offer = Access::default_for_peer;
        let (used, secret) = invites.create(50_000, offer(), None).unwrap();
        let shown = proof(&secret, used, joiner, inviter);
        invites
            .redeem(used, &shown, joiner, inviter, 1_000)
            .unwrap()
            .unwrap();
        invites.create(2_000, offer(), None).unwrap(); // expired at 2 000
        let (open, _) = invites.create(200_000, offer(), None).unwrap();
        let (recent, _) = invites.create(100_000, offer(), None).unwrap();
        let day_after = 1_000 + KEEP_DONE + 1;
        assert_eq!(invites.prune(day_after).unwrap(), 1, "the used one only");
        assert_eq!(
            invites.prune(2_000 + KEEP_DONE + 1).unwrap(),
            1,
            "then the expired one"
        );
        assert_eq!(invites.tree.len(), 2);
        assert!(invites.tree.contains_key(open.0).unwrap());
        assert!(invites.tree.contains_key(recent.0).unwrap());
        assert!(invites.any_open(150_000).unwrap());
    }

    #[test]
    fn an_expired_invite_a_wrong_proof_and_an_unknown_id_are_refused() {
        let invites = invites();
        let (joiner, inviter) = ids();
        let (id, secret) = invites
            .create(2_000, Access::default_for_peer(), None)
            .unwrap();
        let shown = proof(&secret, id, joiner, inviter);
        let stolen = proof(&secret, id, inviter, joiner);
        assert_eq!(
            invites.redeem(id, &stolen, joiner, inviter, 1_000).unwrap(),
            Err(Refusal::BadProof)
        );
        assert!(matches!(
            invites.redeem(id, &shown, joiner, inviter, 2_060).unwrap(),
            Err(Refusal::Expired { .. })
        ));
        assert!(!invites.any_open(2_000).unwrap());
        assert_eq!(
            invites
                .redeem(InviteId([0; 8]), &shown, joiner, inviter, 1_000)
                .unwrap(),
            Err(Refusal::Unknown)
        );
    }
}
