//! `meshd run`, `meshd status` and `meshd sync`.

use anyhow::Context;
use clap::Args;
use meshd::config::Home;
use meshd::control::{PeerStatus, Status, Sync};

use super::{execute, format_time};

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

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Open a damaged store from what is intact (one sled cannot open is moved aside) and
    /// take back from the peers what it lacks, this node's own node scope included; `meshd
    /// status` says what is still missing (docs/operations.md)
    #[arg(long)]
    repair: bool,
}

pub fn run_daemon(home: Home, args: RunArgs) -> anyhow::Result<()> {
    crate::allocator::for_long_running();
    let runtime = tokio::runtime::Runtime::new()?;
    let openclaw_home = super::openclaw_home_env();
    let options = meshd::daemon::RunOptions {
        repair: args.repair,
    };
    let shutdown = {
        let _inside = runtime.enter();
        meshd::daemon::shutdown_signal().context("cannot take over SIGINT and SIGTERM")?
    };
    let store = home.store_path();
    runtime.block_on(meshd::daemon::run(home, openclaw_home, options, shutdown))?;
    // Every task, and with them the last handle on the store, goes with the runtime.
    drop(runtime);
    super::save_page_table(&store);
    Ok(())
}

pub fn status(home: &Home, args: StatusArgs) -> anyhow::Result<()> {
    let status = execute(home, Status::default())?;
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
    if status.conflicts > 0 {
        let entries = match status.conflicts {
            1 => "1 entry holds".to_string(),
            n => format!("{n} entries hold"),
        };
        println!(
            "{entries} concurrent versions: `meshd mem get SCOPE KEY --conflicts` shows them, \
             writing an entry again settles it (GET /mesh/conflicts lists them all)"
        );
    }
    if let Some(reason) = &status.read_only {
        println!("READ-ONLY: {reason}");
    }
    if let Some(repair) = &status.repair {
        println!("repair: {repair}");
    }
    if status.running {
        println!("{} bytes sent to peers since start", status.bytes_sent);
        let memory = &status.in_memory;
        println!(
            "documents in memory: {} (about {} of a {} MB budget), {} loaded from the store since it opened",
            memory.documents,
            megabytes(memory.estimated_bytes),
            memory.budget_bytes >> 20,
            memory.loads
        );
    }
    for collision in &status.files.collisions {
        let copy = collision
            .mesh_copy
            .as_ref()
            .map_or("not written: that name is taken too".to_string(), |copy| {
                format!("the mesh's version is {}", copy.display())
            });
        println!(
            "file not meshd's, left as it is: {} ({copy})",
            collision.file.display()
        );
    }
    for refusal in &status.files.refused {
        println!(
            "file not taken into the mesh: {}: {}",
            refusal.file.display(),
            refusal.reason
        );
    }
    for p in &status.peers {
        print_peer(p);
    }
    Ok(())
}

/// The peer's clock against ours, in words.
fn clock_offset(offset_ms: i64) -> String {
    let seconds = offset_ms as f64 / 1000.0;
    if offset_ms.abs() < 1000 {
        ", clock within 1 s of ours".to_string()
    } else if offset_ms > 0 {
        format!(", clock {seconds:.1} s ahead of ours")
    } else {
        format!(", clock {:.1} s behind ours", -seconds)
    }
}

/// A peer's state in words: the link, how far behind it is, and why anything fails.
pub(super) fn print_peer(p: &PeerStatus) {
    let last_sync = p.peer.last_sync.map_or("never".to_string(), format_time);
    let state = match &p.link {
        Some(link) => format!(
            "connected since {}, round trip {} ms{}",
            format_time(link.since),
            link.rtt_ms,
            link.clock_offset_ms.map_or(String::new(), clock_offset)
        ),
        None if p.connected => "connected".to_string(),
        None => "disconnected".to_string(),
    };
    let mut behind = match p.changes_behind {
        Some(changes) => format!(
            "{changes} changes ({} documents) it has not confirmed",
            p.documents_behind
        ),
        None => "never synced".to_string(),
    };
    if let Some(awaited) = p.link.as_ref().and_then(|link| link.changes_awaited) {
        behind.push_str(&format!(", {awaited} of its changes not here yet"));
    }
    println!(
        "peer {} ({}): {state}; last sync {last_sync}; {behind}",
        p.peer.label(),
        p.peer.addresses.join(","),
    );
    if let Some(unreachable) = &p.unreachable {
        println!("  dialing it failed at {}:", format_time(unreachable.at));
        for failure in &unreachable.addresses {
            println!("    {}: {}", failure.address, failure.reason);
        }
        if unreachable.addresses.is_empty() {
            println!(
                "    it has no address here: `meshd peers add {} HOST:PORT`",
                p.peer.id
            );
        }
    }
    if let Some(refused) = &p.refused {
        println!(
            "  its changes to {} were refused at {}: {}",
            refused.doc,
            format_time(refused.at),
            refused.reason
        );
    }
    if let Some(failure) = &p.link_failure {
        println!(
            "  its links keep failing ({} in a row, the latest at {}; reconnecting with \
             backoff): {}",
            failure.failures,
            format_time(failure.at),
            failure.reason
        );
    }
}

pub fn sync(home: &Home, args: SyncArgs) -> anyhow::Result<()> {
    eprintln!("{}", execute(home, Sync { peer: args.peer })?);
    Ok(())
}

/// `bytes` as "48 kB" or "189.6 MB" (of 2^10 and 2^20 bytes, as the budget is set).
fn megabytes(bytes: u64) -> String {
    if bytes < 1 << 20 {
        return format!("{} kB", bytes >> 10);
    }
    format!("{:.1} MB", bytes as f64 / f64::from(1u32 << 20))
}
