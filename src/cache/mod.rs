//! The files other programs read: the Phase 1 reference cache (`mesh-memory.json`,
//! `mesh/skills/<name>.md`) and what an OpenClaw agent loads itself (`<name>/SKILL.md`
//! folders and one Markdown file of memory per scope). Written from the replica in
//! proportion to what changed (`update`; `mesh-memory.json` is one file for all memory:
//! `memory_json`), each file by atomic rename and only when its content changed, and only
//! where the path is free or holds exactly what meshd wrote (`manifest`). Both ways: what
//! others change in them is read back as writes to the mesh (`inbound`), except the memory
//! pages.

mod files;
mod inbound;
mod manifest;
mod memory_json;
mod render;
mod update;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::model::{MemoryEntry, Skill};
use crate::replica::{Replica, ReplicaError, SharedReplica};
pub use inbound::Change;
use inbound::Edit;
pub use manifest::Collision;
use manifest::Manifest;
pub use memory_json::{Pace, BYTES_PER_SECOND as MEMORY_JSON_BYTES_PER_SECOND};
pub use render::safe_name;
use render::MEMORY_JSON;
use update::Followed;
pub use update::Synced;

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

/// Everything the caches are made of, copied out of the replica so that rendering and disk
/// writes happen without holding it: for the first write of a process only.
struct Snapshot {
    own: String,
    memory: Vec<MemoryEntry>,
    skills: Vec<Skill>,
}

impl Snapshot {
    fn of(replica: &Replica) -> Result<Snapshot, ReplicaError> {
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
    /// What the files reflect, once this process has written them.
    followed: Option<Followed>,
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
    /// given: the daemon), then brings every cache up to date with the replica where the
    /// path is meshd's or free.
    pub fn sync(
        &self,
        replica: &SharedReplica,
        import: Option<Import<'_>>,
    ) -> Result<CacheReport, CacheError> {
        self.sync_paced(replica, import, Pace::Now)
            .map(|synced| synced.report)
    }

    /// `sync`, rewriting only what changed since this process last wrote the caches (the
    /// first time: everything); with `Pace::Paced`, `mesh-memory.json` waits for its
    /// interval (`Synced::json_due` says how long).
    pub fn sync_paced(
        &self,
        replica: &SharedReplica,
        import: Option<Import<'_>>,
        pace: Pace,
    ) -> Result<Synced, CacheError> {
        self.with_state(|manifest, refused, followed| {
            let mut reread = BTreeSet::new();
            if let Some(import) = import {
                for edit in inbound::scan(&self.paths, manifest, replica)? {
                    reread.insert(edit.file());
                    read_back(edit, manifest, refused, import);
                }
            }
            let synced = update::write(&self.paths, replica, manifest, followed, &reread, pace)?;
            manifest
                .save_if_changed(&self.manifest_path)
                .map_err(|source| CacheError::io(&self.manifest_path, source))?;
            Ok(synced)
        })
    }

    pub fn status(&self) -> FilesStatus {
        self.with_state(|manifest, refused, _| FilesStatus {
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
    /// meshd, on first use), the refusals and what the files reflect.
    fn with_state<T>(
        &self,
        f: impl FnOnce(&mut Manifest, &mut BTreeMap<PathBuf, String>, &mut Option<Followed>) -> T,
    ) -> T {
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let State {
            manifest,
            refused,
            followed,
        } = &mut *state;
        let manifest = manifest
            .get_or_insert_with(|| Manifest::load_or_adopt(&self.manifest_path, &self.paths));
        f(manifest, refused, followed)
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

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::os::unix::fs::MetadataExt;

    use super::*;
    use crate::model::Scope;
    use crate::replica::SkillWrite;

    fn put(replica: &SharedReplica, content: &str) {
        put_skill(replica, "triage", content);
    }

    fn put_skill(replica: &SharedReplica, name: &str, content: &str) {
        let write = SkillWrite {
            name: name.into(),
            content: content.into(),
            description: None,
            path: None,
        };
        replica.put_skill(write).unwrap();
    }

    fn setup() -> (tempfile::TempDir, SharedReplica, CachePaths, CacheFiles) {
        let temp = tempfile::tempdir().unwrap();
        let replica = SharedReplica::new(Replica::open(&temp.path().join("store"), "own").unwrap());
        let paths = CachePaths {
            openclaw_home: temp.path().join("openclaw"),
            skills_dir: temp.path().join("skills"),
            memory_dir: temp.path().join("memory"),
        };
        let files = CacheFiles::new(paths.clone(), temp.path().join("cache.manifest"));
        (temp, replica, paths, files)
    }

    /// A file meshd wrote that the mesh has moved past since is stale, not an edit: reading
    /// it back would undo the mesh's newer version. Only its content tells it apart.
    #[test]
    fn meshds_stale_files_are_not_read_back_and_edits_are() {
        let (temp, replica, paths, files) = setup();
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

    fn inode(path: &Path) -> u64 {
        std::fs::metadata(path).unwrap().ino()
    }

    /// After the first write of a process, a write renders and looks at the files of what
    /// changed only: every other file is neither read (`unchanged` counts the files compared)
    /// nor replaced.
    #[test]
    fn a_write_touches_only_the_files_of_what_changed() {
        let (_temp, replica, paths, files) = setup();
        replica
            .batch(|batch| {
                for scope in 0..20 {
                    let scope = Scope::User(format!("u{scope}"));
                    for key in 0..3 {
                        batch.put_memory(&scope, &format!("k{key}"), serde_json::json!(key))?;
                    }
                }
                Ok(())
            })
            .unwrap();
        for skill in 0..20 {
            put_skill(&replica, &format!("s{skill}"), &format!("skill {skill}"));
        }
        let first = files.sync(&replica, None).unwrap();
        assert_eq!(first.written, 20 + 1 + 2 * 20);
        let quiet_page = paths.memory_dir.join("user-u1.md");
        let quiet_skill = paths.skills_dir.join("s1/SKILL.md");
        let (page_inode, skill_inode) = (inode(&quiet_page), inode(&quiet_skill));
        let json_inode = inode(&paths.memory_json());

        replica
            .batch(|batch| batch.put_memory(&Scope::User("u0".into()), "k0", "new".into()))
            .unwrap();
        let report = files.sync(&replica, None).unwrap();
        assert_eq!(
            report,
            CacheReport {
                written: 2,
                unchanged: 0,
                removed: 0
            },
            "the scope's page and mesh-memory.json"
        );
        let page = std::fs::read_to_string(paths.memory_dir.join("user-u0.md")).unwrap();
        assert!(page.contains("\nnew\n"), "{page}");
        assert!(std::fs::read_to_string(paths.memory_json())
            .unwrap()
            .contains("\"user:u0:k0\": {\n    \"value\": \"new\""));
        assert_ne!(inode(&paths.memory_json()), json_inode);
        assert_eq!(inode(&quiet_page), page_inode);

        put_skill(&replica, "s0", "skill zero, edited");
        let report = files.sync(&replica, None).unwrap();
        assert_eq!((report.written, report.unchanged), (2, 0));
        let reference = paths.reference_skills_dir().join("s0.md");
        assert_eq!(
            std::fs::read_to_string(reference).unwrap(),
            "skill zero, edited"
        );
        assert_eq!(inode(&quiet_skill), skill_inode);

        replica.with(|r| r.delete_skill("s2")).unwrap();
        let report = files.sync(&replica, None).unwrap();
        assert_eq!(
            (report.written, report.unchanged, report.removed),
            (0, 0, 2)
        );
        assert!(!paths.skills_dir.join("s2").exists());

        // meshd's file someone deleted comes back at the next write, and only it.
        std::fs::remove_file(&quiet_page).unwrap();
        let report = files.sync(&replica, None).unwrap();
        assert_eq!((report.written, report.unchanged), (1, 0));
        assert!(quiet_page.exists());
        assert_eq!(files.sync(&replica, None).unwrap(), CacheReport::default());
    }

    /// Incremental writes keep the never-clobber rule: a foreign file at a skill's name gets
    /// the mesh's version beside it, listed as a collision until the name is free again.
    #[test]
    fn a_changed_skill_goes_beside_a_foreign_file_until_the_name_is_free() {
        let (_temp, replica, paths, files) = setup();
        put(&replica, "one");
        files.sync(&replica, None).unwrap();
        let own = paths.skills_dir.join("triage/SKILL.md");
        std::fs::write(&own, "the agent's own").unwrap();
        put(&replica, "two");
        files.sync(&replica, None).unwrap();
        assert_eq!(std::fs::read_to_string(&own).unwrap(), "the agent's own");
        let copy = paths.skills_dir.join("triage..mesh/SKILL.md");
        assert!(std::fs::read_to_string(&copy).unwrap().ends_with("two"));
        assert_eq!(files.status().collisions.len(), 1);

        std::fs::remove_file(&own).unwrap();
        put(&replica, "three");
        files.sync(&replica, None).unwrap();
        assert!(std::fs::read_to_string(&own).unwrap().ends_with("three"));
        assert!(!copy.exists(), "meshd's copy goes once the name is free");
        assert!(files.status().collisions.is_empty());
    }
}
