//! How memory entries sit in a scope's Automerge document.
//!
//! The root map holds one key per memory key; its value is one string scalar with the whole
//! version as compact JSON (`{"value","node_id","updated_at","deleted"}`). One scalar per write
//! keeps a version indivisible: concurrent writes to a key become Automerge conflicts of whole
//! versions, and `resolve` picks the winner by `(updated_at, node_id)` on every replica.

use automerge::transaction::Transactable;
use automerge::{Automerge, ReadDoc, ROOT};
use serde::{Deserialize, Serialize};

use crate::model::{MemoryEntry, Scope, Stamp};

#[derive(Serialize, Deserialize)]
struct StoredVersion {
    value: serde_json::Value,
    node_id: String,
    updated_at: Stamp,
    #[serde(default)]
    deleted: bool,
}

/// Every concurrent version of `key`, tombstones included, in no particular order.
/// Versions that do not parse (written by something that is not meshd) are skipped.
pub fn versions(doc: &Automerge, scope: &Scope, key: &str) -> Vec<MemoryEntry> {
    let Ok(values) = doc.get_all(ROOT, key) else {
        return Vec::new();
    };
    values
        .iter()
        .filter_map(|(value, _)| value.as_str())
        .filter_map(|text| serde_json::from_str::<StoredVersion>(text).ok())
        .map(|stored| MemoryEntry {
            scope: scope.clone(),
            key: key.to_string(),
            value: stored.value,
            node_id: stored.node_id,
            updated_at: stored.updated_at,
            deleted: stored.deleted,
        })
        .collect()
}

pub fn keys(doc: &Automerge) -> impl Iterator<Item = String> + '_ {
    doc.keys(ROOT)
}

pub fn put(
    tx: &mut impl Transactable,
    entry: &MemoryEntry,
) -> Result<(), automerge::AutomergeError> {
    let stored = StoredVersion {
        value: entry.value.clone(),
        node_id: entry.node_id.clone(),
        updated_at: entry.updated_at,
        deleted: entry.deleted,
    };
    let text = serde_json::to_string(&stored).expect("JSON values always serialize");
    tx.put(ROOT, entry.key.as_str(), text)
}
