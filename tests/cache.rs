//! `meshd cache write`, and `meshd api serve` keeping the caches and the SQLite mirror
//! current after writes.

mod support;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use support::compat::{files_under, TestNode};

const MESSAGES: &str = r##"{"type":"memory","scope":"mesh","key":"user.preferences","value":{"shortAnswers":true},"nodeId":"ceo","ts":1739123456}
{"type":"memory","scope":"node","key":"uptime","value":3,"nodeId":"sec","ts":1739120000}
{"type":"memory","scope":"user:alice","key":"tz","value":"UTC","nodeId":"ceo","ts":1739123000}
{"type":"skill","name":"triage","sourceNode":"ceo","content":"# Triage rules\n...","ts":1739123456}"##;

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn cache_files_byte_for_byte() {
    let node = TestNode::new("a");
    node.ok(&["bridge", "ingest"], MESSAGES);
    let run = node.ok(&["cache", "write"], "");
    assert_eq!(
        run.stdout,
        "{\"written\":6,\"unchanged\":0,\"removed\":0}\n"
    );
    let home = node.openclaw_home();
    assert_eq!(
        files_under(&home),
        [
            "mesh-memory.json",
            "mesh/agent-memory/mesh.md",
            "mesh/agent-memory/node-sec.md",
            "mesh/agent-memory/user-alice.md",
            "mesh/agent-skills/triage/SKILL.md",
            "mesh/skills/triage.md",
        ]
    );
    assert_eq!(
        read(&home.join("mesh-memory.json")),
        r#"{
  "mesh:user.preferences": {
    "value": {
      "shortAnswers": true
    },
    "nodeId": "ceo",
    "ts": 1739123456
  },
  "node:sec:uptime": {
    "value": 3,
    "nodeId": "sec",
    "ts": 1739120000
  },
  "user:alice:tz": {
    "value": "UTC",
    "nodeId": "ceo",
    "ts": 1739123000
  }
}"#
    );
    assert_eq!(
        read(&home.join("mesh/skills/triage.md")),
        "# Triage rules\n..."
    );
    assert_eq!(
        read(&home.join("mesh/agent-skills/triage/SKILL.md")),
        "---\nname: \"triage\"\ndescription: \"Triage rules\"\n\
         metadata: {\"meshd\":{\"sourceNode\":\"ceo\",\"updatedAt\":\"2025-02-09T17:50:56Z\"}}\n\
         ---\n# Triage rules\n..."
    );
    let intro = "Shared between mesh nodes by meshd, which rewrites this file: change entries with meshd.\n";
    // The messages named their writers; this node wrote the versions, and says so.
    let by = |claimed: &str| {
        format!(
            "claimed by {claimed} via bridge, written by {}, unverified",
            node.node_id()
        )
    };
    assert_eq!(
        read(&home.join("mesh/agent-memory/mesh.md")),
        format!(
            "# Mesh memory: mesh\n\n{intro}\n## user.preferences\n\n```json\n{{\n  \"shortAnswers\": true\n}}\n```\n\n\
             Updated 2025-02-09T17:50:56Z, {}.\n",
            by("ceo")
        )
    );
    assert_eq!(
        read(&home.join("mesh/agent-memory/user-alice.md")),
        format!(
            "# Mesh memory: user:alice\n\n{intro}\n## tz\n\nUTC\n\nUpdated 2025-02-09T17:43:20Z, {}.\n",
            by("ceo")
        )
    );
    assert_eq!(
        read(&home.join("mesh/agent-memory/node-sec.md")),
        format!(
            "# Mesh memory: node:sec\n\n{intro}\n## uptime\n\n```json\n3\n```\n\nUpdated 2025-02-09T16:53:20Z, {}.\n",
            by("sec")
        )
    );
    let again = node.ok(&["cache", "write"], "");
    assert_eq!(
        again.stdout,
        "{\"written\":0,\"unchanged\":6,\"removed\":0}\n"
    );
}

#[test]
fn the_own_node_scope_is_node_in_the_cache() {
    let node = TestNode::new("a");
    node.ok(&["mem", "put", "node", "role", "\"ceo\""], "");
    node.ok(&["cache", "write"], "");
    let home = node.openclaw_home();
    let cache: serde_json::Value =
        serde_json::from_str(&read(&home.join("mesh-memory.json"))).unwrap();
    assert_eq!(cache["node:role"]["value"], "ceo");
    assert_eq!(cache["node:role"]["nodeId"], node.node_id().as_str());
    assert!(home.join("mesh/agent-memory/node.md").exists());
}

#[test]
fn hostile_skill_names_stay_inside_their_directories() {
    let node = TestNode::new("a");
    let names = [
        "../../escape",
        "/etc/passwd",
        "..",
        "a/b/../c",
        ".hidden",
        "x\\..\\y",
        "ok.md",
    ];
    let messages: Vec<String> = names
        .iter()
        .map(|name| {
            serde_json::json!({"type":"skill","name":name,"sourceNode":"ceo","content":name,"ts":1})
                .to_string()
        })
        .collect();
    node.ok(&["bridge", "ingest"], &messages.join("\n"));
    node.ok(&["cache", "write"], "");
    let everything = files_under(node.dir.path());
    let outside: Vec<&String> = everything
        .iter()
        .filter(|f| !f.starts_with("home/") && !f.starts_with("openclaw/"))
        .collect();
    assert!(outside.is_empty(), "written outside: {outside:?}");
    let reference: Vec<String> = files_under(&node.openclaw_home().join("mesh/skills"));
    assert_eq!(
        reference,
        [
            "c.md",
            "escape.md",
            "hidden.md",
            "ok.md",
            "passwd.md",
            "unnamed.md",
            "y.md"
        ]
    );
    let folders = files_under(&node.openclaw_home().join("mesh/agent-skills"));
    assert!(
        folders.contains(&"escape/SKILL.md".to_string()),
        "{folders:?}"
    );
    assert!(folders.iter().all(|f| f.ends_with("/SKILL.md")));
    assert_eq!(
        read(&node.openclaw_home().join("mesh/skills/escape.md")),
        "../../escape"
    );
}

#[test]
fn stale_files_go_and_files_meshd_did_not_write_stay() {
    let node = TestNode::new("a");
    node.ok(&["skill", "put", "s1"], "one");
    node.ok(&["skill", "put", "s2"], "two");
    node.ok(&["cache", "write"], "");
    let home = node.openclaw_home();
    std::fs::write(home.join("mesh/skills/mine.md"), "my own").unwrap();
    std::fs::create_dir_all(home.join("mesh/agent-skills/mine")).unwrap();
    std::fs::write(home.join("mesh/agent-skills/mine/SKILL.md"), "my own").unwrap();
    node.ok(&["skill", "rm", "s1"], "");
    let run = node.ok(&["cache", "write"], "");
    assert!(run.stdout.contains("\"removed\":2"), "{}", run.stdout);
    assert!(!home.join("mesh/skills/s1.md").exists());
    assert!(!home.join("mesh/agent-skills/s1").exists());
    assert_eq!(read(&home.join("mesh/skills/s2.md")), "two");
    assert_eq!(read(&home.join("mesh/skills/mine.md")), "my own");
    assert_eq!(
        read(&home.join("mesh/agent-skills/mine/SKILL.md")),
        "my own"
    );
}

#[test]
fn directories_come_from_meshd_toml() {
    let node = TestNode::new("a");
    let skills = node.dir.path().join("openclaw/custom-skills");
    let memory = node.dir.path().join("openclaw/custom-memory");
    node.configure(&format!(
        "\n[cache]\nskills_dir = {:?}\nmemory_dir = {:?}\n",
        skills.to_str().unwrap(),
        memory.to_str().unwrap()
    ));
    node.ok(&["bridge", "ingest"], MESSAGES);
    node.ok(&["cache", "write"], "");
    assert!(skills.join("triage/SKILL.md").exists());
    assert!(memory.join("mesh.md").exists());
}

/// Starts `meshd api serve` and returns it with the address it printed.
fn serve(node: &TestNode, listen: &str) -> (std::process::Child, String) {
    let mut child = node
        .command()
        .args(["api", "serve", "--listen", listen])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    stderr.read_line(&mut line).unwrap();
    let addr = line
        .trim()
        .strip_prefix("meshd API listening on http://")
        .unwrap_or_else(|| panic!("unexpected first line: {line}"))
        .to_string();
    (child, addr)
}

fn wait_for(what: &str, mut ready: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ready() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn api_serve_keeps_the_caches_and_the_mirror_current() {
    let node = TestNode::new("a");
    let mirror = node.dir.path().join("openclaw/mirror.sqlite");
    node.configure(&format!(
        "\n[cache]\ndebounce_ms = 20\n[store]\nmirror = {:?}\n",
        mirror.to_str().unwrap()
    ));
    let (mut child, addr) = serve(&node, "127.0.0.1:0");
    let agent: ureq::Agent = ureq::Agent::config_builder().build().into();
    let body = r#"{"scope":"mesh","key":"units","value":"metric","node_id":"ceo"}"#;
    agent
        .put(format!("http://{addr}/mesh/memory"))
        .send(body)
        .unwrap();
    let cache = node.openclaw_home().join("mesh-memory.json");
    wait_for("the cache", || {
        std::fs::read_to_string(&cache).is_ok_and(|text| text.contains("mesh:units"))
    });
    let mirrored = || {
        let conn = rusqlite::Connection::open(&mirror).ok()?;
        conn.query_row(
            "SELECT value FROM mesh_memory WHERE key = 'units'",
            [],
            |r| r.get::<_, String>(0),
        )
        .ok()
    };
    wait_for("the mirror", || mirrored().as_deref() == Some("metric"));
    agent
        .post(format!("http://{addr}/ingest"))
        .send(r#"{"type":"skill","name":"triage","sourceNode":"ceo","content":"x","ts":5}"#)
        .unwrap();
    let skill = node
        .openclaw_home()
        .join("mesh/agent-skills/triage/SKILL.md");
    wait_for("the skill folder", || skill.exists());
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert!(child.wait().unwrap().success(), "SIGTERM stops it cleanly");
}

#[test]
fn api_serve_refuses_an_open_address_without_auth() {
    let node = TestNode::new("a");
    let run = node.run(&["api", "serve", "--listen", "0.0.0.0:0"], "");
    assert_ne!(run.code, 0);
    assert!(
        run.stderr.contains("without authentication"),
        "{}",
        run.stderr
    );
}

/// User ids as the reference schema takes them (spaces, `/`, `..`, non-ASCII) are stored, and
/// their memory pages get safe names inside the memory directory.
#[test]
fn any_user_id_gets_a_page_with_a_safe_name() {
    let node = TestNode::new("a");
    let messages = [
        r#"{"type":"memory","scope":"user:Ana María","key":"tz","value":"UTC","nodeId":"ceo","ts":1739123000}"#,
        r#"{"type":"memory","scope":"user:../../escape","key":"k","value":1,"nodeId":"ceo","ts":1739123000}"#,
    ];
    let run = node.ok(&["bridge", "ingest"], &messages.join("\n"));
    assert!(run.stdout.contains("\"memory\":2"), "{}", run.stdout);
    assert_eq!(
        node.json(&["mem", "get", "user:Ana María", "tz"]),
        serde_json::json!("UTC")
    );
    node.ok(&["cache", "write"], "");
    let files = files_under(&node.openclaw_home());
    assert!(
        files.contains(&"mesh/agent-memory/user-Ana%20María.md".to_string()),
        "{files:?}"
    );
    assert!(
        files.contains(&"mesh/agent-memory/user-..%2F..%2Fescape.md".to_string()),
        "{files:?}"
    );
    let outside = files_under(node.dir.path());
    assert!(
        !outside
            .iter()
            .any(|f| f.contains("escape.md") && !f.contains("%2F")),
        "{outside:?}"
    );
}
