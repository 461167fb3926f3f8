//! Real `meshd run` processes talking QUIC on loopback.

mod support;

use serde_json::{json, Value};
use support::{wait_until, TestNode};

fn value(node: &TestNode, scope: &str, key: &str) -> Option<Value> {
    let run = node.run(&["mem", "get", scope, key]);
    (run.code == 0).then(|| serde_json::from_str(run.stdout.trim()).unwrap())
}

fn pair(a: &TestNode, b: (&TestNode, &str)) {
    a.run(&["peers", "add", &b.0.id(), b.1]).ok();
}

fn connected(node: &TestNode) -> usize {
    let status: Value = serde_json::from_str(&node.run(&["status", "--json"]).ok()).unwrap();
    status["peers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["connected"] == true)
        .count()
}

/// Starts `meshd run` with its log at `level` in a file, and waits until it answers.
fn start_logging(node: &TestNode, level: &str) -> (support::Daemon, std::path::PathBuf) {
    let log = node.file("run.log");
    let child = node
        .command(&["run"])
        .env("RUST_LOG", level)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let daemon = support::Daemon::new(child);
    wait_until("the daemon answers", || {
        support::try_ask(&node.file("control.sock"), meshd::control::Status {}).is_some()
    });
    (daemon, log)
}

/// Three nodes in a chain A–B–C, each pair added on both sides.
fn chain() -> [(TestNode, String); 3] {
    let nodes = [
        TestNode::init_listening("a"),
        TestNode::init_listening("b"),
        TestNode::init_listening("c"),
    ];
    for (x, y) in [(0, 1), (1, 0), (1, 2), (2, 1)] {
        pair(&nodes[x].0, (&nodes[y].0, &nodes[y].1));
    }
    nodes
}

#[test]
fn writes_on_a_reach_c_through_b() {
    let [(a, _), (b, _), (c, _)] = chain();
    let _daemons = [a.start(), b.start(), c.start()];
    a.run(&[
        "mem",
        "put",
        "mesh",
        "user.preferences",
        r#"{"shortAnswers":true}"#,
    ])
    .ok();
    a.run_with_stdin(&["skill", "put", "triage"], b"# Triage\n")
        .ok();
    wait_until("C sees A's write", || {
        value(&c, "mesh", "user.preferences").is_some()
    });
    assert_eq!(
        value(&c, "mesh", "user.preferences"),
        Some(json!({"shortAnswers": true}))
    );
    wait_until("C sees A's skill", || {
        c.run(&["skill", "get", "triage"]).stdout == "# Triage\n"
    });
    assert_eq!(connected(&b), 2);
    assert_eq!(connected(&a), 1, "A and C are not peers");
    let peers: Value = serde_json::from_str(&b.run(&["peers", "ls", "--json"]).ok()).unwrap();
    let peers = peers.as_array().unwrap();
    assert_eq!(peers.len(), 2);
    assert!(peers.iter().all(|p| p["connected"] == true), "{peers:?}");
}

#[test]
fn concurrent_writes_converge_after_the_relay_is_killed_and_restarted() {
    let [(a, _), (b, _), (c, _)] = chain();
    let (da, db, dc) = (a.start(), b.start(), c.start());
    wait_until("links up", || connected(&b) == 2);
    db.kill();
    a.run(&["mem", "put", "mesh", "tz", "\"UTC\""]).ok();
    c.run(&["mem", "put", "mesh", "tz", "\"CET\""]).ok();
    let _db = b.start();
    wait_until("all three agree", || {
        let values: Vec<_> = [&a, &b, &c]
            .iter()
            .map(|n| value(n, "mesh", "tz"))
            .collect();
        values[0].is_some() && values.iter().all(|v| *v == values[0])
    });
    // The losing write stays visible as a conflict everywhere.
    for node in [&a, &b, &c] {
        let entry: Value = serde_json::from_str(
            &node
                .run(&["mem", "get", "mesh", "tz", "--json", "--conflicts"])
                .ok(),
        )
        .unwrap();
        assert_eq!(entry["conflicts"].as_array().unwrap().len(), 1, "{entry}");
    }
    assert_eq!(da.stop(), 0);
    assert_eq!(dc.stop(), 0);
}

#[test]
fn an_unknown_node_is_refused_listed_as_pending_and_its_writes_never_arrive() {
    let (a, a_addr) = TestNode::init_listening("a");
    let (stranger, _) = TestNode::init_listening("stranger");
    // The stranger knows A; A never added the stranger.
    pair(&stranger, (&a, &a_addr));
    stranger
        .run(&["mem", "put", "mesh", "intrusion", "true"])
        .ok();
    let _da = a.start();
    let _ds = stranger.start();
    let stranger_id = stranger.id();
    wait_until("A lists the stranger as pending", || {
        a.run(&["peers", "pending"]).stdout.contains(&stranger_id)
    });
    assert_eq!(connected(&a), 0);
    assert_eq!(a.run(&["mem", "get", "mesh", "intrusion"]).code, 3);
}

#[test]
fn a_peer_without_write_access_cannot_change_a_scope() {
    let (a, a_addr) = TestNode::init_listening("a");
    let (b, b_addr) = TestNode::init_listening("b");
    // A lets B read mesh but write only user:b.
    a.run(&["peers", "add", &b.id(), &b_addr, "--write", "user:b"])
        .ok();
    pair(&b, (&a, &a_addr));
    let _da = a.start();
    let _db = b.start();
    wait_until("linked", || connected(&a) == 1);
    a.run(&["mem", "put", "mesh", "owner", "\"a\""]).ok();
    wait_until("B reads A's mesh scope", || {
        value(&b, "mesh", "owner").is_some()
    });
    b.run(&["mem", "put", "mesh", "owner", "\"b\""]).ok();
    b.run(&["mem", "put", "user:b", "note", "\"allowed\""]).ok();
    wait_until("A receives B's permitted write", || {
        value(&a, "user:b", "note").is_some()
    });
    b.run(&["sync"]).ok();
    assert_eq!(value(&a, "mesh", "owner"), Some(json!("a")));
    // A's status names the peer whose changes it refused, and why.
    let status: Value = serde_json::from_str(&a.run(&["status", "--json"]).ok()).unwrap();
    let refused = &status["peers"][0]["refused"];
    assert_eq!(refused["doc"], "mesh", "{status}");
    assert!(
        refused["reason"]
            .as_str()
            .unwrap()
            .contains("may not write"),
        "{status}"
    );
    assert!(a
        .run(&["status"])
        .ok()
        .contains("its changes to mesh were refused"));
}

/// A paired peer that sends garbage gets its link closed; the daemon and its data carry on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_frames_close_the_link_and_leave_the_store_intact() {
    use meshd::net::{endpoint, identity::Identity, PeerPins};
    let (a, a_addr) = TestNode::init_listening("a");
    a.run(&["mem", "put", "mesh", "kept", "\"safe\""]).ok();
    let rogue = Identity::generate().unwrap();
    a.run(&["peers", "add", &rogue.node_id.to_string(), "127.0.0.1:9"])
        .ok();
    let _da = a.start();
    let a_id: meshd::model::NodeId = a.id().parse().unwrap();
    let pins = PeerPins::new();
    pins.allow(a_id);
    let local = endpoint::bind(&rogue, "127.0.0.1:0".parse().unwrap(), pins).unwrap();
    for junk in [
        vec![0xff; 64],                                // wrong version byte
        vec![1, 0xff, 0xff, 0xff, 0xff],               // declares a frame far over the limit
        [vec![1, 0, 0, 0, 8], vec![0xee; 8]].concat(), // right header, body that does not parse
    ] {
        let (connection, _) = endpoint::connect(&local, a_addr.parse().unwrap(), a_id)
            .await
            .unwrap();
        let (mut send, mut recv) = connection.open_bi().await.unwrap();
        send.write_all(&junk).await.unwrap();
        let _ = send.finish();
        // The daemon answers with its Hello, then closes the link on the junk.
        let closed = tokio::time::timeout(std::time::Duration::from_secs(10), async {
            let mut buffer = [0u8; 4096];
            while let Ok(Some(_)) = recv.read(&mut buffer).await {}
            connection.closed().await
        })
        .await;
        assert!(closed.is_ok(), "the daemon kept a link that sent junk");
    }
    assert_eq!(value(&a, "mesh", "kept"), Some(json!("safe")));
    assert!(a
        .run(&["status", "--json"])
        .ok()
        .contains("\"running\":true"));
}

/// Writes through the local HTTP API travel to peers like CLI writes.
#[test]
fn http_api_writes_reach_peers() {
    use std::io::{Read, Write};
    let (a, a_addr) = TestNode::init_listening("a");
    let (b, b_addr) = TestNode::init_listening("b");
    let api = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let config = a.file("meshd.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    let text = text.replace(
        "[api]\nenabled = false",
        &format!("[api]\nlisten = \"{api}\""),
    );
    std::fs::write(&config, text).unwrap();
    pair(&a, (&b, &b_addr));
    pair(&b, (&a, &a_addr));
    let _da = a.start();
    let _db = b.start();
    wait_until("linked", || connected(&a) == 1);
    let body = r#"{"scope":"mesh","key":"from.http","value":{"ok":true},"node_id":"dashboard"}"#;
    let mut stream = std::net::TcpStream::connect(api).unwrap();
    write!(
        stream,
        "PUT /mesh/memory HTTP/1.1\r\nHost: {api}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    wait_until("B sees the HTTP write", || {
        value(&b, "mesh", "from.http").is_some()
    });
    assert_eq!(value(&b, "mesh", "from.http"), Some(json!({"ok": true})));
}

#[test]
fn sync_with_a_disconnected_peer_fails_and_says_why() {
    let (a, _) = TestNode::init_listening("a");
    let (b, b_listen) = TestNode::init_listening("b");
    a.run(&["peers", "add", &b.id(), &b_listen, "--name", "nas"])
        .ok();
    let _a = a.start();
    let run = a.run(&["sync", "--peer", "nas"]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(
        run.stderr.contains("nas is not connected"),
        "{}",
        run.stderr
    );
}

#[test]
fn a_stranger_dialing_again_and_again_is_warned_about_once_until_the_list_is_cleared() {
    let (a, a_addr) = TestNode::init_listening("a");
    let (stranger, _) = TestNode::init_listening("stranger");
    pair(&stranger, (&a, &a_addr));
    let (_da, log) = start_logging(&a, "warn");
    let _ds = stranger.start();
    wait_until("the stranger has tried three times", || {
        let pending: Value = serde_json::from_str(&a.run(&["peers", "pending", "--json"]).stdout)
            .unwrap_or_default();
        pending["refused"].as_array().is_some_and(|list| {
            list.iter()
                .any(|p| p["attempts"].as_u64().is_some_and(|n| n >= 3))
        })
    });
    let text = std::fs::read_to_string(&log).unwrap();
    assert_eq!(text.matches("refused a connection").count(), 1, "{text}");

    // Cleared: the list is forgotten, on disk and in the daemon; the stranger, still dialing,
    // is listed and warned about afresh.
    let cleared = a.run(&["peers", "pending", "--clear"]);
    assert_eq!(cleared.code, 0, "{}", cleared.stderr);
    assert!(
        cleared.stdout.contains(&stranger.id()),
        "{}",
        cleared.stdout
    );
    assert!(
        cleared.stderr.contains("forgot 1 refused node ids"),
        "{}",
        cleared.stderr
    );
    wait_until("the stranger is listed again, warned about again", || {
        let listed = a.run(&["peers", "pending", "--json"]).stdout;
        let text = std::fs::read_to_string(&log).unwrap();
        listed.contains(&stranger.id()) && text.matches("refused a connection").count() == 2
    });
}

/// A peer that closes every link at once (as a node closes one on something it refuses) is
/// dialed again with backoff, not in a loop; the node warns once and `meshd status` says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_keeps_closing_the_link_is_redialed_with_backoff() {
    use meshd::net::{endpoint, identity::Identity, CloseCode, PeerPins};
    use std::time::{Duration, Instant};
    let (a, _) = TestNode::init_listening("a");
    let refuser = Identity::generate().unwrap();
    let a_id: meshd::model::NodeId = a.id().parse().unwrap();
    let pins = PeerPins::new();
    pins.allow(a_id);
    let local = endpoint::bind(&refuser, "127.0.0.1:0".parse().unwrap(), pins).unwrap();
    let address = local.local_addr().unwrap().to_string();
    a.run(&["peers", "add", &refuser.node_id.to_string(), &address])
        .ok();
    let log = a.file("run.log");
    let child = a
        .command(&["run"])
        .env("RUST_LOG", "warn")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let _da = support::Daemon::new(child);
    // Every connection A makes over 8 s is closed as soon as A speaks on it.
    let deadline = Instant::now() + Duration::from_secs(8);
    let mut links = 0;
    while let Ok(Some(incoming)) =
        tokio::time::timeout_at(deadline.into(), local.quic().accept()).await
    {
        let Ok((connection, _)) = endpoint::accept(&local, incoming).await else {
            continue;
        };
        links += 1;
        // The streams stay open until the close, so A reads the close and its reason.
        let _streams = tokio::time::timeout(Duration::from_secs(5), connection.accept_bi()).await;
        CloseCode::LinkFailed.close(&connection, "refused for the test: too big");
    }
    // Backoff from 250 ms doubling: about 6 connections in 8 s; a loop makes hundreds.
    assert!((2..=15).contains(&links), "{links} connections in 8 s");
    let status: Value = serde_json::from_str(&a.run(&["status", "--json"]).ok()).unwrap();
    let failure = &status["peers"][0]["link_failure"];
    assert!(
        failure["reason"]
            .as_str()
            .is_some_and(|r| r.contains("refused for the test: too big")),
        "{status}"
    );
    assert!(
        failure["failures"].as_u64().is_some_and(|n| n >= 2),
        "{status}"
    );
    assert!(a.run(&["status"]).ok().contains("its links keep failing"));
    let text = std::fs::read_to_string(&log).unwrap();
    assert_eq!(text.matches("link closed").count(), 1, "{text}");
    assert!(text.contains("reconnecting with backoff"), "{text}");
}

#[test]
fn logs_name_peers_by_their_name() {
    let (a, a_addr) = TestNode::init_listening("a");
    let (b, b_addr) = TestNode::init_listening("b");
    a.run(&["peers", "add", &b.id(), &b_addr, "--name", "nas"])
        .ok();
    pair(&b, (&a, &a_addr));
    let (_da, log) = start_logging(&a, "info");
    let _db = b.start();
    wait_until("A logs the link", || {
        std::fs::read_to_string(&log).is_ok_and(|text| text.contains("connected"))
    });
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("peer=nas"), "{text}");
    assert!(!text.contains("Some("), "{text}");
}

/// libfaketime, which makes a process's wall clock run ahead of the machine's; `None` when it
/// is not installed (`.ci/run` installs Debian's faketime).
fn libfaketime() -> Option<std::path::PathBuf> {
    let lib = std::fs::read_dir("/usr/lib").ok()?.find_map(|dir| {
        let candidate = dir.ok()?.path().join("faketime/libfaketimeMT.so.1");
        candidate.exists().then_some(candidate)
    });
    if lib.is_none() {
        eprintln!("skipped: libfaketime is not installed (apt-get install faketime)");
    }
    lib
}

fn peer_link(node: &TestNode) -> Value {
    let status: Value = serde_json::from_str(&node.run(&["status", "--json"]).ok()).unwrap();
    status["peers"][0]["link"].clone()
}

#[test]
fn status_shows_each_peers_clock_offset_and_the_changes_not_here_yet() {
    let Some(faketime) = libfaketime() else {
        return;
    };
    let (a, a_listen) = TestNode::init_listening("a");
    let (b, b_listen) = TestNode::init_listening("b");
    pair(&a, (&b, &b_listen));
    pair(&b, (&a, &a_listen));
    a.run(&["mem", "put", "mesh", "from.a", "1"]).ok();
    let _a = a.start();
    // b's wall clock runs 30 s ahead of the machine's (within the minute peers accept);
    // its monotonic clock, which QUIC times with, is left alone.
    let b_log = b.file("run.log");
    let _b = support::Daemon::new(
        b.command(&["run"])
            .env("LD_PRELOAD", &faketime)
            .env("FAKETIME", "+30s")
            .env("FAKETIME_DONT_FAKE_MONOTONIC", "1")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&b_log).unwrap())
            .spawn()
            .unwrap(),
    );
    wait_until(
        "each side heard the other's clock and finished a round",
        || {
            let (on_a, on_b) = (peer_link(&a), peer_link(&b));
            on_a["clock_offset_ms"].is_i64()
                && on_b["clock_offset_ms"].is_i64()
                && on_a["changes_awaited"] == 0
                && on_b["changes_awaited"] == 0
        },
    );
    let offset = |node: &TestNode| peer_link(node)["clock_offset_ms"].as_i64().unwrap();
    assert!(
        (25_000..35_000).contains(&offset(&a)),
        "a sees b's clock {} ms ahead",
        offset(&a)
    );
    assert!(
        (-35_000..-25_000).contains(&offset(&b)),
        "b sees a's clock {} ms ahead",
        offset(&b)
    );
    let text = a.run(&["status"]).ok();
    assert!(text.contains("s ahead of ours"), "{text}");
    let doctor = a.run(&["doctor"]);
    let line = (doctor.stdout.lines())
        .find(|line| line.contains("peer clocks"))
        .unwrap_or_else(|| panic!("doctor checks the peers' clocks: {}", doctor.stdout));
    assert!(line.contains("s ahead of this one"), "{line}");
    let log = std::fs::read_to_string(&b_log).unwrap();
    assert_eq!(
        log.matches("the peer's clock is").count(),
        1,
        "b warns once about a's clock: {log}"
    );
    assert_eq!(value(&b, "mesh", "from.a"), Some(json!(1)));
}

/// A link paces pushes of its node's own writes (one push per 250 ms): the second of two
/// quick writes is held back. A node stopped right after it pushes it before it goes, so the
/// peer has it now rather than when the node is back.
#[test]
fn a_write_held_back_by_the_push_pace_reaches_the_peer_when_the_node_stops() {
    let (a, a_addr) = TestNode::init_listening("a");
    let (b, b_addr) = TestNode::init_listening("b");
    pair(&a, (&b, &b_addr));
    pair(&b, (&a, &a_addr));
    let (da, _db) = (a.start(), b.start());
    wait_until("linked", || connected(&a) == 1);
    let socket = a.file("control.sock");
    for key in ["pushed", "held"] {
        let put = meshd::control::MemPut {
            scope: "mesh".into(),
            key: key.into(),
            value: json!(key),
        };
        support::ask(&socket, put).unwrap();
    }
    assert_eq!(da.stop(), 0);
    let at_b = |key: &str| {
        let get = meshd::control::MemGet {
            scope: "mesh".into(),
            key: key.into(),
        };
        support::try_ask(&b.file("control.sock"), get).is_some_and(|answer| answer.is_ok())
    };
    wait_until("b holds both writes", || at_b("pushed") && at_b("held"));
}
