//! A writer killed with SIGKILL in the middle of a write loop loses none of the writes it had
//! reported done, and its store opens cleanly afterwards.
//!
//! The test binary runs itself as the writer: with `MESHD_CRASH_WRITER` set, the ignored test
//! `writer_loop` writes forever and prints a line after each write the replica acknowledged.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

use meshd::model::Scope;
use meshd::replica::{Replica, SkillWrite};
use serde_json::json;

const WRITER_ENV: &str = "MESHD_CRASH_WRITER";
const BATCH_ENV: &str = "MESHD_CRASH_BATCH";

#[test]
#[ignore = "runs only as the child process of the crash tests"]
fn writer_loop() {
    let Ok(dir) = std::env::var(WRITER_ENV) else {
        return;
    };
    let batch: usize = std::env::var(BATCH_ENV).unwrap().parse().unwrap();
    let mut replica = Replica::open(Path::new(&dir), "writer").unwrap();
    for round in 0.. {
        let first = round * batch;
        replica
            .batch(|b| {
                for i in first..first + batch {
                    b.put_memory(&Scope::Mesh, &format!("k{i}"), json!(i))?;
                }
                Ok(())
            })
            .unwrap();
        replica
            .put_skill(SkillWrite {
                name: "log".into(),
                content: format!("round {round}"),
                ..SkillWrite::default()
            })
            .unwrap();
        println!("acked {}", first + batch);
    }
}

/// Starts the writer, kills it after `acks` acknowledgements, and checks the store.
fn kill_mid_loop(batch: usize, acks: usize) {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "writer_loop",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(WRITER_ENV, dir.path())
        .env(BATCH_ENV, batch.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut acknowledged = 0;
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    while acknowledged < acks * batch {
        let line = lines.next().expect("writer stopped early").unwrap();
        if let Some(count) = line.strip_prefix("acked ") {
            acknowledged = count.parse().unwrap();
        }
    }
    // SIGKILL: no destructor, no flush, possibly halfway through the next write.
    child.kill().unwrap();
    child.wait().unwrap();
    drop(lines);

    let replica = Replica::open(dir.path(), "reader").expect("store must reopen after SIGKILL");
    for i in 0..acknowledged {
        let entry = replica
            .get_memory(&Scope::Mesh, &format!("k{i}"))
            .unwrap()
            .unwrap_or_else(|| panic!("acknowledged write k{i} of {acknowledged} lost"));
        assert_eq!(entry.value, json!(i));
    }
    let round = replica
        .get_skill("log")
        .unwrap()
        .expect("acknowledged skill lost")
        .content;
    let round: usize = round.strip_prefix("round ").unwrap().parse().unwrap();
    assert!(
        (round + 1) * batch >= acknowledged,
        "skill log behind acknowledged writes"
    );
}

#[test]
fn sigkill_during_single_writes_loses_no_acknowledged_write() {
    kill_mid_loop(1, 200);
}

#[test]
fn sigkill_during_batched_writes_loses_no_acknowledged_write() {
    kill_mid_loop(100, 30);
}
