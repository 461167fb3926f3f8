//! Range-based set reconciliation over a document's change hashes (the idea of Negentropy
//! and iroh-docs), for a peer with no stored shared heads.
//!
//! Change hashes are uniform, so the first eight bytes of a hash, read as a `u64`, spread the
//! set evenly over `[0, u64::MAX]`. One side cuts a range into parts and sends a short
//! fingerprint of each; the other compares with its own and, for each part that differs,
//! either lists its hashes there (when few) or cuts it again. A list ends the descent: its
//! receiver knows exactly what the lister lacks and what it lacks itself. One missing change
//! among `n` costs about `log(n)` small messages instead of a filter of all `n`.

use automerge::ChangeHash;

use super::message::{Fingerprint, Hash, Range};

/// A range holding at most this many hashes on the answering side is listed, not cut.
const LEAF: usize = 32;
/// A range is cut into at most this many parts.
const MAX_PARTS: usize = 128;

/// A document's change hashes, sorted.
pub struct HashSet(Vec<ChangeHash>);

/// What answering a peer's ranges produced.
#[derive(Default, Debug)]
pub struct Answer {
    /// Ranges to send back (cuts and lists).
    pub ranges: Vec<Range>,
    /// Changes the peer lacks.
    pub send: Vec<ChangeHash>,
    /// Changes the peer has and this side lacks.
    pub need: Vec<ChangeHash>,
}

fn key(hash: &ChangeHash) -> u64 {
    let mut prefix = [0u8; 8];
    prefix.copy_from_slice(&hash.0[..8]);
    u64::from_be_bytes(prefix)
}

/// The bounds of `parts` equal cuts of `[lo, hi]`; the caller ensures `parts <= width`.
fn cuts(lo: u64, hi: u64, parts: usize) -> impl Iterator<Item = (u64, u64)> {
    let width = u128::from(hi - lo) + 1;
    let start = move |i: usize| lo as u128 + width * i as u128 / parts as u128;
    (0..parts).map(move |i| (start(i) as u64, (start(i + 1) - 1) as u64))
}

impl HashSet {
    pub fn new(mut hashes: Vec<ChangeHash>) -> HashSet {
        hashes.sort_unstable();
        hashes.dedup();
        HashSet(hashes)
    }

    fn within(&self, lo: u64, hi: u64) -> &[ChangeHash] {
        let start = self.0.partition_point(|h| key(h) < lo);
        let end = self.0.partition_point(|h| key(h) <= hi);
        &self.0[start..end]
    }

    fn fingerprint(hashes: &[ChangeHash]) -> Fingerprint {
        let mut hasher = blake3::Hasher::new();
        hasher.update(&(hashes.len() as u64).to_le_bytes());
        for hash in hashes {
            hasher.update(&hash.0);
        }
        let mut fingerprint = [0u8; 8];
        fingerprint.copy_from_slice(&hasher.finalize().as_bytes()[..8]);
        fingerprint
    }

    /// The first step: the whole hash space, cut or listed.
    pub fn open(&self) -> Range {
        self.describe(0, u64::MAX)
    }

    /// `[lo, hi]` as this side sees it: its hashes if few, else a cut sized so each part
    /// holds about `LEAF` of them.
    fn describe(&self, lo: u64, hi: u64) -> Range {
        let mine = self.within(lo, hi);
        let width = u128::from(hi - lo) + 1;
        if mine.len() <= LEAF || width < 2 {
            return Range::Ids {
                lo,
                hi,
                ids: mine.iter().map(|h| h.0).collect(),
            };
        }
        let parts = mine.len().div_ceil(LEAF).clamp(2, MAX_PARTS);
        let parts = parts.min(width.min(MAX_PARTS as u128) as usize);
        let fingerprints = cuts(lo, hi, parts)
            .map(|(a, b)| Self::fingerprint(self.within(a, b)))
            .collect();
        Range::Split {
            lo,
            hi,
            fingerprints,
        }
    }

    /// Answers the peer's ranges.
    pub fn answer(&self, ranges: &[Range]) -> Answer {
        let mut answer = Answer::default();
        for range in ranges {
            match range {
                Range::Split {
                    lo,
                    hi,
                    fingerprints,
                } => {
                    for ((a, b), theirs) in cuts(*lo, *hi, fingerprints.len()).zip(fingerprints) {
                        if Self::fingerprint(self.within(a, b)) != *theirs {
                            answer.ranges.push(self.describe(a, b));
                        }
                    }
                }
                Range::Ids { lo, hi, ids } => self.compare(*lo, *hi, ids, &mut answer),
            }
        }
        answer
    }

    /// The peer listed its hashes in `[lo, hi]`: the difference is now known both ways.
    fn compare(&self, lo: u64, hi: u64, theirs: &[Hash], answer: &mut Answer) {
        let mine = self.within(lo, hi);
        let mut theirs: Vec<ChangeHash> = theirs.iter().map(|h| ChangeHash(*h)).collect();
        theirs.sort_unstable();
        answer.send.extend(
            mine.iter()
                .filter(|h| theirs.binary_search(h).is_err())
                .copied(),
        );
        answer.need.extend(
            theirs
                .iter()
                .filter(|h| (lo..=hi).contains(&key(h)) && mine.binary_search(h).is_err())
                .copied(),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn random_hashes(n: usize, seed: u64) -> Vec<ChangeHash> {
        (0..n as u64)
            .map(|i| {
                ChangeHash(
                    *blake3::hash(&[seed.to_le_bytes(), i.to_le_bytes()].concat()).as_bytes(),
                )
            })
            .collect()
    }

    /// Runs the exchange to the end; returns what each side learned and the bytes spent.
    fn reconcile(a: &HashSet, b: &HashSet) -> (Vec<ChangeHash>, Vec<ChangeHash>, usize, usize) {
        let (mut a_to_b, mut b_to_a) = (Vec::new(), Vec::new());
        let mut pending = vec![a.open()];
        let (mut bytes, mut rounds) = (0, 0);
        let mut sides = [a, b];
        while !pending.is_empty() {
            bytes += postcard::to_allocvec(&pending).unwrap().len();
            rounds += 1;
            let answer = sides[1].answer(&pending);
            // Side 1 sends its extras to side 0, and asks side 0 for what it lacks.
            let (to_zero, to_one) = if rounds % 2 == 1 {
                (&mut b_to_a, &mut a_to_b)
            } else {
                (&mut a_to_b, &mut b_to_a)
            };
            to_zero.extend(answer.send);
            to_one.extend(answer.need);
            pending = answer.ranges;
            sides.swap(0, 1);
        }
        (a_to_b, b_to_a, bytes, rounds)
    }

    #[test]
    fn finds_one_difference_among_many_cheaply() {
        let all = random_hashes(100_000, 1);
        let a = HashSet::new(all.clone());
        let b = HashSet::new(all[1..].to_vec());
        let (a_to_b, b_to_a, bytes, rounds) = reconcile(&a, &b);
        assert_eq!(a_to_b, vec![all[0]]);
        assert!(b_to_a.is_empty());
        assert!(bytes < 4096, "{bytes} bytes");
        assert!(rounds <= 4, "{rounds} rounds");
    }

    #[test]
    fn finds_differences_both_ways() {
        let all = random_hashes(5000, 2);
        let a = HashSet::new(all[..4000].to_vec());
        let b = HashSet::new(all[1000..].to_vec());
        let (mut a_to_b, mut b_to_a, _, _) = reconcile(&a, &b);
        a_to_b.sort();
        b_to_a.sort();
        let mut expect_ab = all[..1000].to_vec();
        let mut expect_ba = all[4000..].to_vec();
        expect_ab.sort();
        expect_ba.sort();
        assert_eq!(a_to_b, expect_ab);
        assert_eq!(b_to_a, expect_ba);
    }

    #[test]
    fn equal_sets_end_at_once() {
        let all = random_hashes(1000, 3);
        let a = HashSet::new(all.clone());
        let answer = HashSet::new(all).answer(&[a.open()]);
        assert!(answer.ranges.is_empty() && answer.send.is_empty() && answer.need.is_empty());
    }

    #[test]
    fn cuts_cover_the_range_exactly() {
        for (lo, hi, parts) in [(0, u64::MAX, 128), (5, 6, 2), (10, 1000, 7)] {
            let cuts: Vec<_> = cuts(lo, hi, parts).collect();
            assert_eq!(cuts.len(), parts);
            assert_eq!(cuts[0].0, lo);
            assert_eq!(cuts[parts - 1].1, hi);
            for pair in cuts.windows(2) {
                assert_eq!(pair[0].1 + 1, pair[1].0);
            }
        }
    }
}
