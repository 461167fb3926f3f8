//! When a link sends this node's own writes: the first write after a quiet spell at once, the
//! writes of a burst gathered into one push per `every`.
//!
//! Every push costs about 200 bytes on each link whatever it carries (the frame, the heads, a
//! signature, QUIC's packets and acknowledgements), and a change sent with the changes it
//! depends on costs a reference instead of a 32-byte hash (`sync::linked`). A burst of single
//! writes pushed one by one paid that for every write on every link. So a link holds the
//! writes that come within `every` of its last push and sends them together when that time
//! is up: a lone write goes out as fast as before, a burst as one push per `every`.
//!
//! Changes received from a peer are relayed at once, with any writes held here: a relay adds
//! no wait to a write crossing the mesh, and the writes of a burst reach the far side in the
//! pushes the writing node made. Pure: the caller passes the time in.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use automerge::ChangeHash;

use crate::model::DocId;

/// Fresh changes to push, per document, each hash once, in the order they came.
#[derive(Default)]
pub struct Pushes {
    pub docs: Vec<(DocId, Vec<ChangeHash>)>,
    seen: HashSet<ChangeHash>,
}

impl Pushes {
    pub fn add(&mut self, doc: DocId, fresh: Vec<ChangeHash>) {
        let fresh = fresh.into_iter().filter(|hash| self.seen.insert(*hash));
        match self.docs.iter_mut().find(|(known, _)| *known == doc) {
            Some((_, hashes)) => hashes.extend(fresh),
            None => {
                let fresh = fresh.collect();
                self.docs.push((doc, fresh));
            }
        }
    }

    fn extend(&mut self, other: Pushes) {
        for (doc, fresh) in other.docs {
            self.add(doc, fresh);
        }
    }

    /// How many hashes are queued.
    pub fn len(&self) -> usize {
        self.seen.len()
    }

    pub fn is_empty(&self) -> bool {
        self.docs.is_empty()
    }
}

/// The writes a link holds back, and when it last pushed.
pub struct PushPace {
    every: Duration,
    last_push: Option<Instant>,
    held: Pushes,
}

impl PushPace {
    pub fn new(every: Duration) -> PushPace {
        PushPace {
            every,
            last_push: None,
            held: Pushes::default(),
        }
    }

    /// Takes `pushes`, of which `relayed` came from a peer: what to push now (`None`: they
    /// are held until `due`).
    pub fn offer(&mut self, pushes: Pushes, relayed: bool, now: Instant) -> Option<Pushes> {
        self.held.extend(pushes);
        let quiet = self
            .last_push
            .is_none_or(|last| now.saturating_duration_since(last) >= self.every);
        (relayed || quiet).then(|| self.release(now))
    }

    /// When the held writes must go, if any are held.
    pub fn due(&self) -> Option<Instant> {
        let last = self.last_push?;
        (!self.held.is_empty()).then(|| last + self.every)
    }

    /// The held writes, to push now.
    pub fn release(&mut self, now: Instant) -> Pushes {
        self.last_push = Some(now);
        std::mem::take(&mut self.held)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Scope;

    const EVERY: Duration = Duration::from_millis(100);

    fn write(n: u8) -> Pushes {
        let mut pushes = Pushes::default();
        pushes.add(DocId::Memory(Scope::Mesh), vec![ChangeHash([n; 32])]);
        pushes
    }

    fn hashes(pushes: &Pushes) -> usize {
        pushes.docs.iter().map(|(_, h)| h.len()).sum()
    }

    #[test]
    fn a_lone_write_goes_at_once_and_a_burst_goes_once_per_interval() {
        let start = Instant::now();
        let mut pace = PushPace::new(EVERY);
        assert_eq!(hashes(&pace.offer(write(1), false, start).unwrap()), 1);
        assert_eq!(pace.due(), None);
        for (i, n) in (2..=5).enumerate() {
            let at = start + Duration::from_millis(10 * (i as u64 + 1));
            assert!(pace.offer(write(n), false, at).is_none(), "write {n} held");
        }
        assert_eq!(pace.due(), Some(start + EVERY));
        let gathered = pace.release(start + EVERY);
        assert_eq!(hashes(&gathered), 4);
        assert_eq!(pace.due(), None);
        // Quiet for an interval: the next write goes at once again.
        let later = start + EVERY * 2;
        assert_eq!(hashes(&pace.offer(write(6), false, later).unwrap()), 1);
    }

    #[test]
    fn relayed_changes_go_at_once_and_take_the_held_writes_with_them() {
        let start = Instant::now();
        let mut pace = PushPace::new(EVERY);
        pace.offer(write(1), false, start);
        assert!(pace.offer(write(2), false, start).is_none());
        let now = start + Duration::from_millis(1);
        let sent = pace.offer(write(3), true, now).unwrap();
        assert_eq!(hashes(&sent), 2);
        assert_eq!(pace.due(), None);
        assert!(
            pace.offer(write(4), false, now).is_none(),
            "the interval restarts"
        );
    }

    #[test]
    fn no_interval_sends_everything_at_once() {
        let start = Instant::now();
        let mut pace = PushPace::new(Duration::ZERO);
        for n in 1..=3 {
            assert!(pace.offer(write(n), false, start).is_some());
        }
    }

    #[test]
    fn a_hash_offered_twice_is_pushed_once() {
        let mut pushes = write(1);
        pushes.extend(write(1));
        assert_eq!(pushes.len(), 1);
    }
}
