//! The files other programs read: the Phase 1 reference cache (`mesh-memory.json`,
//! `mesh/skills/<name>.md`) and what an OpenClaw agent loads itself (`<name>/SKILL.md`
//! folders and one Markdown file of memory per scope). Always written whole from the
//! replica, each file by atomic rename and only when its content changed.

mod files;
mod render;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::model::{MemoryEntry, Scope, Skill};
use crate::replica::Replica;
use files::Layout;
pub use render::safe_name;

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
        self.openclaw_home.join("mesh-memory.json")
    }

    pub fn reference_skills_dir(&self) -> PathBuf {
        self.openclaw_home.join("mesh").join("skills")
    }
}

#[derive(Debug, thiserror::Error)]
#[error("cannot write the cache file {path}: {source}")]
pub struct CacheError {
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

impl CacheError {
    fn io(path: &Path, source: std::io::Error) -> CacheError {
        CacheError {
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
    pub fn of(replica: &Replica) -> Snapshot {
        Snapshot {
            own: replica.node_id().to_string(),
            memory: replica.list_memory(None),
            skills: replica.list_skills(),
        }
    }
}

/// Rewrites every cache from the replica.
pub fn write_all(replica: &Replica, paths: &CachePaths) -> Result<CacheReport, CacheError> {
    write_snapshot(Snapshot::of(replica), paths)
}

/// Rewrites every cache from a snapshot.
pub fn write_snapshot(snapshot: Snapshot, paths: &CachePaths) -> Result<CacheReport, CacheError> {
    let own = snapshot.own.as_str();
    let memory = snapshot.memory;
    let skills = render::unique_skills(snapshot.skills);
    let mut report = CacheReport::default();
    files::write(
        &paths.memory_json(),
        &render::reference_memory(&memory, own),
        &mut report,
    )?;
    let reference: BTreeMap<String, String> = skills
        .iter()
        .map(|(safe, skill)| (render::reference_skill_file(safe), skill.body().to_string()))
        .collect();
    let reference_dir = paths.reference_skills_dir();
    files::sync_dir(&reference_dir, Layout::Files, &reference, &mut report)?;
    let native: BTreeMap<String, String> = skills
        .iter()
        .map(|(safe, skill)| (safe.clone(), render::skill_md(skill)))
        .collect();
    files::sync_dir(
        &paths.skills_dir,
        Layout::SkillFolders,
        &native,
        &mut report,
    )?;
    let pages = memory_pages(&memory, own);
    files::sync_dir(&paths.memory_dir, Layout::Files, &pages, &mut report)?;
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
