//! Hybrid logical clock: `updated_at` stamps that never run backwards, whatever the wall clock
//! does, and still read as wall-clock time.
//!
//! A stamp packs Unix milliseconds in the high 48 bits and a counter in the low 16 bits, so it
//! orders as one `u64` and fits Automerge's unsigned scalar.

use serde::{Deserialize, Serialize};

const COUNTER_BITS: u32 = 16;
/// The latest wall-clock time a stamp can carry: 48 bits of milliseconds (year 10889).
pub const MAX_UNIX_MILLIS: u64 = (1 << (64 - COUNTER_BITS)) - 1;

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

    /// `None` for times a stamp cannot carry, such as a `ts` sent in milliseconds by mistake
    /// or a hostile one: imported data must not be able to wrap the clock.
    pub fn checked_from_unix_seconds(seconds: u64) -> Option<Stamp> {
        seconds
            .checked_mul(1000)
            .filter(|millis| *millis <= MAX_UNIX_MILLIS)
            .map(Stamp::from_unix_millis)
    }

    /// The stamp for a write that brings no clock of its own (an HTTP PUT, a bridge skill
    /// without `ts`): the wall clock, yet always after `current`, so it replaces `current`.
    pub fn after(current: Option<Stamp>, wall_millis: u64) -> Stamp {
        let wall = Stamp::from_unix_millis(wall_millis.min(MAX_UNIX_MILLIS));
        current.map_or(wall, |current| wall.max(current.next()))
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
    fn checked_seconds_refuse_what_does_not_fit() {
        assert_eq!(
            Stamp::checked_from_unix_seconds(1_739_123_456),
            Some(Stamp::from_unix_seconds(1_739_123_456))
        );
        assert_eq!(Stamp::checked_from_unix_seconds(1_739_123_456_000), None);
        assert_eq!(Stamp::checked_from_unix_seconds(u64::MAX), None);
    }

    #[test]
    fn after_beats_the_current_stamp_even_with_a_slow_clock() {
        let current = Stamp::from_unix_seconds(100);
        assert!(Stamp::after(Some(current), 1_000) > current);
        assert_eq!(Stamp::after(None, 5_000), Stamp::from_unix_millis(5_000));
        assert_eq!(
            Stamp::after(Some(current), 200_000),
            Stamp::from_unix_millis(200_000)
        );
    }

    #[test]
    fn seconds_round_trip() {
        assert_eq!(
            Stamp::from_unix_seconds(1_739_123_456).unix_seconds(),
            1_739_123_456
        );
    }
}
