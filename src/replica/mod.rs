//! The node's replica: one Automerge document per memory scope plus one for skills, persisted
//! in sled. The only code that touches Automerge documents or the store.

mod append;
mod changes;
mod detached;
mod durable;
mod gather;
mod group;
mod index;
mod integrity;
mod journal;
mod lazy;
mod memory_doc;
mod repair;
mod shared;
mod signatures;
mod skills_doc;
pub mod space;
mod storage;
mod sync_store;
mod text_edit;
mod vet;

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use automerge::transaction::{CommitOptions, Transaction};
use automerge::{ActorId, Automerge, Change, ChangeHash, ReadDoc};

use crate::metrics::Metrics;
use crate::model::entry::resolve;
use crate::model::hlc::ClockBound;
use crate::model::import_order::{self, Named, NotApplied, Verdict};
use crate::model::scope::BASE_CAPACITY;
use crate::model::validate::{self, ValidationError};
use crate::model::{secret, Claim, DocId, Hlc, MemoryEntry, Scope, Skill, Stamp, Via};
use crate::sync::{sequence, whole};
use crate::trust::{ChangeSignature, NodeKey};
use durable::Pending;
use storage::{OnDurable, Storage};

#[derive(Debug, thiserror::Error)]
pub enum ReplicaError {
    #[error("the store at {path} is in use by another meshd (a daemon, or a command still running): stop it, or use the daemon through its control socket")]
    Locked { path: PathBuf },
    #[error("the disk holding the store at {path} is full, and opening a store writes to it: free some space, then start meshd again (nothing was lost)")]
    NoRoomToOpen { path: PathBuf },
    #[error("cannot open the store at {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: sled::Error,
    },
    #[error("store error: {0}")]
    Storage(#[from] sled::Error),
    #[error("the store is damaged: {0}; nothing was changed: see docs/operations.md (Damaged store) to rebuild it from the peers")]
    Corrupt(&'static str),
    #[error("the store at {path} is damaged: {detail}; nothing was changed: see docs/operations.md (Damaged store) to rebuild it from the peers")]
    Damaged { path: PathBuf, detail: String },
    #[error("the store at {path} lacks acknowledged writes: {shortfalls} (against the integrity record of {recorded_at}); it was damaged (a crash on a failing disk, or a changed file); nothing was changed: see docs/operations.md (Damaged store) to rebuild it from the peers")]
    LostWrites {
        path: PathBuf,
        recorded_at: String,
        shortfalls: String,
    },
    #[error("document {doc} cannot be loaded: {source}; the store is damaged, nothing was changed: see docs/operations.md (Damaged store) to rebuild it from the peers")]
    Load {
        doc: String,
        #[source]
        source: Box<automerge::AutomergeError>,
    },
    #[error(transparent)]
    ReadOnly(#[from] space::BelowReserve),
    #[error("the store failed a write earlier ({0}) and accepts none until meshd restarts; every acknowledged write is safe: free disk space if it is full, then restart meshd")]
    Failed(String),
    #[error("the store failed a write earlier ({0}) and could not undo it in memory, so it is not read until meshd restarts; every acknowledged write is safe on disk: free disk space if it is full, then restart meshd")]
    Unreadable(String),
    #[error("a write did not reach the disk ({0}): it is not acknowledged, and may or may not be found after a restart (read it back then); the store accepts no writes until meshd restarts: free disk space if it is full, then restart meshd")]
    NotDurable(String),
    #[error("a write committed with others was interrupted by an internal error (see the log); it may or may not be stored: read it back before writing it again")]
    Interrupted,
    #[error("automerge: {0}")]
    Automerge(Box<automerge::AutomergeError>),
    #[error("refused a peer's changes: {0}; nothing was applied (the peer's store or software is faulty, or hostile)")]
    Misnumbered(String),
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    #[error("no skill named '{0}'")]
    NoSuchSkill(String),
}

impl ReplicaError {
    /// Splits a write the rules refused (bad input, for the caller to report) from a failure
    /// of the store itself.
    pub fn into_refusal(self) -> Result<ValidationError, ReplicaError> {
        match self {
            ReplicaError::Invalid(reason) => Ok(reason),
            other => Err(other),
        }
    }
}

/// Automerge's error is boxed: it is large, and every `Result` of the replica would carry it.
impl From<automerge::AutomergeError> for ReplicaError {
    fn from(error: automerge::AutomergeError) -> Self {
        ReplicaError::Automerge(Box::new(error))
    }
}

type Result<T, E = ReplicaError> = std::result::Result<T, E>;

pub use changes::Changed;
pub use integrity::REWRITE_EVERY as INTEGRITY_EVERY;
pub use lazy::DEFAULT_MEMORY_BUDGET;
pub use memory_doc::Written;
pub use shared::{SharedReplica, StoreTaskFailed};
pub use skills_doc::WHOLE_VALUE_MIN_BYTES;
pub use storage::save_page_table;

/// What opening does with a document Automerge refuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Damage {
    Refuse,
    Skip,
}

/// Reads the wall clock in Unix milliseconds; injected so tests can skew it.
pub type WallClock = Box<dyn FnMut() -> u64 + Send>;

/// A skill as a writer gives it; the replica adds the version.
#[derive(Debug, Clone, Default)]
pub struct SkillWrite {
    pub name: String,
    pub content: String,
    /// `None` keeps the stored description (empty for a new skill).
    pub description: Option<String>,
    pub path: Option<String>,
}

/// Fold a document's changes into a new snapshot once they outweigh it, and at the latest
/// after this many changes.
const COMPACT_AFTER_CHANGES: usize = 50_000;
const COMPACT_MIN_CHANGES: usize = 256;
/// Changes may weigh this many times the snapshot before they are folded: each compaction
/// costs a full save, so the log must grow in proportion to the document to keep writes O(1).
const COMPACT_GROWTH: usize = 4;

struct DocState {
    doc: Automerge,
    /// Set from the replica's edit clock by every change to `doc` in memory (local writes,
    /// received changes, merges, even changes queued for missing dependencies) and by its
    /// loading, so that a copy edited off the lock can tell whether the document is still the
    /// one it was copied from (see `detached`), even if it was evicted and loaded again since.
    edits: u64,
    /// When it was last used, on the replica's use clock: the least recently used documents
    /// are evicted first (see `lazy`).
    last_used: u64,
    changes_since_snapshot: usize,
    bytes_since_snapshot: usize,
    snapshot_bytes: usize,
}

/// A key or skill whose writers did not see each other's version: the version every node
/// shows (last writer wins), and the others, kept until someone writes it again.
#[derive(Debug, Clone, PartialEq)]
pub enum Conflict {
    Memory {
        winner: MemoryEntry,
        others: Vec<MemoryEntry>,
    },
    Skill {
        winner: Skill,
        others: Vec<Skill>,
    },
}

pub struct Replica {
    storage: Storage,
    store_path: PathBuf,
    integrity: integrity::IntegrityFile,
    reserve: space::Reserve,
    /// Whether the last write was refused for want of space: logs the change of state once.
    read_only: bool,
    /// A repair under way (`meshd run --repair`).
    repair: Option<repair::Repair>,
    /// The documents loaded in memory: those in use lately (see `lazy`).
    docs: BTreeMap<DocId, DocState>,
    /// Every stored document's heads and counts, from the index: what the node has, without
    /// loading it.
    summaries: BTreeMap<DocId, index::Summary>,
    /// When each document's heads last moved, counted in commits (`moved_since`).
    moves: durable::Moves,
    /// The estimated memory loaded documents may take before the least recently used ones are
    /// evicted (`[store] memory_budget_mb`).
    memory_budget: u64,
    /// Live keys a scope's base document takes before writes go to buckets.
    base_capacity: u64,
    edit_clock: u64,
    use_clock: u64,
    /// Documents read from the store since it opened: a load is the expensive part of a write
    /// to a document not in memory.
    loads: u64,
    node_id: String,
    /// Signs every change made here; its id is `node_id`.
    key: NodeKey,
    actor: ActorId,
    hlc: Hlc,
    wall_clock: WallClock,
    clock_bound: ClockBound,
    /// Counts the local writes each persist acknowledges, where the daemon keeps metrics.
    metrics: Option<Arc<Metrics>>,
    /// Changes from peers applied in memory and committed together at the end of
    /// `gathering` (`gather`); `None` outside it.
    gathered: Option<Pending>,
    /// The document the last vetting loaded, for the merge that follows it (`vet::Vetted`).
    vetted: Option<vet::Vetted>,
    /// The sequence number of `actor`'s last change to each document: a change appended to
    /// a document without loading it goes on from it (`append`).
    own_seqs: HashMap<DocId, u64>,
    /// The changes appended to each document since it was last loaded (`append`).
    appended: HashMap<DocId, append::AppendLog>,
}

/// Runs `open` until the store is no longer locked by another holder or `wait` has passed:
/// sled admits one process, and a one-shot command (or a replica just dropped, whose flusher
/// lets go a moment later) holds the lock briefly. Still locked after `wait`: the `Locked`
/// error.
pub fn wait_for_store<T>(wait: Duration, mut open: impl FnMut() -> Result<T>) -> Result<T> {
    let deadline = Instant::now() + wait;
    loop {
        match open() {
            Err(ReplicaError::Locked { .. }) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10));
            }
            result => return result,
        }
    }
}

/// The wall clock in Unix milliseconds: the replica's default clock, and the time of writes
/// that bring none of their own.
pub fn system_clock() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Replica {
    /// Opens (or creates) the store at `path` for the node whose key is `key`.
    pub fn open(path: &Path, key: NodeKey) -> Result<Replica> {
        Replica::open_with_clock(path, key, Box::new(system_clock))
    }

    pub fn open_with_clock(path: &Path, key: NodeKey, wall_clock: WallClock) -> Result<Replica> {
        let storage = Storage::open(path)?;
        let mut replica = Replica::new(storage, path, key, wall_clock);
        replica.open_index()?;
        replica.check_integrity()?;
        Ok(replica)
    }

    /// A replica with no document loaded yet.
    fn new(storage: Storage, path: &Path, key: NodeKey, wall_clock: WallClock) -> Replica {
        Replica {
            storage,
            store_path: path.to_path_buf(),
            integrity: integrity::IntegrityFile::new(path),
            reserve: space::Reserve::default(),
            read_only: false,
            repair: None,
            docs: BTreeMap::new(),
            summaries: BTreeMap::new(),
            moves: durable::Moves::default(),
            memory_budget: DEFAULT_MEMORY_BUDGET,
            base_capacity: BASE_CAPACITY,
            edit_clock: 0,
            use_clock: 0,
            loads: 0,
            node_id: key.node_id().compact(),
            // A fresh actor per process: a change made but never flushed before a crash can
            // then never collide with a different change under the same (actor, seq). It
            // starts with the node id, so peers know whose signature the change needs.
            actor: key.actor(),
            key,

            hlc: Hlc::default(),
            wall_clock,
            clock_bound: ClockBound::default(),
            metrics: None,
            gathered: None,
            vetted: None,
            own_seqs: HashMap::new(),
            appended: HashMap::new(),
        }
    }

    /// Sets the free space the store's disk must keep (`[store] min_free_mb`,
    /// `min_free_percent`).
    pub fn set_reserve(&mut self, reserve: space::Reserve) {
        self.reserve = reserve;
    }

    /// Counts acknowledged local writes in `metrics` (the daemon's).
    pub fn set_metrics(&mut self, metrics: Arc<Metrics>) {
        self.metrics = Some(metrics);
    }

    /// The public half of the key that signs this node's changes.
    pub fn public_key(&self) -> [u8; 32] {
        self.key.public_key()
    }

    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// The store's directory.
    pub fn store_path(&self) -> &Path {
        &self.store_path
    }

    /// The sled database, for the peer list and per-peer sync state.
    pub fn db(&self) -> &sled::Db {
        self.storage.db()
    }

    /// This node's own `node` scope.
    pub fn own_scope(&self) -> Scope {
        Scope::Node(self.node_id.clone())
    }

    // ---- memory -------------------------------------------------------------------------

    pub fn put_memory(
        &mut self,
        scope: &Scope,
        key: &str,
        value: serde_json::Value,
    ) -> Result<MemoryEntry> {
        self.batch(|b| b.put_memory(scope, key, value))
    }

    /// Writes a tombstone; `false` when there was nothing to delete.
    pub fn delete_memory(&mut self, scope: &Scope, key: &str) -> Result<bool> {
        self.batch(|b| b.delete_memory(scope, key))
    }

    /// Writes a version that carries its own stamp and writer (bridge and store imports) if it
    /// is newer than what the replica holds; `false` when it is not, which makes re-imports
    /// change nothing. The writer it names becomes its claim (`Batch::as_imported`).
    pub fn import_memory(&mut self, entry: MemoryEntry, via: Via) -> Result<bool> {
        self.batch(|b| b.import_memory(entry, via))
    }

    /// The winning version of a key, `None` when absent or deleted.
    pub fn get_memory(&self, scope: &Scope, key: &str) -> Result<Option<MemoryEntry>> {
        Ok(self
            .memory_versions(scope, key)?
            .map(|(winner, _)| winner)
            .filter(|winner| !winner.deleted))
    }

    /// The winner (tombstones included) and the losing concurrent versions of a key.
    pub fn memory_versions(
        &self,
        scope: &Scope,
        key: &str,
    ) -> Result<Option<(MemoryEntry, Vec<MemoryEntry>)>> {
        let versions = self.reading(|tree| index::memory_versions(tree, scope, key))?;
        Ok(resolve(versions))
    }

    /// The keys and skills holding concurrent versions (each winner first, then the others),
    /// the first `limit` by document and name, from the index; and how many there are in all.
    pub fn conflicts(&self, limit: usize) -> Result<(Vec<Conflict>, usize)> {
        let (names, total) = self.reading(|tree| index::conflicted(tree, limit))?;
        let mut conflicts = Vec::with_capacity(names.len());
        for (doc, name) in names {
            let conflict = match doc.scope() {
                Some(scope) => (self.memory_versions(scope, &name)?)
                    .map(|(winner, others)| Conflict::Memory { winner, others }),
                None => (self.skill_versions(&name)?)
                    .map(|(winner, others)| Conflict::Skill { winner, others }),
            };
            conflicts.extend(conflict);
        }
        Ok((conflicts, total))
    }

    /// Every version ever written to a key, each with the change that wrote it and its
    /// verified author: document by document (the scope's base first, then the buckets that
    /// hold the key), each in the order of its history. `None` when this node has no
    /// document for `scope`. Reads those documents whole: for audits (`meshd mem history`).
    pub fn memory_history(&mut self, scope: &Scope, key: &str) -> Result<Option<Vec<Written>>> {
        let (mut docs, winner) = self.reading(|tree| index::memory_docs(tree, scope, key))?;
        for doc in [DocId::Memory(scope.clone()), DocId::bucket_for(scope, key)] {
            if !docs.contains(&doc) {
                docs.push(doc);
            }
        }
        docs.sort();
        let mut history = None;
        for doc in docs {
            let Some(state) = self.load_state(&doc)? else {
                continue;
            };
            let mut written = memory_doc::history(&state.doc, scope, key);
            // Each document marks its own greatest version; the key's winner is in one.
            if winner.as_ref() != Some(&doc) {
                written.iter_mut().for_each(|w| w.winner = false);
            }
            history.get_or_insert_with(Vec::new).extend(written);
        }
        Ok(history)
    }

    /// The memory keys of a document's scope (every document of it) or the skill names in
    /// order, tombstones included, without reading their versions: at most `limit`, after
    /// `after` (from the first when `None`).
    /// Read a page at a time, a million keys are never in memory at once.
    pub fn names_after(
        &self,
        doc: &DocId,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<String>> {
        self.reading(|tree| index::names_after(tree, doc, after, limit))
    }

    /// The next `limit` keys of `scope` after `after`, with their live entries, read in one
    /// pass: for readers that take a large scope a part at a time.
    pub fn live_memory_after(
        &self,
        scope: &Scope,
        after: Option<&str>,
        limit: usize,
    ) -> Result<index::MemoryPart> {
        self.reading(|tree| index::live_memory_after(tree, scope, after, limit))
    }

    /// Live entries, sorted by scope then key; every scope when `scope` is `None`.
    pub fn list_memory(&self, scope: Option<&Scope>) -> Result<Vec<MemoryEntry>> {
        let mut entries = Vec::new();
        for doc_scope in self.scopes() {
            if scope.is_none_or(|s| *s == doc_scope) {
                entries.extend(self.reading(|tree| index::live_memory(tree, &doc_scope))?);
            }
        }
        Ok(entries)
    }

    /// Live memory entries and live skills, as the index counts them.
    pub fn counts(&self) -> (u64, u64) {
        let mut counts = (0, 0);
        for (doc, summary) in &self.summaries {
            match doc {
                DocId::Memory(_) | DocId::Bucket(..) => counts.0 += summary.live,
                DocId::Skills => counts.1 += summary.live,
            }
        }
        counts
    }

    /// The document a new `key` of `scope` goes to: the first of the scope's base and the
    /// key's buckets (`DocId::bucket_path`) with room for it, counting the `added` writes of
    /// the same batch routed to each; the last bucket when none has. A key already held is
    /// written where its winner is (`Batch::route`).
    fn route_new(&self, scope: &Scope, key: &str, added: impl Fn(&DocId) -> u64) -> DocId {
        let has_room = |doc: &DocId| {
            let live = self.summaries.get(doc).map_or(0, |s| s.live);
            live.saturating_add(added(doc)) < self.base_capacity
        };
        let base = DocId::Memory(scope.clone());
        if has_room(&base) {
            return base;
        }
        let mut path = DocId::bucket_path(scope, key);
        let last = path.pop().unwrap_or_else(|| DocId::bucket_for(scope, key));
        path.into_iter().find(has_room).unwrap_or(last)
    }

    /// The winner of `key` (a tombstone included) and the document holding it.
    fn memory_winner_held(&self, scope: &Scope, key: &str) -> Result<Option<(MemoryEntry, DocId)>> {
        let (versions, held) =
            self.reading(|tree| index::memory_versions_held(tree, scope, key))?;
        Ok(resolve(versions)
            .zip(held)
            .map(|((winner, _), doc)| (winner, doc)))
    }

    /// The document a lone write of `key` to `scope` would go to now: for tests that follow
    /// a write's change.
    #[doc(hidden)]
    pub fn memory_doc_for(&self, scope: &Scope, key: &str) -> Result<DocId> {
        Ok(match self.memory_winner_held(scope, key)? {
            Some((_, doc)) => doc,
            None => self.route_new(scope, key, |_| 0),
        })
    }

    /// Sets how many live keys a scope's base document, and each bucket of a key's path but
    /// the last, takes before new keys go further (`BASE_CAPACITY`): tests make nodes
    /// disagree on it, or (0) send every new key to the bucket its hash names.
    #[doc(hidden)]
    pub fn set_base_capacity(&mut self, keys: u64) {
        self.base_capacity = keys;
    }

    /// Memory scopes that have a document here, in order.
    pub fn scopes(&self) -> Vec<Scope> {
        let scopes: BTreeSet<&Scope> = self.summaries.keys().filter_map(DocId::scope).collect();
        scopes.into_iter().cloned().collect()
    }

    // ---- skills -------------------------------------------------------------------------

    pub fn put_skill(&mut self, skill: SkillWrite) -> Result<Skill> {
        self.batch(|b| b.put_skill(skill))
    }

    pub fn delete_skill(&mut self, name: &str) -> Result<bool> {
        self.batch(|b| b.delete_skill(name))
    }

    /// Like `import_memory`, for skills.
    pub fn import_skill(&mut self, skill: Skill) -> Result<bool> {
        self.batch(|b| b.import_skill(skill))
    }

    pub fn get_skill(&self, name: &str) -> Result<Option<Skill>> {
        Ok(self
            .skill_versions(name)?
            .map(|(winner, _)| winner)
            .filter(|winner| !winner.deleted))
    }

    pub fn skill_versions(&self, name: &str) -> Result<Option<(Skill, Vec<Skill>)>> {
        Ok(resolve(
            self.reading(|tree| index::skill_versions(tree, name))?,
        ))
    }

    /// Live skills sorted by name.
    pub fn list_skills(&self) -> Result<Vec<Skill>> {
        self.reading(index::live_skills)
    }

    /// Runs a read of the index, noting an I/O error as the store's failure (see
    /// `Storage::note_failure`).
    fn reading<T>(&self, read: impl FnOnce(&sled::Tree) -> Result<T>) -> Result<T> {
        read(self.storage.tree()?).map_err(|error| self.storage.note_failure(error))
    }

    // ---- batches ------------------------------------------------------------------------

    /// Runs several writes and makes them durable with one flush (group commit): each
    /// document the batch touches gets one Automerge change per 4 MiB of values. Returns only
    /// once everything `f` wrote is on disk. If `f` fails, the writes it staged before failing
    /// are kept and made durable too; the failed one changed nothing. A batch whose documents
    /// do not fit the memory budget together is committed in parts (`commit_writes`).
    pub fn batch<T>(&mut self, f: impl FnOnce(&mut Batch<'_>) -> Result<T>) -> Result<T> {
        self.refuse_after_failure()?;
        let (outcome, writes) = self.stage(f);
        self.commit_writes(writes, &mut || {})?;
        outcome
    }

    /// `batch`, handing `f`'s outcome to `acknowledge` the moment its writes are durable, so
    /// that a caller is answered while sled takes them in and the bookkeeping after a write
    /// runs. An error before that is returned instead (the outcome is dropped). One after it
    /// (sled failing on writes the journal holds) is logged: the writes stay acknowledged, and
    /// the journal's replay applies them at the next start.
    pub fn batch_acknowledging<T>(
        &mut self,
        f: impl FnOnce(&mut Batch<'_>) -> Result<T>,
        acknowledge: impl FnOnce(Result<T>),
    ) -> Result<()> {
        self.refuse_after_failure()?;
        let (outcome, writes) = self.stage(f);
        let mut unacknowledged = Some((acknowledge, outcome));
        let committed = self.commit_writes(writes, &mut || {
            if let Some((acknowledge, outcome)) = unacknowledged.take() {
                acknowledge(outcome);
            }
        });
        if let Some((acknowledge, outcome)) = unacknowledged {
            // Nothing reached the journal (nothing to write, or the writes went to sled's
            // flush in parts): the end of the commit is the moment.
            committed?;
            acknowledge(outcome);
        }
        Ok(())
    }

    /// Applies `writes` and makes them durable. Documents are loaded one after the other;
    /// once those loaded for the batch outweigh the memory budget, or it applied
    /// `PART_WRITES`, what was applied so far is committed (one sled batch, one flush), the
    /// least recently used documents it has no more writes for are evicted (`by_doc` says
    /// why the order matters), and the batch goes on: an ingest that
    /// touches every bucket of a million-key scope never holds them all at once, nor a sled
    /// batch of every key. Each part is atomic and keeps the index exact; when one fails,
    /// the parts before it stay durable (a retried ingest finds them held) and the batch
    /// answers the error. `on_durable` is called when the last part is durable.
    fn commit_writes(&mut self, writes: Vec<Staged>, on_durable: OnDurable<'_>) -> Result<()> {
        let mut rest = by_doc(writes, |doc| self.docs.contains_key(doc));
        let limit = PartLimit {
            memory: self.memory_budget,
            writes: PART_WRITES,
        };
        loop {
            let pending = self.apply_docs(&mut rest, limit)?;
            if rest.is_empty() {
                return self.persist_acknowledging(pending, on_durable);
            }
            self.persist(pending)?;
            let to_write: BTreeSet<DocId> = rest.iter().map(|(doc, _)| doc.clone()).collect();
            self.trim_sparing(|doc| to_write.contains(doc));
        }
    }

    /// After a failed write, sled refuses work on its log, reads of the index included, so
    /// a batch (whose staging reads the index) is refused with the reason first.
    fn refuse_after_failure(&self) -> Result<()> {
        match self.storage.failed() {
            Some(first) => Err(ReplicaError::Failed(first.to_string())),
            None => Ok(()),
        }
    }

    /// Runs `f` and returns what it wrote, applied to no document yet.
    fn stage<T>(
        &mut self,
        f: impl FnOnce(&mut Batch<'_>) -> Result<T>,
    ) -> (Result<T>, Vec<Staged>) {
        let mut batch = Batch {
            replica: self,
            writes: Vec::new(),
            latest_memory: HashMap::new(),
            latest_skill: HashMap::new(),
            routed: HashMap::new(),
        };
        let outcome = f(&mut batch);
        let writes = batch.writes;
        (
            outcome.map_err(|error| self.storage.note_failure(error)),
            writes,
        )
    }

    /// Applies staged writes to the in-memory documents, all at once, for `persist`.
    fn apply_writes(&mut self, writes: Vec<Staged>) -> Result<Pending> {
        self.apply_docs(&mut by_doc(writes, |_| true), PartLimit::WHOLE)
    }

    /// Takes documents' writes from `docs` and applies them, one change per document
    /// (several for more than 4 MiB of values), until what was applied reaches `limit` (at
    /// least one document is); returns them for `persist`. A write that fails takes every
    /// document of the part back.
    fn apply_docs(&mut self, docs: &mut ByDoc, limit: PartLimit) -> Result<Pending> {
        let mut pending = Pending::default();
        if docs.is_empty() {
            return Ok(pending);
        }
        self.ensure_writable()?;
        let seconds = i64::try_from((self.wall_clock)() / 1000).unwrap_or(i64::MAX);
        let mut loaded = 0;
        while let Some((doc, writes)) = docs.pop_front() {
            if loaded >= limit.memory || pending.writes >= limit.writes {
                docs.push_front((doc, writes));
                break;
            }
            pending.writes += writes.len();
            let applied = match self.append_basis(&doc, &writes) {
                Ok(Some(basis)) => self.append_writes(&doc, &writes, basis, seconds, &mut pending),
                Ok(None) => self.apply_loaded(&doc, &writes, seconds, &mut pending),
                Err(error) => Err(error),
            };
            match applied {
                Ok(memory) => loaded += memory,
                Err(error) => {
                    self.roll_back(pending.before);
                    return Err(error);
                }
            }
        }
        Ok(pending)
    }

    /// Applies `writes` to `doc` loaded (or new), for `pending`; returns the memory the
    /// document takes now.
    fn apply_loaded(
        &mut self,
        doc: &DocId,
        writes: &[Staged],
        seconds: i64,
        pending: &mut Pending,
    ) -> Result<u64> {
        let edit = self.next_edit();
        let state = self.state_or_new(doc)?;
        pending.touch(doc, state.doc.get_heads());
        let mut made = 0;
        for chunk in change_chunks(writes) {
            let mut tx = state.doc.transaction();
            if let Err(e) = chunk.iter().try_for_each(|write| write.apply(&mut tx)) {
                tx.rollback();
                return Err(e.into());
            }
            // The change records when it was made, for `meshd mem history`.
            let (hash, _) = tx.commit_with(CommitOptions::default().with_time(seconds));
            if let Some(change) = hash.and_then(|hash| state.doc.get_change_by_hash(&hash)) {
                state.edits = edit;
                made += change.raw_bytes().len();
                pending.changes.push((doc.clone(), change));
            }
        }
        Ok(lazy::estimated_memory((doc, state)) + lazy::memory_of(made))
    }

    /// Appends `writes` to `doc`, which is not loaded (`append`), for `pending`; returns the
    /// memory the changes take.
    fn append_writes(
        &mut self,
        doc: &DocId,
        writes: &[Staged],
        basis: BTreeMap<String, Vec<index::OpRef>>,
        seconds: i64,
        pending: &mut Pending,
    ) -> Result<u64> {
        let (changes, appended) = self.append(doc, &change_chunks(writes), basis, seconds)?;
        pending.touch(doc, self.heads(doc));
        let made = changes.iter().map(|change| change.raw_bytes().len()).sum();
        pending
            .changes
            .extend(changes.into_iter().map(|change| (doc.clone(), change)));
        pending.appended.push((doc.clone(), appended));
        Ok(lazy::memory_of(made))
    }

    // ---- documents, for sync and export -------------------------------------------------

    pub fn doc_ids(&self) -> Vec<DocId> {
        let mut ids: Vec<DocId> = self.summaries.keys().cloned().collect();
        ids.extend(self.gathered_new_docs());
        ids
    }

    /// The document's heads, sorted; empty when the document is absent.
    pub fn heads(&self, doc: &DocId) -> Vec<ChangeHash> {
        if let Some(heads) = self.gathered_heads(doc) {
            return heads;
        }
        self.summaries
            .get(doc)
            .map(|summary| summary.heads.clone())
            .unwrap_or_default()
    }

    /// How many changes the document's history holds, from the index (0 when absent).
    pub fn change_count(&self, doc: &DocId) -> u64 {
        if let Some(count) = self.gathered_change_count(doc) {
            return count;
        }
        self.summaries.get(doc).map_or(0, |summary| summary.changes)
    }

    /// The latest stamp any version in the store carries, with its entry's label (`meshd
    /// doctor` compares it with the clock). Reads every entry of the index.
    pub fn newest_stamp(&self) -> Result<Option<(String, Stamp)>> {
        index::newest_stamp(self.storage.tree()?)
    }

    /// Every document with its heads.
    /// The documents whose heads moved after the mark `after` (0: since the replica opened),
    /// and the mark to pass next time. A caller that follows the heads of every document
    /// after every write (the mesh) then looks at the documents that moved, not at all of
    /// them: a scope holds hundreds of bucket documents.
    pub fn moved_since(&self, after: u64) -> (Vec<DocId>, u64) {
        let moved = (self.moves.at.iter())
            .filter(|(_, &at)| at > after)
            .map(|(doc, _)| doc.clone())
            .collect();
        (moved, self.moves.commits)
    }

    pub fn all_heads(&self) -> BTreeMap<DocId, Vec<ChangeHash>> {
        self.summaries
            .iter()
            .map(|(doc, summary)| (doc.clone(), summary.heads.clone()))
            .collect()
    }

    /// A copy of every document, for a backup taken at one moment: saving them is the slow
    /// part, and happens after the lock is released.
    pub fn copy_documents(&mut self) -> Result<Vec<(DocId, Automerge)>> {
        let mut copies = Vec::new();
        for doc in self.doc_ids() {
            if let Some(state) = self.load_state(&doc)? {
                copies.push((doc, state.doc.clone()));
            }
        }
        Ok(copies)
    }

    /// The document, loaded if it is not; `None` when there is none or it cannot be loaded
    /// (logged: the sync protocol, which reads it this way, then treats it as absent).
    pub fn document(&mut self, doc: &DocId) -> Option<&Automerge> {
        match self.load_state(doc) {
            Ok(state) => state.map(|state| &state.doc),
            Err(error) => {
                tracing::error!(doc = %doc.name(), %error, "a document cannot be loaded");
                None
            }
        }
    }

    /// The document in the standard Automerge binary format.
    pub fn export(&mut self, doc: &DocId) -> Result<Option<Vec<u8>>> {
        Ok(self.load_state(doc)?.map(|state| state.doc.save()))
    }

    /// Applies changes received from a peer and makes them durable. Returns the hashes of the
    /// changes that were new here; changes whose dependencies are still missing wait in the
    /// document's queue and are not stored until they apply.
    /// `signatures` vouch for them (`trust`), and are kept to send on with them.
    pub fn apply_changes(
        &mut self,
        doc: &DocId,
        changes: Vec<Change>,
        signatures: Vec<ChangeSignature>,
    ) -> Result<Vec<ChangeHash>> {
        self.ensure_writable()?;
        let edit = self.next_edit();
        let state = self.state_or_new(doc)?;
        let before = state.doc.get_heads();
        if let Some(reason) = sequence::misnumbered(&state.doc, &changes) {
            if before.is_empty() {
                self.docs.remove(doc);
            }
            return Err(ReplicaError::Misnumbered(reason));
        }
        state.edits = edit;
        if let Err(error) = state.doc.apply_changes(changes) {
            self.roll_back(vec![(doc.clone(), before)]);
            return Err(error.into());
        }
        if state.doc.get_heads() == before {
            return Ok(Vec::new());
        }
        let added = state.doc.get_changes(&before);
        let hashes = added.iter().map(Change::hash).collect();
        let pending = Pending {
            changes: added
                .into_iter()
                .map(|change| (doc.clone(), change))
                .collect(),
            before: vec![(doc.clone(), before)],
            signatures: signatures.into_iter().map(|s| (doc.clone(), s)).collect(),
            ..Pending::default()
        };
        if let Err(pending) = self.gather(pending) {
            self.persist(pending)?;
        }
        Ok(hashes)
    }

    /// Merges a whole document (a sync snapshot, or a standard Automerge file) and stores the
    /// result as its new snapshot, with the `signatures` that vouch for its changes.
    pub fn merge_document(
        &mut self,
        doc: &DocId,
        bytes: &[u8],
        signatures: Vec<ChangeSignature>,
    ) -> Result<Vec<ChangeHash>> {
        self.ensure_writable()?;
        // Its persist writes a snapshot of the whole document: what was gathered goes first.
        self.commit_gathered()?;
        let edit = self.next_edit();
        let vetted = self.vetted.take().and_then(|vetted| vetted.of(doc, bytes));
        let actor = self.actor.clone();
        let state = self.state_or_new(doc)?;
        let before = state.doc.get_heads();
        state.edits = edit;
        let mut saved = None;
        let added: Vec<ChangeHash> = match vetted {
            // A full clone: the document the vetting loaded is the whole of it, and the bytes
            // received are its saved form, unless they carry more than the one document (a
            // change after it, which loading would hold back unvetted).
            Some((loaded, hashes)) if before.is_empty() => {
                state.doc = loaded.with_actor(actor);
                saved = whole::is_one_document(bytes).then_some(bytes);
                hashes
            }
            _ => {
                if let Err(error) = state.doc.load_incremental(bytes) {
                    self.roll_back(vec![(doc.clone(), before)]);
                    return Err(error.into());
                }
                (state.doc.get_changes_meta(&before).iter())
                    .map(|meta| meta.hash)
                    .collect()
            }
        };
        if !added.is_empty() {
            self.persist_merged(doc, before, signatures, saved)?;
        }
        Ok(added)
    }

    /// Sets how far ahead of this node's wall clock an accepted stamp may be
    /// (`[node] max_clock_offset_ms`).
    pub fn set_clock_bound(&mut self, bound: ClockBound) {
        self.clock_bound = bound;
    }

    /// The stamp of a new version that replaces one stamped `current`: the one clock of every
    /// write path (CLI, API, bridge messages without `ts`).
    pub fn stamp_after(&mut self, current: Option<Stamp>) -> Result<Stamp> {
        let wall = (self.wall_clock)();
        let tick = self.hlc.tick(wall).ok_or(ValidationError::ClockExhausted)?;
        let stamp = match current {
            Some(current) => tick.max(current.next().ok_or(ValidationError::ClockExhausted)?),
            None => tick,
        };
        self.hlc.observe(stamp, self.clock_bound.ceiling(wall));
        Ok(stamp)
    }

    /// How far ahead of the wall clock an import's stamp may be (what `accept_stamp` checks).
    pub fn clock_bound(&self) -> ClockBound {
        self.clock_bound
    }

    /// Refuses a stamp brought by an import (bridge, SQLite, API) that is too far ahead of
    /// this node's clock; an accepted one moves the clock along, up to its ceiling.
    fn accept_stamp(&mut self, stamp: Stamp) -> Result<()> {
        let wall = (self.wall_clock)();
        self.clock_bound
            .check(stamp, wall)
            .map_err(ValidationError::from)?;
        self.hlc.observe(stamp, self.clock_bound.ceiling(wall));
        Ok(())
    }
}

fn new_doc_state(actor: &ActorId) -> DocState {
    DocState {
        doc: Automerge::new().with_actor(actor.clone()),
        edits: 0,
        last_used: 0,
        changes_since_snapshot: 0,
        bytes_since_snapshot: 0,
        snapshot_bytes: 0,
    }
}

fn load_doc(name: &str, stored: storage::StoredDoc, actor: &ActorId) -> Result<DocState> {
    let load_error = |source| ReplicaError::Load {
        doc: name.to_string(),
        source: Box::new(source),
    };
    let mut state = new_doc_state(actor);
    if let Some(snapshot) = &stored.snapshot {
        state.doc = Automerge::load(snapshot)
            .map_err(load_error)?
            .with_actor(actor.clone());
        state.snapshot_bytes = snapshot.len();
    }
    let mut changes = Vec::with_capacity(stored.changes.len());
    for bytes in stored.changes {
        state.bytes_since_snapshot += bytes.len();
        let change = Change::from_bytes(bytes)
            .map_err(|_| ReplicaError::Corrupt("a stored change does not decode"))?;
        changes.push(change);
    }
    state.changes_since_snapshot = changes.len();
    state.doc.apply_changes(changes).map_err(load_error)?;
    Ok(state)
}

/// Past this many bytes of values a change is committed and the next one begun, so a large
/// batch (a bridge ingest of 70 000 keys) makes bounded changes that travel and apply whole,
/// not one of tens of MiB.
const MAX_CHANGE_VALUES: usize = 4 << 20;

/// `writes` to one document in the changes they make: one per `MAX_CHANGE_VALUES` of values.
fn change_chunks(writes: &[Staged]) -> Vec<Vec<&Staged>> {
    let size = |write: &Staged| match write {
        Staged::Memory(entry, _) => serde_json::to_vec(&entry.value).map_or(0, |v| v.len()),
        Staged::Skill(skill) => skill.content.len() + skill.description.len(),
    };
    let mut chunks: Vec<Vec<&Staged>> = Vec::new();
    let mut staged = MAX_CHANGE_VALUES;
    for write in writes {
        if staged >= MAX_CHANGE_VALUES {
            chunks.push(Vec::new());
            staged = 0;
        }
        staged += size(write);
        if let Some(chunk) = chunks.last_mut() {
            chunk.push(write);
        }
    }
    chunks
}

/// Staged writes by the document they go to, in the order they are applied.
type ByDoc = VecDeque<(DocId, Vec<Staged>)>;

/// The most writes one part of a batch applies before it is committed (`commit_writes`):
/// sled holds a batch's every key in memory while it applies it, several kB per write (a
/// 25 000-key part cost about 170 MB more than parts of 4096, and parts of 1024 about 30 to
/// 50 MB less than 4096: docs/benchmarks.md, Scale), and a flush per 1024 writes costs
/// little (an ingest of 100 000 keys took as long).
const PART_WRITES: usize = 1024;

/// When a part of a batch is committed: its documents' estimated memory, its writes.
#[derive(Clone, Copy)]
struct PartLimit {
    memory: u64,
    writes: usize,
}

impl PartLimit {
    /// Everything in one part.
    const WHOLE: PartLimit = PartLimit {
        memory: u64::MAX,
        writes: usize::MAX,
    };
}

/// Groups writes by document, the `loaded` ones first. A batch committed in parts evicts
/// documents between parts; in document order, an ingest that writes every bucket of a scope
/// again and again found, part after part, that the evictions had taken the buckets it was
/// about to write (least recently used is the wrong guess for a cyclic scan), and loaded
/// them all again. Loaded first, and with those still to write spared (`trim_sparing`), it
/// loads each document that was not in memory when it began once, and no other.
fn by_doc(writes: Vec<Staged>, loaded: impl Fn(&DocId) -> bool) -> ByDoc {
    let mut docs: BTreeMap<DocId, Vec<Staged>> = BTreeMap::new();
    for write in writes {
        docs.entry(write.doc()).or_default().push(write);
    }
    let (mut in_memory, to_load): (ByDoc, ByDoc) =
        docs.into_iter().partition(|(doc, _)| loaded(doc));
    in_memory.extend(to_load);
    in_memory
}

/// A write staged in a batch, applied to its document when the batch commits.
enum Staged {
    /// A memory version, and the document of its scope it goes to (`Batch::route`).
    Memory(MemoryEntry, DocId),
    Skill(Skill),
}

impl Staged {
    fn doc(&self) -> DocId {
        match self {
            Staged::Memory(_, doc) => doc.clone(),
            Staged::Skill(_) => DocId::Skills,
        }
    }

    fn apply(&self, tx: &mut Transaction<'_>) -> Result<(), automerge::AutomergeError> {
        match self {
            Staged::Memory(entry, _) => memory_doc::put(tx, entry),
            Staged::Skill(skill) => skills_doc::put(tx, skill),
        }
    }
}

/// Writes staged inside `Replica::batch`; they become durable together when it returns.
/// Reads inside the batch see the batch's own earlier writes.
pub struct Batch<'a> {
    replica: &'a mut Replica,
    writes: Vec<Staged>,
    latest_memory: HashMap<(Scope, String), usize>,
    latest_skill: HashMap<String, usize>,
    /// New keys this batch routed to each memory document.
    routed: HashMap<DocId, u64>,
}

/// What became of an imported version (`Batch::import_memory_judged`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImportOutcome {
    /// It is now the current version.
    Applied,
    /// The replica already held this very version (the same message or row again).
    Held,
    /// It was not applied, for this reason (a newer version, or a tie lost).
    NotApplied(NotApplied),
}

impl ImportOutcome {
    /// Whether the version changed the replica.
    pub fn applied(&self) -> bool {
        matches!(self, ImportOutcome::Applied)
    }
}

impl From<Verdict> for ImportOutcome {
    fn from(verdict: Verdict) -> Self {
        match verdict {
            Verdict::Apply(_) => ImportOutcome::Applied,
            Verdict::Held => ImportOutcome::Held,
            Verdict::NotApplied(reason) => ImportOutcome::NotApplied(reason),
        }
    }
}

impl Batch<'_> {
    pub fn put_memory(
        &mut self,
        scope: &Scope,
        key: &str,
        value: serde_json::Value,
    ) -> Result<MemoryEntry> {
        validate::key(key)?;
        validate::value_size(&value)?;
        secret::check_memory(key, &value).map_err(ValidationError::from)?;
        let held = self.current_held(scope, key)?;
        let current = held.as_ref().map(|(winner, _)| winner.updated_at);
        let entry = MemoryEntry {
            scope: scope.clone(),
            key: key.to_string(),
            value,
            node_id: self.replica.node_id.clone(),
            updated_at: self.replica.stamp_after(current)?,
            deleted: false,
            author: Some(self.replica.node_id.clone()),
            claim: None,
        };
        self.write_memory(&entry, held.map(|(_, doc)| doc));
        Ok(entry)
    }

    pub fn delete_memory(&mut self, scope: &Scope, key: &str) -> Result<bool> {
        let Some((current, doc)) = self.current_held(scope, key)?.filter(|(e, _)| !e.deleted)
        else {
            return Ok(false);
        };
        let entry = MemoryEntry {
            value: serde_json::Value::Null,
            node_id: self.replica.node_id.clone(),
            updated_at: self.replica.stamp_after(Some(current.updated_at))?,
            deleted: true,
            author: Some(self.replica.node_id.clone()),
            claim: None,
            ..current
        };
        self.write_memory(&entry, Some(doc));
        Ok(true)
    }

    /// Writes a version brought by a message or row (`via`) if it is newer than the winner.
    /// This node writes it, so it is stored as this node's, with the writer the message named
    /// kept as its claim (`as_imported`). `true` when it was written.
    pub fn import_memory(&mut self, entry: MemoryEntry, via: Via) -> Result<bool> {
        Ok(self.import_memory_judged(entry, via)?.applied())
    }

    /// [`Batch::import_memory`], saying why a version was not applied. Versions are compared
    /// by the instant and the writer each names, as the message or row gives them
    /// (`model::import_order`): a row exported from a version another node wrote, imported
    /// again, is that version, not newer; the same writer's later update at an equal `ts`
    /// replaces the earlier one.
    pub fn import_memory_judged(&mut self, entry: MemoryEntry, via: Via) -> Result<ImportOutcome> {
        let mut entry = self.as_imported(entry, via);
        validate::key(&entry.key)?;
        validate::value_size(&entry.value)?;
        secret::check_memory(&entry.key, &entry.value).map_err(ValidationError::from)?;
        let (held, doc) = self.current_held(&entry.scope, &entry.key)?.unzip();
        let same = held
            .as_ref()
            .is_some_and(|held| !held.deleted && held.value == entry.value);
        let verdict =
            import_order::judge(Named::from(&entry), held.as_ref().map(Named::from), same);
        let Verdict::Apply(stamp) = verdict else {
            return Ok(ImportOutcome::from(verdict));
        };
        self.replica.accept_stamp(entry.updated_at)?;
        entry.updated_at = stamp;
        self.write_memory(&entry, doc);
        Ok(ImportOutcome::Applied)
    }

    /// A write through the HTTP API that names its writer (`node_id`): stamped now, after the
    /// current version, so it always replaces it, and stored as this node's with the named
    /// writer as its claim.
    pub fn put_memory_claimed(&mut self, entry: MemoryEntry, via: Via) -> Result<MemoryEntry> {
        let mut entry = self.as_imported(entry, via);
        validate::key(&entry.key)?;
        validate::value_size(&entry.value)?;
        secret::check_memory(&entry.key, &entry.value).map_err(ValidationError::from)?;
        let (held, doc) = self.current_held(&entry.scope, &entry.key)?.unzip();
        entry.updated_at = self.replica.stamp_after(held.map(|held| held.updated_at))?;
        self.write_memory(&entry, doc);
        Ok(entry)
    }

    /// `entry` as this node stores it when it imports it: written by this node, and when the
    /// message or row named another writer, with that writer as the claim. Applying it again
    /// changes nothing.
    pub fn as_imported(&self, mut entry: MemoryEntry, via: Via) -> MemoryEntry {
        let own = &self.replica.node_id;
        if entry.claim.is_none() && entry.node_id != *own {
            entry.claim = Some(Claim {
                by: std::mem::take(&mut entry.node_id),
                via,
                checked_with: None,
            });
        }
        entry.node_id.clone_from(own);
        entry.author = Some(own.clone());
        entry
    }

    /// Stages `entry`: in `held`, the document holding the key's winner (`current_held`), so
    /// that a key stays where it is and concurrent writes of it meet in one document; a new
    /// key goes where `Replica::route_new` says, counting this batch's writes. Readers take
    /// every document of the scope, so a node that routes otherwise (it has not seen a
    /// document fill up yet) changes only where a version is kept.
    fn write_memory(&mut self, entry: &MemoryEntry, held: Option<DocId>) {
        let doc = held.unwrap_or_else(|| {
            let routed = &self.routed;
            let added = |doc: &DocId| routed.get(doc).copied().unwrap_or(0);
            let doc = self.replica.route_new(&entry.scope, &entry.key, added);
            *self.routed.entry(doc.clone()).or_default() += 1;
            doc
        });
        let slot = (entry.scope.clone(), entry.key.clone());
        self.latest_memory.insert(slot, self.writes.len());
        self.writes.push(Staged::Memory(entry.clone(), doc));
    }

    /// This node's id.
    pub fn node_id(&self) -> &str {
        self.replica.node_id()
    }

    /// The winning version of a key (a tombstone included) as this batch will leave it.
    pub fn current_memory(&self, scope: &Scope, key: &str) -> Result<Option<MemoryEntry>> {
        Ok(self.current_held(scope, key)?.map(|(winner, _)| winner))
    }

    /// `current_memory`, with the document that holds the winner.
    fn current_held(&self, scope: &Scope, key: &str) -> Result<Option<(MemoryEntry, DocId)>> {
        match self.latest_memory.get(&(scope.clone(), key.to_string())) {
            Some(&index) => match &self.writes[index] {
                Staged::Memory(entry, doc) => Ok(Some((entry.clone(), doc.clone()))),
                Staged::Skill(_) => unreachable!("memory index points at a memory write"),
            },
            None => self.replica.memory_winner_held(scope, key),
        }
    }

    /// The winning version of a skill (a tombstone included) as this batch will leave it,
    /// for imports whose outcome depends on it.
    pub fn current_skill(&self, name: &str) -> Result<Option<Skill>> {
        match self.latest_skill.get(name) {
            Some(&index) => match &self.writes[index] {
                Staged::Skill(skill) => Ok(Some(skill.clone())),
                Staged::Memory(..) => unreachable!("skill index points at a skill write"),
            },
            None => Ok(self.replica.skill_versions(name)?.map(|(winner, _)| winner)),
        }
    }

    pub fn put_skill(&mut self, write: SkillWrite) -> Result<Skill> {
        validate::skill_name(&write.name)?;
        validate::skill_text("content", &write.content)?;
        secret::check_text("skill content", &write.content).map_err(ValidationError::from)?;
        let current = self.current_skill(&write.name)?;
        let description = write
            .description
            .or_else(|| current.as_ref().map(|c| c.description.clone()))
            .unwrap_or_default();
        validate::skill_text("description", &description)?;
        secret::check_text("skill description", &description).map_err(ValidationError::from)?;
        let skill = Skill {
            name: write.name,
            content: write.content,
            path: write.path,
            description,
            source_node: self.replica.node_id.clone(),
            updated_at: self.replica.stamp_after(current.map(|c| c.updated_at))?,
            deleted: false,
        };
        self.write_skill(&skill)?;
        Ok(skill)
    }

    pub fn delete_skill(&mut self, name: &str) -> Result<bool> {
        let Some(current) = self.current_skill(name)?.filter(|s| !s.deleted) else {
            return Ok(false);
        };
        let skill = Skill {
            source_node: self.replica.node_id.clone(),
            updated_at: self.replica.stamp_after(Some(current.updated_at))?,
            deleted: true,
            ..current
        };
        self.write_skill(&skill)?;
        Ok(true)
    }

    /// Like [`Batch::import_memory`], for skills.
    pub fn import_skill(&mut self, skill: Skill) -> Result<bool> {
        Ok(self.import_skill_judged(skill)?.applied())
    }

    /// Like [`Batch::import_memory_judged`], for skills: the same content and path from the
    /// same writer at the same instant is the held version.
    pub fn import_skill_judged(&mut self, mut skill: Skill) -> Result<ImportOutcome> {
        validate::skill_name(&skill.name)?;
        validate::skill_text("content", &skill.content)?;
        secret::check_text("skill content", &skill.content).map_err(ValidationError::from)?;
        let held = self.current_skill(&skill.name)?;
        let same = held.as_ref().is_some_and(|held| {
            !held.deleted && held.content == skill.content && held.path == skill.path
        });
        let verdict =
            import_order::judge(Named::from(&skill), held.as_ref().map(Named::from), same);
        let Verdict::Apply(stamp) = verdict else {
            return Ok(ImportOutcome::from(verdict));
        };
        self.replica.accept_stamp(skill.updated_at)?;
        skill.updated_at = stamp;
        self.write_skill(&skill)?;
        Ok(ImportOutcome::Applied)
    }

    /// A skill written through the HTTP API, which names its `source_node`: stamped now,
    /// after the current version, so it always replaces it.
    pub fn put_skill_named(&mut self, mut skill: Skill) -> Result<Skill> {
        validate::skill_name(&skill.name)?;
        validate::skill_text("content", &skill.content)?;
        secret::check_text("skill content", &skill.content).map_err(ValidationError::from)?;
        let held = self.current_skill(&skill.name)?;
        skill.updated_at = self.replica.stamp_after(held.map(|held| held.updated_at))?;
        self.write_skill(&skill)?;
        Ok(skill)
    }

    fn write_skill(&mut self, skill: &Skill) -> Result<()> {
        self.latest_skill
            .insert(skill.name.clone(), self.writes.len());
        self.writes.push(Staged::Skill(skill.clone()));
        Ok(())
    }
}

#[cfg(test)]
mod tests;
