//! How memory entries sit in a scope's Automerge document.
//!
//! The root map holds one key per memory key; its value is one string scalar with the whole
//! version as compact JSON (`{"value","node_id","updated_at","deleted"}`, plus `claim` for an
//! import that named another writer). One scalar per write keeps a version indivisible:
//! concurrent writes to a key become Automerge conflicts of whole versions, and `resolve`
//! picks the winner by `(updated_at, node_id)` on every replica.
//!
//! A version's author is not read from its JSON but from the actor of the change that wrote
//! it: every stored change is vouched for by its author's signature (`trust`).

use automerge::legacy::{Key, ObjectId, OpType};
use automerge::transaction::Transactable;
use automerge::{ActorId, Automerge, ObjId, ReadDoc, ScalarValue, ROOT};
use serde::{Deserialize, Serialize};

use crate::model::entry::Versioned;
use crate::model::{Claim, MemoryEntry, Scope, Stamp};
use crate::trust::{author_of, Author};

#[derive(Serialize, Deserialize)]
struct StoredVersion {
    value: serde_json::Value,
    node_id: String,
    updated_at: Stamp,
    #[serde(default)]
    deleted: bool,
    /// Absent from every version that is not an import naming another writer, so those are
    /// stored as before and stores of earlier versions read unchanged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    claim: Option<Claim>,
}

impl StoredVersion {
    /// A scalar written by meshd; `None` for one written by something else.
    fn parse(text: &str) -> Option<StoredVersion> {
        serde_json::from_str(text).ok()
    }

    fn into_entry(self, scope: &Scope, key: &str, actor: Option<&ActorId>) -> MemoryEntry {
        MemoryEntry {
            scope: scope.clone(),
            key: key.to_string(),
            value: self.value,
            node_id: self.node_id,
            updated_at: self.updated_at,
            deleted: self.deleted,
            author: actor.and_then(node_of),
            claim: self.claim,
        }
    }
}

/// The node an actor id names (compact), if it names one.
fn node_of(actor: &ActorId) -> Option<String> {
    match author_of(actor) {
        Author::Node(id) => Some(id.compact()),
        Author::Unknown => None,
    }
}

fn actor_of(op: &ObjId) -> Option<&ActorId> {
    match op {
        ObjId::Id(_, actor, _) => Some(actor),
        ObjId::Root => None,
    }
}

/// Every concurrent version of `key`, tombstones included, in no particular order, each with
/// the author of the change that wrote it and the (counter, actor) of the operation that put
/// it. Versions that do not parse (written by something that is not meshd) are skipped.
pub fn current(
    doc: &Automerge,
    scope: &Scope,
    key: &str,
) -> Vec<(MemoryEntry, Option<(u64, ActorId)>)> {
    let Ok(values) = doc.get_all(ROOT, key) else {
        return Vec::new();
    };
    values
        .iter()
        .filter_map(|(value, op)| {
            let stored = StoredVersion::parse(value.as_str()?)?;
            let actor = actor_of(op);
            let id = match op {
                ObjId::Id(counter, actor, _) => Some((*counter, actor.clone())),
                ObjId::Root => None,
            };
            Some((stored.into_entry(scope, key, actor), id))
        })
        .collect()
}

/// One version ever written to a key, with the change that wrote it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Written {
    pub version: MemoryEntry,
    /// The hash of the change that wrote it (hex).
    pub change: String,
    /// The time the change records (Unix seconds; 0 when it records none, as changes made
    /// before meshd stamped them do).
    pub change_time: i64,
    /// Whether it is the key's current winning version.
    pub winner: bool,
}

/// Every version ever written to `key`, in the order of the document's history (a change
/// after the changes it depends on), the current winner marked. Reads every change of the
/// document: for audits, not for serving reads.
pub fn history(doc: &Automerge, scope: &Scope, key: &str) -> Vec<Written> {
    // The first of the greatest versions, as `resolve` picks it.
    let winner = current(doc, scope, key)
        .into_iter()
        .min_by(|a, b| b.0.version().cmp(&a.0.version()))
        .and_then(|(_, id)| id);
    let mut written = Vec::new();
    for change in doc.get_changes(&[]) {
        let expanded = change.decode();
        let start = expanded.start_op.get();
        for (offset, op) in expanded.operations.iter().enumerate() {
            let Some(text) = put_to(op, key) else {
                continue;
            };
            let Some(stored) = StoredVersion::parse(text) else {
                continue;
            };
            let id = Some((start + offset as u64, change.actor_id().clone()));
            written.push(Written {
                version: stored.into_entry(scope, key, Some(change.actor_id())),
                change: change.hash().to_string(),
                change_time: change.timestamp(),
                winner: winner.is_some() && winner == id,
            });
        }
    }
    written
}

/// The text an operation puts under `key` of the root map.
fn put_to<'a>(op: &'a automerge::legacy::Op, key: &str) -> Option<&'a str> {
    match (&op.obj, &op.key, &op.action) {
        (ObjectId::Root, Key::Map(name), OpType::Put(ScalarValue::Str(text))) if name == key => {
            Some(text)
        }
        _ => None,
    }
}

pub fn keys(doc: &Automerge) -> impl Iterator<Item = String> + '_ {
    doc.keys(ROOT)
}

pub fn put(
    tx: &mut impl Transactable,
    entry: &MemoryEntry,
) -> Result<(), automerge::AutomergeError> {
    tx.put(ROOT, entry.key.as_str(), stored_text(entry))
}

/// The scalar a version is stored as under its key.
pub fn stored_text(entry: &MemoryEntry) -> String {
    let stored = StoredVersion {
        value: entry.value.clone(),
        node_id: entry.node_id.clone(),
        updated_at: entry.updated_at,
        deleted: entry.deleted,
        claim: entry.claim.clone(),
    };
    serde_json::to_string(&stored).expect("JSON values always serialize")
}

/// The version a stored scalar holds, as reading the document written by `actor` gives it;
/// `None` for a scalar meshd did not write.
pub fn read_text(text: &str, scope: &Scope, key: &str, actor: &ActorId) -> Option<MemoryEntry> {
    StoredVersion::parse(text).map(|stored| stored.into_entry(scope, key, Some(actor)))
}
