//! The text of each cache file.

use std::collections::BTreeMap;
use std::io::{self, Write};

use serde::ser::SerializeMap;
use serde::{Serialize, Serializer};
use serde_json::{json, Value};

use super::parts::StreamError;
use crate::model::{MemoryEntry, Scope, Skill};
use crate::replica::ReplicaError;

/// The Phase 1 memory cache, in `$OPENCLAW_HOME`.
pub const MEMORY_JSON: &str = "mesh-memory.json";

/// Longest `description` written into SKILL.md: OpenClaw shows it on one line.
const MAX_DESCRIPTION_CHARS: usize = 160;

/// A skill name reduced to one safe path component, as the reference does (the part after
/// the last separator, every `..` removed, empty becomes `unnamed`), and also without leading
/// dots, so no name can be `.`, a hidden file, or meshd's own manifest.
pub fn safe_name(name: &str) -> String {
    let base = name
        .trim_end_matches(['/', '\\'])
        .rsplit(['/', '\\'])
        .next()
        .unwrap_or_default();
    let base = base.replace("..", "");
    let base = base.trim_start_matches('.');
    if base.is_empty() {
        "unnamed".to_string()
    } else {
        base.to_string()
    }
}

/// `mesh/skills/<name>.md`: the reference adds `.md` unless the name has it already.
pub fn reference_skill_file(safe: &str) -> String {
    if safe.ends_with(".md") {
        safe.to_string()
    } else {
        format!("{safe}.md")
    }
}

/// Skills by safe name. Two names that reduce to the same one would overwrite each other's
/// files; the newer skill keeps the file.
pub fn unique_skills(skills: Vec<Skill>) -> BTreeMap<String, Skill> {
    let mut unique: BTreeMap<String, Skill> = BTreeMap::new();
    for skill in skills {
        let safe = safe_name(&skill.name);
        match unique.get(&safe) {
            Some(kept) if kept.updated_at >= skill.updated_at => {
                tracing::warn!(skill = %skill.name, kept = %kept.name, file = %safe, "two skills share a file name; the newer one is written");
            }
            _ => {
                unique.insert(safe, skill);
            }
        }
    }
    unique
}

#[derive(Serialize)]
struct CacheEntry<'a> {
    value: &'a Value,
    #[serde(rename = "nodeId")]
    node_id: &'a str,
    ts: u64,
}

/// Streams `mesh-memory.json` as the reference writes it (`JSON.stringify(cache, null, 2)`),
/// keyed `"<scope>:<key>"`, from `entries` by label in label order (`parts::Labelled`: one
/// entry per label, read a part at a time), telling `written` each label and value.
pub fn write_reference_memory(
    out: &mut dyn Write,
    entries: impl Iterator<Item = Result<(String, MemoryEntry), ReplicaError>>,
    written: &mut dyn FnMut(&str, &Value),
) -> Result<(), StreamError> {
    let mut serializer = serde_json::Serializer::pretty(out);
    let mut map = serializer.serialize_map(None).map_err(io::Error::from)?;
    for labelled in entries {
        let (label, entry) = labelled?;
        let value = CacheEntry {
            value: &entry.value,
            node_id: entry.named_writer(),
            ts: entry.updated_at.unix_seconds(),
        };
        map.serialize_entry(&label, &value)
            .map_err(io::Error::from)?;
        written(&label, &entry.value);
    }
    SerializeMap::end(map).map_err(io::Error::from)?;
    Ok(())
}

/// Memory scopes in groups whose labels in `mesh-memory.json` sort apart, in label order:
/// every label starts with its scope's label and `:`, and a scope whose prefix extends
/// another's (`node:<id>:` extends this node's `node:`) shares that one's group, so the
/// entries of one group are all that need merging.
pub fn label_groups(scopes: Vec<Scope>, own: &str) -> Vec<Vec<Scope>> {
    let mut prefixed: Vec<(String, Scope)> = scopes
        .into_iter()
        .map(|scope| (format!("{}:", scope.label(own)), scope))
        .collect();
    prefixed.sort();
    let mut groups: Vec<(String, Vec<Scope>)> = Vec::new();
    for (prefix, scope) in prefixed {
        match groups.last_mut() {
            Some((first, group)) if prefix.starts_with(first.as_str()) => group.push(scope),
            _ => groups.push((prefix, vec![scope])),
        }
    }
    groups.into_iter().map(|(_, group)| group).collect()
}

/// An entry's key in `mesh-memory.json`: `"<scope>:<key>"`, this node's scope as `node`.
pub fn memory_label(entry: &MemoryEntry, own: &str) -> String {
    format!("{}:{}", entry.scope.label(own), entry.key)
}

/// An OpenClaw `SKILL.md`: single-line front matter (`name`, `description`, and meshd's
/// source node and update time under `metadata`), then the skill as it is.
pub fn skill_md(skill: &Skill) -> String {
    let metadata = json!({"meshd": {
        "sourceNode": skill.source_node,
        "updatedAt": skill.updated_at.to_rfc3339(),
    }});
    format!(
        "---\nname: {}\ndescription: {}\nmetadata: {metadata}\n---\n{}",
        Value::from(skill.name.as_str()),
        Value::from(description(skill)),
        skill.body()
    )
}

/// The skill's description, else its first line of text, else its name: OpenClaw needs one
/// to decide when the skill applies.
pub fn description(skill: &Skill) -> String {
    let first_line = || {
        skill
            .body()
            .lines()
            .map(|line| line.trim().trim_start_matches('#').trim())
            .find(|line| !line.is_empty())
    };
    let text = Some(skill.description.trim())
        .filter(|d| !d.is_empty())
        .or_else(first_line)
        .unwrap_or(&skill.name);
    let one_line: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    one_line.chars().take(MAX_DESCRIPTION_CHARS).collect()
}

/// The file name of a scope's Markdown page, from its label: `mesh.md`, `node.md`,
/// `node-<id>.md`, `user-<id>.md`. A user id may hold any text (spaces, `/`, `..`), so every
/// character but letters, digits and `. _ @ + -` is written `%XX` (its UTF-8 bytes; `%`
/// itself too): no name holds a separator, and two ids never share a name. A name that would
/// pass `MAX_PAGE_NAME_BYTES` keeps its start and ends with a digest of the whole label.
pub fn page_file(label: &str) -> String {
    let (prefix, id) = label.split_once(':').unwrap_or((label, ""));
    let mut name = prefix.to_string();
    if !id.is_empty() {
        name.push('-');
        for c in id.chars() {
            if c.is_alphanumeric() || "._@+-".contains(c) {
                name.push(c);
            } else {
                let mut bytes = [0; 4];
                for byte in c.encode_utf8(&mut bytes).bytes() {
                    name.push_str(&format!("%{byte:02X}"));
                }
            }
        }
    }
    if name.len() > MAX_PAGE_NAME_BYTES {
        let digest = blake3::hash(label.as_bytes()).to_hex();
        let mut end = MAX_PAGE_NAME_BYTES - 17;
        while !name.is_char_boundary(end) {
            end -= 1;
        }
        name = format!("{}~{}", &name[..end], &digest[..16]);
    }
    format!("{name}.md")
}

/// Longest page name before `.md`: file systems take 255 bytes.
const MAX_PAGE_NAME_BYTES: usize = 200;

/// Streams one scope's memory as Markdown for `memory_search`: a heading per key, the value
/// (text as text, anything else as JSON), and where it came from. Returns how many entries
/// it holds.
pub fn write_memory_md(
    out: &mut dyn Write,
    label: &str,
    entries: impl Iterator<Item = Result<MemoryEntry, ReplicaError>>,
) -> Result<usize, StreamError> {
    write!(
        out,
        "# Mesh memory: {label}\n\n\
         Shared between mesh nodes by meshd, which rewrites this file: change entries with meshd.\n"
    )?;
    let mut count = 0;
    for entry in entries {
        let entry = entry?;
        write!(out, "\n## {}\n\n", entry.key)?;
        match &entry.value {
            Value::String(text) => out.write_all(text.as_bytes())?,
            other => {
                out.write_all(b"```json\n")?;
                serde_json::to_writer_pretty(&mut *out, other).map_err(io::Error::from)?;
                out.write_all(b"\n```")?;
            }
        }
        write!(
            out,
            "\n\nUpdated {}, {}.\n",
            entry.updated_at.to_rfc3339(),
            entry.authorship()
        )?;
        count += 1;
    }
    Ok(count)
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::model::Stamp;

    #[test]
    fn hostile_names_stay_inside_the_directory() {
        let cases = [
            ("triage", "triage"),
            ("../../etc/passwd", "passwd"),
            ("a/b/", "b"),
            ("..", "unnamed"),
            (".", "unnamed"),
            ("...", "unnamed"),
            ("/", "unnamed"),
            ("", "unnamed"),
            ("x..y", "xy"),
            ("..\\..\\win", "win"),
            (".meshd-manifest", "meshd-manifest"),
            ("notes.md", "notes.md"),
        ];
        for (name, safe) in cases {
            assert_eq!(safe_name(name), safe, "{name:?}");
        }
        assert_eq!(reference_skill_file("notes.md"), "notes.md");
        assert_eq!(reference_skill_file("triage"), "triage.md");
    }

    /// A skill from `ceo`, for the cache's tests.
    pub(in crate::cache) fn skill(name: &str, content: &str, description: &str) -> Skill {
        Skill {
            name: name.into(),
            content: content.into(),
            path: None,
            description: description.into(),
            source_node: "ceo".into(),
            updated_at: Stamp::from_unix_seconds(1_739_123_456),
            deleted: false,
        }
    }

    #[test]
    fn page_files_are_safe_names_for_any_user_id() {
        assert_eq!(page_file("mesh"), "mesh.md");
        assert_eq!(page_file("node"), "node.md");
        assert_eq!(page_file("node:ab1"), "node-ab1.md");
        assert_eq!(page_file("user:alice"), "user-alice.md");
        assert_eq!(page_file("user:Ana María"), "user-Ana%20María.md");
        assert_eq!(page_file("user:../etc"), "user-..%2Fetc.md");
        assert_eq!(page_file("user:a%20b"), "user-a%2520b.md");
        assert_ne!(page_file("user:a b"), page_file("user:a%20b"));
        let long = page_file(&format!("user:{}", "/".repeat(128)));
        assert!(long.len() <= 203 && long.ends_with(".md"), "{long}");
        assert_ne!(long, page_file(&format!("user:{}", "/".repeat(127))));
        for id in ["a/b", "..", "x\\y", "李雷", &"é".repeat(128)] {
            let name = page_file(&format!("user:{id}"));
            assert!(
                !name.contains('/') && !name.contains('\\') && name.len() <= 255,
                "{name}"
            );
            assert!(!name.starts_with('.'), "{name}");
        }
    }

    #[test]
    fn skill_md_front_matter() {
        let text = skill_md(&skill("triage", "# Triage rules\n...", ""));
        assert_eq!(
            text,
            "---\nname: \"triage\"\ndescription: \"Triage rules\"\n\
             metadata: {\"meshd\":{\"sourceNode\":\"ceo\",\"updatedAt\":\"2025-02-09T17:50:56Z\"}}\n\
             ---\n# Triage rules\n..."
        );
    }

    #[test]
    fn this_nodes_scope_is_grouped_with_the_node_scopes_its_labels_interleave_with() {
        let scopes = vec![
            Scope::User("b".into()),
            Scope::Node("zz".into()),
            Scope::Mesh,
            Scope::Node("own".into()),
            Scope::User("a-b".into()),
            Scope::User("a".into()),
        ];
        assert_eq!(
            label_groups(scopes, "own"),
            vec![
                vec![Scope::Mesh],
                vec![Scope::Node("own".into()), Scope::Node("zz".into())],
                vec![Scope::User("a-b".into())],
                vec![Scope::User("a".into())],
                vec![Scope::User("b".into())],
            ]
        );
    }

    #[test]
    fn streamed_memory_json_is_what_json_stringify_writes() {
        let entry = |scope: Scope, key: &str, value: Value| MemoryEntry {
            scope,
            key: key.into(),
            value,
            node_id: "n1".into(),
            updated_at: Stamp::from_unix_seconds(1_739_123_456),
            deleted: false,
            author: None,
            claim: None,
        };
        let entries = [
            ("mesh:k", entry(Scope::Mesh, "k", json!({"a": [1, 2]}))),
            ("node:t", entry(Scope::Node("own".into()), "t", json!("x"))),
        ];
        let entries = entries
            .into_iter()
            .map(|(label, entry)| Ok((label.to_string(), entry)));
        let mut out = Vec::new();
        let mut written = Vec::new();
        let mut record =
            |label: &str, value: &Value| written.push((label.to_string(), value.clone()));
        write_reference_memory(&mut out, entries, &mut record).unwrap();
        let expected = "{\n  \"mesh:k\": {\n    \"value\": {\n      \"a\": [\n        1,\n        2\n      ]\n    },\n    \"nodeId\": \"n1\",\n    \"ts\": 1739123456\n  },\n  \"node:t\": {\n    \"value\": \"x\",\n    \"nodeId\": \"n1\",\n    \"ts\": 1739123456\n  }\n}";
        assert_eq!(String::from_utf8(out).unwrap(), expected);
        assert_eq!(written[1], ("node:t".to_string(), json!("x")));
        let mut empty = Vec::new();
        write_reference_memory(&mut empty, std::iter::empty(), &mut |_, _| {}).unwrap();
        assert_eq!(empty, b"{}");
    }

    #[test]
    fn descriptions_are_one_short_line() {
        assert_eq!(
            description(&skill("n", "x", "Say \"hi\"\nnow")),
            "Say \"hi\" now"
        );
        assert_eq!(description(&skill("n", "", "")), "n");
        let long = "d".repeat(500);
        assert_eq!(
            description(&skill("n", &long, "")).len(),
            MAX_DESCRIPTION_CHARS
        );
    }
}
