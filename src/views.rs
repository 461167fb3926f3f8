//! Data derived from the replica for other programs: the caches (`cache`), the SQLite
//! mirror for dashboards (`[store] mirror`) and the search index. `ViewWriter` brings them
//! up to date shortly after changes, once for a burst of changes, each in proportion to what
//! changed (`follow`); whoever writes to the replica calls `changed`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::cache::{CacheFiles, Change, Pace};
use crate::config::Config;
use crate::replica::SharedReplica;
use crate::search::Searcher;
use crate::store::Mirror;

/// Runs a change read back from a cache file as a write to the mesh, with the write's
/// effects; `Err` says why it was refused.
pub type Importer = Arc<dyn Fn(&Change) -> Result<(), String> + Send + Sync>;

/// Which views this node keeps.
#[derive(Clone, Default)]
pub struct Views {
    pub cache: Option<Arc<CacheFiles>>,
    pub mirror: Option<Arc<Mirror>>,
    /// The search index, brought up to date after the files.
    pub search: Option<Arc<Searcher>>,
    /// Set by the daemon: what others change in the caches is read back before each write.
    pub import: Option<Importer>,
}

impl Views {
    /// From `[cache]` and `[store]`; `cache` are the node's cache files.
    pub fn from_config(config: &Config, cache: Arc<CacheFiles>) -> Views {
        Views {
            cache: config.cache.enabled.then_some(cache),
            mirror: config
                .store
                .mirror
                .clone()
                .map(|path| Arc::new(Mirror::new(path))),
            search: None,
            import: None,
        }
    }

    pub fn with_search(mut self, search: Arc<Searcher>) -> Views {
        self.search = Some(search);
        self
    }

    /// Brings every view up to date, after reading back what others changed in the caches
    /// when there is an importer. A failing view is logged and does not stop the others: the
    /// replica is the truth, and what a view failed to take in is redone on the next change.
    /// The replica is locked only to read what changed and to import. Returns when the views
    /// owe a write that `pace` put off (`mesh-memory.json`, a scope's page: `cache::Pace`).
    pub fn write(&self, replica: &SharedReplica, pace: Pace) -> Option<Duration> {
        let mut owed = None;
        if let Some(cache) = &self.cache {
            let import = self
                .import
                .as_deref()
                .map(|import| import as &dyn Fn(&Change) -> Result<(), String>);
            match cache.sync_paced(replica, import, pace) {
                Ok(synced) => {
                    tracing::debug!(report = ?synced.report, due = ?synced.due, "caches written");
                    owed = synced.due;
                }
                Err(error) => tracing::warn!(%error, "caches not written"),
            }
        }
        if let Some(mirror) = &self.mirror {
            match mirror.write(replica) {
                Ok(report) => tracing::debug!(?report, "store mirror written"),
                Err(error) => tracing::warn!(%error, "store mirror not written"),
            }
        }
        if let Some(search) = &self.search {
            match search.refresh(replica) {
                Ok(refreshed) => tracing::debug!(?refreshed, "search index refreshed"),
                Err(error) => tracing::warn!(%error, "search index not refreshed"),
            }
        }
        owed
    }
}

/// The debounced "on change" hook: `changed` is cheap and never blocks; the views are
/// rewritten `debounce` after the first change of a burst.
#[derive(Clone)]
pub struct ViewWriter {
    dirty: Arc<AtomicBool>,
    wake: Arc<Notify>,
    replica: SharedReplica,
    views: Arc<Views>,
}

impl ViewWriter {
    /// Starts the writer as one of `tasks`; it stops when `shutdown` is cancelled (the last
    /// change is then written by `flush`). A write the pace put off is made when it is due.
    pub fn spawn(
        replica: SharedReplica,
        views: Views,
        debounce: Duration,
        tasks: &TaskTracker,
        shutdown: CancellationToken,
    ) -> ViewWriter {
        let writer = ViewWriter {
            dirty: Arc::new(AtomicBool::new(false)),
            wake: Arc::new(Notify::new()),
            replica,
            views: Arc::new(views),
        };
        let task = writer.clone();
        tasks.spawn(async move {
            let mut owed = None;
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = task.wake.notified() => tokio::time::sleep(debounce).await,
                    _ = sleep_for(owed) => {}
                }
                owed = task.write(Pace::Paced).await;
            }
        });
        writer
    }

    /// Marks the views stale.
    pub fn changed(&self) {
        self.dirty.store(true, Ordering::SeqCst);
        self.wake.notify_one();
    }

    /// Writes the views now if anything changed since they were last written, nothing put
    /// off (for shutdown, so the last change is not lost).
    pub async fn flush(&self) {
        self.write(Pace::Now).await;
    }

    /// Writes the views if anything changed or a write is owed; returns when a write put off
    /// by `pace` is due.
    async fn write(&self, pace: Pace) -> Option<Duration> {
        if !self.dirty.swap(false, Ordering::SeqCst) {
            return None;
        }
        let (replica, views) = (self.replica.clone(), self.views.clone());
        match tokio::task::spawn_blocking(move || views.write(&replica, pace)).await {
            Ok(Some(owed)) => {
                // Owed until written, also to the last `flush`.
                self.dirty.store(true, Ordering::SeqCst);
                Some(owed)
            }
            Ok(None) => None,
            Err(error) => {
                tracing::warn!(%error, "the view writer failed");
                None
            }
        }
    }
}

/// Sleeps for `owed`; never returns without it.
async fn sleep_for(owed: Option<Duration>) {
    match owed {
        Some(owed) => tokio::time::sleep(owed).await,
        None => std::future::pending().await,
    }
}
