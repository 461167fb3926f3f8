//! `meshd store`: the Phase 2 SQLite shared store.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Subcommand;
use meshd::config::Home;
use meshd::control::{Request, Response};

use super::{execute, unexpected};

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
    let request = match command {
        StoreCommand::Import { path } => Request::StoreImport {
            path: absolute(&path)?,
        },
        StoreCommand::Export { path, prune } => Request::StoreExport {
            path: absolute(&path)?,
            prune,
        },
    };
    match execute(home, request)? {
        Response::Imported { report } => {
            for reason in &report.reasons {
                eprintln!("meshd: row skipped: {reason}");
            }
            println!("{}", serde_json::to_string(&report)?);
        }
        Response::Exported { report } => println!("{}", serde_json::to_string(&report)?),
        other => return Err(unexpected(other)),
    }
    Ok(())
}

/// The daemon may run in another directory: it gets absolute paths.
fn absolute(path: &Path) -> anyhow::Result<PathBuf> {
    std::path::absolute(path).with_context(|| format!("cannot resolve the path {}", path.display()))
}
