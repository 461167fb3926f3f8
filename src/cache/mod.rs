//! The files other programs read: the Phase 1 reference cache (`mesh-memory.json`,
//! `mesh/skills/<name>.md`) and what an OpenClaw agent loads itself (`<name>/SKILL.md`
//! folders and one Markdown file of memory per scope). Written whole from the replica, each
//! file by atomic rename and only when its content changed, and only where the path is free
//! or holds exactly what meshd wrote (`manifest`). Both ways: what others change in them
//! is read back as writes to the mesh (`inbound`), except the memory pages.

mod files;
mod inbound;
mod manifest;
mod render;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::model::{MemoryEntry, Scope, Skill};
use crate::replica::{Replica, ReplicaError, SharedReplica};
use files::{Layout, Placer};
pub use inbound::Change;
use inbound::Edit;
pub use manifest::Collision;
use manifest::Manifest;
pub use render::safe_name;
use render::MEMORY_JSON;

/// Where the caches go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachePaths {
    /// `$OPENCLAW_HOME`: holds `mesh-memory.json` and `mesh/skills/`.
    pub openclaw_home: PathBuf,
    /// OpenClaw skill folders (`skills.load.extraDirs`).
    pub skills_dir: PathBuf,
    /// Memory as Markdown (`agents.defaults.memorySearch.extraPaths`).
    pub memory_dir: PathBuf,
}

impl CachePaths {
    pub fn memory_json(&self) -> PathBuf {
        self.openclaw_home.join(MEMORY_JSON)
    }

    pub fn reference_skills_dir(&self) -> PathBuf {
        self.openclaw_home.join("mesh").join("skills")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("cannot write the cache file {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read the store for the caches: {0}")]
    Store(#[from] ReplicaError),
}

impl CacheError {
    fn io(path: &Path, source: std::io::Error) -> CacheError {
        CacheError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// What a cache write did, in files.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct CacheReport {
    pub written: usize,
    pub unchanged: usize,
    pub removed: usize,
}

/// What the caches are made of, copied out of the replica so that rendering and disk writes
/// happen without holding it.
pub struct Snapshot {
    own: String,
    memory: Vec<MemoryEntry>,
    skills: Vec<Skill>,
}

impl Snapshot {
    pub fn of(replica: &Replica) -> Result<Snapshot, ReplicaError> {
        Ok(Snapshot {
            own: replica.node_id().to_string(),
            memory: replica.list_memory(None)?,
            skills: replica.list_skills()?,
        })
    }
}

/// The caches of one node: where they go, what meshd wrote there (the manifest) and what it
/// could not read back. One lock serialises reading back and writing, so meshd's own files
/// are always recorded before anyone looks at them again.
pub struct CacheFiles {
    paths: CachePaths,
    manifest_path: PathBuf,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Loaded at first use: most commands never touch the caches.
    manifest: Option<Manifest>,
    /// Files whose changes the mesh refused, with why; while the daemon runs.
    refused: BTreeMap<PathBuf, String>,
}

/// Runs one change read back from a file as a write to the mesh; `Err` says why it was
/// refused.
pub type Import<'a> = &'a dyn Fn(&Change) -> Result<(), String>;

/// What `meshd status` shows about the cache files.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FilesStatus {
    /// Names the mesh uses that hold someone else's file.
    pub collisions: Vec<Collision>,
    /// Files whose changes were not taken into the mesh.
    pub refused: Vec<FileRefusal>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRefusal {
    pub file: PathBuf,
    pub reason: String,
}

impl CacheFiles {
    /// The caches at `paths`, with meshd's manifest at `manifest_path` (in the node home).
    pub fn new(paths: CachePaths, manifest_path: PathBuf) -> CacheFiles {
        CacheFiles {
            paths,
            manifest_path,
            state: Mutex::new(State::default()),
        }
    }

    pub fn paths(&self) -> &CachePaths {
        &self.paths
    }

    /// Takes what others changed in the cache files into the mesh through `import` (when
    /// given: the daemon), then rewrites every cache from the replica where the path is
    /// meshd's or free.
    pub fn sync(
        &self,
        replica: &SharedReplica,
        import: Option<Import<'_>>,
    ) -> Result<CacheReport, CacheError> {
        self.with_state(|manifest, refused| self.sync_locked(replica, import, manifest, refused))
    }

    fn sync_locked(
        &self,
        replica: &SharedReplica,
        import: Option<Import<'_>>,
        manifest: &mut Manifest,
        refused: &mut BTreeMap<PathBuf, String>,
    ) -> Result<CacheReport, CacheError> {
        if let Some(import) = import {
            let snapshot = replica.with(|replica| Snapshot::of(replica))?;
            for edit in inbound::scan(&self.paths, manifest, &snapshot) {
                read_back(edit, manifest, refused, import);
            }
        }
        let snapshot = replica.with(|replica| Snapshot::of(replica))?;
        let report = write_snapshot(snapshot, &self.paths, manifest)?;
        manifest
            .save(&self.manifest_path)
            .map_err(|source| CacheError::io(&self.manifest_path, source))?;
        Ok(report)
    }

    pub fn status(&self) -> FilesStatus {
        self.with_state(|manifest, refused| FilesStatus {
            collisions: manifest.collisions().to_vec(),
            refused: refused
                .iter()
                .map(|(file, reason)| FileRefusal {
                    file: file.clone(),
                    reason: reason.clone(),
                })
                .collect(),
        })
    }

    /// Runs `f` under the cache lock on the manifest (loaded, or adopted from an older
    /// meshd, on first use) and the refusals.
    fn with_state<T>(
        &self,
        f: impl FnOnce(&mut Manifest, &mut BTreeMap<PathBuf, String>) -> T,
    ) -> T {
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let State { manifest, refused } = &mut *state;
        let manifest = manifest
            .get_or_insert_with(|| Manifest::load_or_adopt(&self.manifest_path, &self.paths));
        f(manifest, refused)
    }
}

/// Imports one file's changes. Once all are in the mesh, the bytes read are recorded as
/// meshd's, so the next write may replace them with the mesh's version; otherwise the file
/// stays foreign and the refusal is kept (and logged once per reason).
fn read_back(
    mut edit: Edit,
    manifest: &mut Manifest,
    refused: &mut BTreeMap<PathBuf, String>,
    import: Import<'_>,
) {
    let file = edit.file();
    for change in &edit.changes {
        match import(change) {
            Ok(()) => {
                tracing::info!(file = %file.display(), "{} taken from the file into the mesh", change.subject())
            }
            Err(reason) => edit
                .problems
                .push(format!("{}: {reason}", change.subject())),
        }
    }
    let imported = edit.problems.is_empty();
    for (label, value) in &edit.entries {
        manifest.record_entry(&edit.dir, label, value);
    }
    if imported {
        manifest.record(&edit.dir, &edit.rel, &edit.bytes);
        refused.remove(&file);
        return;
    }
    let reason = edit.problems.join("; ");
    if refused.get(&file) != Some(&reason) {
        tracing::warn!(file = %file.display(), %reason, "changes in a cache file were not taken into the mesh; the file stays as it is and meshd does not overwrite it");
        refused.insert(file, reason);
    }
}

/// Rewrites every cache from a snapshot where the path is meshd's or free, recording what it
/// wrote in `manifest` and reporting new collisions.
fn write_snapshot(
    snapshot: Snapshot,
    paths: &CachePaths,
    manifest: &mut Manifest,
) -> Result<CacheReport, CacheError> {
    let own = snapshot.own.as_str();
    let memory = snapshot.memory;
    let skills = render::unique_skills(snapshot.skills);
    let mut placer = Placer {
        manifest,
        report: CacheReport::default(),
        collisions: Vec::new(),
    };
    let memory_json = render::reference_memory(&memory, own);
    let json = BTreeMap::from([(MEMORY_JSON.to_string(), memory_json)]);
    let held = placer.sync_dir(&paths.openclaw_home, Layout::Files, &json)?;
    if held.contains(MEMORY_JSON) {
        let entries: Vec<(String, &serde_json::Value)> = memory
            .iter()
            .map(|entry| (render::memory_label(entry, own), &entry.value))
            .collect();
        placer
            .manifest
            .set_entries(&paths.openclaw_home, entries.iter().map(|(l, v)| (l, *v)));
    }
    let reference: BTreeMap<String, String> = skills
        .iter()
        .map(|(safe, skill)| (render::reference_skill_file(safe), skill.body().to_string()))
        .collect();
    placer.sync_dir(&paths.reference_skills_dir(), Layout::Files, &reference)?;
    let native: BTreeMap<String, String> = skills
        .iter()
        .map(|(safe, skill)| (safe.clone(), render::skill_md(skill)))
        .collect();
    placer.sync_dir(&paths.skills_dir, Layout::SkillFolders, &native)?;
    let pages = memory_pages(&memory, own);
    placer.sync_dir(&paths.memory_dir, Layout::Files, &pages)?;
    let Placer {
        manifest,
        report,
        collisions,
    } = placer;
    for collision in manifest.set_collisions(collisions) {
        let copy = collision
            .mesh_copy
            .as_ref()
            .map_or("nowhere: that name is taken too".to_string(), |c| {
                c.display().to_string()
            });
        tracing::warn!(file = %collision.file.display(), mesh_copy = %copy, "a file meshd did not write holds a name the mesh uses; it stays, and the mesh's version is beside it");
    }
    Ok(report)
}

/// One Markdown file per scope, named after it.
fn memory_pages(memory: &[MemoryEntry], own: &str) -> BTreeMap<String, String> {
    let mut by_scope: BTreeMap<&Scope, Vec<&MemoryEntry>> = BTreeMap::new();
    for entry in memory {
        by_scope.entry(&entry.scope).or_default().push(entry);
    }
    by_scope
        .into_iter()
        .map(|(scope, entries)| {
            let label = scope.label(own);
            let file = format!("{}.md", label.replace(':', "-"));
            (file, render::memory_md(&label, &entries))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

    use super::*;
    use crate::replica::SkillWrite;

    fn put(replica: &SharedReplica, content: &str) {
        let write = SkillWrite {
            name: "triage".into(),
            content: content.into(),
            description: None,
            path: None,
        };
        replica.put_skill(write).unwrap();
    }

    /// A file meshd wrote that the mesh has moved past since is stale, not an edit: reading
    /// it back would undo the mesh's newer version. Only its content tells it apart.
    #[test]
    fn meshds_stale_files_are_not_read_back_and_edits_are() {
        let temp = tempfile::tempdir().unwrap();
        let replica = SharedReplica::new(Replica::open(&temp.path().join("store"), "own").unwrap());
        let paths = CachePaths {
            openclaw_home: temp.path().join("openclaw"),
            skills_dir: temp.path().join("skills"),
            memory_dir: temp.path().join("memory"),
        };
        let files = CacheFiles::new(paths.clone(), temp.path().join("cache.manifest"));
        let imported = RefCell::new(Vec::new());
        let import = |change: &Change| {
            imported.borrow_mut().push(change.clone());
            Ok(())
        };
        put(&replica, "one");
        files.sync(&replica, Some(&import)).unwrap();
        put(&replica, "two");
        // A new process: only the manifest on disk knows what meshd wrote.
        let files = CacheFiles::new(paths.clone(), temp.path().join("cache.manifest"));
        files.sync(&replica, Some(&import)).unwrap();
        assert!(imported.borrow().is_empty(), "{:?}", imported.borrow());
        let reference = paths.reference_skills_dir().join("triage.md");
        assert_eq!(std::fs::read_to_string(&reference).unwrap(), "two");
        std::fs::write(&reference, "three").unwrap();
        files.sync(&replica, Some(&import)).unwrap();
        assert_eq!(
            *imported.borrow(),
            [Change::Skill {
                name: "triage".into(),
                content: "three".into(),
                description: None,
                path: None,
            }]
        );
    }
}
