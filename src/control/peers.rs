//! `meshd peers`: pairing with other nodes.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::status::{peer_statuses, PeerStatus};
use super::{Command, CommandError, Context, Effects};
use crate::invite::HeldJoin;
use crate::model::access::{Access, Pattern};
use crate::model::NodeId;
use crate::peers::{Peer, Refused};

/// Adds a peer, or updates one with the same id. For a known peer only what is given
/// changes: its access stays as it was unless `read`/`write` are given or `reset_access` asks
/// for the defaults again.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PeersAdd {
    pub id: String,
    /// Replace the peer's addresses; required for a new peer.
    pub addresses: Vec<String>,
    pub name: Option<String>,
    /// Comma-separated scope patterns.
    pub read: Option<String>,
    pub write: Option<String>,
    /// Go back to the default access (before `read`/`write`, which still apply).
    #[serde(default)]
    pub reset_access: bool,
}

impl Command for PeersAdd {
    /// What was done and the access that results, for the operator.
    type Reply = String;
    const EFFECTS: Effects = Effects::PEERS;

    fn execute(self, node: &Context) -> Result<String, CommandError> {
        node.ensure_peers_writable()?;
        let id: NodeId = self.id.parse().map_err(CommandError::failed)?;
        let known = node.peers.get(&id).map_err(CommandError::failed)?;
        if known.is_none() && self.addresses.is_empty() {
            return Err(CommandError::failed(
                "a new peer needs an address: meshd peers add <id> <HOST:PORT>",
            ));
        }
        let base = match &known {
            Some(peer) if !self.reset_access => peer.access.clone(),
            _ => Access::default_for_peer(),
        };
        let access = access_over(base, self.read, self.write)?;
        let peer = Peer {
            id,
            name: self.name.or(known.as_ref().and_then(|p| p.name.clone())),
            addresses: match self.addresses.is_empty() {
                true => known
                    .as_ref()
                    .map(|p| p.addresses.clone())
                    .unwrap_or_default(),
                false => self.addresses,
            },
            access,
            last_sync: known.as_ref().and_then(|p| p.last_sync),
        };
        let summary = format!("peer {}: {}", peer.label(), access_text(&peer.access));
        let replaced = node
            .peers
            .add(&node.own, peer)
            .map_err(CommandError::failed)?;
        Ok(format!(
            "{} {summary}",
            if replaced { "updated" } else { "added" }
        ))
    }
}

/// `base`, with its read and write lists replaced by those given (comma-separated patterns).
pub(super) fn access_over(
    base: Access,
    read: Option<String>,
    write: Option<String>,
) -> Result<Access, CommandError> {
    let patterns = |list: Option<String>, kept: Vec<Pattern>| {
        list.map_or(Ok(kept), |l| Pattern::parse_list(&l))
            .map_err(CommandError::failed)
    };
    Ok(Access {
        read: patterns(read, base.read)?,
        write: patterns(write, base.write)?,
    })
}

/// `read A,B; write C`, for the operator.
pub fn access_text(access: &Access) -> String {
    format!(
        "read {}; write {}",
        patterns_text(&access.read),
        patterns_text(&access.write)
    )
}

fn patterns_text(patterns: &[Pattern]) -> String {
    if patterns.is_empty() {
        return "none".to_string();
    }
    let names: Vec<String> = patterns.iter().map(Pattern::to_string).collect();
    names.join(",")
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
        node.ensure_peers_writable()?;
        let peer = node
            .peers
            .remove(&self.peer)
            .map_err(CommandError::failed)?;
        Ok(format!("removed peer {}", peer.label()))
    }
}

/// The nodes waiting for the operator: those refused at the handshake (not peers), and the
/// joins held for approval (`[invites] approve`). With `clear`, both are forgotten too (the
/// reply is what was forgotten): a held join's ticket stays used.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PeersPending {
    #[serde(default)]
    pub clear: bool,
}

/// What `meshd peers pending` lists.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Pending {
    /// Node ids refused at the handshake.
    pub refused: Vec<Refused>,
    /// Valid joins waiting for `meshd peers approve`.
    pub joins: Vec<HeldJoin>,
}

impl Command for PeersPending {
    type Reply = Pending;
    const EFFECTS: Effects = Effects::NONE;

    fn execute(self, node: &Context) -> Result<Pending, CommandError> {
        let invites = node.peers.invites();
        let joins = invites.held().map_err(CommandError::failed)?;
        let mut refused = node.peers.refused().map_err(CommandError::failed)?;
        // A held joiner dials the inviter it keeps, and is refused until approved: it is
        // listed once, as the join it is.
        refused.retain(|r| !joins.iter().any(|join| join.id == r.id));
        let pending = Pending { refused, joins };
        if self.clear {
            node.ensure_peers_writable()?;
            // The running mesh first: it would otherwise store its list again at the next
            // refusal.
            if let Some(mesh) = &node.mesh {
                mesh.forget_refused();
            }
            node.peers.clear_refused().map_err(CommandError::failed)?;
            for join in &pending.joins {
                invites.release(&join.id).map_err(CommandError::failed)?;
            }
        }
        Ok(pending)
    }
}

/// Admits a join held for approval: the joiner becomes a peer with the access its invite
/// offered, and this node dials it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PeersApprove {
    /// The joiner's node id.
    pub id: String,
}

impl Command for PeersApprove {
    /// What was done, for the operator.
    type Reply = String;
    const EFFECTS: Effects = Effects::PEERS;

    fn execute(self, node: &Context) -> Result<String, CommandError> {
        node.ensure_peers_writable()?;
        let join = take_held(node, &self.id)?;
        let peer = Peer {
            id: join.id,
            name: join.name,
            addresses: join.addresses,
            access: join.access,
            last_sync: None,
        };
        let added = node
            .peers
            .add_named_if_free(&node.own, peer)
            .map_err(CommandError::failed)?;
        Ok(format!(
            "approved {} ({}): {}; this node connects to it now",
            added.label(),
            added.id,
            access_text(&added.access)
        ))
    }
}

/// Refuses a join held for approval; its ticket stays used.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PeersDeny {
    /// The joiner's node id.
    pub id: String,
}

impl Command for PeersDeny {
    /// What was done, for the operator.
    type Reply = String;
    const EFFECTS: Effects = Effects::NONE;

    fn execute(self, node: &Context) -> Result<String, CommandError> {
        node.ensure_peers_writable()?;
        let join = take_held(node, &self.id)?;
        Ok(format!(
            "denied the join of {} ({}); its ticket stays used",
            join.name.as_deref().unwrap_or("a node"),
            join.id
        ))
    }
}

/// The held join `id` made, out of the waiting list.
fn take_held(node: &Context, id: &str) -> Result<HeldJoin, CommandError> {
    let id: NodeId = id.parse().map_err(CommandError::failed)?;
    node.peers
        .invites()
        .release(&id)
        .map_err(CommandError::failed)?
        .ok_or_else(|| {
            CommandError::NotFound(format!(
                "no join from {id} waits for approval; `meshd peers pending` lists those that do"
            ))
        })
}

/// The longest `meshd peers discover` listens.
const MAX_DISCOVER_WAIT: Duration = Duration::from_secs(60);

/// The nodes announcing themselves on the LAN (mDNS), after listening for `wait_ms` more.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PeersDiscover {
    pub wait_ms: u64,
    /// Where to browse when no daemon runs: the configured listen address, when `[discovery]
    /// mdns` is on (`None`: it is off).
    #[serde(default)]
    pub browse_on: Option<std::net::SocketAddr>,
}

/// A node seen on the LAN, and whether it is a peer here already.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Discovered {
    pub id: NodeId,
    /// The name it announces.
    pub name: Option<String>,
    pub addresses: Vec<String>,
    /// Unix seconds of its latest announcement.
    pub seen: u64,
    pub paired: bool,
}

impl Command for PeersDiscover {
    type Reply = Vec<Discovered>;
    const EFFECTS: Effects = Effects::NONE;

    fn patience(&self) -> Duration {
        self.wait().saturating_add(super::ANSWER_PATIENCE)
    }

    fn execute(self, node: &Context) -> Result<Vec<Discovered>, CommandError> {
        const OFF: &str = "LAN discovery is off on this node: set [discovery] mdns = true in \
                           meshd.toml (and restart meshd if it runs)";
        let seen = match &node.mesh {
            // The daemon has been listening all along: what it heard, and what comes meanwhile.
            Some(mesh) => {
                if mesh.discovered().is_none() {
                    return Err(CommandError::failed(OFF));
                }
                std::thread::sleep(self.wait());
                mesh.discovered().unwrap_or_default()
            }
            None => {
                let listen = self.browse_on.ok_or_else(|| CommandError::failed(OFF))?;
                crate::net::discovery::look(node.own, listen.ip(), self.wait())
                    .map_err(CommandError::failed)?
            }
        };
        seen.into_iter()
            .map(|node_seen| {
                let paired = node
                    .peers
                    .get(&node_seen.id)
                    .map_err(CommandError::failed)?;
                Ok(Discovered {
                    id: node_seen.id,
                    name: node_seen.name,
                    addresses: node_seen.addresses,
                    seen: node_seen.at,
                    paired: paired.is_some(),
                })
            })
            .collect()
    }
}

impl PeersDiscover {
    fn wait(&self) -> Duration {
        Duration::from_millis(self.wait_ms).min(MAX_DISCOVER_WAIT)
    }
}
