//! Views: the time of one view update after a single put, in a store of 100k entries,
//! against the whole rewrite a node did before views followed the replica by heads.
//!
//! - `MESHD_BENCH_VIEWS_ENTRIES` (default 100000) memory entries of about 100 bytes, in 100
//!   user scopes of equal size, plus 200 skills of about 2 kB.
//! - Caches: after one put, `CacheFiles::sync_paced` on the node's long-lived caches, paced
//!   (`mesh-memory.json` put off: the page of the scope and nothing else) and now (the page
//!   and `mesh-memory.json`). Baseline: the same put, then a write by caches that have not
//!   written yet in this process, which reads, renders and compares everything: what every
//!   burst cost before.
//! - SQLite mirror: after one put, `Mirror::write` (the changed row) against `store::export`
//!   with prune, what every burst cost before.
//!
//! 15 puts per figure, each in another scope; prints medians as a Markdown table and asserts
//! what was written, never a time.

use std::time::{Duration, Instant};

use meshd::cache::{CacheFiles, CachePaths, Pace};
use meshd::model::Scope;
use meshd::replica::{Replica, SharedReplica, SkillWrite};
use meshd::store::{self, Mirror};
use serde_json::json;

const SCOPES: usize = 100;
const SKILLS: usize = 200;
const ROUNDS: usize = 15;

fn median(mut times: Vec<Duration>) -> Duration {
    times.sort();
    times[times.len() / 2]
}

fn ms(duration: Duration) -> String {
    format!("{:.2} ms", duration.as_secs_f64() * 1000.0)
}

fn put(replica: &SharedReplica, round: usize, step: usize) {
    let scope = Scope::User(format!("u{}", (round * 7 + step) % SCOPES));
    replica
        .batch(|b| {
            b.put_memory(
                &scope,
                "changed",
                json!(format!("round {round} step {step}")),
            )
        })
        .unwrap();
}

fn timed<T>(f: impl FnOnce() -> T) -> (Duration, T) {
    let started = Instant::now();
    let value = f();
    (started.elapsed(), value)
}

fn main() {
    let entries: usize = std::env::var("MESHD_BENCH_VIEWS_ENTRIES")
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
    let started = Instant::now();
    let per_scope = entries.div_ceil(SCOPES);
    for scope in 0..SCOPES {
        let scope_id = Scope::User(format!("u{scope}"));
        replica
            .batch(|b| {
                for i in 0..per_scope.min(entries - scope * per_scope) {
                    let value = format!("note {i} of scope {scope}: {}", "lorem ipsum ".repeat(6));
                    b.put_memory(&scope_id, &format!("project.{i}.note"), json!(value))?;
                }
                Ok(())
            })
            .unwrap();
    }
    for i in 0..SKILLS {
        let write = SkillWrite {
            name: format!("skill-{i}"),
            content: format!("# Skill {i}\n\n{}", "Do the thing carefully. ".repeat(80)),
            description: None,
            path: None,
        };
        replica.put_skill(write).unwrap();
    }
    eprintln!(
        "{entries} entries and {SKILLS} skills loaded in {:?}",
        started.elapsed()
    );

    let paths = CachePaths {
        openclaw_home: dir.path().join("openclaw"),
        skills_dir: dir.path().join("skills"),
        memory_dir: dir.path().join("memory"),
    };
    let manifest = dir.path().join("cache.manifest");
    let caches = CacheFiles::new(paths.clone(), manifest.clone());
    let (first, report) = timed(|| caches.sync(&replica, None).unwrap());
    eprintln!("first write of the caches: {first:?}, {report:?}");
    let json_bytes = std::fs::metadata(paths.memory_json()).unwrap().len();

    let (mut paced, mut now, mut whole) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        put(&replica, round, 1);
        let (time, report) = timed(|| caches.sync(&replica, None).unwrap());
        assert_eq!(
            report.written, 2,
            "the page and mesh-memory.json: {report:?}"
        );
        now.push(time);
        // Just after mesh-memory.json was written: a paced write puts it off.
        put(&replica, round, 0);
        let (time, synced) = timed(|| caches.sync_paced(&replica, None, Pace::Paced).unwrap());
        assert_eq!(synced.report.written, 1, "the page only: {synced:?}");
        assert!(synced.due.is_some(), "{synced:?}");
        paced.push(time);
        put(&replica, round, 2);
        let (time, report) = timed(|| {
            CacheFiles::new(paths.clone(), manifest.clone())
                .sync(&replica, None)
                .unwrap()
        });
        assert!(report.unchanged > SCOPES, "{report:?}");
        whole.push(time);
        // Catch the node's caches up with that put, off the clock.
        caches.sync(&replica, None).unwrap();
    }

    let mirror_path = dir.path().join("mirror.sqlite");
    let mirror = Mirror::new(mirror_path.clone());
    mirror.write(&replica).unwrap();
    let (mut rows, mut export) = (Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        put(&replica, round, 3);
        let (time, report) = timed(|| mirror.write(&replica).unwrap());
        assert_eq!(report.memory, 1, "{report:?}");
        rows.push(time);
        put(&replica, round, 4);
        let (time, report) = timed(|| {
            replica
                .with(|r| store::export(r, &mirror_path, true))
                .unwrap()
        });
        assert_eq!(report.memory, 1, "{report:?}");
        export.push(time);
        // Catch the mirror up with the export's put, off the clock.
        mirror.write(&replica).unwrap();
    }

    let (whole, export) = (median(whole), median(export));
    let ratio =
        |d: Duration, base: Duration| format!("{:.3}×", d.as_secs_f64() / base.as_secs_f64());
    println!("{entries} entries in {SCOPES} scopes, {SKILLS} skills; mesh-memory.json {:.1} MB; medians of {ROUNDS} puts\n", json_bytes as f64 / 1e6);
    println!("| one view update after a put | median | vs whole rewrite |");
    println!("|---|---:|---:|");
    println!(
        "| caches, whole rewrite (before; first write of a process) | {} | 1.000× |",
        ms(whole)
    );
    println!(
        "| caches, paced (the scope's page; mesh-memory.json put off) | {} | {} |",
        ms(median(paced.clone())),
        ratio(median(paced), whole)
    );
    println!(
        "| caches, now (the scope's page and mesh-memory.json) | {} | {} |",
        ms(median(now.clone())),
        ratio(median(now), whole)
    );
    println!(
        "| SQLite mirror, whole export with prune (before) | {} | 1.000× |",
        ms(export)
    );
    println!(
        "| SQLite mirror, changed rows | {} | {} |",
        ms(median(rows.clone())),
        ratio(median(rows), export)
    );
}
