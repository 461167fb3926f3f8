//! The materialized index: every memory key's and skill's current versions, and a summary of
//! every document (heads, live entries, change count), kept in sled beside the documents.
//!
//! Reads (`get`, `ls`, status counts, the views) come from here, so they touch only what they
//! need and no document has to be loaded to answer them: a one-shot `meshd mem get` on a store
//! of a million entries reads one sled key. The index is written in the same sled batch as the
//! changes it reflects (`Replica::persist`), so it can never be behind or ahead of the
//! documents after a crash: a document's summary holds the heads the index reflects, and those
//! are the heads of what is stored.
//!
//! Keys, in the `docs` tree (one tree, so that one batch is atomic):
//! - `e\0<doc>\0<key or skill name>` → the versions (JSON): concurrent versions included, so
//!   `--conflicts` reads the index too;
//! - `x\0<doc>\0<key or skill name>` → empty: present while the entry holds concurrent
//!   versions (a conflict), so the conflicts are listed without reading every entry;
//! - `h\0<doc>` → the summary: live entries (u64), changes (u64), heads (32 bytes each);
//! - `v\0index-conflicts` → present once every document is indexed with its versions'
//!   authors and its conflicts (stores of earlier versions, whose index lacks either, are
//!   indexed again once, at their first open).

use std::collections::BTreeMap;
use std::ops::Bound;

use automerge::{Automerge, ChangeHash};
use serde::{Deserialize, Serialize};

use super::{memory_doc, skills_doc, ReplicaError, Result};
use crate::model::entry::resolve;
use crate::model::{Claim, DocId, MemoryEntry, Scope, Skill, Stamp};

const ENTRY: &[u8] = b"e\0";
const CONFLICT: &[u8] = b"x\0";
const SUMMARY: &[u8] = b"h\0";
pub const COMPLETE: &[u8] = b"v\0index-conflicts";

/// What the index knows of a document without loading it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    /// The heads the index reflects: the document's heads as stored.
    pub heads: Vec<ChangeHash>,
    /// Memory keys or skills whose winning version is not a tombstone.
    pub live: u64,
    /// Changes in the document's history.
    pub changes: u64,
}

impl Summary {
    fn encode(&self) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(16 + 32 * self.heads.len());
        bytes.extend_from_slice(&self.live.to_be_bytes());
        bytes.extend_from_slice(&self.changes.to_be_bytes());
        for head in &self.heads {
            bytes.extend_from_slice(&head.0);
        }
        bytes
    }

    fn decode(bytes: &[u8]) -> Result<Summary> {
        let damaged = ReplicaError::Corrupt("a document summary of the index does not decode");
        if bytes.len() < 16 || !(bytes.len() - 16).is_multiple_of(32) {
            return Err(damaged);
        }
        let number = |at: usize| u64::from_be_bytes(bytes[at..at + 8].try_into().unwrap_or([0; 8]));
        Ok(Summary {
            live: number(0),
            changes: number(8),
            heads: bytes[16..]
                .chunks_exact(32)
                .map(|chunk| ChangeHash(chunk.try_into().unwrap_or([0; 32])))
                .collect(),
        })
    }
}

/// One memory version as the index stores it: the scope and key are in the sled key.
#[derive(Serialize, Deserialize)]
struct IndexedVersion {
    value: serde_json::Value,
    node_id: String,
    updated_at: Stamp,
    deleted: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    author: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    claim: Option<Claim>,
}

fn entry_prefix(doc: &DocId) -> Vec<u8> {
    [ENTRY, doc.name().as_bytes(), b"\0"].concat()
}

fn entry_key(doc: &DocId, name: &str) -> Vec<u8> {
    [entry_prefix(doc).as_slice(), name.as_bytes()].concat()
}

fn conflict_prefix(doc: &DocId) -> Vec<u8> {
    [CONFLICT, doc.name().as_bytes(), b"\0"].concat()
}

fn conflict_key(doc: &DocId, name: &str) -> Vec<u8> {
    [conflict_prefix(doc).as_slice(), name.as_bytes()].concat()
}

fn summary_key(doc: &DocId) -> Vec<u8> {
    [SUMMARY, doc.name().as_bytes()].concat()
}

fn damaged_entry() -> ReplicaError {
    ReplicaError::Corrupt("an entry of the index does not decode")
}

// ---- reading ---------------------------------------------------------------------------

/// Every indexed document's summary.
pub fn summaries(tree: &sled::Tree) -> Result<BTreeMap<DocId, Summary>> {
    let mut summaries = BTreeMap::new();
    for item in tree.scan_prefix(SUMMARY) {
        let (key, value) = item?;
        if let Some(doc) = doc_of(&key[SUMMARY.len()..]) {
            summaries.insert(doc, Summary::decode(&value)?);
        }
    }
    Ok(summaries)
}

fn doc_of(name: &[u8]) -> Option<DocId> {
    let name = std::str::from_utf8(name).ok()?;
    match DocId::from_name(name) {
        Ok(doc) => Some(doc),
        Err(_) => {
            tracing::warn!(doc = %name, "the index names a document with an unknown name; skipped");
            None
        }
    }
}

pub fn memory_versions(tree: &sled::Tree, scope: &Scope, key: &str) -> Result<Vec<MemoryEntry>> {
    let doc = DocId::Memory(scope.clone());
    match tree.get(entry_key(&doc, key))? {
        Some(bytes) => decode_memory(scope, key, &bytes),
        None => Ok(Vec::new()),
    }
}

/// The live winners of a scope, sorted by key.
pub fn live_memory(tree: &sled::Tree, scope: &Scope) -> Result<Vec<MemoryEntry>> {
    let prefix = entry_prefix(&DocId::Memory(scope.clone()));
    let mut entries = Vec::new();
    for item in tree.scan_prefix(&prefix) {
        let (sled_key, bytes) = item?;
        let key = std::str::from_utf8(&sled_key[prefix.len()..]).map_err(|_| damaged_entry())?;
        if let Some((winner, _)) = resolve(decode_memory(scope, key, &bytes)?) {
            if !winner.deleted {
                entries.push(winner);
            }
        }
    }
    Ok(entries)
}

/// The keys or names the index holds for `doc`, in order, after `after` (from the first when
/// `None`), at most `limit`.
pub fn names_after(
    tree: &sled::Tree,
    doc: &DocId,
    after: Option<&str>,
    limit: usize,
) -> Result<Vec<String>> {
    let prefix = entry_prefix(doc);
    let start = match after {
        Some(name) => Bound::Excluded(entry_key(doc, name)),
        None => Bound::Included(prefix.clone()),
    };
    let mut names = Vec::new();
    for key in tree.range((start, Bound::Unbounded)).keys() {
        let key = key?;
        if names.len() >= limit || !key.starts_with(&prefix) {
            break;
        }
        let name = std::str::from_utf8(&key[prefix.len()..]).map_err(|_| damaged_entry())?;
        names.push(name.to_string());
    }
    Ok(names)
}

/// The entries holding concurrent versions, by document and name, at most `limit`; and how
/// many there are in all.
pub fn conflicted(tree: &sled::Tree, limit: usize) -> Result<(Vec<(DocId, String)>, usize)> {
    let mut found = Vec::new();
    let mut total = 0;
    for key in tree.scan_prefix(CONFLICT).keys() {
        let key = key?;
        total += 1;
        if found.len() >= limit {
            continue;
        }
        let rest = &key[CONFLICT.len()..];
        let split = rest
            .iter()
            .position(|&b| b == 0)
            .ok_or_else(damaged_entry)?;
        let name = std::str::from_utf8(&rest[split + 1..]).map_err(|_| damaged_entry())?;
        if let Some(doc) = doc_of(&rest[..split]) {
            found.push((doc, name.to_string()));
        }
    }
    Ok((found, total))
}

pub fn skill_versions(tree: &sled::Tree, name: &str) -> Result<Vec<Skill>> {
    match tree.get(entry_key(&DocId::Skills, name))? {
        Some(bytes) => serde_json::from_slice(&bytes).map_err(|_| damaged_entry()),
        None => Ok(Vec::new()),
    }
}

/// The live winning skills, sorted by name.
pub fn live_skills(tree: &sled::Tree) -> Result<Vec<Skill>> {
    let mut skills = Vec::new();
    for item in tree.scan_prefix(entry_prefix(&DocId::Skills)) {
        let (_, bytes) = item?;
        let versions: Vec<Skill> = serde_json::from_slice(&bytes).map_err(|_| damaged_entry())?;
        if let Some((winner, _)) = resolve(versions) {
            if !winner.deleted {
                skills.push(winner);
            }
        }
    }
    Ok(skills)
}

/// The latest stamp of any version the index holds (tombstones and concurrent versions
/// included), with the entry's label (`mesh:key`, `skill triage`): a scan of every entry.
pub fn newest_stamp(tree: &sled::Tree) -> Result<Option<(String, Stamp)>> {
    let mut newest: Option<(String, Stamp)> = None;
    for item in tree.scan_prefix(ENTRY) {
        let (sled_key, bytes) = item?;
        let rest = &sled_key[ENTRY.len()..];
        let split = rest
            .iter()
            .position(|&b| b == 0)
            .ok_or_else(damaged_entry)?;
        let (doc, name) = (&rest[..split], &rest[split + 1..]);
        let name = std::str::from_utf8(name).map_err(|_| damaged_entry())?;
        let (label, stamps) = match doc_of(doc) {
            Some(DocId::Memory(scope)) => {
                let versions = decode_memory(&scope, name, &bytes)?;
                let stamps: Vec<Stamp> = versions.iter().map(|v| v.updated_at).collect();
                (format!("{scope}:{name}"), stamps)
            }
            Some(DocId::Skills) => {
                let versions: Vec<Skill> =
                    serde_json::from_slice(&bytes).map_err(|_| damaged_entry())?;
                let stamps = versions.iter().map(|v| v.updated_at).collect();
                (format!("skill {name}"), stamps)
            }
            None => continue,
        };
        if let Some(stamp) = stamps.into_iter().max() {
            if newest.as_ref().is_none_or(|(_, best)| stamp > *best) {
                newest = Some((label, stamp));
            }
        }
    }
    Ok(newest)
}

fn decode_memory(scope: &Scope, key: &str, bytes: &[u8]) -> Result<Vec<MemoryEntry>> {
    let versions: Vec<IndexedVersion> =
        serde_json::from_slice(bytes).map_err(|_| damaged_entry())?;
    Ok(versions
        .into_iter()
        .map(|version| MemoryEntry {
            scope: scope.clone(),
            key: key.to_string(),
            value: version.value,
            node_id: version.node_id,
            updated_at: version.updated_at,
            deleted: version.deleted,
            author: version.author,
            claim: version.claim,
        })
        .collect())
}

// ---- writing ---------------------------------------------------------------------------

/// What the index holds for one key or skill name.
struct Indexed {
    bytes: Vec<u8>,
    /// The winner is not a tombstone.
    live: bool,
    /// It holds concurrent versions.
    conflicted: bool,
}

impl Indexed {
    fn new(bytes: Vec<u8>, live: bool, versions: usize) -> Indexed {
        Indexed {
            bytes,
            live,
            conflicted: versions > 1,
        }
    }
}

/// Adds to `batch` the index's keys for `name` as `now` has them (`None`: no version).
fn stage_entry(batch: &mut sled::Batch, doc: &DocId, name: &str, now: Option<&Indexed>) {
    match now {
        Some(now) => batch.insert(entry_key(doc, name), now.bytes.as_slice()),
        None => batch.remove(entry_key(doc, name)),
    }
    if now.is_some_and(|now| now.conflicted) {
        batch.insert(conflict_key(doc, name), &[][..]);
    } else {
        batch.remove(conflict_key(doc, name));
    }
}

/// The index entry of one key or skill name as `document` has it: `None` when it holds no
/// version meshd can read.
fn indexed(doc: &DocId, document: &Automerge, name: &str) -> Option<Indexed> {
    match doc {
        DocId::Memory(scope) => {
            let versions = memory_doc::versions(document, scope, name);
            let count = versions.len();
            let live = resolve(versions.clone()).is_some_and(|(winner, _)| !winner.deleted);
            let stored: Vec<IndexedVersion> = versions
                .into_iter()
                .map(|entry| IndexedVersion {
                    value: entry.value,
                    node_id: entry.node_id,
                    updated_at: entry.updated_at,
                    deleted: entry.deleted,
                    author: entry.author,
                    claim: entry.claim,
                })
                .collect();
            (count > 0).then(|| Indexed::new(to_json(&stored), live, count))
        }
        DocId::Skills => {
            let versions: Vec<Skill> = skills_doc::versions(document, name)
                .into_iter()
                .map(|(skill, _)| skill)
                .collect();
            let live = resolve(versions.clone()).is_some_and(|(winner, _)| !winner.deleted);
            (!versions.is_empty()).then(|| Indexed::new(to_json(&versions), live, versions.len()))
        }
    }
}

fn to_json<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("index entries are plain data and always serialize")
}

fn is_live(doc: &DocId, bytes: &[u8]) -> bool {
    match doc {
        DocId::Memory(scope) => decode_memory(scope, "", bytes)
            .ok()
            .and_then(resolve)
            .is_some_and(|(winner, _)| !winner.deleted),
        DocId::Skills => serde_json::from_slice::<Vec<Skill>>(bytes)
            .ok()
            .and_then(resolve)
            .is_some_and(|(winner, _)| !winner.deleted),
    }
}

/// Adds to `batch` the index entries of `names` as `document` now has them, and its summary;
/// `before` is the summary the index holds. Returns the new summary.
pub fn stage_update<'a>(
    tree: &sled::Tree,
    batch: &mut sled::Batch,
    doc: &DocId,
    document: &Automerge,
    names: impl IntoIterator<Item = &'a String>,
    before: &Summary,
) -> Result<Summary> {
    let mut live = before.live;
    for name in names {
        let key = entry_key(doc, name);
        let was_live = tree.get(&key)?.is_some_and(|old| is_live(doc, &old));
        let now = indexed(doc, document, name);
        let now_live = now.as_ref().is_some_and(|now| now.live);
        stage_entry(batch, doc, name, now.as_ref());
        live = (live + u64::from(now_live)).saturating_sub(u64::from(was_live));
    }
    let summary = summarize(document, live);
    batch.insert(summary_key(doc), summary.encode());
    Ok(summary)
}

/// Adds to `batch` the whole index of `doc` as `document` has it, replacing what was there.
pub fn stage_rebuild(
    tree: &sled::Tree,
    batch: &mut sled::Batch,
    doc: &DocId,
    document: &Automerge,
) -> Result<Summary> {
    stage_remove_entries(tree, batch, doc)?;
    let mut live = 0;
    let names: Vec<String> = match doc {
        DocId::Memory(_) => memory_doc::keys(document).collect(),
        DocId::Skills => skills_doc::names(document).collect(),
    };
    for name in names {
        if let Some(now) = indexed(doc, document, &name) {
            live += u64::from(now.live);
            stage_entry(batch, doc, &name, Some(&now));
        }
    }
    let summary = summarize(document, live);
    batch.insert(summary_key(doc), summary.encode());
    Ok(summary)
}

/// Adds to `batch` what undoes a failed `stage_update` of `names` in sled's memory: the
/// entries as `document` (taken back to before the write; `None`: it did not exist) has
/// them, and the summary from before.
pub fn stage_restore<'a>(
    batch: &mut sled::Batch,
    doc: &DocId,
    document: Option<&Automerge>,
    names: impl IntoIterator<Item = &'a String>,
    summary: Option<&Summary>,
) {
    for name in names {
        let before = document.and_then(|document| indexed(doc, document, name));
        stage_entry(batch, doc, name, before.as_ref());
    }
    match summary {
        Some(summary) => batch.insert(summary_key(doc), summary.encode()),
        None => batch.remove(summary_key(doc)),
    }
}

/// Adds to `batch` the removal of a document's whole index (a repair leaves out a document
/// Automerge refuses).
pub fn stage_drop(tree: &sled::Tree, batch: &mut sled::Batch, doc: &DocId) -> Result<()> {
    stage_remove_entries(tree, batch, doc)?;
    batch.remove(summary_key(doc));
    Ok(())
}

/// Adds to `batch` the removal of every entry of `doc`, and of its conflicts.
fn stage_remove_entries(tree: &sled::Tree, batch: &mut sled::Batch, doc: &DocId) -> Result<()> {
    for prefix in [entry_prefix(doc), conflict_prefix(doc)] {
        for key in tree.scan_prefix(prefix).keys() {
            batch.remove(key?);
        }
    }
    Ok(())
}

fn summarize(document: &Automerge, live: u64) -> Summary {
    use automerge::ReadDoc;
    Summary {
        heads: document.get_heads(),
        live,
        changes: document.stats().num_changes,
    }
}

/// Compares what the index holds for `doc` with what `document` says it should: the
/// entries, no entry beyond them, and the summary. For tests (`Replica::check_index`).
pub fn verify(tree: &sled::Tree, doc: &DocId, document: &Automerge) -> Result<(), String> {
    let mut live = 0;
    let names: Vec<String> = match doc {
        DocId::Memory(_) => memory_doc::keys(document).collect(),
        DocId::Skills => skills_doc::names(document).collect(),
    };
    let mut expected = BTreeMap::new();
    for name in names {
        if let Some(now) = indexed(doc, document, &name) {
            live += u64::from(now.live);
            if now.conflicted {
                expected.insert(conflict_key(doc, &name), Vec::new());
            }
            expected.insert(entry_key(doc, &name), now.bytes);
        }
    }
    let mut held = BTreeMap::new();
    for prefix in [entry_prefix(doc), conflict_prefix(doc)] {
        for item in tree.scan_prefix(prefix) {
            let (key, value) = item.map_err(|e| e.to_string())?;
            held.insert(key.to_vec(), value.to_vec());
        }
    }
    if held != expected {
        let differ: Vec<String> = expected
            .keys()
            .chain(held.keys())
            .filter(|key| expected.get(*key) != held.get(*key))
            .map(|key| {
                let show = |v: Option<&Vec<u8>>| v.map(|v| String::from_utf8_lossy(v).into_owned());
                format!(
                    "{}: held {:?}, document {:?}",
                    String::from_utf8_lossy(key),
                    show(held.get(key)),
                    show(expected.get(key))
                )
            })
            .collect();
        return Err(format!("{doc}: index entries differ: {differ:?}"));
    }
    let summary = tree
        .get(summary_key(doc))
        .map_err(|e| e.to_string())?
        .map(|bytes| Summary::decode(&bytes).map_err(|e| e.to_string()))
        .transpose()?;
    let wanted = summarize(document, live);
    if summary.as_ref() != Some(&wanted) {
        return Err(format!("{doc}: summary {summary:?}, document {wanted:?}"));
    }
    Ok(())
}
