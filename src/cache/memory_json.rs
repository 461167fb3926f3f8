//! `mesh-memory.json`, the Phase 1 cache: one JSON object holding every entry, so any change
//! to memory rewrites it whole. It is streamed into its temporary file (never built as one
//! string), read from the replica one group of scopes at a time (never the whole store
//! copied under the lock), and, under a stream of writes, rewritten at most once per
//! interval that grows with its size and with what its last write cost (`JsonPace`).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::files::{Content, Layout, Placed, Placer, Rendered};
use super::render::{self, MEMORY_JSON};
use super::{CacheError, CachePaths};
use crate::model::MemoryEntry;
use crate::replica::{ReplicaError, SharedReplica};

/// After a write, the file waits at least its size divided by this (16 MiB/s: 62 ms for
/// 1 MiB, about 4000 entries; 16 s for the 268 MB of a million entries) ...
pub const BYTES_PER_SECOND: u64 = 16 << 20;

/// ... and at least this many times what that write took, so a stream of writes spends at
/// most a tenth of the writer's time on it (the write costs about 35 ms per MB on the
/// benchmark's VM: 0.7 s for the 19 MB of 100k entries, which then wait 6 s).
pub const COST_FACTOR: u32 = 9;

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

    /// The file was written, `len` bytes long, from `started` until `now`.
    pub fn written(&mut self, len: u64, started: Instant, now: Instant) {
        self.stale = false;
        let by_size = Duration::from_secs_f64(len as f64 / BYTES_PER_SECOND as f64);
        let by_cost = now.saturating_duration_since(started) * COST_FACTOR;
        self.not_before = Some(now + by_size.max(by_cost));
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
            let entries = replica.with(|r| -> Result<Vec<MemoryEntry>, ReplicaError> {
                let mut entries = Vec::new();
                for scope in &group {
                    entries.extend(r.list_memory(Some(scope))?);
                }
                Ok(entries)
            })?;
            Ok(render::labelled(entries, own))
        })
        .collect::<Result<Vec<_>, ReplicaError>>()?;
    write(paths, placer, groups.into_iter())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_larger_file_waits_longer_and_now_never_waits() {
        let start = Instant::now();
        let mut pace = JsonPace::default();
        assert_eq!(pace.wait(Pace::Paced, start), None, "nothing written yet");
        pace.written(BYTES_PER_SECOND * 2, start, start);
        assert_eq!(pace.wait(Pace::Paced, start), None, "nothing changed since");
        pace.mark_stale();
        assert_eq!(
            pace.wait(Pace::Paced, start + Duration::from_millis(500)),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(pace.wait(Pace::Now, start), None);
        assert_eq!(pace.wait(Pace::Paced, start + Duration::from_secs(2)), None);
        pace.written(0, start, start + Duration::from_secs(1));
        pace.mark_stale();
        assert_eq!(
            pace.wait(Pace::Paced, start + Duration::from_secs(1)),
            Some(Duration::from_secs(9)),
            "a write that took a second waits nine"
        );
    }
}
