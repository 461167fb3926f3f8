//! What a peer's changes claim about time, checked before they are applied: a change that
//! writes a version stamped further ahead of this node's clock than its bound is refused,
//! whole, as an import with such a stamp is. The refusal is retried with every sync round, so
//! the change goes in once this node's clock has caught up; a peer whose clock runs ahead is
//! named in the log and in `meshd status` meanwhile.

use automerge::legacy::OpType;
use automerge::{Automerge, Change, ChangeHash, ScalarValue};
use serde::Deserialize;

use super::Replica;
use crate::model::hlc::FutureStamp;
use crate::model::{DocId, Stamp};
use crate::sync::{sequence, whole};
use crate::trust::{self, ChangeSignature};

/// The one field of a memory version or skill metadata that vetting reads.
#[derive(Deserialize)]
struct Versioned {
    updated_at: Stamp,
}

/// The newest `updated_at` a change writes, in the versions and metadata it puts.
fn newest_stamp(change: &Change) -> Option<Stamp> {
    change
        .decode()
        .operations
        .iter()
        .filter_map(|op| match &op.action {
            OpType::Put(ScalarValue::Str(text)) if text.starts_with('{') => {
                serde_json::from_str::<Versioned>(text).ok()
            }
            _ => None,
        })
        .map(|version| version.updated_at)
        .max()
}

/// A whole document as the vetting loaded it, kept for the merge that follows, so a full
/// clone is loaded once and not twice (a sixth of its time). The merge takes it only for the
/// same document and the same bytes (their hash), and only into an empty document.
pub(super) struct Vetted {
    doc: DocId,
    digest: blake3::Hash,
    loaded: Automerge,
}

impl Vetted {
    fn new(doc: &DocId, saved: &[u8], loaded: Automerge) -> Vetted {
        Vetted {
            doc: doc.clone(),
            digest: blake3::hash(saved),
            loaded,
        }
    }

    /// The loaded document, if it is the one of `doc` made of `saved`.
    pub(super) fn of(self, doc: &DocId, saved: &[u8]) -> Option<Automerge> {
        (self.doc == *doc && self.digest == blake3::hash(saved)).then_some(self.loaded)
    }
}

/// Whether this node signs a whole document's heads as a witness (a file the operator
/// brings) or only takes the signatures that came with it (a peer's).
#[derive(PartialEq, Eq)]
enum Witness {
    No,
    Heads,
}

impl Replica {
    /// Refuses changes from a peer that write a stamp beyond this node's clock bound.
    pub fn vet_changes(&mut self, changes: &[Change]) -> Result<(), FutureStamp> {
        let wall = (self.wall_clock)();
        changes
            .iter()
            .filter_map(newest_stamp)
            .try_for_each(|stamp| self.clock_bound.check(stamp, wall))
    }

    /// Refuses misnumbered changes (`sequence`: a sequence number that skips, operation
    /// counters that start too low), as far as the changes at hand tell; `apply_changes`
    /// checks again with every dependency at hand.
    pub fn vet_sequence(&mut self, doc: &DocId, changes: &[Change]) -> Result<(), String> {
        match self.document(doc) {
            Some(document) => sequence::misnumbered(document, changes).map_or(Ok(()), Err),
            None => Ok(()),
        }
    }

    /// `vet_changes` for a whole document a peer sent, and the trust check of every change
    /// in it that is new here: `Ok` holds the signatures to keep. Bytes that are not one
    /// document then changes (`whole`) are refused with the reason.
    pub fn vet_document(
        &mut self,
        doc: &DocId,
        saved: &[u8],
        signatures: Vec<ChangeSignature>,
    ) -> Result<Vec<ChangeSignature>, String> {
        self.vet_whole(doc, saved, signatures, Witness::No)
    }

    /// `vet_document` for a document the operator brings from a file (a backup, `meshd doc
    /// import`): this node vouches for the file's history as a witness, so changes it made
    /// itself and changes that name no author go in; another node's changes still need that
    /// node's signature (a backup keeps them).
    pub fn vet_file(
        &mut self,
        doc: &DocId,
        saved: &[u8],
        signatures: Vec<ChangeSignature>,
    ) -> Result<Vec<ChangeSignature>, String> {
        self.vet_whole(doc, saved, signatures, Witness::Heads)
    }

    /// Loads a whole document once, vets it, and keeps it for the merge (`Vetted`).
    fn vet_whole(
        &mut self,
        doc: &DocId,
        saved: &[u8],
        mut signatures: Vec<ChangeSignature>,
        witness: Witness,
    ) -> Result<Vec<ChangeSignature>, String> {
        self.vetted = None;
        let loaded = whole::load(self.document(doc), saved)?;
        // The changes are rebuilt once, for their stamps; the trust check reads only their
        // hashes, actors and dependencies.
        let changes = loaded.get_changes(&[]);
        self.vet_changes(&changes).map_err(|e| e.to_string())?;
        if let Some(reason) = sequence::counters_overlap(&Automerge::new(), &changes) {
            return Err(reason);
        }
        let history: Vec<trust::Link> = changes.iter().map(trust::Link::of).collect();
        drop(changes);
        if witness == Witness::Heads {
            signatures.extend(loaded.get_heads().iter().map(|head| self.key.sign(head)));
        }
        let keep = self.vouch_for(doc, &history, signatures)?;
        self.vetted = Some(Vetted::new(doc, saved, loaded));
        Ok(keep)
    }

    /// The trust check of a whole document's history.
    fn vouch_for(
        &mut self,
        doc: &DocId,
        history: &[trust::Link],
        signatures: Vec<ChangeSignature>,
    ) -> Result<Vec<ChangeSignature>, String> {
        let held = self.document(doc);
        let stored =
            |hash: &ChangeHash| held.is_some_and(|d| d.get_change_meta_by_hash(hash).is_some());
        trust::check_all(doc, history, signatures, stored)
    }
}
