//! The node's place in the mesh: one link per connected peer, a dialer per configured peer,
//! the accept loop, live push of local changes and gossip of received ones.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use automerge::ChangeHash;
use tokio::sync::{mpsc, oneshot, Notify};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::close::CloseCode;
use super::endpoint::{self, Endpoint};
use super::error::TIMED_OUT;
use super::join::{self, Admitted, JoinError, JoinReply, JoinRequest};
use super::link::{self, LinkCommand, LinkHost, PeerOpening};
use super::tls::MISDIALED;
use super::{unix_now, NetError};
use crate::invite::{HeldJoin, Redeemed, Ticket};
use crate::metrics::{Metrics, Refusal};
use crate::model::access::Access;
use crate::model::{DocId, NodeId, Scope};
use crate::peers::{
    validate_address, AddressFailure, DialFailure, LinkFailure, LinkState, Peer, PeerError,
    PeerRefusal, PeerStore, Seen,
};
use crate::replica::{Replica, SharedReplica};
use crate::sync::{self, Applied, Session};

/// Connections from one peer this close together are a simultaneous dial, not a reconnect.
/// The least time between two pushes of this node's own writes to a peer (`push_pace`): a
/// burst of writes reaches a peer at most this late, in a push per interval.
pub const PUSH_PACE: Duration = Duration::from_millis(250);
const DIAL_RACE_WINDOW: Duration = Duration::from_secs(2);
/// A link that fails sooner than this after it came up failed on something that a new
/// connection meets again at once (a refusal, a round that cannot complete): the next one
/// waits, longer each time. A link up this long ended for reasons of its own.
const STABLE_LINK: Duration = Duration::from_secs(60);
/// A peer's clock this far off ours is logged: last-writer-wins then orders its writes and
/// ours by the clocks' error rather than by when they were made.
const CLOCK_SKEW_WARNING: Duration = Duration::from_secs(10);

/// The latest failed dial to a peer, and whether every address failed for a reason that
/// lies with the address (kept while the peer is connected by dialing in: the address here is
/// still wrong) or some failed for a passing reason (the peer was stopping: forgotten once
/// a link comes up).
struct Unreachable {
    failure: DialFailure,
    about_the_addresses: bool,
}

/// What was warned about once already, so repeats are debug lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Warned {
    /// A node id refused at the handshake: a removed peer keeps dialing every 30 s.
    Stranger(NodeId),
    /// A host whose node dials this address expecting another node.
    Misdialed(IpAddr),
}

/// Things warned about kept at most.
const MAX_WARNED: usize = 1024;

/// How long one dial may take: QUIC's own limit is the idle timeout (30 s), and a wrong port
/// or a host that is down answers nothing at all.
const DIAL_TIMEOUT: Duration = Duration::from_secs(10);

/// Join exchanges answered at once: each holds a stranger's connection for up to
/// `join::EXCHANGE_TIMEOUT`, so a flood of them while an invite is open stays bounded.
const MAX_JOINS_IN_FLIGHT: usize = 8;

/// One of the `MAX_JOINS_IN_FLIGHT` turns, given back on drop.
struct JoinTurn<'a>(&'a AtomicUsize);

impl<'a> JoinTurn<'a> {
    fn take(in_flight: &'a AtomicUsize) -> Option<JoinTurn<'a>> {
        let taken = in_flight.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            (n < MAX_JOINS_IN_FLIGHT).then_some(n + 1)
        });
        // Built only when a turn was taken: one dropped after a refusal would give back a
        // turn it never had.
        taken.is_ok().then(|| JoinTurn(in_flight))
    }
}

impl Drop for JoinTurn<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A peer's failing links, and when the dialer may connect again.
struct Failing {
    last: LinkFailure,
    retry_at: Instant,
}

#[derive(Debug, Clone)]
pub struct MeshConfig {
    /// How often each link runs an anti-entropy round.
    pub anti_entropy: Duration,
    /// At least this long between two pushes of this node's own writes to a peer
    /// (`push_pace`).
    pub push_pace: Duration,
    /// First and last wait between failed dials; each failure doubles it, with jitter.
    pub backoff: (Duration, Duration),
    /// Accept this node's own node scope from peers, which no peer may write otherwise: a
    /// node repairing its store takes it back (`meshd run --repair`).
    pub accept_own_scope: bool,
    /// This node's name (`[node] name`), offered to nodes that join it or that it joins.
    pub name: Option<String>,
    /// Where sync rounds and refusals are counted.
    pub metrics: Arc<Metrics>,
    /// Hold valid joins for `meshd peers approve` (`[invites] approve`).
    pub approve_joins: bool,
}

/// How long a stopping node waits for its peers to receive the writes its links held back.
const GOODBYE_WAIT: Duration = Duration::from_secs(1);

impl Default for MeshConfig {
    fn default() -> MeshConfig {
        MeshConfig {
            anti_entropy: Duration::from_secs(30),
            push_pace: PUSH_PACE,
            backoff: (Duration::from_millis(250), Duration::from_secs(30)),
            accept_own_scope: false,
            name: None,
            metrics: Arc::default(),
            approve_joins: false,
        }
    }
}

struct LinkEntry {
    serial: u64,
    since: Instant,
    since_unix: u64,
    dialed_by: NodeId,
    commands: mpsc::UnboundedSender<LinkCommand>,
    connection: quinn::Connection,
    /// What the peer said of itself when it last opened a round on this link.
    opened: Option<PeerOpening>,
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
    published: Mutex<Published>,
    /// Local writes the publisher (`publish_loop`) has not looked at yet.
    written: Notify,
    on_change: Box<dyn Fn() + Send + Sync>,
    /// The latest refusal of each peer's changes by this node, for `meshd status`.
    refusals: Mutex<HashMap<NodeId, PeerRefusal>>,
    /// Peers whose links fail soon after they come up: the dialer backs off (see
    /// `STABLE_LINK`), and `meshd status` says why.
    failing: Mutex<HashMap<NodeId, Failing>>,
    /// Refusals warned about once already: a removed peer keeps dialing every 30 s, and one
    /// warning (plus `meshd peers pending`) says all there is.
    warned: Mutex<HashSet<Warned>>,
    /// Why the latest dial to each peer found no address that worked, until one does.
    unreachable: Mutex<HashMap<NodeId, Unreachable>>,
    joins_in_flight: AtomicUsize,
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

/// The heads last pushed to peers, and the replica's mark (`Replica::moved_since`) when they
/// were taken.
struct Published {
    heads: HashMap<DocId, Vec<ChangeHash>>,
    mark: u64,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
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
        let published = replica.with(|replica| Published {
            heads: replica.all_heads().into_iter().collect(),
            // The first look goes over every document once, and finds them as published.
            mark: 0,
        });
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
            written: Notify::new(),
            on_change: Box::new(on_change),
            refusals: Mutex::new(HashMap::new()),
            failing: Mutex::new(HashMap::new()),
            warned: Mutex::new(HashSet::new()),
            unreachable: Mutex::new(HashMap::new()),
            joins_in_flight: AtomicUsize::new(0),
            tasks: lifecycle.tasks,
            shutdown: lifecycle.shutdown,
        });
        mesh.tasks.spawn(mesh.clone().accept_loop());
        mesh.tasks.spawn(mesh.clone().publish_loop());
        mesh.peers_changed();
        mesh
    }

    /// Tells every peer this node is going away, so they see it disconnect at once instead of
    /// after the idle timeout, and waits briefly for the close to go out. First, each link
    /// pushes the writes its pace still holds back and waits (at most `GOODBYE_WAIT` in all)
    /// until its peer has them: a write acknowledged just before a stop reaches the peers now,
    /// not when this node is back.
    pub async fn close(self: &Arc<Self>) {
        // The writes acknowledged since the publisher last looked go into the last pushes.
        let mesh = self.clone();
        let _ = tokio::task::spawn_blocking(move || mesh.publish()).await;
        let goodbyes: Vec<oneshot::Receiver<()>> = lock(&self.links)
            .values()
            .map(|entry| {
                let (done, wait) = oneshot::channel();
                let _ = entry.commands.send(LinkCommand::Goodbye(done));
                wait
            })
            .collect();
        let all_received = async {
            for goodbye in goodbyes {
                let _ = goodbye.await;
            }
        };
        if tokio::time::timeout(GOODBYE_WAIT, all_received)
            .await
            .is_err()
        {
            tracing::debug!(
                "a peer did not take the last pushes in time; it gets them at the next connection"
            );
        }
        CloseCode::Shutdown.close_endpoint(self.endpoint.quic(), "node shutting down");
        let _ =
            tokio::time::timeout(Duration::from_secs(1), self.endpoint.quic().wait_idle()).await;
    }

    /// This node's name (`[node] name`).
    pub fn name(&self) -> Option<String> {
        self.config.name.clone()
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
                lock(&self.unreachable).remove(id);
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
        drop(dialers);
        let open = self.peers.invites().any_open(unix_now());
        let open = open.unwrap_or_else(|e| {
            tracing::error!("cannot read the invites, so no one can join now: {e}");
            false
        });
        self.endpoint.pins().welcome_joiners(open);
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
        lock(&self.warned).clear();
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

    /// Local writes happened: the publisher pushes them to every connected peer. Returns at
    /// once, as it runs on the runtime's threads after each write; the publisher waits for
    /// the replica on the blocking pool, and takes the writes of a burst together.
    pub fn local_changes(&self) {
        self.written.notify_one();
    }

    /// Pushes what local writes changed, until the node stops (`close` pushes the last).
    async fn publish_loop(self: Arc<Self>) {
        loop {
            tokio::select! {
                _ = self.shutdown.cancelled() => return,
                _ = self.written.notified() => {}
            }
            let mesh = self.clone();
            if let Err(error) = tokio::task::spawn_blocking(move || mesh.publish()).await {
                tracing::error!(%error, "pushing local writes failed; peers get them at the next sync round");
            }
        }
    }

    /// Pushes whatever changed locally since the last push to every connected peer.
    fn publish(&self) {
        let fresh = self.take_fresh();
        if fresh.is_empty() {
            return;
        }
        for entry in lock(&self.links).values() {
            for (doc, hashes) in &fresh {
                let _ = entry.commands.send(LinkCommand::Push {
                    doc: doc.clone(),
                    fresh: hashes.clone(),
                    relayed: false,
                });
            }
        }
    }

    /// The changes made since the last push, by document. Looks only at the documents whose
    /// heads moved since it last looked: a scope has hundreds of bucket documents, and this
    /// runs after every burst of writes.
    fn take_fresh(&self) -> Vec<(DocId, Vec<ChangeHash>)> {
        self.replica.with(|replica| {
            let mut guard = lock(&self.published);
            let (moved, mark) = replica.moved_since(guard.mark);
            guard.mark = mark;
            let published = &mut guard.heads;
            let mut fresh = Vec::new();
            for doc in moved {
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
                    Ok((connection, peer)) if endpoint::is_join(&connection) => {
                        mesh.welcome(connection, peer).await
                    }
                    Ok((connection, peer)) if !mesh.endpoint.pins().is_allowed(peer) => {
                        // Let through the handshake because an invite is open, but it came to
                        // link, not to join.
                        let remote = connection.remote_address();
                        CloseCode::NotAPeer.close(&connection, "not a peer");
                        mesh.refuse_stranger(
                            peer,
                            remote,
                            "it is not in the peer list and presented no invite",
                        );
                    }
                    Ok((connection, peer)) => mesh.run_link(connection, peer, peer).await,
                    Err(e) if e.is_given_up_by_dialer() => {
                        tracing::debug!(
                            "a dialer gave its connection up during the handshake: {e}"
                        );
                    }
                    // A peer that saw this node's goodbye dials again at once; the closing
                    // endpoint drops that handshake, and nothing is wrong.
                    Err(e) if mesh.shutdown.is_cancelled() => {
                        tracing::debug!("a connection arrived while stopping: {e}");
                    }
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
        let (warned, shown) = match error {
            NetError::NotAllowed { id, .. } => (Some(Warned::Stranger(*id)), error.to_string()),
            NetError::RefusedByPeer { addr, reason, .. } if reason.contains(MISDIALED) => (
                Some(Warned::Misdialed(addr.ip())),
                format!(
                    "a node at {addr} dialed this node's address expecting another node id: its \
                     peer list has this address for a different node (`meshd status` there \
                     shows which)"
                ),
            ),
            _ => (None, error.to_string()),
        };
        if warned.is_some_and(|warned| !self.warn_once(warned)) {
            tracing::debug!("refused a connection again: {shown}");
        } else {
            tracing::warn!("refused a connection: {shown}");
        }
    }

    /// Whether `what` is new: the first time is a warning, the next ones debug lines. Anyone
    /// can make a new key per attempt, so the record is bounded.
    fn warn_once(&self, what: Warned) -> bool {
        let mut warned = lock(&self.warned);
        if warned.len() >= MAX_WARNED {
            warned.clear();
        }
        warned.insert(what)
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

    /// A stranger let through the handshake while an invite is open: it may present one,
    /// and nothing else.
    async fn welcome(self: &Arc<Self>, connection: quinn::Connection, joiner: NodeId) {
        let remote = connection.remote_address();
        let Some(_turn) = JoinTurn::take(&self.joins_in_flight) else {
            CloseCode::Busy.close(&connection, "too many joins at once; try again");
            tracing::debug!(%joiner, %remote, "turned a join away: {MAX_JOINS_IN_FLIGHT} already in flight");
            return;
        };
        let decide =
            |request| tokio::task::block_in_place(|| self.decide_join(joiner, remote, request));
        let refusal = match join::answer(connection, decide).await {
            Ok(JoinReply::Accepted { .. }) => {
                self.peers_changed();
                return;
            }
            Ok(JoinReply::Held { .. }) => return,
            Ok(JoinReply::Refused { reason }) => reason,
            Err(e) => format!("it presented no invite ({e})"),
        };
        if self.endpoint.pins().is_allowed(joiner) {
            // A peer re-joining with a bad ticket is still a peer, not a stranger to list.
            tracing::warn!(peer = %joiner, %remote, "refused a join from a peer: {refusal}");
            return;
        }
        self.refuse_stranger(joiner, remote, &refusal);
    }

    /// Records a node refused after its handshake, warned about once, as `log_refused` does.
    fn refuse_stranger(&self, id: NodeId, remote: SocketAddr, why: &str) {
        if self.warn_once(Warned::Stranger(id)) {
            tracing::warn!(node = %id, %remote, "refused a node: {why}; `meshd peers pending` lists it");
        } else {
            tracing::debug!(node = %id, %remote, "refused a node again: {why}");
        }
        self.endpoint.pins().refuse(id, Some(remote), unix_now());
        self.record_refused();
    }

    /// Redeems the invite `joiner` presented and adds it as a peer with the access offered.
    fn decide_join(&self, joiner: NodeId, remote: SocketAddr, request: JoinRequest) -> JoinReply {
        let redeemed = self.peers.invites().redeem(
            request.invite,
            &request.proof,
            joiner,
            self.own,
            unix_now(),
        );
        let invite = match redeemed {
            Ok(Ok(Redeemed::First(invite))) => invite,
            Ok(Ok(Redeemed::Again(_))) => {
                // Decided already: what the operator changed since (access, removal) stands.
                let held = self.peers.invites().held_join(&joiner).ok().flatten();
                return match (self.peers.get(&joiner).ok().flatten(), held) {
                    (Some(peer), _) => JoinReply::Accepted {
                        access: peer.access,
                    },
                    (None, Some(join)) => JoinReply::Held {
                        access: join.access,
                    },
                    (None, None) => JoinReply::Refused {
                        reason: "this node used this ticket before and was removed from the \
                                 inviting node's peers since; ask for a new ticket"
                            .into(),
                    },
                };
            }
            Ok(Err(refusal)) => {
                return JoinReply::Refused {
                    reason: refusal.to_string(),
                }
            }
            Err(e) => {
                tracing::error!(%joiner, "cannot read the invites to answer a join: {e}");
                return JoinReply::Refused {
                    reason: "the inviting node cannot read its invites; its log says why".into(),
                };
            }
        };
        let peer = Peer {
            id: joiner,
            name: invite
                .name
                .clone()
                .or(join::suggested_name(request.name.clone())),
            addresses: joiner_addresses(remote, &request),
            access: invite.access.clone(),
            last_sync: None,
        };
        if self.config.approve_joins {
            return self.hold_join(peer);
        }
        if let Err(e) = self.add_peer_named_if_free(peer.clone()) {
            tracing::error!(%joiner, "cannot add a node that joined with a valid invite: {e}");
            return JoinReply::Refused {
                reason: format!(
                    "the inviting node could not add this node ({e}); ask for a new ticket"
                ),
            };
        }
        // Pinned before the answer leaves: the joiner links back as soon as it reads it, and
        // `peers_changed` runs only once the exchange has closed.
        self.endpoint.pins().allow(joiner);
        tracing::info!(peer = %peer.label(), id = %joiner, addresses = ?peer.addresses, "a node joined with an invite");
        JoinReply::Accepted {
            access: invite.access,
        }
    }

    /// Keeps a valid join for the operator (`[invites] approve`): `meshd peers approve` adds
    /// the peer, which this node then dials.
    fn hold_join(&self, peer: Peer) -> JoinReply {
        let held = HeldJoin {
            id: peer.id,
            name: peer.name,
            addresses: peer.addresses,
            access: peer.access,
            at: unix_now(),
        };
        if let Err(e) = self.peers.invites().hold(&held) {
            tracing::error!(joiner = %held.id, "cannot hold a join for approval: {e}");
            return JoinReply::Refused {
                reason: format!("the inviting node could not keep this join ({e}); ask again"),
            };
        }
        tracing::info!(joiner = %held.id, name = ?held.name, addresses = ?held.addresses, "a join is held for approval: `meshd peers approve {}` admits it", held.id);
        JoinReply::Held {
            access: held.access,
        }
    }

    /// A node announced itself on the LAN (`net::discovery`). A known peer announcing an
    /// address its record lacks gets the announced ones, once a connection at one of them
    /// proved its id (anyone on the LAN may announce anything): its live link's address, or a
    /// dial made now, which then serves as the link. Strangers are only listed, never paired.
    pub async fn seen_on_lan(self: Arc<Self>, seen: Seen) {
        let Some(record) = self.peers.get(&seen.id).ok().flatten() else {
            return;
        };
        if seen.addresses.iter().all(|a| record.addresses.contains(a)) {
            return;
        }
        let live = lock(&self.links)
            .get(&seen.id)
            .map(|link| link.connection.remote_address());
        let proven = match live {
            Some(remote) => seen.addresses.contains(&remote.to_string()),
            None => self.probe(&seen).await,
        };
        if !proven {
            tracing::debug!(peer = %record.label(), addresses = ?seen.addresses, "announced on the LAN at addresses no connection proved");
            return;
        }
        let addresses = moved_addresses(&seen.addresses, &record.addresses);
        let moved = Peer {
            addresses: addresses.clone(),
            ..record.clone()
        };
        match tokio::task::block_in_place(|| self.peers.add(&self.own, moved)) {
            Ok(_) => {
                tracing::info!(peer = %record.label(), from = ?record.addresses, to = ?addresses, "peer found at new addresses on the LAN; its record follows")
            }
            Err(e) => {
                tracing::warn!(peer = %record.label(), "cannot record the peer's new addresses: {e}")
            }
        }
    }

    /// Dials `seen` at each address it announced: a connection proves its id, and becomes
    /// its link.
    async fn probe(self: &Arc<Self>, seen: &Seen) -> bool {
        for address in &seen.addresses {
            let Ok(addr) = address.parse::<SocketAddr>() else {
                continue;
            };
            let dialed = tokio::time::timeout(
                DIAL_TIMEOUT,
                endpoint::connect(&self.endpoint, addr, seen.id),
            );
            if let Ok(Ok((connection, _))) = dialed.await {
                lock(&self.unreachable).remove(&seen.id);
                let (mesh, peer) = (self.clone(), seen.id);
                self.tasks
                    .spawn(async move { mesh.run_link(connection, peer, mesh.own).await });
                return true;
            }
        }
        false
    }

    /// Adds `peer`; if its name is taken, without the name.
    fn add_peer_named_if_free(&self, peer: Peer) -> Result<(), PeerError> {
        self.peers.add_named_if_free(&self.own, peer).map(|_| ())
    }

    /// Joins the node that made `ticket`, granting it `access` here. The inviter is in the
    /// peer list (and pinned) while the exchange runs, so that its first connection back is
    /// taken; it is put back as it was if the join fails, and kept while the join is held for
    /// approval (the inviter dials it once approved). Returns the inviter as added.
    pub async fn join(
        self: &Arc<Self>,
        ticket: &Ticket,
        access: Access,
        name: Option<String>,
    ) -> Result<(Peer, Admitted), JoinError> {
        let known = self.peers.get(&ticket.inviter).ok().flatten();
        let peer = Peer {
            id: ticket.inviter,
            name: name
                .or_else(|| known.as_ref().and_then(|p| p.name.clone()))
                .or_else(|| join::suggested_name(ticket.name.clone())),
            addresses: ticket.addresses.clone(),
            access,
            last_sync: known.as_ref().and_then(|p| p.last_sync),
        };
        let add = tokio::task::block_in_place(|| self.add_peer_named_if_free(peer.clone()));
        add.map_err(|e| JoinError::Refused(format!("cannot add the inviting node here: {e}")))?;
        self.endpoint.pins().allow(ticket.inviter);
        let request = JoinRequest {
            invite: ticket.invite,
            proof: Vec::new(),
            listen_port: self.local_addr().map(|a| a.port()),
            addresses: Vec::new(),
            name: self.config.name.clone(),
        };
        let joined = join::join(&self.endpoint, ticket, request).await;
        if joined.is_err() {
            let restore = tokio::task::block_in_place(|| match known {
                Some(known) => self.peers.add(&self.own, known).map(|_| ()),
                None => self.peers.remove(&ticket.inviter.to_string()).map(|_| ()),
            });
            if let Err(undo) = restore {
                tracing::error!(
                    "cannot undo the half-made pairing with {}: {undo}; remove it with `meshd peers rm`",
                    ticket.inviter
                );
            }
        }
        self.peers_changed();
        let added = self
            .peers
            .get(&ticket.inviter)
            .ok()
            .flatten()
            .unwrap_or(peer);
        Ok((added, joined?))
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

    /// Tries each address of the peer in order; when none works, keeps why for `meshd status`.
    async fn dial(&self, peer: NodeId) -> Option<quinn::Connection> {
        let record: Peer = self.peers.get(&peer).ok().flatten()?;
        let mut failures = Vec::new();
        let mut about_the_addresses = true;
        for address in &record.addresses {
            let addrs = match tokio::net::lookup_host(address.as_str()).await {
                Ok(addrs) => addrs.collect::<Vec<_>>(),
                Err(e) => {
                    tracing::debug!(peer = record.label(), %address, "cannot resolve: {e}");
                    failures.push(AddressFailure {
                        address: address.clone(),
                        reason: format!("cannot resolve the host name: {e}"),
                    });
                    continue;
                }
            };
            for addr in addrs {
                let dialed = tokio::time::timeout(
                    DIAL_TIMEOUT,
                    endpoint::connect(&self.endpoint, addr, peer),
                );
                let reason = match dialed.await {
                    Ok(Ok((connection, _))) => {
                        lock(&self.unreachable).remove(&peer);
                        return Some(connection);
                    }
                    Ok(Err(e)) if e.is_dial_race() => {
                        lock(&self.unreachable).remove(&peer);
                        return None;
                    }
                    Ok(Err(e)) => {
                        about_the_addresses &= e.is_about_the_address();
                        e.dial_reason()
                    }
                    Err(_) => TIMED_OUT.to_string(),
                };
                tracing::debug!(peer = record.label(), %addr, "dial failed: {reason}");
                let shown = match address.parse::<SocketAddr>() {
                    Ok(_) => address.clone(),
                    Err(_) => format!("{address} ({addr})"),
                };
                failures.push(AddressFailure {
                    address: shown,
                    reason,
                });
            }
        }
        let failure = DialFailure {
            at: unix_now(),
            addresses: failures,
        };
        let unreachable = Unreachable {
            failure,
            about_the_addresses,
        };
        lock(&self.unreachable).insert(peer, unreachable);
        None
    }

    /// A link is up: a dial failure for a passing reason is over; one about the addresses
    /// stays (the peer may have dialed in while its address here is still wrong).
    fn forget_passing_dial_failure(&self, peer: NodeId) {
        let mut unreachable = lock(&self.unreachable);
        if unreachable
            .get(&peer)
            .is_some_and(|u| !u.about_the_addresses)
        {
            unreachable.remove(&peer);
        }
    }

    /// How logs name a peer: its name, or its id when it has none.
    fn label(&self, peer: &NodeId) -> String {
        match self.peers.get(peer) {
            Ok(Some(record)) => record.label(),
            _ => peer.to_string(),
        }
    }

    /// Why the latest dial to `peer` found no address that worked, until one does.
    pub fn dial_failure(&self, peer: &NodeId) -> Option<DialFailure> {
        lock(&self.unreachable)
            .get(peer)
            .map(|unreachable| unreachable.failure.clone())
    }

    /// The live link to `peer`: since when, and its round-trip time.
    pub fn link_state(&self, peer: &NodeId) -> Option<LinkState> {
        lock(&self.links).get(peer).map(|entry| LinkState {
            since: entry.since_unix,
            rtt_ms: entry.connection.rtt().as_millis() as u64,
            clock_offset_ms: entry.opened.and_then(|opened| opened.clock_offset_ms),
            changes_awaited: entry.opened.map(|opened| opened.waiting),
        })
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
            since_unix: unix_now(),
            dialed_by,
            commands,
            connection: connection.clone(),
            opened: None,
        };
        if !self.register(peer, entry) {
            CloseCode::Duplicate.close(&connection, "duplicate connection");
            return;
        }
        self.forget_passing_dial_failure(peer);
        let label = record.label();
        tracing::info!(peer = %label, "connected");
        let started = Instant::now();
        let mut session = Session::new(
            peer.compact(),
            self.access(&record),
            sync::Config::default(),
        );
        if let Some(peer_key) = super::tls::peer_public_key(&connection) {
            session = session.with_keys(self.replica.with(|r| r.public_key()), peer_key);
        }
        let dialer = dialed_by == self.own;
        // The link runs as a task of its own, so that a panic in it (a bug) ends that link
        // only: the entry below is still removed and the dialer reconnects.
        let mesh = self.clone();
        let timing = link::Timing {
            anti_entropy: self.config.anti_entropy,
            push_pace: self.config.push_pace,
        };
        let link = self.tasks.spawn(async move {
            let host = mesh.as_ref();
            link::run(host, connection, session, peer, dialer, timing, receiver).await
        });
        let ended = link.await;
        let lasted = started.elapsed();
        match ended {
            Ok(Ok(())) => tracing::info!(peer = %label, "disconnected"),
            Ok(Err(e)) if e.is_orderly_close() => {
                tracing::info!(peer = %label, "disconnected: {e}")
            }
            Ok(Err(e)) if lasted >= STABLE_LINK => {
                tracing::warn!(peer = %label, "link closed: {e}")
            }
            Ok(Err(e)) => self.link_failed(peer, e.to_string()),
            Err(e) => {
                tracing::error!(peer = %label, "the link failed ({e}); this is a bug, it reconnects")
            }
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
            tracing::debug!(peer = %self.label(&peer), failures, "link closed again: {reason}");
        } else {
            tracing::warn!(
                peer = %self.label(&peer),
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
            .then(|| Scope::Node(own.compact()));
        sync::Access::new(
            move |doc| access.may_read(doc, &peer),
            move |doc| {
                write.may_write(doc, &peer, &own)
                    || own_scope.is_some() && doc.scope() == own_scope.as_ref()
            },
        )
    }
}

/// Whether a clock offset is worth a warning.
fn skewed(offset_ms: Option<i64>) -> bool {
    offset_ms
        .is_some_and(|offset| u128::from(offset.unsigned_abs()) > CLOCK_SKEW_WARNING.as_millis())
}

impl LinkHost for Mesh {
    fn label(&self, peer: &NodeId) -> String {
        Mesh::label(self, peer)
    }

    fn with_store<T>(&self, f: impl FnOnce(&mut Replica) -> T) -> T {
        self.replica.with(f)
    }

    /// Gossip: what one peer sent goes on to every other connected peer.
    fn applied(&self, from: NodeId, applied: Vec<Applied>) {
        self.replica.with(|replica| {
            let mut published = lock(&self.published);
            for doc in applied.iter().map(|a| &a.doc) {
                published.heads.insert(doc.clone(), replica.heads(doc));
            }
        });
        for (peer, entry) in lock(&self.links).iter() {
            if *peer == from {
                continue;
            }
            for a in &applied {
                let fresh = a.to_forward(peer);
                if !fresh.is_empty() {
                    let _ = entry.commands.send(LinkCommand::Push {
                        doc: a.doc.clone(),
                        fresh,
                        relayed: true,
                    });
                }
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
        tracing::debug!(peer = %self.label(&peer), ms = took.as_millis() as u64, "sync round complete");
        self.config.metrics.sync_round(peer);
        let stable = lock(&self.links)
            .get(&peer)
            .is_some_and(|link| link.since.elapsed() >= STABLE_LINK);
        if stable {
            // Rounds complete on a link that stayed up: whatever failed before is over.
            lock(&self.failing).remove(&peer);
        }
        if let Some(opened) = lock(&self.links)
            .get_mut(&peer)
            .and_then(|link| link.opened.as_mut())
        {
            // A complete round leaves nothing of the peer's awaited here.
            opened.waiting = 0;
        }
        if let Err(e) = self.peers.record_sync(&peer, unix_now()) {
            tracing::error!("cannot record the sync time: {e}");
        }
    }

    fn peer_opened(&self, peer: NodeId, opening: PeerOpening) {
        let was_skewed = {
            let mut links = lock(&self.links);
            let Some(link) = links.get_mut(&peer) else {
                return;
            };
            let before = link.opened.replace(opening);
            before.is_some_and(|before| skewed(before.clock_offset_ms))
        };
        // Once per link and skew: each round would say it again.
        if let Some(offset) = opening.clock_offset_ms.filter(|_| !was_skewed) {
            if skewed(Some(offset)) {
                tracing::warn!(
                    peer = %self.label(&peer),
                    offset_ms = offset,
                    "the peer's clock is {} s {} this node's: last-writer-wins orders its writes \
                     and ours by that error, and changes stamped over a minute ahead are refused; \
                     run NTP on both hosts (timedatectl set-ntp true)",
                    offset.unsigned_abs() / 1000,
                    if offset > 0 { "ahead of" } else { "behind" }
                );
            }
        }
    }
}

/// Where a joiner can be reached: the address its join came from with the port it listens
/// on, then the addresses it named (a few, valid ones only).
/// A peer's addresses once it was found at `announced`: those, then the host names it had
/// (they still resolve wherever it went); the addresses it left are dropped.
fn moved_addresses(announced: &[String], stored: &[String]) -> Vec<String> {
    let names = stored
        .iter()
        .filter(|address| address.parse::<SocketAddr>().is_err());
    let mut addresses: Vec<String> = Vec::new();
    for address in announced.iter().chain(names) {
        if !addresses.contains(address) {
            addresses.push(address.clone());
        }
    }
    addresses
}

fn joiner_addresses(remote: SocketAddr, request: &JoinRequest) -> Vec<String> {
    let seen = request
        .listen_port
        .filter(|port| *port != 0)
        .map(|port| SocketAddr::new(remote.ip(), port).to_string());
    let named = request
        .addresses
        .iter()
        .take(8)
        .filter(|address| validate_address(address).is_ok())
        .cloned();
    let mut addresses: Vec<String> = Vec::new();
    for address in seen.into_iter().chain(named) {
        if !addresses.contains(&address) {
            addresses.push(address);
        }
    }
    addresses
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

#[cfg(test)]
mod tests {
    use super::{moved_addresses, JoinTurn, MAX_JOINS_IN_FLIGHT};
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn a_join_refused_for_want_of_a_turn_gives_back_no_turn() {
        let in_flight = AtomicUsize::new(0);
        let turns: Vec<JoinTurn<'_>> = (0..MAX_JOINS_IN_FLIGHT)
            .map(|_| JoinTurn::take(&in_flight).expect("a free turn"))
            .collect();
        for _ in 0..3 {
            assert!(JoinTurn::take(&in_flight).is_none(), "every turn is taken");
        }
        // Before: each refusal built a turn and dropped it, taking the count below the joins
        // in flight (a flood then went unbounded, and the count wrapped once they ended).
        assert_eq!(in_flight.load(Ordering::SeqCst), MAX_JOINS_IN_FLIGHT);
        drop(turns);
        assert_eq!(in_flight.load(Ordering::SeqCst), 0);
        assert!(JoinTurn::take(&in_flight).is_some());
    }

    #[test]
    fn a_peer_that_moved_keeps_its_host_names_and_drops_the_addresses_it_left() {
        let stored = ["10.0.0.5:7464".to_string(), "nas.local:7464".to_string()];
        let announced = ["10.0.0.9:7464".to_string()];
        assert_eq!(
            moved_addresses(&announced, &stored),
            ["10.0.0.9:7464", "nas.local:7464"]
        );
    }
}
