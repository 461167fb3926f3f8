//! Search: query latency over a large store, how soon a change is searchable, and the size of
//! the index, each against a baseline from the same run.
//!
//! - `MESHD_BENCH_SEARCH_ENTRIES` (default 100000) memory entries of about 20 words drawn
//!   from a vocabulary of 5000 with a Zipf-like skew (a few words in most entries, most words
//!   in few), plus 200 skills of about 2 kB.
//! - Query: 300 queries of 1 to 3 mid-frequency words, full text, limit 10, through
//!   `Searcher::search` (index lock, ranking, snippets from the replica). Baseline: the same
//!   queries as a scan of the replica's entries for values holding every word, what a node
//!   without an index must do. Targets: p50 at most 5 ms.
//! - Freshness, local: a `put` on the replica followed at once by searches until the new
//!   entry is found (each search brings the index up to date first), over 50 puts. Target:
//!   searchable within 1 s.
//! - Freshness, from a peer: two real daemons paired over QUIC; a `mem put` on A, then B is
//!   asked over its control socket every 5 ms until its search finds the entry; the baseline
//!   is the same wait for `mem get` on B (the replication itself). 20 writes.
//! - Size: `search.db` after a checkpoint against the bytes of text it indexes (keys, values,
//!   skill names, descriptions and contents). Target: at most 1.5×.
//!
//! Prints a Markdown table; asserts what was found, never a time.

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use meshd::control::{MemGet, MemPut, Search};
use meshd::model::Scope;
use meshd::replica::{Replica, SharedReplica, SkillWrite};
use meshd::search::{Mode, ScopeFilter, SearchRequest, Searcher, Target};
use serde_json::json;
use support::{try_ask, TestNode};

const VOCABULARY: usize = 5000;
const WORDS_PER_ENTRY: usize = 20;
const SKILLS: usize = 200;
const QUERIES: usize = 300;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }

    /// A word index with a Zipf-like skew: index i with weight about 1/(i+1).
    fn zipf(&mut self) -> usize {
        let u = (self.next() % 1_000_000) as f64 / 1_000_000.0;
        ((VOCABULARY as f64 + 1.0).powf(u) - 1.0) as usize % VOCABULARY
    }
}

/// Pronounceable made-up words, distinct per index ("kabo", "tenimu", ...).
fn word(index: usize) -> String {
    const SYLLABLES: [&str; 16] = [
        "ka", "bo", "te", "ni", "mu", "ra", "si", "lo", "pe", "du", "ve", "go", "fi", "za", "hu",
        "ye",
    ];
    let mut i = index + 16;
    let mut text = String::new();
    while i > 0 {
        text.push_str(SYLLABLES[i % 16]);
        i /= 16;
    }
    text
}

fn sentence(rng: &mut Rng, words: usize) -> String {
    (0..words)
        .map(|_| word(rng.zipf()))
        .collect::<Vec<_>>()
        .join(" ")
}

fn percentile(times: &mut [Duration], p: f64) -> Duration {
    times.sort();
    times[((times.len() - 1) as f64 * p).round() as usize]
}

fn ms(duration: Duration) -> String {
    format!("{:.2} ms", duration.as_secs_f64() * 1000.0)
}

fn main() {
    let entries: usize = std::env::var("MESHD_BENCH_SEARCH_ENTRIES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let dir = tempfile::tempdir().unwrap();
    let replica = SharedReplica::new(
        Replica::open(
            &dir.path().join("store"),
            meshd::trust::NodeKey::insecure_from_name("bench"),
        )
        .unwrap(),
    );
    let mut rng = Rng(7);
    let mesh = Scope::Mesh;
    let mut text_bytes = 0usize;
    let started = Instant::now();
    for chunk in 0..entries.div_ceil(1000) {
        let batch: Vec<(String, String)> = (chunk * 1000..((chunk + 1) * 1000).min(entries))
            .map(|i| {
                (
                    format!("project.{i}.note"),
                    sentence(&mut rng, WORDS_PER_ENTRY),
                )
            })
            .collect();
        text_bytes += batch.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>();
        replica
            .with(|r| {
                r.batch(|b| {
                    for (key, value) in batch {
                        b.put_memory(&mesh, &key, json!(value))?;
                    }
                    Ok(())
                })
            })
            .unwrap();
    }
    for i in 0..SKILLS {
        let write = SkillWrite {
            name: format!("skill-{i}"),
            content: sentence(&mut rng, 300),
            description: Some(sentence(&mut rng, 8)),
            path: None,
        };
        text_bytes += write.name.len() + write.content.len();
        text_bytes += write.description.as_ref().map_or(0, String::len);
        replica.with(|r| r.put_skill(write)).unwrap();
    }
    eprintln!(
        "{entries} entries and {SKILLS} skills loaded in {:?}",
        started.elapsed()
    );

    let path = dir.path().join("search.db");
    let searcher = Searcher::new(path.clone(), None);
    let started = Instant::now();
    searcher.refresh(&replica).unwrap();
    let build = started.elapsed();
    let index_bytes = index_size(&path);

    let (query_p50, query_p95, scan_p50, found) = queries(&searcher, &replica, &mut rng);
    let (fresh_p50, fresh_max) = local_freshness(&searcher, &replica, &mut rng);
    let (peer_search, peer_get) = peer_freshness();

    println!("| search ({entries} entries, {SKILLS} skills) | figure | baseline | ratio |");
    println!("|---|---:|---:|---:|");
    println!(
        "| index build from the replica | {:.1} s | | |",
        build.as_secs_f64()
    );
    println!(
        "| query p50 (fts, limit 10; {found} of {QUERIES} found something) | {} | scan {} | {:.4}× |",
        ms(query_p50),
        ms(scan_p50),
        query_p50.as_secs_f64() / scan_p50.as_secs_f64()
    );
    println!("| query p95 | {} | | |", ms(query_p95));
    println!(
        "| local put → searchable, p50 / max of 50 | {} / {} | | |",
        ms(fresh_p50),
        ms(fresh_max)
    );
    println!(
        "| peer's put → searchable on this node, p50 of 20 | {} | readable by `mem get` {} | {:.2}× |",
        ms(peer_search),
        ms(peer_get),
        peer_search.as_secs_f64() / peer_get.as_secs_f64()
    );
    println!(
        "| index size | {:.1} MiB | text {:.1} MiB | {:.2}× |",
        index_bytes as f64 / 1048576.0,
        text_bytes as f64 / 1048576.0,
        index_bytes as f64 / text_bytes as f64
    );
}

/// The index file after folding its write-ahead log in.
fn index_size(path: &std::path::Path) -> u64 {
    let conn = rusqlite::Connection::open(path).unwrap();
    conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
        .unwrap();
    let mut tables = conn
        .prepare("SELECT name, sum(pgsize), sum(unused) FROM dbstat GROUP BY name ORDER BY 2 DESC")
        .unwrap();
    let rows = tables
        .query_map([], |row| {
            Ok((
                row.get::<_, String>(0)?,
                row.get::<_, i64>(1)?,
                row.get::<_, i64>(2)?,
            ))
        })
        .unwrap();
    for row in rows {
        let (name, bytes, unused) = row.unwrap();
        eprintln!(
            "  {name}: {:.2} MiB ({:.2} MiB unused)",
            bytes as f64 / 1048576.0,
            unused as f64 / 1048576.0
        );
    }
    drop(tables);
    drop(conn);
    let mut total = std::fs::metadata(path).unwrap().len();
    for suffix in ["-wal", "-shm"] {
        let mut file = path.as_os_str().to_owned();
        file.push(suffix);
        total += std::fs::metadata(&file).map(|m| m.len()).unwrap_or(0);
    }
    total
}

/// Queries of 1 to 3 words from the middle of the vocabulary, timed through the searcher and
/// as a scan of the replica's entries.
fn queries(
    searcher: &Searcher,
    replica: &SharedReplica,
    rng: &mut Rng,
) -> (Duration, Duration, Duration, usize) {
    let texts: Vec<Vec<String>> = (0..QUERIES)
        .map(|_| {
            let n = 1 + (rng.next() % 3) as usize;
            (0..n)
                .map(|_| word(20 + (rng.next() % 500) as usize))
                .collect()
        })
        .collect();
    let mut times = Vec::new();
    let mut found = 0;
    for words in &texts {
        let request = SearchRequest {
            text: words.join(" "),
            target: Target::Memory,
            scope: ScopeFilter::Any,
            limit: 10,
            mode: Some(Mode::Fts),
        };
        let started = Instant::now();
        let results = searcher.search(replica, &request).unwrap();
        times.push(started.elapsed());
        found += usize::from(!results.hits.is_empty());
    }
    let mut scans = Vec::new();
    for words in texts.iter().take(30) {
        let started = Instant::now();
        let matches = replica.with(|r| {
            r.list_memory(None)
                .unwrap()
                .into_iter()
                .filter(|entry| {
                    let value = entry.value.as_str().unwrap_or_default();
                    words.iter().all(|w| value.contains(w.as_str()))
                })
                .take(10)
                .count()
        });
        scans.push(started.elapsed());
        std::hint::black_box(matches);
    }
    assert!(found > QUERIES / 2, "most queries find something: {found}");
    let p50 = percentile(&mut times, 0.5);
    let p95 = percentile(&mut times, 0.95);
    (p50, p95, percentile(&mut scans, 0.5), found)
}

/// A put, then searches until the entry is found.
fn local_freshness(
    searcher: &Searcher,
    replica: &SharedReplica,
    rng: &mut Rng,
) -> (Duration, Duration) {
    let mut times = Vec::new();
    for i in 0..50 {
        let marker = format!("freshmarker{i}x{}", rng.next());
        let started = Instant::now();
        replica
            .with(|r| r.put_memory(&Scope::Mesh, &format!("fresh.{i}"), json!(marker)))
            .unwrap();
        let request = SearchRequest {
            text: marker,
            target: Target::Memory,
            scope: ScopeFilter::Any,
            limit: 1,
            mode: Some(Mode::Fts),
        };
        while searcher.search(replica, &request).unwrap().hits.is_empty() {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "never searchable"
            );
        }
        times.push(started.elapsed());
    }
    let max = *times.iter().max().unwrap();
    (percentile(&mut times, 0.5), max)
}

/// Two daemons: how long after a write on A it is searchable on B, and readable on B.
fn peer_freshness() -> (Duration, Duration) {
    let (a, a_listen) = TestNode::init_listening("a");
    let (b, b_listen) = TestNode::init_listening("b");
    a.run(&["peers", "add", &b.id(), &b_listen]).ok();
    b.run(&["peers", "add", &a.id(), &a_listen]).ok();
    let (_a, _b) = (a.start(), b.start());
    let (a_socket, b_socket) = (a.file("control.sock"), b.file("control.sock"));
    let mut searched = Vec::new();
    let mut read = Vec::new();
    for i in 0..20 {
        let marker = format!("peermarker{i}");
        let key = format!("peer.{i}");
        let put = MemPut {
            scope: "mesh".into(),
            key: key.clone(),
            value: json!(marker),
        };
        let started = Instant::now();
        try_ask(&a_socket, put).unwrap().unwrap();
        let (mut seen_get, mut seen_search) = (None, None);
        while seen_get.is_none() || seen_search.is_none() {
            assert!(started.elapsed() < Duration::from_secs(30), "never arrived");
            if seen_get.is_none() {
                let get = MemGet {
                    scope: "mesh".into(),
                    key: key.clone(),
                };
                if matches!(try_ask(&b_socket, get), Some(Ok(_))) {
                    seen_get = Some(started.elapsed());
                }
            }
            if seen_search.is_none() {
                let search = Search {
                    query: marker.clone(),
                    scope: None,
                    target: Target::Memory,
                    limit: Some(1),
                    mode: None,
                };
                if matches!(try_ask(&b_socket, search), Some(Ok(r)) if !r.hits.is_empty()) {
                    seen_search = Some(started.elapsed());
                }
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        searched.extend(seen_search);
        read.extend(seen_get);
    }
    (percentile(&mut searched, 0.5), percentile(&mut read, 0.5))
}
