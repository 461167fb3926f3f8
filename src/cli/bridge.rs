//! `meshd bridge`: Phase 1 bridge messages in and out.

use std::fs::File;
use std::io::{BufRead, BufReader, IsTerminal};
use std::path::PathBuf;

use anyhow::Context;
use clap::Subcommand;
use meshd::bridge::stream::{Piece, Pieces, PIECE_BYTES};
use meshd::bridge::sync::webhook::{Credentials, Webhook};
use meshd::bridge::{Summary, Unwrap};
use meshd::config::{BridgePeer, Home};
use meshd::control::{BridgeEmit, BridgeIngest, BridgeRespond, BridgeSyncAnswer};

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
    /// Answer the mesh_request and sync messages read (JSON Lines: mesh_response,
    /// sync_request, sync_delta, sync_summary); a sync_delta's entries are merged
    Respond {
        /// Messages as for `ingest`; `-` is stdin
        #[arg(default_value = "-", value_name = "FILE|-")]
        file: String,
        #[arg(long, value_name = "telegram|discord|generic")]
        unwrap: Option<Unwrap>,
    },
    /// Sync memory and skills with a peer's bridge webhook (the reference's Phase 3 sync):
    /// post this node's sync_summary, then the requests and deltas each answer calls for,
    /// round after round until both summaries match. Progress goes to stderr; prints
    /// {"url","peer","rounds","in_step","changed_here","sent"}
    #[command(
        after_help = "The peer must answer sync messages on POST /bridge?handleRequest=1 \
        (meshd does; the reference's webhook-server.js only ingests, so it needs a sync handler \
        built on mesh/sync/sync.js). Exits 1 when the peer is unreachable, refuses the \
        credentials, does not answer JSON, or when the summaries still differ after the last \
        round."
    )]
    Sync {
        /// The peer's webhook, e.g. http://nas.local:4077/bridge (`/bridge` when the URL has
        /// no path; `handleRequest=1` is added); without it, each `[[bridge.peers]]` of
        /// meshd.toml in turn
        url: Option<String>,
        /// Give up after this many rounds
        #[arg(long, default_value_t = 6, value_name = "N",
              value_parser = clap::value_parser!(u32).range(1..=1000))]
        rounds: u32,
        /// The peer's node id as its messages name it; otherwise learned by a first, empty
        /// sync_request. Its own node scope is what its cache calls `node`
        #[arg(long, value_name = "ID")]
        peer_id: Option<String>,
        /// Bearer token of the peer's webhook (its BRIDGE_AUTH_BEARER)
        #[arg(
            long,
            env = "MESHD_BRIDGE_BEARER",
            hide_env_values = true,
            value_name = "TOKEN"
        )]
        bearer: Option<String>,
        /// Header and secret of the peer's webhook (its BRIDGE_AUTH_HEADER, BRIDGE_AUTH_SECRET)
        #[arg(long, value_name = "NAME:SECRET")]
        auth_header: Option<String>,
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
                    let respond = BridgeRespond {
                        payload: payload.clone(),
                        unwrap,
                    };
                    print_lines(execute(home, respond)?);
                    let answered = execute(home, BridgeSyncAnswer { payload, unwrap })?;
                    for (position, reason) in &answered.ignored {
                        eprintln!("meshd: sync message {position} ignored: {reason}");
                    }
                    print_lines(answered.messages);
                }
            }
            Ok(())
        }
        BridgeCommand::Sync {
            url,
            rounds,
            peer_id,
            bearer,
            auth_header,
        } => {
            let peers = match url {
                Some(url) => vec![BridgePeer {
                    url,
                    node_id: peer_id,
                    bearer,
                    auth_header,
                }],
                None => configured_peers(home)?,
            };
            for peer in peers {
                let header = peer.auth_header.as_deref().map(split_header).transpose()?;
                let credentials = Credentials {
                    bearer: peer.bearer,
                    header,
                };
                let webhook = Webhook::new(&peer.url, credentials)?;
                super::bridge_sync::run(home, &webhook, rounds, peer.node_id)?;
            }
            Ok(())
        }
    }
}

fn configured_peers(home: &Home) -> anyhow::Result<Vec<BridgePeer>> {
    let peers = home.load_config()?.bridge.peers;
    if peers.is_empty() {
        anyhow::bail!(
            "give the peer's webhook URL, or list peers in {} as [[bridge.peers]] url = \"...\"",
            home.config_path().display()
        );
    }
    Ok(peers)
}

fn split_header(given: &str) -> anyhow::Result<(String, String)> {
    match given.split_once(':') {
        Some((name, secret)) if !name.trim().is_empty() => {
            Ok((name.trim().to_string(), secret.trim_start().to_string()))
        }
        _ => {
            anyhow::bail!("--auth-header takes NAME:SECRET (e.g. X-API-Key:s3cret), not '{given}'")
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
