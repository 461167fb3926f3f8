//! `meshd doc`: the Automerge documents themselves.

use std::path::PathBuf;

use clap::Subcommand;
use meshd::config::Home;
use meshd::control::DocExport;

use super::execute;

#[derive(Debug, Subcommand)]
pub enum DocCommand {
    /// Save a document in the standard Automerge binary format
    Export {
        /// mesh, node, node:<id>, user:<id>, or skills
        scope: String,
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
}

pub fn run(home: &Home, command: DocCommand) -> anyhow::Result<()> {
    match command {
        DocCommand::Export { scope, out } => {
            // The daemon may run in another directory: give it an absolute path.
            let out = std::path::absolute(&out)?;
            eprintln!("{}", execute(home, DocExport { scope, out })?);
        }
    }
    Ok(())
}
