//! Hybrid logical clock: `updated_at` stamps that never run backwards, whatever the wall clock
//! does, and still read as wall-clock time; and the bound on how far ahead of this node's
//! wall clock an accepted stamp may be.
//!
//! A stamp packs Unix milliseconds in the high 48 bits and a counter in the low 16 bits, so it
//! orders as one `u64` and fits Automerge's unsigned scalar.
//!
//! Why a bound: the newest stamp wins, so a writer whose clock runs a year ahead would win
//! every concurrent write for a year, and one stamp from the future would drag every clock
//! that saw it along. As CockroachDB does with its maximum clock offset, meshd refuses stamps
//! further ahead of its own wall clock than `max_offset`, and its clock catches up with
//! accepted stamps but never passes now + `max_offset`. CockroachDB needs 500 ms for
//! serializable transactions; meshd only bounds how long a skewed clock can win
//! last-writer-wins, and its inputs include bridge `ts` fields with one-second resolution from
//! machines without good time, so the default is one minute.

use std::time::Duration;

use serde::{Deserialize, Serialize};

const COUNTER_BITS: u32 = 16;
/// The latest wall-clock time a stamp can carry: 48 bits of milliseconds (year 10889).
pub const MAX_UNIX_MILLIS: u64 = (1 << (64 - COUNTER_BITS)) - 1;
/// How far ahead of this node's wall clock an accepted stamp may be, by default.
pub const DEFAULT_MAX_CLOCK_OFFSET: Duration = Duration::from_secs(60);

#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Stamp(pub u64);

impl Stamp {
    /// Times past what a stamp can carry become its last millisecond.
    pub fn from_unix_millis(millis: u64) -> Stamp {
        Stamp(millis.min(MAX_UNIX_MILLIS) << COUNTER_BITS)
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

    pub fn unix_millis(self) -> u64 {
        self.0 >> COUNTER_BITS
    }

    pub fn unix_seconds(self) -> u64 {
        self.unix_millis() / 1000
    }

    /// The stamp right after this one; `None` after the last stamp there is.
    pub fn next(self) -> Option<Stamp> {
        self.0.checked_add(1).map(Stamp)
    }

    /// The time as `2026-11-22T10:00:00Z`, for every stamp (years past 9999 too).
    pub fn to_rfc3339(self) -> String {
        rfc3339_seconds(self.unix_seconds())
    }
}

/// A stamp further ahead of this node's clock than it accepts.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("stamped {} ahead of this node's clock, more than the {} allowed ([node] max_clock_offset_ms in meshd.toml): check the clock of the machine that wrote it", seconds(*.ahead_ms), seconds(*.max_offset_ms))]
pub struct FutureStamp {
    pub ahead_ms: u64,
    pub max_offset_ms: u64,
}

/// A span as people read it: `61.0 s`, `15 min`, `3.5 h`, `40 days`, `3112 years`.
fn seconds(millis: u64) -> String {
    let seconds = millis as f64 / 1000.0;
    const DAY: f64 = 86_400.0;
    match seconds {
        s if s < 120.0 => format!("{s:.1} s"),
        s if s < 7_200.0 => format!("{:.0} min", s / 60.0),
        s if s < 2.0 * DAY => format!("{:.1} h", s / 3_600.0),
        s if s < 730.0 * DAY => format!("{:.0} days", s / DAY),
        s => format!("{:.0} years", s / (365.25 * DAY)),
    }
}

/// How far ahead of the wall clock an accepted stamp may be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClockBound {
    pub max_offset_ms: u64,
}

impl Default for ClockBound {
    fn default() -> ClockBound {
        ClockBound {
            max_offset_ms: DEFAULT_MAX_CLOCK_OFFSET.as_millis() as u64,
        }
    }
}

impl ClockBound {
    /// The latest stamp acceptable while the wall clock reads `wall_millis`.
    pub fn ceiling(self, wall_millis: u64) -> Stamp {
        let latest = Stamp::from_unix_millis(wall_millis.saturating_add(self.max_offset_ms));
        Stamp(latest.0 | ((1 << COUNTER_BITS) - 1))
    }

    /// Refuses a stamp further ahead of `wall_millis` than the bound.
    pub fn check(self, stamp: Stamp, wall_millis: u64) -> Result<(), FutureStamp> {
        if stamp <= self.ceiling(wall_millis) {
            return Ok(());
        }
        Err(FutureStamp {
            ahead_ms: stamp.unix_millis().saturating_sub(wall_millis),
            max_offset_ms: self.max_offset_ms,
        })
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
    /// `wall_millis`; `None` once the clock has issued the last stamp there is.
    pub fn tick(&mut self, wall_millis: u64) -> Option<Stamp> {
        self.last = Stamp::from_unix_millis(wall_millis).max(self.last.next()?);
        Some(self.last)
    }

    /// Catches up with a stamp seen elsewhere, so later ticks come after it, but never
    /// beyond `ceiling`: one stamp from the future cannot drag this clock along.
    pub fn observe(&mut self, seen: Stamp, ceiling: Stamp) {
        self.last = self.last.max(seen.min(ceiling));
    }
}

/// Unix seconds as `YYYY-MM-DDTHH:MM:SSZ`, total over every `u64` (no panic past 9999).
pub fn rfc3339_seconds(unix_seconds: u64) -> String {
    let days = unix_seconds / 86_400;
    let secs = unix_seconds % 86_400;
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

/// The proleptic Gregorian date of a day count since 1970-01-01 (Howard Hinnant's
/// `civil_from_days`, for non-negative days).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_follow_the_wall_clock() {
        let mut hlc = Hlc::default();
        let a = hlc.tick(1_000).unwrap();
        assert_eq!(a.unix_millis(), 1_000);
        let b = hlc.tick(2_000).unwrap();
        assert_eq!(b.unix_millis(), 2_000);
    }

    #[test]
    fn never_runs_backwards_when_the_wall_clock_does() {
        let mut hlc = Hlc::default();
        let a = hlc.tick(5_000).unwrap();
        let b = hlc.tick(4_000).unwrap();
        let c = hlc.tick(5_000).unwrap();
        assert!(a < b && b < c);
        assert_eq!(c.unix_millis(), 5_000);
    }

    #[test]
    fn observed_stamps_push_the_clock_forward_but_not_past_the_ceiling() {
        let bound = ClockBound::default();
        let mut hlc = Hlc::default();
        hlc.observe(Stamp::from_unix_seconds(100), bound.ceiling(1_000_000));
        assert!(hlc.tick(1).unwrap() > Stamp::from_unix_seconds(100));
        let far = Stamp::from_unix_seconds(10_000_000);
        hlc.observe(far, bound.ceiling(1_000_000));
        let next = hlc.tick(1_000_000).unwrap();
        assert!(next < far, "one future stamp must not drag the clock along");
        assert!(next.unix_millis() <= 1_000_000 + bound.max_offset_ms + 1);
    }

    #[test]
    fn the_bound_refuses_only_what_is_too_far_ahead() {
        let bound = ClockBound {
            max_offset_ms: 60_000,
        };
        let now = 1_700_000_000_000;
        assert!(bound
            .check(Stamp::from_unix_millis(now + 60_000), now)
            .is_ok());
        assert!(bound
            .check(Stamp::from_unix_millis(now - 86_400_000), now)
            .is_ok());
        let refused = bound
            .check(Stamp::from_unix_millis(now + 61_000), now)
            .unwrap_err();
        assert_eq!(refused.ahead_ms, 61_000);
        assert!(refused.to_string().contains("61.0 s ahead"), "{refused}");
        let far = bound
            .check(Stamp::from_unix_seconds(99_999_999_999), now)
            .unwrap_err();
        assert!(far.to_string().contains("years ahead"), "{far}");
    }

    #[test]
    fn the_last_stamp_has_no_next() {
        assert_eq!(Stamp(u64::MAX).next(), None);
        let mut hlc = Hlc::default();
        hlc.observe(Stamp(u64::MAX), Stamp(u64::MAX));
        assert_eq!(hlc.tick(0), None);
    }

    #[test]
    fn every_stamp_formats_without_panicking() {
        assert_eq!(rfc3339_seconds(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339_seconds(1_739_123_456), "2025-02-09T17:50:56Z");
        assert_eq!(rfc3339_seconds(253_402_300_799), "9999-12-31T23:59:59Z");
        assert_eq!(rfc3339_seconds(253_402_300_800), "10000-01-01T00:00:00Z");
        assert!(Stamp(u64::MAX).to_rfc3339().starts_with("10889-"));
        assert!(!rfc3339_seconds(u64::MAX).is_empty());
        // The same as a well-known formatter wherever that one works.
        for seconds in (0..253_402_300_799u64).step_by(987_654_321) {
            let time = std::time::UNIX_EPOCH + Duration::from_secs(seconds);
            assert_eq!(
                rfc3339_seconds(seconds),
                humantime::format_rfc3339_seconds(time).to_string()
            );
        }
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
    fn seconds_round_trip() {
        assert_eq!(
            Stamp::from_unix_seconds(1_739_123_456).unix_seconds(),
            1_739_123_456
        );
    }
}
