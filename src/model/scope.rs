//! Scopes of shared memory and the documents that hold them.

use std::fmt;

use super::validate::ValidationError;
use super::NodeId;

/// Where a memory entry lives and who may see it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Scope {
    /// Shared by every node of the mesh.
    Mesh,
    /// About one user, shared by the nodes that serve that user.
    User(String),
    /// Owned by one node (its compact node id or, for imported bridge data, its bridge name);
    /// only that node writes it, peers may read it.
    Node(String),
}

const MAX_SCOPE_ID: usize = 128;

impl Scope {
    /// Parses `mesh`, `user:<id>`, `node:<id>`, or a bare `node`, which means `own_node`.
    pub fn parse(text: &str, own_node: &str) -> Result<Scope, ValidationError> {
        match text.split_once(':') {
            None if text == "mesh" => Ok(Scope::Mesh),
            None if text == "node" => Ok(Scope::Node(own_node.to_string())),
            Some(("user", id)) => Ok(Scope::User(user_id(text, id)?)),
            Some(("node", id)) => Ok(Scope::Node(node_scope_id(text, id)?)),
            _ => Err(ValidationError::Scope(text.to_string())),
        }
    }
}

impl Scope {
    /// A scope as written beside its author in a record (a bridge message, a SQLite row):
    /// `node` is the author's own node scope.
    pub fn parse_for(text: &str, author: &str) -> Result<Scope, ValidationError> {
        match text {
            "node" => Scope::parse(&format!("node:{author}"), author),
            other => Scope::parse(other, author),
        }
    }

    /// The scope as `own_node` names it: its own node scope is plain `node`, the inverse of
    /// `parse`. Formats that carry a node beside each record (bridge messages, SQLite rows)
    /// use the record's node here; the local API and caches use this node's id.
    pub fn label(&self, own_node: &str) -> String {
        match self {
            Scope::Node(id) if id == own_node => "node".to_string(),
            other => other.to_string(),
        }
    }
}

/// A node scope names a node by its compact id; the grouped form people copy is accepted too.
fn node_scope_id(text: &str, id: &str) -> Result<String, ValidationError> {
    match id.parse::<NodeId>() {
        Ok(node) => Ok(node.compact()),
        Err(_) => scope_id(text, id),
    }
}

/// A user id is any text the reference schema takes (`scope LIKE 'user:%'`): spaces and
/// non-ASCII included. Refused: nothing, control characters, and `:`, which would make the
/// caches' `<scope>:<key>` names ambiguous. Where a user id becomes a file name it is
/// escaped (`cache::render::page_file`).
fn user_id(text: &str, id: &str) -> Result<String, ValidationError> {
    let refused = |c: char| c.is_control() || c == ':';
    if id.is_empty() || id.len() > MAX_SCOPE_ID || id.chars().any(refused) {
        return Err(ValidationError::Scope(text.to_string()));
    }
    Ok(id.to_string())
}

/// A node id (compact, or a bridge peer's name such as `ceo`) stays a plain token.
fn scope_id(text: &str, id: &str) -> Result<String, ValidationError> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || "._@+-".contains(c);
    if id.is_empty() || id.len() > MAX_SCOPE_ID || !id.chars().all(allowed) {
        return Err(ValidationError::Scope(text.to_string()));
    }
    Ok(id.to_string())
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scope::Mesh => f.write_str("mesh"),
            Scope::User(id) => write!(f, "user:{id}"),
            Scope::Node(id) => write!(f, "node:{id}"),
        }
    }
}

/// Scopes travel as their text form; a bare `node` has no meaning there, so it is refused.
impl serde::Serialize for Scope {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Scope {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        match Scope::parse(&text, "") {
            Ok(Scope::Node(id)) if id.is_empty() => {
                Err(serde::de::Error::custom("bare node scope"))
            }
            Ok(scope) => Ok(scope),
            Err(e) => Err(serde::de::Error::custom(e)),
        }
    }
}

/// One Automerge document: a memory scope, one of its buckets, or the skills.
///
/// A scope's keys start in its base document (`Memory`); once that holds [`BASE_CAPACITY`]
/// live keys, new keys go to buckets (`Bucket`), so no single document grows to a million
/// keys. A key's buckets (`bucket_path`) run from the coarsest, which every key shares, to
/// the one its hash names, each level splitting the one before in two by one more bit of
/// the hash: a new key goes to the first of them with room, so a scope just past its base
/// takes one bucket, not 256, and one of a million keys fills all 256 (docs/architecture.md,
/// Buckets). Which document holds a version does not decide anything: a key's versions in
/// every document of its scope are read together and the winner is the same rule's
/// (`replica::index`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DocId {
    Memory(Scope),
    Bucket(Scope, u8),
    Skills,
}

/// Live keys a scope's base document takes before new keys go to buckets; and each bucket
/// but the last of a key's path, before they go further along it.
pub const BASE_CAPACITY: u64 = 4096;

/// Separates a scope from its bucket in a document's name: no scope's text holds it (user
/// ids refuse `:`, node ids are tokens).
const BUCKET_SEPARATOR: &str = "::";

impl DocId {
    /// The stable name used in storage keys and on the wire.
    pub fn name(&self) -> String {
        self.to_string()
    }

    pub fn from_name(name: &str) -> Result<DocId, ValidationError> {
        if name == "skills" {
            return Ok(DocId::Skills);
        }
        if let Some((scope, bucket)) = name.rsplit_once(BUCKET_SEPARATOR) {
            let bucket = parse_bucket(bucket).ok_or_else(|| ValidationError::Scope(name.into()))?;
            return Ok(DocId::Bucket(base_scope(scope)?, bucket));
        }
        Ok(DocId::Memory(base_scope(name)?))
    }

    /// The last bucket of `key`'s path: the one its hash names, which takes it when every
    /// bucket before it is full.
    pub fn bucket_for(scope: &Scope, key: &str) -> DocId {
        DocId::Bucket(scope.clone(), key_hash(key))
    }

    /// The buckets of `scope` a new `key` may go to, coarsest first: at level `n` (0 to 8),
    /// the bucket named by the first `n` bits of the key's hash (the bits after them zero).
    /// A bucket that two levels name is listed once; the last is `bucket_for`.
    pub fn bucket_path(scope: &Scope, key: &str) -> Vec<DocId> {
        let hash = key_hash(key);
        let mut path: Vec<u8> = Vec::with_capacity(9);
        for level in 0..=8 {
            // The first `level` bits of the byte: a mask of 0x00, 0x80, 0xC0, …, 0xFF.
            let bucket = hash & (0xFF00u16 >> level) as u8;
            if path.last() != Some(&bucket) {
                path.push(bucket);
            }
        }
        path.into_iter()
            .map(|bucket| DocId::Bucket(scope.clone(), bucket))
            .collect()
    }

    /// The memory scope whose keys this document holds (`None`: the skills).
    pub fn scope(&self) -> Option<&Scope> {
        match self {
            DocId::Memory(scope) | DocId::Bucket(scope, _) => Some(scope),
            DocId::Skills => None,
        }
    }

    /// The document that names what this one holds for readers: a bucket's base document,
    /// else itself. The index, the views and access rules know scopes, not buckets.
    pub fn base(&self) -> DocId {
        match self {
            DocId::Bucket(scope, _) => DocId::Memory(scope.clone()),
            other => other.clone(),
        }
    }
}

/// The byte of a key's hash that names its buckets.
fn key_hash(key: &str) -> u8 {
    blake3::hash(key.as_bytes()).as_bytes()[0]
}

fn base_scope(name: &str) -> Result<Scope, ValidationError> {
    match Scope::parse(name, "")? {
        Scope::Node(id) if id.is_empty() => Err(ValidationError::Scope(name.to_string())),
        scope => Ok(scope),
    }
}

/// Exactly two lowercase hex digits, so every bucket has one name.
fn parse_bucket(text: &str) -> Option<u8> {
    let lower_hex = |c: char| c.is_ascii_digit() || ('a'..='f').contains(&c);
    (text.len() == 2 && text.chars().all(lower_hex))
        .then(|| u8::from_str_radix(text, 16).ok())
        .flatten()
}

impl fmt::Display for DocId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DocId::Memory(scope) => scope.fmt(f),
            DocId::Bucket(scope, bucket) => write!(f, "{scope}{BUCKET_SEPARATOR}{bucket:02x}"),
            DocId::Skills => f.write_str("skills"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_scope_form() {
        assert_eq!(Scope::parse("mesh", "me").unwrap(), Scope::Mesh);
        assert_eq!(
            Scope::parse("node", "me").unwrap(),
            Scope::Node("me".into())
        );
        assert_eq!(
            Scope::parse("user:alice", "me").unwrap(),
            Scope::User("alice".into())
        );
        assert_eq!(
            Scope::parse("node:sec", "me").unwrap(),
            Scope::Node("sec".into())
        );
    }

    #[test]
    fn node_ids_in_scopes_are_compacted() {
        let id = NodeId::from_public_key(b"k");
        assert_eq!(
            Scope::parse(&format!("node:{id}"), "me").unwrap(),
            Scope::Node(id.compact())
        );
    }

    #[test]
    fn a_records_node_scope_is_its_authors() {
        assert_eq!(
            Scope::parse_for("node", "ceo").unwrap(),
            Scope::Node("ceo".into())
        );
        assert_eq!(Scope::parse_for("mesh", "ceo").unwrap(), Scope::Mesh);
        assert!(Scope::parse_for("node", "a b").is_err());
    }

    #[test]
    fn labels_parse_back() {
        for scope in [
            Scope::Mesh,
            Scope::User("bob".into()),
            Scope::Node("me".into()),
            Scope::Node("other".into()),
        ] {
            assert_eq!(Scope::parse(&scope.label("me"), "me").unwrap(), scope);
        }
        assert_eq!(Scope::Node("me".into()).label("me"), "node");
        assert_eq!(Scope::Node("x".into()).label("me"), "node:x");
    }

    #[test]
    fn rejects_unknown_forms() {
        for bad in [
            "",
            "global",
            "user:",
            "user:a:b",
            "user:a\nb",
            "user:\u{7f}",
            "node:",
            "node:a b",
            "node:a/b",
            "Mesh",
            "mesh:x",
        ] {
            assert!(Scope::parse(bad, "me").is_err(), "{bad:?} accepted");
        }
        assert!(Scope::parse(&format!("user:{}", "a".repeat(MAX_SCOPE_ID + 1)), "me").is_err());
    }

    /// As the reference schema: any text without control characters (`:` aside).
    #[test]
    fn user_ids_take_spaces_slashes_and_non_ascii() {
        for id in ["Ana María", "josé", "a/b", "../etc", "李雷", "a b.c", "%20"] {
            let scope = Scope::parse(&format!("user:{id}"), "me").unwrap();
            assert_eq!(scope, Scope::User(id.into()));
            assert_eq!(Scope::parse(&scope.label("me"), "me").unwrap(), scope);
        }
    }

    #[test]
    fn doc_names_round_trip() {
        for doc in [
            DocId::Skills,
            DocId::Memory(Scope::Mesh),
            DocId::Memory(Scope::User("bob".into())),
            DocId::Memory(Scope::Node("abc".into())),
            DocId::Bucket(Scope::Mesh, 0),
            DocId::Bucket(Scope::User("bob".into()), 0xa3),
            DocId::Bucket(Scope::Node("abc".into()), 255),
        ] {
            assert_eq!(DocId::from_name(&doc.name()).unwrap(), doc);
        }
        assert_eq!(DocId::Bucket(Scope::Mesh, 10).name(), "mesh::0a");
        for bad in [
            "node",
            "mesh::",
            "mesh::0",
            "mesh::0A",
            "mesh::100",
            "mesh::+1",
            "skills::01",
            "node::01",
            "user:bob::zz",
        ] {
            assert!(DocId::from_name(bad).is_err(), "{bad:?} accepted");
        }
    }

    /// A user id may hold `#` and anything but `:`: no user scope's name reads as a bucket.
    #[test]
    fn no_scope_name_reads_as_a_bucket() {
        let scope = Scope::User("a#05 b".into());
        let doc = DocId::Memory(scope.clone());
        assert_eq!(DocId::from_name(&doc.name()).unwrap(), doc);
        assert!(Scope::parse("user:bob::01", "").is_err());
        let bucket = DocId::bucket_for(&scope, "key");
        assert_eq!(bucket.base(), doc);
        assert_eq!(bucket.scope(), Some(&scope));
    }

    /// Each level splits the bucket before it by one more bit of the key's hash: every key
    /// starts at bucket 00, and its path ends at the bucket its hash names.
    #[test]
    fn a_keys_bucket_path_runs_from_the_shared_bucket_to_its_own() {
        let bucket = |doc: &DocId| match doc {
            DocId::Bucket(_, bucket) => *bucket,
            other => panic!("{other:?} is not a bucket"),
        };
        let mut ends = std::collections::BTreeSet::new();
        for key in (0..2000).map(|n| format!("k{n}")) {
            let path: Vec<u8> = DocId::bucket_path(&Scope::Mesh, &key)
                .iter()
                .map(bucket)
                .collect();
            assert_eq!(path[0], 0, "{key}: {path:02x?}");
            assert_eq!(
                path.last(),
                Some(&bucket(&DocId::bucket_for(&Scope::Mesh, &key)))
            );
            let own = *path.last().unwrap();
            assert_eq!(
                path.len(),
                1 + own.count_ones() as usize,
                "{key}: {path:02x?}"
            );
            for pair in path.windows(2) {
                let added = pair[1] ^ pair[0];
                assert!(pair[0] < pair[1] && added.is_power_of_two() && own & added != 0);
                assert_eq!(pair[0] & added.wrapping_neg().wrapping_shl(1), pair[0]);
            }
            ends.insert(own);
        }
        assert_eq!(ends.len(), 256, "2000 keys end in every bucket");
    }
}
