//! Storage that never loses an acknowledged write: a full disk (a real tmpfs, as root), the
//! free-space reserve, and damaged store files (single bit flips in sled's log).

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::mpsc;
use std::time::Duration;

use meshd::control::{MemGet, MemPut};
use serde_json::{json, Value};
use support::{ask, Daemon, TestNode};

/// Every step that could hang is bounded by this.
const STEP: Duration = Duration::from_secs(60);

/// Runs `f` on a thread and fails the test when it takes longer than `STEP`.
fn bounded<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (done, result) = mpsc::channel();
    std::thread::spawn(move || done.send(f()));
    result
        .recv_timeout(STEP)
        .unwrap_or_else(|_| panic!("{what} did not finish within {STEP:?}: it hangs"))
}

fn is_root() -> bool {
    unsafe { libc::geteuid() == 0 }
}

/// A tmpfs of `mib` MiB mounted on a fresh directory, unmounted on drop.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    /// `None` (and a message) when this process may not mount.
    fn mount(mib: u64) -> Option<Tmpfs> {
        if !is_root() {
            eprintln!("skipped: mounting a small tmpfs needs root (CI runs as root)");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(dir.path())
            .status();
        if !mounted.is_ok_and(|status| status.success()) {
            eprintln!("skipped: cannot mount a tmpfs here");
            return None;
        }
        Some(Tmpfs { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn resize(&self, mib: u64) {
        let status = Command::new("mount")
            .args(["-o", &format!("remount,size={mib}m")])
            .arg(self.path())
            .status()
            .unwrap();
        assert!(status.success());
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(self.path()).status();
    }
}

/// A node whose home is `home`, with the given `[store]` reserve, no API and no caches.
fn node_in(home: PathBuf, min_free_mb: u64) -> TestNode {
    let node = TestNode::at(home);
    node.run(&["init", "--name", "disk", "--listen", "127.0.0.1:0"])
        .ok();
    let config = node.file("meshd.toml");
    let text = std::fs::read_to_string(&config).unwrap()
        + &format!(
            "\n[api]\nenabled = false\n[cache]\nenabled = false\n[store]\nmin_free_mb = {min_free_mb}\nmin_free_percent = 0\n"
        );
    std::fs::write(&config, text).unwrap();
    node
}

/// About 100 kB of words (not a secret-looking token).
fn bulky(i: usize) -> Value {
    let words = [
        "gateway", "merge", "sync", "node", "replica", "when", "of", "a",
    ];
    let text: Vec<&str> = (0..14_000)
        .map(|j| words[(i * 7 + j * 3) % words.len()])
        .collect();
    json!(format!("{i} {}", text.join(" ")))
}

fn put(socket: &Path, key: &str, value: Value) -> Result<(), String> {
    let socket = socket.to_path_buf();
    let key = key.to_string();
    bounded("a memory put", move || {
        ask(
            &socket,
            MemPut {
                scope: "mesh".into(),
                key,
                value,
            },
        )
        .map(|_| ())
        .map_err(|e| e.to_string())
    })
}

fn stored_keys(node: &TestNode) -> Vec<String> {
    let listed = node.run(&["mem", "ls", "--json"]);
    assert_eq!(listed.code, 0, "{}", listed.stderr);
    sorted_keys(&listed.stdout)
}

/// The keys of `mem ls --json` output, sorted.
fn sorted_keys(listed: &str) -> Vec<String> {
    let entries: Vec<Value> = serde_json::from_str(listed).unwrap();
    let mut keys: Vec<String> = entries
        .iter()
        .map(|e| e["key"].as_str().unwrap().to_string())
        .collect();
    keys.sort();
    keys
}

/// A node whose home is on `disk`, started: the node, its daemon and its control socket.
fn started_on(disk: &Tmpfs, min_free_mb: u64) -> (TestNode, Daemon, PathBuf) {
    let node = node_in(disk.path().join("home"), min_free_mb);
    let daemon = node.start();
    let socket = node.file("control.sock");
    (node, daemon, socket)
}

fn status_json(node: &TestNode) -> Value {
    serde_json::from_str(&node.run(&["status", "--json"]).ok()).unwrap()
}

fn stop_bounded(daemon: Daemon) -> i32 {
    bounded("stopping the daemon", move || daemon.stop())
}

#[test]
fn a_full_disk_refuses_writes_and_loses_no_acknowledged_one() {
    let Some(disk) = Tmpfs::mount(12) else {
        return;
    };
    // No reserve: the disk really fills under sled.
    let (node, daemon, socket) = started_on(&disk, 0);
    let mut acked = Vec::new();
    let refusal = loop {
        let key = format!("k{:03}", acked.len());
        match put(&socket, &key, bulky(acked.len())) {
            Ok(()) => acked.push(key),
            Err(refusal) => break refusal,
        }
        assert!(acked.len() < 500, "12 MiB never filled up");
    };
    assert!(refusal.contains("No space left"), "{refusal}");
    // Refused at its flush ("may or may not be found after a restart"), or before it reached
    // sled when sled's own flusher hit the full disk first: either way, restart meshd.
    assert!(refusal.contains("restart meshd"), "{refusal}");
    let refused_key = format!("k{:03}", acked.len());
    // The refused write is not readable, and the next one is refused at once.
    let get = MemGet {
        scope: "mesh".into(),
        key: refused_key.clone(),
    };
    assert!(ask(&socket, get).is_err());
    let again = put(&socket, "again", json!("small")).unwrap_err();
    assert!(again.contains("restart"), "{again}");
    // The peer list shares the failed store: changing it is refused, not left hanging.
    let peer = TestNode::init("a-peer").id();
    let add = bounded("peers add after a failed write", {
        let mut command = node.command(&["peers", "add", &peer, "127.0.0.1:9"]);
        move || command.output().unwrap()
    });
    assert!(!add.status.success());
    assert!(String::from_utf8_lossy(&add.stderr).contains("restart"));
    let status = status_json(&node);
    assert!(status["read_only"].as_str().is_some(), "{status}");
    assert_eq!(stop_bounded(daemon), 0);

    disk.resize(64);
    let daemon = node.start();
    put(&socket, "after", json!("space is back")).unwrap();
    // No goodbye: whatever was acknowledged must have been durable already.
    daemon.kill();
    let mut expected = acked.clone();
    expected.push("after".to_string());
    expected.sort();
    // The refused write was never acknowledged: sled may have logged it whole before the disk
    // filled (and refuses the undo after the failure), so it may be there or not, as its
    // refusal said; nothing else may differ.
    let mut stored = stored_keys(&node);
    stored.retain(|key| *key != refused_key);
    assert_eq!(stored, expected);
}

/// Concurrent writers through the HTTP API, whose requests await a group's leader
/// (`SharedReplica::run_grouped`), on a disk that fills: every request is answered, none
/// hangs on a leader that failed, and what was acknowledged is there after a SIGKILL and a
/// restart with space.
#[test]
fn a_full_disk_under_concurrent_http_puts_answers_each_and_loses_no_acknowledged_one() {
    const CLIENTS: usize = 6;
    let Some(disk) = Tmpfs::mount(12) else {
        return;
    };
    let node = node_in(disk.path().join("home"), 0);
    let addr = node.serve_api();
    let daemon = node.start();
    support::wait_until("the API listens", || {
        std::net::TcpStream::connect(&addr).is_ok()
    });
    let clients: Vec<_> = (0..CLIENTS)
        .map(|client| {
            let addr = addr.clone();
            std::thread::spawn(move || put_over_http_until_refused(&addr, client))
        })
        .collect();
    let mut acked = Vec::new();
    for client in clients {
        let (keys, refusal) = bounded("a client filling the disk", move || client.join().unwrap());
        assert!(refusal.contains("restart meshd"), "{refusal}");
        acked.extend(keys);
    }
    assert!(
        !acked.is_empty(),
        "nothing was acknowledged before the disk filled"
    );
    daemon.kill();

    disk.resize(64);
    let daemon = node.start();
    put(&node.file("control.sock"), "after", json!("space is back")).unwrap();
    daemon.kill();
    acked.push("after".to_string());
    acked.sort();
    // A refused write may be there or not, as its refusal said; every acknowledged one must.
    let stored = stored_keys(&node);
    let lost: Vec<&String> = acked.iter().filter(|key| !stored.contains(key)).collect();
    assert!(lost.is_empty(), "acknowledged and lost: {lost:?}");
}

/// Puts bulky values through the API until one is refused; returns the keys acknowledged and
/// the refusal. A request that gets no answer fails the test (through `bounded`).
fn put_over_http_until_refused(addr: &str, client: usize) -> (Vec<String>, String) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(STEP))
        .http_status_as_error(false)
        .build()
        .into();
    let mut acked = Vec::new();
    loop {
        let key = format!("c{client}-{:03}", acked.len());
        let body =
            json!({"scope": "mesh", "key": key, "value": bulky(client * 1000 + acked.len())});
        let mut answer = agent
            .put(format!("http://{addr}/mesh/memory"))
            .send(body.to_string())
            .unwrap_or_else(|error| panic!("a put got no answer: {error}"));
        let status = answer.status();
        let text = answer.body_mut().read_to_string().unwrap_or_default();
        match status.as_u16() {
            200 => acked.push(key),
            507 => return (acked, text),
            other => panic!("a put answered {other}: {text}"),
        }
        assert!(acked.len() < 500, "12 MiB never filled up");
    }
}

#[test]
fn below_the_reserve_the_node_is_read_only_and_resumes_by_itself() {
    let Some(disk) = Tmpfs::mount(64) else {
        return;
    };
    // 6 MiB: under the cap of a tenth of the 64 MiB volume.
    let (node, daemon, socket) = started_on(&disk, 6);
    put(&socket, "before", json!(1)).unwrap();
    // Something else fills the disk to below the reserve.
    let filler = disk.path().join("filler");
    let free = available_bytes(disk.path());
    std::fs::write(&filler, vec![7u8; (free - 4 * 1024 * 1024) as usize]).unwrap();
    let refused = put(&socket, "during", json!(2)).unwrap_err();
    assert!(refused.contains("read-only"), "{refused}");
    assert!(refused.contains("min_free_mb"), "{refused}");
    assert!(status_json(&node)["read_only"]
        .as_str()
        .unwrap()
        .contains("reserve"));
    // Space comes back: writes resume without a restart.
    std::fs::remove_file(&filler).unwrap();
    put(&socket, "after", json!(3)).unwrap();
    assert_eq!(status_json(&node)["read_only"], Value::Null);
    assert_eq!(stop_bounded(daemon), 0);
    assert_eq!(stored_keys(&node), ["after", "before"]);
}

fn available_bytes(path: &Path) -> u64 {
    let out = Command::new("df")
        .args(["--output=avail", "-B1"])
        .arg(path)
        .output()
        .unwrap();
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .nth(1)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// xorshift64: the flips are the same on every run.
fn next(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

#[test]
fn a_flipped_bit_in_the_store_never_opens_silently_with_less() {
    let (node, _) = TestNode::init_listening("damaged");
    let daemon = node.start();
    let socket = node.file("control.sock");
    let mut acked = Vec::new();
    for i in 0..41 {
        let key = format!("k{i:02}");
        put(&socket, &key, json!(format!("value {i}"))).unwrap();
        acked.push(key);
    }
    // The integrity record trails the store by at most about a second (the daemon rewrites it
    // every second while it is behind); writes in the last second before a crash are guarded
    // by sled's log alone.
    std::thread::sleep(Duration::from_millis(1500));
    daemon.kill();

    let store = node.file("store");
    // sled's file is mostly preallocated zeros: flip inside what it wrote.
    let log = std::fs::read(store.join("db")).unwrap();
    let log_len = log.iter().rposition(|&b| b != 0).unwrap() as u64 + 1;
    let (mut opened, mut refused) = (0, 0);
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    for flip in 0..50 {
        let copy = TestNode::init("copy");
        std::fs::remove_dir_all(copy.file("store")).unwrap();
        copy_dir(&store, &copy.file("store"));
        std::fs::copy(node.file("store.integrity"), copy.file("store.integrity")).unwrap();
        // The copy has its own identity; the store's documents are the same either way.
        let mut bytes = std::fs::read(copy.file("store/db")).unwrap();
        let at = (next(&mut state) % log_len) as usize;
        bytes[at] ^= 1 << (next(&mut state) % 8);
        std::fs::write(copy.file("store/db"), bytes).unwrap();

        let listed = copy.run(&["mem", "ls", "--json"]);
        if listed.code == 0 {
            let keys = sorted_keys(&listed.stdout);
            assert_eq!(keys, acked, "flip {flip} at byte {at}: opened with less");
            opened += 1;
        } else {
            let named = listed.stderr.contains("damaged") || listed.stderr.contains("lacks");
            assert!(named, "flip {flip} at byte {at}: {}", listed.stderr);
            assert!(
                listed.stderr.contains("docs/operations.md"),
                "{}",
                listed.stderr
            );
            assert!(!listed.stderr.contains("panicked"), "{}", listed.stderr);
            refused += 1;
        }
    }
    eprintln!("50 flips: {opened} opened whole, {refused} refused naming the damage");
}

#[test]
fn a_backup_taken_while_writes_go_on_restores_one_moment_of_the_store() {
    let (node, _) = TestNode::init_listening("backed-up");
    let peer = TestNode::init("its-peer");
    node.run(&["peers", "add", &peer.id(), "127.0.0.1:9", "--name", "nas"])
        .ok();
    let daemon = node.start();
    let socket = node.file("control.sock");
    let (stop, stopped) = mpsc::channel::<()>();
    let writer_socket = socket.clone();
    let writer = std::thread::spawn(move || {
        let mut acked = 0usize;
        while stopped.try_recv().is_err() {
            put(&writer_socket, &format!("w{acked:05}"), json!(acked)).unwrap();
            acked += 1;
        }
        acked
    });
    std::thread::sleep(Duration::from_millis(300));
    let backup = node.file("backup");
    let backed_up = node.run(&["backup", backup.to_str().unwrap()]);
    assert_eq!(backed_up.code, 0, "{}", backed_up.stderr);
    assert!(backed_up.stderr.contains("1 peers"), "{}", backed_up.stderr);
    std::thread::sleep(Duration::from_millis(300));
    stop.send(()).unwrap();
    let acked = writer.join().unwrap();
    assert_eq!(stop_bounded(daemon), 0);

    let fresh = TestNode::init("restored");
    let restored = fresh.run(&["restore", backup.to_str().unwrap()]);
    assert_eq!(restored.code, 0, "{}", restored.stderr);
    let keys = stored_keys(&fresh);
    // One moment: the first n writes, none missing in between, and not the later ones.
    let expected: Vec<String> = (0..keys.len()).map(|i| format!("w{i:05}")).collect();
    assert_eq!(keys, expected);
    assert!(
        !keys.is_empty() && keys.len() < acked,
        "{} of {acked}",
        keys.len()
    );
    let peers = fresh.run(&["peers", "ls"]).ok();
    assert!(peers.contains("nas"), "{peers}");

    // Restoring into the node it came from loses nothing written after the backup.
    assert_eq!(node.run(&["restore", backup.to_str().unwrap()]).code, 0);
    assert_eq!(stored_keys(&node).len(), acked);

    // A damaged backup is refused before anything is merged.
    let file = backup.join("docs/0.automerge");
    let mut bytes = std::fs::read(&file).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x20;
    std::fs::write(&file, bytes).unwrap();
    let other = TestNode::init("refuses");
    let refused = other.run(&["restore", backup.to_str().unwrap()]);
    assert_ne!(refused.code, 0);
    assert!(refused.stderr.contains("damaged"), "{}", refused.stderr);
    assert!(stored_keys(&other).is_empty());
}

#[test]
fn a_node_that_lost_its_store_refuses_to_start_then_repairs_from_a_peer_own_scope_included() {
    let (a, a_listen) = TestNode::init_listening("a");
    let (b, b_listen) = TestNode::init_listening("b");
    let (a_id, b_id) = (a.id(), b.id());
    a.run(&["peers", "add", &b_id, &b_listen]).ok();
    b.run(&["peers", "add", &a_id, &a_listen]).ok();
    let (a_daemon, b_daemon) = (a.start(), b.start());
    let (a_socket, b_socket) = (a.file("control.sock"), b.file("control.sock"));
    let put_to = |scope: &str, key: &str, value: &str| {
        let put = MemPut {
            scope: scope.into(),
            key: key.into(),
            value: json!(value),
        };
        ask(&a_socket, put).unwrap();
    };
    put_to("node", "own", "only a writes this");
    put_to("mesh", "shared", "everyone's");
    let a_scope = format!("node:{a_id}");
    support::wait_until("b holds a's own scope", || {
        let get = MemGet {
            scope: a_scope.clone(),
            key: "own".into(),
        };
        ask(&b_socket, get).is_ok()
    });
    assert_eq!(stop_bounded(a_daemon), 0);

    // The store is lost; the integrity record beside it is not.
    std::fs::remove_dir_all(a.file("store")).unwrap();
    let refused = bounded("a start on a lost store", {
        let mut command = a.command(&["run"]);
        move || command.output().unwrap()
    });
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("lacks acknowledged writes"), "{stderr}");
    assert!(stderr.contains("is gone"), "{stderr}");

    let repairing = Daemon::new(
        a.command(&["run", "--repair"])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    support::wait_until("the repairing daemon answers", || {
        support::try_ask(&a_socket, meshd::control::Status {}).is_some()
    });
    let status = ask(&a_socket, meshd::control::Status {}).unwrap();
    assert!(status.repair.unwrap().contains("still missing"));
    // The peer list was in the lost store: pair again, through the repairing daemon.
    a.run(&["peers", "add", &b_id, &b_listen]).ok();
    support::wait_until("the repair completes", || {
        let status = ask(&a_socket, meshd::control::Status {}).unwrap();
        status.repair.is_some_and(|r| r.starts_with("complete"))
    });
    assert_eq!(stop_bounded(repairing), 0);
    drop(b_daemon);

    let daemon = a.start();
    let own = MemGet {
        scope: "node".into(),
        key: "own".into(),
    };
    let versions = ask(&a_socket, own).unwrap();
    assert_eq!(versions.winner.value, json!("only a writes this"));
    assert_eq!(stop_bounded(daemon), 0);
}
