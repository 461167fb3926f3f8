//! Phase 3 over the bridge: the reference's `sync_summary`, `sync_request` and `sync_delta`
//! (its `mesh/sync/protocol.md`), read here with meshd's limits, and answered from the
//! replica (`answer`). A delta's entries are bridge memory and skill messages without their
//! `type`, merged by the bridge's own rule (`bridge::ingest`), trust rules included.

pub mod answer;
pub mod hash;
pub mod labels;
pub mod rounds;
pub mod webhook;

use serde_json::value::RawValue;
use serde_json::Value;

use crate::bridge::message::node_name;
use crate::model::hlc::MAX_UNIX_MILLIS;
use crate::model::Scope;

pub use answer::{answer, summary, Answer, Difference, Why};

/// Rows or entries one list of one message may hold. A summary of more keys than this is a
/// replica beyond what the bridge form is for (meshd nodes sync over QUIC); a longer list is
/// refused whole, so a hostile peer cannot make this node build an answer of any size.
pub const MAX_ROWS: usize = 50_000;

/// A sync message from a peer, read and checked.
#[derive(Debug, Clone)]
pub enum SyncMessage {
    Summary(PeerSummary),
    Request(PeerRequest),
    Delta(PeerDelta),
}

/// What a peer says it holds: memory by scope and key, skills by name, each with its `ts`
/// in whole seconds and its hash when given.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PeerSummary {
    pub node_id: String,
    pub memory: Vec<MemoryRow>,
    pub skills: Vec<SkillRow>,
    /// Rows naming no scope meshd has, with the reason; compared as absent.
    pub skipped: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemoryRow {
    pub scope: Scope,
    pub key: String,
    pub ts: u64,
    pub h: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkillRow {
    pub name: String,
    pub ts: u64,
    pub h: Option<String>,
}

/// The keys and names a peer asks this node for.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PeerRequest {
    pub node_id: String,
    pub request_id: Option<String>,
    pub memory: Vec<(Scope, String)>,
    pub skills: Vec<String>,
}

/// Entries a peer sends, as the JSON text each came in (a signature covers that text).
#[derive(Debug, Clone, Default)]
pub struct PeerDelta {
    pub node_id: String,
    /// Whose scope a bare `node` in an entry is (`nodeScope`, else the sender's).
    pub node_scope: String,
    pub memory: Vec<Box<RawValue>>,
    pub skills: Vec<Box<RawValue>>,
}

impl PeerDelta {
    /// The delta without its entries, once they are merged: what its answer needs.
    pub fn merged(&self) -> PeerDelta {
        PeerDelta {
            node_id: self.node_id.clone(),
            node_scope: self.node_scope.clone(),
            ..PeerDelta::default()
        }
    }
}

/// Why a sync message is refused whole; nothing it carries is merged or answered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("{kind} without a valid 'nodeId' (the sending node's name)")]
    NodeId { kind: &'static str },
    #[error("{kind}: '{field}' must be a list")]
    NotAList {
        kind: &'static str,
        field: &'static str,
    },
    #[error("{kind} lists {count} {field}: at most {MAX_ROWS} in one message; send it in parts")]
    TooMany {
        kind: &'static str,
        field: &'static str,
        count: usize,
    },
    #[error("{kind}: {field} row {row}: {reason}")]
    Row {
        kind: &'static str,
        field: &'static str,
        row: usize,
        reason: &'static str,
    },
}

/// Whether `value` is a sync message by its `type`.
pub fn is_sync(value: &Value) -> bool {
    matches!(
        value.get("type").and_then(Value::as_str),
        Some("sync_summary" | "sync_request" | "sync_delta")
    )
}

/// Reads the sync message `value`, whose text is `text`.
pub fn read(text: &str, value: &Value) -> Result<SyncMessage, Refused> {
    match value.get("type").and_then(Value::as_str) {
        Some("sync_summary") => read_summary(value).map(SyncMessage::Summary),
        Some("sync_request") => read_request(value).map(SyncMessage::Request),
        _ => read_delta(text, value).map(SyncMessage::Delta),
    }
}

/// The sender, and whose scope a bare `node` names in its rows.
fn sender(value: &Value, kind: &'static str) -> Result<(String, String), Refused> {
    let node_id = value
        .get("nodeId")
        .and_then(Value::as_str)
        .and_then(node_name)
        .ok_or(Refused::NodeId { kind })?;
    let node_scope = value
        .get("nodeScope")
        .and_then(Value::as_str)
        .and_then(node_name)
        .unwrap_or_else(|| node_id.clone());
    Ok((node_id, node_scope))
}

/// The list `field`, empty when absent (as the reference reads `summary.memory || []`).
fn list<'a>(
    value: &'a Value,
    kind: &'static str,
    field: &'static str,
) -> Result<&'a [Value], Refused> {
    let rows = match value.get(field) {
        None | Some(Value::Null) => return Ok(&[]),
        Some(Value::Array(rows)) => rows,
        Some(_) => return Err(Refused::NotAList { kind, field }),
    };
    if rows.len() > MAX_ROWS {
        return Err(Refused::TooMany {
            kind,
            field,
            count: rows.len(),
        });
    }
    Ok(rows)
}

fn read_summary(value: &Value) -> Result<PeerSummary, Refused> {
    const KIND: &str = "sync_summary";
    let (node_id, node_scope) = sender(value, KIND)?;
    let mut summary = PeerSummary {
        node_id,
        ..PeerSummary::default()
    };
    for (index, row) in list(value, KIND, "memory")?.iter().enumerate() {
        let refused = |reason| Refused::Row {
            kind: KIND,
            field: "memory",
            row: index + 1,
            reason,
        };
        let scope = text(row, "scope").ok_or(refused("no 'scope' text"))?;
        let key = text(row, "key").ok_or(refused("no 'key' text"))?;
        let ts = seconds(row.get("ts")).ok_or(refused(TS_RULE))?;
        let h = hash(row).map_err(refused)?;
        match labels::read(scope, key, &node_scope) {
            Some((scope, key)) => summary.memory.push(MemoryRow { scope, key, ts, h }),
            None => summary.skipped.push(format!(
                "memory row {}: no scope meshd has in '{scope}:{key}'",
                index + 1
            )),
        }
    }
    for (index, row) in list(value, KIND, "skills")?.iter().enumerate() {
        let refused = |reason| Refused::Row {
            kind: KIND,
            field: "skills",
            row: index + 1,
            reason,
        };
        let name = text(row, "name").ok_or(refused("no 'name' text"))?;
        // The reference reads a missing skill `ts` as 0.
        let ts = match row.get("ts") {
            None | Some(Value::Null) => Some(0),
            given => seconds(given),
        }
        .ok_or(refused(TS_RULE))?;
        let h = hash(row).map_err(refused)?;
        summary.skills.push(SkillRow {
            name: name.to_string(),
            ts,
            h,
        });
    }
    Ok(summary)
}

fn read_request(value: &Value) -> Result<PeerRequest, Refused> {
    const KIND: &str = "sync_request";
    let (node_id, node_scope) = sender(value, KIND)?;
    let mut request = PeerRequest {
        node_id,
        request_id: text(value, "requestId").map(str::to_string),
        ..PeerRequest::default()
    };
    for (index, pair) in list(value, KIND, "memory")?.iter().enumerate() {
        let refused = |reason| Refused::Row {
            kind: KIND,
            field: "memory",
            row: index + 1,
            reason,
        };
        let [scope, key] = pair.as_array().map(Vec::as_slice).unwrap_or_default() else {
            return Err(refused("not a [scope, key] pair"));
        };
        let (Some(scope), Some(key)) = (scope.as_str(), key.as_str()) else {
            return Err(refused("not a [scope, key] pair of texts"));
        };
        // A key this node cannot have is simply not sent.
        if let Some(wanted) = labels::read(scope, key, &node_scope) {
            request.memory.push(wanted);
        }
    }
    for (index, name) in list(value, KIND, "skills")?.iter().enumerate() {
        let name = name.as_str().ok_or(Refused::Row {
            kind: KIND,
            field: "skills",
            row: index + 1,
            reason: "not a skill name",
        })?;
        request.skills.push(name.to_string());
    }
    Ok(request)
}

fn read_delta(text: &str, value: &Value) -> Result<PeerDelta, Refused> {
    const KIND: &str = "sync_delta";
    let (node_id, node_scope) = sender(value, KIND)?;
    // Checked on the value first, so the raw lists below are known to be lists of bounded
    // length.
    list(value, KIND, "memory")?;
    list(value, KIND, "skills")?;
    #[derive(serde::Deserialize)]
    struct Lists {
        #[serde(default)]
        memory: Option<Vec<Box<RawValue>>>,
        #[serde(default)]
        skills: Option<Vec<Box<RawValue>>>,
    }
    let lists: Lists = serde_json::from_str(text).map_err(|_| Refused::NotAList {
        kind: KIND,
        field: "memory",
    })?;
    Ok(PeerDelta {
        node_id,
        node_scope,
        memory: lists.memory.unwrap_or_default(),
        skills: lists.skills.unwrap_or_default(),
    })
}

/// A delta's entry as the bridge message it stands for: its text with `"type"` (`memory` or
/// `skill`) put first, so a signature made over the message still verifies. A bare `node`
/// scope is the scope of the node the delta names (`node_scope`); when the entry names
/// another writer, the scope is written out in full (the entry is then that writer's claim
/// on `node_scope`'s scope, refused or kept as any bridge message's would be).
pub fn entry_message(kind: &str, entry: &str, node_scope: &str) -> Result<(String, Value), String> {
    let not_entry =
        || format!("not a {kind} entry (an object with the fields of a {kind} message)");
    let inner = entry.strip_prefix('{').ok_or_else(not_entry)?;
    let text = if inner.trim_start().starts_with('}') {
        format!("{{\"type\":\"{kind}\"}}")
    } else {
        format!("{{\"type\":\"{kind}\",{inner}")
    };
    let mut value: Value = serde_json::from_str(&text).map_err(|_| not_entry())?;
    if value.get("type").and_then(Value::as_str) != Some(kind) {
        return Err(not_entry());
    }
    let bare_node = value.get("scope").and_then(Value::as_str) == Some("node");
    let writer = value
        .get("nodeId")
        .and_then(Value::as_str)
        .and_then(node_name);
    if bare_node && writer.as_deref() != Some(node_scope) {
        value["scope"] = Value::from(format!("node:{node_scope}"));
        return Ok((value.to_string(), value));
    }
    Ok((text, value))
}

const TS_RULE: &str = "'ts' must be Unix seconds between 0 and the year 10889";

/// Hashes are 16 hex digits in the reference; anything up to 64 characters is kept, to be
/// compared as given.
fn hash(row: &Value) -> Result<Option<String>, &'static str> {
    match row.get("h") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(h)) if h.len() <= 64 => Ok(Some(h.clone())),
        Some(_) => Err("'h' must be a hash text of at most 64 characters"),
    }
}

fn text<'a>(value: &'a Value, field: &str) -> Option<&'a str> {
    value.get(field).and_then(Value::as_str)
}

/// A `ts` in whole seconds (a fraction is dropped, as meshd's own `ts` are floored).
fn seconds(ts: Option<&Value>) -> Option<u64> {
    ts?.as_f64()
        .filter(|seconds| seconds.is_finite() && *seconds >= 0.0)
        .filter(|seconds| seconds * 1000.0 <= MAX_UNIX_MILLIS as f64)
        .map(|seconds| seconds.floor() as u64)
}

/// Whether the reference would store a skill of this name under the same name: it writes
/// `<name>.md` after taking the part after the last `/` and dropping every `..`, and lists
/// files without their `.md` or `.txt`. Other names would come back under another name, so
/// they are left out of what meshd offers a reference node.
pub fn travels(name: &str) -> bool {
    !name.is_empty()
        && !name.contains('/')
        && !name.contains("..")
        && !name.ends_with(".md")
        && !name.ends_with(".txt")
}

#[cfg(test)]
mod tests;
