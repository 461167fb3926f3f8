//! Group commit of changes from peers. A link that finds several messages waiting hands them
//! to its session inside `Replica::gathering`: every change applied meanwhile stays in memory,
//! and all are made durable with one commit (one flush) at the end, instead of one flush per
//! message. A peer that sends faster than one flush per message then costs one flush per
//! burst, not one per change.
//!
//! Nothing that is not durable is shown: the caller holds the replica for the whole scope
//! (`SharedReplica::with`), so the only reader of the gathered changes is the session inside,
//! and the link sends what the session answered only once the commit returned. Inside, the
//! heads, document list and change counts include the gathered changes, so the session
//! answers as it would have after one commit per message. A commit that fails undoes every
//! gathered change, as one write's failure undoes that write (`durable`).

use automerge::{Automerge, ChangeHash, ReadDoc};

use super::durable::Pending;
use super::{DocId, Replica, Result};

impl Replica {
    /// Runs `receive`, which applies changes from peers (`apply_changes`), and makes every
    /// change it applied durable with one commit. Returns what `receive` returned, and the
    /// commit's result: on an error nothing gathered is kept, and the caller must not tell
    /// anyone of it.
    pub fn gathering<T>(&mut self, receive: impl FnOnce(&mut Replica) -> T) -> (T, Result<()>) {
        self.gathered = Some(Pending::default());
        let value = receive(self);
        let committed = self.commit_gathered();
        self.gathered = None;
        (value, committed)
    }

    /// Makes what was gathered so far durable, and goes on gathering: a step inside the scope
    /// that needs the stored state (a whole document merged, signatures read back) calls it.
    pub(super) fn commit_gathered(&mut self) -> Result<()> {
        let Some(pending) = self.gathered.as_mut().map(std::mem::take) else {
            return Ok(());
        };
        self.persist(pending)
    }

    /// Keeps `pending` for the gathered commit; gives it back when not gathering.
    pub(super) fn gather(&mut self, pending: Pending) -> std::result::Result<(), Pending> {
        let Some(gathered) = self.gathered.as_mut() else {
            return Err(pending);
        };
        for (doc, heads) in pending.before {
            gathered.touch(&doc, heads);
        }
        gathered.changes.extend(pending.changes);
        gathered.signatures.extend(pending.signatures);
        gathered.appended.extend(pending.appended);
        Ok(())
    }

    /// Whether `doc` holds gathered changes not committed yet.
    pub(super) fn is_gathered(&self, doc: &DocId) -> bool {
        self.gathered
            .as_ref()
            .is_some_and(|gathered| gathered.before.iter().any(|(known, _)| known == doc))
    }

    /// The heads of a document holding gathered changes (the summaries lag behind until the
    /// commit).
    pub(super) fn gathered_heads(&self, doc: &DocId) -> Option<Vec<ChangeHash>> {
        self.gathered_doc(doc).map(Automerge::get_heads)
    }

    /// `gathered_heads`' counterpart for the number of changes.
    pub(super) fn gathered_change_count(&self, doc: &DocId) -> Option<u64> {
        self.gathered_doc(doc).map(|doc| doc.stats().num_changes)
    }

    fn gathered_doc(&self, doc: &DocId) -> Option<&Automerge> {
        if !self.is_gathered(doc) {
            return None;
        }
        self.docs.get(doc).map(|state| &state.doc)
    }

    /// Commits what a `gathering` cut short by a panic left behind, so that no change stays
    /// applied in memory and not durable, and no later apply is gathered into a commit that
    /// never comes.
    pub(super) fn settle_interrupted(&mut self) {
        if self.gathered.is_none() {
            return;
        }
        if let Err(error) = self.commit_gathered() {
            tracing::error!(%error, "cannot commit the changes a sync step applied before it panicked; they are undone");
        }
        self.gathered = None;
    }

    /// Documents first made by gathered changes, not in the summaries yet.
    pub(super) fn gathered_new_docs(&self) -> Vec<DocId> {
        let Some(gathered) = self.gathered.as_ref() else {
            return Vec::new();
        };
        gathered
            .before
            .iter()
            .filter(|(doc, _)| !self.summaries.contains_key(doc))
            .map(|(doc, _)| doc.clone())
            .collect()
    }
}
