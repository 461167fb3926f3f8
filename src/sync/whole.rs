//! A whole document brought by a peer (a full clone) or by a file (`meshd doc import`, a
//! backup), split into its chunks before Automerge sees it.
//!
//! Automerge's own `load` applies the change chunks that follow a document chunk, and 0.12
//! panics, halfway through, on a change whose sequence number skips (`sequence`). So the
//! bytes are taken apart here by their chunk headers: at most one document chunk, first (what
//! `save` writes), then change chunks (what `save_incremental` appends). The document chunk
//! loads alone; the changes after it are checked (`sequence::misnumbered`) against the
//! document this node holds, or the loaded one for a node that holds none, before they are
//! applied. Anything else (a second document, a bundle, bytes that are not whole chunks) is
//! refused with the reason.

use automerge::{Automerge, Change};

use super::sequence;

/// The first bytes of every Automerge chunk.
pub(super) const CHUNK_MAGIC: [u8; 4] = [0x85, 0x6f, 0x4a, 0x83];
const DOCUMENT_CHUNK: u8 = 0;
pub(super) const CHANGE_CHUNK: u8 = 1;
const COMPRESSED_CHANGE_CHUNK: u8 = 2;

/// One chunk: its header (magic bytes, a 4-byte checksum, the type, the data's length as
/// LEB128) and its data.
pub(super) struct Chunk<'a> {
    pub kind: u8,
    /// The whole chunk, header first.
    pub bytes: &'a [u8],
    /// What follows the header.
    pub data: &'a [u8],
}

/// Whether `saved` is exactly one document chunk, nothing after it: such bytes load to the
/// document they hold and nothing else.
pub fn is_one_document(saved: &[u8]) -> bool {
    one_document_data(saved).is_some()
}

/// The data (what follows the header) of the one document chunk `saved` is, if it is one.
pub fn one_document_data(saved: &[u8]) -> Option<&[u8]> {
    match split(saved).as_deref() {
        Some([only]) if only.kind == DOCUMENT_CHUNK => Some(only.data),
        _ => None,
    }
}

/// The document `saved` holds, with the changes after it applied; `held` is this node's copy
/// of it, if any, against which those changes are checked.
pub fn load(held: Option<&Automerge>, saved: &[u8]) -> Result<Automerge, String> {
    let chunks = split(saved)
        .ok_or("the bytes are not whole Automerge chunks (cut short, or not Automerge at all)")?;
    let (mut document, rest) = match chunks.split_first() {
        Some((first, rest)) if first.kind == DOCUMENT_CHUNK => {
            let document = Automerge::load(first.bytes)
                .map_err(|error| format!("the document does not load: {error}"))?;
            (document, rest)
        }
        _ => (Automerge::new(), chunks.as_slice()),
    };
    let changes = rest.iter().map(change).collect::<Result<Vec<_>, _>>()?;
    if changes.is_empty() && held.is_none() {
        return Ok(document);
    }
    let reason = match held {
        Some(held) => {
            let mut all = document.get_changes(&[]);
            all.extend(changes.iter().cloned());
            sequence::misnumbered(held, &all)
        }
        None => sequence::misnumbered(&document, &changes),
    };
    if let Some(reason) = reason {
        return Err(reason);
    }
    document
        .apply_changes(changes)
        .map_err(|error| format!("a change after the document does not apply: {error}"))?;
    Ok(document)
}

fn change(chunk: &Chunk<'_>) -> Result<Change, String> {
    match chunk.kind {
        CHANGE_CHUNK | COMPRESSED_CHANGE_CHUNK => Change::try_from(chunk.bytes)
            .map_err(|error| format!("a change after the document does not load: {error}")),
        DOCUMENT_CHUNK => Err(
            "a second document follows the first: meshd takes one document, then changes".into(),
        ),
        other => Err(format!(
            "a chunk of type {other} follows the document: meshd takes one document, then changes"
        )),
    }
}

/// `bytes` as a sequence of whole chunks; `None` when they are not one.
fn split(mut bytes: &[u8]) -> Option<Vec<Chunk<'_>>> {
    let mut chunks = Vec::new();
    while !bytes.is_empty() {
        let (chunk, rest) = first_chunk(bytes)?;
        chunks.push(chunk);
        bytes = rest;
    }
    Some(chunks)
}

/// The chunk `bytes` start with, and what follows it.
pub(super) fn first_chunk(bytes: &[u8]) -> Option<(Chunk<'_>, &[u8])> {
    let after_magic = bytes.strip_prefix(&CHUNK_MAGIC)?;
    let (&kind, after_type) = after_magic.get(4..)?.split_first()?;
    let (len, data) = leb128(after_type)?;
    let len = usize::try_from(len).ok().filter(|len| *len <= data.len())?;
    let end = bytes.len() - data.len() + len;
    Some((
        Chunk {
            kind,
            bytes: &bytes[..end],
            data: &data[..len],
        },
        &bytes[end..],
    ))
}

/// An unsigned LEB128 number of at most 10 bytes, and what follows it.
pub(super) fn leb128(bytes: &[u8]) -> Option<(u64, &[u8])> {
    let mut value: u64 = 0;
    for (at, &byte) in bytes.iter().enumerate().take(10) {
        value |= u64::from(byte & 0x7f).checked_shl(7 * at as u32)?;
        if byte & 0x80 == 0 {
            return Some((value, &bytes[at + 1..]));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use automerge::transaction::Transactable;
    use automerge::{ActorId, ChangeHash, ROOT};

    use super::*;

    fn document() -> Automerge {
        let mut doc = Automerge::new();
        let mut tx = doc.transaction();
        tx.put(ROOT, "k", "v").unwrap();
        tx.commit();
        doc
    }

    /// A change by another actor, numbered as told.
    fn change(seq: u64, start_op: u64, deps: Vec<ChangeHash>) -> Change {
        sequence::numbered_change(ActorId::from(&[7u8; 16][..]), seq, start_op, deps)
    }

    #[test]
    fn a_document_and_the_changes_after_it_load() {
        let doc = document();
        let first = change(1, 2, doc.get_heads());
        let second = change(2, 3, vec![first.hash()]);
        let mut saved = doc.save();
        saved.extend_from_slice(first.raw_bytes());
        saved.extend_from_slice(second.raw_bytes());
        assert!(!is_one_document(&saved));
        let loaded = load(None, &saved).unwrap();
        assert_eq!(loaded.get_heads(), vec![second.hash()]);
        assert!(load(Some(&doc), &saved).is_ok());
        assert!(is_one_document(&doc.save()));
        assert_eq!(
            load(None, &doc.save()).unwrap().get_heads(),
            doc.get_heads()
        );
    }

    /// Automerge's own `load` panics on these bytes (a skipped sequence number).
    #[test]
    fn a_change_that_skips_a_number_after_a_document_is_refused_without_a_panic() {
        let doc = document();
        let mut saved = doc.save();
        saved.extend_from_slice(change(2, 2, doc.get_heads()).raw_bytes());
        for held in [None, Some(&doc)] {
            let refusal = load(held, &saved).err().unwrap();
            assert!(refusal.contains("is number 2 of its actor"), "{refusal}");
        }
    }

    #[test]
    fn bytes_that_are_not_one_document_then_changes_are_refused_with_the_reason() {
        let saved = document().save();
        let twice = [saved.as_slice(), saved.as_slice()].concat();
        assert!(load(None, &twice)
            .err()
            .unwrap()
            .contains("second document"));
        let cut = &saved[..saved.len() - 1];
        assert!(load(None, cut)
            .err()
            .unwrap()
            .contains("not whole Automerge chunks"));
        let trailing = [saved.as_slice(), b"\x85\x6f\x4a\x83"].concat();
        assert!(load(None, &trailing).is_err());
        let mut bundle = saved.clone();
        bundle[8] = 3;
        let refusal = load(None, &[saved.as_slice(), &bundle].concat())
            .err()
            .unwrap();
        assert!(refusal.contains("type 3"), "{refusal}");
        assert!(load(None, b"not automerge").is_err());
        assert_eq!(leb128(&[0xff; 11]), None);
    }
}
