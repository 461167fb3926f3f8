//! Writing cache files so readers never see half a file, and never over or instead of a file
//! meshd did not write: a file is meshd's only while its bytes are what the manifest says
//! meshd wrote. Where someone else's file holds a name the mesh uses, the mesh's version goes
//! beside it (`<stem>..mesh.<ext>`, or the folder `<name>..mesh/`) and the collision is kept.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use super::manifest::{hash, Collision, Manifest};
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

/// A cache path opened without following symbolic links.
enum Opened {
    Missing,
    Regular(fs::File),
    Other,
}

/// Opens `rel` in the cache directory `dir` only as a regular file of at most
/// `MAX_FILE_BYTES` reached without links: someone else's link must not make meshd read
/// another file into the mesh (or write through it), a FIFO must not block the writer, and a
/// huge file must not fill memory.
fn open_cache_file(dir: &Path, rel: &str) -> io::Result<Opened> {
    use std::os::unix::fs::OpenOptionsExt;
    if let Some((folder, _)) = rel.rsplit_once('/') {
        match fs::symlink_metadata(dir.join(folder)) {
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => return Ok(Opened::Other),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Opened::Missing),
            Err(e) => return Err(e),
        }
    }
    let file = match fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(dir.join(rel))
    {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Opened::Missing),
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => return Ok(Opened::Other),
        Err(e) => return Err(e),
    };
    let meta = file.metadata()?;
    if !meta.is_file() || meta.len() > MAX_FILE_BYTES {
        return Ok(Opened::Other);
    }
    Ok(Opened::Regular(file))
}

/// Reads `rel` in the cache directory `dir` (see `open_cache_file` for what is read).
pub fn read_cache_file(dir: &Path, rel: &str) -> io::Result<Found> {
    use std::io::Read;
    let file = match open_cache_file(dir, rel)? {
        Opened::Regular(file) => file,
        Opened::Missing => return Ok(Found::Missing),
        Opened::Other => return Ok(Found::Other),
    };
    let mut bytes = Vec::with_capacity(file.metadata()?.len() as usize);
    file.take(MAX_FILE_BYTES + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Ok(Found::Other);
    }
    Ok(Found::Regular(bytes))
}

/// What is at a cache path, by the BLAKE3 of its bytes: a large `mesh-memory.json` is
/// compared without being read into memory.
pub enum Hashed {
    Missing,
    Regular(String),
    Other,
}

/// Hashes `rel` in the cache directory `dir` in a stream (see `open_cache_file` for what is
/// read).
pub fn hash_cache_file(dir: &Path, rel: &str) -> io::Result<Hashed> {
    use std::io::Read;
    let file = match open_cache_file(dir, rel)? {
        Opened::Regular(file) => file,
        Opened::Missing => return Ok(Hashed::Missing),
        Opened::Other => return Ok(Hashed::Other),
    };
    let mut hasher = blake3::Hasher::new();
    let read = io::copy(&mut file.take(MAX_FILE_BYTES + 1), &mut hasher)?;
    if read > MAX_FILE_BYTES {
        return Ok(Hashed::Other);
    }
    Ok(Hashed::Regular(hasher.finalize().to_hex().to_string()))
}

/// What meshd puts at a cache path: a text, or a file already rendered beside it.
#[derive(Clone, Copy)]
pub enum Content<'a> {
    Text(&'a str),
    Rendered(&'a Rendered),
}

impl<'a> From<&'a String> for Content<'a> {
    fn from(text: &'a String) -> Content<'a> {
        Content::Text(text)
    }
}

impl<'a> From<&'a Rendered> for Content<'a> {
    fn from(rendered: &'a Rendered) -> Content<'a> {
        Content::Rendered(rendered)
    }
}

impl Content<'_> {
    fn hash(&self) -> String {
        match self {
            Content::Text(text) => hash(text.as_bytes()),
            Content::Rendered(rendered) => rendered.hash.clone(),
        }
    }

    /// Puts the content at `path` by rename, so readers see the old file or the new one.
    fn install(&self, path: &Path) -> io::Result<()> {
        match self {
            Content::Text(text) => write_atomic(path, text.as_bytes()),
            Content::Rendered(rendered) => {
                if let Some(dir) = path.parent() {
                    fs::create_dir_all(dir)?;
                }
                fs::rename(&rendered.temp, path)
            }
        }
    }
}

/// A file streamed into a temporary file of its directory, with the BLAKE3 of its bytes;
/// placing it renames the temporary file, which is removed when it was not placed.
pub struct Rendered {
    temp: PathBuf,
    hash: String,
    len: u64,
}

impl Rendered {
    /// Streams `write` into a temporary file for `name` in `dir` (buffered, hashed on the
    /// way); returns it with what `write` returned.
    pub fn write<T, E: From<io::Error>>(
        dir: &Path,
        name: &str,
        write: impl FnOnce(&mut dyn Write) -> Result<T, E>,
    ) -> Result<(Rendered, T), E> {
        fs::create_dir_all(dir)?;
        let temp = temp_path(dir, name);
        let mut rendered = Rendered {
            temp,
            hash: String::new(),
            len: 0,
        };
        let mut out = Hashing {
            inner: io::BufWriter::new(fs::File::create(&rendered.temp)?),
            hasher: blake3::Hasher::new(),
            len: 0,
        };
        let value = write(&mut out)?;
        out.inner.flush()?;
        rendered.hash = out.hasher.finalize().to_hex().to_string();
        rendered.len = out.len;
        Ok((rendered, value))
    }

    pub fn len(&self) -> u64 {
        self.len
    }
}

impl Drop for Rendered {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.temp);
    }
}

/// A writer that hashes and counts what goes through it.
struct Hashing<W> {
    inner: W,
    hasher: blake3::Hasher,
    len: u64,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        let written = self.inner.write(bytes)?;
        self.hasher.update(&bytes[..written]);
        self.len += written as u64;
        Ok(written)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
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
    pub fn copy_entry(self, entry: &str) -> String {
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

/// Where an entry's file went.
pub enum Placed {
    /// At its own name (the path relative to the directory).
    Own(String),
    /// Someone else's file holds its name: beside it, or nowhere when that is taken too.
    Copy(Option<String>),
}

impl Placer<'_> {
    /// Makes `dir` hold `files` (by entry name: texts, or files rendered beside) among the
    /// files meshd holds there, and removes meshd's other files; returns the paths (relative
    /// to `dir`) that hold the mesh's version of each entry at its own name.
    pub fn sync_dir<'c, C>(
        &mut self,
        dir: &Path,
        layout: Layout,
        files: &'c BTreeMap<String, C>,
    ) -> Result<BTreeSet<String>, CacheError>
    where
        Content<'c>: From<&'c C>,
    {
        let mut held = BTreeSet::new();
        let mut at_own_name = BTreeSet::new();
        for (entry, content) in files {
            let copy_wanted = files.contains_key(&layout.copy_entry(entry));
            match self.place(dir, layout, entry, content.into(), copy_wanted)? {
                Placed::Own(rel) => {
                    at_own_name.insert(rel.clone());
                    held.insert(rel);
                }
                Placed::Copy(copy) => held.extend(copy),
            }
        }
        self.remove_stale(dir, &held)?;
        Ok(at_own_name)
    }

    /// Brings one entry of `dir` up to date, the others staying as they are: its file is
    /// put at its name, or beside a foreign file there (a copy is never put where the mesh
    /// wants a file of its own: `COPY_MARK`); `None` (the mesh has no such entry any more)
    /// removes it. meshd's file at the name or the copy that is no longer wanted goes.
    pub fn update(
        &mut self,
        dir: &Path,
        layout: Layout,
        entry: &str,
        content: Option<Content<'_>>,
    ) -> Result<Option<Placed>, CacheError> {
        let placed = match content {
            Some(content) => Some(self.place(dir, layout, entry, content, false)?),
            None => None,
        };
        let held = match &placed {
            Some(Placed::Own(rel)) | Some(Placed::Copy(Some(rel))) => Some(rel.as_str()),
            Some(Placed::Copy(None)) | None => None,
        };
        for rel in [layout.rel(entry), layout.rel(&layout.copy_entry(entry))] {
            if Some(rel.as_str()) != held {
                self.remove_if_meshds(dir, &rel)?;
            }
        }
        Ok(placed)
    }

    /// Puts `entry` at its name, else beside the foreign file there, recording the collision.
    fn place(
        &mut self,
        dir: &Path,
        layout: Layout,
        entry: &str,
        content: Content<'_>,
        copy_wanted: bool,
    ) -> Result<Placed, CacheError> {
        let rel = layout.rel(entry);
        if let Put::Done = self.put(dir, &rel, content)? {
            return Ok(Placed::Own(rel));
        }
        let copy_rel = layout.rel(&layout.copy_entry(entry));
        let mesh_copy = match copy_wanted {
            true => None,
            false => match self.put(dir, &copy_rel, content)? {
                Put::Done => Some(copy_rel),
                Put::Foreign => None,
            },
        };
        self.collisions.push(Collision {
            file: dir.join(&rel),
            mesh_copy: mesh_copy.as_ref().map(|copy| dir.join(copy)),
        });
        Ok(Placed::Copy(mesh_copy))
    }

    /// Writes `content` at `rel` unless someone else's file is there.
    fn put(&mut self, dir: &Path, rel: &str, content: Content<'_>) -> Result<Put, CacheError> {
        let path = dir.join(rel);
        let new = content.hash();
        let meshds = match hash_cache_file(dir, rel) {
            Ok(Hashed::Regular(current)) if current == new => {
                // Also adopts a file that someone made identical to the mesh's version.
                self.manifest.record_hash(dir, rel, new);
                self.report.unchanged += 1;
                return Ok(Put::Done);
            }
            Ok(Hashed::Regular(current)) => self.manifest.wrote_hash(dir, rel, &current),
            Ok(Hashed::Missing) => true,
            // A link, a folder, or a file meshd may not read, under the name: not meshd's.
            Ok(Hashed::Other) | Err(_) => false,
        };
        if !meshds {
            return Ok(Put::Foreign);
        }
        content
            .install(&path)
            .map_err(|source| CacheError::io(&path, source))?;
        self.manifest.record_hash(dir, rel, new);
        self.report.written += 1;
        Ok(Put::Done)
    }

    /// Removes meshd's files in `dir` that are no longer wanted; a file changed since meshd
    /// wrote it is forgotten instead, and stays.
    fn remove_stale(&mut self, dir: &Path, held: &BTreeSet<String>) -> Result<(), CacheError> {
        for rel in self.manifest.recorded(dir) {
            if !held.contains(&rel) {
                self.remove_if_meshds(dir, &rel)?;
            }
        }
        Ok(())
    }

    /// Removes `rel` when meshd wrote it and it is still as written; forgets it either way.
    fn remove_if_meshds(&mut self, dir: &Path, rel: &str) -> Result<(), CacheError> {
        if !self.manifest.is_recorded(dir, rel) {
            return Ok(());
        }
        let path = dir.join(rel);
        if matches!(hash_cache_file(dir, rel), Ok(Hashed::Regular(current)) if self.manifest.wrote_hash(dir, rel, &current))
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
        self.manifest.forget(dir, rel);
        Ok(())
    }
}

/// The temporary file beside `name` in `dir`; the process id keeps two writers (the server
/// and `meshd cache write`) apart.
fn temp_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!(".{name}.{}.meshd-tmp", std::process::id()))
}

/// Replaces `path` by rename so readers see the old file or the new one, never a mix.
fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir)?;
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let temp = temp_path(dir, &name);
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
