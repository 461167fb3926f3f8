//! Documents in memory only while they are used.
//!
//! A document is loaded from sled the first time something needs it whole (a write to it, a
//! sync round that reads its changes, a backup), not at open: reads come from the index
//! (`index`), and what the node has is known from the summaries. Loaded documents are kept
//! while their estimated size fits the memory budget; `trim`, which `SharedReplica` runs after
//! every use of the replica, evicts the least recently used ones beyond it. The most recently
//! used document always stays, even alone over the budget: a scope larger than the budget
//! would otherwise be loaded again by every write to it.
//!
//! Opening reads only the summaries. A store written by a version without the index is
//! indexed at its first open (every document loaded once, then evicted as usual).

use std::collections::BTreeMap;

use automerge::ReadDoc;

use super::storage::Writes;
use super::{
    index, load_doc, new_doc_state, Damage, DocId, DocState, Replica, ReplicaError, Result,
};

/// The default memory budget of loaded documents (`[store] memory_budget_mb`).
pub const DEFAULT_MEMORY_BUDGET: u64 = 192 * 1024 * 1024;

/// What a loaded Automerge document takes, from what it holds. Its saved size alone says
/// little: the saved form compresses values, from about 3× for varied text to 18× for the
/// repetitive values of the benchmarks, and the memory holds them uncompressed. Fitted on
/// documents of several shapes, and checked against what loading them keeps on the heap, by
/// `tests/memory_estimate.rs`:
/// - an empty document's tables;
const DOC_OVERHEAD: u64 = 48 << 10;
/// - each operation on a memory document's keys (its id, key, successors and index entries;
///   not counted for the skills document, whose text operations take a few bytes each);
const PER_KEY_OPERATION: u64 = 150;
/// - and its stored bytes about three times over (the values, decompressed).
const MEMORY_PER_STORED_BYTE: u64 = 3;

impl Replica {
    /// Sets the estimated memory loaded documents may take (`[store] memory_budget_mb`).
    pub fn set_memory_budget(&mut self, bytes: u64) {
        self.memory_budget = bytes;
    }

    /// The estimated memory loaded documents may take.
    pub fn memory_budget(&self) -> u64 {
        self.memory_budget
    }

    /// How many times a document was read from the store since it opened.
    pub fn loads(&self) -> u64 {
        self.loads
    }

    /// The documents loaded now and their estimated memory, for status.
    pub fn loaded(&self) -> (usize, u64) {
        let bytes = self.docs.iter().map(estimated_memory).sum();
        (self.docs.len(), bytes)
    }

    /// A fresh number for `DocState::edits`.
    pub(super) fn next_edit(&mut self) -> u64 {
        self.edit_clock += 1;
        self.edit_clock
    }

    /// The document, loaded from the store if it is not in memory; `None` when the node has
    /// no such document.
    pub(super) fn load_state(&mut self, doc: &DocId) -> Result<Option<&mut DocState>> {
        self.use_clock += 1;
        if !self.docs.contains_key(doc) {
            if !self.summaries.contains_key(doc) {
                return Ok(None);
            }
            let state = self.read_stored(doc)?;
            self.check_summary(doc, &state)?;
            self.docs.insert(doc.clone(), state);
        }
        let tick = self.use_clock;
        let state = self.docs.get_mut(doc);
        if let Some(state) = state {
            state.last_used = tick;
            return Ok(Some(state));
        }
        Ok(None)
    }

    /// `load_state`, or a new empty document when the node has none.
    pub(super) fn state_or_new(&mut self, doc: &DocId) -> Result<&mut DocState> {
        if self.load_state(doc)?.is_none() {
            let mut state = new_doc_state(&self.actor);
            state.last_used = self.use_clock;
            self.docs.insert(doc.clone(), state);
        }
        self.docs.get_mut(doc).ok_or(ReplicaError::Corrupt(
            "a document vanished while it was loaded",
        ))
    }

    /// Reads a document from the store and parses it, without keeping it (`meshd doctor`:
    /// every stored document loads). A document already in memory is read from disk anyway:
    /// what is checked is the stored bytes. Peak memory is that one document.
    pub fn verify_stored(&mut self, doc: &DocId) -> Result<()> {
        self.read_stored(doc).map(drop)
    }

    fn read_stored(&mut self, doc: &DocId) -> Result<DocState> {
        let name = doc.name();
        let stored = self
            .storage
            .load_doc(&name)
            .map_err(|error| self.storage.note_failure(error))?;
        let mut state = load_doc(&name, stored, &self.actor)?;
        // Loaded, the document answers what its log of appended changes did.
        self.appended.remove(doc);
        state.edits = self.next_edit();
        self.loads += 1;
        Ok(state)
    }

    /// A document whose heads are not the ones its index reflects was written by something
    /// that did not keep the index (an earlier version of meshd, after a downgrade): its
    /// index is rebuilt.
    fn check_summary(&mut self, doc: &DocId, state: &DocState) -> Result<()> {
        let indexed = self.summaries.get(doc).map(|s| s.heads.as_slice());
        if indexed == Some(state.doc.get_heads().as_slice()) {
            return Ok(());
        }
        tracing::warn!(doc = %doc.name(), "the index does not reflect this document; rebuilding its index");
        let mut batch = Writes::default();
        let mut staging = index::Staging::new(self.storage.tree()?, &self.summaries);
        staging.rebuild(doc, &state.doc)?;
        let (summaries, _) = staging.finish(&mut batch);
        self.storage.commit(batch)?;
        self.take_summaries(summaries);
        Ok(())
    }

    /// Reads the summaries; indexes a store that has no index yet.
    pub(super) fn open_index(&mut self) -> Result<()> {
        if self.storage.tree()?.contains_key(index::COMPLETE)? {
            self.summaries = index::summaries(self.storage.tree()?)?;
            return Ok(());
        }
        self.load_everything(Damage::Refuse)?;
        if !self.docs.is_empty() {
            tracing::info!(
                documents = self.docs.len(),
                "indexing the store (its first open by this version of meshd)"
            );
        }
        self.rebuild_index()
    }

    /// Rebuilds the whole index from the loaded documents: documents not loaded lose theirs.
    pub(super) fn rebuild_index(&mut self) -> Result<()> {
        let mut batch = Writes::default();
        index::stage_clear(self.storage.tree()?, &mut batch)?;
        let mut staging = index::Staging::from_nothing();
        for (doc, state) in &self.docs {
            staging.rebuild(doc, &state.doc)?;
        }
        let (summaries, _) = staging.finish(&mut batch);
        batch.insert(index::COMPLETE, &b"1"[..]);
        self.storage.commit(batch)?;
        self.summaries.clear();
        self.take_summaries(summaries);
        Ok(())
    }

    /// Loads every stored document; one Automerge refuses is an error, or with `Damage::Skip`
    /// (repair) left out with a warning.
    pub(super) fn load_everything(&mut self, damage: Damage) -> Result<()> {
        for (name, stored) in self.storage.load_all()? {
            let Ok(id) = DocId::from_name(&name) else {
                tracing::warn!(doc = %name, "skipping a document with an unknown name");
                continue;
            };
            match load_doc(&name, stored, &self.actor) {
                Ok(mut state) => {
                    state.edits = self.next_edit();
                    self.docs.insert(id, state);
                }
                Err(error) if damage == Damage::Skip => {
                    tracing::warn!(doc = %name, %error, "a damaged document is left out; the peers may send it back");
                }
                Err(error) => return Err(error),
            }
        }
        Ok(())
    }

    /// Evicts the least recently used documents until the loaded ones fit the memory budget,
    /// keeping the most recently used one and any waiting for changes it lacks (evicting those
    /// would drop the changes queued in them).
    pub fn trim(&mut self) {
        self.trim_sparing(|_| false);
    }

    /// `trim`, never evicting the documents `spare` names (those a batch committed in parts
    /// has yet to write: evicting them only to load them again is the worst choice there is).
    pub(super) fn trim_sparing(&mut self, spare: impl Fn(&DocId) -> bool) {
        let mut total: u64 = self.docs.iter().map(estimated_memory).sum();
        if total <= self.memory_budget {
            return;
        }
        let mut by_age: Vec<(u64, DocId)> = self
            .docs
            .iter()
            .map(|(doc, state)| (state.last_used, doc.clone()))
            .collect();
        by_age.sort();
        by_age.pop();
        for (_, doc) in by_age {
            if spare(&doc) {
                continue;
            }
            if total <= self.memory_budget {
                break;
            }
            let Some(state) = self.docs.get(&doc) else {
                continue;
            };
            if !state.doc.get_missing_deps(&[]).is_empty() {
                continue;
            }
            total -= estimated_memory((&doc, state));
            self.docs.remove(&doc);
            tracing::debug!(doc = %doc.name(), "evicted a document beyond the memory budget");
        }
    }
}

pub(super) fn estimated_memory((doc, state): (&DocId, &DocState)) -> u64 {
    let key_operations = match doc {
        DocId::Memory(_) | DocId::Bucket(..) => state.doc.stats().num_ops,
        DocId::Skills => 0,
    };
    DOC_OVERHEAD
        + key_operations * PER_KEY_OPERATION
        + memory_of(state.snapshot_bytes + state.bytes_since_snapshot)
}

/// The memory a document's values take for `stored` bytes of it.
pub(super) fn memory_of(stored: usize) -> u64 {
    stored as u64 * MEMORY_PER_STORED_BYTE
}

impl Replica {
    /// Checks that the index says exactly what the documents do, loading each: for tests.
    #[doc(hidden)]
    pub fn check_index(&mut self) -> std::result::Result<(), String> {
        let tree = self.storage.tree().map_err(|e| e.to_string())?.clone();
        let mut groups: BTreeMap<DocId, Vec<(DocId, automerge::Automerge)>> = BTreeMap::new();
        for doc in self.doc_ids() {
            let loaded = self.load_state(&doc).map_err(|e| e.to_string())?;
            let document = loaded.map(|state| state.doc.clone()).unwrap_or_default();
            groups.entry(doc.base()).or_default().push((doc, document));
        }
        for documents in groups.values() {
            index::verify(&tree, documents)?;
        }
        let held = index::summaries(&tree).map_err(|e| e.to_string())?;
        if held != self.summaries {
            return Err("the summaries in memory are not the stored ones".to_string());
        }
        Ok(())
    }
}
