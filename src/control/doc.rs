//! `meshd doc`: the Automerge documents themselves.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{Command, CommandError, Context, Effects, WHOLE_STORE_PATIENCE};
use crate::model::DocId;

/// Writes one document in Automerge's standard format to a file.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DocExport {
    /// A memory scope, one of its buckets (`mesh::0a`), or `skills`.
    pub scope: String,
    /// Absolute: the daemon may run in another directory.
    pub out: PathBuf,
}

impl Command for DocExport {
    /// What was written, for the operator.
    type Reply = String;
    const EFFECTS: Effects = Effects::NONE;

    fn patience(&self) -> Duration {
        WHOLE_STORE_PATIENCE
    }

    fn execute(self, node: &Context) -> Result<String, CommandError> {
        let doc = document(node, &self.scope)?;
        let bytes = node
            .replica
            .with(|replica| replica.export(&doc))?
            .ok_or_else(|| {
                CommandError::NotFound(format!("this node has no {doc} document yet"))
            })?;
        std::fs::write(&self.out, &bytes).map_err(|e| {
            CommandError::failed(format!("cannot write {}: {e}", self.out.display()))
        })?;
        Ok(format!(
            "wrote {doc} ({} bytes) to {}",
            bytes.len(),
            self.out.display()
        ))
    }
}

/// Merges a file in Automerge's standard format (`meshd doc export`, another Automerge tool)
/// into one of this node's documents. A merge is a union: nothing held is lost.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DocImport {
    /// A memory scope, one of its buckets (`mesh::0a`), or `skills`.
    pub scope: String,
    /// Absolute: the daemon may run in another directory.
    pub file: PathBuf,
}

impl Command for DocImport {
    /// What was merged, for the operator.
    type Reply = String;
    const EFFECTS: Effects = Effects::DATA;

    fn patience(&self) -> Duration {
        WHOLE_STORE_PATIENCE
    }

    fn execute(self, node: &Context) -> Result<String, CommandError> {
        let doc = document(node, &self.scope)?;
        let saved = std::fs::read(&self.file).map_err(|e| {
            CommandError::failed(format!("cannot read {}: {e}", self.file.display()))
        })?;
        let added = node
            .replica
            .with(|replica| super::backup::merge_vetted(replica, &doc, &saved, Vec::new()))
            .map_err(|e| {
                CommandError::failed(format!(
                    "{} was not merged into {doc}: {e}",
                    self.file.display()
                ))
            })?;
        Ok(format!(
            "merged {} new changes from {} into {doc}",
            added.len(),
            self.file.display()
        ))
    }
}

/// `skills`, a scope (its base document), or one of a scope's buckets (`mesh::0a`).
fn document(node: &Context, text: &str) -> Result<DocId, CommandError> {
    if text == "skills" {
        return Ok(DocId::Skills);
    }
    match text.rsplit_once("::") {
        Some((scope, bucket)) => {
            let name = format!("{}::{bucket}", node.scope(scope)?);
            DocId::from_name(&name).map_err(|_| {
                CommandError::failed(format!(
                    "{text} is not a document: a bucket is <scope>::<two lowercase hex digits>, 00 to ff"
                ))
            })
        }
        None => Ok(DocId::Memory(node.scope(text)?)),
    }
}
