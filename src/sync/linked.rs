//! Changes written with their dependencies on each other as references: the payload of a
//! change bundle.
//!
//! An Automerge change names each change it depends on by its 32-byte hash, and opens with a
//! 4-byte checksum (the start of its own hash). Neither compresses: in a live push of a few
//! dozen single writes they were two thirds of the compressed bytes. Both are a function of
//! bytes the receiver gets anyway, so a dependency on a change earlier in the same payload is
//! written as how far back it is, and the chunk header (magic bytes, checksum, type,
//! length) is left out; the receiver rebuilds the exact chunk, byte for byte, and Automerge
//! parses it as if it had travelled whole. A change's hash is still what its signature covers,
//! and it is computed from the rebuilt bytes, never taken from the sender.
//!
//! The same goes for the fields that repeat or grow from one change to the next: a change's
//! actor is a reference once the payload named it, and its sequence number, first operation
//! and time are differences from the last ones. (Writing each operation column of all the
//! changes together, as Automerge's document format does, was tried: zstd made it larger.)
//!
//! Layout, every number LEB128 (docs/protocol.md, `DocPart.changes`): per change, `deps + 1`;
//! per dependency `0` and the 32-byte hash, or how many changes back in the payload it is
//! (`1`: the change just before); the actor as `0` and its length and bytes, or `i + 1` for
//! the `i`-th actor the payload named; the sequence number as the difference from the actor's
//! last in the payload (from 0), the first operation and (signed) the time as differences from
//! the previous change's, wrapping; then the rest of the change's data (message, other
//! actors, operations): as it is for the first change, with its decimal numbers as differences
//! from the change before's for the others (`numbers`). Or `0` and the length and bytes of a
//! chunk sent verbatim (one the sender cannot write back exactly that way).

use std::borrow::Cow;

use automerge::{Change, ChangeHash};
use sha2::{Digest, Sha256};

use super::numbers::{self, Numbers};
use super::whole::{self, CHANGE_CHUNK, CHUNK_MAGIC};

const CHECKSUM_LEN: usize = 4;
const HASH_LEN: usize = 32;
/// Magic bytes and checksum, before the chunk type.
const PREFIX_LEN: usize = CHUNK_MAGIC.len() + CHECKSUM_LEN;

/// Why a payload does not read back as changes.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LinkedError {
    /// A number or a length runs past the end.
    #[error("change bundle is cut short")]
    Truncated,
    /// A dependency names a change further back than the payload's first.
    #[error("change bundle refers to the change {0} back, before its first")]
    Reference(u64),
    /// An actor reference names an actor no earlier change had.
    #[error("change bundle refers to actor {0}, which no change before it had")]
    Actor(u64),
    /// The rebuilt changes would be larger than the receiver holds for one transfer.
    #[error("change bundle rebuilds to more than {0} bytes")]
    TooLarge(usize),
    /// A number in a change's data does not fit the digits it says it has.
    #[error("change bundle holds a number of {width} digits that is {difference} from the one before, which does not fit")]
    Number {
        /// The digits the number says it has.
        width: u64,
        /// Its difference from the number before.
        difference: i64,
    },
    /// The rebuilt bytes are not an Automerge change.
    #[error("change bundle holds a change that does not parse")]
    Change,
}

/// The payload for `changes`, in the order given (dependencies first, for references).
pub fn encode(changes: &[Change]) -> Vec<u8> {
    let mut context = Context::default();
    let mut out = Vec::new();
    for (position, change) in changes.iter().enumerate() {
        match Fields::read(change.raw_bytes()) {
            Some(fields) => context.write(&fields, position, &mut out),
            None => {
                write_len(&mut out, 0);
                write_bytes(&mut out, change.raw_bytes());
            }
        }
        context.positions.insert(change.hash(), position);
    }
    out
}

/// The changes `payload` holds, rebuilding at most `limit` bytes of them.
pub fn decode(mut payload: &[u8], limit: usize) -> Result<Vec<Change>, LinkedError> {
    let mut context = Context::default();
    let mut changes: Vec<Change> = Vec::new();
    let mut rebuilt = 0usize;
    while !payload.is_empty() {
        let chunk = match read_len(&mut payload)? {
            0 => read_bytes(&mut payload)?.to_vec(),
            deps_plus_one => {
                let fields = context.read(&mut payload, deps_plus_one - 1, &changes, limit)?;
                chunk(&fields.data())
            }
        };
        rebuilt = rebuilt.saturating_add(chunk.len());
        if rebuilt > limit {
            return Err(LinkedError::TooLarge(limit));
        }
        changes.push(Change::try_from(chunk.as_slice()).map_err(|_| LinkedError::Change)?);
    }
    Ok(changes)
}

/// The fields of a change's data that repeat or grow from one change to the next, and the
/// rest (message, other actors, operations) as it is.
#[derive(Debug, PartialEq)]
struct Fields<'a> {
    deps: Vec<ChangeHash>,
    actor: Vec<u8>,
    seq: u64,
    start_op: u64,
    time: i64,
    rest: Cow<'a, [u8]>,
}

impl<'a> Fields<'a> {
    /// The fields of `raw` when it is exactly one uncompressed change chunk that `chunk`
    /// writes back byte for byte (LEB128 in its shortest form, as Automerge writes it).
    fn read(raw: &'a [u8]) -> Option<Fields<'a>> {
        let (whole_chunk, after) = whole::first_chunk(raw)?;
        if whole_chunk.kind != CHANGE_CHUNK || !after.is_empty() {
            return None;
        }
        let mut data = whole_chunk.data;
        let mut deps = Vec::new();
        for _ in 0..read_len(&mut data).ok()? {
            deps.push(ChangeHash(take(&mut data, HASH_LEN).ok()?.try_into().ok()?));
        }
        let fields = Fields {
            deps,
            actor: read_bytes(&mut data).ok()?.to_vec(),
            seq: read_len(&mut data).ok()?,
            start_op: read_len(&mut data).ok()?,
            time: read_signed(&mut data).ok()?,
            rest: Cow::Borrowed(data),
        };
        (chunk(&fields.data()) == raw).then_some(fields)
    }

    /// The change's data, as Automerge lays it out.
    fn data(&self) -> Vec<u8> {
        let mut data = Vec::with_capacity(self.deps.len() * HASH_LEN + self.rest.len() + 48);
        write_len(&mut data, self.deps.len() as u64);
        self.deps.iter().for_each(|d| data.extend_from_slice(&d.0));
        write_bytes(&mut data, &self.actor);
        write_len(&mut data, self.seq);
        write_len(&mut data, self.start_op);
        write_signed(&mut data, self.time);
        data.extend_from_slice(&self.rest);
        data
    }
}

/// What the changes before the one being written or read leave for it to refer to: their
/// positions, their actors, and the numbers the next change's are written against.
#[derive(Default)]
struct Context {
    /// Where each change written so far is in the payload (its last place, if listed twice).
    positions: std::collections::HashMap<ChangeHash, usize>,
    actors: Vec<Vec<u8>>,
    /// Per actor (by position in `actors`), its last sequence number.
    seqs: Vec<u64>,
    start_op: u64,
    time: i64,
    /// The numbers in the data of the last change (`None` before the first).
    numbers: Option<Numbers>,
}

impl Context {
    /// Writes `fields`, the payload's change at `position`: dependencies as references where
    /// it can, the actor as a reference once seen, the numbers as differences from the last
    /// ones.
    fn write(&mut self, fields: &Fields<'_>, position: usize, out: &mut Vec<u8>) {
        write_len(out, fields.deps.len() as u64 + 1);
        for dep in &fields.deps {
            match self.positions.get(dep) {
                Some(&at) => write_len(out, (position - at) as u64),
                None => {
                    write_len(out, 0);
                    out.extend_from_slice(&dep.0);
                }
            }
        }
        let actor = match self.actors.iter().position(|a| *a == fields.actor) {
            Some(at) => {
                write_len(out, at as u64 + 1);
                at
            }
            None => {
                write_len(out, 0);
                write_bytes(out, &fields.actor);
                self.actors.push(fields.actor.clone());
                self.seqs.push(0);
                self.actors.len() - 1
            }
        };
        write_len(out, fields.seq.wrapping_sub(self.seqs[actor]));
        write_len(out, fields.start_op.wrapping_sub(self.start_op));
        write_signed(out, fields.time.wrapping_sub(self.time));
        self.numbers = Some(match &self.numbers {
            Some(before) => numbers::write(&fields.rest, before, out),
            None => numbers::write_verbatim(&fields.rest, out),
        });
        self.seqs[actor] = fields.seq;
        (self.start_op, self.time) = (fields.start_op, fields.time);
    }

    /// Reads the fields `write` wrote, after the dependency count.
    fn read<'p>(
        &mut self,
        payload: &mut &'p [u8],
        deps: u64,
        earlier: &[Change],
        limit: usize,
    ) -> Result<Fields<'p>, LinkedError> {
        // Each reference takes at least a byte: a count beyond the bytes left is a lie.
        if deps > payload.len() as u64 {
            return Err(LinkedError::Truncated);
        }
        if deps.saturating_mul(HASH_LEN as u64) > limit as u64 {
            return Err(LinkedError::TooLarge(limit));
        }
        let mut hashes = Vec::new();
        for _ in 0..deps {
            hashes.push(match read_len(payload)? {
                0 => ChangeHash(take(payload, HASH_LEN)?.try_into().expect("32 bytes taken")),
                back => usize::try_from(back)
                    .ok()
                    .and_then(|back| earlier.len().checked_sub(back))
                    .map(|at| earlier[at].hash())
                    .ok_or(LinkedError::Reference(back))?,
            });
        }
        let actor = match read_len(payload)? {
            0 => {
                self.actors.push(read_bytes(payload)?.to_vec());
                self.seqs.push(0);
                self.actors.len() - 1
            }
            at => usize::try_from(at - 1)
                .ok()
                .filter(|&i| i < self.actors.len())
                .ok_or(LinkedError::Actor(at - 1))?,
        };
        let seq = self.seqs[actor].wrapping_add(read_len(payload)?);
        let start_op = self.start_op.wrapping_add(read_len(payload)?);
        let time = self.time.wrapping_add(read_signed(payload)?);
        self.seqs[actor] = seq;
        (self.start_op, self.time) = (start_op, time);
        let none = Numbers::default();
        let before = self.numbers.as_ref().unwrap_or(&none);
        let (rest, numbers) = numbers::read(payload, before, limit)?;
        self.numbers = Some(numbers);
        Ok(Fields {
            deps: hashes,
            actor: self.actors[actor].clone(),
            seq,
            start_op,
            time,
            rest: Cow::Owned(rest),
        })
    }
}

/// A change chunk around `data`: the header Automerge writes.
fn chunk(data: &[u8]) -> Vec<u8> {
    let mut typed = Vec::with_capacity(data.len() + 11);
    typed.push(CHANGE_CHUNK);
    write_len(&mut typed, data.len() as u64);
    typed.extend_from_slice(data);
    let hash = Sha256::digest(&typed);
    let mut out = Vec::with_capacity(PREFIX_LEN + typed.len());
    out.extend_from_slice(&CHUNK_MAGIC);
    out.extend_from_slice(&hash[..CHECKSUM_LEN]);
    out.extend_from_slice(&typed);
    out
}

pub(super) fn write_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    write_len(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

pub(super) fn read_bytes<'a>(payload: &mut &'a [u8]) -> Result<&'a [u8], LinkedError> {
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

/// Signed LEB128, as Automerge writes a change's time.
pub(super) fn write_signed(out: &mut Vec<u8>, mut n: i64) {
    loop {
        let byte = (n & 0x7f) as u8;
        n >>= 7;
        let done = (n == 0 && byte & 0x40 == 0) || (n == -1 && byte & 0x40 != 0);
        if done {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

pub(super) fn read_signed(payload: &mut &[u8]) -> Result<i64, LinkedError> {
    let mut n: i64 = 0;
    for shift in (0..64).step_by(7) {
        let (&byte, rest) = payload.split_first().ok_or(LinkedError::Truncated)?;
        *payload = rest;
        n |= i64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            if shift + 7 < 64 && byte & 0x40 != 0 {
                n |= -1 << (shift + 7);
            }
            return Ok(n);
        }
    }
    Err(LinkedError::Truncated)
}

pub(super) fn read_len(payload: &mut &[u8]) -> Result<u64, LinkedError> {
    let (n, rest) = whole::leb128(payload).ok_or(LinkedError::Truncated)?;
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

    /// Positions count every change written, so a change listed twice (or sent verbatim)
    /// does not shift the references after it.
    #[test]
    fn a_change_listed_twice_comes_back_twice() {
        let changes = history(5);
        let listed = [&changes[..2], &changes[1..]].concat();
        let back = decode(&encode(&listed), usize::MAX).unwrap();
        assert_eq!(hashes(&back), hashes(&listed));
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
    fn times_that_go_back_and_actors_that_return_come_back_the_same() {
        let mut doc = Automerge::new();
        let times = [0, 1_764_000_000_000, -5, 1 << 50, -(1 << 50), 3, 3, 2];
        for (i, time) in times.into_iter().enumerate() {
            doc.set_actor(ActorId::from([i as u8 % 3; 16].as_slice()));
            let mut tx = doc.transaction();
            tx.put(ROOT, "k", i as i64).unwrap();
            tx.commit_with(automerge::transaction::CommitOptions::default().with_time(time));
        }
        let changes = doc.get_changes(&[]);
        let payload = encode(&changes);
        assert!(changes
            .iter()
            .all(|c| Fields::read(c.raw_bytes()).is_some()));
        let back = decode(&payload, usize::MAX).unwrap();
        assert_eq!(hashes(&back), hashes(&changes));
        let times_back: Vec<i64> = back.iter().map(Change::timestamp).collect();
        assert_eq!(times_back, times);
    }

    #[test]
    fn signed_numbers_round_trip() {
        for n in [
            0,
            1,
            -1,
            63,
            64,
            -64,
            -65,
            i64::MAX,
            i64::MIN,
            1 << 40,
            -(1 << 40),
        ] {
            let mut out = Vec::new();
            write_signed(&mut out, n);
            assert_eq!(read_signed(&mut out.as_slice()).unwrap(), n, "{n}");
        }
    }

    #[test]
    fn a_chunk_that_is_not_a_plain_change_travels_verbatim() {
        let change = history(1).remove(0);
        let mut payload = Vec::new();
        write_len(&mut payload, 0);
        write_bytes(&mut payload, change.raw_bytes());
        let back = decode(&payload, usize::MAX).unwrap();
        assert_eq!(back[0].hash(), change.hash());
        assert!(Fields::read(b"not a chunk").is_none());
    }

    #[test]
    fn a_reference_must_name_an_earlier_change() {
        let changes = history(3);
        let mut payload = encode(&changes[..1]);
        write_len(&mut payload, 2);
        write_len(&mut payload, 2); // two back from the second change: before the first
        write_bytes(&mut payload, &[]);
        assert_eq!(
            decode(&payload, usize::MAX).unwrap_err(),
            LinkedError::Reference(2)
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
