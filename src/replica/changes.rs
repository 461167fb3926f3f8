//! What changed in a document since given heads, by memory key or skill name: what a derived
//! index (search) needs to bring itself up to date without reading the whole document.

use std::collections::BTreeSet;

use automerge::legacy::{Key, ObjectId};
use automerge::{Automerge, ChangeHash, Prop, ReadDoc};

use super::Replica;
use crate::model::DocId;

/// The memory keys or skill names whose value may differ between two versions of a document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Changed {
    /// The document is as it was.
    Nothing,
    /// Only these keys (memory) or names (skills) may differ.
    Names(BTreeSet<String>),
    /// The old heads are not in the document (a repaired or restored store, a document that
    /// is gone): read it all.
    Everything,
}

impl Replica {
    /// What changed in `doc` since `since`, the heads an earlier reader saw.
    pub fn changed_since(&self, doc: &DocId, since: &[ChangeHash]) -> Changed {
        let Some(document) = self.document(doc) else {
            return Changed::Everything;
        };
        if document.get_heads() == since {
            return Changed::Nothing;
        }
        if since
            .iter()
            .any(|h| document.get_change_by_hash(h).is_none())
        {
            return Changed::Everything;
        }
        Changed::Names(match doc {
            DocId::Memory(_) => root_keys_written(document, since),
            DocId::Skills => top_level_names_patched(document, since),
        })
    }
}

/// Memory versions are scalars put straight into the root map, so the keys are the map keys
/// of the root operations in the new changes: linear in the changes, not in the document.
fn root_keys_written(doc: &Automerge, since: &[ChangeHash]) -> BTreeSet<String> {
    doc.get_changes(since)
        .iter()
        .flat_map(|change| change.decode().operations)
        .filter(|op| op.obj == ObjectId::Root)
        .filter_map(|op| match op.key {
            Key::Map(key) => Some(key.to_string()),
            Key::Seq(_) => None,
        })
        .collect()
}

/// A skill's edits land in objects nested under its name (its map, its Text), so the names
/// come from Automerge's diff, whose patches carry the path from the root.
fn top_level_names_patched(doc: &Automerge, since: &[ChangeHash]) -> BTreeSet<String> {
    doc.diff(since, &doc.get_heads())
        .into_iter()
        .filter_map(|patch| match patch.path.first() {
            Some((_, Prop::Map(name))) => Some(name.clone()),
            Some((_, Prop::Seq(_))) => None,
            None => patch_root_key(&patch.action),
        })
        .collect()
}

fn patch_root_key(action: &automerge::PatchAction) -> Option<String> {
    use automerge::PatchAction::*;
    match action {
        PutMap { key, .. } | DeleteMap { key } => Some(key.clone()),
        Increment {
            prop: Prop::Map(key),
            ..
        }
        | Conflict {
            prop: Prop::Map(key),
        } => Some(key.clone()),
        _ => None,
    }
}
