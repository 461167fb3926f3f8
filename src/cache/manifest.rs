//! What meshd wrote into the cache directories, by content: a file is meshd's only while its
//! bytes hash to what is recorded here. Kept in the node home (`cache.manifest`), replaced
//! atomically, so it survives restarts and no cache directory holds anything but caches.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

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

#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Per cache directory (absolute path as configured): each file meshd wrote there, by its
    /// path relative to that directory, with the BLAKE3 of the bytes written.
    #[serde(default)]
    files: BTreeMap<String, BTreeMap<String, String>>,
    /// Per `mesh-memory.json` (by its directory): the BLAKE3 of each entry's value meshd
    /// wrote or imported, so an entry someone else changed is told from one the mesh changed.
    #[serde(default)]
    memory_entries: BTreeMap<String, BTreeMap<String, String>>,
    /// The collisions of the last write, so each is reported once, not on every rewrite.
    #[serde(default)]
    collisions: Vec<Collision>,
}

impl Manifest {
    /// The manifest at `path`; empty when there is none. A damaged one is logged and read as
    /// empty: every file is then foreign until it matches the mesh again, so nothing is lost.
    pub fn load(path: &Path) -> Manifest {
        match fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|error| {
                tracing::warn!(manifest = %path.display(), %error, "the cache manifest is damaged; files meshd wrote count as foreign until they match the mesh again");
                Manifest::default()
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Manifest::default(),
            Err(error) => {
                tracing::warn!(manifest = %path.display(), %error, "cannot read the cache manifest; files meshd wrote count as foreign until they match the mesh again");
                Manifest::default()
            }
        }
    }

    /// Replaces the manifest at `path` atomically (temporary file, fsync, rename, fsync of
    /// the directory).
    pub fn save(&self, path: &Path) -> io::Result<()> {
        let temporary = path.with_extension("manifest.tmp");
        let mut file = File::create(&temporary)?;
        file.write_all(&serde_json::to_vec_pretty(self).map_err(io::Error::other)?)?;
        file.sync_all()?;
        drop(file);
        fs::rename(&temporary, path)?;
        if let Some(dir) = path.parent() {
            File::open(dir)?.sync_all()?;
        }
        Ok(())
    }

    /// Whether meshd wrote exactly `bytes` at `rel` in `dir`.
    pub fn wrote(&self, dir: &Path, rel: &str, bytes: &[u8]) -> bool {
        self.files
            .get(&key(dir))
            .and_then(|files| files.get(rel))
            .is_some_and(|recorded| *recorded == hash(bytes))
    }

    pub fn record(&mut self, dir: &Path, rel: &str, bytes: &[u8]) {
        self.files
            .entry(key(dir))
            .or_default()
            .insert(rel.to_string(), hash(bytes));
    }

    pub fn forget(&mut self, dir: &Path, rel: &str) {
        if let Some(files) = self.files.get_mut(&key(dir)) {
            files.remove(rel);
        }
    }

    /// The files recorded in `dir`, by relative path.
    pub fn recorded(&self, dir: &Path) -> Vec<String> {
        self.files
            .get(&key(dir))
            .map(|files| files.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// Whether `value` is what meshd last wrote or imported for the entry `label` of the
    /// `mesh-memory.json` in `dir`.
    pub fn knows_entry(&self, dir: &Path, label: &str, value: &serde_json::Value) -> bool {
        self.memory_entries
            .get(&key(dir))
            .and_then(|entries| entries.get(label))
            .is_some_and(|recorded| *recorded == hash(value.to_string().as_bytes()))
    }

    pub fn record_entry(&mut self, dir: &Path, label: &str, value: &serde_json::Value) {
        self.memory_entries
            .entry(key(dir))
            .or_default()
            .insert(label.to_string(), hash(value.to_string().as_bytes()));
    }

    /// Replaces every recorded entry of the `mesh-memory.json` in `dir`.
    pub fn set_entries<'a>(
        &mut self,
        dir: &Path,
        entries: impl IntoIterator<Item = (&'a String, &'a serde_json::Value)>,
    ) {
        let recorded = entries
            .into_iter()
            .map(|(label, value)| (label.clone(), hash(value.to_string().as_bytes())))
            .collect();
        self.memory_entries.insert(key(dir), recorded);
    }

    pub fn collisions(&self) -> &[Collision] {
        &self.collisions
    }

    /// Replaces the collisions; returns the ones not reported before.
    pub fn set_collisions(&mut self, mut collisions: Vec<Collision>) -> Vec<Collision> {
        collisions.sort();
        let new = collisions
            .iter()
            .filter(|c| !self.collisions.contains(c))
            .cloned()
            .collect();
        self.collisions = collisions;
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
        let mut manifest = Manifest::default();
        manifest.record(temp.path(), "x/SKILL.md", b"text");
        manifest.record_entry(temp.path(), "mesh:k", &serde_json::json!(1));
        manifest.save(&path).unwrap();
        assert_eq!(Manifest::load(&path), manifest);
        fs::write(&path, "{not json").unwrap();
        assert_eq!(Manifest::load(&path), Manifest::default());
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
