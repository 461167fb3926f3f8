//! Search through the real binary: the CLI with and without a daemon, the reference's HTTP
//! shapes (`GET /mesh/memory?q=`, `POST /mesh/query`), a change from a peer, and semantic and
//! hybrid search against an embedding endpoint over real HTTP.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;

use serde_json::{json, Value};
use support::{wait_until, TestNode};

fn search_json(node: &TestNode, args: &[&str]) -> Value {
    let mut all = vec!["search", "--json"];
    all.extend_from_slice(args);
    serde_json::from_str(&node.run(&all).ok()).unwrap()
}

fn keys(results: &Value) -> Vec<String> {
    results["hits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|hit| hit["key"].as_str().unwrap().to_string())
        .collect()
}

fn seed(node: &TestNode) {
    node.run(&[
        "mem",
        "put",
        "mesh",
        "editor.theme",
        r#""the user likes dark mode""#,
    ])
    .ok();
    node.run(&[
        "mem",
        "put",
        "user:alice",
        "lunch",
        r#"{"favourite":"dark chocolate"}"#,
    ])
    .ok();
    node.run(&["mem", "put", "mesh", "unrelated", r#""pasta on fridays""#])
        .ok();
    node.run_with_stdin(
        &["skill", "put", "triage", "--description", "sort the inbox"],
        b"label issues and close duplicates",
    )
    .ok();
}

#[test]
fn the_cli_searches_memory_and_skills_without_a_daemon() {
    let (node, _) = TestNode::init_listening("a");
    seed(&node);
    let results = search_json(&node, &["dark mode"]);
    assert_eq!(results["mode"], "fts");
    assert_eq!(keys(&results)[0], "editor.theme");
    let hit = &results["hits"][0];
    assert_eq!(hit["scope"], "mesh");
    assert!(
        hit["snippet"].as_str().unwrap().contains("dark mode"),
        "{hit}"
    );
    assert_eq!(
        keys(&search_json(&node, &["dark", "--scope", "user:*"])),
        ["lunch"]
    );
    assert_eq!(
        keys(&search_json(&node, &["duplicates", "--skills"])),
        ["triage"]
    );
    assert_eq!(keys(&search_json(&node, &["inbox", "--all"])), ["triage"]);
    assert!(keys(&search_json(&node, &["duplicates"])).is_empty());
    let plain = node.run(&["search", "pasta"]).ok();
    assert!(
        plain.contains("mesh\tunrelated\tpasta on fridays"),
        "{plain}"
    );

    let refused = node.run(&["search", "dark", "--mode", "semantic"]);
    assert_ne!(refused.code, 0);
    assert!(
        refused.stderr.contains("MESH_EMBEDDING_URL"),
        "{}",
        refused.stderr
    );
    let empty = node.run(&["search", "?!"]);
    assert!(empty.stderr.contains("no words"), "{}", empty.stderr);
}

#[test]
fn the_api_answers_in_the_reference_shapes() {
    let (node, api) = TestNode::init_with_api("a");
    let _daemon = node.start();
    seed(&node);
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let get = |query: &str| -> (u16, Value) {
        let mut answer = agent
            .get(format!("http://{api}/mesh/memory?{query}"))
            .call()
            .unwrap();
        let status = answer.status().as_u16();
        (
            status,
            serde_json::from_str(&answer.body_mut().read_to_string().unwrap()).unwrap(),
        )
    };
    let post = |body: &str| -> (u16, Value) {
        let mut answer = agent
            .post(format!("http://{api}/mesh/query"))
            .header("content-type", "application/json")
            .send(body)
            .unwrap();
        let status = answer.status().as_u16();
        (
            status,
            serde_json::from_str(&answer.body_mut().read_to_string().unwrap()).unwrap(),
        )
    };

    let (status, rows) = get("q=dark%20mode");
    assert_eq!(status, 200);
    let first = &rows[0];
    assert_eq!(
        (first["scope"].as_str(), first["key"].as_str()),
        (Some("mesh"), Some("editor.theme"))
    );
    assert!(first["snippet"].as_str().unwrap().contains("dark mode"));
    assert!(first["score"].as_f64().is_some());
    let (_, scoped) = get("q=dark&scope=user:alice&limit=1");
    assert_eq!(scoped.as_array().unwrap().len(), 1);
    assert_eq!(scoped[0]["key"], "lunch");
    // Without q, the list is as before.
    let (status, listed) = get("scope=mesh");
    assert_eq!(status, 200);
    assert!(listed[0]["value"].is_string() || listed[0]["value"].is_object());

    let (status, rows) = post(r#"{"query":"pasta","scope":"mesh","limit":5}"#);
    assert_eq!((status, rows[0]["key"].as_str()), (200, Some("unrelated")));
    let (_, by_q) = post(r#"{"q":"pasta"}"#);
    assert_eq!(by_q[0]["key"], "unrelated");
    let (status, error) = post(r#"{"scope":"mesh"}"#);
    assert_eq!(
        (status, error["error"].as_str()),
        (400, Some("Missing query or q"))
    );
    let (status, error) = post("{not json");
    assert_eq!(status, 400, "{error}");
    let (status, error) = post(r#"{"query":"pasta","mode":"semantic"}"#);
    assert_eq!(status, 400);
    assert!(
        error["error"]
            .as_str()
            .unwrap()
            .contains("MESH_EMBEDDING_URL"),
        "{error}"
    );
    let (status, _) = post(r#"{"query":"pasta","mode":"psychic"}"#);
    assert_eq!(status, 400);
    let (status, _) = get("q=pasta&limit=many");
    assert_eq!(status, 400);
    let (status, _) = get("q=pasta&scope=bad%20scope");
    assert_eq!(status, 400);
}

#[test]
fn a_change_from_a_peer_becomes_searchable() {
    let (a, a_listen) = TestNode::init_listening("a");
    let (b, b_listen) = TestNode::init_listening("b");
    a.run(&["peers", "add", &b.id(), &b_listen]).ok();
    b.run(&["peers", "add", &a.id(), &a_listen]).ok();
    let (_a, _b) = (a.start(), b.start());
    a.run(&[
        "mem",
        "put",
        "mesh",
        "deploy.window",
        r#""fridays after the standup""#,
    ])
    .ok();
    wait_until("b finds a's entry", || {
        keys(&search_json(&b, &["standup"])) == ["deploy.window"]
    });
    a.run(&["mem", "put", "mesh", "deploy.window", r#""mondays only""#])
        .ok();
    wait_until("b follows a's update", || {
        keys(&search_json(&b, &["standup"])).is_empty()
            && keys(&search_json(&b, &["mondays"])) == ["deploy.window"]
    });
}

/// An Ollama-shaped `/api/embed` endpoint over real HTTP. Its vectors put synonyms on one
/// axis (car, automobile, vehicle; cat, kitten; pizza, pasta), so a semantic hit that shares
/// no word with the query shows the vectors were used. Any other word gets an axis of its own
/// by hash. Counts the texts it embedded.
struct EmbeddingServer {
    url: String,
    embedded: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

const AXES: usize = 32;

fn axis(word: &str) -> usize {
    match word {
        "car" | "automobile" | "vehicle" => 0,
        "cat" | "kitten" | "feline" => 1,
        "pizza" | "pasta" | "food" => 2,
        other => {
            3 + other
                .bytes()
                .fold(7usize, |h, b| h.wrapping_mul(31) + b as usize)
                % (AXES - 3)
        }
    }
}

fn embed(text: &str) -> Vec<f32> {
    let mut vector = vec![0f32; AXES];
    for word in text
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
    {
        vector[axis(&word.to_lowercase())] += 1.0;
    }
    vector
}

impl EmbeddingServer {
    fn start() -> EmbeddingServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/api/embed", listener.local_addr().unwrap());
        let embedded = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = embedded.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let counter = counter.clone();
                std::thread::spawn(move || serve(stream, &counter));
            }
        });
        EmbeddingServer { url, embedded }
    }
}

fn serve(stream: std::net::TcpStream, counter: &std::sync::atomic::AtomicUsize) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut length = 0;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        if line == "\r\n" {
            break;
        }
        if let Some(value) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            length = value.trim().parse().unwrap();
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).unwrap();
    let request: Value = serde_json::from_slice(&body).unwrap();
    let texts: Vec<String> = match &request["input"] {
        Value::String(text) => vec![text.clone()],
        Value::Array(items) => items
            .iter()
            .map(|t| t.as_str().unwrap().to_string())
            .collect(),
        other => panic!("input {other}"),
    };
    counter.fetch_add(texts.len(), std::sync::atomic::Ordering::SeqCst);
    let vectors: Vec<Vec<f32>> = texts.iter().map(|t| embed(t)).collect();
    let answer = json!({"model": request["model"], "embeddings": vectors}).to_string();
    let mut stream = stream;
    let _ = write!(
        stream,
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{answer}",
        answer.len()
    );
}

#[test]
fn semantic_and_hybrid_search_use_the_embedding_endpoint() {
    let endpoint = EmbeddingServer::start();
    let (node, _) = TestNode::init_listening("a");
    node.run(&["mem", "put", "mesh", "garage", r#""my automobile is red""#])
        .ok();
    node.run(&[
        "mem",
        "put",
        "mesh",
        "pets",
        r#""the kitten sleeps all day""#,
    ])
    .ok();
    node.run(&[
        "mem",
        "put",
        "mesh",
        "meals",
        r#""pizza on friday, car wash on saturday""#,
    ])
    .ok();
    let search = |args: &[&str]| -> Value {
        let mut all = vec!["search", "--json"];
        all.extend_from_slice(args);
        let run = node
            .command(&all)
            .env("MESH_EMBEDDING_URL", &endpoint.url)
            .env("MESH_EMBEDDING_MODEL", "test-model")
            .output()
            .unwrap();
        assert!(
            run.status.success(),
            "{}",
            String::from_utf8_lossy(&run.stderr)
        );
        serde_json::from_slice(&run.stdout).unwrap()
    };
    // No word in common with "vehicle": only the vectors find the garage.
    let semantic = search(&["vehicle", "--mode", "semantic"]);
    assert_eq!(semantic["mode"], "semantic");
    assert_eq!(keys(&semantic)[0], "garage", "{semantic}");
    assert_eq!(semantic["not_embedded"], 0);
    assert!(keys(&search(&["vehicle", "--mode", "fts"])).is_empty());
    // Hybrid is the default with an endpoint: "car" is a word of meals and means the garage.
    let hybrid = search(&["car"]);
    assert_eq!(hybrid["mode"], "hybrid");
    let found = keys(&hybrid);
    assert!(
        found.contains(&"garage".to_string()) && found.contains(&"meals".to_string()),
        "{hybrid}"
    );
    // Entries are embedded once: searching again embeds only the query.
    let before = endpoint.embedded.load(std::sync::atomic::Ordering::SeqCst);
    search(&["kitten", "--mode", "semantic"]);
    let after = endpoint.embedded.load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(after - before, 1, "only the query is embedded again");

    // An endpoint that is down is a clear error, not a crash.
    let down = node
        .command(&["search", "car", "--mode", "semantic"])
        .env("MESH_EMBEDDING_URL", "http://127.0.0.1:9/api/embed")
        .output()
        .unwrap();
    assert!(!down.status.success());
    let stderr = String::from_utf8_lossy(&down.stderr);
    assert!(
        stderr.contains("embedding endpoint") && stderr.contains("127.0.0.1:9"),
        "{stderr}"
    );
}
