//! What a session needs from the node's store, as a trait (a port), so the protocol can be
//! driven by the real replica (src/replica/sync_store.rs) or by anything else that keeps
//! Automerge changes.

use automerge::{Change, ChangeHash};

use crate::model::DocId;
use crate::trust::ChangeSignature;

/// A failure of the store itself (disk, corruption), as opposed to a bad peer.
#[derive(Debug, thiserror::Error)]
#[error("store: {0}")]
pub struct StoreError(#[source] pub Box<dyn std::error::Error + Send + Sync>);

/// Everything a session reads or writes, passed into each call. Writes must be durable when
/// they return: the session records what the peer holds on the strength of them.
pub trait SyncStore {
    /// Every document held here.
    fn doc_ids(&self) -> Vec<DocId>;
    /// The document's heads, sorted; empty when the document is absent.
    fn heads(&self, doc: &DocId) -> Vec<ChangeHash>;
    /// How many changes `doc`'s history holds (0 when the document is absent), without
    /// loading it where the store can.
    fn change_count(&self, doc: &DocId) -> u64;
    /// Whether the change `hash` of `doc` is held here.
    fn has_change(&mut self, doc: &DocId, hash: &ChangeHash) -> bool;
    /// Hashes of the changes that are not ancestors of `heads` (all of them for `[]`).
    /// `heads` must all be present.
    fn hashes_since(&mut self, doc: &DocId, heads: &[ChangeHash]) -> Vec<ChangeHash>;
    /// The changes that are not ancestors of `heads`, in dependency order. `heads` must all
    /// be present.
    fn changes_since(&mut self, doc: &DocId, heads: &[ChangeHash]) -> Vec<Change>;
    /// The change `hash` of `doc`, if held here.
    fn change(&mut self, doc: &DocId, hash: &ChangeHash) -> Option<Change>;
    /// The document in Automerge's compact format.
    fn snapshot(&mut self, doc: &DocId) -> Option<Vec<u8>>;
    /// Hashes among `heads` and the dependencies of changes waiting for their own
    /// dependencies that are not here.
    fn missing_deps(&mut self, doc: &DocId, heads: &[ChangeHash]) -> Vec<ChangeHash>;
    /// Whether this node takes these changes from a peer; `Err` holds the reason it refuses
    /// them (the whole bundle is refused and the peer is told why).
    fn vet(&mut self, doc: &DocId, changes: &[Change]) -> Result<(), String>;
    /// `vet` for a whole document in Automerge's compact format, and the trust check of
    /// every change in it that is new here (`trust::check_all` with `signatures`, over the
    /// history's metadata): `Ok` holds the signatures to keep with it.
    fn vet_document(
        &mut self,
        doc: &DocId,
        saved: &[u8],
        signatures: Vec<ChangeSignature>,
    ) -> Result<Vec<ChangeSignature>, String>;
    /// Applies changes durably, keeping the `signatures` that vouch for them; returns the
    /// hashes that were new and applied.
    fn apply(
        &mut self,
        doc: &DocId,
        changes: Vec<Change>,
        signatures: Vec<ChangeSignature>,
    ) -> Result<Vec<ChangeHash>, StoreError>;
    /// Merges a whole document in Automerge's compact format durably, keeping the
    /// `signatures` that vouch for it; returns the hashes that were new. Bytes from a peer:
    /// must fail cleanly on garbage.
    fn apply_document(
        &mut self,
        doc: &DocId,
        saved: &[u8],
        signatures: Vec<ChangeSignature>,
    ) -> Result<Vec<ChangeHash>, StoreError>;
    /// The signatures kept for `doc`, which vouch for all of its changes.
    fn signatures(&mut self, doc: &DocId) -> Result<Vec<ChangeSignature>, StoreError>;
    /// The heads last known to be held by both this node and `peer`.
    fn shared_heads(&self, peer: &str, doc: &DocId) -> Result<Option<Vec<ChangeHash>>, StoreError>;
    /// Records (or, with `None`, forgets) the heads shared with `peer`.
    fn set_shared_heads(
        &mut self,
        peer: &str,
        doc: &DocId,
        heads: Option<&[ChangeHash]>,
    ) -> Result<(), StoreError>;
}
