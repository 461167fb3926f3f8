//! Batches whose skill writes are applied off the replica lock.
//!
//! Editing a skill's text is the one write whose cost grows with its size: planning the edit
//! and applying it to Automerge take up to seconds for a 1 MiB rewrite (see `text_edit`), and
//! the replica lock guards every document of the node. So `SharedReplica::batch` stages a
//! batch under the lock as usual (every decision: versions, stamps, descriptions), releases
//! the lock, applies the skill writes to a copy of the skills document (copying is a clone of
//! its buffers: about a millisecond for a 1 MiB text), and takes the lock again only to swap
//! the edited copy in and make the batch durable.
//!
//! The swap is right only if no document the batch writes changed in between: each
//! `DocState` carries the number of its last edit, every document has heads (a write
//! appended to a document not in memory moves only those), and a batch whose documents moved
//! on is staged again from the start, because its decisions may no longer hold. Memory
//! written by others meanwhile to other documents does not make a batch stale.

use automerge::{Automerge, Change, ChangeHash, ReadDoc};

use super::{new_doc_state, Batch, DocId, Replica, Result, Staged};

/// A staged batch, as `Replica::stage_detached` leaves it.
pub(super) enum Staging<T> {
    /// It wrote no skill, so it was committed under the lock like any batch.
    Committed(Result<T>),
    /// Its skill writes wait to be applied to `copy` off the lock. (Boxed: an `Automerge`
    /// is some kilobytes of bookkeeping.)
    Detached(Box<Detached<T>>),
}

pub(super) struct Detached<T> {
    outcome: Result<T>,
    skills: Vec<Staged>,
    /// The batch's other writes, applied under the lock when it commits.
    others: Vec<Staged>,
    /// The skills document as it was when the batch was staged.
    copy: Automerge,
    /// Every document the batch writes, as it was when the batch was staged.
    seen: Vec<(DocId, Seen)>,
    /// The change `edit_skills` made to `copy`.
    change: Option<Change>,
}

/// A document as a detached batch saw it: its edit count if it was in memory, and its heads.
#[derive(PartialEq)]
struct Seen {
    edits: Option<u64>,
    heads: Vec<ChangeHash>,
}

/// What `Replica::commit_detached` did.
pub(super) enum Commit<T> {
    Done(Result<T>),
    /// A document the batch writes changed since it was staged; nothing was written.
    Stale,
}

impl Replica {
    /// Runs `f` like `batch`; commits at once when it wrote no skill, and otherwise returns the
    /// writes with a copy of the skills document to apply them to.
    pub(super) fn stage_detached<T>(
        &mut self,
        f: impl FnOnce(&mut Batch<'_>) -> Result<T>,
    ) -> Result<Staging<T>> {
        self.refuse_after_failure()?;
        let (outcome, writes) = self.stage(f);
        let (skills, others): (Vec<Staged>, Vec<Staged>) = writes
            .into_iter()
            .partition(|write| write.doc() == DocId::Skills);
        if skills.is_empty() {
            self.commit_writes(others, &mut || {})?;
            return Ok(Staging::Committed(outcome));
        }
        self.ensure_writable()?;
        // Loaded first, so that its edit count below is the one of the copy.
        self.load_state(&DocId::Skills)?;
        let mut seen: Vec<(DocId, Seen)> = Vec::new();
        for doc in std::iter::once(DocId::Skills).chain(others.iter().map(Staged::doc)) {
            if !seen.iter().any(|(known, _)| *known == doc) {
                let now = self.seen(&doc);
                seen.push((doc, now));
            }
        }
        let copy = match self.load_state(&DocId::Skills)? {
            Some(state) => state.doc.clone(),
            None => new_doc_state(&self.actor).doc,
        };
        Ok(Staging::Detached(Box::new(Detached {
            outcome,
            skills,
            others,
            copy,
            seen,
            change: None,
        })))
    }

    /// Swaps the edited copy in and makes the whole batch durable, unless a document it
    /// writes changed since it was staged.
    pub(super) fn commit_detached<T>(&mut self, detached: Detached<T>) -> Result<Commit<T>> {
        let moved_on = detached
            .seen
            .iter()
            .any(|(doc, then)| self.seen(doc) != *then);
        if moved_on {
            return Ok(Commit::Stale);
        }
        self.ensure_writable()?;
        let mut pending = self.apply_writes(detached.others)?;
        pending.writes += detached.skills.len();
        if let Some(change) = detached.change {
            let actor = self.actor.clone();
            let edit = self.next_edit();
            let state = match self.state_or_new(&DocId::Skills) {
                Ok(state) => state,
                Err(error) => {
                    self.roll_back(pending.before);
                    return Err(error);
                }
            };
            pending.touch(&DocId::Skills, state.doc.get_heads());
            state.doc = detached.copy.with_actor(actor);
            state.edits = edit;
            pending.changes.push((DocId::Skills, change));
        }
        self.persist(pending)?;
        Ok(Commit::Done(detached.outcome))
    }

    fn seen(&self, doc: &DocId) -> Seen {
        Seen {
            edits: self.docs.get(doc).map(|state| state.edits),
            heads: self.heads(doc),
        }
    }
}

impl<T> Detached<T> {
    /// Applies the batch's skill writes to the copy, as one change: the slow part, run with
    /// the replica unlocked.
    pub(super) fn edit_skills(&mut self) -> Result<()> {
        let mut tx = self.copy.transaction();
        if let Err(e) = self
            .skills
            .iter()
            .try_for_each(|write| write.apply(&mut tx))
        {
            tx.rollback();
            return Err(e.into());
        }
        let (hash, _) = tx.commit();
        self.change = hash.and_then(|hash| self.copy.get_change_by_hash(&hash));
        Ok(())
    }
}
