//! What meshd wrote into the cache directories, by content: a file is meshd's only while its
//! bytes hash to what is recorded here. Kept in the node home (`cache.manifest`), replaced
//! atomically, so it survives restarts and no cache directory holds anything but caches. It
//! holds a hash per file; what meshd wrote for each `mesh-memory.json` entry is in a digest
//! file beside it (`entries`), so the manifest's size follows the files, not the entries.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::entries::{self, EntryDigests};
use super::{CachePaths, MEMORY_JSON};

/// BLAKE3 of some bytes, in hex.
pub fn hash(bytes: &[u8]) -> String {
    blake3::hash(bytes).to_hex().to_string()
}

/// A file meshd could not write where the mesh wanted it, because someone else's file is
/// there; the mesh's version went beside it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Collision {
    /// The foreign file, left as it is.
    pub file: PathBuf,
    /// Where the mesh's version is; `None` when that path is taken by a foreign file too.
    pub mesh_copy: Option<PathBuf>,
}

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct Manifest {
    /// Per cache directory (absolute path as configured): each file meshd wrote there, by its
    /// path relative to that directory, with the BLAKE3 of the bytes written.
    #[serde(default)]
    files: BTreeMap<String, BTreeMap<String, String>>,
    /// What manifests of earlier versions held per `mesh-memory.json` (by its directory):
    /// the BLAKE3 of each entry's value meshd wrote or imported. Moved into the digest files
    /// (`entries`) when loaded, and never written again.
    #[serde(default, skip_serializing)]
    memory_entries: BTreeMap<String, BTreeMap<String, String>>,
    /// The collisions of the last write, so each is reported once, not on every rewrite.
    #[serde(default)]
    collisions: Vec<Collision>,
    /// Whether it changed since it was loaded or saved: an update that changed no file
    /// does not rewrite it.
    #[serde(skip)]
    unsaved: bool,
    /// Where it is saved; the entries' digest files go beside it.
    #[serde(skip)]
    path: PathBuf,
}

impl PartialEq for Manifest {
    fn eq(&self, other: &Manifest) -> bool {
        (&self.files, &self.collisions) == (&other.files, &other.collisions)
    }
}

impl Eq for Manifest {}

/// The list an older meshd kept in each cache directory: one entry it wrote per line.
const LEGACY_LIST: &str = ".meshd-manifest";

impl Manifest {
    /// The manifest at `path`, or, before there is one, what an older meshd left
    /// (`adopt_legacy`).
    pub fn load_or_adopt(path: &Path, paths: &CachePaths) -> Manifest {
        if path.exists() {
            Manifest::load(path)
        } else {
            Manifest::adopt_legacy(path, paths)
        }
    }

    /// An empty manifest, to be saved at `path`.
    pub fn empty(path: &Path) -> Manifest {
        Manifest {
            path: path.to_path_buf(),
            ..Manifest::default()
        }
    }

    /// A meshd from before `cache.manifest` kept a `.meshd-manifest` list of its entries in
    /// each cache directory and always wrote `mesh-memory.json` whole. What those name is
    /// taken as meshd's, with its bytes as they are now, so that the first start after an
    /// upgrade never reads a cache that was merely stale (the mesh changed while no meshd
    /// wrote it) back into the mesh as somebody's edit, undoing the newer change. Without
    /// any such list (a new node) the manifest starts empty. It is to be saved at `path`.
    pub fn adopt_legacy(path: &Path, paths: &CachePaths) -> Manifest {
        let mut manifest = Manifest::empty(path);
        let dirs = [
            (paths.reference_skills_dir(), None),
            (paths.skills_dir.clone(), Some("SKILL.md")),
            (paths.memory_dir.clone(), None),
        ];
        let mut any = false;
        for (dir, inner) in dirs {
            let Ok(list) = fs::read_to_string(dir.join(LEGACY_LIST)) else {
                continue;
            };
            any = true;
            for entry in list.lines().filter(|line| !line.is_empty()) {
                let rel = match inner {
                    Some(file) => format!("{entry}/{file}"),
                    None => entry.to_string(),
                };
                if let Ok(bytes) = fs::read(dir.join(&rel)) {
                    manifest.record(&dir, &rel, &bytes);
                }
            }
        }
        if any {
            manifest.adopt_legacy_memory_json(&paths.openclaw_home);
        }
        manifest
    }

    fn adopt_legacy_memory_json(&mut self, dir: &Path) {
        let Ok(bytes) = fs::read(dir.join(MEMORY_JSON)) else {
            return;
        };
        let Ok(serde_json::Value::Object(entries)) = serde_json::from_slice(&bytes) else {
            return;
        };
        self.record(dir, MEMORY_JSON, &bytes);
        let entries: Vec<(String, serde_json::Value)> = entries
            .into_iter()
            .filter_map(|(label, mut entry)| Some((label, entry.get_mut("value")?.take())))
            .collect();
        self.record_entries(dir, &entries);
    }

    /// The manifest at `path`; empty when there is none. A damaged one is logged and read as
    /// empty: every file is then foreign until it matches the mesh again, so nothing is lost.
    /// The entries an earlier version's manifest held move into their digest files.
    pub fn load(path: &Path) -> Manifest {
        let loaded = match fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|error| {
                tracing::warn!(manifest = %path.display(), %error, "the cache manifest is damaged; files meshd wrote count as foreign until they match the mesh again");
                Manifest::default()
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Manifest::default(),
            Err(error) => {
                tracing::warn!(manifest = %path.display(), %error, "cannot read the cache manifest; files meshd wrote count as foreign until they match the mesh again");
                Manifest::default()
            }
        };
        let mut manifest = Manifest {
            path: path.to_path_buf(),
            ..loaded
        };
        manifest.move_legacy_entries();
        manifest
    }

    /// Writes the per-entry hashes of an earlier manifest into digest files; the manifest
    /// is then saved without them at the next save.
    fn move_legacy_entries(&mut self) {
        for (dir, hashes) in std::mem::take(&mut self.memory_entries) {
            let file = entries::path_for(&self.path, Path::new(&dir));
            if let Err(error) = EntryDigests::from_hashes(&hashes).save(&file) {
                tracing::warn!(file = %file.display(), %error, "cannot move the cache manifest's entries of mesh-memory.json into their own file; an entry of that file that differs from the mesh counts as an edit");
            }
            self.unsaved = true;
        }
    }

    /// Replaces the manifest where it was loaded from atomically (temporary file, fsync,
    /// rename, fsync of the directory).
    pub fn save(&mut self) -> io::Result<()> {
        let path = &self.path;
        let temporary = path.with_extension("manifest.tmp");
        let mut file = File::create(&temporary)?;
        file.write_all(&serde_json::to_vec_pretty(self).map_err(io::Error::other)?)?;
        file.sync_all()?;
        drop(file);
        fs::rename(&temporary, path)?;
        if let Some(dir) = path.parent() {
            File::open(dir)?.sync_all()?;
        }
        self.unsaved = false;
        Ok(())
    }

    /// Saves it when it changed since it was loaded or saved.
    pub fn save_if_changed(&mut self) -> io::Result<()> {
        match self.unsaved {
            true => self.save(),
            false => Ok(()),
        }
    }

    /// Whether meshd wrote exactly `bytes` at `rel` in `dir`.
    pub fn wrote(&self, dir: &Path, rel: &str, bytes: &[u8]) -> bool {
        self.wrote_hash(dir, rel, &hash(bytes))
    }

    /// Whether meshd wrote the bytes hashing to `hash` (BLAKE3 in hex) at `rel` in `dir`.
    pub fn wrote_hash(&self, dir: &Path, rel: &str, hash: &str) -> bool {
        self.files
            .get(&key(dir))
            .and_then(|files| files.get(rel))
            .is_some_and(|recorded| recorded == hash)
    }

    pub fn is_recorded(&self, dir: &Path, rel: &str) -> bool {
        self.files
            .get(&key(dir))
            .is_some_and(|files| files.contains_key(rel))
    }

    pub fn record(&mut self, dir: &Path, rel: &str, bytes: &[u8]) {
        self.record_hash(dir, rel, hash(bytes));
    }

    pub fn record_hash(&mut self, dir: &Path, rel: &str, hash: String) {
        let files = self.files.entry(key(dir)).or_default();
        if files.get(rel) != Some(&hash) {
            files.insert(rel.to_string(), hash);
            self.unsaved = true;
        }
    }

    pub fn forget(&mut self, dir: &Path, rel: &str) {
        if let Some(files) = self.files.get_mut(&key(dir)) {
            self.unsaved |= files.remove(rel).is_some();
        }
    }

    /// The files recorded in `dir`, by relative path.
    pub fn recorded(&self, dir: &Path) -> Vec<String> {
        self.files
            .get(&key(dir))
            .map(|files| files.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// The digest file of what meshd last wrote or imported for each entry of the
    /// `mesh-memory.json` in `dir`.
    pub fn entries_path(&self, dir: &Path) -> PathBuf {
        entries::path_for(&self.path, dir)
    }

    /// What meshd last wrote or imported for each entry of the `mesh-memory.json` in `dir`,
    /// read from its file: only to read that file back.
    pub fn entries(&self, dir: &Path) -> EntryDigests {
        EntryDigests::load(&self.entries_path(dir))
    }

    /// Records entries of the `mesh-memory.json` in `dir` imported from it. A failure is
    /// logged: those entries then count as unknown, and are compared with the mesh, which
    /// holds them now.
    pub fn record_entries(&mut self, dir: &Path, imported: &[(String, serde_json::Value)]) {
        if imported.is_empty() {
            return;
        }
        let file = self.entries_path(dir);
        let mut digests = EntryDigests::load(&file);
        for (label, value) in imported {
            digests.record(label, value);
        }
        if let Err(error) = digests.save(&file) {
            tracing::warn!(file = %file.display(), %error, "cannot record the entries imported from mesh-memory.json; they are compared with the mesh when the file is read back again");
        }
    }

    pub fn collisions(&self) -> &[Collision] {
        &self.collisions
    }

    /// Replaces the collisions of the files in `files` (their own names) by `collisions`,
    /// the others staying; returns the ones not reported before.
    pub fn update_collisions(
        &mut self,
        files: &std::collections::BTreeSet<PathBuf>,
        collisions: Vec<Collision>,
    ) -> Vec<Collision> {
        let kept = self
            .collisions
            .iter()
            .filter(|c| !files.contains(&c.file))
            .cloned();
        let all = kept.chain(collisions).collect();
        self.set_collisions(all)
    }

    /// Replaces the collisions; returns the ones not reported before.
    pub fn set_collisions(&mut self, mut collisions: Vec<Collision>) -> Vec<Collision> {
        collisions.sort();
        collisions.dedup();
        let new = collisions
            .iter()
            .filter(|c| !self.collisions.contains(c))
            .cloned()
            .collect();
        if self.collisions != collisions {
            self.collisions = collisions;
            self.unsaved = true;
        }
        new
    }
}

fn key(dir: &Path) -> String {
    dir.to_string_lossy().into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_is_meshds_only_while_its_bytes_match() {
        let dir = Path::new("/cache");
        let mut manifest = Manifest::default();
        manifest.record(dir, "a.md", b"one");
        assert!(manifest.wrote(dir, "a.md", b"one"));
        assert!(!manifest.wrote(dir, "a.md", b"one, edited"));
        assert!(!manifest.wrote(Path::new("/other"), "a.md", b"one"));
        manifest.forget(dir, "a.md");
        assert!(!manifest.wrote(dir, "a.md", b"one"));
    }

    #[test]
    fn survives_a_save_and_a_damaged_file_reads_as_empty() {
        let temp = tempfile::tempdir().unwrap();
        let path = temp.path().join("cache.manifest");
        let mut manifest = Manifest::empty(&path);
        manifest.record(temp.path(), "x/SKILL.md", b"text");
        manifest.record_entries(temp.path(), &[("mesh:k".into(), serde_json::json!(1))]);
        manifest.save().unwrap();
        let loaded = Manifest::load(&path);
        assert_eq!(loaded, manifest);
        assert!(loaded
            .entries(temp.path())
            .knows("mesh:k", &serde_json::json!(1)));
        fs::write(&path, "{not json").unwrap();
        assert_eq!(Manifest::load(&path), Manifest::default());
    }

    /// A manifest of an earlier version held a hash per `mesh-memory.json` entry: they move
    /// into the digest file, so the entries meshd wrote are still not read back as edits,
    /// and the manifest is saved without them.
    #[test]
    fn an_earlier_manifests_entries_move_into_their_own_file() {
        let temp = tempfile::tempdir().unwrap();
        let path = temp.path().join("cache.manifest");
        let home = temp.path().join("openclaw");
        let hash = |value: &serde_json::Value| hash(value.to_string().as_bytes());
        let earlier = serde_json::json!({
            "files": {home.to_str().unwrap(): {MEMORY_JSON: hash(&serde_json::json!("file"))}},
            "memory_entries": {home.to_str().unwrap(): {
                "mesh:k": hash(&serde_json::json!("old")),
                "user:u:n": hash(&serde_json::json!({"a": 1})),
            }},
            "collisions": [],
        });
        fs::write(&path, serde_json::to_vec_pretty(&earlier).unwrap()).unwrap();

        let mut manifest = Manifest::load(&path);
        let entries = manifest.entries(&home);
        assert!(entries.knows("mesh:k", &serde_json::json!("old")));
        assert!(entries.knows("user:u:n", &serde_json::json!({"a": 1})));
        assert!(!entries.knows("mesh:k", &serde_json::json!("edited")));
        manifest.save_if_changed().unwrap();
        let saved = fs::read_to_string(&path).unwrap();
        assert!(!saved.contains("memory_entries"), "{saved}");
        assert!(Manifest::load(&path)
            .entries(&home)
            .knows("mesh:k", &serde_json::json!("old")));
    }

    #[test]
    fn an_upgrade_adopts_what_the_older_meshd_listed_and_nothing_else() {
        let temp = tempfile::tempdir().unwrap();
        let paths = CachePaths {
            openclaw_home: temp.path().to_path_buf(),
            skills_dir: temp.path().join("agent-skills"),
            memory_dir: temp.path().join("agent-memory"),
        };
        let reference = paths.reference_skills_dir();
        fs::create_dir_all(&reference).unwrap();
        fs::create_dir_all(paths.skills_dir.join("triage")).unwrap();
        fs::write(reference.join(".meshd-manifest"), "triage.md\n").unwrap();
        fs::write(reference.join("triage.md"), "stale text").unwrap();
        fs::write(reference.join("mine.md"), "an agent's own").unwrap();
        fs::write(paths.skills_dir.join(".meshd-manifest"), "triage\n").unwrap();
        fs::write(paths.skills_dir.join("triage/SKILL.md"), "---\n").unwrap();
        let entries = r#"{"mesh:k":{"value":"old","nodeId":"n","ts":1}}"#;
        fs::write(temp.path().join(MEMORY_JSON), entries).unwrap();

        let manifest = Manifest::load_or_adopt(&temp.path().join("cache.manifest"), &paths);
        assert!(manifest.wrote(&reference, "triage.md", b"stale text"));
        assert!(!manifest.wrote(&reference, "mine.md", b"an agent's own"));
        assert!(manifest.wrote(&paths.skills_dir, "triage/SKILL.md", b"---\n"));
        assert!(manifest.wrote(temp.path(), MEMORY_JSON, entries.as_bytes()));
        assert!(manifest
            .entries(temp.path())
            .knows("mesh:k", &serde_json::json!("old")));

        // A new node (no list anywhere) adopts nothing, not even mesh-memory.json.
        for dir in [&reference, &paths.skills_dir] {
            fs::remove_file(dir.join(".meshd-manifest")).unwrap();
        }
        let fresh = Manifest::load_or_adopt(&temp.path().join("cache.manifest"), &paths);
        assert_eq!(fresh, Manifest::default());
    }

    #[test]
    fn collisions_are_new_once() {
        let mut manifest = Manifest::default();
        let collision = Collision {
            file: "/c/a.md".into(),
            mesh_copy: Some("/c/a..mesh.md".into()),
        };
        let new = manifest.set_collisions(vec![collision.clone()]);
        assert_eq!(new, std::slice::from_ref(&collision));
        assert!(manifest.set_collisions(vec![collision]).is_empty());
    }
}
