//! Writing the caches in proportion to what changed. The caches remember the heads of each
//! document they reflect (`follow::Seen`); after a burst of changes only the memory pages of
//! the scopes that moved and the files of the skills that moved are rendered and put again,
//! and `mesh-memory.json` when memory moved. Those two are rewritten whole, so each waits its
//! interval (`pace`): under a stream of changes a large scope's page is put at most once per
//! interval, and the newest changes with it. A process that has
//! written nothing yet, or a document whose heads the caches saw are not in it any more,
//! writes everything once. Memory is read a part at a time (`parts`) for both. The
//! never-clobber rules (`files`) apply to each file alike.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::files::{Content, Layout, Placer, Rendered};
use super::manifest::{Collision, Manifest};
use super::memory_json;
use super::pace::{self, FilePace, Pace};
use super::parts::ScopeEntries;
use super::render::{self, MEMORY_JSON};
use super::{CacheError, CachePaths, CacheReport};
use crate::follow::{Moved, Moves, Seen};
use crate::model::{DocId, Scope, Skill};
use crate::replica::{ReplicaError, SharedReplica};

/// What the caches reflect, kept in memory: a new process writes everything once.
#[derive(Default)]
pub struct Followed {
    seen: Seen,
    /// The live skills by the safe name of their files: the skills competing for a file.
    skill_files: BTreeMap<String, BTreeSet<String>>,
    /// The memory pages by file name, with their scope.
    pages: BTreeMap<String, Scope>,
    /// When each scope's page was written, and whether the scope changed since.
    page_paces: BTreeMap<Scope, FilePace>,
    json: FilePace,
}

/// What a write did, and when it owes a file it put off (its interval had not passed).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Synced {
    pub report: CacheReport,
    pub due: Option<Duration>,
}

/// Where the caches go and how they are read from the replica.
pub struct Target<'a> {
    pub paths: &'a CachePaths,
    pub replica: &'a SharedReplica,
    /// Memory keys read under one hold of the replica (`parts::READ_PART`).
    pub part: usize,
}

/// Brings the caches up to date with the replica. `reread` are the files just read back
/// (their bytes are now recorded as meshd's, so the mesh's version goes there again).
pub fn write(
    target: &Target<'_>,
    manifest: &mut Manifest,
    followed: &mut Option<Followed>,
    reread: &BTreeSet<PathBuf>,
    pace: Pace,
) -> Result<Synced, CacheError> {
    let (own, moves) = target.replica.with(|r| {
        let seen = followed.as_ref().map(|f| &f.seen);
        (r.node_id().to_string(), Seen::moves(seen, r))
    });
    let writer = Writer {
        target,
        own: &own,
        reread,
    };
    match followed {
        Some(followed) if !moves.any_whole() => writer.incremental(manifest, followed, moves, pace),
        _ => {
            let (report, state) = writer.all(manifest, moves.heads)?;
            *followed = Some(state);
            Ok(Synced { report, due: None })
        }
    }
}

/// One write: what it reads and where it puts it.
struct Writer<'a> {
    target: &'a Target<'a>,
    own: &'a str,
    reread: &'a BTreeSet<PathBuf>,
}

impl Writer<'_> {
    /// Rewrites every cache where the path is meshd's or free, removing meshd's files the
    /// mesh no longer wants; returns what the caches then reflect (`heads`, read before
    /// anything else: what changes while the files are read is written again next time).
    fn all(
        &self,
        manifest: &mut Manifest,
        heads: Seen,
    ) -> Result<(CacheReport, Followed), CacheError> {
        let Target {
            paths,
            replica,
            part,
        } = *self.target;
        let (scopes, skills) =
            replica.with(|r| -> Result<_, ReplicaError> { Ok((r.scopes(), r.list_skills()?)) })?;
        let mut followed = Followed {
            seen: heads,
            ..Followed::default()
        };
        let mut placer = Placer {
            manifest,
            report: CacheReport::default(),
            collisions: Vec::new(),
        };
        let started = Instant::now();
        let len = memory_json::write_from(paths, &mut placer, replica, self.own, part)?;
        followed.json.written(len, started, Instant::now());
        followed.skill_files = self.all_skills(&mut placer, skills)?;
        followed.pages = self.all_pages(&mut placer, scopes, &mut followed.page_paces)?;
        let Placer {
            manifest,
            report,
            collisions,
        } = placer;
        warn_new(manifest.set_collisions(collisions));
        Ok((report, followed))
    }

    /// Puts the files of every skill (the skills are read at once: a few hundred); returns
    /// the live skills by the safe name of their files.
    fn all_skills(
        &self,
        placer: &mut Placer<'_>,
        skills: Vec<Skill>,
    ) -> Result<BTreeMap<String, BTreeSet<String>>, CacheError> {
        let paths = self.target.paths;
        let mut skill_files: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for skill in &skills {
            skill_files
                .entry(render::safe_name(&skill.name))
                .or_default()
                .insert(skill.name.clone());
        }
        let skills = render::unique_skills(skills);
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
        Ok(skill_files)
    }

    /// Puts the page of every scope that has live entries, each streamed into its
    /// temporary file first; returns the pages by file name, with their scope.
    fn all_pages(
        &self,
        placer: &mut Placer<'_>,
        scopes: Vec<Scope>,
        paces: &mut BTreeMap<Scope, FilePace>,
    ) -> Result<BTreeMap<String, Scope>, CacheError> {
        let mut pages = BTreeMap::new();
        let mut rendered_pages = BTreeMap::new();
        for scope in scopes {
            let started = Instant::now();
            let (file, rendered) = self.page(&scope)?;
            let len = rendered.as_ref().map_or(0, Rendered::len);
            paces
                .entry(scope.clone())
                .or_default()
                .written(len, started, Instant::now());
            if let Some(rendered) = rendered {
                pages.insert(file.clone(), scope);
                rendered_pages.insert(file, rendered);
            }
        }
        let memory_dir = &self.target.paths.memory_dir;
        placer.sync_dir(memory_dir, Layout::Files, &rendered_pages)?;
        Ok(pages)
    }

    fn incremental(
        &self,
        manifest: &mut Manifest,
        followed: &mut Followed,
        moves: Moves,
        pace: Pace,
    ) -> Result<Synced, CacheError> {
        let mut placer = Placer {
            manifest,
            report: CacheReport::default(),
            collisions: Vec::new(),
        };
        let mut touched = BTreeSet::new();
        let mut skill_names = BTreeSet::new();
        for (doc, moved) in &moves.docs {
            match (doc, moved) {
                (DocId::Memory(scope) | DocId::Bucket(scope, _), _) => {
                    let page = followed.page_paces.entry(scope.clone()).or_default();
                    page.mark_stale();
                    followed.json.mark_stale();
                }
                (DocId::Skills, Moved::Keys(names)) => skill_names.extend(names.iter().cloned()),
                // `write` reads everything when some document must be read whole.
                (DocId::Skills, Moved::Whole) => {}
            }
        }
        let memory_dir = &self.target.paths.memory_dir;
        // A page just read back or deleted is put again at once: nothing was waiting for it.
        let mut scopes: BTreeSet<Scope> = (followed.pages.iter())
            .filter(|(file, _)| self.needs_check(placer.manifest, memory_dir, Layout::Files, file))
            .map(|(_, scope)| scope.clone())
            .collect();
        let mut due = None;
        let now = Instant::now();
        for (scope, page) in &followed.page_paces {
            if page.is_stale() {
                match page.wait(pace, now) {
                    None => {
                        scopes.insert(scope.clone());
                    }
                    wait => due = pace::sooner(due, wait),
                }
            }
        }
        for scope in scopes {
            let started = Instant::now();
            let (file, rendered) = self.page(&scope)?;
            let len = rendered.as_ref().map_or(0, Rendered::len);
            placer.update(
                memory_dir,
                Layout::Files,
                &file,
                rendered.as_ref().map(Content::Rendered),
            )?;
            touched.insert(memory_dir.join(&file));
            match rendered {
                Some(_) => followed.pages.insert(file, scope.clone()),
                None => followed.pages.remove(&file),
            };
            let page = followed.page_paces.entry(scope).or_default();
            page.written(len, started, Instant::now());
        }
        self.skills(&mut placer, followed, skill_names, &mut touched)?;
        let Target {
            paths,
            replica,
            part,
        } = *self.target;
        if self.needs_check(
            placer.manifest,
            &paths.openclaw_home,
            Layout::Files,
            MEMORY_JSON,
        ) {
            followed.json.mark_stale();
        }
        let started = Instant::now();
        let json_due = followed.json.wait(pace, started);
        due = pace::sooner(due, json_due);
        if followed.json.is_stale() && json_due.is_none() {
            let len = memory_json::write_from(paths, &mut placer, replica, self.own, part)?;
            followed.json.written(len, started, Instant::now());
            touched.insert(paths.memory_json());
        }
        let Placer {
            manifest,
            report,
            collisions,
        } = placer;
        warn_new(manifest.update_collisions(&touched, collisions));
        followed.seen = moves.heads;
        Ok(Synced { report, due })
    }

    /// Puts again the files of the skills named, and of any other skill whose file needs a
    /// look; each file holds the newest of the skills whose names reduce to it.
    fn skills(
        &self,
        placer: &mut Placer<'_>,
        followed: &mut Followed,
        changed: BTreeSet<String>,
        touched: &mut BTreeSet<PathBuf>,
    ) -> Result<(), CacheError> {
        let reference_dir = self.target.paths.reference_skills_dir();
        let skills_dir = &self.target.paths.skills_dir;
        let mut candidates: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for name in changed {
            candidates
                .entry(render::safe_name(&name))
                .or_default()
                .insert(name);
        }
        for safe in followed.skill_files.keys() {
            let reference = render::reference_skill_file(safe);
            if self.needs_check(placer.manifest, &reference_dir, Layout::Files, &reference)
                || self.needs_check(placer.manifest, skills_dir, Layout::SkillFolders, safe)
            {
                candidates.entry(safe.clone()).or_default();
            }
        }
        for (safe, mut names) in candidates {
            names.extend(followed.skill_files.remove(&safe).unwrap_or_default());
            let live: Vec<Skill> = self.target.replica.with(|r| {
                names
                    .iter()
                    .filter_map(|name| r.get_skill(name).transpose())
                    .collect::<Result<_, _>>()
            })?;
            if !live.is_empty() {
                let live_names = live.iter().map(|skill| skill.name.clone()).collect();
                followed.skill_files.insert(safe.clone(), live_names);
            }
            let winner = render::unique_skills(live).remove(&safe);
            let reference = render::reference_skill_file(&safe);
            let body = winner.as_ref().map(|skill| Content::Text(skill.body()));
            placer.update(&reference_dir, Layout::Files, &reference, body)?;
            let skill_md = winner.as_ref().map(render::skill_md);
            let native = skill_md.as_deref().map(Content::Text);
            placer.update(skills_dir, Layout::SkillFolders, &safe, native)?;
            touched.insert(reference_dir.join(Layout::Files.rel(&reference)));
            touched.insert(skills_dir.join(Layout::SkillFolders.rel(&safe)));
        }
        Ok(())
    }

    /// A scope's Markdown page, streamed into its temporary file a part at a time: its file
    /// name, and the file unless the scope has no live entry.
    fn page(&self, scope: &Scope) -> Result<(String, Option<Rendered>), CacheError> {
        let Target {
            paths,
            replica,
            part,
        } = *self.target;
        let label = scope.label(self.own);
        let file = render::page_file(&label);
        let entries = ScopeEntries::new(replica, scope.clone(), part);
        let (rendered, count) = Rendered::write(&paths.memory_dir, &file, |out| {
            render::write_memory_md(out, &label, entries)
        })
        .map_err(|error| error.for_file(&paths.memory_dir.join(&file)))?;
        Ok((file, (count > 0).then_some(rendered)))
    }

    /// Whether an entry's file must be looked at although its entry did not change: it was
    /// just read back, or meshd's file (at its name or beside a foreign one) was deleted.
    fn needs_check(&self, manifest: &Manifest, dir: &Path, layout: Layout, entry: &str) -> bool {
        [layout.rel(entry), layout.rel(&layout.copy_entry(entry))]
            .iter()
            .any(|rel| {
                let path = dir.join(rel);
                self.reread.contains(&path)
                    || (manifest.is_recorded(dir, rel) && std::fs::symlink_metadata(&path).is_err())
            })
    }
}

fn warn_new(collisions: Vec<Collision>) {
    for collision in collisions {
        let copy = collision
            .mesh_copy
            .as_ref()
            .map_or("nowhere: that name is taken too".to_string(), |c| {
                c.display().to_string()
            });
        tracing::warn!(file = %collision.file.display(), mesh_copy = %copy, "a file meshd did not write holds a name the mesh uses; it stays, and the mesh's version is beside it");
    }
}
