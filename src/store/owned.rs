//! Which rows of a reference store meshd wrote, so that meshd deletes only those: the file
//! may be shared with the reference `api-server.js`, a dashboard or a person, and what they
//! wrote is theirs. The side table `meshd_rows` holds, per row meshd wrote, its table and
//! `id`, a BLAKE3 digest of the row as meshd wrote it, and for memory rows meshd's own scope
//! (`node:<id>` where the schema only allows `node`). A row is meshd's while it still holds
//! exactly what meshd wrote: once someone else rewrites it (the reference upserts in place,
//! keeping the id), its digest differs and it is theirs. `AUTOINCREMENT` ids are never
//! reused, so a deleted row's id cannot come back as someone else's row.
//!
//! The reference's optional full-text table (`mesh_memory_fts`, filled by its client on
//! every put) is kept in step with the memory rows meshd writes and deletes, with the text
//! the reference client would index.

use rusqlite::{params, Connection, OptionalExtension};
use serde_json::Value;

use super::rows::{encode_value, MemoryRow, SkillRow};

/// The side table; the reference tools never read it.
pub const SIDE_TABLE: &str = "\
CREATE TABLE IF NOT EXISTS meshd_rows (
  tbl TEXT NOT NULL,
  row_id INTEGER NOT NULL,
  digest TEXT NOT NULL,
  scope TEXT,
  PRIMARY KEY (tbl, row_id)
);";

const MEMORY: &str = "mesh_memory";
const SKILLS: &str = "mesh_skills";

/// A digest of column texts, each length-prefixed so that no two rows share one.
fn digest(columns: &[&str]) -> String {
    let mut hasher = blake3::Hasher::new();
    for column in columns {
        hasher.update(&(column.len() as u64).to_le_bytes());
        hasher.update(column.as_bytes());
    }
    hasher.finalize().to_hex().to_string()
}

/// The digest of a memory row from its stored columns.
pub fn memory_digest(
    scope: &str,
    key: &str,
    value: &str,
    node_id: &str,
    updated_at: i64,
) -> String {
    digest(&[MEMORY, scope, key, value, node_id, &updated_at.to_string()])
}

fn skill_digest(row: &SkillRow) -> String {
    let (content, path) = (row.content.as_deref(), row.path.as_deref());
    let optional = |text: Option<&str>| text.map_or_else(|| "\0null".to_string(), str::to_string);
    digest(&[
        SKILLS,
        &row.name,
        &row.source_node,
        &optional(content),
        &optional(path),
        &row.updated_at.to_string(),
    ])
}

/// What a memory row holds after meshd wrote it: the digest of the stored text.
fn written_memory_digest(row: &MemoryRow) -> String {
    let value = encode_value(&row.value);
    memory_digest(
        &row.scope,
        &row.key,
        &value,
        &row.node_id,
        row.updated_at as i64,
    )
}

/// The memory row at `(scope, key)` now: its id and digest.
fn current_memory(
    conn: &Connection,
    scope: &str,
    key: &str,
) -> rusqlite::Result<Option<(i64, String)>> {
    conn.prepare_cached(
        "SELECT id, value, node_id, updated_at FROM mesh_memory WHERE scope = ?1 AND key = ?2",
    )?
    .query_row(params![scope, key], |r| {
        let value = r.get::<_, rusqlite::types::Value>(1)?;
        let value = match value {
            rusqlite::types::Value::Text(text) => text,
            // Not text: not something meshd wrote.
            _ => String::from("\0not text"),
        };
        let digest = memory_digest(scope, key, &value, &r.get::<_, String>(2)?, r.get(3)?);
        Ok((r.get(0)?, digest))
    })
    .optional()
}

fn current_skill(conn: &Connection, name: &str) -> rusqlite::Result<Option<(i64, String)>> {
    conn.prepare_cached(
        "SELECT id, source_node, content, path, updated_at FROM mesh_skills WHERE name = ?1",
    )?
    .query_row(params![name], |r| {
        let row = SkillRow {
            name: name.to_string(),
            source_node: r.get(1)?,
            content: r.get(2)?,
            path: r.get(3)?,
            updated_at: r.get::<_, i64>(4)?.max(0) as u64,
        };
        Ok((r.get(0)?, skill_digest(&row)))
    })
    .optional()
}

/// Records the row now at `row`'s key as meshd's when it holds exactly `row` (meshd just
/// wrote it, or wrote it before the side table existed); `scope` is meshd's name of the
/// entry's scope. A row holding something else is left to its writer.
pub fn claim_memory(conn: &Connection, row: &MemoryRow, scope: &str) -> rusqlite::Result<bool> {
    let written = written_memory_digest(row);
    match current_memory(conn, &row.scope, &row.key)? {
        Some((id, current)) if current == written => {
            conn.prepare_cached("INSERT OR REPLACE INTO meshd_rows (tbl, row_id, digest, scope) VALUES (?1, ?2, ?3, ?4)")?.execute(
                params![MEMORY, id, written, scope],
            )?;
            Ok(true)
        }
        _ => Ok(false),
    }
}

pub fn claim_skill(conn: &Connection, row: &SkillRow) -> rusqlite::Result<bool> {
    let written = skill_digest(row);
    match current_skill(conn, &row.name)? {
        Some((id, current)) if current == written => {
            conn.prepare_cached("INSERT OR REPLACE INTO meshd_rows (tbl, row_id, digest, scope) VALUES (?1, ?2, ?3, NULL)")?.execute(
                params![SKILLS, id, written],
            )?;
            Ok(true)
        }
        _ => Ok(false),
    }
}

/// The id of a row meshd wrote and that still holds what meshd wrote.
fn owned_id(
    conn: &Connection,
    table: &str,
    current: Option<(i64, String)>,
) -> rusqlite::Result<Option<i64>> {
    let Some((id, digest)) = current else {
        return Ok(None);
    };
    let recorded: Option<String> = conn
        .prepare_cached("SELECT digest FROM meshd_rows WHERE tbl = ?1 AND row_id = ?2")?
        .query_row(params![table, id], |r| r.get(0))
        .optional()?;
    Ok((recorded.as_deref() == Some(digest.as_str())).then_some(id))
}

/// Deletes the memory row at `(scope, key)` if meshd wrote it; the rows deleted (0 or 1).
pub fn delete_memory(conn: &Connection, scope: &str, key: &str) -> rusqlite::Result<usize> {
    let Some(id) = owned_id(conn, MEMORY, current_memory(conn, scope, key)?)? else {
        return Ok(0);
    };
    conn.prepare_cached("DELETE FROM meshd_rows WHERE tbl = ?1 AND row_id = ?2")?
        .execute(params![MEMORY, id])?;
    fts_delete(conn, scope, key)?;
    conn.prepare_cached("DELETE FROM mesh_memory WHERE id = ?1")?
        .execute([id])
}

pub fn delete_skill(conn: &Connection, name: &str) -> rusqlite::Result<usize> {
    let Some(id) = owned_id(conn, SKILLS, current_skill(conn, name)?)? else {
        return Ok(0);
    };
    conn.prepare_cached("DELETE FROM meshd_rows WHERE tbl = ?1 AND row_id = ?2")?
        .execute(params![SKILLS, id])?;
    conn.prepare_cached("DELETE FROM mesh_skills WHERE id = ?1")?
        .execute([id])
}

/// The reference's full-text table, when the file has one.
pub fn has_fts(conn: &Connection) -> rusqlite::Result<bool> {
    super::has_table(conn, "mesh_memory_fts")
}

/// Re-indexes `row` as the reference client does on every put.
pub fn fts_put(conn: &Connection, row: &MemoryRow) -> rusqlite::Result<()> {
    if !has_fts(conn)? {
        return Ok(());
    }
    fts_delete(conn, &row.scope, &row.key)?;
    conn.prepare_cached("INSERT INTO mesh_memory_fts (scope, key, content) VALUES (?1, ?2, ?3)")?
        .execute(params![row.scope, row.key, fts_text(&row.value, &row.key)])?;
    Ok(())
}

fn fts_delete(conn: &Connection, scope: &str, key: &str) -> rusqlite::Result<()> {
    if has_fts(conn)? {
        conn.prepare_cached("DELETE FROM mesh_memory_fts WHERE scope = ?1 AND key = ?2")?
            .execute(params![scope, key])?;
    }
    Ok(())
}

/// The text the reference client indexes: the key, then a string value, or the strings,
/// numbers and literals of an object or array (four levels deep, `_meta` left out), joined
/// by spaces, at most 50,000 characters.
pub fn fts_text(value: &Value, key: &str) -> String {
    let mut text = key.to_string();
    match value {
        Value::String(s) => {
            text.push(' ');
            text.push_str(s);
        }
        Value::Array(_) | Value::Object(_) => {
            text.push(' ');
            text.push_str(&flatten(value, 0));
        }
        _ => {}
    }
    text.chars().take(50_000).collect()
}

fn flatten(value: &Value, depth: usize) -> String {
    if depth > 3 {
        return String::new();
    }
    match value {
        Value::String(s) => s.clone(),
        Value::Array(items) => (items.iter().map(|v| flatten(v, depth + 1)))
            .collect::<Vec<_>>()
            .join(" "),
        Value::Object(map) => (map.iter().filter(|(k, _)| k.as_str() != "_meta"))
            .map(|(_, v)| flatten(v, depth + 1))
            .collect::<Vec<_>>()
            .join(" "),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn fts_text_is_the_reference_clients() {
        assert_eq!(fts_text(&json!("Q3 launch"), "focus"), "focus Q3 launch");
        assert_eq!(fts_text(&json!(42), "n"), "n");
        let nested = json!({"a": "x", "_meta": "hidden", "b": [1, true, null, {"c": "y"}]});
        assert_eq!(fts_text(&nested, "k"), "k x 1 true null y");
        assert_eq!(fts_text(&json!([[[["gone"]]]]), "k"), "k ");
        assert_eq!(fts_text(&json!([[["kept"]]]), "k"), "k kept");
    }
}
