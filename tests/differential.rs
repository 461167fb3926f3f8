//! The reference store server `mesh/store/api-server.js` (run with `node`) and `meshd api
//! serve` get the same requests; their status codes and JSON bodies must agree, after
//! normalising what legitimately differs (times), except for the differences listed in
//! `KNOWN`, each justified in docs/compatibility.md ("Differences from api-server.js"). A new
//! difference fails the test, and so does a listed one that no longer shows.
//!
//! The reference is found through `MESHD_REFERENCE_DIR` or `MESHD_REFERENCE_GIT`
//! (tests/support/reference.rs); its better-sqlite3 is installed with npm into a cache under
//! the target directory. Without either, the test prints why and passes.

#[path = "support/reference.rs"]
mod reference;
mod support;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};
use support::compat::TestNode;

/// A difference the test expects: (step, JSON path, kind, id of its justification in
/// docs/compatibility.md). `*` as the step matches every step.
type Known = (&'static str, &'static str, &'static str, &'static str);

const KNOWN: &[Known] = &[
    // D1: the health check names meshd.
    (
        "*",
        "/service",
        "\"openclaw-mesh-store-api\" vs \"meshd\"",
        "D1",
    ),
    // D2: memory rows say who wrote them.
    ("*", "/author", "only in meshd", "D2"),
    ("*", "/verified", "only in meshd", "D2"),
    ("*", "/claimed_by", "only in meshd", "D2"),
    ("*", "/via", "only in meshd", "D2"),
    ("*", "/[]/author", "only in meshd", "D2"),
    ("*", "/[]/verified", "only in meshd", "D2"),
    ("*", "/[]/claimed_by", "only in meshd", "D2"),
    ("*", "/[]/via", "only in meshd", "D2"),
    // D3: a PUT without node_id is this node's write, not "unknown"'s.
    (
        "put_without_node_id",
        "/node_id",
        "\"unknown\" vs \"<own id>\"",
        "D3",
    ),
    (
        "list_all",
        "/[]/node_id",
        "\"unknown\" vs \"<own id>\"",
        "D3",
    ),
    // D4: search rows carry a score, and the snippet is cut from the value alone.
    ("*", "/[]/score", "only in meshd", "D4"),
    ("*", "/[]/snippet", "\"units metric\" vs \"metric\"", "D4"),
    // D5: bodies have a limit.
    ("oversized_body", "status", "200 vs 413", "D5"),
    ("oversized_body", "/error", "only in meshd", "D5"),
    ("oversized_body", "/scope", "only in reference", "D5"),
    ("oversized_body", "/key", "only in reference", "D5"),
    ("oversized_body", "/value", "only in reference", "D5"),
    ("oversized_body", "/node_id", "only in reference", "D5"),
    ("oversized_body", "/updated_at", "only in reference", "D5"),
    // D6: a known path with another method is 405.
    ("wrong_method", "status", "404 vs 405", "D6"),
    (
        "wrong_method",
        "/error",
        "\"Not found\" vs \"Method Not Allowed\"",
        "D6",
    ),
];

/// One request: a name for reports, then method, path, headers, body.
struct Step {
    name: &'static str,
    method: &'static str,
    path: String,
    headers: Vec<(&'static str, String)>,
    body: Option<String>,
}

fn step(name: &'static str, method: &'static str, path: &str) -> Step {
    Step {
        name,
        method,
        path: path.to_string(),
        headers: Vec::new(),
        body: None,
    }
}

impl Step {
    fn body(mut self, body: impl Into<String>) -> Step {
        self.body = Some(body.into());
        self
    }

    fn json(self, body: Value) -> Step {
        self.body(body.to_string())
    }

    fn header(mut self, name: &'static str, value: &str) -> Step {
        self.headers.push((name, value.to_string()));
        self
    }
}

/// A group of steps run against both servers started with the same environment.
struct Scenario {
    env: Vec<(&'static str, &'static str)>,
    steps: Vec<Step>,
}

const BEARER: &str = "tok-differential-1";
const HEADER_SECRET: &str = "hdr-differential-1";

fn scenarios() -> Vec<Scenario> {
    let put = |name, body: Value| step(name, "PUT", "/mesh/memory").json(body);
    let user = "user%3AAna%20Mar%C3%ADa";
    let oversized = json!({"scope": "mesh", "key": "big", "value": "x".repeat(5 << 20)});
    let open = vec![
        step("health", "GET", "/health"),
        step("health_root", "GET", "/"),
        put(
            "put_memory",
            json!({"scope": "mesh", "key": "units", "value": "metric", "node_id": "ceo"}),
        ),
        step("get_memory", "GET", "/mesh/memory/mesh/units"),
        put(
            "put_object_slash_key",
            json!({"scope": "mesh", "key": "a/b", "value": {"x": [1, 2.5, null]}, "node_id": "ceo"}),
        ),
        step("get_slash_key_encoded", "GET", "/mesh/memory/mesh/a%2Fb"),
        step("get_slash_key_raw", "GET", "/mesh/memory/mesh/a/b"),
        put(
            "put_without_node_id",
            json!({"scope": "mesh", "key": "n", "value": 42}),
        ),
        put(
            "put_user_with_space",
            json!({"scope": "user:Ana María", "key": "lang", "value": "es", "node_id": "ceo"}),
        ),
        step(
            "get_user_with_space",
            "GET",
            &format!("/mesh/memory/{user}/lang"),
        ),
        step(
            "list_user_with_space",
            "GET",
            &format!("/mesh/memory?scope={user}"),
        ),
        put(
            "put_node_scope",
            json!({"scope": "node", "key": "uptime", "value": 3, "node_id": "ceo"}),
        ),
        step("get_node_scope", "GET", "/mesh/memory/node/uptime"),
        step("list_node_scope", "GET", "/mesh/memory?scope=node"),
        step("get_missing", "GET", "/mesh/memory/mesh/nothing"),
        step("list_all", "GET", "/mesh/memory"),
        step("search", "GET", "/mesh/memory?q=metric"),
        step("search_scoped", "GET", "/mesh/memory?q=metric&scope=mesh"),
        step("query", "POST", "/mesh/query").json(json!({"query": "metric"})),
        step("put_skill", "PUT", "/mesh/skills")
            .json(json!({"name": "triage", "source_node": "ceo", "content": "# Triage"})),
        step("put_skill_path", "PUT", "/mesh/skills").json(
            json!({"name": "deploy", "source_node": "ceo", "path": "https://skills.test/d.md"}),
        ),
        step("get_skill", "GET", "/mesh/skills/triage"),
        step("get_skill_missing", "GET", "/mesh/skills/nothing"),
        step("list_skills", "GET", "/mesh/skills"),
        step("put_skill_no_body", "PUT", "/mesh/skills")
            .json(json!({"name": "x", "source_node": "ceo"})),
        step("put_skill_no_name", "PUT", "/mesh/skills")
            .json(json!({"source_node": "ceo", "content": "c"})),
        step("bad_json", "PUT", "/mesh/memory").body("{not json"),
        put("missing_fields", json!({"scope": "mesh"})),
        put("empty_key", json!({"scope": "mesh", "key": "", "value": 1})),
        step("oversized_body", "PUT", "/mesh/memory").json(oversized),
        step("unknown_route", "GET", "/nope"),
        step("unknown_mesh_route", "GET", "/mesh/nope"),
        step("wrong_method", "DELETE", "/mesh/memory"),
    ];
    let auth = |name, header: &'static str, value: &str| {
        step(name, "GET", "/mesh/skills").header(header, value)
    };
    let bearer = vec![
        step("bearer_health", "GET", "/health"),
        step("bearer_missing", "GET", "/mesh/skills"),
        auth("bearer_wrong", "Authorization", "Bearer nope"),
        auth("bearer_right", "Authorization", &format!("Bearer {BEARER}")),
    ];
    let header = vec![
        step("header_health", "GET", "/health"),
        step("header_missing", "GET", "/mesh/skills"),
        auth("header_wrong", "X-API-Key", "nope"),
        auth("header_right", "X-API-Key", HEADER_SECRET),
    ];
    let rate = vec![
        step("rate_1", "GET", "/mesh/skills"),
        step("rate_2", "GET", "/mesh/memory"),
        step("rate_health", "GET", "/health"),
        step("rate_3", "GET", "/mesh/skills"),
        step("rate_4_over", "GET", "/mesh/skills"),
        step("rate_unknown_mesh_route", "GET", "/mesh/nope"),
    ];
    vec![
        Scenario {
            env: vec![],
            steps: open,
        },
        Scenario {
            env: vec![("MESH_STORE_AUTH_BEARER", BEARER)],
            steps: bearer,
        },
        Scenario {
            env: vec![
                ("MESH_STORE_AUTH_HEADER", "X-API-Key"),
                ("MESH_STORE_AUTH_SECRET", HEADER_SECRET),
            ],
            steps: header,
        },
        Scenario {
            env: vec![("MESH_STORE_RATE_LIMIT_PER_MIN", "3")],
            steps: rate,
        },
    ]
}

/// A running server and what keeps it alive.
struct Service {
    child: Child,
    addr: String,
    /// meshd's own compact node id; empty for the reference.
    node_id: String,
    _node: Option<TestNode>,
    _dir: Option<tempfile::TempDir>,
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Reads stderr until a line holds `marker`; the text after the last `http://` is the
/// address (the reference says `localhost:PORT`).
fn address_from(child: &mut Child, marker: &str) -> String {
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    while !line.contains(marker) {
        line.clear();
        assert_ne!(stderr.read_line(&mut line).unwrap(), 0, "the server ended");
    }
    // Drain the rest so the server never blocks on a full pipe.
    std::thread::spawn(move || std::io::copy(&mut stderr, &mut std::io::sink()));
    let addr = line.trim().rsplit("http://").next().unwrap().to_string();
    addr.replace("localhost", "127.0.0.1")
}

fn start_reference(dir: &Path, modules: &Path, env: &[(&str, &str)]) -> Service {
    let data = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut command = Command::new("node");
    command
        .arg(dir.join("mesh/store/api-server.js"))
        .arg(port.to_string())
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("NODE_PATH", modules)
        .env("MESH_STORE_DB_PATH", data.path().join("mesh-store.sqlite"))
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = command.spawn().unwrap();
    let addr = address_from(&mut child, "listening on http://");
    Service {
        child,
        addr,
        node_id: String::new(),
        _node: None,
        _dir: Some(data),
    }
}

/// `meshd run`, the daemon that replaces api-server.js (search included), its API on a free
/// port given as the reference's `PORT`, its mesh on a free loopback port.
fn start_meshd(env: &[(&str, &str)]) -> Service {
    let node = TestNode::new("differential");
    let config = node.home().join("meshd.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    let (head, rest) = text.split_once("listen = ").unwrap();
    let rest = rest.split_once('\n').map_or("", |(_, rest)| rest);
    std::fs::write(&config, format!("{head}listen = \"127.0.0.1:0\"\n{rest}")).unwrap();
    let port = free_port();
    let child = node
        .command()
        .arg("run")
        .env("PORT", port.to_string())
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let addr = format!("127.0.0.1:{port}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while std::net::TcpStream::connect(&addr).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "meshd run never listened on {addr}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    Service {
        child,
        addr,
        node_id: node.node_id(),
        _node: Some(node),
        _dir: None,
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into()
}

/// The status and the body as JSON (a JSON string when it is not JSON).
fn send(agent: &ureq::Agent, addr: &str, step: &Step) -> (u16, Value) {
    let mut builder = ureq::http::Request::builder()
        .method(step.method)
        .uri(format!("http://{addr}{}", step.path));
    for (name, value) in &step.headers {
        builder = builder.header(*name, value);
    }
    let answer = match &step.body {
        Some(body) => agent.run(builder.body(body.clone()).unwrap()),
        None => agent.run(builder.body(()).unwrap()),
    };
    let mut answer = match answer {
        Ok(answer) => answer,
        // A server that refuses a body from its Content-Length answers and closes before the
        // body is written: read that answer as any client that reads while writing would.
        Err(_) => return send_raw(addr, step),
    };
    let status = answer.status().as_u16();
    let text = answer
        .body_mut()
        .with_config()
        .limit(64 << 20)
        .read_to_string()
        .unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// `send` over a bare socket: the body is written as far as the server takes it, then the
/// answer is read (HTTP/1.1 with `Connection: close`, so it ends with the connection).
fn send_raw(addr: &str, step: &Step) -> (u16, Value) {
    use std::io::{Read, Write};
    let mut socket = std::net::TcpStream::connect(addr).unwrap();
    let body = step.body.clone().unwrap_or_default();
    let mut head = format!(
        "{} {} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
        step.method,
        step.path,
        body.len()
    );
    for (name, value) in &step.headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    let _ = socket.write_all(head.as_bytes());
    let _ = socket.write_all(body.as_bytes());
    let mut answer = Vec::new();
    let _ = socket.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer);
    let status = answer
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no answer to {} {}", step.method, step.path));
    let text = answer.split_once("\r\n\r\n").map_or("", |(_, body)| body);
    (
        status,
        serde_json::from_str(text).unwrap_or(Value::String(text.into())),
    )
}

/// Times become `<time>` once checked to be now (the test's own span); arrays of objects are
/// sorted, since rows written in one second have no defined order in the reference.
fn normalise(value: &mut Value, span: (u64, u64)) {
    match value {
        Value::Object(map) => {
            for (key, field) in map.iter_mut() {
                if key == "updated_at" {
                    if let Some(seconds) = field.as_u64() {
                        assert!(
                            (span.0..=span.1).contains(&seconds),
                            "updated_at {seconds} is not now ({span:?})"
                        );
                        *field = json!("<time>");
                        continue;
                    }
                }
                normalise(field, span);
            }
        }
        Value::Array(items) => {
            for item in items.iter_mut() {
                normalise(item, span);
            }
            if items.iter().all(Value::is_object) {
                items.sort_by_key(|item| {
                    let field = |name: &str| item.get(name).map(Value::to_string);
                    (field("scope"), field("key"), field("name"))
                });
            }
        }
        _ => {}
    }
}

/// The differences between the reference's answer and meshd's, as (JSON path, kind); array
/// indices are written `[]`, so one difference of every row counts once.
fn differences(reference: &Value, meshd: &Value, path: &str, out: &mut BTreeSet<(String, String)>) {
    match (reference, meshd) {
        (Value::Object(r), Value::Object(m)) => {
            for (key, value) in r {
                let here = format!("{path}/{key}");
                match m.get(key) {
                    Some(other) => differences(value, other, &here, out),
                    None => {
                        out.insert((here, "only in reference".into()));
                    }
                }
            }
            for key in m.keys().filter(|key| !r.contains_key(*key)) {
                out.insert((format!("{path}/{key}"), "only in meshd".into()));
            }
        }
        (Value::Array(r), Value::Array(m)) if r.len() == m.len() => {
            for (a, b) in r.iter().zip(m) {
                differences(a, b, &format!("{path}/[]"), out);
            }
        }
        (Value::Array(r), Value::Array(m)) => {
            out.insert((
                path.to_string(),
                format!("length {} vs {}", r.len(), m.len()),
            ));
        }
        (r, m) if r != m => {
            out.insert((path.to_string(), format!("{} vs {}", shown(r), shown(m))));
        }
        _ => {}
    }
}

/// A value short enough for a report line.
fn shown(value: &Value) -> String {
    let text = value.to_string();
    match text.char_indices().nth(60) {
        Some((cut, _)) => format!("{}...", &text[..cut]),
        None => text,
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Every (step, path, kind) where the two servers differ.
fn observe(dir: &Path, modules: &Path) -> BTreeSet<(String, String, String)> {
    let agent = agent();
    let mut observed = BTreeSet::new();
    for scenario in scenarios() {
        let reference = start_reference(dir, modules, &scenario.env);
        let meshd = start_meshd(&scenario.env);
        let start = unix_now();
        for step in &scenario.steps {
            let (ref_status, mut ref_body) = send(&agent, &reference.addr, step);
            let (meshd_status, mut meshd_body) = send(&agent, &meshd.addr, step);
            let span = (start, unix_now() + 1);
            normalise(&mut ref_body, span);
            normalise(&mut meshd_body, span);
            let mut found = BTreeSet::new();
            if ref_status != meshd_status {
                found.insert(("status".into(), format!("{ref_status} vs {meshd_status}")));
            }
            differences(&ref_body, &meshd_body, "", &mut found);
            for (path, kind) in found {
                // This node's id differs on every run.
                let kind = kind.replace(&meshd.node_id, "<own id>");
                observed.insert((step.name.to_string(), path, kind));
            }
        }
    }
    observed
}

fn covered(known: &Known, (step, path, kind): &(String, String, String)) -> bool {
    (known.0 == "*" || known.0 == step) && known.1 == path && known.2 == kind
}

#[test]
fn meshd_answers_as_api_server_js_does_but_for_the_listed_differences() {
    let name = "differential";
    let dir = match reference::locate() {
        Ok(dir) => dir,
        Err(skip) => return skip.report(name),
    };
    let probe = "new (require('better-sqlite3'))(':memory:').prepare('select 1').get()";
    let modules = match reference::node_modules(&["better-sqlite3@12"], probe) {
        Ok(modules) => modules,
        Err(skip) => return skip.report(name),
    };
    let observed = observe(&dir, &modules);
    let table = |rows: Vec<String>| rows.join("\n");
    let new: Vec<String> = observed
        .iter()
        .filter(|seen| !KNOWN.iter().any(|known| covered(known, seen)))
        .map(|(step, path, kind)| format!("(\"{step}\", \"{path}\", \"{kind}\", \"?\"),"))
        .collect();
    let stale: Vec<String> = KNOWN
        .iter()
        .filter(|known| !observed.iter().any(|seen| covered(known, seen)))
        .map(|known| format!("{known:?}"))
        .collect();
    assert!(
        new.is_empty() && stale.is_empty(),
        "differences not in KNOWN:\n{}\nKNOWN entries not seen any more:\n{}",
        table(new),
        table(stale)
    );
    let doc = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/docs/compatibility.md"
    ))
    .unwrap();
    for (_, _, _, id) in KNOWN {
        assert!(
            doc.contains(&format!("| {id} |")),
            "docs/compatibility.md does not justify difference {id}"
        );
    }
    eprintln!(
        "{name}: {} requests compared, {} differences seen, every one listed in KNOWN",
        scenarios().iter().map(|s| s.steps.len()).sum::<usize>(),
        observed.len()
    );
}
