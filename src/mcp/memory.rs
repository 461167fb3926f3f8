//! The memory tools: `memory_get`, `memory_put`, `memory_delete`, `memory_list`,
//! `memory_history`, each one `control::mem` command.

use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{json, Value};

use super::tools::{message, time, Kind, Tool};
use crate::control::{MemGet, MemLs, MemPut, MemRm, Versions};
use crate::model::MemoryEntry;

const SCOPE: &str = "Where the entry lives. `mesh`: shared by every node of the \
    mesh. `user:<id>`: about one user, shared by the nodes that serve that user (id: 1 to 128 \
    bytes of any text without control characters or `:`, e.g. `user:alice`). `node`: this node's own scope, which \
    peers may read but only this node writes. `node:<id>` names a node's scope by its id.";

const KEY: &str = "The entry's key: 1 to 512 bytes, no control characters, e.g. \
    `user.preferences` or `project.deadline`.";

const VALUE: &str = "The value: any JSON (object, array, string, number, boolean), at \
    most 1 MiB as compact JSON. It is stored as given: a string stays a string. It must not \
    contain credentials (API keys, tokens, private keys, passwords); such values are refused.";

const LIST_SCOPE: &str = "Only this scope (`mesh`, `user:<id>`, `node` or `node:<id>`); every \
    scope when absent.";

/// A scope and a key.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct Entry {
    #[schemars(description = SCOPE)]
    scope: String,
    #[schemars(description = KEY)]
    key: String,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct Put {
    #[schemars(description = SCOPE)]
    scope: String,
    #[schemars(description = KEY)]
    key: String,
    #[schemars(description = VALUE)]
    value: Value,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct List {
    #[schemars(description = LIST_SCOPE)]
    #[serde(default)]
    scope: Option<String>,
}

pub(super) fn tools() -> Result<Vec<Tool>, String> {
    Ok(vec![
        Tool::new(
            "memory_get",
            "Read a shared memory entry: its JSON value, which node wrote it and when. \
             Refused with a message when the key is absent. `conflicts` counts concurrent \
             versions that lost (memory_history shows them).",
            Kind::Reads,
            |a: Entry| MemGet {
                scope: a.scope,
                key: a.key,
            },
            |versions: Versions| {
                let mut shown = entry(&versions.winner);
                shown["conflicts"] = json!(versions.conflicts.len());
                shown
            },
        )?,
        Tool::new(
            "memory_put",
            "Write a JSON value under a scope and key, replacing the current value. The write \
             syncs to every node of the mesh that may read the scope. Values over 1 MiB and \
             values that look like secrets (API keys, tokens, private keys, passwords) are \
             refused with the reason; secrets must stay on this node.",
            Kind::Writes,
            |a: Put| MemPut {
                scope: a.scope,
                key: a.key,
                value: a.value,
            },
            |stored: MemoryEntry| entry(&stored),
        )?,
        Tool::new(
            "memory_delete",
            "Delete a shared memory entry (a tombstone that syncs to the mesh like a write). \
             Refused with a message when the key is absent.",
            Kind::Deletes,
            |a: Entry| MemRm {
                scope: a.scope,
                key: a.key,
            },
            message,
        )?,
        Tool::new(
            "memory_list",
            "List the live shared memory entries with their values, of one scope or of all.",
            Kind::Reads,
            |a: List| MemLs { scope: a.scope },
            |entries: Vec<MemoryEntry>| json!({ "entries": entries.iter().map(entry).collect::<Vec<_>>() }),
        )?,
        Tool::new(
            "memory_history",
            "The versions of a memory entry: the current one and the concurrent versions that \
             lost to it (written on different nodes at the same time; the newest wins on \
             every node), each with its verified author. Not the earlier values a later \
             write replaced: `meshd mem history` lists those.",
            Kind::Reads,
            |a: Entry| MemGet {
                scope: a.scope,
                key: a.key,
            },
            |versions: Versions| {
                json!({
                    "current": entry(&versions.winner),
                    "conflicts": versions.conflicts.iter().map(entry).collect::<Vec<_>>(),
                })
            },
        )?,
    ])
}

/// One version as the agent reads it; `deleted` only on a tombstone among the conflicts.
fn entry(version: &MemoryEntry) -> Value {
    let mut shown = json!({
        "scope": version.scope.to_string(),
        "key": version.key,
        "value": version.value,
        "node_id": version.named_writer(),
        "updated_at": time(version.updated_at),
    });
    if let Value::Object(fields) = &mut shown {
        fields.extend(version.authorship().json_fields());
    }
    if version.deleted {
        shown["deleted"] = json!(true);
    }
    shown
}
