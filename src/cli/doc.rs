//! `meshd doc`: the Automerge documents themselves.

use std::path::PathBuf;

use clap::Subcommand;
use meshd::config::Home;
use meshd::control::{DocExport, DocImport};

use super::execute;

#[derive(Debug, Subcommand)]
pub enum DocCommand {
    /// Save a document in the standard Automerge binary format
    Export {
        /// mesh, node, node:<id>, user:<id>, skills, or a large scope's bucket (<scope>::00 to ::ff)
        scope: String,
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
    /// Merge a file in the standard Automerge binary format into a document
    Import {
        /// mesh, node, node:<id>, user:<id>, skills, or a large scope's bucket (<scope>::00 to ::ff)
        scope: String,
        file: PathBuf,
    },
}

pub fn run(home: &Home, command: DocCommand) -> anyhow::Result<()> {
    match command {
        DocCommand::Export { scope, out } => {
            // The daemon may run in another directory: give it an absolute path.
            let out = std::path::absolute(&out)?;
            eprintln!("{}", execute(home, DocExport { scope, out })?);
        }
        DocCommand::Import { scope, file } => {
            let file = std::path::absolute(&file)?;
            eprintln!("{}", execute(home, DocImport { scope, file })?);
        }
    }
    Ok(())
}
