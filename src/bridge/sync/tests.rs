use serde_json::{json, Value};
use tempfile::TempDir;

use super::*;
use crate::bridge::{self, items, IngestReport, TrustedKeys};
use crate::model::Stamp;
use crate::replica::Replica;
use crate::trust::NodeKey;

const NOW: u64 = 1_900_000_000;

fn replica() -> (TempDir, Replica) {
    let dir = TempDir::new().unwrap();
    let replica = Replica::open(dir.path(), NodeKey::insecure_from_name("m")).unwrap();
    (dir, replica)
}

fn ingest(replica: &mut Replica, text: &str, trusted: &TrustedKeys) -> IngestReport {
    let items = items(text, None);
    replica
        .batch(|batch| bridge::ingest(batch, &items, trusted))
        .unwrap()
}

fn put(replica: &mut Replica, scope: &str, key: &str, value: Value, ts: u64, by: &str) {
    let message =
        json!({"type":"memory","scope":scope,"key":key,"value":value,"nodeId":by,"ts":ts});
    let report = ingest(replica, &message.to_string(), &TrustedKeys::default());
    assert_eq!(report.changed, 1, "{:?}", report.reasons);
}

fn parsed(messages: &[String]) -> Vec<Value> {
    messages
        .iter()
        .map(|text| serde_json::from_str(text).unwrap())
        .collect()
}

fn of_type<'a>(messages: &'a [Value], kind: &str) -> Vec<&'a Value> {
    messages.iter().filter(|m| m["type"] == kind).collect()
}

fn answer_to(replica: &mut Replica, message: Value) -> (IngestReport, Answer) {
    let report = ingest(replica, &message.to_string(), &TrustedKeys::default());
    let answer = answer(replica, &report.sync, NOW).unwrap();
    (report, answer)
}

#[test]
fn a_summary_gets_a_request_for_what_is_lacking_and_a_delta_of_what_the_peer_lacks() {
    let (_dir, mut node) = replica();
    put(&mut node, "mesh", "older-there", json!("ours"), 200, "m2");
    put(&mut node, "mesh", "newer-there", json!("ours"), 100, "m2");
    put(
        &mut node,
        "mesh",
        "only-here",
        json!({"b": 1, "a": [1.5]}),
        100,
        "m2",
    );
    put(&mut node, "mesh", "same", json!("v"), 100, "m2");
    put(&mut node, "mesh", "same-second", json!("ours"), 100, "m2");
    let same_h = hash::hash_value(&json!("v"));
    let summary = json!({"type":"sync_summary","nodeId":"js","ts":NOW,
        "memory":[
            {"scope":"mesh","key":"older-there","ts":150,"h":"0000000000000000"},
            {"scope":"mesh","key":"newer-there","ts":300},
            {"scope":"mesh","key":"same","ts":100,"h":same_h},
            {"scope":"mesh","key":"same-second","ts":100,"h":"ffffffffffffffff"},
            {"scope":"user","key":"alice:k","ts":100},
            {"scope":"node","key":"k","ts":100},
            {"scope":"global","key":"k","ts":100}],
        "skills":[{"name":"triage","ts":5}]});
    let (report, answer) = answer_to(&mut node, summary);
    assert_eq!(report.changed, 0, "a summary changes nothing");
    let messages = parsed(&answer.messages);
    let request = of_type(&messages, "sync_request");
    assert_eq!(request.len(), 1, "{messages:?}");
    assert_eq!(request[0]["nodeId"], node.node_id());
    assert_eq!(request[0]["nodeScope"], "js");
    assert_eq!(
        request[0]["memory"],
        json!([
            ["mesh", "newer-there"],
            ["mesh", "same-second"],
            ["user:alice", "k"],
            ["node", "k"]
        ])
    );
    assert_eq!(request[0]["skills"], json!(["triage"]));
    let delta = of_type(&messages, "sync_delta");
    assert_eq!(delta.len(), 1);
    let sent: Vec<&str> = delta[0]["memory"]
        .as_array()
        .unwrap()
        .iter()
        .map(|entry| entry["key"].as_str().unwrap())
        .collect();
    assert_eq!(sent, ["older-there", "same-second", "only-here"]);
    assert_eq!(
        delta[0]["memory"][0],
        json!({"scope":"mesh","key":"older-there","value":"ours","nodeId":"m2","ts":200})
    );
    let whys: Vec<(String, Why)> = answer
        .differences
        .iter()
        .map(|d| (d.name.clone(), d.why))
        .collect();
    assert!(whys.contains(&("mesh:same-second".into(), Why::SameSecond)));
    assert!(whys.contains(&("node:js:k".into(), Why::MissingHere)));
    assert!(!whys.iter().any(|(name, _)| name == "mesh:same"));
}

#[test]
fn a_summary_that_matches_gets_no_answer() {
    let (_dir, mut node) = replica();
    put(&mut node, "mesh", "k", json!({"z": 1, "a": 2}), 100, "js");
    let ours: Value = serde_json::from_str(&summary(&node, Some("js"), NOW).unwrap()).unwrap();
    let mut theirs = ours.clone();
    theirs["nodeId"] = json!("js");
    let (_, answer) = answer_to(&mut node, theirs);
    assert_eq!(answer, Answer::default());
    assert_eq!(ours["memory"][0]["h"], hash::hash_text(r#"{"a":2,"z":1}"#));
}

#[test]
fn skills_with_equal_hashes_are_in_step_whatever_their_ts() {
    let (_dir, mut node) = replica();
    let skill = json!({"type":"skill","name":"triage","sourceNode":"m2","content":"# T","ts":100});
    ingest(&mut node, &skill.to_string(), &TrustedKeys::default());
    let h = hash::hash_text("# T");
    let summary =
        json!({"type":"sync_summary","nodeId":"js","skills":[{"name":"triage","ts":999,"h":h}]});
    let (_, answer) = answer_to(&mut node, summary);
    assert_eq!(answer, Answer::default());
    let summary =
        json!({"type":"sync_summary","nodeId":"js","skills":[{"name":"triage","ts":999,"h":"x"}]});
    let (_, answer) = answer_to(&mut node, summary);
    assert_eq!(parsed(&answer.messages)[0]["skills"], json!(["triage"]));
}

#[test]
fn a_request_gets_a_delta_of_what_this_node_has() {
    let (_dir, mut node) = replica();
    let own = node.node_id().to_string();
    put(&mut node, "mesh", "a", json!(1), 100, "js");
    put(&mut node, "user:alice", "b", json!("x"), 101, "ceo");
    put(&mut node, "node", "c", json!(true), 102, "js");
    node.put_memory(&Scope::Node(own.clone()), "d", json!("mine"))
        .unwrap();
    let skill = json!({"type":"skill","name":"triage","sourceNode":"ceo","content":"# T","ts":100});
    ingest(&mut node, &skill.to_string(), &TrustedKeys::default());
    let request = json!({"type":"sync_request","requestId":"r1","nodeId":"js",
        "memory":[["mesh","a"],["user","alice:b"],["node","c"],[format!("node:{own}"),"d"],["mesh","absent"]],
        "skills":["triage","absent"]});
    let (_, answer) = answer_to(&mut node, request);
    let messages = parsed(&answer.messages);
    assert_eq!(messages.len(), 1);
    let delta = &messages[0];
    assert_eq!(delta["type"], "sync_delta");
    assert_eq!(delta["requestId"], "r1");
    let entries = delta["memory"].as_array().unwrap();
    assert_eq!(entries.len(), 4);
    assert_eq!(
        entries[1],
        json!({"scope":"user:alice","key":"b","value":"x","nodeId":"ceo","ts":101})
    );
    assert_eq!(
        entries[2]["scope"], "node",
        "the peer's own scope is bare node for it"
    );
    assert_eq!(entries[3]["scope"], format!("node:{own}"));
    assert_eq!(entries[3]["nodeId"], own);
    assert_eq!(
        delta["skills"],
        json!([{"name":"triage","sourceNode":"ceo","content":"# T","ts":100}])
    );
}

/// Every entry of a delta lands exactly as the same message would over the bridge.
#[test]
fn a_delta_merges_by_the_bridge_rule() {
    let own = NodeKey::insecure_from_name("m").node_id().compact();
    let entries = [
        json!({"scope":"mesh","key":"new","value":{"b":1,"a":2},"nodeId":"js","ts":100}),
        json!({"scope":"mesh","key":"old","value":"older","nodeId":"js","ts":50}),
        json!({"scope":"node","key":"k","value":1,"nodeId":"js","ts":100}),
        json!({"scope":format!("node:{own}"),"key":"mine","value":1,"nodeId":"js","ts":100}),
        json!({"scope":"mesh","key":"token","value":"sk-ant-api03-abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGH","nodeId":"js","ts":100}),
        json!({"scope":"mesh","key":"future","value":1,"nodeId":"js","ts":NOW * 3}),
        json!({"scope":"mesh","key":"far","value":1,"nodeId":"js","ts":1e15}),
    ];
    let (_dir_a, mut by_delta) = replica();
    let (_dir_b, mut by_bridge) = replica();
    for node in [&mut by_delta, &mut by_bridge] {
        put(node, "mesh", "old", json!("newer"), 60, "m2");
    }
    let delta = json!({"type":"sync_delta","nodeId":"js","memory":entries,
        "skills":[{"name":"s","sourceNode":"js","content":"# S","ts":100}]});
    let report = ingest(&mut by_delta, &delta.to_string(), &TrustedKeys::default());
    let messages: Vec<String> = entries
        .iter()
        .map(|entry| {
            let mut message = json!({"type":"memory"});
            message
                .as_object_mut()
                .unwrap()
                .extend(entry.as_object().unwrap().clone());
            message.to_string()
        })
        .chain([
            json!({"type":"skill","name":"s","sourceNode":"js","content":"# S","ts":100})
                .to_string(),
        ])
        .collect();
    let bridged = ingest(
        &mut by_bridge,
        &messages.join("\n"),
        &TrustedKeys::default(),
    );
    assert_eq!(report.changed, bridged.changed);
    assert_eq!(report.summary.memory, bridged.summary.memory);
    assert_eq!(report.summary.skill, bridged.summary.skill);
    assert_eq!(
        report.reasons.len(),
        bridged.reasons.len(),
        "{:?}",
        report.reasons
    );
    for ((_, delta_reason), (_, bridge_reason)) in report.reasons.iter().zip(&bridged.reasons) {
        assert!(
            delta_reason.ends_with(bridge_reason.as_str()),
            "{delta_reason} / {bridge_reason}"
        );
        assert!(
            delta_reason.starts_with("sync_delta memory entry"),
            "{delta_reason}"
        );
    }
    assert_eq!(
        by_delta.list_memory(None).unwrap(),
        by_bridge.list_memory(None).unwrap()
    );
    assert_eq!(
        by_delta.list_skills().unwrap(),
        by_bridge.list_skills().unwrap()
    );
    assert!(
        report.reasons.iter().any(|(_, r)| r.contains("secret")),
        "{:?}",
        report.reasons
    );
    assert!(by_delta
        .get_memory(&Scope::Mesh, "future")
        .unwrap()
        .is_none());
    let new = by_delta.get_memory(&Scope::Mesh, "new").unwrap().unwrap();
    assert_eq!(new.named_writer(), "js");
    assert!(by_delta
        .get_memory(&Scope::Node("js".into()), "k")
        .unwrap()
        .is_some());
}

#[test]
fn a_signed_entry_that_does_not_verify_is_refused() {
    let ceo = NodeKey::insecure_from_name("ceo");
    let mut trusted = TrustedKeys::default();
    trusted.insert(
        "ceo",
        crate::bridge::signing::PublicKey::from_spki_pem(&crate::bridge::signing::public_key_pem(
            &ceo,
        ))
        .unwrap(),
    );
    let message = r#"{"type":"memory","scope":"mesh","key":"k","value":1,"nodeId":"ceo","ts":100}"#;
    let good = crate::bridge::signing::sign(message, &ceo).unwrap();
    let forged =
        crate::bridge::signing::sign(message, &NodeKey::insecure_from_name("mallory")).unwrap();
    let entry = |signed: &str| -> Value {
        let mut value: Value = serde_json::from_str(signed).unwrap();
        value.as_object_mut().unwrap().remove("type");
        value
    };
    let (_dir, mut node) = replica();
    let delta = json!({"type":"sync_delta","nodeId":"ceo","memory":[entry(&forged)]});
    let report = ingest(&mut node, &delta.to_string(), &trusted);
    assert_eq!(report.changed, 0);
    assert!(
        report.reasons[0].1.contains("bad signature"),
        "{:?}",
        report.reasons
    );
    let delta = json!({"type":"sync_delta","nodeId":"ceo","memory":[entry(&good)]});
    let report = ingest(&mut node, &delta.to_string(), &trusted);
    assert_eq!(report.changed, 1, "{:?}", report.reasons);
    let stored = node.get_memory(&Scope::Mesh, "k").unwrap().unwrap();
    assert!(stored.claim.unwrap().checked_with.is_some());
}

#[test]
fn hostile_messages_are_refused_whole_with_the_reason_and_change_nothing() {
    let (_dir, mut node) = replica();
    let many: Vec<Value> = (0..=MAX_ROWS)
        .map(|i| json!({"scope":"mesh","key":format!("k{i}"),"value":1,"nodeId":"js","ts":100}))
        .collect();
    let cases = [
        (
            json!({"type":"sync_delta","nodeId":"js","memory":many}),
            "at most 50000",
        ),
        (
            json!({"type":"sync_summary","nodeId":"js","memory":many}),
            "at most 50000",
        ),
        (json!({"type":"sync_delta","memory":[]}), "nodeId"),
        (
            json!({"type":"sync_delta","nodeId":"js","memory":{"a":1}}),
            "must be a list",
        ),
        (
            json!({"type":"sync_summary","nodeId":"js","memory":[{"scope":"mesh","key":"k","ts":1e15}]}),
            "ts",
        ),
        (
            json!({"type":"sync_summary","nodeId":"js","memory":[{"scope":"mesh","key":"k","ts":"1"}]}),
            "ts",
        ),
        (
            json!({"type":"sync_summary","nodeId":"js","memory":["junk"]}),
            "memory row 1",
        ),
        (
            json!({"type":"sync_summary","nodeId":"js","skills":[{"name":"s","ts":1,"h":7}]}),
            "'h'",
        ),
        (
            json!({"type":"sync_request","nodeId":"js","memory":[["mesh"]]}),
            "[scope, key]",
        ),
        (
            json!({"type":"sync_request","nodeId":"js","skills":[1]}),
            "skill name",
        ),
    ];
    for (message, reason) in cases {
        let report = ingest(&mut node, &message.to_string(), &TrustedKeys::default());
        assert_eq!(report.changed, 0);
        assert!(report.sync.is_empty(), "{reason}: nothing is answered");
        assert_eq!(report.reasons.len(), 1, "{reason}: {:?}", report.reasons);
        assert!(
            report.reasons[0].1.contains(reason),
            "{reason}: {:?}",
            report.reasons
        );
        assert!(report.reasons[0].1.starts_with("refused: "));
    }
    assert!(node.list_memory(None).unwrap().is_empty());
    let junk = json!({"type":"sync_delta","nodeId":"js","memory":[1, "x", {"type":"skill"}, {}]});
    let report = ingest(&mut node, &junk.to_string(), &TrustedKeys::default());
    assert_eq!(report.reasons.len(), 4, "{:?}", report.reasons);
    assert!(report.reasons[0]
        .1
        .contains("sync_delta memory entry 1: not a memory entry"));
    assert!(node.list_memory(None).unwrap().is_empty());
}

#[test]
fn a_key_deleted_here_after_the_peers_version_is_not_requested() {
    let (_dir, mut node) = replica();
    put(&mut node, "mesh", "gone", json!(1), 100, "js");
    node.delete_memory(&Scope::Mesh, "gone").unwrap();
    let summary = json!({"type":"sync_summary","nodeId":"js","memory":[{"scope":"mesh","key":"gone","ts":100}]});
    let (_, answer) = answer_to(&mut node, summary);
    assert!(answer.messages.is_empty(), "{:?}", answer.messages);
    assert_eq!(answer.differences[0].why, Why::DeletedHere);
}

#[test]
fn a_summary_row_ahead_of_the_clock_is_not_requested() {
    let (_dir, mut node) = replica();
    let far = Stamp::from_unix_millis(crate::replica::system_clock()).unix_seconds() + 365 * 86_400;
    let summary =
        json!({"type":"sync_summary","nodeId":"js","memory":[{"scope":"mesh","key":"k","ts":far}]});
    let (_, answer) = answer_to(&mut node, summary);
    assert!(answer.messages.is_empty());
    assert_eq!(answer.differences[0].why, Why::AheadOfClock);
}

#[test]
fn a_delta_alone_is_answered_with_this_nodes_summary_and_notes_equal_values() {
    let (_dir, mut node) = replica();
    put(&mut node, "mesh", "k", json!({"a": 1, "b": 2}), 100, "js");
    let delta = r#"{"type":"sync_delta","nodeId":"js","memory":[{"scope":"mesh","key":"k","value":{"b":2,"a":1},"nodeId":"js","ts":100}]}"#;
    let report = ingest(&mut node, delta, &TrustedKeys::default());
    assert_eq!(report.same_value, ["mesh:k"]);
    let answer = answer(&node, &report.sync, NOW).unwrap();
    let messages = parsed(&answer.messages);
    assert_eq!(messages.len(), 1);
    assert_eq!(messages[0]["type"], "sync_summary");
    assert_eq!(messages[0]["nodeScope"], "js");
}

#[test]
fn skill_names_the_reference_would_rename_are_left_out() {
    for name in ["notes.md", "a/b", "x..y", "", "list.txt"] {
        assert!(!travels(name), "{name}");
    }
    assert!(travels("triage"));
    assert!(travels("release-notes.v2"));
}
