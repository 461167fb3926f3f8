use serde_json::json;

use super::*;
use crate::replica::SkillWrite;

struct Node {
    dir: tempfile::TempDir,
    replica: SharedReplica,
    searcher: Searcher,
}

fn own() -> String {
    crate::trust::NodeKey::insecure_from_name("ownnode")
        .node_id()
        .compact()
}

fn node() -> Node {
    let dir = tempfile::tempdir().unwrap();
    let replica = Replica::open(
        &dir.path().join("store"),
        crate::trust::NodeKey::insecure_from_name("ownnode"),
    )
    .unwrap();
    let searcher = Searcher::new(dir.path().join("search.db"), None);
    Node {
        dir,
        replica: SharedReplica::new(replica),
        searcher,
    }
}

impl Node {
    fn put(&self, scope: &str, key: &str, value: serde_json::Value) {
        let scope = Scope::parse(scope, &own()).unwrap();
        self.replica
            .with(|r| r.put_memory(&scope, key, value))
            .unwrap();
    }

    fn skill(&self, name: &str, description: &str, content: &str) {
        let write = SkillWrite {
            name: name.into(),
            content: content.into(),
            description: Some(description.into()),
            path: None,
        };
        self.replica.with(|r| r.put_skill(write)).unwrap();
    }

    fn find(&self, text: &str, target: Target, scope: &str) -> Vec<(Option<String>, String)> {
        let request = SearchRequest {
            text: text.into(),
            target,
            scope: ScopeFilter::parse(scope, &own()).unwrap(),
            limit: 10,
            mode: None,
        };
        let results = self.searcher.search(&self.replica, &request).unwrap();
        assert_eq!(results.mode, Mode::Fts);
        results
            .hits
            .into_iter()
            .map(|hit| (hit.scope, hit.key))
            .collect()
    }

    fn keys(&self, text: &str, scope: &str) -> Vec<String> {
        self.find(text, Target::Memory, scope)
            .into_iter()
            .map(|(_, key)| key)
            .collect()
    }
}

#[test]
fn bm25_ranks_the_closer_match_first_and_names_weigh_more() {
    let node = node();
    node.put(
        "mesh",
        "editor.theme",
        json!("the user likes dark mode in the editor"),
    );
    node.put(
        "mesh",
        "notes",
        json!("dark chocolate; a long note about many other things entirely"),
    );
    node.put("mesh", "lunch", json!("pasta"));
    node.put("mesh", "dark", json!("a key named dark"));
    let keys = node.keys("dark mode", "");
    assert_eq!(
        keys.first().map(String::as_str),
        Some("editor.theme"),
        "{keys:?}"
    );
    assert!(
        keys.contains(&"notes".to_string()),
        "any-word fallback: {keys:?}"
    );
    assert!(!keys.contains(&"lunch".to_string()));
    let dark = node.keys("dark", "");
    assert_eq!(dark.first().map(String::as_str), Some("dark"), "{dark:?}");
}

#[test]
fn scope_filters_keep_to_their_scopes() {
    let node = node();
    node.put("mesh", "k", json!("tabs over spaces"));
    node.put("user:alice", "k", json!("tabs please"));
    node.put("user:bob", "k", json!("tabs never"));
    node.put("node", "k", json!("tabs on this node"));
    let scopes = |scope: &str| -> Vec<String> {
        let mut found: Vec<String> = node
            .find("tabs", Target::Memory, scope)
            .into_iter()
            .map(|(scope, _)| scope.unwrap())
            .collect();
        found.sort();
        found
    };
    assert_eq!(scopes("mesh"), ["mesh"]);
    assert_eq!(scopes("user:alice"), ["user:alice"]);
    assert_eq!(scopes("user:*"), ["user:alice", "user:bob"]);
    assert_eq!(scopes("node"), ["node"]);
    assert_eq!(scopes(""), ["mesh", "node", "user:alice", "user:bob"]);
}

#[test]
fn skills_are_searched_by_name_description_and_content() {
    let node = node();
    node.skill(
        "triage",
        "sort incoming issues",
        "label, assign, close duplicates",
    );
    node.skill("reminders", "set reminders", "use the calendar");
    node.put("mesh", "triage", json!("memory, not a skill"));
    let skills = node.find("duplicates", Target::Skills, "");
    assert_eq!(skills, [(None, "triage".to_string())]);
    assert_eq!(node.find("calendar", Target::Skills, "").len(), 1);
    assert_eq!(node.find("triage", Target::All, "").len(), 2);
    let request = SearchRequest {
        text: "x".into(),
        target: Target::Skills,
        scope: ScopeFilter::parse("mesh", &own()).unwrap(),
        limit: 5,
        mode: None,
    };
    assert!(matches!(
        node.searcher.search(&node.replica, &request),
        Err(SearchError::Refused(_))
    ));
}

#[test]
fn changes_updates_and_deletes_are_followed() {
    let node = node();
    node.put("mesh", "color", json!("blue"));
    assert_eq!(node.keys("blue", ""), ["color"]);
    node.put("mesh", "color", json!("green"));
    assert!(node.keys("blue", "").is_empty());
    assert_eq!(node.keys("green", ""), ["color"]);
    let scope = Scope::parse("mesh", &own()).unwrap();
    node.replica
        .with(|r| r.delete_memory(&scope, "color"))
        .unwrap();
    assert!(node.keys("green", "").is_empty());
    node.skill("s", "d", "alpha");
    node.skill("s", "d", "beta");
    assert!(node.find("alpha", Target::Skills, "").is_empty());
    assert_eq!(node.find("beta", Target::Skills, "").len(), 1);
}

#[test]
fn a_refresh_reads_only_what_changed() {
    let node = node();
    for i in 0..50 {
        node.put("mesh", &format!("k{i}"), json!(format!("value {i}")));
    }
    let first = node.searcher.refresh(&node.replica).unwrap();
    assert_eq!(first.items, 50);
    assert_eq!(
        node.searcher.refresh(&node.replica).unwrap(),
        Refreshed::default()
    );
    node.put("mesh", "k7", json!("changed"));
    let second = node.searcher.refresh(&node.replica).unwrap();
    assert_eq!((second.documents, second.items), (1, 1));
}

#[test]
fn a_damaged_or_deleted_index_is_rebuilt_from_the_replica() {
    let node = node();
    node.put("mesh", "k", json!("rebuild me"));
    assert_eq!(node.keys("rebuild", ""), ["k"]);
    let path = node.dir.path().join("search.db");
    drop(node.searcher);
    std::fs::write(
        &path,
        b"garbage, not SQLite at all, garbage garbage garbage",
    )
    .unwrap();
    let searcher = Searcher::new(path.clone(), None);
    let node = Node { searcher, ..node };
    assert_eq!(node.keys("rebuild", ""), ["k"]);
    drop(node.searcher);
    std::fs::remove_file(&path).unwrap();
    let node = Node {
        searcher: Searcher::new(path, None),
        ..node
    };
    assert_eq!(node.keys("rebuild", ""), ["k"]);
}

#[test]
fn hostile_queries_are_words_or_a_clear_error() {
    let node = node();
    node.put("mesh", "k", json!("near the user: alice"));
    for text in [
        "\"",
        "NEAR(",
        "user:alice",
        "a AND OR NOT",
        "*",
        "-x",
        "k\"; DROP TABLE items",
    ] {
        let request = SearchRequest {
            text: text.into(),
            target: Target::All,
            scope: ScopeFilter::Any,
            limit: 5,
            mode: None,
        };
        match node.searcher.search(&node.replica, &request) {
            Ok(_) | Err(SearchError::EmptyQuery) => {}
            Err(other) => panic!("{text}: {other}"),
        }
    }
    assert_eq!(node.keys("user:alice", ""), ["k"]);
}

#[test]
fn semantic_search_without_an_endpoint_is_refused_with_the_fix() {
    let node = node();
    node.put("mesh", "k", json!("v"));
    let request = SearchRequest {
        text: "v".into(),
        target: Target::Memory,
        scope: ScopeFilter::Any,
        limit: 5,
        mode: Some(Mode::Semantic),
    };
    let error = node.searcher.search(&node.replica, &request).unwrap_err();
    assert!(error.is_bad_request());
    assert!(error.to_string().contains("MESH_EMBEDDING_URL"), "{error}");
}

#[test]
fn reciprocal_rank_fusion_favours_items_both_lists_rank_high() {
    let key = |name: &str| ItemKey {
        kind: ItemKind::Memory,
        scope: "mesh".into(),
        name: name.into(),
    };
    let words = vec![(key("a"), 9.0), (key("b"), 8.0), (key("c"), 7.0)];
    let meaning = vec![(key("c"), 0.9), (key("b"), 0.8), (key("d"), 0.7)];
    let fused: Vec<String> = fuse(&[words, meaning], 3)
        .into_iter()
        .map(|(k, _)| k.name)
        .collect();
    // c: 1/63 + 1/61 > b: 2/62 > a: 1/61 alone.
    assert_eq!(fused, ["c", "b", "a"]);
}

#[test]
fn an_index_damaged_while_open_is_rebuilt_by_the_next_search() {
    let node = node();
    node.put("mesh", "k", json!("survivor"));
    assert_eq!(node.keys("survivor", ""), ["k"]);
    let path = node.dir.path().join("search.db");
    std::fs::write(&path, vec![0xA5u8; 64 * 1024]).unwrap();
    node.put("mesh", "k2", json!("survivor too"));
    let request = SearchRequest {
        text: "survivor".into(),
        target: Target::Memory,
        scope: ScopeFilter::Any,
        limit: 10,
        mode: None,
    };
    // The damage may be found by this search (which then fails and discards the file) or
    // not at all (SQLite still holds every page it needs); either way the next one answers.
    let first = node.searcher.search(&node.replica, &request);
    let second = node.searcher.search(&node.replica, &request).unwrap();
    let mut keys: Vec<String> = second.hits.into_iter().map(|hit| hit.key).collect();
    keys.sort();
    assert_eq!(
        keys,
        ["k", "k2"],
        "first attempt: {:?}",
        first.map(|r| r.hits.len())
    );
}

#[test]
fn a_document_larger_than_a_part_is_indexed_whole_and_then_followed() {
    let n = node();
    let count = 2 * REFRESH_PART + 1;
    n.replica
        .with(|r| {
            r.batch(|b| {
                for i in 0..count {
                    b.put_memory(&Scope::Mesh, &format!("k{i}"), json!(format!("plain {i}")))?;
                }
                Ok(())
            })
        })
        .unwrap();
    n.put("mesh", "k0", json!("first zebra"));
    n.put("mesh", &format!("k{}", count - 1), json!("last zebra"));
    let mut found = n.keys("zebra", "mesh");
    found.sort();
    assert_eq!(found, vec!["k0".to_string(), format!("k{}", count - 1)]);
    let middle = REFRESH_PART + 3;
    let found = n.keys(&format!("plain {middle}"), "mesh");
    assert_eq!(found.first(), Some(&format!("k{middle}")));
}

/// A new index is built from the replica's index of keys and values, without loading the
/// Automerge document (for a million entries, hundreds of MB at the daemon's start).
#[test]
fn a_new_index_is_built_without_loading_the_document() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let mut replica =
        Replica::open(&store, crate::trust::NodeKey::insecure_from_name("ownnode")).unwrap();
    replica
        .batch(|b| {
            for i in 0..50 {
                b.put_memory(&Scope::Mesh, &format!("k{i}"), json!(format!("plain {i}")))?;
            }
            b.put_memory(&Scope::Mesh, "gone", json!("deleted zebra"))?;
            Ok(())
        })
        .unwrap();
    replica.delete_memory(&Scope::Mesh, "gone").unwrap();
    // As a daemon leaves it: changes folded into a snapshot, which opening does not load.
    replica.compact(&DocId::Memory(Scope::Mesh)).unwrap();
    replica.flush().unwrap();
    drop(replica);
    let n = Node {
        // The dropped replica's flusher lets go of the store's lock a moment later.
        replica: SharedReplica::new(
            crate::replica::wait_for_store(std::time::Duration::from_secs(10), || {
                Replica::open(&store, crate::trust::NodeKey::insecure_from_name("ownnode"))
            })
            .unwrap(),
        ),
        searcher: Searcher::new(dir.path().join("search.db"), None),
        dir,
    };
    assert_eq!(
        n.replica.with(|r| r.loaded().0),
        0,
        "opening loads no document"
    );
    n.searcher.refresh(&n.replica).unwrap();
    assert_eq!(n.replica.with(|r| r.loaded().0), 0, "no document loaded");
    assert_eq!(
        n.keys("plain 7", "mesh").first().map(String::as_str),
        Some("k7")
    );
    assert!(n.keys("zebra", "mesh").is_empty());
    n.put("mesh", "k1", json!("now a zebra"));
    assert_eq!(n.keys("zebra", "mesh"), vec!["k1".to_string()]);
}

/// Rows are a scope's, whichever of its documents a key is kept in: keys in buckets are
/// found under their scope, and updates and deletes in a bucket are followed.
#[test]
fn keys_kept_in_buckets_are_found_in_their_scope() {
    let node = node();
    node.replica.with(|r| r.set_base_capacity(2));
    for i in 0..12 {
        node.put("mesh", &format!("k{i}"), json!(format!("fruit number {i}")));
    }
    assert!(node.replica.with(|r| r.doc_ids().len()) > 2);
    assert_eq!(node.keys("fruit", "mesh").len(), 10, "the limit of 10");
    node.put("mesh", "k0", json!("vegetable"));
    node.put("mesh", "k5", json!("mineral"));
    let scope = Scope::Mesh;
    node.replica
        .with(|r| r.delete_memory(&scope, "k11"))
        .unwrap();
    assert_eq!(node.keys("vegetable", "mesh"), ["k0"]);
    assert_eq!(node.keys("mineral", ""), ["k5"]);
    let mut fruit = node.keys("fruit", "mesh");
    fruit.sort();
    let mut wanted: Vec<String> = [1, 2, 3, 4, 6, 7, 8, 9, 10]
        .iter()
        .map(|i| format!("k{i}"))
        .collect();
    wanted.sort();
    assert_eq!(fruit, wanted);
}
