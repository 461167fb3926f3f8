//! One peer connection: a sync `Session` driven over one QUIC bidirectional stream.
//!
//! The dialer opens the stream and both sides open an anti-entropy round at once (the sync
//! protocol resolves who leads). After that, the link runs a round on a timer and on request,
//! pushes local changes as they happen, and hands what it applied to the mesh for gossip.
//! A malformed frame closes the link with a logged reason; it never takes the daemon down.
//!
//! The session keeps no clock, so the link stamps each `Hello` it sends with this node's wall
//! clock, and estimates the peer's clock offset from the stamp on each `Hello` it receives.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use automerge::ChangeHash;
use quinn::{Connection, RecvStream, SendStream};
use tokio::sync::{mpsc, oneshot};

use super::close::CloseCode;
use super::push_pace::{PushPace, Pushes};
use crate::model::{DocId, NodeId};
use crate::replica::Replica;
use crate::sync::{self, Applied, Message, Outcome, Refusal, Session, StoreError, SyncError};

/// Messages already waiting that are handled with the one that arrived, their changes made
/// durable by one commit: bounds how long the replica is held at once.
const MAX_GATHERED: usize = 64;
/// Queued commands taken at once (pushed hashes and sync requests): bounds one pass.
const MAX_MERGED_COMMANDS: usize = 4096;

/// What a peer said of itself when it opened a round: `meshd status` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerOpening {
    /// Changes the peer holds for this node that this node has not confirmed.
    pub waiting: u64,
    /// How far the peer's clock is ahead of this node's (negative: behind), in milliseconds;
    /// `None` when the peer sent no clock.
    pub clock_offset_ms: Option<i64>,
}

/// What the rest of the daemon asks of a link.
pub enum LinkCommand {
    /// Send these fresh changes of `doc`: at once when `relayed` (they came from a peer),
    /// else paced (`push_pace`).
    Push {
        doc: DocId,
        fresh: Vec<ChangeHash>,
        relayed: bool,
    },
    /// Run a round and answer when it completes.
    SyncNow(oneshot::Sender<()>),
    /// The node is stopping: push what the pace holds back, end the stream, and answer once
    /// the peer has received all of it; the link then ends.
    Goodbye(oneshot::Sender<()>),
}

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("connection lost: {0}")]
    Connection(#[from] quinn::ConnectionError),
    #[error("stream closed: {}", write_failure(.0))]
    Write(#[from] quinn::WriteError),
    #[error("peer sent a malformed frame: {0}")]
    Frame(#[from] sync::DecodeError),
    #[error("cannot read from the peer: {}", read_failure(.0))]
    Read(#[from] quinn::ReadExactError),
    #[error(transparent)]
    Sync(#[from] SyncError),
}

/// Why a read failed. quinn's message for a lost connection says only "connection lost";
/// the reason the peer gave when it closed is in the connection error.
fn read_failure(error: &quinn::ReadExactError) -> String {
    use quinn::{ReadError, ReadExactError};
    match error {
        ReadExactError::ReadError(ReadError::ConnectionLost(e)) => e.to_string(),
        other => other.to_string(),
    }
}

/// Why a write failed; see `read_failure`.
fn write_failure(error: &quinn::WriteError) -> String {
    match error {
        quinn::WriteError::ConnectionLost(e) => e.to_string(),
        other => other.to_string(),
    }
}

impl LinkError {
    /// Whether the connection ended as connections end on a healthy mesh: the peer stopped
    /// (`CloseCode::Shutdown`), one of two connections gave way to the other, or this node
    /// closed it. Anything else (a timeout, a reset, a malformed frame) is worth a warning.
    pub fn is_orderly_close(&self) -> bool {
        use quinn::{ConnectionError, ReadError, ReadExactError, WriteError};
        let connection = match self {
            LinkError::Connection(e)
            | LinkError::Read(ReadExactError::ReadError(ReadError::ConnectionLost(e)))
            | LinkError::Write(WriteError::ConnectionLost(e)) => e,
            _ => return false,
        };
        match connection {
            ConnectionError::LocallyClosed => true,
            ConnectionError::ApplicationClosed(close) => [
                CloseCode::Shutdown,
                CloseCode::Duplicate,
                CloseCode::Replaced,
            ]
            .iter()
            .any(|code| close.error_code == quinn::VarInt::from(*code as u32)),
            _ => false,
        }
    }
}

/// What a link needs from the node around it; the mesh implements it.
pub trait LinkHost: Send + Sync + 'static {
    /// Runs `f` on the replica, as the sync store.
    fn with_store<T>(&self, f: impl FnOnce(&mut crate::replica::Replica) -> T) -> T;
    /// Changes this link applied, to forward to the other peers and to the views.
    fn applied(&self, from: NodeId, applied: Vec<Applied>);
    /// A round with `peer` completed.
    fn round_done(&self, peer: NodeId, took: Duration);
    /// Changes were refused, by this node or by `peer` (already logged).
    fn refused(&self, peer: NodeId, refusal: &Refusal);
    /// How logs name `peer`: its name, or its id.
    fn label(&self, peer: &NodeId) -> String;
    /// `peer` opened a round and said this of itself.
    fn peer_opened(&self, peer: NodeId, opening: PeerOpening);
}

/// How often a link runs a round and pushes this node's writes.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// Between anti-entropy rounds.
    pub anti_entropy: Duration,
    /// At least this long between two pushes of this node's own writes (`push_pace`).
    pub push_pace: Duration,
}

/// Runs the link until the connection ends or the command channel closes.
pub async fn run(
    host: &impl LinkHost,
    connection: Connection,
    session: Session,
    peer: NodeId,
    dialer: bool,
    timing: Timing,
    commands: mpsc::UnboundedReceiver<LinkCommand>,
) -> Result<(), LinkError> {
    let (send, recv) = if dialer {
        connection.open_bi().await?
    } else {
        connection.accept_bi().await?
    };
    let (inbound_tx, inbound) = mpsc::channel(16);
    let reader = tokio::spawn(read_frames(recv, inbound_tx));
    let mut link = Link {
        host,
        peer,
        session,
        send,
        round: Round::new(),
        connection: connection.clone(),
        clock_offsets: ClockOffsets::default(),
        pace: PushPace::new(timing.push_pace),
    };
    let result = link.drive(inbound, commands, timing.anti_entropy).await;
    // Whatever ended the link, the reader goes with it, and a failure is told to the peer.
    reader.abort();
    if let Err(e) = &result {
        CloseCode::LinkFailed.close(&connection, &e.to_string());
    }
    result
}

/// Whether a command ended the link: a goodbye, answered on `done` once said.
enum Ended {
    No,
    Goodbye(oneshot::Sender<()>),
}

/// The session, the stream it speaks on, and the round under way.
struct Link<'h, H> {
    host: &'h H,
    peer: NodeId,
    session: Session,
    send: SendStream,
    round: Round,
    /// For its round-trip time.
    connection: Connection,
    clock_offsets: ClockOffsets,
    pace: PushPace,
}

impl<H: LinkHost> Link<'_, H> {
    /// The link's life: a round at once, then frames, commands and the anti-entropy timer,
    /// until the connection or the command channel ends. Every error ends it.
    async fn drive(
        &mut self,
        mut inbound: mpsc::Receiver<Result<Received, LinkError>>,
        mut commands: mpsc::UnboundedReceiver<LinkCommand>,
        anti_entropy: Duration,
    ) -> Result<(), LinkError> {
        self.start_round().await?;
        let mut timer = tokio::time::interval(anti_entropy);
        timer.tick().await;
        loop {
            tokio::select! {
                frame = inbound.recv() => match frame {
                    Some(received) => self.take_in(received, &mut inbound).await?,
                    None => return Ok(()),
                },
                command = commands.recv() => match command {
                    Some(command) => {
                        if let Ended::Goodbye(done) = self.obey(command, &mut commands).await? {
                            self.say_goodbye(&mut inbound).await?;
                            let _ = done.send(());
                            return Ok(());
                        }
                    }
                    None => return Ok(()),
                },
                _ = timer.tick() => self.start_round().await?,
                _ = until(self.pace.due()) => {
                    let held = self.pace.release(Instant::now());
                    self.push(held).await?;
                }
            }
        }
    }

    /// Handles `first` and the messages already waiting behind it (at most `MAX_GATHERED`)
    /// with their changes made durable by one commit (`Replica::gathering`), then acts on
    /// each answer in order. Nothing is sent before that commit returns.
    async fn take_in(
        &mut self,
        first: Result<Received, LinkError>,
        inbound: &mut mpsc::Receiver<Result<Received, LinkError>>,
    ) -> Result<(), LinkError> {
        let mut messages = Vec::new();
        let mut broken = None;
        let mut next = Some(first);
        while let Some(received) = next.take() {
            match received {
                Ok(Received { message, at_ms }) => {
                    if let Message::Hello(hello) = &message {
                        self.heard_hello(hello, at_ms);
                    }
                    messages.push(message);
                }
                Err(error) => {
                    broken = Some(error);
                    break;
                }
            }
            if messages.len() < MAX_GATHERED {
                next = inbound.try_recv().ok();
            }
        }
        let (outcomes, failed) = self.handle_all(messages)?;
        for outcome in outcomes {
            self.act(outcome).await?;
        }
        match failed.map(LinkError::from).or(broken) {
            Some(error) => Err(error),
            None => Ok(()),
        }
    }

    /// Runs the session on each message in one hold of the replica, gathering the changes
    /// they apply into one commit. Returns the answers to the messages handled and, when one
    /// failed, its error (the ones after it are not handled); a failed commit is the error.
    fn handle_all(
        &mut self,
        messages: Vec<Message>,
    ) -> Result<(Vec<Outcome>, Option<SyncError>), LinkError> {
        let (host, session) = (self.host, &mut self.session);
        let (handled, committed) = tokio::task::block_in_place(|| {
            host.with_store(|store| {
                store.gathering(|store| {
                    let mut outcomes = Vec::new();
                    for message in messages {
                        match session.handle(store, message) {
                            Ok(outcome) => outcomes.push(outcome),
                            Err(error) => return (outcomes, Some(error)),
                        }
                    }
                    (outcomes, None)
                })
            })
        });
        committed.map_err(|error| SyncError::Store(StoreError(Box::new(error))))?;
        Ok(handled)
    }

    /// Runs `first` and the commands already queued behind it: the pushes merged into one
    /// per document (a burst of local writes goes out as one message per document, and the
    /// peer applies it with one flush) and paced (`push_pace`), then one round for every
    /// `SyncNow` among them.
    async fn obey(
        &mut self,
        first: LinkCommand,
        commands: &mut mpsc::UnboundedReceiver<LinkCommand>,
    ) -> Result<Ended, LinkError> {
        let mut pushes = Pushes::default();
        let mut relayed = false;
        let mut waiters = Vec::new();
        let mut goodbye = None;
        let mut next = Some(first);
        while let Some(command) = next.take() {
            match command {
                LinkCommand::Push {
                    doc,
                    fresh,
                    relayed: from_peer,
                } => {
                    pushes.add(doc, fresh);
                    relayed |= from_peer;
                }
                LinkCommand::SyncNow(done) => waiters.push(done),
                LinkCommand::Goodbye(done) => goodbye = Some(done),
            }
            if goodbye.is_none() && pushes.len() + waiters.len() < MAX_MERGED_COMMANDS {
                next = commands.try_recv().ok();
            }
        }
        if let Some(now) = self.pace.offer(pushes, relayed, Instant::now()) {
            self.push(now).await?;
        }
        if let Some(done) = goodbye {
            return Ok(Ended::Goodbye(done));
        }
        if !waiters.is_empty() {
            self.round.waiters.extend(waiters);
            self.start_round().await?;
        }
        Ok(Ended::No)
    }

    /// Pushes what the pace holds back, so that writes made just before a stop reach the
    /// peer now rather than at the next connection, ends the stream, and waits until the
    /// peer's stream ends too: the peer applies each frame before it reads the next, and ends
    /// its link when it reads the end of ours, so then it holds everything sent. (QUIC's
    /// acknowledgement of the stream is not enough: it means the peer's transport has the
    /// bytes, and closing the connection then drops what its application had not read yet.)
    /// Frames the peer sends meanwhile are dropped: it holds them and sends them again at the
    /// next connection.
    async fn say_goodbye(
        &mut self,
        inbound: &mut mpsc::Receiver<Result<Received, LinkError>>,
    ) -> Result<(), LinkError> {
        let held = self.pace.release(Instant::now());
        self.push(held).await?;
        if self.send.finish().is_ok() {
            while inbound.recv().await.is_some() {}
        }
        Ok(())
    }

    /// Sends `pushes`, one message per document.
    async fn push(&mut self, pushes: Pushes) -> Result<(), LinkError> {
        for (doc, fresh) in pushes.docs {
            let outcome = self.call(|session, store| session.push(store, &doc, &fresh))?;
            self.act(outcome).await?;
        }
        Ok(())
    }

    /// Tells the host what the peer's `Hello`, received at `at_ms`, says of the peer.
    fn heard_hello(&mut self, hello: &sync::Hello, at_ms: u64) {
        let rtt = self.connection.rtt();
        let opening = PeerOpening {
            waiting: hello.waiting,
            clock_offset_ms: hello
                .clock
                .map(|sent| self.clock_offsets.add(clock_offset_ms(sent, at_ms, rtt))),
        };
        self.host.peer_opened(self.peer, opening);
    }

    /// Opens a new round; whoever waited for the previous one waits for this one.
    async fn start_round(&mut self) -> Result<(), LinkError> {
        self.round.restart();
        let outcome = self.call(|session, store| session.start(store))?;
        self.act(outcome).await
    }

    /// Runs one session call on the replica. Every call that touches the store goes through
    /// here: the store blocks (sled, fsync) and `with_store` may wait for the replica's lock,
    /// so the whole call runs in `block_in_place`, never stalling the other tasks of this
    /// worker thread.
    fn call(
        &mut self,
        step: impl FnOnce(&mut Session, &mut Replica) -> Result<Outcome, SyncError>,
    ) -> Result<Outcome, SyncError> {
        let (host, session) = (self.host, &mut self.session);
        tokio::task::block_in_place(|| host.with_store(|store| step(session, store)))
    }

    /// Acts on an outcome as `Session` documents it: send the messages, log the refusals,
    /// forward what was applied, and close the round when it is done.
    async fn act(&mut self, mut outcome: Outcome) -> Result<(), LinkError> {
        // Recorded before the peer can hear of it, so `meshd status` already shows a refusal
        // the peer was told about.
        for refusal in &outcome.refusals {
            log_refusal(&self.host.label(&self.peer), refusal);
            self.host.refused(self.peer, refusal);
        }
        for message in &mut outcome.messages {
            if let Message::Hello(hello) = message {
                hello.clock = Some(unix_millis());
            }
        }
        send_all(&mut self.send, &outcome.messages).await?;
        if !outcome.applied.is_empty() {
            self.host.applied(self.peer, outcome.applied);
        }
        if outcome.round_done {
            self.round.finish(self.host, self.peer);
        }
        Ok(())
    }
}

/// The round under way and who waits for it.
struct Round {
    started: Instant,
    finished: bool,
    waiters: Vec<oneshot::Sender<()>>,
}

impl Round {
    fn new() -> Round {
        Round {
            started: Instant::now(),
            finished: false,
            waiters: Vec::new(),
        }
    }

    /// A new round begins; the waiters stay.
    fn restart(&mut self) {
        self.started = Instant::now();
        self.finished = false;
    }

    fn finish(&mut self, host: &impl LinkHost, peer: NodeId) {
        if !self.finished {
            self.finished = true;
            host.round_done(peer, self.started.elapsed());
        }
        for waiter in self.waiters.drain(..) {
            let _ = waiter.send(());
        }
    }
}

fn log_refusal(peer: &str, refusal: &Refusal) {
    let by = if refusal.by_peer {
        "peer refused"
    } else {
        "refused from peer"
    };
    tracing::warn!(%peer, doc = %refusal.doc, reason = %refusal.reason, "{by} changes");
}

async fn send_all(send: &mut SendStream, messages: &[Message]) -> Result<(), LinkError> {
    for message in messages {
        send.write_all(&message.encode()).await?;
    }
    Ok(())
}

/// A message from the peer, with this node's wall clock when it was read off the stream.
struct Received {
    message: Message,
    at_ms: u64,
}

fn unix_millis() -> u64 {
    let now = SystemTime::now().duration_since(UNIX_EPOCH);
    now.map_or(0, |since| since.as_millis() as u64)
}

/// The latest estimates of the peer's clock offset. A `Hello` read late (queued behind a
/// burst of pushes) makes the peer's clock look behind by the delay, while one read early is
/// off by at most half a round trip: the largest recent estimate is the closest.
#[derive(Default)]
struct ClockOffsets {
    recent: std::collections::VecDeque<i64>,
}

/// Estimates kept: at one `Hello` per anti-entropy round, the last four minutes.
const CLOCK_SAMPLES: usize = 8;

impl ClockOffsets {
    /// Adds an estimate; returns the best one now.
    fn add(&mut self, offset_ms: i64) -> i64 {
        if self.recent.len() == CLOCK_SAMPLES {
            self.recent.pop_front();
        }
        self.recent.push_back(offset_ms);
        self.recent.iter().copied().max().unwrap_or(offset_ms)
    }
}

/// The offset of a peer's clock from ours: it read `sent_ms` when it sent a message that we
/// read at `received_ms`, about half a round trip later.
fn clock_offset_ms(sent_ms: u64, received_ms: u64, rtt: Duration) -> i64 {
    let sent_here = received_ms.saturating_sub(rtt.as_millis() as u64 / 2);
    (i128::from(sent_ms) - i128::from(sent_here)).clamp(i64::MIN.into(), i64::MAX.into()) as i64
}

async fn read_frames(mut recv: RecvStream, inbound: mpsc::Sender<Result<Received, LinkError>>) {
    loop {
        let frame = match read_frame(&mut recv).await {
            // The peer ended its stream between two frames: it is stopping (`Goodbye`).
            Ok(None) => return,
            Ok(Some(message)) => Ok(Received {
                message,
                at_ms: unix_millis(),
            }),
            Err(error) => Err(error),
        };
        let failed = frame.is_err();
        if inbound.send(frame).await.is_err() || failed {
            return;
        }
    }
}

/// The next frame, or `None` when the stream ends before one begins.
async fn read_frame(recv: &mut RecvStream) -> Result<Option<Message>, LinkError> {
    let mut frame = vec![0u8; sync::HEADER_LEN];
    match recv.read_exact(&mut frame).await {
        Err(quinn::ReadExactError::FinishedEarly(0)) => return Ok(None),
        read => read?,
    }
    let len = sync::body_len(&frame)?;
    frame.resize(sync::HEADER_LEN + len, 0);
    recv.read_exact(&mut frame[sync::HEADER_LEN..]).await?;
    Ok(Some(Message::decode(&frame)?))
}

/// Waits until `due`, or for ever when nothing is due.
async fn until(due: Option<Instant>) {
    match due {
        Some(due) => tokio::time::sleep_until(due.into()).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_clock_offset_counts_half_the_round_trip_as_the_messages_flight() {
        let rtt = Duration::from_millis(40);
        assert_eq!(clock_offset_ms(1_000, 1_020, rtt), 0);
        assert_eq!(clock_offset_ms(6_000, 1_020, rtt), 5_000);
        assert_eq!(clock_offset_ms(1_000, 6_020, rtt), -5_000);
    }

    #[test]
    fn a_hello_read_late_does_not_make_the_peers_clock_look_behind() {
        let mut offsets = ClockOffsets::default();
        assert_eq!(offsets.add(120), 120);
        assert_eq!(offsets.add(-31_000), 120, "read 31 s late, behind a burst");
        for _ in 0..CLOCK_SAMPLES {
            offsets.add(-40_000);
        }
        assert_eq!(
            offsets.add(-40_000),
            -40_000,
            "a clock that moved is followed"
        );
    }

    #[test]
    fn a_clock_offset_survives_any_stamp() {
        let rtt = Duration::from_secs(u64::MAX / 1_000_000);
        assert_eq!(clock_offset_ms(u64::MAX, 0, rtt), i64::MAX);
        assert_eq!(clock_offset_ms(0, u64::MAX, Duration::ZERO), i64::MIN);
    }
}
