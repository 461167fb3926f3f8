//! The SQLite mirror (`[store] mirror`): a reference store kept up to date with the replica
//! by heads (`follow`). The first write of a process exports everything and deletes the rows
//! meshd wrote that the replica no longer has (`owned`: rows others wrote stay); after that, each write upserts or deletes
//! only the rows of the keys and skills that changed, in one transaction. The heads move on
//! only once it committed, so a write that failed (or a process that stopped) is redone:
//! by the next write, or by the next process's whole export.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rusqlite::Connection;

use super::{
    connect, export, owned, sqlite_scope, upsert_memory, upsert_skill, ExportReport, MemoryRow,
    SkillRow, StoreError, UPSERT_MEMORY, UPSERT_SKILL,
};
use crate::follow::{Moved, Moves, Seen};
use crate::model::{DocId, Scope};
use crate::replica::{Replica, ReplicaError, SharedReplica};

pub struct Mirror {
    path: PathBuf,
    /// What the file reflects, once this process has written it.
    seen: Mutex<Option<Seen>>,
}

/// The rows of what changed, read under the replica lock.
#[derive(Default)]
struct Rows {
    /// Per `(scope, key)` of the table, the live entries that map to it, with their own
    /// scopes (every node scope is `node` there, so several may); none deletes the row.
    memory: BTreeMap<(String, String), Vec<(MemoryRow, Scope)>>,
    /// Per skill name, its row; `None` deletes it.
    skills: BTreeMap<String, Option<SkillRow>>,
}

impl Mirror {
    pub fn new(path: PathBuf) -> Mirror {
        Mirror {
            path,
            seen: Mutex::new(None),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Brings the file up to date with the replica.
    pub fn write(&self, replica: &SharedReplica) -> Result<ExportReport, StoreError> {
        let mut seen = self
            .seen
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let moves = replica.with(|r| Seen::moves(seen.as_ref(), r));
        if moves.is_empty() {
            return Ok(ExportReport::default());
        }
        let report = if moves.any_whole() {
            replica.with(|r| export(r, &self.path, true))?
        } else {
            let rows = replica.with(|r| changed_rows(r, &moves))?;
            self.apply(rows)?
        };
        *seen = Some(moves.heads);
        Ok(report)
    }

    fn apply(&self, rows: Rows) -> Result<ExportReport, StoreError> {
        let sqlite = |source| StoreError::Sqlite {
            path: self.path.clone(),
            source,
        };
        let mut conn = connect(&self.path)?;
        let tx = conn.transaction().map_err(sqlite)?;
        let report = apply_rows(&tx, rows).map_err(sqlite)?;
        tx.commit().map_err(sqlite)?;
        Ok(report)
    }
}

fn changed_rows(replica: &Replica, moves: &Moves) -> Result<Rows, ReplicaError> {
    let mut rows = Rows::default();
    let node_scopes: Vec<Scope> = replica
        .scopes()
        .into_iter()
        .filter(|scope| matches!(scope, Scope::Node(_)))
        .collect();
    for (doc, moved) in &moves.docs {
        let Moved::Keys(keys) = moved else {
            continue;
        };
        match doc {
            DocId::Memory(scope) | DocId::Bucket(scope, _) => {
                // A key of one node scope is the row of that key in every node scope.
                let sharing = match scope {
                    Scope::Node(_) => node_scopes.as_slice(),
                    other => std::slice::from_ref(other),
                };
                for key in keys {
                    let mut live = Vec::new();
                    for scope in sharing {
                        if let Some(entry) = replica.get_memory(scope, key)? {
                            let row = MemoryRow::new(&entry, sqlite_scope(&entry.scope));
                            live.push((row, entry.scope));
                        }
                    }
                    rows.memory.insert((sqlite_scope(scope), key.clone()), live);
                }
            }
            DocId::Skills => {
                for name in keys {
                    let row = replica.get_skill(name)?.map(|skill| SkillRow::from(&skill));
                    rows.skills.insert(name.clone(), row);
                }
            }
        }
    }
    Ok(rows)
}

fn apply_rows(conn: &Connection, rows: Rows) -> rusqlite::Result<ExportReport> {
    let mut report = ExportReport::default();
    let mut upsert = conn.prepare(UPSERT_MEMORY)?;
    for ((scope, key), live) in rows.memory {
        // Only a row meshd wrote is deleted (`owned`).
        if live.is_empty() {
            report.removed += owned::delete_memory(conn, &scope, &key)?;
        }
        for (row, scope) in live {
            report.memory += upsert_memory(conn, &mut upsert, &row, &scope)?;
        }
    }
    let mut upsert = conn.prepare(UPSERT_SKILL)?;
    for (name, row) in rows.skills {
        match row {
            Some(row) => report.skills += upsert_skill(conn, &mut upsert, &row)?,
            None => report.removed += owned::delete_skill(conn, &name)?,
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn count(path: &Path, table: &str) -> i64 {
        let conn = Connection::open(path).unwrap();
        conn.query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0))
            .unwrap()
    }

    /// After the first export, a write touches the rows of what changed only; a row someone
    /// else added stays (`owned`).
    #[test]
    fn a_write_upserts_and_deletes_only_what_changed() {
        let temp = tempfile::tempdir().unwrap();
        let replica = SharedReplica::new(
            Replica::open(
                &temp.path().join("store"),
                crate::trust::NodeKey::insecure_from_name("own"),
            )
            .unwrap(),
        );
        replica
            .batch(|batch| {
                for key in 0..50 {
                    batch.put_memory(&Scope::Mesh, &format!("k{key}"), json!(key))?;
                }
                batch.put_memory(&Scope::Node("own".into()), "shared", json!("own"))?;
                batch.put_memory(&Scope::Node("peer".into()), "shared", json!("peer"))?;
                Ok(())
            })
            .unwrap();
        let path = temp.path().join("mirror.sqlite");
        let mirror = Mirror::new(path.clone());
        let first = mirror.write(&replica).unwrap();
        assert_eq!(first.memory, 52);
        let conn = Connection::open(&path).unwrap();
        conn.execute(
            "INSERT INTO mesh_memory (scope, key, value, node_id, updated_at) \
             VALUES ('mesh', 'theirs', '1', 'x', 1)",
            [],
        )
        .unwrap();

        replica
            .batch(|batch| {
                batch.put_memory(&Scope::Mesh, "k0", json!("new"))?;
                batch.delete_memory(&Scope::Mesh, "k1")?;
                batch.delete_memory(&Scope::Node("own".into()), "shared")
            })
            .unwrap();
        let report = mirror.write(&replica).unwrap();
        assert_eq!(
            report,
            ExportReport {
                memory: 1,
                skills: 0,
                removed: 1
            },
            "k0 upserted, k1 deleted, node:shared still held by the peer's scope"
        );
        let value: String = conn
            .query_row(
                "SELECT value FROM mesh_memory WHERE scope = 'mesh' AND key = 'k0'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(value, "new");
        assert_eq!(count(&path, "mesh_memory"), 51, "theirs stays, k1 went");
        assert_eq!(mirror.write(&replica).unwrap(), ExportReport::default());
    }
}
