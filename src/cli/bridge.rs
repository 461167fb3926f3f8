//! `meshd bridge`: Phase 1 bridge messages in and out.

use std::fs::File;
use std::io::{BufRead, BufReader, IsTerminal};
use std::path::PathBuf;

use anyhow::Context;
use clap::Subcommand;
use meshd::bridge::stream::{Piece, Pieces, PIECE_BYTES};
use meshd::bridge::{Summary, Unwrap};
use meshd::config::Home;
use meshd::control::{BridgeEmit, BridgeIngest, BridgeRespond};

use super::execute;

#[derive(Debug, Subcommand)]
pub enum BridgeCommand {
    /// Import memory and skill messages; prints {"ingested","memory","skill","ignored","notApplied"}
    Ingest {
        /// One message, a JSON array, a JSON string of either, or JSON Lines (required over
        /// 8 MiB; any size is read in pieces); `-` is stdin
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
        BridgeCommand::Ingest { file, unwrap } => ingest(home, &file, unwrap),
        BridgeCommand::Emit { since, scope } => {
            print_lines(execute(home, BridgeEmit { since, scope })?);
            Ok(())
        }
        BridgeCommand::Respond { file, unwrap } => {
            let mut pieces = open_input(&file)?;
            while let Some(piece) = pieces.next_piece()? {
                if let Piece::Text(payload) = piece {
                    print_lines(execute(home, BridgeRespond { payload, unwrap })?);
                }
            }
            Ok(())
        }
    }
}

/// Ingests the input piece by piece, so any size fits in bounded memory; the counts and
/// the positions of ignored items are those of the whole input.
fn ingest(home: &Home, file: &str, unwrap: Option<Unwrap>) -> anyhow::Result<()> {
    let mut pieces = open_input(file)?;
    let mut total = Summary::default();
    let (mut changed, mut sent) = (0, 0);
    while let Some(piece) = pieces.next_piece()? {
        let items_before = total.ingested + total.ignored;
        match piece {
            Piece::Unreadable(reason) => {
                total.ignored += 1;
                eprintln!("meshd: item {} ignored: {reason}", items_before + 1);
            }
            Piece::Text(payload) => {
                sent += payload.len();
                let report = execute(home, BridgeIngest { payload, unwrap })?;
                for (position, reason) in &report.ignored {
                    eprintln!("meshd: item {} ignored: {reason}", items_before + position);
                }
                for (position, reason) in &report.not_applied {
                    eprintln!("meshd: item {} {reason}", items_before + position);
                }
                add(&mut total, &report.summary);
                changed += report.changed;
                if sent > PIECE_BYTES && std::io::stderr().is_terminal() {
                    eprintln!(
                        "meshd: {} MiB read, {} ingested so far",
                        sent >> 20,
                        total.ingested
                    );
                }
            }
        }
    }
    eprintln!("{changed} changed the replica");
    println!("{}", serde_json::to_string(&total)?);
    Ok(())
}

fn add(total: &mut Summary, piece: &Summary) {
    total.ingested += piece.ingested;
    total.memory += piece.memory;
    total.skill += piece.skill;
    total.ignored += piece.ignored;
    total.not_applied += piece.not_applied;
}

fn print_lines(lines: Vec<String>) {
    for line in lines {
        println!("{line}");
    }
}

fn open_input(file: &str) -> anyhow::Result<Pieces<Box<dyn BufRead>>> {
    let input: Box<dyn BufRead> = if file == "-" {
        Box::new(std::io::stdin().lock())
    } else {
        let path = PathBuf::from(file);
        let opened =
            File::open(&path).with_context(|| format!("cannot read {}", path.display()))?;
        Box::new(BufReader::new(opened))
    };
    Ok(Pieces::new(input)?)
}
