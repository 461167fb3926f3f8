//! The control protocol: what the CLI asks of a node. One module per command group, one type
//! per command, in the manner of mini-redis: each command validates its input, executes
//! against the node (`Context`) and returns its own typed reply, and declares its `Effects`,
//! which the daemon acts on (push to peers, refresh the views, re-read the peer list).
//!
//! The same commands run against the store directly when no daemon is running, or go over
//! the daemon's control socket (`socket`) when one is: sled allows one process per store.

mod backup;
mod bridge;
mod cache;
mod doc;
mod doctor;
mod invite;
mod mem;
mod peers;
mod remote;
mod search;
mod skill;
pub mod socket;
mod status;
mod store;
mod sync;
mod wire;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::cache::CacheFiles;
use crate::model::{NodeId, Scope};
use crate::peers::{DialFailure, LinkFailure, LinkState, PeerRefusal, PeerStore};
use crate::replica::SharedReplica;

pub use backup::{Backup, BackupReport, Restore};
pub use bridge::{
    BridgeEmit, BridgeIngest, BridgeRespond, BridgeSyncAnswer, BridgeSyncSummary, Ingested,
    OwnSummary, SyncAnswered,
};
pub use cache::{CacheWrite, CachesWritten};
pub use doc::{DocExport, DocImport};
pub use doctor::Doctor;
pub use invite::{Invite, InviteMade, Join, Joined};
pub use mem::{MemGet, MemHistory, MemLs, MemPut, MemRm, Versions};
pub use peers::{
    access_text, Discovered, PeersAdd, PeersApprove, PeersDeny, PeersDiscover, PeersLs,
    PeersPending, PeersRm, Pending,
};
pub use search::Search;
pub use skill::{SkillGet, SkillLs, SkillPut, SkillRm};
pub use status::{InMemory, NodeStatus, PeerStatus, Status};
pub use store::{Exported, Imported, StoreExport, StoreImport};
pub use sync::Sync;
pub use wire::{decode, DecodeError, Reply, Request};

/// What running a command may change beyond its reply, for the daemon to act on. Every
/// command declares it (`Command::EFFECTS` has no default), so a new write cannot be added
/// without saying whether peers and views must hear of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Effects {
    /// Memory or skills may have changed: push to peers, refresh the views.
    pub data: bool,
    /// The peer list changed: re-read pins, dialers and links.
    pub peers: bool,
}

impl Effects {
    /// Reads only.
    pub const NONE: Effects = Effects {
        data: false,
        peers: false,
    };
    /// May change memory or skills.
    pub const DATA: Effects = Effects {
        data: true,
        peers: false,
    };
    /// Changes the peer list.
    pub const PEERS: Effects = Effects {
        data: false,
        peers: true,
    };
}

/// Why a command gave no reply. `NotFound` is its own kind so scripts can tell a missing key
/// (exit status 3) from a failure.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[serde(tag = "kind", content = "message", rename_all = "snake_case")]
pub enum CommandError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Failed(String),
}

/// A store that could not answer a read or take a write: the store's own words.
impl From<crate::replica::ReplicaError> for CommandError {
    fn from(error: crate::replica::ReplicaError) -> CommandError {
        CommandError::Failed(error.to_string())
    }
}

impl CommandError {
    pub fn failed(error: impl ToString) -> CommandError {
        CommandError::Failed(error.to_string())
    }
}

/// One thing the CLI asks of a node.
pub trait Command: Serialize + DeserializeOwned + Into<Request> {
    /// What the command answers with.
    type Reply: Serialize + DeserializeOwned;
    /// What running it may change, for the daemon to act on.
    const EFFECTS: Effects;
    /// Runs the command. Called on a thread that may block (the CLI, or the daemon's
    /// blocking pool); the replica is locked only as long as the command needs it.
    fn execute(self, node: &Context) -> Result<Self::Reply, CommandError>;
    /// How long a client waits for the daemon's answer before calling the daemon stuck:
    /// `ANSWER_PATIENCE`, unless the command runs longer by design.
    fn patience(&self) -> Duration {
        ANSWER_PATIENCE
    }
}

/// How long a client waits for the daemon's answer to a command: a write, a read or a peer
/// change takes milliseconds, seconds on a very large scope. Longer, and the daemon is stuck.
pub const ANSWER_PATIENCE: Duration = Duration::from_secs(30);
/// For commands that read or write the whole store (backup, restore, imports, exports,
/// rewriting the caches): minutes on a store of millions of entries.
pub const WHOLE_STORE_PATIENCE: Duration = Duration::from_secs(600);

/// What the running daemon knows beyond the store: its links to peers. Implemented by the
/// daemon over `net::mesh::Mesh`, so this module does not depend on the network.
pub trait LiveMesh: Send + std::marker::Sync {
    /// The QUIC address the daemon listens on.
    fn listen_addr(&self) -> Option<SocketAddr>;
    /// This node's name (`[node] name`).
    fn name(&self) -> Option<String>;
    /// The TCP address the daemon's local API listens on, when it serves one.
    fn api_addr(&self) -> Option<SocketAddr>;
    /// UDP bytes sent to peers since the daemon started.
    fn bytes_sent(&self) -> u64;
    /// UDP bytes sent to `peer` since the daemon started.
    fn bytes_sent_to(&self, peer: &NodeId) -> u64;
    fn is_connected(&self, peer: &NodeId) -> bool;
    /// The latest refusal of `peer`'s changes by this node.
    fn last_refusal(&self, peer: &NodeId) -> Option<PeerRefusal>;
    /// Why the links to `peer` keep failing, while they do.
    fn link_failure(&self, peer: &NodeId) -> Option<LinkFailure>;
    /// Why the latest dial to `peer` found no address that worked, until one does.
    fn dial_failure(&self, peer: &NodeId) -> Option<DialFailure>;
    /// The live link to `peer`, while there is one.
    fn link_state(&self, peer: &NodeId) -> Option<LinkState>;
    /// Forgets the ids the TLS layer refused so far (`meshd peers pending --clear`).
    fn forget_refused(&self);
    /// The nodes announcing themselves on the LAN now; `None` when discovery is off.
    fn discovered(&self) -> Option<Vec<crate::peers::Seen>>;
    /// Runs a round with `only` (or every connected peer) and blocks until it completes or
    /// `timeout` passes; returns how many peers completed it.
    fn sync_now(&self, only: Option<NodeId>, timeout: Duration) -> usize;
    /// Joins the node that made `ticket` (`meshd join`), granting it `access` here; returns
    /// the inviter as added to the peer list and what this node may do there.
    fn join(
        &self,
        ticket: crate::invite::Ticket,
        access: crate::model::access::Access,
        name: Option<String>,
    ) -> Result<Joined, String>;
}

/// The node a command runs against: its store, and the mesh when the daemon runs.
#[derive(Clone)]
pub struct Context {
    pub replica: SharedReplica,
    pub peers: PeerStore,
    pub own: NodeId,
    /// The caches `CacheWrite` writes (`[cache]` of meshd.toml with `$OPENCLAW_HOME`), shared
    /// with the daemon's view writer when it runs.
    pub cache: Arc<CacheFiles>,
    /// `None` when the command runs without the daemon.
    pub mesh: Option<Arc<dyn LiveMesh>>,
    /// The search index (`<home>/search.db`), opened on first use.
    pub search: Arc<crate::search::Searcher>,
    /// The keys bridge messages are checked and signed with (`[bridge]` of meshd.toml).
    pub bridge: Arc<crate::bridge::BridgeKeys>,
}

impl Context {
    /// Refuses a change of the peer list once the store failed a write: the peer list lives
    /// in the same sled database, which is not written again until a restart (its flush
    /// would wait for good).
    fn ensure_peers_writable(&self) -> Result<(), CommandError> {
        match self.replica.with(|replica| replica.write_failure()) {
            Some(failure) => Err(CommandError::Failed(failure)),
            None => Ok(()),
        }
    }

    /// Parses a scope as a user types it (`node` is this node's own).
    fn scope(&self, text: &str) -> Result<Scope, CommandError> {
        Scope::parse(text, &self.own.compact()).map_err(CommandError::failed)
    }

    /// `scope`, for a write: another node's own scope is refused, since every other node
    /// refuses what anyone but its owner writes there (`trust::accepts`): the write would
    /// stay on this node alone, and this node's copy of that scope would differ for good.
    fn writable_scope(&self, text: &str) -> Result<Scope, CommandError> {
        let scope = self.scope(text)?;
        match &scope {
            Scope::Node(owner) if *owner != self.own.compact() => {
                Err(CommandError::Failed(format!(
                    "{scope} belongs to node {owner}: only that node writes it, and every \
                     other node refuses anyone else's changes there; write to `node` (this \
                     node's own scope) or `mesh` instead"
                )))
            }
            _ => Ok(scope),
        }
    }
}

#[cfg(test)]
mod tests;
