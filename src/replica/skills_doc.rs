//! How skills sit in the `skills` Automerge document.
//!
//! The root map holds one map object per skill name: `content` (Automerge Text, so concurrent
//! edits of one skill merge character by character) and `meta`, one string scalar holding the
//! rest as JSON (`description`, `path`, `source_node`, `updated_at`, `deleted`). Keeping the
//! metadata in one scalar makes concurrent updates conflict as whole versions, so the same
//! rule as for memory, greatest `(updated_at, source_node)`, decides description, author and
//! whether the skill is deleted, on every replica. A skill is created once and then edited in
//! place; only two nodes creating the same name concurrently give two objects, and then
//! `resolve` picks one. A large rewrite puts a fresh `content` Text in the same object (see
//! `text_edit`); two concurrent rewrites conflict there and Automerge's winner is read.

use automerge::transaction::{Transactable, Transaction};
use automerge::{ObjId, ObjType, ReadDoc, Value, ROOT};
use serde::{Deserialize, Serialize};

use super::text_edit::{self, TextEdit};
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

#[derive(Serialize, Deserialize)]
struct Meta {
    description: String,
    path: Option<String>,
    source_node: String,
    updated_at: Stamp,
    deleted: bool,
}

fn read(doc: &impl ReadDoc, name: &str, obj: &ObjId) -> Option<Skill> {
    let content_obj = match doc.get(obj, "content").ok()?? {
        (Value::Object(ObjType::Text), id) => id,
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
        content: doc.text(&content_obj).ok()?,
        path: meta.path,
        description: meta.description,
        source_node: meta.source_node,
        updated_at: meta.updated_at,
        deleted: meta.deleted,
    })
}

/// Writes `skill` into the winning object of its name, editing the text by the plan of
/// `text_edit` so that concurrent edits merge, or into a new object when the name is new.
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
    let held = tx.text(&content)?;
    match text_edit::plan(&held, &skill.content, tx.text_encoding()) {
        TextEdit::Splices(splices) => {
            for splice in splices {
                let delete = splice.delete as isize;
                tx.splice_text(&content, splice.index, delete, &splice.insert)?;
            }
        }
        TextEdit::Rewrite => {
            let fresh = tx.put_object(&obj, "content", ObjType::Text)?;
            tx.splice_text(&fresh, 0, 0, &skill.content)?;
        }
    }
    let meta = Meta {
        description: skill.description.clone(),
        path: skill.path.clone(),
        source_node: skill.source_node.clone(),
        updated_at: skill.updated_at,
        deleted: skill.deleted,
    };
    let meta = serde_json::to_string(&meta).expect("skill metadata always serializes");
    tx.put(&obj, "meta", meta)?;
    Ok(())
}
