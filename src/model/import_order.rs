//! The order in which a version brought by a bridge message or a SQLite row replaces the one
//! the replica holds (docs/compatibility.md, "Equal `ts`").
//!
//! The reference formats stamp in whole seconds (a fractional `ts` keeps its milliseconds),
//! so two updates of one key often carry the same `ts`. Versions are ordered by the instant
//! they name, then by the writer they name; at the same instant and writer the later arrival
//! wins, since one writer's messages reach a node in the order it sent them. Only a version
//! identical to the held one (same instant, writer and content) is a redelivery. The counter
//! bits of a stamp are never compared: they only carry the arrival order at one instant.

use std::fmt;

use super::{MemoryEntry, Skill, Stamp};

/// A version as the import compares it: the instant and writer its message or row named.
#[derive(Debug, Clone, Copy)]
pub struct Named<'a> {
    pub stamp: Stamp,
    pub writer: &'a str,
}

impl<'a> From<&'a MemoryEntry> for Named<'a> {
    /// The writer the formats name (`named_writer`): the claim of an imported version.
    fn from(entry: &'a MemoryEntry) -> Self {
        Named {
            stamp: entry.updated_at,
            writer: entry.named_writer(),
        }
    }
}

impl<'a> From<&'a Skill> for Named<'a> {
    fn from(skill: &'a Skill) -> Self {
        Named {
            stamp: skill.updated_at,
            writer: &skill.source_node,
        }
    }
}

/// What becomes of an imported version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// It replaces the held version, stored with this stamp: its own, or the one right after
    /// the held version's when that is not smaller (an equal instant).
    Apply(Stamp),
    /// The held version is this very one (a message delivered again): nothing to do.
    Held,
    /// It is not applied, for this reason.
    NotApplied(NotApplied),
}

/// Why an imported version is not applied; the text names the held version's time and writer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotApplied {
    /// The held version names a later instant.
    Older { held: Stamp, writer: String },
    /// Both name the same instant, and the held writer's id is greater.
    TieLost { held: Stamp, writer: String },
    /// The held version is stamped at the last instant a stamp can carry.
    EndOfTime,
}

impl fmt::Display for NotApplied {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NotApplied::Older { held, writer } => write!(
                f,
                "not applied: the replica holds a newer version (ts {} from {writer})",
                ts_text(*held)
            ),
            NotApplied::TieLost { held, writer } => write!(
                f,
                "not applied: the replica holds a version with the same ts ({}) from {writer}, \
                 and at an equal ts the greater node id wins",
                ts_text(*held)
            ),
            NotApplied::EndOfTime => f.write_str(
                "not applied: the held version is stamped at the last time a stamp can carry",
            ),
        }
    }
}

/// A stamp as the formats' `ts`: seconds, with milliseconds when it has them.
fn ts_text(stamp: Stamp) -> String {
    let millis = stamp.unix_millis();
    match millis % 1000 {
        0 => (millis / 1000).to_string(),
        rest => format!("{}.{rest:03}", millis / 1000),
    }
}

/// Judges `incoming` against the version the replica holds (`None`: nothing held);
/// `same_content` says whether the two carry the same value (and neither is a deletion).
pub fn judge(incoming: Named<'_>, held: Option<Named<'_>>, same_content: bool) -> Verdict {
    let Some(held) = held else {
        return Verdict::Apply(incoming.stamp);
    };
    let not_applied = |why: fn(Stamp, String) -> NotApplied| {
        Verdict::NotApplied(why(held.stamp, held.writer.to_string()))
    };
    let instant = incoming.stamp.unix_millis().cmp(&held.stamp.unix_millis());
    match instant.then_with(|| incoming.writer.cmp(held.writer)) {
        std::cmp::Ordering::Less if instant.is_lt() => {
            not_applied(|held, writer| NotApplied::Older { held, writer })
        }
        std::cmp::Ordering::Less => {
            not_applied(|held, writer| NotApplied::TieLost { held, writer })
        }
        std::cmp::Ordering::Equal if same_content => Verdict::Held,
        _ if incoming.stamp > held.stamp => Verdict::Apply(incoming.stamp),
        _ => match held.stamp.next() {
            Some(after) => Verdict::Apply(after),
            None => Verdict::NotApplied(NotApplied::EndOfTime),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: u64, writer: &str) -> Named<'_> {
        Named {
            stamp: Stamp::from_unix_seconds(seconds),
            writer,
        }
    }

    #[test]
    fn nothing_held_or_a_later_instant_applies_with_its_own_stamp() {
        let incoming = at(100, "ceo");
        assert_eq!(judge(incoming, None, false), Verdict::Apply(incoming.stamp));
        assert_eq!(
            judge(incoming, Some(at(99, "sec")), true),
            Verdict::Apply(incoming.stamp)
        );
    }

    #[test]
    fn the_same_writers_later_arrival_wins_at_an_equal_ts() {
        let held = at(100, "ceo");
        let Verdict::Apply(stamp) = judge(at(100, "ceo"), Some(held), false) else {
            panic!("the second update of the same second must apply");
        };
        assert!(stamp > held.stamp);
        assert_eq!(stamp.unix_seconds(), 100, "it still reads as the same ts");
        // A third update in that second follows the second one.
        let second = Named {
            stamp,
            writer: "ceo",
        };
        let Verdict::Apply(third) = judge(at(100, "ceo"), Some(second), false) else {
            panic!("the third update must apply too");
        };
        assert!(third > stamp);
        // The same message again is held, not a new version.
        assert_eq!(judge(at(100, "ceo"), Some(second), true), Verdict::Held);
    }

    #[test]
    fn across_writers_the_greater_id_wins_an_equal_ts_in_any_order() {
        let lost = judge(at(100, "ceo"), Some(at(100, "sec")), false);
        assert_eq!(
            lost,
            Verdict::NotApplied(NotApplied::TieLost {
                held: Stamp::from_unix_seconds(100),
                writer: "sec".into()
            })
        );
        // The other order: sec replaces ceo, even after ceo's own same-second updates moved
        // its stamp's counter on.
        let bumped = Named {
            stamp: Stamp::from_unix_seconds(100).next().unwrap(),
            writer: "ceo",
        };
        assert!(matches!(
            judge(at(100, "sec"), Some(bumped), false),
            Verdict::Apply(stamp) if stamp > bumped.stamp
        ));
    }

    #[test]
    fn an_older_ts_is_not_applied_and_says_why() {
        let verdict = judge(at(99, "ceo"), Some(at(100, "sec")), false);
        let Verdict::NotApplied(reason) = verdict else {
            panic!("older must not apply");
        };
        assert_eq!(
            reason.to_string(),
            "not applied: the replica holds a newer version (ts 100 from sec)"
        );
        let fractional = Named {
            stamp: Stamp::from_unix_millis(100_250),
            writer: "sec",
        };
        let Verdict::NotApplied(reason) = judge(at(100, "sec"), Some(fractional), false) else {
            panic!("100.000 is before 100.250");
        };
        assert!(
            reason.to_string().contains("ts 100.250 from sec"),
            "{reason}"
        );
        let tie = NotApplied::TieLost {
            held: Stamp::from_unix_seconds(7),
            writer: "sec".into(),
        };
        assert_eq!(
            tie.to_string(),
            "not applied: the replica holds a version with the same ts (7) from sec, and at an \
             equal ts the greater node id wins"
        );
    }

    #[test]
    fn the_end_of_time_is_not_passed() {
        let last = Named {
            stamp: Stamp(u64::MAX),
            writer: "ceo",
        };
        let incoming = Named {
            stamp: Stamp(!0xffff),
            writer: "ceo",
        };
        assert_eq!(
            judge(incoming, Some(last), false),
            Verdict::NotApplied(NotApplied::EndOfTime)
        );
    }
}
