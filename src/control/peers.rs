//! `meshd peers`: pairing with other nodes.

use serde::{Deserialize, Serialize};

use super::status::{peer_statuses, PeerStatus};
use super::{Command, CommandError, Context, Effects};
use crate::model::access::{Access, Pattern};
use crate::model::NodeId;
use crate::peers::{Peer, Refused};

/// Adds a peer, or updates one with the same id.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PeersAdd {
    pub id: String,
    pub addresses: Vec<String>,
    pub name: Option<String>,
    /// Comma-separated scope patterns; the defaults when absent.
    pub read: Option<String>,
    pub write: Option<String>,
}

impl Command for PeersAdd {
    /// What was done, for the operator.
    type Reply = String;
    const EFFECTS: Effects = Effects::PEERS;

    fn execute(self, node: &Context) -> Result<String, CommandError> {
        let id: NodeId = self.id.parse().map_err(CommandError::failed)?;
        let defaults = Access::default_for_peer();
        let patterns = |list: Option<String>, default: Vec<Pattern>| {
            list.map_or(Ok(default), |l| Pattern::parse_list(&l))
                .map_err(CommandError::failed)
        };
        let access = Access {
            read: patterns(self.read, defaults.read)?,
            write: patterns(self.write, defaults.write)?,
        };
        let peer = Peer {
            id,
            name: self.name,
            addresses: self.addresses,
            access,
            last_sync: None,
        };
        let label = peer.label();
        let replaced = node
            .peers
            .add(&node.own, peer)
            .map_err(CommandError::failed)?;
        Ok(format!(
            "{} peer {label}",
            if replaced { "updated" } else { "added" }
        ))
    }
}

/// Lists the peers with their state.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PeersLs {}

impl Command for PeersLs {
    type Reply = Vec<PeerStatus>;
    const EFFECTS: Effects = Effects::NONE;

    fn execute(self, node: &Context) -> Result<Vec<PeerStatus>, CommandError> {
        let peers = node.peers.list().map_err(CommandError::failed)?;
        Ok(node
            .replica
            .with(|replica| peer_statuses(node, replica, peers)))
    }
}

/// Removes a peer by id or name.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PeersRm {
    pub peer: String,
}

impl Command for PeersRm {
    /// What was done, for the operator.
    type Reply = String;
    const EFFECTS: Effects = Effects::PEERS;

    fn execute(self, node: &Context) -> Result<String, CommandError> {
        let peer = node
            .peers
            .remove(&self.peer)
            .map_err(CommandError::failed)?;
        Ok(format!("removed peer {}", peer.label()))
    }
}

/// The nodes that tried to connect without being added.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PeersPending {}

impl Command for PeersPending {
    type Reply = Vec<Refused>;
    const EFFECTS: Effects = Effects::NONE;

    fn execute(self, node: &Context) -> Result<Vec<Refused>, CommandError> {
        node.peers.refused().map_err(CommandError::failed)
    }
}
