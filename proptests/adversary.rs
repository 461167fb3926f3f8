//! A lying relay never gets a change accepted that its author did not make.
//!
//! Three replicas: `a` and `c` are honest; `m` is a paired peer (its TLS identity is real)
//! that relays between them and lies. `m` runs the real session code on its own store, but
//! every frame it sends to an honest node can be altered on the way: a byte of a change
//! bundle flipped, signatures dropped, garbled or re-signed with `m`'s own key, or a change
//! added that `m` built by hand: one whose actor id says `c` made it (unsigned, signed by `m`,
//! or "signed" with `c`'s public key and bytes that are no signature), or one written into
//! `c`'s own scope by `m`, or by an actor that names nobody.
//!
//! After every step, every change an honest node stores is one that some node really made
//! through its replica, every change in `node:<c>` was made by `c`, and the node can vouch
//! for all it holds. At the end, honest rounds bring `a` and `c` to the same state: what
//! the liar did never split them.
//!
//! In half the cases every node keeps its writes in bucket documents (a base capacity of 0),
//! and the liar forges into the bucket of the key it plants: a bucket of `node:<c>` is `c`'s
//! alone as well.
//!
//! `PROPTEST_CASES` raises the case count (default 32).

use std::collections::{HashSet, VecDeque};

use automerge::transaction::Transactable;
use automerge::{ActorId, Change, ChangeHash, ROOT};
use meshd::model::{DocId, Scope};
use meshd::replica::Replica;
use meshd::sync::harness::{Link, Wire};
use meshd::sync::{pack, Access, Config, DocPart, Message, Session, Sync, WireSignature};
use meshd::trust::{ChangeSignature, NodeKey};
use proptest::prelude::*;

const DEFAULT_CASES: u32 = 32;
const A: usize = 0;
const C: usize = 1;
const M: usize = 2;
const NAMES: [&str; 3] = ["a", "c", "m"];
const KEYS: usize = 3;

#[derive(Debug, Clone)]
enum Op {
    /// Node `at` writes `key` in the mesh scope, or in its own node scope.
    Write {
        at: usize,
        own_scope: bool,
        key: usize,
        value: i64,
    },
    /// An honest round between `a` and `c`.
    Honest,
    /// A round between `m` and honest node `to`, which `m` opens or not, with `m`'s frames
    /// altered by `lie`.
    Relay { to: usize, m_opens: bool, lie: Lie },
}

/// What the relay does to the frames it sends.
#[derive(Debug, Clone)]
enum Lie {
    Nothing,
    FlipBundleByte {
        at: usize,
    },
    DropSignatures,
    GarbleSignatures,
    /// Each signature replaced by the relay's own over the same change, its key sent along or
    /// left out (the receiver then takes the relay's key from the handshake).
    ResignAsRelay {
        omit_key: bool,
    },
    /// A hand-built change whose actor id says `c` made it, in the mesh or in `node:<c>`.
    ForgeAsC {
        own_scope: bool,
        signed: Forgery,
    },
    /// A change by `m`'s own actor into `node:<c>`, signed by `m`.
    WriteIntoC,
    /// A change whose actor names nobody, into `node:<c>`, signed by `m`.
    NamelessIntoC,
}

/// How a forged change is vouched for.
#[derive(Debug, Clone, Copy)]
enum Forgery {
    Unsigned,
    SignedByRelay,
    /// `c`'s public key with 64 bytes that are not its signature.
    FakeSignatureOfC,
}

fn lie() -> impl Strategy<Value = Lie> {
    let forgery = prop_oneof![
        Just(Forgery::Unsigned),
        Just(Forgery::SignedByRelay),
        Just(Forgery::FakeSignatureOfC),
    ];
    prop_oneof![
        2 => Just(Lie::Nothing),
        1 => any::<usize>().prop_map(|at| Lie::FlipBundleByte { at }),
        1 => Just(Lie::DropSignatures),
        1 => Just(Lie::GarbleSignatures),
        1 => any::<bool>().prop_map(|omit_key| Lie::ResignAsRelay { omit_key }),
        2 => (any::<bool>(), forgery).prop_map(|(own_scope, signed)| Lie::ForgeAsC { own_scope, signed }),
        1 => Just(Lie::WriteIntoC),
        1 => Just(Lie::NamelessIntoC),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0..3usize, any::<bool>(), 0..KEYS, any::<i64>())
            .prop_map(|(at, own_scope, key, value)| Op::Write { at, own_scope, key, value }),
        1 => Just(Op::Honest),
        4 => (prop_oneof![Just(A), Just(C)], any::<bool>(), lie())
            .prop_map(|(to, m_opens, lie)| Op::Relay { to, m_opens, lie }),
    ]
}

struct World {
    _dir: tempfile::TempDir,
    keys: Vec<NodeKey>,
    replicas: Vec<Replica>,
    /// Every change some node made through its replica.
    genuine: HashSet<ChangeHash>,
    /// Every node writes to buckets, and forgeries go to a bucket.
    bucketed: bool,
}

impl World {
    fn new(bucketed: bool) -> World {
        let dir = tempfile::tempdir().unwrap();
        let keys: Vec<NodeKey> = NAMES
            .iter()
            .map(|n| NodeKey::insecure_from_name(n))
            .collect();
        let replicas = NAMES
            .iter()
            .zip(&keys)
            .map(|(name, key)| {
                let mut replica = Replica::open(&dir.path().join(name), key.clone()).unwrap();
                if bucketed {
                    replica.set_base_capacity(0);
                }
                replica
            })
            .collect();
        World {
            _dir: dir,
            keys,
            replicas,
            genuine: HashSet::new(),
            bucketed,
        }
    }

    fn own_scope(&self, at: usize) -> Scope {
        Scope::Node(self.replicas[at].node_id().to_string())
    }

    fn run(&mut self, op: &Op) {
        match op {
            Op::Write {
                at,
                own_scope,
                key,
                value,
            } => {
                let scope = if *own_scope {
                    self.own_scope(*at)
                } else {
                    Scope::Mesh
                };
                self.write(*at, scope, &format!("k{key}"), *value);
            }
            Op::Honest => self.round(A, C, None),
            Op::Relay { to, m_opens, lie } => {
                let forged = self.forge(lie);
                let genuine = self.genuine.iter().copied().collect();
                let tamper = Tamper::new(lie.clone(), genuine, forged, self.keys[M].clone());
                if *m_opens {
                    self.round(M, *to, Some(tamper));
                } else {
                    self.round(*to, M, Some(tamper));
                }
            }
        }
    }

    fn write(&mut self, at: usize, scope: Scope, key: &str, value: i64) {
        let replica = &mut self.replicas[at];
        let doc = replica
            .memory_doc_for(&scope, key)
            .expect("the index reads");
        let before = replica
            .document(&doc)
            .map(|d| d.get_heads())
            .unwrap_or_default();
        replica
            .put_memory(&scope, key, serde_json::json!(value))
            .expect("an honest write is stored");
        let made = replica.document(&doc).unwrap().get_changes(&before);
        self.genuine.extend(made.iter().map(|c| c.hash()));
    }

    /// The change `lie` adds, with what vouches for it: built on `m`'s copy of the document,
    /// so that its dependencies are ones the honest node may well hold.
    fn forge(&mut self, lie: &Lie) -> Option<(DocId, Change, Vec<ChangeSignature>)> {
        let c_scope = self.own_scope(C);
        let (scope, actor, signed) = match lie {
            Lie::ForgeAsC { own_scope, signed } => {
                let scope = if *own_scope { c_scope } else { Scope::Mesh };
                (scope, self.keys[C].actor(), *signed)
            }
            Lie::WriteIntoC => (c_scope, self.keys[M].actor(), Forgery::SignedByRelay),
            Lie::NamelessIntoC => (c_scope, ActorId::random(), Forgery::SignedByRelay),
            _ => return None,
        };
        let doc = if self.bucketed {
            DocId::bucket_for(&scope, "k0")
        } else {
            DocId::Memory(scope)
        };
        let mut copy = self.replicas[M]
            .document(&doc)
            .map(|d| d.fork())
            .unwrap_or_default()
            .with_actor(actor);
        let c_id = self.replicas[C].node_id().to_string();
        let mut tx = copy.transaction();
        // Stamped now: a far-future stamp would be refused by the clock guard, before any
        // signature is looked at.
        let version = serde_json::json!({
            "value": "planted", "node_id": c_id, "updated_at": meshd::replica::system_clock(), "deleted": false,
        });
        tx.put(ROOT, "k0", version.to_string()).unwrap();
        tx.commit();
        let change = copy.get_last_local_change().unwrap().clone();
        let hash = change.hash();
        let signatures = match signed {
            Forgery::Unsigned => Vec::new(),
            Forgery::SignedByRelay => vec![self.keys[M].sign(&hash)],
            Forgery::FakeSignatureOfC => vec![ChangeSignature {
                key: self.keys[C].public_key(),
                hash: hash.0,
                sig: vec![7; 64],
            }],
        };
        Some((doc, change, signatures))
    }

    /// A round between `first` (which opens it) and `second`; frames toward the honest side
    /// of a relay round pass through `tamper`. A session that fails ends the connection, as
    /// the daemon's link does.
    fn round(&mut self, first: usize, second: usize, tamper: Option<Tamper>) {
        let honest_side = if first == M { 1 } else { 0 };
        let name = |i: usize| self.replicas[i].node_id().to_string();
        let key = |i: usize| self.keys[i].public_key();
        let sessions = [
            Session::new(name(second), Access::full(), Config::default())
                .with_keys(key(first), key(second)),
            Session::new(name(first), Access::full(), Config::default())
                .with_keys(key(second), key(first)),
        ];
        let wire = Relay {
            queue: VecDeque::new(),
            honest_side,
            tamper,
        };
        let mut link = Link::new(sessions, wire);
        let [s0, s1] = pair(&mut self.replicas, first, second);
        let stores = [s0, s1];
        if link.start(0, &mut *stores[0]).is_err() {
            return;
        }
        for _ in 0..2_000 {
            let Ok(Some((to, message))) = link.receive() else {
                break;
            };
            if link.handle(to, &mut *stores[to], message).is_err() {
                break;
            }
        }
    }
}

/// Two distinct replicas of `all`, borrowed at once.
fn pair(all: &mut [Replica], i: usize, j: usize) -> [&mut Replica; 2] {
    assert_ne!(i, j);
    let (low, high) = all.split_at_mut(i.max(j));
    if i < j {
        [&mut low[i], &mut high[0]]
    } else {
        [&mut high[0], &mut low[j]]
    }
}

/// The lies of one round, applied to frames toward the honest side.
struct Tamper {
    lie: Lie,
    /// Every change made so far: the relay knows the changes it relays.
    genuine: Vec<ChangeHash>,
    forged: Option<(DocId, Change, Vec<ChangeSignature>)>,
    relay_key: NodeKey,
}

impl Tamper {
    fn new(
        lie: Lie,
        genuine: Vec<ChangeHash>,
        forged: Option<(DocId, Change, Vec<ChangeSignature>)>,
        relay_key: NodeKey,
    ) -> Tamper {
        Tamper {
            lie,
            genuine,
            forged,
            relay_key,
        }
    }

    fn alter(&mut self, message: &mut Message) {
        let Message::Sync(sync) = message else {
            if let (Message::Hello(hello), Some(part)) = (&mut *message, self.forged_part()) {
                hello.docs.push(part);
            }
            return;
        };
        self.alter_sync(sync);
    }

    fn alter_sync(&mut self, sync: &mut Sync) {
        for part in &mut sync.docs {
            match &self.lie {
                Lie::FlipBundleByte { at } => {
                    if let Some(bundle) = &mut part.changes {
                        flip(bundle_bytes(bundle), *at);
                    }
                }
                Lie::DropSignatures => part.signatures.clear(),
                Lie::GarbleSignatures => {
                    for signature in &mut part.signatures {
                        flip(&mut signature.sig, signature.change[0] as usize);
                    }
                }
                Lie::ResignAsRelay { omit_key } => {
                    let own = self.relay_key.public_key();
                    for signature in &mut part.signatures {
                        let Some(&hash) = self
                            .genuine
                            .iter()
                            .find(|h| h.0.starts_with(&signature.change))
                        else {
                            continue;
                        };
                        let short = signature.change.len() < 32;
                        let sender = omit_key.then_some(&own);
                        *signature = WireSignature::new(&self.relay_key.sign(&hash), sender, short);
                    }
                }
                _ => {}
            }
        }
        if let Some(part) = self.forged_part() {
            sync.docs.push(part);
        }
    }

    /// The forged change as a document part of its own: sent once.
    fn forged_part(&mut self) -> Option<DocPart> {
        let (doc, change, signatures) = self.forged.take()?;
        Some(DocPart {
            doc: doc.name(),
            changes: pack(&[change]).into_iter().next(),
            signatures: signatures
                .iter()
                .map(|s| WireSignature::new(s, None, true))
                .collect(),
            ..DocPart::default()
        })
    }
}

fn bundle_bytes(bundle: &mut meshd::sync::Bundle) -> &mut Vec<u8> {
    match bundle {
        meshd::sync::Bundle::Changes(bytes)
        | meshd::sync::Bundle::Document(bytes)
        | meshd::sync::Bundle::Piece(bytes) => bytes,
    }
}

fn flip(bytes: &mut [u8], at: usize) {
    if !bytes.is_empty() {
        let at = at % bytes.len();
        bytes[at] ^= 0x5a;
    }
}

/// A reliable wire whose frames toward the honest side pass through the relay's lies.
struct Relay {
    queue: VecDeque<(usize, Vec<u8>)>,
    honest_side: usize,
    tamper: Option<Tamper>,
}

impl Wire for Relay {
    fn send(&mut self, to: usize, frame: Vec<u8>) {
        let frame = match (&mut self.tamper, to == self.honest_side) {
            (Some(tamper), true) => match Message::decode(&frame) {
                Ok(mut message) => {
                    tamper.alter(&mut message);
                    message.encode()
                }
                Err(_) => frame,
            },
            _ => frame,
        };
        self.queue.push_back((to, frame));
    }

    fn next(&mut self) -> Option<(usize, Vec<u8>)> {
        self.queue.pop_front()
    }
}

/// What must hold at honest node `at` after every step.
fn check_honest(world: &mut World, at: usize) -> Result<(), String> {
    let c_id = world.keys[C].node_id();
    let c_scope = world.own_scope(C);
    let genuine = world.genuine.clone();
    let replica = &mut world.replicas[at];
    for doc in replica.doc_ids() {
        let changes: Vec<Change> = replica
            .document(&doc)
            .map(|d| d.get_changes(&[]))
            .unwrap_or_default();
        for change in &changes {
            if !genuine.contains(&change.hash()) {
                return Err(format!(
                    "{} stores change {} in {doc}, which no node made",
                    NAMES[at],
                    change.hash()
                ));
            }
            if doc.scope() == Some(&c_scope)
                && meshd::trust::author_of(change.actor_id()) != meshd::trust::Author::Node(c_id)
            {
                return Err(format!(
                    "{} stores a change to {doc} that c did not make",
                    NAMES[at]
                ));
            }
        }
        let signatures = replica.signatures(&doc).map_err(|e| e.to_string())?;
        let history: Vec<meshd::trust::Link> = changes.iter().map(meshd::trust::Link::of).collect();
        meshd::trust::check_all(&doc, &history, signatures, |_| false)
            .map_err(|e| format!("{} cannot vouch for {doc}: {e}", NAMES[at]))?;
    }
    Ok(())
}

fn heads(replica: &mut Replica) -> Vec<(String, Vec<ChangeHash>)> {
    let mut all: Vec<(String, Vec<ChangeHash>)> = replica
        .doc_ids()
        .into_iter()
        .map(|doc| {
            let mut heads = replica
                .document(&doc)
                .map(|d| d.get_heads())
                .unwrap_or_default();
            heads.sort();
            (doc.name(), heads)
        })
        .filter(|(_, heads)| !heads.is_empty())
        .collect();
    all.sort();
    all
}

fn survive(ops: &[Op], bucketed: bool) -> Result<(), TestCaseError> {
    let mut world = World::new(bucketed);
    for op in ops {
        world.run(op);
        for at in [A, C] {
            check_honest(&mut world, at)
                .map_err(|e| TestCaseError::fail(format!("after {op:?}: {e}")))?;
        }
    }
    // Honest rounds: the liar's lies did not split a and c, and what m made honestly
    // reaches them.
    world.round(M, A, None);
    world.round(M, C, None);
    world.round(A, C, None);
    world.round(C, A, None);
    for at in [A, C] {
        check_honest(&mut world, at).map_err(TestCaseError::fail)?;
    }
    let (a, c) = (heads(&mut world.replicas[A]), heads(&mut world.replicas[C]));
    prop_assert_eq!(a, c, "a and c hold different documents after honest rounds");
    Ok(())
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|cases| cases.parse().ok())
        .unwrap_or(DEFAULT_CASES)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    #[test]
    fn a_lying_relay_never_gets_a_forged_change_accepted(
        ops in prop::collection::vec(op(), 1..24),
        bucketed in any::<bool>(),
    ) {
        survive(&ops, bucketed)?;
    }
}
