//! Changes travel bundled and compressed: many changes in one zstd frame compress far better
//! than each change framed on its own, because consecutive changes share actors, keys and
//! value shapes. A peer that has nothing gets the whole document in Automerge's own compact
//! format instead, which is smaller still, and zstd shrinks that by another third.
//!
//! A payload (the raw bytes of one change bundle, or a whole document) larger than one bundle
//! travels as a transfer: `Piece`s holding its first slices, then an ordinary `Changes` or
//! `Document` bundle holding its last slice and saying what the whole is. Only a single change
//! larger than a bundle, or a large document, needs one; `Assembly` puts it back together.

use automerge::Change;

use super::linked::{self, LinkedError};
use super::message::Bundle;

/// Uncompressed bytes per bundle: a bundle compresses to less than this, so one bundle always
/// fits in a message with room for the rest of it.
pub const MAX_BUNDLE_RAW: usize = 8 << 20;
/// The largest payload a transfer may carry, uncompressed: what a receiver holds in memory
/// for one transfer. A peer that sends more is refused (the link closes with the reason).
pub const MAX_TRANSFER_RAW: usize = 256 << 20;

/// The zstd level for a payload of `len` bytes. zstd's strong levels (16 and up) take 7 to
/// 10 % more off change data and Automerge documents than level 6, but their time grows with
/// the size many times faster: measured on the sync report's data, a 1.3 MB document takes
/// 600 ms at level 19 (797 KB) and 30 ms at level 6 (872 KB), and a 270 KB change bundle
/// 145 ms at level 19 and 9 ms at level 6 for the same size as level 9. Small payloads (live
/// pushes, small differences) cost milliseconds at any level and get the smallest form;
/// transfers of several MiB get the fast one, so a big transfer is not held up by its
/// compression.
fn level_for(len: usize) -> i32 {
    if len <= SMALL_PAYLOAD {
        19
    } else if len <= LARGE_PAYLOAD {
        6
    } else {
        3
    }
}

/// Payloads up to this size are compressed at zstd's strongest level.
const SMALL_PAYLOAD: usize = 32 << 10;
/// Payloads over this size are compressed at a fast level.
const LARGE_PAYLOAD: usize = 4 << 20;

/// Why a bundle from a peer does not unpack.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    /// Not zstd, or larger than `MAX_BUNDLE_RAW` once decompressed.
    #[error("change bundle does not decompress within {MAX_BUNDLE_RAW} bytes: {0}")]
    Decompress(std::io::Error),
    /// A transfer's pieces add up to more than `MAX_TRANSFER_RAW`.
    #[error(
        "transfer is over the {MAX_TRANSFER_RAW}-byte limit: the peer holds a single change \
         that large, which this node will not take"
    )]
    TooLarge,
    /// The pieces of a transfer were not followed by its last bundle.
    #[error("a transfer's pieces were not followed by its last bundle")]
    Unfinished,
    /// The changes do not read back (`linked`).
    #[error(transparent)]
    Changes(#[from] LinkedError),
}

/// A bundle's contents.
pub enum Unpacked {
    /// Parsed changes, in the order the bundle holds them.
    Changes(Vec<Change>),
    /// `Automerge::save` bytes.
    Document(Vec<u8>),
}

/// Packs changes (in dependency order) into as few bundles as the size limit allows; a
/// change larger than a bundle becomes a transfer of its own.
pub fn pack(changes: &[Change]) -> Vec<Bundle> {
    let mut bundles = Vec::new();
    let mut start = 0;
    let mut raw = 0;
    for (i, change) in changes.iter().enumerate() {
        // A change's rebuilt size, and a few bytes of lengths beside it.
        let bytes = change.raw_bytes().len() + 10;
        if i > start && raw + bytes > MAX_BUNDLE_RAW {
            bundles.extend(seal(&linked::encode(&changes[start..i]), Bundle::Changes));
            (start, raw) = (i, 0);
        }
        raw += bytes;
    }
    if start < changes.len() {
        bundles.extend(seal(&linked::encode(&changes[start..]), Bundle::Changes));
    }
    bundles
}

/// The whole document (`Automerge::save` bytes), in as many bundles as it takes, when it is
/// within a transfer's limit.
pub fn document(saved: &[u8]) -> Option<Vec<Bundle>> {
    (saved.len() <= MAX_TRANSFER_RAW).then(|| seal(saved, Bundle::Document))
}

/// One payload as bundles: a single one when it fits, else pieces and then `last`; the
/// level follows the whole payload's size.
fn seal(raw: &[u8], last: fn(Vec<u8>) -> Bundle) -> Vec<Bundle> {
    let level = level_for(raw.len());
    let slices: Vec<&[u8]> = raw.chunks(MAX_BUNDLE_RAW).collect();
    let count = slices.len();
    slices
        .into_iter()
        .enumerate()
        .map(|(i, slice)| {
            let compressed = compress(slice, level);
            if i + 1 < count {
                Bundle::Piece(compressed)
            } else {
                last(compressed)
            }
        })
        .collect()
}

/// What a lone bundle holds (a `Piece` alone is `Unfinished`). Document bytes are only
/// decompressed here; loading them is the store's job.
pub fn unpack(bundle: &Bundle) -> Result<Unpacked, BundleError> {
    Assembly::default()
        .take(bundle)?
        .ok_or(BundleError::Unfinished)
}

/// The raw bytes of a transfer's pieces received so far.
#[derive(Default)]
pub struct Assembly {
    raw: Vec<u8>,
}

impl Assembly {
    /// Takes the next bundle of a payload: `None` after a piece, the whole payload's
    /// contents after its last bundle. Over `MAX_TRANSFER_RAW` in all is an error.
    pub fn take(&mut self, bundle: &Bundle) -> Result<Option<Unpacked>, BundleError> {
        let compressed = match bundle {
            Bundle::Piece(c) | Bundle::Changes(c) | Bundle::Document(c) => c,
        };
        let slice = decompress(compressed)?;
        if self.raw.len() + slice.len() > MAX_TRANSFER_RAW {
            return Err(BundleError::TooLarge);
        }
        let raw = if self.raw.is_empty() {
            slice
        } else {
            self.raw.extend_from_slice(&slice);
            std::mem::take(&mut self.raw)
        };
        match bundle {
            Bundle::Piece(_) => {
                self.raw = raw;
                Ok(None)
            }
            Bundle::Changes(_) => Ok(Some(Unpacked::Changes(linked::decode(
                &raw,
                MAX_TRANSFER_RAW,
            )?))),
            Bundle::Document(_) => Ok(Some(Unpacked::Document(raw))),
        }
    }
}

fn compress(raw: &[u8], level: i32) -> Vec<u8> {
    zstd::bulk::compress(raw, level).expect("in-memory zstd cannot fail")
}

fn decompress(compressed: &[u8]) -> Result<Vec<u8>, BundleError> {
    zstd::bulk::decompress(compressed, MAX_BUNDLE_RAW).map_err(BundleError::Decompress)
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
        let bundles = document(&saved).unwrap();
        let [bundle] = bundles.as_slice() else {
            panic!("a small document is one bundle");
        };
        let Unpacked::Document(whole) = unpack(bundle).unwrap() else {
            panic!("a document bundle holds a document");
        };
        assert_eq!(whole, saved);
    }

    /// A burst of single writes as meshd stores them: JSON stamped with the hybrid clock,
    /// which steps by a few milliseconds (shifted 16 bits) from one write to the next.
    #[test]
    fn a_burst_of_stamped_single_writes_costs_a_few_bytes_a_change() {
        let mut doc = Automerge::new();
        let mut stamp: u64 = 117_730_843_085_570_048;
        for i in 0..200u64 {
            stamp += (1 + i * 7 % 3) << 16;
            let value = format!(
                r#"{{"value":{{"i":{i},"note":"entry {i:06}"}},"node_id":"a4sjmq5z3tc4te3l","updated_at":{stamp},"deleted":false}}"#
            );
            let mut tx = doc.transaction();
            tx.put(ROOT, format!("k.{i:06}"), value).unwrap();
            tx.commit();
        }
        let changes = doc.get_changes(&[]);
        let bundles = pack(&changes);
        let [Bundle::Changes(bytes)] = bundles.as_slice() else {
            panic!("200 small changes are one bundle");
        };
        // Written whole, the numbers made it 1672 bytes (the stamp's low digits look random);
        // as differences from their partners in the change before, 308.
        assert!(
            bytes.len() < 200 * 3,
            "{} bytes for 200 changes",
            bytes.len()
        );
        let Unpacked::Changes(back) = unpack(&Bundle::Changes(bytes.clone())).unwrap() else {
            panic!("a change bundle holds changes");
        };
        assert!(back
            .iter()
            .zip(&changes)
            .all(|(a, b)| a.raw_bytes() == b.raw_bytes()));
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

    /// A payload cut into pieces comes back whole, and a piece alone is not a bundle.
    fn reassemble(bundles: &[Bundle]) -> Unpacked {
        let mut assembly = Assembly::default();
        let (last, pieces) = bundles.split_last().unwrap();
        for piece in pieces {
            assert!(matches!(piece, Bundle::Piece(_)));
            assert!(assembly.take(piece).unwrap().is_none());
        }
        assert!(matches!(unpack(&pieces[0]), Err(BundleError::Unfinished)));
        assembly.take(last).unwrap().unwrap()
    }

    #[test]
    fn payloads_larger_than_a_bundle_travel_in_pieces() {
        let noise: Vec<u8> = (0..MAX_BUNDLE_RAW * 2 + 5)
            .map(|i| (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15).to_be_bytes()[0])
            .collect();
        let bundles = document(&noise).unwrap();
        assert_eq!(bundles.len(), 3);
        let Unpacked::Document(back) = reassemble(&bundles) else {
            panic!("a document transfer holds a document");
        };
        assert_eq!(back, noise);

        let mut doc = doc_with(3);
        let mut tx = doc.transaction();
        tx.put(ROOT, "big", String::from_utf8_lossy(&noise).into_owned())
            .unwrap();
        tx.commit();
        let changes = doc.get_changes(&[]);
        let bundles = pack(&changes);
        assert!(bundles.len() > 2, "{} bundles", bundles.len());
        let Unpacked::Changes(back) = reassemble(&bundles[1..]) else {
            panic!("a change transfer holds changes");
        };
        assert_eq!(back.len(), 1);
        assert_eq!(back[0].hash(), changes[3].hash());
    }

    #[test]
    fn transfers_over_the_limit_are_refused() {
        let slice = compress(&vec![0; MAX_BUNDLE_RAW], 1);
        let mut assembly = Assembly::default();
        let pieces = MAX_TRANSFER_RAW / MAX_BUNDLE_RAW;
        for _ in 0..pieces {
            assert!(assembly
                .take(&Bundle::Piece(slice.clone()))
                .unwrap()
                .is_none());
        }
        assert!(matches!(
            assembly.take(&Bundle::Document(slice)),
            Err(BundleError::TooLarge)
        ));
    }
}
