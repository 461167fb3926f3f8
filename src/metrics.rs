//! The daemon's counters for Prometheus (`GET /metrics`, served by `api/metrics.rs`). One
//! `Metrics` handle, made by the daemon and shared (`Arc`) with what counts: the replica
//! (writes acknowledged) and the mesh (sync rounds, refusals). What can be read off the node
//! at any moment (peers connected, documents behind, store size, bytes sent) is not counted
//! here: the API reads it from the node's status at each scrape.
//!
//! Peer labels are the peer's name as the operator chose it, or its id; the counters keep
//! node ids and take the label only at scrape time, so a renamed peer keeps its counts. Only
//! peers in the peer list get a series: the number of series is bounded by the peer list,
//! never by what a stranger sends.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

use crate::model::NodeId;

/// What the daemon counts since it started.
#[derive(Debug, Default)]
pub struct Metrics {
    writes: Counter,
    commits: Counter,
    rounds: Mutex<HashMap<NodeId, u64>>,
    refusals: Family<ReasonLabel, Counter>,
}

/// The label of a series about one peer.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PeerLabel {
    pub peer: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: Refusal,
}

/// Why this node refused a peer: a bounded set, so the reason's words (which name documents
/// and amounts) never become label values.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum Refusal {
    /// The peer changed a document its access patterns do not let it write.
    MayNotWrite,
    /// The peer's changes are stamped too far ahead of this node's clock.
    ClockAhead,
    /// This node is read-only (its disk below the reserve, or a failed write).
    ReadOnly,
    /// A reason this list does not know yet.
    Other,
    /// A node id not in the peer list tried to connect (`meshd peers pending`).
    UnknownNode,
}

impl Refusal {
    /// Every kind: each has a series from the start, at 0, so that a rate is defined before
    /// the first refusal.
    const ALL: [Refusal; 5] = [
        Refusal::MayNotWrite,
        Refusal::ClockAhead,
        Refusal::ReadOnly,
        Refusal::Other,
        Refusal::UnknownNode,
    ];

    /// The kind of a refusal of a peer's changes, from the reason the session gives it (the
    /// sync protocol carries reasons as words; `tests` pins each one to its source).
    pub fn of_changes(reason: &str) -> Refusal {
        if reason.contains("may not write") {
            Refusal::MayNotWrite
        } else if reason.contains("ahead of this node's clock") {
            Refusal::ClockAhead
        } else if reason.contains("the node is read-only") || reason.contains("failed a write") {
            Refusal::ReadOnly
        } else {
            Refusal::Other
        }
    }

    fn label(self) -> &'static str {
        match self {
            Refusal::MayNotWrite => "may_not_write",
            Refusal::ClockAhead => "clock_ahead",
            Refusal::ReadOnly => "read_only",
            Refusal::Other => "other",
            Refusal::UnknownNode => "unknown_node",
        }
    }
}

impl EncodeLabelValue for Refusal {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        std::fmt::Write::write_str(encoder, self.label())
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

impl Metrics {
    /// `count` local writes (memory versions and skill versions from the API, the control
    /// socket, the bridge, imports) are durable and acknowledged.
    pub fn writes_acknowledged(&self, count: usize) {
        self.writes.inc_by(count as u64);
    }

    /// The store made changes durable with one commit (one flush): local writes grouped
    /// together, or changes from peers gathered from several messages.
    pub fn store_committed(&self) {
        self.commits.inc();
    }

    /// A sync round with `peer` completed.
    pub fn sync_round(&self, peer: NodeId) {
        *lock(&self.rounds).entry(peer).or_default() += 1;
    }

    pub fn refused(&self, why: Refusal) {
        self.refusals
            .get_or_create(&ReasonLabel { reason: why })
            .inc();
    }

    /// Registers the counters in `registry`, the per-peer ones under the label `label` gives
    /// each peer (`None`: not a peer any more, no series).
    pub fn register(&self, registry: &mut Registry, label: impl Fn(&NodeId) -> Option<PeerLabel>) {
        registry.register(
            "writes_acknowledged",
            "Local writes (memory and skill versions) made durable and acknowledged",
            self.writes.clone(),
        );
        registry.register(
            "store_commits",
            "Commits that made changes durable, one flush each (writes and changes from peers \
             committed together count once)",
            self.commits.clone(),
        );
        let rounds = Family::<PeerLabel, Counter>::default();
        for (peer, count) in lock(&self.rounds).iter() {
            if let Some(label) = label(peer) {
                rounds.get_or_create(&label).inc_by(*count);
            }
        }
        registry.register(
            "sync_rounds",
            "Sync rounds completed with each peer",
            rounds,
        );
        for reason in Refusal::ALL {
            self.refusals
                .get_or_create(&ReasonLabel { reason })
                .inc_by(0);
        }
        registry.register(
            "refusals",
            "Peer changes refused and connections refused at the handshake, by reason",
            self.refusals.clone(),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::hlc::FutureStamp;

    fn text(metrics: &Metrics, label: impl Fn(&NodeId) -> Option<PeerLabel>) -> String {
        let mut registry = Registry::with_prefix("meshd");
        metrics.register(&mut registry, label);
        let mut out = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut out, &registry).unwrap();
        out
    }

    #[test]
    fn each_refusal_reason_has_its_kind() {
        let clock = FutureStamp {
            ahead_ms: 3_600_000,
            max_offset_ms: 60_000,
        };
        let below = crate::replica::space::BelowReserve {
            path: "/store".into(),
            free: 1,
            reserve: 2,
        };
        let failed = crate::replica::ReplicaError::Failed("disk gone".into());
        for (reason, kind) in [
            (
                "peer abc may not write node:x on this node".to_string(),
                Refusal::MayNotWrite,
            ),
            (clock.to_string(), Refusal::ClockAhead),
            (below.to_string(), Refusal::ReadOnly),
            (failed.to_string(), Refusal::ReadOnly),
            ("something new".to_string(), Refusal::Other),
        ] {
            assert_eq!(Refusal::of_changes(&reason), kind, "{reason}");
        }
    }

    #[test]
    fn peers_are_labelled_at_scrape_time_and_names_are_escaped() {
        let metrics = Metrics::default();
        let (named, gone) = (
            NodeId::from_public_key(b"named"),
            NodeId::from_public_key(b"gone"),
        );
        metrics.sync_round(named);
        metrics.sync_round(named);
        metrics.sync_round(gone);
        metrics.writes_acknowledged(3);
        metrics.refused(Refusal::UnknownNode);
        let out = text(&metrics, |id| {
            (*id == named).then(|| PeerLabel {
                peer: "a \"quoted\"\\name\n".into(),
            })
        });
        assert!(out.contains("meshd_writes_acknowledged_total 3\n"), "{out}");
        assert!(
            out.contains("meshd_sync_rounds_total{peer=\"a \\\"quoted\\\"\\\\name\\n\"} 2\n"),
            "{out}"
        );
        assert_eq!(out.matches("meshd_sync_rounds_total{").count(), 1, "{out}");
        assert!(
            out.contains("meshd_refusals_total{reason=\"clock_ahead\"} 0\n"),
            "every reason from the start: {out}"
        );
        assert!(
            out.contains("meshd_refusals_total{reason=\"unknown_node\"} 1\n"),
            "{out}"
        );
    }
}
