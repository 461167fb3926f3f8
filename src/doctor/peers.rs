//! Each configured peer: its addresses resolve, and while the daemon runs, it is connected,
//! or the reason it is not.

use serde::{Deserialize, Serialize};

use super::{not_checked, Check, NodeFacts};
use crate::model::hlc::rfc3339_seconds;
use crate::peers::{DialFailure, LinkFailure, PeerRefusal};

/// A peer as the store and the running mesh see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerFacts {
    pub id: String,
    /// Its name, else its id.
    pub label: String,
    pub addresses: Vec<String>,
    /// Unix seconds of the last completed round.
    pub last_sync: Option<u64>,
    /// Meaningful only while the daemon runs.
    pub connected: bool,
    pub link_failure: Option<LinkFailure>,
    pub refused: Option<PeerRefusal>,
    /// Why this node's latest dial to it failed, per address, while it does.
    #[serde(default)]
    pub unreachable: Option<DialFailure>,
    /// How far its clock is ahead of this node's, while a link is up.
    #[serde(default)]
    pub clock_offset_ms: Option<i64>,
}

/// What the resolver said of one peer address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolution {
    pub address: String,
    /// `Err`: why it does not resolve.
    pub result: Result<(), String>,
}

pub fn check(node: Option<&NodeFacts>, resolved: &[Resolution]) -> Vec<Check> {
    let Some(node) = node else {
        return vec![not_checked("peers")];
    };
    if node.peers.is_empty() {
        return vec![Check::ok(
            "peers",
            "none yet (meshd peers add ID HOST:PORT pairs one)",
        )];
    }
    node.peers
        .iter()
        .map(|peer| check_peer(node, peer, resolved))
        .collect()
}

fn check_peer(node: &NodeFacts, peer: &PeerFacts, resolved: &[Resolution]) -> Check {
    let name = format!("peer {}", peer.label);
    let unresolved: Vec<String> = peer
        .addresses
        .iter()
        .filter_map(|address| {
            let found = resolved.iter().find(|r| &r.address == address)?;
            found
                .result
                .as_ref()
                .err()
                .map(|error| format!("{address} does not resolve ({error})"))
        })
        .collect();
    let readdress = format!(
        "meshd peers add {} NEW_HOST:PORT (with --address for more)",
        peer.id
    );
    let last_sync = peer.last_sync.map_or("never".to_string(), rfc3339_seconds);
    let refused = peer
        .refused
        .as_ref()
        .map(|r| {
            format!(
                "; its changes to {} were refused at {}: {}",
                r.doc,
                rfc3339_seconds(r.at),
                r.reason
            )
        })
        .unwrap_or_default();
    let connected = node.running && peer.connected;
    if !unresolved.is_empty() {
        let all = unresolved.len() == peer.addresses.len();
        let finding = match connected {
            true => format!("connected (it dialed in), but {}", unresolved.join("; ")),
            false if all => format!("no address resolves: {}", unresolved.join("; ")),
            false => format!("{} (the others are tried)", unresolved.join("; ")),
        };
        return match all && !connected {
            true => Check::fail(name, finding, readdress),
            false => Check::warn(name, finding, readdress),
        };
    }
    if !node.running {
        return Check::ok(
            name,
            format!(
                "{} resolves (connections are checked while the daemon runs); last sync {last_sync}",
                peer.addresses.join(", ")
            ),
        );
    }
    let dial = peer.unreachable.as_ref().map(|failure| {
        let reasons: Vec<String> = failure
            .addresses
            .iter()
            .map(|a| format!("{}: {}", a.address, a.reason))
            .collect();
        format!(
            "dialing it failed at {}: {}",
            rfc3339_seconds(failure.at),
            reasons.join("; ")
        )
    });
    if connected {
        if let Some(dial) = &dial {
            return Check::warn(
                name,
                format!("connected (it dialed in), but {dial}{refused}"),
                readdress,
            );
        }
        if refused.is_empty() {
            return Check::ok(name, format!("connected, last sync {last_sync}"));
        }
        return Check::warn(
            name,
            format!("connected, last sync {last_sync}{refused}"),
            "make the access lists of both sides match (operator guide, section 11), or fix \
             the clock of the node that wrote the change",
        );
    }
    if let Some(failure) = &peer.link_failure {
        return Check::fail(
            name,
            format!(
                "disconnected: its links keep failing ({} in a row, the latest at {}): {}{refused}",
                failure.failures,
                rfc3339_seconds(failure.at),
                failure.reason
            ),
            "act on the reason; make both nodes run the same meshd version, and read the \
             peer's log for its side",
        );
    }
    let pair = format!(
        "on that node: meshd peers add {} <this node's HOST:PORT> (or meshd invite here, \
         meshd join there)",
        node.node_id
    );
    let Some(dial) = dial else {
        return Check::warn(
            name,
            format!(
                "disconnected, last sync {last_sync} (tried {}): it is down, unreachable, or \
                 has not added this node{refused}",
                peer.addresses.join(", ")
            ),
            format!(
                "{pair}; make sure it runs and its UDP port is open (operator guide, section 6)"
            ),
        );
    };
    let reasons = peer.unreachable.iter().flat_map(|f| &f.addresses);
    let fix = match reasons.map(|a| a.reason.as_str()).collect::<Vec<_>>() {
        r if r.iter().any(|r| r.starts_with("refused by the peer")) => pair,
        r if r.iter().any(|r| r.starts_with("another node answered")) => readdress,
        _ => {
            "make sure it runs at that address and its UDP port is open (operator guide, \
              section 6); a wrong address: "
                .to_string()
                + &readdress
        }
    };
    Check::warn(
        name,
        format!("disconnected, last sync {last_sync}; {dial}{refused}"),
        fix,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doctor::{sample_node, Status};

    fn peer(addresses: &[&str]) -> PeerFacts {
        PeerFacts {
            id: "ni6yvoglwp7-qu24xlo3ddi-3h7y7s3pw7z".into(),
            label: "sec".into(),
            addresses: addresses.iter().map(|a| a.to_string()).collect(),
            last_sync: None,
            connected: false,
            link_failure: None,
            refused: None,
            unreachable: None,
            clock_offset_ms: None,
        }
    }

    fn with(peer: PeerFacts, running: bool) -> NodeFacts {
        NodeFacts {
            running,
            peers: vec![peer],
            ..sample_node()
        }
    }

    fn resolves(address: &str) -> Resolution {
        Resolution {
            address: address.into(),
            result: Ok(()),
        }
    }

    fn fails(address: &str) -> Resolution {
        Resolution {
            address: address.into(),
            result: Err("failed to lookup address information".into()),
        }
    }

    #[test]
    fn an_address_that_does_not_resolve_fails_with_peers_add() {
        let node = with(peer(&["nas.invalid:7464"]), false);
        let checks = check(Some(&node), &[fails("nas.invalid:7464")]);
        assert_eq!(checks.len(), 1);
        assert_eq!(checks[0].status, Status::Fail);
        assert_eq!(checks[0].check, "peer sec");
        assert!(checks[0]
            .finding
            .contains("nas.invalid:7464 does not resolve"));
        assert!(checks[0]
            .fix
            .as_deref()
            .unwrap()
            .starts_with("meshd peers add ni6yvoglwp7-qu24xlo3ddi-3h7y7s3pw7z NEW_HOST:PORT"));
    }

    #[test]
    fn one_bad_address_among_good_ones_warns() {
        let node = with(peer(&["nas.invalid:7464", "192.168.1.20:7464"]), false);
        let resolved = [fails("nas.invalid:7464"), resolves("192.168.1.20:7464")];
        assert_eq!(check(Some(&node), &resolved)[0].status, Status::Warn);
    }

    #[test]
    fn without_the_daemon_resolving_is_enough() {
        let node = with(peer(&["192.168.1.20:7464"]), false);
        let checks = check(Some(&node), &[resolves("192.168.1.20:7464")]);
        assert_eq!(checks[0].status, Status::Ok);
        assert!(checks[0].finding.contains("while the daemon runs"));
    }

    #[test]
    fn with_the_daemon_a_connected_peer_is_ok_and_a_silent_one_warns() {
        let mut connected = peer(&["192.168.1.20:7464"]);
        connected.connected = true;
        connected.last_sync = Some(1_795_325_958);
        let resolved = [resolves("192.168.1.20:7464")];
        let checks = check(Some(&with(connected, true)), &resolved);
        assert_eq!(checks[0].status, Status::Ok);
        assert!(checks[0].finding.contains("2026-11-22T05:39:18Z"));

        let checks = check(Some(&with(peer(&["192.168.1.20:7464"]), true)), &resolved);
        assert_eq!(checks[0].status, Status::Warn);
        assert!(checks[0].finding.starts_with("disconnected"));
        assert!(checks[0]
            .fix
            .as_deref()
            .unwrap()
            .contains("meshd peers add aaaaaaaaaaa-bbbbbbbbbbb-ccccccccccc"));
    }

    #[test]
    fn a_failed_dial_gives_its_reason_and_the_fix_it_calls_for() {
        use crate::peers::AddressFailure;
        let failed = |reason: &str| {
            let mut silent = peer(&["192.168.1.20:7464"]);
            silent.unreachable = Some(DialFailure {
                at: 1_795_325_958,
                addresses: vec![AddressFailure {
                    address: "192.168.1.20:7464".into(),
                    reason: reason.into(),
                }],
            });
            check(Some(&with(silent, true)), &[resolves("192.168.1.20:7464")]).remove(0)
        };
        let refused = failed("refused by the peer: this node is not in its peer list");
        assert_eq!(refused.status, Status::Warn);
        assert!(refused
            .finding
            .contains("192.168.1.20:7464: refused by the peer"));
        assert!(refused
            .fix
            .unwrap()
            .starts_with("on that node: meshd peers add aaaaaaaaaaa"));
        let other = failed("another node answered at that address (xyz)");
        assert!(other
            .fix
            .unwrap()
            .starts_with("meshd peers add ni6yvoglwp7"));
        let silent = failed("timed out: nothing answered");
        assert!(silent.finding.contains("timed out"), "{silent:?}");
        assert!(silent.fix.unwrap().contains("UDP port is open"));
    }

    #[test]
    fn a_link_that_keeps_failing_fails_with_its_reason() {
        let mut failing = peer(&["192.168.1.20:7464"]);
        failing.link_failure = Some(LinkFailure {
            at: 1_795_325_958,
            reason: "closed by peer: peer sent a bad change bundle".into(),
            failures: 4,
        });
        let checks = check(Some(&with(failing, true)), &[resolves("192.168.1.20:7464")]);
        assert_eq!(checks[0].status, Status::Fail);
        assert!(checks[0].finding.contains("4 in a row"));
        assert!(checks[0].finding.contains("bad change bundle"));
    }

    #[test]
    fn refused_changes_warn_even_when_connected() {
        let mut refused = peer(&["192.168.1.20:7464"]);
        refused.connected = true;
        refused.refused = Some(PeerRefusal {
            at: 1_795_325_958,
            doc: "mesh".into(),
            reason: "peer may not write mesh on this node".into(),
        });
        let checks = check(Some(&with(refused, true)), &[resolves("192.168.1.20:7464")]);
        assert_eq!(checks[0].status, Status::Warn);
        assert!(checks[0].finding.contains("may not write mesh"));
    }

    #[test]
    fn no_peers_is_one_ok_line() {
        let checks = check(Some(&sample_node()), &[]);
        assert_eq!(checks.len(), 1);
        assert_eq!(checks[0].status, Status::Ok);
    }
}
