//! `meshd store`: the Phase 2 SQLite shared store.

use std::path::PathBuf;

use clap::Subcommand;
use meshd::config::Home;
use meshd::store;

use super::open_replica;

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
    let (mut replica, _) = open_replica(home)?;
    match command {
        StoreCommand::Import { path } => {
            let report = store::import(&path, &mut replica)?;
            for reason in &report.reasons {
                eprintln!("meshd: row skipped: {reason}");
            }
            println!("{}", serde_json::to_string(&report)?);
        }
        StoreCommand::Export { path, prune } => {
            let report = store::export(&replica, &path, prune)?;
            println!("{}", serde_json::to_string(&report)?);
        }
    }
    Ok(())
}
