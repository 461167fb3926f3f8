//! What a peer's changes claim about time, checked before they are applied: a change that
//! writes a version stamped further ahead of this node's clock than its bound is refused,
//! whole, as an import with such a stamp is. The refusal is retried with every sync round, so
//! the change goes in once this node's clock has caught up; a peer whose clock runs ahead is
//! named in the log and in `meshd status` meanwhile.

use automerge::legacy::OpType;
use automerge::{Automerge, Change, ChangeHash, ReadDoc, ScalarValue};
use serde::Deserialize;

use super::Replica;
use crate::model::hlc::FutureStamp;
use crate::model::{DocId, Stamp};
use crate::sync::{doc_strings, sequence, whole};
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
            OpType::Put(ScalarValue::Str(text)) => stamp_in(text.as_bytes()),
            _ => None,
        })
        .max()
}

/// The `updated_at` of a string value that is a version or skill metadata.
fn stamp_in(value: &[u8]) -> Option<Stamp> {
    if value.first() != Some(&b'{') {
        return None;
    }
    serde_json::from_slice::<Versioned>(value)
        .ok()
        .map(|version| version.updated_at)
}

/// What the value columns of a document chunk hold: how many values, and the newest stamp
/// among them.
struct Scanned {
    values: u64,
    newest: Option<Stamp>,
}

/// The newest stamp in the values of every operation (a superset of the puts) of `saved`,
/// when it is one document chunk whose columns `doc_strings` reads.
fn scan_columns(saved: &[u8]) -> Option<Scanned> {
    let data = whole::one_document_data(saved)?;
    let mut newest = None;
    let values = doc_strings::for_each_string(data, |value| {
        newest = newest.max(stamp_in(value));
    })?;
    Some(Scanned { values, newest })
}

/// The newest `updated_at` written anywhere in the history of a whole document `loaded`:
/// what its columns were `scanned` to hold, when they hold a value for each operation
/// Automerge loaded, else read from its changes, rebuilt (five times the cost, on a
/// 100 000-change clone).
fn newest_stamp_written(scanned: Option<Scanned>, loaded: &Automerge) -> Option<Stamp> {
    match scanned {
        Some(scanned) if scanned.values == loaded.stats().num_ops => scanned.newest,
        _ => {
            tracing::debug!("a whole document's values are read from its rebuilt changes");
            from_changes(loaded)
        }
    }
}

fn from_changes(loaded: &Automerge) -> Option<Stamp> {
    loaded
        .get_changes(&[])
        .iter()
        .filter_map(newest_stamp)
        .max()
}

/// A whole document as the vetting loaded it, kept for the merge that follows, so a full
/// clone is loaded once and not twice (a sixth of its time), with the hashes of its changes
/// (reading them again took 5 %). The merge takes it only for the same document and the same
/// bytes (their hash), and only into an empty document.
pub(super) struct Vetted {
    doc: DocId,
    digest: blake3::Hash,
    loaded: Automerge,
    hashes: Vec<ChangeHash>,
}

impl Vetted {
    fn new(doc: &DocId, saved: &[u8], loaded: Automerge, hashes: Vec<ChangeHash>) -> Vetted {
        Vetted {
            doc: doc.clone(),
            digest: blake3::hash(saved),
            loaded,
            hashes,
        }
    }

    /// The loaded document and the hashes of all its changes, if it is the one of `doc` made
    /// of `saved`.
    pub(super) fn of(self, doc: &DocId, saved: &[u8]) -> Option<(Automerge, Vec<ChangeHash>)> {
        (self.doc == *doc && self.digest == blake3::hash(saved))
            .then_some((self.loaded, self.hashes))
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
        changes
            .iter()
            .filter_map(newest_stamp)
            .try_for_each(|stamp| self.vet_stamp(stamp))
    }

    /// Refuses a stamp a peer wrote beyond this node's clock bound.
    fn vet_stamp(&mut self, stamp: Stamp) -> Result<(), FutureStamp> {
        self.clock_bound.check(stamp, (self.wall_clock)())
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
        // The columns are read while Automerge loads the document: they need only the bytes.
        let (loaded, scanned) = std::thread::scope(|scope| {
            let scanning = scope.spawn(|| scan_columns(saved));
            let loaded = whole::load(self.document(doc), saved);
            (loaded, scanning.join().ok().flatten())
        });
        let loaded = loaded?;
        if let Some(stamp) = newest_stamp_written(scanned, &loaded) {
            self.vet_stamp(stamp).map_err(|e| e.to_string())?;
        }
        // The numbering and the trust check read only the changes' metadata, never their
        // operations.
        let metadata = loaded.get_changes_meta(&[]);
        if let Some(reason) = sequence::counters_overlap(&metadata)
            .or_else(|| sequence::times_out_of_range(&metadata))
        {
            return Err(reason);
        }
        let history: Vec<trust::Link> = metadata.into_iter().map(trust::Link::from_meta).collect();
        if witness == Witness::Heads {
            signatures.extend(loaded.get_heads().iter().map(|head| self.key.sign(head)));
        }
        let keep = self.vouch_for(doc, &history, signatures)?;
        let hashes = history.into_iter().map(|link| link.hash).collect();
        self.vetted = Some(Vetted::new(doc, saved, loaded, hashes));
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

#[cfg(test)]
mod tests {
    use automerge::transaction::Transactable;
    use automerge::{ActorId, ObjType, ReadDoc as _, ROOT};
    use proptest::prelude::*;

    use super::*;

    /// What a write does to the document: a version put at a key (overwriting any), or the
    /// key deleted.
    #[derive(Debug, Clone)]
    enum Edit {
        Put {
            key: u8,
            stamp: u64,
            actor: u8,
        },
        Delete {
            key: u8,
        },
        Text {
            key: u8,
            text: String,
        },
        /// Spliced into the text object under `content` (skills keep their text so).
        Splice {
            at: u8,
            delete: u8,
            insert: String,
        },
    }

    fn edit() -> impl Strategy<Value = Edit> {
        prop_oneof![
            4 => (0..8u8, any::<u64>(), 0..3u8)
                .prop_map(|(key, stamp, actor)| Edit::Put { key, stamp, actor }),
            1 => (0..8u8).prop_map(|key| Edit::Delete { key }),
            1 => (0..8u8, "[{}\"a-z:0-9 ]{0,40}").prop_map(|(key, text)| Edit::Text { key, text }),
            1 => (any::<u8>(), 0..4u8, "[{}\"a-zé€:0-9 ]{0,20}")
                .prop_map(|(at, delete, insert)| Edit::Splice { at, delete, insert }),
        ]
    }

    fn document(edits: &[Edit]) -> Automerge {
        let mut doc = Automerge::new();
        let mut tx = doc.transaction();
        let text = tx.put_object(ROOT, "content", ObjType::Text).unwrap();
        tx.commit();
        for edit in edits {
            let mut tx = doc.transaction();
            match edit {
                Edit::Put { key, stamp, .. } => {
                    let version = serde_json::json!({
                        "value": "v", "node_id": "n", "updated_at": stamp, "deleted": false,
                    });
                    tx.put(ROOT, format!("k{key}"), version.to_string())
                }
                Edit::Delete { key } => tx.delete(ROOT, format!("k{key}")),
                Edit::Text { key, text } => tx.put(ROOT, format!("k{key}"), text.as_str()),
                Edit::Splice { at, delete, insert } => {
                    let len = tx.length(&text);
                    let at = usize::from(*at).min(len);
                    let delete = isize::from(*delete).min((len - at) as isize);
                    tx.splice_text(&text, at, delete, insert)
                }
            }
            .ok();
            tx.commit();
            if let Edit::Put { actor, .. } = edit {
                doc.set_actor(ActorId::from(&[*actor; 16][..]));
            }
        }
        doc
    }

    fn cases() -> u32 {
        std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|cases| cases.parse().ok())
            .unwrap_or(64)
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

        /// The columns give the stamp the rebuilt changes give, overwritten and deleted
        /// versions included, and are read (no fall back) for whatever `save` writes.
        #[test]
        fn the_columns_give_the_newest_stamp_the_changes_give(
            edits in proptest::collection::vec(edit(), 0..40)
        ) {
            let doc = document(&edits);
            let saved = doc.save();
            let loaded = Automerge::load(&saved).unwrap();
            let scanned = scan_columns(&saved).expect("the columns of what `save` writes read");
            prop_assert_eq!(scanned.values, loaded.stats().num_ops);
            prop_assert_eq!(scanned.newest, from_changes(&loaded));
        }
    }

    #[test]
    fn a_future_stamp_only_in_an_overwritten_version_is_found() {
        let ahead = Edit::Put {
            key: 1,
            stamp: u64::MAX - 1,
            actor: 0,
        };
        let later = Edit::Put {
            key: 1,
            stamp: 5,
            actor: 1,
        };
        let doc = document(&[ahead, later]);
        let saved = doc.save();
        assert_eq!(
            scan_columns(&saved).unwrap().newest,
            Some(Stamp(u64::MAX - 1))
        );
    }

    #[test]
    fn bytes_beyond_one_document_or_a_count_that_differs_are_read_from_the_changes() {
        let doc = document(&[Edit::Put {
            key: 1,
            stamp: 9,
            actor: 0,
        }]);
        let mut saved = doc.save();
        saved.extend(doc.save_after(&[]));
        let loaded = Automerge::load(&doc.save()).unwrap();
        assert!(scan_columns(&saved).is_none());
        assert_eq!(newest_stamp_written(None, &loaded), Some(Stamp(9)));
        let miscounted = Scanned {
            values: 0,
            newest: None,
        };
        assert_eq!(
            newest_stamp_written(Some(miscounted), &loaded),
            Some(Stamp(9))
        );
    }
}
