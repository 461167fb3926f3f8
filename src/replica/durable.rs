//! Making changes durable, and never showing one that is not.
//!
//! Every write applies its changes to the in-memory documents first, then `persist` makes
//! them durable (one sled batch, one fsync) before anything is acknowledged. When that
//! fails, the documents go back to the heads they had before (`Pending::before`), so a
//! refused write is never readable, and the replica takes a fresh actor: the changes rolled
//! back may have reached sled's log in part, and a later change must never reuse their
//! (actor, sequence number). Before any of this, `ensure_writable` refuses the write when the
//! disk is below its reserve (`space`), so a full disk is met before sled meets it.
//!
//! After each successful persist the integrity record (`integrity`) is rewritten when due,
//! and `flush` rewrites it for sure; `check_integrity` runs at open.

use std::collections::BTreeSet;

use automerge::{Change, ChangeHash, ReadDoc};

use super::append::Appended;
use super::changes::{changed_names, root_keys_of};
use super::index::{self, Summary};
use super::integrity::{self, DocRecord, Record, Shortfall};
use super::storage::{self, OnDurable};
use super::{
    system_clock, ChangeSignature, DocId, Replica, ReplicaError, Result, COMPACT_AFTER_CHANGES,
    COMPACT_GROWTH, COMPACT_MIN_CHANGES,
};

/// The keys or skill names a write changed in each document it touched.
type Touched = Vec<(DocId, BTreeSet<String>)>;

/// Summaries as a batch leaves them (`None`: removed).
type Summaries = std::collections::BTreeMap<DocId, Option<Summary>>;

/// When each stored document's heads last moved, as the count of commits that moved heads
/// since the replica opened (`Replica::moved_since`). Every change of heads goes through
/// `take_summaries`, which keeps it.
#[derive(Default)]
pub(super) struct Moves {
    pub commits: u64,
    pub at: std::collections::BTreeMap<DocId, u64>,
}

/// Changes applied in memory, not yet durable.
#[derive(Default)]
pub(super) struct Pending {
    /// Every change applied to a touched document since its heads in `before`, whoever made
    /// it: what the index reads a memory document's written keys from (`touched`).
    pub changes: Vec<(DocId, Change)>,
    /// The heads of every document touched, from before the changes: where a failed persist
    /// takes them back to (empty: the document did not exist).
    pub before: Vec<(DocId, Vec<ChangeHash>)>,
    /// The local writes (memory and skill versions) these changes hold; none for changes
    /// from peers.
    pub writes: usize,
    /// Signatures from peers that vouch for `changes`; the changes made here are signed when
    /// they are stored.
    pub signatures: Vec<(DocId, ChangeSignature)>,
    /// What the changes appended to documents not loaded leave for the index (`append`).
    pub appended: Vec<(DocId, Appended)>,
}

impl Pending {
    /// Remembers `doc`'s heads unless it is already touched.
    pub fn touch(&mut self, doc: &DocId, heads: Vec<ChangeHash>) {
        if !self.before.iter().any(|(known, _)| known == doc) {
            self.before.push((doc.clone(), heads));
        }
    }
}

impl Replica {
    /// Refuses a write when the store's disk is below its reserve. Checked before a write is
    /// applied in memory, so a refusal costs nothing to undo.
    pub(super) fn ensure_writable(&mut self) -> Result<()> {
        self.refuse_after_failure()?;
        match self.reserve.check(&self.store_path) {
            Ok(Ok(())) => {
                if self.read_only {
                    tracing::info!("free space is back above the reserve: accepting writes again");
                    self.read_only = false;
                }
                Ok(())
            }
            Ok(Err(below)) => {
                if !self.read_only {
                    tracing::error!(%below, "refusing writes");
                    self.read_only = true;
                }
                Err(ReplicaError::ReadOnly(below))
            }
            Err(error) => {
                tracing::warn!(%error, "cannot read the free space of the store's disk; writing anyway");
                Ok(())
            }
        }
    }

    /// The failed write after which the store takes none until a restart, if there was one.
    pub fn write_failure(&self) -> Option<String> {
        let first = self.storage.failed()?;
        Some(ReplicaError::Failed(first.to_string()).to_string())
    }

    /// Why the node refuses writes now, if it does: for status and health.
    pub fn read_only_reason(&self) -> Option<String> {
        if let Some(failure) = self.write_failure() {
            return Some(failure);
        }
        match self.reserve.check(&self.store_path) {
            Ok(Err(below)) => Some(below.to_string()),
            _ => None,
        }
    }

    /// Makes `pending` durable with the index entries it changes, or takes the documents back
    /// to before it and returns why not.
    pub(super) fn persist(&mut self, pending: Pending) -> Result<()> {
        self.persist_acknowledging(pending, &mut || {})
    }

    /// `persist`, calling `on_durable` the moment the changes are durable, before sled and
    /// the bookkeeping after the write have them (`Storage::commit_acknowledging`).
    pub(super) fn persist_acknowledging(
        &mut self,
        pending: Pending,
        on_durable: OnDurable<'_>,
    ) -> Result<()> {
        if pending.changes.is_empty() {
            return Ok(());
        }
        let mut batch = storage::Writes::default();
        for (doc, change) in &pending.changes {
            storage::stage_change(&mut batch, &doc.name(), &change.hash(), change.raw_bytes());
        }
        if let Err(error) = self.stage_signatures(&mut batch, &pending) {
            self.roll_back(pending.before);
            return Err(error);
        }
        let touched = self.touched_by(&pending);
        let (summaries, undo) = match self.stage_index(&mut batch, &touched, &pending.appended) {
            Ok(staged) => staged,
            Err(error) => {
                self.roll_back(pending.before);
                return Err(error);
            }
        };
        let mut journaled = false;
        let committed = self.storage.commit_acknowledging(batch, &mut || {
            journaled = true;
            on_durable();
        });
        if let Err(error) = committed {
            if journaled {
                tracing::error!(%error, "sled refused a write the journal holds: it was acknowledged, is undone in memory until a restart applies it again from the journal; restart meshd once the disk is healthy");
            } else {
                tracing::error!(%error, "a write did not reach the disk; it is refused and undone");
            }
            self.roll_back(pending.before);
            self.undo(&pending.changes, undo);
            return Err(not_durable(error));
        }
        self.take_summaries(summaries);
        for (doc, change) in &pending.changes {
            if change.actor_id() == &self.actor {
                self.own_seqs.insert(doc.clone(), change.seq());
            }
            if let Some(state) = self.docs.get_mut(doc) {
                state.changes_since_snapshot += 1;
                state.bytes_since_snapshot += change.raw_bytes().len();
            } else if pending.appended.iter().any(|(appended, _)| appended == doc) {
                self.log_appended(doc, change);
            }
        }
        for (doc, _) in &pending.before {
            // The changes are durable in the log already; a failed compaction only means the
            // log is folded later.
            if let Err(error) = self.compact_if_due(doc) {
                tracing::warn!(doc = %doc.name(), %error, "compaction failed; retried later");
            }
        }
        self.note_durable();
        if let Some(metrics) = &self.metrics {
            metrics.store_committed();
            metrics.writes_acknowledged(pending.writes);
        }
        Ok(())
    }

    /// Stores a document that took a whole document in (`merge_document`) as a new snapshot,
    /// with its index; undone like `persist` when that fails. `saved`: the document's saved
    /// form already at hand (the bytes a full clone received), stored instead of saving it
    /// again.
    pub(super) fn persist_merged(
        &mut self,
        doc: &DocId,
        before: Vec<ChangeHash>,
        signatures: Vec<ChangeSignature>,
        saved: Option<&[u8]>,
    ) -> Result<()> {
        let before = vec![(doc.clone(), before)];
        let touched = self.touched(&before);
        let mut batch = storage::Writes::default();
        let snapshot_len = match self.stage_snapshot(&mut batch, doc, saved) {
            Ok(len) => len,
            Err(error) => {
                self.roll_back(before);
                return Err(error);
            }
        };
        let vouching = Pending {
            signatures: signatures.into_iter().map(|s| (doc.clone(), s)).collect(),
            ..Pending::default()
        };
        if let Err(error) = self.stage_signatures(&mut batch, &vouching) {
            self.roll_back(before);
            return Err(error);
        }
        let (summaries, undo) = match self.stage_index(&mut batch, &touched, &[]) {
            Ok(staged) => staged,
            Err(error) => {
                self.roll_back(before);
                return Err(error);
            }
        };
        if let Err(error) = self.storage.commit(batch) {
            self.roll_back(before);
            self.undo(&[], undo);
            return Err(not_durable(error));
        }
        self.take_summaries(summaries);
        self.snapshot_written(doc, snapshot_len);
        self.note_durable();
        if let Some(metrics) = &self.metrics {
            metrics.store_committed();
        }
        Ok(())
    }

    /// What the changes of `pending` changed in each document it touched. A memory
    /// document's keys are read from those changes themselves: asking the document for its
    /// changes since `before` rebuilds them from its operations, about 3% of a put's commit.
    fn touched_by(&self, pending: &Pending) -> Touched {
        (pending.before.iter())
            .filter_map(|(doc, heads)| {
                let state = self.docs.get(doc)?;
                let keys = if doc.scope().is_some() && !heads.is_empty() {
                    let changes = (pending.changes.iter()).filter(|(of, _)| of == doc);
                    root_keys_of(changes.map(|(_, change)| change))
                } else {
                    changed_names(doc, &state.doc, heads)
                };
                Some((doc.clone(), keys))
            })
            .collect()
    }

    /// What each document in `before` changed since those heads.
    fn touched(&mut self, before: &[(DocId, Vec<ChangeHash>)]) -> Touched {
        before
            .iter()
            .filter_map(|(doc, heads)| {
                let state = self.docs.get(doc)?;
                Some((doc.clone(), changed_names(doc, &state.doc, heads)))
            })
            .collect()
    }

    /// Adds the index entries of what was touched, and of what was appended, to `batch`;
    /// returns the summaries as the batch leaves them, and what undoes it.
    fn stage_index(
        &self,
        batch: &mut storage::Writes,
        touched: &Touched,
        appended: &[(DocId, Appended)],
    ) -> Result<(Summaries, index::Undo)> {
        let mut staging = index::Staging::new(self.storage.tree()?, &self.summaries);
        for (doc, names) in touched {
            if let Some(state) = self.docs.get(doc) {
                staging.update(doc, &state.doc, names)?;
            }
        }
        for (doc, appended) in appended {
            staging.appended(doc, appended)?;
        }
        Ok(staging.finish(batch))
    }

    /// Takes the summaries a committed batch wrote (`None`: removed).
    pub(super) fn take_summaries(&mut self, summaries: Summaries) {
        self.moves.commits += 1;
        for (doc, summary) in summaries {
            match summary {
                Some(summary) => {
                    self.moves.at.insert(doc.clone(), self.moves.commits);
                    self.summaries.insert(doc, summary);
                }
                None => {
                    self.moves.at.remove(&doc);
                    self.summaries.remove(&doc);
                }
            };
        }
    }

    /// After a failed commit (whose batch may be in sled's memory and log in part), puts back
    /// what it wrote: its changes are dropped, so that a later flush of sled's log cannot
    /// carry them to disk, and the index keys it touched are written back as they were.
    /// Whichever of the two batches reaches the disk, the index matches the changes stored.
    fn undo(&mut self, changes: &[(DocId, Change)], index: index::Undo) {
        let mut batch = storage::Writes::default();
        for (doc, change) in changes {
            storage::stage_forget(&mut batch, &doc.name(), &change.hash());
        }
        index.stage(&mut batch);
        self.storage.undo(batch);
    }

    /// Takes documents back to heads that are durable, after a failed persist.
    pub(super) fn roll_back(&mut self, before: Vec<(DocId, Vec<ChangeHash>)>) {
        self.actor = self.key.actor();
        self.own_seqs.clear();
        for (doc, heads) in before {
            if heads.is_empty() {
                self.docs.remove(&doc);
                continue;
            }
            let Some(state) = self.docs.get_mut(&doc) else {
                continue;
            };
            match state.doc.fork_at(&heads) {
                Ok(durable) => state.doc = durable,
                // The heads were read from this very document: this cannot fail.
                Err(error) => tracing::error!(doc = %doc.name(), %error, "cannot undo a write"),
            }
            self.edit_clock += 1;
            state.edits = self.edit_clock;
        }
        for state in self.docs.values_mut() {
            state.doc.set_actor(self.actor.clone());
        }
    }

    fn compact_if_due(&mut self, doc: &DocId) -> Result<()> {
        let Some(state) = self.docs.get(doc) else {
            return Ok(());
        };
        let outweighs = state.changes_since_snapshot >= COMPACT_MIN_CHANGES
            && state.bytes_since_snapshot >= COMPACT_GROWTH * state.snapshot_bytes;
        if outweighs || state.changes_since_snapshot >= COMPACT_AFTER_CHANGES {
            self.compact(doc)?;
        }
        Ok(())
    }

    /// Folds a document's stored changes into a new snapshot, atomically.
    pub fn compact(&mut self, doc: &DocId) -> Result<()> {
        self.ensure_writable()?;
        if self.load_state(doc)?.is_none() {
            return Ok(());
        }
        let mut batch = storage::Writes::default();
        let snapshot_len = self.stage_snapshot(&mut batch, doc, None)?;
        self.storage.commit(batch)?;
        self.snapshot_written(doc, snapshot_len);
        self.note_durable();
        Ok(())
    }

    /// Adds a loaded document's snapshot to `batch`, replacing its stored changes; returns
    /// the snapshot's size. `saved`: the document's saved form when it is at hand, else it is
    /// saved now.
    fn stage_snapshot(
        &self,
        batch: &mut storage::Writes,
        doc: &DocId,
        saved: Option<&[u8]>,
    ) -> Result<usize> {
        let Some(state) = self.docs.get(doc) else {
            return Ok(0);
        };
        let snapshot = match saved {
            Some(saved) => saved.to_vec(),
            None => state.doc.save(),
        };
        // The changes stored beside the old snapshot that the document holds, not every
        // change it holds: a removal for each of a full clone's 100 000 changes, none of them
        // stored, took a seventh of its time.
        let folded = (self.storage.stored_changes(&doc.name())?.into_iter())
            .filter(|hash| state.doc.get_change_meta_by_hash(hash).is_some());
        storage::stage_snapshot(batch, &doc.name(), &snapshot, folded);
        Ok(snapshot.len())
    }

    /// The stored snapshot of `doc` when it is the whole document as this node holds it: no
    /// change stored beside it, and none in memory beyond what is stored (the heads its index
    /// reflects). Saving a document of 100 000 changes again took 150 ms of a full clone.
    pub(super) fn stored_snapshot(&self, doc: &DocId) -> Option<Vec<u8>> {
        let indexed = self.summaries.get(doc).map(|summary| &summary.heads);
        if let Some(state) = self.docs.get(doc) {
            if Some(&state.doc.get_heads()) != indexed {
                return None;
            }
        }
        self.storage.snapshot_alone(&doc.name()).ok().flatten()
    }

    fn snapshot_written(&mut self, doc: &DocId, snapshot_len: usize) {
        if let Some(state) = self.docs.get_mut(doc) {
            state.snapshot_bytes = snapshot_len;
            state.changes_since_snapshot = 0;
            state.bytes_since_snapshot = 0;
        }
    }

    /// Waits until everything written so far is on disk, and records it. After a failed
    /// write there is nothing more to flush (it was undone), and sled is not called again.
    pub fn flush(&mut self) -> Result<()> {
        if self.storage.failed().is_some() {
            return Ok(());
        }
        self.storage.flush()?;
        if self.integrity.is_dirty() {
            self.write_integrity();
        }
        Ok(())
    }

    /// How often the integrity record may be rewritten while writes go on (default: once a
    /// second); `None` keeps none, which only `benches/replica` does, to measure its cost.
    #[doc(hidden)]
    pub fn set_integrity_every(&mut self, every: Option<std::time::Duration>) {
        self.integrity.set_every(every);
    }

    /// Writes the integrity record if durable changes are missing from it (the daemon calls
    /// this every `INTEGRITY_EVERY`).
    pub fn record_integrity(&mut self) {
        if self.integrity.is_dirty() && self.storage.failed().is_none() {
            self.write_integrity();
        }
        self.check_repair();
    }

    /// Everything in memory is durable now: rewrite the integrity record when due.
    fn note_durable(&mut self) {
        if self.integrity.note_durable() {
            self.write_integrity();
        }
    }

    fn write_integrity(&mut self) {
        let record = Record {
            written_at_ms: system_clock(),
            docs: self
                .summaries
                .iter()
                .filter(|(_, summary)| !summary.heads.is_empty())
                .map(|(doc, summary)| (doc.name(), DocRecord::new(&summary.heads, summary.changes)))
                .collect(),
        };
        if let Err(error) = self.integrity.write(&record) {
            tracing::warn!(path = %self.integrity.path().display(), %error,
                "cannot write the integrity record; a damaged store may then go unnoticed");
        }
    }

    /// Compares the store with the integrity record; `LostWrites` names what is missing.
    pub(super) fn check_integrity(&mut self) -> Result<()> {
        self.verify_integrity().map(drop)
    }

    /// Compares the store with the integrity record now, as opening does (`meshd doctor`
    /// asks a running daemon this way); returns when the record was written (Unix
    /// milliseconds), `None` when there is no record yet.
    pub fn verify_integrity(&mut self) -> Result<Option<u64>> {
        let record = self
            .integrity
            .load()
            .map_err(|error| ReplicaError::Damaged {
                path: self.integrity.path().to_path_buf(),
                detail: format!("the integrity record cannot be read ({error})"),
            })?;
        let Some(record) = record else {
            return Ok(None);
        };
        let mut shortfalls = Vec::new();
        for (name, recorded) in &record.docs {
            shortfalls.extend(self.shortfall(name, recorded)?);
        }
        if shortfalls.is_empty() {
            return Ok(Some(record.written_at_ms));
        }
        Err(ReplicaError::LostWrites {
            path: self.store_path.clone(),
            recorded_at: record.written_at(),
            shortfalls: integrity::describe(&shortfalls),
        })
    }

    /// What the store lacks of one document of the record. A recorded head among the heads the
    /// index reflects is there; only a document whose record differs is loaded to look for
    /// the others (after a crash, those written in the last second).
    pub(super) fn shortfall(
        &mut self,
        name: &str,
        recorded: &DocRecord,
    ) -> Result<Option<Shortfall>> {
        let heads = recorded.heads();
        let id = DocId::from_name(name).ok();
        let summary = id.as_ref().and_then(|id| self.summaries.get(id));
        let indexed = |head: &Option<ChangeHash>| {
            summary.is_some_and(|s| head.is_some_and(|h| s.heads.contains(&h)))
        };
        if heads.iter().all(indexed) {
            return Ok(None);
        }
        let doc = match &id {
            Some(id) => self.load_state(id)?.map(|state| &state.doc),
            None => None,
        };
        let missing = match doc {
            None => heads.len(),
            Some(doc) => heads
                .iter()
                .filter(|head| head.is_none_or(|h| doc.get_change_meta_by_hash(&h).is_none()))
                .count(),
        };
        Ok((missing > 0).then(|| Shortfall {
            doc: name.to_string(),
            missing_heads: missing,
            recorded_changes: recorded.changes,
            held_changes: doc.map_or(0, |d| d.stats().num_changes),
        }))
    }
}

/// A commit sled failed: its batch may sit in sled's log in part or whole, which the undo
/// cannot always take back (sled refuses it too after a failed write), so the caller is told
/// the outcome is unknown rather than that nothing was stored.
fn not_durable(error: ReplicaError) -> ReplicaError {
    match error {
        ReplicaError::Storage(source) => ReplicaError::NotDurable(source.to_string()),
        other => other,
    }
}
