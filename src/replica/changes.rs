//! What changed in a document since given heads, by memory key or skill name: what a derived
//! index (search) needs to bring itself up to date without reading the whole document.

use std::collections::{BTreeSet, HashSet};

use automerge::legacy::{Key, ObjectId};
use automerge::{Automerge, Change, ChangeHash, ReadDoc, ROOT};

use super::{skills_doc, Replica};
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
    /// What changed in `doc` since `since`, the heads an earlier reader saw. Loads the
    /// document only when it did change.
    pub fn changed_since(&mut self, doc: &DocId, since: &[ChangeHash]) -> Changed {
        if self.heads(doc) == since && !since.is_empty() {
            return Changed::Nothing;
        }
        if let Some(names) = self.appended_names(doc, since) {
            return Changed::Names(names);
        }
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
        Changed::Names(changed_names(doc, document, since))
    }
}

/// The keys (memory) or names (skills) whose value may differ in `document` since `since`,
/// heads it contains.
pub(super) fn changed_names(
    doc: &DocId,
    document: &Automerge,
    since: &[ChangeHash],
) -> BTreeSet<String> {
    if since.is_empty() {
        // Nothing was there before: what differs is what is there now (a name written and
        // deleted again is absent both times). Reading the names, not every change, makes a
        // full clone's index cheap.
        return document.keys(ROOT).collect();
    }
    match doc {
        DocId::Memory(_) | DocId::Bucket(..) => root_keys_written(document, since),
        DocId::Skills => skill_names_written(document, since),
    }
}

/// Memory versions are scalars put straight into the root map, so the keys are the map keys
/// of the root operations in the new changes: linear in the changes, not in the document.
fn root_keys_written(doc: &Automerge, since: &[ChangeHash]) -> BTreeSet<String> {
    root_keys_of(&doc.get_changes(since))
}

/// The root map keys `changes` write: a memory document's keys they may change.
pub(super) fn root_keys_of<'c>(changes: impl IntoIterator<Item = &'c Change>) -> BTreeSet<String> {
    changes
        .into_iter()
        .flat_map(|change| change.decode().operations)
        .filter(|op| op.obj == ObjectId::Root)
        .filter_map(|op| match op.key {
            Key::Map(key) => Some(key.to_string()),
            Key::Seq(_) => None,
        })
        .collect()
}

/// A skill's edits land in objects nested under its name (its map, its `content` Text), so
/// the names are those whose objects, among every concurrent version, the new operations
/// touch. Automerge's diff is not enough: it shows only the version Automerge picks for a
/// name, while the replica's winner may be another one (the greatest stamp), whose edits the
/// diff would leave out.
fn skill_names_written(doc: &Automerge, since: &[ChangeHash]) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut nested = HashSet::new();
    for change in doc.get_changes(since) {
        for op in change.decode().operations {
            match (op.obj, op.key) {
                (ObjectId::Root, Key::Map(key)) => {
                    names.insert(key.to_string());
                }
                (ObjectId::Root, Key::Seq(_)) => {}
                (ObjectId::Id(id), _) => {
                    nested.insert(id.to_string());
                }
            }
        }
    }
    if nested.is_empty() {
        return names;
    }
    for name in skills_doc::names(doc) {
        if !names.contains(&name)
            && skills_doc::objects(doc, &name).any(|obj| nested.contains(&obj))
        {
            names.insert(name);
        }
    }
    names
}
