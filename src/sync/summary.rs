//! Hash summaries: one per document, one over all documents shared with a peer, and a digest
//! of the shared heads stored for that peer.

use automerge::ChangeHash;

use super::message::Fingerprint;
use crate::model::DocId;

/// BLAKE3 of a document's sorted heads: equal summaries mean equal change sets.
pub fn doc_summary(heads: &[ChangeHash]) -> [u8; 32] {
    let mut sorted = heads.to_vec();
    sorted.sort_unstable();
    let mut hasher = blake3::Hasher::new();
    for head in &sorted {
        hasher.update(&head.0);
    }
    *hasher.finalize().as_bytes()
}

/// A document name, length-prefixed so that no two lists of names hash alike.
fn hash_name(hasher: &mut blake3::Hasher, name: &str) {
    hasher.update(&(name.len() as u64).to_le_bytes());
    hasher.update(name.as_bytes());
}

/// BLAKE3 over the name and summary of each shared document, in name order. Documents with
/// no changes are left out, so "absent" and "empty" agree.
pub fn root<'a>(docs: impl IntoIterator<Item = (&'a DocId, &'a [ChangeHash])>) -> [u8; 32] {
    let mut entries: Vec<(String, [u8; 32])> = docs
        .into_iter()
        .filter(|(_, heads)| !heads.is_empty())
        .map(|(doc, heads)| (doc.name(), doc_summary(heads)))
        .collect();
    entries.sort();
    let mut hasher = blake3::Hasher::new();
    for (name, summary) in &entries {
        hash_name(&mut hasher, name);
        hasher.update(summary);
    }
    *hasher.finalize().as_bytes()
}

/// A digest of which documents are shared and the heads stored for each (`None`: none
/// stored). Two sides with equal digests stored the same shared heads for the same documents.
pub fn state_digest<'a>(
    entries: impl IntoIterator<Item = (&'a DocId, Option<&'a [ChangeHash]>)>,
) -> Fingerprint {
    let mut entries: Vec<(String, Option<[u8; 32]>)> = entries
        .into_iter()
        .map(|(doc, heads)| (doc.name(), heads.map(doc_summary)))
        .collect();
    entries.sort();
    let mut hasher = blake3::Hasher::new();
    for (name, summary) in &entries {
        hash_name(&mut hasher, name);
        match summary {
            Some(summary) => hasher.update(&[1]).update(summary),
            None => hasher.update(&[0]),
        };
    }
    let mut digest = [0u8; 8];
    digest.copy_from_slice(&hasher.finalize().as_bytes()[..8]);
    digest
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Scope;

    #[test]
    fn summaries_ignore_head_order_and_empty_docs() {
        let (a, b) = (ChangeHash([1; 32]), ChangeHash([2; 32]));
        assert_eq!(doc_summary(&[a, b]), doc_summary(&[b, a]));
        let mesh = DocId::Memory(Scope::Mesh);
        let skills = DocId::Skills;
        let one = root([(&mesh, &[a][..])]);
        assert_eq!(one, root([(&mesh, &[a][..]), (&skills, &[][..])]));
        assert_ne!(one, root([(&mesh, &[b][..])]));
    }

    #[test]
    fn digests_tell_stored_from_unstored() {
        let mesh = DocId::Memory(Scope::Mesh);
        let heads = [ChangeHash([1; 32])];
        assert_ne!(
            state_digest([(&mesh, Some(&heads[..]))]),
            state_digest([(&mesh, None)])
        );
    }
}
