//! Which documents a peer may read from this node and write to it.
//!
//! Patterns, comma-separated on the command line: `mesh`, `skills`, `user:*`, `user:<id>`,
//! `node:*`, `node:<id>`, and `node`, which means the peer's own node scope. `none` is the
//! empty list.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::validate::ValidationError;
use super::{DocId, NodeId, Scope};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Pattern {
    Mesh,
    Skills,
    AnyUser,
    User(String),
    AnyNode,
    Node(String),
    /// The peer's own `node:<peer id>` scope.
    PeerNode,
}

impl Pattern {
    fn matches(&self, doc: &DocId, peer: &NodeId) -> bool {
        // A bucket is its scope's: access is granted to scopes, whichever document holds a key.
        match (self, doc.scope()) {
            (Pattern::Skills, None) => *doc == DocId::Skills,
            (Pattern::Mesh, Some(Scope::Mesh)) => true,
            (Pattern::AnyUser, Some(Scope::User(_))) => true,
            (Pattern::User(a), Some(Scope::User(b))) => a == b,
            (Pattern::AnyNode, Some(Scope::Node(_))) => true,
            (Pattern::Node(a), Some(Scope::Node(b))) => a == b,
            (Pattern::PeerNode, Some(Scope::Node(b))) => *b == peer.compact(),
            _ => false,
        }
    }

    /// Parses one comma-separated list; `none` is the empty list.
    pub fn parse_list(text: &str) -> Result<Vec<Pattern>, ValidationError> {
        if text.trim() == "none" {
            return Ok(Vec::new());
        }
        text.split(',')
            .map(|p| Pattern::try_from(p.trim().to_string()))
            .collect()
    }
}

impl TryFrom<String> for Pattern {
    type Error = ValidationError;

    fn try_from(text: String) -> Result<Self, Self::Error> {
        Ok(match text.as_str() {
            "mesh" => Pattern::Mesh,
            "skills" => Pattern::Skills,
            "user:*" => Pattern::AnyUser,
            "node:*" => Pattern::AnyNode,
            "node" => Pattern::PeerNode,
            _ => match Scope::parse(&text, "") {
                Ok(Scope::User(id)) => Pattern::User(id),
                Ok(Scope::Node(id)) if !id.is_empty() => Pattern::Node(id),
                _ => return Err(ValidationError::Pattern(text)),
            },
        })
    }
}

impl From<Pattern> for String {
    fn from(pattern: Pattern) -> String {
        pattern.to_string()
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Pattern::Mesh => f.write_str("mesh"),
            Pattern::Skills => f.write_str("skills"),
            Pattern::AnyUser => f.write_str("user:*"),
            Pattern::User(id) => write!(f, "user:{id}"),
            Pattern::AnyNode => f.write_str("node:*"),
            Pattern::Node(id) => write!(f, "node:{id}"),
            Pattern::PeerNode => f.write_str("node"),
        }
    }
}

/// What one peer may do, seen from this node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Access {
    /// Documents this node offers to the peer.
    pub read: Vec<Pattern>,
    /// Documents whose changes this node accepts from the peer.
    pub write: Vec<Pattern>,
}

impl Access {
    /// Shared scopes both ways; node scopes may be read (they are public to the mesh) and
    /// relayed, but this node's own scope is never accepted from anyone (see `may_write`).
    pub fn default_for_peer() -> Access {
        let shared = vec![
            Pattern::Mesh,
            Pattern::Skills,
            Pattern::AnyUser,
            Pattern::AnyNode,
        ];
        Access {
            read: shared.clone(),
            write: shared,
        }
    }

    pub fn may_read(&self, doc: &DocId, peer: &NodeId) -> bool {
        self.read.iter().any(|p| p.matches(doc, peer))
    }

    /// Only this node writes its own node scope, so no peer may change it here.
    pub fn may_write(&self, doc: &DocId, peer: &NodeId, own: &NodeId) -> bool {
        if doc.scope() == Some(&Scope::Node(own.compact())) {
            return false;
        }
        self.write.iter().any(|p| p.matches(doc, peer))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids() -> (NodeId, NodeId) {
        (
            NodeId::from_public_key(b"peer"),
            NodeId::from_public_key(b"own"),
        )
    }

    #[test]
    fn parses_and_prints_patterns() {
        let list = Pattern::parse_list("mesh, skills,user:*,user:bob,node:*,node").unwrap();
        let printed: Vec<String> = list.iter().map(Pattern::to_string).collect();
        assert_eq!(
            printed,
            ["mesh", "skills", "user:*", "user:bob", "node:*", "node"]
        );
        assert_eq!(Pattern::parse_list("none").unwrap(), vec![]);
        assert!(Pattern::parse_list("mesh,everything").is_err());
    }

    #[test]
    fn default_access_shares_everything_but_never_accepts_our_own_node_scope() {
        let (peer, own) = ids();
        let access = Access::default_for_peer();
        let own_doc = DocId::Memory(Scope::Node(own.compact()));
        let peer_doc = DocId::Memory(Scope::Node(peer.compact()));
        assert!(access.may_read(&own_doc, &peer));
        assert!(!access.may_write(&own_doc, &peer, &own));
        assert!(access.may_write(&peer_doc, &peer, &own));
        assert!(access.may_write(&DocId::Skills, &peer, &own));
    }

    #[test]
    fn restricted_access() {
        let (peer, own) = ids();
        let access = Access {
            read: Pattern::parse_list("mesh,node").unwrap(),
            write: Pattern::parse_list("user:bob").unwrap(),
        };
        assert!(access.may_read(&DocId::Memory(Scope::Mesh), &peer));
        assert!(access.may_read(&DocId::Memory(Scope::Node(peer.compact())), &peer));
        assert!(!access.may_read(&DocId::Skills, &peer));
        assert!(access.may_write(&DocId::Memory(Scope::User("bob".into())), &peer, &own));
        assert!(!access.may_write(&DocId::Memory(Scope::User("eve".into())), &peer, &own));
        assert!(!access.may_write(&DocId::Memory(Scope::Mesh), &peer, &own));
    }

    #[test]
    fn a_bucket_has_its_scopes_access() {
        let (peer, own) = ids();
        let access = Access {
            read: Pattern::parse_list("mesh").unwrap(),
            write: Pattern::parse_list("user:bob,node:*").unwrap(),
        };
        assert!(access.may_read(&DocId::Bucket(Scope::Mesh, 7), &peer));
        assert!(!access.may_read(&DocId::Bucket(Scope::User("bob".into()), 7), &peer));
        assert!(access.may_write(&DocId::Bucket(Scope::User("bob".into()), 7), &peer, &own));
        assert!(!access.may_write(&DocId::Bucket(Scope::Mesh, 7), &peer, &own));
        let own_bucket = DocId::Bucket(Scope::Node(own.compact()), 0);
        assert!(!access.may_write(&own_bucket, &peer, &own));
        assert!(access.may_write(&DocId::Bucket(Scope::Node(peer.compact()), 0), &peer, &own));
    }
}
