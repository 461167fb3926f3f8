//! How often a file that is rewritten whole may be rewritten under a stream of changes.
//! `mesh-memory.json` holds every entry and a scope's page every entry of the scope, so each
//! change to them costs a write in proportion to all they hold: a page of a million entries
//! took seconds, and under a stream of single puts its rewrites took half of the daemon's
//! CPU from the puts themselves (docs/benchmarks.md, Scale). After each write such a file
//! waits an interval that grows with its size and with what that write cost; a file that
//! has not changed for that long is written at once, so a lone change shows without delay.

use std::time::{Duration, Instant};

/// After a write, the file waits at least its size divided by this (16 MiB/s: 62 ms for
/// 1 MiB, about 4000 entries; 16 s for the 268 MB `mesh-memory.json` of a million entries) ...
pub const BYTES_PER_SECOND: u64 = 16 << 20;

/// ... and at least this many times what that write took, so a stream of writes spends at
/// most a tenth of the writer's time on each such file (`mesh-memory.json` costs about 35 ms
/// per MB on the benchmark's VM: 0.7 s for the 19 MB of 100k entries, which then wait 6 s).
pub const COST_FACTOR: u32 = 9;

/// Whether a write of the caches may put off a file whose interval has not passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pace {
    /// Write it now if anything changed (`meshd cache write`, a stop).
    Now,
    /// Write it once its interval since the last write has passed (the view writer).
    Paced,
}

/// When one file was last written and whether what it shows changed since.
#[derive(Debug, Default)]
pub struct FilePace {
    stale: bool,
    not_before: Option<Instant>,
}

impl FilePace {
    /// What the file shows changed since it was written.
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

/// The sooner of two waits (`None`: nothing owed).
pub fn sooner(a: Option<Duration>, b: Option<Duration>) -> Option<Duration> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_larger_file_waits_longer_and_now_never_waits() {
        let start = Instant::now();
        let mut pace = FilePace::default();
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

    #[test]
    fn the_sooner_wait_is_owed() {
        let (one, two) = (Duration::from_secs(1), Duration::from_secs(2));
        assert_eq!(sooner(Some(two), Some(one)), Some(one));
        assert_eq!(sooner(None, Some(two)), Some(two));
        assert_eq!(sooner(Some(one), None), Some(one));
        assert_eq!(sooner(None, None), None);
    }
}
