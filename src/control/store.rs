//! `meshd store`: the Phase 2 SQLite shared store.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{remote, Command, CommandError, Context, Effects, WHOLE_STORE_PATIENCE};
use crate::store::{self, ExportReport, ImportReport};

/// Imports the rows of a reference store (last writer wins on `updated_at`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoreImport {
    /// Absolute: the daemon may run in another directory.
    pub path: PathBuf,
}

/// What an import did.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Imported(#[serde(with = "remote::ImportReport")] pub ImportReport);

impl Command for StoreImport {
    type Reply = Imported;
    const EFFECTS: Effects = Effects::DATA;

    fn patience(&self) -> Duration {
        WHOLE_STORE_PATIENCE
    }

    fn execute(self, node: &Context) -> Result<Imported, CommandError> {
        store::import(&self.path, &node.replica)
            .map(Imported)
            .map_err(CommandError::failed)
    }
}

/// Writes the replica's rows into a reference store (the schema is created if absent).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoreExport {
    /// Absolute: the daemon may run in another directory.
    pub path: PathBuf,
    /// Also delete rows the replica no longer has.
    pub prune: bool,
}

/// What an export did.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Exported(#[serde(with = "remote::ExportReport")] pub ExportReport);

impl Command for StoreExport {
    type Reply = Exported;
    const EFFECTS: Effects = Effects::NONE;

    fn patience(&self) -> Duration {
        WHOLE_STORE_PATIENCE
    }

    fn execute(self, node: &Context) -> Result<Exported, CommandError> {
        node.replica
            .with(|replica| store::export(replica, &self.path, self.prune))
            .map(Exported)
            .map_err(CommandError::failed)
    }
}
