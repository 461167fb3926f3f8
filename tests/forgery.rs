//! In a chain A–B–C (A and C not paired), B tries to make C appear to say things: with the
//! plain CLI into `node:<C>` (its own meshd refuses), with bridge messages that claim C (into
//! the mesh, and into C's scope), and with Automerge changes built by hand that carry C's
//! actor id, planted in B's own store. A refuses every change, `node:<C>` is the same on A and C, the mesh claim shows
//! as B's write claiming C, unverified, and `mem history` names who really wrote what.

mod support;

use automerge::transaction::Transactable;
use automerge::{Automerge, ROOT};
use meshd::model::{DocId, Scope};
use meshd::replica::Replica;
use meshd::trust::NodeKey;
use serde_json::{json, Value};
use support::{wait_until, TestNode};

fn value(node: &TestNode, scope: &str, key: &str) -> Option<Value> {
    let run = node.run(&["mem", "get", scope, key, "--json"]);
    (run.code == 0).then(|| serde_json::from_str(run.stdout.trim()).unwrap())
}

fn node_key(node: &TestNode) -> NodeKey {
    NodeKey::from_pem(&std::fs::read_to_string(node.file("node.key")).unwrap()).unwrap()
}

fn chain() -> [TestNode; 3] {
    let nodes = [
        TestNode::init_listening("a"),
        TestNode::init_listening("b"),
        TestNode::init_listening("c"),
    ];
    for (x, y) in [(0, 1), (1, 0), (1, 2), (2, 1)] {
        nodes[x]
            .0
            .run(&["peers", "add", &nodes[y].0.id(), &nodes[y].1])
            .ok();
    }
    nodes.map(|(node, _)| node)
}

/// Plants in B's store (B stopped) a change to `scope` whose actor id is C's, signed by B,
/// as a B that rewrote its own meshd could.
fn plant_as_c(b: &TestNode, c_key: &NodeKey, scope: Scope, key: &str) {
    let b_key = node_key(b);
    let mut replica = meshd::replica::wait_for_store(std::time::Duration::from_secs(10), || {
        Replica::open(&b.file("store"), b_key.clone())
    })
    .unwrap();
    let doc = DocId::Memory(scope);
    let mut copy = replica
        .document(&doc)
        .map(Automerge::fork)
        .unwrap_or_default()
        .with_actor(c_key.actor());
    let version = json!({
        "value": "planted by b",
        "node_id": c_key.node_id().compact(),
        "updated_at": meshd::model::Stamp::from_unix_millis(meshd::replica::system_clock()).0,
        "deleted": false,
    });
    let mut tx = copy.transaction();
    tx.put(ROOT, key, version.to_string()).unwrap();
    tx.commit();
    let change = copy.get_last_local_change().unwrap().clone();
    let signature = b_key.sign(&change.hash());
    replica
        .apply_changes(&doc, vec![change], vec![signature])
        .unwrap();
    replica.flush().unwrap();
}

#[test]
fn a_relay_cannot_make_another_node_say_anything() {
    let [a, b, c] = chain();
    let c_id = c.id();
    let c_scope = format!("node:{c_id}");
    let c_key = node_key(&c);
    c.run(&["mem", "put", &c_scope, "motto", "\"c's own words\""])
        .ok();

    // By hand: changes carrying C's actor id, in C's scope and in a user scope.
    plant_as_c(&b, &c_key, Scope::Node(c_id.clone()), "motto");
    // (Not in the mesh: B's own later mesh writes would depend on it, and no node could take
    // them. A store that signs a forgery poisons what it writes after it.)
    plant_as_c(&b, &c_key, Scope::User("ann".into()), "forged.user");
    let daemons = [a.start(), b.start(), c.start()];
    // By the plain CLI: B's own meshd refuses to write into C's scope, and says why.
    let cli = b.run(&["mem", "put", &c_scope, "cli.forged", "\"b via cli\""]);
    assert_ne!(cli.code, 0, "B wrote into C's scope: {}", cli.stdout);
    assert!(
        cli.stderr.contains("only that node writes it"),
        "{}",
        cli.stderr
    );
    // By bridge messages that say C wrote them: into the mesh (a claim), and into C's scope.
    let claim = json!({"type": "memory", "scope": "mesh", "key": "bridge.claim",
        "value": "c never said this", "nodeId": c_id, "ts": 1_700_000_000});
    let into_c = json!({"type": "memory", "scope": "node", "key": "bridge.forged",
        "value": "nor this", "nodeId": c_id, "ts": 1_700_000_000});
    b.run_with_stdin(
        &["bridge", "ingest"],
        format!("{claim}\n{into_c}\n").as_bytes(),
    )
    .ok();
    // What B may write arrives: a marker written after the forgeries.
    b.run(&["mem", "put", "node", "marker", "1"]).ok();
    let b_scope = format!("node:{}", b.id());
    wait_until("A and C have B's marker", || {
        value(&a, &b_scope, "marker").is_some() && value(&c, &b_scope, "marker").is_some()
    });
    c.run(&["mem", "put", &c_scope, "later", "2"]).ok();
    wait_until("A has C's later write, through B", || {
        value(&a, &c_scope, "later").is_some()
    });
    wait_until("A has B's bridge claim", || {
        value(&a, "mesh", "bridge.claim").is_some()
    });

    for node in [&a, &c] {
        assert_eq!(
            value(node, &c_scope, "motto").unwrap()["value"],
            json!("c's own words"),
            "the forged motto reached a node"
        );
        assert_eq!(value(node, &c_scope, "cli.forged"), None);
        assert_eq!(value(node, &c_scope, "bridge.forged"), None);
        assert_eq!(value(node, "user:ann", "forged.user"), None);
    }
    // The claim arrived as what it is: B wrote it, saying C did.
    let (b_id, c_id) = (node_key(&b).node_id().compact(), c_key.node_id().compact());
    let shown = value(&a, "mesh", "bridge.claim").unwrap();
    assert_eq!(
        (&shown["author"], &shown["claimed_by"], &shown["verified"]),
        (&json!(b_id), &json!(c_id), &json!(false)),
        "{shown}"
    );
    // The history names the true authors: C for every version of C's motto on A.
    let history = |node: &TestNode, scope: &str, key: &str| -> Vec<Value> {
        let text = node.run(&["mem", "history", scope, key, "--json"]).ok();
        serde_json::from_str::<Value>(&text)
            .unwrap()
            .as_array()
            .unwrap()
            .clone()
    };
    let motto = history(&a, &c_scope, "motto");
    assert!(!motto.is_empty());
    assert!(
        motto.iter().all(|v| v["author"] == json!(c_id)),
        "{motto:?}"
    );
    let claimed = history(&a, "mesh", "bridge.claim");
    assert_eq!(claimed.len(), 1, "{claimed:?}");
    assert_eq!(claimed[0]["author"], json!(b_id));
    assert_eq!(claimed[0]["claimed_by"], json!(c_id));
    let keys = |node: &TestNode| node.run(&["mem", "ls", "--scope", &c_scope, "--json"]).ok();
    assert_eq!(keys(&a), keys(&c), "node:C differs between A and C");
    drop(daemons);
}
