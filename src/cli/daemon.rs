//! `meshd run`, `meshd status` and `meshd sync`.

use clap::Args;
use meshd::config::Home;
use meshd::control::{NodeStatus, Request, Response};

use super::{execute, format_time, unexpected};

#[derive(Debug, Args)]
pub struct StatusArgs {
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
pub struct SyncArgs {
    /// Only this peer (id or name) [default: every connected peer]
    #[arg(long)]
    peer: Option<String>,
}

pub fn run_daemon(home: Home) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Runtime::new()?;
    let openclaw_home = super::openclaw_home_env();
    runtime.block_on(meshd::daemon::run(
        home,
        openclaw_home,
        meshd::daemon::shutdown_signal(),
    ))?;
    Ok(())
}

pub fn status(home: &Home, args: StatusArgs) -> anyhow::Result<()> {
    let status = match execute(home, Request::Status) {
        Ok(Response::Status { status }) => status,
        Ok(other) => return Err(unexpected(other)),
        Err(e) if e.to_string().contains("not running") => offline_status(home)?,
        Err(e) => return Err(e),
    };
    if args.json {
        println!("{}", serde_json::to_string(&status)?);
        return Ok(());
    }
    println!("node {}", status.node_id);
    match &status.listen {
        Some(listen) if status.running => println!("daemon: running, listening on {listen} (UDP)"),
        _ if status.running => println!("daemon: running"),
        _ => println!("daemon: not running (start it with `meshd run`)"),
    }
    println!(
        "{} documents, {} memory entries, {} skills",
        status.documents, status.memory_entries, status.skills
    );
    if status.running {
        println!("{} bytes sent to peers since start", status.bytes_sent);
    }
    for p in &status.peers {
        let last_sync = p.peer.last_sync.map_or("never".to_string(), format_time);
        let behind = p
            .documents_behind
            .map_or(String::new(), |n| format!(", {n} documents behind"));
        let state = if p.connected {
            "connected"
        } else {
            "disconnected"
        };
        println!(
            "peer {} ({}): {state}, last sync {last_sync}{behind}",
            p.peer.label(),
            p.peer.addresses.join(","),
        );
    }
    Ok(())
}

/// What can be said about a node whose daemon is not running: its store's contents.
fn offline_status(home: &Home) -> anyhow::Result<NodeStatus> {
    let id = meshd::net::identity::Identity::load(&home.key_path(), &home.cert_path())?.node_id;
    let (entries, skills, peers) = match (
        execute(home, Request::MemLs { scope: None })?,
        execute(home, Request::SkillLs)?,
        execute(home, Request::PeersLs)?,
    ) {
        (Response::Entries { entries }, Response::Skills { skills }, Response::Peers { peers }) => {
            (entries, skills, peers)
        }
        _ => anyhow::bail!("unexpected answer from the store"),
    };
    let mut documents: Vec<String> = entries.iter().map(|e| e.scope.to_string()).collect();
    documents.dedup();
    Ok(NodeStatus {
        node_id: id.to_string(),
        running: false,
        listen: None,
        bytes_sent: 0,
        documents: documents.len() + usize::from(!skills.is_empty()),
        memory_entries: entries.len(),
        skills: skills.len(),
        peers,
    })
}

pub fn sync(home: &Home, args: SyncArgs) -> anyhow::Result<()> {
    match execute(home, Request::Sync { peer: args.peer })? {
        Response::Done { message } => eprintln!("{message}"),
        other => return Err(unexpected(other)),
    }
    Ok(())
}
