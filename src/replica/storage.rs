//! sled persistence: per document a snapshot plus the changes made since it.
//!
//! Everything lives in one tree so that a compaction (new snapshot, old changes removed) is a
//! single atomic batch. Keys: `s\0<doc>` → snapshot, `c\0<doc>\0<change hash>` → change bytes.
//! A batch of writes is acknowledged once it is durable: appended to the journal and synced
//! (`journal`), or for a large batch, applied and flushed by sled. One commit for many writes
//! is the group commit.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use automerge::ChangeHash;

use super::journal::{self, Journal, Write};
use super::ReplicaError;

const SNAPSHOT: &[u8] = b"s\0";
const CHANGE: &[u8] = b"c\0";
const JOURNAL_DIR: &str = "journal";
const DOCS_TREE: &str = "docs";
/// sled's page cache. Its default (1 GiB) is half the memory of the small NAS a node may run
/// on. Reads come from the index, a key at a time, and what sled does not hold the kernel's
/// page cache does: on a million entries 64 MiB held 53 MB more than 16 MiB once the daemon
/// had read its index (136 against 83 MB resident), for no measurable gain in the start, the
/// views or single puts (docs/benchmarks.md, Scale).
const CACHE_BYTES: u64 = 16 * 1024 * 1024;

/// The durable bytes of one document: its snapshot, if any, and the changes stored beside it.
#[derive(Default)]
pub struct StoredDoc {
    pub snapshot: Option<Vec<u8>>,
    pub changes: Vec<Vec<u8>>,
}

/// Called once, the moment a commit's writes are durable (`Storage::commit_acknowledging`).
pub type OnDurable<'a> = &'a mut dyn FnMut();

/// Writes to the store's tree, made durable together by `Storage::commit`: after a crash,
/// all of them are found or none (the journal's record, or sled's batch).
#[derive(Default)]
pub struct Writes(Vec<Write>);

impl Writes {
    pub fn insert(&mut self, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) {
        self.0
            .push((key.as_ref().to_vec(), Some(value.as_ref().to_vec())));
    }

    pub fn remove(&mut self, key: impl AsRef<[u8]>) {
        self.0.push((key.as_ref().to_vec(), None));
    }

    fn into_sled(self) -> sled::Batch {
        let mut batch = sled::Batch::default();
        for (key, value) in self.0 {
            match value {
                Some(value) => batch.insert(key, value),
                None => batch.remove(key),
            }
        }
        batch
    }
}

pub struct Storage {
    db: sled::Db,
    docs: sled::Tree,
    /// `None` before the first commit, after a flush, and while no segment can be begun (a
    /// full disk): then sled holds everything durably, so a commit may begin a journal (which
    /// empties it) at any time, or else waits for sled's flush itself.
    journal: Option<Journal>,
    journal_dir: PathBuf,
    /// A segment could not be begun, and the operator was told.
    journal_refused: bool,
    /// The sequence number of the next journal record.
    next_seq: u64,
    /// The first write (or read) sled failed, after which it is not called to write again:
    /// sled 0.34 cannot recover from a failed write in process (its next flush waits for good
    /// for the log buffer that failed, and reads fail too once its background flusher hit the
    /// error first). Cleared by a restart, which recovers the log from disk.
    failed: OnceLock<String>,
    /// Set when the undo of a failed write could not be applied either: sled's memory may
    /// then hold the refused write, so reads are refused too, until a restart reads the store
    /// back from disk (where that write may or may not be, as `NotDurable` told its caller).
    unreadable: bool,
}

impl Storage {
    pub fn open(path: &Path) -> Result<Storage, ReplicaError> {
        let db = sled::Config::new()
            .path(path)
            .cache_capacity(CACHE_BYTES)
            .open()
            .map_err(|source| open_error(path, source))?;
        let docs = db.open_tree(DOCS_TREE)?;
        let journal_dir = path.join(JOURNAL_DIR);
        let next_seq = replay_journal(&db, &docs, &journal_dir).map_err(|error| match error {
            ReplicaError::Storage(source) => open_error(path, source),
            other => other,
        })?;
        Ok(Storage {
            db,
            docs,
            journal: None,
            journal_dir,
            journal_refused: false,
            next_seq,
            failed: OnceLock::new(),
            unreadable: false,
        })
    }

    /// Empties the journal and begins a new segment. Call it only when sled holds everything
    /// durably: right after its flush, or while there is no journal (see `journal`).
    fn restart_journal(&mut self) -> Result<(), sled::Error> {
        self.journal = None;
        match Journal::start(&self.journal_dir, self.next_seq) {
            Ok(journal) => {
                self.journal = Some(journal);
                self.journal_refused = false;
                Ok(())
            }
            Err(journal::StartError::Begin(error)) => {
                if !std::mem::replace(&mut self.journal_refused, true) {
                    tracing::warn!(%error, dir = %self.journal_dir.display(),
                        "cannot begin a journal segment; writes wait for sled's flush until one can be begun (is the disk full?)");
                }
                Ok(())
            }
            // Records left behind would be applied again at the next start, over later writes.
            Err(journal::StartError::Clear(error)) => Err(sled::Error::Io(error)),
        }
    }

    /// The sled database, for other modules' own trees (peers, sync state).
    pub fn db(&self) -> &sled::Db {
        &self.db
    }

    pub fn load_all(&self) -> Result<BTreeMap<String, StoredDoc>, ReplicaError> {
        self.refuse_unreadable()?;
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

    /// The stored bytes of one document (empty when it has none).
    pub fn load_doc(&self, name: &str) -> Result<StoredDoc, ReplicaError> {
        self.refuse_unreadable()?;
        let snapshot = self
            .docs
            .get(snapshot_key(name))?
            .map(|bytes| bytes.to_vec());
        let mut changes = Vec::new();
        for item in self.docs.scan_prefix(change_prefix(name)) {
            let (_, value) = item?;
            changes.push(value.to_vec());
        }
        Ok(StoredDoc { snapshot, changes })
    }

    /// The snapshot of one document when no change is stored beside it (the document is the
    /// snapshot alone); `None` otherwise. The changes are not read.
    pub fn snapshot_alone(&self, name: &str) -> Result<Option<Vec<u8>>, ReplicaError> {
        self.refuse_unreadable()?;
        if self
            .docs
            .scan_prefix(change_prefix(name))
            .keys()
            .next()
            .is_some()
        {
            return Ok(None);
        }
        Ok(self
            .docs
            .get(snapshot_key(name))?
            .map(|bytes| bytes.to_vec()))
    }

    /// The hashes of the changes stored beside a document's snapshot.
    pub fn stored_changes(&self, name: &str) -> Result<Vec<ChangeHash>, ReplicaError> {
        self.refuse_unreadable()?;
        let prefix = change_prefix(name);
        (self.docs.scan_prefix(&prefix).keys())
            .map(|key| {
                let hash = key?[prefix.len()..].try_into().map_err(|_| {
                    ReplicaError::Corrupt("a stored change's key does not end in its hash")
                })?;
                Ok(ChangeHash(hash))
            })
            .collect()
    }

    /// The tree holding documents and their index, for reads and for building batches.
    /// Refused once a failed write could not be undone in memory (see `undo`).
    pub fn tree(&self) -> Result<&sled::Tree, ReplicaError> {
        self.refuse_unreadable()?;
        Ok(&self.docs)
    }

    fn refuse_unreadable(&self) -> Result<(), ReplicaError> {
        match (self.failed.get(), self.unreadable) {
            (Some(first), true) => Err(ReplicaError::Unreadable(first.clone())),
            _ => Ok(()),
        }
    }

    /// Why the store accepts no more writes until a restart, if it does not.
    pub fn failed(&self) -> Option<&str> {
        self.failed.get().map(String::as_str)
    }

    /// Turns an I/O error sled returned (to a read as well as a write) into the failure that
    /// stops later writes: sled does not recover from one in process.
    pub fn note_failure(&self, error: ReplicaError) -> ReplicaError {
        match error {
            ReplicaError::Storage(sled::Error::Io(io)) => {
                let first = self.failed.get_or_init(|| io.to_string());
                ReplicaError::Failed(first.clone())
            }
            other => other,
        }
    }

    /// Applies `writes` and waits until they are durable: appended to the journal and synced,
    /// then applied to sled key by key, which writes them out in its own time (a crash before
    /// it did is repaired by the journal's replay at open). A batch too large for the journal,
    /// or any while there is no journal, is applied atomically and flushed by sled.
    pub fn commit(&mut self, writes: Writes) -> Result<(), ReplicaError> {
        self.commit_acknowledging(writes, &mut || {})
    }

    /// `commit`, calling `on_durable` the moment the writes are durable: right after the
    /// journal's sync, before sled has them, so that a caller can be answered while they are
    /// applied. Should sled then fail, the error is still returned, but the writes are in the
    /// journal, and its replay at the next open applies them.
    pub fn commit_acknowledging(
        &mut self,
        writes: Writes,
        on_durable: OnDurable<'_>,
    ) -> Result<(), ReplicaError> {
        if let Some(first) = self.failed.get() {
            return Err(ReplicaError::Failed(first.clone()));
        }
        let journaled = self.journal_append(&writes);
        self.write(|storage| match journaled? {
            true => {
                on_durable();
                storage.apply_each(writes)
            }
            false => {
                storage.docs.apply_batch(writes.into_sled())?;
                storage.db.flush()?;
                on_durable();
                Ok(())
            }
        })
    }

    /// Appends the record of `writes` to the journal and syncs it; `Ok(false)` when they go
    /// to sled's flush instead. A batch that does not fit in the segment checkpoints first:
    /// sled's flush makes what the journal holds durable, and the journal begins anew (so a
    /// batch sled then flushes itself has no record before it that a replay would apply over
    /// it).
    fn journal_append(&mut self, writes: &Writes) -> Result<bool, sled::Error> {
        let record = journal::encode(self.next_seq, &writes.0);
        let too_large = record.len() > journal::MAX_RECORD;
        match &self.journal {
            Some(journal) if too_large || !journal.fits(&record) => {
                self.db.flush()?;
                self.restart_journal()?;
            }
            Some(_) => {}
            None => self.restart_journal()?,
        }
        let Some(journal) = self.journal.as_mut().filter(|_| !too_large) else {
            return Ok(false);
        };
        match journal.append(&record) {
            Ok(()) => {
                self.next_seq += 1;
                Ok(true)
            }
            // Only the record's own blocks were missing (a file system that cannot allocate a
            // segment ahead): what it wrote of itself ends the journal as a record cut short,
            // and the batch goes to sled's flush, after which the journal begins anew.
            Err(error) if error.raw_os_error() == Some(libc::ENOSPC) => {
                tracing::warn!(%error, "the journal cannot grow; writes wait for sled's flush until it can begin again (is the disk full?)");
                self.journal = None;
                Ok(false)
            }
            Err(error) => Err(sled::Error::Io(error)),
        }
    }

    /// Applies journaled writes one key at a time: sled's `apply_batch` writes its log out at
    /// every batch (two writes and syncs by its threads), which the journal makes needless.
    fn apply_each(&self, writes: Writes) -> Result<(), sled::Error> {
        for (key, value) in writes.0 {
            match value {
                Some(value) => self.docs.insert(key, value).map(drop)?,
                None => self.docs.remove(key).map(drop)?,
            }
        }
        Ok(())
    }

    /// Applies the undo of a failed `commit` (dropping its changes, so that they cannot reach
    /// the disk with a later flush of sled's log), even after the failure. sled may refuse
    /// it too; its memory then still holds the refused write, and the store is no longer
    /// read until a restart.
    pub fn undo(&mut self, writes: Writes) {
        if let Err(error) = self.docs.apply_batch(writes.into_sled()) {
            tracing::error!(%error, "cannot drop the changes of a failed write from the store's memory; reads are refused until meshd restarts");
            self.unreadable = true;
        }
    }

    /// Makes everything sled holds durable in its own files; the journal is then emptied, so a
    /// node stopped this way leaves nothing to apply again.
    pub fn flush(&mut self) -> Result<(), ReplicaError> {
        self.write(|storage| {
            storage.db.flush()?;
            Ok(())
        })?;
        self.journal = None;
        if let Err(error) = journal::clear(&self.journal_dir) {
            // Harmless: the next start applies its records again over what sled holds.
            tracing::debug!(%error, "cannot empty the journal after a flush");
        }
        Ok(())
    }

    /// Runs one write unless an earlier one failed; a failure stops all later ones.
    fn write<T>(
        &mut self,
        f: impl FnOnce(&Storage) -> Result<T, sled::Error>,
    ) -> Result<T, ReplicaError> {
        if let Some(first) = self.failed.get() {
            return Err(ReplicaError::Failed(first.clone()));
        }
        f(self).map_err(|error| {
            self.failed.get_or_init(|| error.to_string());
            ReplicaError::Storage(error)
        })
    }
}

impl Drop for Storage {
    /// sled flushes when its last handle drops, and after a failed write that flush waits for
    /// good: the stop of the daemon would hang. Forgetting one handle keeps sled from ever
    /// dropping; what it holds unflushed was undone, and the process is ending (the file
    /// lock goes with it).
    fn drop(&mut self) {
        if self.failed.get().is_some() {
            std::mem::forget(self.db.clone());
        }
    }
}

/// Applies again, in order, every record of the journal (the writes since sled's last flush
/// before a crash or a stop; those sled holds already are written again with the same
/// values), flushes them, and returns the next sequence number. A damaged record ends the
/// replay: the records before it are applied, the journal is kept aside for the operator, and
/// the error is logged (the writes after it were acknowledged; peers that received them send
/// them back).
fn replay_journal(db: &sled::Db, docs: &sled::Tree, dir: &Path) -> Result<u64, ReplicaError> {
    let recovered = journal::recover(dir).map_err(|error| journal_error(dir, error))?;
    let next_seq = recovered.records.last().map_or(1, |record| record.seq + 1);
    let records = recovered.records.len();
    for record in recovered.records {
        docs.apply_batch(Writes(record.writes).into_sled())?;
    }
    if records > 0 {
        db.flush()?;
        tracing::info!(
            records,
            "applied the journal's writes again (meshd stopped before sled wrote them out)"
        );
    }
    match recovered.damage {
        Some(damage) => {
            let aside = dir.with_extension(format!("damaged-{}", super::system_clock()));
            tracing::error!(%damage, aside = %aside.display(),
                "the journal is damaged: the writes after the damaged record are not in the store (a peer that has them sends them again); the journal is kept aside");
            std::fs::rename(dir, &aside)
        }
        None => journal::clear(dir),
    }
    .map_err(|error| journal_error(dir, error))?;
    Ok(next_seq)
}

fn journal_error(dir: &Path, error: io::Error) -> ReplicaError {
    ReplicaError::Damaged {
        path: dir.to_path_buf(),
        detail: format!("the journal cannot be read ({error})"),
    }
}

/// Opens the store at `path` once more and closes it, for a process that has just closed it
/// after writing. sled saves the snapshot of its page table only when it opens a store, and
/// replays everything logged since at the next open: after a daemon had run for a while, the
/// next one-shot `meshd mem get` on a million entries took 3 s instead of 40 ms. This pays
/// that replay as the writer leaves, instead of the next command or start.
pub fn save_page_table(path: &Path) -> Result<(), ReplicaError> {
    Storage::open(path).map(drop)
}

/// Tells a store held by another process from a damaged one: sled reports the first as the
/// file lock it could not take.
fn open_error(path: &Path, source: sled::Error) -> ReplicaError {
    let path = path.to_path_buf();
    match source {
        sled::Error::Io(e) if e.to_string().contains("could not acquire lock") => {
            ReplicaError::Locked { path }
        }
        sled::Error::Io(e) if e.raw_os_error() == Some(libc::ENOSPC) => {
            ReplicaError::NoRoomToOpen { path }
        }
        sled::Error::Corruption { at, .. } => ReplicaError::Damaged {
            path,
            detail: match at {
                Some(at) => format!("sled found corruption at {at}"),
                None => "sled found corruption".to_string(),
            },
        },
        source => ReplicaError::Open { path, source },
    }
}

fn doc_name(bytes: &[u8]) -> Result<String, ReplicaError> {
    String::from_utf8(bytes.to_vec())
        .map_err(|_| ReplicaError::Corrupt("document name is not UTF-8"))
}

fn snapshot_key(doc: &str) -> Vec<u8> {
    [SNAPSHOT, doc.as_bytes()].concat()
}

fn change_prefix(doc: &str) -> Vec<u8> {
    [CHANGE, doc.as_bytes(), b"\0"].concat()
}

fn change_key(doc: &str, hash: &ChangeHash) -> Vec<u8> {
    [change_prefix(doc).as_slice(), hash.as_ref()].concat()
}

/// Adds a change to `batch`.
pub fn stage_change(batch: &mut Writes, doc: &str, hash: &ChangeHash, bytes: &[u8]) {
    batch.insert(change_key(doc, hash), bytes);
}

/// Adds to `batch` the removal of a change (the undo of a failed write).
pub fn stage_forget(batch: &mut Writes, doc: &str, hash: &ChangeHash) {
    batch.remove(change_key(doc, hash));
}

/// Adds to `batch` a document's new snapshot and the removal of the changes it now holds.
pub fn stage_snapshot(
    batch: &mut Writes,
    doc: &str,
    snapshot: &[u8],
    folded: impl IntoIterator<Item = ChangeHash>,
) {
    batch.insert(snapshot_key(doc), snapshot);
    for hash in folded {
        batch.remove(change_key(doc, &hash));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small(key: &str) -> Writes {
        let mut writes = Writes::default();
        writes.insert(key, key.repeat(10));
        writes
    }

    fn journal_of(store: &Path) -> Vec<journal::Record> {
        journal::recover(&store.join(JOURNAL_DIR)).unwrap().records
    }

    fn value(storage: &Storage, key: &str) -> Option<Vec<u8>> {
        storage
            .tree()
            .unwrap()
            .get(key)
            .unwrap()
            .map(|v| v.to_vec())
    }

    /// Records written by a node that stopped before sled wrote them out.
    fn journal_left_behind(store: &Path, records: &[(u64, Writes)]) {
        let mut journal = Journal::start(&store.join(JOURNAL_DIR), 1).unwrap();
        for (seq, writes) in records {
            journal.append(&journal::encode(*seq, &writes.0)).unwrap();
        }
    }

    #[test]
    fn a_journaled_commit_is_in_the_journal_until_a_flush_empties_it() {
        let dir = tempfile::tempdir().unwrap();
        let mut storage = Storage::open(dir.path()).unwrap();
        storage.commit(small("a")).unwrap();
        storage.commit(small("b")).unwrap();
        assert_eq!(journal_of(dir.path()).len(), 2);
        storage.flush().unwrap();
        assert!(journal_of(dir.path()).is_empty());
        assert_eq!(value(&storage, "b"), Some(b"b".repeat(10)));
    }

    #[test]
    fn records_left_behind_are_applied_in_order_at_open() {
        let dir = tempfile::tempdir().unwrap();
        drop(Storage::open(dir.path()).unwrap());
        let mut removal = Writes::default();
        removal.remove("a");
        let mut rewrite = Writes::default();
        rewrite.insert("b", "second");
        journal_left_behind(
            dir.path(),
            &[
                (7, small("a")),
                (8, small("b")),
                (9, removal),
                (10, rewrite),
            ],
        );
        let mut storage = Storage::open(dir.path()).unwrap();
        assert_eq!(value(&storage, "a"), None);
        assert_eq!(value(&storage, "b"), Some(b"second".to_vec()));
        assert!(journal_of(dir.path()).is_empty(), "applied and emptied");
        storage.commit(small("c")).unwrap();
        assert_eq!(journal_of(dir.path())[0].seq, 11, "numbers go on");
    }

    #[test]
    fn a_damaged_journal_applies_what_precedes_the_damage_and_is_kept_aside() {
        let dir = tempfile::tempdir().unwrap();
        drop(Storage::open(dir.path()).unwrap());
        journal_left_behind(
            dir.path(),
            &[(1, small("a")), (2, small("b")), (3, small("c"))],
        );
        let segment = fs_segment(dir.path());
        let mut bytes = std::fs::read(&segment).unwrap();
        let second = journal::encode(1, &small("a").0).len();
        bytes[second + 20] ^= 1;
        std::fs::write(&segment, bytes).unwrap();
        let storage = Storage::open(dir.path()).unwrap();
        assert_eq!(value(&storage, "a"), Some(b"a".repeat(10)));
        assert_eq!(value(&storage, "b"), None);
        assert_eq!(
            value(&storage, "c"),
            None,
            "not applied without the one before"
        );
        let aside: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|entry| entry.unwrap().file_name().into_string().unwrap())
            .filter(|name| name.starts_with("journal.damaged-"))
            .collect();
        assert_eq!(aside.len(), 1, "the damaged journal is kept");
    }

    fn fs_segment(store: &Path) -> PathBuf {
        let entry = std::fs::read_dir(store.join(JOURNAL_DIR)).unwrap().next();
        entry.unwrap().unwrap().path()
    }

    /// A batch sled flushes itself must have no record before it in the journal: applied
    /// again at open, an older record would overwrite what the batch wrote.
    #[test]
    fn a_batch_too_large_for_the_journal_empties_it_first() {
        let dir = tempfile::tempdir().unwrap();
        let mut storage = Storage::open(dir.path()).unwrap();
        storage.commit(small("k")).unwrap();
        let mut large = Writes::default();
        large.insert("k", vec![7; journal::MAX_RECORD + 1]);
        storage.commit(large).unwrap();
        assert!(journal_of(dir.path()).is_empty());
        storage.commit(small("other")).unwrap();
        let left: Vec<Vec<u8>> = journal_of(dir.path())
            .into_iter()
            .flat_map(|record| record.writes.into_iter().map(|(key, _)| key))
            .collect();
        assert_eq!(left, [b"other".to_vec()]);
        drop(storage);
        let storage = Storage::open(dir.path()).unwrap();
        assert_eq!(
            value(&storage, "k").map(|v| v.len()),
            Some(journal::MAX_RECORD + 1)
        );
    }

    #[test]
    fn a_full_segment_is_checkpointed_and_a_new_one_begun() {
        let dir = tempfile::tempdir().unwrap();
        let mut storage = Storage::open(dir.path()).unwrap();
        let records = (journal::SEGMENT_BYTES / (256 * 1024)) as usize + 2;
        for n in 0..records {
            let mut writes = Writes::default();
            writes.insert(format!("k{n}"), vec![n as u8; 256 * 1024]);
            storage.commit(writes).unwrap();
        }
        let left = journal_of(dir.path());
        assert!(
            !left.is_empty() && left.len() < records,
            "{} records",
            left.len()
        );
        drop(storage);
        let storage = Storage::open(dir.path()).unwrap();
        for n in 0..records {
            assert_eq!(
                value(&storage, &format!("k{n}")),
                Some(vec![n as u8; 256 * 1024])
            );
        }
    }
}
