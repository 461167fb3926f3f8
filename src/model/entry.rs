//! What the replica holds: memory entries and skills, and the rule that picks one winner
//! among concurrent versions.

use serde::{Deserialize, Serialize};

use super::authorship::Claim;
use super::{Scope, Stamp};

/// One version of a memory entry. A tombstone (`deleted`) syncs like any write.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MemoryEntry {
    pub scope: Scope,
    pub key: String,
    pub value: serde_json::Value,
    /// The node that wrote the version, as stored in it (with `updated_at`, the version
    /// order). What the version says: `author` is what its signed change proves.
    pub node_id: String,
    pub updated_at: Stamp,
    pub deleted: bool,
    /// The node whose signed change holds this version (compact id, from the change's
    /// actor): `None` for a version not read from a document, or whose change names no node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub author: Option<String>,
    /// The writer an imported message or row named, when it was not this node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claim: Option<Claim>,
}

/// One skill: SOUL/STYLE snippet, procedure or descriptor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Skill {
    pub name: String,
    pub content: String,
    pub path: Option<String>,
    pub description: String,
    pub source_node: String,
    pub updated_at: Stamp,
    pub deleted: bool,
}

impl Skill {
    /// What a reader of the skill gets: its content, or for a skill shared by path only, the
    /// path or URL (a bridge skill message's `content` is "the skill body, or a URL").
    pub fn body(&self) -> &str {
        match &self.path {
            Some(path) if self.content.is_empty() => path,
            _ => &self.content,
        }
    }
}

/// The version order of DESIGN.md: greatest `(updated_at, node_id)` wins on every replica.
pub trait Versioned {
    fn version(&self) -> (Stamp, &str);
}

impl Versioned for MemoryEntry {
    fn version(&self) -> (Stamp, &str) {
        (self.updated_at, &self.node_id)
    }
}

impl Versioned for Skill {
    fn version(&self) -> (Stamp, &str) {
        (self.updated_at, &self.source_node)
    }
}

/// Splits concurrent versions into the winner and the losers (losers newest first).
pub fn resolve<T: Versioned>(mut versions: Vec<T>) -> Option<(T, Vec<T>)> {
    versions.sort_by(|a, b| b.version().cmp(&a.version()));
    let mut versions = versions.into_iter();
    let winner = versions.next()?;
    Some((winner, versions.collect()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(at: u64, node: &str) -> MemoryEntry {
        MemoryEntry {
            scope: Scope::Mesh,
            key: "k".into(),
            value: serde_json::json!(node),
            node_id: node.into(),
            updated_at: Stamp(at),
            deleted: false,
            author: None,
            claim: None,
        }
    }

    #[test]
    fn newest_wins_then_greatest_node_id() {
        let (winner, losers) = resolve(vec![entry(1, "z"), entry(2, "a"), entry(2, "b")]).unwrap();
        assert_eq!(winner.node_id, "b");
        assert_eq!(
            losers
                .iter()
                .map(|e| e.node_id.as_str())
                .collect::<Vec<_>>(),
            ["a", "z"]
        );
    }

    #[test]
    fn nothing_to_resolve() {
        assert!(resolve::<MemoryEntry>(vec![]).is_none());
    }
}
