//! Changes travel bundled and compressed: many changes in one zstd frame compress far better
//! than each change framed on its own, because consecutive changes share actors, keys and
//! value shapes. A peer that has nothing gets the whole document in Automerge's own compact
//! format instead, which is smaller still, and zstd shrinks that by another third.

use automerge::Change;

use super::message::Bundle;

/// Uncompressed bytes per bundle: a bundle compresses to less than this, so one bundle always
/// fits in a message with room for the rest of it.
pub const MAX_BUNDLE_RAW: usize = 8 << 20;
/// zstd level: past 9 the gain on change data is small and the cost in time is not.
const ZSTD_LEVEL: i32 = 9;
/// A whole document is sent once per new peer, and level 19 takes a third off it.
const DOCUMENT_ZSTD_LEVEL: i32 = 19;

/// Why a bundle from a peer does not unpack.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    /// Not zstd, or larger than `MAX_BUNDLE_RAW` once decompressed.
    #[error("change bundle does not decompress within {MAX_BUNDLE_RAW} bytes: {0}")]
    Decompress(std::io::Error),
    /// A length prefix runs past the end.
    #[error("change bundle is cut short")]
    Truncated,
    /// A change's bytes are not an Automerge change.
    #[error("change bundle holds a change that does not parse")]
    Change,
}

/// A bundle's contents.
pub enum Unpacked {
    /// Parsed changes, in the order the bundle holds them.
    Changes(Vec<Change>),
    /// `Automerge::save` bytes.
    Document(Vec<u8>),
}

/// Packs changes (in dependency order) into as few bundles as the size limit allows.
pub fn pack(changes: &[Change]) -> Vec<Bundle> {
    let mut bundles = Vec::new();
    let mut raw = Vec::new();
    for change in changes {
        let bytes = change.raw_bytes();
        if !raw.is_empty() && raw.len() + bytes.len() + 10 > MAX_BUNDLE_RAW {
            bundles.push(Bundle::Changes(compress(&raw, ZSTD_LEVEL)));
            raw.clear();
        }
        write_len(&mut raw, bytes.len());
        raw.extend_from_slice(bytes);
    }
    if !raw.is_empty() {
        bundles.push(Bundle::Changes(compress(&raw, ZSTD_LEVEL)));
    }
    bundles
}

/// The whole document (`Automerge::save` bytes), when it fits in a bundle.
pub fn document(saved: &[u8]) -> Option<Bundle> {
    (saved.len() <= MAX_BUNDLE_RAW).then(|| Bundle::Document(compress(saved, DOCUMENT_ZSTD_LEVEL)))
}

/// What a bundle holds. Document bytes are only decompressed here; loading them is the
/// store's job.
pub fn unpack(bundle: &Bundle) -> Result<Unpacked, BundleError> {
    match bundle {
        Bundle::Changes(compressed) => split(&decompress(compressed)?).map(Unpacked::Changes),
        Bundle::Document(compressed) => decompress(compressed).map(Unpacked::Document),
    }
}

fn compress(raw: &[u8], level: i32) -> Vec<u8> {
    zstd::bulk::compress(raw, level).expect("in-memory zstd cannot fail")
}

fn decompress(compressed: &[u8]) -> Result<Vec<u8>, BundleError> {
    zstd::bulk::decompress(compressed, MAX_BUNDLE_RAW).map_err(BundleError::Decompress)
}

fn split(mut raw: &[u8]) -> Result<Vec<Change>, BundleError> {
    let mut changes = Vec::new();
    while !raw.is_empty() {
        let len = read_len(&mut raw)?;
        if len > raw.len() {
            return Err(BundleError::Truncated);
        }
        let (bytes, rest) = raw.split_at(len);
        changes.push(Change::try_from(bytes).map_err(|_| BundleError::Change)?);
        raw = rest;
    }
    Ok(changes)
}

/// LEB128, as in Automerge's own formats.
fn write_len(out: &mut Vec<u8>, mut len: usize) {
    loop {
        let byte = (len & 0x7f) as u8;
        len >>= 7;
        if len == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

fn read_len(raw: &mut &[u8]) -> Result<usize, BundleError> {
    let mut len = 0usize;
    for shift in (0..35).step_by(7) {
        let (&byte, rest) = raw.split_first().ok_or(BundleError::Truncated)?;
        *raw = rest;
        len |= usize::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(len);
        }
    }
    Err(BundleError::Truncated)
}

#[cfg(test)]
mod tests {
    use super::*;
    use automerge::transaction::Transactable;
    use automerge::{Automerge, ROOT};

    fn doc_with(n: usize) -> Automerge {
        let mut doc = Automerge::new();
        for i in 0..n {
            let mut tx = doc.transaction();
            tx.put(ROOT, format!("key{i}"), i as i64).unwrap();
            tx.commit();
        }
        doc
    }

    #[test]
    fn bundles_round_trip() {
        let doc = doc_with(20);
        let changes = doc.get_changes(&[]);
        let bundles = pack(&changes);
        assert_eq!(bundles.len(), 1);
        let Unpacked::Changes(back) = unpack(&bundles[0]).unwrap() else {
            panic!("a change bundle holds changes");
        };
        let hashes = |cs: &[Change]| cs.iter().map(Change::hash).collect::<Vec<_>>();
        assert_eq!(hashes(&back), hashes(&changes));
        let saved = doc.save();
        let Unpacked::Document(whole) = unpack(&document(&saved).unwrap()).unwrap() else {
            panic!("a document bundle holds a document");
        };
        assert_eq!(whole, saved);
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(unpack(&Bundle::Changes(vec![1, 2, 3])).is_err());
        let truncated = zstd::bulk::compress(&[200, 1], 1).unwrap();
        assert!(unpack(&Bundle::Changes(truncated)).is_err());
        assert!(unpack(&Bundle::Document(vec![0; 40])).is_err());
        let bomb = compress(&vec![0; MAX_BUNDLE_RAW + 1], 3);
        assert!(unpack(&Bundle::Changes(bomb)).is_err());
    }

    #[test]
    fn lengths_round_trip() {
        for len in [0, 1, 127, 128, 300, 1 << 20] {
            let mut out = Vec::new();
            write_len(&mut out, len);
            assert_eq!(read_len(&mut out.as_slice()).unwrap(), len);
        }
    }
}
