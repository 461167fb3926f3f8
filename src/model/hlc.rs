//! Hybrid logical clock: `updated_at` stamps that never run backwards, whatever the wall clock
//! does, and still read as wall-clock time.
//!
//! A stamp packs Unix milliseconds in the high 48 bits and a counter in the low 16 bits, so it
//! orders as one `u64` and fits Automerge's unsigned scalar.

use serde::{Deserialize, Serialize};

const COUNTER_BITS: u32 = 16;

#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Stamp(pub u64);

impl Stamp {
    pub fn from_unix_millis(millis: u64) -> Stamp {
        Stamp(millis << COUNTER_BITS)
    }

    pub fn from_unix_seconds(seconds: u64) -> Stamp {
        Stamp::from_unix_millis(seconds.saturating_mul(1000))
    }

    pub fn unix_millis(self) -> u64 {
        self.0 >> COUNTER_BITS
    }

    pub fn unix_seconds(self) -> u64 {
        self.unix_millis() / 1000
    }

    fn next(self) -> Stamp {
        Stamp(self.0 + 1)
    }
}

/// The clock of one replica. Reading the wall clock is the caller's business, so tests can
/// drive skewed clocks.
#[derive(Debug, Default)]
pub struct Hlc {
    last: Stamp,
}

impl Hlc {
    /// A stamp later than every stamp this clock issued or observed, and not earlier than
    /// `wall_millis`.
    pub fn tick(&mut self, wall_millis: u64) -> Stamp {
        self.last = Stamp::from_unix_millis(wall_millis).max(self.last.next());
        self.last
    }

    /// Remembers a stamp seen elsewhere so later ticks come after it.
    pub fn observe(&mut self, seen: Stamp) {
        self.last = self.last.max(seen);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_follow_the_wall_clock() {
        let mut hlc = Hlc::default();
        let a = hlc.tick(1_000);
        assert_eq!(a.unix_millis(), 1_000);
        let b = hlc.tick(2_000);
        assert_eq!(b.unix_millis(), 2_000);
    }

    #[test]
    fn never_runs_backwards_when_the_wall_clock_does() {
        let mut hlc = Hlc::default();
        let a = hlc.tick(5_000);
        let b = hlc.tick(4_000);
        let c = hlc.tick(5_000);
        assert!(a < b && b < c);
        assert_eq!(c.unix_millis(), 5_000);
    }

    #[test]
    fn observed_stamps_push_the_clock_forward() {
        let mut hlc = Hlc::default();
        hlc.observe(Stamp::from_unix_seconds(100));
        assert!(hlc.tick(1) > Stamp::from_unix_seconds(100));
    }

    #[test]
    fn seconds_round_trip() {
        assert_eq!(
            Stamp::from_unix_seconds(1_739_123_456).unix_seconds(),
            1_739_123_456
        );
    }
}
