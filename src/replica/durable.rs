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

use automerge::{ActorId, Change, ChangeHash, ReadDoc};

use super::integrity::{DocRecord, Record, Shortfall};
use super::{
    system_clock, DocId, Replica, ReplicaError, Result, COMPACT_AFTER_CHANGES, COMPACT_GROWTH,
    COMPACT_MIN_CHANGES,
};

/// Changes applied in memory, not yet durable.
#[derive(Default)]
pub(super) struct Pending {
    pub changes: Vec<(DocId, Change)>,
    /// The heads of every document touched, from before the changes: where a failed persist
    /// takes them back to (empty: the document did not exist).
    pub before: Vec<(DocId, Vec<ChangeHash>)>,
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
        if let Some(first) = self.storage.failed() {
            return Err(ReplicaError::Failed(first.to_string()));
        }
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

    /// Makes `pending` durable, or takes the documents back to before it and returns why not.
    pub(super) fn persist(&mut self, pending: Pending) -> Result<()> {
        if pending.changes.is_empty() {
            return Ok(());
        }
        let names: Vec<String> = pending.changes.iter().map(|(doc, _)| doc.name()).collect();
        let stored = self.storage.append_durably(
            pending
                .changes
                .iter()
                .zip(&names)
                .map(|((_, change), name)| (name.as_str(), change.hash(), change.raw_bytes())),
        );
        if let Err(error) = stored {
            tracing::error!(%error, "a write did not reach the disk; it is refused and undone");
            self.storage.forget(
                pending
                    .changes
                    .iter()
                    .zip(&names)
                    .map(|((_, change), name)| (name.as_str(), change.hash())),
            );
            self.roll_back(pending.before);
            return Err(error);
        }
        for (doc, change) in &pending.changes {
            if let Some(state) = self.docs.get_mut(doc) {
                state.changes_since_snapshot += 1;
                state.bytes_since_snapshot += change.raw_bytes().len();
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
        Ok(())
    }

    /// Takes documents back to heads that are durable, after a failed persist.
    pub(super) fn roll_back(&mut self, before: Vec<(DocId, Vec<ChangeHash>)>) {
        self.actor = ActorId::random();
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
            state.edits += 1;
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
        let Some(state) = self.docs.get_mut(doc) else {
            return Ok(());
        };
        let snapshot = state.doc.save();
        let folded: Vec<ChangeHash> = state
            .doc
            .get_changes(&[])
            .iter()
            .map(Change::hash)
            .collect();
        self.storage.compact(&doc.name(), &snapshot, folded)?;
        state.snapshot_bytes = snapshot.len();
        state.changes_since_snapshot = 0;
        state.bytes_since_snapshot = 0;
        self.note_durable();
        Ok(())
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
                .docs
                .iter()
                .filter_map(|(doc, state)| {
                    let heads = state.doc.get_heads();
                    let changes = state.doc.stats().num_changes;
                    (!heads.is_empty()).then(|| (doc.name(), DocRecord::new(&heads, changes)))
                })
                .collect(),
        };
        if let Err(error) = self.integrity.write(&record) {
            tracing::warn!(path = %self.integrity.path().display(), %error,
                "cannot write the integrity record; a damaged store may then go unnoticed");
        }
    }

    /// Compares the loaded documents with the integrity record; `LostWrites` names what is
    /// missing.
    pub(super) fn check_integrity(&self) -> Result<()> {
        let record = self
            .integrity
            .load()
            .map_err(|error| ReplicaError::Damaged {
                path: self.integrity.path().to_path_buf(),
                detail: format!("the integrity record cannot be read ({error})"),
            })?;
        let Some(record) = record else {
            return Ok(());
        };
        let shortfalls: Vec<Shortfall> = record
            .docs
            .iter()
            .filter_map(|(name, recorded)| self.shortfall(name, recorded))
            .collect();
        if shortfalls.is_empty() {
            return Ok(());
        }
        Err(ReplicaError::LostWrites {
            path: self.store_path.clone(),
            recorded_at: record.written_at(),
            shortfalls: shortfalls
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; "),
        })
    }

    pub(super) fn shortfall(&self, name: &str, recorded: &DocRecord) -> Option<Shortfall> {
        let doc = DocId::from_name(name)
            .ok()
            .and_then(|id| self.docs.get(&id))
            .map(|state| &state.doc);
        let heads = recorded.heads();
        let missing = match doc {
            None => heads.len(),
            Some(doc) => heads
                .iter()
                .filter(|head| head.is_none_or(|h| doc.get_change_meta_by_hash(&h).is_none()))
                .count(),
        };
        (missing > 0).then(|| Shortfall {
            doc: name.to_string(),
            missing_heads: missing,
            recorded_changes: recorded.changes,
            held_changes: doc.map_or(0, |d| d.stats().num_changes),
        })
    }
}
