//! `meshd doc`: the Automerge documents themselves.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{Command, CommandError, Context, Effects};
use crate::model::DocId;

/// Writes one document in Automerge's standard format to a file.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DocExport {
    /// A memory scope or `skills`.
    pub scope: String,
    /// Absolute: the daemon may run in another directory.
    pub out: PathBuf,
}

impl Command for DocExport {
    /// What was written, for the operator.
    type Reply = String;
    const EFFECTS: Effects = Effects::NONE;

    fn execute(self, node: &Context) -> Result<String, CommandError> {
        let doc = match self.scope.as_str() {
            "skills" => DocId::Skills,
            scope => DocId::Memory(node.scope(scope)?),
        };
        let bytes = node
            .replica
            .with(|replica| replica.export(&doc))
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
