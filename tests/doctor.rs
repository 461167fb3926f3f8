//! `meshd doctor` through the real binary: a healthy node passes, and each problem it is
//! given is reported with its fix and the right exit status.

mod support;

use std::os::unix::fs::PermissionsExt;

use serde_json::Value;
use support::{free_udp_addr, Run, TestNode};

/// The report's line for `check` (`ok    store: ...`), with its fix line if any.
fn line<'a>(run: &'a Run, check: &str) -> &'a str {
    run.stdout
        .lines()
        .find(|line| {
            line.get(6..)
                .is_some_and(|rest| rest.starts_with(&format!("{check}: ")))
        })
        .unwrap_or_else(|| panic!("no {check} line in:\n{}", run.stdout))
}

fn fix_after<'a>(run: &'a Run, check: &str) -> &'a str {
    let at = line(run, check);
    let mut lines = run.stdout.lines().skip_while(|l| *l != at).skip(1);
    lines
        .next()
        .and_then(|l| l.strip_prefix("      fix: "))
        .unwrap_or_else(|| panic!("no fix under {check} in:\n{}", run.stdout))
}

/// A node made as `meshd init` makes one in a new directory: the test's temporary home
/// already existed (0755 here), so it is made private as init makes a home it creates.
fn private(node: TestNode) -> TestNode {
    std::fs::set_permissions(node.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    node
}

fn with_api(name: &str) -> (TestNode, String) {
    let (node, api) = TestNode::init_with_api(name);
    (private(node), api)
}

fn without_api(name: &str) -> TestNode {
    private(TestNode::init_listening(name).0)
}

fn assert_all_ok(run: &Run) {
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    for line in run.stdout.lines() {
        assert!(line.starts_with("ok    "), "not ok: {line}\n{}", run.stdout);
    }
}

#[test]
fn a_healthy_node_passes_with_and_without_its_daemon() {
    let (node, api) = with_api("ceo");
    node.run(&["mem", "put", "mesh", "deploy.window", "\"Fridays\""])
        .ok();
    let alone = node.run(&["doctor"]);
    assert_all_ok(&alone);
    for check in [
        "home",
        "store",
        "free space",
        "clock",
        "QUIC port",
        "API port",
        "peers",
        "OpenClaw",
    ] {
        line(&alone, check);
    }
    assert!(
        line(&alone, "store").contains("1 documents load"),
        "{}",
        alone.stdout
    );
    assert!(
        line(&alone, "clock").contains("mesh:deploy.window"),
        "{}",
        alone.stdout
    );
    assert!(line(&alone, "API port").contains(&format!("{api} (TCP) is free")));

    let _daemon = node.start();
    let running = node.run(&["doctor"]);
    assert_all_ok(&running);
    assert!(
        line(&running, "store").contains("running daemon"),
        "{}",
        running.stdout
    );
    assert!(
        line(&running, "API port").contains(&format!("{api} (TCP) is held by this node's daemon")),
        "{}",
        running.stdout
    );
    assert!(line(&running, "QUIC port").contains("held by this node's daemon"));
}

#[test]
fn a_key_others_can_read_fails_with_the_chmod_that_fixes_it() {
    let node = without_api("ceo");
    let key = node.file("node.key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let run = node.run(&["doctor"]);
    assert_eq!(run.code, 1, "{}", run.stdout);
    assert!(
        line(&run, "home").starts_with("FAIL  home: "),
        "{}",
        run.stdout
    );
    assert!(line(&run, "home").contains("0644"), "{}", run.stdout);
    assert_eq!(
        fix_after(&run, "home"),
        format!("chmod 600 {}", key.display())
    );
    assert!(run.stderr.contains("1 of "), "{}", run.stderr);

    let json: Value = serde_json::from_str(&node.run(&["doctor", "--json"]).stdout).unwrap();
    assert_eq!(json["ok"], false);
    let home = &json["checks"][0];
    assert_eq!(
        (home["check"].as_str(), home["status"].as_str()),
        (Some("home"), Some("fail"))
    );

    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    assert_all_ok(&node.run(&["doctor"]));
}

#[test]
fn ports_held_by_another_process_fail() {
    let (node, api) = with_api("ceo");
    let quic = node.run(&["id", "--json"]).ok();
    let quic: Value = serde_json::from_str(&quic).unwrap();
    let quic = quic["listen"].as_str().unwrap().to_string();
    let _udp = std::net::UdpSocket::bind(&quic).unwrap();
    let _tcp = std::net::TcpListener::bind(&api).unwrap();
    let run = node.run(&["doctor"]);
    assert_eq!(run.code, 1, "{}", run.stdout);
    let expected = [
        (
            "QUIC port",
            format!("FAIL  QUIC port: {quic} (UDP) is held by another process"),
            "listen under [node]",
        ),
        (
            "API port",
            format!("FAIL  API port: {api} (TCP) is held by another process"),
            "listen under [api]",
        ),
    ];
    for (check, start, setting) in expected {
        assert!(line(&run, check).starts_with(&start), "{}", run.stdout);
        assert!(fix_after(&run, check).contains(setting), "{}", run.stdout);
    }
}

#[test]
fn peers_that_cannot_be_reached_are_reported() {
    let node = without_api("ceo");
    let other = without_api("sec");
    let id = other.id();
    node.run(&["peers", "add", &id, "nas.invalid:7464", "--name", "sec"])
        .ok();
    let run = node.run(&["doctor"]);
    assert_eq!(run.code, 1, "{}", run.stdout);
    assert!(
        line(&run, "peer sec").starts_with("FAIL  peer sec: no address resolves: nas.invalid:7464"),
        "{}",
        run.stdout
    );
    assert!(
        fix_after(&run, "peer sec").starts_with(&format!("meshd peers add {id} NEW_HOST:PORT")),
        "{}",
        run.stdout
    );

    // An address that resolves but where nothing answers: the daemon says disconnected.
    let silent = free_udp_addr();
    node.run(&["peers", "add", &id, &silent]).ok();
    let _daemon = node.start();
    let run = node.run(&["doctor"]);
    assert_eq!(run.code, 0, "{}", run.stdout);
    let peer = line(&run, "peer sec");
    assert!(
        peer.starts_with("warn  peer sec: disconnected"),
        "{}",
        run.stdout
    );
    assert!(peer.contains(&silent), "{}", run.stdout);
    assert!(
        fix_after(&run, "peer sec").contains(&node.id()),
        "{}",
        run.stdout
    );

    // Once a dial has failed, the line gives its reason at that address, as status does.
    support::wait_until("a dial to the silent peer fails", || {
        let status: Value = serde_json::from_str(&node.run(&["status", "--json"]).ok()).unwrap();
        !status["peers"][0]["unreachable"].is_null()
    });
    let run = node.run(&["doctor"]);
    let peer = line(&run, "peer sec");
    assert!(
        peer.contains(&format!("{silent}: timed out")),
        "{}",
        run.stdout
    );
    assert!(
        fix_after(&run, "peer sec").contains("UDP port is open"),
        "{}",
        run.stdout
    );
}

#[test]
fn openclaw_wiring_is_checked_when_openclaw_json_exists() {
    let node = without_api("ceo");
    let openclaw = node.file("gateway");
    std::fs::create_dir(&openclaw).unwrap();
    let home = openclaw.to_str().unwrap();
    let absent = node.run(&["doctor", "--openclaw-home", home]);
    assert!(
        line(&absent, "OpenClaw").contains("not an OpenClaw host"),
        "{}",
        absent.stdout
    );

    node.run(&["openclaw", "setup", "--openclaw-home", home])
        .ok();
    assert_all_ok(&node.run(&["doctor", "--openclaw-home", home]));

    let config = openclaw.join("openclaw.json");
    let here = std::fs::canonicalize(node.path()).unwrap();
    let text = std::fs::read_to_string(&config).unwrap();
    let elsewhere = text.replace(here.to_str().unwrap(), "/srv/another-node");
    assert_ne!(text, elsewhere);
    std::fs::write(&config, elsewhere).unwrap();
    let run = node.run(&["doctor", "--openclaw-home", home]);
    assert_eq!(run.code, 1, "{}", run.stdout);
    assert!(
        line(&run, "OpenClaw").starts_with("FAIL  OpenClaw: "),
        "{}",
        run.stdout
    );
    assert!(
        line(&run, "OpenClaw").contains("/srv/another-node"),
        "{}",
        run.stdout
    );
    assert_eq!(
        fix_after(&run, "OpenClaw"),
        format!("meshd openclaw setup --openclaw-home {home}")
    );
}

#[test]
fn a_home_made_by_init_is_private_and_passes_as_it_is() {
    let parent = tempfile::tempdir().unwrap();
    let node = TestNode::at(parent.path().join("meshd"));
    node.run(&["init", "--name", "ceo", "--listen", &free_udp_addr()])
        .ok();
    let mode = std::fs::metadata(node.path()).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o700);
    let run = node.run(&["doctor"]);
    assert!(
        line(&run, "home").starts_with("ok    home: "),
        "{}",
        run.stdout
    );
}

#[test]
fn a_store_held_by_a_process_that_does_not_answer_fails_with_how_to_find_it() {
    let node = without_api("ceo");
    let _daemon = node.start();
    // The daemon holds the store but can no longer be asked: as a daemon whose socket file
    // was removed. doctor waits for the store as every command does (10 s), then says so.
    std::fs::remove_file(node.file("control.sock")).unwrap();
    let run = node.run(&["doctor"]);
    assert_eq!(run.code, 1, "{}", run.stdout);
    assert!(
        line(&run, "store").starts_with("FAIL  store: cannot be read: ")
            && line(&run, "store").contains("in use by another meshd"),
        "{}",
        run.stdout
    );
    let store_db = node.file("store").join("db");
    assert!(
        fix_after(&run, "store").contains(&format!("lsof {}", store_db.display())),
        "{}",
        run.stdout
    );
    assert!(
        line(&run, "clock").starts_with("warn  clock: not checked"),
        "{}",
        run.stdout
    );
}
