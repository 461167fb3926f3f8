//! Every local command through the real binary.

mod support;

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::process::Stdio;

use serde_json::{json, Value};
use support::TestNode;

fn parse(text: &str) -> Value {
    serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

#[test]
fn init_creates_a_home_and_refuses_to_overwrite_it() {
    let node = TestNode::init("ceo");
    for file in ["meshd.toml", "node.key", "node.crt", "store", "api.token"] {
        assert!(node.file(file).exists(), "{file} missing");
    }
    let key_before = std::fs::read(node.file("node.key")).unwrap();
    let again = node.run(&["init", "--name", "other"]);
    assert_eq!(again.code, 1);
    assert!(
        again.stderr.contains("refusing to overwrite"),
        "{}",
        again.stderr
    );
    assert_eq!(std::fs::read(node.file("node.key")).unwrap(), key_before);
}

#[test]
fn init_rejects_a_bad_listen_address() {
    let node = TestNode::empty();
    let run = node.run(&["init", "--listen", "nowhere"]);
    assert_eq!(run.code, 1);
    assert!(run.stderr.contains("HOST:PORT"), "{}", run.stderr);
    assert!(!node.file("node.key").exists());
}

#[test]
fn an_invalid_config_names_the_file_and_its_fault_once() {
    let node = TestNode::init("a");
    let config = node.file("meshd.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, text + "\n[node]\nname = 3\n").unwrap();
    let run = node.run(&["status"]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(
        run.stderr.contains("meshd.toml is not valid"),
        "{}",
        run.stderr
    );
    assert_eq!(
        run.stderr.matches("TOML parse error").count(),
        1,
        "the parser's message comes once: {}",
        run.stderr
    );
}

#[test]
fn id_prints_the_node_id_first_and_as_json() {
    let node = TestNode::init("ceo");
    let text = node.run(&["id"]).ok();
    let first = text.lines().next().unwrap();
    assert_eq!(first.len(), 35, "{first}");
    let json = parse(&node.run(&["id", "--json"]).ok());
    assert_eq!(json["node_id"], first);
    assert_eq!(json["name"], "ceo");
    assert_eq!(json["listen"], "127.0.0.1:0");
}

#[test]
fn commands_on_a_missing_home_explain_what_to_do() {
    let node = TestNode::empty();
    let run = node.run(&["mem", "ls"]);
    assert_eq!(run.code, 1);
    assert!(run.stderr.contains("meshd init"), "{}", run.stderr);
}

#[test]
fn mem_put_get_ls_rm() {
    let node = TestNode::init("ceo");
    node.run(&[
        "mem",
        "put",
        "mesh",
        "user.preferences",
        r#"{"shortAnswers":true}"#,
    ])
    .ok();
    node.run_with_stdin(
        &["mem", "put", "user:alice", "tz", "-"],
        b"\"Europe/Berlin\"\n",
    )
    .ok();
    node.run(&["mem", "put", "node", "local.fact", "42"]).ok();

    let value = node.run(&["mem", "get", "mesh", "user.preferences"]).ok();
    assert_eq!(parse(&value), json!({"shortAnswers": true}));

    let entry = parse(&node.run(&["mem", "get", "user:alice", "tz", "--json"]).ok());
    assert_eq!(entry["scope"], "user:alice");
    assert_eq!(entry["key"], "tz");
    assert_eq!(entry["value"], "Europe/Berlin");
    let node_id = node
        .run(&["id"])
        .ok()
        .lines()
        .next()
        .unwrap()
        .replace('-', "");
    assert_eq!(entry["node_id"].as_str().unwrap(), &node_id[..32]);
    assert!(entry["updated_at"].as_u64().unwrap() > 1_700_000_000);

    let all = parse(&node.run(&["mem", "ls", "--json"]).ok());
    assert_eq!(all.as_array().unwrap().len(), 3);
    let mesh = parse(&node.run(&["mem", "ls", "--scope", "mesh", "--json"]).ok());
    assert_eq!(mesh.as_array().unwrap().len(), 1);
    assert!(node.run(&["mem", "ls"]).ok().contains("user.preferences"));

    node.run(&["mem", "rm", "mesh", "user.preferences"]).ok();
    assert_eq!(
        node.run(&["mem", "get", "mesh", "user.preferences"]).code,
        3
    );
    assert_eq!(node.run(&["mem", "rm", "mesh", "user.preferences"]).code, 3);
}

#[test]
fn a_missing_key_exits_3_with_a_message() {
    let node = TestNode::init("ceo");
    let run = node.run(&["mem", "get", "mesh", "absent"]);
    assert_eq!(run.code, 3);
    assert!(run.stderr.contains("no entry absent"), "{}", run.stderr);
    assert!(run.stdout.is_empty());
}

#[test]
fn mem_history_lists_every_version_with_its_author_and_claim() {
    let node = TestNode::init("ceo");
    let own = node
        .run(&["id"])
        .ok()
        .lines()
        .next()
        .unwrap()
        .replace('-', "")[..32]
        .to_string();
    let message =
        r#"{"type":"memory","scope":"mesh","key":"k","value":1,"nodeId":"sec","ts":1700000000}"#;
    node.run_with_stdin(&["bridge", "ingest"], message.as_bytes())
        .ok();
    node.run(&["mem", "put", "mesh", "k", "2"]).ok();
    node.run(&["mem", "rm", "mesh", "k"]).ok();

    let history = parse(&node.run(&["mem", "history", "mesh", "k", "--json"]).ok());
    let versions = history.as_array().unwrap();
    let shown: Vec<_> = versions
        .iter()
        .map(|v| {
            (
                v["value"].clone(),
                v["deleted"].clone(),
                v["claimed_by"].clone(),
                v["winner"].clone(),
            )
        })
        .collect();
    assert_eq!(
        shown,
        [
            (json!(1), Value::Null, json!("sec"), json!(false)),
            (json!(2), Value::Null, Value::Null, json!(false)),
            (Value::Null, json!(true), Value::Null, json!(true)),
        ],
        "oldest first, the tombstone winning: {history}"
    );
    assert!(
        versions.iter().all(|v| v["author"] == own.as_str()),
        "{history}"
    );
    assert_eq!(versions[0]["via"], "bridge");
    assert_eq!(versions[0]["verified"], false);
    assert_eq!(
        versions[0]["node_id"], "sec",
        "the writer the message named"
    );
    assert_eq!(versions[0]["updated_at"], 1700000000u64);
    assert_eq!(versions[1]["verified"], true);
    assert!(versions
        .iter()
        .all(|v| v["change"].as_str().unwrap().len() == 64));
    assert!(versions[0]["change_time"].as_i64().unwrap() > 1_700_000_000);

    let text = node.run(&["mem", "history", "mesh", "k"]).ok();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{text}");
    assert!(
        lines[1].contains(&format!("written by {own}; change")),
        "{text}"
    );
    assert!(
        lines[0].contains(&format!(
            "claimed by sec via bridge, written by {own}, unverified"
        )),
        "{text}"
    );
    assert!(
        lines[2].contains("(deleted)") && lines[2].ends_with("(current)"),
        "{text}"
    );

    let never = node.run(&["mem", "history", "mesh", "never"]);
    assert_eq!(never.code, 3);
    assert!(never.stderr.contains("no entry never"), "{}", never.stderr);
    let no_scope = node.run(&["mem", "history", "user:nobody", "k"]);
    assert_eq!(no_scope.code, 3);
    assert!(
        no_scope
            .stderr
            .contains("holds nothing in scope user:nobody"),
        "{}",
        no_scope.stderr
    );
    let bad = node.run(&["mem", "history", "global", "k"]);
    assert_ne!(bad.code, 0);
    assert!(bad.stderr.contains("scope"), "{}", bad.stderr);
}

#[test]
fn get_conflicts_shows_none_for_a_single_writer() {
    let node = TestNode::init("ceo");
    node.run(&["mem", "put", "mesh", "k", "1"]).ok();
    node.run(&["mem", "put", "mesh", "k", "2"]).ok();
    let entry = parse(
        &node
            .run(&["mem", "get", "mesh", "k", "--json", "--conflicts"])
            .ok(),
    );
    assert_eq!(entry["value"], 2);
    assert_eq!(entry["conflicts"], json!([]));
}

#[test]
fn validation_errors_are_clear_and_store_nothing() {
    let node = TestNode::init("ceo");
    let cases: &[(&[&str], &str)] = &[
        (&["mem", "put", "global", "k", "1"], "unknown scope"),
        (&["mem", "put", "user:", "k", "1"], "unknown scope"),
        (&["mem", "put", "mesh", "", "1"], "key is empty"),
        (&["mem", "put", "mesh", "k", "metric"], "not valid JSON"),
        (&["mem", "put", "mesh", "k", "{\"a\":"], "not valid JSON"),
    ];
    for (args, message) in cases {
        let run = node.run(args);
        assert_eq!(run.code, 1, "{args:?} succeeded");
        assert!(run.stderr.contains(message), "{args:?}: {}", run.stderr);
    }
    let long_key = "k".repeat(513);
    let run = node.run(&["mem", "put", "mesh", &long_key, "1"]);
    assert!(run.stderr.contains("limit is 512"), "{}", run.stderr);
    let big = format!("\"{}\"", "x".repeat(1024 * 1024));
    let run = node.run_with_stdin(&["mem", "put", "mesh", "big", "-"], big.as_bytes());
    assert!(run.stderr.contains("limit is 1048576"), "{}", run.stderr);
    assert_eq!(parse(&node.run(&["mem", "ls", "--json"]).ok()), json!([]));
}

#[test]
fn secrets_are_refused_without_being_echoed() {
    let node = TestNode::init("ceo");
    let token = "ghp_0123456789abcdefghijklmnopqrstuvwxyzAB";
    let run = node.run(&["mem", "put", "mesh", "github", &format!("\"{token}\"")]);
    assert_eq!(run.code, 1);
    assert!(run.stderr.contains("GitHub token"), "{}", run.stderr);
    assert!(!run.stderr.contains(token));
    let run = node.run(&["mem", "put", "mesh", "db.password", "\"hunter2hunter2\""]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    let pem = "-----BEGIN PRIVATE KEY-----\nMIIB\n-----END PRIVATE KEY-----\n";
    let run = node.run_with_stdin(&["skill", "put", "keys"], pem.as_bytes());
    assert_eq!(run.code, 1);
    assert!(run.stderr.contains("private key"), "{}", run.stderr);
    assert_eq!(parse(&node.run(&["mem", "ls", "--json"]).ok()), json!([]));
    assert_eq!(parse(&node.run(&["skill", "ls", "--json"]).ok()), json!([]));
}

#[test]
fn skill_put_get_ls_rm_keeps_content_byte_for_byte() {
    let node = TestNode::init("ceo");
    let content =
        "# Triage rules\n\n- urgent → CEO\n- tabs\tand trailing spaces  \nno final newline";
    let file = node.file("triage.md");
    std::fs::write(&file, content).unwrap();
    node.run(&[
        "skill",
        "put",
        "triage",
        "--file",
        file.to_str().unwrap(),
        "-d",
        "How to triage",
    ])
    .ok();
    node.run_with_stdin(&["skill", "put", "style"], b"Short answers.\n")
        .ok();
    assert_eq!(node.run(&["skill", "get", "triage"]).ok(), content);
    assert_eq!(
        node.run(&["skill", "get", "style"]).ok(),
        "Short answers.\n"
    );

    // An update without --description keeps the description.
    node.run_with_stdin(&["skill", "put", "triage"], b"v2").ok();
    let list = parse(&node.run(&["skill", "ls", "--json"]).ok());
    let triage = &list.as_array().unwrap()[1];
    assert_eq!(triage["name"], "triage");
    assert_eq!(triage["content"], "v2");
    assert_eq!(triage["description"], "How to triage");
    assert!(node.run(&["skill", "ls"]).ok().contains("How to triage"));

    node.run(&["skill", "rm", "triage"]).ok();
    assert_eq!(node.run(&["skill", "get", "triage"]).code, 3);
    assert_eq!(node.run(&["skill", "rm", "triage"]).code, 3);
}

#[test]
fn skill_put_with_a_missing_file_fails_clearly() {
    let node = TestNode::init("ceo");
    let run = node.run(&["skill", "put", "x", "--file", "/nonexistent/skill.md"]);
    assert_eq!(run.code, 1);
    assert!(
        run.stderr.contains("cannot read /nonexistent/skill.md"),
        "{}",
        run.stderr
    );
}

#[test]
fn doc_export_writes_a_standard_automerge_document() {
    let node = TestNode::init("ceo");
    node.run(&["mem", "put", "mesh", "k", "\"v\""]).ok();
    node.run_with_stdin(&["skill", "put", "s"], b"body").ok();
    let out = node.file("mesh.automerge");
    node.run(&["doc", "export", "mesh", "--out", out.to_str().unwrap()])
        .ok();
    let doc = automerge::Automerge::load(&std::fs::read(&out).unwrap()).unwrap();
    use automerge::ReadDoc;
    assert!(doc.get(automerge::ROOT, "k").unwrap().is_some());

    let skills = node.file("skills.automerge");
    node.run(&["doc", "export", "skills", "--out", skills.to_str().unwrap()])
        .ok();
    let doc = automerge::Automerge::load(&std::fs::read(&skills).unwrap()).unwrap();
    assert!(doc.get(automerge::ROOT, "s").unwrap().is_some());

    assert_eq!(
        node.run(&["doc", "export", "user:nobody", "--out", "/tmp/x"])
            .code,
        3
    );
}

#[test]
fn state_survives_between_processes() {
    let node = TestNode::init("ceo");
    for i in 0..20 {
        node.run(&["mem", "put", "mesh", &format!("k{i}"), &i.to_string()])
            .ok();
    }
    let all = parse(&node.run(&["mem", "ls", "--json"]).ok());
    assert_eq!(all.as_array().unwrap().len(), 20);
    assert_eq!(
        parse(&node.run(&["mem", "get", "mesh", "k19"]).ok()),
        json!(19)
    );
}

/// Adding a known peer again used to reset its access to full read and write in silence.
#[test]
fn peers_add_for_a_known_peer_changes_only_what_is_given() {
    let node = TestNode::init("a");
    let peer = TestNode::init("b");
    let id = peer.run(&["id"]).ok().lines().next().unwrap().to_string();
    let added = node.run(&[
        "peers",
        "add",
        &id,
        "127.0.0.1:7464",
        "--read",
        "mesh",
        "--write",
        "none",
    ]);
    assert_eq!(added.code, 0, "{}", added.stderr);
    assert!(
        added.stderr.contains("read mesh; write none"),
        "{}",
        added.stderr
    );
    let again = node.run(&["peers", "add", &id, "--name", "nas"]);
    assert_eq!(again.code, 0, "{}", again.stderr);
    assert!(
        again.stderr.contains("peer nas: read mesh; write none"),
        "{}",
        again.stderr
    );
    let peers: serde_json::Value =
        serde_json::from_str(&node.run(&["peers", "ls", "--json"]).ok()).unwrap();
    assert_eq!(peers[0]["access"]["read"], serde_json::json!(["mesh"]));
    assert_eq!(peers[0]["addresses"], serde_json::json!(["127.0.0.1:7464"]));
    let reset = node.run(&["peers", "add", &id, "--reset-access"]);
    assert!(
        reset.stderr.contains("read mesh,skills,user:*,node:*"),
        "{}",
        reset.stderr
    );
    let unknown = TestNode::init("c");
    let other = unknown
        .run(&["id"])
        .ok()
        .lines()
        .next()
        .unwrap()
        .to_string();
    let refused = node.run(&["peers", "add", &other]);
    assert_ne!(refused.code, 0);
    assert!(
        refused.stderr.contains("needs an address"),
        "{}",
        refused.stderr
    );
}

/// `meshd api serve` on a free loopback port: the child and the address it printed.
fn api_serve(node: &TestNode) -> (std::process::Child, String) {
    let mut child = node
        .command(&["api", "serve", "--listen", "127.0.0.1:0"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stderr.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = (line.trim().strip_prefix("meshd API listening on http://"))
        .unwrap_or_else(|| panic!("unexpected first line: {line}"))
        .to_string();
    (child, addr)
}

fn token_mode(node: &TestNode) -> u32 {
    let metadata = std::fs::metadata(node.file("api.token")).unwrap();
    metadata.permissions().mode() & 0o777
}

#[test]
fn init_makes_a_private_api_token_that_the_api_accepts_from_a_page() {
    let node = TestNode::init("ceo");
    assert_eq!(token_mode(&node), 0o600);
    let token = std::fs::read_to_string(node.file("api.token")).unwrap();
    let token = token.trim().to_string();
    assert_eq!(token.len(), 64, "32 random bytes in hex: {token}");
    let origin = "http://dash.localhost:3000";
    let config = node.file("meshd.toml");
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str(&format!("\n[api]\nallowed_origins = [\"{origin}\"]\n"));
    std::fs::write(&config, text).unwrap();

    let (mut serve, addr) = api_serve(&node);
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let read = |authorization: Option<&str>| {
        let mut request = agent
            .get(format!("http://{addr}/mesh/memory"))
            .header("Origin", origin);
        if let Some(value) = authorization {
            request = request.header("Authorization", value);
        }
        request.call().unwrap().status().as_u16()
    };
    assert_eq!(read(Some(&format!("Bearer {token}"))), 200);
    assert_eq!(read(None), 401);
    assert_eq!(read(Some("Bearer not-the-token")), 401);
    unsafe { libc::kill(serve.id() as libc::pid_t, libc::SIGTERM) };
    assert!(serve.wait().unwrap().success());
    let kept = std::fs::read_to_string(node.file("api.token")).unwrap();
    assert_eq!(kept.trim(), token, "serving never replaces the token");
}

#[test]
fn a_home_made_before_the_token_gets_one_when_the_api_starts() {
    let node = TestNode::init("ceo");
    std::fs::remove_file(node.file("api.token")).unwrap();
    let (mut serve, _) = api_serve(&node);
    serve.kill().unwrap();
    serve.wait().unwrap();
    assert_eq!(token_mode(&node), 0o600);
}

/// An operator who replaces api-server.js by meshd under the same unit file keeps its port
/// and its credentials: every route but the health check needs the token.
#[test]
fn the_reference_servers_variables_give_the_same_port_with_the_same_auth() {
    let node = TestNode::init("ceo");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut serve = node
        .command(&["api", "serve"])
        .env("PORT", port.to_string())
        .env("MESH_STORE_AUTH_BEARER", "unit-t0ken")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(serve.stderr.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(
        line.trim(),
        format!("meshd API listening on http://127.0.0.1:{port}")
    );
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let status = |method: &str, path: &str, authorization: Option<&str>| {
        let mut request = ureq::http::Request::builder()
            .method(method)
            .uri(format!("http://127.0.0.1:{port}{path}"));
        if let Some(value) = authorization {
            request = request.header("Authorization", value);
        }
        let body = r#"{"type":"memory","scope":"mesh","key":"k","value":1,"nodeId":"ceo","ts":1}"#;
        let answer = match method {
            "POST" => agent.run(request.body(body.to_string()).unwrap()),
            _ => agent.run(request.body(()).unwrap()),
        };
        answer.unwrap().status().as_u16()
    };
    assert_eq!(status("GET", "/health", None), 200);
    for (method, path) in [("GET", "/mesh/memory"), ("POST", "/ingest")] {
        assert_eq!(status(method, path, None), 401, "{path}");
        assert_eq!(status(method, path, Some("Bearer nope")), 401, "{path}");
        assert_eq!(
            status(method, path, Some("Bearer unit-t0ken")),
            200,
            "{path}"
        );
    }
    serve.kill().unwrap();
    serve.wait().unwrap();
}
