//! Two sessions on one connection over an in-memory wire, for tests and benchmarks: every
//! frame is encoded and decoded, as over QUIC, and counted.
//!
//! A [`Link`] holds the two sessions (side 0 and side 1) and the [`Wire`] between them. The
//! stores stay with the caller and are passed into each call, as in the daemon; any
//! [`SyncStore`] will do, but both sides' stores are of one type. A round from side 0:
//!
//! ```no_run
//! use meshd::sync::harness::{Link, Traffic};
//! use meshd::sync::{Access, Config, Session, SyncStore};
//!
//! fn round<S: SyncStore>(a: &mut S, b: &mut S) -> Traffic {
//!     // Side 0 runs on `a`, whose peer is node "b"; side 1 runs on `b`.
//!     let mut link = Link::reliable([
//!         Session::new("b", Access::full(), Config::default()),
//!         Session::new("a", Access::full(), Config::default()),
//!     ]);
//!     link.round([a, b]).expect("the sessions agree and fall silent");
//!     assert!(link.round_done(0) && link.round_done(1));
//!     link.traffic().clone()
//! }
//! ```
//!
//! Long-lived connections (the convergence proptest keeps one `Link` per pair of nodes)
//! drive a link a frame at a time with [`Link::receive`] and [`Link::handle`], and a network
//! that loses, copies or reorders frames is a [`Wire`] of its own.

use std::collections::VecDeque;

use automerge::ChangeHash;

use super::{Applied, DecodeError, Message, Outcome, Session, SyncError, SyncStore};
use crate::model::DocId;

/// Deliveries one [`Link::settle`] makes before it gives up on sessions that never stop.
pub const DEFAULT_LIMIT: usize = 10_000;

/// How frames travel between the two sides. `to` is the side a frame is for: 0 or 1.
pub trait Wire {
    /// Takes a frame sent toward side `to`. A lossy wire may drop or copy it.
    fn send(&mut self, to: usize, frame: Vec<u8>);
    /// The next frame to arrive, with the side it arrives at; `None` when nothing is in
    /// flight.
    fn next(&mut self) -> Option<(usize, Vec<u8>)>;
}

/// A wire that loses nothing: frames arrive in the order they were sent, or, read per side
/// with [`Link::deliver_to`], as two in-order streams (one each way, like QUIC's).
#[derive(Debug, Default)]
pub struct Reliable {
    in_flight: VecDeque<(usize, Vec<u8>)>,
}

impl Reliable {
    /// The oldest frame in flight toward side `to`.
    pub fn next_to(&mut self, to: usize) -> Option<Vec<u8>> {
        let at = self.in_flight.iter().position(|(side, _)| *side == to)?;
        self.in_flight.remove(at).map(|(_, frame)| frame)
    }

    /// How many frames are in flight toward side `to`.
    pub fn in_flight(&self, to: usize) -> usize {
        self.in_flight
            .iter()
            .filter(|(side, _)| *side == to)
            .count()
    }
}

impl Wire for Reliable {
    fn send(&mut self, to: usize, frame: Vec<u8>) {
        self.in_flight.push_back((to, frame));
    }

    fn next(&mut self) -> Option<(usize, Vec<u8>)> {
        self.in_flight.pop_front()
    }
}

/// What crossed the wire: counted as frames arrive.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Traffic {
    /// Frames delivered.
    pub messages: usize,
    /// Their size, headers included.
    pub bytes: usize,
    /// Some message reconciled ranges.
    pub ranges: bool,
    /// Some message was a `Refused`.
    pub refused: bool,
}

impl Traffic {
    fn count(&mut self, frame: &[u8], message: &Message) {
        self.messages += 1;
        self.bytes += frame.len();
        if let Message::Sync(sync) = message {
            self.ranges |= sync.docs.iter().any(|part| !part.ranges.is_empty());
        }
        self.refused |= matches!(message, Message::Refused { .. });
    }
}

/// Why a link stopped.
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    /// A frame on the wire does not decode.
    #[error("a frame does not decode: {0}")]
    Decode(#[from] DecodeError),
    /// A session call failed.
    #[error("side {side}: {source}")]
    Session {
        /// The side whose session failed.
        side: usize,
        /// Its error.
        #[source]
        source: SyncError,
    },
    /// The sessions were still talking after the limit of deliveries.
    #[error("the sessions do not stop talking: {0} frames delivered")]
    Endless(usize),
}

/// Two sessions on one connection: `sessions[i]` runs on the store passed for side `i`.
pub struct Link<W = Reliable> {
    sessions: [Session; 2],
    wire: W,
    traffic: Traffic,
    applied: [Vec<Applied>; 2],
    round_done: [bool; 2],
    limit: usize,
}

impl Link<Reliable> {
    /// A link over a wire that loses nothing.
    pub fn reliable(sessions: [Session; 2]) -> Link<Reliable> {
        Link::new(sessions, Reliable::default())
    }

    /// The next frame in flight toward side `to` arrives and is handled there; `None` when
    /// nothing is in flight toward it.
    pub fn deliver_to<S: SyncStore>(
        &mut self,
        to: usize,
        store: &mut S,
    ) -> Result<Option<Outcome>, HarnessError> {
        let Some(frame) = self.wire.next_to(to) else {
            return Ok(None);
        };
        let message = self.arrive(&frame)?;
        self.handle(to, store, message).map(Some)
    }

    /// Side `to` reads everything in flight toward it, and what it answers goes out. Returns
    /// how many frames it read.
    pub fn read_all<S: SyncStore>(
        &mut self,
        to: usize,
        store: &mut S,
    ) -> Result<usize, HarnessError> {
        let mut read = 0;
        while self.deliver_to(to, store)?.is_some() {
            read += 1;
        }
        Ok(read)
    }

    /// How many frames are in flight toward side `to`.
    pub fn in_flight(&self, to: usize) -> usize {
        self.wire.in_flight(to)
    }
}

impl<W: Wire> Link<W> {
    /// A link over `wire`.
    pub fn new(sessions: [Session; 2], wire: W) -> Link<W> {
        Link {
            sessions,
            wire,
            traffic: Traffic::default(),
            applied: [Vec::new(), Vec::new()],
            round_done: [false; 2],
            limit: DEFAULT_LIMIT,
        }
    }

    /// Sets how many deliveries one [`settle`](Link::settle) makes before it fails with
    /// [`HarnessError::Endless`].
    pub fn with_limit(mut self, limit: usize) -> Link<W> {
        self.limit = limit;
        self
    }

    /// Side `side` opens a round; its `Hello` goes on the wire.
    pub fn start<S: SyncStore>(
        &mut self,
        side: usize,
        store: &mut S,
    ) -> Result<Outcome, HarnessError> {
        let outcome = self.sessions[side].start(store);
        self.take(side, outcome)
    }

    /// Side `side` pushes `fresh` changes of `doc`; the push goes on the wire.
    pub fn push<S: SyncStore>(
        &mut self,
        side: usize,
        store: &mut S,
        doc: &DocId,
        fresh: &[ChangeHash],
    ) -> Result<Outcome, HarnessError> {
        let outcome = self.sessions[side].push(store, doc, fresh);
        self.take(side, outcome)
    }

    /// The next frame in flight arrives: it is counted and decoded. Returns the side it is
    /// for and the message, for [`handle`](Link::handle); `None` when nothing is in flight.
    pub fn receive(&mut self) -> Result<Option<(usize, Message)>, HarnessError> {
        let Some((to, frame)) = self.wire.next() else {
            return Ok(None);
        };
        Ok(Some((to, self.arrive(&frame)?)))
    }

    /// Side `side` handles `message`; its answers go on the wire.
    pub fn handle<S: SyncStore>(
        &mut self,
        side: usize,
        store: &mut S,
        message: Message,
    ) -> Result<Outcome, HarnessError> {
        let outcome = self.sessions[side].handle(store, message);
        self.take(side, outcome)
    }

    /// A round from side 0: it opens, then [`settle`](Link::settle).
    pub fn round<S: SyncStore>(&mut self, stores: [&mut S; 2]) -> Result<(), HarnessError> {
        let _hello_is_sent = self.start(0, &mut *stores[0])?;
        self.settle(stores)
    }

    /// Delivers frames until nothing is in flight: each side handles what arrives for it, and
    /// its answers go out.
    pub fn settle<S: SyncStore>(&mut self, stores: [&mut S; 2]) -> Result<(), HarnessError> {
        self.settle_with(stores, |_, _, _| {})
    }

    /// [`settle`](Link::settle), calling `after(side, store, outcome)` after each frame is
    /// handled: for gossip to other links, say.
    pub fn settle_with<S: SyncStore>(
        &mut self,
        stores: [&mut S; 2],
        mut after: impl FnMut(usize, &mut S, &Outcome),
    ) -> Result<(), HarnessError> {
        let mut delivered = 0;
        while let Some((to, message)) = self.receive()? {
            delivered += 1;
            if delivered > self.limit {
                return Err(HarnessError::Endless(delivered));
            }
            let outcome = self.handle(to, &mut *stores[to], message)?;
            after(to, &mut *stores[to], &outcome);
        }
        Ok(())
    }

    /// What crossed the wire so far.
    pub fn traffic(&self) -> &Traffic {
        &self.traffic
    }

    /// What side `side` applied since the last call.
    pub fn take_applied(&mut self, side: usize) -> Vec<Applied> {
        std::mem::take(&mut self.applied[side])
    }

    /// Whether side `side`'s latest outcome said its round is complete.
    pub fn round_done(&self, side: usize) -> bool {
        self.round_done[side]
    }

    fn arrive(&mut self, frame: &[u8]) -> Result<Message, HarnessError> {
        let message = Message::decode(frame)?;
        self.traffic.count(frame, &message);
        Ok(message)
    }

    /// Sends an outcome's messages from `side` and notes what it applied and whether its
    /// round is done; the outcome goes back to the caller whole.
    fn take(
        &mut self,
        side: usize,
        outcome: Result<Outcome, SyncError>,
    ) -> Result<Outcome, HarnessError> {
        let outcome = outcome.map_err(|source| HarnessError::Session { side, source })?;
        for message in &outcome.messages {
            self.wire.send(1 - side, message.encode());
        }
        self.applied[side].extend(outcome.applied.iter().cloned());
        self.round_done[side] = outcome.round_done;
        Ok(outcome)
    }
}
