//! A writer killed with SIGKILL in the middle of a write loop loses none of the writes it had
//! reported done, and its store opens cleanly afterwards.
//!
//! The test binary runs itself as the writer: with `MESHD_CRASH_WRITER` set, the ignored test
//! `writer_loop` writes forever and prints a line after each write the replica acknowledged.
//! The daemon is killed the same way while clients write to it concurrently, through its
//! control socket and through the HTTP API.

mod support;

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use meshd::control::MemPut;
use serde_json::Value;
use support::{try_ask, TestNode};

use meshd::model::Scope;
use meshd::replica::{Replica, SkillWrite};
use serde_json::json;

const WRITER_ENV: &str = "MESHD_CRASH_WRITER";
const BATCH_ENV: &str = "MESHD_CRASH_BATCH";
/// Set: the writer keeps no document in memory between rounds, so its writes are appended
/// to documents not loaded (`replica/append.rs`), and writes `user:ann` too.
const EVICT_ENV: &str = "MESHD_CRASH_EVICT";

#[test]
#[ignore = "runs only as the child process of the crash tests"]
fn writer_loop() {
    let Ok(dir) = std::env::var(WRITER_ENV) else {
        return;
    };
    let batch: usize = std::env::var(BATCH_ENV).unwrap().parse().unwrap();
    let mut replica = Replica::open(
        Path::new(&dir),
        meshd::trust::NodeKey::insecure_from_name("writer"),
    )
    .unwrap();
    let evict = std::env::var(EVICT_ENV).is_ok();
    if evict {
        replica.set_memory_budget(1);
    }
    for round in 0.. {
        let first = round * batch;
        replica
            .batch(|b| {
                for i in first..first + batch {
                    b.put_memory(&Scope::Mesh, &format!("k{i}"), json!(i))?;
                    if evict {
                        b.put_memory(&ann(), &format!("k{i}"), json!(i))?;
                    }
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
        if evict {
            replica.trim();
        }
        println!("acked {}", first + batch);
    }
}

fn ann() -> Scope {
    Scope::User("ann".into())
}

/// Starts the writer, kills it after `acks` acknowledgements, and checks the store.
fn kill_mid_loop(batch: usize, acks: usize) {
    let dir = tempfile::tempdir().unwrap();
    kill_writer(dir.path(), batch, acks, false);
}

/// Kills a writer on `dir` after `acks` acknowledgements, and checks the store: every
/// acknowledged write is there, and (`evict`) every document loads and agrees with the index.
fn kill_writer(dir: &Path, batch: usize, acks: usize, evict: bool) {
    let mut writer = Command::new(std::env::current_exe().unwrap());
    if evict {
        writer.env(EVICT_ENV, "1");
    }
    let mut child = writer
        .args([
            "--exact",
            "writer_loop",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(WRITER_ENV, dir)
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

    let mut replica = Replica::open(dir, meshd::trust::NodeKey::insecure_from_name("reader"))
        .expect("store must reopen after SIGKILL");
    let scopes = if evict {
        vec![Scope::Mesh, ann()]
    } else {
        vec![Scope::Mesh]
    };
    for scope in &scopes {
        for i in 0..acknowledged {
            let entry = replica
                .get_memory(scope, &format!("k{i}"))
                .unwrap()
                .unwrap_or_else(|| {
                    panic!("acknowledged write {scope}:k{i} of {acknowledged} lost")
                });
            assert_eq!(entry.value, json!(i));
        }
    }
    if evict {
        replica
            .check_index()
            .expect("every document loads, as its index says");
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

/// Writes appended to documents not in memory, by two writers one after the other on the
/// same store (the second appends from its first write, superseding the first's versions),
/// each killed mid-loop.
#[test]
fn sigkill_during_writes_appended_without_loading_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    kill_writer(dir.path(), 10, 40, true);
    kill_writer(dir.path(), 10, 60, true);
}

/// Clients of the daemon's concurrent runs, and the acknowledgements to wait for before the
/// kill.
const CLIENTS: usize = 8;
const DAEMON_ACKS: usize = 400;

/// One way into the daemon for a put: `true` when it was acknowledged, `false` once the
/// daemon stops answering.
type Put = dyn Fn(&str, u64) -> bool + Send + Sync;

/// Puts `w<client>-<n>` until the daemon stops answering; records each acknowledged key.
fn put_until_killed(put: &Put, client: usize, acked: &Mutex<Vec<String>>, stop: &AtomicBool) {
    for n in 0.. {
        if stop.load(Ordering::SeqCst) {
            return;
        }
        let key = format!("w{client}-{n}");
        if !put(&key, n) {
            return;
        }
        acked.lock().unwrap().push(key);
    }
}

/// Kills the daemon of `node` with SIGKILL while `CLIENTS` clients put through `put`, then
/// checks that every acknowledged put is stored with its value.
fn kill_daemon_mid_burst(node: &TestNode, daemon: support::Daemon, put: Arc<Put>) {
    let acked = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|client| {
            let (put, acked, stop) = (put.clone(), acked.clone(), stop.clone());
            std::thread::spawn(move || put_until_killed(&*put, client, &acked, &stop))
        })
        .collect();
    let started = Instant::now();
    while acked.lock().unwrap().len() < DAEMON_ACKS {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "the daemon stopped acknowledging"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    // Mid-burst: groups are being staged and flushed while the clients keep sending.
    daemon.kill();
    stop.store(true, Ordering::SeqCst);
    clients
        .into_iter()
        .for_each(|client| client.join().unwrap());

    let listed = node.run(&["mem", "ls", "--json"]);
    assert_eq!(
        listed.code, 0,
        "the store must open after SIGKILL: {}",
        listed.stderr
    );
    let entries: Vec<Value> = serde_json::from_str(&listed.stdout).unwrap();
    let stored: HashMap<&str, &Value> = entries
        .iter()
        .map(|entry| (entry["key"].as_str().unwrap(), &entry["value"]))
        .collect();
    let acked = acked.lock().unwrap();
    for key in acked.iter() {
        let n: u64 = key.rsplit('-').next().unwrap().parse().unwrap();
        assert_eq!(
            stored.get(key.as_str()),
            Some(&&json!(n)),
            "acknowledged {key} lost"
        );
    }
}

#[test]
fn sigkill_during_concurrent_puts_to_the_daemon_loses_no_acknowledged_put() {
    let node = TestNode::init("crash");
    let daemon = node.start();
    let socket = node.file("control.sock");
    let put = move |key: &str, n: u64| {
        let put = MemPut {
            scope: "mesh".into(),
            key: key.to_string(),
            value: json!(n),
        };
        matches!(try_ask(&socket, put), Some(Ok(_)))
    };
    kill_daemon_mid_burst(&node, daemon, Arc::new(put));
}

/// The HTTP API's writers await their answer, which comes at the journal's sync while the
/// group's leader still holds the replica (`SharedReplica::run_grouped`): that answer too must
/// survive a SIGKILL right after it.
#[test]
fn sigkill_during_concurrent_http_puts_loses_no_acknowledged_put() {
    let (node, addr) = TestNode::init_with_api("crash");
    let daemon = node.start();
    support::wait_until("the API listens", || {
        std::net::TcpStream::connect(&addr).is_ok()
    });
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into();
    let put = move |key: &str, n: u64| {
        let body = json!({"scope": "mesh", "key": key, "value": n}).to_string();
        let answer = agent.put(format!("http://{addr}/mesh/memory")).send(body);
        answer.is_ok_and(|answer| answer.status() == 200)
    };
    kill_daemon_mid_burst(&node, daemon, Arc::new(put));
}
