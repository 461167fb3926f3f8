//! Whole sessions between two real replicas over a reliable in-memory wire (the sync harness):
//! message counts and sizes of each path, access rules, the reset path, live push, and hostile
//! input.

use std::cell::Cell;

use automerge::{Change, ChangeHash};

use meshd::model::{DocId, Scope};
use meshd::replica::{Replica, SkillWrite};
use meshd::sync::harness::{Link, Traffic};
use meshd::sync::{
    Access, Bundle, Config, DocPart, Have, Heads, Knowledge, Message, Session, StoreError, Sync,
    SyncError, SyncStore,
};
use meshd::trust::ChangeSignature;

struct Peer {
    _dir: tempfile::TempDir,
    replica: Replica,
}

fn peer(name: &str) -> Peer {
    let dir = tempfile::tempdir().unwrap();
    let replica = Replica::open(
        &dir.path().join(name),
        meshd::trust::NodeKey::insecure_from_name(name),
    )
    .unwrap();
    Peer { _dir: dir, replica }
}

fn write(peer: &mut Peer, scope: Scope, keys: std::ops::Range<usize>) {
    for i in keys {
        peer.replica
            .put_memory(&scope, &format!("key{i}"), serde_json::json!({ "n": i }))
            .unwrap();
    }
}

fn config(fp: f64) -> Config {
    Config {
        false_positive_rate: fp,
    }
}

/// Runs a round from `a` to `b` over a reliable wire until both fall silent.
fn round(a: &mut Peer, b: &mut Peer, access_b: Access, access_a: Access, fp: f64) -> Traffic {
    let mut link = Link::reliable([
        Session::new("b", access_b, config(fp)),
        Session::new("a", access_a, config(fp)),
    ])
    .with_limit(1000);
    link.round([&mut a.replica, &mut b.replica])
        .expect("the sessions agree and fall silent");
    assert!(link.round_done(0) && link.round_done(1));
    link.traffic().clone()
}

/// Two sessions with full access on one connection: side 0 runs on `a`, side 1 on `b`; each
/// direction is an in-order stream, as over QUIC.
fn connection() -> Link {
    Link::reliable([
        Session::new("b", Access::full(), Config::default()),
        Session::new("a", Access::full(), Config::default()),
    ])
}

fn full_round(a: &mut Peer, b: &mut Peer) -> Traffic {
    round(a, b, Access::full(), Access::full(), 0.01)
}

fn same(a: &Peer, b: &Peer) -> bool {
    a.replica.list_memory(None).unwrap() == b.replica.list_memory(None).unwrap()
        && a.replica
            .doc_ids()
            .iter()
            .all(|doc| a.replica.heads(doc) == b.replica.heads(doc))
}

#[test]
fn equal_roots_end_after_one_message_each_way() {
    let (mut a, mut b) = (peer("a"), peer("b"));
    write(&mut a, Scope::Mesh, 0..50);
    full_round(&mut a, &mut b);
    assert!(same(&a, &b));
    let again = full_round(&mut a, &mut b);
    assert_eq!(again.messages, 2);
    assert!(again.bytes <= 128, "{again:?}");
}

#[test]
fn stored_heads_make_a_two_sided_difference_three_messages() {
    let (mut a, mut b) = (peer("a"), peer("b"));
    write(&mut a, Scope::Mesh, 0..100);
    full_round(&mut a, &mut b);
    write(&mut a, Scope::Mesh, 100..110);
    write(&mut b, Scope::Mesh, 200..210);
    // A filter with no false positives: the repair path has its own test.
    let traffic = round(&mut a, &mut b, Access::full(), Access::full(), 1e-9);
    assert!(same(&a, &b));
    assert_eq!(traffic.messages, 3, "{traffic:?}");
    assert_eq!(a.replica.list_memory(None).unwrap().len(), 120);
}

#[test]
fn concurrent_peers_without_stored_state_reconcile_ranges() {
    let (mut a, mut b) = (peer("a"), peer("b"));
    write(&mut a, Scope::Mesh, 0..200);
    full_round(&mut a, &mut b);
    b.replica.db().drop_tree("sync-shared-heads").unwrap();
    a.replica.db().drop_tree("sync-shared-heads").unwrap();
    write(&mut a, Scope::Mesh, 300..305);
    write(&mut b, Scope::Mesh, 400..405);
    let traffic = full_round(&mut a, &mut b);
    assert!(same(&a, &b));
    assert!(traffic.ranges, "{traffic:?}");
    assert_eq!(a.replica.list_memory(None).unwrap().len(), 210);
}

#[test]
fn a_side_that_lost_its_state_is_reset() {
    let (mut a, mut b) = (peer("a"), peer("b"));
    write(&mut a, Scope::Mesh, 0..30);
    full_round(&mut a, &mut b);
    write(&mut a, Scope::Mesh, 30..40);
    write(&mut b, Scope::Mesh, 50..60);
    // `a` believes `b` holds all of `a`'s heads, which `b` never received.
    let mesh = DocId::Memory(Scope::Mesh);
    let heads = a.replica.document(&mesh).unwrap().get_heads();
    a.replica
        .set_shared_heads("b", &mesh, Some(&heads))
        .unwrap();
    b.replica
        .set_shared_heads("a", &mesh, Some(&heads))
        .unwrap();
    full_round(&mut a, &mut b);
    assert!(same(&a, &b));
    assert_eq!(b.replica.list_memory(None).unwrap().len(), 50);
}

#[test]
fn false_positives_are_repaired_by_hash() {
    let (mut a, mut b) = (peer("a"), peer("b"));
    write(&mut a, Scope::Mesh, 0..50);
    full_round(&mut a, &mut b);
    write(&mut a, Scope::Mesh, 50..90);
    write(&mut b, Scope::Mesh, 100..140);
    round(&mut a, &mut b, Access::full(), Access::full(), 0.99);
    assert!(same(&a, &b));
    assert_eq!(a.replica.list_memory(None).unwrap().len(), 130);
}

#[test]
fn a_fresh_peer_gets_the_whole_document() {
    let (mut a, mut b) = (peer("a"), peer("b"));
    write(&mut a, Scope::Mesh, 0..500);
    write(&mut a, Scope::User("ann".into()), 0..5);
    let traffic = full_round(&mut a, &mut b);
    assert!(same(&a, &b));
    assert_eq!(traffic.messages, 3, "{traffic:?}");
}

/// Plants in `peer`'s store (whose key is `name`'s) a change to `key` of `doc` whose actor
/// id says node `author` made it, signed by `peer` only: what a node that rewrote its own
/// meshd could hold.
fn plant(peer: &mut Peer, name: &str, doc: &DocId, author: &str, key: &str) -> Change {
    use automerge::transaction::Transactable;
    let mut copy = peer
        .replica
        .document(doc)
        .map(automerge::Automerge::fork)
        .unwrap_or_default()
        .with_actor(meshd::trust::NodeKey::insecure_from_name(author).actor());
    let mut tx = copy.transaction();
    tx.put(automerge::ROOT, key, "planted").unwrap();
    tx.commit();
    let forged = copy.get_last_local_change().unwrap().clone();
    let signature = meshd::trust::NodeKey::insecure_from_name(name).sign(&forged.hash());
    peer.replica
        .apply_changes(doc, vec![forged.clone()], vec![signature])
        .unwrap();
    forged
}

/// A relay whose store holds one forged change (its actor says node "x", only the relay
/// signed it) still passes on what honest node `c` wrote, in a document a fresh peer gets
/// whole: the forged change is refused, `c`'s go in.
#[test]
fn a_forged_change_in_a_whole_document_keeps_only_itself_out() {
    let (mut a, mut relay, mut c) = (peer("a"), peer("relay"), peer("c"));
    write(&mut c, Scope::Mesh, 0..20);
    full_round(&mut c, &mut relay);
    let doc = DocId::Memory(Scope::Mesh);
    let forged = plant(&mut relay, "relay", &doc, "x", "forged");
    let traffic = full_round(&mut a, &mut relay);
    assert!(
        traffic.refused,
        "the forged change was not refused: {traffic:?}"
    );
    assert!(!a.replica.has_change(&doc, &forged.hash()));
    assert_eq!(a.replica.list_memory(None).unwrap().len(), 20);
    assert_eq!(a.replica.heads(&doc), c.replica.heads(&doc));
}

#[test]
fn documents_the_peer_may_not_read_are_never_offered() {
    let (mut a, mut b) = (peer("a"), peer("b"));
    write(&mut a, Scope::Mesh, 0..5);
    write(&mut a, Scope::User("ann".into()), 0..5);
    let mesh_only = Access::lists(vec![DocId::Memory(Scope::Mesh)], vec![]);
    round(&mut a, &mut b, mesh_only, Access::full(), 0.01);
    assert_eq!(b.replica.doc_ids(), vec![DocId::Memory(Scope::Mesh)]);
}

#[test]
fn changes_to_documents_the_peer_may_not_write_are_refused() {
    let (mut a, mut b) = (peer("a"), peer("b"));
    write(&mut a, Scope::Mesh, 0..5);
    full_round(&mut a, &mut b);
    write(&mut b, Scope::Mesh, 10..12);
    let read_only = Access::new(|_| true, |_| false);
    // `a` lets `b` read everything but write nothing.
    let traffic = round(&mut a, &mut b, read_only, Access::full(), 0.01);
    assert!(traffic.refused, "{traffic:?}");
    assert_eq!(a.replica.list_memory(None).unwrap().len(), 5);
}

#[test]
fn live_push_reaches_a_synced_peer_in_one_message() {
    let (mut a, mut b) = (peer("a"), peer("b"));
    write(&mut a, Scope::Mesh, 0..5);
    let mut link = connection();
    link.round([&mut a.replica, &mut b.replica]).unwrap();
    assert_eq!(
        link.take_applied(1).len(),
        1,
        "the first round brought the document"
    );
    write(&mut a, Scope::Mesh, 5..6);
    let mesh = DocId::Memory(Scope::Mesh);
    let fresh = a.replica.document(&mesh).unwrap().get_heads();
    let push = link.push(0, &mut a.replica, &mesh, &fresh).unwrap();
    assert_eq!(push.messages.len(), 1);
    let answer = link
        .deliver_to(1, &mut b.replica)
        .unwrap()
        .expect("the push arrives");
    assert!(answer.messages.is_empty(), "{:?}", answer.messages);
    assert!(same(&a, &b));
    assert_eq!(answer.applied.len(), 1);
    assert_eq!(answer.applied[0].hashes, fresh);
    // `b` forwards the changes to its other peers, never back to `a`, which made them: in a
    // ring, a change that went the long way round came back to its author and drew its
    // answer with the writes its push pace held back.
    let node = |name: &str| meshd::trust::NodeKey::insecure_from_name(name).node_id();
    assert_eq!(answer.applied[0].to_forward(&node("c")), fresh);
    assert!(answer.applied[0].to_forward(&node("a")).is_empty());
}

fn hello_root(messages: &[Message]) -> [u8; 32] {
    match messages {
        [Message::Hello(hello)] => hello.root,
        other => panic!("not one Hello: {other:?}"),
    }
}

/// At connect both sides open a round (src/net/link.rs), and a local write may be pushed
/// before the side that pushes has read anything. On the side that leads, that push arrives
/// before the answer to its `Hello`, and must not be taken for it: when the answer then says
/// the peer did not take the stored state, a document the `Hello` left out must still be
/// settled in this round.
#[test]
fn a_push_that_overtakes_the_answer_to_a_hello_is_not_taken_for_it() {
    let skills = DocId::Skills;
    // The smaller root leads, and roots hash changes made by random actors: retry until `a`
    // leads.
    for _ in 0..64 {
        let (mut a, mut b) = (peer("a"), peer("b"));
        write(&mut a, Scope::Mesh, 0..5);
        full_round(&mut a, &mut b);
        // `b` moves on alone: `a`'s next Hello leaves the mesh out as unchanged since shared.
        write(&mut b, Scope::Mesh, 5..6);
        let mut link = connection();
        let hello_a = link.start(0, &mut a.replica).unwrap().messages;
        let hello_b = link.start(1, &mut b.replica).unwrap().messages;
        if hello_root(&hello_a) > hello_root(&hello_b) {
            continue;
        }
        b.replica
            .put_skill(SkillWrite {
                name: "s".into(),
                content: "x".into(),
                ..SkillWrite::default()
            })
            .unwrap();
        let fresh = b.replica.document(&skills).unwrap().get_heads();
        let _push = link.push(1, &mut b.replica, &skills, &fresh).unwrap();
        // `a` reads `b`'s Hello (it leads: ignored) and the push; then `b` answers `a`'s Hello.
        link.read_all(0, &mut a.replica).unwrap();
        link.settle([&mut a.replica, &mut b.replica]).unwrap();
        assert!(same(&a, &b), "the round left the replicas apart");
        assert_eq!(a.replica.list_memory(None).unwrap().len(), 6);
        assert!(a.replica.get_skill("s").unwrap().is_some());
        assert!(link.round_done(0), "the leader's round is not done");
        assert!(link.round_done(1), "the answer's round is not done");
        return;
    }
    panic!("`a` never led");
}

/// A `SyncStore` that counts the changes `changes_since` builds.
struct Counting<'a> {
    replica: &'a mut Replica,
    built: Cell<usize>,
}

impl SyncStore for Counting<'_> {
    fn doc_ids(&self) -> Vec<DocId> {
        self.replica.doc_ids()
    }
    fn heads(&self, doc: &DocId) -> Vec<ChangeHash> {
        SyncStore::heads(&*self.replica, doc)
    }
    fn change_count(&self, doc: &DocId) -> u64 {
        self.replica.change_count(doc)
    }
    fn has_change(&mut self, doc: &DocId, hash: &ChangeHash) -> bool {
        self.replica.has_change(doc, hash)
    }
    fn hashes_since(&mut self, doc: &DocId, heads: &[ChangeHash]) -> Vec<ChangeHash> {
        self.replica.hashes_since(doc, heads)
    }
    fn changes_since(&mut self, doc: &DocId, heads: &[ChangeHash]) -> Vec<Change> {
        let changes = self.replica.changes_since(doc, heads);
        self.built.set(self.built.get() + changes.len());
        changes
    }
    fn change(&mut self, doc: &DocId, hash: &ChangeHash) -> Option<Change> {
        SyncStore::change(self.replica, doc, hash)
    }
    fn snapshot(&mut self, doc: &DocId) -> Option<Vec<u8>> {
        self.replica.snapshot(doc)
    }
    fn missing_deps(&mut self, doc: &DocId, heads: &[ChangeHash]) -> Vec<ChangeHash> {
        self.replica.missing_deps(doc, heads)
    }
    fn vet(&mut self, doc: &DocId, changes: &[Change]) -> Result<(), String> {
        self.replica.vet(doc, changes)
    }
    fn vet_document(
        &mut self,
        doc: &DocId,
        saved: &[u8],
        signatures: Vec<ChangeSignature>,
    ) -> Result<Vec<ChangeSignature>, String> {
        SyncStore::vet_document(self.replica, doc, saved, signatures)
    }
    fn apply(
        &mut self,
        doc: &DocId,
        changes: Vec<Change>,
        signatures: Vec<ChangeSignature>,
    ) -> Result<Vec<ChangeHash>, StoreError> {
        self.replica.apply(doc, changes, signatures)
    }
    fn apply_document(
        &mut self,
        doc: &DocId,
        saved: &[u8],
        signatures: Vec<ChangeSignature>,
    ) -> Result<Vec<ChangeHash>, StoreError> {
        self.replica.apply_document(doc, saved, signatures)
    }
    fn signatures(&mut self, doc: &DocId) -> Result<Vec<ChangeSignature>, StoreError> {
        SyncStore::signatures(self.replica, doc)
    }
    fn shared_heads(&self, peer: &str, doc: &DocId) -> Result<Option<Vec<ChangeHash>>, StoreError> {
        self.replica.shared_heads(peer, doc)
    }
    fn set_shared_heads(
        &mut self,
        peer: &str,
        doc: &DocId,
        heads: Option<&[ChangeHash]>,
    ) -> Result<(), StoreError> {
        self.replica.set_shared_heads(peer, doc, heads)
    }
}

/// A burst of local writes, each pushed at once over a reliable connection to a peer whose
/// heads are known: the peer holds every change with no further round, and the push stays
/// linear, both on the wire and in the changes built (the previous exact push's heads are
/// where the next one starts; from the peer's heads it would rebuild 1 + 2 + … + n changes).
#[test]
fn a_burst_of_pushes_arrives_whole_and_stays_linear() {
    const BURST: usize = 200;
    let (mut a, mut b) = (peer("a"), peer("b"));
    write(&mut a, Scope::Mesh, 0..5);
    write(&mut b, Scope::Mesh, 100..105);
    // The connection's own round: each side ends up knowing the other's heads.
    let mut link = connection();
    link.round([&mut a.replica, &mut b.replica]).unwrap();
    assert!(same(&a, &b));
    let _first_round = link.take_applied(1);
    let mesh = DocId::Memory(Scope::Mesh);
    let mut one_change = None;
    let (mut built, mut bytes) = (0, 0);
    for i in 0..BURST {
        let before = SyncStore::heads(&a.replica, &mesh);
        write(&mut a, Scope::Mesh, 1000 + i..1001 + i);
        let fresh = a.replica.hashes_since(&mesh, &before);
        assert_eq!(fresh.len(), 1);
        let mut counting = Counting {
            replica: &mut a.replica,
            built: Cell::new(0),
        };
        let push = link.push(0, &mut counting, &mesh, &fresh).unwrap().messages;
        built += counting.built.get();
        assert_eq!(push.len(), 1, "one message per push");
        let Message::Sync(sync) = &push[0] else {
            panic!("a push is a Sync: {push:?}");
        };
        let view = sync.docs[0].heads.as_ref().map(|heads| heads.yours);
        assert_eq!(view, Some(Knowledge::HaveAll), "the peer's heads are known");
        let size = push[0].encode().len();
        bytes += size;
        one_change.get_or_insert(size);
        assert_eq!(link.read_all(1, &mut b.replica).unwrap(), 1);
        assert_eq!(link.in_flight(0), 0, "the peer answered push {i}");
    }
    // No round since the burst: what `b` holds came by push alone.
    assert!(same(&a, &b), "the peer lacks pushed changes");
    assert_eq!(b.replica.list_memory(None).unwrap().len(), 10 + BURST);
    let applied: usize = link
        .take_applied(1)
        .iter()
        .map(|applied| applied.hashes.len())
        .sum();
    assert_eq!(applied, BURST);
    let one_change = one_change.unwrap();
    assert!(
        bytes < BURST * one_change * 3,
        "{bytes} bytes pushed for {BURST} changes of about {one_change}"
    );
    assert!(
        built <= BURST * 2,
        "{built} changes built for {BURST} pushes"
    );
}

#[test]
fn hostile_parts_are_errors_not_panics() {
    let mut b = peer("b");
    let mut session = Session::new("a", Access::full(), Config::default());
    let bad_bundle = Message::Sync(Sync {
        complete: false,
        docs: vec![DocPart {
            changes: Some(Bundle::Changes(vec![0x28, 0xb5, 0x2f, 0xfd, 1, 2, 3])),
            ..DocPart::new("mesh".into())
        }],
    });
    assert!(matches!(
        session.handle(&mut b.replica, bad_bundle),
        Err(SyncError::Bundle { .. })
    ));
    write(&mut b, Scope::Mesh, 0..3);
    let heads = b
        .replica
        .document(&DocId::Memory(Scope::Mesh))
        .unwrap()
        .get_heads();
    let bad_filter = Message::Sync(Sync {
        complete: false,
        docs: vec![DocPart {
            heads: Some(Heads {
                hashes: vec![[9; 32]],
                yours: Knowledge::Unknown,
            }),
            have: Some(Have {
                since: heads.iter().map(|h| h.0).collect(),
                filter: vec![1, 0, 1, 0, 0],
            }),
            ..DocPart::new("mesh".into())
        }],
    });
    assert!(matches!(
        session.handle(&mut b.replica, bad_filter),
        Err(SyncError::Filter { .. })
    ));
    let garbage_document = Message::Sync(Sync {
        complete: false,
        docs: vec![DocPart {
            changes: Some(Bundle::Document(
                zstd::bulk::compress(&[0x85, 0x6f, 0x4a, 0x83, 9, 9], 3).unwrap(),
            )),
            ..DocPart::new("skills".into())
        }],
    });
    if session.handle(&mut b.replica, garbage_document).is_ok() {
        assert!(b
            .replica
            .document(&DocId::Skills)
            .is_none_or(|d| d.get_heads().is_empty()));
    }
    let unknown = Message::Sync(Sync {
        complete: false,
        docs: vec![DocPart::new("nowhere".into())],
    });
    assert!(matches!(
        session.handle(&mut b.replica, unknown),
        Err(SyncError::UnknownDoc(_))
    ));
}

/// A replica whose wall clock is whatever `now` holds (Unix milliseconds).
fn peer_at(name: &str, now: &std::sync::Arc<std::sync::atomic::AtomicU64>) -> Peer {
    let dir = tempfile::tempdir().unwrap();
    let now = now.clone();
    let clock = Box::new(move || now.load(std::sync::atomic::Ordering::SeqCst));
    let replica = Replica::open_with_clock(
        &dir.path().join(name),
        meshd::trust::NodeKey::insecure_from_name(name),
        clock,
    )
    .unwrap();
    Peer { _dir: dir, replica }
}

/// A peer whose clock runs a year ahead stamped every concurrent write into the future and
/// won them all. Its changes are refused, with the reason, until this node's clock catches up.
#[test]
fn changes_stamped_beyond_the_clock_bound_wait_until_the_clock_catches_up() {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;
    let now = 1_764_600_000_000;
    let year = 365 * 86_400_000;
    let (ahead, here) = (
        Arc::new(AtomicU64::new(now + year)),
        Arc::new(AtomicU64::new(now)),
    );
    let (mut a, mut b) = (peer_at("a", &ahead), peer_at("b", &here));
    write(&mut a, Scope::Mesh, 0..3);
    let traffic = full_round(&mut a, &mut b);
    assert!(traffic.refused, "{traffic:?}");
    assert!(b.replica.list_memory(None).unwrap().is_empty());
    here.store(now + year, Ordering::SeqCst);
    full_round(&mut a, &mut b);
    assert!(same(&a, &b));
    assert_eq!(b.replica.list_memory(None).unwrap().len(), 3);
}

/// Adds to `peer`'s mesh document one Automerge change writing `keys` entries of
/// incompressible 400-byte values: a change larger than one bundle, and than one message,
/// as a bridge ingest made it before batches were cut into bounded changes.
fn add_huge_change(peer: &mut Peer, keys: usize) {
    use automerge::transaction::Transactable;
    let mesh = DocId::Memory(Scope::Mesh);
    let mut doc = peer
        .replica
        .document(&mesh)
        .map_or_else(automerge::Automerge::new, automerge::Automerge::fork);
    // Made as node `a` would, and signed by it, so that peers take it.
    let key = meshd::trust::NodeKey::insecure_from_name("a");
    doc.set_actor(key.actor());
    let mut noise = 0x9e37_79b9_7f4a_7c15_u64;
    let mut tx = doc.transaction();
    for i in 0..keys {
        let value: String = (0..25)
            .map(|_| {
                noise ^= noise << 13;
                noise ^= noise >> 7;
                noise ^= noise << 17;
                format!("{noise:016x}")
            })
            .collect();
        let version = serde_json::json!({
            "value": value, "node_id": "a", "updated_at": 1, "deleted": false,
        });
        tx.put(automerge::ROOT, format!("big{i}"), version.to_string())
            .unwrap();
    }
    tx.commit();
    let change = doc.get_last_local_change().unwrap().clone();
    assert!(
        change.raw_bytes().len() > meshd::sync::MAX_BUNDLE_RAW,
        "the change ({} bytes) must not fit one bundle",
        change.raw_bytes().len()
    );
    let signature = key.sign(&change.hash());
    peer.replica
        .apply_changes(&mesh, vec![change], vec![signature])
        .unwrap();
}

#[test]
fn a_change_larger_than_a_message_reaches_a_peer_that_has_data() {
    let (mut a, mut b) = (peer("a"), peer("b"));
    write(&mut a, Scope::Mesh, 0..5);
    full_round(&mut a, &mut b);
    add_huge_change(&mut a, 50_000);
    full_round(&mut a, &mut b);
    assert!(same(&a, &b));
    assert_eq!(b.replica.list_memory(None).unwrap().len(), 50_005);
}

#[test]
fn a_document_larger_than_a_message_reaches_a_fresh_peer() {
    let (mut a, mut b) = (peer("a"), peer("b"));
    add_huge_change(&mut a, 50_000);
    let mesh = DocId::Memory(Scope::Mesh);
    assert!(a.replica.export(&mesh).unwrap().unwrap().len() > meshd::sync::MAX_BUNDLE_RAW);
    full_round(&mut a, &mut b);
    assert!(same(&a, &b));
    assert_eq!(b.replica.list_memory(None).unwrap().len(), 50_000);
}

#[test]
fn a_large_batch_makes_bounded_changes() {
    // One document taking the whole batch (a base with room for it): the values are split.
    // As the store has it (4096 keys in the base, the rest in buckets of about as many): no
    // bucket holds enough to be split, and every change stays small.
    for capacity in [u64::MAX, meshd::model::scope::BASE_CAPACITY] {
        let mut a = peer("a");
        a.replica.set_base_capacity(capacity);
        let text = "the quick brown fox jumps over the lazy dog ".repeat(10);
        a.replica
            .batch(|batch| {
                for i in 0..30_000 {
                    batch.put_memory(
                        &Scope::Mesh,
                        &format!("key{i}"),
                        (text.clone() + &i.to_string()).into(),
                    )?;
                }
                Ok(())
            })
            .unwrap();
        let mut ops = Vec::new();
        let mut per_doc = Vec::new();
        for doc in a.replica.doc_ids() {
            let changes = a.replica.document(&doc).unwrap().get_changes(&[]);
            ops.extend(changes.iter().map(Change::len));
            per_doc.push(changes.iter().map(Change::len).sum::<usize>());
        }
        // 30 000 values of about 450 bytes: over 13 MiB, at most 4 MiB of them per change.
        assert!(ops.len() >= 4, "{} changes", ops.len());
        assert!(ops.iter().all(|&n| n <= 10_000), "ops per change: {ops:?}");
        assert_eq!(ops.iter().sum::<usize>(), 30_000);
        assert_eq!(a.replica.list_memory(None).unwrap().len(), 30_000);
        if capacity == u64::MAX {
            assert_eq!(a.replica.doc_ids(), [DocId::Memory(Scope::Mesh)]);
        } else {
            // Buckets fill one after another (`DocId::bucket_path`); a key whose whole path
            // is full goes to its last bucket all the same.
            let buckets = per_doc.len() - 1;
            assert!((7..64).contains(&buckets), "{buckets} buckets: {per_doc:?}");
            assert!(per_doc.iter().all(|&n| n <= 4096 + 256), "{per_doc:?}");
        }
    }
}

/// Both sides lack a head of the other's, and one of them (`c`, the owner of `node:<c>`)
/// takes nothing from the other there: `b` holds a change `c` refuses. Whichever side opens
/// the round, `c`'s changes still reach `b` (when `c` opened, it used to wait for `b` to
/// say what it has, while `b` waited for `c`).
#[test]
fn a_side_that_takes_nothing_still_gives_what_the_other_lacks() {
    for b_opens in [true, false] {
        let (mut b, mut c) = (peer("b"), peer("c"));
        let c_scope = Scope::Node(c.replica.node_id().to_string());
        let doc = DocId::Memory(c_scope.clone());
        c.replica
            .put_memory(&c_scope, "motto", serde_json::json!("c"))
            .unwrap();
        let forged = plant(&mut b, "b", &doc, "c", "motto");
        let owned = doc.clone();
        let c_takes_nothing_there = Access::new(|_| true, move |d| *d != owned);
        // `round(x, y, ..)`: the first access is the opener's, toward its peer.
        let traffic = if b_opens {
            round(&mut b, &mut c, Access::full(), c_takes_nothing_there, 0.01)
        } else {
            round(&mut c, &mut b, c_takes_nothing_there, Access::full(), 0.01)
        };
        assert!(traffic.refused, "b_opens {b_opens}: {traffic:?}");
        let motto = c.replica.heads(&doc)[0];
        assert!(b.replica.has_change(&doc, &motto), "b_opens {b_opens}");
        assert!(!c.replica.has_change(&doc, &forged.hash()));
    }
}

/// What a `Hello` from `a` to `b` says is waiting for `b`.
fn waiting_for_b(a: &mut Peer) -> u64 {
    let mut session = Session::new("b", Access::full(), Config::default());
    match session.start(&mut a.replica).unwrap().messages.as_slice() {
        [Message::Hello(hello)] => hello.waiting,
        other => panic!("not one Hello: {other:?}"),
    }
}

#[test]
fn a_hello_counts_the_changes_the_peer_has_not_confirmed() {
    let (mut a, mut b) = (peer("a"), peer("b"));
    write(&mut a, Scope::Mesh, 0..5);
    write(&mut a, Scope::User("ann".into()), 0..2);
    assert_eq!(waiting_for_b(&mut a), 7, "a fresh peer lacks every change");
    full_round(&mut a, &mut b);
    assert_eq!(waiting_for_b(&mut a), 0, "after a round nothing waits");
    write(&mut a, Scope::Mesh, 5..8);
    write(&mut b, Scope::Mesh, 100..101);
    assert_eq!(waiting_for_b(&mut a), 3, "only what came after the round");
}

/// A node keeps only its newest signature per document, and a link may push a change after
/// the next one was made (its push waited behind others). With the peer's heads unknown (a
/// round that found both sides in sync exchanges none), the change must still go with a
/// signature that vouches for it: before, it went alone, unsigned, and the peer refused it
/// and then could not take the next one either until a later round.
#[test]
fn a_change_pushed_after_a_later_one_was_made_still_carries_its_signature() {
    let (mut a, mut b) = (peer("a"), peer("b"));
    write(&mut a, Scope::Mesh, 0..5);
    full_round(&mut a, &mut b);
    let mut link = connection();
    link.round([&mut a.replica, &mut b.replica]).unwrap();
    let mesh = DocId::Memory(Scope::Mesh);
    let before = SyncStore::heads(&a.replica, &mesh);
    write(&mut a, Scope::Mesh, 5..6);
    let first = a.replica.hashes_since(&mesh, &before);
    write(&mut a, Scope::Mesh, 6..7);
    for fresh in [first.clone(), a.replica.hashes_since(&mesh, &first)] {
        let _pushed = link.push(0, &mut a.replica, &mesh, &fresh).unwrap();
        while let Some(outcome) = link.deliver_to(1, &mut b.replica).unwrap() {
            assert!(outcome.refusals.is_empty(), "{:?}", outcome.refusals);
        }
    }
    assert!(same(&a, &b), "the peer lacks a pushed change");
}
