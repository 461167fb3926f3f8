//! The sequence numbers of changes from peers, checked before Automerge applies them.
//!
//! Automerge 0.12 refuses a change whose actor already has its sequence number, but a change
//! that skips numbers reaches an assertion (a panic, halfway through updating the document's
//! change graph) when it is applied. A peer signs whatever number it likes on its own
//! changes, so a change whose number does not follow its actor's last one is refused here,
//! with the reason, before the document is touched.
//!
//! A change's actor's previous change is always among its ancestors: a change depends on the
//! heads of the document its actor wrote it in, which hold that actor's last change. So the
//! check walks a change's ancestors (in the batch, then in the document) and stops at each
//! change of the same actor: the greatest number found must be one less than its own. A
//! change whose ancestors are not all at hand is left to Automerge, which keeps it until they
//! come; the sync session applies only changes whose dependencies are stored or sent with
//! them (`trust::Vouching`), so a peer's changes always meet the check.

use std::collections::{HashMap, HashSet};

use automerge::{ActorId, Automerge, Change, ChangeHash};

/// The first change of `changes` whose sequence number does not follow its actor's last one
/// among its ancestors, with what it should have been.
pub(super) fn skipped(doc: &Automerge, changes: &[Change]) -> Option<String> {
    let batch: HashMap<ChangeHash, &Change> = changes.iter().map(|c| (c.hash(), c)).collect();
    changes
        .iter()
        .filter(|change| change.seq() > 1 && doc.get_change_meta_by_hash(&change.hash()).is_none())
        .find_map(|change| {
            let previous = previous_seq(doc, &batch, change)?;
            (previous + 1 != change.seq()).then(|| {
                format!(
                    "change {} of actor {} is number {} of its actor, whose last change before it is number {previous}",
                    change.hash(),
                    change.actor_id(),
                    change.seq()
                )
            })
        })
}

/// The greatest sequence number of `change`'s actor among its ancestors (0: none); `None`
/// when an ancestor is neither in the batch nor in the document.
fn previous_seq(
    doc: &Automerge,
    batch: &HashMap<ChangeHash, &Change>,
    change: &Change,
) -> Option<u64> {
    let actor = change.actor_id();
    let mut stack: Vec<ChangeHash> = change.deps().to_vec();
    let mut seen = HashSet::new();
    let mut greatest = 0;
    while let Some(hash) = stack.pop() {
        if !seen.insert(hash) {
            continue;
        }
        let (by, seq, deps) = metadata(doc, batch, &hash)?;
        if by == *actor {
            greatest = greatest.max(seq);
        } else {
            stack.extend(deps);
        }
    }
    Some(greatest)
}

fn metadata(
    doc: &Automerge,
    batch: &HashMap<ChangeHash, &Change>,
    hash: &ChangeHash,
) -> Option<(ActorId, u64, Vec<ChangeHash>)> {
    if let Some(change) = batch.get(hash) {
        return Some((
            change.actor_id().clone(),
            change.seq(),
            change.deps().to_vec(),
        ));
    }
    let meta = doc.get_change_meta_by_hash(hash)?;
    Some((meta.actor.into_owned(), meta.seq, meta.deps))
}
