//! The numbering of changes from peers (sequence numbers, operation counters, times),
//! checked before Automerge applies them. A peer signs whatever numbers it likes on its own
//! changes.
//!
//! - **Sequence numbers.** Automerge 0.12 refuses a change whose actor already has its
//!   sequence number, but a change that skips numbers reaches an assertion (a panic, halfway
//!   through updating the document's change graph) when it is applied. So a change whose
//!   number does not follow its actor's last one is refused here, with the reason, before the
//!   document is touched.
//! - **Operation counters.** A change's first operation counter follows the greatest of the
//!   document it was made in, so it is above every counter of its dependencies. The index
//!   relies on that: the greatest counter of a document is the greatest of its heads
//!   (`Summary::max_op`), which a write appended without loading numbers its operations
//!   after. A change that starts at or below a dependency's greatest counter would make the
//!   index believe a smaller one, and an appended write could then reuse an operation id
//!   this node already gave out; it is refused.
//!
//! - **Times.** Automerge 0.12 keeps the times of a document's changes as differences from
//!   one to the next, and panics halfway through applying a change whose time differs from
//!   the previous one's by more than an i64 holds (a change at `i64::MIN` after one at 1000);
//!   the document it leaves behind panics on every later read of its changes. A change whose
//!   time is further from zero than `MAX_TIME` is refused: any two times within it differ by
//!   far less.
//!
//! A change's actor's previous change is always among its ancestors: a change depends on the
//! heads of the document its actor wrote it in, which hold that actor's last change. So the
//! check walks a change's ancestors (in the batch, then in the document) and stops at each
//! change of the same actor: the greatest number found must be one less than its own. A
//! change whose ancestors are not all at hand is left to Automerge, which keeps it until they
//! come; the sync session applies only changes whose dependencies are stored or sent with
//! them (`trust::Vouching`), so a peer's changes always meet the check.

use std::collections::{HashMap, HashSet};

use automerge::{ActorId, Automerge, Change, ChangeHash, ChangeMetadata};

/// The greatest distance from zero a change's time may have: JavaScript's largest safe
/// integer, which Automerge's JavaScript side cannot exceed (in milliseconds since 1970, the
/// year 287 396).
pub const MAX_TIME: i64 = (1 << 53) - 1;

/// Why the first misnumbered change of `changes` is wrong, if one is.
pub fn misnumbered(doc: &Automerge, changes: &[Change]) -> Option<String> {
    let batch: HashMap<ChangeHash, &Change> = changes.iter().map(|c| (c.hash(), c)).collect();
    changes
        .iter()
        .filter(|change| doc.get_change_meta_by_hash(&change.hash()).is_none())
        .find_map(|change| {
            out_of_range(&change.hash(), change.actor_id(), change.timestamp())
                .or_else(|| counter_overlap(doc, &batch, change))
                .or_else(|| skipped_seq(doc, &batch, change))
        })
}

/// `misnumbered` for the times only, over a whole document's history.
pub fn times_out_of_range(history: &[ChangeMetadata<'_>]) -> Option<String> {
    (history.iter()).find_map(|change| out_of_range(&change.hash, &change.actor, change.timestamp))
}

fn out_of_range(hash: &ChangeHash, actor: &ActorId, time: i64) -> Option<String> {
    (time.unsigned_abs() > MAX_TIME as u64).then(|| {
        format!(
            "change {hash} of actor {actor} says it was made at {time} ms since 1970, beyond the {MAX_TIME} Automerge can keep"
        )
    })
}

fn skipped_seq(
    doc: &Automerge,
    batch: &HashMap<ChangeHash, &Change>,
    change: &Change,
) -> Option<String> {
    if change.seq() == 1 {
        return None;
    }
    let previous = previous_seq(doc, batch, change)?;
    (previous + 1 != change.seq()).then(|| {
        format!(
            "change {} of actor {} is number {} of its actor, whose last change before it is number {previous}",
            change.hash(),
            change.actor_id(),
            change.seq()
        )
    })
}

/// `misnumbered` for the operation counters only, over a whole document's history (every
/// change of it, as the metadata of the loaded document: `whole::load` walks only the changes
/// after it), one lookup per dependency.
pub fn counters_overlap(history: &[ChangeMetadata<'_>]) -> Option<String> {
    let max_ops: HashMap<ChangeHash, u64> = history.iter().map(|m| (m.hash, m.max_op)).collect();
    history.iter().find_map(|change| {
        let start = change.start_op;
        let (dep, max_op) = (change.deps.iter())
            .filter_map(|dep| Some((dep, *max_ops.get(dep)?)))
            .find(|(_, max_op)| *max_op >= start)?;
        Some(overlap(&change.hash, &change.actor, start, dep, max_op))
    })
}

fn counter_overlap(
    doc: &Automerge,
    batch: &HashMap<ChangeHash, &Change>,
    change: &Change,
) -> Option<String> {
    let start = change.start_op().get();
    let (dep, max_op) = change
        .deps()
        .iter()
        .filter_map(|dep| Some((dep, max_op(doc, batch, dep)?)))
        .find(|(_, max_op)| *max_op >= start)?;
    Some(overlap(
        &change.hash(),
        change.actor_id(),
        start,
        dep,
        max_op,
    ))
}

fn overlap(
    hash: &ChangeHash,
    actor: &ActorId,
    start: u64,
    dep: &ChangeHash,
    max_op: u64,
) -> String {
    format!(
        "change {hash} of actor {actor} numbers its operations from {start}, but its dependency {dep} already used up to {max_op}"
    )
}

fn max_op(doc: &Automerge, batch: &HashMap<ChangeHash, &Change>, hash: &ChangeHash) -> Option<u64> {
    match batch.get(hash) {
        Some(change) => Some(change.max_op()),
        None => doc.get_change_meta_by_hash(hash).map(|meta| meta.max_op),
    }
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

/// A change putting one key at the root, numbered as told: any numbering a peer may sign.
#[cfg(test)]
pub fn numbered_change(actor: ActorId, seq: u64, start_op: u64, deps: Vec<ChangeHash>) -> Change {
    timed_change(actor, seq, start_op, deps, 0)
}

/// `numbered_change` made at `time`.
#[cfg(test)]
pub fn timed_change(
    actor: ActorId,
    seq: u64,
    start_op: u64,
    deps: Vec<ChangeHash>,
    time: i64,
) -> Change {
    use automerge::legacy::{Key, ObjectId, Op, OpType, SortedVec};
    Change::from(automerge::ExpandedChange {
        operations: vec![Op {
            action: OpType::Put(automerge::ScalarValue::Str("x".into())),
            obj: ObjectId::Root,
            key: Key::Map("other".into()),
            pred: SortedVec::new(),
            insert: false,
        }],
        actor_id: actor,
        hash: None,
        seq,
        start_op: std::num::NonZeroU64::new(start_op).expect("operation counters start at 1"),
        time,
        message: None,
        deps,
        extra_bytes: Vec::new(),
        author: None,
    })
}
