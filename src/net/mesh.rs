//! The node's place in the mesh: one link per connected peer, a dialer per configured peer,
//! the accept loop, live push of local changes and gossip of received ones.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use automerge::ChangeHash;
use tokio::sync::{mpsc, oneshot, Notify};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::close::CloseCode;
use super::endpoint::{self, Endpoint};
use super::link::{self, LinkCommand, LinkHost};
use super::NetError;
use crate::metrics::{Metrics, Refusal};
use crate::model::{DocId, NodeId, Scope};
use crate::peers::{LinkFailure, Peer, PeerRefusal, PeerStore};
use crate::replica::{Replica, SharedReplica};
use crate::sync::{self, Applied, Session};

/// Connections from one peer this close together are a simultaneous dial, not a reconnect.
const DIAL_RACE_WINDOW: Duration = Duration::from_secs(2);
/// A link that fails sooner than this after it came up failed on something that a new
/// connection meets again at once (a refusal, a round that cannot complete): the next one
/// waits, longer each time. A link up this long ended for reasons of its own.
const STABLE_LINK: Duration = Duration::from_secs(60);

/// A peer's failing links, and when the dialer may connect again.
struct Failing {
    last: LinkFailure,
    retry_at: Instant,
}

#[derive(Debug, Clone)]
pub struct MeshConfig {
    /// How often each link runs an anti-entropy round.
    pub anti_entropy: Duration,
    /// First and last wait between failed dials; each failure doubles it, with jitter.
    pub backoff: (Duration, Duration),
    /// Accept this node's own node scope from peers, which no peer may write otherwise: a
    /// node repairing its store takes it back (`meshd run --repair`).
    pub accept_own_scope: bool,
    /// Where sync rounds and refusals are counted.
    pub metrics: Arc<Metrics>,
}

impl Default for MeshConfig {
    fn default() -> MeshConfig {
        MeshConfig {
            anti_entropy: Duration::from_secs(30),
            backoff: (Duration::from_millis(250), Duration::from_secs(30)),
            accept_own_scope: false,
            metrics: Arc::default(),
        }
    }
}

struct LinkEntry {
    serial: u64,
    since: Instant,
    dialed_by: NodeId,
    commands: mpsc::UnboundedSender<LinkCommand>,
    connection: quinn::Connection,
}

pub struct Mesh {
    own: NodeId,
    replica: SharedReplica,
    peers: PeerStore,
    endpoint: Endpoint,
    config: MeshConfig,
    links: Mutex<HashMap<NodeId, LinkEntry>>,
    dialers: Mutex<HashMap<NodeId, JoinHandle<()>>>,
    link_closed: Notify,
    serial: AtomicU64,
    /// UDP bytes sent to each peer over links that have closed since; a leaf lock, changed
    /// only under `links`, so that a link's bytes move from open to closed in one step.
    closed_bytes_sent: Mutex<HashMap<NodeId, u64>>,
    /// The heads last pushed to peers, per document: the next push sends what came after.
    published: Mutex<HashMap<DocId, Vec<ChangeHash>>>,
    on_change: Box<dyn Fn() + Send + Sync>,
    /// The latest refusal of each peer's changes by this node, for `meshd status`.
    refusals: Mutex<HashMap<NodeId, PeerRefusal>>,
    /// Peers whose links fail soon after they come up: the dialer backs off (see
    /// `STABLE_LINK`), and `meshd status` says why.
    failing: Mutex<HashMap<NodeId, Failing>>,
    /// Node ids refused at the handshake and warned about once already: a removed peer keeps
    /// dialing every 30 s, and one warning (plus `meshd peers pending`) says all there is.
    warned_strangers: Mutex<HashSet<NodeId>>,
    /// Every task of the mesh is spawned here, so the daemon can wait for them at shutdown.
    tasks: TaskTracker,
    /// Cancelled when the node stops: dialers end, links close.
    shutdown: CancellationToken,
}

/// The daemon's hold on the mesh's tasks: where to spawn them and when they must stop.
#[derive(Clone)]
pub struct Lifecycle {
    pub tasks: TaskTracker,
    pub shutdown: CancellationToken,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Mesh {
    /// Starts accepting peers and dialing the configured ones; every task goes to
    /// `lifecycle.tasks` and stops when `lifecycle.shutdown` is cancelled (then call `close`).
    pub fn start(
        own: NodeId,
        replica: SharedReplica,
        peers: PeerStore,
        endpoint: Endpoint,
        config: MeshConfig,
        lifecycle: Lifecycle,
        on_change: impl Fn() + Send + Sync + 'static,
    ) -> Arc<Mesh> {
        let published = replica.with(|replica| replica.all_heads().into_iter().collect());
        let mesh = Arc::new(Mesh {
            own,
            replica,
            peers,
            endpoint,
            config,
            links: Mutex::new(HashMap::new()),
            dialers: Mutex::new(HashMap::new()),
            link_closed: Notify::new(),
            serial: AtomicU64::new(0),
            closed_bytes_sent: Mutex::new(HashMap::new()),
            published: Mutex::new(published),
            on_change: Box::new(on_change),
            refusals: Mutex::new(HashMap::new()),
            failing: Mutex::new(HashMap::new()),
            warned_strangers: Mutex::new(HashSet::new()),
            tasks: lifecycle.tasks,
            shutdown: lifecycle.shutdown,
        });
        mesh.tasks.spawn(mesh.clone().accept_loop());
        mesh.peers_changed();
        mesh
    }

    /// Tells every peer this node is going away, so they see it disconnect at once instead of
    /// after the idle timeout, and waits briefly for the close to go out.
    pub async fn close(&self) {
        CloseCode::Shutdown.close_endpoint(self.endpoint.quic(), "node shutting down");
        let _ =
            tokio::time::timeout(Duration::from_secs(1), self.endpoint.quic().wait_idle()).await;
    }

    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.endpoint.local_addr().ok()
    }

    /// Re-reads the peer list: pins allowed ids, starts dialers for new peers, drops removed
    /// ones and their links.
    pub fn peers_changed(self: &Arc<Self>) {
        let peers = self.peers.list().unwrap_or_else(|e| {
            tracing::error!("cannot read the peer list: {e}");
            Vec::new()
        });
        let mut dialers = lock(&self.dialers);
        dialers.retain(|id, task| {
            let keep = peers.iter().any(|p| p.id == *id);
            if !keep {
                task.abort();
                self.endpoint.pins().revoke(*id);
                lock(&self.links).remove(id);
                tracing::info!(peer = %id, "peer removed");
            }
            keep
        });
        for peer in peers {
            self.endpoint.pins().allow(peer.id);
            dialers
                .entry(peer.id)
                .or_insert_with(|| self.spawn_dialer(peer.id));
        }
    }

    /// A dialer lives until its peer is removed (aborted) or the node stops.
    fn spawn_dialer(self: &Arc<Self>, peer: NodeId) -> JoinHandle<()> {
        let (mesh, shutdown) = (self.clone(), self.shutdown.clone());
        self.tasks.spawn(async move {
            tokio::select! {
                _ = shutdown.cancelled() => {}
                _ = mesh.dial_loop(peer) => {}
            }
        })
    }

    /// Forgets the ids refused so far, and that they were warned about: one that dials again
    /// is listed and warned about again.
    pub fn forget_refused(&self) {
        self.endpoint.pins().forget_refused();
        lock(&self.warned_strangers).clear();
    }

    /// The latest time this node refused `peer`'s changes, since the daemon started.
    pub fn last_refusal(&self, peer: &NodeId) -> Option<PeerRefusal> {
        lock(&self.refusals).get(peer).cloned()
    }

    /// Why the links to `peer` keep failing, while they do.
    pub fn link_failure(&self, peer: &NodeId) -> Option<LinkFailure> {
        lock(&self.failing).get(peer).map(|f| f.last.clone())
    }

    pub fn is_connected(&self, peer: &NodeId) -> bool {
        lock(&self.links).contains_key(peer)
    }

    /// UDP bytes this node has sent to peers since it started: what sync costs on the wire.
    pub fn bytes_sent(&self) -> u64 {
        let links = lock(&self.links);
        let open: u64 = (links.values())
            .map(|entry| entry.connection.stats().udp_tx.bytes)
            .sum();
        open + lock(&self.closed_bytes_sent).values().sum::<u64>()
    }

    /// UDP bytes this node has sent to `peer` since it started.
    pub fn bytes_sent_to(&self, peer: &NodeId) -> u64 {
        let links = lock(&self.links);
        let open = (links.get(peer)).map_or(0, |entry| entry.connection.stats().udp_tx.bytes);
        open + lock(&self.closed_bytes_sent)
            .get(peer)
            .copied()
            .unwrap_or(0)
    }

    /// Moves a closing link's bytes to the closed ones; call it holding `links`.
    fn count_closed(&self, peer: NodeId, connection: &quinn::Connection) {
        let sent = connection.stats().udp_tx.bytes;
        *lock(&self.closed_bytes_sent).entry(peer).or_default() += sent;
    }

    /// Pushes whatever changed locally since the last push to every connected peer.
    pub fn local_changes(&self) {
        let fresh = self.take_fresh();
        if fresh.is_empty() {
            return;
        }
        for entry in lock(&self.links).values() {
            for (doc, hashes) in &fresh {
                let _ = entry.commands.send(LinkCommand::Push {
                    doc: doc.clone(),
                    fresh: hashes.clone(),
                });
            }
        }
    }

    fn take_fresh(&self) -> Vec<(DocId, Vec<ChangeHash>)> {
        self.replica.with(|replica| {
            let mut published = lock(&self.published);
            let mut fresh = Vec::new();
            for doc in replica.doc_ids() {
                let heads = replica.heads(&doc);
                let before = published.get(&doc).cloned().unwrap_or_default();
                if heads != before {
                    fresh.push((
                        doc.clone(),
                        sync::SyncStore::hashes_since(replica, &doc, &before),
                    ));
                    published.insert(doc, heads);
                }
            }
            fresh
        })
    }

    /// Runs a round with `only` (or every connected peer) and waits for it; returns how many
    /// peers completed it.
    pub async fn sync_now(&self, only: Option<NodeId>, timeout: Duration) -> usize {
        let waits: Vec<oneshot::Receiver<()>> = lock(&self.links)
            .iter()
            .filter(|(id, _)| only.is_none_or(|o| o == **id))
            .filter_map(|(_, entry)| {
                let (done, wait) = oneshot::channel();
                entry
                    .commands
                    .send(LinkCommand::SyncNow(done))
                    .ok()
                    .map(|_| wait)
            })
            .collect();
        let all = futures_join(waits);
        tokio::time::timeout(timeout, all).await.unwrap_or(0)
    }

    async fn accept_loop(self: Arc<Self>) {
        while let Some(incoming) = self.endpoint.quic().accept().await {
            let mesh = self.clone();
            self.tasks.spawn(async move {
                match endpoint::accept(&mesh.endpoint, incoming).await {
                    Ok((connection, peer)) => mesh.run_link(connection, peer, peer).await,
                    Err(e) => {
                        if matches!(e, NetError::NotAllowed { .. }) {
                            mesh.config.metrics.refused(Refusal::UnknownNode);
                        }
                        mesh.log_refused(&e);
                        mesh.record_refused();
                    }
                }
            });
        }
    }

    /// Persists the ids the TLS layer refused, for `meshd peers pending`.
    /// A stranger's first attempt is a warning; its next ones (a removed peer dials every
    /// 30 s for good) are debug lines.
    fn log_refused(&self, error: &NetError) {
        let repeated = match error {
            NetError::NotAllowed { id, .. } => !lock(&self.warned_strangers).insert(*id),
            _ => false,
        };
        if repeated {
            tracing::debug!("refused a connection again: {error}");
        } else {
            tracing::warn!("refused a connection: {error}");
        }
    }

    fn record_refused(&self) {
        for refused in self.endpoint.pins().pending() {
            let record = crate::peers::Refused {
                id: refused.id,
                address: refused.addr.map(|a| a.to_string()).unwrap_or_default(),
                last_seen: refused.last_seen,
                attempts: refused.attempts,
            };
            if let Err(e) = self.peers.record_refused(&record) {
                tracing::error!("cannot record a refused peer: {e}");
            }
        }
    }

    async fn dial_loop(self: Arc<Self>, peer: NodeId) {
        let (first, last) = self.config.backoff;
        let mut wait = first;
        loop {
            if self.is_connected(&peer) {
                let _ =
                    tokio::time::timeout(Duration::from_secs(5), self.link_closed.notified()).await;
                continue;
            }
            let retry_at = lock(&self.failing).get(&peer).map(|f| f.retry_at);
            if let Some(at) = retry_at.filter(|at| *at > Instant::now()) {
                // A link that failed early would fail again at once: wait, then look again (the
                // peer may have connected meanwhile).
                tokio::time::sleep_until(at.into()).await;
                continue;
            }
            match self.dial(peer).await {
                Some(connection) => {
                    wait = first;
                    self.run_link(connection, peer, self.own).await;
                }
                None => {
                    tokio::time::sleep(jitter(wait)).await;
                    wait = (wait * 2).min(last);
                }
            }
        }
    }

    /// Tries each address of the peer in order.
    async fn dial(&self, peer: NodeId) -> Option<quinn::Connection> {
        let record: Peer = self.peers.get(&peer).ok().flatten()?;
        for address in &record.addresses {
            let addrs = match tokio::net::lookup_host(address.as_str()).await {
                Ok(addrs) => addrs.collect::<Vec<_>>(),
                Err(e) => {
                    tracing::debug!(%peer, %address, "cannot resolve: {e}");
                    continue;
                }
            };
            for addr in addrs {
                match endpoint::connect(&self.endpoint, addr, peer).await {
                    Ok((connection, _)) => return Some(connection),
                    Err(e) => tracing::debug!(%peer, %addr, "dial failed: {e}"),
                }
            }
        }
        None
    }

    /// Registers and drives one link. Two nodes may dial each other at once; both keep the
    /// connection dialed by the smaller id, so they agree on one.
    async fn run_link(
        self: &Arc<Self>,
        connection: quinn::Connection,
        peer: NodeId,
        dialed_by: NodeId,
    ) {
        let Some(record) = self.peers.get(&peer).ok().flatten() else {
            CloseCode::NotAPeer.close(&connection, "not a peer");
            return;
        };
        let (commands, receiver) = mpsc::unbounded_channel();
        let serial = self.serial.fetch_add(1, Ordering::Relaxed);
        let entry = LinkEntry {
            serial,
            since: Instant::now(),
            dialed_by,
            commands,
            connection: connection.clone(),
        };
        if !self.register(peer, entry) {
            CloseCode::Duplicate.close(&connection, "duplicate connection");
            return;
        }
        tracing::info!(%peer, name = ?record.name, "connected");
        let started = Instant::now();
        let session = Session::new(
            peer.compact(),
            self.access(&record),
            sync::Config::default(),
        );
        let dialer = dialed_by == self.own;
        // The link runs as a task of its own, so that a panic in it (a bug) ends that link
        // only: the entry below is still removed and the dialer reconnects.
        let (mesh, anti_entropy) = (self.clone(), self.config.anti_entropy);
        let link = self.tasks.spawn(async move {
            let host = mesh.as_ref();
            link::run(
                host,
                connection,
                session,
                peer,
                dialer,
                anti_entropy,
                receiver,
            )
            .await
        });
        let ended = link.await;
        let lasted = started.elapsed();
        match ended {
            Ok(Ok(())) => tracing::info!(%peer, "disconnected"),
            Ok(Err(e)) if e.is_orderly_close() => tracing::info!(%peer, "disconnected: {e}"),
            Ok(Err(e)) if lasted >= STABLE_LINK => tracing::warn!(%peer, "link closed: {e}"),
            Ok(Err(e)) => self.link_failed(peer, e.to_string()),
            Err(e) => tracing::error!(%peer, "the link failed ({e}); this is a bug, it reconnects"),
        }
        let mut links = lock(&self.links);
        if links.get(&peer).is_some_and(|e| e.serial == serial) {
            if let Some(entry) = links.remove(&peer) {
                self.count_closed(peer, &entry.connection);
            }
        }
        drop(links);
        self.link_closed.notify_waiters();
    }

    /// A link to `peer` failed soon after it came up: the next connection waits, twice as long
    /// as the last up to the dialers' cap. Warned about once per reason; the same reason again
    /// is a debug line, and `meshd status` shows it under the peer.
    fn link_failed(&self, peer: NodeId, reason: String) {
        let (first, last) = self.config.backoff;
        let mut failing = lock(&self.failing);
        let failures = failing.get(&peer).map_or(1, |f| f.last.failures + 1);
        let wait = jitter(first.saturating_mul(1 << (failures - 1).min(16)).min(last));
        let repeated = failing.get(&peer).is_some_and(|f| f.last.reason == reason);
        if repeated {
            tracing::debug!(%peer, failures, "link closed again: {reason}");
        } else {
            tracing::warn!(
                %peer,
                "link closed: {reason}; reconnecting with backoff (up to {} s) while it keeps \
                 failing. `meshd status` shows the reason under the peer; if it persists, read \
                 the peer's log and check both nodes run the same meshd version",
                last.as_secs()
            );
        }
        let last = LinkFailure {
            at: unix_now(),
            reason,
            failures,
        };
        let retry_at = Instant::now() + wait;
        failing.insert(peer, Failing { last, retry_at });
    }

    /// Two nodes that dial each other at once both keep the connection dialed by the smaller
    /// id. Any other second connection means the peer came back (say, after a crash) while
    /// the old connection has not timed out yet: the new one replaces it.
    fn register(&self, peer: NodeId, entry: LinkEntry) -> bool {
        let mut links = lock(&self.links);
        let preferred = self.own.min(peer);
        if let Some(existing) = links.get(&peer) {
            let racing = existing.since.elapsed() < DIAL_RACE_WINDOW;
            if racing && existing.dialed_by != entry.dialed_by && existing.dialed_by == preferred {
                return false;
            }
        }
        if let Some(replaced) = links.insert(peer, entry) {
            self.count_closed(peer, &replaced.connection);
            CloseCode::Replaced.close(&replaced.connection, "replaced by a newer connection");
        }
        true
    }

    fn access(&self, record: &Peer) -> sync::Access {
        let (access, peer, own) = (record.access.clone(), record.id, self.own);
        let write = access.clone();
        let own_scope = self
            .config
            .accept_own_scope
            .then(|| DocId::Memory(Scope::Node(own.compact())));
        sync::Access::new(
            move |doc| access.may_read(doc, &peer),
            move |doc| write.may_write(doc, &peer, &own) || own_scope.as_ref() == Some(doc),
        )
    }
}

impl LinkHost for Mesh {
    fn with_store<T>(&self, f: impl FnOnce(&mut Replica) -> T) -> T {
        self.replica.with(f)
    }

    /// Gossip: what one peer sent goes on to every other connected peer.
    fn applied(&self, from: NodeId, applied: Vec<Applied>) {
        self.replica.with(|replica| {
            let mut published = lock(&self.published);
            for doc in applied.iter().map(|a| &a.doc) {
                published.insert(doc.clone(), replica.heads(doc));
            }
        });
        for (peer, entry) in lock(&self.links).iter() {
            if *peer == from {
                continue;
            }
            for a in &applied {
                let _ = entry.commands.send(LinkCommand::Push {
                    doc: a.doc.clone(),
                    fresh: a.hashes.clone(),
                });
            }
        }
        (self.on_change)();
    }

    fn refused(&self, peer: NodeId, refusal: &sync::Refusal) {
        if refusal.by_peer {
            return;
        }
        (self.config.metrics).refused(Refusal::of_changes(&refusal.reason));
        let last = PeerRefusal {
            at: unix_now(),
            doc: refusal.doc.clone(),
            reason: refusal.reason.clone(),
        };
        lock(&self.refusals).insert(peer, last);
    }

    fn round_done(&self, peer: NodeId, took: Duration) {
        tracing::debug!(%peer, ms = took.as_millis() as u64, "sync round complete");
        self.config.metrics.sync_round(peer);
        let stable = lock(&self.links)
            .get(&peer)
            .is_some_and(|link| link.since.elapsed() >= STABLE_LINK);
        if stable {
            // Rounds complete on a link that stayed up: whatever failed before is over.
            lock(&self.failing).remove(&peer);
        }
        if let Err(e) = self.peers.record_sync(&peer, unix_now()) {
            tracing::error!("cannot record the sync time: {e}");
        }
    }
}

/// Waits for every receiver; counts those that completed.
async fn futures_join(waits: Vec<oneshot::Receiver<()>>) -> usize {
    let mut done = 0;
    for wait in waits {
        if wait.await.is_ok() {
            done += 1;
        }
    }
    done
}

/// ±25 % so that nodes restarted together do not dial in lockstep.
fn jitter(wait: Duration) -> Duration {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let factor = 0.75 + f64::from(nanos % 1000) / 2000.0;
    wait.mul_f64(factor)
}
