//! How skills sit in the `skills` Automerge document.
//!
//! The root map holds one map object per skill name: `content` (Automerge Text, so concurrent
//! edits of one skill merge character by character), `description`, `path`, `source_node`,
//! `updated_at` and `deleted`. A skill is created once and then edited in place; only two nodes
//! creating the same name concurrently give two objects, and then `resolve` picks one.
//! Scalar fields edited concurrently conflict inside the object: `updated_at` reads as the
//! greatest of them, the others as Automerge's own deterministic pick.

use automerge::transaction::{Transactable, Transaction};
use automerge::{ObjId, ObjType, ReadDoc, ScalarValue, Value, ROOT};

use crate::model::entry::Versioned;
use crate::model::{Skill, Stamp};

/// Every concurrent version of a skill with the object holding it.
pub fn versions(doc: &impl ReadDoc, name: &str) -> Vec<(Skill, ObjId)> {
    let Ok(values) = doc.get_all(ROOT, name) else {
        return Vec::new();
    };
    values
        .into_iter()
        .filter(|(value, _)| matches!(value, Value::Object(ObjType::Map)))
        .filter_map(|(_, obj)| read(doc, name, &obj).map(|skill| (skill, obj)))
        .collect()
}

pub fn names(doc: &impl ReadDoc) -> impl Iterator<Item = String> + '_ {
    doc.keys(ROOT)
}

fn read(doc: &impl ReadDoc, name: &str, obj: &ObjId) -> Option<Skill> {
    let content_obj = match doc.get(obj, "content").ok()?? {
        (Value::Object(ObjType::Text), id) => id,
        _ => return None,
    };
    let updated_at = doc
        .get_all(obj, "updated_at")
        .ok()?
        .iter()
        .filter_map(|(value, _)| value.as_u64())
        .max()?;
    Some(Skill {
        name: name.to_string(),
        content: doc.text(&content_obj).ok()?,
        path: string_field(doc, obj, "path"),
        description: string_field(doc, obj, "description").unwrap_or_default(),
        source_node: string_field(doc, obj, "source_node").unwrap_or_default(),
        updated_at: Stamp(updated_at),
        deleted: doc
            .get(obj, "deleted")
            .ok()
            .flatten()
            .and_then(|(value, _)| value.as_bool())
            .unwrap_or(false),
    })
}

fn string_field(doc: &impl ReadDoc, obj: &ObjId, field: &str) -> Option<String> {
    let (value, _) = doc.get(obj, field).ok()??;
    value.as_str().map(str::to_string)
}

/// Writes `skill` into the winning object of its name, editing the text by diff so that
/// concurrent edits merge, or into a new object when the name is new.
pub fn put(tx: &mut Transaction<'_>, skill: &Skill) -> Result<(), automerge::AutomergeError> {
    let winner = versions(tx, &skill.name)
        .into_iter()
        .max_by(|(a, _), (b, _)| a.version().cmp(&b.version()))
        .map(|(_, obj)| obj);
    let obj = match winner {
        Some(obj) => obj,
        None => tx.put_object(ROOT, skill.name.as_str(), ObjType::Map)?,
    };
    let content = match tx.get(&obj, "content")? {
        Some((Value::Object(ObjType::Text), id)) => id,
        _ => tx.put_object(&obj, "content", ObjType::Text)?,
    };
    tx.update_text(&content, &skill.content)?;
    let path = match &skill.path {
        Some(path) => ScalarValue::Str(path.as_str().into()),
        None => ScalarValue::Null,
    };
    tx.put(&obj, "path", path)?;
    tx.put(&obj, "description", skill.description.as_str())?;
    tx.put(&obj, "source_node", skill.source_node.as_str())?;
    tx.put(&obj, "updated_at", ScalarValue::Uint(skill.updated_at.0))?;
    tx.put(&obj, "deleted", skill.deleted)?;
    Ok(())
}
