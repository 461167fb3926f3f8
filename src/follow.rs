//! How a view derived from the replica (the caches, the SQLite mirror) keeps up with it in
//! proportion to what changed: it records the heads of each document it reflects (`Seen`)
//! and asks the replica what changed since (`Replica::changed_since`), so it re-reads only
//! those keys. The search index follows the same rule with its heads kept in its own file.

use std::collections::{BTreeMap, BTreeSet};

use automerge::ChangeHash;

use crate::model::DocId;
use crate::replica::{Changed, Replica};

/// The heads of each document a view reflects.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Seen(BTreeMap<DocId, Vec<ChangeHash>>);

/// What a view must re-read of one document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Moved {
    /// Only these memory keys or skill names may differ.
    Keys(BTreeSet<String>),
    /// The view cannot tell what changed (it has never seen the document's state, the heads
    /// it saw are not in the document, the document is gone): read it all.
    Whole,
}

/// What moved in the replica since a view's `Seen`, read under the replica lock.
#[derive(Debug, Clone, Default)]
pub struct Moves {
    /// Every scope (named by its base document) or skills whose documents differ from what
    /// the view reflects: views know scopes, not the buckets a scope's keys are kept in.
    pub docs: BTreeMap<DocId, Moved>,
    /// What the view reflects once it has taken `docs` in.
    pub heads: Seen,
}

impl Seen {
    /// What moved since `seen`; `None` (a view that has written nothing yet) is everything.
    /// Linear in the changes since, not in the store.
    pub fn moves(seen: Option<&Seen>, replica: &mut Replica) -> Moves {
        let heads = replica.all_heads();
        let mut docs = BTreeMap::new();
        for (doc, now) in &heads {
            let moved = match seen.map(|seen| seen.0.get(doc)) {
                None => Moved::Whole,
                Some(Some(before)) if before == now => continue,
                // A document the view has not seen yet is new since: its keys are all in
                // its changes.
                Some(before) => {
                    let before = before.map(Vec::as_slice).unwrap_or_default();
                    match replica.changed_since(doc, before) {
                        Changed::Nothing => continue,
                        Changed::Names(keys) => Moved::Keys(keys),
                        Changed::Everything => Moved::Whole,
                    }
                }
            };
            note(&mut docs, doc, moved);
        }
        for gone in seen.iter().flat_map(|seen| seen.0.keys()) {
            if !heads.contains_key(gone) {
                note(&mut docs, gone, Moved::Whole);
            }
        }
        Moves {
            docs,
            heads: Seen(heads),
        }
    }
}

/// Adds what moved in `doc` to what moved in its scope.
fn note(docs: &mut BTreeMap<DocId, Moved>, doc: &DocId, moved: Moved) {
    let scope = docs
        .entry(doc.base())
        .or_insert(Moved::Keys(BTreeSet::new()));
    match (scope, moved) {
        (Moved::Whole, _) => {}
        (scope, Moved::Whole) => *scope = Moved::Whole,
        (Moved::Keys(keys), Moved::Keys(more)) => keys.extend(more),
    }
}

impl Moves {
    pub fn is_empty(&self) -> bool {
        self.docs.is_empty()
    }

    /// Whether some document must be read whole.
    pub fn any_whole(&self) -> bool {
        self.docs.values().any(|moved| *moved == Moved::Whole)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Scope;
    use serde_json::json;

    #[test]
    fn only_what_changed_since_moves() {
        let temp = tempfile::tempdir().unwrap();
        let mut replica = Replica::open(
            &temp.path().join("store"),
            crate::trust::NodeKey::insecure_from_name("own"),
        )
        .unwrap();
        let user = Scope::User("bob".into());
        replica.put_memory(&Scope::Mesh, "a", json!(1)).unwrap();
        replica.put_memory(&user, "b", json!(2)).unwrap();
        let first = Seen::moves(None, &mut replica);
        assert!(first.any_whole());
        assert_eq!(first.docs.len(), 2);

        let seen = first.heads;
        assert!(Seen::moves(Some(&seen), &mut replica).is_empty());
        replica.put_memory(&Scope::Mesh, "c", json!(3)).unwrap();
        replica
            .put_memory(&Scope::Node("own".into()), "d", json!(4))
            .unwrap();
        let moves = Seen::moves(Some(&seen), &mut replica);
        let keys = |names: &[&str]| Moved::Keys(names.iter().map(|n| n.to_string()).collect());
        assert_eq!(
            moves.docs,
            BTreeMap::from([
                (DocId::Memory(Scope::Mesh), keys(&["c"])),
                (DocId::Memory(Scope::Node("own".into())), keys(&["d"])),
            ])
        );
        assert!(!moves.any_whole());
    }
}
