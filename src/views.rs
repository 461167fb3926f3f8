//! Data derived from the replica for other programs: the caches (`cache`), the SQLite
//! mirror for dashboards (`[store] mirror`) and the search index. `ViewWriter` rewrites them shortly after
//! changes, once for a burst of changes; whoever writes to the replica calls `changed`.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::cache::{CacheFiles, Change};
use crate::config::Config;
use crate::replica::SharedReplica;
use crate::search::Searcher;
use crate::store;

/// Runs a change read back from a cache file as a write to the mesh, with the write's
/// effects; `Err` says why it was refused.
pub type Importer = Arc<dyn Fn(&Change) -> Result<(), String> + Send + Sync>;

/// Which views this node keeps.
#[derive(Clone, Default)]
pub struct Views {
    pub cache: Option<Arc<CacheFiles>>,
    pub mirror: Option<PathBuf>,
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
            mirror: config.store.mirror.clone(),
            search: None,
            import: None,
        }
    }

    pub fn with_search(mut self, search: Arc<Searcher>) -> Views {
        self.search = Some(search);
        self
    }

    /// Rewrites every view, after reading back what others changed in the caches when there
    /// is an importer. A failing view is logged and does not stop the others: the replica is
    /// the truth, the views are rewritten whole on the next change. The replica is locked only
    /// to copy the caches' content out, to import, and to export the mirror.
    pub fn write(&self, replica: &SharedReplica) {
        if let Some(cache) = &self.cache {
            let import = self
                .import
                .as_deref()
                .map(|import| import as &dyn Fn(&Change) -> Result<(), String>);
            match cache.sync(replica, import) {
                Ok(report) => tracing::debug!(?report, "caches written"),
                Err(error) => tracing::warn!(%error, "caches not written"),
            }
        }
        if let Some(mirror) = &self.mirror {
            match replica.with(|replica| store::export(replica, mirror, true)) {
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
    /// change is then written by `flush`).
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
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = task.wake.notified() => {}
                }
                tokio::time::sleep(debounce).await;
                task.flush().await;
            }
        });
        writer
    }

    /// Marks the views stale.
    pub fn changed(&self) {
        self.dirty.store(true, Ordering::SeqCst);
        self.wake.notify_one();
    }

    /// Rewrites the views now if anything changed since they were last written (also for
    /// shutdown, so the last change is not lost).
    pub async fn flush(&self) {
        if !self.dirty.swap(false, Ordering::SeqCst) {
            return;
        }
        let (replica, views) = (self.replica.clone(), self.views.clone());
        let written = tokio::task::spawn_blocking(move || views.write(&replica)).await;
        if let Err(error) = written {
            tracing::warn!(%error, "the view writer failed");
        }
    }
}
