//! `meshd run`: wires the replica, the control socket, the mesh (QUIC links to peers), the
//! local API and the views together, and stops cleanly on SIGINT/SIGTERM with everything
//! flushed.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

use crate::api::{self, ApiError, ApiSettings, ApiState};
use crate::cache::CachePaths;
use crate::config::{self, Config, ConfigError, Home};
use crate::control::socket::MAX_LINE_BYTES;
use crate::control::{Local, NodeStatus, PeerStatus, Request, Response};
use crate::model::NodeId;
use crate::net::endpoint;
use crate::net::identity::{Identity, IdentityError};
use crate::net::mesh::{Mesh, MeshConfig};
use crate::net::{NetError, PeerPins};
use crate::peers::{Peer, PeerError, PeerStore};
use crate::replica::{Replica, ReplicaError, SharedReplica};
use crate::sync::SyncStore;
use crate::views::{ViewWriter, Views};

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
    Api(#[from] ApiError),
    #[error(transparent)]
    Net(#[from] NetError),
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

/// State shared by every task of the daemon.
pub struct Node {
    pub own: NodeId,
    pub replica: SharedReplica,
    pub peers: PeerStore,
    /// Where `meshd cache write` puts the caches, fixed when the daemon starts.
    cache: CachePaths,
    /// Told after every change, so caches and the mirror follow.
    changed: Mutex<Option<ViewWriter>>,
    /// The links to peers, once the endpoint is up.
    mesh: OnceLock<Arc<Mesh>>,
    identity: Identity,
}

impl Node {
    pub fn open(home: &Home, cache: CachePaths) -> Result<Node, DaemonError> {
        home.require_initialised()?;
        let identity = Identity::load(&home.key_path(), &home.cert_path())?;
        let replica = open_store(home, &identity.node_id.compact())?;
        let peers = PeerStore::open(replica.db())?;
        Ok(Node {
            own: identity.node_id,
            replica: Arc::new(Mutex::new(replica)),
            peers,
            cache,
            changed: Mutex::new(None),
            mesh: OnceLock::new(),
            identity,
        })
    }

    /// After a local write: push it to connected peers and refresh the views.
    pub fn after_write(&self) {
        if let Some(mesh) = self.mesh.get() {
            mesh.local_changes();
        }
        self.notify_changed();
    }

    /// Tells the views that the replica changed.
    pub fn notify_changed(&self) {
        if let Some(views) = self
            .changed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
        {
            views.changed();
        }
    }

    /// Runs one control request on the store, then tells peers and views what changed.
    pub fn handle(&self, request: Request) -> Response {
        let peers_changed = matches!(request, Request::PeersAdd { .. } | Request::PeersRm { .. });
        let may_write = request.may_write();
        let response = {
            let mut replica = self.replica.lock().unwrap_or_else(|e| e.into_inner());
            let mut local = Local {
                replica: &mut replica,
                peers: &self.peers,
                own: self.own,
                cache: &self.cache,
            };
            match local.execute(request) {
                Some(Response::Peers { peers }) => Response::Peers {
                    peers: peers
                        .into_iter()
                        .map(|p| self.peer_status(&replica, p.peer))
                        .collect(),
                },
                Some(response) => response,
                None => self.status(&replica),
            }
        };
        if peers_changed {
            if let Some(mesh) = self.mesh.get() {
                mesh.peers_changed();
            }
        }
        if may_write {
            self.after_write();
        }
        response
    }

    /// `meshd sync`: a round with every connected peer, or one, and wait for it.
    async fn sync(&self, peer: Option<String>) -> Response {
        let Some(mesh) = self.mesh.get() else {
            return Response::Error {
                message: "the mesh is not up yet".into(),
            };
        };
        let only = match peer.map(|p| self.peers.find(&p)).transpose() {
            Ok(found) => found.map(|p| p.id),
            Err(e) => {
                return Response::Error {
                    message: e.to_string(),
                }
            }
        };
        let started = std::time::Instant::now();
        let done = mesh.sync_now(only, SYNC_TIMEOUT).await;
        Response::Done {
            message: format!(
                "synced with {done} peer{} in {} ms",
                if done == 1 { "" } else { "s" },
                started.elapsed().as_millis()
            ),
        }
    }

    fn peer_status(&self, replica: &Replica, peer: Peer) -> PeerStatus {
        PeerStatus {
            connected: self.mesh.get().is_some_and(|m| m.is_connected(&peer.id)),
            documents_behind: Some(documents_behind(replica, &peer)),
            peer,
        }
    }

    fn status(&self, replica: &Replica) -> Response {
        let peers = self.peers.list().unwrap_or_default();
        let mesh = self.mesh.get();
        Response::Status {
            status: NodeStatus {
                node_id: self.own.to_string(),
                running: true,
                documents: replica.doc_ids().len(),
                memory_entries: replica.list_memory(None).len(),
                skills: replica.list_skills().len(),
                listen: mesh.and_then(|m| m.local_addr()).map(|a| a.to_string()),
                bytes_sent: mesh.map_or(0, |m| m.bytes_sent()),
                peers: peers
                    .into_iter()
                    .map(|peer| self.peer_status(replica, peer))
                    .collect(),
            },
        }
    }
}

/// How long the daemon waits for a store that a one-shot command holds for a moment.
const STORE_BUSY_WAIT: Duration = Duration::from_secs(5);

/// Opens the store, waiting out a CLI command that holds it briefly; a store still locked
/// after that belongs to another daemon.
fn open_store(home: &Home, node_id: &str) -> Result<Replica, DaemonError> {
    let deadline = std::time::Instant::now() + STORE_BUSY_WAIT;
    loop {
        match Replica::open(&home.store_path(), node_id) {
            Err(ReplicaError::Open { .. }) if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(ReplicaError::Open { .. }) => {
                return Err(DaemonError::AlreadyRunning(home.dir.clone()))
            }
            result => return Ok(result?),
        }
    }
}

/// How long `meshd sync` waits for its round.
const SYNC_TIMEOUT: Duration = Duration::from_secs(60);

/// Documents the peer may read whose state here differs from what it last confirmed.
fn documents_behind(replica: &Replica, peer: &Peer) -> usize {
    let session_peer = peer.id.compact();
    replica
        .doc_ids()
        .iter()
        .filter(|doc| peer.access.may_read(doc, &peer.id))
        .filter(|doc| {
            let shared = replica.shared_heads(&session_peer, doc).ok().flatten();
            shared.as_deref() != Some(SyncStore::heads(replica, doc).as_slice())
        })
        .count()
}

/// Runs the daemon until `shutdown` completes. `openclaw_home` is `$OPENCLAW_HOME`.
pub async fn run(
    home: Home,
    openclaw_home: Option<PathBuf>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), DaemonError> {
    let config = home.load_config()?;
    let cache = config.cache.paths(openclaw_home.clone());
    let node = Arc::new(Node::open(&home, cache)?);
    let socket_path = home.control_socket_path();
    let listener = bind_control(&socket_path)?;
    tracing::info!(node = %node.own, socket = %socket_path.display(), "meshd running");
    let views = start_views(&node, &config, openclaw_home);
    let mut tasks = vec![tokio::spawn(serve_control(listener, node.clone()))];
    let started = start_network(&node, &config, &views).await;
    let started = match started {
        Ok(api) => api,
        Err(e) => {
            // Leave no socket behind that looks like a running daemon.
            let _ = std::fs::remove_file(&socket_path);
            return Err(e);
        }
    };
    tasks.extend(started);
    shutdown.await;
    for task in &tasks {
        task.abort();
    }
    if let Some(mesh) = node.mesh.get() {
        mesh.close().await;
    }
    let _ = std::fs::remove_file(&socket_path);
    views.flush().await;
    node.replica
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .flush()?;
    tracing::info!("meshd stopped; everything is flushed");
    Ok(())
}

/// The local API (checked first: it refuses unsafe settings) and then the mesh.
async fn start_network(
    node: &Arc<Node>,
    config: &Config,
    views: &ViewWriter,
) -> Result<Option<tokio::task::JoinHandle<()>>, DaemonError> {
    let api = match config.api.enabled {
        true => Some(start_api(node, config).await?),
        false => None,
    };
    start_mesh(node, config, views)?;
    Ok(api)
}

/// Binds the QUIC endpoint and starts the links to peers.
fn start_mesh(node: &Arc<Node>, config: &Config, views: &ViewWriter) -> Result<(), DaemonError> {
    let listen = config::parse_listen(&config.node.listen)?;
    let endpoint = endpoint::bind(&node.identity, listen, PeerPins::new())?;
    let views = views.clone();
    let mesh = Mesh::start(
        node.own,
        node.replica.clone(),
        node.peers.clone(),
        endpoint,
        MeshConfig::default(),
        move || views.changed(),
    );
    if let Some(addr) = mesh.local_addr() {
        tracing::info!(%addr, "listening for peers (QUIC)");
    }
    let _ = node.mesh.set(mesh);
    Ok(())
}

/// Caches and the SQLite mirror start from the store as it is, then follow every change.
fn start_views(node: &Arc<Node>, config: &Config, openclaw_home: Option<PathBuf>) -> ViewWriter {
    let views = Views::from_config(config, openclaw_home);
    let debounce = Duration::from_millis(config.cache.debounce_ms);
    let writer = ViewWriter::spawn(node.replica.clone(), views, debounce);
    *node.changed.lock().unwrap_or_else(|e| e.into_inner()) = Some(writer.clone());
    writer.changed();
    writer
}

async fn start_api(
    node: &Arc<Node>,
    config: &Config,
) -> Result<tokio::task::JoinHandle<()>, DaemonError> {
    let settings = ApiSettings::from_config(&config.api, |var| std::env::var(var).ok())?;
    let addr = config::parse_listen(&config.api.listen)?;
    api::check_bind(addr, &settings)?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| DaemonError::ApiListen {
            addr: addr.to_string(),
            source,
        })?;
    let local = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    tracing::info!(api = %local, "local API listening");
    let hook = node.clone();
    let state = ApiState::new(node.replica.clone(), settings).on_change(move || hook.after_write());
    Ok(tokio::spawn(async move {
        if let Err(error) = api::serve(listener, state, std::future::pending()).await {
            tracing::error!(%error, "the local API stopped");
        }
    }))
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
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

async fn serve_control(listener: UnixListener, node: Arc<Node>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(answer_control(stream, node.clone()));
            }
            Err(e) => tracing::warn!("control socket accept failed: {e}"),
        }
    }
}

async fn answer_control(stream: UnixStream, node: Arc<Node>) {
    let (read, mut write) = stream.into_split();
    let mut line = Vec::new();
    let mut reader = BufReader::new(read).take(MAX_LINE_BYTES as u64);
    let response = match reader.read_until(b'\n', &mut line).await {
        Err(e) => Response::Error {
            message: format!("cannot read the request: {e}"),
        },
        Ok(_) => match serde_json::from_slice::<Request>(&line) {
            Err(e) => Response::Error {
                message: format!("malformed control request: {e}"),
            },
            Ok(Request::Sync { peer }) => node.sync(peer).await,
            Ok(request) => {
                let node = node.clone();
                tokio::task::spawn_blocking(move || node.handle(request))
                    .await
                    .unwrap_or_else(|e| Response::Error {
                        message: format!("request failed: {e}"),
                    })
            }
        },
    };
    let mut answer = serde_json::to_vec(&response).expect("responses always serialize");
    answer.push(b'\n');
    if let Err(e) = write.write_all(&answer).await {
        tracing::debug!("control client left before the answer: {e}");
    }
}
