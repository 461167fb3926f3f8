//! The command set as a whole: every command that changes memory or skills says so.

use std::collections::BTreeMap;

use automerge::ChangeHash;

use super::*;
use crate::model::DocId;
use crate::replica::Replica;

struct Node {
    dir: tempfile::TempDir,
    context: Context,
}

fn node() -> Node {
    let dir = tempfile::tempdir().unwrap();
    let key = crate::trust::NodeKey::insecure_from_name("this node");
    let own = key.node_id();
    let replica = Replica::open(&dir.path().join("store"), key).unwrap();
    let peers = PeerStore::open(replica.db()).unwrap();
    let paths = crate::cache::CachePaths {
        openclaw_home: dir.path().join("openclaw"),
        skills_dir: dir.path().join("skills"),
        memory_dir: dir.path().join("memory"),
    };
    let cache = Arc::new(CacheFiles::new(paths, dir.path().join("cache.manifest")));
    let context = Context {
        replica: SharedReplica::new(replica),
        peers,
        own,
        cache,
        mesh: None,
        search: std::sync::Arc::new(crate::search::Searcher::new(
            dir.path().join("search.db"),
            None,
        )),
        bridge: Default::default(),
    };
    Node { dir, context }
}

fn heads(node: &Node) -> BTreeMap<DocId, Vec<ChangeHash>> {
    node.context.replica.with(|replica| replica.all_heads())
}

/// A reference store holding one row no node has yet.
fn reference_store(node: &Node) -> std::path::PathBuf {
    let source = self::node();
    let put = MemPut {
        scope: "mesh".into(),
        key: "imported".into(),
        value: serde_json::json!("from the reference store"),
    };
    put.execute(&source.context).unwrap();
    let path = node.dir.path().join("reference.sqlite");
    source
        .context
        .replica
        .with(|replica| crate::store::export(replica, &path, false))
        .unwrap();
    path
}

/// One request of each command, able to succeed on a node that holds `mesh:k`, skill `s`
/// and peer `laptop`.
fn samples(node: &Node) -> Vec<Request> {
    let out = node.dir.path().join("export");
    let message = r#"{"type":"memory","scope":"mesh","key":"bridged","value":1,"nodeId":"ceo","ts":1700000000}"#;
    vec![
        MemPut {
            scope: "mesh".into(),
            key: "k2".into(),
            value: serde_json::json!(2),
        }
        .into(),
        MemGet {
            scope: "mesh".into(),
            key: "k".into(),
        }
        .into(),
        MemLs::default().into(),
        MemRm {
            scope: "mesh".into(),
            key: "k".into(),
        }
        .into(),
        SkillPut {
            name: "s2".into(),
            content: "steps".into(),
            description: None,
            path: None,
        }
        .into(),
        SkillGet { name: "s".into() }.into(),
        SkillLs::default().into(),
        SkillRm { name: "s".into() }.into(),
        DocExport {
            scope: "mesh".into(),
            out: out.join("mesh.automerge"),
        }
        .into(),
        PeersAdd {
            id: NodeId::from_public_key(b"a peer").to_string(),
            addresses: vec!["127.0.0.1:7464".into()],
            name: Some("nas".into()),
            read: None,
            write: None,
            reset_access: false,
        }
        .into(),
        PeersLs::default().into(),
        PeersRm {
            peer: "laptop".into(),
        }
        .into(),
        PeersPending::default().into(),
        Status::default().into(),
        Sync::default().into(),
        BridgeIngest {
            payload: message.into(),
            unwrap: None,
        }
        .into(),
        BridgeEmit::default().into(),
        BridgeRespond {
            payload: r#"{"type":"mesh_request","scope":"mesh","key":"k"}"#.into(),
            unwrap: None,
        }
        .into(),
        StoreImport {
            path: reference_store(node),
        }
        .into(),
        StoreExport {
            path: out.join("out.sqlite"),
            prune: false,
        }
        .into(),
        CacheWrite::default().into(),
        Backup {
            dir: out.join("backup"),
        }
        .into(),
        Restore {
            dir: backup_of_another_node(node),
        }
        .into(),
        DocImport {
            scope: "mesh".into(),
            file: export_of_another_node(node),
        }
        .into(),
        Search {
            query: "steps".into(),
            scope: None,
            target: crate::search::Target::All,
            limit: None,
            mode: None,
        }
        .into(),
        Invite {
            addresses: vec!["nas.local:7464".into()],
            ..Invite::default()
        }
        .into(),
        Join {
            ticket: another_nodes_ticket(),
            name: None,
            read: None,
            write: None,
        }
        .into(),
        Doctor::default().into(),
        PeersDiscover::default().into(),
        PeersApprove {
            id: NodeId::from_public_key(b"a joiner").to_string(),
        }
        .into(),
        PeersDeny {
            id: NodeId::from_public_key(b"a joiner").to_string(),
        }
        .into(),
        MemHistory {
            scope: "mesh".into(),
            key: "k".into(),
        }
        .into(),
        BridgeSyncAnswer {
            payload: r#"{"type":"sync_delta","nodeId":"ceo","memory":[{"scope":"mesh","key":"synced","value":1,"nodeId":"ceo","ts":1700000000}]}"#.into(),
            unwrap: None,
        }
        .into(),
        BridgeSyncSummary::default().into(),
    ]
}

/// A ticket made by another node (joining needs the daemon, so the sample is refused).
fn another_nodes_ticket() -> String {
    let made = Invite {
        addresses: vec!["nas.local:7464".into()],
        ..Invite::default()
    }
    .execute(&node().context)
    .unwrap();
    made.ticket
}

/// Another node's mesh document as a backup and as a file, holding a key no node has yet.
fn another_node() -> Node {
    let source = self::node();
    let put = MemPut {
        scope: "mesh".into(),
        key: "restored".into(),
        value: serde_json::json!("from a backup"),
    };
    put.execute(&source.context).unwrap();
    source
}

fn backup_of_another_node(node: &Node) -> std::path::PathBuf {
    let dir = node.dir.path().join("restorable");
    if !dir.join("manifest.json").exists() {
        let backup = Backup { dir: dir.clone() };
        backup.execute(&another_node().context).unwrap();
    }
    dir
}

fn export_of_another_node(node: &Node) -> std::path::PathBuf {
    let file = node.dir.path().join("importable.automerge");
    if !file.exists() {
        let export = DocExport {
            scope: "mesh".into(),
            out: file.clone(),
        };
        export.execute(&another_node().context).unwrap();
    }
    file
}

/// The position of each command in `samples`. No wildcard: a new command does not compile
/// until it has a sample here.
fn position(request: &Request) -> usize {
    match request {
        Request::MemPut(_) => 0,
        Request::MemGet(_) => 1,
        Request::MemLs(_) => 2,
        Request::MemRm(_) => 3,
        Request::SkillPut(_) => 4,
        Request::SkillGet(_) => 5,
        Request::SkillLs(_) => 6,
        Request::SkillRm(_) => 7,
        Request::DocExport(_) => 8,
        Request::PeersAdd(_) => 9,
        Request::PeersLs(_) => 10,
        Request::PeersRm(_) => 11,
        Request::PeersPending(_) => 12,
        Request::Status(_) => 13,
        Request::Sync(_) => 14,
        Request::BridgeIngest(_) => 15,
        Request::BridgeEmit(_) => 16,
        Request::BridgeRespond(_) => 17,
        Request::StoreImport(_) => 18,
        Request::StoreExport(_) => 19,
        Request::CacheWrite(_) => 20,
        Request::Backup(_) => 21,
        Request::Restore(_) => 22,
        Request::DocImport(_) => 23,
        Request::Search(_) => 24,
        Request::Invite(_) => 25,
        Request::Join(_) => 26,
        Request::Doctor(_) => 27,
        Request::PeersDiscover(_) => 28,
        Request::PeersApprove(_) => 29,
        Request::PeersDeny(_) => 30,
        Request::MemHistory(_) => 31,
        Request::BridgeSyncAnswer(_) => 32,
        Request::BridgeSyncSummary(_) => 33,
    }
}

fn seeded() -> Node {
    let node = node();
    MemPut {
        scope: "mesh".into(),
        key: "k".into(),
        value: serde_json::json!(1),
    }
    .execute(&node.context)
    .unwrap();
    SkillPut {
        name: "s".into(),
        content: "do this".into(),
        description: None,
        path: None,
    }
    .execute(&node.context)
    .unwrap();
    PeersAdd {
        id: NodeId::from_public_key(b"another peer").to_string(),
        addresses: vec!["127.0.0.1:7465".into()],
        name: Some("laptop".into()),
        read: None,
        write: None,
        reset_access: false,
    }
    .execute(&node.context)
    .unwrap();
    std::fs::create_dir_all(node.dir.path().join("export")).unwrap();
    node
}

#[test]
fn the_samples_cover_every_command_once() {
    let node = seeded();
    let positions: Vec<usize> = samples(&node).iter().map(position).collect();
    assert_eq!(positions, (0..positions.len()).collect::<Vec<_>>());
}

#[test]
fn every_command_that_changes_memory_or_skills_declares_it() {
    for index in 0..samples(&seeded()).len() {
        // A fresh node for each command, so one command's change is never blamed on another.
        let node = seeded();
        let request = samples(&node).swap_remove(index);
        let (op, effects) = (request.op(), request.effects());
        let before = heads(&node);
        let reply = request.execute(&node.context);
        let changed = heads(&node) != before;
        assert!(
            !changed || effects.data,
            "{op} changed memory or skills without declaring Effects::DATA ({reply:?})"
        );
        // These need the daemon's mesh, which these nodes do not run, or a held join.
        if !["Sync", "Join", "PeersDiscover", "PeersApprove", "PeersDeny"].contains(&op) {
            assert!(
                reply.is_ok(),
                "{op} should succeed on the seeded node: {reply:?}"
            );
        }
    }
}

#[test]
fn a_command_that_declares_a_data_change_makes_one() {
    // Keeps the declarations honest the other way: DATA on a pure read would push for nothing.
    for index in 0..samples(&seeded()).len() {
        let node = seeded();
        let request = samples(&node).swap_remove(index);
        let (op, effects) = (request.op(), request.effects());
        let before = heads(&node);
        request.execute(&node.context).unwrap_or_default();
        if effects.data {
            assert_ne!(
                heads(&node),
                before,
                "{op} declares DATA but changed nothing"
            );
        }
    }
}

#[test]
fn requests_and_replies_survive_the_wire() {
    let node = seeded();
    for request in samples(&node) {
        let line = serde_json::to_string(&request).unwrap();
        let back: Request = serde_json::from_str(&line).unwrap();
        assert_eq!(back.op(), request.op(), "{line}");
    }
    let reply = Request::from(MemGet {
        scope: "mesh".into(),
        key: "k".into(),
    })
    .execute(&node.context);
    let line = serde_json::to_string(&reply).unwrap();
    let versions = decode::<MemGet>(serde_json::from_str(&line).unwrap()).unwrap();
    assert_eq!(versions.winner.value, serde_json::json!(1));
    let missing = Request::from(SkillGet {
        name: "nope".into(),
    })
    .execute(&node.context);
    assert!(matches!(
        decode::<SkillGet>(missing),
        Err(DecodeError::Command(CommandError::NotFound(_)))
    ));
}

#[test]
fn sync_without_the_daemon_says_how_to_start_it() {
    let node = seeded();
    let error = Sync::default().execute(&node.context).unwrap_err();
    assert!(error.to_string().contains("meshd run"), "{error}");
}

#[test]
fn commands_over_the_whole_store_are_given_longer_than_a_write() {
    let backup = Request::from(Backup {
        dir: "/nowhere".into(),
    });
    assert_eq!(backup.patience(), WHOLE_STORE_PATIENCE);
    assert_eq!(Request::from(Status {}).patience(), ANSWER_PATIENCE);
    let put = MemPut {
        scope: "mesh".into(),
        key: "k".into(),
        value: serde_json::json!(1),
    };
    assert_eq!(Request::from(put).patience(), ANSWER_PATIENCE);
    assert!(Request::from(Sync::default()).patience() > Duration::from_secs(60));
}
