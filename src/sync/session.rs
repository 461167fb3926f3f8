//! One peer connection's sync, as a state machine fed with messages (sans-IO, like
//! quinn-proto): `start` opens a round, `handle` takes each message from the peer, `push`
//! sends fresh local changes; each returns one `Outcome` (messages to send, changes applied,
//! refusals, whether the round is complete). All reads and writes go through a `SyncStore`.
//!
//! Per document, each side learns the other's heads. A side holding all of the peer's heads
//! knows exactly what the peer lacks and sends it. A side missing some of them says what it
//! has, and the peer sends what is not there: with a Bloom filter of the changes since the
//! heads both last shared, or, with no such heads, by range reconciliation over all change
//! hashes. Whatever a filter's false positives hid shows up as missing dependencies, asked
//! for by hash. docs/protocol.md walks through every step.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use automerge::{Change, ChangeHash};

use super::access::Access;
use super::bundle::{self, Assembly, BundleError, Unpacked};
use super::filter::{self, Filter, FilterError};
use super::message::{DocPart, Hash, Have, Hello, Knowledge, Message, Sync, WireSignature};
use super::outbox::Outbox;
use super::recon;
use super::store::{StoreError, SyncStore};
use super::summary;
use super::whole;
use crate::model::{DocId, NodeId};
use crate::trust::{self, Author, ChangeSignature, Vouching};

/// Filters above this many hashes cost more than reconciling ranges; the pull uses ranges.
const MAX_FILTER_HASHES: usize = 50_000;

/// How a session builds what it sends.
#[derive(Debug, Clone)]
pub struct Config {
    /// False-positive rate of the Bloom filters this side builds. Tests raise it to exercise
    /// the repair path.
    pub false_positive_rate: f64,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            false_positive_rate: 0.001,
        }
    }
}

/// Why a session call failed. Whatever the cause, the connection must be dropped (see
/// [`Session`]).
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A change bundle from the peer does not unpack.
    #[error("peer sent a bad change bundle for {doc}: {source}")]
    Bundle {
        /// The document the bundle was for.
        doc: String,
        /// What is wrong with it.
        #[source]
        source: BundleError,
    },
    /// A Bloom filter from the peer does not decode.
    #[error("peer sent a bad filter for {doc}: {source}")]
    Filter {
        /// The document the filter was for.
        doc: String,
        /// What is wrong with it.
        #[source]
        source: FilterError,
    },
    /// The peer named a document that does not exist in any node.
    #[error("peer named an unknown document '{0}'")]
    UnknownDoc(String),
}

/// What one call to a [`Session`] entry point produced. Act on every field, in the order
/// [`Session`] gives.
#[derive(Debug, Default)]
#[must_use = "an outcome carries messages for the peer and changes to forward"]
pub struct Outcome {
    /// Messages for the peer, in the order they must be sent.
    pub messages: Vec<Message>,
    /// Changes this call applied to the store: forward them to the other peers.
    pub applied: Vec<Applied>,
    /// Changes refused during this call, by this side or by the peer.
    pub refusals: Vec<Refusal>,
    /// True when, after this call, the round is complete: nothing is owed to the peer and
    /// nothing is awaited from it.
    pub round_done: bool,
}

/// Changes a session applied: the daemon forwards them to its other peers.
#[derive(Debug, Clone, PartialEq)]
pub struct Applied {
    /// The document they belong to.
    pub doc: DocId,
    /// The hashes that were new here.
    pub hashes: Vec<ChangeHash>,
    /// The node each change's actor id names, where it names one.
    made_by: HashMap<ChangeHash, NodeId>,
}

impl Applied {
    /// The hashes to forward to `peer`: all but the changes `peer` made. A node has its own
    /// changes, and a change it made that comes back to it round a ring costs the bytes of
    /// the push and, worse, draws the peer's answer with whatever it holds back for its
    /// push pace (net/push_pace.rs).
    pub fn to_forward(&self, peer: &NodeId) -> Vec<ChangeHash> {
        (self.hashes.iter())
            .filter(|hash| self.made_by.get(*hash) != Some(peer))
            .copied()
            .collect()
    }
}

/// Changes refused, by this side or by the peer.
#[derive(Debug, Clone, PartialEq)]
pub struct Refusal {
    /// The document's name, as it came over the wire.
    pub doc: String,
    /// Why, in words for the log.
    pub reason: String,
    /// True when the peer refused ours; false when this side refused the peer's.
    pub by_peer: bool,
}

enum Phase {
    /// Nothing sent or received yet.
    Idle,
    /// Our `Hello` is out; `inferred` are the documents it left out because their heads equal
    /// the stored shared heads.
    Opening {
        root: [u8; 32],
        inferred: Vec<(DocId, Vec<ChangeHash>)>,
    },
    /// A round is under way.
    Open,
    /// The roots matched.
    InSync,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Pull {
    None,
    /// We sent a filter; `answered` once the peer replied with its heads.
    Filter {
        answered: bool,
    },
    Ranges,
}

/// The changes of one document this session sent the peer. A whole document is kept as its
/// heads and listed change by change only when a later push needs the list: listing a full
/// clone's 100 000 hashes at once took 7 % of its time.
#[derive(Default)]
struct Sent {
    changes: HashSet<ChangeHash>,
    document: Option<Vec<ChangeHash>>,
}

impl Sent {
    fn is_empty(&self) -> bool {
        self.changes.is_empty() && self.document.is_none()
    }

    /// Every change sent, those of a whole document sent included.
    fn listed(&mut self, store: &mut impl SyncStore, doc: &DocId) -> &mut HashSet<ChangeHash> {
        if let Some(heads) = self.document.take() {
            let after: HashSet<ChangeHash> = store.hashes_since(doc, &heads).into_iter().collect();
            let document = store.hashes_since(doc, &[]).into_iter();
            self.changes
                .extend(document.filter(|hash| !after.contains(hash)));
        }
        &mut self.changes
    }
}

/// What this session knows about one document on the peer's side.
struct DocState {
    theirs: Option<Vec<ChangeHash>>,
    /// What the peer said about the heads we told it.
    their_view: Knowledge,
    told: Option<Vec<ChangeHash>>,
    sent: Sent,
    asked: HashSet<ChangeHash>,
    pull: Pull,
    /// `(theirs, ours)` when we sent the exact difference between them.
    pushed: Option<(Vec<ChangeHash>, Vec<ChangeHash>)>,
    /// The peer's transfer spans more messages.
    more: bool,
    /// One side refused the other's changes of this document: it is done for this round.
    refused: bool,
    saved: Option<Vec<ChangeHash>>,
}

impl Default for DocState {
    fn default() -> DocState {
        DocState {
            theirs: None,
            their_view: Knowledge::Unknown,
            told: None,
            sent: Sent::default(),
            asked: HashSet::new(),
            pull: Pull::None,
            pushed: None,
            more: false,
            refused: false,
            saved: None,
        }
    }
}

/// The sync protocol with one peer, for the life of one connection: a state machine that does
/// no I/O. The caller owns the transport, the store and the clocks; the session decides what
/// to say and what to apply.
///
/// # Driving a session
///
/// Create one `Session` per connection and make every call through one of its three entry
/// points, each of which returns an [`Outcome`]:
///
/// * [`start`](Session::start) when the connection comes up, and whenever a new anti-entropy
///   round is due (a timer fired, an operator asked). Both sides may start at once: the
///   protocol picks the side that leads.
/// * [`handle`](Session::handle) for every message the peer sent, in the order it arrived
///   (frames decoded with [`Message::decode`]).
/// * [`push`](Session::push) right after a local write, or after another session applied
///   changes (gossip), with the hashes that are new.
///
/// After every call, act on each field of the outcome, in this order:
///
/// 1. [`messages`](Outcome::messages): send them to the peer, in order, each framed by
///    [`Message::encode`];
/// 2. [`refusals`](Outcome::refusals): log them;
/// 3. [`applied`](Outcome::applied): hand them to whatever forwards changes to the other peers
///    (with [`push`](Session::push) on their sessions) and refreshes local views;
/// 4. [`round_done`](Outcome::round_done): when set, the round is complete (nothing is owed to
///    the peer, nothing is awaited from it); report it to whoever waits for the round.
///
/// The session keeps none of this for later: an outcome that is dropped unread is lost.
///
/// # Errors
///
/// An `Err` means the peer sent something malformed (see [`SyncError`]) or the store failed.
/// The session no longer knows what the peer knows: drop the connection (the link closes it
/// with the error as the reason) and let the next connection start over with a new session.
/// Changes the failing call applied before the error are durable in the store but are not
/// reported; anti-entropy rounds with the other peers spread them.
///
/// # The store is a port
///
/// The session reads and writes the node's data only through the [`SyncStore`] passed into
/// each call, rather than returning the writes for the caller to perform: within one call the
/// protocol reads its own writes (the changes applied from a document's parts decide what it
/// then asks for; stored shared heads forgotten on a `reset` are read back as gone by the pull
/// in the same call), so a write must land before the call goes on. Hold the store (and whatever lock guards it) for
/// the whole call.
pub struct Session {
    peer: String,
    access: Access,
    config: Config,
    phase: Phase,
    docs: BTreeMap<DocId, DocState>,
    /// The documents our `Hello` left out, with their heads, until the answer to it arrives. A
    /// complete `Sync` is always that answer; another `Sync` may be a live push sent before the
    /// peer read our `Hello`, so it is not taken as the answer for sure.
    unanswered: Option<Vec<(DocId, Vec<ChangeHash>)>>,
    /// What the call under way applied and refused, for its `Outcome`.
    applied: Vec<Applied>,
    refusals: Vec<Refusal>,
    /// A transfer from the peer whose pieces are arriving, with its document. A sender ends
    /// one transfer before it starts another, and rounds do not interrupt it, so there is at
    /// most one and it outlives rounds.
    transfer: Option<(DocId, Assembly)>,
    /// Changes from the peer waiting for the signatures that vouch for them, per document.
    vouching: BTreeMap<DocId, Vouching>,
    /// This node's and the peer's public keys (`with_keys`): signatures by either end then
    /// travel without their key.
    own_key: Option<[u8; 32]>,
    peer_key: Option<[u8; 32]>,
}

fn to_hashes(wire: &[Hash]) -> Vec<ChangeHash> {
    let mut hashes: Vec<ChangeHash> = wire.iter().map(|h| ChangeHash(*h)).collect();
    hashes.sort_unstable();
    hashes.dedup();
    hashes
}

fn has_all(store: &mut impl SyncStore, doc: &DocId, hashes: &[ChangeHash]) -> bool {
    hashes.iter().all(|h| store.has_change(doc, h))
}

impl Session {
    /// A session with `peer` (its compact node id), which may read and write what `access`
    /// allows.
    pub fn new(peer: impl Into<String>, access: Access, config: Config) -> Session {
        Session {
            peer: peer.into(),
            access,
            config,
            phase: Phase::Idle,
            docs: BTreeMap::new(),
            unanswered: None,
            applied: Vec::new(),
            refusals: Vec::new(),
            transfer: None,
            vouching: BTreeMap::new(),
            own_key: None,
            peer_key: None,
        }
    }

    /// Names both ends' Ed25519 public keys, as the TLS handshake proved them. A session
    /// with keys leaves its own key out of the signatures it sends, and fills in the peer's
    /// where the peer left it out; both ends of a connection must have them, or neither.
    pub fn with_keys(mut self, own: [u8; 32], peer: [u8; 32]) -> Session {
        self.own_key = Some(own);
        self.peer_key = Some(peer);
        self
    }

    /// The peer's compact node id.
    pub fn peer(&self) -> &str {
        &self.peer
    }

    /// Opens an anti-entropy round: the outcome carries one `Hello`.
    pub fn start(&mut self, store: &mut impl SyncStore) -> Result<Outcome, SyncError> {
        let messages = self.open_round(store);
        self.conclude(store, messages)
    }

    /// Takes one message from the peer.
    pub fn handle(
        &mut self,
        store: &mut impl SyncStore,
        message: Message,
    ) -> Result<Outcome, SyncError> {
        let messages = self.dispatch(store, message);
        self.conclude(store, messages)
    }

    /// Sends just-made local changes of `doc` (live push), or changes another session applied
    /// (gossip). Sends the exact difference when the peer's heads are known here, else the
    /// changes named.
    pub fn push(
        &mut self,
        store: &mut impl SyncStore,
        doc: &DocId,
        fresh: &[ChangeHash],
    ) -> Result<Outcome, SyncError> {
        let messages = self.push_changes(store, doc, fresh);
        self.conclude(store, messages)
    }

    /// Wraps what one entry point said into its `Outcome`. The call's applied changes and
    /// refusals are taken either way, so an error never leaks them into a later outcome.
    fn conclude(
        &mut self,
        store: &mut impl SyncStore,
        messages: Result<Vec<Message>, SyncError>,
    ) -> Result<Outcome, SyncError> {
        let applied = std::mem::take(&mut self.applied);
        let refusals = std::mem::take(&mut self.refusals);
        Ok(Outcome {
            messages: messages?,
            applied,
            refusals,
            round_done: self.is_done(store),
        })
    }

    fn open_round(&mut self, store: &mut impl SyncStore) -> Result<Vec<Message>, SyncError> {
        self.docs.clear();
        let shared = self.shared(store);
        let stored = self.stored_heads(store, &shared)?;
        let mut parts = Vec::new();
        let mut inferred = Vec::new();
        let mut waiting = 0;
        for ((doc, heads), since) in shared.iter().zip(&stored) {
            if since.as_ref() == Some(heads) {
                inferred.push((doc.clone(), heads.clone()));
                continue;
            }
            // What the peer has not confirmed: our changes since the heads it last shared, or
            // the whole history (counted without loading the document) when it shared none.
            let part = match since.as_deref() {
                Some(since) => {
                    let fresh = store.hashes_since(doc, since);
                    waiting += fresh.len() as u64;
                    self.opening_part(doc, heads, Some((since, &fresh)))
                }
                None => {
                    waiting += store.change_count(doc);
                    self.opening_part(doc, heads, None)
                }
            };
            parts.push(part);
        }
        let root = summary::root(shared.iter().map(|(d, h)| (d, h.as_slice())));
        let state = summary::state_digest(
            shared
                .iter()
                .zip(&stored)
                .map(|((doc, _), since)| (doc, since.as_deref())),
        );
        self.phase = Phase::Opening { root, inferred };
        self.unanswered = None;
        Ok(vec![Message::Hello(Hello {
            root,
            state: Some(state),
            docs: parts,
            waiting,
            clock: None,
        })])
    }

    fn dispatch(
        &mut self,
        store: &mut impl SyncStore,
        message: Message,
    ) -> Result<Vec<Message>, SyncError> {
        match message {
            Message::Hello(hello) => self.on_hello(store, hello),
            Message::InSync => {
                self.unanswered = None;
                if matches!(self.phase, Phase::Opening { .. }) {
                    self.remember_all_shared(store)?;
                    self.phase = Phase::InSync;
                }
                Ok(Vec::new())
            }
            Message::Sync(sync) => self.on_sync(store, sync),
            Message::Refused { doc, reason } => {
                if let Ok(id) = DocId::from_name(&doc) {
                    self.docs.entry(id).or_default().refused = true;
                }
                self.refusals.push(Refusal {
                    doc,
                    reason,
                    by_peer: true,
                });
                Ok(Vec::new())
            }
        }
    }

    fn push_changes(
        &mut self,
        store: &mut impl SyncStore,
        doc: &DocId,
        fresh: &[ChangeHash],
    ) -> Result<Vec<Message>, SyncError> {
        if !self.access.may_read(doc) {
            return Ok(Vec::new());
        }
        if matches!(self.phase, Phase::Idle) {
            self.phase = Phase::Open;
        }
        let ours = store.heads(doc);
        let state = self.docs.entry(doc.clone()).or_default();
        let theirs = state.theirs.clone().filter(|t| has_all(store, doc, t));
        let changes = match &theirs {
            // The last exact push from these heads already sent everything up to what we
            // held then: only what came after is new. Without this a burst of n pushes
            // would rebuild 1 + 2 + … + n changes.
            Some(theirs) => match &state.pushed {
                Some((from, upto)) if from == theirs => store.changes_since(doc, upto),
                _ => store.changes_since(doc, theirs),
            },
            None => with_descendants(store, doc, fresh, &ours),
        };
        let mut out = Outbox::default();
        let sent = state.sent.listed(store, doc);
        for change in changes {
            if sent.insert(change.hash()) {
                out.change(doc, change);
            }
        }
        let view = if theirs.is_some() {
            state.pushed = theirs.map(|t| (t, ours.clone()));
            Knowledge::HaveAll
        } else {
            Knowledge::Unknown
        };
        out.heads(doc, &ours, view);
        state.told = Some(ours);
        seal(store, out, false, self.own_key.as_ref())
    }

    /// True when the round is complete: nothing is owed to the peer and nothing is awaited
    /// from it.
    fn is_done(&self, store: &mut impl SyncStore) -> bool {
        match self.phase {
            Phase::InSync => true,
            Phase::Idle | Phase::Opening { .. } => false,
            Phase::Open => self
                .docs
                .iter()
                .all(|(doc, state)| self.doc_done(store, doc, state)),
        }
    }

    // ---- opening --------------------------------------------------------------------------

    /// The documents shared with the peer (readable by it, not empty) and their heads.
    fn shared(&self, store: &impl SyncStore) -> Vec<(DocId, Vec<ChangeHash>)> {
        store
            .doc_ids()
            .into_iter()
            .filter(|doc| self.access.may_read(doc))
            .map(|doc| {
                let heads = store.heads(&doc);
                (doc, heads)
            })
            .filter(|(_, heads)| !heads.is_empty())
            .collect()
    }

    fn stored_heads(
        &self,
        store: &mut impl SyncStore,
        shared: &[(DocId, Vec<ChangeHash>)],
    ) -> Result<Vec<Option<Vec<ChangeHash>>>, SyncError> {
        shared
            .iter()
            .map(|(doc, _)| self.usable_shared(store, doc))
            .collect()
    }

    /// The stored shared heads, if this side still holds them all (a node restored from an
    /// old copy may not); unusable ones are forgotten.
    fn usable_shared(
        &self,
        store: &mut impl SyncStore,
        doc: &DocId,
    ) -> Result<Option<Vec<ChangeHash>>, SyncError> {
        let Some(heads) = store.shared_heads(&self.peer, doc)? else {
            return Ok(None);
        };
        if !heads.is_empty() && has_all(store, doc, &heads) {
            return Ok(Some(heads));
        }
        store.set_shared_heads(&self.peer, doc, None)?;
        Ok(None)
    }

    /// A document whose heads moved since they were last shared: our heads and, when the
    /// peer may write it, a filter of what we made `since` the shared heads (`fresh`), so the
    /// peer can answer at once.
    fn opening_part(
        &mut self,
        doc: &DocId,
        heads: &[ChangeHash],
        since: Option<(&[ChangeHash], &[ChangeHash])>,
    ) -> DocPart {
        let may_write = self.access.may_write(doc);
        let state = self.docs.entry(doc.clone()).or_default();
        state.told = Some(heads.to_vec());
        let mut part = DocPart::new(doc.name());
        part.heads = Some(super::message::Heads {
            hashes: heads.iter().map(|h| h.0).collect(),
            yours: Knowledge::Unknown,
        });
        if let Some((since, fresh)) = since.filter(|_| may_write) {
            if fresh.len() <= MAX_FILTER_HASHES {
                part.have = Some(make_have(since, fresh, self.config.false_positive_rate));
                state.pull = Pull::Filter { answered: false };
            }
        }
        part
    }

    fn on_hello(
        &mut self,
        store: &mut impl SyncStore,
        hello: Hello,
    ) -> Result<Vec<Message>, SyncError> {
        let shared = self.shared(store);
        let root = summary::root(shared.iter().map(|(d, h)| (d, h.as_slice())));
        if let Phase::Opening { root: ours, .. } = &self.phase {
            // Both sides opened at once: the Hello with the smaller root leads the round.
            if *ours < hello.root {
                return Ok(Vec::new());
            }
        }
        self.docs.clear();
        self.unanswered = None;
        if hello.root == root {
            self.remember_all_shared(store)?;
            self.phase = Phase::InSync;
            return Ok(vec![Message::InSync]);
        }
        self.phase = Phase::Open;
        let stored = self.stored_heads(store, &shared)?;
        let digest = summary::state_digest(
            shared
                .iter()
                .zip(&stored)
                .map(|((doc, _), since)| (doc, since.as_deref())),
        );
        let mut out = Outbox::default();
        let mut touched = BTreeSet::new();
        for part in hello.docs {
            touched.insert(self.receive(store, part, &mut out)?);
        }
        let complete = hello.state != Some(digest);
        for ((doc, heads), since) in shared.iter().zip(stored) {
            if touched.contains(doc) {
                continue;
            }
            if complete {
                // The peer's heads for this document are unknown: say ours and hear theirs.
                out.heads(doc, heads, Knowledge::Unknown);
                self.docs.entry(doc.clone()).or_default().told = Some(heads.clone());
            } else {
                // Same stored state on both sides: the peer's heads are the shared heads.
                self.docs.entry(doc.clone()).or_default().theirs = since;
                touched.insert(doc.clone());
            }
        }
        for doc in touched {
            self.plan(store, &doc, &mut out)?;
        }
        seal(store, out, complete, self.own_key.as_ref())
    }

    fn on_sync(
        &mut self,
        store: &mut impl SyncStore,
        sync: Sync,
    ) -> Result<Vec<Message>, SyncError> {
        let mut touched = BTreeSet::new();
        match std::mem::replace(&mut self.phase, Phase::Open) {
            Phase::Opening { inferred, .. } => {
                // The answer to our Hello, or a live push the peer sent before it read our
                // Hello. Unless this is the answer and says otherwise, the peer took our
                // stored state: it knows these heads of ours.
                for (doc, heads) in &inferred {
                    self.docs.entry(doc.clone()).or_default().told = Some(heads.clone());
                }
                self.unanswered = Some(inferred);
            }
            Phase::InSync => self.phase = Phase::InSync,
            Phase::Idle | Phase::Open => {}
        }
        if sync.complete {
            if let Some(inferred) = self.unanswered.take() {
                // The answer: the peer did not take our stored state. It does not know the
                // heads our Hello left out, and every document it did not list is empty on
                // its side.
                for (doc, heads) in inferred {
                    let state = self.docs.entry(doc).or_default();
                    if state.told.as_ref() == Some(&heads) {
                        state.told = None;
                    }
                }
                let listed: BTreeSet<&str> = sync.docs.iter().map(|p| p.doc.as_str()).collect();
                for (doc, _) in self.shared(store) {
                    if !listed.contains(doc.name().as_str()) {
                        self.docs.entry(doc.clone()).or_default().theirs = Some(Vec::new());
                        touched.insert(doc);
                    }
                }
            }
        }
        let mut out = Outbox::default();
        for part in sync.docs {
            touched.insert(self.receive(store, part, &mut out)?);
        }
        for doc in touched {
            self.plan(store, &doc, &mut out)?;
        }
        seal(store, out, false, self.own_key.as_ref())
    }

    fn remember_all_shared(&mut self, store: &mut impl SyncStore) -> Result<(), SyncError> {
        for (doc, heads) in self.shared(store) {
            self.remember(store, &doc, heads)?;
        }
        Ok(())
    }

    /// Records `heads` as shared with the peer, unless already recorded in this session.
    fn remember(
        &mut self,
        store: &mut impl SyncStore,
        doc: &DocId,
        heads: Vec<ChangeHash>,
    ) -> Result<(), SyncError> {
        let state = self.docs.entry(doc.clone()).or_default();
        if state.saved.as_ref() != Some(&heads) {
            store.set_shared_heads(&self.peer, doc, Some(&heads))?;
            state.saved = Some(heads);
        }
        Ok(())
    }

    // ---- receiving ------------------------------------------------------------------------

    /// Takes in one document part: applies changes, notes heads, answers requests.
    fn receive(
        &mut self,
        store: &mut impl SyncStore,
        part: DocPart,
        out: &mut Outbox,
    ) -> Result<DocId, SyncError> {
        let doc =
            DocId::from_name(&part.doc).map_err(|_| SyncError::UnknownDoc(part.doc.clone()))?;
        self.take_changes(store, &doc, &part, out)?;
        let state = self.docs.entry(doc.clone()).or_default();
        state.more = part.more;
        if let Some(heads) = &part.heads {
            state.theirs = Some(to_hashes(&heads.hashes));
            state.their_view = heads.yours;
            if state.pull == (Pull::Filter { answered: false }) {
                state.pull = Pull::Filter { answered: true };
            }
        }
        if part.reset {
            // The peer does not hold the heads our filter started from.
            store.set_shared_heads(&self.peer, &doc, None)?;
            let state = self.docs.entry(doc.clone()).or_default();
            state.pull = Pull::None;
            state.saved = None;
        }
        if !self.access.may_read(&doc) {
            return Ok(doc);
        }
        for hash in to_hashes(&part.need) {
            if let Some(change) = store.change(&doc, &hash) {
                self.send(&doc, change, out);
            }
        }
        if let Some(have) = &part.have {
            self.answer_filter(store, &doc, have, out)?;
        }
        if !part.ranges.is_empty() {
            self.answer_ranges(store, &doc, &part.ranges, out);
        }
        Ok(doc)
    }

    /// Takes in the changes and signatures of one part: a whole document is checked and
    /// merged at once; changes wait in `vouching` until their authors' signatures vouch for
    /// them, and what is still waiting when the peer's last part for the document is in is
    /// refused.
    fn take_changes(
        &mut self,
        store: &mut impl SyncStore,
        doc: &DocId,
        part: &DocPart,
        out: &mut Outbox,
    ) -> Result<(), SyncError> {
        if part.changes.is_none() && part.signatures.is_empty() {
            return Ok(());
        }
        if !self.access.may_write(doc) {
            let reason = format!("peer {} may not write {doc} on this node", self.peer);
            self.refuse(doc, reason, out);
            return Ok(());
        }
        let unpacked = match &part.changes {
            Some(bundle) => self.assemble(doc, bundle)?,
            None => None,
        };
        let changes = match unpacked {
            Some(Unpacked::Document(saved)) => {
                match self.take_document(store, doc, &saved, part, out)? {
                    Some(changes) => changes,
                    None => return Ok(()),
                }
            }
            Some(Unpacked::Changes(changes)) => changes,
            None => Vec::new(),
        };
        if let Err(reason) = store.vet(doc, &changes) {
            self.refuse(doc, reason, out);
            return Ok(());
        }
        self.vouch(store, doc, changes, &part.signatures, out)?;
        if !part.more {
            self.refuse_unvouched(store, doc, out);
        }
        Ok(())
    }

    /// Takes a whole document the peer sent: merged at once when every change in it may
    /// enter; else `Some` of its changes, to be taken one by one as if sent alone, so that a
    /// relay holding one forged change cannot keep the honest ones from getting through.
    fn take_document(
        &mut self,
        store: &mut impl SyncStore,
        doc: &DocId,
        saved: &[u8],
        part: &DocPart,
        out: &mut Outbox,
    ) -> Result<Option<Vec<Change>>, SyncError> {
        let Some(signatures) = self.expand(&part.signatures, |_| Vec::new()) else {
            self.refuse(doc, KEYLESS.to_string(), out);
            return Ok(None);
        };
        match store.vet_document(doc, saved, signatures) {
            Ok(keep) => {
                let hashes = store.apply_document(doc, saved, keep)?;
                self.note_applied(doc, hashes, HashMap::new());
                Ok(None)
            }
            // Its changes one by one, each with what vouches for it; the bytes are split by
            // chunk first (`whole`): Automerge's own load panics on some hostile ones.
            Err(reason) => match whole::load(None, saved) {
                Ok(loaded) => Ok(Some(loaded.get_changes(&[]))),
                Err(_) => {
                    self.refuse(doc, reason, out);
                    Ok(None)
                }
            },
        }
    }

    /// The signatures `wire` stands for, with this session's keys (see [`expand`]).
    fn expand(
        &self,
        wire: &[WireSignature],
        matching: impl Fn(&[u8]) -> Vec<ChangeHash>,
    ) -> Option<Vec<ChangeSignature>> {
        expand(wire, self.peer_key.as_ref(), matching)
    }

    /// Adds changes and signatures to the document's waiting changes and applies those now
    /// vouched for.
    fn vouch(
        &mut self,
        store: &mut impl SyncStore,
        doc: &DocId,
        changes: Vec<Change>,
        signatures: &[WireSignature],
        out: &mut Outbox,
    ) -> Result<(), SyncError> {
        let peer_key = self.peer_key;
        let waiting = self.vouching.entry(doc.clone()).or_default();
        let added = waiting
            .add_changes(changes, |hash| store.has_change(doc, hash))
            .map_err(|e| e.to_string())
            .and_then(|()| {
                expand(signatures, peer_key.as_ref(), |p| {
                    waiting.waiting_with_prefix(p)
                })
                .ok_or_else(|| KEYLESS.to_string())
            })
            .and_then(|signatures| {
                waiting
                    .add_signatures(signatures, |hash| store.has_change(doc, hash))
                    .map_err(|e| e.to_string())
            });
        if let Err(error) = added {
            waiting.clear();
            self.refuse(doc, error, out);
            return Ok(());
        }
        let accepted = waiting.take_accepted(doc, |hash| store.has_change(doc, hash));
        if !accepted.changes.is_empty() {
            let made_by = (accepted.changes.iter())
                .filter_map(|change| match trust::author_of(change.actor_id()) {
                    Author::Node(node) => Some((change.hash(), node)),
                    Author::Unknown => None,
                })
                .collect();
            let hashes = store.apply(doc, accepted.changes, accepted.signatures)?;
            self.note_applied(doc, hashes, made_by);
        }
        Ok(())
    }

    /// Refuses what still waits for a signature once the peer sent all it had for `doc`.
    fn refuse_unvouched(&mut self, store: &mut impl SyncStore, doc: &DocId, out: &mut Outbox) {
        let Some(waiting) = self.vouching.get_mut(doc) else {
            return;
        };
        let refused = waiting.refuse_waiting(doc, |hash| store.has_change(doc, hash));
        if let Some(first) = refused.first() {
            let reason = match refused.len() {
                1 => trust::describe(first),
                n => format!("{} (and {} more)", trust::describe(first), n - 1),
            };
            self.refuse(doc, reason, out);
        }
    }

    fn note_applied(
        &mut self,
        doc: &DocId,
        hashes: Vec<ChangeHash>,
        made_by: HashMap<ChangeHash, NodeId>,
    ) {
        if !hashes.is_empty() {
            self.applied.push(Applied {
                doc: doc.clone(),
                hashes,
                made_by,
            });
        }
    }

    /// Adds a bundle to the transfer under way for `doc` (or starts one): `None` until its
    /// last bundle is in. A bundle for another document while one is under way is an error.
    fn assemble(
        &mut self,
        doc: &DocId,
        bundle: &super::message::Bundle,
    ) -> Result<Option<Unpacked>, SyncError> {
        let mut assembly = match self.transfer.take() {
            Some((pending, assembly)) if pending == *doc => assembly,
            Some((pending, _)) => {
                return Err(SyncError::Bundle {
                    doc: pending.name(),
                    source: BundleError::Unfinished,
                })
            }
            None => Assembly::default(),
        };
        let unpacked = assembly.take(bundle).map_err(|source| SyncError::Bundle {
            doc: doc.name(),
            source,
        })?;
        if unpacked.is_none() {
            self.transfer = Some((doc.clone(), assembly));
        }
        Ok(unpacked)
    }

    /// Refuses what the peer sent for `doc`, telling it why; the document is done for this
    /// round (the next round asks again).
    fn refuse(&mut self, doc: &DocId, reason: String, out: &mut Outbox) {
        self.docs.entry(doc.clone()).or_default().refused = true;
        out.refuse(doc, reason.clone());
        self.refusals.push(Refusal {
            doc: doc.name(),
            reason,
            by_peer: false,
        });
    }

    fn send(&mut self, doc: &DocId, change: Change, out: &mut Outbox) {
        let state = self.docs.entry(doc.clone()).or_default();
        state.sent.changes.insert(change.hash());
        out.change(doc, change);
    }

    /// The peer listed what it made since `since`: send every change of ours since then that
    /// is not in its filter, with all their descendants (a descendant of a change the peer
    /// lacks cannot be in the peer's store, whatever the filter says).
    fn answer_filter(
        &mut self,
        store: &mut impl SyncStore,
        doc: &DocId,
        have: &Have,
        out: &mut Outbox,
    ) -> Result<(), SyncError> {
        let theirs = self.docs.get(doc).and_then(|s| s.theirs.clone());
        if theirs.is_some_and(|t| has_all(store, doc, &t)) {
            // We hold all the peer's heads: `plan` sends the exact difference instead.
            return Ok(());
        }
        let since = to_hashes(&have.since);
        let ours = store.heads(doc);
        if since.is_empty() || !has_all(store, doc, &since) {
            out.reset(doc);
            out.heads(doc, &ours, Knowledge::Lacking);
            self.docs.entry(doc.clone()).or_default().told = Some(ours);
            return Ok(());
        }
        let filter = Filter::decode(&have.filter).map_err(|source| SyncError::Filter {
            doc: doc.name(),
            source,
        })?;
        let mut missing: HashSet<ChangeHash> = HashSet::new();
        for change in store.changes_since(doc, &since) {
            let hash = change.hash();
            // Candidates come in dependency order, so a change's parents are decided first.
            if !filter.contains(&hash) || change.deps().iter().any(|d| missing.contains(d)) {
                missing.insert(hash);
                self.send(doc, change, out);
            }
        }
        // Our heads always go with the answer: they tell the peer the answer is complete.
        out.heads(doc, &ours, Knowledge::Lacking);
        self.docs.entry(doc.clone()).or_default().told = Some(ours);
        Ok(())
    }

    fn answer_ranges(
        &mut self,
        store: &mut impl SyncStore,
        doc: &DocId,
        ranges: &[super::message::Range],
        out: &mut Outbox,
    ) {
        let set = recon::HashSet::new(store.hashes_since(doc, &[]));
        let answer = set.answer(ranges);
        out.ranges(doc, answer.ranges);
        if !answer.send.is_empty() {
            // With their descendants, which the peer lacks too: the newest of them carry the
            // signatures that vouch for the rest (`trust`).
            let mut missing: HashSet<ChangeHash> = answer.send.into_iter().collect();
            let state = self.docs.entry(doc.clone()).or_default();
            state.sent.listed(store, doc);
            for change in store.changes_since(doc, &[]) {
                let hash = change.hash();
                let lacked =
                    missing.contains(&hash) || change.deps().iter().any(|d| missing.contains(d));
                if lacked {
                    missing.insert(hash);
                    if !self
                        .docs
                        .get(doc)
                        .is_some_and(|s| s.sent.changes.contains(&hash))
                    {
                        self.send(doc, change, out);
                    }
                }
            }
        }
        if self.access.may_write(doc) {
            let need = answer.need;
            let state = self.docs.entry(doc.clone()).or_default();
            state.asked.extend(need.iter().copied());
            out.need(doc, need);
        }
    }

    // ---- deciding -------------------------------------------------------------------------

    /// After a document's parts are in: push what the peer lacks, tell our heads when the
    /// peer needs them, pull what we lack, and record the shared heads once done.
    fn plan(
        &mut self,
        store: &mut impl SyncStore,
        doc: &DocId,
        out: &mut Outbox,
    ) -> Result<(), SyncError> {
        let Some(state) = self.docs.get(doc) else {
            return Ok(());
        };
        let Some(theirs) = state.theirs.clone() else {
            return Ok(());
        };
        if state.refused || state.more {
            return Ok(());
        }
        let ours = store.heads(doc);
        let have_all = has_all(store, doc, &theirs);
        let pushed = have_all
            && self.access.may_read(doc)
            && self.push_difference(store, doc, &theirs, &ours, out);
        self.tell(doc, &theirs, &ours, have_all, pushed, out);
        // Both sides lacking, this side says what it has even when it takes nothing from the
        // peer: the peer waits for that to learn what to pull.
        let lacking = self.docs[doc].their_view == Knowledge::Lacking;
        if !have_all && (self.access.may_write(doc) || lacking) {
            self.pull(store, doc, &theirs, out)?;
        }
        let state = &self.docs[doc];
        let exact = state.pushed.as_ref() == Some(&(theirs.clone(), ours.clone()));
        if self.doc_done(store, doc, state) && (theirs == ours || exact) {
            // Both hold `ours` now, or will once our push lands; if it does not, the next
            // round sees the digests differ and falls back (see docs/protocol.md).
            self.remember(store, doc, ours)?;
        }
        Ok(())
    }

    /// We hold every head of the peer's: the changes it lacks are exactly ours since them.
    /// Returns whether this sent anything.
    fn push_difference(
        &mut self,
        store: &mut impl SyncStore,
        doc: &DocId,
        theirs: &[ChangeHash],
        ours: &[ChangeHash],
        out: &mut Outbox,
    ) -> bool {
        let state = self.docs.entry(doc.clone()).or_default();
        let key = (theirs.to_vec(), ours.to_vec());
        if theirs == ours || state.pushed.as_ref() == Some(&key) {
            return false;
        }
        state.pushed = Some(key);
        if theirs.is_empty() && state.sent.is_empty() {
            // The peer has nothing: the whole document in its compact form is smallest.
            if let Some(document) = store.snapshot(doc).as_deref().and_then(bundle::document) {
                state.sent.document = Some(store.heads(doc));
                out.document(doc, document);
                return true;
            }
        }
        let mut pushed = false;
        let sent = state.sent.listed(store, doc);
        for change in store.changes_since(doc, theirs) {
            if sent.insert(change.hash()) {
                out.change(doc, change);
                pushed = true;
            }
        }
        pushed
    }

    /// Says our heads when the peer does not know them, and with every push (so the peer
    /// sees at once that it is complete). A peer that lacks some of ours while we lack some
    /// of its gets nothing new from them: it waits for our pull, then our push.
    fn tell(
        &mut self,
        doc: &DocId,
        theirs: &[ChangeHash],
        ours: &[ChangeHash],
        have_all: bool,
        pushed: bool,
        out: &mut Outbox,
    ) {
        let state = self.docs.entry(doc.clone()).or_default();
        if out.has_heads(doc) {
            return;
        }
        let known = state.told.as_deref() == Some(ours);
        let peer_waits = theirs != ours || state.their_view != Knowledge::HaveAll;
        let useless = !have_all && state.their_view == Knowledge::Lacking;
        if !pushed && (known || !peer_waits || useless) {
            return;
        }
        let view = if have_all {
            Knowledge::HaveAll
        } else {
            Knowledge::Lacking
        };
        out.heads(doc, ours, view);
        state.told = Some(ours.to_vec());
    }

    /// We miss some of the peer's heads. If the peer holds all of ours it sends the exact
    /// difference, and what is still missing after that is asked for by hash; if it does not,
    /// we say what we have, once: a filter since the stored shared heads, or ranges.
    fn pull(
        &mut self,
        store: &mut impl SyncStore,
        doc: &DocId,
        theirs: &[ChangeHash],
        out: &mut Outbox,
    ) -> Result<(), SyncError> {
        let state = &self.docs[doc];
        let takes = self.access.may_write(doc);
        let gaps = state.their_view == Knowledge::HaveAll
            || state.pull == (Pull::Filter { answered: true });
        if gaps && takes {
            let state = self.docs.entry(doc.clone()).or_default();
            let mut missing = store.missing_deps(doc, theirs);
            // Changes waiting for their signatures are here; what they depend on is not.
            if let Some(waiting) = self.vouching.get(doc) {
                missing.retain(|hash| !waiting.holds(hash));
                missing.extend(waiting.missing(|hash| store.has_change(doc, hash)));
            }
            let missing: Vec<ChangeHash> = missing
                .into_iter()
                .filter(|h| state.asked.insert(*h))
                .collect();
            out.need(doc, missing);
            return Ok(());
        }
        if state.their_view != Knowledge::Lacking || state.pull != Pull::None {
            return Ok(());
        }
        // Ranges tell both sides what the other lacks; a filter only what this side lacks.
        let since = self.usable_shared(store, doc)?.filter(|_| takes);
        let fresh = since.as_ref().map(|s| store.hashes_since(doc, s));
        let state = self.docs.entry(doc.clone()).or_default();
        match (since, fresh) {
            (Some(since), Some(fresh)) if fresh.len() <= MAX_FILTER_HASHES => {
                out.have(
                    doc,
                    make_have(&since, &fresh, self.config.false_positive_rate),
                );
                state.pull = Pull::Filter { answered: false };
            }
            _ => {
                let set = recon::HashSet::new(store.hashes_since(doc, &[]));
                out.ranges(doc, vec![set.open()]);
                state.pull = Pull::Ranges;
            }
        }
        Ok(())
    }

    fn doc_done(&self, store: &mut impl SyncStore, doc: &DocId, state: &DocState) -> bool {
        if state.refused {
            return true;
        }
        if state.more {
            return false;
        }
        let Some(theirs) = &state.theirs else {
            return true;
        };
        let ours = store.heads(doc);
        if *theirs == ours {
            return true;
        }
        if !has_all(store, doc, theirs) {
            return !self.access.may_write(doc);
        }
        !self.access.may_read(doc) || state.pushed.as_ref() == Some(&(theirs.clone(), ours))
    }
}

const KEYLESS: &str = "a signature leaves out its key, which only a peer whose key this node \
     has from the handshake may do";

/// The signatures `wire` stands for, the sender's key being `sender`: where only a prefix of
/// a change's hash travelled, the change among those `matching` it whose signature verifies
/// (or, when none does, one that fails, so that the part is refused as altered); nothing
/// for a change that is not here (sent again: it is stored and vouched for already).
/// `None` when a signature leaves out its key and `sender` is unknown.
fn expand(
    wire: &[WireSignature],
    sender: Option<&[u8; 32]>,
    matching: impl Fn(&[u8]) -> Vec<ChangeHash>,
) -> Option<Vec<ChangeSignature>> {
    let mut signatures = Vec::with_capacity(wire.len());
    for signature in wire {
        let mut candidates = signature.candidates(sender, &matching)?;
        // Only two changes sharing a prefix need a check here; `Vouching` checks the one kept.
        let good = match candidates.len() {
            0 => continue,
            1 => 0,
            _ => candidates
                .iter()
                .position(|c| c.verify().is_ok())
                .unwrap_or(0),
        };
        signatures.push(candidates.swap_remove(good));
    }
    Some(signatures)
}

/// The messages in `out`, with the signatures that vouch for every change they carry.
fn seal(
    store: &mut impl SyncStore,
    mut out: Outbox,
    complete: bool,
    own_key: Option<&[u8; 32]>,
) -> Result<Vec<Message>, SyncError> {
    for (doc, hashes) in out.sending() {
        // A change sent with its signature is named by a prefix of its hash; a whole
        // document's signatures keep whole hashes (the receiver does not list its changes
        // before it vets them).
        let short = hashes.is_some();
        let signatures = store
            .signatures(&doc)?
            .iter()
            .filter(|s| hashes.as_ref().is_none_or(|h| h.contains(&s.change())))
            .map(|s| WireSignature::new(s, own_key, short))
            .collect();
        out.signatures(&doc, signatures);
    }
    Ok(out.into_messages(complete))
}

/// The changes `fresh` names and, when later ones were made since (`heads` are not all
/// among them), every change that descends from them. A store keeps each signer's newest
/// signature per document only (`trust`), so a change pushed once a later one exists has no
/// signature of its own left: sent alone, the peer would refuse it for want of one. Sent with
/// its descendants up to the newest, it goes with the signature that vouches for it. Those
/// descendants are what the next pushes would send anyway (each change goes once per session).
fn with_descendants(
    store: &mut impl SyncStore,
    doc: &DocId,
    fresh: &[ChangeHash],
    heads: &[ChangeHash],
) -> Vec<Change> {
    let mut changes: Vec<Change> = fresh.iter().filter_map(|h| store.change(doc, h)).collect();
    if heads.iter().all(|head| fresh.contains(head)) {
        return changes;
    }
    let mut named: HashSet<ChangeHash> = changes.iter().map(Change::hash).collect();
    // In causal order: a descendant comes after the changes it depends on.
    for change in store.changes_since(doc, fresh) {
        if !named.contains(&change.hash()) && change.deps().iter().any(|d| named.contains(d)) {
            named.insert(change.hash());
            changes.push(change);
        }
    }
    changes
}

fn make_have(since: &[ChangeHash], fresh: &[ChangeHash], fp_rate: f64) -> Have {
    Have {
        since: since.iter().map(|h| h.0).collect(),
        filter: filter::build(fresh.iter(), fp_rate),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Scope;
    use crate::replica::Replica;

    #[test]
    fn a_whole_document_sent_lists_its_changes_and_none_made_after_it() {
        let dir = tempfile::tempdir().unwrap();
        let key = crate::trust::NodeKey::insecure_from_name("a");
        let mut store = Replica::open(&dir.path().join("a"), key).unwrap();
        let put = |store: &mut Replica, key: &str| {
            (store.put_memory(&Scope::Mesh, key, serde_json::json!(1))).unwrap();
        };
        let mesh = DocId::Memory(Scope::Mesh);
        put(&mut store, "one");
        put(&mut store, "two");
        let in_document = store.hashes_since(&mesh, &[]);
        let mut sent = Sent {
            document: Some(SyncStore::heads(&store, &mesh)),
            ..Sent::default()
        };
        assert!(!sent.is_empty());
        put(&mut store, "three");
        let listed: HashSet<ChangeHash> = sent.listed(&mut store, &mesh).clone();
        assert_eq!(listed, in_document.into_iter().collect());
        assert!(sent.document.is_none(), "listed once");
    }
}
