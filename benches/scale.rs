//! Scale: a store of a million memory entries, read by the real binary, against the same
//! commands on a store of one entry measured in the same run.
//!
//! - `MESHD_BENCH_SCALE_ENTRIES` (default 1000000) entries of about 100 bytes in the `mesh`
//!   scope, written through `Replica::batch` in batches of 20000, then compacted.
//! - One-shot `meshd mem get` without a daemon (the CLI opens the store itself), median of 5.
//!   Target: at most 50 ms.
//! - `meshd run` until its control socket answers. Target: within 1 s.
//! - The daemon's resident memory once started and idle, and its peak (VmHWM) until then.
//!   Target: at most 256 MB.
//! - The same once its first view write is done (`cache.manifest` is saved at its end), and
//!   how long after the start that was.
//! - `status` and `mem get` through the daemon, median of 5 (the first `status` waits for the
//!   first view write).
//! - Then `MESHD_BENCH_SCALE_WRITES` (default 10000) single durable puts through the daemon,
//!   each a new key: their rate, the daemon's peak resident memory by their end, and the
//!   store on disk after them against its size right after compaction. Target: at most 1.5×.
//! - Then `MESHD_BENCH_SCALE_INGEST` (default 100000) new keys as bridge memory messages,
//!   25 000 per `BridgeIngest` (a control request line holds at most 16 MiB): the time, and
//!   the daemon's peak resident memory meanwhile (its peak is reset first, through
//!   `/proc/<pid>/clear_refs`) above what it held idle after the start. Targets: within
//!   10 s, at most 256 MB above.
//! - Then, the daemon stopped (it saves sled's page table as it leaves): the first one-shot
//!   `meshd mem get` and the median of 5 more, and `meshd run` again until it answers.
//!
//! Prints a Markdown table; asserts what was read, never a time.

#[path = "../tests/support/mod.rs"]
mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use meshd::control::{BridgeIngest, MemGet, MemPut, Status};
use meshd::model::Scope;
use meshd::replica::Replica;
use serde_json::json;
use support::{ask, TestNode};

const BATCH: usize = 20_000;

fn key(i: usize) -> String {
    format!("fact-{i:08}")
}

fn value(i: usize) -> serde_json::Value {
    json!(format!(
        "the user prefers option {} for project {} on weekdays",
        i % 97,
        i % 1013
    ))
}

/// A home whose store holds `entries` entries; returns it with the seconds the writes took.
fn node_with(entries: usize) -> (TestNode, f64) {
    let (node, _) = TestNode::init_listening("scale");
    let started = Instant::now();
    let mut replica = Replica::open(
        &node.file("store"),
        meshd::trust::NodeKey::insecure_from_name("scalebench"),
    )
    .expect("store opens");
    // Setup, not measured: every document stays loaded, so that no batch is committed in
    // parts (each would evict the buckets the next batch writes again).
    replica.set_memory_budget(u64::MAX);
    for start in (0..entries).step_by(BATCH) {
        replica
            .batch(|batch| {
                for i in start..(start + BATCH).min(entries) {
                    batch.put_memory(&Scope::Mesh, &key(i), value(i))?;
                }
                Ok(())
            })
            .expect("bench writes are accepted");
        if start % 200_000 == 0 && start > 0 {
            eprintln!("  {start} entries written");
        }
    }
    // A store in steady state: the daemon folds changes into a snapshot as they accumulate.
    for doc in replica.doc_ids() {
        replica.compact(&doc).expect("the store compacts");
    }
    replica.flush().expect("store flushes");
    drop(replica);
    (node, started.elapsed().as_secs_f64())
}

fn median(mut samples: Vec<f64>) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

fn one_shot_get_once_ms(node: &TestNode, key: &str) -> f64 {
    let started = Instant::now();
    let out = node.run(&["mem", "get", "mesh", key]).ok();
    assert!(out.contains("option"), "{out}");
    started.elapsed().as_secs_f64() * 1000.0
}

fn one_shot_get_ms(node: &TestNode, key: &str) -> f64 {
    median((0..5).map(|_| one_shot_get_once_ms(node, key)).collect())
}

fn kib_of(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|line| line.starts_with(field))
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|kib| kib.parse().ok())
        .unwrap_or(0)
}

fn dir_bytes(path: &Path) -> u64 {
    std::fs::read_dir(path)
        .map(|entries| {
            entries
                .flatten()
                .map(|entry| match entry.metadata() {
                    Ok(meta) if meta.is_dir() => dir_bytes(&entry.path()),
                    Ok(meta) => meta.len(),
                    Err(_) => 0,
                })
                .sum()
        })
        .unwrap_or(0)
}

struct Figures {
    entries: usize,
    write_s: f64,
    store_mb: f64,
    get_ms: f64,
    listening_ms: f64,
    rss_mb: f64,
    peak_mb: f64,
    cached_s: f64,
    cached_rss_mb: f64,
    cached_peak_mb: f64,
    status_ms: f64,
    daemon_get_ms: f64,
    puts_per_s: f64,
    puts_peak_mb: f64,
    after_puts_mb: f64,
    ingest_s: f64,
    ingest_above_mb: f64,
    first_get_after_stop_ms: f64,
    get_after_stop_ms: f64,
    relistening_ms: f64,
}

/// Messages per `BridgeIngest` request.
const INGEST_PART: usize = 25_000;

/// `count` new keys as bridge memory messages, `INGEST_PART` per request; the seconds it
/// took.
fn ingest(socket: &Path, count: usize) -> f64 {
    let ts = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("a clock after 1970")
        .as_secs();
    let payloads: Vec<(usize, String)> = (0..count)
        .step_by(INGEST_PART)
        .map(|start| {
            let part: Vec<serde_json::Value> = (start..(start + INGEST_PART).min(count))
                .map(|i| {
                    json!({"type": "memory", "scope": "mesh", "key": format!("ingested-{i:08}"),
                           "value": value(i), "nodeId": "bench", "ts": ts})
                })
                .collect();
            (part.len(), serde_json::Value::Array(part).to_string())
        })
        .collect();
    let started = Instant::now();
    for (len, payload) in payloads {
        let report = ask(
            socket,
            BridgeIngest {
                payload,
                unwrap: None,
            },
        )
        .expect("the ingest is acknowledged");
        assert_eq!(report.changed, len, "ignored: {:?}", report.ignored);
    }
    started.elapsed().as_secs_f64()
}

/// Resets the process's peak resident memory (VmHWM) to what it holds now.
fn reset_peak(pid: u32) {
    if let Err(error) = std::fs::write(format!("/proc/{pid}/clear_refs"), "5") {
        eprintln!(
            "cannot reset the daemon's peak memory ({error}): the ingest peak is since the start"
        );
    }
}

/// Single durable puts through the daemon's control socket, each a new key; their rate.
fn single_puts(socket: &Path, count: usize) -> f64 {
    let started = Instant::now();
    for i in 0..count {
        let put = MemPut {
            scope: "mesh".into(),
            key: format!("later-{i:08}"),
            value: value(i),
        };
        ask(socket, put).expect("the put is acknowledged");
    }
    count as f64 / started.elapsed().as_secs_f64()
}

fn measure(entries: usize, puts: usize, ingested: usize) -> Figures {
    eprintln!("writing {entries} entries");
    let (node, write_s) = node_with(entries);
    let store_mb = dir_bytes(&node.file("store")) as f64 / 1e6;
    let probe = key(entries / 2);
    let get_ms = one_shot_get_ms(&node, &probe);

    let started = Instant::now();
    let daemon = node.start();
    let listening_ms = started.elapsed().as_secs_f64() * 1000.0;
    std::thread::sleep(Duration::from_secs(3));
    // Read before asking anything: `status` waits for the cache lock, which the first view
    // write holds (about 20 s for a million entries).
    let rss_mb = kib_of(daemon.pid(), "VmRSS:") as f64 / 1024.0;
    let peak_mb = kib_of(daemon.pid(), "VmHWM:") as f64 / 1024.0;
    let socket = node.file("control.sock");
    let timed = |f: &dyn Fn()| {
        median(
            (0..5)
                .map(|_| {
                    let started = Instant::now();
                    f();
                    started.elapsed().as_secs_f64() * 1000.0
                })
                .collect(),
        )
    };
    let status_ms = timed(&|| {
        let status = ask(&socket, Status {}).expect("status answers");
        assert_eq!(status.memory_entries, entries);
    });
    let daemon_get_ms = timed(&|| {
        let got = ask(
            &socket,
            MemGet {
                scope: "mesh".into(),
                key: probe.clone(),
            },
        )
        .expect("the entry is there");
        assert!(got.winner.value.to_string().contains("option"));
    });
    while !node.file("cache.manifest").exists() && started.elapsed() < Duration::from_secs(600) {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        node.file("cache.manifest").exists(),
        "the caches are written"
    );
    let cached_s = started.elapsed().as_secs_f64();
    let cached_rss_mb = kib_of(daemon.pid(), "VmRSS:") as f64 / 1024.0;
    let cached_peak_mb = kib_of(daemon.pid(), "VmHWM:") as f64 / 1024.0;
    let puts_per_s = single_puts(&socket, puts);
    let puts_peak_mb = kib_of(daemon.pid(), "VmHWM:") as f64 / 1024.0;
    let after_puts_mb = dir_bytes(&node.file("store")) as f64 / 1e6;
    reset_peak(daemon.pid());
    let ingest_s = ingest(&socket, ingested);
    let ingest_above_mb = kib_of(daemon.pid(), "VmHWM:") as f64 / 1024.0 - rss_mb;
    daemon.stop();
    // The stop saved sled's page table: the next open replays nothing of the writes above.
    let first_get_after_stop_ms = one_shot_get_once_ms(&node, &probe);
    let get_after_stop_ms = one_shot_get_ms(&node, &probe);
    let started = Instant::now();
    let daemon = node.start();
    let relistening_ms = started.elapsed().as_secs_f64() * 1000.0;
    daemon.stop();
    Figures {
        entries,
        write_s,
        store_mb,
        get_ms,
        listening_ms,
        rss_mb,
        peak_mb,
        cached_s,
        cached_rss_mb,
        cached_peak_mb,
        status_ms,
        daemon_get_ms,
        puts_per_s,
        puts_peak_mb,
        after_puts_mb,
        ingest_s,
        ingest_above_mb,
        first_get_after_stop_ms,
        get_after_stop_ms,
        relistening_ms,
    }
}

fn main() {
    let entries = std::env::var("MESHD_BENCH_SCALE_ENTRIES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(1_000_000);
    let puts = std::env::var("MESHD_BENCH_SCALE_WRITES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(10_000);
    let ingested = std::env::var("MESHD_BENCH_SCALE_INGEST")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(100_000);
    let baseline = measure(1, puts, ingested);
    let large = measure(entries, puts, ingested);
    println!(
        "| figure | {} entries | 1 entry | ratio | target |",
        large.entries
    );
    println!("|---|---|---|---|---|");
    let row = |name: &str, large: f64, small: f64, target: &str| {
        println!(
            "| {name} | {large:.1} | {small:.1} | {:.2}× | {target} |",
            large / small.max(1e-9)
        );
    };
    row("writing the store (s)", large.write_s, baseline.write_s, "");
    row("store on disk (MB)", large.store_mb, baseline.store_mb, "");
    row(
        "one-shot `mem get` (ms)",
        large.get_ms,
        baseline.get_ms,
        "≤ 50 ms",
    );
    row(
        "`meshd run` until it answers (ms)",
        large.listening_ms,
        baseline.listening_ms,
        "≤ 1000 ms",
    );
    row(
        "daemon resident after start (MB)",
        large.rss_mb,
        baseline.rss_mb,
        "≤ 256 MB",
    );
    row(
        "daemon peak resident (MB)",
        large.peak_mb,
        baseline.peak_mb,
        "≤ 256 MB",
    );
    row(
        "caches written after the start (s)",
        large.cached_s,
        baseline.cached_s,
        "",
    );
    row(
        "daemon resident then (MB)",
        large.cached_rss_mb,
        baseline.cached_rss_mb,
        "≤ 256 MB",
    );
    row(
        "daemon peak resident until then (MB)",
        large.cached_peak_mb,
        baseline.cached_peak_mb,
        "≤ 256 MB",
    );
    row(
        "`status` through the daemon (ms)",
        large.status_ms,
        baseline.status_ms,
        "",
    );
    row(
        "`mem get` through the daemon (ms)",
        large.daemon_get_ms,
        baseline.daemon_get_ms,
        "",
    );
    row(
        &format!("{puts} single puts through the daemon (/s)"),
        large.puts_per_s,
        baseline.puts_per_s,
        "",
    );
    row(
        "daemon peak resident by their end (MB)",
        large.puts_peak_mb,
        baseline.puts_peak_mb,
        "≤ 256 MB",
    );
    row(
        "store on disk after them (MB)",
        large.after_puts_mb,
        baseline.after_puts_mb,
        "",
    );
    row(
        &format!("ingest of {ingested} new keys (s)"),
        large.ingest_s,
        baseline.ingest_s,
        "≤ 10 s",
    );
    row(
        "daemon peak during it above its idle start (MB)",
        large.ingest_above_mb,
        baseline.ingest_above_mb,
        "≤ 256 MB",
    );
    row(
        "after the daemon stopped: first one-shot `mem get` (ms)",
        large.first_get_after_stop_ms,
        baseline.first_get_after_stop_ms,
        "≤ 50 ms",
    );
    row(
        "after the daemon stopped: one-shot `mem get` (ms, median of 5)",
        large.get_after_stop_ms,
        baseline.get_after_stop_ms,
        "≤ 50 ms",
    );
    row(
        "`meshd run` again until it answers (ms)",
        large.relistening_ms,
        baseline.relistening_ms,
        "≤ 1000 ms",
    );
    println!(
        "\nstore on disk after {puts} single puts / compacted: {:.2}× ({} entries; target ≤ 1.5×), {:.2}× (1 entry)",
        large.after_puts_mb / large.store_mb.max(1e-9),
        large.entries,
        baseline.after_puts_mb / baseline.store_mb.max(1e-9),
    );
}
