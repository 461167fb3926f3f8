//! How sync messages name memory scopes.
//!
//! The reference keeps its replica in its cache file, keyed `<scope>:<key>`, and its
//! summaries split that key at the first `:`. So a reference summary row may say
//! `{"scope":"user","key":"alice:k"}` for `user:alice`, and a bare `node` there is the
//! reference node's own scope (its cache's `node:<key>`), another node's being
//! `node:<id>:<key>`. meshd therefore reads a row by joining it back and reading the joined
//! key as its own cache reader does, with `node` meaning the node the message names
//! (`nodeScope`, else its `nodeId`); and it writes, for a peer, the peer's own node scope as
//! bare `node` (what the peer's cache calls it), every other node scope as `node:<id>`.

use crate::model::Scope;

/// `scope` as a message to `peer` names it: `node` for the peer's own scope.
pub fn label_for(scope: &Scope, peer: Option<&str>) -> String {
    match (scope, peer) {
        (Scope::Node(id), Some(peer)) if id == peer => "node".to_string(),
        (other, _) => other.to_string(),
    }
}

/// A summary or request row's scope and key, `node` meaning `node_scope`'s; `None` when the
/// joined name is no scope meshd has (its reason is the caller's to give).
pub fn read(scope: &str, key: &str, node_scope: &str) -> Option<(Scope, String)> {
    let joined = format!("{scope}:{key}");
    let (head, rest) = joined.split_once(':')?;
    let (scope, key) = match head {
        "mesh" => (Scope::Mesh, rest),
        "user" => {
            let (id, key) = rest.split_once(':')?;
            (Scope::parse(&format!("user:{id}"), node_scope).ok()?, key)
        }
        "node" => match rest.split_once(':') {
            Some((id, key)) if !key.is_empty() => {
                match Scope::parse(&format!("node:{id}"), node_scope) {
                    Ok(scope) => (scope, key),
                    Err(_) => (Scope::Node(node_scope.to_string()), rest),
                }
            }
            _ => (Scope::Node(node_scope.to_string()), rest),
        },
        _ => return None,
    };
    if key.is_empty() {
        return None;
    }
    Some((scope, key.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: &str) -> Scope {
        Scope::Node(id.into())
    }

    #[test]
    fn rows_split_at_the_first_colon_are_joined_back() {
        let cases = [
            ("mesh", "a:b", Scope::Mesh, "a:b"),
            ("user", "alice:k", Scope::User("alice".into()), "k"),
            ("user:alice", "k", Scope::User("alice".into()), "k"),
            ("node", "k", node("js"), "k"),
            ("node", "M:k", node("M"), "k"),
            ("node:M", "k", node("M"), "k"),
            ("node", "bad id!:k", node("js"), "bad id!:k"),
        ];
        for (scope, key, want_scope, want_key) in cases {
            assert_eq!(
                read(scope, key, "js"),
                Some((want_scope, want_key.to_string())),
                "{scope} {key}"
            );
        }
    }

    #[test]
    fn unknown_scopes_and_empty_keys_are_none() {
        assert_eq!(read("global", "k", "js"), None);
        assert_eq!(read("user", "alice", "js"), None);
        assert_eq!(read("mesh", "", "js"), None);
    }

    #[test]
    fn the_peers_own_scope_is_bare_node_for_it() {
        assert_eq!(label_for(&node("js"), Some("js")), "node");
        assert_eq!(label_for(&node("M"), Some("js")), "node:M");
        assert_eq!(label_for(&node("js"), None), "node:js");
        assert_eq!(label_for(&Scope::User("a".into()), Some("js")), "user:a");
        for (scope, key) in [(node("js"), "k"), (node("M"), "k"), (Scope::Mesh, "x:y")] {
            let label = label_for(&scope, Some("js"));
            assert_eq!(read(&label, key, "js"), Some((scope, key.to_string())));
        }
    }
}
