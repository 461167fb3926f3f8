//! Convergence with a real reference JavaScript node: its own `mesh/cache.js` and
//! `mesh/sync/sync.js`, run by `node` through `tests/js_node/driver.js`, and a meshd node
//! sync over the bridge (`meshd bridge sync`, and the JS node posting to meshd's webhook)
//! until both hold the same memory in every scope and the same skills.
//!
//! The reference code is not on npm and CI has no GitHub access: set `MESHD_REFERENCE_DIR`
//! to a directory holding the reference's `mesh/`, or `MESHD_REFERENCE_GIT` to a (bare) git
//! repository of it. Without either, or without `node`, the test is skipped and says so.

#[path = "support/reference.rs"]
mod reference;
mod support;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};
use support::compat::TestNode;

const DRIVER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/js_node/driver.js");

fn node_available() -> bool {
    Command::new("node")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// A reference node: its cache directory, its id, and the reference code it runs.
struct JsNode {
    reference: PathBuf,
    home: PathBuf,
    id: &'static str,
}

impl JsNode {
    fn driver(&self, mode: &str, extra: &[&str]) -> Command {
        let mut command = Command::new("node");
        command
            .arg(DRIVER)
            .arg(mode)
            .arg(&self.reference)
            .arg(&self.home)
            .arg(self.id)
            .args(extra);
        command
    }

    fn run(&self, mode: &str, extra: &[&str]) -> String {
        let output = self.driver(mode, extra).output().unwrap();
        assert!(
            output.status.success(),
            "driver {mode} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap()
    }

    fn write(&self, spec: Value) {
        self.run("write", &[&spec.to_string()]);
    }

    fn state(&self) -> Value {
        serde_json::from_str(&self.run("state", &[])).unwrap()
    }

    /// Its webhook, answering sync messages; the URL and the process (killed on drop).
    fn serve(&self) -> (String, Served) {
        let mut child = self
            .driver("serve", &[])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line
            .trim()
            .strip_prefix("listening ")
            .expect("the driver's port");
        (format!("http://127.0.0.1:{port}/bridge"), Served(child))
    }
}

struct Served(Child);

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn meshd_value(node: &TestNode, scope: &str, key: &str) -> Value {
    let run = node.ok(&["mem", "get", scope, key, "--json"], "");
    serde_json::from_str::<Value>(&run.stdout).unwrap()["value"].clone()
}

fn meshd_skill(node: &TestNode, name: &str) -> String {
    node.ok(&["skill", "get", name], "").stdout
}

fn sync(node: &TestNode, url: &str) -> Value {
    let run = node.ok(&["bridge", "sync", url, "--rounds", "6"], "");
    eprintln!("{}", run.stderr);
    serde_json::from_str(&run.stdout).unwrap()
}

#[test]
fn a_reference_node_and_meshd_converge_both_ways() {
    let scratch = tempfile::tempdir().unwrap();
    let reference = match reference::locate() {
        Ok(dir) => dir,
        Err(skip) => {
            skip.report("a_reference_node_and_meshd_converge_both_ways");
            return;
        }
    };
    if !node_available() {
        eprintln!("SKIPPED: `node` is not installed; the convergence test did not run");
        return;
    }
    let js = JsNode {
        reference,
        home: scratch.path().join("js-openclaw"),
        id: "js",
    };
    let meshd = TestNode::new("m");
    let own = meshd.node_id();
    let t = now();

    // Each writes in every scope; an object with its keys out of order on the JS side.
    js.write(json!({
        "memory": [
            {"scope":"mesh","key":"from-js","value":{"z":1,"a":{"y":2,"b":3}},"ts":t - 100},
            {"scope":"user:alice","key":"pref","value":"short","ts":t - 90},
            {"scope":"node","key":"own-js","value":[1,2],"ts":t - 80},
            {"scope":"mesh","key":"meshd-wins","value":"old js","ts":t - 1000},
        ],
        "skills": [{"name":"js-skill","content":"# JS skill\n","ts":t - 50}],
    }));
    meshd.ok(
        &["mem", "put", "mesh", "from-meshd", r#"{"b":1,"a":2}"#],
        "",
    );
    meshd.ok(&["mem", "put", "user:alice", "m-pref", r#""long""#], "");
    meshd.ok(&["mem", "put", "node", "m-own", r#""mine""#], "");
    meshd.ok(&["mem", "put", "mesh", "meshd-wins", r#""new meshd""#], "");
    meshd.ok(&["mem", "put", "mesh", "js-wins", r#""old meshd""#], "");
    meshd.ok(&["skill", "put", "meshd-skill"], "# meshd skill\n");
    meshd.ok(&["skill", "put", "race"], "# meshd's race\n");
    // Concurrent edits the JS node makes later than meshd's.
    js.write(json!({
        "memory": [{"scope":"mesh","key":"js-wins","value":"new js","ts":t + 5}],
        "skills": [{"name":"race","content":"# js's race\n","ts":t + 5}],
    }));

    let (url, _served) = js.serve();
    let done = sync(&meshd, &url);
    assert_eq!(done["in_step"], true);
    assert_eq!(done["peer"], "js");

    let state = js.state();
    let memory = &state["memory"];
    // meshd's writes reached the JS node, its own node scope named in full there.
    assert_eq!(memory["mesh:from-meshd"]["value"], json!({"a":2,"b":1}));
    assert_eq!(memory["user:alice:m-pref"]["value"], "long");
    assert_eq!(memory[format!("node:{own}:m-own")]["value"], "mine");
    assert_eq!(state["skills"]["meshd-skill"], "# meshd skill\n");
    // The JS node's writes reached meshd, its `node` scope as node:js.
    assert_eq!(
        meshd_value(&meshd, "mesh", "from-js"),
        json!({"z":1,"a":{"y":2,"b":3}})
    );
    assert_eq!(meshd_value(&meshd, "user:alice", "pref"), "short");
    assert_eq!(meshd_value(&meshd, "node:js", "own-js"), json!([1, 2]));
    assert_eq!(meshd_skill(&meshd, "js-skill"), "# JS skill\n");
    // Concurrent edits settled the same on both: the later one.
    assert_eq!(memory["mesh:meshd-wins"]["value"], "new meshd");
    assert_eq!(meshd_value(&meshd, "mesh", "meshd-wins"), "new meshd");
    assert_eq!(memory["mesh:js-wins"]["value"], "new js");
    assert_eq!(meshd_value(&meshd, "mesh", "js-wins"), "new js");
    assert_eq!(state["skills"]["race"], "# js's race\n");
    assert_eq!(meshd_skill(&meshd, "race"), "# js's race\n");
    // Nothing of the JS node's own scope came back to it a second time.
    let keys: Vec<&String> = memory.as_object().unwrap().keys().collect();
    assert!(!keys.iter().any(|k| k.starts_with("node:js:")), "{keys:?}");
    assert_eq!(keys.len(), 8, "{keys:?}");

    // In step: one round, nothing sent but the summary; the peer as meshd.toml lists it.
    meshd.configure(&format!(
        "\n[[bridge.peers]]\nurl = \"{url}\"\nnode_id = \"js\"\n"
    ));
    let run = meshd.ok(&["bridge", "sync"], "");
    let again: Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(again["rounds"], 1, "{again}");
    assert_eq!(again["changed_here"], 0);

    // The other way: the JS node writes, then drives the sync against meshd's webhook.
    js.write(json!({
        "memory": [{"scope":"mesh","key":"pushed","value":{"q":1,"p":2},"ts":now()}],
        "skills": [{"name":"pushed-skill","content":"# pushed\n"}],
    }));
    let (addr, mut api) = meshd.serve_api();
    let pushed = js.run(
        "push",
        &[&format!("http://{addr}/bridge?handleRequest=1"), "6"],
    );
    let pushed: Value = serde_json::from_str(&pushed).unwrap();
    assert_eq!(pushed["inStep"], true, "{pushed}");
    api.kill().unwrap();
    api.wait().unwrap();
    assert_eq!(meshd_value(&meshd, "mesh", "pushed"), json!({"p":2,"q":1}));
    assert_eq!(meshd_skill(&meshd, "pushed-skill"), "# pushed\n");
    assert_eq!(
        sync(&meshd, &url)["rounds"],
        1,
        "in step after the JS node's own sync"
    );
}

/// Every failure of `meshd bridge sync` says what went wrong.
#[test]
fn bridge_sync_failures_are_clear() {
    let meshd = TestNode::new("m");
    let unreachable = meshd.run(
        &[
            "bridge",
            "sync",
            "http://127.0.0.1:9/bridge",
            "--peer-id",
            "x",
        ],
        "",
    );
    assert_eq!(unreachable.code, 1);
    assert!(
        unreachable
            .stderr
            .contains("cannot reach http://127.0.0.1:9/bridge"),
        "{}",
        unreachable.stderr
    );
    let bad = meshd.run(&["bridge", "sync", "nas:4077"], "");
    assert_ne!(bad.code, 0);
    assert!(
        bad.stderr.contains("is not an http:// or https:// URL"),
        "{}",
        bad.stderr
    );
    let unnamed = meshd.run(&["bridge", "sync"], "");
    assert_ne!(unnamed.code, 0);
    assert!(
        unnamed.stderr.contains("[[bridge.peers]]"),
        "{}",
        unnamed.stderr
    );
    let header = meshd.run(
        &[
            "bridge",
            "sync",
            "http://127.0.0.1:9",
            "--auth-header",
            "nocolon",
        ],
        "",
    );
    assert!(header.stderr.contains("NAME:SECRET"), "{}", header.stderr);

    // A webhook with auth, answering without the token; and one answering HTML.
    let peer = TestNode::new("p");
    peer.configure("\n[api]\nbearer_token = \"s3cret\"\n");
    let (addr, mut api) = peer.serve_api();
    let refused = meshd.run(
        &[
            "bridge",
            "sync",
            &format!("http://{addr}"),
            "--peer-id",
            "p",
        ],
        "",
    );
    assert_eq!(refused.code, 1);
    assert!(
        refused.stderr.contains("refused the credentials (401)"),
        "{}",
        refused.stderr
    );
    let ok = meshd.run(
        &[
            "bridge",
            "sync",
            &format!("http://{addr}"),
            "--bearer",
            "s3cret",
        ],
        "",
    );
    assert_eq!(ok.code, 0, "{}", ok.stderr);
    api.kill().unwrap();
    api.wait().unwrap();

    let html = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let html_addr = html.local_addr().unwrap();
    std::thread::spawn(move || {
        use std::io::{Read, Write};
        for stream in html.incoming().take(1) {
            let mut stream = stream.unwrap();
            let mut buffer = [0u8; 4096];
            let _ = stream.read(&mut buffer);
            let body = "<html>hello</html>";
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            );
        }
    });
    let junk = meshd.run(
        &[
            "bridge",
            "sync",
            &format!("http://{html_addr}"),
            "--peer-id",
            "x",
        ],
        "",
    );
    assert_eq!(junk.code, 1);
    assert!(
        junk.stderr.contains("did not answer with JSON"),
        "{}",
        junk.stderr
    );
}
