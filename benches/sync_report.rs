//! The sync report: each workload runs through meshd's protocol (two `Session`s over two real
//! sled-backed replicas, every frame encoded and decoded) and through Automerge's built-in
//! sync (`generate_sync_message` / `receive_sync_message`) on the same documents, in the same
//! process. Prints a Markdown table and writes `target/sync-report.json`.
//!
//! The lower bound is the smallest known encoding of the changes that had to move: zstd at
//! level 19 over their raw bytes, or, when a whole document moves, Automerge's compact
//! document format (as is, or zstd-compressed), whichever is smallest.
//!
//! meshd's time includes making every received change durable (sled, fsync); Automerge's is
//! in memory only.

use std::time::Instant;

/// The allocator of the `meshd` binary, which syncs in the daemon: both sides of every row
/// run on it.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

use automerge::sync::{State, SyncDoc};
use automerge::transaction::Transactable;
use automerge::{ActorId, Automerge, Change, ROOT};
use meshd::model::{DocId, Scope};
use meshd::replica::Replica;
use meshd::sync::harness::Link;
use meshd::sync::{Access, Config, Session};
use meshd::trust::NodeKey;
use serde::Serialize;

#[derive(Serialize)]
struct Row {
    workload: &'static str,
    meshd_bytes: usize,
    meshd_messages: usize,
    automerge_bytes: usize,
    automerge_messages: usize,
    lower_bound_bytes: usize,
    meshd_ms: f64,
    automerge_ms: f64,
}

#[derive(Default)]
struct Traffic {
    bytes: usize,
    messages: usize,
    ms: f64,
}

/// Two nodes, each with its own store.
struct Pair {
    _dir: tempfile::TempDir,
    a: Replica,
    b: Replica,
    /// Automerge's persisted sync state for each side, when the workload has stored state.
    automerge_states: Option<(Vec<u8>, Vec<u8>)>,
}

fn mesh() -> DocId {
    DocId::Memory(Scope::Mesh)
}

/// Memory writes shaped like real ones (the replica's own layout: one JSON version per key in
/// the scope's root map), a few thousand keys rewritten over time, one change per write. They
/// are made on a copy of the document and applied to the replica in one durable batch: the
/// replica's own `batch` would fold them into a single change. The writer's actor id is
/// the node's id and bytes derived from the range, so every run makes the same bytes and the
/// report's byte columns compare between runs. The node signs its newest change, which
/// vouches for the others, as a node does.
fn write(replica: &mut Replica, node: &str, range: std::ops::Range<usize>) {
    let key = NodeKey::insecure_from_name(node);
    let seed = blake3::hash(format!("{node}/{}", range.start).as_bytes());
    let actor = [key.node_id().as_bytes().as_slice(), &seed.as_bytes()[..8]].concat();
    let mut doc = doc(replica).with_actor(ActorId::from(actor));
    let before = doc.get_heads();
    for i in range {
        let version = serde_json::json!({
            "value": {
                "n": i,
                "note": format!("observation {i} about topic {}", i % 97),
                "ok": i % 3 == 0,
            },
            "node_id": node,
            "updated_at": (1_700_000_000_000u64 + i as u64) << 16,
            "deleted": false,
        });
        let mut tx = doc.transaction();
        tx.put(ROOT, format!("facts.item{}", i % 5000), version.to_string())
            .expect("a put on the root map");
        tx.commit();
    }
    let changes = doc.get_changes(&before);
    let signatures = changes
        .last()
        .map(|c| key.sign(&c.hash()))
        .into_iter()
        .collect();
    replica
        .apply_changes(&mesh(), changes, signatures)
        .expect("bench writes apply");
}

fn doc(replica: &mut Replica) -> Automerge {
    replica.document(&mesh()).cloned().unwrap_or_default()
}

impl Pair {
    fn new() -> Pair {
        let dir = tempfile::tempdir().unwrap();
        let a =
            Replica::open(&dir.path().join("a"), NodeKey::insecure_from_name("node-a")).unwrap();
        let b =
            Replica::open(&dir.path().join("b"), NodeKey::insecure_from_name("node-b")).unwrap();
        Pair {
            _dir: dir,
            a,
            b,
            automerge_states: None,
        }
    }

    /// `n` changes written on `a` and copied to `b` (no sync state anywhere).
    fn common(n: usize) -> Pair {
        let mut pair = Pair::new();
        write(&mut pair.a, "node-a", 0..n);
        let changes = doc(&mut pair.a).get_changes(&[]);
        let signatures = pair.a.signatures(&mesh()).unwrap();
        pair.b.apply_changes(&mesh(), changes, signatures).unwrap();
        pair
    }

    /// Both sides sync once, untimed, so each stores its state for the other.
    fn remember(&mut self) {
        meshd_round(&mut self.a, &mut self.b);
        let (mut da, mut db) = (doc(&mut self.a), doc(&mut self.b));
        let (mut sa, mut sb) = (State::new(), State::new());
        automerge_round(&mut da, &mut db, &mut sa, &mut sb);
        self.automerge_states = Some((sa.encode(), sb.encode()));
    }

    fn run(mut self, workload: &'static str) -> Row {
        let (mut da, mut db) = (doc(&mut self.a), doc(&mut self.b));
        let lower_bound_bytes = lower_bound(&da, &db);
        let (mut sa, mut sb) = match &self.automerge_states {
            Some((a, b)) => (State::decode(a).unwrap(), State::decode(b).unwrap()),
            None => (State::new(), State::new()),
        };
        let automerge = automerge_round(&mut da, &mut db, &mut sa, &mut sb);
        let meshd = meshd_round(&mut self.a, &mut self.b);
        assert_eq!(
            doc(&mut self.a).get_heads(),
            doc(&mut self.b).get_heads(),
            "{workload}: meshd did not converge"
        );
        assert_eq!(
            da.get_heads(),
            db.get_heads(),
            "{workload}: automerge did not converge"
        );
        Row {
            workload,
            meshd_bytes: meshd.bytes,
            meshd_messages: meshd.messages,
            automerge_bytes: automerge.bytes,
            automerge_messages: automerge.messages,
            lower_bound_bytes,
            meshd_ms: meshd.ms,
            automerge_ms: automerge.ms,
        }
    }
}

/// A round from `a` to `b` until both sessions fall silent. The sessions know both keys, as
/// the daemon's do from the TLS handshake.
fn meshd_round(a: &mut Replica, b: &mut Replica) -> Traffic {
    let start = Instant::now();
    let (key_a, key_b) = (a.public_key(), b.public_key());
    let mut link = Link::reliable([
        Session::new("node-b", Access::full(), Config::default()).with_keys(key_a, key_b),
        Session::new("node-a", Access::full(), Config::default()).with_keys(key_b, key_a),
    ]);
    link.round([a, b])
        .expect("the sessions agree and fall silent");
    assert!(link.round_done(0) && link.round_done(1));
    let ms = start.elapsed().as_secs_f64() * 1000.0;
    Traffic {
        bytes: link.traffic().bytes,
        messages: link.traffic().messages,
        ms,
    }
}

/// Automerge's own loop: each side generates, the other receives, until both have nothing.
fn automerge_round(
    a: &mut Automerge,
    b: &mut Automerge,
    sa: &mut State,
    sb: &mut State,
) -> Traffic {
    let start = Instant::now();
    let mut traffic = Traffic::default();
    loop {
        let mut quiet = true;
        for a_to_b in [true, false] {
            let (from, to, from_state, to_state) = if a_to_b {
                (&mut *a, &mut *b, &mut *sa, &mut *sb)
            } else {
                (&mut *b, &mut *a, &mut *sb, &mut *sa)
            };
            if let Some(message) = from.generate_sync_message(from_state) {
                let bytes = message.encode();
                traffic.messages += 1;
                traffic.bytes += bytes.len();
                let message = automerge::sync::Message::decode(&bytes).unwrap();
                to.receive_sync_message(to_state, message).unwrap();
                quiet = false;
            }
        }
        if quiet {
            break;
        }
    }
    traffic.ms = start.elapsed().as_secs_f64() * 1000.0;
    traffic
}

fn lower_bound(a: &Automerge, b: &Automerge) -> usize {
    let mut moved: Vec<Change> = b.get_changes_added(a);
    moved.extend(a.get_changes_added(b));
    if moved.is_empty() {
        return 0;
    }
    let raw: Vec<u8> = moved.iter().flat_map(|c| c.raw_bytes().to_vec()).collect();
    let mut best = zstd::bulk::compress(&raw, 19).unwrap().len();
    for (whole, other) in [(a, b), (b, a)] {
        if other.get_heads().is_empty() && !whole.get_heads().is_empty() {
            let saved = whole.save();
            best = best
                .min(saved.len())
                .min(zstd::bulk::compress(&saved, 19).unwrap().len());
        }
    }
    best
}

fn in_sync(workload: &'static str, stored: bool) -> Row {
    let mut pair = Pair::common(10_000);
    if stored {
        pair.remember();
    }
    pair.run(workload)
}

fn diff_each(workload: &'static str, each: usize) -> Row {
    let mut pair = Pair::common(10_000);
    pair.remember();
    write(&mut pair.a, "node-a", 10_000..10_000 + each);
    write(&mut pair.b, "node-b", 20_000..20_000 + each);
    pair.run(workload)
}

fn fresh_peer_one_missing() -> Row {
    let mut pair = Pair::new();
    write(&mut pair.a, "node-a", 0..100_000);
    let mut changes = doc(&mut pair.a).get_changes(&[]);
    changes.pop();
    let signatures = pair.a.signatures(&mesh()).unwrap();
    pair.b.apply_changes(&mesh(), changes, signatures).unwrap();
    pair.run("fresh-peer-1-missing-100k")
}

fn full_clone() -> Row {
    let mut pair = Pair::new();
    write(&mut pair.a, "node-a", 0..100_000);
    pair.run("full-clone-100k")
}

/// A workload's name and what runs it.
type Workload = (&'static str, fn() -> Row);

/// The workloads in the report's order; `MESHD_BENCH_SYNC_ONLY` (names, comma-separated)
/// runs only those, for profiling one of them.
fn main() {
    let workloads: [Workload; 6] = [
        ("in-sync-10k-fresh", || in_sync("in-sync-10k-fresh", false)),
        ("in-sync-10k-stored", || in_sync("in-sync-10k-stored", true)),
        ("diff-10-each-10k-stored", || {
            diff_each("diff-10-each-10k-stored", 10)
        }),
        ("diff-1000-each-10k-stored", || {
            diff_each("diff-1000-each-10k-stored", 1000)
        }),
        ("fresh-peer-1-missing-100k", fresh_peer_one_missing),
        ("full-clone-100k", full_clone),
    ];
    let only = std::env::var("MESHD_BENCH_SYNC_ONLY").ok();
    let chosen = |name: &str| {
        only.as_ref()
            .is_none_or(|only| only.split(',').any(|o| o.trim() == name))
    };
    let rows: Vec<Row> = workloads
        .iter()
        .filter(|(name, _)| chosen(name))
        .map(|(_, run)| run())
        .collect();
    assert!(
        !rows.is_empty(),
        "MESHD_BENCH_SYNC_ONLY names no workload of this report"
    );
    println!("| workload | meshd bytes | meshd msgs | automerge bytes | automerge msgs | lower bound | meshd / automerge | meshd / lower bound | meshd ms | automerge ms |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for row in &rows {
        println!(
            "| {} | {} | {} | {} | {} | {} | {:.1}% | {} | {:.1} | {:.1} |",
            row.workload,
            row.meshd_bytes,
            row.meshd_messages,
            row.automerge_bytes,
            row.automerge_messages,
            row.lower_bound_bytes,
            100.0 * row.meshd_bytes as f64 / row.automerge_bytes as f64,
            ratio(row.meshd_bytes, row.lower_bound_bytes),
            row.meshd_ms,
            row.automerge_ms,
        );
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target"));
    std::fs::create_dir_all(&target).unwrap();
    let path = target.join("sync-report.json");
    std::fs::write(&path, serde_json::to_string_pretty(&rows).unwrap()).unwrap();
    println!("\nwritten to {}", path.display());
}

fn ratio(bytes: usize, bound: usize) -> String {
    if bound == 0 {
        "-".into()
    } else {
        format!("{:.2}x", bytes as f64 / bound as f64)
    }
}
