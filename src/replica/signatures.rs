//! The signatures the replica keeps: for each document, each signer's newest signatures
//! (`trust` explains why the newest vouch for the rest). They live in the documents' tree,
//! written in the same batch as the changes they cover:
//! `g\0<doc>\0<signer's public key><change hash>` → the 64-byte signature.

use std::collections::HashMap;

use automerge::{Automerge, ChangeHash};

use super::durable::Pending;
use super::storage::Writes;
use super::{Replica, ReplicaError, Result};
use crate::model::DocId;
use crate::trust::{ChangeSignature, SIGNATURE_BYTES};

const SIGNATURE: &[u8] = b"g\0";
/// How far back a new signature's ancestry is searched for the signer's older ones, which it
/// then replaces. A signature not found within it is kept: only bytes, never trust, are lost.
const ANCESTRY_WALK: usize = 1024;

fn doc_prefix(doc: &str) -> Vec<u8> {
    [SIGNATURE, doc.as_bytes(), b"\0"].concat()
}

fn signature_key(doc: &str, signature: &ChangeSignature) -> Vec<u8> {
    [doc_prefix(doc).as_slice(), &signature.key, &signature.hash].concat()
}

/// Every signature kept for `doc`.
pub(super) fn stored(tree: &sled::Tree, doc: &str) -> Result<Vec<ChangeSignature>> {
    let prefix = doc_prefix(doc);
    let mut signatures = Vec::new();
    for item in tree.scan_prefix(&prefix) {
        let (key, sig) = item?;
        let rest = &key[prefix.len()..];
        let (Ok(key), Ok(hash)) = (
            rest[..32.min(rest.len())].try_into(),
            rest.get(32..).unwrap_or_default().try_into(),
        ) else {
            return Err(ReplicaError::Corrupt(
                "a stored signature's key is not a key and a hash",
            ));
        };
        if sig.len() != SIGNATURE_BYTES {
            return Err(ReplicaError::Corrupt("a stored signature is not 64 bytes"));
        }
        signatures.push(ChangeSignature {
            key,
            hash,
            sig: sig.to_vec(),
        });
    }
    Ok(signatures)
}

/// Whether `old` is `new` or one of its ancestors, as far as a bounded walk can tell.
fn precedes(doc: &Automerge, old: &ChangeHash, new: &ChangeHash) -> bool {
    let mut stack = vec![*new];
    let mut seen = std::collections::HashSet::new();
    while let Some(hash) = stack.pop() {
        if hash == *old {
            return true;
        }
        if seen.len() >= ANCESTRY_WALK || !seen.insert(hash) {
            continue;
        }
        if let Some(meta) = doc.get_change_meta_by_hash(&hash) {
            stack.extend(meta.deps);
        }
    }
    false
}

impl Replica {
    /// The signatures kept for `doc`: what vouches for every change of it.
    pub fn signatures(&self, doc: &DocId) -> Result<Vec<ChangeSignature>> {
        stored(self.storage.tree()?, &doc.name())
    }

    /// Adds to `batch` a signature of every change made here in `pending` and the
    /// signatures from peers it carries, and removes the older ones each replaces.
    pub(super) fn stage_signatures(&self, batch: &mut Writes, pending: &Pending) -> Result<()> {
        let mut fresh: Vec<(DocId, ChangeSignature)> = pending
            .changes
            .iter()
            .filter(|(_, change)| change.actor_id() == &self.actor)
            .map(|(doc, change)| (doc.clone(), self.key.sign(&change.hash())))
            .collect();
        fresh.extend(pending.signatures.iter().cloned());
        // A change appended to a document not loaded (`append`) has no document to walk: its
        // own dependencies say what it follows.
        let deps: HashMap<ChangeHash, &[ChangeHash]> = (pending.changes.iter())
            .map(|(_, change)| (change.hash(), change.deps()))
            .collect();
        for (doc, signature) in &fresh {
            let name = doc.name();
            let document = self.docs.get(doc).map(|state| &state.doc);
            let follows = |old: &ChangeHash| match document {
                Some(document) => precedes(document, old, &signature.change()),
                None => deps
                    .get(&signature.change())
                    .is_some_and(|deps| deps.contains(old)),
            };
            for old in stored(self.storage.tree()?, &name)? {
                let replaced = old.key == signature.key
                    && old.hash != signature.hash
                    && follows(&old.change());
                if replaced
                    && !fresh
                        .iter()
                        .any(|(_, f)| f.hash == old.hash && f.key == old.key)
                {
                    batch.remove(signature_key(&name, &old));
                }
            }
            batch.insert(signature_key(&name, signature), signature.sig.as_slice());
        }
        Ok(())
    }
}
