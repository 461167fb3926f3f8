//! How skills sit in the `skills` Automerge document.
//!
//! The root map holds one map object per skill name: `content` and `meta`, one string scalar
//! holding the
//! rest as JSON (`description`, `path`, `source_node`, `updated_at`, `deleted`). Keeping the
//! metadata in one scalar makes concurrent updates conflict as whole versions, so the same
//! rule as for memory, greatest `(updated_at, source_node)`, decides description, author and
//! whether the skill is deleted, on every replica. A skill is created once and then edited in
//! place; only nodes creating the same name concurrently give several objects, and then
//! `resolve` picks one version until the next write, made into each object, settles them.
//!
//! `content` is Automerge Text while the skill is shorter than `WHOLE_VALUE_MIN_BYTES`, so
//! concurrent edits of one skill merge character by character; a large rewrite puts a fresh
//! Text in the same object (see `text_edit`). A longer skill is one string scalar instead:
//! Automerge 0.12 spends about 2 µs per character inserted into Text (on the writer and again
//! on every peer that applies the change), so writing 1 MiB as Text took 2.2 s here and about
//! as long on each peer, while a scalar of the same size takes about 10 ms. Concurrent edits
//! of a skill that long then conflict as whole texts, like concurrent rewrites of a shorter
//! one: Automerge's winner is read everywhere.

use automerge::transaction::{Transactable, Transaction};
use automerge::{ObjId, ObjType, ReadDoc, Value, ROOT};
use serde::{Deserialize, Serialize};

use super::text_edit::{self, TextEdit};
use crate::model::{Skill, Stamp};

/// Skill texts at least this long (bytes) are stored as one string scalar, not as Text. At
/// this size a rewrite as Text costs about 0.3 s; small skills, the common case, merge.
pub const WHOLE_VALUE_MIN_BYTES: usize = 256 * 1024;

/// Every concurrent version of a skill with the object holding it. Objects holding the same
/// version (one write made it in each: `put`) count once, the first in Automerge's order,
/// which every replica shares.
pub fn versions(doc: &impl ReadDoc, name: &str) -> Vec<(Skill, ObjId)> {
    let mut found: Vec<(Skill, ObjId)> = Vec::new();
    for obj in maps(doc, name) {
        let Some(skill) = read(doc, name, &obj) else {
            continue;
        };
        let same = |(held, _): &(Skill, ObjId)| {
            (held.updated_at, &held.source_node) == (skill.updated_at, &skill.source_node)
        };
        if !found.iter().any(same) {
            found.push((skill, obj));
        }
    }
    found
}

/// The map objects under the skill's name: one, or several when nodes created the name
/// concurrently.
fn maps(doc: &impl ReadDoc, name: &str) -> Vec<ObjId> {
    doc.get_all(ROOT, name)
        .unwrap_or_default()
        .into_iter()
        .filter(|(value, _)| matches!(value, Value::Object(ObjType::Map)))
        .map(|(_, obj)| obj)
        .collect()
}

pub fn names(doc: &impl ReadDoc) -> impl Iterator<Item = String> + '_ {
    doc.keys(ROOT)
}

/// The ids (as text) of every object holding a version of the skill: each version's map and
/// each of its concurrent `content` Texts.
pub fn objects<'a>(doc: &'a impl ReadDoc, name: &str) -> impl Iterator<Item = String> + 'a {
    maps(doc, name).into_iter().flat_map(move |map| {
        let texts = doc.get_all(&map, "content").unwrap_or_default();
        std::iter::once(map.to_string()).chain(
            texts
                .into_iter()
                .filter(|(value, _)| matches!(value, Value::Object(_)))
                .map(|(_, obj)| obj.to_string()),
        )
    })
}

#[derive(Serialize, Deserialize)]
struct Meta {
    description: String,
    path: Option<String>,
    source_node: String,
    updated_at: Stamp,
    deleted: bool,
}

fn read(doc: &impl ReadDoc, name: &str, obj: &ObjId) -> Option<Skill> {
    let content = match doc.get(obj, "content").ok()?? {
        (Value::Object(ObjType::Text), id) => doc.text(&id).ok()?,
        (Value::Scalar(scalar), _) => scalar.as_str()?.to_string(),
        _ => return None,
    };
    let meta = doc
        .get_all(obj, "meta")
        .ok()?
        .iter()
        .filter_map(|(value, _)| serde_json::from_str::<Meta>(value.as_str()?).ok())
        .max_by(|a, b| (a.updated_at, &a.source_node).cmp(&(b.updated_at, &b.source_node)))?;
    Some(Skill {
        name: name.to_string(),
        content,
        path: meta.path,
        description: meta.description,
        source_node: meta.source_node,
        updated_at: meta.updated_at,
        deleted: meta.deleted,
    })
}

/// Writes `skill` into the object of its name, or into a new object when the name is new:
/// as one scalar when it is long, else editing the Text by the plan of `text_edit` so that
/// concurrent edits merge. Where nodes created the name concurrently (several objects), the
/// write goes into each of them, so they hold one version and the conflict is settled, as a
/// memory write settles concurrent versions. It never replaces them with a new object: an
/// edit another node made meanwhile in one of them would then be in an object no longer
/// under the name, and lost even when its version is the newest.
pub fn put(tx: &mut Transaction<'_>, skill: &Skill) -> Result<(), automerge::AutomergeError> {
    let mut objects = maps(tx, &skill.name);
    if objects.is_empty() {
        objects.push(tx.put_object(ROOT, skill.name.as_str(), ObjType::Map)?);
    }
    let meta = Meta {
        description: skill.description.clone(),
        path: skill.path.clone(),
        source_node: skill.source_node.clone(),
        updated_at: skill.updated_at,
        deleted: skill.deleted,
    };
    let meta = serde_json::to_string(&meta).expect("skill metadata always serializes");
    for obj in &objects {
        put_content(tx, obj, &skill.content)?;
        tx.put(obj, "meta", meta.as_str())?;
    }
    Ok(())
}

fn put_content(
    tx: &mut Transaction<'_>,
    obj: &ObjId,
    content: &str,
) -> Result<(), automerge::AutomergeError> {
    match tx.get(obj, "content")? {
        // A metadata update or delete of a long skill: no second copy of the same text.
        Some((Value::Scalar(held), _)) if held.as_str() == Some(content) => return Ok(()),
        _ if content.len() >= WHOLE_VALUE_MIN_BYTES => return tx.put(obj, "content", content),
        Some((Value::Object(ObjType::Text), text)) => {
            let held = tx.text(&text)?;
            let plan = text_edit::plan(&held, content, tx.text_encoding());
            if let TextEdit::Splices(splices) = plan {
                for splice in splices {
                    let delete = splice.delete as isize;
                    tx.splice_text(&text, splice.index, delete, &splice.insert)?;
                }
                return Ok(());
            }
        }
        _ => {}
    }
    let fresh = tx.put_object(obj, "content", ObjType::Text)?;
    tx.splice_text(&fresh, 0, 0, content)
}
