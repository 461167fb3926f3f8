//! The command line: one file per command group, each thin (parse, send a request, print).

mod api;
mod backup;
mod bridge;
mod bridge_sync;
mod cache;
mod daemon;
mod doc;
mod doctor;
mod invite;
mod mcp;
mod mem;
mod node;
mod openclaw;
mod peers;
mod search;
mod skill;
mod store;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use meshd::cache::CacheFiles;
use meshd::config::Home;
use meshd::control::{self, socket, CommandError, DecodeError, Reply, Request};
use meshd::net::identity::Identity;
use meshd::peers::PeerStore;
use meshd::replica::{Replica, ReplicaError, SharedReplica};

/// meshd: share memory and skills between OpenClaw gateways.
#[derive(Debug, Parser)]
#[command(name = "meshd", version, about, long_about = None)]
pub struct Cli {
    /// The node's home directory [default: ~/.openclaw/meshd]
    #[arg(long, global = true, env = "MESHD_HOME", value_name = "DIR")]
    home: Option<PathBuf>,

    /// How long to wait for the running daemon's answer before calling it stuck (`30s`,
    /// `5m`) [default: 30s; 10m for backup, restore, imports and exports; 90s for sync]
    #[arg(long, global = true, env = "MESHD_TIMEOUT", value_name = "DURATION", value_parser = humantime::parse_duration)]
    timeout: Option<std::time::Duration>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create a node: identity, meshd.toml and an empty store
    Init(node::InitArgs),
    /// Print this node's id (first line) and name
    Id(node::IdArgs),
    /// Read and write shared memory
    #[command(subcommand)]
    Mem(mem::MemCommand),
    /// Read and write shared skills
    #[command(subcommand)]
    Skill(skill::SkillCommand),
    /// Find memory (or skills) by words, or by meaning with an embedding endpoint
    Search(search::SearchArgs),
    /// Make a one-time ticket another node pairs with (`meshd join TICKET` there)
    Invite(invite::InviteArgs),
    /// Pair with the node that printed TICKET (`meshd invite`), both ways
    Join(invite::JoinArgs),
    /// Pair with other nodes and see who tried to connect
    #[command(subcommand)]
    Peers(peers::PeersCommand),
    /// Start three real nodes on loopback and show them converge (the main job, self-contained)
    Demo,
    /// Run the node in the foreground: sync with peers, serve the CLI (logs to stderr; RUST_LOG)
    Run(daemon::RunArgs),
    /// Show the node, its store and its peers
    Status(daemon::StatusArgs),
    /// Check the node (home permissions, store, free space, clock, ports, peers, OpenClaw
    /// wiring) and print each problem with its fix; exit status 1 when a check fails
    Doctor(doctor::DoctorArgs),
    /// Run a sync round with connected peers now and wait for it
    Sync(daemon::SyncArgs),
    /// Work with the Automerge documents themselves
    #[command(subcommand)]
    Doc(doc::DocCommand),
    /// Copy every document and the peer list into a new directory, while the node runs
    Backup(backup::BackupArgs),
    /// Merge a backup back into the store (a union: nothing held now is lost)
    Restore(backup::RestoreArgs),
    /// Phase 1 bridge messages: ingest, emit, answer mesh_request
    #[command(subcommand)]
    Bridge(bridge::BridgeCommand),
    /// Phase 2 SQLite shared store: import and export rows
    #[command(subcommand)]
    Store(store::StoreCommand),
    /// The files OpenClaw reads: mesh-memory.json, skills, memory Markdown
    #[command(subcommand)]
    Cache(cache::CacheCommand),
    /// The local HTTP API (Phase 2 endpoints, bridge webhook)
    #[command(subcommand)]
    Api(api::ApiCommand),
    /// Wire meshd into OpenClaw's openclaw.json: MCP server, skills and memory folders
    #[command(subcommand)]
    Openclaw(openclaw::OpenclawCommand),
    /// Serve memory and skills to an agent as MCP tools on stdin/stdout (logs to stderr)
    Mcp,
}

pub fn run(cli: Cli) -> anyhow::Result<()> {
    if let Some(timeout) = cli.timeout {
        // Set once, before any command runs.
        let _ = PATIENCE.set(timeout);
    }
    let home = Home::new(cli.home.unwrap_or_else(Home::default_dir));
    match cli.command {
        Command::Init(args) => node::init(&home, args),
        Command::Id(args) => node::id(&home, args),
        Command::Mem(command) => mem::run(&home, command),
        Command::Skill(command) => skill::run(&home, command),
        Command::Search(args) => search::run(&home, args),
        Command::Invite(args) => invite::invite(&home, args),
        Command::Join(args) => invite::join(&home, args),
        Command::Peers(command) => peers::run(&home, command),
        Command::Doc(command) => doc::run(&home, command),
        Command::Backup(args) => backup::backup(&home, args),
        Command::Restore(args) => backup::restore(&home, args),
        Command::Run(args) => daemon::run_daemon(home, args),
        Command::Demo => {
            let exe = std::env::current_exe().context("cannot find the meshd binary")?;
            Ok(meshd::demo::run(&exe)?)
        }
        Command::Status(args) => daemon::status(&home, args),
        Command::Doctor(args) => doctor::run(&home, args),
        Command::Sync(args) => daemon::sync(&home, args),
        Command::Bridge(command) => bridge::run(&home, command),
        Command::Store(command) => store::run(&home, command),
        Command::Cache(command) => cache::run(&home, command),
        Command::Api(command) => api::run(&home, command),
        Command::Openclaw(command) => openclaw::run(&home, command),
        Command::Mcp => mcp::serve(&home),
    }
}

impl Cli {
    /// The daemon reports what it does; one-shot commands only warn.
    pub fn default_log_level(&self) -> &'static str {
        match self.command {
            Command::Run(_) => "info",
            _ => "warn",
        }
    }
}

pub fn init_logging(default_level: &str) {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level)),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

/// What was asked for does not exist: exit status 3, so scripts can tell it from failure.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct NotFound(pub String);

pub fn exit_code(error: &anyhow::Error) -> ExitCode {
    if error.downcast_ref::<NotFound>().is_some() {
        ExitCode::from(3)
    } else {
        ExitCode::FAILURE
    }
}

/// Runs a command on the node: through the daemon when it runs, on the store otherwise.
/// A missing key or skill becomes `NotFound` (exit status 3).
pub fn execute<C: control::Command>(home: &Home, command: C) -> anyhow::Result<C::Reply> {
    home.require_initialised()?;
    let request: Request = command.into();
    let close = if request.is_lookup() {
        Close::AtExit
    } else {
        Close::Now
    };
    let reply = execute_here_or_there(home, request, close)?;
    control::decode::<C>(reply).map_err(|error| match error {
        DecodeError::Command(CommandError::NotFound(message)) => NotFound(message).into(),
        DecodeError::Command(CommandError::Failed(message)) => anyhow::anyhow!(message),
        shape => shape.into(),
    })
}

/// Whether a daemon listens on the node's control socket. Connecting is enough: a socket
/// file left by a killed daemon refuses connections, and `socket::send` decides the same way.
pub fn is_daemon_running(home: &Home) -> bool {
    std::os::unix::net::UnixStream::connect(home.control_socket_path()).is_ok()
}

/// Opens the node's store in this process, for requests when no daemon answers and for
/// `api serve`. sled lets one process in at a time: while the daemon runs, opening fails.
pub fn open_replica(home: &Home) -> anyhow::Result<(Replica, Identity)> {
    home.require_initialised()?;
    let identity = Identity::load(&home.key_path(), &home.cert_path())?;
    let mut replica = Replica::open(&home.store_path(), identity.signing_key()?)?;
    let config = home.load_config()?;
    replica.set_clock_bound(config.node.clock_bound());
    replica.set_reserve(config.store.reserve());
    Ok((replica, identity))
}

/// For a process that wrote to the store for a while and has closed it (`meshd run`, `api
/// serve`): `replica::save_page_table`, so the next command or start does not replay what
/// it wrote. A failure costs the next open that replay, nothing else.
pub fn save_page_table(store: &std::path::Path) {
    let started = std::time::Instant::now();
    match meshd::replica::save_page_table(store) {
        Ok(()) => tracing::info!(
            took_ms = started.elapsed().as_millis() as u64,
            "saved the store's page table: the next command or start opens it without replaying the log"
        ),
        Err(error) => tracing::warn!(
            %error,
            "the next command or start will replay the store's log first (a few seconds on a large store)"
        ),
    }
}

/// How long a command waits for a store that another process holds: a daemon that is
/// starting (its socket appears a moment later) or another command.
const STORE_BUSY_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// `--timeout`, when given: it replaces every command's own patience.
static PATIENCE: std::sync::OnceLock<std::time::Duration> = std::sync::OnceLock::new();

/// How long to wait for the daemon's answer to `request`.
pub fn patience(request: &Request) -> std::time::Duration {
    PATIENCE
        .get()
        .copied()
        .unwrap_or_else(|| request.patience())
}

pub fn execute_anywhere(home: &Home, request: Request) -> anyhow::Result<Reply> {
    execute_here_or_there(home, request, Close::Now)
}

/// When a command that opened the store in this process closes it.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Close {
    Now,
    /// Left open until the process exits, for the next command of this process or the OS:
    /// closing a store of a million entries costs sled a flush and freeing its page table
    /// again (5 to 7 ms of a one-shot `meshd mem get` of about 40), and a lookup has nothing
    /// to flush.
    AtExit,
}

/// The store a lookup of this process opened, while it is left open (`Close::AtExit`).
static LEFT_OPEN: std::sync::Mutex<Option<control::Context>> = std::sync::Mutex::new(None);

fn execute_here_or_there(home: &Home, request: Request, close: Close) -> anyhow::Result<Reply> {
    let deadline = std::time::Instant::now() + STORE_BUSY_WAIT;
    let socket = home.control_socket_path();
    loop {
        if let Some(response) = socket::send_within(&socket, &request, patience(&request))? {
            return Ok(response);
        }
        match execute_on_store(home, request.clone(), close) {
            Err(e) if store_busy(&e) && std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            result => return result,
        }
    }
}

fn store_busy(error: &anyhow::Error) -> bool {
    matches!(
        error.downcast_ref::<ReplicaError>(),
        Some(ReplicaError::Locked { .. })
    )
}

fn execute_on_store(home: &Home, request: Request, close: Close) -> anyhow::Result<Reply> {
    let mut left_open = LEFT_OPEN
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let context = match left_open.take() {
        Some(context) => context,
        None => open_context(home)?,
    };
    let reply = request.execute(&context);
    if close == Close::AtExit {
        *left_open = Some(context);
    }
    Ok(reply)
}

/// The node as this process serves it when no daemon does: its store opened here.
fn open_context(home: &Home) -> anyhow::Result<control::Context> {
    let config = home.load_config()?;
    let paths = config.cache.paths(openclaw_home_env());
    let cache = Arc::new(CacheFiles::new(paths, home.cache_manifest_path()));
    let search = Arc::new(meshd::search::Searcher::for_node(home, &config)?);
    let (replica, identity) = open_replica(home)?;
    let peers = PeerStore::open(replica.db())?;
    Ok(control::Context {
        replica: SharedReplica::new(replica),
        peers,
        own: identity.node_id,
        cache,
        mesh: None,
        search,
        bridge: Arc::new(config.bridge.bridge_keys(&identity.signing_key()?)),
    })
}

/// Reads a whole argument given as `-` from stdin.
pub fn read_stdin() -> anyhow::Result<String> {
    let mut text = String::new();
    std::io::Read::read_to_string(&mut std::io::stdin(), &mut text).context("cannot read stdin")?;
    Ok(text)
}

/// `OPENCLAW_HOME` from the environment, where the caches go unless meshd.toml says.
pub fn openclaw_home_env() -> Option<PathBuf> {
    std::env::var_os("OPENCLAW_HOME")
        .filter(|home| !home.is_empty())
        .map(PathBuf::from)
}

/// Unix seconds as `2026-11-22T10:00:00Z`.
pub fn format_time(unix_seconds: u64) -> String {
    meshd::model::hlc::rfc3339_seconds(unix_seconds)
}
