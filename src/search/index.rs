//! The index on disk: one SQLite file with an FTS5 table over every memory entry and skill,
//! the heads of each document it reflects, and the embedding vectors when there are any.
//!
//! The FTS5 table is contentless (`content=''`, `contentless_delete=1`) and keeps no
//! positions (`detail=column`): the text lives in the replica, so the index holds only which
//! rows and columns hold each word. `items` gives each entry its row id, in order of
//! arrival: FTS5 stores row ids as deltas, and ids hashed from the key (tried first) made
//! each posting a 9-byte varint and the index 2.5× the text. `items` also keeps a hash of the
//! text indexed, so an unchanged text is never indexed again.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use automerge::ChangeHash;
use rusqlite::{params, Connection, OptionalExtension};

use super::{ItemKind, SearchError};

/// Bump when the schema or what is indexed changes: an index of another version is rebuilt.
const SCHEMA_VERSION: &str = "2";

/// What the index holds for one memory entry or skill.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ItemKey {
    pub kind: ItemKind,
    /// The document's name: `mesh`, `user:<id>`, `node:<id>`, or `skills`.
    pub scope: String,
    /// The memory key or skill name.
    pub name: String,
}

/// An entry's searchable text, in three columns ranked by weight.
#[derive(Debug, Clone)]
pub struct Item {
    pub key: ItemKey,
    pub description: String,
    pub body: String,
}

impl Item {
    fn text_hash(&self) -> i64 {
        let mut hasher = blake3::Hasher::new();
        for part in [&self.key.name, &self.description, &self.body] {
            hasher.update(&(part.len() as u64).to_le_bytes());
            hasher.update(part.as_bytes());
        }
        let mut first = [0u8; 8];
        first.copy_from_slice(&hasher.finalize().as_bytes()[..8]);
        i64::from_le_bytes(first)
    }
}

/// How one document's rows change to match the replica.
#[derive(Debug, Default)]
pub struct DocUpdate {
    /// Whose rows change: a memory scope (its base document's name) or `skills`.
    pub doc: String,
    /// The heads the index reflects once this update is in, per document (a scope's base and
    /// its buckets); none for all but the last part of an update applied in parts. Empty
    /// heads forget a document that is gone.
    pub heads: Vec<(String, Vec<ChangeHash>)>,
    /// Drop every row of the document first (it was read whole).
    pub clear: bool,
    pub upserts: Vec<Item>,
    pub removals: Vec<ItemKey>,
}

/// Which rows a query may return.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RowFilter {
    Any,
    Kind(ItemKind),
    /// Memory of exactly this document.
    Scope(String),
    /// Memory of every `user:` document.
    UserScopes,
}

impl RowFilter {
    fn sql(&self) -> (&'static str, Option<String>) {
        match self {
            RowFilter::Any => ("1", None),
            RowFilter::Kind(kind) => ("items.kind = ?3", Some((*kind as u8).to_string())),
            RowFilter::Scope(scope) => ("items.kind = 0 AND items.scope = ?3", Some(scope.clone())),
            RowFilter::UserScopes => ("items.kind = 0 AND items.scope LIKE 'user:%'", None),
        }
    }

    pub fn admits(&self, key: &ItemKey) -> bool {
        match self {
            RowFilter::Any => true,
            RowFilter::Kind(kind) => key.kind == *kind,
            RowFilter::Scope(scope) => key.kind == ItemKind::Memory && &key.scope == scope,
            RowFilter::UserScopes => key.kind == ItemKind::Memory && key.scope.starts_with("user:"),
        }
    }
}

pub struct Index {
    path: PathBuf,
    conn: Connection,
    /// The heads each document was indexed at, as stored in `docs`.
    heads: HashMap<String, Vec<ChangeHash>>,
}

impl Index {
    /// Opens the index, or makes a new one when the file is missing, damaged, of another
    /// schema or of another node: it is derived data, rebuilt from the replica.
    pub fn open(path: &Path, node: &str) -> Result<Index, SearchError> {
        match Index::open_existing(path, node) {
            Ok(index) => Ok(index),
            Err(reason) => {
                if path.exists() {
                    tracing::info!(path = %path.display(), %reason, "rebuilding the search index");
                }
                remove_database(path)?;
                Index::create(path, node)
            }
        }
    }

    fn open_existing(path: &Path, node: &str) -> Result<Index, String> {
        if !path.exists() {
            return Err("no index yet".into());
        }
        let conn = connect(path).map_err(|e| e.to_string())?;
        let check: String = conn
            .query_row("PRAGMA quick_check", [], |row| row.get(0))
            .map_err(|e| e.to_string())?;
        if check != "ok" {
            return Err(format!("damaged: {check}"));
        }
        let meta = |key: &str| -> Option<String> {
            conn.query_row("SELECT value FROM meta WHERE key = ?1", [key], |row| {
                row.get(0)
            })
            .optional()
            .ok()
            .flatten()
        };
        if meta("schema").as_deref() != Some(SCHEMA_VERSION) {
            return Err("another schema version".into());
        }
        if meta("node").as_deref() != Some(node) {
            return Err("made for another node".into());
        }
        let heads = read_heads(&conn).map_err(|e| e.to_string())?;
        Ok(Index {
            path: path.to_path_buf(),
            conn,
            heads,
        })
    }

    fn create(path: &Path, node: &str) -> Result<Index, SearchError> {
        let conn = connect(path).map_err(|e| SearchError::sqlite(path, e))?;
        conn.execute_batch(
            "CREATE TABLE meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
             CREATE TABLE docs(doc TEXT PRIMARY KEY, heads TEXT NOT NULL);
             CREATE TABLE items(id INTEGER PRIMARY KEY, kind INTEGER NOT NULL,
                                scope TEXT NOT NULL, name TEXT NOT NULL, text_hash INTEGER NOT NULL,
                                UNIQUE(scope, name));
             CREATE VIRTUAL TABLE items_fts USING fts5(name, description, body,
                 content='', contentless_delete=1, detail=column,
                 tokenize='porter unicode61 remove_diacritics 2');
             CREATE TABLE vectors(id INTEGER PRIMARY KEY, text_hash INTEGER NOT NULL,
                                  model TEXT NOT NULL, vector BLOB NOT NULL);",
        )
        .map_err(|e| SearchError::sqlite(path, e))?;
        conn.execute(
            "INSERT INTO meta(key, value) VALUES ('schema', ?1), ('node', ?2)",
            params![SCHEMA_VERSION, node],
        )
        .map_err(|e| SearchError::sqlite(path, e))?;
        Ok(Index {
            path: path.to_path_buf(),
            conn,
            heads: HashMap::new(),
        })
    }

    /// Deletes the index files, for a rebuild.
    pub fn discard(path: &Path) -> Result<(), SearchError> {
        remove_database(path)
    }

    pub fn indexed_heads(&self, doc: &str) -> &[ChangeHash] {
        self.heads.get(doc).map(Vec::as_slice).unwrap_or(&[])
    }

    pub fn documents(&self) -> impl Iterator<Item = &String> {
        self.heads.keys()
    }

    /// Brings one document's rows up to date, in one transaction with its heads.
    pub fn apply(&mut self, update: DocUpdate) -> Result<(), SearchError> {
        let path = self.path.clone();
        let fail = |e| SearchError::sqlite(&path, e);
        let tx = self.conn.transaction().map_err(fail)?;
        if update.clear {
            clear_document(&tx, &update.doc).map_err(fail)?;
        }
        for key in &update.removals {
            remove_row(&tx, key).map_err(fail)?;
        }
        for item in &update.upserts {
            upsert_row(&tx, item).map_err(fail)?;
        }
        for (doc, heads) in &update.heads {
            if heads.is_empty() {
                tx.execute("DELETE FROM docs WHERE doc = ?1", params![doc])
            } else {
                tx.execute(
                    "INSERT INTO docs(doc, heads) VALUES (?1, ?2)
                     ON CONFLICT(doc) DO UPDATE SET heads = excluded.heads",
                    params![doc, encode_heads(heads)],
                )
            }
            .map_err(fail)?;
        }
        tx.commit().map_err(fail)?;
        for (doc, heads) in update.heads {
            if heads.is_empty() {
                self.heads.remove(&doc);
            } else {
                self.heads.insert(doc, heads);
            }
        }
        Ok(())
    }

    /// The best `limit` rows for an FTS5 query, best first, with their BM25 score (lower is
    /// better, as FTS5 gives it). Names weigh 4, descriptions 2, bodies 1.
    pub fn full_text(
        &self,
        fts_query: &str,
        filter: &RowFilter,
        limit: usize,
    ) -> Result<Vec<(ItemKey, f64)>, SearchError> {
        let (condition, param) = filter.sql();
        let sql = format!(
            "SELECT items.kind, items.scope, items.name, bm25(items_fts, 4.0, 2.0, 1.0) AS score
             FROM items_fts JOIN items ON items.id = items_fts.rowid
             WHERE items_fts MATCH ?1 AND {condition}
             ORDER BY score LIMIT ?2"
        );
        let mut statement = self
            .conn
            .prepare_cached(&sql)
            .map_err(|e| SearchError::sqlite(&self.path, e))?;
        let limit = limit as i64;
        let rows = match &param {
            Some(value) => statement.query_map(params![fts_query, limit, value], read_hit),
            None => statement.query_map(params![fts_query, limit], read_hit),
        }
        .map_err(|e| SearchError::sqlite(&self.path, e))?;
        rows.collect::<Result<Vec<_>, _>>()
            .map_err(|e| SearchError::sqlite(&self.path, e))
    }

    /// Rows without a vector from `model` for their current text, up to `limit`.
    pub fn missing_vectors(&self, model: &str, limit: usize) -> Result<Vec<ItemKey>, SearchError> {
        let mut statement = self
            .conn
            .prepare_cached(
                "SELECT items.kind, items.scope, items.name, 0.0 FROM items
                 LEFT JOIN vectors ON vectors.id = items.id AND vectors.model = ?1
                                   AND vectors.text_hash = items.text_hash
                 WHERE vectors.id IS NULL LIMIT ?2",
            )
            .map_err(|e| SearchError::sqlite(&self.path, e))?;
        let rows = statement
            .query_map(params![model, limit as i64], read_hit)
            .map_err(|e| SearchError::sqlite(&self.path, e))?;
        rows.map(|row| row.map(|(key, _)| key))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| SearchError::sqlite(&self.path, e))
    }

    pub fn count_missing_vectors(&self, model: &str) -> Result<usize, SearchError> {
        self.conn
            .query_row(
                "SELECT count(*) FROM items LEFT JOIN vectors ON vectors.id = items.id
                    AND vectors.model = ?1 AND vectors.text_hash = items.text_hash
                 WHERE vectors.id IS NULL",
                [model],
                |row| row.get::<_, i64>(0),
            )
            .map(|n| n as usize)
            .map_err(|e| SearchError::sqlite(&self.path, e))
    }

    /// Stores a vector for an item's text as it was when read (`item`), unless the text has
    /// changed since: the vector would describe a text that is gone.
    pub fn store_vector(
        &mut self,
        item: &Item,
        model: &str,
        vector: &[f32],
    ) -> Result<bool, SearchError> {
        let bytes: Vec<u8> = vector.iter().flat_map(|x| x.to_le_bytes()).collect();
        self.conn
            .execute(
                "INSERT OR REPLACE INTO vectors(id, text_hash, model, vector)
                 SELECT id, text_hash, ?4, ?5 FROM items
                 WHERE scope = ?1 AND name = ?2 AND text_hash = ?3",
                params![
                    item.key.scope,
                    item.key.name,
                    item.text_hash(),
                    model,
                    bytes
                ],
            )
            .map(|changed| changed > 0)
            .map_err(|e| SearchError::sqlite(&self.path, e))
    }

    /// Every current vector from `model`, with its item.
    pub fn vectors(&self, model: &str) -> Result<Vec<(ItemKey, Vec<f32>)>, SearchError> {
        let mut statement = self
            .conn
            .prepare_cached(
                "SELECT items.kind, items.scope, items.name, vectors.vector FROM vectors
                 JOIN items ON items.id = vectors.id AND items.text_hash = vectors.text_hash
                 WHERE vectors.model = ?1",
            )
            .map_err(|e| SearchError::sqlite(&self.path, e))?;
        let rows = statement
            .query_map([model], |row| {
                let key = item_key(row)?;
                let bytes: Vec<u8> = row.get(3)?;
                let vector = bytes
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect();
                Ok((key, vector))
            })
            .map_err(|e| SearchError::sqlite(&self.path, e))?;
        rows.collect::<Result<Vec<_>, _>>()
            .map_err(|e| SearchError::sqlite(&self.path, e))
    }
}

fn connect(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    // Derived data: a crash may lose the last updates, never corrupt the file, and the heads
    // stored with each update make the next refresh redo what was lost.
    conn.execute_batch(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA busy_timeout = 5000;",
    )?;
    // A refresh runs a few statements per row: each is parsed once, not per row (a million
    // rows spent as much time parsing SQL as running it).
    conn.set_prepared_statement_cache_capacity(32);
    Ok(conn)
}

fn remove_database(path: &Path) -> Result<(), SearchError> {
    for suffix in ["", "-wal", "-shm", "-journal"] {
        let mut file = path.as_os_str().to_owned();
        file.push(suffix);
        match std::fs::remove_file(&file) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(SearchError::Io {
                    path: PathBuf::from(file),
                    source,
                })
            }
        }
    }
    Ok(())
}

fn read_heads(conn: &Connection) -> rusqlite::Result<HashMap<String, Vec<ChangeHash>>> {
    let mut statement = conn.prepare("SELECT doc, heads FROM docs")?;
    let rows = statement.query_map([], |row| {
        let doc: String = row.get(0)?;
        let heads: String = row.get(1)?;
        Ok((doc, decode_heads(&heads)))
    })?;
    rows.collect()
}

fn encode_heads(heads: &[ChangeHash]) -> String {
    heads
        .iter()
        .map(|h| h.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

/// Heads that do not parse read as none: the document is then indexed whole again.
fn decode_heads(text: &str) -> Vec<ChangeHash> {
    text.split(',')
        .filter(|h| !h.is_empty())
        .filter_map(|h| h.parse().ok())
        .collect()
}

fn clear_document(tx: &rusqlite::Transaction<'_>, doc: &str) -> rusqlite::Result<()> {
    let (kind, scope) = match doc {
        "skills" => (ItemKind::Skill as u8, "skills"),
        scope => (ItemKind::Memory as u8, scope),
    };
    tx.prepare_cached("DELETE FROM items_fts WHERE rowid IN (SELECT id FROM items WHERE kind = ?1 AND scope = ?2)")?.execute(
        params![kind, scope],
    )?;
    tx.prepare_cached(
        "DELETE FROM vectors WHERE id IN (SELECT id FROM items WHERE kind = ?1 AND scope = ?2)",
    )?
    .execute(params![kind, scope])?;
    tx.prepare_cached("DELETE FROM items WHERE kind = ?1 AND scope = ?2")?
        .execute(params![kind, scope])?;
    Ok(())
}

fn row_of(tx: &rusqlite::Transaction<'_>, key: &ItemKey) -> rusqlite::Result<Option<(i64, i64)>> {
    tx.prepare_cached("SELECT id, text_hash FROM items WHERE scope = ?1 AND name = ?2")?
        .query_row(params![key.scope, key.name], |row| {
            Ok((row.get(0)?, row.get(1)?))
        })
        .optional()
}

fn remove_row(tx: &rusqlite::Transaction<'_>, key: &ItemKey) -> rusqlite::Result<()> {
    let Some((id, _)) = row_of(tx, key)? else {
        return Ok(());
    };
    tx.prepare_cached("DELETE FROM items_fts WHERE rowid = ?1")?
        .execute([id])?;
    tx.prepare_cached("DELETE FROM items WHERE id = ?1")?
        .execute([id])?;
    tx.prepare_cached("DELETE FROM vectors WHERE id = ?1")?
        .execute([id])?;
    Ok(())
}

fn upsert_row(tx: &rusqlite::Transaction<'_>, item: &Item) -> rusqlite::Result<()> {
    let hash = item.text_hash();
    let id = match row_of(tx, &item.key)? {
        Some((_, stored)) if stored == hash => return Ok(()),
        Some((id, _)) => {
            tx.prepare_cached("DELETE FROM items_fts WHERE rowid = ?1")?
                .execute([id])?;
            tx.prepare_cached("UPDATE items SET text_hash = ?2 WHERE id = ?1")?
                .execute(params![id, hash])?;
            id
        }
        None => {
            tx.prepare_cached(
                "INSERT INTO items(kind, scope, name, text_hash) VALUES (?1, ?2, ?3, ?4)",
            )?
            .execute(params![
                item.key.kind as u8,
                item.key.scope,
                item.key.name,
                hash
            ])?;
            tx.last_insert_rowid()
        }
    };
    tx.prepare_cached(
        "INSERT INTO items_fts(rowid, name, description, body) VALUES (?1, ?2, ?3, ?4)",
    )?
    .execute(params![id, item.key.name, item.description, item.body])?;
    Ok(())
}

fn read_hit(row: &rusqlite::Row<'_>) -> rusqlite::Result<(ItemKey, f64)> {
    Ok((item_key(row)?, row.get(3)?))
}

fn item_key(row: &rusqlite::Row<'_>) -> rusqlite::Result<ItemKey> {
    let kind: u8 = row.get(0)?;
    Ok(ItemKey {
        kind: if kind == ItemKind::Skill as u8 {
            ItemKind::Skill
        } else {
            ItemKind::Memory
        },
        scope: row.get(1)?,
        name: row.get(2)?,
    })
}
