//! `meshd peers`: pairing with other nodes.

use clap::Subcommand;
use meshd::config::Home;
use meshd::control::{PeerStatus, Request, Response};

use super::{execute, format_time, unexpected};

#[derive(Debug, Subcommand)]
pub enum PeersCommand {
    /// Trust a node (by the id `meshd id` prints there) and say where to reach it
    Add {
        /// The peer's node id, e.g. abcdefghijk-lmnopqrstuv-wxyz234567c
        node_id: String,
        /// HOST:PORT of the peer's listen address; repeat with --address for more
        address: String,
        /// More addresses to try, in order
        #[arg(long = "address", value_name = "HOST:PORT")]
        more_addresses: Vec<String>,
        /// A name to refer to the peer by
        #[arg(long)]
        name: Option<String>,
        /// Documents the peer may read from this node [default: mesh,skills,user:*,node:*]
        #[arg(long, value_name = "SCOPES")]
        read: Option<String>,
        /// Documents the peer may change here [default: mesh,skills,user:*,node:*]; this node's own node scope is never writable by peers
        #[arg(long, value_name = "SCOPES")]
        write: Option<String>,
    },
    /// List peers: id, name, address, connected, last sync, documents behind
    Ls {
        #[arg(long)]
        json: bool,
    },
    /// Forget a peer, by id or name
    Rm { peer: String },
    /// Node ids that tried to connect and were refused
    Pending {
        #[arg(long)]
        json: bool,
    },
}

pub fn run(home: &Home, command: PeersCommand) -> anyhow::Result<()> {
    match command {
        PeersCommand::Add {
            node_id,
            address,
            more_addresses,
            name,
            read,
            write,
        } => {
            let addresses = std::iter::once(address).chain(more_addresses).collect();
            let request = Request::PeersAdd {
                id: node_id,
                addresses,
                name,
                read,
                write,
            };
            match execute(home, request)? {
                Response::Done { message } => eprintln!("{message}"),
                other => return Err(unexpected(other)),
            }
        }
        PeersCommand::Ls { json } => match execute(home, Request::PeersLs)? {
            Response::Peers { peers } if json => println!("{}", serde_json::to_string(&peers)?),
            Response::Peers { peers } => print_peers(&peers),
            other => return Err(unexpected(other)),
        },
        PeersCommand::Rm { peer } => match execute(home, Request::PeersRm { peer })? {
            Response::Done { message } => eprintln!("{message}"),
            other => return Err(unexpected(other)),
        },
        PeersCommand::Pending { json } => match execute(home, Request::PeersPending)? {
            Response::Pending { refused } if json => {
                println!("{}", serde_json::to_string(&refused)?)
            }
            Response::Pending { refused } => {
                for r in &refused {
                    println!(
                        "{}\t{}\t{} attempts, last {}",
                        r.id,
                        r.address,
                        r.attempts,
                        format_time(r.last_seen)
                    );
                }
                if !refused.is_empty() {
                    eprintln!("to accept one: meshd peers add <id> <host:port>");
                }
            }
            other => return Err(unexpected(other)),
        },
    }
    Ok(())
}

fn print_peers(peers: &[PeerStatus]) {
    for p in peers {
        let last_sync = p.peer.last_sync.map_or("never".to_string(), format_time);
        let behind = p
            .documents_behind
            .map_or("?".to_string(), |n| n.to_string());
        println!(
            "{}\t{}\t{}\t{}\tlast sync {last_sync}\t{behind} documents behind",
            p.peer.id,
            p.peer.name.as_deref().unwrap_or("-"),
            p.peer.addresses.join(","),
            if p.connected {
                "connected"
            } else {
                "disconnected"
            },
        );
    }
}
