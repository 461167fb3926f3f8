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
//! A memory scope may span several documents: its base and its buckets (`DocId::Bucket`). The
//! index keeps one entry per scope and key, holding the key's versions in every document of
//! the scope, each tagged with its bucket. The winner is the greatest version among them all
//! (`resolve`), and the versions shown (its concurrent versions, a conflict) are those of the
//! document that holds the winner: in another document a version is one the winner's writer
//! may simply not have seen. Which document holds a version decides nothing, so the nodes
//! need not agree on where a key goes for their reads to agree.
//!
//! Keys, in the `docs` tree (one tree, so that one batch is atomic):
//! - `e\0<scope or skills>\0<key or skill name>` → the versions (JSON);
//! - `x\0<scope or skills>\0<key or skill name>` → empty: present while the versions shown
//!   are concurrent (a conflict), so the conflicts are listed without reading every entry;
//! - `h\0<doc>` → the summary of one document: live entries (u64; of a scope's documents,
//!   the one holding a key's winner counts it), changes (u64), heads (32 bytes each);
//! - `o\0<doc>` → the greatest operation counter of the document's heads (u64), then the
//!   heads it was read at: kept apart from the summary, whose shape a meshd before it reads,
//!   and taken only while those heads are the summary's, so one that an earlier meshd left
//!   behind when it wrote the document is not believed;
//! - `v\0index-conflicts` → present once every document is indexed with its versions'
//!   authors and its conflicts (stores of earlier versions, whose index lacks either, are
//!   indexed again once, at their first open).

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;

use automerge::{ActorId, Automerge, ChangeHash, ReadDoc};
use serde::{Deserialize, Serialize};

use super::storage::Writes;
use super::{memory_doc, skills_doc, ReplicaError, Result};
use crate::model::entry::{resolve, Versioned};
use crate::model::{Claim, DocId, MemoryEntry, Scope, Skill, Stamp};

const ENTRY: &[u8] = b"e\0";
const CONFLICT: &[u8] = b"x\0";
const SUMMARY: &[u8] = b"h\0";
const MAX_OP: &[u8] = b"o\0";
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
    /// The greatest operation counter of the changes at its heads (every other change is
    /// an ancestor of one of them, with lower counters): a change made without loading the
    /// document starts after it (`append`). `None` in a summary written before it was kept.
    pub max_op: Option<u64>,
}

impl Summary {
    fn encode(&self) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(16 + 32 * self.heads.len());
        bytes.extend_from_slice(&self.live.to_be_bytes());
        bytes.extend_from_slice(&self.changes.to_be_bytes());
        bytes.extend(self.heads.iter().flat_map(|head| head.0));
        bytes
    }

    fn decode(bytes: &[u8]) -> Result<Summary> {
        let damaged = ReplicaError::Corrupt("a document summary of the index does not decode");
        if bytes.len() < 16 || !(bytes.len() - 16).is_multiple_of(32) {
            return Err(damaged);
        }
        Ok(Summary {
            live: number_at(bytes, 0),
            changes: number_at(bytes, 8),
            heads: heads_from(&bytes[16..]),
            max_op: None,
        })
    }

    /// The `o\0` value: the greatest operation counter, and the heads it holds for.
    fn encode_max_op(&self) -> Option<Vec<u8>> {
        let max_op = self.max_op?;
        let heads = self.heads.iter().flat_map(|head| head.0);
        Some(max_op.to_be_bytes().into_iter().chain(heads).collect())
    }

    /// Takes the greatest operation counter from an `o\0` value if it holds for these heads.
    fn with_max_op(mut self, bytes: Option<&[u8]>) -> Summary {
        self.max_op = bytes
            .filter(|bytes| bytes.len() >= 8 && heads_from(&bytes[8..]) == self.heads)
            .map(|bytes| number_at(bytes, 0));
        self
    }

    fn stage(&self, batch: &mut Writes, doc: &DocId) {
        batch.insert(summary_key(doc), self.encode());
        match self.encode_max_op() {
            Some(bytes) => batch.insert(max_op_key(doc), bytes),
            None => batch.remove(max_op_key(doc)),
        }
    }
}

fn stage_no_summary(batch: &mut Writes, doc: &DocId) {
    batch.remove(summary_key(doc));
    batch.remove(max_op_key(doc));
}

fn number_at(bytes: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(bytes[at..at + 8].try_into().unwrap_or([0; 8]))
}

/// Whole 32-byte hashes; a trailing part of one (a damaged value) is left out.
fn heads_from(bytes: &[u8]) -> Vec<ChangeHash> {
    bytes
        .chunks_exact(32)
        .map(|chunk| ChangeHash(chunk.try_into().unwrap_or([0; 32])))
        .collect()
}

/// The Automerge operation that put a version: what a write made without loading the
/// document names as the operation it supersedes (`append`). Stored as `<counter>@<actor>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct OpRef {
    pub counter: u64,
    pub actor: ActorId,
}

impl From<OpRef> for String {
    fn from(op: OpRef) -> String {
        format!("{}@{}", op.counter, op.actor)
    }
}

impl TryFrom<String> for OpRef {
    type Error = String;

    fn try_from(text: String) -> std::result::Result<OpRef, String> {
        let invalid = || format!("'{text}' is not an operation id");
        let (counter, actor) = text.split_once('@').ok_or_else(invalid)?;
        Ok(OpRef {
            counter: counter.parse().map_err(|_| invalid())?,
            actor: ActorId::try_from(actor).map_err(|_| invalid())?,
        })
    }
}

/// One memory version as the index stores it: the scope and key are in the sled key.
#[derive(Clone, Serialize, Deserialize)]
struct IndexedVersion {
    value: serde_json::Value,
    node_id: String,
    updated_at: Stamp,
    deleted: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    author: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    claim: Option<Claim>,
    /// The bucket document holding it; `None`: the scope's base document.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    bucket: Option<u8>,
    /// The operation that put it; `None` in entries indexed before it was kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    op: Option<OpRef>,
}

impl Versioned for IndexedVersion {
    fn version(&self) -> (Stamp, &str) {
        (self.updated_at, &self.node_id)
    }
}

impl IndexedVersion {
    fn stored(entry: MemoryEntry, bucket: Option<u8>, op: Option<OpRef>) -> IndexedVersion {
        IndexedVersion {
            op,
            value: entry.value,
            node_id: entry.node_id,
            updated_at: entry.updated_at,
            deleted: entry.deleted,
            author: entry.author,
            claim: entry.claim,
            bucket,
        }
    }

    fn entry(self, scope: &Scope, key: &str) -> MemoryEntry {
        MemoryEntry {
            scope: scope.clone(),
            key: key.to_string(),
            value: self.value,
            node_id: self.node_id,
            updated_at: self.updated_at,
            deleted: self.deleted,
            author: self.author,
            claim: self.claim,
        }
    }
}

/// The bucket a document is, for the versions it holds (`None`: a base document or skills).
fn bucket_of(doc: &DocId) -> Option<u8> {
    match doc {
        DocId::Bucket(_, bucket) => Some(*bucket),
        _ => None,
    }
}

/// The document of `scope` that `bucket` names.
fn part_doc(scope: &Scope, bucket: Option<u8>) -> DocId {
    match bucket {
        Some(bucket) => DocId::Bucket(scope.clone(), bucket),
        None => DocId::Memory(scope.clone()),
    }
}

/// A version a document holds, and the operation that put it.
pub type PutVersion = (MemoryEntry, Option<OpRef>);

/// A key's versions in every document of its scope, ordered by document (base first), each
/// document's in its own order: the order `resolve` breaks exact ties by, the same on every
/// node.
struct KeyVersions(Vec<IndexedVersion>);

impl KeyVersions {
    fn decode(bytes: &[u8]) -> Result<KeyVersions> {
        serde_json::from_slice(bytes)
            .map(KeyVersions)
            .map_err(|_| damaged_entry())
    }

    /// These versions with those of `bucket`'s document replaced by `now`.
    fn replacing(self, bucket: Option<u8>, now: Vec<PutVersion>) -> KeyVersions {
        let mut versions: Vec<IndexedVersion> =
            self.0.into_iter().filter(|v| v.bucket != bucket).collect();
        versions.extend(
            now.into_iter()
                .map(|(version, op)| IndexedVersion::stored(version, bucket, op)),
        );
        versions.sort_by_key(|v| v.bucket.map_or(0, |b| u16::from(b) + 1));
        KeyVersions(versions)
    }

    /// The winner's document, and whether the winner is live; `None` without versions.
    fn winner(&self) -> Option<(Option<u8>, bool)> {
        // The first of the greatest, as `resolve` picks it, without copying the versions.
        (self.0.iter())
            .min_by(|a, b| b.version().cmp(&a.version()))
            .map(|winner| (winner.bucket, !winner.deleted))
    }

    /// The versions readers see: those of the document holding the winner.
    fn shown(self) -> Vec<IndexedVersion> {
        let Some((bucket, _)) = self.winner() else {
            return Vec::new();
        };
        self.0.into_iter().filter(|v| v.bucket == bucket).collect()
    }

    /// `shown`, as the entries of `key` in `scope`.
    fn shown_entries(self, scope: &Scope, key: &str) -> Vec<MemoryEntry> {
        let shown = self.shown().into_iter();
        shown.map(|version| version.entry(scope, key)).collect()
    }

    fn shown_count(&self) -> usize {
        self.winner().map_or(0, |(bucket, _)| {
            self.0.iter().filter(|v| v.bucket == bucket).count()
        })
    }
}

fn entry_prefix(doc: &DocId) -> Vec<u8> {
    [ENTRY, doc.base().name().as_bytes(), b"\0"].concat()
}

fn entry_key(doc: &DocId, name: &str) -> Vec<u8> {
    [entry_prefix(doc).as_slice(), name.as_bytes()].concat()
}

fn conflict_prefix(doc: &DocId) -> Vec<u8> {
    [CONFLICT, doc.base().name().as_bytes(), b"\0"].concat()
}

fn conflict_key(doc: &DocId, name: &str) -> Vec<u8> {
    [conflict_prefix(doc).as_slice(), name.as_bytes()].concat()
}

fn summary_key(doc: &DocId) -> Vec<u8> {
    [SUMMARY, doc.name().as_bytes()].concat()
}

fn max_op_key(doc: &DocId) -> Vec<u8> {
    [MAX_OP, doc.name().as_bytes()].concat()
}

/// One document's summary as stored, `None` without one.
fn read_summary(tree: &sled::Tree, doc: &DocId) -> Result<Option<Summary>> {
    let Some(bytes) = tree.get(summary_key(doc))? else {
        return Ok(None);
    };
    let max_op = tree.get(max_op_key(doc))?;
    Ok(Some(
        Summary::decode(&bytes)?.with_max_op(max_op.as_deref()),
    ))
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
            let max_op = tree.get(max_op_key(&doc))?;
            let summary = Summary::decode(&value)?.with_max_op(max_op.as_deref());
            summaries.insert(doc, summary);
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
    Ok(memory_versions_held(tree, scope, key)?.0)
}

/// The versions shown of `key` (those of the document holding its winner), and that
/// document: one read for a write, which goes where the winner is.
pub fn memory_versions_held(
    tree: &sled::Tree,
    scope: &Scope,
    key: &str,
) -> Result<(Vec<MemoryEntry>, Option<DocId>)> {
    let Some(bytes) = tree.get(entry_key(&DocId::Memory(scope.clone()), key))? else {
        return Ok((Vec::new(), None));
    };
    let versions = KeyVersions::decode(&bytes)?;
    let held = versions.winner().map(|(bucket, _)| part_doc(scope, bucket));
    Ok((versions.shown_entries(scope, key), held))
}

/// The documents of `scope` holding versions of `key`, and the one holding its winner.
pub fn memory_docs(
    tree: &sled::Tree,
    scope: &Scope,
    key: &str,
) -> Result<(Vec<DocId>, Option<DocId>)> {
    let Some(bytes) = tree.get(entry_key(&DocId::Memory(scope.clone()), key))? else {
        return Ok((Vec::new(), None));
    };
    let versions = KeyVersions::decode(&bytes)?;
    let winner = versions.winner().map(|(bucket, _)| part_doc(scope, bucket));
    let mut docs: Vec<DocId> = versions
        .0
        .iter()
        .map(|v| part_doc(scope, v.bucket))
        .collect();
    docs.dedup();
    Ok((docs, winner))
}

/// The live winners of a scope, sorted by key.
pub fn live_memory(tree: &sled::Tree, scope: &Scope) -> Result<Vec<MemoryEntry>> {
    Ok(live_memory_after(tree, scope, None, usize::MAX)?.entries)
}

/// Some keys of a scope in order, read in one pass over the index.
#[derive(Debug, Default)]
pub struct MemoryPart {
    /// The live winners among the keys read.
    pub entries: Vec<MemoryEntry>,
    /// How many keys were read, tombstones included.
    pub keys: usize,
    /// The last key read: where the next part starts.
    pub last: Option<String>,
}

/// The next `limit` keys of `scope` after `after` (from the first when `None`), with their
/// live winners.
pub fn live_memory_after(
    tree: &sled::Tree,
    scope: &Scope,
    after: Option<&str>,
    limit: usize,
) -> Result<MemoryPart> {
    let mut part = MemoryPart::default();
    for item in entries_after(tree, &DocId::Memory(scope.clone()), after).take(limit) {
        let (key, bytes) = item?;
        if let Some((winner, _)) = resolve(decode_memory(scope, &key, &bytes)?) {
            if !winner.deleted {
                part.entries.push(winner);
            }
        }
        part.keys += 1;
        part.last = Some(key);
    }
    Ok(part)
}

/// The keys or names the index holds for `doc`'s scope (or the skills), in order, after
/// `after` (from the first when `None`), at most `limit`.
pub fn names_after(
    tree: &sled::Tree,
    doc: &DocId,
    after: Option<&str>,
    limit: usize,
) -> Result<Vec<String>> {
    entries_after(tree, doc, after)
        .take(limit)
        .map(|item| item.map(|(name, _)| name))
        .collect()
}

/// The entries of `doc`'s scope (or the skills) after `after`, in order: each name and what
/// the index holds for it.
fn entries_after<'t>(
    tree: &'t sled::Tree,
    doc: &DocId,
    after: Option<&str>,
) -> impl Iterator<Item = Result<(String, sled::IVec)>> + 't {
    let prefix = entry_prefix(doc);
    let start = match after {
        Some(name) => Bound::Excluded(entry_key(doc, name)),
        None => Bound::Included(prefix.clone()),
    };
    tree.range((start, Bound::Unbounded))
        .map_while(move |item| match item {
            Ok((key, value)) => key.strip_prefix(prefix.as_slice()).map(|name| {
                let name = std::str::from_utf8(name).map_err(|_| damaged_entry())?;
                Ok((name.to_string(), value))
            }),
            Err(error) => Some(Err(error.into())),
        })
}

/// The entries holding concurrent versions, by scope (its base document) or skills and name,
/// at most `limit`; and how many there are in all.
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
            Some(DocId::Skills) => {
                let versions: Vec<Skill> =
                    serde_json::from_slice(&bytes).map_err(|_| damaged_entry())?;
                let stamps = versions.iter().map(|v| v.updated_at).collect();
                (format!("skill {name}"), stamps)
            }
            Some(doc) => {
                let versions = KeyVersions::decode(&bytes)?;
                let stamps: Vec<Stamp> = versions.0.iter().map(|v| v.updated_at).collect();
                (format!("{}:{name}", doc.name()), stamps)
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

/// The operations that put the versions `doc` holds of `key`, for a write that supersedes
/// them without loading the document; `None` when one of them is not known (an entry
/// indexed before operations were kept).
pub fn ops_held(tree: &sled::Tree, doc: &DocId, key: &str) -> Result<Option<Vec<OpRef>>> {
    let Some(bytes) = tree.get(entry_key(doc, key))? else {
        return Ok(Some(Vec::new()));
    };
    let bucket = bucket_of(doc);
    Ok(KeyVersions::decode(&bytes)?
        .0
        .into_iter()
        .filter(|version| version.bucket == bucket)
        .map(|version| version.op)
        .collect())
}

/// The versions shown of a key: those of the document holding its winner.
fn decode_memory(scope: &Scope, key: &str, bytes: &[u8]) -> Result<Vec<MemoryEntry>> {
    Ok(KeyVersions::decode(bytes)?.shown_entries(scope, key))
}

// ---- writing ---------------------------------------------------------------------------

/// The index writes of one sled batch. Later steps of the batch read what earlier ones
/// staged (two documents of one scope may touch the same key), and it remembers what each
/// key held before, so a batch that fails to commit is undone (`Undo`).
pub struct Staging<'t> {
    /// The index before this batch; `None`: an index built from nothing.
    tree: Option<&'t sled::Tree>,
    /// The summaries the replica holds, before this batch.
    held: &'t BTreeMap<DocId, Summary>,
    /// Entry and conflict keys as the batch leaves them (`None`: removed).
    keys: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    /// Summaries as the batch leaves them (`None`: removed).
    summaries: BTreeMap<DocId, Option<Summary>>,
    undo: Undo,
}

/// What the keys of a staged batch held before it: written back when the batch failed.
#[derive(Default)]
pub struct Undo {
    keys: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    summaries: BTreeMap<DocId, Option<Summary>>,
}

impl Undo {
    /// Adds to `batch` what puts every key the staged batch wrote back as it was.
    pub fn stage(self, batch: &mut Writes) {
        for (key, before) in self.keys {
            match before {
                Some(bytes) => batch.insert(key, bytes),
                None => batch.remove(key),
            }
        }
        for (doc, before) in self.summaries {
            match before {
                Some(summary) => summary.stage(batch, &doc),
                None => stage_no_summary(batch, &doc),
            }
        }
    }
}

impl<'t> Staging<'t> {
    pub fn new(tree: &'t sled::Tree, held: &'t BTreeMap<DocId, Summary>) -> Staging<'t> {
        Staging {
            tree: Some(tree),
            held,
            keys: BTreeMap::new(),
            summaries: BTreeMap::new(),
            undo: Undo::default(),
        }
    }

    /// Staging of an index built from nothing: what the tree holds is not read (the batch
    /// clears it first, `stage_clear`).
    pub fn from_nothing() -> Staging<'static> {
        static NONE: BTreeMap<DocId, Summary> = BTreeMap::new();
        Staging {
            tree: None,
            held: &NONE,
            keys: BTreeMap::new(),
            summaries: BTreeMap::new(),
            undo: Undo::default(),
        }
    }

    /// What `key` holds as this batch leaves it so far. A value read from the tree is kept
    /// as the one an undo puts back, so that `set` need not read it again.
    fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        if let Some(staged) = self.keys.get(key) {
            return Ok(staged.clone());
        }
        let held = match self.tree {
            Some(tree) => tree.get(key)?.map(|bytes| bytes.to_vec()),
            None => None,
        };
        (self.undo.keys)
            .entry(key.to_vec())
            .or_insert_with(|| held.clone());
        Ok(held)
    }

    fn set(&mut self, key: Vec<u8>, now: Option<Vec<u8>>) -> Result<()> {
        if !self.undo.keys.contains_key(&key) {
            let before = match self.tree {
                Some(tree) => tree.get(&key)?.map(|bytes| bytes.to_vec()),
                None => None,
            };
            self.undo.keys.insert(key.clone(), before);
        }
        self.keys.insert(key, now);
        Ok(())
    }

    fn summary(&self, doc: &DocId) -> Option<Summary> {
        match self.summaries.get(doc) {
            Some(staged) => staged.clone(),
            None => self.held.get(doc).cloned(),
        }
    }

    fn set_summary(&mut self, doc: &DocId, now: Option<Summary>) {
        if !self.undo.summaries.contains_key(doc) {
            self.undo
                .summaries
                .insert(doc.clone(), self.held.get(doc).cloned());
        }
        self.summaries.insert(doc.clone(), now);
    }

    /// Moves a document's count of live entries by one; a document without a summary counts
    /// nothing (it holds no winner).
    fn count_live(&mut self, doc: &DocId, more: bool) {
        if let Some(mut summary) = self.summary(doc) {
            summary.live = if more {
                summary.live + 1
            } else {
                summary.live.saturating_sub(1)
            };
            self.set_summary(doc, Some(summary));
        }
    }

    /// Stages the entries of `names` as `document` (the document `doc`) now has them, and
    /// its summary.
    pub fn update<'a>(
        &mut self,
        doc: &DocId,
        document: &Automerge,
        names: impl IntoIterator<Item = &'a String>,
    ) -> Result<()> {
        let mut summary = self.summary(doc).unwrap_or_default();
        summary.heads = document.get_heads();
        summary.changes = document.stats().num_changes;
        summary.max_op = Some(max_op_of_heads(document, &summary.heads));
        self.set_summary(doc, Some(summary));
        for name in names {
            match doc.scope() {
                Some(scope) => {
                    let now = memory_doc::current(document, scope, name)
                        .into_iter()
                        .map(|(version, op)| {
                            (version, op.map(|(counter, actor)| OpRef { counter, actor }))
                        })
                        .collect();
                    self.replace_memory(doc, scope, name, now)?;
                }
                None => self.replace_skill(document, name)?,
            }
        }
        Ok(())
    }

    /// Stages what changes appended to `doc` without loading it leave (`append`): its new
    /// heads, `changes` more changes, its greatest operation counter, and for each key the
    /// one version the document now holds of it.
    pub fn appended(&mut self, doc: &DocId, appended: &super::append::Appended) -> Result<()> {
        let mut summary = self.summary(doc).unwrap_or_default();
        summary.heads = vec![appended.head];
        summary.changes += appended.changes as u64;
        summary.max_op = Some(appended.max_op);
        self.set_summary(doc, Some(summary));
        let Some(scope) = doc.scope() else {
            return Err(ReplicaError::Corrupt("a change was appended to the skills"));
        };
        for (key, version) in &appended.versions {
            self.replace_memory(doc, scope, key, vec![version.clone()])?;
        }
        Ok(())
    }

    /// Replaces the versions `doc` holds of a memory key with `now`, moving the live counts
    /// of the documents holding the winner before and after.
    fn replace_memory(
        &mut self,
        doc: &DocId,
        scope: &Scope,
        name: &str,
        now: Vec<PutVersion>,
    ) -> Result<()> {
        let key = entry_key(doc, name);
        let before = match self.get(&key)? {
            Some(bytes) => KeyVersions::decode(&bytes)?,
            None => KeyVersions(Vec::new()),
        };
        if let Some((bucket, true)) = before.winner() {
            self.count_live(&part_doc(scope, bucket), false);
        }
        let after = before.replacing(bucket_of(doc), now);
        if let Some((bucket, true)) = after.winner() {
            self.count_live(&part_doc(scope, bucket), true);
        }
        let conflicted = after.shown_count() > 1;
        let bytes = (!after.0.is_empty()).then(|| to_json(&after.0));
        self.set_entry(doc, name, bytes, conflicted)
    }

    fn replace_skill(&mut self, document: &Automerge, name: &str) -> Result<()> {
        let key = entry_key(&DocId::Skills, name);
        if let Some(before) = self.get(&key)? {
            if skill_is_live(&before) {
                self.count_live(&DocId::Skills, false);
            }
        }
        let versions: Vec<Skill> = skills_doc::versions(document, name)
            .into_iter()
            .map(|(skill, _)| skill)
            .collect();
        let live = resolve(versions.clone()).is_some_and(|(winner, _)| !winner.deleted);
        if live {
            self.count_live(&DocId::Skills, true);
        }
        let conflicted = versions.len() > 1;
        let bytes = (!versions.is_empty()).then(|| to_json(&versions));
        self.set_entry(&DocId::Skills, name, bytes, conflicted)
    }

    fn set_entry(
        &mut self,
        doc: &DocId,
        name: &str,
        bytes: Option<Vec<u8>>,
        conflicted: bool,
    ) -> Result<()> {
        self.set(entry_key(doc, name), bytes)?;
        self.set(conflict_key(doc, name), conflicted.then(Vec::new))
    }

    /// Stages the whole index of `doc` as `document` has it: every name it holds, and every
    /// name the index holds for it that it no longer does.
    pub fn rebuild(&mut self, doc: &DocId, document: &Automerge) -> Result<()> {
        let mut names: BTreeSet<String> = match doc {
            DocId::Skills => skills_doc::names(document).collect(),
            _ => memory_doc::keys(document).collect(),
        };
        names.extend(self.names_held_by(doc)?);
        self.update(doc, document, &names)
    }

    /// The names whose entries hold versions of `doc`, as this batch leaves them.
    fn names_held_by(&self, doc: &DocId) -> Result<BTreeSet<String>> {
        let prefix = entry_prefix(doc);
        let mut keys: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
        for item in self.tree.iter().flat_map(|tree| tree.scan_prefix(&prefix)) {
            let (key, bytes) = item?;
            keys.insert(key.to_vec(), bytes.to_vec());
        }
        for (key, staged) in self.keys.range(prefix.clone()..) {
            if !key.starts_with(&prefix) {
                break;
            }
            match staged {
                Some(bytes) => keys.insert(key.clone(), bytes.clone()),
                None => keys.remove(key),
            };
        }
        let mut names = BTreeSet::new();
        for (key, bytes) in keys {
            let holds = match doc {
                DocId::Skills => true,
                _ => {
                    let bucket = bucket_of(doc);
                    KeyVersions::decode(&bytes)?
                        .0
                        .iter()
                        .any(|v| v.bucket == bucket)
                }
            };
            if holds {
                let name =
                    std::str::from_utf8(&key[prefix.len()..]).map_err(|_| damaged_entry())?;
                names.insert(name.to_string());
            }
        }
        Ok(names)
    }

    /// Adds everything staged to `batch`; returns the summaries as they now are (`None`:
    /// removed) and what undoes the batch.
    pub fn finish(self, batch: &mut Writes) -> (BTreeMap<DocId, Option<Summary>>, Undo) {
        for (key, now) in self.keys {
            // Most writes leave a key's conflict marker absent, as it was: nothing to write.
            if self.undo.keys.get(&key) == Some(&now) {
                continue;
            }
            match now {
                Some(bytes) => batch.insert(key, bytes),
                None => batch.remove(key),
            }
        }
        for (doc, now) in &self.summaries {
            match now {
                Some(summary) => summary.stage(batch, doc),
                None => stage_no_summary(batch, doc),
            }
        }
        (self.summaries, self.undo)
    }
}

/// The greatest operation counter among the changes at `heads`.
fn max_op_of_heads(document: &Automerge, heads: &[ChangeHash]) -> u64 {
    heads
        .iter()
        .filter_map(|head| document.get_change_meta_by_hash(head))
        .map(|meta| meta.max_op)
        .max()
        .unwrap_or(0)
}

fn skill_is_live(bytes: &[u8]) -> bool {
    serde_json::from_slice::<Vec<Skill>>(bytes)
        .ok()
        .and_then(resolve)
        .is_some_and(|(winner, _)| !winner.deleted)
}

fn to_json<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("index entries are plain data and always serialize")
}

/// Adds to `batch` the removal of the whole index: every entry, conflict and summary (a
/// store indexed again from its documents).
pub fn stage_clear(tree: &sled::Tree, batch: &mut Writes) -> Result<()> {
    for prefix in [ENTRY, CONFLICT, SUMMARY, MAX_OP] {
        for key in tree.scan_prefix(prefix).keys() {
            batch.remove(key?);
        }
    }
    Ok(())
}

/// Compares what the index holds for a scope (or the skills) with what its documents say it
/// should: the entries, no entry beyond them, and each document's summary. `documents` are
/// every document of the group, each with its id. For tests (`Replica::check_index`).
pub fn verify(tree: &sled::Tree, documents: &[(DocId, Automerge)]) -> Result<(), String> {
    let mut expected = Staging::from_nothing();
    for (doc, document) in documents {
        expected.rebuild(doc, document).map_err(|e| e.to_string())?;
    }
    let Some((first, _)) = documents.first() else {
        return Ok(());
    };
    let mut wanted = BTreeMap::new();
    for (key, bytes) in &expected.keys {
        if let Some(bytes) = bytes {
            wanted.insert(key.clone(), bytes.clone());
        }
    }
    let mut held = BTreeMap::new();
    for prefix in [entry_prefix(first), conflict_prefix(first)] {
        for item in tree.scan_prefix(prefix) {
            let (key, value) = item.map_err(|e| e.to_string())?;
            held.insert(key.to_vec(), value.to_vec());
        }
    }
    if held != wanted {
        let differ: Vec<String> = wanted
            .keys()
            .chain(held.keys())
            .filter(|key| wanted.get(*key) != held.get(*key))
            .map(|key| {
                let show = |v: Option<&Vec<u8>>| v.map(|v| String::from_utf8_lossy(v).into_owned());
                format!(
                    "{}: held {:?}, documents {:?}",
                    String::from_utf8_lossy(key),
                    show(held.get(key)),
                    show(wanted.get(key))
                )
            })
            .collect();
        return Err(format!(
            "{}: index entries differ: {differ:?}",
            first.base()
        ));
    }
    for (doc, _) in documents {
        let summary = read_summary(tree, doc).map_err(|e| e.to_string())?;
        let wanted = expected.summary(doc);
        if summary != wanted {
            return Err(format!("{doc}: summary {summary:?}, documents {wanted:?}"));
        }
    }
    Ok(())
}
