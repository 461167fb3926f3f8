use automerge::transaction::Transactable;
use automerge::{Automerge, Change, ROOT};

use super::*;
use crate::model::DocId;

fn key(name: &str) -> NodeKey {
    NodeKey::insecure_from_name(name)
}

/// `count` changes made one after another by `author` on `doc`.
fn write(doc: &mut Automerge, author: &NodeKey, count: usize) -> Vec<Change> {
    doc.set_actor(author.actor());
    let before = doc.get_heads();
    for i in 0..count {
        let mut tx = doc.transaction();
        tx.put(ROOT, format!("k{i}"), author.node_id().to_string())
            .unwrap();
        tx.commit();
    }
    doc.get_changes(&before)
}

fn links(changes: &[Change]) -> Vec<Link> {
    changes.iter().map(Link::of).collect()
}

fn nothing_stored(_: &automerge::ChangeHash) -> bool {
    false
}

#[test]
fn the_newest_signature_vouches_for_the_whole_chain() {
    let a = key("a");
    let mut doc = Automerge::new();
    let changes = write(&mut doc, &a, 5);
    let newest = a.sign(&changes.last().unwrap().hash());
    let kept = check_all(
        &DocId::Memory(Scope::Mesh),
        &links(&changes),
        vec![newest.clone()],
        nothing_stored,
    );
    assert_eq!(kept, Ok(vec![newest]));
}

#[test]
fn a_change_that_names_another_node_is_refused() {
    let (b, c) = (key("b"), key("c"));
    let mut doc = Automerge::new();
    // B makes a change with C's actor id and signs it with its own key.
    let forged = write(&mut doc, &c, 1);
    let signature = b.sign(&forged[0].hash());
    let refused = check_all(
        &DocId::Memory(Scope::Mesh),
        &links(&forged),
        vec![signature],
        nothing_stored,
    );
    let reason = refused.unwrap_err();
    assert!(reason.contains(&c.node_id().to_string()), "{reason}");
    assert!(reason.contains("no valid signature"), "{reason}");
}

#[test]
fn only_its_owner_writes_a_node_scope() {
    let (b, c) = (key("b"), key("c"));
    let mut doc = Automerge::new();
    let changes = write(&mut doc, &b, 1);
    let signature = b.sign(&changes[0].hash());
    let c_scope = DocId::Memory(Scope::Node(c.node_id().compact()));
    let reason = check_all(
        &c_scope,
        &links(&changes),
        vec![signature.clone()],
        nothing_stored,
    )
    .unwrap_err();
    assert!(reason.contains("only its owner"), "{reason}");
    let b_scope = DocId::Memory(Scope::Node(b.node_id().compact()));
    assert!(check_all(&b_scope, &links(&changes), vec![signature], nothing_stored).is_ok());
}

#[test]
fn an_altered_signature_is_an_error() {
    let a = key("a");
    let mut doc = Automerge::new();
    let changes = write(&mut doc, &a, 1);
    let mut signature = a.sign(&changes[0].hash());
    signature.sig[0] ^= 1;
    let reason = check_all(
        &DocId::Skills,
        &links(&changes),
        vec![signature],
        nothing_stored,
    )
    .unwrap_err();
    assert!(reason.contains("does not verify"), "{reason}");
}

#[test]
fn a_signature_with_a_key_of_another_node_vouches_only_for_that_node() {
    let (a, c) = (key("a"), key("c"));
    let mut doc = Automerge::new();
    let changes = write(&mut doc, &c, 1);
    // A's valid signature over C's change: A witnessed it, C did not sign it.
    let signature = a.sign(&changes[0].hash());
    assert!(check_all(
        &DocId::Skills,
        &links(&changes),
        vec![signature],
        nothing_stored
    )
    .is_err());
}

#[test]
fn a_dependency_sent_later_is_recognised_as_vouched_for() {
    let a = key("a");
    let mut doc = Automerge::new();
    let changes = write(&mut doc, &a, 3);
    let mesh = DocId::Memory(Scope::Mesh);
    let mut vouching = Vouching::default();
    // The middle change hides behind a filter's false positive: it comes last, alone.
    let (first, middle, last) = (changes[0].clone(), changes[1].clone(), changes[2].clone());
    vouching
        .add_changes(vec![first, last.clone()], nothing_stored)
        .unwrap();
    vouching
        .add_signatures(vec![a.sign(&last.hash())], nothing_stored)
        .unwrap();
    // The last change is vouched for but waits for the middle one; the first is vouched for
    // only through the middle one.
    assert!(vouching
        .take_accepted(&mesh, nothing_stored)
        .changes
        .is_empty());
    assert_eq!(vouching.missing(nothing_stored), vec![middle.hash()]);
    assert!(
        vouching.refuse_waiting(&mesh, nothing_stored).is_empty(),
        "put off while the middle one is on its way"
    );
    vouching
        .add_changes(vec![middle.clone()], nothing_stored)
        .unwrap();
    let accepted = vouching.take_accepted(&mesh, nothing_stored);
    let order: Vec<_> = accepted.changes.iter().map(Change::hash).collect();
    assert_eq!(order, changes.iter().map(Change::hash).collect::<Vec<_>>());
    assert_eq!(accepted.signatures.len(), 1);
    assert!(vouching.is_idle());
}

#[test]
fn a_forged_change_is_refused_when_the_peer_sent_all_it_had() {
    let (a, c) = (key("a"), key("c"));
    let mut doc = Automerge::new();
    let real = write(&mut doc, &a, 2);
    let forged = write(&mut doc, &c, 1);
    let mesh = DocId::Memory(Scope::Mesh);
    let mut vouching = Vouching::default();
    // A real signature over a hash that never comes does not put the refusal off.
    vouching
        .add_changes(forged.clone(), nothing_stored)
        .unwrap();
    vouching
        .add_signatures(vec![a.sign(&real[1].hash())], nothing_stored)
        .unwrap();
    assert!(vouching
        .take_accepted(&mesh, nothing_stored)
        .changes
        .is_empty());
    let refused = vouching.refuse_waiting(&mesh, nothing_stored);
    assert_eq!(refused.len(), 1);
    assert_eq!(refused[0].hash, forged[0].hash());
    assert!(vouching.is_idle());
}

#[test]
fn a_change_that_names_no_author_needs_a_witness_and_in_a_node_scope_its_owner() {
    let a = key("a");
    let mut doc = Automerge::new();
    doc.set_actor(automerge::ActorId::random());
    let mut tx = doc.transaction();
    tx.put(ROOT, "old", 1).unwrap();
    tx.commit();
    let changes = doc.get_changes(&[]);
    assert_eq!(author_of(changes[0].actor_id()), Author::Unknown);
    let witness = a.sign(&changes[0].hash());
    assert!(check_all(&DocId::Skills, &links(&changes), Vec::new(), nothing_stored).is_err());
    assert!(check_all(
        &DocId::Skills,
        &links(&changes),
        vec![witness.clone()],
        nothing_stored
    )
    .is_ok());
    let other = DocId::Memory(Scope::Node(key("z").node_id().compact()));
    assert!(check_all(&other, &links(&changes), vec![witness], nothing_stored).is_err());
}

#[test]
fn actor_ids_name_their_node() {
    let a = key("a");
    assert_eq!(author_of(&a.actor()), Author::Node(a.node_id()));
    assert_ne!(a.actor(), a.actor(), "each actor is fresh");
}

#[test]
fn a_change_goes_in_only_with_the_signed_change_that_vouches_for_it() {
    let (n, m) = (key("n"), key("m"));
    let mut doc = Automerge::new();
    let mut other = doc.fork();
    let c1 = write(&mut doc, &n, 1).remove(0);
    let x = write(&mut other, &m, 1).remove(0);
    doc.merge(&mut other).unwrap();
    // c2 depends on c1 and on x, which a filter's false positive hid.
    let c2 = write(&mut doc, &n, 1).remove(0);
    assert_eq!(c2.deps().len(), 2);
    let mesh = DocId::Memory(Scope::Mesh);
    let mut vouching = Vouching::default();
    vouching
        .add_changes(vec![c1.clone(), c2.clone()], nothing_stored)
        .unwrap();
    vouching
        .add_signatures(vec![n.sign(&c2.hash())], nothing_stored)
        .unwrap();
    // c1 alone would be stored with no signature that covers it.
    assert!(vouching
        .take_accepted(&mesh, nothing_stored)
        .changes
        .is_empty());
    vouching
        .add_changes(vec![x.clone()], nothing_stored)
        .unwrap();
    vouching
        .add_signatures(vec![m.sign(&x.hash())], nothing_stored)
        .unwrap();
    let accepted = vouching.take_accepted(&mesh, nothing_stored);
    assert_eq!(accepted.changes.len(), 3);
    assert_eq!(accepted.signatures.len(), 2);
}

#[test]
fn a_whole_history_is_vouched_for_by_the_signatures_of_its_heads_in_any_order() {
    let (a, b) = (key("a"), key("b"));
    let mut doc = Automerge::new();
    let mut other = doc.fork();
    let by_a = write(&mut doc, &a, 3);
    let by_b = write(&mut other, &b, 2);
    doc.merge(&mut other).unwrap();
    let mut history = links(&doc.get_changes(&[]));
    history.reverse();
    let heads = [by_a.last().unwrap().hash(), by_b.last().unwrap().hash()];
    let signatures = vec![a.sign(&heads[0]), b.sign(&heads[1])];
    let mesh = DocId::Memory(Scope::Mesh);
    let kept = check_all(&mesh, &history, signatures.clone(), nothing_stored);
    assert_eq!(kept, Ok(signatures.clone()));
    // Without B's signature, nobody who made B's changes vouches for them.
    let only_a = vec![signatures[0].clone()];
    let reason = check_all(&mesh, &history, only_a.clone(), nothing_stored).unwrap_err();
    assert!(reason.contains(&b.node_id().to_string()), "{reason}");
    // B's changes already held need no signature, and B's is not kept.
    let held = |hash: &automerge::ChangeHash| by_b.iter().any(|c| c.hash() == *hash);
    assert_eq!(check_all(&mesh, &history, signatures, held), Ok(only_a));
}
