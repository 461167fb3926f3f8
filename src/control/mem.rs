//! `meshd mem`: shared memory entries.

use serde::{Deserialize, Serialize};

use super::{Command, CommandError, Context, Effects};
use crate::model::{MemoryEntry, Scope};
use crate::replica::Written;

/// Writes a value under a scope and key.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MemPut {
    pub scope: String,
    pub key: String,
    pub value: serde_json::Value,
}

impl Command for MemPut {
    /// The version stored.
    type Reply = MemoryEntry;
    const EFFECTS: Effects = Effects::DATA;

    fn execute(self, node: &Context) -> Result<MemoryEntry, CommandError> {
        let scope = node.writable_scope(&self.scope)?;
        node.replica
            .grouped(move |batch| batch.put_memory(&scope, &self.key, self.value.clone()))
            .map_err(CommandError::failed)
    }
}

/// Reads the live version of a key and the concurrent versions that lost to it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MemGet {
    pub scope: String,
    pub key: String,
}

/// A key's winning version and the conflicting versions that lost.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Versions {
    pub winner: MemoryEntry,
    pub conflicts: Vec<MemoryEntry>,
}

impl Command for MemGet {
    type Reply = Versions;
    const EFFECTS: Effects = Effects::NONE;

    fn execute(self, node: &Context) -> Result<Versions, CommandError> {
        let scope = node.scope(&self.scope)?;
        match node
            .replica
            .with(|replica| replica.memory_versions(&scope, &self.key))?
        {
            Some((winner, conflicts)) if !winner.deleted => Ok(Versions { winner, conflicts }),
            _ => Err(no_entry(&scope, &self.key)),
        }
    }
}

/// Every version ever written to a key, oldest first: an audit of who wrote what.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MemHistory {
    pub scope: String,
    pub key: String,
}

impl Command for MemHistory {
    type Reply = Vec<Written>;
    const EFFECTS: Effects = Effects::NONE;

    fn execute(self, node: &Context) -> Result<Vec<Written>, CommandError> {
        let scope = node.scope(&self.scope)?;
        match node
            .replica
            .with(|replica| replica.memory_history(&scope, &self.key))?
        {
            None => Err(CommandError::NotFound(format!(
                "this node holds nothing in scope {scope}: `meshd mem ls` lists what it has"
            ))),
            Some(versions) if versions.is_empty() => Err(no_entry(&scope, &self.key)),
            Some(versions) => Ok(versions),
        }
    }
}

/// Lists live entries, of one scope or all.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct MemLs {
    pub scope: Option<String>,
}

impl Command for MemLs {
    type Reply = Vec<MemoryEntry>;
    const EFFECTS: Effects = Effects::NONE;

    fn execute(self, node: &Context) -> Result<Vec<MemoryEntry>, CommandError> {
        let scope = self.scope.map(|s| node.scope(&s)).transpose()?;
        Ok(node
            .replica
            .with(|replica| replica.list_memory(scope.as_ref()))?)
    }
}

/// Deletes an entry: a tombstone that syncs like a write.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MemRm {
    pub scope: String,
    pub key: String,
}

impl Command for MemRm {
    /// What was done, for the operator.
    type Reply = String;
    const EFFECTS: Effects = Effects::DATA;

    fn execute(self, node: &Context) -> Result<String, CommandError> {
        let scope = node.writable_scope(&self.scope)?;
        let (deleting, key) = (scope.clone(), self.key.clone());
        match node
            .replica
            .grouped(move |batch| batch.delete_memory(&deleting, &key))
        {
            Ok(true) => Ok(format!("deleted {scope}:{}", self.key)),
            Ok(false) => Err(no_entry(&scope, &self.key)),
            Err(e) => Err(CommandError::failed(e)),
        }
    }
}

fn no_entry(scope: &Scope, key: &str) -> CommandError {
    CommandError::NotFound(format!("no entry {key} in scope {scope}"))
}
