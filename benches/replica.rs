//! Replica throughput and load time.
//!
//! - `durable_put/single`: one write, one fsync, with the integrity record as a node keeps it
//!   (rewritten at most once a second); `single_no_record` without it (the baseline for its
//!   cost) and `single_record_every_put` rewritten after every put (what the once-a-second
//!   rule saves).
//! - `durable_put/batched_1000`: 1000 writes made durable by one flush (group commit).
//! - `load/100k_keys`: opening a store that holds 100k memory keys.
//! - `signature/sign`, `signature/verify`: what signing a change (every persist of a local
//!   write) and checking a peer's signature cost, to read against `durable_put`.
//!
//! Targets (issue 2): ≥ 20k durable puts/s batched; load of 100k keys ≤ 1 s. The resident
//! memory the loaded replica adds is printed beside the load figure.

use std::time::{Duration, Instant};

use criterion::{criterion_group, BatchSize, Criterion, Throughput};
use meshd::model::Scope;
use meshd::replica::Replica;
use serde_json::json;

const BATCH: u64 = 1000;
const LOAD_KEYS: usize = 100_000;

fn durable_puts(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let mut replica = Replica::open(
        dir.path(),
        meshd::trust::NodeKey::insecure_from_name("bench"),
    )
    .unwrap();
    let mut next = 0u64;
    let mut group = c.benchmark_group("durable_put");
    group.throughput(Throughput::Elements(1));
    group.bench_function("single", |b| {
        b.iter(|| {
            next += 1;
            replica
                .put_memory(&Scope::Mesh, &format!("single.{next}"), json!({"n": next}))
                .unwrap()
        })
    });
    for (name, every) in [
        ("single_no_record", None),
        ("single_record_every_put", Some(Duration::ZERO)),
    ] {
        replica.set_integrity_every(every);
        group.bench_function(name, |b| {
            b.iter(|| {
                next += 1;
                replica
                    .put_memory(&Scope::Mesh, &format!("single.{next}"), json!({"n": next}))
                    .unwrap()
            })
        });
    }
    replica.set_integrity_every(Some(meshd::replica::INTEGRITY_EVERY));
    group.throughput(Throughput::Elements(BATCH));
    group.bench_function("batched_1000", |b| {
        b.iter(|| {
            replica
                .batch(|batch| {
                    for _ in 0..BATCH {
                        next += 1;
                        batch.put_memory(
                            &Scope::Mesh,
                            &format!("batched.{next}"),
                            json!({"n": next}),
                        )?;
                    }
                    Ok(())
                })
                .unwrap()
        })
    });
    group.finish();
}

fn resident_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| {
            rest.trim()
                .trim_end_matches(" kB")
                .trim()
                .parse::<u64>()
                .ok()
        })
        .map_or(0, |kb| kb * 1024)
}

fn load(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut replica = Replica::open(
            dir.path(),
            meshd::trust::NodeKey::insecure_from_name("bench"),
        )
        .unwrap();
        for chunk in 0..LOAD_KEYS / 1000 {
            replica
                .batch(|b| {
                    for i in chunk * 1000..(chunk + 1) * 1000 {
                        b.put_memory(
                            &Scope::Mesh,
                            &format!("project.{i}.summary"),
                            json!({"i": i, "note": "a fact"}),
                        )?;
                    }
                    Ok(())
                })
                .unwrap();
        }
    }
    report_load_in_fresh_process(dir.path());

    let mut group = c.benchmark_group("load");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(15));
    group.bench_function("100k_keys", |b| {
        b.iter_batched(
            || (),
            |_| {
                Replica::open(
                    dir.path(),
                    meshd::trust::NodeKey::insecure_from_name("bench"),
                )
                .unwrap()
            },
            BatchSize::PerIteration,
        )
    });
    group.finish();
}

/// Opens the store in a new process, so the resident memory it reports is the loaded
/// replica's and not what building the store left in this one's allocator.
fn report_load_in_fresh_process(dir: &std::path::Path) {
    let output = std::process::Command::new(std::env::current_exe().unwrap())
        .env(LOAD_CHILD_ENV, dir)
        .output()
        .unwrap();
    print!("{}", String::from_utf8_lossy(&output.stdout));
}

const LOAD_CHILD_ENV: &str = "MESHD_BENCH_LOAD_DIR";

fn load_child(dir: &str) {
    let before = resident_bytes();
    let started = Instant::now();
    let replica = Replica::open(
        std::path::Path::new(dir),
        meshd::trust::NodeKey::insecure_from_name("bench"),
    )
    .unwrap();
    let elapsed = started.elapsed();
    let resident = resident_bytes().saturating_sub(before);
    assert_eq!(replica.list_memory(None).unwrap().len(), LOAD_KEYS);
    println!(
        "load/100k_keys: cold open {:.0} ms in a fresh process, resident memory of the loaded replica {:.1} MiB",
        elapsed.as_secs_f64() * 1000.0,
        resident as f64 / (1024.0 * 1024.0)
    );
}

fn signatures(c: &mut Criterion) {
    let key = meshd::trust::NodeKey::insecure_from_name("bench");
    let hash = automerge::ChangeHash([7; 32]);
    let signature = key.sign(&hash);
    let mut group = c.benchmark_group("signature");
    group.bench_function("sign", |b| b.iter(|| key.sign(&hash)));
    group.bench_function("verify", |b| b.iter(|| signature.verify().unwrap()));
    group.finish();
}

criterion_group!(benches, durable_puts, load, signatures);

fn main() {
    if let Ok(dir) = std::env::var(LOAD_CHILD_ENV) {
        load_child(&dir);
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
