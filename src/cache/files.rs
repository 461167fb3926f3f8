//! Writing cache files so readers never see half a file, and removing only what meshd wrote.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use super::{CacheError, CacheReport};

/// Lists, one per line, the entries meshd wrote into a directory, so that a later write
/// removes its own stale entries and never anything else. Safe names never start with a
/// dot, so no entry can be called this.
const MANIFEST: &str = ".meshd-manifest";

/// How a directory's entries are laid out.
#[derive(Debug, Clone, Copy)]
pub enum Layout {
    /// `<dir>/<entry>` is the file.
    Files,
    /// `<dir>/<entry>/SKILL.md` is the file (OpenClaw skill folders).
    SkillFolders,
}

impl Layout {
    fn file(self, dir: &Path, entry: &str) -> PathBuf {
        match self {
            Layout::Files => dir.join(entry),
            Layout::SkillFolders => dir.join(entry).join("SKILL.md"),
        }
    }
}

/// Makes `dir` hold exactly `files` among the entries meshd manages there.
pub fn sync_dir(
    dir: &Path,
    layout: Layout,
    files: &BTreeMap<String, String>,
    report: &mut CacheReport,
) -> Result<(), CacheError> {
    for (entry, text) in files {
        write(&layout.file(dir, entry), text, report)?;
    }
    let manifest = dir.join(MANIFEST);
    let before = fs::read_to_string(&manifest).unwrap_or_default();
    for stale in before.lines().filter(|entry| !files.contains_key(*entry)) {
        if is_entry_name(stale) {
            remove(dir, layout, stale, report)?;
        }
    }
    let listed: BTreeSet<&str> = files.keys().map(String::as_str).collect();
    let text: String = listed.iter().map(|entry| format!("{entry}\n")).collect();
    write_atomic(&manifest, text.as_bytes()).map_err(|source| CacheError::io(&manifest, source))?;
    Ok(())
}

/// A manifest line that names an entry of the directory itself, whoever edited the manifest.
fn is_entry_name(entry: &str) -> bool {
    !entry.is_empty() && !entry.starts_with('.') && !entry.contains(['/', '\\'])
}

fn remove(
    dir: &Path,
    layout: Layout,
    entry: &str,
    report: &mut CacheReport,
) -> Result<(), CacheError> {
    let file = layout.file(dir, entry);
    match fs::remove_file(&file) {
        Ok(()) => report.removed += 1,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(source) => return Err(CacheError::io(&file, source)),
    }
    if let Layout::SkillFolders = layout {
        // Only an empty folder goes: files someone added beside SKILL.md stay.
        let _ = fs::remove_dir(dir.join(entry));
    }
    Ok(())
}

/// Writes one file if its content changed.
pub fn write(path: &Path, text: &str, report: &mut CacheReport) -> Result<(), CacheError> {
    match write_atomic(path, text.as_bytes()) {
        Ok(true) => report.written += 1,
        Ok(false) => report.unchanged += 1,
        Err(source) => return Err(CacheError::io(path, source)),
    }
    Ok(())
}

/// Replaces `path` by rename so readers see the old file or the new one, never a mix;
/// `false` when the file already holds `bytes` (nothing is touched, so watchers stay quiet).
fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<bool> {
    if fs::read(path).is_ok_and(|current| current == bytes) {
        return Ok(false);
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir)?;
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    // The process id keeps two writers (the server and `meshd cache write`) apart.
    let temp = dir.join(format!(".{name}.{}.meshd-tmp", std::process::id()));
    fs::write(&temp, bytes)?;
    fs::rename(&temp, path).inspect_err(|_| {
        let _ = fs::remove_file(&temp);
    })?;
    Ok(true)
}
