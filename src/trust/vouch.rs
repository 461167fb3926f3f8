//! Changes from a peer wait here until their authors are known to have signed them.
//!
//! A signature by node N over change h vouches, for N, for h and every change h depends on.
//! So a sender attaches only the signatures it keeps (each signer's newest per document), and
//! the receiver walks each signed change's dependencies among the changes waiting here,
//! marking them as vouched for by the signer. A dependency not here yet is remembered as
//! vouched for, so that a change sent later on its own (asked for by hash) is recognised.
//! Changes whose author vouched for them (`trust::accepts`) are taken out to be applied, with
//! the signatures that cover them, which the store keeps to send on.

use std::collections::{HashMap, HashSet};

use automerge::{Change, ChangeHash};

use super::signature::{ChangeSignature, SignatureError};
use super::{accepts, author_of};
use crate::model::{DocId, NodeId};

/// At most this many bytes of changes wait for signatures (what a receiver also agrees to hold
/// for one transfer).
const MAX_WAITING_BYTES: usize = 256 << 20;
/// At most this many hashes are remembered as vouched for before they arrive.
const MAX_EXPECTED: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum VouchingError {
    #[error(transparent)]
    Signature(#[from] SignatureError),
    #[error("more than {} MiB of changes wait for the signatures that vouch for them", MAX_WAITING_BYTES >> 20)]
    TooMuch,
}

/// A change that was refused: its hash and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unvouched {
    pub hash: ChangeHash,
    pub reason: String,
}

/// What may be applied now: the changes and the signatures to store with them.
#[derive(Debug, Default)]
pub struct Accepted {
    pub changes: Vec<Change>,
    pub signatures: Vec<ChangeSignature>,
}

#[derive(Debug, Default)]
pub struct Vouching {
    waiting: HashMap<ChangeHash, Change>,
    /// Who vouches for each waiting change, and for dependencies not here yet.
    vouchers: HashMap<ChangeHash, Vec<NodeId>>,
    /// Verified signatures, until their change is taken out.
    signatures: Vec<ChangeSignature>,
    bytes: usize,
    /// Missing dependencies of changes that are here, vouched for: on their way, asked for by
    /// hash; while one is missing, refusals wait (it may vouch for what waits).
    awaited: HashSet<ChangeHash>,
}

impl Vouching {
    /// Adds changes a peer sent; `stored` tells those already held (which need no vouching).
    pub fn add_changes(
        &mut self,
        changes: Vec<Change>,
        mut stored: impl FnMut(&ChangeHash) -> bool,
    ) -> Result<(), VouchingError> {
        for change in changes {
            let hash = change.hash();
            if self.waiting.contains_key(&hash) || stored(&hash) {
                continue;
            }
            self.bytes += change.raw_bytes().len();
            if self.bytes > MAX_WAITING_BYTES {
                return Err(VouchingError::TooMuch);
            }
            self.waiting.insert(hash, change);
            let known = self.vouchers.get(&hash).cloned().unwrap_or_default();
            for signer in known {
                self.spread(signer, hash, true, &mut stored);
            }
        }
        Ok(())
    }

    /// Whether `hash` waits here.
    pub fn holds(&self, hash: &ChangeHash) -> bool {
        self.waiting.contains_key(hash)
    }

    /// The waiting changes whose hash starts with `prefix`.
    pub fn waiting_with_prefix(&self, prefix: &[u8]) -> Vec<ChangeHash> {
        self.waiting
            .keys()
            .filter(|hash| hash.0.starts_with(prefix))
            .copied()
            .collect()
    }

    /// Dependencies of waiting changes that are neither here nor `stored`: to ask the peer
    /// for.
    pub fn missing(&self, mut stored: impl FnMut(&ChangeHash) -> bool) -> Vec<ChangeHash> {
        let mut missing: Vec<ChangeHash> = self
            .waiting
            .values()
            .flat_map(|change| change.deps().iter().copied())
            .filter(|dep| !self.waiting.contains_key(dep))
            .collect();
        missing.sort_unstable();
        missing.dedup();
        missing.retain(|dep| !stored(dep));
        missing
    }

    /// Adds signatures a peer sent; one that does not verify is an error (the peer relayed
    /// something altered).
    pub fn add_signatures(
        &mut self,
        signatures: Vec<ChangeSignature>,
        mut stored: impl FnMut(&ChangeHash) -> bool,
    ) -> Result<(), VouchingError> {
        // A set, not a scan of the list: a message may carry tens of thousands of signatures.
        let mut known: HashSet<ChangeSignature> = self.signatures.iter().cloned().collect();
        for signature in signatures {
            let signer = signature.verify()?;
            let hash = signature.change();
            if known.insert(signature.clone()) {
                self.signatures.push(signature);
            }
            self.spread(signer, hash, false, &mut stored);
        }
        Ok(())
    }

    /// Marks `from` and what it depends on as vouched for by `signer`. `again` walks on from
    /// a change already marked (it just arrived, and its dependencies were not walked).
    fn spread(
        &mut self,
        signer: NodeId,
        from: ChangeHash,
        again: bool,
        stored: &mut impl FnMut(&ChangeHash) -> bool,
    ) {
        let mut stack = vec![(from, again, false)];
        while let Some((hash, again, dependency)) = stack.pop() {
            let waiting = self.waiting.get(&hash);
            if waiting.is_none() && stored(&hash) {
                continue;
            }
            if waiting.is_none() && dependency {
                self.awaited.insert(hash);
            }
            let vouchers = self.vouchers.entry(hash).or_default();
            let new = !vouchers.contains(&signer);
            if new {
                vouchers.push(signer);
            }
            if new || again {
                if let Some(change) = waiting {
                    stack.extend(change.deps().iter().map(|dep| (*dep, false, true)));
                }
            }
        }
        if self.vouchers.len() > MAX_EXPECTED {
            // Hashes vouched for that never came: forget them rather than grow. A change that
            // then arrives alone is refused this round and sent again, with its signature.
            let waiting = &self.waiting;
            self.vouchers.retain(|hash, _| waiting.contains_key(hash));
            self.awaited.clear();
        }
    }

    /// Takes out the changes `doc` accepts now, with the signatures that cover them: those
    /// vouched for whose dependencies are all `stored` or taken out with them, in an order
    /// that applies (dependencies first). A change is never applied before the one whose
    /// signature vouches for it is stored with it, so the store can always vouch for what
    /// it holds.
    pub fn take_accepted(
        &mut self,
        doc: &DocId,
        mut stored: impl FnMut(&ChangeHash) -> bool,
    ) -> Accepted {
        let mut candidates: Vec<&Change> = self
            .waiting
            .iter()
            .filter(|(hash, change)| {
                accepts(doc, author_of(change.actor_id()), self.voucher_list(hash)).is_ok()
            })
            .map(|(_, change)| change)
            .collect();
        // A change's ops start after every op of its dependencies: this order is causal.
        candidates.sort_by_key(|change| change.start_op());
        let mut ready = dependencies_met(&candidates, &mut stored);
        // A change goes in only with the signed change that vouches for it: otherwise a
        // connection lost before that one came would leave it stored and uncovered.
        loop {
            let within = self.vouchers_within(&ready);
            let covered: Vec<&Change> = candidates
                .iter()
                .copied()
                .filter(|change| ready.contains(&change.hash()))
                .filter(|change| {
                    let vouchers = within.get(&change.hash()).map_or(&[][..], Vec::as_slice);
                    accepts(doc, author_of(change.actor_id()), vouchers).is_ok()
                })
                .collect();
            let kept = dependencies_met(&covered, &mut stored);
            if kept.len() == ready.len() {
                break;
            }
            ready = kept;
        }
        self.take(ready)
    }

    /// Who vouches for each change of `set` through signed changes in `set` alone.
    fn vouchers_within(&self, set: &HashSet<ChangeHash>) -> HashMap<ChangeHash, Vec<NodeId>> {
        let mut vouchers: HashMap<ChangeHash, Vec<NodeId>> = HashMap::new();
        for signature in self.signatures.iter().filter(|s| set.contains(&s.change())) {
            let signer = signature.signer();
            let mut stack = vec![signature.change()];
            while let Some(at) = stack.pop() {
                let marked = vouchers.entry(at).or_default();
                if marked.contains(&signer) {
                    continue;
                }
                marked.push(signer);
                if let Some(change) = self.waiting.get(&at) {
                    stack.extend(change.deps().iter().filter(|d| set.contains(d)));
                }
            }
        }
        vouchers
    }

    fn take(&mut self, ready: HashSet<ChangeHash>) -> Accepted {
        let mut changes: Vec<Change> = ready
            .iter()
            .filter_map(|hash| {
                self.vouchers.remove(hash);
                self.waiting.remove(hash)
            })
            .collect();
        changes.sort_by_key(|change| change.start_op());
        self.bytes -= changes.iter().map(|c| c.raw_bytes().len()).sum::<usize>();
        let (signatures, rest) = std::mem::take(&mut self.signatures)
            .into_iter()
            .partition(|s| ready.contains(&s.change()));
        self.signatures = rest;
        Accepted {
            changes,
            signatures,
        }
    }

    fn voucher_list(&self, hash: &ChangeHash) -> &[NodeId] {
        self.vouchers.get(hash).map_or(&[], Vec::as_slice)
    }

    /// Refuses every change still waiting (the peer said it sent everything for now), with
    /// the reason for each. What was vouched for ahead of its arrival is kept. The refusal is
    /// put off while a dependency of a vouched-for change is missing: a change a filter's
    /// false positive hid comes next, asked for by hash, and may vouch for the ones before it.
    pub fn refuse_waiting(
        &mut self,
        doc: &DocId,
        mut stored: impl FnMut(&ChangeHash) -> bool,
    ) -> Vec<Unvouched> {
        let waiting = &self.waiting;
        self.awaited
            .retain(|hash| !waiting.contains_key(hash) && !stored(hash));
        if self.waiting.is_empty() || !self.awaited.is_empty() {
            return Vec::new();
        }
        let mut refused: Vec<Unvouched> = self
            .waiting
            .iter()
            .filter_map(|(hash, change)| {
                let reason =
                    accepts(doc, author_of(change.actor_id()), self.voucher_list(hash)).err()?;
                Some(Unvouched {
                    hash: *hash,
                    reason,
                })
            })
            .collect();
        refused.sort_by_key(|u| u.hash);
        for unvouched in &refused {
            self.vouchers.remove(&unvouched.hash);
            if let Some(change) = self.waiting.remove(&unvouched.hash) {
                self.bytes -= change.raw_bytes().len();
            }
        }
        let vouchers = &self.vouchers;
        self.signatures
            .retain(|s| vouchers.contains_key(&s.change()));
        refused
    }

    /// Drops everything waiting (after a peer sent something that does not verify).
    pub fn clear(&mut self) {
        *self = Vouching::default();
    }

    /// Whether nothing waits.
    pub fn is_idle(&self) -> bool {
        self.waiting.is_empty()
    }
}

/// Of `changes` (in causal order), those whose every dependency is `stored` or among them.
fn dependencies_met(
    changes: &[&Change],
    stored: &mut impl FnMut(&ChangeHash) -> bool,
) -> HashSet<ChangeHash> {
    let mut met: HashSet<ChangeHash> = HashSet::new();
    for change in changes {
        if change
            .deps()
            .iter()
            .all(|dep| met.contains(dep) || stored(dep))
        {
            met.insert(change.hash());
        }
    }
    met
}

/// A refusal in words.
pub fn describe(refused: &Unvouched) -> String {
    format!("change {} refused: {}", refused.hash, refused.reason)
}
