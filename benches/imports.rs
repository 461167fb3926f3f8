//! Memory of long imports into a running daemon: `meshd bridge ingest` of a large JSON Lines
//! file and `meshd store import` of a large SQLite file in the reference schema, each sent by
//! the real CLI to a real `meshd run`.
//!
//! For each, the daemon's peak resident memory during the import (VmHWM, reset through
//! `/proc/<pid>/clear_refs` just before) is read against two baselines from the same run: the
//! daemon just started, before the import, and the same daemon restarted afterwards, holding
//! what was imported ("steady"). Peak minus the larger of the two is what the import itself
//! costs; the target (the hostile-input issue) is at most 100 MB for any file size. The CLI's
//! own peak is sampled too.
//!
//! - ingest: `MESHD_BENCH_INGEST_MB` (default 1024) of JSON Lines cycling over 5000 memory
//!   messages of about 2 kB and 50 skills of about 10 kB, with one line in 20 not JSON. The
//!   file is large and what it holds is small, so this measures the streaming, not the store.
//!   Once with the caches (`[cache]`) off, once on.
//! - store import: `MESHD_BENCH_IMPORT_MB` (default 300) of distinct memory rows of about
//!   10 kB, all kept: the store grows by as much, which the steady baseline accounts for. Then
//!   the same file again into the node that now holds it: every row unchanged, so the store
//!   does not grow and the import's own cost stands alone. These two run with the caches
//!   (`[cache]`) off; a third run, with them on, adds their rewrite after the import: the
//!   cache writer copies the whole store out (`cache::Snapshot`), which costs memory in
//!   proportion to the store, not to the file.
//!
//! A size of 0 skips that part.
//!
//! Linux only (reads `/proc`). Prints a Markdown table; asserts what was imported, never a
//! size or a time.

#[path = "../tests/support/mod.rs"]
mod support;

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use rusqlite::{params, Connection};
use serde_json::{json, Value};
use support::{Daemon, TestNode};

const MIB: u64 = 1024 * 1024;
const INGEST_KEYS: usize = 5000;
const INGEST_SKILLS: usize = 50;
const IMPORT_VALUE_BYTES: usize = 10_000;

fn megabytes_from_env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A field of `/proc/<pid>/status` in KiB (`VmRSS`, `VmHWM`); `None` once the process is gone.
fn proc_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// Starts the peak (VmHWM) of `pid` again from its current resident size.
fn reset_peak(pid: u32) {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").expect("clear_refs (Linux)");
}

/// Words, line breaks and multi-byte characters, `bytes` long at most, different per seed.
fn words(bytes: usize, seed: u64) -> String {
    const WORDS: [&str; 10] = [
        "gateway", "merge", "the", "sync", "技能", "naïve", "node", "🎉", "replica", "when",
    ];
    let mut text = String::new();
    let mut state = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
    loop {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let word = WORDS[(state >> 33) as usize % WORDS.len()];
        if text.len() + word.len() + 1 > bytes {
            return text;
        }
        text.push_str(word);
        text.push(if (state >> 20).is_multiple_of(13) {
            '\n'
        } else {
            ' '
        });
    }
}

fn ingest_file(path: &Path, bytes: u64) -> u64 {
    let memory: Vec<String> = (0..INGEST_KEYS)
        .map(|i| {
            json!({"type": "memory", "scope": "mesh", "key": format!("k{i}"),
                   "value": words(2000, i as u64), "nodeId": "bench", "ts": 1_739_000_000})
            .to_string()
        })
        .collect();
    let skills: Vec<String> = (0..INGEST_SKILLS)
        .map(|i| {
            json!({"type": "skill", "name": format!("s{i}"), "sourceNode": "bench",
                   "content": words(10_000, 1_000_000 + i as u64), "ts": 1_739_000_000})
            .to_string()
        })
        .collect();
    let mut out = BufWriter::new(File::create(path).unwrap());
    let (mut written, mut line, mut memory_line) = (0u64, 0usize, 0usize);
    while written < bytes {
        let text: &str = match line {
            n if n % 20 == 19 => "this line is not JSON {",
            n if n % 50 == 0 => &skills[(n / 50) % INGEST_SKILLS],
            _ => {
                memory_line += 1;
                &memory[memory_line % INGEST_KEYS]
            }
        };
        out.write_all(text.as_bytes()).unwrap();
        out.write_all(b"\n").unwrap();
        written += text.len() as u64 + 1;
        line += 1;
    }
    out.flush().unwrap();
    written
}

/// Distinct memory rows of about 10 kB, `bytes` of values in all; returns the row count.
fn store_file(path: &Path, bytes: u64) -> usize {
    let conn = Connection::open(path).unwrap();
    conn.execute_batch(meshd::store::SCHEMA).unwrap();
    let rows = (bytes as usize).div_ceil(IMPORT_VALUE_BYTES);
    conn.execute_batch("BEGIN").unwrap();
    for i in 0..rows {
        conn.execute(
            "INSERT INTO mesh_memory (scope, key, value, node_id, updated_at) VALUES (?1,?2,?3,?4,?5)",
            params![
                "mesh",
                format!("row{i}"),
                words(IMPORT_VALUE_BYTES, i as u64),
                "bench",
                1_739_000_000 + i as i64
            ],
        )
        .unwrap();
    }
    conn.execute_batch("COMMIT").unwrap();
    rows
}

struct Measured {
    label: String,
    input_mib: f64,
    seconds: f64,
    before_kib: u64,
    peak_kib: u64,
    steady_kib: u64,
    cli_peak_kib: u64,
    summary: Value,
}

/// Runs `meshd <args>` against the daemon of `node`, measuring as the module says.
fn measure(node: &TestNode, label: &str, input: &Path, args: &[&str]) -> Measured {
    let daemon = node.start();
    let before_kib = proc_kib(daemon.pid(), "VmRSS").unwrap();
    reset_peak(daemon.pid());
    // The CLI names every ignored item on stderr: to a file, so a full pipe never stalls it.
    let stderr_path = node.file("cli.stderr");
    let started = Instant::now();
    let mut cli = node
        .command(args)
        .stdout(Stdio::piped())
        .stderr(File::create(&stderr_path).unwrap())
        .spawn()
        .unwrap();
    let mut cli_peak_kib = 0;
    while cli.try_wait().unwrap().is_none() {
        if let Some(peak) = proc_kib(cli.id(), "VmHWM") {
            cli_peak_kib = cli_peak_kib.max(peak);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let output = cli.wait_with_output().unwrap();
    let seconds = started.elapsed().as_secs_f64();
    assert!(
        output.status.success(),
        "{label} failed: {}",
        std::fs::read_to_string(&stderr_path).unwrap_or_default()
    );
    let peak_kib = proc_kib(daemon.pid(), "VmHWM").unwrap();
    assert_eq!(daemon.stop(), 0);
    let restarted: Daemon = node.start();
    let steady_kib = proc_kib(restarted.pid(), "VmRSS").unwrap();
    restarted.stop();
    Measured {
        label: label.to_string(),
        input_mib: std::fs::metadata(input).unwrap().len() as f64 / MIB as f64,
        seconds,
        before_kib,
        peak_kib,
        steady_kib,
        cli_peak_kib,
        summary: serde_json::from_slice(&output.stdout).unwrap_or(Value::Null),
    }
}

fn turn_caches_off(node: &TestNode) {
    let config = node.file("meshd.toml");
    let text = std::fs::read_to_string(&config).unwrap() + "\n[cache]\nenabled = false\n";
    std::fs::write(&config, text).unwrap();
}

/// How many items a `ls --json` lists.
fn stored(node: &TestNode, args: &[&str]) -> usize {
    let listed: Vec<Value> = serde_json::from_str(&node.run(args).ok()).unwrap();
    listed.len()
}

fn main() {
    let work = tempfile::tempdir().unwrap();
    let mut results = Vec::new();

    let ingest_mb = megabytes_from_env("MESHD_BENCH_INGEST_MB", 1024);
    if ingest_mb > 0 {
        let lines = work.path().join("ingest.jsonl");
        ingest_file(&lines, ingest_mb * MIB);
        let args = ["bridge", "ingest", lines.to_str().unwrap()];
        for (label, caches) in [
            ("bridge ingest (JSON Lines), no caches", false),
            ("bridge ingest (JSON Lines), caches on", true),
        ] {
            let node = TestNode::init("ingest");
            if !caches {
                turn_caches_off(&node);
            }
            results.push(measure(&node, label, &lines, &args));
            assert_eq!(stored(&node, &["mem", "ls", "--json"]), INGEST_KEYS);
            assert_eq!(stored(&node, &["skill", "ls", "--json"]), INGEST_SKILLS);
        }
        std::fs::remove_file(&lines).unwrap();
    }

    let import_mb = megabytes_from_env("MESHD_BENCH_IMPORT_MB", 300);
    if import_mb > 0 {
        let store = work.path().join("store.db");
        let rows = store_file(&store, import_mb * MIB);
        let node = TestNode::init("import");
        let config = node.file("meshd.toml");
        let with_caches = std::fs::read_to_string(&config).unwrap();
        turn_caches_off(&node);
        let args = ["store", "import", store.to_str().unwrap()];
        results.push(measure(&node, "store import, no caches", &store, &args));
        assert_eq!(stored(&node, &["mem", "ls", "--json"]), rows);
        let again = measure(&node, "the same again, no caches", &store, &args);
        assert_eq!(again.summary["unchanged"], json!(rows));
        results.push(again);
        std::fs::write(&config, with_caches).unwrap();
        let label = "the same again, caches on";
        results.push(measure(&node, label, &store, &args));
    }

    println!("| import | input MiB | s | daemon before MiB | peak MiB | steady after MiB | peak − steady MiB | ≤ 100 MB | CLI peak MiB |");
    println!("|---|---:|---:|---:|---:|---:|---:|---|---:|");
    for m in &results {
        let above = m.peak_kib.saturating_sub(m.steady_kib.max(m.before_kib));
        println!(
            "| {} | {:.0} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {} | {:.1} |",
            m.label,
            m.input_mib,
            m.seconds,
            mib(m.before_kib),
            mib(m.peak_kib),
            mib(m.steady_kib),
            mib(above),
            if above * 1024 <= 100_000_000 {
                "met"
            } else {
                "NOT met"
            },
            mib(m.cli_peak_kib)
        );
    }
    for m in &results {
        println!("{}: {}", m.label, m.summary);
    }
}
