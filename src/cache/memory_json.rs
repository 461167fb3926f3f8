//! `mesh-memory.json`, the Phase 1 cache: one JSON object holding every entry, so any change
//! to memory rewrites it whole. It is streamed into its temporary file (never built as one
//! string), read from the replica a part of a scope at a time (never a scope or the whole
//! store copied under the lock), and, under a stream of writes, rewritten at most once per
//! interval that grows with its size and with what its last write cost (`JsonPace`).

use std::time::{Duration, Instant};

use super::entries::EntryList;
use super::files::{Content, Layout, Placed, Placer, Rendered};
use super::parts::Labelled;
use super::render::{self, MEMORY_JSON};
use super::{CacheError, CachePaths};
use crate::replica::SharedReplica;

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

/// Streams the file from the replica (`parts::Labelled`: a part of a scope under the lock
/// at a time) and puts it where the mesh wants it, with the digests of its entries (for
/// reading it back: `entries`) when it is at its own name; returns its length.
pub fn write_from(
    paths: &CachePaths,
    placer: &mut Placer<'_>,
    replica: &SharedReplica,
    own: &str,
    part: usize,
) -> Result<u64, CacheError> {
    let home = &paths.openclaw_home;
    let digests_path = placer.manifest.entries_path(home);
    let digests_error = |source: std::io::Error| CacheError::io(&digests_path, source);
    let mut digests = EntryList::create(&digests_path).map_err(digests_error)?;
    let entries = Labelled::new(replica, own, part);
    let (rendered, ()) = Rendered::write(home, MEMORY_JSON, |out| {
        render::write_reference_memory(out, entries, &mut |label, value| digests.add(label, value))
    })
    .map_err(|error| error.for_file(&paths.memory_json()))?;
    let placed = placer.update(
        home,
        Layout::Files,
        MEMORY_JSON,
        Some(Content::Rendered(&rendered)),
    )?;
    // A copy beside someone else's file is not what read-back compares entries against.
    if let Some(Placed::Own(_)) = placed {
        digests.install().map_err(digests_error)?;
    }
    Ok(rendered.len())
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
