//! The replica as the sync protocol's store: `SyncStore` for `Replica`, with the heads each
//! peer is known to share in their own sled tree.

use automerge::{Change, ChangeHash, ReadDoc};

use super::{Replica, ReplicaError};
use crate::model::DocId;
use crate::sync::{StoreError, SyncStore};
use crate::trust::ChangeSignature;

/// The sled tree of per-peer sync state: `<peer>\0<doc name>` → the shared heads, 32 bytes
/// each.
const SHARED_HEADS_TREE: &str = "sync-shared-heads";

fn key(peer: &str, doc: &DocId) -> Vec<u8> {
    [peer.as_bytes(), b"\0", doc.name().as_bytes()].concat()
}

fn store_error(e: impl std::error::Error + Send + Sync + 'static) -> StoreError {
    StoreError(Box::new(e))
}

impl SyncStore for Replica {
    fn doc_ids(&self) -> Vec<DocId> {
        Replica::doc_ids(self)
    }

    fn heads(&self, doc: &DocId) -> Vec<ChangeHash> {
        Replica::heads(self, doc)
    }

    fn change_count(&self, doc: &DocId) -> u64 {
        Replica::change_count(self, doc)
    }

    // A document written since it was last loaded only by changes appended to it answers
    // from their log (`append`), so pushing those changes to a peer does not load it.

    fn has_change(&mut self, doc: &DocId, hash: &ChangeHash) -> bool {
        if self.appended_knows(doc, hash) {
            return true;
        }
        self.document(doc)
            .is_some_and(|d| d.get_change_meta_by_hash(hash).is_some())
    }

    fn hashes_since(&mut self, doc: &DocId, heads: &[ChangeHash]) -> Vec<ChangeHash> {
        if let Some(changes) = self.appended_since(doc, heads) {
            return changes.iter().map(Change::hash).collect();
        }
        self.document(doc)
            .map(|d| d.get_changes_meta(heads).iter().map(|m| m.hash).collect())
            .unwrap_or_default()
    }

    fn changes_since(&mut self, doc: &DocId, heads: &[ChangeHash]) -> Vec<Change> {
        if let Some(changes) = self.appended_since(doc, heads) {
            return changes;
        }
        self.document(doc)
            .map(|d| d.get_changes(heads))
            .unwrap_or_default()
    }

    fn change(&mut self, doc: &DocId, hash: &ChangeHash) -> Option<Change> {
        if let Some(change) = self.appended_change(doc, hash) {
            return Some(change);
        }
        self.document(doc)?.get_change_by_hash(hash)
    }

    fn snapshot(&mut self, doc: &DocId) -> Option<Vec<u8>> {
        if let Some(stored) = self.stored_snapshot(doc) {
            return Some(stored);
        }
        self.document(doc).map(automerge::Automerge::save)
    }

    fn missing_deps(&mut self, doc: &DocId, heads: &[ChangeHash]) -> Vec<ChangeHash> {
        // With no heads, Automerge answers for the changes it queued: only the document knows.
        if !heads.is_empty() && heads.iter().all(|head| self.appended_knows(doc, head)) {
            return Vec::new();
        }
        match self.document(doc) {
            Some(d) => d.get_missing_deps(heads),
            None => heads.to_vec(),
        }
    }

    /// A read-only node (disk below its reserve) refuses the peer's changes here, with the
    /// reason, instead of failing the link: it keeps sending its own data meanwhile.
    fn vet(&mut self, doc: &DocId, changes: &[Change]) -> Result<(), String> {
        self.ensure_writable().map_err(|e| e.to_string())?;
        self.vet_changes(changes).map_err(|e| e.to_string())?;
        self.vet_sequence(doc, changes)
    }

    fn vet_document(
        &mut self,
        doc: &DocId,
        saved: &[u8],
        signatures: Vec<ChangeSignature>,
    ) -> Result<Vec<ChangeSignature>, String> {
        self.ensure_writable().map_err(|e| e.to_string())?;
        Replica::vet_document(self, doc, saved, signatures)
    }

    fn apply(
        &mut self,
        doc: &DocId,
        changes: Vec<Change>,
        signatures: Vec<ChangeSignature>,
    ) -> Result<Vec<ChangeHash>, StoreError> {
        self.apply_changes(doc, changes, signatures)
            .map_err(store_error)
    }

    fn apply_document(
        &mut self,
        doc: &DocId,
        saved: &[u8],
        signatures: Vec<ChangeSignature>,
    ) -> Result<Vec<ChangeHash>, StoreError> {
        self.merge_document(doc, saved, signatures)
            .map_err(store_error)
    }

    fn signatures(&mut self, doc: &DocId) -> Result<Vec<ChangeSignature>, StoreError> {
        // The signatures of gathered changes are stored by their commit.
        if self.is_gathered(doc) {
            self.commit_gathered().map_err(store_error)?;
        }
        Replica::signatures(self, doc).map_err(store_error)
    }

    fn shared_heads(&self, peer: &str, doc: &DocId) -> Result<Option<Vec<ChangeHash>>, StoreError> {
        let tree = self
            .db()
            .open_tree(SHARED_HEADS_TREE)
            .map_err(store_error)?;
        let Some(bytes) = tree.get(key(peer, doc)).map_err(store_error)? else {
            return Ok(None);
        };
        if bytes.len() % 32 != 0 {
            return Err(store_error(ReplicaError::Corrupt(
                "stored shared heads are not whole hashes",
            )));
        }
        let heads = bytes
            .chunks_exact(32)
            .map(|chunk| ChangeHash(chunk.try_into().expect("chunks are 32 bytes")))
            .collect();
        Ok(Some(heads))
    }

    fn set_shared_heads(
        &mut self,
        peer: &str,
        doc: &DocId,
        heads: Option<&[ChangeHash]>,
    ) -> Result<(), StoreError> {
        if self.storage.failed().is_some() {
            // sled is not written after a failed write (see `storage`); shared heads only
            // shorten the next session, so links go on serving without them.
            return Ok(());
        }
        let tree = self
            .db()
            .open_tree(SHARED_HEADS_TREE)
            .map_err(store_error)?;
        match heads {
            Some(heads) => tree.insert(
                key(peer, doc),
                heads.iter().flat_map(|h| h.0).collect::<Vec<u8>>(),
            ),
            None => tree.remove(key(peer, doc)),
        }
        .map_err(store_error)?;
        Ok(())
    }
}
