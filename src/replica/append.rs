//! Writing to a memory document without loading it.
//!
//! A write to a key only needs, of the document, what a change putting the key names: the
//! document's heads (its dependencies), its greatest operation counter (the change's
//! operations come after it), this process's last sequence number in it, and the
//! operations that put the versions it supersedes. The index keeps all four (`Summary`,
//! `OpRef`), so a write to a document that is not in memory is appended as a change built
//! from them (`Replica::append`), the same change a transaction on the loaded document would
//! make (`tests`: byte for byte), and the index is updated from the write itself. On a
//! million entries, where most writes go to a bucket evicted since it was last written, this
//! spares loading about 4000 keys for each write.
//!
//! A document is loaded as before when something is missing: a summary or an index entry
//! written before operations were kept, a document not yet stored, the skills (a skill
//! write edits objects and text), or `MAX_APPENDED` changes appended since the document was
//! last loaded (so a document that is never loaded still gets loaded, and its log folded,
//! once in a while).
//!
//! A value under the key that meshd did not write (a scalar that is not a version, an
//! object: nothing meshd reads) is not in the index, so an appended write does not
//! supersede it: it stays a concurrent value, as unread as before, until a write made on the
//! loaded document supersedes it.
//!
//! The latest changes appended since a document was last loaded are kept in memory
//! (`AppendLog`: at most `LOG_CHANGES` per document and `LOG_BYTES` in all), so that what
//! changed since given heads (`Replica::changed_since`, the views) and what a peer lacks
//! (the sync store) are answered without loading it either; a reader further behind loads
//! it.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::num::NonZeroU64;

use automerge::legacy::{Key, ObjectId, Op, OpId, OpType, SortedVec};
use automerge::{Change, ChangeHash, ExpandedChange, ScalarValue};

use super::index::{self, OpRef, PutVersion};
use super::{memory_doc, Replica, ReplicaError, Result, Staged};
use crate::model::DocId;

/// Changes appended to a document before a write loads it again.
pub const MAX_APPENDED: usize = 1024;

/// What changes appended to one document leave, for its index (`index::Staging::appended`).
pub struct Appended {
    pub head: ChangeHash,
    pub changes: usize,
    pub max_op: u64,
    /// Each key written, with the one version the document now holds of it.
    pub versions: BTreeMap<String, PutVersion>,
}

/// Changes a document's log keeps: readers (the views, a peer's link) follow within a
/// second or so; one further behind loads the document.
const LOG_CHANGES: usize = 64;
/// The bytes of changes all documents' logs keep together; beyond it, the oldest changes of
/// the largest log are forgotten first.
const LOG_BYTES: usize = 16 << 20;

/// The latest changes appended to a document since it was last loaded, oldest first, each
/// with the keys it wrote.
#[derive(Default)]
pub struct AppendLog {
    entries: VecDeque<(Change, BTreeSet<String>)>,
    bytes: usize,
    /// Changes appended since the document was last loaded, forgotten ones included.
    appended: usize,
}

impl AppendLog {
    fn push(&mut self, change: Change, keys: BTreeSet<String>) {
        self.bytes += change.raw_bytes().len();
        self.appended += 1;
        self.entries.push_back((change, keys));
        while self.entries.len() > LOG_CHANGES {
            self.forget_oldest();
        }
    }

    fn forget_oldest(&mut self) {
        if let Some((change, _)) = self.entries.pop_front() {
            self.bytes -= change.raw_bytes().len();
        }
    }

    /// The changes after `since` up to `heads` (the document's), with the keys they wrote;
    /// `None` when the log cannot tell: `since` is not one of the states the log went
    /// through.
    fn since(
        &self,
        heads: &[ChangeHash],
        since: &[ChangeHash],
    ) -> Option<impl Iterator<Item = &(Change, BTreeSet<String>)>> {
        let since = sorted(since);
        // Each change depends on exactly the heads before it, and its hash is the only head
        // after it: the log is one chain.
        let at = match heads == since {
            true => self.entries.len(),
            false => {
                (self.entries.iter()).position(|(change, _)| sorted(change.deps()) == since)?
            }
        };
        let last = self.entries.back().map(|(change, _)| change.hash());
        let current =
            at == self.entries.len() || Some(heads) == last.as_ref().map(std::slice::from_ref);
        current.then(|| self.entries.range(at..))
    }

    /// Whether `hash` is a logged change or a head of the document before the first one.
    fn knows(&self, hash: &ChangeHash) -> bool {
        let before = self
            .entries
            .front()
            .map_or(&[][..], |(change, _)| change.deps());
        before.contains(hash)
            || self
                .entries
                .iter()
                .any(|(change, _)| change.hash() == *hash)
    }

    fn change(&self, hash: &ChangeHash) -> Option<&Change> {
        (self.entries.iter())
            .map(|(change, _)| change)
            .find(|change| change.hash() == *hash)
    }
}

fn sorted(hashes: &[ChangeHash]) -> Vec<ChangeHash> {
    let mut hashes = hashes.to_vec();
    hashes.sort();
    hashes
}

impl Replica {
    /// The operations each key written to `doc` supersedes, when `writes` can be appended to
    /// it without loading it; `None` when it must be loaded.
    pub(super) fn append_basis(
        &self,
        doc: &DocId,
        writes: &[Staged],
    ) -> Result<Option<BTreeMap<String, Vec<OpRef>>>> {
        let appendable = doc.scope().is_some()
            && !self.docs.contains_key(doc)
            && !self.is_gathered(doc)
            && self.appended.get(doc).map_or(0, |log| log.appended) < MAX_APPENDED
            && self
                .summaries
                .get(doc)
                .is_some_and(|summary| summary.max_op.is_some() && !summary.heads.is_empty());
        if !appendable {
            return Ok(None);
        }
        let tree = self.storage.tree()?;
        let mut basis = BTreeMap::new();
        for write in writes {
            let Staged::Memory(entry, _) = write else {
                return Ok(None);
            };
            if basis.contains_key(&entry.key) {
                continue;
            }
            match index::ops_held(tree, doc, &entry.key)? {
                Some(ops) => basis.insert(entry.key.clone(), ops),
                None => return Ok(None),
            };
        }
        Ok(Some(basis))
    }

    /// Builds the changes putting `chunks` (one change each) into `doc`, which is not
    /// loaded, from what the index holds: `basis`, from `append_basis`. Returns the changes
    /// and what they leave for the index; nothing is stored yet (`persist` does).
    pub(super) fn append(
        &self,
        doc: &DocId,
        chunks: &[Vec<&Staged>],
        mut basis: BTreeMap<String, Vec<OpRef>>,
        seconds: i64,
    ) -> Result<(Vec<Change>, Appended)> {
        let unappendable = || ReplicaError::Corrupt("a document to append to has no summary");
        let summary = self.summaries.get(doc).ok_or_else(unappendable)?;
        let scope = doc.scope().ok_or_else(unappendable)?;
        let mut deps = summary.heads.clone();
        let mut max_op = summary.max_op.ok_or_else(unappendable)?;
        let last_seq = self.own_seqs.get(doc).copied().unwrap_or(0);
        let mut versions = BTreeMap::new();
        let mut changes = Vec::with_capacity(chunks.len());
        for (seq, chunk) in (last_seq + 1..).zip(chunks) {
            let start_op = max_op + 1;
            let mut operations = Vec::with_capacity(chunk.len());
            for (counter, write) in (start_op..).zip(chunk) {
                let Staged::Memory(entry, _) = write else {
                    return Err(ReplicaError::Corrupt("a skill write was appended"));
                };
                let text = memory_doc::stored_text(entry);
                let version = memory_doc::read_text(&text, scope, &entry.key, &self.actor).ok_or(
                    ReplicaError::Corrupt("a version written does not read back"),
                )?;
                let superseded = basis.remove(&entry.key).unwrap_or_default();
                operations.push(Op {
                    action: OpType::Put(ScalarValue::Str(text.into())),
                    obj: ObjectId::Root,
                    key: Key::Map(entry.key.as_str().into()),
                    pred: SortedVec::from(
                        superseded
                            .iter()
                            .map(|op| OpId::new(op.counter, &op.actor))
                            .collect::<Vec<_>>(),
                    ),
                    insert: false,
                });
                let op = OpRef {
                    counter,
                    actor: self.actor.clone(),
                };
                basis.insert(entry.key.clone(), vec![op.clone()]);
                versions.insert(entry.key.clone(), (version, Some(op)));
            }
            let change = Change::from(ExpandedChange {
                operations,
                actor_id: self.actor.clone(),
                hash: None,
                seq,
                start_op: NonZeroU64::new(start_op).ok_or_else(unappendable)?,
                time: seconds,
                message: None,
                deps: std::mem::take(&mut deps),
                extra_bytes: Vec::new(),
                author: None,
            });
            max_op = change.max_op();
            deps = vec![change.hash()];
            changes.push(change);
        }
        let head = deps.first().copied().ok_or_else(unappendable)?;
        let appended = Appended {
            head,
            changes: changes.len(),
            max_op,
            versions,
        };
        Ok((changes, appended))
    }

    /// Keeps a persisted change appended to `doc` in its log.
    pub(super) fn log_appended(&mut self, doc: &DocId, change: &Change) {
        let keys = change
            .decode()
            .operations
            .into_iter()
            .filter_map(|op| match op.key {
                Key::Map(key) => Some(key.to_string()),
                Key::Seq(_) => None,
            })
            .collect();
        (self.appended.entry(doc.clone()).or_default()).push(change.clone(), keys);
        self.bound_logs();
    }

    /// Forgets the oldest logged changes of the largest logs until all fit `LOG_BYTES`.
    fn bound_logs(&mut self) {
        let mut total: usize = self.appended.values().map(|log| log.bytes).sum();
        while total > LOG_BYTES {
            let Some(largest) = self.appended.values_mut().max_by_key(|log| log.bytes) else {
                return;
            };
            let before = largest.bytes;
            largest.forget_oldest();
            if largest.bytes == before {
                return;
            }
            total -= before - largest.bytes;
        }
    }

    /// The keys changed in a document that is not loaded since `since`, from its log;
    /// `None` when the log cannot tell.
    pub(super) fn appended_names(
        &self,
        doc: &DocId,
        since: &[ChangeHash],
    ) -> Option<BTreeSet<String>> {
        if self.docs.contains_key(doc) {
            return None;
        }
        let heads = &self.summaries.get(doc)?.heads;
        let changes = self.appended.get(doc)?.since(heads, since)?;
        Some(changes.flat_map(|(_, keys)| keys.iter().cloned()).collect())
    }

    /// The changes of a document that is not loaded since `since`, from its log; `None`
    /// when the log cannot tell.
    pub(super) fn appended_since(&self, doc: &DocId, since: &[ChangeHash]) -> Option<Vec<Change>> {
        if self.docs.contains_key(doc) {
            return None;
        }
        let heads = &self.summaries.get(doc)?.heads;
        let changes = self.appended.get(doc)?.since(heads, since)?;
        Some(changes.map(|(change, _)| change.clone()).collect())
    }

    /// Whether `doc`, not loaded, holds `hash` as far as its log can tell (when it cannot,
    /// the document must be loaded to know).
    pub(super) fn appended_knows(&self, doc: &DocId, hash: &ChangeHash) -> bool {
        !self.docs.contains_key(doc) && self.appended.get(doc).is_some_and(|log| log.knows(hash))
    }

    /// A change appended to `doc`, not loaded, since it was last loaded.
    pub(super) fn appended_change(&self, doc: &DocId, hash: &ChangeHash) -> Option<Change> {
        if self.docs.contains_key(doc) {
            return None;
        }
        self.appended.get(doc)?.change(hash).cloned()
    }
}
