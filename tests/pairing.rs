//! Pairing by invite: `meshd invite` on one node, `meshd join TICKET` on the other, real
//! daemons talking QUIC on loopback.

mod support;

use meshd::invite::{InviteSecret, Ticket};
use serde_json::Value;
use support::{wait_until, TestNode};

fn invite(node: &TestNode, args: &[&str]) -> String {
    let mut command = vec!["invite"];
    command.extend_from_slice(args);
    let out = node.run(&command).ok();
    out.lines().last().unwrap().trim().to_string()
}

fn peers(node: &TestNode) -> Vec<Value> {
    let listed: Value = serde_json::from_str(&node.run(&["peers", "ls", "--json"]).ok()).unwrap();
    listed.as_array().unwrap().clone()
}

fn connected_to(node: &TestNode, id: &str) -> bool {
    peers(node)
        .iter()
        .any(|p| p["id"] == id && p["connected"] == true)
}

#[test]
fn invite_and_join_pair_two_nodes_with_one_command_each() {
    let (a, _) = TestNode::init_listening("mac-mini");
    let (b, _) = TestNode::init_listening("nas");
    let (_da, _db) = (a.start(), b.start());
    let ticket = invite(&a, &["--no-qr"]);
    assert!(ticket.starts_with("MESHD1"), "{ticket}");

    let joined = b.run(&["join", &ticket]).ok();
    assert!(joined.contains("joined mac-mini"), "{joined}");

    let (a_id, b_id) = (a.id(), b.id());
    wait_until("both nodes are connected to each other", || {
        connected_to(&a, &b_id) && connected_to(&b, &a_id)
    });
    let at_a = peers(&a);
    assert_eq!(at_a.len(), 1);
    assert_eq!(at_a[0]["name"], "nas", "the joiner's own name: {at_a:?}");
    assert_eq!(peers(&b)[0]["name"], "mac-mini");

    a.run(&["mem", "put", "mesh", "paired.by", "\"invite\""])
        .ok();
    wait_until("B sees A's write", || {
        b.run(&["mem", "get", "mesh", "paired.by"]).code == 0
    });
    a.run(&["sync", "--peer", "nas"]).ok();
    let b_at_a = peer_status(&a, &b_id);
    assert_eq!(b_at_a["changes_behind"], 0, "{b_at_a}");

    // Joining again with the same ticket (say, the first answer was lost) is answered the same.
    let again = b.run(&["join", &ticket]).ok();
    assert!(again.contains("joined mac-mini"), "{again}");
    assert_eq!(peers(&a).len(), 1);
}

#[test]
fn a_used_ticket_an_expired_invite_and_an_altered_ticket_are_refused() {
    let (a, _) = TestNode::init_listening("a");
    let (b, _) = TestNode::init_listening("b");
    let (c, _) = TestNode::init_listening("c");
    let _daemons = [a.start(), b.start(), c.start()];

    let ticket = invite(&a, &["--no-qr"]);
    // Another invite stays open, so strangers pass the handshake and A answers each join.
    let spare = invite(&a, &["--no-qr"]);
    b.run(&["join", &ticket]).ok();
    let again = c.run(&["join", &ticket]);
    assert_eq!(again.code, 1, "{}", again.stdout);
    assert!(
        again
            .stderr
            .contains(&format!("already used (by node {})", b.id())),
        "{}",
        again.stderr
    );

    // The inviter keeps its own expiry: a ticket whose printed expiry was pushed later
    // (the checksum is recomputed, the proof does not cover it) is still refused.
    let short = invite(&a, &["--no-qr", "--expires", "1s"]);
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let expired_here = c.run(&["join", &short]);
    assert_eq!(expired_here.code, 1);
    assert!(
        expired_here.stderr.contains("expired"),
        "{}",
        expired_here.stderr
    );
    let mut stretched = Ticket::decode(&short).unwrap();
    stretched.expires += 3600;
    let refused = c.run(&["join", &stretched.encode()]);
    assert_eq!(refused.code, 1);
    assert!(
        refused.stderr.contains("inviting node refused")
            && refused.stderr.contains("this ticket expired"),
        "{}",
        refused.stderr
    );

    let mut forged = Ticket::decode(&invite(&a, &["--no-qr"])).unwrap();
    forged.secret = InviteSecret([7; 32]);
    let altered = c.run(&["join", &forged.encode()]);
    assert_eq!(altered.code, 1);
    assert!(
        altered.stderr.contains("does not match"),
        "{}",
        altered.stderr
    );

    assert!(peers(&c).is_empty(), "a refused join leaves no peer behind");
    let pending: Value =
        serde_json::from_str(&a.run(&["peers", "pending", "--json"]).ok()).unwrap();
    assert!(
        pending["refused"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["id"] == c.id().as_str()),
        "C's refused joins are listed as pending: {pending}"
    );
    // A node already paired may join again: the spare pairs C, whom A refused until now.
    c.run(&["join", &spare]).ok();
    c.run(&["join", &invite(&a, &["--no-qr"])]).ok();
    assert_eq!(peers(&a).len(), 2, "B and C: {:?}", peers(&a));
    assert_eq!(peers(&c).len(), 1);
}

#[test]
fn join_says_what_to_do_without_a_daemon_or_with_a_damaged_ticket() {
    let (a, _) = TestNode::init_listening("a");
    let (b, _) = TestNode::init_listening("b");
    let _da = a.start();
    let ticket = invite(&a, &["--no-qr"]);
    let offline = b.run(&["join", &ticket]);
    assert_eq!(offline.code, 1);
    assert!(offline.stderr.contains("meshd run"), "{}", offline.stderr);

    let _db = b.start();
    let cut = b.run(&["join", &ticket[..ticket.len() - 4]]);
    assert_eq!(cut.code, 1);
    assert!(cut.stderr.contains("damaged"), "{}", cut.stderr);
    let own = a.run(&["join", &ticket]);
    assert_eq!(own.code, 1);
    assert!(own.stderr.contains("made by this node"), "{}", own.stderr);

    // Once B used A's only invite, A lets no stranger through the handshake.
    b.run(&["join", &ticket]).ok();
    let (c, _) = TestNode::init_listening("c");
    let _dc = c.start();
    let late = c.run(&["join", &ticket]);
    assert_eq!(late.code, 1);
    assert!(late.stderr.contains("no open invite"), "{}", late.stderr);
    assert!(peers(&c).is_empty(), "a refused join leaves no peer behind");
}

/// What `meshd status --json` says about the peer with this id.
fn peer_status(node: &TestNode, id: &str) -> Value {
    let status: Value = serde_json::from_str(&node.run(&["status", "--json"]).ok()).unwrap();
    status["peers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["id"] == id)
        .cloned()
        .unwrap()
}

fn dial_reason(node: &TestNode, id: &str) -> String {
    peer_status(node, id)["unreachable"]["addresses"][0]["reason"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[test]
fn status_says_why_a_peer_cannot_be_reached() {
    let (a, _) = TestNode::init_listening("a");
    let (one_sided, one_sided_addr) = TestNode::init_listening("one-sided");
    let (elsewhere, _) = TestNode::init_listening("elsewhere");
    let (down, down_addr) = TestNode::init_listening("down");
    // One-sided: A has it, it does not have A. Wrong node: ELSEWHERE's id at ONE-SIDED's
    // address. Wrong port: DOWN's address, where nothing listens.
    for (id, address) in [
        (one_sided.id(), &one_sided_addr),
        (elsewhere.id(), &one_sided_addr),
        (down.id(), &down_addr),
    ] {
        a.run(&["peers", "add", &id, address]).ok();
    }
    let (_d1, _da) = (one_sided.start(), a.start());

    let (one_sided_id, elsewhere_id, down_id) = (one_sided.id(), elsewhere.id(), down.id());
    wait_until("A knows why each dial failed", || {
        dial_reason(&a, &one_sided_id).contains("not in its peer list")
            && dial_reason(&a, &elsewhere_id).contains("another node answered")
            && dial_reason(&a, &down_id).contains("timed out: nothing answered")
    });
    assert!(
        dial_reason(&a, &elsewhere_id).contains(&one_sided_id),
        "names who answered"
    );
    let shown = a.run(&["status"]).ok();
    assert!(shown.contains("dialing it failed"), "{shown}");
    assert!(shown.contains("wrong address or port"), "{shown}");

    // Once the other side pairs too, the reason goes and the link says how it is.
    one_sided
        .run(&["peers", "add", &a.id(), "127.0.0.1:9"])
        .ok();
    wait_until("A connects to ONE-SIDED", || {
        peer_status(&a, &one_sided_id)["link"]["rtt_ms"].is_u64()
    });
    assert!(peer_status(&a, &one_sided_id)["unreachable"].is_null());
}

/// `init_listening` with `[invites] approve = true`.
fn init_approving(name: &str) -> TestNode {
    let (node, _) = TestNode::init_listening(name);
    let config = node.file("meshd.toml");
    let text = std::fs::read_to_string(&config).unwrap() + "\n[invites]\napprove = true\n";
    std::fs::write(&config, text).unwrap();
    node
}

fn pending(node: &TestNode) -> Value {
    serde_json::from_str(&node.run(&["peers", "pending", "--json"]).ok()).unwrap()
}

#[test]
fn with_approve_a_join_waits_until_the_operator_approves_or_denies_it() {
    let a = init_approving("gate");
    let (b, _) = TestNode::init_listening("nas");
    let (c, _) = TestNode::init_listening("laptop");
    let (d, _) = TestNode::init_listening("phone");
    let _daemons = [a.start(), b.start(), c.start(), d.start()];
    let (a_id, b_id, c_id) = (a.id(), b.id(), c.id());

    let ticket = invite(&a, &["--no-qr", "--read", "mesh", "--write", "mesh"]);
    let held = b.run(&["join", &ticket]).ok();
    assert!(
        held.contains("held for approval at gate")
            && held.contains(&format!("meshd peers approve {b_id}")),
        "{held}"
    );
    let waiting = pending(&a);
    let joins = waiting["joins"].as_array().unwrap();
    assert_eq!(joins.len(), 1, "{waiting}");
    assert_eq!(joins[0]["id"], b_id.as_str());
    assert_eq!(joins[0]["name"], "nas");
    let text = a.run(&["peers", "pending"]).ok();
    assert!(
        text.contains("join held for approval") && text.contains("offered: read mesh; write mesh"),
        "{text}"
    );
    assert!(peers(&a).is_empty(), "held, not admitted");
    assert_eq!(
        peers(&b).len(),
        1,
        "the joiner keeps the inviter, to be dialed back"
    );
    // Asking again while held is answered the same.
    let again = b.run(&["join", &ticket]).ok();
    assert!(again.contains("held for approval"), "{again}");

    let approved = a.run(&["peers", "approve", &b_id]);
    assert_eq!(approved.code, 0, "{}", approved.stderr);
    assert!(
        approved.stderr.contains("approved nas"),
        "{}",
        approved.stderr
    );
    wait_until("the approved joiner and the inviter are connected", || {
        connected_to(&a, &b_id) && connected_to(&b, &a_id)
    });
    assert_eq!(peers(&a)[0]["access"]["read"], serde_json::json!(["mesh"]));
    assert!(pending(&a)["joins"].as_array().unwrap().is_empty());
    let after = b.run(&["join", &ticket]).ok();
    assert!(after.contains("joined gate"), "approved since: {after}");

    // Denied: no peer, and the ticket stays used.
    let ticket = invite(&a, &["--no-qr"]);
    c.run(&["join", &ticket]).ok();
    let denied = a.run(&["peers", "deny", &c_id]);
    assert!(
        denied.stderr.contains("denied the join"),
        "{}",
        denied.stderr
    );
    assert_eq!(peers(&a).len(), 1, "only B");
    let refused = c.run(&["join", &ticket]);
    assert_eq!(refused.code, 1);
    assert_eq!(
        a.run(&["peers", "approve", &c_id]).code,
        3,
        "nothing to approve"
    );

    // `pending --clear` denies the held joins too.
    d.run(&["join", &invite(&a, &["--no-qr"])]).ok();
    let cleared = a.run(&["peers", "pending", "--clear"]);
    assert!(
        cleared.stderr.contains("denied 1 held joins"),
        "{}",
        cleared.stderr
    );
    assert!(pending(&a)["joins"].as_array().unwrap().is_empty());
    assert_eq!(peers(&a).len(), 1);
}

/// A joiner links back the moment it reads "accepted", while the inviter may still be
/// waiting for the join exchange to close: that link must be taken, not refused as a
/// stranger's. This joiner holds the exchange open to make the window wide.
#[test]
fn a_joiner_that_links_back_before_closing_the_join_exchange_is_taken() {
    use meshd::net::{endpoint, identity::Identity, join::JoinRequest, PeerPins};
    let (a, listen) = TestNode::init_listening("mac-mini");
    let _da = a.start();
    let ticket = Ticket::decode(&invite(&a, &["--no-qr"])).unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let _inside = runtime.enter();
    let identity = Identity::generate().unwrap();
    let pins = PeerPins::new();
    pins.allow(ticket.inviter);
    let joiner = endpoint::bind(&identity, "127.0.0.1:0".parse().unwrap(), pins).unwrap();
    let inviter_addr = listen.parse().unwrap();
    let (exchange, link) = runtime.block_on(async {
        let (exchange, _) = endpoint::dial_to_join(&joiner, inviter_addr, ticket.inviter)
            .await
            .unwrap();
        let (mut send, mut recv) = exchange.open_bi().await.unwrap();
        let request = JoinRequest {
            invite: ticket.invite,
            proof: meshd::invite::proof(
                &ticket.secret,
                ticket.invite,
                joiner.node_id(),
                ticket.inviter,
            )
            .to_vec(),
            listen_port: None,
            addresses: Vec::new(),
            name: Some("laptop".into()),
        };
        let body = serde_json::to_vec(&request).unwrap();
        send.write_all(&(body.len() as u32).to_be_bytes())
            .await
            .unwrap();
        send.write_all(&body).await.unwrap();
        send.finish().unwrap();
        let answer = recv.read_to_end(16 * 1024).await.unwrap();
        let answer = String::from_utf8_lossy(&answer[4..]).to_string();
        assert!(answer.contains("Accepted"), "{answer}");
        let (link, _) = endpoint::connect(&joiner, inviter_addr, ticket.inviter)
            .await
            .unwrap();
        (exchange, link)
    });
    let joiner_id = joiner.node_id().to_string();
    wait_until("the inviter holds the joiner's link", || {
        connected_to(&a, &joiner_id)
    });
    let pending = a.run(&["peers", "pending", "--json"]).ok();
    assert!(!pending.contains(&joiner_id), "{pending}");
    assert!(link.close_reason().is_none(), "{:?}", link.close_reason());
    drop((exchange, link));
}
