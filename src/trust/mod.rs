//! Trust: who made a change, and whether this node takes it.
//!
//! Every change a node makes is signed with its Ed25519 node key (`NodeKey`), and its
//! Automerge actor id starts with the node's id, so the actor names the author. A signature
//! over a change's hash vouches for that change and, through the hash chain of its
//! dependencies, for every change before it: a node signs each change it makes, but only its
//! newest signature per document needs keeping and sending (`vouch`). A change is taken from a
//! peer only when its author vouched for it, and a change to `node:X` only when X made it
//! (`accepts`). A node learns each signer's public key from the signature itself, whose key
//! must hash to the signer's node id.
//!
//! Imports only `model` and automerge: `sync` and `replica` both use it.

mod history;
mod key;
mod signature;
mod vouch;

pub use history::{check_all, Link};
pub use key::{KeyError, NodeKey};
pub use signature::{ChangeSignature, SignatureError, SIGNATURE_BYTES};
pub use vouch::{describe, Accepted, Unvouched, Vouching, VouchingError};

use automerge::ActorId;

use crate::model::{DocId, NodeId, Scope};

/// Bytes of the random suffix after the node id in an actor id: a fresh actor per process
/// (and after an undone write) never reuses a sequence number a crash may have left behind.
const ACTOR_SUFFIX: usize = 8;
const NODE_ID_BYTES: usize = 20;

/// Who an actor id says made a change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Author {
    /// A node: the actor id is its node id and a suffix.
    Node(NodeId),
    /// An actor id of another form: a change made before meshd signed its changes. It names
    /// nobody, so whoever vouches for it is only a witness.
    Unknown,
}

/// The author an actor id names.
pub fn author_of(actor: &ActorId) -> Author {
    let bytes = actor.to_bytes();
    match <[u8; NODE_ID_BYTES]>::try_from(&bytes[..bytes.len().min(NODE_ID_BYTES)]) {
        Ok(id) if bytes.len() == NODE_ID_BYTES + ACTOR_SUFFIX => {
            Author::Node(NodeId::from_bytes(id))
        }
        _ => Author::Unknown,
    }
}

/// The only node that may write `doc`, when it is one node's scope.
pub fn owner_of(doc: &DocId) -> Option<&str> {
    match doc.scope() {
        Some(Scope::Node(id)) => Some(id),
        _ => None,
    }
}

/// Whether a change by `author`, vouched for by `vouchers`, may enter `doc`: its author must
/// have signed it (or, for a change that names no author, anyone this node can verify), and a
/// node's scope takes only what that node made. `Err` says why not.
pub fn accepts(doc: &DocId, author: Author, vouchers: &[NodeId]) -> Result<(), String> {
    let owner = owner_of(doc);
    match author {
        Author::Node(id) => {
            if owner.is_some_and(|owner| owner != id.compact()) {
                return Err(format!(
                    "it was made by node {id}, and only its owner may write {doc}"
                ));
            }
            if !vouchers.contains(&id) {
                return Err(format!(
                    "it says node {id} made it, but carries no valid signature of that node"
                ));
            }
            Ok(())
        }
        Author::Unknown => match owner {
            Some(owner) if !vouchers.iter().any(|v| v.compact() == owner) => Err(format!(
                "it names no author and its owner did not sign for it ({doc})"
            )),
            _ if vouchers.is_empty() => Err("it names no author and nobody signed for it".into()),
            _ => Ok(()),
        },
    }
}

#[cfg(test)]
mod tests;
