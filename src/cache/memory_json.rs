//! `mesh-memory.json`, the Phase 1 cache: one JSON object holding every entry, so any change
//! to memory rewrites it whole. It is streamed into its temporary file (never built as one
//! string), read from the replica one group of scopes at a time (never the whole store
//! copied under the lock), and, under a stream of writes, rewritten at most once per
//! interval that grows with its size (`JsonPace`).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::files::{Content, Layout, Placed, Placer, Rendered};
use super::render::{self, MEMORY_JSON};
use super::{CacheError, CachePaths};
use crate::model::MemoryEntry;
use crate::replica::SharedReplica;

/// The file is rewritten at most once per its size divided by this: 16 MiB/s, so a file of
/// 1 MiB (about 4000 entries) may be rewritten every 62 ms, one of 268 MB (a million
/// entries) every 16 s. Writing it costs about a second per 100 MB here, so a stream of
/// writes spends at most a few percent of the time on it.
pub const BYTES_PER_SECOND: u64 = 16 << 20;

/// Whether a write of the caches may put off `mesh-memory.json`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pace {
    /// Write it now if anything changed (`meshd cache write`, a stop).
    Now,
    /// Write it once its interval since the last write has passed (the view writer).
    Paced,
}

/// When `mesh-memory.json` was last written and whether memory changed since.
#[derive(Debug, Default)]
pub struct JsonPace {
    stale: bool,
    not_before: Option<Instant>,
}

impl JsonPace {
    /// Memory changed since the file was written.
    pub fn mark_stale(&mut self) {
        self.stale = true;
    }

    /// `None` when the file is to be written now (or needs nothing); else how long to wait.
    pub fn wait(&self, pace: Pace, now: Instant) -> Option<Duration> {
        match (self.stale, pace, self.not_before) {
            (true, Pace::Paced, Some(not_before)) if not_before > now => Some(not_before - now),
            _ => None,
        }
    }

    pub fn is_stale(&self) -> bool {
        self.stale
    }

    /// The file was written at `now`, `len` bytes long.
    pub fn written(&mut self, len: u64, now: Instant) {
        self.stale = false;
        let interval = Duration::from_secs_f64(len as f64 / BYTES_PER_SECOND as f64);
        self.not_before = Some(now + interval);
    }
}

/// Streams the file from `groups` of entries by label (`render::label_groups`, in order) and
/// puts it where the mesh wants it; returns its length.
pub fn write(
    paths: &CachePaths,
    placer: &mut Placer<'_>,
    groups: impl Iterator<Item = BTreeMap<String, MemoryEntry>>,
) -> Result<u64, CacheError> {
    let home = &paths.openclaw_home;
    let (rendered, hashes) = Rendered::write(home, MEMORY_JSON, |out| {
        render::write_reference_memory(out, groups)
    })
    .map_err(|source| CacheError::io(&paths.memory_json(), source))?;
    let placed = placer.update(
        home,
        Layout::Files,
        MEMORY_JSON,
        Some(Content::Rendered(&rendered)),
    )?;
    // A copy beside someone else's file is not what read-back compares entries against.
    if let Some(Placed::Own(_)) = placed {
        placer.manifest.set_entries(home, hashes);
    }
    Ok(rendered.len())
}

/// The file from the replica, one group of scopes under the lock at a time.
pub fn write_from(
    paths: &CachePaths,
    placer: &mut Placer<'_>,
    replica: &SharedReplica,
    own: &str,
) -> Result<u64, CacheError> {
    let scopes = replica.with(|r| r.scopes());
    let groups = render::label_groups(scopes, own)
        .into_iter()
        .map(|mut group| {
            // The order `list_memory(None)` reads them in, so equal stamps resolve alike.
            group.sort();
            let entries: Vec<MemoryEntry> = replica.with(|r| {
                group
                    .iter()
                    .flat_map(|scope| r.list_memory(Some(scope)))
                    .collect()
            });
            render::labelled(entries, own)
        });
    write(paths, placer, groups)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_larger_file_waits_longer_and_now_never_waits() {
        let start = Instant::now();
        let mut pace = JsonPace::default();
        assert_eq!(pace.wait(Pace::Paced, start), None, "nothing written yet");
        pace.written(BYTES_PER_SECOND * 2, start);
        assert_eq!(pace.wait(Pace::Paced, start), None, "nothing changed since");
        pace.mark_stale();
        assert_eq!(
            pace.wait(Pace::Paced, start + Duration::from_millis(500)),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(pace.wait(Pace::Now, start), None);
        assert_eq!(pace.wait(Pace::Paced, start + Duration::from_secs(2)), None);
    }
}
