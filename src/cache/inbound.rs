//! Reading back what others wrote into the cache files: an entry added or changed in
//! `mesh-memory.json`, a `mesh/skills/<name>.md` or a `<name>/SKILL.md` that is not what
//! meshd wrote becomes a change for the mesh. Files meshd wrote (by content, per the
//! manifest) are never read back. A removed entry or file asks nothing of the mesh.

use std::cell::OnceCell;
use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::files::{hash_cache_file, read_cache_file, Found, Hashed, Layout};
use super::manifest::Manifest;
use super::render::{self, MEMORY_JSON};
use super::CachePaths;
use crate::model::{MemoryEntry, Scope, Skill};
use crate::replica::{ReplicaError, SharedReplica};

/// A write for the mesh, made from a file.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    Memory {
        scope: Scope,
        key: String,
        value: Value,
    },
    Skill {
        name: String,
        content: String,
        /// `None` keeps the stored description.
        description: Option<String>,
        path: Option<String>,
    },
}

impl Change {
    /// What the change is about, for logs and `meshd status`.
    pub fn subject(&self) -> String {
        match self {
            Change::Memory { scope, key, .. } => format!("entry {scope}:{key}"),
            Change::Skill { name, .. } => format!("skill {name}"),
        }
    }
}

/// A cache file someone else changed.
pub struct Edit {
    pub dir: PathBuf,
    pub rel: String,
    /// The bytes read: once their changes are in the mesh, meshd may rewrite exactly these.
    pub bytes: Vec<u8>,
    /// What the file asks of the mesh.
    pub changes: Vec<Change>,
    /// What in the file cannot be read back, and why: the file then stays foreign.
    pub problems: Vec<String>,
    /// The `mesh-memory.json` entries read (by label), to remember once imported.
    pub entries: Vec<(String, Value)>,
}

impl Edit {
    pub fn file(&self) -> PathBuf {
        self.dir.join(&self.rel)
    }
}

/// Every cache file that is not what meshd wrote, with what it asks of the mesh. The replica
/// is read only when some file is not meshd's, and only for what that file needs.
pub fn scan(
    paths: &CachePaths,
    manifest: &Manifest,
    replica: &SharedReplica,
) -> Result<Vec<Edit>, ReplicaError> {
    let read = OnceCell::new();
    let skills = || -> Result<&BTreeMap<String, Skill>, ReplicaError> {
        if read.get().is_none() {
            let held = replica.with(|r| r.list_skills())?;
            let _ = read.set(render::unique_skills(held));
        }
        Ok(read.get().expect("set just above"))
    };
    let mut edits = Vec::new();
    let home = &paths.openclaw_home;
    if let Some(bytes) = foreign(manifest, home, MEMORY_JSON) {
        let (own, memory) = replica.with(|r| (r.node_id().to_string(), r.list_memory(None)));
        edits.push(memory_json(home, bytes, manifest, &own, &memory?));
    }
    let reference = paths.reference_skills_dir();
    for entry in entries(&reference, Layout::Files) {
        let Some(bytes) = foreign(manifest, &reference, &entry) else {
            continue;
        };
        let current = skills()?
            .iter()
            .find(|(safe, _)| render::reference_skill_file(safe) == entry)
            .map(|(_, skill)| skill);
        let name = current.map_or_else(|| stem(&entry).to_string(), |s| s.name.clone());
        let changes =
            text(&bytes).map(|content| skill_change(name, content.to_string(), None, current));
        edits.push(edit(&reference, entry, bytes, changes));
    }
    let native = &paths.skills_dir;
    for folder in entries(native, Layout::SkillFolders) {
        let rel = Layout::SkillFolders.rel(&folder);
        let Some(bytes) = foreign(manifest, native, &rel) else {
            continue;
        };
        let current = skills()?.get(&folder);
        let changes = text(&bytes).and_then(|text| {
            let parsed = parse_skill_md(text)?;
            let name = match (current, parsed.name) {
                (Some(skill), _) => skill.name.clone(),
                (None, Some(name)) if render::safe_name(&name) == folder => name,
                (None, _) => folder.clone(),
            };
            // meshd writes a description even for a skill without one; only another one is
            // a change.
            let description = parsed
                .description
                .filter(|d| !d.is_empty())
                .filter(|d| current.is_none_or(|skill| *d != render::description(skill)));
            let body = parsed.body.to_string();
            Ok(skill_change(name, body, description, current))
        });
        edits.push(edit(native, rel, bytes, changes));
    }
    Ok(edits)
}

fn edit(dir: &Path, rel: String, bytes: Vec<u8>, change: Result<Option<Change>, String>) -> Edit {
    let (changes, problems) = match change {
        Ok(change) => (change.into_iter().collect(), Vec::new()),
        Err(problem) => (Vec::new(), vec![problem]),
    };
    Edit {
        dir: dir.to_path_buf(),
        rel,
        bytes,
        changes,
        problems,
        entries: Vec::new(),
    }
}

/// The file's bytes, when it exists and is not what meshd wrote.
/// Links, FIFOs and files too large are never read back (`files::read_cache_file`).
fn foreign(manifest: &Manifest, dir: &Path, rel: &str) -> Option<Vec<u8>> {
    // Hashed in a stream first: meshd's own file (a `mesh-memory.json` of a million entries
    // is 140 MB, looked at on every start and after each of its writes) is never read into
    // memory; the bytes are read, and compared again, only when someone changed it.
    match hash_cache_file(dir, rel) {
        Ok(Hashed::Regular(hash)) if !manifest.wrote_hash(dir, rel, &hash) => {}
        _ => return None,
    }
    match read_cache_file(dir, rel) {
        Ok(Found::Regular(bytes)) => (!manifest.wrote(dir, rel, &bytes)).then_some(bytes),
        _ => None,
    }
}

/// The entries of a cache directory that name a skill: `*.md` files or folders holding a
/// `SKILL.md`; hidden ones and meshd's copies (their names hold `..`) are not.
fn entries(dir: &Path, layout: Layout) -> Vec<String> {
    let Ok(read) = fs::read_dir(dir) else {
        return Vec::new();
    };
    // `file_type` does not follow links: a linked file or folder is not an entry.
    let mut names: Vec<String> = read
        .flatten()
        .filter(|entry| {
            entry.file_type().is_ok_and(|kind| match layout {
                Layout::Files => kind.is_file(),
                Layout::SkillFolders => kind.is_dir(),
            })
        })
        .filter_map(|entry| entry.file_name().into_string().ok())
        .filter(|name| !name.starts_with('.') && !name.contains(".."))
        .filter(|name| match layout {
            Layout::Files => name.ends_with(".md"),
            Layout::SkillFolders => dir.join(name).join("SKILL.md").is_file(),
        })
        .collect();
    names.sort();
    names
}

fn stem(file: &str) -> &str {
    file.strip_suffix(".md").unwrap_or(file)
}

fn text(bytes: &[u8]) -> Result<&str, String> {
    std::str::from_utf8(bytes).map_err(|_| "the file is not UTF-8 text".to_string())
}

/// The write a skill file asks for; none when it says what the mesh already has.
fn skill_change(
    name: String,
    content: String,
    description: Option<String>,
    current: Option<&Skill>,
) -> Option<Change> {
    if current.is_some_and(|skill| skill.body() == content && description.is_none()) {
        return None;
    }
    Some(Change::Skill {
        name,
        content,
        description,
        path: current.and_then(|skill| skill.path.clone()),
    })
}

fn memory_json(
    home: &Path,
    bytes: Vec<u8>,
    manifest: &Manifest,
    own: &str,
    memory: &[MemoryEntry],
) -> Edit {
    let mut edit = edit(home, MEMORY_JSON.to_string(), bytes, Ok(None));
    let object = match serde_json::from_slice::<serde_json::Map<String, Value>>(&edit.bytes) {
        Ok(object) => object,
        Err(error) => {
            edit.problems.push(format!(
                "not a JSON object ({error}); nothing is imported and meshd leaves the file as \
                 it is until it is valid"
            ));
            return edit;
        }
    };
    let known = labelled(memory, own);
    let recorded = manifest.entries(home);
    for (label, cached) in object {
        let Some(value) = cached.get("value").cloned() else {
            edit.problems.push(format!("{label} has no \"value\""));
            continue;
        };
        if recorded.knows(&label, &value) {
            continue;
        }
        match known.get(&label) {
            Some(entry) if entry.value == value => {}
            Some(entry) => edit.changes.push(Change::Memory {
                scope: entry.scope.clone(),
                key: entry.key.clone(),
                value: value.clone(),
            }),
            None => match new_entry(&label, own) {
                Some((scope, key)) => edit.changes.push(Change::Memory {
                    scope,
                    key,
                    value: value.clone(),
                }),
                None => {
                    edit.problems.push(format!(
                        "{label} names no scope (write \"mesh:<key>\", \"user:<id>:<key>\" \
                         or \"node:<key>\")"
                    ));
                    continue;
                }
            },
        }
        edit.entries.push((label, value));
    }
    edit
}

/// The mesh's entries by their label in `mesh-memory.json`, as `render` writes them.
fn labelled<'a>(memory: &'a [MemoryEntry], own: &str) -> BTreeMap<String, &'a MemoryEntry> {
    let mut known: BTreeMap<String, &MemoryEntry> = BTreeMap::new();
    for entry in memory {
        let label = render::memory_label(entry, own);
        if known
            .get(&label)
            .is_none_or(|kept| kept.updated_at < entry.updated_at)
        {
            known.insert(label, entry);
        }
    }
    known
}

/// The scope and key of an entry the mesh does not have yet: `mesh:<key>`,
/// `user:<id>:<key>`, or `node:<key>` for this node's own scope, as the reference tools write.
fn new_entry(label: &str, own: &str) -> Option<(Scope, String)> {
    let (scope, rest) = label.split_once(':')?;
    let (scope, key) = match scope {
        "mesh" => (Scope::Mesh, rest),
        "node" => (Scope::Node(own.to_string()), rest),
        "user" => {
            let (id, key) = rest.split_once(':')?;
            (Scope::parse(&format!("user:{id}"), own).ok()?, key)
        }
        _ => return None,
    };
    Some((scope, key.to_string()))
}

/// A `SKILL.md` read back.
#[derive(Debug, PartialEq)]
struct SkillMd<'a> {
    name: Option<String>,
    description: Option<String>,
    body: &'a str,
}

/// Splits YAML front matter (between `---` lines at the top) from the body, as meshd writes
/// it; a file without front matter is all body.
fn parse_skill_md(text: &str) -> Result<SkillMd<'_>, String> {
    let Some(after_open) = text
        .strip_prefix("---\n")
        .or_else(|| text.strip_prefix("---\r\n"))
    else {
        return Ok(SkillMd {
            name: None,
            description: None,
            body: text,
        });
    };
    let mut offset = 0;
    let (yaml, body) = loop {
        let Some(line) = after_open[offset..].split_inclusive('\n').next() else {
            return Err("the front matter has no closing --- line".to_string());
        };
        if line.trim_end() == "---" {
            break (&after_open[..offset], &after_open[offset + line.len()..]);
        }
        offset += line.len();
    };
    let docs = yaml_rust2::YamlLoader::load_from_str(yaml)
        .map_err(|e| format!("the front matter is not valid YAML: {e}"))?;
    let field = |name: &str| {
        docs.first()
            .and_then(|doc| doc[name].as_str())
            .map(str::to_string)
    };
    Ok(SkillMd {
        name: field("name"),
        description: field("description"),
        body,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::render::tests::skill;

    #[test]
    fn skill_md_reads_back_what_meshd_writes() {
        let written =
            render::skill_md(&skill("tri: age", "# Rules\n---\nbody\n", "Sorts \"work\""));
        let parsed = parse_skill_md(&written).unwrap();
        assert_eq!(
            parsed,
            SkillMd {
                name: Some("tri: age".into()),
                description: Some("Sorts \"work\"".into()),
                body: "# Rules\n---\nbody\n",
            }
        );
    }

    #[test]
    fn skill_md_as_people_write_it() {
        let text = "---\nname: triage\ndescription: >\n  Sorts work\n  by urgency\n---\nBody";
        let parsed = parse_skill_md(text).unwrap();
        assert_eq!(parsed.name.as_deref(), Some("triage"));
        assert_eq!(
            parsed.description.as_deref(),
            Some("Sorts work by urgency\n")
        );
        assert_eq!(parsed.body, "Body");
        assert_eq!(
            parse_skill_md("no front matter").unwrap().body,
            "no front matter"
        );
        assert_eq!(parse_skill_md("---\nname: x\n---").unwrap().body, "");
        assert!(parse_skill_md("---\nname: x\nbody").is_err());
        assert!(parse_skill_md("---\nname: [x\n---\nbody").is_err());
    }

    #[test]
    fn new_entries_name_their_scope() {
        let own = "own";
        assert_eq!(
            new_entry("mesh:a:b", own),
            Some((Scope::Mesh, "a:b".to_string()))
        );
        assert_eq!(
            new_entry("node:k", own),
            Some((Scope::Node("own".into()), "k".to_string()))
        );
        assert_eq!(
            new_entry("user:alice:tz", own),
            Some((Scope::User("alice".into()), "tz".to_string()))
        );
        assert_eq!(new_entry("user:alice", own), None);
        assert_eq!(new_entry("other:x", own), None);
        assert_eq!(new_entry("plain", own), None);
    }
}
