//! `meshd store import | export` against SQLite files in the reference schema.

mod support;

use std::path::Path;

use rusqlite::{params, Connection};
use serde_json::{json, Value};
use support::compat::TestNode;

type MemoryRow = (String, String, String, String, i64);
type SkillRow = (String, String, Option<String>, Option<String>, i64);
type SkillInsert<'a> = (&'a str, &'a str, Option<&'a str>, Option<&'a str>, i64);

/// A store as the reference client leaves it: strings bare, other values as JSON text.
fn reference_store(path: &Path) {
    let conn = Connection::open(path).unwrap();
    conn.execute_batch(meshd::store::SCHEMA).unwrap();
    let memory: [(&str, &str, &str, &str, i64); 6] = [
        (
            "mesh",
            "user.preferences",
            r#"{"shortAnswers":true}"#,
            "ceo",
            1739123456,
        ),
        ("mesh", "units", "metric", "sec", 1739123400),
        ("mesh", "answer", "42", "ceo", 1739123000),
        ("mesh", "list", r#"[1,"a",null]"#, "ceo", 1739123001),
        ("node", "uptime", "3 days", "sec", 1739120000),
        ("user:alice", "tz", "Europe/Paris", "ceo", 1739120001),
    ];
    for row in memory {
        conn.execute(
            "INSERT INTO mesh_memory (scope, key, value, node_id, updated_at) VALUES (?1,?2,?3,?4,?5)",
            params![row.0, row.1, row.2, row.3, row.4],
        )
        .unwrap();
    }
    let skills: [SkillInsert; 3] = [
        (
            "triage",
            "ceo",
            Some("# Triage rules\n..."),
            None,
            1739123456,
        ),
        (
            "style",
            "sec",
            None,
            Some("https://example.org/style.md"),
            1739123457,
        ),
        (
            "both",
            "sec",
            Some("inline"),
            Some("/srv/skills/both.md"),
            1739123458,
        ),
    ];
    for row in skills {
        conn.execute(
            "INSERT INTO mesh_skills (name, source_node, content, path, updated_at) VALUES (?1,?2,?3,?4,?5)",
            params![row.0, row.1, row.2, row.3, row.4],
        )
        .unwrap();
    }
}

fn memory_rows(path: &Path) -> Vec<MemoryRow> {
    let conn = Connection::open(path).unwrap();
    let mut statement = conn
        .prepare(
            "SELECT scope, key, value, node_id, updated_at FROM mesh_memory ORDER BY scope, key",
        )
        .unwrap();
    let rows = statement.query_map([], |r| {
        Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
    });
    rows.unwrap().map(Result::unwrap).collect()
}

fn skill_rows(path: &Path) -> Vec<SkillRow> {
    let conn = Connection::open(path).unwrap();
    let mut statement = conn
        .prepare(
            "SELECT name, source_node, content, path, updated_at FROM mesh_skills ORDER BY name",
        )
        .unwrap();
    let rows = statement.query_map([], |r| {
        Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
    });
    rows.unwrap().map(Result::unwrap).collect()
}

fn import(node: &TestNode, path: &Path) -> Value {
    node.json(&["store", "import", path.to_str().unwrap()])
}

fn export(node: &TestNode, path: &Path, extra: &[&str]) -> Value {
    let mut args = vec!["store", "export", path.to_str().unwrap()];
    args.extend(extra);
    node.json(&args)
}

#[test]
fn import_then_export_gives_the_same_rows() {
    let node = TestNode::new("a");
    let source = node.dir.path().join("reference.sqlite");
    reference_store(&source);
    let report = import(&node, &source);
    assert_eq!(
        report,
        json!({"memory": 6, "skills": 3, "unchanged": 0, "skipped": 0})
    );
    let copy = node.dir.path().join("copy.sqlite");
    assert_eq!(
        export(&node, &copy, &[]),
        json!({"memory": 6, "skills": 3, "removed": 0})
    );
    assert_eq!(memory_rows(&copy), memory_rows(&source));
    assert_eq!(skill_rows(&copy), skill_rows(&source));
}

#[test]
fn raw_and_json_values_are_both_understood() {
    let node = TestNode::new("a");
    let source = node.dir.path().join("reference.sqlite");
    reference_store(&source);
    let conn = Connection::open(&source).unwrap();
    conn.execute(
        "INSERT INTO mesh_memory (scope, key, value, node_id, updated_at) VALUES ('mesh','quoted','\"metric\"','ceo',1)",
        [],
    )
    .unwrap();
    import(&node, &source);
    let value = |key: &str| node.json(&["mem", "get", "mesh", key]);
    assert_eq!(value("user.preferences"), json!({"shortAnswers": true}));
    assert_eq!(value("units"), json!("metric"));
    assert_eq!(value("quoted"), json!("metric"));
    assert_eq!(
        value("answer"),
        json!(42),
        "bare 42 reads as the reference reads it"
    );
    assert_eq!(value("list"), json!([1, "a", null]));
    assert_eq!(
        node.json(&["mem", "get", "node:sec", "uptime"]),
        json!("3 days")
    );
    assert_eq!(
        node.json(&["mem", "get", "user:alice", "tz"]),
        json!("Europe/Paris")
    );
    assert_eq!(node.ok(&["skill", "get", "style"], "").stdout, "");
}

#[test]
fn importing_twice_changes_nothing() {
    let node = TestNode::new("a");
    let source = node.dir.path().join("reference.sqlite");
    reference_store(&source);
    import(&node, &source);
    let before = node.ok(&["mem", "ls", "--json"], "").stdout;
    let again = import(&node, &source);
    assert_eq!(
        again,
        json!({"memory": 0, "skills": 0, "unchanged": 9, "skipped": 0})
    );
    assert_eq!(node.ok(&["mem", "ls", "--json"], "").stdout, before);
}

#[test]
fn last_write_wins_by_updated_at() {
    let node = TestNode::new("a");
    let source = node.dir.path().join("reference.sqlite");
    reference_store(&source);
    node.ok(&["mem", "put", "mesh", "units", "\"imperial\""], "");
    import(&node, &source);
    assert_eq!(
        node.json(&["mem", "get", "mesh", "units"]),
        json!("imperial"),
        "the local write is newer"
    );
    let conn = Connection::open(&source).unwrap();
    // A row from the year 5138 is refused by the clock bound, not taken as the newest.
    conn.execute(
        "UPDATE mesh_memory SET value = 'kelvin', updated_at = 99999999999 WHERE key = 'units'",
        [],
    )
    .unwrap();
    let far = import(&node, &source);
    assert_eq!(far["skipped"], 1, "{far}");
    assert_eq!(
        node.json(&["mem", "get", "mesh", "units"]),
        json!("imperial")
    );
    let soon = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 30;
    conn.execute(
        "UPDATE mesh_memory SET updated_at = ?1 WHERE key = 'units'",
        [soon],
    )
    .unwrap();
    import(&node, &source);
    assert_eq!(node.json(&["mem", "get", "mesh", "units"]), json!("kelvin"));
}

#[test]
fn a_row_of_the_same_second_and_writer_replaces_and_one_that_loses_says_why() {
    let node = TestNode::new("a");
    let message = |value: &str, node_id: &str| {
        json!({"type":"memory","scope":"mesh","key":"k","value":value,"nodeId":node_id,"ts":100})
            .to_string()
    };
    node.ok(&["bridge", "ingest"], &message("v1", "ceo"));
    let source = node.dir.path().join("rows.sqlite");
    let conn = Connection::open(&source).unwrap();
    conn.execute_batch(meshd::store::SCHEMA).unwrap();
    let row = |value: &str, node_id: &str| {
        conn.execute("DELETE FROM mesh_memory", []).unwrap();
        conn.execute(
            "INSERT INTO mesh_memory (scope, key, value, node_id, updated_at) \
             VALUES ('mesh', 'k', ?1, ?2, 100)",
            [value, node_id],
        )
        .unwrap();
    };
    row("v2", "ceo");
    let run = node.ok(&["store", "import", source.to_str().unwrap()], "");
    assert_eq!(
        serde_json::from_str::<Value>(&run.stdout).unwrap(),
        json!({"memory": 1, "skills": 0, "unchanged": 0, "skipped": 0})
    );
    assert_eq!(node.json(&["mem", "get", "mesh", "k"]), json!("v2"));
    row("v3", "abc");
    let run = node.ok(&["store", "import", source.to_str().unwrap()], "");
    assert_eq!(
        serde_json::from_str::<Value>(&run.stdout).unwrap(),
        json!({"memory": 0, "skills": 0, "unchanged": 1, "skipped": 0})
    );
    assert!(
        run.stderr.contains(
            "meshd: row memory mesh:k: not applied: the replica holds a version with the same \
             ts (100) from ceo, and at an equal ts the greater node id wins"
        ),
        "{}",
        run.stderr
    );
    assert_eq!(node.json(&["mem", "get", "mesh", "k"]), json!("v2"));
}

#[test]
fn export_upserts_without_replacing_newer_rows_and_prune_removes() {
    let node = TestNode::new("a");
    node.ok(&["mem", "put", "mesh", "a", "1"], "");
    node.ok(&["mem", "put", "mesh", "b", "2"], "");
    let target = node.dir.path().join("shared.sqlite");
    export(&node, &target, &[]);
    let conn = Connection::open(&target).unwrap();
    conn.execute(
        "UPDATE mesh_memory SET value = 'theirs', updated_at = 99999999999 WHERE key = 'a'",
        [],
    )
    .unwrap();
    conn.execute(
        "INSERT INTO mesh_memory (scope, key, value, node_id, updated_at) VALUES ('mesh','other','x','z',1)",
        [],
    )
    .unwrap();
    node.ok(&["mem", "put", "mesh", "b", "3"], "");
    assert_eq!(
        export(&node, &target, &[]),
        json!({"memory": 1, "skills": 0, "removed": 0})
    );
    let values: Vec<(String, String)> = memory_rows(&target)
        .into_iter()
        .map(|r| (r.1, r.2))
        .collect();
    let expected =
        [("a", "theirs"), ("b", "3"), ("other", "x")].map(|(k, v)| (k.to_string(), v.to_string()));
    assert_eq!(values, expected);
    assert_eq!(
        export(&node, &target, &[]),
        json!({"memory": 0, "skills": 0, "removed": 0})
    );
    node.ok(&["mem", "rm", "mesh", "b"], "");
    assert_eq!(export(&node, &target, &["--prune"])["removed"], 1);
    let keys: Vec<String> = memory_rows(&target).into_iter().map(|r| r.1).collect();
    assert_eq!(
        keys,
        ["a", "other"],
        "b went; the row someone else wrote stays"
    );
}

/// The reference client's schema, FTS table included, as api-server.js creates it.
const REFERENCE_SCHEMA: &str = "\
CREATE TABLE mesh_memory (id INTEGER PRIMARY KEY AUTOINCREMENT, scope TEXT NOT NULL,
  key TEXT NOT NULL, value TEXT NOT NULL, node_id TEXT NOT NULL, updated_at INTEGER NOT NULL,
  UNIQUE(scope, key));
CREATE VIRTUAL TABLE mesh_memory_fts USING fts5(scope, key, content, tokenize='unicode61');
CREATE TABLE mesh_skills (id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL UNIQUE,
  source_node TEXT NOT NULL, content TEXT, path TEXT, updated_at INTEGER NOT NULL,
  CHECK (content IS NOT NULL OR path IS NOT NULL));";

fn fts_rows(conn: &Connection) -> Vec<(String, String, String)> {
    let mut statement = conn
        .prepare("SELECT scope, key, content FROM mesh_memory_fts ORDER BY scope, key")
        .unwrap();
    let rows = statement.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)));
    rows.unwrap().map(Result::unwrap).collect()
}

/// A file api-server.js also serves: meshd's prune and deletions remove only rows meshd
/// wrote, even when a row someone else wrote has a key meshd deleted, and the reference's
/// full-text table follows meshd's rows.
#[test]
fn prune_deletes_only_what_meshd_wrote_and_keeps_the_fts_table_in_step() {
    let node = TestNode::new("a");
    let target = node.dir.path().join("shared.sqlite");
    let conn = Connection::open(&target).unwrap();
    conn.execute_batch(REFERENCE_SCHEMA).unwrap();
    // What api-server.js's putMemory / putSkill leave behind.
    conn.execute_batch(
        "INSERT INTO mesh_memory (scope, key, value, node_id, updated_at)
           VALUES ('mesh', 'theirs', 'dashboard note', 'dash', 1739000000);
         INSERT INTO mesh_memory_fts (scope, key, content)
           VALUES ('mesh', 'theirs', 'theirs dashboard note');
         INSERT INTO mesh_skills (name, source_node, content, path, updated_at)
           VALUES ('their-skill', 'dash', 'body', NULL, 1739000000);",
    )
    .unwrap();
    node.ok(&["mem", "put", "mesh", "focus", "\"Q3 launch\""], "");
    node.ok(&["mem", "put", "mesh", "gone", "1"], "");
    node.ok(&["skill", "put", "mine"], "# mine");
    export(&node, &target, &["--prune"]);
    let indexed = fts_rows(&conn);
    assert!(indexed.contains(&("mesh".into(), "focus".into(), "focus Q3 launch".into())));
    assert!(indexed.contains(&("mesh".into(), "gone".into(), "gone".into())));

    node.ok(&["mem", "rm", "mesh", "gone"], "");
    node.ok(&["skill", "rm", "mine"], "");
    let report = export(&node, &target, &["--prune"]);
    assert_eq!(report["removed"], 2, "{report}");
    let keys: Vec<String> = memory_rows(&target).into_iter().map(|r| r.1).collect();
    assert_eq!(keys, ["focus", "theirs"]);
    let names: Vec<String> = skill_rows(&target).into_iter().map(|r| r.0).collect();
    assert_eq!(names, ["their-skill"]);
    let indexed: Vec<String> = fts_rows(&conn).into_iter().map(|r| r.1).collect();
    assert_eq!(indexed, ["focus", "theirs"]);

    // api-server.js rewrites meshd's row in place (same id): it is theirs from then on.
    conn.execute(
        "UPDATE mesh_memory SET value = 'edited', node_id = 'dash', updated_at = 99999999999 \
         WHERE key = 'focus'",
        [],
    )
    .unwrap();
    node.ok(&["mem", "rm", "mesh", "focus"], "");
    assert_eq!(export(&node, &target, &["--prune"])["removed"], 0);
    let keys: Vec<String> = memory_rows(&target).into_iter().map(|r| r.1).collect();
    assert_eq!(keys, ["focus", "theirs"]);
}

/// An entry in another node's scope written by a third node keeps its scope through export
/// and import, and importing meshd's own export again adds nothing.
#[test]
fn node_scopes_survive_export_then_import() {
    let node = TestNode::new("a");
    let message = r#"{"type":"memory","scope":"node:nas","key":"disk","value":"80%","nodeId":"ceo","ts":1739000000}"#;
    node.ok(&["bridge", "ingest"], message);
    let own = r#"{"type":"memory","scope":"node","key":"uptime","value":"3 days","nodeId":"sec","ts":1739000001}"#;
    node.ok(&["bridge", "ingest"], own);
    let before = node.json(&["mem", "ls", "--json"]);
    let target = node.dir.path().join("out.sqlite");
    export(&node, &target, &[]);
    let rows = memory_rows(&target);
    assert!(rows.contains(&(
        "node".into(),
        "disk".into(),
        "80%".into(),
        "ceo".into(),
        1739000000
    )));

    let report = import(&node, &target);
    assert_eq!(report["memory"], 0, "{report}");
    assert_eq!(
        node.json(&["mem", "ls", "--json"]),
        before,
        "no scope changed, nothing added"
    );

    let other = TestNode::new("b");
    import(&other, &target);
    assert_eq!(
        other.json(&["mem", "get", "node:nas", "disk"]),
        json!("80%")
    );
    assert_eq!(
        other.json(&["mem", "get", "node:sec", "uptime"]),
        json!("3 days")
    );
    let wrong = other.run(&["mem", "get", "node:ceo", "disk"], "");
    assert_ne!(wrong.code, 0, "not moved into the author's scope");
}

#[test]
fn bad_rows_are_skipped_with_reasons() {
    let node = TestNode::new("a");
    let source = node.dir.path().join("loose.sqlite");
    let conn = Connection::open(&source).unwrap();
    // The reference client's own DDL has no CHECK on scope.
    conn.execute_batch(
        "CREATE TABLE mesh_memory (id INTEGER PRIMARY KEY AUTOINCREMENT, scope TEXT NOT NULL,
           key TEXT NOT NULL, value TEXT NOT NULL, node_id TEXT NOT NULL,
           updated_at INTEGER NOT NULL, UNIQUE(scope, key));
         INSERT INTO mesh_memory (scope, key, value, node_id, updated_at) VALUES
           ('everywhere', 'k', '1', 'ceo', 1),
           ('mesh', 'future', '1', 'ceo', 9999999999999),
           ('mesh', 'negative', '1', 'ceo', -5),
           ('node:sec', 'ok', '1', 'sec', 5),
           ('mesh', 'github', 'ghp_0123456789abcdefghijklmnopqrstuvwxyzAB', 'ceo', 6);",
    )
    .unwrap();
    let run = node.ok(&["store", "import", source.to_str().unwrap()], "");
    let report: Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(
        report,
        json!({"memory": 1, "skills": 0, "unchanged": 0, "skipped": 4})
    );
    assert!(run.stderr.contains("GitHub token"), "{}", run.stderr);
    assert!(!run.stderr.contains("ghp_0123"));
    assert!(
        run.stderr.contains("unknown scope 'everywhere'"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("an invalid updated_at"));
    assert_eq!(node.json(&["mem", "get", "node:sec", "ok"]), json!(1));
}

#[test]
fn files_that_are_not_stores_are_errors() {
    let node = TestNode::new("a");
    let missing = node.run(&["store", "import", "/nonexistent/store.sqlite"], "");
    assert_ne!(missing.code, 0);
    assert!(missing.stderr.contains("does not exist"));
    let empty = node.dir.path().join("empty.sqlite");
    Connection::open(&empty)
        .unwrap()
        .execute_batch("CREATE TABLE t (x)")
        .unwrap();
    let run = node.run(&["store", "import", empty.to_str().unwrap()], "");
    assert!(run.stderr.contains("not a mesh store"), "{}", run.stderr);
    let junk = node.dir.path().join("junk.sqlite");
    std::fs::write(
        &junk,
        "this is not a database, just text that is long enough",
    )
    .unwrap();
    let run = node.run(&["store", "import", junk.to_str().unwrap()], "");
    assert_ne!(run.code, 0);
    assert_eq!(node.ok(&["mem", "ls", "--json"], "").stdout, "[]\n");
}

/// Rows are streamed in group commits instead of collected whole: a file larger than one
/// commit imports every row, and a bad row among them is skipped on its own.
#[test]
fn a_store_larger_than_one_commit_imports_every_row() {
    let node = TestNode::new("a");
    let source = node.dir.path().join("large.sqlite");
    let conn = Connection::open(&source).unwrap();
    conn.execute_batch(meshd::store::SCHEMA).unwrap();
    let rows = 7_500;
    let insert =
        "INSERT INTO mesh_memory (scope, key, value, node_id, updated_at) VALUES (?1,?2,?3,?4,?5)";
    conn.execute_batch("BEGIN").unwrap();
    for i in 0..rows {
        let node_id = if i == 4_321 { "" } else { "ceo" };
        conn.execute(
            insert,
            params![
                "mesh",
                format!("k{i}"),
                format!("v{i}"),
                node_id,
                1739123456
            ],
        )
        .unwrap();
    }
    conn.execute_batch("COMMIT").unwrap();
    let report = import(&node, &source);
    assert_eq!(
        report,
        json!({"memory": rows - 1, "skills": 0, "unchanged": 0, "skipped": 1})
    );
    let stored = node.json(&["mem", "ls", "--json"]);
    assert_eq!(stored.as_array().unwrap().len(), rows - 1);
}
