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
    /// Starts the writer as one of `tasks`; it stops when `shutdown` is cancelled, also in
    /// the middle of a write (the last change, and the rest of that write, are then written
    /// by `flush`). A write the pace put off is made when it is due.
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
                tokio::select! {
                    written = task.write(Pace::Paced) => owed = written,
                    // A long write (the first on a large store) is not waited for here: the
                    // stop's `flush` waits for it (each view has its lock) and writes what
                    // it leaves, so the stop does not report this task as late.
                    _ = shutdown.cancelled() => {
                        task.dirty.store(true, Ordering::SeqCst);
                        return;
                    }
                }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Scope;
    use crate::replica::Replica;
    use crate::trust::NodeKey;

    /// The daemon's stop waits a few seconds for its tasks, then warns that some are late.
    /// The view writer in the middle of a long write (here: waiting for the replica) stops
    /// at once, and the last flush writes the views.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_view_writer_stops_in_the_middle_of_a_write_and_the_flush_finishes_it() {
        let dir = tempfile::tempdir().unwrap();
        let key = NodeKey::insecure_from_name("n1");
        let replica = SharedReplica::new(Replica::open(&dir.path().join("store"), key).unwrap());
        replica
            .with(|r| r.put_memory(&Scope::Mesh, "k", serde_json::json!(1)))
            .unwrap();
        let mirror = dir.path().join("mirror.sqlite");
        let views = Views {
            mirror: Some(Arc::new(Mirror::new(mirror.clone()))),
            ..Views::default()
        };
        let (locked, release) = hold(&replica);
        let (tasks, shutdown) = (TaskTracker::new(), CancellationToken::new());
        let writer = ViewWriter::spawn(
            replica.clone(),
            views,
            Duration::from_millis(1),
            &tasks,
            shutdown.clone(),
        );
        writer.changed();
        // Long enough for the write to start and wait for the replica.
        tokio::time::sleep(Duration::from_millis(300)).await;
        shutdown.cancel();
        tasks.close();
        let stopped = tokio::time::timeout(Duration::from_secs(20), tasks.wait()).await;
        release.send(()).unwrap();
        locked.join().unwrap();
        assert!(
            stopped.is_ok(),
            "the view writer waited for its write to stop"
        );
        writer.flush().await;
        let rows: i64 = rusqlite::Connection::open(&mirror)
            .unwrap()
            .query_row("SELECT COUNT(*) FROM mesh_memory", [], |row| row.get(0))
            .unwrap();
        assert_eq!(rows, 1);
    }

    /// Holds the replica's lock on another thread until told to let go.
    fn hold(replica: &SharedReplica) -> (std::thread::JoinHandle<()>, std::sync::mpsc::Sender<()>) {
        let (release, released) = std::sync::mpsc::channel();
        let (held, holding) = std::sync::mpsc::channel();
        let holder = replica.clone();
        let thread = std::thread::spawn(move || {
            holder.with(|_| {
                held.send(()).unwrap();
                released.recv().unwrap();
            });
        });
        holding.recv().unwrap();
        (thread, release)
    }
}
