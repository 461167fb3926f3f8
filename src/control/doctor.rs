//! `meshd doctor`'s questions to the store: they run where the store is open, in the daemon
//! when it runs (sled admits one process), else in the command's own process. The checks
//! themselves are in `doctor`.

use serde::{Deserialize, Serialize};

use super::status::peer_statuses;
use super::{Command, CommandError, Context, Effects};
use crate::doctor::{IntegrityFact, NewestStamp, NodeFacts, PeerFacts};
use crate::replica::Replica;

/// What the store and the running mesh say, for `meshd doctor`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Doctor {}

impl Command for Doctor {
    type Reply = NodeFacts;
    const EFFECTS: Effects = Effects::NONE;

    /// It loads every document once, which takes seconds for a scope of a million keys.
    fn patience(&self) -> std::time::Duration {
        std::time::Duration::from_secs(60)
    }

    fn execute(self, node: &Context) -> Result<NodeFacts, CommandError> {
        let peers = node.peers.list().map_err(CommandError::failed)?;
        let mesh = node.mesh.as_deref();
        let (integrity, documents, write_failure, repair, newest, peers) =
            node.replica.with(|replica| {
                let newest = replica.newest_stamp()?.map(|(label, stamp)| NewestStamp {
                    label,
                    unix_ms: stamp.unix_millis(),
                });
                Ok::<_, CommandError>((
                    integrity(replica),
                    replica.doc_ids(),
                    replica.write_failure(),
                    replica.repair_status(),
                    newest,
                    peer_statuses(node, replica, peers),
                ))
            })?;
        // One document at a time, each under its own hold of the replica: writes go on in
        // between, and only one document is in memory for the check.
        let unloadable = documents
            .iter()
            .filter_map(|doc| {
                let loaded = node.replica.with(|replica| replica.verify_stored(doc));
                loaded.err().map(|error| format!("{doc}: {error}"))
            })
            .collect();
        Ok(NodeFacts {
            node_id: node.own.to_string(),
            running: mesh.is_some(),
            quic_listen: mesh.and_then(|m| m.listen_addr()).map(|a| a.to_string()),
            api_listen: mesh.and_then(|m| m.api_addr()).map(|a| a.to_string()),
            integrity,
            documents: documents.len(),
            unloadable,
            write_failure,
            repair,
            newest,
            peers: peers
                .into_iter()
                .map(|status| PeerFacts {
                    id: status.peer.id.to_string(),
                    label: status.peer.label(),
                    addresses: status.peer.addresses.clone(),
                    last_sync: status.peer.last_sync,
                    connected: status.connected,
                    link_failure: status.link_failure,
                    refused: status.refused,
                    unreachable: status.unreachable,
                    clock_offset_ms: status.link.and_then(|link| link.clock_offset_ms),
                })
                .collect(),
        })
    }
}

fn integrity(replica: &mut Replica) -> IntegrityFact {
    match replica.verify_integrity() {
        Ok(None) => IntegrityFact::NoRecord,
        Ok(Some(written_at_ms)) => IntegrityFact::Holds { written_at_ms },
        Err(error) => IntegrityFact::Fails(error.to_string()),
    }
}
