//! `meshd doc`: the Automerge documents themselves.

use std::path::PathBuf;

use anyhow::Context;
use clap::Subcommand;
use meshd::config::Home;
use meshd::model::DocId;

use super::{Node, NotFound};

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
    let node = Node::open(home)?;
    match command {
        DocCommand::Export { scope, out } => {
            let doc = if scope == "skills" {
                DocId::Skills
            } else {
                DocId::Memory(node.scope(&scope)?)
            };
            let bytes = node
                .replica
                .export(&doc)
                .ok_or_else(|| NotFound(format!("this node has no {doc} document yet")))?;
            std::fs::write(&out, &bytes)
                .with_context(|| format!("cannot write {}", out.display()))?;
            eprintln!("wrote {doc} ({} bytes) to {}", bytes.len(), out.display());
        }
    }
    Ok(())
}
