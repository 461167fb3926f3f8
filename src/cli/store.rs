//! `meshd store`: the Phase 2 SQLite shared store.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Subcommand;
use meshd::config::Home;
use meshd::control::{StoreExport, StoreImport};

use super::execute;

#[derive(Debug, Subcommand)]
pub enum StoreCommand {
    /// Import mesh_memory and mesh_skills rows (newer updated_at wins); prints a summary
    Import {
        /// A SQLite file with the reference schema
        path: PathBuf,
    },
    /// Write the replica's entries as rows, creating the file and schema when absent
    Export {
        path: PathBuf,
        /// Also delete rows the replica does not have (for a file only meshd writes)
        #[arg(long)]
        prune: bool,
    },
}

pub fn run(home: &Home, command: StoreCommand) -> anyhow::Result<()> {
    match command {
        StoreCommand::Import { path } => {
            let path = absolute(&path)?;
            let report = execute(home, StoreImport { path })?.0;
            for reason in &report.reasons {
                eprintln!("meshd: row skipped: {reason}");
            }
            for reason in &report.not_applied {
                eprintln!("meshd: row {reason}");
            }
            println!("{}", serde_json::to_string(&report)?);
        }
        StoreCommand::Export { path, prune } => {
            let path = absolute(&path)?;
            let report = execute(home, StoreExport { path, prune })?.0;
            println!("{}", serde_json::to_string(&report)?);
        }
    }
    Ok(())
}

/// The daemon may run in another directory: it gets absolute paths.
fn absolute(path: &Path) -> anyhow::Result<PathBuf> {
    std::path::absolute(path).with_context(|| format!("cannot resolve the path {}", path.display()))
}
