//! `meshd peers`: pairing with other nodes.

use clap::Subcommand;
use meshd::config::Home;
use meshd::control::{
    access_text, Discovered, PeerStatus, PeersAdd, PeersApprove, PeersDeny, PeersDiscover, PeersLs,
    PeersPending, PeersRm, Pending,
};

use super::{execute, format_time};

#[derive(Debug, Subcommand)]
pub enum PeersCommand {
    /// Trust a node (by the id `meshd id` prints there) and say where to reach it; for a
    /// known peer, change only what is given
    Add {
        /// The peer's node id, e.g. abcdefghijk-lmnopqrstuv-wxyz234567c
        node_id: String,
        /// HOST:PORT of the peer's listen address (required for a new peer); repeat with
        /// --address for more
        address: Option<String>,
        /// More addresses to try, in order
        #[arg(long = "address", value_name = "HOST:PORT")]
        more_addresses: Vec<String>,
        /// A name to refer to the peer by
        #[arg(long)]
        name: Option<String>,
        /// Documents the peer may read from this node [new peer: mesh,skills,user:*,node:*;
        /// known peer: unchanged]
        #[arg(long, value_name = "SCOPES")]
        read: Option<String>,
        /// Documents the peer may change here [new peer: mesh,skills,user:*,node:*; known
        /// peer: unchanged]; this node's own node scope is never writable by peers
        #[arg(long, value_name = "SCOPES")]
        write: Option<String>,
        /// Give a known peer the default access again (--read/--write still apply on top)
        #[arg(long)]
        reset_access: bool,
    },
    /// List peers: id, name, address, connected, last sync, documents behind
    Ls {
        #[arg(long)]
        json: bool,
    },
    /// Forget a peer, by id or name
    Rm { peer: String },
    /// Nodes announcing themselves on the LAN (mDNS): id, name, addresses, whether paired
    /// here. Lists only; pairing stays `meshd invite` / `meshd join`
    Discover {
        /// Listen this long for announcements first
        #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
        wait: std::time::Duration,
        #[arg(long)]
        json: bool,
    },
    /// Joins held for approval ([invites] approve) and node ids that tried to connect and
    /// were refused
    Pending {
        /// Print {"refused": [...], "joins": [...]}
        #[arg(long)]
        json: bool,
        /// Forget them once listed (one that dials again is listed again; a held join is
        /// denied)
        #[arg(long)]
        clear: bool,
    },
    /// Admit a join held for approval: the node becomes a peer with the access its invite
    /// offered, and this node connects to it
    Approve {
        /// The joining node's id, as `meshd peers pending` lists it
        node_id: String,
    },
    /// Refuse a join held for approval (its ticket stays used)
    Deny {
        /// The joining node's id, as `meshd peers pending` lists it
        node_id: String,
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
            reset_access,
        } => {
            let addresses = address.into_iter().chain(more_addresses).collect();
            let add = PeersAdd {
                id: node_id,
                addresses,
                name,
                read,
                write,
                reset_access,
            };
            eprintln!("{}", execute(home, add)?);
        }
        PeersCommand::Ls { json } => {
            let peers = execute(home, PeersLs::default())?;
            if json {
                println!("{}", serde_json::to_string(&peers)?);
            } else {
                print_peers(&peers);
            }
        }
        PeersCommand::Discover { wait, json } => {
            let wait_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX);
            let config = home.load_config()?;
            let browse_on = (config.discovery.mdns)
                .then(|| meshd::config::parse_listen(&config.node.listen))
                .transpose()?;
            let nodes = execute(home, PeersDiscover { wait_ms, browse_on })?;
            if json {
                println!("{}", serde_json::to_string(&nodes)?);
            } else {
                print_discovered(&nodes);
            }
        }
        PeersCommand::Rm { peer } => eprintln!("{}", execute(home, PeersRm { peer })?),
        PeersCommand::Pending { json, clear } => {
            let pending = execute(home, PeersPending { clear })?;
            if json {
                println!("{}", serde_json::to_string(&pending)?);
            } else {
                print_pending(&pending, clear);
            }
        }
        PeersCommand::Approve { node_id } => {
            eprintln!("{}", execute(home, PeersApprove { id: node_id })?)
        }
        PeersCommand::Deny { node_id } => {
            eprintln!("{}", execute(home, PeersDeny { id: node_id })?)
        }
    }
    Ok(())
}

fn print_pending(pending: &Pending, cleared: bool) {
    for join in &pending.joins {
        println!(
            "{}\t{}\t{}\tjoin held for approval since {}, offered: {}",
            join.id,
            join.name.as_deref().unwrap_or("-"),
            join.addresses.join(","),
            format_time(join.at),
            access_text(&join.access)
        );
    }
    for r in &pending.refused {
        println!(
            "{}\t{}\t{} attempts, last {}",
            r.id,
            r.address,
            r.attempts,
            format_time(r.last_seen)
        );
    }
    if cleared {
        eprintln!(
            "forgot {} refused node ids and denied {} held joins",
            pending.refused.len(),
            pending.joins.len()
        );
        return;
    }
    if !pending.joins.is_empty() {
        eprintln!("to admit a join: meshd peers approve <id>; to refuse it: meshd peers deny <id>");
    }
    if !pending.refused.is_empty() {
        eprintln!("to accept a refused node: meshd peers add <id> <host:port>");
    }
}

fn print_peers(peers: &[PeerStatus]) {
    for p in peers {
        super::daemon::print_peer(p);
    }
}

fn print_discovered(nodes: &[Discovered]) {
    for node in nodes {
        println!(
            "{}\t{}\t{}\t{}",
            node.id,
            node.name.as_deref().unwrap_or("-"),
            node.addresses.join(","),
            if node.paired { "paired" } else { "not paired" }
        );
    }
    match nodes.iter().any(|node| !node.paired) {
        true => eprintln!(
            "to pair with one: `meshd invite` here, then `meshd join TICKET` on that node"
        ),
        false if nodes.is_empty() => eprintln!(
            "no other meshd announces itself on this node's network (mDNS); `--wait` listens longer"
        ),
        false => {}
    }
}
