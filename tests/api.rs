//! The HTTP API on a real loopback socket, called with a real HTTP client.

#[path = "api_server/mod.rs"]
mod api_server;

use std::io::{Read, Write};
use std::time::{SystemTime, UNIX_EPOCH};

use api_server::{Server, NODE_TOKEN};
use meshd::config::ApiConfig;
use meshd::model::Scope;
use serde_json::{json, Value};

const MEMORY: &str = r#"{"type":"memory","scope":"mesh","key":"user.preferences","value":{"shortAnswers":true},"nodeId":"ceo","ts":1739123456}"#;
const SKILL: &str =
    r##"{"type":"skill","name":"triage","sourceNode":"ceo","content":"# Triage rules\n..."}"##;
const SKILL_PUT: &str = r##"{"name":"triage","source_node":"ceo","content":"# Triage rules"}"##;

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[test]
fn health_is_open_and_says_so() {
    let server = Server::start(ApiConfig {
        bearer_token: Some("t".into()),
        ..ApiConfig::default()
    });
    for path in ["/health", "/"] {
        let (status, body) = server.get(path, &[]);
        assert_eq!(status, 200);
        assert_eq!(
            body,
            json!({"ok": true, "service": "meshd", "storeAvailable": true})
        );
    }
}

#[test]
fn memory_put_get_and_list() {
    let server = Server::start(ApiConfig::default());
    let put = json!({"scope": "mesh", "key": "user.preferences",
        "value": {"shortAnswers": true}, "node_id": "ceo"});
    let (status, row) = server.send("PUT", "/mesh/memory", &[], &put.to_string());
    assert_eq!(status, 200);
    assert_eq!(row["scope"], "mesh");
    assert_eq!(row["key"], "user.preferences");
    assert_eq!(row["value"], json!({"shortAnswers": true}));
    assert_eq!(row["node_id"], "ceo");
    let stamped = row["updated_at"].as_u64().unwrap();
    assert!(
        stamped.abs_diff(now()) <= 5,
        "updated_at is the server's time"
    );
    assert_eq!(
        server.get("/mesh/memory/mesh/user.preferences", &[]),
        (200, row.clone())
    );
    let (status, list) = server.get("/mesh/memory?scope=mesh", &[]);
    assert_eq!((status, list), (200, json!([row])));
    assert_eq!(server.changes(), 1, "one write, one change notice");
}

#[test]
fn keys_may_hold_slashes_and_scopes_are_url_encoded() {
    let server = Server::start(ApiConfig::default());
    let put = json!({"scope": "user:alice", "key": "notes/today", "value": "buy milk"});
    assert_eq!(
        server.send("PUT", "/mesh/memory", &[], &put.to_string()).0,
        200
    );
    for path in [
        "/mesh/memory/user:alice/notes/today",
        "/mesh/memory/user%3Aalice/notes%2Ftoday",
    ] {
        let (status, row) = server.get(path, &[]);
        assert_eq!(status, 200, "{path}");
        assert_eq!(row["value"], "buy milk");
        assert_eq!(
            row["node_id"],
            Server::own_id(),
            "node_id defaults to this node"
        );
    }
}

#[test]
fn the_own_node_scope_is_plain_node() {
    let server = Server::start(ApiConfig::default());
    let put = json!({"scope": "node", "key": "k", "value": 1});
    let (_, row) = server.send("PUT", "/mesh/memory", &[], &put.to_string());
    assert_eq!(row["scope"], "node");
    let stored = server.replica.with(|replica| {
        replica
            .get_memory(&Scope::Node(Server::own_id()), "k")
            .unwrap()
    });
    assert!(stored.is_some());
}

#[test]
fn lists_are_newest_first() {
    let server = Server::start(ApiConfig::default());
    server.ingest_lines(&[
        r#"{"type":"memory","scope":"mesh","key":"a","value":1,"nodeId":"x","ts":100}"#,
        r#"{"type":"memory","scope":"mesh","key":"b","value":2,"nodeId":"x","ts":300}"#,
        r#"{"type":"memory","scope":"user:bob","key":"c","value":3,"nodeId":"x","ts":200}"#,
        r#"{"type":"skill","name":"s1","sourceNode":"x","content":"1","ts":100}"#,
        r#"{"type":"skill","name":"s2","sourceNode":"x","content":"2","ts":200}"#,
    ]);
    let (_, list) = server.get("/mesh/memory", &[]);
    let keys: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["key"].as_str().unwrap())
        .collect();
    assert_eq!(keys, ["b", "c", "a"]);
    let (_, list) = server.get("/mesh/skills", &[]);
    assert_eq!(list[0]["name"], "s2");
    assert_eq!(
        list[1],
        json!({"name": "s1", "source_node": "x", "content": "1",
        "path": null, "updated_at": 100})
    );
}

#[test]
fn skills_put_with_content_or_path() {
    let server = Server::start(ApiConfig::default());
    let put = json!({"name": "triage", "source_node": "ceo", "content": "# Triage rules\n..."});
    let (status, row) = server.send("PUT", "/mesh/skills", &[], &put.to_string());
    assert_eq!(status, 200);
    assert_eq!(row["content"], "# Triage rules\n...");
    assert_eq!(row["path"], Value::Null);
    assert!(row["updated_at"].as_u64().unwrap().abs_diff(now()) <= 5);
    assert_eq!(server.get("/mesh/skills/triage", &[]), (200, row));
    let put =
        json!({"name": "style", "source_node": "sec", "path": "https://example.org/style.md"});
    let (status, row) = server.send("PUT", "/mesh/skills", &[], &put.to_string());
    assert_eq!(status, 200);
    assert_eq!(
        row["content"],
        Value::Null,
        "a path-only skill has no content"
    );
    assert_eq!(row["path"], "https://example.org/style.md");
    assert_eq!(
        server.get("/mesh/skills/style", &[]).1["source_node"],
        "sec"
    );
}

#[test]
fn absent_things_are_404() {
    let server = Server::start(ApiConfig::default());
    for path in [
        "/mesh/memory/mesh/nothing",
        "/mesh/skills/nothing",
        "/nowhere",
        "/mesh/memory/mesh/",
    ] {
        let (status, body) = server.get(path, &[]);
        assert_eq!(status, 404, "{path}");
        assert!(body["error"].is_string(), "{path}: {body}");
    }
}

#[test]
fn bad_requests_are_400_and_change_nothing() {
    let server = Server::start(ApiConfig::default());
    let cases = [
        ("PUT", "/mesh/memory", "{not json", "Invalid JSON body"),
        ("PUT", "/mesh/memory", "[1]", "must be a JSON object"),
        (
            "PUT",
            "/mesh/memory",
            r#"{"scope":"mesh","key":"k"}"#,
            "Missing scope, key, or value",
        ),
        (
            "PUT",
            "/mesh/memory",
            r#"{"scope":"","key":"k","value":1}"#,
            "Missing scope, key, or value",
        ),
        (
            "PUT",
            "/mesh/memory",
            r#"{"scope":5,"key":"k","value":1}"#,
            "scope must be a string",
        ),
        (
            "PUT",
            "/mesh/memory",
            r#"{"scope":"global","key":"k","value":1}"#,
            "unknown scope",
        ),
        (
            "PUT",
            "/mesh/memory",
            r#"{"scope":"mesh","key":"a\nb","value":1}"#,
            "control character",
        ),
        (
            "PUT",
            "/mesh/memory",
            r#"{"scope":"mesh","key":"k","value":1,"node_id":"a\u0001"}"#,
            "node_id must be",
        ),
        (
            "PUT",
            "/mesh/skills",
            r#"{"name":"n","content":"c"}"#,
            "Missing name or source_node",
        ),
        (
            "PUT",
            "/mesh/skills",
            r#"{"name":"n","source_node":"a"}"#,
            "Missing content or path",
        ),
        (
            "PUT",
            "/mesh/skills",
            r#"{"name":"n","source_node":"a","content":null,"path":null}"#,
            "cannot both be null",
        ),
        (
            "PUT",
            "/mesh/skills",
            r#"{"name":"n","source_node":"a","content":7}"#,
            "string or null",
        ),
        ("POST", "/bridge?unwrap=slack", MEMORY, "unknown envelope"),
    ];
    for (method, path, body, error) in cases {
        let (status, answer) = server.send(method, path, &[], body);
        assert_eq!(status, 400, "{path} {body}: {answer}");
        let message = answer["error"].as_str().unwrap();
        assert!(message.contains(error), "{body}: {message}");
    }
    assert_eq!(server.get("/mesh/memory/mesh/user.preferences", &[]).0, 404);
    assert_eq!(server.get("/mesh/memory", &[]).1, json!([]));
    assert_eq!(server.get("/mesh/skills", &[]).1, json!([]));
    assert_eq!(server.changes(), 0);
    let (status, found) = server.get("/mesh/memory?q=prefs", &[]);
    assert_eq!(
        (status, found),
        (200, json!([])),
        "a search finds nothing in an empty store, not everything"
    );
    let (status, _) = server.get("/mesh/memory?scope=bogus", &[]);
    assert_eq!(status, 400);
}

#[test]
fn ingest_answers_the_reference_counts() {
    let server = Server::start(ApiConfig::default());
    let (status, body) = server.send("POST", "/ingest", &[], MEMORY);
    assert_eq!(
        (status, body),
        (200, json!({"ingested": 1, "memory": 1, "skill": 0}))
    );
    let skill =
        r##"{"type":"skill","name":"triage","sourceNode":"ceo","content":"# Triage rules\n..."}"##;
    let lines = format!("{MEMORY}\nnot json\n{skill}\n[1,2]");
    let (status, body) = server.send("POST", "/ingest", &[], &lines);
    assert_eq!(
        (status, body),
        (200, json!({"ingested": 2, "memory": 1, "skill": 1}))
    );
    let (status, body) = server.send("POST", "/ingest", &[], "complete junk");
    assert_eq!(
        (status, body),
        (200, json!({"ingested": 0, "memory": 0, "skill": 0}))
    );
    assert_eq!(
        server.changes(),
        2,
        "the second post changed the skill only; junk nothing"
    );
    let (_, row) = server.get("/mesh/memory/mesh/user.preferences", &[]);
    assert_eq!(row["updated_at"], 1739123456);
}

#[test]
fn ingest_applies_same_second_updates_and_lists_what_it_did_not_apply() {
    let server = Server::start(ApiConfig::default());
    let message = |node: &str, value: &str, ts: u64| {
        json!({"type":"memory","scope":"mesh","key":"k","value":value,"nodeId":node,"ts":ts})
            .to_string()
    };
    let both = format!(
        "{}\n{}",
        message("ceo", "v1", 100),
        message("ceo", "v2", 100)
    );
    let (status, body) = server.send("POST", "/ingest", &[], &both);
    assert_eq!(
        (status, body),
        (200, json!({"ingested": 2, "memory": 2, "skill": 0}))
    );
    assert_eq!(server.get("/mesh/memory/mesh/k", &[]).1["value"], "v2");
    let late = format!(
        "{}\n{}",
        message("ceo", "old", 99),
        message("abc", "tied", 100)
    );
    let (status, body) = server.send("POST", "/bridge", &[], &late);
    assert_eq!(
        (status, body),
        (
            200,
            json!({"ingested": 2, "memory": 2, "skill": 0, "notApplied": [
                {"item": 1, "reason": "not applied: the replica holds a newer version (ts 100 from ceo)"},
                {"item": 2, "reason": "not applied: the replica holds a version with the same ts (100) from ceo, and at an equal ts the greater node id wins"}
            ]})
        )
    );
    assert_eq!(server.get("/mesh/memory/mesh/k", &[]).1["value"], "v2");
}

#[test]
fn bridge_unwraps_and_answers_requests() {
    let server = Server::start(ApiConfig::default());
    let update = json!({"update_id": 9, "message": {"chat": {"id": 1}, "text": MEMORY}});
    let (status, body) = server.send("POST", "/bridge?unwrap=telegram", &[], &update.to_string());
    assert_eq!(
        (status, body),
        (200, json!({"ingested": 1, "memory": 1, "skill": 0}))
    );
    let request = json!({"type":"mesh_request","requestId":"req-abc-1","kind":"memory",
        "nodeId":"ceo","scope":"mesh","key":"user.preferences","ts":1739123456});
    let discord = json!({"content": request.to_string()});
    let path = "/bridge?unwrap=discord&handleRequest=1";
    let (status, body) = server.send("POST", path, &[], &discord.to_string());
    assert_eq!(status, 200);
    assert_eq!(body["ingested"], 0);
    let response = &body["response"];
    assert_eq!(response["type"], "mesh_response");
    assert_eq!(response["requestId"], "req-abc-1");
    assert_eq!(response["nodeId"], Server::own_id());
    assert_eq!(response["found"], true);
    assert_eq!(response["value"], json!({"shortAnswers": true}));
    let (_, body) = server.send("POST", "/bridge?unwrap=discord", &[], &discord.to_string());
    assert!(
        body.get("response").is_none(),
        "without handleRequest nothing is answered"
    );
    let generic = json!({"body": {"type":"mesh_request","requestId":"r2","kind":"skill",
        "name":"absent","nodeId":"ceo"}});
    let (_, body) = server.send(
        "POST",
        "/bridge?handleRequest=true",
        &[],
        &generic.to_string(),
    );
    assert_eq!(body["response"]["found"], false);
    assert_eq!(body["response"]["kind"], "skill");
}

/// The webhook's `MESH_NODE_ID` names the responder; `BRIDGE_METRICS=0` turns metrics off.
#[test]
fn the_webhooks_variables_name_the_responder_and_switch_metrics_off() {
    let env = [("MESH_NODE_ID", "sec"), ("BRIDGE_METRICS", "0")];
    let server = Server::start_with_env(ApiConfig::default(), &env);
    let request = json!({"type":"mesh_request","requestId":"r1","kind":"skill",
        "name":"absent","nodeId":"ceo"});
    let (_, body) = server.send("POST", "/bridge?handleRequest=1", &[], &request.to_string());
    assert_eq!(body["response"]["nodeId"], "sec");
    assert_eq!(server.get("/metrics", &[]).0, 404);
}

/// Each reference server's credentials open its own routes; meshd's own routes take either.
#[test]
fn store_and_bridge_credentials_open_their_own_routes() {
    let env = [
        ("MESH_STORE_AUTH_BEARER", "store-t0ken"),
        ("BRIDGE_AUTH_HEADER", "X-Bridge-Key"),
        ("BRIDGE_AUTH_SECRET", "bridge-s3cret"),
    ];
    let server = Server::start_with_env(ApiConfig::default(), &env);
    let store = [("Authorization", "Bearer store-t0ken")];
    let bridge = [("X-Bridge-Key", "bridge-s3cret")];
    assert_eq!(server.get("/mesh/memory", &store).0, 200);
    assert_eq!(server.get("/mesh/memory", &bridge).0, 401);
    assert_eq!(server.send("POST", "/ingest", &bridge, MEMORY).0, 200);
    assert_eq!(server.send("POST", "/ingest", &store, MEMORY).0, 401);
    assert_eq!(server.get("/metrics", &store).0, 200);
    assert_eq!(server.get("/metrics", &bridge).0, 200);
    assert_eq!(server.get("/metrics", &[]).0, 401);
}

#[test]
fn unauthorised_requests_are_401_with_a_bearer_token() {
    let server = Server::start(ApiConfig {
        bearer_token: Some("s3cret-token".into()),
        ..ApiConfig::default()
    });
    for headers in [
        vec![],
        vec![("Authorization", "Bearer wrong")],
        vec![("Authorization", "s3cret-token")],
    ] {
        for (method, path) in [
            ("GET", "/mesh/memory"),
            ("POST", "/ingest"),
            ("PUT", "/mesh/skills"),
            ("GET", "/nowhere"),
        ] {
            let (status, body) = server.send(method, path, &headers, MEMORY);
            assert_eq!(status, 401, "{method} {path} {headers:?}");
            assert_eq!(body, json!({"error": "Unauthorized"}));
        }
    }
    let good = [("Authorization", "Bearer s3cret-token")];
    assert_eq!(server.send("POST", "/ingest", &good, MEMORY).0, 200);
    assert_eq!(
        server
            .get("/mesh/memory", &good)
            .1
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

#[test]
fn unauthorised_requests_are_401_with_a_header_secret() {
    let server = Server::start(ApiConfig {
        auth_header: Some("X-API-Key".into()),
        auth_secret: Some("k3y".into()),
        ..ApiConfig::default()
    });
    assert_eq!(server.get("/mesh/skills", &[]).0, 401);
    assert_eq!(server.get("/mesh/skills", &[("X-API-Key", "nope")]).0, 401);
    assert_eq!(server.get("/mesh/skills", &[("x-api-key", "k3y")]).0, 200);
}

#[test]
fn oversized_bodies_are_413_and_change_nothing() {
    let server = Server::start(ApiConfig {
        max_body_bytes: 200,
        ..ApiConfig::default()
    });
    let big = json!({"type":"memory","scope":"mesh","key":"k","value":"x".repeat(300),
        "nodeId":"ceo","ts":1})
    .to_string();
    for path in ["/ingest", "/bridge"] {
        let (status, body) = server.send("POST", path, &[], &big);
        assert_eq!(status, 413, "{path}");
        assert!(body["error"]
            .as_str()
            .unwrap()
            .contains("Payload too large"));
    }
    let put = json!({"scope":"mesh","key":"k","value":"x".repeat(300)}).to_string();
    assert_eq!(server.send("PUT", "/mesh/memory", &[], &put).0, 413);
    // Without a Content-Length the limit still holds while the body streams in.
    let mut stream = std::net::TcpStream::connect(server.addr).unwrap();
    let chunk = "x".repeat(300);
    write!(
        stream,
        "POST /ingest HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\
         Connection: close\r\n\r\n{:x}\r\n{chunk}\r\n0\r\n\r\n",
        chunk.len()
    )
    .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert_eq!(server.get("/mesh/memory", &[]).1, json!([]));
    assert_eq!(
        server.send("POST", "/ingest", &[], MEMORY).0,
        200,
        "small bodies pass"
    );
}

#[test]
fn past_the_rate_limit_requests_are_429() {
    let server = Server::start(ApiConfig {
        rate_limit_per_min: 3,
        ..ApiConfig::default()
    });
    for _ in 0..3 {
        assert_eq!(server.get("/mesh/skills", &[]).0, 200);
    }
    let (status, body) = server.get("/mesh/skills", &[]);
    assert_eq!((status, body), (429, json!({"error": "Too many requests"})));
    assert_eq!(server.get("/health", &[]).0, 200, "health is never limited");
    assert_eq!(server.get("/mesh/memory", &[]).0, 429);
    assert!(server
        .replica
        .with(|replica| replica.list_memory(None).unwrap().is_empty()));
}

/// As with the reference's two servers, the store routes and the webhook routes count
/// apart, and meshd's own routes are not counted: a busy bridge does not lock a dashboard out.
#[test]
fn each_route_group_has_its_own_rate_limit() {
    let env = [
        ("MESH_STORE_RATE_LIMIT_PER_MIN", "2"),
        ("BRIDGE_RATE_LIMIT_PER_MIN", "3"),
    ];
    let server = Server::start_with_env(ApiConfig::default(), &env);
    for _ in 0..2 {
        assert_eq!(server.get("/mesh/skills", &[]).0, 200);
    }
    assert_eq!(server.get("/mesh/memory", &[]).0, 429);
    for _ in 0..3 {
        assert_eq!(server.send("POST", "/ingest", &[], MEMORY).0, 200);
    }
    assert_eq!(server.send("POST", "/bridge", &[], MEMORY).0, 429);
    for _ in 0..5 {
        assert_eq!(server.get("/metrics", &[]).0, 200, "meshd's own route");
        assert_eq!(
            server.get("/nowhere", &[]).0,
            404,
            "not a route of either group"
        );
    }
}

#[test]
fn wrong_methods_get_json_errors() {
    let server = Server::start(ApiConfig::default());
    let (status, body) = server.send("DELETE", "/mesh/memory", &[], "");
    assert_eq!(status, 405);
    assert!(body["error"].is_string(), "{body}");
    assert_eq!(server.get("/ingest", &[]).0, 405);
}

#[test]
fn secrets_are_400_and_never_echoed() {
    let server = Server::start(ApiConfig::default());
    let token = "ghp_0123456789abcdefghijklmnopqrstuvwxyzAB";
    let puts = [
        (
            "/mesh/memory",
            json!({"scope": "mesh", "key": "github", "value": token}),
        ),
        (
            "/mesh/skills",
            json!({"name": "gh", "source_node": "ceo", "content": token}),
        ),
        (
            "/mesh/skills",
            json!({"name": "gh", "source_node": "ceo",
            "path": format!("https://example.org/skill.md?token={token}")}),
        ),
    ];
    for (path, body) in puts {
        let (status, answer) = server.send("PUT", path, &[], &body.to_string());
        assert_eq!(status, 400, "{body}");
        let error = answer["error"].as_str().unwrap();
        assert!(error.contains("secret"), "{error}");
        assert!(!error.contains(token));
    }
    assert_eq!(server.get("/mesh/memory", &[]).1, json!([]));
    assert_eq!(server.get("/mesh/skills", &[]).1, json!([]));
    assert_eq!(server.changes(), 0);
}

/// The requests a page would make: a read, both writes, and the health check.
const EVERY_KIND: [(&str, &str, &str); 5] = [
    ("GET", "/mesh/memory", ""),
    ("GET", "/health", ""),
    ("PUT", "/mesh/skills", SKILL_PUT),
    ("POST", "/ingest", SKILL),
    ("POST", "/bridge", SKILL),
];

fn stored_nothing(server: &Server) {
    assert_eq!(server.get("/mesh/memory", &[]).1, json!([]));
    assert_eq!(server.get("/mesh/skills", &[]).1, json!([]));
    assert_eq!(server.changes(), 0);
}

#[test]
fn a_forged_host_is_421_for_reads_and_writes() {
    let server = Server::start(ApiConfig::default());
    // What a page on a rebound name sends: its own name, no Origin on a read.
    for host in [
        "evil.example:4078",
        "evil.example",
        "sub.localhost:4078",
        "10.0.0.1",
    ] {
        for (method, path, body) in EVERY_KIND {
            let (status, answer) = server.send(method, path, &[("Host", host)], body);
            assert_eq!(status, 421, "{method} {path} Host: {host}");
            let error = answer["error"].as_str().unwrap();
            assert!(error.contains("allowed_hosts"), "{error}");
        }
    }
    stored_nothing(&server);
    // Even with the node's token: the token proves the caller, not the name it used.
    let token = format!("Bearer {NODE_TOKEN}");
    let forged = [("Host", "evil.example"), ("Authorization", token.as_str())];
    assert_eq!(server.get("/mesh/memory", &forged).0, 421);
}

#[test]
fn loopback_names_and_configured_hosts_are_served_with_any_port() {
    let server = Server::start(ApiConfig {
        allowed_hosts: vec!["nas.local".into()],
        ..ApiConfig::default()
    });
    for host in [
        "localhost",
        "localhost:4078",
        "127.0.0.1:1",
        "127.0.0.2",
        "[::1]:4078",
        "NAS.local:8080",
    ] {
        assert_eq!(
            server.get("/mesh/memory", &[("Host", host)]).0,
            200,
            "{host}"
        );
    }
    assert_eq!(
        server.get("/mesh/memory", &[("Host", "other.local")]).0,
        421
    );
}

#[test]
fn a_foreign_origin_is_403_for_reads_writes_and_preflights() {
    let server = Server::start(ApiConfig {
        allowed_origins: vec!["http://dash.localhost:3000".into()],
        ..ApiConfig::default()
    });
    let token = format!("Bearer {NODE_TOKEN}");
    for origin in [
        "http://evil.example",
        "null",
        "http://127.0.0.1:9999",
        "http://dash.localhost:3001",
    ] {
        for (method, path, body) in EVERY_KIND {
            // A page cannot send the token cross-origin without a preflight; even if it had it,
            // the origin decides.
            for headers in [
                vec![("Origin", origin)],
                vec![("Origin", origin), ("Authorization", &token)],
            ] {
                let answer = server.exchange(method, path, &headers, Some(body));
                assert_eq!(answer.status, 403, "{method} {path} Origin: {origin}");
                assert!(answer.body["error"]
                    .as_str()
                    .unwrap()
                    .contains("allowed_origins"));
                assert!(answer.headers.get("access-control-allow-origin").is_none());
                // Refused before its body was read: the connection is not reused (a client
                // that did would lose its next request on it).
                assert_eq!(answer.headers["connection"], "close");
            }
        }
        let preflight = [
            ("Origin", origin),
            ("Access-Control-Request-Method", "PUT"),
            ("Access-Control-Request-Headers", "content-type"),
        ];
        let answer = server.exchange("OPTIONS", "/mesh/skills", &preflight, None);
        assert_eq!(answer.status, 403, "preflight from {origin}");
        assert!(answer.headers.get("access-control-allow-origin").is_none());
    }
    stored_nothing(&server);
}

#[test]
fn an_allowed_origin_still_needs_the_node_token_and_gets_exact_cors() {
    let origin = "http://dash.localhost:3000";
    let server = Server::start(ApiConfig {
        allowed_origins: vec![origin.into()],
        ..ApiConfig::default()
    });
    for (method, path, body) in EVERY_KIND
        .into_iter()
        .filter(|(_, path, _)| *path != "/health")
    {
        let (status, answer) = server.send(method, path, &[("Origin", origin)], body);
        assert_eq!(status, 401, "{method} {path}");
        assert!(
            answer["error"].as_str().unwrap().contains("api.token"),
            "{answer}"
        );
        let wrong = [("Origin", origin), ("Authorization", "Bearer guessed")];
        assert_eq!(server.send(method, path, &wrong, body).0, 401);
    }
    stored_nothing(&server);
    let preflight = [("Origin", origin), ("Access-Control-Request-Method", "PUT")];
    let answer = server.exchange("OPTIONS", "/mesh/skills", &preflight, None);
    assert_eq!(answer.status, 204);
    let header = |name: &str| {
        answer
            .headers
            .get(name)
            .unwrap()
            .to_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(header("access-control-allow-origin"), origin);
    assert!(header("access-control-allow-headers").contains("authorization"));
    let token = format!("Bearer {NODE_TOKEN}");
    let page = [
        ("Origin", origin),
        ("Authorization", token.as_str()),
        ("Content-Type", "application/json"),
    ];
    let answer = server.exchange("PUT", "/mesh/skills", &page, Some(SKILL_PUT));
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(answer.headers["access-control-allow-origin"], origin);
    assert_eq!(answer.headers["vary"], "Origin");
    assert_eq!(server.get("/mesh/skills", &page).1[0]["name"], "triage");
    assert_eq!(
        server.get("/health", &[("Origin", origin)]).0,
        200,
        "health stays open"
    );
}

#[test]
fn the_node_token_is_accepted_beside_a_configured_one() {
    let server = Server::start(ApiConfig {
        bearer_token: Some("operator-token".into()),
        ..ApiConfig::default()
    });
    let token = format!("Bearer {NODE_TOKEN}");
    assert_eq!(
        server
            .send("POST", "/ingest", &[("Authorization", &token)], MEMORY)
            .0,
        200
    );
    assert_eq!(
        server.get("/mesh/memory", &[]).0,
        401,
        "the configured rule holds for everyone"
    );
}

#[test]
fn a_text_plain_post_to_ingest_is_415_and_stores_nothing() {
    let server = Server::start(ApiConfig::default());
    // What a cross-site fetch or form may send without asking the server first.
    let form_types = [
        "text/plain;charset=UTF-8",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
    ];
    for content_type in form_types {
        for (method, path, body) in EVERY_KIND
            .into_iter()
            .filter(|(method, ..)| *method != "GET")
        {
            let (status, answer) =
                server.send(method, path, &[("Content-Type", content_type)], body);
            assert_eq!(status, 415, "{method} {path} {content_type}");
            let error = answer["error"].as_str().unwrap();
            assert!(error.contains("application/json"), "{error}");
        }
    }
    let lines = [("Content-Type", "application/x-ndjson")];
    assert_eq!(server.send("PUT", "/mesh/skills", &lines, SKILL_PUT).0, 415);
    stored_nothing(&server);
}

#[test]
fn loopback_clients_without_an_origin_need_no_token_nor_a_content_type() {
    let server = Server::start(ApiConfig::default());
    for content_type in [
        None,
        Some("application/json"),
        Some("application/json; charset=utf-8"),
    ] {
        let headers: Vec<_> = content_type
            .map(|t| ("Content-Type", t))
            .into_iter()
            .collect();
        assert_eq!(
            server.send("PUT", "/mesh/skills", &headers, SKILL_PUT).0,
            200
        );
        assert_eq!(server.send("POST", "/ingest", &headers, MEMORY).0, 200);
    }
    let lines = format!("{MEMORY}\n{SKILL}");
    for content_type in ["application/x-ndjson", "application/jsonl"] {
        let (status, body) =
            server.send("POST", "/ingest", &[("Content-Type", content_type)], &lines);
        assert_eq!(
            (status, body["ingested"].clone()),
            (200, json!(2)),
            "{content_type}"
        );
    }
    assert_eq!(
        server
            .get("/mesh/skills/triage", &[("Host", "localhost:4078")])
            .0,
        200
    );
    assert_eq!(
        server.get("/mesh/memory", &[]).1.as_array().unwrap().len(),
        1
    );
}

#[test]
fn history_lists_every_version_with_its_author_behind_the_read_guards() {
    let server = Server::start(ApiConfig {
        bearer_token: Some("s3cret-token".into()),
        allowed_origins: vec!["http://dash.localhost:3000".into()],
        ..ApiConfig::default()
    });
    let good = [("Authorization", "Bearer s3cret-token")];
    let put = |value: Value, node: Option<&str>| {
        let mut body = json!({"scope": "user:alice", "key": "notes/today", "value": value});
        if let Some(node) = node {
            body["node_id"] = json!(node);
        }
        let (status, row) = server.send("PUT", "/mesh/memory", &good, &body.to_string());
        assert_eq!(status, 200, "{row}");
        row
    };
    let first = put(json!("one"), None);
    let claimed = put(json!("two"), Some("ceo"));
    assert_eq!(first["author"], Server::own_id());
    assert_eq!(first["verified"], true);
    assert_eq!(
        claimed["node_id"], "ceo",
        "the row keeps the writer it named"
    );
    assert_eq!(claimed["author"], Server::own_id());
    assert_eq!(claimed["claimed_by"], "ceo");
    assert_eq!(claimed["via"], "api");
    assert_eq!(claimed["verified"], false);

    let path = "/mesh/history/user:alice/notes/today";
    let (status, history) = server.get(path, &good);
    assert_eq!(status, 200, "{history}");
    let versions = history.as_array().unwrap();
    assert_eq!(versions.len(), 2);
    assert_eq!(
        (versions[0]["value"].clone(), versions[0]["winner"].clone()),
        (json!("one"), json!(false))
    );
    assert_eq!(
        (versions[1]["value"].clone(), versions[1]["winner"].clone()),
        (json!("two"), json!(true))
    );
    assert_eq!(versions[1]["claimed_by"], "ceo");
    assert_eq!(versions[1]["scope"], "user:alice");
    assert_eq!(versions[1]["deleted"], false);
    assert!(versions.iter().all(|v| v["author"] == Server::own_id()));
    assert!(versions
        .iter()
        .all(|v| v["change"].as_str().unwrap().len() == 64));
    assert_eq!(
        server.get("/mesh/history/user%3Aalice/notes%2Ftoday", &good),
        (200, history.clone())
    );

    assert_eq!(server.get("/mesh/history/mesh/absent", &good).0, 404);
    assert_eq!(server.get("/mesh/history/user:alice/absent", &good).0, 404);
    assert_eq!(server.get("/mesh/history/global/k", &good).0, 400);
    assert_eq!(server.get(path, &[]).0, 401);
    assert_eq!(
        server.get(path, &[("Authorization", "Bearer wrong")]).0,
        401
    );
    let foreign = [("Origin", "http://evil.example"), good[0]];
    assert_eq!(server.get(path, &foreign).0, 403);
}
