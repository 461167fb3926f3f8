//! Bloom filters of change hashes (growable-bloom-filter), and the checks that make a filter
//! received from a peer safe to query.
//!
//! `GrowableBloom` trusts its own serialized form: a part with an empty buffer divides by
//! zero, and a huge slice count loops for as long as it says. So a received filter is first
//! read as a plain mirror of that layout and checked, and only then handed to the crate.

use automerge::ChangeHash;
use growable_bloom_filter::GrowableBloom;
use serde::Deserialize;

/// At most this many sub-filters; a filter built here has one.
const MAX_PARTS: usize = 32;
/// A filter with a false-positive rate of 2^-64 has 64 slices; none needs more.
const MAX_SLICES: u64 = 64;

/// Why a Bloom filter from a peer is not safe to query.
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("malformed Bloom filter: {0}")]
pub struct FilterError(&'static str);

/// The serialized layout of `GrowableBloom` (postcard ignores field names; order matters).
#[derive(Deserialize)]
struct Shape {
    parts: Vec<PartShape>,
    _error: f64,
    _estimate: u64,
    _inserts: u64,
    _capacity: u64,
    _growth: u64,
    _tightening: f64,
}

#[derive(Deserialize)]
struct PartShape {
    buffer: Vec<u8>,
    slices: u64,
}

/// A filter over `hashes` with the given false-positive rate, in wire form.
pub fn build<'a>(hashes: impl ExactSizeIterator<Item = &'a ChangeHash>, fp_rate: f64) -> Vec<u8> {
    let mut filter = GrowableBloom::new(fp_rate, hashes.len().max(1));
    for hash in hashes {
        filter.insert(hash.0);
    }
    postcard::to_allocvec(&filter).expect("filters always serialize")
}

/// A received filter, checked.
pub struct Filter(GrowableBloom);

impl Filter {
    /// Reads a filter from a peer, refusing any shape the crate would mishandle.
    pub fn decode(bytes: &[u8]) -> Result<Filter, FilterError> {
        let shape: Shape = postcard::from_bytes(bytes).map_err(|_| FilterError("layout"))?;
        if shape.parts.len() > MAX_PARTS {
            return Err(FilterError("too many parts"));
        }
        for part in &shape.parts {
            let bits = part.buffer.len() as u64 * 8;
            if part.slices == 0 || part.slices > MAX_SLICES || bits < part.slices {
                return Err(FilterError("slice count does not fit the buffer"));
            }
        }
        let filter = postcard::from_bytes(bytes).map_err(|_| FilterError("layout"))?;
        Ok(Filter(filter))
    }

    /// Whether `hash` may be in the filter (false positives at the sender's rate).
    pub fn contains(&self, hash: &ChangeHash) -> bool {
        self.0.contains(hash.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hashes(n: u8) -> Vec<ChangeHash> {
        (0..n).map(|i| ChangeHash([i; 32])).collect()
    }

    #[test]
    fn members_are_found() {
        let members = hashes(50);
        let filter = Filter::decode(&build(members.iter(), 0.01)).unwrap();
        assert!(members.iter().all(|h| filter.contains(h)));
        let outsiders = (100..=255u8)
            .filter(|&i| filter.contains(&ChangeHash([i; 32])))
            .count();
        assert!(outsiders < 20, "{outsiders} false positives of 156");
    }

    #[test]
    fn empty_filters_work() {
        let filter = Filter::decode(&build([].iter(), 0.01)).unwrap();
        assert!(!filter.contains(&ChangeHash([1; 32])));
    }

    #[test]
    fn hostile_shapes_are_refused() {
        // One part, empty buffer: the crate would divide by zero.
        let mut empty_part = vec![1u8, 0, 1];
        empty_part.extend_from_slice(&[0; 20]);
        assert!(Filter::decode(&empty_part).is_err());
        // One part, one byte, 200 slices: more slices than bits.
        let mut too_many = vec![1u8, 1, 0xff, 200, 1];
        too_many.extend_from_slice(&[0; 20]);
        assert!(Filter::decode(&too_many).is_err());
        assert!(Filter::decode(&[]).is_err());
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..256)) {
            if let Ok(filter) = Filter::decode(&bytes) {
                let _ = filter.contains(&ChangeHash([3; 32]));
            }
        }
    }
}
