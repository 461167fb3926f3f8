//! Writing cache files so readers never see half a file, and never over or instead of a file
//! meshd did not write: a file is meshd's only while its bytes are what the manifest says
//! meshd wrote. Where someone else's file holds a name the mesh uses, the mesh's version goes
//! beside it (`<stem>..mesh.<ext>`, or the folder `<name>..mesh/`) and the collision is kept.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io;
use std::path::Path;

use super::manifest::{Collision, Manifest};
use super::{CacheError, CacheReport};

/// What a name holding a copy of the mesh's version has in it. Safe names and scope labels
/// never hold `..`, except a safe name ending in a dot before `.md`, which cannot be followed
/// by `mesh.`; and a copy is never put where the mesh wants a file of its own.
pub const COPY_MARK: &str = "..mesh";

/// How a directory's entries are laid out.
#[derive(Debug, Clone, Copy)]
pub enum Layout {
    /// `<dir>/<entry>` is the file.
    Files,
    /// `<dir>/<entry>/SKILL.md` is the file (OpenClaw skill folders).
    SkillFolders,
}

impl Layout {
    /// The file's path relative to the directory.
    pub fn rel(self, entry: &str) -> String {
        match self {
            Layout::Files => entry.to_string(),
            Layout::SkillFolders => format!("{entry}/SKILL.md"),
        }
    }

    /// Where the mesh's version goes when a foreign file holds `entry`: `triage..mesh.md`,
    /// `triage..mesh/SKILL.md`; OpenClaw loads both, and the copy's name says what it is.
    fn copy_entry(self, entry: &str) -> String {
        match (self, entry.rsplit_once('.')) {
            (Layout::Files, Some((stem, ext))) if !stem.is_empty() => {
                format!("{stem}{COPY_MARK}.{ext}")
            }
            _ => format!("{entry}{COPY_MARK}"),
        }
    }
}

/// Puts files where the mesh wants them under the never-clobber rule, recording what it
/// wrote in the manifest and what it could not write in `collisions`.
pub struct Placer<'m> {
    pub manifest: &'m mut Manifest,
    pub report: CacheReport,
    pub collisions: Vec<Collision>,
}

enum Put {
    /// The path now holds meshd's file.
    Done,
    /// Someone else's file is there; it was left alone.
    Foreign,
}

impl Placer<'_> {
    /// Makes `dir` hold `files` (by entry name) among the files meshd holds there, and
    /// removes meshd's other files; returns the paths (relative to `dir`) that hold the
    /// mesh's version of each entry at its own name.
    pub fn sync_dir(
        &mut self,
        dir: &Path,
        layout: Layout,
        files: &BTreeMap<String, String>,
    ) -> Result<BTreeSet<String>, CacheError> {
        let mut held = BTreeSet::new();
        let mut at_own_name = BTreeSet::new();
        for (entry, text) in files {
            let rel = layout.rel(entry);
            match self.put(dir, &rel, text)? {
                Put::Done => {
                    at_own_name.insert(rel.clone());
                    held.insert(rel);
                }
                Put::Foreign => {
                    let copy = layout.copy_entry(entry);
                    let copy_rel = layout.rel(&copy);
                    let mesh_copy = match files.contains_key(&copy) {
                        true => None,
                        false => match self.put(dir, &copy_rel, text)? {
                            Put::Done => {
                                held.insert(copy_rel.clone());
                                Some(dir.join(&copy_rel))
                            }
                            Put::Foreign => None,
                        },
                    };
                    self.collisions.push(Collision {
                        file: dir.join(&rel),
                        mesh_copy,
                    });
                }
            }
        }
        self.remove_stale(dir, &held)?;
        Ok(at_own_name)
    }

    /// Writes `text` at `rel` unless someone else's file is there.
    fn put(&mut self, dir: &Path, rel: &str, text: &str) -> Result<Put, CacheError> {
        let path = dir.join(rel);
        let meshds = match fs::read(&path) {
            Ok(current) if current == text.as_bytes() => {
                // Also adopts a file that someone made identical to the mesh's version.
                self.manifest.record(dir, rel, &current);
                self.report.unchanged += 1;
                return Ok(Put::Done);
            }
            Ok(current) => self.manifest.wrote(dir, rel, &current),
            Err(e) if e.kind() == io::ErrorKind::NotFound => true,
            // A folder, or a file meshd may not read, under the name: not meshd's.
            Err(_) => false,
        };
        if !meshds {
            return Ok(Put::Foreign);
        }
        write_atomic(&path, text.as_bytes()).map_err(|source| CacheError::io(&path, source))?;
        self.manifest.record(dir, rel, text.as_bytes());
        self.report.written += 1;
        Ok(Put::Done)
    }

    /// Removes meshd's files in `dir` that are no longer wanted; a file changed since meshd
    /// wrote it is forgotten instead, and stays.
    fn remove_stale(&mut self, dir: &Path, held: &BTreeSet<String>) -> Result<(), CacheError> {
        for rel in self.manifest.recorded(dir) {
            if held.contains(&rel) {
                continue;
            }
            let path = dir.join(&rel);
            if fs::read(&path).is_ok_and(|current| self.manifest.wrote(dir, &rel, &current)) {
                match fs::remove_file(&path) {
                    Ok(()) => self.report.removed += 1,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(source) => return Err(CacheError::io(&path, source)),
                }
                if let Some(folder) = path.parent().filter(|folder| *folder != dir) {
                    // Only an empty folder goes: files someone added beside SKILL.md stay.
                    let _ = fs::remove_dir(folder);
                }
            }
            self.manifest.forget(dir, &rel);
        }
        Ok(())
    }
}

/// Replaces `path` by rename so readers see the old file or the new one, never a mix.
fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir)?;
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    // The process id keeps two writers (the server and `meshd cache write`) apart.
    let temp = dir.join(format!(".{name}.{}.meshd-tmp", std::process::id()));
    fs::write(&temp, bytes)?;
    fs::rename(&temp, path).inspect_err(|_| {
        let _ = fs::remove_file(&temp);
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(entries: &[(&str, &str)]) -> BTreeMap<String, String> {
        entries
            .iter()
            .map(|(entry, text)| (entry.to_string(), text.to_string()))
            .collect()
    }

    #[test]
    fn copies_are_named_beside_the_entry() {
        assert_eq!(Layout::Files.copy_entry("triage.md"), "triage..mesh.md");
        assert_eq!(
            Layout::Files.copy_entry("mesh-memory.json"),
            "mesh-memory..mesh.json"
        );
        assert_eq!(Layout::Files.copy_entry("x"), "x..mesh");
        assert_eq!(Layout::SkillFolders.copy_entry("triage"), "triage..mesh");
        assert_eq!(
            Layout::SkillFolders.rel("triage..mesh"),
            "triage..mesh/SKILL.md"
        );
    }

    #[test]
    fn a_foreign_file_is_never_overwritten_nor_removed() {
        let temp = tempfile::tempdir().unwrap();
        let dir = temp.path();
        let mut manifest = Manifest::default();
        fs::write(dir.join("a.md"), "the agent's").unwrap();
        let mut placer = Placer {
            manifest: &mut manifest,
            report: CacheReport::default(),
            collisions: Vec::new(),
        };
        let held = placer
            .sync_dir(dir, Layout::Files, &files(&[("a.md", "the mesh's")]))
            .unwrap();
        assert!(held.is_empty());
        assert_eq!(fs::read_to_string(dir.join("a.md")).unwrap(), "the agent's");
        assert_eq!(
            fs::read_to_string(dir.join("a..mesh.md")).unwrap(),
            "the mesh's"
        );
        assert_eq!(placer.collisions.len(), 1);
        placer.collisions.clear();
        placer.sync_dir(dir, Layout::Files, &files(&[])).unwrap();
        assert_eq!(fs::read_to_string(dir.join("a.md")).unwrap(), "the agent's");
        assert!(!dir.join("a..mesh.md").exists(), "meshd's copy goes");
        assert!(placer.collisions.is_empty());
    }

    #[test]
    fn meshds_files_follow_the_mesh_until_someone_edits_them() {
        let temp = tempfile::tempdir().unwrap();
        let dir = temp.path();
        let mut manifest = Manifest::default();
        let mut placer = Placer {
            manifest: &mut manifest,
            report: CacheReport::default(),
            collisions: Vec::new(),
        };
        placer
            .sync_dir(dir, Layout::SkillFolders, &files(&[("s", "one")]))
            .unwrap();
        placer
            .sync_dir(dir, Layout::SkillFolders, &files(&[("s", "two")]))
            .unwrap();
        assert_eq!(fs::read_to_string(dir.join("s/SKILL.md")).unwrap(), "two");
        fs::write(dir.join("s/SKILL.md"), "edited").unwrap();
        placer
            .sync_dir(dir, Layout::SkillFolders, &files(&[]))
            .unwrap();
        assert_eq!(
            fs::read_to_string(dir.join("s/SKILL.md")).unwrap(),
            "edited"
        );
        fs::remove_file(dir.join("s/SKILL.md")).unwrap();
        placer
            .sync_dir(dir, Layout::SkillFolders, &files(&[("s", "three")]))
            .unwrap();
        assert_eq!(
            fs::read_to_string(dir.join("s/SKILL.md")).unwrap(),
            "three",
            "a free path is written again"
        );
        placer
            .sync_dir(dir, Layout::SkillFolders, &files(&[]))
            .unwrap();
        assert!(!dir.join("s").exists());
    }
}
