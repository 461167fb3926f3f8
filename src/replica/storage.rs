//! sled persistence: per document a snapshot plus the changes made since it.
//!
//! Everything lives in one tree so that a compaction (new snapshot, old changes removed) is a
//! single atomic batch. Keys: `s\0<doc>` → snapshot, `c\0<doc>\0<change hash>` → change bytes.
//! A batch of writes is acknowledged only after `flush`, which fsyncs: one flush for many
//! writes is the group commit.

use std::collections::BTreeMap;
use std::path::Path;

use automerge::ChangeHash;

use super::ReplicaError;

const SNAPSHOT: &[u8] = b"s\0";
const CHANGE: &[u8] = b"c\0";
const DOCS_TREE: &str = "docs";

/// The durable bytes of one document: its snapshot, if any, and the changes stored beside it.
#[derive(Default)]
pub struct StoredDoc {
    pub snapshot: Option<Vec<u8>>,
    pub changes: Vec<Vec<u8>>,
}

pub struct Storage {
    db: sled::Db,
    docs: sled::Tree,
}

impl Storage {
    pub fn open(path: &Path) -> Result<Storage, ReplicaError> {
        let db = sled::Config::new()
            .path(path)
            .open()
            .map_err(|source| ReplicaError::Open {
                path: path.to_path_buf(),
                source,
            })?;
        let docs = db.open_tree(DOCS_TREE)?;
        Ok(Storage { db, docs })
    }

    /// The sled database, for other modules' own trees (peers, sync state).
    pub fn db(&self) -> &sled::Db {
        &self.db
    }

    pub fn load_all(&self) -> Result<BTreeMap<String, StoredDoc>, ReplicaError> {
        let mut docs: BTreeMap<String, StoredDoc> = BTreeMap::new();
        for item in self.docs.scan_prefix(SNAPSHOT) {
            let (key, value) = item?;
            let name = doc_name(&key[SNAPSHOT.len()..])?;
            docs.entry(name).or_default().snapshot = Some(value.to_vec());
        }
        for item in self.docs.scan_prefix(CHANGE) {
            let (key, value) = item?;
            let rest = &key[CHANGE.len()..];
            let split = rest
                .iter()
                .position(|&b| b == 0)
                .ok_or(ReplicaError::Corrupt(
                    "change key without document separator",
                ))?;
            docs.entry(doc_name(&rest[..split])?)
                .or_default()
                .changes
                .push(value.to_vec());
        }
        Ok(docs)
    }

    /// Stores changes and waits until they are on disk.
    pub fn append_durably<'a>(
        &self,
        changes: impl IntoIterator<Item = (&'a str, ChangeHash, &'a [u8])>,
    ) -> Result<(), ReplicaError> {
        let mut batch = sled::Batch::default();
        for (doc, hash, bytes) in changes {
            batch.insert(change_key(doc, &hash), bytes);
        }
        self.docs.apply_batch(batch)?;
        self.flush()
    }

    /// Replaces a document's snapshot and drops the changes it now contains, atomically.
    pub fn compact(
        &self,
        doc: &str,
        snapshot: &[u8],
        folded: impl IntoIterator<Item = ChangeHash>,
    ) -> Result<(), ReplicaError> {
        let mut batch = sled::Batch::default();
        batch.insert(snapshot_key(doc), snapshot);
        for hash in folded {
            batch.remove(change_key(doc, &hash));
        }
        self.docs.apply_batch(batch)?;
        self.flush()
    }

    pub fn flush(&self) -> Result<(), ReplicaError> {
        self.db.flush()?;
        Ok(())
    }
}

fn doc_name(bytes: &[u8]) -> Result<String, ReplicaError> {
    String::from_utf8(bytes.to_vec())
        .map_err(|_| ReplicaError::Corrupt("document name is not UTF-8"))
}

fn snapshot_key(doc: &str) -> Vec<u8> {
    [SNAPSHOT, doc.as_bytes()].concat()
}

fn change_key(doc: &str, hash: &ChangeHash) -> Vec<u8> {
    [CHANGE, doc.as_bytes(), b"\0", hash.as_ref()].concat()
}
