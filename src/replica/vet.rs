//! What a peer's changes claim about time, checked before they are applied: a change that
//! writes a version stamped further ahead of this node's clock than its bound is refused,
//! whole, as an import with such a stamp is. The refusal is retried with every sync round, so
//! the change goes in once this node's clock has caught up; a peer whose clock runs ahead is
//! named in the log and in `meshd status` meanwhile.

use automerge::legacy::OpType;
use automerge::{Automerge, Change, ScalarValue};
use serde::Deserialize;

use super::Replica;
use crate::model::hlc::FutureStamp;
use crate::model::Stamp;

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

impl Replica {
    /// Refuses changes from a peer that write a stamp beyond this node's clock bound.
    pub fn vet_changes(&mut self, changes: &[Change]) -> Result<(), FutureStamp> {
        let wall = (self.wall_clock)();
        changes
            .iter()
            .filter_map(newest_stamp)
            .try_for_each(|stamp| self.clock_bound.check(stamp, wall))
    }

    /// `vet_changes` for a whole document a peer sent. Bytes that do not load are left to
    /// the merge, which refuses them with its own error.
    pub fn vet_document(&mut self, saved: &[u8]) -> Result<(), FutureStamp> {
        match Automerge::load(saved) {
            Ok(doc) => self.vet_changes(&doc.get_changes(&[])),
            Err(_) => Ok(()),
        }
    }
}
