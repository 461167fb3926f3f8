//! The clock against the newest stamp in the store.
//!
//! Every write gets a stamp after the version it replaces, so a clock running behind does not
//! lose writes, but its writes then carry a time from the store rather than from the clock,
//! and a node whose clock is far off loses (or wins) last-writer-wins against its peers. A
//! stamp a minute or more ahead of this clock means this clock went back, or the stamp came
//! from a machine whose clock ran ahead before the bound refused such stamps. A stamp more
//! than a day ahead is unlikely to be drift: it is said separately.
//!
//! While the daemon runs, each connected peer's clock is checked too, against the offset the
//! link measures (`meshd status`): more than 10 s apart, the two nodes' writes are ordered by
//! the clocks' error.

use super::{not_checked, Check, NodeFacts};
use crate::model::hlc::rfc3339_seconds;

const CHECK: &str = "clock";
/// A clock this far behind the newest stamp is worth a warning.
const BEHIND_MS: u64 = 60_000;
/// A stamp this far ahead is not drift.
const FAR_AHEAD_MS: u64 = 24 * 3_600_000;
const NTP: &str = "set up NTP (timedatectl set-ntp true)";
/// Peers' clocks this far from ours are worth a warning (as the daemon's log says).
const PEER_SKEW_MS: u64 = 10_000;

pub fn check(node: Option<&NodeFacts>, now_ms: u64) -> Check {
    let Some(node) = node else {
        return not_checked(CHECK);
    };
    let now = rfc3339_seconds(now_ms / 1000);
    let Some(newest) = &node.newest else {
        return Check::ok(CHECK, format!("{now}; the store holds no stamp yet"));
    };
    let stamped = rfc3339_seconds(newest.unix_ms / 1000);
    let ahead = newest.unix_ms.saturating_sub(now_ms);
    if ahead <= BEHIND_MS {
        return Check::ok(
            CHECK,
            format!(
                "{now}, not behind the newest stamp in the store ({} at {stamped})",
                newest.label
            ),
        );
    }
    if ahead <= FAR_AHEAD_MS {
        return Check::warn(
            CHECK,
            format!(
                "{now} is {} behind the newest stamp in the store ({} at {stamped}): this \
                 clock was ahead before, or is behind now",
                span(ahead),
                newest.label
            ),
            NTP,
        );
    }
    Check::warn(
        CHECK,
        format!(
            "the newest stamp in the store ({} at {stamped}) is {} ahead of this clock \
             ({now}): this clock is wrong, or the machine that wrote it had a clock far ahead \
             (that version wins every concurrent write until then)",
            newest.label,
            span(ahead)
        ),
        format!("{NTP}; if `date` is right, check the clock of the node that wrote it"),
    )
}

/// The connected peers' clocks against this one; `None` when no link measured one (the
/// daemon is not running, or no peer is connected).
pub fn check_peers(node: &NodeFacts) -> Option<Check> {
    const CHECK: &str = "peer clocks";
    let measured: Vec<(&str, i64)> = (node.peers.iter())
        .filter_map(|peer| Some((peer.label.as_str(), peer.clock_offset_ms?)))
        .collect();
    if measured.is_empty() {
        return None;
    }
    let skewed: Vec<String> = (measured.iter())
        .filter(|(_, offset)| offset.unsigned_abs() > PEER_SKEW_MS)
        .map(|(label, offset)| {
            let side = if *offset > 0 { "ahead of" } else { "behind" };
            format!(
                "{label}'s is {:.1} s {side} this one",
                offset.abs() as f64 / 1000.0
            )
        })
        .collect();
    if skewed.is_empty() {
        return Some(Check::ok(
            CHECK,
            format!(
                "{} connected peers within 10 s of this clock",
                measured.len()
            ),
        ));
    }
    Some(Check::warn(
        CHECK,
        format!(
            "{}: last-writer-wins orders their writes and this node's by that error, and \
             changes stamped over a minute ahead are refused",
            skewed.join("; ")
        ),
        format!("{NTP} on every node, this one included"),
    ))
}

/// A span as people read it.
fn span(ms: u64) -> String {
    let minutes = ms / 60_000;
    match minutes {
        0..=119 => format!("{minutes} min"),
        120..=2_879 => format!("{} h", minutes / 60),
        _ => format!("{} days", minutes / 1_440),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doctor::{sample_node, NewestStamp, Status};

    const NOW: u64 = 1_795_325_958_000;

    fn newest(unix_ms: u64) -> NodeFacts {
        NodeFacts {
            newest: Some(NewestStamp {
                label: "mesh:deploy.window".into(),
                unix_ms,
            }),
            ..sample_node()
        }
    }

    #[test]
    fn a_clock_after_the_newest_stamp_or_within_a_minute_of_it_is_ok() {
        assert_eq!(check(Some(&newest(NOW - 5_000)), NOW).status, Status::Ok);
        assert_eq!(check(Some(&newest(NOW + 60_000)), NOW).status, Status::Ok);
        assert_eq!(check(Some(&sample_node()), NOW).status, Status::Ok);
    }

    #[test]
    fn a_clock_more_than_a_minute_behind_warns_with_ntp() {
        let check = check(Some(&newest(NOW + 5 * 60_000)), NOW);
        assert_eq!(check.status, Status::Warn);
        assert!(check.finding.contains("5 min behind"), "{check:?}");
        assert!(check.finding.contains("mesh:deploy.window"), "{check:?}");
        assert_eq!(check.fix.as_deref(), Some(NTP));
    }

    #[test]
    fn a_stamp_far_in_the_future_is_named_as_such() {
        let check = check(Some(&newest(NOW + 400 * 86_400_000)), NOW);
        assert_eq!(check.status, Status::Warn);
        assert!(check.finding.contains("400 days ahead"), "{check:?}");
        assert!(check.fix.unwrap().starts_with(NTP));
    }

    fn with_peer_clocks(offsets: &[Option<i64>]) -> NodeFacts {
        let peers = (offsets.iter().enumerate())
            .map(|(i, offset)| crate::doctor::PeerFacts {
                id: format!("id{i}"),
                label: format!("peer{i}"),
                addresses: Vec::new(),
                last_sync: None,
                connected: offset.is_some(),
                link_failure: None,
                refused: None,
                unreachable: None,
                clock_offset_ms: *offset,
            })
            .collect();
        NodeFacts {
            peers,
            ..sample_node()
        }
    }

    #[test]
    fn peer_clocks_more_than_ten_seconds_off_warn_and_name_the_peer() {
        let check = check_peers(&with_peer_clocks(&[Some(400), Some(-42_000), None])).unwrap();
        assert_eq!(check.status, Status::Warn);
        assert!(
            check.finding.contains("peer1's is 42.0 s behind"),
            "{check:?}"
        );
        assert!(!check.finding.contains("peer0"), "{check:?}");
        let fine = check_peers(&with_peer_clocks(&[Some(400), Some(-9_000)])).unwrap();
        assert_eq!(fine.status, Status::Ok);
        assert!(check_peers(&with_peer_clocks(&[None])).is_none());
    }

    #[test]
    fn without_the_store_it_is_not_checked() {
        assert_eq!(check(None, NOW).status, Status::Warn);
    }
}
