//! `meshd run`: wires the replica, the control socket, the mesh (QUIC links to peers), the
//! local API and the views together, and stops cooperatively on SIGINT/SIGTERM.
//!
//! The daemon owns every task it starts (one `TaskTracker`) and stops them with one signal
//! (one `CancellationToken`): the control socket and the HTTP API stop accepting, the mesh
//! closes its links, requests in flight finish, and only then are the views and the store
//! flushed. An answered write is therefore never lost to a stop.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::api::{self, ApiError, ApiState, NodeView};
use crate::cache::{CacheFiles, Change};
use crate::config::{self, Config, ConfigError, Home};
use crate::control::socket::MAX_REQUEST_BYTES;
use crate::control::{
    Command, CommandError, Context, Joined, LiveMesh, MemPut, Reply, Request, SkillPut, Status,
};
use crate::invite::Ticket;
use crate::metrics::Metrics;
use crate::model::access::Access;
use crate::model::NodeId;
use crate::net::discovery::{self, Discovery};
use crate::net::endpoint;
use crate::net::identity::{Identity, IdentityError};
use crate::net::join::Admitted;
use crate::net::mesh::{Lifecycle, Mesh, MeshConfig};
use crate::net::{NetError, PeerPins};
use crate::peers::{DialFailure, LinkFailure, LinkState, PeerError, PeerRefusal, PeerStore, Seen};
use crate::replica::{self, Replica, ReplicaError, SharedReplica, StoreTaskFailed};
use crate::search::{SearchError, Searcher};
use crate::trust::NodeKey;
use crate::views::{Importer, ViewWriter, Views};

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Identity(#[from] IdentityError),
    #[error(transparent)]
    Replica(#[from] ReplicaError),
    #[error(transparent)]
    Peers(#[from] PeerError),
    #[error("another meshd is already running for {0}")]
    AlreadyRunning(PathBuf),
    #[error(transparent)]
    StoreTask(#[from] StoreTaskFailed),
    #[error(transparent)]
    Api(#[from] ApiError),
    #[error(transparent)]
    Net(#[from] NetError),
    #[error(transparent)]
    Search(#[from] SearchError),
    #[error("cannot listen for the local API on {addr}: {source} (set [api] listen, or enabled = false)")]
    ApiListen {
        addr: String,
        source: std::io::Error,
    },
    #[error("cannot open the control socket {path}: {source}")]
    Control {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// How long a stop waits for requests in flight and links to finish before flushing anyway.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);

/// State shared by every task of the daemon.
pub struct Node {
    own: NodeId,
    replica: SharedReplica,
    peers: PeerStore,
    /// The caches, where `[cache]` says when the daemon starts; the view writer and
    /// `meshd cache write` share them.
    cache: Arc<CacheFiles>,
    /// Told after every change, so caches and the mirror follow.
    views: OnceLock<ViewWriter>,
    /// The search index, refreshed by the view writer and by every search.
    search: Arc<Searcher>,
    /// The links to peers, once the endpoint is up.
    mesh: OnceLock<Arc<Mesh>>,
    /// LAN discovery, while it runs (`[discovery] mdns`); taken at the stop to say goodbye.
    discovery: Mutex<Option<Arc<Discovery>>>,
    /// Where the local API listens, once it does.
    api_addr: OnceLock<SocketAddr>,
    identity: Identity,
    lifecycle: Lifecycle,
    /// `meshd run --repair`: the store opened from what is intact, and this node's own scope
    /// accepted back from its peers.
    repairing: bool,
    /// The counters `/metrics` serves, shared with the replica and the mesh.
    metrics: Arc<Metrics>,
    /// The keys bridge messages are checked and signed with (`[bridge]`).
    bridge: Arc<crate::bridge::BridgeKeys>,
}

/// How `meshd run` was asked to run.
#[derive(Debug, Clone, Copy, Default)]
pub struct RunOptions {
    /// Open a damaged store from what is intact and take back from the peers what it lacks,
    /// this node's own node scope included (`replica::repair`).
    pub repair: bool,
}

impl Node {
    fn open(
        home: &Home,
        config: &Config,
        cache: Arc<CacheFiles>,
        options: RunOptions,
    ) -> Result<Node, DaemonError> {
        home.require_initialised()?;
        let identity = Identity::load(&home.key_path(), &home.cert_path())?;
        let key = identity.signing_key()?;
        let bridge = Arc::new(config.bridge.bridge_keys(&key));
        let mut replica = open_store(home, key, options.repair)?;
        replica.set_clock_bound(config.node.clock_bound());
        replica.set_reserve(config.store.reserve());
        replica.set_memory_budget(config.store.memory_budget());
        let metrics = Arc::new(Metrics::default());
        replica.set_metrics(metrics.clone());
        let peers = PeerStore::open(replica.db())?;
        let search = Arc::new(Searcher::for_node(home, config)?);
        Ok(Node {
            own: identity.node_id,
            replica: SharedReplica::new(replica),
            peers,
            cache,
            views: OnceLock::new(),
            search,
            mesh: OnceLock::new(),
            discovery: Mutex::new(None),
            api_addr: OnceLock::new(),
            identity,
            lifecycle: Lifecycle {
                tasks: TaskTracker::new(),
                shutdown: CancellationToken::new(),
            },
            repairing: options.repair,
            metrics,
            bridge,
        })
    }

    /// After a local write: push it to connected peers and refresh the views.
    fn after_write(&self) {
        if let Some(mesh) = self.mesh.get() {
            mesh.local_changes();
        }
        if let Some(views) = self.views.get() {
            views.changed();
        }
    }

    /// What control commands run against.
    fn context(&self) -> Context {
        Context {
            replica: self.replica.clone(),
            peers: self.peers.clone(),
            own: self.own,
            cache: self.cache.clone(),
            search: self.search.clone(),
            bridge: self.bridge.clone(),
            mesh: self.mesh.get().map(|mesh| {
                Arc::new(RunningMesh {
                    mesh: mesh.clone(),
                    discovery: lock(&self.discovery).clone(),
                    api_addr: self.api_addr.get().copied(),
                    runtime: tokio::runtime::Handle::current(),
                }) as Arc<dyn LiveMesh>
            }),
        }
    }

    /// Runs one control request off the async threads, then acts on what it declared.
    async fn handle(&self, request: Request) -> Reply {
        let effects = request.effects();
        let context = self.context();
        let reply = tokio::task::spawn_blocking(move || request.execute(&context))
            .await
            .unwrap_or_else(|e| {
                Err(CommandError::failed(format!(
                    "the request failed: {e}; this is a bug, the node keeps running"
                )))
            });
        self.apply(effects);
        reply
    }

    /// Runs one request on this (blocking) thread, then acts on what it declared, as
    /// `handle` does for the control socket.
    fn execute_blocking(&self, request: Request) -> Reply {
        let effects = request.effects();
        let reply = request.execute(&self.context());
        self.apply(effects);
        reply
    }

    /// What the daemon does after a request, as the request declared.
    fn apply(&self, effects: crate::control::Effects) {
        if effects.peers {
            if let Some(mesh) = self.mesh.get() {
                mesh.peers_changed();
            }
        }
        if effects.data {
            self.after_write();
        }
    }

    /// A change read back from a cache file, as the control command a user would type.
    fn import(&self, change: &Change) -> Result<(), String> {
        let request: Request = match change.clone() {
            Change::Memory { scope, key, value } => MemPut {
                scope: scope.to_string(),
                key,
                value,
            }
            .into(),
            Change::Skill {
                name,
                content,
                description,
                path,
            } => SkillPut {
                name,
                content,
                description,
                path,
            }
            .into(),
        };
        self.execute_blocking(request)
            .map(|_| ())
            .map_err(|error| error.to_string())
    }
}

/// The running mesh as control commands see it.
struct RunningMesh {
    mesh: Arc<Mesh>,
    discovery: Option<Arc<Discovery>>,
    api_addr: Option<SocketAddr>,
    runtime: tokio::runtime::Handle,
}

impl LiveMesh for RunningMesh {
    fn listen_addr(&self) -> Option<SocketAddr> {
        self.mesh.local_addr()
    }

    fn api_addr(&self) -> Option<SocketAddr> {
        self.api_addr
    }

    fn bytes_sent(&self) -> u64 {
        self.mesh.bytes_sent()
    }

    fn name(&self) -> Option<String> {
        self.mesh.name()
    }

    fn bytes_sent_to(&self, peer: &NodeId) -> u64 {
        self.mesh.bytes_sent_to(peer)
    }

    fn is_connected(&self, peer: &NodeId) -> bool {
        self.mesh.is_connected(peer)
    }

    fn last_refusal(&self, peer: &NodeId) -> Option<PeerRefusal> {
        self.mesh.last_refusal(peer)
    }

    fn link_failure(&self, peer: &NodeId) -> Option<LinkFailure> {
        self.mesh.link_failure(peer)
    }

    fn dial_failure(&self, peer: &NodeId) -> Option<DialFailure> {
        self.mesh.dial_failure(peer)
    }

    fn link_state(&self, peer: &NodeId) -> Option<LinkState> {
        self.mesh.link_state(peer)
    }

    fn forget_refused(&self) {
        self.mesh.forget_refused();
    }

    fn discovered(&self) -> Option<Vec<Seen>> {
        self.discovery.as_ref().map(|discovery| discovery.seen())
    }

    /// Commands run on the blocking pool, where waiting on the runtime is allowed.
    fn sync_now(&self, only: Option<NodeId>, timeout: Duration) -> usize {
        self.runtime.block_on(self.mesh.sync_now(only, timeout))
    }

    fn join(&self, ticket: Ticket, access: Access, name: Option<String>) -> Result<Joined, String> {
        let mesh = self.mesh.clone();
        // The join runs on the runtime: it needs `block_in_place`, which the blocking pool's
        // threads cannot do.
        self.runtime
            .block_on(async move {
                tokio::spawn(async move { mesh.join(&ticket, access, name).await }).await
            })
            .map_err(|e| format!("the join failed: {e}; this is a bug, the node keeps running"))?
            .map(|(inviter, admitted)| match admitted {
                Admitted::Now(granted) => Joined {
                    inviter,
                    granted,
                    held: false,
                },
                Admitted::Held(granted) => Joined {
                    inviter,
                    granted,
                    held: true,
                },
            })
            .map_err(|e| e.to_string())
    }
}

/// How long the daemon waits for a store that a one-shot command holds: loading a large store
/// takes the command seconds.
const STORE_BUSY_WAIT: Duration = Duration::from_secs(60);

/// Opens the store, waiting out a CLI command that holds it; a store held by a process that
/// answers on the control socket belongs to another daemon.
fn open_store(home: &Home, key: NodeKey, repair: bool) -> Result<Replica, DaemonError> {
    let path = home.store_path();
    let deadline = std::time::Instant::now() + STORE_BUSY_WAIT;
    let mut waiting = false;
    let open = || match repair {
        true => Replica::open_for_repair(&path, key.clone()),
        false => Replica::open(&path, key.clone()),
    };
    loop {
        match open() {
            Err(ReplicaError::Locked { .. })
                if !another_daemon_answers(home) && std::time::Instant::now() < deadline =>
            {
                if !waiting {
                    tracing::info!("a meshd command holds the store; waiting for it to finish");
                    waiting = true;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(ReplicaError::Locked { .. }) => {
                return Err(DaemonError::AlreadyRunning(home.dir.clone()))
            }
            result => return Ok(result?),
        }
    }
}

fn another_daemon_answers(home: &Home) -> bool {
    let status = crate::control::Request::from(crate::control::Status {});
    matches!(
        crate::control::socket::send(&home.control_socket_path(), &status),
        Ok(Some(_))
    )
}

/// Runs the daemon until `shutdown` completes. `openclaw_home` is `$OPENCLAW_HOME`.
pub async fn run(
    home: Home,
    openclaw_home: Option<PathBuf>,
    options: RunOptions,
    shutdown: impl Future<Output = ()>,
) -> Result<(), DaemonError> {
    let config = home.load_config()?;
    let paths = config.cache.paths(openclaw_home);
    let cache = Arc::new(CacheFiles::new(paths, home.cache_manifest_path()));
    let node = Arc::new(Node::open(&home, &config, cache, options)?);
    if options.repair {
        tracing::warn!("repairing: this node's own node scope is accepted from its peers until meshd restarts without --repair; `meshd status` shows what is still missing");
    }
    let socket_path = home.control_socket_path();
    let listener = bind_control(&socket_path)?;
    tracing::info!(node = %node.own, socket = %socket_path.display(), "meshd running");
    start_views(&node, &config);
    start_integrity_ticker(&node);
    start_embedder(&node);
    if let Err(e) = start_network(&node, &home, &config).await {
        // Leave no socket behind that looks like a running daemon.
        let _ = std::fs::remove_file(&socket_path);
        node.lifecycle.shutdown.cancel();
        return Err(e);
    }
    // Commands are answered once the mesh is up: `meshd invite` typed right after `meshd
    // run` needs its listen address (the socket is bound above, so they wait, not fail).
    node.lifecycle
        .tasks
        .spawn(serve_control(listener, node.clone()));
    shutdown.await;
    stop(&node, &socket_path).await
}

/// The cooperative stop: no new work, in-flight work finishes, then everything is flushed.
async fn stop(node: &Node, socket_path: &Path) -> Result<(), DaemonError> {
    tracing::info!("stopping: finishing requests in flight");
    node.lifecycle.shutdown.cancel();
    // Commands typed from now on wait for the store instead of talking to a stopping daemon.
    let _ = std::fs::remove_file(socket_path);
    // Its goodbye tells the LAN at once that this node is gone.
    let discovery = lock(&node.discovery).take();
    drop(discovery);
    if let Some(mesh) = node.mesh.get() {
        mesh.close().await;
    }
    node.lifecycle.tasks.close();
    if tokio::time::timeout(SHUTDOWN_GRACE, node.lifecycle.tasks.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            left = node.lifecycle.tasks.len(),
            "some tasks did not finish within {SHUTDOWN_GRACE:?}; flushing anyway"
        );
    }
    if let Some(views) = node.views.get() {
        // It waits for a write in flight: the first one on a large store takes a while.
        tracing::info!("stopping: writing the views (caches, mirror, search index)");
        views.flush().await;
    }
    node.replica.run(|replica| replica.flush()).await??;
    tracing::info!("meshd stopped; everything is flushed");
    Ok(())
}

/// The local API (checked first: it refuses unsafe settings) and then the mesh.
async fn start_network(node: &Arc<Node>, home: &Home, config: &Config) -> Result<(), DaemonError> {
    if config.api.enabled {
        start_api(node, home, config).await?;
    }
    start_mesh(node, config)
}

/// Binds the QUIC endpoint and starts the links to peers.
fn start_mesh(node: &Arc<Node>, config: &Config) -> Result<(), DaemonError> {
    let listen = config::parse_listen(&config.node.listen)?;
    let endpoint = endpoint::bind(&node.identity, listen, PeerPins::new())?;
    let views = node.views.get().cloned();
    let mesh = Mesh::start(
        node.own,
        node.replica.clone(),
        node.peers.clone(),
        endpoint,
        MeshConfig {
            accept_own_scope: node.repairing,
            name: Some(config.node.name.clone()),
            metrics: node.metrics.clone(),
            approve_joins: config.invites.approve,
            ..MeshConfig::default()
        },
        node.lifecycle.clone(),
        move || {
            if let Some(views) = &views {
                views.changed();
            }
        },
    );
    if let Some(addr) = mesh.local_addr() {
        tracing::info!(%addr, "listening for peers (QUIC)");
    }
    if config.discovery.mdns {
        start_discovery(node, &mesh, &config.node.name);
    }
    let _ = node.mesh.set(mesh);
    Ok(())
}

/// Announces the node on the LAN and follows known peers that move. Without multicast the
/// node runs on, with a warning: discovery is a convenience, pairing never depends on it.
fn start_discovery(node: &Arc<Node>, mesh: &Arc<Mesh>, name: &str) {
    let Some(listen) = mesh.local_addr() else {
        return;
    };
    let (mesh, runtime) = (mesh.clone(), tokio::runtime::Handle::current());
    let tasks = node.lifecycle.tasks.clone();
    let on_seen = move |seen: Seen| {
        tasks.spawn_on(mesh.clone().seen_on_lan(seen), &runtime);
    };
    match Discovery::start(node.own, name, listen, on_seen) {
        Ok(discovery) => {
            tracing::info!(
                service = discovery::SERVICE_TYPE,
                "announcing this node on the LAN (mDNS)"
            );
            *lock(&node.discovery) = Some(Arc::new(discovery));
        }
        Err(error) => tracing::warn!("{error}"),
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// Keeps the integrity record at most about a second behind the store: the replica rewrites
/// it on a write only when the last rewrite is a second old, so the last writes of a burst
/// are recorded here.
fn start_integrity_ticker(node: &Arc<Node>) {
    let replica = node.replica.clone();
    let shutdown = node.lifecycle.shutdown.clone();
    node.lifecycle.tasks.spawn(async move {
        let mut tick = tokio::time::interval(replica::INTEGRITY_EVERY);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            if let Err(error) = replica.run(Replica::record_integrity).await {
                tracing::warn!(%error, "integrity record not written");
            }
        }
    });
}

/// How often the embedder looks for entries without a vector, and how long it waits after
/// the endpoint failed.
const EMBED_EVERY: Duration = Duration::from_secs(2);
const EMBED_RETRY: Duration = Duration::from_secs(60);

/// Gives every entry its vector for semantic search, in the background, when an embedding
/// endpoint is configured. A failing endpoint is logged once per failure streak and retried.
fn start_embedder(node: &Arc<Node>) {
    if !node.search.has_embedder() {
        return;
    }
    let (search, replica) = (node.search.clone(), node.replica.clone());
    let shutdown = node.lifecycle.shutdown.clone();
    node.lifecycle.tasks.spawn(async move {
        let mut failing = false;
        loop {
            let pause = if failing { EMBED_RETRY } else { EMBED_EVERY };
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(pause) => {}
            }
            let (search, replica) = (search.clone(), replica.clone());
            let embedded =
                tokio::task::spawn_blocking(move || search.embed_pending(&replica, 512)).await;
            match embedded {
                Ok(Ok(count)) => {
                    if failing || count > 0 {
                        tracing::debug!(count, "entries embedded for semantic search");
                    }
                    failing = false;
                }
                Ok(Err(error)) => {
                    if !failing {
                        tracing::warn!(%error, "semantic search: entries not embedded; retrying every minute");
                    }
                    failing = true;
                }
                Err(error) => tracing::warn!(%error, "the embedder failed"),
            }
        }
    });
}

/// Caches and the SQLite mirror start from the store as it is, then follow every change;
/// what others change in the caches is read back into the mesh before each write, and the
/// caches are watched so that happens soon after they change.
fn start_views(node: &Arc<Node>, config: &Config) {
    let mut views = Views::from_config(config, node.cache.clone()).with_search(node.search.clone());
    // Weak: the node owns the writer, which must not keep the node alive.
    let importer = Arc::downgrade(node);
    views.import = Some(Arc::new(move |change: &Change| match importer.upgrade() {
        Some(node) => node.import(change),
        None => Err("the daemon is stopping".to_string()),
    }) as Importer);
    let debounce = Duration::from_millis(config.cache.debounce_ms);
    let writer = ViewWriter::spawn(
        node.replica.clone(),
        views,
        debounce,
        &node.lifecycle.tasks,
        node.lifecycle.shutdown.clone(),
    );
    writer.changed();
    if config.cache.enabled {
        let on_change = writer.clone();
        crate::watch::spawn(
            node.cache.paths(),
            &node.lifecycle.tasks,
            node.lifecycle.shutdown.clone(),
            move || on_change.changed(),
        );
    }
    let _ = node.views.set(writer);
}

async fn start_api(node: &Arc<Node>, home: &Home, config: &Config) -> Result<(), DaemonError> {
    let settings = api::node_settings(home, &config.api)?;
    let addr = config::parse_listen(&config.api.listen)?;
    api::check_bind(addr, &settings)?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| DaemonError::ApiListen {
            addr: addr.to_string(),
            source,
        })?;
    let local = listener.local_addr();
    if let Ok(addr) = local {
        let _ = node.api_addr.set(addr);
    }
    let local = local.map(|a| a.to_string()).unwrap_or_default();
    tracing::info!(api = %local, "local API listening");
    let (hook, viewed) = (node.clone(), node.clone());
    let view = NodeView::new(
        move || Status {}.execute(&viewed.context()),
        node.metrics.clone(),
    );
    let state = ApiState::new(node.replica.clone(), settings)
        .with_search(node.search.clone())
        .with_bridge(node.bridge.clone())
        .with_node(view)
        .on_change(move || hook.after_write());
    let shutdown = node.lifecycle.shutdown.clone().cancelled_owned();
    node.lifecycle.tasks.spawn(async move {
        if let Err(error) = api::serve(listener, state, shutdown).await {
            tracing::error!(%error, "the local API stopped");
        }
    });
    Ok(())
}

/// Takes over SIGINT and SIGTERM at once and resolves when either arrives, so that a signal
/// sent while the node is still starting is a clean stop, not the default sudden death. Call
/// it inside the tokio runtime, before anything that takes time.
pub fn shutdown_signal() -> std::io::Result<impl Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = terminate.recv() => {}
            _ = interrupt.recv() => {}
        }
    })
}

fn bind_control(path: &Path) -> Result<UnixListener, DaemonError> {
    use std::os::unix::fs::PermissionsExt;
    let control_error = |source| DaemonError::Control {
        path: path.to_path_buf(),
        source,
    };
    // A socket file left by a daemon that was killed: nobody answers on it any more.
    if path.exists() {
        std::fs::remove_file(path).map_err(control_error)?;
    }
    let listener = UnixListener::bind(path).map_err(control_error)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(control_error)?;
    Ok(listener)
}

/// Accepts control connections until the node stops; each is answered in its own task.
async fn serve_control(listener: UnixListener, node: Arc<Node>) {
    let shutdown = node.lifecycle.shutdown.clone();
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, _)) => {
                node.lifecycle
                    .tasks
                    .spawn(answer_control(stream, node.clone()));
            }
            Err(e) => tracing::warn!("control socket accept failed: {e}"),
        }
    }
}

async fn answer_control(stream: UnixStream, node: Arc<Node>) {
    let (read, mut write) = stream.into_split();
    let mut line = Vec::new();
    let mut reader = BufReader::new(read).take(MAX_REQUEST_BYTES as u64);
    let reply = match reader.read_until(b'\n', &mut line).await {
        Err(e) => Err(CommandError::failed(format!(
            "cannot read the request: {e}"
        ))),
        Ok(n) if n == MAX_REQUEST_BYTES && !line.ends_with(b"\n") => {
            Err(CommandError::failed(format!(
                "the request is over the control socket's {} MiB limit; send large input in \
                 pieces (meshd bridge ingest does)",
                MAX_REQUEST_BYTES >> 20
            )))
        }
        Ok(_) => match serde_json::from_slice::<Request>(&line) {
            Err(e) => Err(CommandError::failed(format!(
                "malformed control request: {e}"
            ))),
            Ok(request) => node.handle(request).await,
        },
    };
    let mut answer = serde_json::to_vec(&reply).unwrap_or_else(|e| {
        let failed: Reply = Err(CommandError::failed(format!(
            "cannot encode the reply: {e}"
        )));
        serde_json::to_vec(&failed).unwrap_or_default()
    });
    answer.push(b'\n');
    if let Err(e) = write.write_all(&answer).await {
        tracing::debug!("control client left before the answer: {e}");
    }
}
