//! The cache files both ways: what another process writes into them reaches the mesh, and
//! meshd never overwrites or removes a file it did not write.

mod support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use meshd::control::{MemGet, SkillGet, Status};
use serde_json::{json, Value};
use support::{ask, try_ask, wait_until, Daemon, TestNode};

/// How soon a file edit on one node must be readable on its peer.
const PROPAGATION: Duration = Duration::from_secs(2);

const TOKEN: &str = "ghp_0123456789abcdefghijklmnopqrstuvwxyzAB";

/// Two daemons that are each other's peers, connected.
fn paired() -> (TestNode, TestNode, [Daemon; 2]) {
    let (a, a_addr) = TestNode::init_listening("a");
    let (b, b_addr) = TestNode::init_listening("b");
    a.run(&["peers", "add", &b.id(), &b_addr]).ok();
    b.run(&["peers", "add", &a.id(), &a_addr]).ok();
    let daemons = [a.start(), b.start()];
    wait_until("a and b are connected", || {
        let status = ask(&a.file("control.sock"), Status {}).unwrap();
        status.peers.iter().all(|p| p.connected)
    });
    (a, b, daemons)
}

fn cache(node: &TestNode, rel: &str) -> PathBuf {
    node.file("openclaw").join(rel)
}

fn read(path: &Path) -> Option<String> {
    std::fs::read_to_string(path).ok()
}

/// Writes a file from another process, as an agent or a reference tool would.
fn write_from_another_process(path: &Path, text: &str) {
    let status = std::process::Command::new("sh")
        .args(["-c", "printf '%s' \"$1\" > \"$2\"", "sh", text])
        .arg(path)
        .status()
        .unwrap();
    assert!(status.success());
}

/// Polls `done` until `deadline` after `since`.
fn within(what: &str, since: Instant, deadline: Duration, mut done: impl FnMut() -> bool) {
    while !done() {
        assert!(
            since.elapsed() < deadline,
            "{what}: not within {deadline:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn skill_content(node: &TestNode, name: &str) -> Option<String> {
    let reply = try_ask(
        &node.file("control.sock"),
        SkillGet {
            name: name.to_string(),
        },
    )?;
    reply.ok().map(|skill| skill.content)
}

fn memory(node: &TestNode, scope: &str, key: &str) -> Option<Value> {
    let get = MemGet {
        scope: scope.to_string(),
        key: key.to_string(),
    };
    ask(&node.file("control.sock"), get)
        .ok()
        .map(|versions| versions.winner.value)
}

fn status(node: &TestNode) -> Value {
    serde_json::from_str(&node.run(&["status", "--json"]).ok()).unwrap()
}

#[test]
fn an_edit_of_a_reference_skill_file_reaches_the_peer() {
    let (a, b, _daemons) = paired();
    a.run_with_stdin(&["skill", "put", "triage"], b"one").ok();
    let file = cache(&a, "mesh/skills/triage.md");
    wait_until("meshd wrote the skill file", || {
        read(&file).as_deref() == Some("one")
    });
    let edited = Instant::now();
    write_from_another_process(&file, "one, edited by an agent");
    within("B has the edit", edited, PROPAGATION, || {
        skill_content(&b, "triage").as_deref() == Some("one, edited by an agent")
    });
    wait_until("A rewrote the skill folder", || {
        read(&cache(&a, "mesh/agent-skills/triage/SKILL.md"))
            .is_some_and(|text| text.ends_with("\n---\none, edited by an agent"))
    });
    assert_eq!(
        read(&file).as_deref(),
        Some("one, edited by an agent"),
        "the edited file stays"
    );
}

#[test]
fn an_entry_added_to_mesh_memory_json_reaches_the_peer_and_a_dropped_one_stays() {
    let (a, b, _daemons) = paired();
    a.run(&["mem", "put", "mesh", "units", "\"metric\""]).ok();
    let file = cache(&a, "mesh-memory.json");
    wait_until("meshd wrote the entry", || {
        read(&file).is_some_and(|text| text.contains("mesh:units"))
    });
    // A tool that rewrites the file with only its own entry.
    let own = json!({"mesh:added": {"value": {"by": "agent"}, "nodeId": "agent", "ts": 1}});
    let edited = Instant::now();
    write_from_another_process(&file, &serde_json::to_string_pretty(&own).unwrap());
    within("B has the new entry", edited, PROPAGATION, || {
        memory(&b, "mesh", "added") == Some(json!({"by": "agent"}))
    });
    assert_eq!(
        memory(&a, "mesh", "units"),
        Some(json!("metric")),
        "dropping an entry from the file deletes nothing"
    );
    wait_until("the dropped entry is written back", || {
        read(&file).is_some_and(|text| text.contains("mesh:units") && text.contains("mesh:added"))
    });
}

#[test]
fn an_edit_of_a_skill_md_reaches_the_peer() {
    let (a, b, _daemons) = paired();
    a.run_with_stdin(&["skill", "put", "triage"], b"# Triage\nold")
        .ok();
    let file = cache(&a, "mesh/agent-skills/triage/SKILL.md");
    wait_until("meshd wrote SKILL.md", || {
        read(&file).is_some_and(|text| text.ends_with("old"))
    });
    let edited = Instant::now();
    write_from_another_process(
        &file,
        "---\nname: triage\ndescription: How to sort incoming work\n---\n# Triage\nnew",
    );
    within("B has the edit", edited, PROPAGATION, || {
        skill_content(&b, "triage").as_deref() == Some("# Triage\nnew")
    });
    let skill = ask(
        &b.file("control.sock"),
        SkillGet {
            name: "triage".into(),
        },
    )
    .unwrap();
    assert_eq!(skill.description, "How to sort incoming work");
}

#[test]
fn meshds_own_rewrites_are_never_read_back() {
    let (a, _b, _daemons) = paired();
    a.run_with_stdin(&["skill", "put", "triage"], b"one").ok();
    a.run(&["mem", "put", "mesh", "units", "\"metric\""]).ok();
    let socket = a.file("control.sock");
    let skill = || {
        ask(
            &socket,
            SkillGet {
                name: "triage".into(),
            },
        )
        .unwrap()
    };
    let entry = || {
        let get = MemGet {
            scope: "mesh".into(),
            key: "units".into(),
        };
        ask(&socket, get).unwrap().winner
    };
    let (before_skill, before_entry) = (skill(), entry());
    wait_until("the caches are written", || {
        read(&cache(&a, "mesh/agent-skills/triage/SKILL.md")).is_some()
            && read(&cache(&a, "mesh-memory.json")).is_some_and(|t| t.contains("units"))
    });
    // Rewrites by meshd itself: `cache write` through the daemon, and a change of the mesh.
    a.run(&["cache", "write"]).ok();
    a.run(&["mem", "put", "mesh", "other", "1"]).ok();
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(skill().updated_at, before_skill.updated_at);
    assert_eq!(entry().updated_at, before_entry.updated_at);
}

#[test]
fn a_secret_in_a_skill_file_is_refused_and_the_agents_file_is_never_overwritten() {
    let (a, b, _daemons) = paired();
    let file = cache(&a, "mesh/skills/notes.md");
    std::fs::create_dir_all(file.parent().unwrap()).unwrap();
    let agents = format!("my notes, with {TOKEN}");
    write_from_another_process(&file, &agents);
    wait_until("A shows the refusal", || {
        status(&a)["files"]["refused"]
            .as_array()
            .is_some_and(|r| r.iter().any(|r| r["file"] == file.to_str().unwrap()))
    });
    let refusal = status(&a)["files"]["refused"][0]["reason"].to_string();
    assert!(refusal.contains("GitHub token"), "{refusal}");
    assert!(!refusal.contains(TOKEN), "the secret is never repeated");
    assert!(a
        .run(&["status"])
        .ok()
        .contains("file not taken into the mesh"));
    assert_eq!(a.run(&["skill", "get", "notes"]).code, 3);
    // The mesh later uses the name: the agent's file stays, the mesh's version is beside it.
    b.run_with_stdin(&["skill", "put", "notes"], b"the mesh's notes")
        .ok();
    let copy = cache(&a, "mesh/skills/notes..mesh.md");
    wait_until("the mesh's version beside the agent's file", || {
        read(&copy).as_deref() == Some("the mesh's notes")
    });
    assert_eq!(read(&file), Some(agents.clone()));
    let collisions = status(&a)["files"]["collisions"].clone();
    assert!(
        collisions
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["file"] == file.to_str().unwrap()),
        "{collisions}"
    );
    assert_eq!(
        skill_content(&b, "notes").as_deref(),
        Some("the mesh's notes")
    );
    // Removed from the mesh: meshd's copy goes, the agent's file stays.
    b.run(&["skill", "rm", "notes"]).ok();
    wait_until("meshd's copy is removed", || !copy.exists());
    assert_eq!(read(&file), Some(agents));
    assert_eq!(
        skill_content(&b, "notes"),
        None,
        "the secret never reached the mesh"
    );
}

#[test]
fn without_the_daemon_a_foreign_file_is_never_overwritten_nor_removed() {
    let (node, _) = TestNode::init_listening("a");
    let skill_md = cache(&node, "mesh/agent-skills/notes/SKILL.md");
    let page = cache(&node, "mesh/agent-memory/mesh.md");
    for file in [&skill_md, &page] {
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(file, "the agent's own").unwrap();
    }
    node.run_with_stdin(&["skill", "put", "notes"], b"the mesh's")
        .ok();
    node.run(&["mem", "put", "mesh", "units", "\"metric\""])
        .ok();
    node.run(&["cache", "write"]).ok();
    assert_eq!(read(&skill_md).as_deref(), Some("the agent's own"));
    assert_eq!(read(&page).as_deref(), Some("the agent's own"));
    let copy = cache(&node, "mesh/agent-skills/notes..mesh/SKILL.md");
    assert!(read(&copy).is_some_and(|text| text.ends_with("\n---\nthe mesh's")));
    assert!(
        read(&cache(&node, "mesh/agent-memory/mesh..mesh.md")).is_some_and(|t| t.contains("units"))
    );
    let collisions = status(&node)["files"]["collisions"].clone();
    assert_eq!(collisions.as_array().unwrap().len(), 2, "{collisions}");
    node.run(&["skill", "rm", "notes"]).ok();
    node.run(&["mem", "rm", "mesh", "units"]).ok();
    node.run(&["cache", "write"]).ok();
    assert_eq!(read(&skill_md).as_deref(), Some("the agent's own"));
    assert_eq!(read(&page).as_deref(), Some("the agent's own"));
    assert!(!copy.exists() && !copy.parent().unwrap().exists());
    assert_eq!(status(&node)["files"]["collisions"], json!([]));
}
