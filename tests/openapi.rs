//! docs/openapi.yaml against the running API: every operation and status code the document
//! lists is produced by some request here, every answer's status is listed for its route,
//! and every answer's body matches the schema the document gives for it.

#[path = "api_server/mod.rs"]
mod api_server;

use std::collections::BTreeSet;

use api_server::Server;
use meshd::config::ApiConfig;
use serde_json::{json, Map, Value};
use yaml_rust2::{Yaml, YamlLoader};

const TOKEN: &str = "Bearer t0ken";

fn document() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/openapi.yaml");
    let text = std::fs::read_to_string(path).unwrap();
    let docs = YamlLoader::load_from_str(&text).unwrap();
    to_json(&docs[0])
}

fn to_json(yaml: &Yaml) -> Value {
    match yaml {
        Yaml::Real(text) => json!(text.parse::<f64>().unwrap()),
        Yaml::Integer(n) => json!(n),
        Yaml::String(text) => json!(text),
        Yaml::Boolean(b) => json!(b),
        Yaml::Array(items) => Value::Array(items.iter().map(to_json).collect()),
        Yaml::Hash(map) => {
            let map: Map<String, Value> = map
                .iter()
                .map(|(key, value)| {
                    let key = match key {
                        Yaml::String(text) => text.clone(),
                        Yaml::Integer(n) => n.to_string(),
                        other => panic!("unexpected key {other:?}"),
                    };
                    (key, to_json(value))
                })
                .collect();
            Value::Object(map)
        }
        Yaml::Null => Value::Null,
        other => panic!("unexpected YAML {other:?}"),
    }
}

/// Follows a local `$ref`.
fn resolve<'a>(doc: &'a Value, node: &'a Value) -> &'a Value {
    match node.get("$ref").and_then(Value::as_str) {
        Some(reference) => {
            let pointer = reference.strip_prefix('#').unwrap();
            resolve(
                doc,
                doc.pointer(pointer)
                    .unwrap_or_else(|| panic!("no {reference}")),
            )
        }
        None => node,
    }
}

/// The JSON Schema subset the document uses: type (one or a list), const, enum, required,
/// properties, additionalProperties: false, items, anyOf.
fn check(doc: &Value, schema: &Value, value: &Value, at: &str) -> Result<(), String> {
    let schema = resolve(doc, schema);
    if let Some(Value::Array(choices)) = schema.get("anyOf") {
        let failures: Vec<String> = choices
            .iter()
            .filter_map(|choice| check(doc, choice, value, at).err())
            .collect();
        if failures.len() == choices.len() {
            return Err(format!("{at}: matches none of anyOf: {failures:?}"));
        }
    }
    if let Some(types) = schema.get("type") {
        let types: Vec<&str> = match types {
            Value::String(t) => vec![t.as_str()],
            Value::Array(ts) => ts.iter().map(|t| t.as_str().unwrap()).collect(),
            _ => panic!("bad type at {at}"),
        };
        if !types.iter().any(|t| has_type(value, t)) {
            return Err(format!("{at}: {value} is not {types:?}"));
        }
    }
    if let Some(constant) = schema.get("const") {
        if constant != value {
            return Err(format!("{at}: {value} is not {constant}"));
        }
    }
    if let Some(Value::Array(allowed)) = schema.get("enum") {
        if !allowed.contains(value) {
            return Err(format!("{at}: {value} is not one of {allowed:?}"));
        }
    }
    if let Value::Object(object) = value {
        check_object(doc, schema, object, at)?;
    }
    if let (Value::Array(items), Some(item)) = (value, schema.get("items")) {
        for (i, element) in items.iter().enumerate() {
            check(doc, item, element, &format!("{at}[{i}]"))?;
        }
    }
    Ok(())
}

fn check_object(
    doc: &Value,
    schema: &Value,
    object: &Map<String, Value>,
    at: &str,
) -> Result<(), String> {
    for required in schema
        .get("required")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if !object.contains_key(required.as_str().unwrap()) {
            return Err(format!("{at}: {required} is missing"));
        }
    }
    let properties = schema.get("properties").and_then(Value::as_object);
    for (key, value) in object {
        match properties.and_then(|p| p.get(key)) {
            Some(property) => check(doc, property, value, &format!("{at}.{key}"))?,
            None if schema.get("additionalProperties") == Some(&json!(false)) => {
                return Err(format!("{at}: {key} is not in the document"))
            }
            None => {}
        }
    }
    Ok(())
}

fn has_type(value: &Value, name: &str) -> bool {
    match name {
        "object" => value.is_object(),
        "array" => value.is_array(),
        "string" => value.is_string(),
        "integer" => value.is_u64() || value.is_i64(),
        "number" => value.is_number(),
        "boolean" => value.is_boolean(),
        "null" => value.is_null(),
        other => panic!("unknown type {other}"),
    }
}

/// One request: which documented route it exercises, and what to send.
struct Case {
    route: &'static str,
    method: &'static str,
    path: String,
    body: Option<String>,
    /// The `Accept` header, when the case sends one.
    accept: Option<&'static str>,
}

fn case(route: &'static str, method: &'static str, path: &str, body: Option<&str>) -> Case {
    Case {
        route,
        method,
        path: path.to_string(),
        body: body.map(str::to_string),
        accept: None,
    }
}

impl Case {
    fn accepting(mut self, accept: &'static str) -> Case {
        self.accept = Some(accept);
        self
    }
}

/// What a browser sends when it loads a page.
const BROWSER_ACCEPT: &str = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8";

const MEMORY: &str =
    r#"{"type":"memory","scope":"mesh","key":"k","value":1,"nodeId":"ceo","ts":5}"#;
const REQUEST: &str = r#"{"body":{"type":"mesh_request","requestId":"r","kind":"memory","nodeId":"ceo","scope":"mesh","key":"k"}}"#;

/// Requests that succeed, or fail on their content; 401, 413 and 429 are made from these.
fn cases() -> Vec<Case> {
    let big = format!(
        r#"{{"scope":"mesh","key":"k","value":"{}"}}"#,
        "x".repeat(5000)
    );
    vec![
        case("/health", "get", "/health", None),
        case("/", "get", "/", None),
        case("/", "get", "/", None).accepting(BROWSER_ACCEPT),
        case("/mesh/status", "get", "/mesh/status", None),
        case("/mesh/conflicts", "get", "/mesh/conflicts", None),
        case("/mesh/conflicts", "get", "/mesh/conflicts?limit=all", None),
        case("/metrics", "get", "/metrics", None),
        case("/mesh/memory", "get", "/mesh/memory?limit=2", None),
        case("/mesh/memory", "get", "/mesh/memory?limit=many", None),
        case("/mesh/memory", "get", "/mesh/memory?scope=mesh", None),
        case("/mesh/memory", "get", "/mesh/memory?q=x", None),
        case("/mesh/memory", "get", "/mesh/memory?q=a&limit=no", None),
        case(
            "/mesh/query",
            "post",
            "/mesh/query",
            Some(r#"{"query":"b","limit":3}"#),
        ),
        case(
            "/mesh/query",
            "post",
            "/mesh/query",
            Some(r#"{"scope":"mesh"}"#),
        ),
        case("/mesh/query", "post", "/mesh/query", Some(&big)),
        case(
            "/mesh/memory",
            "put",
            "/mesh/memory",
            Some(r#"{"scope":"mesh","key":"a/b","value":[1]}"#),
        ),
        case("/mesh/memory", "put", "/mesh/memory", Some("{")),
        case("/mesh/memory", "put", "/mesh/memory", Some(&big)),
        case(
            "/mesh/memory/{scope}/{key}",
            "get",
            "/mesh/memory/mesh/a%2Fb",
            None,
        ),
        case(
            "/mesh/memory/{scope}/{key}",
            "get",
            "/mesh/memory/mesh/none",
            None,
        ),
        case(
            "/mesh/memory/{scope}/{key}",
            "get",
            "/mesh/memory/global/k",
            None,
        ),
        case(
            "/mesh/history/{scope}/{key}",
            "get",
            "/mesh/history/mesh/a%2Fb",
            None,
        ),
        case(
            "/mesh/history/{scope}/{key}",
            "get",
            "/mesh/history/mesh/none",
            None,
        ),
        case(
            "/mesh/history/{scope}/{key}",
            "get",
            "/mesh/history/global/k",
            None,
        ),
        case("/mesh/skills", "get", "/mesh/skills", None),
        case(
            "/mesh/skills",
            "put",
            "/mesh/skills",
            Some(r#"{"name":"s","source_node":"ceo","path":"/p"}"#),
        ),
        case(
            "/mesh/skills",
            "put",
            "/mesh/skills",
            Some(r#"{"name":"s"}"#),
        ),
        case("/mesh/skills", "put", "/mesh/skills", Some(&big)),
        case("/mesh/skills/{name}", "get", "/mesh/skills/s", None),
        case("/mesh/skills/{name}", "get", "/mesh/skills/none", None),
        case("/ingest", "post", "/ingest", Some(MEMORY)),
        case("/ingest", "post", "/ingest", Some(&big)),
        case("/bridge", "post", "/bridge?handleRequest=1", Some(REQUEST)),
        case(
            "/bridge",
            "post",
            "/bridge?handleRequest=1",
            Some(
                r#"{"type":"sync_summary","nodeId":"js","memory":[{"scope":"mesh","key":"new","ts":1}]}"#,
            ),
        ),
        case(
            "/bridge",
            "post",
            "/bridge?handleRequest=1",
            Some(r#"{"type":"sync_summary","nodeId":"js","memory":"junk"}"#),
        ),
        case("/bridge", "post", "/bridge?unwrap=nope", Some(MEMORY)),
        case("/bridge", "post", "/bridge", Some(&big)),
    ]
}

/// Sends a case and checks the answer against the document: its status, its media type,
/// and a JSON body against its schema; returns the status.
fn exercise(doc: &Value, server: &Server, case: &Case, headers: &[(&str, &str)]) -> u16 {
    let mut headers = headers.to_vec();
    headers.extend(case.accept.map(|accept| ("Accept", accept)));
    let answer = server.exchange(
        &case.method.to_uppercase(),
        &case.path,
        &headers,
        case.body.as_deref(),
    );
    let (status, body) = (answer.status, answer.body);
    let media = (answer.headers.get("content-type"))
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split(';').next())
        .unwrap_or("")
        .trim()
        .to_string();
    let pointer = format!("/paths/{}/{}", case.route.replace('/', "~1"), case.method);
    let operation = doc
        .pointer(&pointer)
        .unwrap_or_else(|| panic!("{pointer} is not documented"));
    let response = (operation["responses"].get(status.to_string())).unwrap_or_else(|| {
        panic!(
            "{} {} answered {status}, not documented",
            case.method, case.path
        )
    });
    let response = resolve(doc, response);
    let content = (response["content"].get(&media)).unwrap_or_else(|| {
        panic!(
            "{} {} ({status}) answered {media}, not documented",
            case.method, case.path
        )
    });
    if media == "application/json" {
        if let Err(error) = check(doc, &content["schema"], &body, "body") {
            panic!("{} {} ({status}): {error}", case.method, case.path);
        }
    }
    status
}

#[test]
fn every_route_answers_as_the_document_says() {
    let doc = document();
    let config = ApiConfig {
        bearer_token: Some("t0ken".into()),
        max_body_bytes: 4096,
        ..ApiConfig::default()
    };
    let server = Server::start(config);
    let limited = Server::start(ApiConfig {
        rate_limit_per_min: 1,
        ..ApiConfig::default()
    });
    let mut seen = BTreeSet::new();
    for (i, case) in cases().iter().enumerate() {
        let open = case.route == "/health" || case.route == "/";
        let status = exercise(&doc, &server, case, &[("Authorization", TOKEN)]);
        seen.insert((case.route, case.method, status));
        // What a web page can do: name a rebound Host, send its Origin, label a body as text.
        let mut refusals = vec![
            (("Host", "evil.example"), 421),
            (("Origin", "http://evil.example"), 403),
        ];
        if case.body.is_some() {
            refusals.push((("Content-Type", "text/plain"), 415));
        }
        for (header, expected) in refusals {
            let status = exercise(&doc, &server, case, &[("Authorization", TOKEN), header]);
            assert_eq!(
                status, expected,
                "{} {} with {header:?}",
                case.method, case.path
            );
            seen.insert((case.route, case.method, status));
        }
        if !open {
            let status = exercise(&doc, &server, case, &[]);
            assert_eq!(status, 401);
            seen.insert((case.route, case.method, status));
            // Only the reference's route groups are rate limited, not meshd's own routes.
            if case.route == "/metrics" {
                continue;
            }
            // A client of its own: its first request passes, its second is over the limit.
            let client = format!("Bearer client-{i}");
            exercise(&doc, &limited, case, &[("Authorization", &client)]);
            let status = exercise(&doc, &limited, case, &[("Authorization", &client)]);
            assert_eq!(status, 429);
            seen.insert((case.route, case.method, status));
        }
    }
    // An embedding endpoint that does not answer.
    let dead_endpoint = Server::start_searching(
        ApiConfig::default(),
        Some(meshd::search::EmbeddingConfig {
            url: "http://127.0.0.1:9/api/embed".into(),
            model: "m".into(),
            dimensions: None,
        }),
    );
    let semantic = case(
        "/mesh/query",
        "post",
        "/mesh/query",
        Some(r#"{"query":"b"}"#),
    );
    let status = exercise(&doc, &dead_endpoint, &semantic, &[]);
    assert_eq!(status, 502);
    seen.insert((semantic.route, semantic.method, status));
    // `meshd api serve` runs without the mesh: no status, no metrics.
    let without_node = Server::start_without_node(ApiConfig::default());
    for case in [
        case("/mesh/status", "get", "/mesh/status", None),
        case("/metrics", "get", "/metrics", None),
    ] {
        let status = exercise(&doc, &without_node, &case, &[]);
        assert_eq!(status, 404, "{}", case.path);
        seen.insert((case.route, case.method, status));
    }
    let mut documented = BTreeSet::new();
    for (route, operations) in doc["paths"].as_object().unwrap() {
        for (method, operation) in operations.as_object().unwrap() {
            for status in operation["responses"].as_object().unwrap().keys() {
                documented.insert((
                    route.clone(),
                    method.clone(),
                    status.parse::<u16>().unwrap(),
                ));
            }
        }
    }
    let seen: BTreeSet<(String, String, u16)> = seen
        .into_iter()
        .map(|(route, method, status)| (route.to_string(), method.to_string(), status))
        .collect();
    let untested: Vec<_> = documented.difference(&seen).collect();
    assert!(
        untested.is_empty(),
        "documented but never produced: {untested:?}"
    );
}

#[test]
fn the_checker_catches_a_wrong_shape() {
    let doc = document();
    let row = json!({"$ref": "#/components/schemas/SkillRow"});
    let good = json!({"name":"s","source_node":"a","content":null,"path":"/p","updated_at":1});
    assert!(check(&doc, &row, &good, "body").is_ok());
    let missing = json!({"name":"s","source_node":"a","content":"c","updated_at":1});
    assert!(check(&doc, &row, &missing, "body").is_err());
    let extra =
        json!({"name":"s","source_node":"a","content":"c","path":null,"updated_at":1,"x":1});
    assert!(check(&doc, &row, &extra, "body").is_err());
    let wrong = json!({"name":"s","source_node":"a","content":"c","path":null,"updated_at":"1"});
    assert!(check(&doc, &row, &wrong, "body").is_err());
}
