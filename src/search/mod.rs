//! Search over memory (key and value) and skills (name, description, content).
//!
//! Full text: SQLite FTS5 with BM25 ranking (`index`), in `<home>/search.db`. The index is
//! derived data: it records the heads of each document it reflects, and `refresh` re-reads
//! only the keys changed since (`Replica::changed_since`); a missing, damaged or outdated
//! file is rebuilt from the replica. Searches refresh first, so a change is searchable as
//! soon as it is in the replica; the daemon also refreshes after changes, so searches rarely
//! pay for it.
//!
//! Semantic: when an embedding endpoint is configured (`embed`), every entry gets a vector
//! (`embed_pending`, run by the daemon in the background), and a query is ranked by cosine
//! similarity. Hybrid, the default when vectors exist, fuses both rankings by reciprocal
//! rank fusion.
//!
//! Lock order: the index, then the replica; never the index while holding the replica, and
//! no lock across a call to the embedding endpoint.

mod embed;
mod index;
mod query;
mod snippet;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::config::{Config, Home};
use crate::model::{DocId, Scope};
use crate::replica::{Changed, Replica, ReplicaError, SharedReplica};
pub use embed::EmbeddingConfig;
use index::{DocUpdate, Index, Item, ItemKey, RowFilter};
use query::Terms;

/// Results a search returns at most.
pub const MAX_LIMIT: usize = 100;
pub const DEFAULT_LIMIT: usize = 10;
/// Reciprocal rank fusion's constant (Cormack et al.): damps the weight of the first ranks.
const RRF_K: f64 = 60.0;
/// Items embedded per call to the endpoint.
const EMBED_BATCH: usize = 32;
/// Entries a semantic search embeds before it runs, at most.
const INLINE_EMBED_MAX: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum SearchError {
    #[error("the search index {path} failed: {source}; it is derived data: stop meshd and delete it to have it rebuilt")]
    Sqlite {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("cannot remove the old search index {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the query has no words to search for")]
    EmptyQuery,
    #[error("semantic search needs an embedding endpoint: set MESH_EMBEDDING_URL (e.g. http://localhost:11434/api/embed for Ollama) or [search] embedding_url in meshd.toml, or search with mode fts")]
    NoEmbedder,
    #[error("the embedding endpoint {url} failed: {reason}")]
    Embedding { url: String, reason: String },
    #[error("[search] {0}")]
    Config(String),
    #[error("{0}")]
    Refused(String),
    #[error("cannot read the store: {0}")]
    Store(#[from] ReplicaError),
}

impl SearchError {
    fn sqlite(path: &Path, source: rusqlite::Error) -> SearchError {
        SearchError::Sqlite {
            path: path.to_path_buf(),
            source,
        }
    }

    /// Whether the index file is damaged (and should be rebuilt), not merely failing.
    fn is_damage(&self) -> bool {
        use rusqlite::ErrorCode::{DatabaseCorrupt, NotADatabase};
        matches!(
            self,
            SearchError::Sqlite {
                source: rusqlite::Error::SqliteFailure(failure, _),
                ..
            } if matches!(failure.code, DatabaseCorrupt | NotADatabase)
        )
    }

    /// Whether the caller asked for something impossible (a client error), not a failure.
    pub fn is_bad_request(&self) -> bool {
        matches!(
            self,
            SearchError::EmptyQuery | SearchError::NoEmbedder | SearchError::Refused(_)
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ItemKind {
    Memory = 0,
    Skill = 1,
}

/// How results are ranked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// BM25 over the words.
    Fts,
    /// Cosine similarity of embeddings.
    Semantic,
    /// Both, fused by reciprocal rank.
    Hybrid,
}

impl std::str::FromStr for Mode {
    type Err = SearchError;
    fn from_str(text: &str) -> Result<Mode, SearchError> {
        match text.to_ascii_lowercase().as_str() {
            "fts" => Ok(Mode::Fts),
            "semantic" => Ok(Mode::Semantic),
            "hybrid" => Ok(Mode::Hybrid),
            other => Err(SearchError::Refused(format!(
                "unknown search mode '{other}': use fts, semantic or hybrid"
            ))),
        }
    }
}

/// What to search.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Target {
    Memory,
    Skills,
    All,
}

/// Which memory scopes to search.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScopeFilter {
    Any,
    Exact(Scope),
    /// `user:*`
    AllUsers,
}

impl ScopeFilter {
    /// `mesh`, `node`, `user:<id>`, `node:<id>`, or `user:*`.
    pub fn parse(text: &str, own_node: &str) -> Result<ScopeFilter, SearchError> {
        match text.trim() {
            "" | "*" => Ok(ScopeFilter::Any),
            "user:*" => Ok(ScopeFilter::AllUsers),
            scope => Scope::parse(scope, own_node)
                .map(ScopeFilter::Exact)
                .map_err(|e| SearchError::Refused(e.to_string())),
        }
    }
}

#[derive(Debug, Clone)]
pub struct SearchRequest {
    pub text: String,
    pub target: Target,
    pub scope: ScopeFilter,
    pub limit: usize,
    /// `None`: hybrid when an embedding endpoint is configured, full text otherwise.
    pub mode: Option<Mode>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hit {
    pub kind: ItemKind,
    /// The memory scope as this node names it (`node` for its own); `None` for a skill.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    /// The memory key or skill name.
    pub key: String,
    pub snippet: String,
    /// Higher is better; comparable within one result list only.
    pub score: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SearchResults {
    pub mode: Mode,
    pub hits: Vec<Hit>,
    /// Entries without a vector yet (semantic and hybrid only): they are missing from the
    /// semantic ranking until the daemon has embedded them.
    #[serde(default)]
    pub not_embedded: usize,
}

/// What a refresh did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Refreshed {
    pub documents: usize,
    pub items: usize,
}

/// The node's search index, opened on first use.
pub struct Searcher {
    path: PathBuf,
    embedding: Option<EmbeddingConfig>,
    index: Mutex<Option<Index>>,
}

impl std::fmt::Debug for Searcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Searcher")
            .field("path", &self.path)
            .field("embedding", &self.embedding)
            .finish_non_exhaustive()
    }
}

impl Searcher {
    /// `path` is `<home>/search.db`; nothing is opened yet.
    pub fn new(path: PathBuf, embedding: Option<EmbeddingConfig>) -> Searcher {
        Searcher {
            path,
            embedding,
            index: Mutex::new(None),
        }
    }

    /// The node's searcher: `<home>/search.db`, and the embedding endpoint from the
    /// environment over `[search]`.
    pub fn for_node(home: &Home, config: &Config) -> Result<Searcher, SearchError> {
        let embedding = EmbeddingConfig::resolve(&config.search, |var| std::env::var(var).ok())?;
        Ok(Searcher::new(home.search_index_path(), embedding))
    }

    pub fn has_embedder(&self) -> bool {
        self.embedding.is_some()
    }

    /// Brings the index up to date with the replica: every document whose heads moved gets
    /// the keys changed since re-read; one that cannot say what changed is read whole.
    /// Skipped while the node is read-only: the index must not eat the disk's reserve.
    pub fn refresh(&self, replica: &SharedReplica) -> Result<Refreshed, SearchError> {
        self.with_index(replica, |index| refresh(index, replica))
    }

    /// Runs a search; see `SearchRequest`.
    pub fn search(
        &self,
        replica: &SharedReplica,
        request: &SearchRequest,
    ) -> Result<SearchResults, SearchError> {
        let terms = Terms::parse(&request.text).ok_or(SearchError::EmptyQuery)?;
        let mode = match (request.mode, &self.embedding) {
            (Some(Mode::Semantic | Mode::Hybrid), None) => return Err(SearchError::NoEmbedder),
            (Some(mode), _) => mode,
            (None, Some(_)) => Mode::Hybrid,
            (None, None) => Mode::Fts,
        };
        let filter = row_filter(request)?;
        let limit = request.limit.clamp(1, MAX_LIMIT);
        let query_vector = match (mode, &self.embedding) {
            (Mode::Semantic | Mode::Hybrid, Some(embedding)) => {
                // A few fresh entries are embedded now, so what was just written is found;
                // a backlog is the daemon's background work.
                self.embed_pending(replica, INLINE_EMBED_MAX)?;
                let vector = embedding.embed(&[&request.text])?.into_iter().next();
                Some((embedding, vector.unwrap_or_default()))
            }
            _ => None,
        };
        let (ranked, not_embedded) = self.with_index(replica, |index| {
            if let Err(error) = refresh(index, replica) {
                if error.is_damage() {
                    return Err(error);
                }
                // A full disk, say: the index as it is still answers.
                tracing::warn!(%error, "searching an index that could not be brought up to date");
            }
            let full_text = match mode {
                Mode::Semantic => Vec::new(),
                _ => full_text(index, &terms, &filter, limit)?,
            };
            match query_vector {
                Some((embedding, vector)) => {
                    let semantic = semantic(index, &embedding.model, &vector, &filter, limit)?;
                    let missing = index.count_missing_vectors(&embedding.model)?;
                    let ranked = match mode {
                        Mode::Semantic => semantic,
                        _ => fuse(&[full_text, semantic], limit),
                    };
                    Ok((ranked, missing))
                }
                None => Ok((full_text, 0)),
            }
        })?;
        let hits = replica.with(|replica| hits(replica, ranked, terms.as_slice()))?;
        Ok(SearchResults {
            mode,
            hits,
            not_embedded,
        })
    }

    /// Embeds up to `max` entries that have no vector for their current text; returns how
    /// many were embedded. Does nothing without an endpoint.
    pub fn embed_pending(&self, replica: &SharedReplica, max: usize) -> Result<usize, SearchError> {
        let Some(embedding) = &self.embedding else {
            return Ok(0);
        };
        let mut done = 0;
        while done < max {
            let keys = self.with_index(replica, |index| {
                refresh(index, replica)?;
                index.missing_vectors(&embedding.model, EMBED_BATCH.min(max - done))
            })?;
            if keys.is_empty() {
                break;
            }
            let items: Vec<Item> = replica.with(|replica| {
                keys.iter()
                    .filter_map(|key| read_item(replica, key.clone()).transpose())
                    .collect::<Result<_, _>>()
            })?;
            let texts: Vec<String> = items.iter().map(embedding_text).collect();
            let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
            let vectors = embedding.embed(&refs)?;
            self.with_index(replica, |index| {
                items.iter().zip(&vectors).try_for_each(|(item, vector)| {
                    index.store_vector(item, &embedding.model, vector).map(drop)
                })
            })?;
            // Keys whose entry vanished meanwhile are dropped by the next refresh.
            done += keys.len();
        }
        Ok(done)
    }

    /// Runs `f` on the index, opened (or rebuilt) on first use.
    fn with_index<T>(
        &self,
        replica: &SharedReplica,
        f: impl FnOnce(&mut Index) -> Result<T, SearchError>,
    ) -> Result<T, SearchError> {
        // A panic while indexing leaves at worst rows behind their heads; the heads are
        // written with the rows, so the next refresh redoes the rest.
        let mut guard = self
            .index
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let index = match guard.take() {
            Some(index) => guard.insert(index),
            None => {
                let own = replica.with(|r| r.node_id().to_string());
                guard.insert(Index::open(&self.path, &own)?)
            }
        };
        let result = f(index);
        if let Err(error) = &result {
            if error.is_damage() {
                // Damaged under a running node (a flipped byte, a truncated file): drop it;
                // the next use rebuilds it from the replica.
                tracing::warn!(%error, "the search index is damaged; it is rebuilt from the store");
                *guard = None;
                Index::discard(&self.path)?;
            }
        }
        result
    }
}

/// What one scope (or the skills) needs re-read: the keys that moved in its documents, or
/// all of it; and the heads of each of its documents once that is done.
#[derive(Default)]
struct ScopeRefresh {
    whole: bool,
    names: BTreeSet<String>,
    heads: Vec<(String, Vec<automerge::ChangeHash>)>,
}

fn refresh(index: &mut Index, replica: &SharedReplica) -> Result<Refreshed, SearchError> {
    let mut refreshed = Refreshed::default();
    let heads = replica.with(|r| r.all_heads());
    let names: Vec<String> = heads.keys().map(DocId::name).collect();
    let gone: Vec<String> = index
        .documents()
        .filter(|doc| !names.contains(doc))
        .cloned()
        .collect();
    let moved: Vec<DocId> = heads
        .into_iter()
        .filter(|(doc, heads)| index.indexed_heads(&doc.name()) != heads.as_slice())
        .map(|(doc, _)| doc)
        .collect();
    // Most searches find nothing to do; only a refresh that would write asks for the disk's
    // free space (a statvfs), and none writes while the node is read-only.
    if (gone.is_empty() && moved.is_empty()) || replica.with(|r| r.read_only_reason()).is_some() {
        return Ok(refreshed);
    }
    // The rows are a scope's, whichever of its documents (base, buckets) moved.
    let mut scopes: BTreeMap<DocId, ScopeRefresh> = BTreeMap::new();
    for doc in gone {
        let Ok(id) = DocId::from_name(&doc) else {
            index.apply(DocUpdate {
                doc: doc.clone(),
                clear: true,
                heads: vec![(doc, Vec::new())],
                ..DocUpdate::default()
            })?;
            continue;
        };
        let scope = scopes.entry(id.base()).or_default();
        scope.whole = true;
        scope.heads.push((doc, Vec::new()));
    }
    for doc in moved {
        let since = index.indexed_heads(&doc.name()).to_vec();
        let Some(plan) = replica.with(|replica| plan_update(replica, &doc, &since))? else {
            continue;
        };
        refreshed.documents += 1;
        let scope = scopes.entry(doc.base()).or_default();
        scope.heads.push((doc.name(), plan.heads));
        match plan.names {
            Some(names) => scope.names.extend(names),
            None => scope.whole = true,
        }
    }
    for (doc, scope) in scopes {
        if scope.whole {
            refresh_whole(index, replica, &doc, scope.heads, &mut refreshed)?;
        } else {
            let names: Vec<String> = scope.names.into_iter().collect();
            refresh_names(index, replica, &doc, &names, scope.heads, &mut refreshed)?;
        }
    }
    Ok(refreshed)
}

/// Re-reads the entries `names` of `doc`, a part at a time; the last part records `heads`.
fn refresh_names(
    index: &mut Index,
    replica: &SharedReplica,
    doc: &DocId,
    names: &[String],
    heads: Vec<(String, Vec<automerge::ChangeHash>)>,
    refreshed: &mut Refreshed,
) -> Result<(), SearchError> {
    let parts = names.len().div_ceil(REFRESH_PART).max(1);
    for part in 0..parts {
        let names = names.iter().skip(part * REFRESH_PART).take(REFRESH_PART);
        let mut update = DocUpdate {
            doc: doc.name(),
            heads: if part + 1 == parts {
                heads.clone()
            } else {
                Vec::new()
            },
            ..DocUpdate::default()
        };
        replica.with(|replica| read_part(replica, doc, names, &mut update))?;
        refreshed.items += update.upserts.len() + update.removals.len();
        index.apply(update)?;
    }
    Ok(())
}

/// Reads `doc` whole into the index, its keys paged from the replica's index so that a
/// million of them are never in memory at once: its rows dropped first, then a part at a
/// time, then `heads` recorded (a refresh cut short before that is done again). What is
/// written meanwhile comes after `heads`, and the next refresh reads it.
fn refresh_whole(
    index: &mut Index,
    replica: &SharedReplica,
    doc: &DocId,
    heads: Vec<(String, Vec<automerge::ChangeHash>)>,
    refreshed: &mut Refreshed,
) -> Result<(), SearchError> {
    let mut after: Option<String> = None;
    let mut clear = true;
    loop {
        let mut update = DocUpdate {
            doc: doc.name(),
            clear,
            ..DocUpdate::default()
        };
        let names = replica.with(|replica| {
            let names = replica.names_after(doc, after.as_deref(), REFRESH_PART)?;
            read_part(replica, doc, names.iter(), &mut update)?;
            Ok::<_, ReplicaError>(names)
        })?;
        refreshed.items += update.upserts.len();
        let last_part = names.len() < REFRESH_PART;
        if last_part {
            update.heads = heads.clone();
        }
        index.apply(update)?;
        if last_part {
            return Ok(());
        }
        after = names.into_iter().last();
        clear = false;
    }
}

/// Names re-read under one short hold of the replica and written in one transaction, so that
/// a document read whole (a new index of a million entries) is never in memory at once.
/// Parts before the last record no heads: a refresh cut short is done again.
const REFRESH_PART: usize = 5000;

/// What one document's refresh must read.
struct Plan {
    heads: Vec<automerge::ChangeHash>,
    /// The names changed since the index's heads; `None`: the document is read whole, its
    /// rows dropped first.
    names: Option<Vec<String>>,
}

/// What one document's refresh must read; `None` when the index already reflects it.
fn plan_update(
    replica: &mut Replica,
    doc: &DocId,
    since: &[automerge::ChangeHash],
) -> Result<Option<Plan>, ReplicaError> {
    // A document the index never took in whole (a new index, or a refresh cut short) is
    // read whole from the replica's index: asking the document what changed since nothing
    // would load it (hundreds of MB for a million entries) only to list every key.
    let names = if since.is_empty() {
        None
    } else {
        match replica.changed_since(doc, since) {
            Changed::Nothing => return Ok(None),
            Changed::Names(names) => Some(names.into_iter().collect()),
            Changed::Everything => None,
        }
    };
    Ok(Some(Plan {
        heads: replica.heads(doc),
        names,
    }))
}

/// Reads the rows of `names` into `update`: upserts for live entries, removals for the rest
/// (none after a clear).
fn read_part<'a>(
    replica: &Replica,
    doc: &DocId,
    names: impl Iterator<Item = &'a String>,
    update: &mut DocUpdate,
) -> Result<(), ReplicaError> {
    let kind = match doc {
        DocId::Memory(_) | DocId::Bucket(..) => ItemKind::Memory,
        DocId::Skills => ItemKind::Skill,
    };
    for name in names {
        let key = ItemKey {
            kind,
            scope: update.doc.clone(),
            name: name.clone(),
        };
        match read_item(replica, key.clone())? {
            Some(item) => update.upserts.push(item),
            None if !update.clear => update.removals.push(key),
            None => {}
        }
    }
    Ok(())
}

/// The entry's searchable text, `None` when it is absent or deleted.
fn read_item(replica: &Replica, key: ItemKey) -> Result<Option<Item>, ReplicaError> {
    match key.kind {
        ItemKind::Memory => {
            let Ok(DocId::Memory(scope)) = DocId::from_name(&key.scope) else {
                return Ok(None);
            };
            let Some(entry) = replica.get_memory(&scope, &key.name)? else {
                return Ok(None);
            };
            let body = match entry.value {
                serde_json::Value::String(text) => text,
                other => other.to_string(),
            };
            Ok(Some(Item {
                key,
                description: String::new(),
                body,
            }))
        }
        ItemKind::Skill => {
            let Some(skill) = replica.get_skill(&key.name)? else {
                return Ok(None);
            };
            Ok(Some(Item {
                key,
                description: skill.description.clone(),
                body: skill.body().to_string(),
            }))
        }
    }
}

/// What is embedded for an entry: its name, description and text.
fn embedding_text(item: &Item) -> String {
    [&item.key.name, &item.description, &item.body]
        .iter()
        .filter(|part| !part.is_empty())
        .map(|part| part.as_str())
        .collect::<Vec<_>>()
        .join("\n")
}

/// A scope narrows the search to memory: skills have none.
fn row_filter(request: &SearchRequest) -> Result<RowFilter, SearchError> {
    Ok(match (&request.scope, request.target) {
        (ScopeFilter::Exact(_) | ScopeFilter::AllUsers, Target::Skills) => {
            return Err(SearchError::Refused(
                "skills have no scope: search skills without one, or memory with it".into(),
            ))
        }
        (ScopeFilter::Exact(scope), _) => RowFilter::Scope(DocId::Memory(scope.clone()).name()),
        (ScopeFilter::AllUsers, _) => RowFilter::UserScopes,
        (ScopeFilter::Any, Target::Memory) => RowFilter::Kind(ItemKind::Memory),
        (ScopeFilter::Any, Target::Skills) => RowFilter::Kind(ItemKind::Skill),
        (ScopeFilter::Any, Target::All) => RowFilter::Any,
    })
}

/// Every word if that finds enough, else any word: precise first, and a question typed in
/// full still finds the entries holding some of its words.
fn full_text(
    index: &Index,
    terms: &Terms,
    filter: &RowFilter,
    limit: usize,
) -> Result<Vec<(ItemKey, f64)>, SearchError> {
    let mut ranked = index.full_text(&terms.all(), filter, limit)?;
    if ranked.len() < limit && terms.as_slice().len() > 1 {
        for (key, score) in index.full_text(&terms.any(), filter, limit)? {
            if ranked.len() == limit {
                break;
            }
            if !ranked.iter().any(|(k, _)| k == &key) {
                ranked.push((key, score));
            }
        }
    }
    // BM25 from FTS5 is negative, lower is better: flip it so higher is better everywhere.
    Ok(ranked
        .into_iter()
        .map(|(key, score)| (key, -score))
        .collect())
}

fn semantic(
    index: &Index,
    model: &str,
    query: &[f32],
    filter: &RowFilter,
    limit: usize,
) -> Result<Vec<(ItemKey, f64)>, SearchError> {
    let mut scored: Vec<(ItemKey, f64)> = index
        .vectors(model)?
        .into_iter()
        .filter(|(key, _)| filter.admits(key))
        .map(|(key, vector)| {
            let similarity = embed::cosine(query, &vector) as f64;
            (key, similarity)
        })
        .collect();
    scored.sort_by(|a, b| b.1.total_cmp(&a.1));
    scored.truncate(limit);
    Ok(scored)
}

/// Reciprocal rank fusion: each list gives an item 1 / (k + rank); the sums rank the union.
fn fuse(lists: &[Vec<(ItemKey, f64)>], limit: usize) -> Vec<(ItemKey, f64)> {
    let mut scores: HashMap<&ItemKey, f64> = HashMap::new();
    let mut order: Vec<&ItemKey> = Vec::new();
    for list in lists {
        for (rank, (key, _)) in list.iter().enumerate() {
            let score = scores.entry(key).or_insert_with(|| {
                order.push(key);
                0.0
            });
            *score += 1.0 / (RRF_K + rank as f64 + 1.0);
        }
    }
    let mut fused: Vec<(ItemKey, f64)> = order
        .into_iter()
        .map(|key| (key.clone(), scores[key]))
        .collect();
    fused.sort_by(|a, b| b.1.total_cmp(&a.1));
    fused.truncate(limit);
    fused
}

/// The hits as shown: the scope as this node names it and a snippet from the current text.
/// An entry deleted since the ranking is left out.
fn hits(
    replica: &Replica,
    ranked: Vec<(ItemKey, f64)>,
    terms: &[String],
) -> Result<Vec<Hit>, ReplicaError> {
    let own = replica.node_id().to_string();
    let mut hits = Vec::new();
    for (key, score) in ranked {
        let Some(item) = read_item(replica, key)? else {
            continue;
        };
        let scope = match item.key.kind {
            ItemKind::Memory => match DocId::from_name(&item.key.scope) {
                Ok(DocId::Memory(scope)) => Some(scope.label(&own)),
                _ => None,
            },
            ItemKind::Skill => None,
        };
        let text = if item.body.is_empty() {
            &item.description
        } else {
            &item.body
        };
        hits.push(Hit {
            kind: item.key.kind,
            scope,
            snippet: snippet::snippet(text, terms),
            key: item.key.name,
            score,
        });
    }
    Ok(hits)
}

#[cfg(test)]
mod tests;
