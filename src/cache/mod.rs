//! The files other programs read: the Phase 1 reference cache (`mesh-memory.json`,
//! `mesh/skills/<name>.md`) and what an OpenClaw agent loads itself (`<name>/SKILL.md`
//! folders and one Markdown file of memory per scope). Written from the replica in
//! proportion to what changed (`update`; `mesh-memory.json` is one file for all memory:
//! `memory_json`; both it and a scope's page are rewritten whole, at most once per interval:
//! `pace`), each file by atomic rename and only when its content changed, and only
//! where the path is free or holds exactly what meshd wrote (`manifest`). Both ways: what
//! others change in them is read back as writes to the mesh (`inbound`), except the memory
//! pages.

mod entries;
mod files;
mod inbound;
mod manifest;
mod memory_json;
mod pace;
mod parts;
mod render;
mod update;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::replica::{ReplicaError, SharedReplica};
pub use inbound::Change;
use inbound::Edit;
pub use manifest::Collision;
use manifest::Manifest;
pub use pace::Pace;
pub use render::safe_name;
use render::MEMORY_JSON;
pub use update::Synced;
use update::{Followed, Target};

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

/// The caches of one node: where they go, what meshd wrote there (the manifest) and what it
/// could not read back. One lock serialises reading back and writing, so meshd's own files
/// are always recorded before anyone looks at them again.
pub struct CacheFiles {
    paths: CachePaths,
    manifest_path: PathBuf,
    /// Memory keys read under one hold of the replica (`parts::READ_PART`).
    read_part: usize,
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
            read_part: parts::READ_PART,
            state: Mutex::new(State::default()),
        }
    }

    /// Reads memory `keys` at a time: tests compare the files of small parts with one part.
    #[cfg(test)]
    fn reading_parts_of(self, keys: usize) -> CacheFiles {
        CacheFiles {
            read_part: keys,
            ..self
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
    /// first time: everything); with `Pace::Paced`, `mesh-memory.json` and the memory pages
    /// wait for their intervals (`pace`; `Synced::due` says how long).
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
            let target = Target {
                paths: &self.paths,
                replica,
                part: self.read_part,
            };
            let synced = update::write(&target, manifest, followed, &reread, pace)?;
            manifest
                .save_if_changed()
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
    manifest.record_entries(&edit.dir, &edit.entries);
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
    use std::time::Duration;

    use super::*;
    use crate::model::{MemoryEntry, Scope, Stamp, Via};
    use crate::replica::{Replica, SkillWrite};

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
        let replica = SharedReplica::new(
            Replica::open(
                &temp.path().join("store"),
                crate::trust::NodeKey::insecure_from_name("own"),
            )
            .unwrap(),
        );
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

    /// An entry written by `node` at `seconds`, as a peer's arrives.
    fn import(
        replica: &SharedReplica,
        scope: Scope,
        key: &str,
        value: serde_json::Value,
        seconds: u64,
    ) {
        let entry = MemoryEntry {
            scope,
            key: key.into(),
            value,
            node_id: "peer".into(),
            updated_at: Stamp::from_unix_seconds(seconds),
            deleted: false,
            author: None,
            claim: None,
        };
        replica
            .with(|r| r.import_memory(entry, Via::Store))
            .unwrap();
    }

    /// Every file under `dir` (but meshd's temporary files, of which none may be left), by
    /// relative path.
    fn tree(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
        let mut files = BTreeMap::new();
        let mut pending = vec![dir.to_path_buf()];
        while let Some(next) = pending.pop() {
            for entry in std::fs::read_dir(&next).unwrap().flatten() {
                let path = entry.path();
                if path.is_dir() {
                    pending.push(path);
                } else {
                    assert!(!path.to_string_lossy().ends_with("meshd-tmp"), "{path:?}");
                    let rel = path.strip_prefix(dir).unwrap().to_path_buf();
                    files.insert(rel, std::fs::read(&path).unwrap());
                }
            }
        }
        files
    }

    /// The first write reads memory a part at a time (a scope larger than a part included,
    /// node scopes whose labels interleave merged as they are read, deleted keys left out)
    /// and makes the same files as one read of everything.
    #[test]
    fn the_first_write_in_parts_makes_the_files_of_one_read() {
        let (temp, replica, _, _) = setup();
        for i in 0..11 {
            import(
                &replica,
                Scope::Mesh,
                &format!("k{i:02}"),
                serde_json::json!(i),
                100 + i,
            );
        }
        import(
            &replica,
            Scope::Mesh,
            "obj",
            serde_json::json!({"a": [1, "x"]}),
            50,
        );
        replica
            .with(|r| r.delete_memory(&Scope::Mesh, "k03"))
            .unwrap();
        replica
            .with(|r| r.delete_memory(&Scope::Mesh, "k04"))
            .unwrap();
        let own = replica.with(|r| r.own_scope());
        let other = Scope::Node("abc".into());
        // `node` + `abc:x` and `node:abc` + `x` are both `node:abc:x`: the newer keeps it.
        import(&replica, own.clone(), "abc:x", "own, older".into(), 10);
        import(&replica, other.clone(), "x", "other, newer".into(), 20);
        import(&replica, own.clone(), "abc:y", "own, newer".into(), 30);
        import(&replica, other.clone(), "y", "other, older".into(), 5);
        for key in ["a", "abc", "abd:z", "b", "m", "z"] {
            import(&replica, own.clone(), key, key.into(), 40);
            import(&replica, other.clone(), key, key.into(), 40);
        }
        import(&replica, Scope::User("u".into()), "k", "user's".into(), 60);
        put(&replica, "a skill");

        let written = |dir: &str, part: usize| {
            let root = temp.path().join(dir);
            let paths = CachePaths {
                openclaw_home: root.join("openclaw"),
                skills_dir: root.join("skills"),
                memory_dir: root.join("memory"),
            };
            let files = CacheFiles::new(paths, temp.path().join(format!("{dir}.manifest")))
                .reading_parts_of(part);
            files.sync(&replica, None).unwrap();
            tree(&root)
        };
        let whole = written("whole", usize::MAX);
        for part in [1, 2, 3] {
            assert_eq!(
                written(&format!("parts-{part}"), part),
                whole,
                "parts of {part}"
            );
        }
        let json =
            String::from_utf8(whole[Path::new("openclaw/mesh-memory.json")].clone()).unwrap();
        let object: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(&json).unwrap();
        assert_eq!(object["node:abc:x"]["value"], "other, newer");
        assert_eq!(object["node:abc:y"]["value"], "own, newer");
        assert!(!object.contains_key("mesh:k03"));
        let labels: Vec<&str> = json
            .lines()
            .filter_map(|line| line.strip_prefix("  \"")?.split_once('"'))
            .map(|(label, _)| label)
            .collect();
        assert!(labels.windows(2).all(|w| w[0] < w[1]), "{labels:?}");
        assert_eq!((labels.len(), object.len()), (10 + 14 + 1, 10 + 14 + 1));
        let page = String::from_utf8(whole[Path::new("memory/mesh.md")].clone()).unwrap();
        assert!(
            page.contains("\n## k10\n\n```json\n10\n```\n") && !page.contains("## k03"),
            "{page}"
        );
    }

    /// The manifest holds no entry of `mesh-memory.json`; what meshd wrote for each entry is
    /// in the digest file beside it, so an entry the mesh changed since meshd wrote the file
    /// is not read back, and a user's edit of another entry in the same file is.
    #[test]
    fn a_users_edit_of_mesh_memory_json_is_imported_and_a_stale_entry_is_not() {
        let (temp, replica, paths, files) = setup();
        let imported = RefCell::new(Vec::new());
        let import = |change: &Change| {
            imported.borrow_mut().push(change.clone());
            Ok(())
        };
        let put_memory = |key: &str, value: &str| {
            replica
                .batch(|batch| batch.put_memory(&Scope::Mesh, key, value.into()))
                .unwrap();
        };
        put_memory("a", "one");
        put_memory("b", "one");
        files.sync(&replica, Some(&import)).unwrap();
        let manifest = std::fs::read_to_string(temp.path().join("cache.manifest")).unwrap();
        assert!(!manifest.contains("mesh:a"), "{manifest}");

        // The mesh moves on while the file still holds meshd's older `b`, and the user edits
        // `a` in it; a new process knows what meshd wrote only from the files on disk.
        put_memory("b", "two");
        let json = std::fs::read_to_string(paths.memory_json()).unwrap();
        let edited = json.replace(
            "\"mesh:a\": {\n    \"value\": \"one\"",
            "\"mesh:a\": {\n    \"value\": \"edited\"",
        );
        assert_ne!(edited, json);
        std::fs::write(paths.memory_json(), edited).unwrap();
        let files = CacheFiles::new(paths.clone(), temp.path().join("cache.manifest"));
        files.sync(&replica, Some(&import)).unwrap();
        assert_eq!(
            *imported.borrow(),
            [Change::Memory {
                scope: Scope::Mesh,
                key: "a".into(),
                value: "edited".into(),
            }]
        );
        // The importer here does not write: the file is meshd's again, and is not read back.
        files.sync(&replica, Some(&import)).unwrap();
        assert_eq!(imported.borrow().len(), 1);
        let json = std::fs::read_to_string(paths.memory_json()).unwrap();
        assert!(json.contains("\"value\": \"two\""), "{json}");
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

    /// A scope's page is rewritten whole, so under a stream of changes a large one waits its
    /// interval (8 MB here: half a second at least) while a small one is put at once; a write
    /// that may not wait (a stop, `meshd cache write`) puts it with the newest entries.
    #[test]
    fn a_large_page_waits_its_interval_and_a_small_one_does_not() {
        let (_temp, replica, paths, files) = setup();
        let (large, small) = (Scope::User("large".into()), Scope::User("small".into()));
        let paragraph = "a long note about the project, kept whole. ".repeat(12_000);
        replica
            .batch(|batch| {
                for key in 0..16 {
                    let value = format!("{key}: {paragraph}");
                    batch.put_memory(&large, &format!("k{key}"), value.into())?;
                }
                batch.put_memory(&small, "k", "first".into())
            })
            .unwrap();
        files.sync(&replica, None).unwrap();
        let large_page = paths.memory_dir.join("user-large.md");
        assert!(std::fs::metadata(&large_page).unwrap().len() > 8_000_000);

        replica
            .batch(|batch| {
                batch.put_memory(&large, "fresh", "newest large".into())?;
                batch.put_memory(&small, "k", "second".into())
            })
            .unwrap();
        let synced = files.sync_paced(&replica, None, Pace::Paced).unwrap();
        assert_eq!(synced.report.written, 1, "the small page only: {synced:?}");
        let page = |file: &str| std::fs::read_to_string(paths.memory_dir.join(file)).unwrap();
        assert!(page("user-small.md").contains("\nsecond\n"));
        assert!(!page("user-large.md").contains("newest large"));
        assert!(synced.due.is_some_and(|due| due > Duration::ZERO));

        let synced = files.sync_paced(&replica, None, Pace::Now).unwrap();
        assert_eq!(
            synced.report.written, 2,
            "the large page and mesh-memory.json"
        );
        assert_eq!(synced.due, None);
        assert!(page("user-large.md").contains("newest large"));
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
