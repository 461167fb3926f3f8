//! Changes written with their dependencies on each other as references: the payload of a
//! change bundle.
//!
//! An Automerge change names each change it depends on by its 32-byte hash, and opens with a
//! 4-byte checksum (the start of its own hash). Neither compresses: in a live push of a few
//! dozen single writes they were two thirds of the compressed bytes. Both are a function of
//! bytes the receiver gets anyway, so a dependency on a change earlier in the same payload is
//! written as that change's position, and the chunk header (magic bytes, checksum, type,
//! length) is left out; the receiver rebuilds the exact chunk, byte for byte, and Automerge
//! parses it as if it had travelled whole. A change's hash is still what its signature covers,
//! and it is computed from the rebuilt bytes, never taken from the sender.
//!
//! Layout, every number LEB128: per change, `deps + 1` then one reference per dependency
//! (`0` and the 32-byte hash, or `i + 1` for the `i`-th change of the payload) then the length
//! and bytes of the rest of the change's data; or `0` then the length and bytes of a chunk
//! sent verbatim (one whose header does not read as an uncompressed change).

use automerge::{Change, ChangeHash};
use sha2::{Digest, Sha256};

/// The first bytes of every Automerge chunk.
const MAGIC: [u8; 4] = [0x85, 0x6f, 0x4a, 0x83];
const CHANGE_CHUNK: u8 = 1;
const CHECKSUM_LEN: usize = 4;
const HASH_LEN: usize = 32;
/// Magic bytes and checksum, before the chunk type.
const PREFIX_LEN: usize = MAGIC.len() + CHECKSUM_LEN;

/// Why a payload does not read back as changes.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LinkedError {
    /// A number or a length runs past the end.
    #[error("change bundle is cut short")]
    Truncated,
    /// A dependency names a change that is not earlier in the payload.
    #[error("change bundle refers to change {0}, which does not come before it")]
    Reference(u64),
    /// The rebuilt changes would be larger than the receiver holds for one transfer.
    #[error("change bundle rebuilds to more than {0} bytes")]
    TooLarge(usize),
    /// The rebuilt bytes are not an Automerge change.
    #[error("change bundle holds a change that does not parse")]
    Change,
}

/// The payload for `changes`, in the order given (dependencies first, for references).
pub fn encode(changes: &[Change]) -> Vec<u8> {
    let mut positions = std::collections::HashMap::with_capacity(changes.len());
    let mut out = Vec::new();
    for (i, change) in changes.iter().enumerate() {
        match split_chunk(change.raw_bytes()) {
            Some((deps, rest)) => {
                write_len(&mut out, deps.len() as u64 + 1);
                for dep in deps {
                    match positions.get(&dep) {
                        Some(&at) => write_len(&mut out, at as u64 + 1),
                        None => {
                            write_len(&mut out, 0);
                            out.extend_from_slice(&dep.0);
                        }
                    }
                }
                write_bytes(&mut out, rest);
            }
            None => {
                write_len(&mut out, 0);
                write_bytes(&mut out, change.raw_bytes());
            }
        }
        positions.insert(change.hash(), i);
    }
    out
}

/// The changes `payload` holds, rebuilding at most `limit` bytes of them.
pub fn decode(mut payload: &[u8], limit: usize) -> Result<Vec<Change>, LinkedError> {
    let mut changes: Vec<Change> = Vec::new();
    let mut rebuilt = 0usize;
    while !payload.is_empty() {
        let chunk = match read_len(&mut payload)? {
            0 => read_bytes(&mut payload)?.to_vec(),
            deps_plus_one => rebuild(&mut payload, deps_plus_one - 1, &changes, limit)?,
        };
        rebuilt = rebuilt.saturating_add(chunk.len());
        if rebuilt > limit {
            return Err(LinkedError::TooLarge(limit));
        }
        changes.push(Change::try_from(chunk.as_slice()).map_err(|_| LinkedError::Change)?);
    }
    Ok(changes)
}

/// One change chunk from its dependency references and the rest of its data.
fn rebuild(
    payload: &mut &[u8],
    deps: u64,
    earlier: &[Change],
    limit: usize,
) -> Result<Vec<u8>, LinkedError> {
    // Each reference takes at least a byte: a count beyond the bytes left is a lie.
    if deps > payload.len() as u64 {
        return Err(LinkedError::Truncated);
    }
    let mut data = Vec::new();
    write_len(&mut data, deps);
    for _ in 0..deps {
        match read_len(payload)? {
            0 => data.extend_from_slice(take(payload, HASH_LEN)?),
            at => {
                let dep = usize::try_from(at - 1)
                    .ok()
                    .and_then(|i| earlier.get(i))
                    .ok_or(LinkedError::Reference(at - 1))?;
                data.extend_from_slice(&dep.hash().0);
            }
        }
        if data.len() > limit {
            return Err(LinkedError::TooLarge(limit));
        }
    }
    data.extend_from_slice(read_bytes(payload)?);
    Ok(chunk(&data))
}

/// A change chunk around `data`: the header Automerge writes.
fn chunk(data: &[u8]) -> Vec<u8> {
    let mut typed = Vec::with_capacity(data.len() + 11);
    typed.push(CHANGE_CHUNK);
    write_len(&mut typed, data.len() as u64);
    typed.extend_from_slice(data);
    let hash = Sha256::digest(&typed);
    let mut out = Vec::with_capacity(PREFIX_LEN + typed.len());
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&hash[..CHECKSUM_LEN]);
    out.extend_from_slice(&typed);
    out
}

/// A change chunk's dependencies and the data after them, when `raw` is exactly one
/// uncompressed change chunk that `chunk` would write back the same.
fn split_chunk(raw: &[u8]) -> Option<(Vec<ChangeHash>, &[u8])> {
    let after_prefix = raw.strip_prefix(&MAGIC)?.get(CHECKSUM_LEN..)?;
    let (&kind, mut rest) = after_prefix.split_first()?;
    let len = read_len(&mut rest).ok()?;
    if kind != CHANGE_CHUNK || len != rest.len() as u64 {
        return None;
    }
    let mut data = rest;
    let count = read_len(&mut data).ok()?;
    let mut deps = Vec::new();
    for _ in 0..count {
        let hash = take(&mut data, HASH_LEN).ok()?;
        deps.push(ChangeHash(hash.try_into().ok()?));
    }
    let rebuilt = chunk(&[&encoded_len(count)[..], &deps_bytes(&deps), data].concat());
    (rebuilt == raw).then_some((deps, data))
}

fn deps_bytes(deps: &[ChangeHash]) -> Vec<u8> {
    deps.iter().flat_map(|d| d.0).collect()
}

fn encoded_len(n: u64) -> Vec<u8> {
    let mut out = Vec::new();
    write_len(&mut out, n);
    out
}

fn write_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    write_len(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

fn read_bytes<'a>(payload: &mut &'a [u8]) -> Result<&'a [u8], LinkedError> {
    let len = read_len(payload)?;
    take(
        payload,
        usize::try_from(len).map_err(|_| LinkedError::Truncated)?,
    )
}

fn take<'a>(payload: &mut &'a [u8], n: usize) -> Result<&'a [u8], LinkedError> {
    if n > payload.len() {
        return Err(LinkedError::Truncated);
    }
    let (taken, rest) = payload.split_at(n);
    *payload = rest;
    Ok(taken)
}

/// LEB128, as in Automerge's own formats.
pub(super) fn write_len(out: &mut Vec<u8>, mut n: u64) {
    loop {
        let byte = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

fn read_len(payload: &mut &[u8]) -> Result<u64, LinkedError> {
    let (n, rest) = super::whole::leb128(payload).ok_or(LinkedError::Truncated)?;
    *payload = rest;
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use automerge::transaction::Transactable;
    use automerge::{ActorId, Automerge, ROOT};
    use proptest::prelude::*;

    /// `n` changes from two actors, merged now and then: dependencies inside and outside
    /// any slice of them.
    fn history(n: usize) -> Vec<Change> {
        let mut a = Automerge::new().with_actor(ActorId::from(b"aaaa".as_slice()));
        let mut b = Automerge::new().with_actor(ActorId::from(b"bbbb".as_slice()));
        for i in 0..n {
            let doc = if i % 3 == 0 { &mut b } else { &mut a };
            let mut tx = doc.transaction();
            tx.put(ROOT, format!("key{i}"), format!("value {i}"))
                .unwrap();
            tx.commit();
            if i % 5 == 4 {
                a.merge(&mut b).unwrap();
            }
        }
        a.merge(&mut b).unwrap();
        a.get_changes(&[])
    }

    fn hashes(changes: &[Change]) -> Vec<ChangeHash> {
        changes.iter().map(Change::hash).collect()
    }

    #[test]
    fn changes_come_back_byte_for_byte() {
        let changes = history(40);
        for slice in [&changes[..], &changes[17..], &changes[39..]] {
            let back = decode(&encode(slice), usize::MAX).unwrap();
            assert_eq!(hashes(&back), hashes(slice));
            for (got, sent) in back.iter().zip(slice) {
                assert_eq!(got.raw_bytes(), sent.raw_bytes());
            }
        }
        assert_eq!(decode(&[], usize::MAX).unwrap().len(), 0);
    }

    #[test]
    fn a_dependency_inside_the_payload_costs_a_reference_not_a_hash() {
        let changes = history(30);
        let raw: usize = changes.iter().map(|c| c.raw_bytes().len()).sum();
        let deps: usize = changes.iter().map(|c| c.deps().len()).sum();
        let saved = raw - encode(&changes).len();
        // The checksum, the header and every dependency's hash (all but the first change's
        // dependencies are inside the payload) less a byte or two for the reference.
        assert!(
            saved >= deps * (HASH_LEN - 2),
            "saved {saved} for {deps} dependencies"
        );
    }

    #[test]
    fn a_chunk_that_is_not_a_plain_change_travels_verbatim() {
        let change = history(1).remove(0);
        let mut payload = Vec::new();
        write_len(&mut payload, 0);
        write_bytes(&mut payload, change.raw_bytes());
        let back = decode(&payload, usize::MAX).unwrap();
        assert_eq!(back[0].hash(), change.hash());
        assert!(split_chunk(b"not a chunk").is_none());
    }

    #[test]
    fn a_reference_must_name_an_earlier_change() {
        let changes = history(3);
        let mut payload = encode(&changes[..1]);
        write_len(&mut payload, 2);
        write_len(&mut payload, 2); // itself: change 1 is the one being read
        write_bytes(&mut payload, &[]);
        assert_eq!(
            decode(&payload, usize::MAX).unwrap_err(),
            LinkedError::Reference(1)
        );
    }

    #[test]
    fn rebuilding_more_than_the_limit_is_refused() {
        let changes = history(10);
        let payload = encode(&changes);
        let raw: usize = changes.iter().map(|c| c.raw_bytes().len()).sum();
        assert!(decode(&payload, raw).is_ok());
        assert_eq!(
            decode(&payload, raw - 1).unwrap_err(),
            LinkedError::TooLarge(raw - 1)
        );
        // A million references to one change: refused before it is built.
        let mut bomb = encode(&changes[..1]);
        write_len(&mut bomb, 1_000_001);
        for _ in 0..1_000_000 {
            write_len(&mut bomb, 1);
        }
        write_bytes(&mut bomb, &[]);
        assert_eq!(
            decode(&bomb, 1 << 20).unwrap_err(),
            LinkedError::TooLarge(1 << 20)
        );
    }

    #[test]
    fn cut_or_lying_payloads_are_errors() {
        let changes = history(5);
        let payload = encode(&changes);
        // A cut between two changes is a payload of fewer changes; anywhere else, an error.
        for cut in 1..payload.len() {
            if let Ok(back) = decode(&payload[..cut], usize::MAX) {
                assert!(back.len() < changes.len(), "cut at {cut}");
                assert_eq!(hashes(&back), hashes(&changes[..back.len()]));
            }
        }
        let mut count_too_large = Vec::new();
        write_len(&mut count_too_large, u64::MAX);
        assert!(decode(&count_too_large, usize::MAX).is_err());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(
            std::env::var("PROPTEST_CASES").ok().and_then(|n| n.parse().ok()).unwrap_or(256)
        ))]
        /// Flipped bytes never panic and never rebuild past the limit.
        #[test]
        fn flipped_bytes_never_panic(flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8)) {
            let mut payload = encode(&history(8));
            for (at, byte) in flips {
                let len = payload.len();
                payload[at % len] ^= byte | 1;
            }
            let _ = decode(&payload, 1 << 16);
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode(&bytes, 1 << 16);
        }
    }
}
