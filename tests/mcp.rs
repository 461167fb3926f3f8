//! `meshd mcp` driven over stdio by a real MCP client, the official Python SDK
//! (`python3 -m pip install 'mcp>=1.2,<3'`), through `tests/mcp/client.py`: once on a node whose
//! daemon is not running (each call opens the store and closes it again), once through a
//! running daemon. Skipped, with a message, when the SDK is missing, unless `CI` is set: CI
//! installs it (`.ci/run`).

mod support;

use std::io::Write;
use std::process::{Command, Stdio};

use serde_json::{json, Value};
use support::TestNode;

const TOOLS: [&str; 10] = [
    "memory_get",
    "memory_put",
    "memory_delete",
    "memory_list",
    "memory_history",
    "skill_get",
    "skill_put",
    "skill_list",
    "memory_search",
    "skill_search",
];

const AWS_KEY: &str = "AKIAIOSFODNN7EXAMPLE";

/// Whether the Python MCP SDK imports. Under CI (`.ci/run` installs it) its absence fails.
fn python_client_ready() -> bool {
    let ready = Command::new("python3")
        .args(["-c", "import mcp"])
        .output()
        .is_ok_and(|output| output.status.success());
    if !ready {
        assert!(
            std::env::var_os("CI").is_none(),
            "the Python MCP SDK is missing: python3 -m pip install 'mcp>=1.2,<3'"
        );
        eprintln!(
            "skipped: the Python MCP SDK is missing; python3 -m pip install 'mcp>=1.2,<3' to run this test"
        );
    }
    ready
}

/// Runs `steps` in one MCP session with `meshd mcp` on `node`; the client's transcript.
fn session(node: &TestNode, steps: &[Value]) -> Value {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/mcp/client.py");
    let mut client = Command::new("python3")
        .arg(script)
        .arg(env!("CARGO_BIN_EXE_meshd"))
        .arg(node.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let input = serde_json::to_vec(steps).unwrap();
    client.stdin.take().unwrap().write_all(&input).unwrap();
    let output = client.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "the MCP client failed: {stderr}");
    serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("the client's transcript is not JSON ({e}): {stderr}"))
}

fn call(tool: &str, arguments: Value) -> Value {
    json!({ "call": tool, "arguments": arguments })
}

fn cli(args: &[&str]) -> Value {
    json!({ "cli": args })
}

/// A successful tool result's structured content.
fn success(outcome: &Value) -> &Value {
    let result = &outcome["result"];
    assert_eq!(result["isError"], json!(false), "{outcome}");
    let text: Value = serde_json::from_str(result["content"][0]["text"].as_str().unwrap())
        .unwrap_or_else(|e| panic!("the text content is not JSON ({e}): {outcome}"));
    assert_eq!(
        text, result["structuredContent"],
        "text and structure differ"
    );
    &result["structuredContent"]
}

/// A tool error's text.
fn refusal(outcome: &Value) -> &str {
    let result = &outcome["result"];
    assert_eq!(result["isError"], json!(true), "{outcome}");
    result["content"][0]["text"].as_str().unwrap()
}

/// Every tool once, the refusals among them, and calls after each refusal.
fn exercise(node: &TestNode) {
    let pem = "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA\n-----END RSA PRIVATE KEY-----\n";
    let skill = "# Deploy\n\n1. Run the tests.\n2. Tag the release.\n";
    let steps = [
        call(
            "memory_put",
            json!({"scope": "mesh", "key": "team.lang", "value": {"lang": "rust"}}),
        ),
        cli(&["mem", "get", "mesh", "team.lang"]),
        call("memory_get", json!({"scope": "mesh", "key": "team.lang"})),
        call("memory_list", json!({"scope": "mesh"})),
        call(
            "memory_history",
            json!({"scope": "mesh", "key": "team.lang"}),
        ),
        call(
            "skill_put",
            json!({"name": "deploy", "content": skill, "description": "How we ship"}),
        ),
        call("skill_get", json!({"name": "deploy"})),
        call("skill_list", json!({})),
        call(
            "memory_search",
            json!({"query": "which lang, rust?", "scope": "mesh"}),
        ),
        call("skill_search", json!({"query": "tag release", "limit": 3})),
        call(
            "memory_search",
            json!({"query": "rust", "mode": "semantic"}),
        ),
        call(
            "memory_put",
            json!({"scope": "mesh", "key": "aws", "value": format!("key {AWS_KEY}")}),
        ),
        call("skill_put", json!({"name": "keys", "content": pem})),
        call("memory_get", json!({"scope": "mesh", "key": "aws"})),
        call(
            "memory_put",
            json!({"scope": "team", "key": "k", "value": 1}),
        ),
        call("memory_put", json!({"scope": "mesh", "key": "no value"})),
        call(
            "memory_delete",
            json!({"scope": "mesh", "key": "team.lang"}),
        ),
        call("memory_get", json!({"scope": "mesh", "key": "team.lang"})),
        call(
            "memory_delete",
            json!({"scope": "mesh", "key": "team.lang"}),
        ),
        call("no_such_tool", json!({})),
        call(
            "memory_put",
            json!({"scope": "user:alice", "key": "after", "value": "still serving"}),
        ),
    ];
    let transcript = session(node, &steps);

    let tools = transcript["tools"].as_array().unwrap();
    let names: Vec<&str> = tools.iter().map(|t| t["name"].as_str().unwrap()).collect();
    assert_eq!(names, TOOLS);
    for tool in tools {
        assert_eq!(tool["inputSchema"]["type"], json!("object"), "{tool}");
        assert!(!tool["description"].as_str().unwrap().is_empty(), "{tool}");
    }
    let put = &tools[1]["inputSchema"];
    assert_eq!(put["required"], json!(["scope", "key", "value"]), "{put}");
    assert!(put["properties"]["scope"]["description"]
        .as_str()
        .unwrap()
        .contains("user:<id>"));

    let [put, cli_get, get, list, history, skill_put, skill_get, skill_list, memory_search, skill_search, semantic, aws, pem_put, aws_get, bad_scope, no_value, delete, deleted_get, delete_again, unknown, after] =
        transcript["steps"].as_array().unwrap().as_slice()
    else {
        panic!("one outcome per step: {transcript}");
    };
    assert_eq!(success(put)["value"], json!({"lang": "rust"}));
    assert_eq!(success(put)["scope"], json!("mesh"));
    // The command line reads the store while the session is open: the server does not hold it.
    assert_eq!(cli_get["code"], json!(0), "{cli_get}");
    assert_eq!(cli_get["stdout"], json!("{\"lang\":\"rust\"}\n"));
    assert_eq!(success(get)["value"], json!({"lang": "rust"}));
    assert_eq!(success(get)["conflicts"], json!(0));
    let keys: Vec<&Value> = success(list)["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| &e["key"])
        .collect();
    assert_eq!(keys, [&json!("team.lang")]);
    assert_eq!(
        success(history)["current"]["value"],
        json!({"lang": "rust"})
    );
    assert_eq!(success(history)["conflicts"], json!([]));
    assert!(success(skill_put)["result"]
        .as_str()
        .unwrap()
        .contains("deploy"));
    assert_eq!(success(skill_get)["content"], json!(skill));
    assert_eq!(success(skill_get)["description"], json!("How we ship"));
    let skills = success(skill_list)["skills"].as_array().unwrap();
    assert_eq!(skills.len(), 1);
    assert_eq!(skills[0]["name"], json!("deploy"));
    assert!(
        skills[0].get("content").is_none(),
        "the list leaves the text out"
    );

    let hits = success(memory_search)["hits"].as_array().unwrap();
    assert_eq!(hits[0]["key"], json!("team.lang"), "{memory_search}");
    assert!(hits[0]["snippet"].as_str().unwrap().contains("rust"));
    assert_eq!(success(skill_search)["hits"][0]["name"], json!("deploy"));
    assert!(refusal(semantic).contains("MESH_EMBEDDING_URL"));

    let reason = refusal(aws);
    assert!(reason.contains("AWS access key"), "{reason}");
    assert!(
        !reason.contains(AWS_KEY),
        "the refusal echoes the secret: {reason}"
    );
    assert!(refusal(pem_put).contains("private key"));
    assert!(
        refusal(aws_get).contains("no entry aws"),
        "the refused value was stored"
    );
    assert!(refusal(bad_scope).contains("unknown scope 'team'"));
    assert!(refusal(no_value).contains("invalid arguments for memory_put"));
    assert_eq!(success(delete)["result"], json!("deleted mesh:team.lang"));
    assert!(refusal(deleted_get).contains("no entry team.lang"));
    assert!(refusal(delete_again).contains("no entry team.lang"));
    // Only a tool that does not exist is a protocol error.
    assert!(
        unknown["protocol_error"]
            .as_str()
            .unwrap()
            .contains("no_such_tool"),
        "{unknown}"
    );
    assert_eq!(success(after)["value"], json!("still serving"));

    let memory: Value = serde_json::from_str(&node.run(&["mem", "ls", "--json"]).ok()).unwrap();
    let keys: Vec<&Value> = memory
        .as_array()
        .unwrap()
        .iter()
        .map(|e| &e["key"])
        .collect();
    assert_eq!(keys, [&json!("after")], "{memory}");
    let skills: Value = serde_json::from_str(&node.run(&["skill", "ls", "--json"]).ok()).unwrap();
    let names: Vec<&Value> = skills
        .as_array()
        .unwrap()
        .iter()
        .map(|s| &s["name"])
        .collect();
    assert_eq!(names, [&json!("deploy")], "{skills}");
}

#[test]
fn tools_work_on_a_node_without_a_running_daemon() {
    if !python_client_ready() {
        return;
    }
    let node = TestNode::init("agent");
    exercise(&node);
}

#[test]
fn tools_go_through_a_running_daemon() {
    if !python_client_ready() {
        return;
    }
    let (node, _) = TestNode::init_listening("agent");
    let daemon = node.start();
    exercise(&node);
    assert_eq!(daemon.stop(), 0);
}
