//! Phase 2: the reference shared store's SQLite tables in and out of the replica.
//!
//! Import is last-write-wins by `updated_at` (Unix seconds) through the replica's import, so
//! importing the same file twice changes nothing. Export creates the schema when absent and
//! upserts, never replacing a row newer than the replica's.

mod mirror;
mod owned;
pub mod rows;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::types::Value as Sql;
use rusqlite::{params, Connection, OpenFlags};
use serde::Serialize;
use serde_json::Value;

use crate::model::{secret, MemoryEntry, Scope, Skill, Stamp, Via};
use crate::replica::{Batch, ImportOutcome, Replica, ReplicaError, SharedReplica};
pub use mirror::Mirror;
pub use rows::{decode_value, encode_value, MemoryRow, SkillRow};

/// The reference `schema.sql` for the two mesh tables, as formats.md gives it.
pub const SCHEMA: &str = "\
CREATE TABLE IF NOT EXISTS mesh_memory (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  scope TEXT NOT NULL CHECK (scope IN ('node', 'mesh') OR scope LIKE 'user:%'),
  key TEXT NOT NULL,
  value TEXT NOT NULL,
  node_id TEXT NOT NULL,
  updated_at INTEGER NOT NULL,
  UNIQUE(scope, key)
);
CREATE INDEX IF NOT EXISTS idx_mesh_memory_scope_key ON mesh_memory(scope, key);
CREATE INDEX IF NOT EXISTS idx_mesh_memory_updated_at ON mesh_memory(updated_at);
CREATE TABLE IF NOT EXISTS mesh_skills (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  name TEXT NOT NULL UNIQUE,
  source_node TEXT NOT NULL,
  content TEXT,
  path TEXT,
  updated_at INTEGER NOT NULL,
  CHECK (content IS NOT NULL OR path IS NOT NULL)
);
CREATE INDEX IF NOT EXISTS idx_mesh_skills_name ON mesh_skills(name);
CREATE INDEX IF NOT EXISTS idx_mesh_skills_updated_at ON mesh_skills(updated_at);
";

/// How long to wait for another writer (a dashboard, the reference API) to release the file.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path}: {source}")]
    Sqlite {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error("{0} does not exist")]
    Missing(PathBuf),
    #[error("{0} has neither a mesh_memory nor a mesh_skills table: it is not a mesh store")]
    NotAStore(PathBuf),
    #[error(transparent)]
    Replica(#[from] ReplicaError),
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ImportReport {
    /// Rows that changed the replica.
    pub memory: usize,
    pub skills: usize,
    /// Rows the replica already held, or held newer (`not_applied` says which and why).
    pub unchanged: usize,
    /// Rows that could not be imported; `reasons` says why.
    pub skipped: usize,
    #[serde(skip)]
    pub reasons: Vec<String>,
    /// Among `unchanged`, the rows not applied because the replica holds a newer version or
    /// one that wins the tie at the same `updated_at`: the row and why.
    #[serde(skip)]
    pub not_applied: Vec<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ExportReport {
    /// Rows inserted or updated.
    pub memory: usize,
    pub skills: usize,
    /// Rows deleted because the replica no longer has them (`prune` only).
    pub removed: usize,
}

/// Rows read and imported per group commit: bounds the memory an import takes whatever the
/// size of the file (the rows are streamed from SQLite, never collected whole).
const IMPORT_BATCH_ROWS: usize = 2_000;

/// Imports every row of a reference store into the replica, streamed in group commits of
/// `IMPORT_BATCH_ROWS`. Imports are last-writer-wins and idempotent, so an import cut short
/// (a full disk, a crash) is finished by running it again.
pub fn import(path: &Path, replica: &SharedReplica) -> Result<ImportReport, StoreError> {
    if !path.exists() {
        return Err(StoreError::Missing(path.to_path_buf()));
    }
    let sqlite = |source| StoreError::Sqlite {
        path: path.to_path_buf(),
        source,
    };
    let conn =
        Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY).map_err(sqlite)?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(sqlite)?;
    let has = |table| has_table(&conn, table).map_err(sqlite);
    let (memory_table, skills_table) = (has("mesh_memory")?, has("mesh_skills")?);
    if !memory_table && !skills_table {
        return Err(StoreError::NotAStore(path.to_path_buf()));
    }
    let mut report = ImportReport::default();
    if memory_table {
        // With meshd's side table, a row meshd wrote comes back into the scope it came from.
        let rows = match has("meshd_rows")? {
            true => {
                "SELECT m.scope, m.key, m.value, m.node_id, m.updated_at, r.scope, r.digest \
                 FROM mesh_memory m LEFT JOIN meshd_rows r \
                 ON r.tbl = 'mesh_memory' AND r.row_id = m.id ORDER BY m.id"
            }
            false => {
                "SELECT scope, key, value, node_id, updated_at, NULL, NULL \
                 FROM mesh_memory ORDER BY id"
            }
        };
        import_rows(
            &conn,
            rows,
            memory_entry,
            replica,
            &mut report,
            |batch, entry| {
                let row = format!("memory {}:{}", entry.scope, entry.key);
                (
                    batch.import_memory_judged(entry, Via::Store),
                    |r: &mut ImportReport| &mut r.memory,
                    row,
                )
            },
        )
        .map_err(|e| e.into_store_error(path))?;
    }
    if skills_table {
        let rows =
            "SELECT name, source_node, content, path, updated_at FROM mesh_skills ORDER BY id";
        import_rows(
            &conn,
            rows,
            skill_row,
            replica,
            &mut report,
            |batch, skill| {
                let row = format!("skill {}", skill.name);
                (
                    import_skill(batch, skill),
                    |r: &mut ImportReport| &mut r.skills,
                    row,
                )
            },
        )
        .map_err(|e| e.into_store_error(path))?;
    }
    Ok(report)
}

/// What can stop an import part way: reading the file, or the replica itself.
enum ImportFailure {
    Sqlite(rusqlite::Error),
    Replica(ReplicaError),
}

impl ImportFailure {
    fn into_store_error(self, path: &Path) -> StoreError {
        match self {
            ImportFailure::Sqlite(source) => StoreError::Sqlite {
                path: path.to_path_buf(),
                source,
            },
            ImportFailure::Replica(error) => StoreError::Replica(error),
        }
    }
}

/// The counter of an import report that a changed row adds to.
type Counter = fn(&mut ImportReport) -> &mut usize;

/// Streams the rows of `query` (converted by `convert`) into the replica, one group commit
/// per `IMPORT_BATCH_ROWS`.
fn import_rows<T>(
    conn: &Connection,
    query: &str,
    convert: fn(&rusqlite::Row<'_>) -> rusqlite::Result<Row<T>>,
    replica: &SharedReplica,
    report: &mut ImportReport,
    apply: impl Fn(&mut Batch<'_>, T) -> (Result<ImportOutcome, ReplicaError>, Counter, String),
) -> Result<(), ImportFailure>
where
    T: Clone,
{
    let mut statement = conn.prepare(query).map_err(ImportFailure::Sqlite)?;
    let mut rows = statement.query([]).map_err(ImportFailure::Sqlite)?;
    loop {
        let mut chunk = Vec::with_capacity(IMPORT_BATCH_ROWS);
        while chunk.len() < IMPORT_BATCH_ROWS {
            let Some(row) = rows.next().map_err(ImportFailure::Sqlite)? else {
                break;
            };
            chunk.push(convert(row).map_err(ImportFailure::Sqlite)?);
        }
        if chunk.is_empty() {
            return Ok(());
        }
        // The batch may run more than once (skill text is edited off the lock): each run
        // counts afresh, and only the last run's counts are kept.
        let counted = replica
            .batch(|batch| {
                let mut counted = ImportReport::default();
                for row in &chunk {
                    match row.clone() {
                        Ok(item) => {
                            let (result, counter, row) = apply(batch, item);
                            counted.record(refused(result), counter, row)?;
                        }
                        Err(reason) => counted.skip(reason),
                    }
                }
                Ok(counted)
            })
            .map_err(ImportFailure::Replica)?;
        report.add(counted);
    }
}

/// A row that could not become an entry carries the reason.
type Row<T> = Result<T, String>;

#[derive(Debug)]
enum Refused {
    Row(String),
    Store(ReplicaError),
}

fn refused(result: Result<ImportOutcome, ReplicaError>) -> Result<ImportOutcome, Refused> {
    result.map_err(|error| match error.into_refusal() {
        Ok(reason) => Refused::Row(reason.to_string()),
        Err(error) => Refused::Store(error),
    })
}

impl ImportReport {
    /// A row that could not become an entry.
    fn skip(&mut self, reason: String) {
        self.skipped += 1;
        self.reasons.push(reason);
    }

    fn add(&mut self, other: ImportReport) {
        self.memory += other.memory;
        self.skills += other.skills;
        self.unchanged += other.unchanged;
        self.skipped += other.skipped;
        self.reasons.extend(other.reasons);
        self.not_applied.extend(other.not_applied);
    }

    /// Counts what became of `row` (named as `memory <scope>:<key>` or `skill <name>`).
    fn record(
        &mut self,
        outcome: Result<ImportOutcome, Refused>,
        changed: impl Fn(&mut Self) -> &mut usize,
        row: String,
    ) -> Result<(), ReplicaError> {
        match outcome {
            Ok(ImportOutcome::Applied) => *changed(self) += 1,
            Ok(ImportOutcome::Held) => self.unchanged += 1,
            Ok(ImportOutcome::NotApplied(reason)) => {
                self.unchanged += 1;
                self.not_applied.push(format!("{row}: {reason}"));
            }
            Err(Refused::Row(reason)) => {
                self.skipped += 1;
                self.reasons.push(reason);
            }
            Err(Refused::Store(error)) => return Err(error),
        }
        Ok(())
    }
}

/// The skill's description is meshd's own (no column holds one), so the held one is kept.
fn import_skill(batch: &mut Batch<'_>, mut skill: Skill) -> Result<ImportOutcome, ReplicaError> {
    if let Some(path) = &skill.path {
        secret::check_text("skill path", path).map_err(|e| ReplicaError::Invalid(e.into()))?;
    }
    if let Some(held) = batch
        .current_skill(&skill.name)?
        .filter(|held| !held.deleted)
    {
        skill.description = held.description;
    }
    batch.import_skill_judged(skill)
}

fn has_table(conn: &Connection, table: &str) -> rusqlite::Result<bool> {
    conn.prepare_cached("SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = ?1")?
        .query_row([table], |row| row.get::<_, i64>(0))
        .map(|count| count > 0)
}

/// A `mesh_memory` row: the five columns, then, when meshd wrote it, the scope and digest
/// meshd recorded (`owned`).
fn memory_entry(row: &rusqlite::Row<'_>) -> rusqlite::Result<Row<MemoryEntry>> {
    let column = |i| row.get::<_, Sql>(i);
    let recorded = match (column(5)?, column(6)?) {
        (Sql::Text(scope), Sql::Text(digest)) => Some((scope, digest)),
        _ => None,
    };
    Ok(memory_columns(
        [column(0)?, column(1)?, column(2)?, column(3)?, column(4)?],
        recorded,
    ))
}

fn memory_columns(columns: [Sql; 5], recorded: Option<(String, String)>) -> Row<MemoryEntry> {
    let [scope, key, value, node_id, updated_at] = columns;
    let bad = |what: &str| format!("mesh_memory row with {what}");
    let node_id = text(node_id)
        .filter(|id| !id.is_empty())
        .ok_or(bad("no node_id"))?;
    let scope = text(scope).ok_or(bad("no scope"))?;
    let key = text(key).ok_or(bad("no key"))?;
    let own_scope = match (&recorded, &value, &updated_at) {
        (Some((own, digest)), Sql::Text(stored), Sql::Integer(seconds)) => {
            let now = owned::memory_digest(&scope, &key, stored, &node_id, *seconds);
            (now == *digest).then(|| own.clone())
        }
        _ => None,
    };
    // A row meshd wrote names its entry's own scope in the side table (the schema has only
    // `node`, whoever owns it); any other row's `node` is its writer's, as in the reference.
    let scope = match own_scope {
        Some(own) => Scope::parse(&own, &node_id),
        None => Scope::parse_for(&scope, &node_id),
    }
    .map_err(|e| e.to_string())?;
    let value = match value {
        Sql::Text(text) => decode_value(&text),
        Sql::Integer(n) => Value::from(n),
        Sql::Real(x) => Value::from(x),
        _ => return Err(bad("a value that is not text")),
    };
    Ok(MemoryEntry {
        scope,
        key,
        value,
        node_id,
        updated_at: stamp(updated_at).ok_or(bad("an invalid updated_at"))?,
        deleted: false,
        author: None,
        claim: None,
    })
}

fn skill_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Row<Skill>> {
    let column = |i| row.get::<_, Sql>(i);
    Ok(skill(
        column(0)?,
        column(1)?,
        column(2)?,
        column(3)?,
        column(4)?,
    ))
}

fn skill(name: Sql, source: Sql, content: Sql, path: Sql, updated_at: Sql) -> Row<Skill> {
    let bad = |what: &str| format!("mesh_skills row with {what}");
    let (content, path) = (text(content), text(path));
    if content.is_none() && path.is_none() {
        return Err(bad("neither content nor path"));
    }
    Ok(Skill {
        name: text(name).ok_or(bad("no name"))?,
        content: content.unwrap_or_default(),
        path,
        description: String::new(),
        source_node: text(source)
            .filter(|s| !s.is_empty())
            .ok_or(bad("no source_node"))?,
        updated_at: stamp(updated_at).ok_or(bad("an invalid updated_at"))?,
        deleted: false,
    })
}

fn text(value: Sql) -> Option<String> {
    match value {
        Sql::Text(text) => Some(text),
        _ => None,
    }
}

fn stamp(value: Sql) -> Option<Stamp> {
    match value {
        Sql::Integer(seconds) => Stamp::checked_from_unix_seconds(u64::try_from(seconds).ok()?),
        _ => None,
    }
}

/// Writes the replica's live entries into a reference store, creating the file and schema
/// when absent. A row is replaced only by a version at least as new (by `updated_at`, then
/// node id); `prune` also deletes the rows meshd wrote (`owned`) that the replica no longer
/// has. Rows others wrote are never deleted.
pub fn export(replica: &Replica, path: &Path, prune: bool) -> Result<ExportReport, StoreError> {
    let sqlite = |source| StoreError::Sqlite {
        path: path.to_path_buf(),
        source,
    };
    let mut conn = connect(path)?;
    let (memory, skills) = (replica.list_memory(None)?, replica.list_skills()?);
    let tx = conn.transaction().map_err(sqlite)?;
    let report = write_rows(&tx, &memory, &skills, prune).map_err(sqlite)?;
    tx.commit().map_err(sqlite)?;
    Ok(report)
}

/// Opens (or creates) a store to write into, with the schema.
fn connect(path: &Path) -> Result<Connection, StoreError> {
    let sqlite = |source| StoreError::Sqlite {
        path: path.to_path_buf(),
        source,
    };
    let conn = Connection::open(path).map_err(sqlite)?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(sqlite)?;
    conn.execute_batch(SCHEMA).map_err(sqlite)?;
    conn.execute_batch(owned::SIDE_TABLE).map_err(sqlite)?;
    // Each row written runs a dozen statements (`owned`); they are parsed once, not per row.
    conn.set_prepared_statement_cache_capacity(STATEMENTS_CACHED);
    Ok(conn)
}

/// Prepared statements a connection keeps: more than the statements of a row's write.
const STATEMENTS_CACHED: usize = 32;

const UPSERT_MEMORY: &str = "\
INSERT INTO mesh_memory (scope, key, value, node_id, updated_at) VALUES (?1, ?2, ?3, ?4, ?5)
ON CONFLICT(scope, key) DO UPDATE SET
  value = excluded.value, node_id = excluded.node_id, updated_at = excluded.updated_at
WHERE (excluded.updated_at, excluded.node_id) >= (mesh_memory.updated_at, mesh_memory.node_id)
  AND (excluded.value, excluded.node_id, excluded.updated_at)
      IS NOT (mesh_memory.value, mesh_memory.node_id, mesh_memory.updated_at)";

const UPSERT_SKILL: &str = "\
INSERT INTO mesh_skills (name, source_node, content, path, updated_at) VALUES (?1, ?2, ?3, ?4, ?5)
ON CONFLICT(name) DO UPDATE SET
  source_node = excluded.source_node, content = excluded.content, path = excluded.path,
  updated_at = excluded.updated_at
WHERE (excluded.updated_at, excluded.source_node) >= (mesh_skills.updated_at, mesh_skills.source_node)
  AND (excluded.source_node, excluded.content, excluded.path, excluded.updated_at)
      IS NOT (mesh_skills.source_node, mesh_skills.content, mesh_skills.path, mesh_skills.updated_at)";

/// Upserts one memory row with a prepared `UPSERT_MEMORY`, records it as meshd's
/// (`owned`) with `scope`, the entry's own scope, and re-indexes it in the reference's
/// full-text table; the rows it changed.
fn upsert_memory(
    conn: &Connection,
    upsert: &mut rusqlite::Statement<'_>,
    row: &MemoryRow,
    scope: &Scope,
) -> rusqlite::Result<usize> {
    let value = encode_value(&row.value);
    let updated_at = row.updated_at as i64;
    let changed = upsert.execute(params![row.scope, row.key, value, row.node_id, updated_at])?;
    if owned::claim_memory(conn, row, &scope.to_string())? && changed > 0 {
        owned::fts_put(conn, row)?;
    }
    Ok(changed)
}

/// Upserts one skill row with a prepared `UPSERT_SKILL` and records it as meshd's; the rows
/// it changed.
fn upsert_skill(
    conn: &Connection,
    upsert: &mut rusqlite::Statement<'_>,
    row: &SkillRow,
) -> rusqlite::Result<usize> {
    let changed = upsert.execute(params![
        row.name,
        row.source_node,
        row.content,
        row.path,
        row.updated_at as i64
    ])?;
    owned::claim_skill(conn, row)?;
    Ok(changed)
}

fn write_rows(
    conn: &Connection,
    memory: &[MemoryEntry],
    skills: &[Skill],
    prune: bool,
) -> rusqlite::Result<ExportReport> {
    let mut report = ExportReport::default();
    let mut memory_keys = HashSet::new();
    let mut upsert = conn.prepare(UPSERT_MEMORY)?;
    for entry in memory {
        let row = MemoryRow::new(entry, sqlite_scope(&entry.scope));
        report.memory += upsert_memory(conn, &mut upsert, &row, &entry.scope)?;
        memory_keys.insert((row.scope, row.key));
    }
    let mut names = HashSet::new();
    let mut upsert = conn.prepare(UPSERT_SKILL)?;
    for skill in skills {
        let row = SkillRow::from(skill);
        report.skills += upsert_skill(conn, &mut upsert, &row)?;
        names.insert(row.name);
    }
    if prune {
        report.removed = prune_rows(conn, &memory_keys, &names)?;
    }
    Ok(report)
}

/// The schema allows only `node`, `mesh` and `user:<id>`: every node scope is `node`, its
/// owner being the row's `node_id`.
fn sqlite_scope(scope: &Scope) -> String {
    match scope {
        Scope::Node(_) => "node".to_string(),
        other => other.to_string(),
    }
}

/// Deletes the rows the replica does not have, of those meshd wrote (`owned`): rows someone
/// else wrote into the file stay.
fn prune_rows(
    conn: &Connection,
    memory_keys: &HashSet<(String, String)>,
    names: &HashSet<String>,
) -> rusqlite::Result<usize> {
    let mut stale_memory = Vec::new();
    let mut rows = conn.prepare("SELECT scope, key FROM mesh_memory")?;
    for row in rows.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))? {
        let key = row?;
        if !memory_keys.contains(&key) {
            stale_memory.push(key);
        }
    }
    let mut stale_skills = Vec::new();
    let mut rows = conn.prepare("SELECT name FROM mesh_skills")?;
    for name in rows.query_map([], |r| r.get::<_, String>(0))? {
        let name = name?;
        if !names.contains(&name) {
            stale_skills.push(name);
        }
    }
    let mut removed = 0;
    for (scope, key) in &stale_memory {
        removed += owned::delete_memory(conn, scope, key)?;
    }
    for name in &stale_skills {
        removed += owned::delete_skill(conn, name)?;
    }
    Ok(removed)
}
