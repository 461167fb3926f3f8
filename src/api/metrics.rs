//! `GET /metrics`: the daemon's counters (`crate::metrics`) and, computed at each scrape from
//! the node's status (what `meshd status` shows) and its disk, the gauges; in the Prometheus
//! text format (0.0.4), encoded by prometheus-client, which escapes label values.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::atomic::AtomicU64;

use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::prometheus_text;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::{node, ApiState, HttpError};
use crate::control::{NodeStatus, PeerStatus};
use crate::metrics::{Metrics, PeerLabel};
use crate::model::NodeId;

/// A gauge per peer, read off its `PeerStatus`; `None` leaves the peer out. A new field of
/// `PeerStatus` becomes a gauge with one line here.
type PeerGauge = (&'static str, &'static str, fn(&PeerStatus) -> Option<f64>);

const PEER_GAUGES: &[PeerGauge] = &[
    (
        "peer_connected",
        "1 while a link to the peer is up, else 0",
        |p| Some(f64::from(u8::from(p.connected))),
    ),
    (
        "peer_documents_behind",
        "Documents the peer may read whose state here differs from what it last confirmed",
        |p| Some(p.documents_behind as f64),
    ),
    (
        "peer_changes_behind",
        "Changes held here, in documents the peer may read, that it has not confirmed; absent \
         before the first round with it",
        |p| p.changes_behind.map(|n| n as f64),
    ),
    (
        "peer_rtt_milliseconds",
        "QUIC's smoothed round-trip time to the peer, while a link is up",
        |p| p.link.as_ref().map(|link| link.rtt_ms as f64),
    ),
    (
        "peer_changes_awaited",
        "Changes the peer holds, in documents it lets this node read, that this node has not \
         received, as the peer counted them when it last opened a round (0 once a round \
         completes); while a link is up",
        |p| p.link.as_ref()?.changes_awaited.map(|n| n as f64),
    ),
    (
        "peer_clock_offset_milliseconds",
        "How far the peer's clock is ahead of this node's (negative: behind), estimated at its \
         latest round; while a link is up",
        |p| p.link.as_ref()?.clock_offset_ms.map(|ms| ms as f64),
    ),
    (
        "peer_unreachable",
        "1 while this node's latest dial to the peer found no address that worked, else 0",
        |p| Some(f64::from(u8::from(p.unreachable.is_some()))),
    ),
];

/// A gauge of the node, read off its status and its disk at scrape time.
type NodeGauge = (
    &'static str,
    &'static str,
    fn(&NodeStatus, &Disk) -> Option<f64>,
);

const NODE_GAUGES: &[NodeGauge] = &[
    (
        "store_size_bytes",
        "Bytes of the store's files on disk",
        |_, disk| disk.store_bytes.map(|b| b as f64),
    ),
    (
        "store_free_bytes",
        "Bytes free for meshd on the file system holding the store",
        |_, disk| disk.free_bytes.map(|b| b as f64),
    ),
    (
        "read_only",
        "1 while the node refuses writes (GET /mesh/status says why), else 0",
        |status, _| Some(f64::from(u8::from(status.read_only.is_some()))),
    ),
    (
        "documents_in_memory",
        "Documents loaded now (to be written or synced; reads load none)",
        |status, _| Some(status.in_memory.documents as f64),
    ),
    (
        "documents_in_memory_estimated_bytes",
        "The estimated memory of the documents loaded now",
        |status, _| Some(status.in_memory.estimated_bytes as f64),
    ),
    (
        "memory_budget_bytes",
        "The memory budget of loaded documents ([store] memory_budget_mb)",
        |status, _| Some(status.in_memory.budget_bytes as f64),
    ),
    (
        "document_loads",
        "Documents read from the store since it opened: climbing with the writes, the budget \
         holds fewer documents than they touch",
        |status, _| Some(status.in_memory.loads as f64),
    ),
    ("memory_entries", "Live memory entries", |status, _| {
        Some(status.memory_entries as f64)
    }),
    ("skills", "Live skills", |status, _| {
        Some(status.skills as f64)
    }),
    (
        "conflicts",
        "Memory keys and skills holding concurrent versions (GET /mesh/conflicts lists them)",
        |status, _| Some(status.conflicts as f64),
    ),
];

/// The store's disk, measured at scrape time; `None` where it cannot be read.
pub struct Disk {
    store_bytes: Option<u64>,
    free_bytes: Option<u64>,
}

impl Disk {
    fn measure(store: &Path) -> Disk {
        Disk {
            store_bytes: bytes_under(store).ok(),
            free_bytes: fs2::available_space(store).ok(),
        }
    }
}

/// The bytes of the files under `dir` (sled keeps a handful: its log, snapshots, blobs).
fn bytes_under(dir: &Path) -> std::io::Result<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        if kind.is_dir() {
            total += bytes_under(&entry.path())?;
        } else if kind.is_file() {
            total += entry.metadata()?.len();
        }
    }
    Ok(total)
}

/// `GET /metrics`.
pub async fn metrics(State(state): State<ApiState>) -> Result<Response, HttpError> {
    let view = node::view(&state)?;
    let replica = state.replica.clone();
    let text = tokio::task::spawn_blocking(move || {
        let status = view.status()?;
        let store = replica.with(|replica| replica.store_path().to_path_buf());
        render(&view.metrics, &status, &Disk::measure(&store))
    })
    .await
    .map_err(|e| HttpError::internal(e.to_string()))??;
    Ok(([(CONTENT_TYPE, prometheus_text::CONTENT_TYPE)], text).into_response())
}

/// The whole exposition: the counters, then the gauges of this scrape.
pub fn render(metrics: &Metrics, status: &NodeStatus, disk: &Disk) -> Result<String, HttpError> {
    let labels = peer_labels(&status.peers);
    let mut registry = Registry::with_prefix("meshd");
    metrics.register(&mut registry, |id| labels.get(id).cloned());
    let labelled =
        || (status.peers.iter()).filter_map(|peer| Some((labels.get(&peer.peer.id)?, peer)));
    let sent = Family::<PeerLabel, Counter>::default();
    for (label, peer) in labelled() {
        sent.get_or_create(label).inc_by(peer.bytes_sent);
    }
    registry.register(
        "bytes_sent",
        "UDP bytes sent to each peer since the daemon started",
        sent,
    );
    for (name, help, read) in PEER_GAUGES {
        let family = Family::<PeerLabel, Gauge<f64, AtomicU64>>::default();
        for (label, peer) in labelled() {
            if let Some(value) = read(peer) {
                family.get_or_create(label).set(value);
            }
        }
        registry.register(*name, *help, family);
    }
    for (name, help, read) in NODE_GAUGES {
        if let Some(value) = read(status, disk) {
            let gauge = Gauge::<f64, AtomicU64>::default();
            gauge.set(value);
            registry.register(*name, *help, gauge);
        }
    }
    let mut text = String::new();
    prometheus_text::encode(&mut text, &registry)
        .map_err(|_| HttpError::internal("the metrics could not be encoded"))?;
    Ok(text)
}

/// Each peer's label: its name when it has one no other peer shares (nor has as its id),
/// else its id, so that two peers never share a series.
fn peer_labels(peers: &[PeerStatus]) -> HashMap<NodeId, PeerLabel> {
    let mut seen = HashSet::new();
    let mut shared = HashSet::new();
    let ids: HashSet<String> = peers.iter().map(|p| p.peer.id.to_string()).collect();
    for name in peers.iter().filter_map(|p| p.peer.name.as_deref()) {
        if !seen.insert(name) || ids.contains(name) {
            shared.insert(name);
        }
    }
    (peers.iter())
        .map(|status| {
            let peer = &status.peer;
            let label = match peer.name.as_deref() {
                Some(name) if !name.is_empty() && !shared.contains(name) => name.to_string(),
                _ => peer.id.to_string(),
            };
            (peer.id, PeerLabel { peer: label })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::InMemory;
    use crate::model::access::Access;
    use crate::peers::Peer;

    fn peer(seed: &[u8], name: Option<&str>, connected: bool) -> PeerStatus {
        PeerStatus {
            peer: Peer {
                id: NodeId::from_public_key(seed),
                name: name.map(str::to_string),
                addresses: vec![],
                access: Access::default_for_peer(),
                last_sync: None,
            },
            connected,
            documents_behind: 2,
            bytes_sent: 1200,
            refused: None,
            link_failure: None,
            link: None,
            unreachable: None,
            changes_behind: Some(3),
        }
    }

    fn status(peers: Vec<PeerStatus>) -> NodeStatus {
        NodeStatus {
            node_id: "n".into(),
            running: true,
            listen: None,
            bytes_sent: 0,
            documents: 1,
            memory_entries: 7,
            skills: 1,
            conflicts: 0,
            read_only: Some("disk full".into()),
            repair: None,
            peers,
            files: Default::default(),
            in_memory: InMemory {
                documents: 3,
                estimated_bytes: 150_000,
                budget_bytes: 1 << 20,
                loads: 5,
            },
        }
    }

    #[test]
    fn a_shared_or_missing_name_falls_back_to_the_id() {
        let peers = vec![
            peer(b"a", Some("twin"), true),
            peer(b"b", Some("twin"), false),
            peer(b"c", Some("solo"), false),
            peer(b"d", None, false),
        ];
        let labels = peer_labels(&peers);
        let label = |i: usize| labels[&peers[i].peer.id].peer.clone();
        assert_eq!(label(0), peers[0].peer.id.to_string());
        assert_eq!(label(1), peers[1].peer.id.to_string());
        assert_eq!(label(2), "solo");
        assert_eq!(label(3), peers[3].peer.id.to_string());
    }

    #[test]
    fn every_gauge_is_in_the_exposition() {
        let disk = Disk {
            store_bytes: Some(4096),
            free_bytes: None,
        };
        let metrics = Metrics::default();
        let text = render(
            &metrics,
            &status(vec![peer(b"a", Some("nas"), true)]),
            &disk,
        )
        .unwrap();
        for line in [
            "meshd_peer_connected{peer=\"nas\"} 1.0",
            "meshd_peer_documents_behind{peer=\"nas\"} 2.0",
            "meshd_bytes_sent_total{peer=\"nas\"} 1200",
            "meshd_store_size_bytes 4096.0",
            "meshd_read_only 1.0",
            "meshd_memory_entries 7.0",
            "meshd_skills 1.0",
            "meshd_documents_in_memory 3.0",
            "meshd_documents_in_memory_estimated_bytes 150000.0",
            "meshd_memory_budget_bytes 1048576.0",
            "meshd_document_loads 5.0",
            "meshd_writes_acknowledged_total 0",
        ] {
            assert!(text.contains(&format!("{line}\n")), "{line} in:\n{text}");
        }
        assert!(!text.contains("store_free_bytes"), "unknown: left out");
    }
}
