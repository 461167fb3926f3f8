//! `meshd bridge`: Phase 1 bridge messages in and out.

use std::path::PathBuf;

use anyhow::Context;
use clap::Subcommand;
use meshd::bridge::{self, Selection, Unwrap};
use meshd::config::Home;
use meshd::model::Scope;
use meshd::replica::system_clock;

use super::{open_replica, read_stdin};

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
    let (mut replica, _) = open_replica(home)?;
    match command {
        BridgeCommand::Ingest { file, unwrap } => {
            let items = bridge::items(&read_input(&file)?, unwrap);
            let report = bridge::ingest(&mut replica, items, system_clock())?;
            for (position, reason) in &report.reasons {
                eprintln!("meshd: item {position} ignored: {reason}");
            }
            eprintln!("{} changed the replica", report.changed);
            println!("{}", serde_json::to_string(&report.summary)?);
        }
        BridgeCommand::Emit { since, scope } => {
            let selection = match scope.as_deref() {
                None => Selection::Everything,
                Some("skills") => Selection::Skills,
                Some(scope) => Selection::Memory(Scope::parse(scope, replica.node_id())?),
            };
            for line in bridge::emit(&replica, since, &selection) {
                println!("{line}");
            }
        }
        BridgeCommand::Respond { file, unwrap } => {
            let items = bridge::items(&read_input(&file)?, unwrap);
            let requests = items
                .iter()
                .filter_map(|item| item.as_ref().ok())
                .filter_map(|value| match bridge::classify(value) {
                    Ok(bridge::Message::Request(request)) => Some(request),
                    _ => None,
                });
            for request in requests {
                println!(
                    "{}",
                    bridge::respond(&replica, &request, system_clock() / 1000)
                );
            }
        }
    }
    Ok(())
}

fn read_input(file: &str) -> anyhow::Result<String> {
    if file == "-" {
        return read_stdin();
    }
    let path = PathBuf::from(file);
    std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))
}
