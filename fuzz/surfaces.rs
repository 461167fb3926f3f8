//! The hostile-input properties, one function per surface a peer, a bridge, a local client or
//! a foreign SQLite file can reach. Each takes whatever bytes (or rows) it is given and panics
//! only when meshd got it wrong: a panic inside meshd, a round trip that does not hold, a
//! server error for a client's mistake, or an import that loses count of its rows.
//!
//! Two drivers share this file so they check exactly the same thing: the cargo-fuzz targets
//! (fuzz/fuzz_targets/, the fuzz crate's library) and the proptest equivalent that runs in
//! `cargo test` (proptests/hostile.rs includes it with `#[path]`).

use std::path::PathBuf;
use std::sync::Arc;

use automerge::{Automerge, ChangeHash};
use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use meshd::api::{self, ApiSettings, ApiState};
use meshd::bridge::stream::{Piece, Pieces};
use meshd::bridge::{self, Unwrap};
use meshd::config::ApiConfig;
use meshd::replica::{Replica, SharedReplica};
use meshd::search::Searcher;
use meshd::store::{self, SCHEMA};
use meshd::sync::{self, doc_strings, sequence, whole, Bundle, Filter, Message, Unpacked};
use meshd::trust::NodeKey;
use rusqlite::types::Value as Sql;
use tower::ServiceExt;

/// A frame from a peer decodes or is refused; one that decodes encodes back to itself.
pub fn frame(bytes: &[u8]) {
    let _ = sync::body_len(bytes);
    if let Ok(message) = Message::decode(bytes) {
        assert_eq!(Message::decode(&message.encode()), Ok(message));
    }
}

/// How the `bundle` input's first byte is read: the rest is a bundle's payload, either as
/// received (hostile zstd) or compressed here first (hostile contents behind valid zstd, which
/// random bytes almost never are).
pub fn bundle(input: &[u8]) {
    let Some((&mode, payload)) = input.split_first() else {
        return;
    };
    let compressed = match mode & 1 {
        0 => payload.to_vec(),
        _ => zstd::bulk::compress(payload, 1).expect("in-memory zstd cannot fail"),
    };
    let bundle = match mode & 2 {
        0 => Bundle::Changes(compressed),
        _ => Bundle::Document(compressed),
    };
    // What the replica does with an unpacked bundle (`apply_changes`, `vet_document` then
    // `merge_document`), on a document of its own: the numbering is checked, then Automerge
    // reads the peer's bytes.
    let mut doc = Automerge::new();
    match sync::unpack(&bundle) {
        Ok(Unpacked::Changes(changes)) => {
            if sequence::misnumbered(&doc, &changes).is_none() {
                let _ = doc.apply_changes(changes);
            }
        }
        Ok(Unpacked::Document(saved)) => {
            // Vetting reads the stamps from the document's value columns (`doc_strings`).
            if let Some(data) = whole::one_document_data(&saved) {
                let _ = doc_strings::for_each_string(data, |_| ());
            }
            if whole::load(Some(&doc), &saved).is_ok() {
                let _ = doc.load_incremental(&saved);
            }
        }
        Err(_) => {}
    }
}

/// A Bloom filter from a peer is refused or answers queries.
pub fn filter(bytes: &[u8]) {
    if let Ok(filter) = Filter::decode(bytes) {
        for probe in [[0u8; 32], [0xff; 32], [7; 32]] {
            let _ = filter.contains(&ChangeHash(probe));
        }
    }
}

/// Bridge input, as `meshd bridge ingest` reads it: pieces of a stream of any bytes, each
/// piece's text split into items (under every envelope) and each item classified.
pub fn bridge(bytes: &[u8]) {
    let Ok(mut pieces) = Pieces::new(bytes) else {
        return;
    };
    while let Ok(Some(piece)) = pieces.next_piece() {
        if let Piece::Text(text) = piece {
            bridge_text(&text);
        }
    }
}

/// Text from a bridge (a webhook body, one piece of a stream) into mesh messages.
pub fn bridge_text(text: &str) {
    let unwraps = [
        None,
        Some(Unwrap::Telegram),
        Some(Unwrap::Discord),
        Some(Unwrap::Generic),
    ];
    // A key for the names the seeds use, so signed messages reach the signature check.
    let mut trusted = bridge::TrustedKeys::default();
    for name in ["ceo", "a"] {
        trusted.insert(name, bridge::signing::PublicKey::from_bytes([7; 32]));
    }
    for unwrap in unwraps {
        for raw in bridge::items(text, unwrap).into_iter().flatten() {
            if let Ok(value) = serde_json::from_str(raw.get()) {
                let _ = bridge::classify(&value);
            }
            let _ = bridge::signing::verify(raw.get(), &trusted);
        }
    }
}

/// The routes that read a JSON body, picked by the `api_body` input's first byte.
pub const API_ROUTES: [(Method, &str); 7] = [
    (Method::PUT, "/mesh/memory"),
    (Method::PUT, "/mesh/skills"),
    (Method::POST, "/ingest"),
    (Method::POST, "/bridge"),
    (Method::POST, "/bridge?unwrap=telegram&handleRequest=1"),
    (Method::POST, "/bridge?unwrap=discord&handleRequest=true"),
    (Method::POST, "/mesh/query"),
];

/// The real API router over a replica in a temporary directory, driven in-process.
pub struct Api {
    runtime: tokio::runtime::Runtime,
    router: axum::Router,
    _dir: tempfile::TempDir,
}

impl Api {
    /// Default settings, but without the rate limit: every request must reach its handler.
    pub fn new() -> Api {
        let dir = tempfile::tempdir().expect("temporary directory");
        let replica = Replica::open(
            &dir.path().join("store"),
            NodeKey::insecure_from_name("fuzz"),
        )
        .expect("replica opens");
        let config = ApiConfig {
            rate_limit_per_min: 0,
            ..ApiConfig::default()
        };
        let settings = ApiSettings::from_config(&config, |_| None).expect("default settings");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        Api {
            runtime,
            router: api::router(
                ApiState::new(SharedReplica::new(replica), settings)
                    .with_search(Arc::new(Searcher::new(dir.path().join("search.db"), None))),
            ),
            _dir: dir,
        }
    }
}

impl Default for Api {
    fn default() -> Api {
        Api::new()
    }
}

/// A JSON body on one of `API_ROUTES` (the input's first byte picks it) is a client's: any
/// answer but a server error. A panic in a handler reaches the caller here, or comes back
/// as a 500 when it happened on the replica's blocking thread.
pub fn api_body(api: &Api, input: &[u8]) {
    let Some((&route, body)) = input.split_first() else {
        return;
    };
    let (method, uri) = &API_ROUTES[usize::from(route) % API_ROUTES.len()];
    let request = Request::builder()
        .method(method)
        .uri(*uri)
        .header(header::HOST, "127.0.0.1:4078")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.to_vec()))
        .expect("a well-formed request");
    let response = api
        .runtime
        .block_on(api.router.clone().oneshot(request))
        .expect("the router is infallible");
    let status = response.status();
    assert!(
        !status.is_server_error(),
        "{method} {uri} answered {status} to {:?}",
        String::from_utf8_lossy(body)
    );
    assert_ne!(status, StatusCode::NOT_FOUND, "{uri} is a route");
}

/// A reference store file's rows, with any SQLite values in any column.
#[derive(Debug, Clone, Default)]
pub struct StoreFile {
    /// Tables without types or constraints (a hostile file need not use the reference
    /// schema), instead of `meshd::store::SCHEMA`.
    pub loose: bool,
    /// `scope, key, value, node_id, updated_at`.
    pub memory: Vec<[Sql; 5]>,
    /// `name, source_node, content, path, updated_at`.
    pub skills: Vec<[Sql; 5]>,
}

const LOOSE_SCHEMA: &str = "\
CREATE TABLE mesh_memory (id INTEGER PRIMARY KEY, scope, key, value, node_id, updated_at);
CREATE TABLE mesh_skills (id INTEGER PRIMARY KEY, name, source_node, content, path, updated_at);
";

impl StoreFile {
    /// Reads the fuzz target's input, JSON so that its corpus stays readable:
    /// `{"loose": bool, "memory": [[v, v, v, v, v], ...], "skills": [...]}` where each `v`
    /// is null, an integer, a float, a string, or `{"blob": "bytes as text"}`.
    pub fn from_json(bytes: &[u8]) -> Option<StoreFile> {
        let json: serde_json::Value = serde_json::from_slice(bytes).ok()?;
        let rows = |table: &str| -> Option<Vec<[Sql; 5]>> {
            let Some(rows) = json.get(table) else {
                return Some(Vec::new());
            };
            rows.as_array()?
                .iter()
                .map(|row| {
                    let values: Vec<Sql> = row
                        .as_array()?
                        .iter()
                        .map(sql_value)
                        .collect::<Option<_>>()?;
                    values.try_into().ok()
                })
                .collect()
        };
        Some(StoreFile {
            loose: json.get("loose").and_then(serde_json::Value::as_bool)?,
            memory: rows("memory")?,
            skills: rows("skills")?,
        })
    }
}

fn sql_value(value: &serde_json::Value) -> Option<Sql> {
    use serde_json::Value as Json;
    Some(match value {
        Json::Null => Sql::Null,
        Json::Number(n) => match n.as_i64() {
            Some(i) => Sql::Integer(i),
            None => Sql::Real(n.as_f64()?),
        },
        Json::String(text) => Sql::Text(text.clone()),
        Json::Object(map) => Sql::Blob(map.get("blob")?.as_str()?.as_bytes().to_vec()),
        Json::Bool(_) | Json::Array(_) => return None,
    })
}

/// A replica to import into, and a place for the files.
pub struct Store {
    replica: SharedReplica,
    file: PathBuf,
    _dir: tempfile::TempDir,
}

impl Store {
    /// A fresh replica in a temporary directory.
    pub fn new() -> Store {
        let dir = tempfile::tempdir().expect("temporary directory");
        let replica = Replica::open(
            &dir.path().join("store"),
            NodeKey::insecure_from_name("fuzz"),
        )
        .expect("replica opens");
        Store {
            replica: SharedReplica::new(replica),
            file: dir.path().join("mesh-store.sqlite"),
            _dir: dir,
        }
    }
}

impl Default for Store {
    fn default() -> Store {
        Store::new()
    }
}

/// A file holding `rows` imports without failing, and every row the file holds is counted
/// once: changed, unchanged or skipped with a reason.
pub fn store_rows(store: &Store, rows: &StoreFile) {
    let _ = std::fs::remove_file(&store.file);
    let held = write_store(&store.file, rows).expect("the test file is written");
    let report = store::import(&store.file, &store.replica).expect("a readable store imports");
    let counted = report.memory + report.skills + report.unchanged + report.skipped;
    assert_eq!(counted, held, "{report:?}");
    assert_eq!(report.skipped, report.reasons.len(), "{report:?}");
}

/// Writes the file; returns how many rows it holds (the reference schema refuses some).
fn write_store(path: &std::path::Path, rows: &StoreFile) -> rusqlite::Result<usize> {
    let conn = rusqlite::Connection::open(path)?;
    conn.execute_batch(if rows.loose { LOOSE_SCHEMA } else { SCHEMA })?;
    let mut held = 0;
    let tables = [
        (
            "INSERT INTO mesh_memory (scope, key, value, node_id, updated_at) \
             VALUES (?1, ?2, ?3, ?4, ?5)",
            &rows.memory,
        ),
        (
            "INSERT INTO mesh_skills (name, source_node, content, path, updated_at) \
             VALUES (?1, ?2, ?3, ?4, ?5)",
            &rows.skills,
        ),
    ];
    for (insert, table) in tables {
        let mut statement = conn.prepare(insert)?;
        for row in table {
            match statement.execute(rusqlite::params_from_iter(row.iter())) {
                Ok(_) => held += 1,
                Err(rusqlite::Error::SqliteFailure(e, _))
                    if e.code == rusqlite::ErrorCode::ConstraintViolation => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(held)
}
