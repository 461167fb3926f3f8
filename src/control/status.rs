//! `meshd status`: one implementation, whether the daemon runs or not. Without the daemon
//! there is no mesh: nothing is connected, nothing was sent, and it says `running: false`;
//! every count comes from the store the same way in both cases.

use serde::{Deserialize, Serialize};

use super::{Command, CommandError, Context, Effects};
use crate::cache::FilesStatus;
use crate::peers::{DialFailure, LinkFailure, LinkState, Peer, PeerRefusal};
use crate::replica::Replica;
use crate::sync::SyncStore;

/// Shows the node, its store and its peers.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Status {}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeStatus {
    pub node_id: String,
    pub running: bool,
    /// The QUIC address the daemon listens on, when it runs.
    pub listen: Option<String>,
    /// UDP bytes sent to peers since the daemon started.
    pub bytes_sent: u64,
    /// Documents in the store, deleted contents included: they still sync.
    pub documents: usize,
    pub memory_entries: usize,
    pub skills: usize,
    /// Memory keys and skills holding concurrent versions (`GET /mesh/conflicts` lists them).
    #[serde(default)]
    pub conflicts: usize,
    /// Why the node refuses writes, when it does (its disk below the reserve, or a write the
    /// disk failed); it still serves reads and syncs out.
    pub read_only: Option<String>,
    /// While `meshd run --repair` runs: what the store still lacks, or that it is complete.
    pub repair: Option<String>,
    pub peers: Vec<PeerStatus>,
    /// The cache files: names the mesh uses that hold someone else's file (kept in the cache
    /// manifest), and files whose changes the daemon did not take into the mesh.
    #[serde(default)]
    pub files: FilesStatus,
    /// The documents held in memory, against the budget.
    #[serde(default)]
    pub in_memory: InMemory,
}

/// What `[store] memory_budget_mb` bounds: the documents loaded to be written or synced
/// (reads never load one).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct InMemory {
    /// Documents loaded now.
    pub documents: usize,
    /// Their estimated memory, in bytes.
    pub estimated_bytes: u64,
    /// The memory budget, in bytes.
    pub budget_bytes: u64,
    /// Documents read from the store since it opened. A count that climbs with every few
    /// writes means the budget holds fewer documents than the writes touch.
    pub loads: u64,
}

/// A peer as `meshd peers ls` and `meshd status` show it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeerStatus {
    #[serde(flatten)]
    pub peer: Peer,
    pub connected: bool,
    /// Documents the peer may read whose state here differs from what it last confirmed.
    pub documents_behind: usize,
    /// UDP bytes sent to the peer since the daemon started; 0 without the daemon.
    #[serde(default)]
    pub bytes_sent: u64,
    /// The latest time this node refused the peer's changes since the daemon started (a
    /// clock running ahead, or a document it may not write); `None` without the daemon.
    pub refused: Option<PeerRefusal>,
    /// Why the links to the peer keep failing soon after they come up (the dialer backs off
    /// meanwhile); `None` while they do not, and without the daemon.
    #[serde(default)]
    pub link_failure: Option<LinkFailure>,
    /// The live link: since when, and its round-trip time; `None` while disconnected.
    #[serde(default)]
    pub link: Option<LinkState>,
    /// Why this node's latest dial found no address of the peer that worked, per address;
    /// shown even while the peer is connected by dialing in, since its address here is still
    /// wrong. `None` once a dial works, and without the daemon.
    #[serde(default)]
    pub unreachable: Option<DialFailure>,
    /// Changes this node holds that the peer may read and has not confirmed yet; `None`
    /// before the first round with it.
    #[serde(default)]
    pub changes_behind: Option<usize>,
}

impl Command for Status {
    type Reply = NodeStatus;
    const EFFECTS: Effects = Effects::NONE;

    fn execute(self, node: &Context) -> Result<NodeStatus, CommandError> {
        let peers = node.peers.list().map_err(CommandError::failed)?;
        let mesh = node.mesh.as_deref();
        // Read before the replica is locked: the cache files' lock is taken before it.
        let files = node.cache.status();
        Ok(node.replica.with(|replica| {
            let (memory_entries, skills) = replica.counts();
            // A store refusing reads after a failed write still shows its status (`read_only`
            // says why); its conflicts are not counted then.
            let conflicts = replica.conflicts(0).map_or(0, |(_, total)| total);
            let (loaded, estimated_bytes) = replica.loaded();
            NodeStatus {
                node_id: node.own.to_string(),
                running: mesh.is_some(),
                listen: mesh.and_then(|m| m.listen_addr()).map(|a| a.to_string()),
                bytes_sent: mesh.map_or(0, |m| m.bytes_sent()),
                documents: replica.doc_ids().len(),
                memory_entries: memory_entries as usize,
                skills: skills as usize,
                conflicts,
                read_only: replica.read_only_reason(),
                repair: replica.repair_status(),
                peers: peer_statuses(node, replica, peers),
                files,
                in_memory: InMemory {
                    documents: loaded,
                    estimated_bytes,
                    budget_bytes: replica.memory_budget(),
                    loads: replica.loads(),
                },
            }
        }))
    }
}

/// Each peer with what the mesh and the store say about it.
pub(super) fn peer_statuses(
    node: &Context,
    replica: &mut Replica,
    peers: Vec<Peer>,
) -> Vec<PeerStatus> {
    peers
        .into_iter()
        .map(|peer| {
            let mesh = node.mesh.as_ref();
            let (documents_behind, changes_behind) = behind(replica, &peer);
            PeerStatus {
                connected: mesh.is_some_and(|m| m.is_connected(&peer.id)),
                refused: mesh.and_then(|m| m.last_refusal(&peer.id)),
                link_failure: mesh.and_then(|m| m.link_failure(&peer.id)),
                link: mesh.and_then(|m| m.link_state(&peer.id)),
                unreachable: mesh.and_then(|m| m.dial_failure(&peer.id)),
                bytes_sent: mesh.map_or(0, |m| m.bytes_sent_to(&peer.id)),
                documents_behind,
                changes_behind,
                peer,
            }
        })
        .collect()
}

/// The documents the peer may read whose state here differs from what it last confirmed, and
/// the changes in them it lacks (`None` before the first round with it).
fn behind(replica: &mut Replica, peer: &Peer) -> (usize, Option<usize>) {
    let session_peer = peer.id.compact();
    let (mut documents, mut changes) = (0, 0);
    for doc in replica.doc_ids() {
        if !peer.access.may_read(&doc, &peer.id) {
            continue;
        }
        let shared = replica.shared_heads(&session_peer, &doc).ok().flatten();
        if shared.as_deref() == Some(replica.heads(&doc).as_slice()) {
            continue;
        }
        documents += 1;
        if peer.last_sync.is_some() {
            // As a `Hello` counts it: with no shared heads, the whole history, from the index.
            changes += match shared {
                Some(confirmed) => SyncStore::hashes_since(replica, &doc, &confirmed).len(),
                None => replica.change_count(&doc) as usize,
            };
        }
    }
    (documents, peer.last_sync.map(|_| changes))
}
