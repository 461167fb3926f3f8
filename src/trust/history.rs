//! The trust check of a whole history: a document a peer sent, or one from a file.
//!
//! `Vouching` takes changes as they come, in any order and with gaps, so it holds each change
//! and walks its dependencies again as more arrive. A whole document is different: it loaded,
//! so every change of its history is there. Who vouches for a change is then simply whoever
//! signed it or a change after it, found with one walk per signer over the changes'
//! metadata (hash, actor, dependencies), never their operations. On a full clone of 100 000
//! changes that walk replaced a quarter of the receiver's time (docs/benchmarks.md, Sync).

use std::collections::{HashMap, HashSet};

use automerge::{ActorId, Change, ChangeHash, ChangeMetadata};

use super::signature::ChangeSignature;
use super::vouch::{describe, Unvouched};
use super::{accepts, author_of};
use crate::model::{DocId, NodeId};

/// What the check reads of one change of a history.
#[derive(Debug, Clone)]
pub struct Link {
    pub hash: ChangeHash,
    pub actor: ActorId,
    pub deps: Vec<ChangeHash>,
}

impl Link {
    pub fn of(change: &Change) -> Link {
        Link {
            hash: change.hash(),
            actor: change.actor_id().clone(),
            deps: change.deps().to_vec(),
        }
    }

    /// From a loaded document's metadata of the change, which is not rebuilt for it.
    pub fn from_meta(meta: ChangeMetadata<'_>) -> Link {
        Link {
            hash: meta.hash,
            actor: meta.actor.into_owned(),
            deps: meta.deps,
        }
    }
}

/// Checks a whole history (every change of a document, in any order): `Ok` with the
/// signatures that cover its changes not `stored`, when every one of those is accepted
/// (`trust::accepts`); else the first refusal, in the order given. A signature that does not
/// verify is an error (the peer relayed something altered).
pub fn check_all(
    doc: &DocId,
    history: &[Link],
    signatures: Vec<ChangeSignature>,
    mut stored: impl FnMut(&ChangeHash) -> bool,
) -> Result<Vec<ChangeSignature>, String> {
    let new: HashMap<ChangeHash, usize> = (history.iter().enumerate())
        .filter(|(_, link)| !stored(&link.hash))
        .map(|(at, link)| (link.hash, at))
        .collect();
    let mut signed: HashMap<NodeId, Vec<usize>> = HashMap::new();
    let mut kept = Vec::new();
    // A message may carry tens of thousands of signatures: an exact copy of one already
    // verified is skipped before its (costly) verification, by a set, not a scan of `kept`.
    let mut seen = HashSet::new();
    for signature in signatures {
        if !seen.insert(signature.clone()) {
            continue;
        }
        let signer = signature.verify().map_err(|e| e.to_string())?;
        if let Some(&at) = new.get(&signature.change()) {
            signed.entry(signer).or_default().push(at);
            kept.push(signature);
        }
    }
    let vouchers = vouchers(history, &new, signed);
    for (at, link) in history.iter().enumerate() {
        if !new.contains_key(&link.hash) {
            continue;
        }
        if let Err(reason) = accepts(doc, author_of(&link.actor), &vouchers[at]) {
            return Err(describe(&Unvouched {
                hash: link.hash,
                reason,
            }));
        }
    }
    Ok(kept)
}

/// Who vouches for each change of `history` (by position): each signer, for the changes it
/// signed among `new` and every one of `new` they depend on.
fn vouchers(
    history: &[Link],
    new: &HashMap<ChangeHash, usize>,
    signed: HashMap<NodeId, Vec<usize>>,
) -> Vec<Vec<NodeId>> {
    let mut vouchers = vec![Vec::new(); history.len()];
    for (signer, mut stack) in signed {
        let mut seen = vec![false; history.len()];
        while let Some(at) = stack.pop() {
            if std::mem::replace(&mut seen[at], true) {
                continue;
            }
            vouchers[at].push(signer);
            stack.extend(history[at].deps.iter().filter_map(|dep| new.get(dep)));
        }
    }
    vouchers
}
