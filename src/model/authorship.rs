//! Who wrote a memory version, as far as this node can tell.
//!
//! The node whose signed change holds a version is its verified author (`trust::author_of`
//! on the change's actor). A version imported from a bridge message, a Phase 2 row or an API
//! write is written by the node that imported it, and the writer the message named is kept
//! apart as a `Claim`: a node cannot make every other node show a third one as the author.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::MemoryEntry;

/// How an imported version reached this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Via {
    /// A Phase 1 bridge message (`meshd bridge ingest`).
    Bridge,
    /// A Phase 2 SQLite row (`meshd store import`, the mirror).
    Store,
    /// A Phase 2 API write naming its `node_id`.
    Api,
}

impl fmt::Display for Via {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Via::Bridge => "bridge",
            Via::Store => "store",
            Via::Api => "api",
        })
    }
}

/// The writer an imported message or row named, when it was not the node that imported it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claim {
    /// The `nodeId` or `node_id` it gave.
    pub by: String,
    pub via: Via,
    /// The fingerprint of the key whose reference signature bore the claim out; `None`: not
    /// checked (the message carried no signature this node verified).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checked_with: Option<String>,
}

/// A version's author for display: the verified writer, and a claim that differs from it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Authorship {
    /// The node whose signed change wrote the version (compact id); `None` for a version
    /// whose change names no node (written before meshd signed its changes).
    pub author: Option<String>,
    /// Who the version says wrote it, when that is not `author`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub claimed_by: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub via: Option<Via>,
    /// The author is known and no claim says otherwise (or a checked signature bears the
    /// claim out).
    pub verified: bool,
}

impl MemoryEntry {
    /// The writer as the Phase 1 and 2 formats name it (`nodeId`, `node_id`): the one the
    /// imported message or row named, else the node that wrote the version.
    pub fn named_writer(&self) -> &str {
        self.claim.as_ref().map_or(&self.node_id, |claim| &claim.by)
    }

    /// Who wrote this version: its verified author, and what it claims when that differs
    /// (an import's claim, or a `node_id` that is not the author's).
    pub fn authorship(&self) -> Authorship {
        let (claimed_by, via, checked) = match &self.claim {
            Some(claim) => (
                Some(claim.by.clone()),
                Some(claim.via),
                claim.checked_with.is_some(),
            ),
            None if self.author.as_deref() != Some(self.node_id.as_str()) => {
                (Some(self.node_id.clone()), None, false)
            }
            None => (None, None, false),
        };
        Authorship {
            verified: self.author.is_some() && (claimed_by.is_none() || checked),
            author: self.author.clone(),
            claimed_by,
            via,
        }
    }
}

impl Authorship {
    /// The fields to add to a JSON object that shows the version.
    pub fn json_fields(&self) -> serde_json::Map<String, serde_json::Value> {
        match serde_json::to_value(self) {
            Ok(serde_json::Value::Object(fields)) => fields,
            _ => serde_json::Map::new(),
        }
    }
}

/// "written by B", or "claimed by C via bridge, written by B, unverified".
impl fmt::Display for Authorship {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(by) = &self.claimed_by {
            write!(f, "claimed by {by}")?;
            if let Some(via) = self.via {
                write!(f, " via {via}")?;
            }
            f.write_str(", ")?;
        }
        match &self.author {
            Some(author) => write!(f, "written by {author}")?,
            None => f.write_str("written by an unknown author (before signed changes)")?,
        }
        if !self.verified {
            f.write_str(", unverified")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Scope, Stamp};

    fn version(node_id: &str, author: Option<&str>, claim: Option<Claim>) -> MemoryEntry {
        MemoryEntry {
            scope: Scope::Mesh,
            key: "k".into(),
            value: serde_json::json!(1),
            node_id: node_id.into(),
            updated_at: Stamp(1),
            deleted: false,
            author: author.map(str::to_string),
            claim,
        }
    }

    #[test]
    fn a_write_by_its_author_is_verified() {
        let shown = version("b", Some("b"), None).authorship();
        assert!(shown.verified);
        assert_eq!(shown.to_string(), "written by b");
        assert_eq!(
            serde_json::to_value(&shown).unwrap(),
            serde_json::json!({"author": "b", "verified": true})
        );
    }

    #[test]
    fn a_claim_is_shown_apart_and_unverified() {
        let claim = Claim {
            by: "c".into(),
            via: Via::Bridge,
            checked_with: None,
        };
        let entry = version("b", Some("b"), Some(claim));
        assert_eq!(entry.named_writer(), "c");
        let shown = entry.authorship();
        assert!(!shown.verified);
        assert_eq!(
            shown.to_string(),
            "claimed by c via bridge, written by b, unverified"
        );
        assert_eq!(
            serde_json::to_value(&shown).unwrap(),
            serde_json::json!({"author": "b", "claimed_by": "c", "via": "bridge", "verified": false})
        );
    }

    #[test]
    fn a_node_id_that_is_not_the_author_is_a_claim() {
        let shown = version("c", Some("b"), None).authorship();
        assert_eq!(shown.to_string(), "claimed by c, written by b, unverified");
        let legacy = version("c", None, None).authorship();
        assert!(!legacy.verified);
        assert_eq!(legacy.claimed_by.as_deref(), Some("c"));
    }
}
