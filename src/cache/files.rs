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

/// The largest cache file meshd reads (its own `mesh-memory.json` of a large store
/// included); a larger file is someone else's and is neither read nor replaced.
const MAX_FILE_BYTES: u64 = 512 * 1024 * 1024;

/// What is at a cache path, looked at without following symbolic links.
pub enum Found {
    Missing,
    /// A regular file of at most `MAX_FILE_BYTES`, with its bytes.
    Regular(Vec<u8>),
    /// A symbolic link (of the file or of its folder), a FIFO, a device, a directory or a
    /// file too large: never read, never replaced, never removed.
    Other,
}

/// Reads `rel` in the cache directory `dir` only as a regular file reached without links:
/// someone else's link must not make meshd read another file into the mesh (or write
/// through it), a FIFO must not block the writer, and a huge file must not fill memory.
pub fn read_cache_file(dir: &Path, rel: &str) -> io::Result<Found> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some((folder, _)) = rel.rsplit_once('/') {
        match fs::symlink_metadata(dir.join(folder)) {
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => return Ok(Found::Other),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Found::Missing),
            Err(e) => return Err(e),
        }
    }
    let file = match fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(dir.join(rel))
    {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Found::Missing),
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => return Ok(Found::Other),
        Err(e) => return Err(e),
    };
    let meta = file.metadata()?;
    if !meta.is_file() || meta.len() > MAX_FILE_BYTES {
        return Ok(Found::Other);
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(MAX_FILE_BYTES + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Ok(Found::Other);
    }
    Ok(Found::Regular(bytes))
}

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
        let meshds = match read_cache_file(dir, rel) {
            Ok(Found::Regular(current)) if current == text.as_bytes() => {
                // Also adopts a file that someone made identical to the mesh's version.
                self.manifest.record(dir, rel, &current);
                self.report.unchanged += 1;
                return Ok(Put::Done);
            }
            Ok(Found::Regular(current)) => self.manifest.wrote(dir, rel, &current),
            Ok(Found::Missing) => true,
            // A link, a folder, or a file meshd may not read, under the name: not meshd's.
            Ok(Found::Other) | Err(_) => false,
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
            let current = read_cache_file(dir, &rel);
            if matches!(current, Ok(Found::Regular(bytes)) if self.manifest.wrote(dir, &rel, &bytes))
            {
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

    #[test]
    fn links_fifos_and_linked_folders_are_never_read_written_or_removed() {
        let temp = tempfile::tempdir().unwrap();
        let dir = temp.path().join("cache");
        let outside = temp.path().join("outside");
        fs::create_dir_all(&dir).unwrap();
        fs::create_dir_all(&outside).unwrap();
        fs::write(outside.join("secret.txt"), "private").unwrap();
        std::os::unix::fs::symlink(outside.join("secret.txt"), dir.join("a.md")).unwrap();
        let skills_dir = temp.path().join("skills");
        fs::create_dir_all(&skills_dir).unwrap();
        std::os::unix::fs::symlink(&outside, skills_dir.join("s")).unwrap();
        let fifo = std::ffi::CString::new(dir.join("f.md").to_str().unwrap()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
        for (dir, rel) in [(&dir, "a.md"), (&skills_dir, "s/SKILL.md"), (&dir, "f.md")] {
            assert!(
                matches!(read_cache_file(dir, rel), Ok(Found::Other)),
                "{rel}"
            );
        }
        let mut manifest = Manifest::default();
        let mut placer = Placer {
            manifest: &mut manifest,
            report: CacheReport::default(),
            collisions: Vec::new(),
        };
        let wanted = files(&[("a.md", "mesh"), ("f.md", "mesh")]);
        placer.sync_dir(&dir, Layout::Files, &wanted).unwrap();
        let skills = files(&[("s", "mesh skill")]);
        placer
            .sync_dir(&skills_dir, Layout::SkillFolders, &skills)
            .unwrap();
        assert_eq!(placer.collisions.len(), 3, "{:?}", placer.collisions);
        assert_eq!(
            fs::read_to_string(outside.join("secret.txt")).unwrap(),
            "private"
        );
        assert!(
            !outside.join("SKILL.md").exists(),
            "nothing written through the link"
        );
        assert!(fs::symlink_metadata(dir.join("a.md"))
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(fs::read_to_string(dir.join("a..mesh.md")).unwrap(), "mesh");
    }
}
