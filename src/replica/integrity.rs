//! The integrity record: what the store has acknowledged, kept outside sled's log so that a
//! store which lost part of its log cannot pass for complete.
//!
//! sled recovers a damaged log by cutting it at the first torn batch and carries on silently,
//! so a flipped byte can drop every later write without an error. The record (`store.integrity`
//! beside the store directory) lists, per document, its heads and change count at a moment
//! when everything was durable. At open, every recorded head must be in the loaded document
//! (a head's presence vouches for all its ancestors, since Automerge applies no change whose
//! dependencies are missing); a store that lacks one refuses to open and names what is
//! missing.
//!
//! The record is rewritten atomically (a temporary file, fsync, rename, fsync of the
//! directory) at most once a second while writes go on, and at every flush (shutdown). Writes
//! acknowledged in the last second before a crash are guarded by sled's own log only.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use automerge::ChangeHash;
use serde::{Deserialize, Serialize};

use crate::model::hlc::rfc3339_seconds;

/// The shortest time between two rewrites of the record while writes go on.
pub const REWRITE_EVERY: Duration = Duration::from_secs(1);

/// The record as stored (JSON).
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// When it was written, Unix milliseconds.
    pub written_at_ms: u64,
    pub docs: BTreeMap<String, DocRecord>,
}

#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DocRecord {
    /// Heads as hex.
    pub heads: Vec<String>,
    pub changes: u64,
}

/// What a store lacks against its record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shortfall {
    pub doc: String,
    /// Recorded heads the store does not hold.
    pub missing_heads: usize,
    pub recorded_changes: u64,
    pub held_changes: u64,
}

/// Writes the record for one store when it is due.
pub struct IntegrityFile {
    path: PathBuf,
    /// The shortest time between rewrites while writes go on; `None`: never written (only
    /// for measuring what the record costs, `benches/replica`).
    every: Option<Duration>,
    last_written: Option<Instant>,
    /// Durable changes not yet in the record.
    dirty: bool,
}

/// The record's path for the store at `store`: beside it, outside sled's directory.
pub fn path_for(store: &Path) -> PathBuf {
    let mut name = store
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_else(|| "store".into());
    name.push(".integrity");
    store.with_file_name(name)
}

impl IntegrityFile {
    pub fn new(store: &Path) -> IntegrityFile {
        IntegrityFile {
            path: path_for(store),
            every: Some(REWRITE_EVERY),
            last_written: None,
            dirty: false,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The record on disk; `None` when there is none yet (a new store, or one from before
    /// records were kept).
    pub fn load(&self) -> io::Result<Option<Record>> {
        load(&self.path)
    }

    pub fn set_every(&mut self, every: Option<Duration>) {
        self.every = every;
    }

    /// Notes that more changes are durable; true when the record is due for a rewrite.
    pub fn note_durable(&mut self) -> bool {
        self.dirty = true;
        let Some(every) = self.every else {
            return false;
        };
        self.last_written.is_none_or(|at| at.elapsed() >= every)
    }

    /// Whether durable changes are missing from the record (and it is kept at all).
    pub fn is_dirty(&self) -> bool {
        self.dirty && self.every.is_some()
    }

    /// Replaces the record atomically.
    pub fn write(&mut self, record: &Record) -> io::Result<()> {
        let temporary = self.path.with_extension("integrity.tmp");
        let mut file = File::create(&temporary)?;
        file.write_all(&serde_json::to_vec_pretty(record).map_err(io::Error::other)?)?;
        file.sync_all()?;
        drop(file);
        fs::rename(&temporary, &self.path)?;
        if let Some(dir) = self.path.parent() {
            File::open(dir)?.sync_all()?;
        }
        self.last_written = Some(Instant::now());
        self.dirty = false;
        Ok(())
    }
}

/// A record at `path`; `None` when there is none.
pub fn load(path: &Path) -> io::Result<Option<Record>> {
    match fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

impl DocRecord {
    pub fn new(heads: &[ChangeHash], changes: u64) -> DocRecord {
        DocRecord {
            heads: heads.iter().map(ToString::to_string).collect(),
            changes,
        }
    }

    /// The recorded heads; a head that does not parse counts as missing.
    pub fn heads(&self) -> Vec<Option<ChangeHash>> {
        self.heads.iter().map(|h| h.parse().ok()).collect()
    }
}

impl Record {
    pub fn written_at(&self) -> String {
        rfc3339_seconds(self.written_at_ms / 1000)
    }
}

/// The most shortfalls an error names: a store that lost its whole log lacks every document,
/// and an operator needs the first few and the count, not hundreds of lines.
const SHORTFALLS_NAMED: usize = 5;

/// The shortfalls for an error message: the first few, then how many more.
pub fn describe(shortfalls: &[Shortfall]) -> String {
    let named = shortfalls
        .iter()
        .take(SHORTFALLS_NAMED)
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ");
    match shortfalls.len().saturating_sub(SHORTFALLS_NAMED) {
        0 => named,
        more => format!("{named}; and {more} more documents"),
    }
}

impl std::fmt::Display for Shortfall {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.held_changes == 0 {
            return write!(
                f,
                "document {} is gone ({} changes recorded)",
                self.doc, self.recorded_changes
            );
        }
        write!(
            f,
            "document {} lacks {} of its recorded heads ({} changes recorded, {} held)",
            self.doc, self.missing_heads, self.recorded_changes, self.held_changes
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_record_tells_when_it_was_written_in_seconds() {
        let record = Record {
            written_at_ms: 1_739_123_456_789,
            ..Record::default()
        };
        assert_eq!(record.written_at(), "2025-02-09T17:50:56Z");
    }

    #[test]
    fn a_long_list_of_shortfalls_names_the_first_few_and_counts_the_rest() {
        let gone = |i: usize| Shortfall {
            doc: format!("mesh::{i:02x}"),
            missing_heads: 1,
            recorded_changes: 50,
            held_changes: 0,
        };
        let few: Vec<_> = (0..2).map(gone).collect();
        assert_eq!(
            describe(&few),
            "document mesh::00 is gone (50 changes recorded); \
             document mesh::01 is gone (50 changes recorded)"
        );
        let many: Vec<_> = (0..257).map(gone).collect();
        let text = describe(&many);
        assert!(text.contains("mesh::04"), "{text}");
        assert!(!text.contains("mesh::05"), "{text}");
        assert!(text.ends_with("; and 252 more documents"), "{text}");
    }

    #[test]
    fn the_record_survives_a_rewrite_and_sits_beside_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("store");
        let mut file = IntegrityFile::new(&store);
        assert_eq!(file.path(), dir.path().join("store.integrity"));
        assert_eq!(file.load().unwrap(), None);
        let mut record = Record {
            written_at_ms: 1,
            ..Record::default()
        };
        record
            .docs
            .insert("mesh".into(), DocRecord::new(&[ChangeHash([7; 32])], 3));
        file.write(&record).unwrap();
        assert_eq!(file.load().unwrap(), Some(record.clone()));
        assert_eq!(
            file.load().unwrap().unwrap().docs["mesh"].heads(),
            vec![Some(ChangeHash([7; 32]))]
        );
        record.written_at_ms = 2;
        file.write(&record).unwrap();
        assert_eq!(file.load().unwrap().unwrap().written_at_ms, 2);
        assert!(!dir.path().join("store.integrity.tmp").exists());
    }

    #[test]
    fn a_garbled_record_is_an_error_not_an_empty_record() {
        let dir = tempfile::tempdir().unwrap();
        let file = IntegrityFile::new(&dir.path().join("store"));
        fs::write(file.path(), b"{not json").unwrap();
        assert!(file.load().is_err());
    }
}
