//! LAN discovery over mDNS between real daemons. Multicast never leaves this host: the test
//! moves its own thread (and so every process it starts) into a new network namespace whose
//! loopback carries multicast, and the nodes listen on loopback, where they announce. Where
//! no namespace can be made (not root, no `ip`), the test says so and passes without running.

mod support;

use std::process::Command;

use serde_json::Value;
use support::{free_udp_addr, wait_until, TestNode};

/// Moves this thread into a fresh network namespace with multicast on its loopback; why not,
/// when it cannot.
fn private_multicast_loopback() -> Result<(), String> {
    // Only this thread moves: the test harness runs each test on a thread of its own.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        return Err(format!(
            "cannot make a network namespace ({}); run as root",
            std::io::Error::last_os_error()
        ));
    }
    for args in [
        &["link", "set", "lo", "up"][..],
        &["link", "set", "lo", "multicast", "on"],
        &["route", "add", "224.0.0.0/4", "dev", "lo"],
    ] {
        let status = Command::new("ip").args(args).status();
        if !matches!(status, Ok(s) if s.success()) {
            return Err(format!("`ip {}` failed: {status:?}", args.join(" ")));
        }
    }
    Ok(())
}

/// A node listening on `listen` with discovery on.
fn node_announcing(name: &str) -> (TestNode, String) {
    let (node, listen) = TestNode::init_listening(name);
    let config = node.file("meshd.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, text.replace("mdns = false", "mdns = true")).unwrap();
    (node, listen)
}

fn discover(node: &TestNode) -> Vec<Value> {
    let out = node
        .run(&["peers", "discover", "--wait", "200ms", "--json"])
        .ok();
    serde_json::from_str::<Vec<Value>>(&out).unwrap()
}

fn peer_addresses(node: &TestNode, id: &str) -> Vec<String> {
    let peers: Vec<Value> =
        serde_json::from_str(&node.run(&["peers", "ls", "--json"]).ok()).unwrap();
    let peer = peers.iter().find(|p| p["id"] == id).expect("the peer");
    serde_json::from_value(peer["addresses"].clone()).unwrap()
}

#[test]
fn daemons_find_each_other_and_a_known_peer_is_followed_to_its_new_address() {
    if let Err(why) = private_multicast_loopback() {
        eprintln!("SKIPPED: LAN discovery needs multicast in a private network namespace: {why}");
        return;
    }
    let (a, _) = node_announcing("alpha");
    let (b, b_listen) = node_announcing("beta");
    let (a_id, b_id) = (a.id(), b.id());
    let _a_daemon = a.start();
    let b_daemon = b.start();

    wait_until("alpha sees beta on the LAN", || {
        discover(&a).iter().any(|n| n["id"] == b_id.as_str())
    });
    let seen = discover(&a);
    let beta = seen.iter().find(|n| n["id"] == b_id.as_str()).unwrap();
    assert_eq!(beta["name"], "beta");
    assert_eq!(beta["addresses"], serde_json::json!([b_listen]));
    assert_eq!(beta["paired"], false, "discovery never pairs");
    let text = a.run(&["peers", "discover", "--wait", "0s"]).ok();
    assert!(
        text.contains(&b_id) && text.contains("not paired"),
        "{text}"
    );
    assert!(
        a.run(&["peers", "ls", "--json"]).ok().trim() == "[]",
        "nothing was paired"
    );

    // Paired by hand both ways, then beta comes back on another port.
    a.run(&["peers", "add", &b_id, &b_listen]).ok();
    b.run(&["peers", "add", &a_id, &free_udp_addr()]).ok();
    b_daemon.stop();
    let moved = free_udp_addr();
    let config = b.file("meshd.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, text.replace(&b_listen, &moved)).unwrap();
    let _b_daemon = b.start();
    wait_until("alpha follows beta to its new address", || {
        peer_addresses(&a, &b_id) == [moved.clone()]
    });
    let seen = discover(&a);
    let beta = seen.iter().find(|n| n["id"] == b_id.as_str()).unwrap();
    assert_eq!(beta["paired"], true);
    wait_until("alpha is connected to beta again", || {
        let peers: Vec<Value> =
            serde_json::from_str(&a.run(&["peers", "ls", "--json"]).ok()).unwrap();
        peers
            .iter()
            .any(|p| p["id"] == b_id.as_str() && p["connected"] == true)
    });
}

#[test]
fn discover_says_when_discovery_is_off() {
    let (node, _) = TestNode::init_listening("quiet");
    let says_off = |node: &TestNode| {
        let run = node.run(&["peers", "discover", "--wait", "0s"]);
        assert_eq!(run.code, 1);
        assert!(
            run.stderr.contains("[discovery] mdns = true"),
            "{}",
            run.stderr
        );
    };
    says_off(&node);
    let _daemon = node.start();
    says_off(&node);
}

#[test]
fn discover_without_the_daemon_listens_for_a_while_itself() {
    if let Err(why) = private_multicast_loopback() {
        eprintln!("SKIPPED: LAN discovery needs multicast in a private network namespace: {why}");
        return;
    }
    let (a, _) = node_announcing("alpha");
    let (b, b_listen) = node_announcing("beta");
    let b_id = b.id();
    let _b_daemon = b.start();
    let out = a.run(&["peers", "discover", "--wait", "2s", "--json"]).ok();
    let seen: Vec<Value> = serde_json::from_str(&out).unwrap();
    let beta = seen.iter().find(|n| n["id"] == b_id.as_str());
    let beta = beta.unwrap_or_else(|| panic!("alpha, without its daemon, hears beta: {out}"));
    assert_eq!(beta["addresses"], serde_json::json!([b_listen]));
    assert_eq!(beta["paired"], false);
}
