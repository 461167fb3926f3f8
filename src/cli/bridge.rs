//! `meshd bridge`: Phase 1 bridge messages in and out.

use std::path::PathBuf;

use anyhow::Context;
use clap::Subcommand;
use meshd::bridge::Unwrap;
use meshd::config::Home;
use meshd::control::{BridgeEmit, BridgeIngest, BridgeRespond};

use super::{execute, read_stdin};

#[derive(Debug, Subcommand)]
pub enum BridgeCommand {
    /// Import memory and skill messages; prints {"ingested","memory","skill","ignored"}
    Ingest {
        /// One message, a JSON array, a JSON string of either, or JSON Lines; `-` is stdin
        #[arg(default_value = "-", value_name = "FILE|-")]
        file: String,
        /// Take the messages out of a transport's envelope first
        #[arg(long, value_name = "telegram|discord|generic")]
        unwrap: Option<Unwrap>,
    },
    /// Print memory and skill messages (JSON Lines) to post on the bridge
    Emit {
        /// Only what was updated at or after this time (Unix seconds)
        #[arg(long, value_name = "UNIX_TS")]
        since: Option<u64>,
        /// Only memory of this scope (mesh, node, node:<id>, user:<id>), or `skills`
        #[arg(long, value_name = "S")]
        scope: Option<String>,
    },
    /// Answer the mesh_request messages read (JSON Lines of mesh_response)
    Respond {
        /// Messages as for `ingest`; `-` is stdin
        #[arg(default_value = "-", value_name = "FILE|-")]
        file: String,
        #[arg(long, value_name = "telegram|discord|generic")]
        unwrap: Option<Unwrap>,
    },
}

pub fn run(home: &Home, command: BridgeCommand) -> anyhow::Result<()> {
    // Before reading stdin: a wrong home should not wait for input first.
    home.require_initialised()?;
    match command {
        BridgeCommand::Ingest { file, unwrap } => {
            let payload = read_input(&file)?;
            let report = execute(home, BridgeIngest { payload, unwrap })?;
            for (position, reason) in &report.ignored {
                eprintln!("meshd: item {position} ignored: {reason}");
            }
            eprintln!("{} changed the replica", report.changed);
            println!("{}", serde_json::to_string(&report.summary)?);
        }
        BridgeCommand::Emit { since, scope } => {
            print_lines(execute(home, BridgeEmit { since, scope })?);
        }
        BridgeCommand::Respond { file, unwrap } => {
            let payload = read_input(&file)?;
            print_lines(execute(home, BridgeRespond { payload, unwrap })?);
        }
    }
    Ok(())
}

fn print_lines(lines: Vec<String>) {
    for line in lines {
        println!("{line}");
    }
}

fn read_input(file: &str) -> anyhow::Result<String> {
    if file == "-" {
        return read_stdin();
    }
    let path = PathBuf::from(file);
    std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))
}
