//! `meshd bridge ingest | emit | respond` with the real binary.

mod support;

use serde_json::{json, Value};
use support::compat::TestNode;

const MEMORY: &str = r#"{"type":"memory","scope":"mesh","key":"user.preferences","value":{"shortAnswers":true},"nodeId":"ceo","ts":1739123456}"#;
const SKILL: &str =
    r##"{"type":"skill","name":"triage","sourceNode":"ceo","content":"# Triage rules\n..."}"##;

fn summary(run: &support::compat::Run) -> Value {
    serde_json::from_str(&run.stdout).expect("the summary is JSON")
}

fn ingest(node: &TestNode, input: &str, unwrap: Option<&str>) -> Value {
    let mut args = vec!["bridge", "ingest"];
    if let Some(unwrap) = unwrap {
        args.extend(["--unwrap", unwrap]);
    }
    summary(&node.ok(&args, input))
}

fn counts(ingested: u64, memory: u64, skill: u64, ignored: u64) -> Value {
    json!({"ingested": ingested, "memory": memory, "skill": skill, "ignored": ignored, "notApplied": 0})
}

fn memory_message(key: &str, value: Value, ts: u64) -> String {
    json!({"type":"memory","scope":"mesh","key":key,"value":value,"nodeId":"ceo","ts":ts})
        .to_string()
}

#[test]
fn the_formats_md_examples_become_entries() {
    let node = TestNode::new("a");
    let input = format!("[{MEMORY},{SKILL}]");
    assert_eq!(ingest(&node, &input, None), counts(2, 1, 1, 0));
    let row = node.json(&["mem", "get", "mesh", "user.preferences", "--json"]);
    assert_eq!(row["value"], json!({"shortAnswers": true}));
    assert_eq!(row["node_id"], "ceo");
    assert_eq!(row["updated_at"], 1739123456);
    let skill = node.ok(&["skill", "get", "triage"], "").stdout;
    assert_eq!(skill, "# Triage rules\n...");
}

#[test]
fn one_message_a_json_string_and_json_lines_all_work() {
    let node = TestNode::new("a");
    assert_eq!(ingest(&node, MEMORY, None), counts(1, 1, 0, 0));
    let quoted = Value::String(format!("[{}]", memory_message("k2", json!(2), 5))).to_string();
    assert_eq!(ingest(&node, &quoted, None), counts(1, 1, 0, 0));
    let single = Value::String(memory_message("k3", json!(3), 5)).to_string();
    assert_eq!(ingest(&node, &single, None), counts(1, 1, 0, 0));
    let lines = format!("{}\n\n{SKILL}\n", memory_message("k4", json!(4), 5));
    assert_eq!(ingest(&node, &lines, None), counts(2, 1, 1, 0));
    let keys = node.json(&["mem", "ls", "--scope", "mesh", "--json"]);
    assert_eq!(keys.as_array().unwrap().len(), 4);
}

#[test]
fn every_envelope_kind_is_unwrapped() {
    let message = memory_message("k", json!("v"), 7);
    let object: Value = serde_json::from_str(&message).unwrap();
    let cases = [
        (
            "telegram",
            json!({"update_id": 1, "message": {"text": message}}),
        ),
        ("telegram", json!({"channel_post": {"caption": message}})),
        ("telegram", json!({"edited_message": {"text": message}})),
        ("discord", json!({"id": "1", "content": message})),
        ("discord", json!({"content": object})),
        ("generic", json!({"body": message})),
        ("generic", json!({"message": object})),
        ("generic", json!({"data": [object]})),
        ("generic", json!({"payload": message})),
        ("generic", object.clone()),
    ];
    for (unwrap, envelope) in cases {
        let node = TestNode::new("a");
        let got = ingest(&node, &envelope.to_string(), Some(unwrap));
        assert_eq!(got, counts(1, 1, 0, 0), "{unwrap}: {envelope}");
        assert_eq!(node.ok(&["mem", "get", "mesh", "k"], "").stdout, "\"v\"\n");
    }
}

#[test]
fn envelopes_of_ordinary_chat_are_ignored_not_fatal() {
    let node = TestNode::new("a");
    let updates = [
        json!({"message": {"text": "Task: check the backups"}}),
        json!({"message": {"photo": []}}),
    ];
    let lines: Vec<String> = updates.iter().map(Value::to_string).collect();
    let run = node.ok(
        &["bridge", "ingest", "--unwrap", "telegram"],
        &lines.join("\n"),
    );
    assert_eq!(summary(&run), counts(0, 0, 0, 2));
    assert!(run.stderr.contains("not JSON: Task: check the backups"));
}

#[test]
fn junk_is_counted_and_the_rest_still_lands() {
    let node = TestNode::new("a");
    let input = [
        memory_message("good", json!(1), 10),
        "not json at all".to_string(),
        "[1, \"two\", null, {\"type\":\"memory\"}]".to_string(),
        r#"{"type":"memory","scope":"mesh","key":"k","value":1,"nodeId":"ceo"}"#.to_string(),
        r#"{"type":"memory","scope":"everywhere","key":"k","value":1,"nodeId":"ceo","ts":1}"#
            .to_string(),
        r#"{"type":"mesh_response","requestId":"r","kind":"memory","nodeId":"x","found":false}"#
            .to_string(),
        format!(
            r#"{{"type":"memory","scope":"mesh","key":"{}","value":1,"nodeId":"ceo","ts":1}}"#,
            "k".repeat(600)
        ),
        SKILL.to_string(),
    ]
    .join("\n");
    let run = node.ok(&["bridge", "ingest"], &input);
    assert_eq!(summary(&run), counts(2, 1, 1, 9));
    for reason in [
        "item 2 ignored: not JSON",
        "without a valid 'ts'",
        "unknown scope",
        "bytes, the limit is 512",
    ] {
        assert!(
            run.stderr.contains(reason),
            "{reason} missing from {}",
            run.stderr
        );
    }
    let keys = node.json(&["mem", "ls", "--json"]);
    assert_eq!(
        keys.as_array().unwrap().len(),
        1,
        "only the good entry is stored"
    );
}

#[test]
fn importing_the_same_messages_again_changes_nothing() {
    let node = TestNode::new("a");
    let input = format!("{MEMORY}\n{SKILL}\n");
    let first = node.ok(&["bridge", "ingest"], &input);
    assert!(first.stderr.contains("2 changed the replica"));
    let export = |doc: &str| {
        let out = node.dir.path().join(format!("{doc}.automerge"));
        node.ok(&["doc", "export", doc, "--out", out.to_str().unwrap()], "");
        std::fs::read(out).unwrap()
    };
    let (mesh, skills) = (export("mesh"), export("skills"));
    let again = node.ok(&["bridge", "ingest"], &input);
    assert_eq!(summary(&again), summary(&first));
    assert!(
        again.stderr.contains("0 changed the replica"),
        "{}",
        again.stderr
    );
    assert_eq!(export("mesh"), mesh);
    assert_eq!(export("skills"), skills);
}

#[test]
fn an_older_ts_never_overwrites_a_newer_one() {
    let node = TestNode::new("a");
    ingest(&node, &memory_message("k", json!("new"), 200), None);
    let run = node.ok(
        &["bridge", "ingest"],
        &memory_message("k", json!("old"), 100),
    );
    assert!(run.stderr.contains("0 changed"));
    assert_eq!(
        node.ok(&["mem", "get", "mesh", "k"], "").stdout,
        "\"new\"\n"
    );
    ingest(&node, &memory_message("k", json!("newest"), 300), None);
    assert_eq!(
        node.ok(&["mem", "get", "mesh", "k"], "").stdout,
        "\"newest\"\n"
    );
    let skill = |content: &str, ts: u64| {
        json!({"type":"skill","name":"s","sourceNode":"ceo","content":content,"ts":ts}).to_string()
    };
    ingest(&node, &skill("v2", 20), None);
    ingest(&node, &skill("v1", 10), None);
    assert_eq!(node.ok(&["skill", "get", "s"], "").stdout, "v2");
}

/// A memory message for `mesh`/`k` from `node` at `ts`.
fn from_node(node: &str, value: &str, ts: u64) -> String {
    json!({"type":"memory","scope":"mesh","key":"k","value":value,"nodeId":node,"ts":ts})
        .to_string()
}

#[test]
fn the_same_nodes_second_update_in_one_second_wins() {
    let node = TestNode::new("a");
    // In one input, and in two inputs one after the other.
    let both = format!(
        "{}
{}
",
        from_node("ceo", "v1", 100),
        from_node("ceo", "v2", 100)
    );
    let run = node.ok(&["bridge", "ingest"], &both);
    assert_eq!(summary(&run), counts(2, 2, 0, 0));
    assert!(
        run.stderr.contains("2 changed the replica"),
        "{}",
        run.stderr
    );
    assert_eq!(node.json(&["mem", "get", "mesh", "k"]), json!("v2"));
    let third = node.ok(&["bridge", "ingest"], &from_node("ceo", "v3", 100));
    assert!(third.stderr.contains("1 changed"), "{}", third.stderr);
    assert_eq!(node.json(&["mem", "get", "mesh", "k"]), json!("v3"));
    // The same message again is held, not a change and not a refusal.
    let again = node.ok(&["bridge", "ingest"], &from_node("ceo", "v3", 100));
    assert_eq!(summary(&again), counts(1, 1, 0, 0));
    assert!(again.stderr.contains("0 changed"), "{}", again.stderr);
    // Emitted, it still says the second it was sent with.
    let emitted = node.ok(&["bridge", "emit"], "").stdout;
    assert!(
        emitted.contains(r#""value":"v3","nodeId":"ceo","ts":100"#),
        "{emitted}"
    );
    // Skills too.
    let skill = |content: &str| {
        json!({"type":"skill","name":"s","sourceNode":"ceo","content":content,"ts":50}).to_string()
    };
    ingest(
        &node,
        &format!(
            "{}
{}
",
            skill("one"),
            skill("two")
        ),
        None,
    );
    assert_eq!(node.ok(&["skill", "get", "s"], "").stdout, "two");
}

#[test]
fn an_equal_ts_from_two_nodes_has_one_winner_in_either_order() {
    let (a, b) = (TestNode::new("a"), TestNode::new("b"));
    let (ceo, sec) = (
        from_node("ceo", "by ceo", 100),
        from_node("sec", "by sec", 100),
    );
    ingest(
        &a,
        &format!(
            "{ceo}
{sec}
"
        ),
        None,
    );
    let run = b.ok(
        &["bridge", "ingest"],
        &format!(
            "{sec}
{ceo}
"
        ),
    );
    assert_eq!(
        summary(&run),
        json!({"ingested": 2, "memory": 2, "skill": 0, "ignored": 0, "notApplied": 1})
    );
    for node in [&a, &b] {
        assert_eq!(node.json(&["mem", "get", "mesh", "k"]), json!("by sec"));
    }
    // Even after ceo's own same-second updates moved its version along on a.
    ingest(&a, &from_node("ceo", "by ceo again", 100), None);
    assert_eq!(a.json(&["mem", "get", "mesh", "k"]), json!("by sec"));
}

#[test]
fn a_message_not_applied_is_reported_with_the_reason() {
    let node = TestNode::new("a");
    ingest(&node, &from_node("sec", "new", 200), None);
    let input = format!(
        "{}
{}
{}
",
        from_node("ceo", "old", 100),
        from_node("ceo", "tied", 200),
        from_node("sec", "newest", 300)
    );
    let run = node.ok(&["bridge", "ingest"], &input);
    assert_eq!(
        summary(&run),
        json!({"ingested": 3, "memory": 3, "skill": 0, "ignored": 0, "notApplied": 2})
    );
    assert!(
        run.stderr.contains(
            "meshd: item 1 not applied: the replica holds a newer version (ts 200 from sec)"
        ),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains(
            "meshd: item 2 not applied: the replica holds a version with the same ts (200) \
             from sec, and at an equal ts the greater node id wins"
        ),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("1 changed the replica"),
        "{}",
        run.stderr
    );
    assert_eq!(node.json(&["mem", "get", "mesh", "k"]), json!("newest"));
}

#[test]
fn skills_without_ts_apply_when_they_change_something() {
    let node = TestNode::new("a");
    let skill = |content: &str| {
        json!({"type":"skill","name":"s","sourceNode":"ceo","content":content}).to_string()
    };
    assert!(node
        .ok(&["bridge", "ingest"], &skill("one"))
        .stderr
        .contains("1 changed"));
    assert!(node
        .ok(&["bridge", "ingest"], &skill("one"))
        .stderr
        .contains("0 changed"));
    assert!(node
        .ok(&["bridge", "ingest"], &skill("two"))
        .stderr
        .contains("1 changed"));
    assert_eq!(node.ok(&["skill", "get", "s"], "").stdout, "two");
}

#[test]
fn node_scope_is_the_senders_own() {
    let node = TestNode::new("a");
    let message =
        r#"{"type":"memory","scope":"node","key":"uptime","value":3,"nodeId":"sec","ts":5}"#;
    ingest(&node, message, None);
    assert_eq!(
        node.ok(&["mem", "get", "node:sec", "uptime"], "").stdout,
        "3\n"
    );
    assert_eq!(node.run(&["mem", "get", "node", "uptime"], "").code, 3);
}

#[test]
fn emit_prints_messages_another_node_ingests() {
    let (a, b) = (TestNode::new("a"), TestNode::new("b"));
    a.ok(&["mem", "put", "mesh", "units", "\"metric\""], "");
    a.ok(&["mem", "put", "node", "role", "\"ceo\""], "");
    a.ok(&["mem", "put", "user:alice", "tz", "\"UTC\""], "");
    a.ok(&["skill", "put", "triage"], "# Triage\n");
    let emitted = a.ok(&["bridge", "emit"], "").stdout;
    let lines: Vec<Value> = emitted
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 4);
    let own = lines.iter().find(|m| m["key"] == "role").unwrap();
    assert_eq!(own["scope"], "node");
    assert_eq!(own["nodeId"], a.node_id());
    let skill = lines.iter().find(|m| m["type"] == "skill").unwrap();
    assert_eq!(skill["content"], "# Triage\n");
    assert_eq!(ingest(&b, &emitted, None), counts(4, 3, 1, 0));
    let rows = |node: &TestNode| {
        let rows = node.json(&["mem", "ls", "--json"]);
        let rows = rows.as_array().unwrap().iter();
        rows.map(|r| (r["key"].clone(), r["value"].clone(), r["node_id"].clone()))
            .collect::<Vec<_>>()
    };
    let mut on_b = rows(&b);
    on_b.sort_by_key(|r| r.0.to_string());
    let mut on_a = rows(&a);
    on_a.sort_by_key(|r| r.0.to_string());
    assert_eq!(on_a, on_b);
    assert_eq!(
        b.ok(
            &["mem", "get", &format!("node:{}", a.node_id()), "role"],
            ""
        )
        .stdout,
        "\"ceo\"\n"
    );
    // Echoed back to its origin, nothing is newer than what the origin holds.
    assert!(a
        .ok(&["bridge", "ingest"], &emitted)
        .stderr
        .contains("0 changed"));
}

#[test]
fn emit_filters_by_time_and_scope() {
    let node = TestNode::new("a");
    ingest(&node, &memory_message("old", json!(1), 100), None);
    ingest(&node, &memory_message("new", json!(2), 300), None);
    node.ok(&["mem", "put", "user:bob", "k", "1"], "");
    node.ok(&["skill", "put", "s"], "x");
    let keys = |args: &[&str]| -> Vec<String> {
        let mut all = vec!["bridge", "emit"];
        all.extend(args);
        let out = node.ok(&all, "").stdout;
        out.lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .map(|m| {
                m.get("key")
                    .or(m.get("name"))
                    .unwrap()
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect()
    };
    assert_eq!(keys(&["--since", "200", "--scope", "mesh"]), ["new"]);
    assert_eq!(keys(&["--scope", "mesh"]), ["new", "old"]);
    assert_eq!(keys(&["--scope", "user:bob"]), ["k"]);
    assert_eq!(keys(&["--scope", "skills"]), ["s"]);
    assert_eq!(keys(&["--since", "200"]).len(), 3);
}

#[test]
fn mesh_requests_get_mesh_responses() {
    let node = TestNode::new("sec");
    ingest(&node, &format!("{MEMORY}\n{SKILL}"), None);
    let requests = [
        r#"{"type":"mesh_request","requestId":"req-abc-1","kind":"memory","nodeId":"ceo","scope":"mesh","key":"user.preferences","ts":1739123456}"#,
        r#"{"type":"mesh_request","requestId":"req-xyz-2","kind":"skill","name":"triage","nodeId":"sec","ts":1739123460}"#,
        r#"{"type":"mesh_request","requestId":"req-3","kind":"memory","nodeId":"ceo","scope":"mesh","key":"absent"}"#,
        r#"{"type":"memory"}"#,
    ];
    let out = node.ok(&["bridge", "respond"], &requests.join("\n")).stdout;
    let answers: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(answers.len(), 3);
    let id = node.node_id();
    assert_eq!(answers[0]["type"], "mesh_response");
    assert_eq!(answers[0]["requestId"], "req-abc-1");
    assert_eq!(answers[0]["kind"], "memory");
    assert_eq!(answers[0]["nodeId"], id.as_str());
    assert_eq!(answers[0]["found"], true);
    assert_eq!(answers[0]["value"], json!({"shortAnswers": true}));
    assert!(answers[0]["ts"].as_u64().unwrap() > 1_739_123_456);
    assert_eq!(answers[1]["content"], "# Triage rules\n...");
    assert_eq!(answers[1]["found"], true);
    assert_eq!(answers[2]["found"], false);
    assert!(answers[2].get("value").is_none());
    // Requests are answered, never stored.
    let run = node.ok(&["bridge", "ingest"], requests[0]);
    assert_eq!(summary(&run), counts(0, 0, 0, 1));
}

/// `bridge respond` answers sync messages as the webhook does, and prints why a hostile one
/// is refused; `bridge ingest` merges a delta's entries and answers nothing.
#[test]
fn sync_messages_are_answered_by_respond() {
    let node = TestNode::new("sec");
    ingest(&node, MEMORY, None);
    let summary_in = r#"{"type":"sync_summary","nodeId":"ceo","memory":[{"scope":"mesh","key":"theirs","ts":5}],"skills":[]}"#;
    let delta = r#"{"type":"sync_delta","nodeId":"ceo","memory":[{"scope":"mesh","key":"theirs","value":7,"nodeId":"ceo","ts":5}]}"#;
    let run = node.ok(&["bridge", "respond"], summary_in);
    let answers: Vec<Value> = run
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(answers.len(), 2, "{}", run.stdout);
    assert_eq!(answers[0]["type"], "sync_request");
    assert_eq!(answers[0]["memory"], json!([["mesh", "theirs"]]));
    assert_eq!(answers[1]["type"], "sync_delta");
    assert_eq!(answers[1]["memory"][0]["key"], "user.preferences");
    let merged = node.ok(&["bridge", "respond"], delta);
    let own: Value = serde_json::from_str(merged.stdout.trim()).unwrap();
    assert_eq!(
        own["type"], "sync_summary",
        "a delta is answered with this node's summary"
    );
    assert_eq!(own["memory"].as_array().unwrap().len(), 2);
    let again = node.ok(&["bridge", "respond"], summary_in);
    let answers: Vec<Value> = again
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(answers.len(), 1, "only the delta of what the peer lacks");
    let hostile = r#"{"type":"sync_summary","nodeId":"ceo","memory":[{"scope":"mesh","key":"k","ts":1e300}]}"#;
    let refused = node.ok(&["bridge", "respond"], hostile);
    assert_eq!(refused.stdout, "");
    assert!(
        refused
            .stderr
            .contains("refused: sync_summary: memory row 1: 'ts' must be Unix seconds"),
        "{}",
        refused.stderr
    );
    let run = node.ok(&["bridge", "ingest"], delta);
    assert_eq!(summary(&run), counts(1, 1, 0, 0));
}

#[test]
fn a_file_argument_and_a_missing_file() {
    let node = TestNode::new("a");
    let path = node.dir.path().join("messages.json");
    std::fs::write(&path, MEMORY).unwrap();
    let run = node.ok(&["bridge", "ingest", path.to_str().unwrap()], "");
    assert_eq!(summary(&run), counts(1, 1, 0, 0));
    let missing = node.run(&["bridge", "ingest", "/nonexistent/file.json"], "");
    assert_ne!(missing.code, 0);
    assert!(missing
        .stderr
        .contains("cannot read /nonexistent/file.json"));
    let bad = node.run(&["bridge", "ingest", "--unwrap", "slack"], MEMORY);
    assert_ne!(bad.code, 0);
    assert!(bad.stderr.contains("unknown envelope 'slack'"));
}

#[test]
fn secrets_are_ignored_with_the_rule_never_the_secret() {
    let node = TestNode::new("a");
    let token = "ghp_0123456789abcdefghijklmnopqrstuvwxyzAB";
    let input = [
        memory_message("github", json!(token), 5),
        json!({"type":"skill","name":"keys","sourceNode":"ceo",
            "content":"-----BEGIN PRIVATE KEY-----\nMIIB\n-----END PRIVATE KEY-----\n"})
        .to_string(),
        MEMORY.to_string(),
    ]
    .join("\n");
    let run = node.ok(&["bridge", "ingest"], &input);
    assert_eq!(summary(&run), counts(1, 1, 0, 2));
    assert!(run.stderr.contains("GitHub token"), "{}", run.stderr);
    assert!(!run.stderr.contains(token));
    assert_eq!(node.run(&["mem", "get", "mesh", "github"], "").code, 3);
    assert_eq!(node.run(&["skill", "get", "keys"], "").code, 3);
}

/// A `ts` in the year 10000 was accepted, and then `mem put`, the view writer and the API
/// panicked formatting it. Now it is refused on its own, with the reason, and the node
/// carries on.
#[test]
fn a_ts_far_in_the_future_is_one_ignored_item_and_nothing_breaks() {
    let node = TestNode::new("a");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let input = [
        memory_message("year.10000", json!(1), 253_402_300_800),
        memory_message("next.year", json!(2), now + 365 * 86_400),
        memory_message("in.time", json!(3), now),
    ]
    .join("\n");
    let run = node.ok(&["bridge", "ingest"], &input);
    assert_eq!(summary(&run), counts(1, 1, 0, 2));
    assert!(
        run.stderr.contains("ahead of this node's clock"),
        "{}",
        run.stderr
    );
    let keys: Vec<String> = node
        .json(&["mem", "ls", "--json"])
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["key"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(keys, ["in.time"]);
    node.ok(&["mem", "put", "mesh", "after", "4"], "");
    node.ok(&["cache", "write"], "");
}

/// A `node` request is answered from the responder's own node scope, as the reference answers
/// from its cache's `node:<key>`, which is the responder's own; `node:<id>` names a scope.
#[test]
fn a_node_request_is_answered_from_the_responders_own_scope() {
    let node = TestNode::new("sec");
    node.ok(&["mem", "put", "node", "uptime", "\"3 days\""], "");
    let ceos = r#"{"type":"memory","scope":"node","key":"uptime","value":"9 days","nodeId":"ceo","ts":1739123456}"#;
    ingest(&node, ceos, None);
    let requests = [
        r#"{"type":"mesh_request","requestId":"r1","kind":"memory","nodeId":"ceo","scope":"node","key":"uptime"}"#,
        r#"{"type":"mesh_request","requestId":"r2","kind":"memory","nodeId":"x","scope":"node:ceo","key":"uptime"}"#,
    ];
    let out = node.ok(&["bridge", "respond"], &requests.join("\n")).stdout;
    let answers: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        answers[0]["value"], "3 days",
        "the responder's own, not the requester's"
    );
    assert_eq!(answers[1]["value"], "9 days");
}

/// Reference message signatures (`bridge::signing`): what a node trusts in meshd.toml, what
/// it refuses, and agreement with the reference scheme run by the real `node`.
mod signatures {
    use std::io::Write;
    use std::process::{Command, Stdio};

    use meshd::bridge::canonical;
    use meshd::bridge::signing::{self, PublicKey, SignatureCheck, TrustedKeys};
    use meshd::trust::NodeKey;
    use serde_json::{json, Value};

    use super::support::compat::TestNode;
    use super::{counts, ingest, memory_message};

    fn ceo() -> NodeKey {
        NodeKey::insecure_from_name("ceo")
    }

    /// A node that trusts `ceo()`'s key for the node id `ceo`, from a file.
    fn trusting_ceo() -> TestNode {
        let node = TestNode::new("a");
        let pem = signing::public_key_pem(&ceo());
        std::fs::write(node.home().join("ceo.pub.pem"), pem).unwrap();
        node.configure("\n[bridge]\ntrusted_keys = { ceo = \"ceo.pub.pem\" }\n");
        node
    }

    fn stored(node: &TestNode) -> String {
        node.ok(&["mem", "get", "mesh", "k", "--json"], "").stdout
    }

    fn post(addr: &str, path: &str, body: &str) -> Value {
        let mut answer = ureq::post(format!("http://{addr}{path}"))
            .send(body)
            .unwrap();
        serde_json::from_str(&answer.body_mut().read_to_string().unwrap()).unwrap()
    }

    fn http_counts(ingested: u64) -> Value {
        json!({"ingested": ingested, "memory": ingested, "skill": 0})
    }

    #[test]
    fn a_bad_signature_is_refused_over_the_cli_and_http_and_nothing_changes() {
        let node = trusting_ceo();
        let good = signing::sign(&memory_message("k", json!("v1"), 100), &ceo()).unwrap();
        assert_eq!(ingest(&node, &good, None), counts(1, 1, 0, 0));
        let before = stored(&node);
        let shown: Value = serde_json::from_str(&before).unwrap();
        assert_eq!(
            (&shown["claimed_by"], &shown["verified"]),
            (&json!("ceo"), &json!(true)),
            "a claim signed by a trusted key shows as borne out: {shown}"
        );
        let signed = signing::sign(&memory_message("k", json!("v2"), 200), &ceo()).unwrap();
        let forged = signed.replace("\"v2\"", "\"evil\"");
        let mallorys = signing::sign(
            &memory_message("k", json!("v3"), 300),
            &NodeKey::insecure_from_name("mallory"),
        )
        .unwrap();
        for bad in [&forged, &mallorys] {
            let run = node.ok(&["bridge", "ingest"], bad);
            assert_eq!(
                serde_json::from_str::<Value>(&run.stdout).unwrap(),
                counts(0, 0, 0, 1)
            );
            assert!(
                run.stderr
                    .contains("item 1 ignored: refused: bad signature: it does not match"),
                "{}",
                run.stderr
            );
            assert!(run.stderr.contains("'ceo'"), "{}", run.stderr);
        }
        let (addr, mut server) = node.serve_api();
        let wrapped = format!("{{\"body\": {forged}}}");
        let answers = [
            post(&addr, "/ingest", &forged),
            post(&addr, "/ingest", &mallorys),
            post(&addr, "/bridge?unwrap=generic", &wrapped),
        ];
        let _ = server.kill();
        let _ = server.wait();
        for answer in answers {
            assert_eq!(answer, http_counts(0));
        }
        assert_eq!(stored(&node), before, "the stored entry is unchanged");
        let unsigned = memory_message("k", json!("v4"), 400);
        assert_eq!(
            ingest(&node, &unsigned, None),
            counts(1, 1, 0, 0),
            "an unsigned message is imported as before"
        );
        let shown: Value = serde_json::from_str(&stored(&node)).unwrap();
        assert_eq!(
            (&shown["claimed_by"], &shown["verified"]),
            (&json!("ceo"), &json!(false)),
            "an unsigned claim stays a claim: {shown}"
        );
    }

    #[test]
    fn a_node_that_signs_is_verified_by_one_that_trusts_its_public_pem() {
        let (a, b) = (TestNode::new("a"), TestNode::new("b"));
        a.configure("\n[bridge]\nsign = true\n");
        a.ok(
            &["mem", "put", "mesh", "k", "{\"z\":1,\"a\":[2.5,\"é\"]}"],
            "",
        );
        let pem = a.ok(&["id", "--public-pem"], "").stdout;
        assert!(pem.starts_with("-----BEGIN PUBLIC KEY-----\n"), "{pem}");
        a.ok(&["skill", "put", "triage"], "# Triage\n");
        ingest(&a, &memory_message("relayed", json!(1), 5), None);
        let lines = a.ok(&["bridge", "emit"], "").stdout;
        let (relayed, emitted): (Vec<&str>, Vec<&str>) =
            lines.lines().partition(|line| line.contains("\"relayed\""));
        assert!(
            !relayed[0].contains("\"sig\""),
            "ceo's entry is not a's to sign"
        );
        assert_eq!(emitted.len(), 2);
        assert!(
            emitted.iter().all(|l| l.contains("\"sig\":\"")),
            "{emitted:?}"
        );
        let emitted = emitted.join("\n");
        let inline = toml_string(&pem);
        b.configure(&format!(
            "\n[bridge.trusted_keys]\n\"{}\" = {inline}\n",
            a.node_id()
        ));
        assert_eq!(ingest(&b, &emitted, None), counts(2, 1, 1, 0));
        let tampered = emitted.replace("2.5", "3.5");
        let run = b.ok(&["bridge", "ingest"], &tampered);
        assert!(
            run.stderr.contains("refused: bad signature"),
            "{}",
            run.stderr
        );
    }

    fn toml_string(text: &str) -> String {
        toml::Value::String(text.to_string()).to_string()
    }

    #[test]
    fn a_bad_trusted_key_stops_the_node_with_the_fix() {
        let node = TestNode::new("a");
        node.configure("\n[bridge]\ntrusted_keys = { ceo = \"missing.pem\" }\n");
        let run = node.run(&["bridge", "emit"], "");
        assert_ne!(run.code, 0);
        assert!(run.stderr.contains("trusted_keys.ceo"), "{}", run.stderr);
        assert!(run.stderr.contains("missing.pem"), "{}", run.stderr);
        assert!(run.stderr.contains("SPKI PEM"), "{}", run.stderr);
    }

    /// Messages whose canonical form exercises every JavaScript rule: nested key order,
    /// array-index keys, repeated keys, `__proto__`, escapes, lone surrogates, numbers.
    const TRICKY: [&str; 6] = [
        r#"{"type":"memory","scope":"mesh","key":"user.preferences","value":{"shortAnswers":true,"alpha":{"z":1,"b":2}},"nodeId":"ceo","ts":1739123456}"#,
        r#"{"ts":1,"nodeId":"ceo","type":"memory","scope":"mesh","key":"u","value":"é ✓ 𝄞 \u2028 \u0000 \u001f \u007f \ud800 \/ \" \\ \b\f\n\r\t"}"#,
        r#"{"type":"memory","scope":"mesh","key":"n","nodeId":"ceo","ts":1.5,"value":[1e21,1E-7,0.1,-0,12345678901234567890,1e400,0.000001,5e-324,-2.50]}"#,
        r#"{"type":"memory","10":1,"9":2,"scope":"mesh","key":"i","value":{"b":1,"2":0,"1":3,"01":4,"x":5},"nodeId":"ceo","ts":2}"#,
        r#"{"type":"memory","scope":"mesh","key":"d","value":{"a":1,"b":2,"a":3},"__proto__":{"x":1},"nodeId":"ceo","ts":3,"extra":{"__proto__":5}}"#,
        r##"{"type":"skill","name":"triage","sourceNode":"ceo","content":"# Triage rules\n...","ts":4}"##,
    ];

    /// The reference's rule (mesh/signing.js), restated: sorted top-level keys without
    /// sig/signature, `JSON.stringify`, Ed25519 over its UTF-8, base64.
    const REFERENCE_JS: &str = r#"
const crypto = require('crypto');
const canonical = (msg) => {
  const o = { ...msg }; delete o.sig; delete o.signature;
  const out = {}; for (const k of Object.keys(o).sort()) out[k] = o[k];
  return JSON.stringify(out);
};
const input = JSON.parse(require('fs').readFileSync(0, 'utf8'));
const { publicKey, privateKey } = crypto.generateKeyPairSync('ed25519', {
  publicKeyEncoding: { type: 'spki', format: 'pem' },
  privateKeyEncoding: { type: 'pkcs8', format: 'pem' },
});
const signed = input.texts.map((text) => {
  const msg = JSON.parse(text);
  msg.sig = crypto.sign(null, Buffer.from(canonical(msg), 'utf8'), privateKey).toString('base64');
  return { canonical: canonical(msg), sig: msg.sig, sent: JSON.stringify(msg) };
});
const verified = input.meshd.map((text) => {
  const msg = JSON.parse(text);
  const sig = msg.sig || msg.signature;
  return !!sig && crypto.verify(null, Buffer.from(canonical(msg), 'utf8'), input.meshdKey, Buffer.from(sig, 'base64'));
});
process.stdout.write(JSON.stringify({ publicKey, signed, verified }));
"#;

    /// Runs `REFERENCE_JS` with `node`; `None` (the test skips) when node is not installed.
    fn run_node(input: &Value) -> Option<Value> {
        let spawned = Command::new("node")
            .args(["-e", REFERENCE_JS])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn();
        let Ok(mut child) = spawned else {
            eprintln!("SKIPPED: `node` is not installed; the differential test against the reference scheme did not run");
            return None;
        };
        let stdin = child.stdin.take().unwrap();
        let text = input.to_string();
        std::thread::spawn(move || {
            let mut stdin = stdin;
            let _ = stdin.write_all(text.as_bytes());
        });
        let output = child.wait_with_output().unwrap();
        assert!(
            output.status.success(),
            "node failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        Some(serde_json::from_slice(&output.stdout).unwrap())
    }

    #[test]
    fn the_reference_scheme_in_node_and_meshd_agree_both_ways() {
        let key = ceo();
        let meshd_signed: Vec<String> = TRICKY
            .iter()
            .map(|text| signing::sign(text, &key).unwrap())
            .collect();
        let input = json!({
            "texts": TRICKY,
            "meshd": meshd_signed,
            "meshdKey": signing::public_key_pem(&key),
        });
        let Some(output) = run_node(&input) else {
            return;
        };
        let mut trusted = TrustedKeys::default();
        let js_key = PublicKey::from_spki_pem(output["publicKey"].as_str().unwrap()).unwrap();
        trusted.insert("ceo", js_key);
        for (text, js) in TRICKY.iter().zip(output["signed"].as_array().unwrap()) {
            let ours = canonical::canonical(&canonical::parse(text).unwrap()).unwrap();
            assert_eq!(
                ours,
                js["canonical"].as_str().unwrap(),
                "canonical form of {text}"
            );
            let sent = js["sent"].as_str().unwrap();
            let check = signing::verify(sent, &trusted);
            assert!(
                matches!(check, SignatureCheck::Verified { .. }),
                "{sent}: {check}"
            );
            // The same signature on the text as it was first written (before node re-printed
            // it): what a sender that appends `sig` to its own text puts on the wire.
            let body = text.strip_suffix('}').unwrap();
            let appended = format!("{body},\"sig\":\"{}\"}}", js["sig"].as_str().unwrap());
            let check = signing::verify(&appended, &trusted);
            assert!(
                matches!(check, SignatureCheck::Verified { .. }),
                "{appended}: {check}"
            );
        }
        let verified = output["verified"].as_array().unwrap();
        assert_eq!(verified.len(), TRICKY.len());
        for (text, ok) in meshd_signed.iter().zip(verified) {
            assert_eq!(ok, &json!(true), "node does not verify meshd's {text}");
        }
    }
}
