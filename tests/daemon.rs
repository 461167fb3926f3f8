//! The daemon's lifecycle and the one status: a stop never loses an answered write, and
//! `meshd status` says the same thing whether the daemon runs or not.

mod support;

use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::{wait_until, TestNode};

fn put(agent: &ureq::Agent, api: &str, key: &str) -> Option<u16> {
    let body = format!(r#"{{"scope":"mesh","key":"{key}","value":{{"n":"{key}"}}}}"#);
    let request = ureq::http::Request::builder()
        .method("PUT")
        .uri(format!("http://{api}/mesh/memory"))
        .header("Content-Type", "application/json")
        .body(body)
        .unwrap();
    agent.run(request).ok().map(|r| r.status().as_u16())
}

const CLIENTS: usize = 50;

#[test]
fn sigterm_with_puts_in_flight_keeps_every_answered_put_and_exits_promptly() {
    let (node, api) = TestNode::init_with_api("stopping");
    let daemon = node.start();
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(20)))
        .build()
        .into();
    wait_until("the API answers", || {
        agent.get(format!("http://{api}/health")).call().is_ok()
    });
    let answered = Arc::new(Mutex::new(Vec::new()));
    let started = Arc::new(Barrier::new(CLIENTS + 1));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|client| {
            let (agent, api) = (agent.clone(), api.clone());
            let (answered, started) = (answered.clone(), started.clone());
            std::thread::spawn(move || {
                started.wait();
                // Each client keeps a PUT in flight until the daemon stops answering.
                for round in 0.. {
                    let key = format!("c{client}.r{round}");
                    match put(&agent, &api, &key) {
                        Some(200) => answered.lock().unwrap().push(key),
                        _ => return,
                    }
                }
            })
        })
        .collect();
    started.wait();
    wait_until("some PUTs are answered", || {
        answered.lock().unwrap().len() >= CLIENTS
    });
    let signalled = Instant::now();
    let code = daemon.stop();
    let took = signalled.elapsed();
    for client in clients {
        client.join().unwrap();
    }
    assert_eq!(code, 0, "the daemon must exit 0 on SIGTERM");
    assert!(took < Duration::from_secs(5), "exit took {took:?}");
    let answered = answered.lock().unwrap().clone();
    let stored: Value =
        serde_json::from_str(&node.run(&["mem", "ls", "--scope", "mesh", "--json"]).ok()).unwrap();
    let keys: std::collections::HashSet<&str> = stored
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["key"].as_str().unwrap())
        .collect();
    let lost: Vec<_> = answered
        .iter()
        .filter(|k| !keys.contains(k.as_str()))
        .collect();
    assert!(
        lost.is_empty(),
        "{} of {} answered PUTs lost after the stop: {lost:?}",
        lost.len(),
        answered.len()
    );
}

fn status(node: &TestNode) -> Value {
    serde_json::from_str(&node.run(&["status", "--json"]).ok()).unwrap()
}

#[test]
fn status_says_the_same_with_and_without_the_daemon() {
    let (node, _) = TestNode::init_listening("counted");
    let (peer, peer_addr) = TestNode::init_listening("peer");
    node.run(&["mem", "put", "mesh", "kept", "1"]).ok();
    // A scope whose every key is deleted still has its document, and still syncs.
    node.run(&["mem", "put", "user:ann", "gone", "2"]).ok();
    node.run(&["mem", "rm", "user:ann", "gone"]).ok();
    node.run_with_stdin(&["skill", "put", "triage"], b"steps")
        .ok();
    node.run(&["peers", "add", &peer.id(), &peer_addr, "--name", "peer"])
        .ok();
    let offline = status(&node);
    let daemon = node.start();
    let online = status(&node);
    assert_eq!(daemon.stop(), 0);
    assert_eq!(offline["running"], false);
    assert_eq!(online["running"], true);
    let fields = |status: &Value| {
        let mut keys: Vec<String> = status.as_object().unwrap().keys().cloned().collect();
        keys.sort();
        keys
    };
    assert_eq!(fields(&offline), fields(&online));
    for count in ["node_id", "documents", "memory_entries", "skills"] {
        assert_eq!(
            offline[count], online[count],
            "{count}: {offline} vs {online}"
        );
    }
    assert_eq!(
        offline["documents"], 3,
        "mesh, user:ann and skills: {offline}"
    );
    let peers = |status: &Value| {
        status["peers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| (p["id"].clone(), p["documents_behind"].clone()))
            .collect::<Vec<_>>()
    };
    assert_eq!(peers(&offline), peers(&online));
    assert_eq!(
        peers(&offline)[0].1,
        3,
        "the peer has none of the three documents"
    );
}

/// The operator sees what the memory budget holds: the budget from `meshd.toml`, the documents
/// in memory, and how often documents were read from the store. A write to a stored
/// document not in memory is appended without loading it; a new scope's document is made in
/// memory; reading a key's history loads its document.
#[test]
fn status_shows_the_documents_in_memory_against_the_configured_budget() {
    let (node, _) = TestNode::init_listening("budget");
    node.run(&["mem", "put", "user:ann", "a", "1"]).ok();
    node.run(&["mem", "put", "user:bob", "b", "2"]).ok();
    let config = node.file("meshd.toml");
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str("\n[store]\nmemory_budget_mb = 64\n");
    std::fs::write(&config, text).unwrap();
    let daemon = node.start();
    let before = status(&node)["in_memory"].clone();
    node.run(&["mem", "put", "user:ann", "a", "3"]).ok();
    node.run(&["mem", "put", "user:cat", "c", "4"]).ok();
    let written = status(&node)["in_memory"].clone();
    node.run(&["mem", "history", "user:bob", "b"]).ok();
    let after = status(&node)["in_memory"].clone();
    let shown = node.run(&["status"]).ok();
    assert_eq!(daemon.stop(), 0);
    assert_eq!(after["budget_bytes"], 64 << 20, "{after}");
    assert_eq!(
        before["documents"], 0,
        "reads and the start load none: {before}"
    );
    assert_eq!(
        (&written["documents"], &written["loads"]),
        (&1.into(), &0.into()),
        "the new scope is in memory, the write to user:ann was appended: {written}"
    );
    assert_eq!(
        (&after["documents"], &after["loads"]),
        (&2.into(), &1.into()),
        "the history loaded user:bob: {after}"
    );
    assert!(after["estimated_bytes"].as_u64().unwrap() > 0, "{after}");
    assert!(
        shown.contains("documents in memory: 2 (about ")
            && shown.contains("of a 64 MB budget), 1 loaded"),
        "{shown}"
    );
}

/// Input over the control socket's 16 MiB request limit failed with "Broken pipe", and a
/// listing over 16 MiB was cut and read as a version mismatch. Now input goes in pieces and
/// replies have no ceiling.
#[test]
fn a_22_mb_ingest_and_a_22_mb_listing_go_through_the_daemon() {
    let (node, _) = TestNode::init_listening("big");
    let daemon = node.start();
    let note = "n".repeat(1000);
    let count = 22_000;
    let input: String = (0..count)
        .map(|i| {
            format!(
                "{{\"type\":\"memory\",\"scope\":\"mesh\",\"key\":\"k{i}\",\"value\":\"{note}\",\"nodeId\":\"ceo\",\"ts\":1739123456}}\n"
            )
        })
        .collect();
    assert!(input.len() > 22_000_000);
    let run = node.run_with_stdin(&["bridge", "ingest"], input.as_bytes());
    assert_eq!(run.code, 0, "{}", run.stderr);
    let summary: Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(summary["memory"], count);
    assert_eq!(summary["ignored"], 0);
    let listing = node.run(&["mem", "ls", "--json"]);
    assert_eq!(listing.code, 0, "{}", listing.stderr);
    assert!(listing.stdout.len() > 16 * 1024 * 1024);
    let entries: Value = serde_json::from_str(&listing.stdout).unwrap();
    assert_eq!(entries.as_array().unwrap().len(), count);
    assert_eq!(daemon.stop(), 0);
}

/// One line that is not UTF-8 refused the whole input; it is one ignored item now.
#[test]
fn a_line_that_is_not_utf8_is_one_ignored_item() {
    let node = TestNode::init("bytes");
    let mut input = b"{\"type\":\"memory\",\"scope\":\"mesh\",\"key\":\"a\",\"value\":1,\"nodeId\":\"ceo\",\"ts\":1739123456}\n".to_vec();
    input.extend(b"{\"type\":\"memory\",\"scope\":\"mesh\",\"key\":\"\xff\xfe\",\"value\":2}\n");
    input.extend(b"{\"type\":\"memory\",\"scope\":\"mesh\",\"key\":\"c\",\"value\":3,\"nodeId\":\"ceo\",\"ts\":1739123456}\n");
    let run = node.run_with_stdin(&["bridge", "ingest"], &input);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let summary: Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(
        summary,
        serde_json::json!({"ingested": 2, "memory": 2, "skill": 0, "ignored": 1, "notApplied": 0})
    );
    assert!(
        run.stderr.contains("item 2 ignored: line 2 is not UTF-8"),
        "{}",
        run.stderr
    );
}

/// Whether the kernel may give the process huge pages (`THP_enabled` in its status, Linux 5.0
/// and later); `None` where the kernel does not say.
fn huge_pages_allowed(pid: u32) -> Option<bool> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("THP_enabled:"))?;
    Some(line.split_whitespace().nth(1)? == "1")
}

/// One-shot commands allocate with huge pages (sled's page table opens faster), the daemon
/// without (its resident memory counts more), unless the operator tuned jemalloc.
#[test]
fn the_daemon_turns_huge_pages_off_for_itself_unless_the_operator_tuned_the_allocator() {
    let (node, _) = TestNode::init_listening("pages");
    let daemon = node.start();
    let Some(allowed) = huge_pages_allowed(daemon.pid()) else {
        eprintln!("skipped: this kernel does not report THP_enabled in /proc/<pid>/status");
        return;
    };
    assert!(!allowed, "the daemon left huge pages on");
    assert_eq!(daemon.stop(), 0);

    let tuned = node
        .command(&["run"])
        .env("_RJEM_MALLOC_CONF", "dirty_decay_ms:1000")
        .env("RUST_LOG", "warn")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let tuned = support::Daemon::new(tuned);
    let socket = node.file("control.sock");
    wait_until("the tuned daemon answers", || {
        support::try_ask(&socket, meshd::control::Status {}).is_some()
    });
    assert_eq!(huge_pages_allowed(tuned.pid()), Some(true));
    assert_eq!(tuned.stop(), 0);
}

/// The greatest log position a sled snapshot of the store was saved at (`snap.<hex>`).
fn newest_snapshot(node: &TestNode) -> u64 {
    std::fs::read_dir(node.file("store"))
        .unwrap()
        .filter_map(|entry| {
            let name = entry.unwrap().file_name().into_string().ok()?;
            u64::from_str_radix(name.strip_prefix("snap.")?, 16).ok()
        })
        .max()
        .expect("sled saves a snapshot when it opens the store")
}

/// sled saves its page table only when it opens a store; a daemon that stops opens it once
/// more, so the next command does not replay everything the daemon wrote.
#[test]
fn a_stopped_daemon_leaves_its_page_table_saved_past_what_it_wrote() {
    let (node, _) = TestNode::init_listening("replay");
    let daemon = node.start();
    let at_start = newest_snapshot(&node);
    for i in 0..50 {
        node.run(&["mem", "put", "mesh", &format!("k{i}"), "1"])
            .ok();
    }
    assert_eq!(daemon.stop(), 0);
    assert!(
        newest_snapshot(&node) > at_start,
        "the page table was last saved when the daemon started"
    );
    assert_eq!(node.run(&["mem", "get", "mesh", "k49"]).ok().trim(), "1");
}
