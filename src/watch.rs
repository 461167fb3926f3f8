//! Watching the cache files others may change (`mesh-memory.json`, `mesh/skills/`, the skill
//! folders), so their changes reach the mesh: after a burst of file events has been quiet
//! for `QUIET`, the view writer is told, and it reads the files back before it writes.
//! meshd's own writes cause events too; reading back recognises them by content (the
//! manifest), so they never become writes.

use std::path::{Path, PathBuf};
use std::time::Duration;

use notify::event::{AccessKind, AccessMode};
use notify::{Event, EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::cache::CachePaths;

/// How long the files must be quiet before they are read: a writer that is not atomic has
/// finished by then.
const QUIET: Duration = Duration::from_millis(300);

/// Starts watching as one of `tasks` until `shutdown`; `changed` runs after each quiet
/// burst. A directory that cannot be watched is logged: its files are then read back only
/// when the mesh changes.
pub fn spawn(
    paths: &CachePaths,
    tasks: &TaskTracker,
    shutdown: CancellationToken,
    changed: impl Fn() + Send + 'static,
) {
    let (events, mut quiet) = mpsc::unbounded_channel();
    let relevant = Relevant::new(paths);
    let handler = move |event: notify::Result<Event>| match event {
        Ok(event) if relevant.matches(&event) => {
            let _ = events.send(());
        }
        Ok(_) => {}
        Err(error) => tracing::debug!(%error, "cache file watch event lost"),
    };
    let mut watcher = match notify::recommended_watcher(handler) {
        Ok(watcher) => watcher,
        Err(error) => {
            tracing::warn!(%error, "cannot watch the cache files; changes others make to them reach the mesh only after the next change of the mesh");
            return;
        }
    };
    watch(
        &mut watcher,
        &paths.openclaw_home,
        RecursiveMode::NonRecursive,
    );
    watch(
        &mut watcher,
        &paths.reference_skills_dir(),
        RecursiveMode::NonRecursive,
    );
    watch(&mut watcher, &paths.skills_dir, RecursiveMode::Recursive);
    tasks.spawn(async move {
        // The watcher stops when dropped: it lives as long as this task.
        let _watcher = watcher;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                event = quiet.recv() => if event.is_none() { return },
            }
            loop {
                match tokio::time::timeout(QUIET, quiet.recv()).await {
                    Ok(Some(())) => continue,
                    Ok(None) => return,
                    Err(_) => break,
                }
            }
            changed();
        }
    });
}

fn watch(watcher: &mut RecommendedWatcher, dir: &Path, mode: RecursiveMode) {
    let watched = std::fs::create_dir_all(dir)
        .map_err(notify::Error::io)
        .and_then(|()| watcher.watch(dir, mode));
    if let Err(error) = watched {
        tracing::warn!(dir = %dir.display(), %error, "cannot watch a cache directory; changes others make there reach the mesh only after the next change of the mesh");
    }
}

/// The events that may be someone's write to a file meshd reads back: not reads, and not
/// other files of `$OPENCLAW_HOME` or meshd's temporary files.
struct Relevant {
    memory_json: PathBuf,
    reference: PathBuf,
    skills: PathBuf,
}

impl Relevant {
    fn new(paths: &CachePaths) -> Relevant {
        Relevant {
            memory_json: paths.memory_json(),
            reference: paths.reference_skills_dir(),
            skills: paths.skills_dir.clone(),
        }
    }

    fn matches(&self, event: &Event) -> bool {
        let writes = match event.kind {
            EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
            EventKind::Access(_) => false,
            _ => true,
        };
        writes
            && event.paths.iter().any(|path| {
                *path == self.memory_json
                    || path.starts_with(&self.reference)
                    || path.starts_with(&self.skills)
            })
    }
}
