//! Memory read out of the replica a part at a time, for the files that hold a whole scope
//! (its page) or all memory (`mesh-memory.json`). The keys of a scope come from the index a
//! part at a time (`Replica::live_memory_after`), with their entries, under one short hold of the
//! replica, released between parts, so neither a scope nor the store is ever copied into
//! memory at once and writers wait at most one part. What changes between parts is in the file or
//! not, and written again at the next write: the caches reflect the heads read before.

use std::collections::VecDeque;
use std::io;
use std::path::Path;

use super::render;
use super::CacheError;
use crate::model::{MemoryEntry, Scope};
use crate::replica::{ReplicaError, SharedReplica};

/// Keys read under one hold of the replica: about a tenth of a millisecond, so that a write
/// arriving meanwhile waits about as long as its own commit's bookkeeping, not the reading of
/// a page (with 5000 keys a part, writers under load waited 35 to 135 µs on average for the
/// lock, against 18 to 47 with 256). Each part starts with a seek in the index, which costs
/// next to nothing beside reading the keys.
pub const READ_PART: usize = 256;

/// Why a file streamed from the replica was not written.
#[derive(Debug)]
pub enum StreamError {
    Io(io::Error),
    Store(ReplicaError),
}

impl From<io::Error> for StreamError {
    fn from(error: io::Error) -> StreamError {
        StreamError::Io(error)
    }
}

impl From<ReplicaError> for StreamError {
    fn from(error: ReplicaError) -> StreamError {
        StreamError::Store(error)
    }
}

impl StreamError {
    /// The cache's error, for the file at `path`.
    pub fn for_file(self, path: &Path) -> CacheError {
        match self {
            StreamError::Io(source) => CacheError::io(path, source),
            StreamError::Store(error) => CacheError::Store(error),
        }
    }
}

/// The live entries of one scope in key order (`Replica::list_memory`'s order), read `part`
/// keys at a time.
pub struct ScopeEntries<'r> {
    replica: &'r SharedReplica,
    scope: Scope,
    part: usize,
    /// The last key read (tombstones included); `None` before the first part.
    last: Option<String>,
    /// Every key has been read.
    done: bool,
    read: VecDeque<MemoryEntry>,
}

impl<'r> ScopeEntries<'r> {
    pub fn new(replica: &'r SharedReplica, scope: Scope, part: usize) -> ScopeEntries<'r> {
        ScopeEntries {
            replica,
            scope,
            part: part.max(1),
            last: None,
            done: false,
            read: VecDeque::new(),
        }
    }

    /// Reads the next part of live entries; `false` when every key has been read.
    fn read_part(&mut self) -> Result<bool, ReplicaError> {
        if self.done {
            return Ok(false);
        }
        let part = (self.replica)
            .with(|r| r.live_memory_after(&self.scope, self.last.as_deref(), self.part))?;
        self.done = part.keys < self.part;
        let Some(last) = part.last else {
            return Ok(false);
        };
        self.last = Some(last);
        self.read = part.entries.into();
        Ok(true)
    }
}

impl Iterator for ScopeEntries<'_> {
    type Item = Result<MemoryEntry, ReplicaError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(entry) = self.read.pop_front() {
                return Some(Ok(entry));
            }
            match self.read_part() {
                Ok(true) => {}
                Ok(false) => return None,
                Err(error) => {
                    // A failed read ends the scope: the caller gives up the file.
                    self.done = true;
                    return Some(Err(error));
                }
            }
        }
    }
}

/// Every memory entry by its label in `mesh-memory.json`, in label order, as
/// `render::labelled` keeps them (of entries sharing a label, the newest; on a tie, the
/// first scope's): the scopes go by `render::label_groups`, and the scopes of one group,
/// whose labels interleave, are merged as they are read.
pub struct Labelled<'r> {
    replica: &'r SharedReplica,
    own: &'r str,
    part: usize,
    groups: std::vec::IntoIter<Vec<Scope>>,
    /// The scopes of the current group, each with its next entry and that entry's label.
    merging: Vec<(ScopeEntries<'r>, Option<(String, MemoryEntry)>)>,
}

impl<'r> Labelled<'r> {
    /// Reads the scopes the replica has now.
    pub fn new(replica: &'r SharedReplica, own: &'r str, part: usize) -> Labelled<'r> {
        let scopes = replica.with(|r| r.scopes());
        Labelled {
            replica,
            own,
            part,
            groups: render::label_groups(scopes, own).into_iter(),
            merging: Vec::new(),
        }
    }

    /// Gives each scope of the group its next entry, if it has one.
    fn fill(&mut self) -> Result<(), ReplicaError> {
        let own = self.own;
        for (entries, next) in &mut self.merging {
            if next.is_none() {
                *next = entries
                    .next()
                    .transpose()?
                    .map(|entry| (render::memory_label(&entry, own), entry));
            }
        }
        Ok(())
    }

    /// The next label of the group, with the entry it keeps; `None` at the group's end.
    fn next_in_group(&mut self) -> Result<Option<(String, MemoryEntry)>, ReplicaError> {
        self.fill()?;
        let Some(label) = self
            .merging
            .iter()
            .filter_map(|(_, next)| next.as_ref().map(|(label, _)| label))
            .min()
            .cloned()
        else {
            return Ok(None);
        };
        let mut kept: Option<MemoryEntry> = None;
        for (_, next) in &mut self.merging {
            if next.as_ref().is_some_and(|(l, _)| *l == label) {
                if let Some((_, entry)) = next.take() {
                    if kept
                        .as_ref()
                        .is_none_or(|k| k.updated_at < entry.updated_at)
                    {
                        kept = Some(entry);
                    }
                }
            }
        }
        Ok(kept.map(|entry| (label, entry)))
    }
}

impl Iterator for Labelled<'_> {
    type Item = Result<(String, MemoryEntry), ReplicaError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            match self.next_in_group() {
                Ok(Some(labelled)) => return Some(Ok(labelled)),
                Ok(None) => {}
                Err(error) => {
                    // A failed read ends the file: the caller gives it up.
                    self.merging.clear();
                    self.groups = Vec::new().into_iter();
                    return Some(Err(error));
                }
            }
            let mut group = self.groups.next()?;
            // The order `list_memory(None)` reads them in, so equal stamps resolve alike.
            group.sort();
            self.merging = group
                .into_iter()
                .map(|scope| (ScopeEntries::new(self.replica, scope, self.part), None))
                .collect();
        }
    }
}
