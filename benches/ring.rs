//! The ring and sustained-write benchmark (issue 14, scale): real `meshd run` daemons on
//! loopback, driven through their control sockets exactly as the CLI drives them.
//!
//! 1. **Ring**: `MESHD_BENCH_RING_NODES` (8) daemons, each peered with its two ring
//!    neighbours only, so a write on node 0 reaches the far side through the nodes between.
//!    Run A: `MESHD_BENCH_RING_PUTS` (1000) sequential single durable `MemPut`s on node 0,
//!    each a new key. Run B, the baseline in the same run: as many fresh keys as ONE
//!    `BridgeIngest` batch. For each: the time until node 0 acknowledged the last write, the
//!    time from then until every node answers `MemGet` with the last key, and the bytes all
//!    nodes sent meanwhile (the `bytes_sent` of `Status`, summed). Then one `MemLs` per node
//!    must show every key of the run with its value.
//! 2. **Sustained writes**: two peered daemons; one client puts on A at a paced
//!    `MESHD_BENCH_SUSTAINED_RATE` (500) per second for `MESHD_BENCH_SUSTAINED_SECS` (60) s
//!    (the i-th put is sent at start + i / rate, or at once when behind), while B's entry
//!    count (`Status`) is sampled every second. Reported: the achieved rate, B's lag in writes
//!    and in seconds when the writes stop, and the time until B then holds every key. The
//!    baseline: the same paced writes on a node with no peer, before the pair starts.
//!
//! `MESHD_BENCH_RING_VALUES=words` writes values of words instead of the default's counter
//! (see `entry`), for both runs of the ring and the sustained writes.
//!
//! Prints Markdown tables and writes `target/ring-report.json` (or
//! `$CARGO_TARGET_DIR/ring-report.json`). Each daemon's stderr (warnings, errors, and links
//! coming up and going down) goes to `target/ring-logs/<node>.log`, summarised at the end with
//! the wall-clock time of each run, to tell which run a line belongs to. Correctness is
//! asserted (every key on every node with its value); times are reported, never asserted.
//! Daemons are killed when their guard drops, so a panic never leaves one behind.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use meshd::config::Home;
use meshd::control::{self, BridgeIngest, MemLs, NodeStatus, Status};
use serde_json::{json, Value};
use support::{Daemon, TestNode};

#[path = "calls/mod.rs"]
mod calls;
#[path = "../tests/support/mod.rs"]
mod support;
use calls::{ask, has, put};

/// Daemons in the ring unless `MESHD_BENCH_RING_NODES` says otherwise.
const RING_NODES: usize = 8;
/// Writes of each ring run unless `MESHD_BENCH_RING_PUTS` says otherwise.
const RING_PUTS: usize = 1000;
/// Paced puts per second unless `MESHD_BENCH_SUSTAINED_RATE` says otherwise.
const SUSTAINED_RATE: usize = 500;
/// Seconds of paced writes unless `MESHD_BENCH_SUSTAINED_SECS` says otherwise.
const SUSTAINED_SECS: usize = 60;
/// How often nodes are asked whether an entry has arrived.
const POLL: Duration = Duration::from_millis(1);
/// How often B's entry count is sampled during the sustained writes.
const SAMPLE_EVERY: Duration = Duration::from_secs(1);
/// After a ring run has converged: how long trailing messages (confirmations) get before the
/// settled byte count is taken.
const SETTLE: Duration = Duration::from_secs(1);
/// A write not everywhere after this long is a failure, not a figure.
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(120);
/// The daemons' log filter: warnings, and the links coming up and going down.
const DAEMON_LOG: &str = "warn,meshd::net::mesh=info";
/// How long links must stay unchanged before a run starts.
const STABLE: Duration = Duration::from_secs(3);
/// How long the nodes get to connect.
const SETUP_TIMEOUT: Duration = Duration::from_secs(60);

/// Issue 14: every node of the ring holds a write within this long of its acknowledgement.
const TARGET_CONVERGE: Duration = Duration::from_secs(2);
/// Issue 14: single puts cost at most this many times the bytes of one batch.
const TARGET_BYTES_RATIO: f64 = 2.0;
/// Issue 14: under sustained writes the peer is at most this far behind when they stop.
const TARGET_LAG: Duration = Duration::from_secs(2);

fn setting(name: &str, default: usize) -> usize {
    match std::env::var(name) {
        Ok(text) => text
            .parse()
            .unwrap_or_else(|_| panic!("{name}={text:?} is not a count")),
        Err(_) => default,
    }
}

// ---- nodes ------------------------------------------------------------------------------

struct Node {
    /// Declared first so it drops first: the daemon is killed before its home is removed.
    daemon: Option<Daemon>,
    home: TestNode,
    name: String,
    id: String,
    listen: String,
    socket: PathBuf,
    log: PathBuf,
}

impl Node {
    /// `meshd init` on a free loopback port, no local API, no mDNS (`init_listening`).
    fn init(name: &str, logs: &Path) -> Node {
        let (home, listen) = TestNode::init_listening(name);
        let id = home.id();
        let socket = Home::new(home.path().to_path_buf()).control_socket_path();
        Node {
            daemon: None,
            home,
            name: name.to_string(),
            id,
            listen,
            socket,
            log: logs.join(format!("{name}.log")),
        }
    }

    fn add_peer(&self, peer: &Node) {
        self.home
            .run(&["peers", "add", &peer.id, &peer.listen, "--name", &peer.name])
            .ok();
    }

    /// `meshd run` with its stderr in the log file; returns once the control socket answers.
    fn start(&mut self) {
        let log = std::fs::File::create(&self.log).expect("create the daemon's log file");
        let child = self
            .home
            .command(&["run"])
            .env("RUST_LOG", DAEMON_LOG)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start meshd run");
        self.daemon = Some(Daemon::new(child));
        let socket = &self.socket;
        wait_for(&format!("{} answers", self.name), || {
            support::try_ask(socket, Status::default()).is_some()
        });
    }

    /// SIGTERM and wait: the daemon flushes and must exit 0.
    fn stop(&mut self) {
        if let Some(daemon) = self.daemon.take() {
            assert_eq!(daemon.stop(), 0, "{} did not stop cleanly", self.name);
        }
    }

    fn status(&self) -> NodeStatus {
        ask(&self.socket, Status::default())
    }

    /// Every peer in its list connected, and as many as `peers`.
    fn links_up(&self, peers: usize) -> bool {
        let status = self.status();
        status.peers.len() == peers && status.peers.iter().all(|p| p.connected)
    }

    /// Memory entries the node holds, every scope; `None` while its control socket does not
    /// answer (`control::ANSWER_PATIENCE`: its replica busy that long, or the daemon gone).
    fn entries(&self) -> Option<usize> {
        let status = support::try_ask(&self.socket, Status::default())?;
        Some(status.ok()?.memory_entries)
    }
}

fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + SETUP_TIMEOUT;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Bytes sent to peers by all the nodes since they started.
fn traffic(nodes: &[&Node]) -> u64 {
    nodes.iter().map(|n| n.status().bytes_sent).sum()
}

/// Bytes each node has sent on each of its links: (node, peer) → bytes.
fn link_traffic(nodes: &[&Node]) -> BTreeMap<(String, String), u64> {
    let mut sent = BTreeMap::new();
    for node in nodes {
        for peer in node.status().peers {
            sent.insert((node.name.clone(), peer.peer.label()), peer.bytes_sent);
        }
    }
    sent
}

/// Each node's links: (node, peer) → when the link came up, `None` while down. A link that
/// dropped during a run shows as a changed or missing value.
fn links(nodes: &[&Node]) -> BTreeMap<(String, String), Option<u64>> {
    let mut links = BTreeMap::new();
    for node in nodes {
        for peer in node.status().peers {
            let since = peer.link.filter(|_| peer.connected).map(|l| l.since);
            links.insert((node.name.clone(), peer.peer.label()), since);
        }
    }
    links
}

/// Waits until no link changed for `STABLE`: two nodes dial each other at start, and the
/// link one of them keeps may replace the first one up about a second later. The runs
/// measure links in their steady state.
fn wait_stable(nodes: &[&Node]) {
    let deadline = Instant::now() + SETUP_TIMEOUT;
    loop {
        let before = links(nodes);
        std::thread::sleep(STABLE);
        if before.values().all(Option::is_some) && links(nodes) == before {
            return;
        }
        assert!(Instant::now() < deadline, "the links never settled");
    }
}

/// The links that were up before and are not the same link now (dropped, or re-made).
fn relinked(nodes: &[&Node], before: &BTreeMap<(String, String), Option<u64>>) -> Vec<String> {
    let after = links(nodes);
    before
        .iter()
        .filter(|(link, since)| since.is_none() || after.get(*link) != Some(*since))
        .map(|((node, peer), _)| format!("{node}→{peer}"))
        .collect()
}

// ---- requests ---------------------------------------------------------------------------

/// The i-th key of a run and its value. By default about 100 bytes of JSON that differ from
/// one write to the next only in a counter, the most regular values there are; with
/// `MESHD_BENCH_RING_VALUES=words`, 5 to 40 words drawn from a small vocabulary and a number,
/// both picked by a hash of the key, so that consecutive values share no more than text does.
fn entry(run: &str, i: usize) -> (String, Value) {
    let key = format!("{run}.{i:06}");
    let value = if words_values() {
        let drawn = blake3::hash(key.as_bytes());
        let bytes = drawn.as_bytes();
        let count = 5 + usize::from(bytes[0]) % 36;
        let text: Vec<&str> = (0..count)
            .map(|k| WORDS[usize::from(bytes[1 + k % 31] ^ (k as u8)) % WORDS.len()])
            .collect();
        json!({"text": text.join(" "), "score": u32::from_le_bytes([bytes[0], bytes[1], bytes[2], 0])})
    } else {
        json!({"i": i, "run": run,
               "note": format!("ring benchmark entry {i:06}, padded to a hundred bytes")})
    };
    (key, value)
}

/// Whether `MESHD_BENCH_RING_VALUES` asks for values of words.
fn words_values() -> bool {
    static WORDS_VALUES: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *WORDS_VALUES.get_or_init(
        || match std::env::var("MESHD_BENCH_RING_VALUES").as_deref() {
            Ok("words") => true,
            Ok("counter") | Err(_) => false,
            Ok(other) => panic!("MESHD_BENCH_RING_VALUES is `counter` or `words`, not `{other}`"),
        },
    )
}

/// The vocabulary of `MESHD_BENCH_RING_VALUES=words`.
const WORDS: [&str; 24] = [
    "the",
    "user",
    "prefers",
    "dark",
    "mode",
    "project",
    "deadline",
    "is",
    "friday",
    "meeting",
    "notes",
    "from",
    "review",
    "alice",
    "bob",
    "deploy",
    "staging",
    "42",
    "2026-12-05",
    "v1.4.2",
    "kitchen",
    "renovation",
    "budget",
    "approved",
];

/// Asserts, with one `MemLs`, that the node holds exactly `count` keys of the run, each with
/// its value.
fn assert_holds(node: &Node, run: &str, count: usize) {
    let scope = Some("mesh".into());
    let prefix = format!("{run}.");
    let held: HashMap<String, Value> = ask(&node.socket, MemLs { scope })
        .into_iter()
        .filter(|e| e.key.starts_with(&prefix))
        .map(|e| (e.key, e.value))
        .collect();
    assert_eq!(
        held.len(),
        count,
        "{} holds {} of the {count} keys of {run}",
        node.name,
        held.len()
    );
    for i in 0..count {
        let (key, value) = entry(run, i);
        assert_eq!(held.get(&key), Some(&value), "{} on {}", key, node.name);
    }
}

/// The run's keys as bridge memory messages, one `BridgeIngest` payload.
fn batch_payload(run: &str, count: usize) -> String {
    let ts = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("a clock after 1970")
        .as_secs();
    let messages = (0..count)
        .map(|i| {
            let (key, value) = entry(run, i);
            json!({"type": "memory", "scope": "mesh", "key": key, "value": value,
                   "nodeId": "bench", "ts": ts})
        })
        .collect();
    Value::Array(messages).to_string()
}

fn ingest(socket: &Path, payload: String, count: usize) {
    let report = ask(
        socket,
        BridgeIngest {
            payload,
            unwrap: None,
        },
    );
    assert!(report.ignored.is_empty(), "ignored: {:?}", report.ignored);
    assert_eq!((report.summary.memory, report.changed), (count, count));
}

// ---- the ring ---------------------------------------------------------------------------

/// The node's ring neighbours (one when the ring has two nodes).
fn neighbours(i: usize, n: usize) -> BTreeSet<usize> {
    [(i + n - 1) % n, (i + 1) % n]
        .into_iter()
        .filter(|&j| j != i)
        .collect()
}

/// `n` nodes, each peered both ways with its neighbours only, started and connected.
fn ring(n: usize, logs: &Path) -> Vec<Node> {
    assert!(n >= 2, "a ring needs at least two nodes, not {n}");
    let mut nodes: Vec<Node> = (0..n)
        .map(|i| Node::init(&format!("ring{i}"), logs))
        .collect();
    for i in 0..n {
        for j in neighbours(i, n) {
            nodes[i].add_peer(&nodes[j]);
        }
    }
    for node in &mut nodes {
        node.start();
    }
    for (i, node) in nodes.iter().enumerate() {
        let peers = neighbours(i, n).len();
        wait_for(&format!("{} has its links up", node.name), || {
            node.links_up(peers)
        });
    }
    wait_stable(&nodes.iter().collect::<Vec<_>>());
    nodes
}

struct RingRun {
    /// Wall clock at the first send, to match the daemons' log lines.
    began: SystemTime,
    /// From the first send until node 0 acknowledged the last write.
    acked: Duration,
    /// Per node: from the last acknowledgement until it answered with the last key.
    arrivals: Vec<Duration>,
    /// Bytes all nodes sent from the first send until every node had the last key.
    bytes: u64,
    /// The same, `SETTLE` later (trailing confirmations included).
    bytes_settled: u64,
    /// `bytes_settled` per link, "node→peer".
    per_link: BTreeMap<String, u64>,
    relinked: Vec<String>,
}

impl RingRun {
    /// From the last acknowledgement until every node held every key.
    fn converged(&self) -> Duration {
        self.arrivals.iter().copied().max().unwrap_or_default()
    }
}

/// Polls every node for `key` until all hold it; each node's arrival after `from`.
fn wait_everywhere(nodes: &[&Node], key: &str, value: &Value, from: Instant) -> Vec<Duration> {
    let mut arrived: Vec<Option<Duration>> = vec![None; nodes.len()];
    while arrived.iter().any(Option::is_none) {
        for (node, at) in nodes.iter().zip(&mut arrived) {
            if at.is_none() && has(&node.socket, key, value) {
                *at = Some(from.elapsed());
            }
        }
        if from.elapsed() >= CONVERGE_TIMEOUT {
            let missing: Vec<_> = nodes
                .iter()
                .zip(&arrived)
                .filter(|(_, at)| at.is_none())
                .map(|(node, _)| node.name.as_str())
                .collect();
            panic!("{key} still missing on {missing:?} after {CONVERGE_TIMEOUT:?}");
        }
        std::thread::sleep(POLL);
    }
    arrived.into_iter().flatten().collect()
}

/// `write` puts `count` keys of `run` on the first node; measures until every node has them.
fn ring_run(nodes: &[&Node], run: &str, count: usize, write: impl FnOnce(&Path)) -> RingRun {
    let links_before = links(nodes);
    let before = traffic(nodes);
    let links_sent_before = link_traffic(nodes);
    let began = SystemTime::now();
    let started = Instant::now();
    write(&nodes[0].socket);
    let acked_at = Instant::now();
    let (key, value) = entry(run, count - 1);
    let arrivals = wait_everywhere(nodes, &key, &value, acked_at);
    let bytes = traffic(nodes) - before;
    for node in nodes {
        assert_holds(node, run, count);
    }
    std::thread::sleep(SETTLE);
    RingRun {
        began,
        acked: acked_at - started,
        arrivals,
        bytes,
        bytes_settled: traffic(nodes) - before,
        per_link: link_traffic(nodes)
            .into_iter()
            .map(|((node, peer), sent)| {
                let before = links_sent_before.get(&(node.clone(), peer.clone()));
                (
                    format!("{node}→{peer}"),
                    sent - before.copied().unwrap_or(0),
                )
            })
            .collect(),
        relinked: relinked(nodes, &links_before),
    }
}

fn single_puts(socket: &Path, run: &str, count: usize) {
    for i in 0..count {
        let (key, value) = entry(run, i);
        put(socket, &key, &value);
    }
}

struct RingMeasured {
    nodes: usize,
    puts: usize,
    single: RingRun,
    batch: RingRun,
}

fn ring_bench(logs: &Path) -> (RingMeasured, Vec<Node>) {
    let (n, puts) = (
        setting("MESHD_BENCH_RING_NODES", RING_NODES),
        setting("MESHD_BENCH_RING_PUTS", RING_PUTS),
    );
    assert!(puts > 0, "MESHD_BENCH_RING_PUTS must be at least 1");
    let nodes = ring(n, logs);
    let view: Vec<&Node> = nodes.iter().collect();
    let single = ring_run(&view, "single", puts, |socket| {
        single_puts(socket, "single", puts)
    });
    let payload = batch_payload("batch", puts);
    let batch = ring_run(&view, "batch", puts, |socket| ingest(socket, payload, puts));
    let measured = RingMeasured {
        nodes: n,
        puts,
        single,
        batch,
    };
    (measured, nodes)
}

// ---- sustained writes -------------------------------------------------------------------

/// One paced writer's record.
struct Paced {
    /// Per put, from the start until it was acknowledged.
    acks: Vec<Duration>,
    /// Per put, from its send until its acknowledgement, in ms.
    latencies: Vec<f64>,
}

/// Puts `count` keys of `run`, the i-th sent at `start` + i / `rate` (at once when behind);
/// counts acknowledged puts in `acked`.
fn paced_writes(
    socket: &Path,
    run: &str,
    count: usize,
    rate: usize,
    start: Instant,
    acked: &AtomicUsize,
) -> Paced {
    let mut paced = Paced {
        acks: Vec::with_capacity(count),
        latencies: Vec::with_capacity(count),
    };
    for i in 0..count {
        let due = start + Duration::from_secs_f64(i as f64 / rate as f64);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let (key, value) = entry(run, i);
        let sent = Instant::now();
        put(socket, &key, &value);
        let now = Instant::now();
        paced.latencies.push(ms(now - sent));
        paced.acks.push(now - start);
        acked.store(i + 1, Ordering::Release);
    }
    paced
}

/// B's state at one moment of the sustained run.
struct Sample {
    /// Since the start of the writes.
    at: Duration,
    /// Puts acknowledged by A by then.
    written: usize,
    /// Keys of the run B held.
    held: usize,
}

impl Sample {
    fn lag_writes(&self) -> usize {
        self.written.saturating_sub(self.held)
    }

    /// The age of the oldest acknowledged write B lacks (B applies A's changes in order, so
    /// it holds the first `held`); zero when it lacks none.
    fn lag(&self, acks: &[Duration]) -> Duration {
        match acks.get(self.held) {
            Some(&ack) if self.held < self.written => self.at.saturating_sub(ack),
            _ => Duration::ZERO,
        }
    }
}

struct Sustained {
    /// Wall clock at the first put, to match the daemons' log lines.
    began: SystemTime,
    writes: usize,
    paced: Paced,
    /// With a reader: B every `SAMPLE_EVERY`, then B when the writes stopped.
    samples: Vec<Sample>,
    /// Samples B did not answer (its control socket busy past its patience).
    unanswered: usize,
    at_stop: Option<Sample>,
    /// With a reader: from the last acknowledgement until B held every key.
    caught_up: Option<Duration>,
    relinked: Vec<String>,
}

impl Sustained {
    fn writing(&self) -> Duration {
        self.paced.acks.last().copied().unwrap_or_default()
    }

    fn rate(&self) -> f64 {
        self.writes as f64 / self.writing().as_secs_f64()
    }
}

/// The paced writes on `writer`; with a `reader`, samples it every `SAMPLE_EVERY` and waits
/// until it holds every key.
fn sustained(writer: &Node, reader: Option<&Node>, count: usize, rate: usize) -> Sustained {
    let run = "paced";
    let held_before = reader.map_or(0, |r| answered(r).expect("B answers before the writes"));
    let nodes: Vec<&Node> = [Some(writer), reader].into_iter().flatten().collect();
    let links_before = links(&nodes);
    let acked = AtomicUsize::new(0);
    let lead = Duration::from_millis(50);
    let (start, began) = (Instant::now() + lead, SystemTime::now() + lead);
    let mut watch = Watch {
        reader,
        held_before,
        start,
        samples: Vec::new(),
        unanswered: 0,
    };
    let (paced, at_stop) = std::thread::scope(|scope| {
        let writing = scope.spawn(|| paced_writes(&writer.socket, run, count, rate, start, &acked));
        let mut next = start + SAMPLE_EVERY;
        while !writing.is_finished() {
            if Instant::now() >= next {
                watch.sample(acked.load(Ordering::Acquire));
                while next <= Instant::now() {
                    next += SAMPLE_EVERY;
                }
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        let paced = writing.join().expect("the writer thread");
        (paced, watch.at_stop(count))
    });
    let caught_up = reader.map(|reader| {
        let last_ack = start + *paced.acks.last().expect("at least one put");
        let (key, value) = entry(run, count - 1);
        wait_everywhere(&[reader], &key, &value, last_ack)[0]
    });
    for node in &nodes {
        assert_holds(node, run, count);
    }
    Sustained {
        began,
        writes: count,
        paced,
        samples: watch.samples,
        unanswered: watch.unanswered,
        at_stop,
        caught_up,
        relinked: relinked(&nodes, &links_before),
    }
}

/// The node's entry count, asked until it answers (`CONVERGE_TIMEOUT` at most).
fn answered(node: &Node) -> Option<usize> {
    let deadline = Instant::now() + CONVERGE_TIMEOUT;
    loop {
        if let Some(entries) = node.entries() {
            return Some(entries);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(POLL);
    }
}

/// Samples how many keys of the run the reader holds, if there is one.
struct Watch<'a> {
    reader: Option<&'a Node>,
    held_before: usize,
    start: Instant,
    samples: Vec<Sample>,
    /// Samples the reader did not answer within its patience.
    unanswered: usize,
}

impl Watch<'_> {
    fn sample(&mut self, written: usize) {
        let Some(reader) = self.reader else { return };
        match reader.entries() {
            Some(entries) => self.samples.push(Sample {
                // When the answer came: the count is at least this fresh.
                at: self.start.elapsed(),
                written,
                held: entries - self.held_before,
            }),
            None => self.unanswered += 1,
        }
    }

    /// The reader when the writes stopped, asked until it answers.
    fn at_stop(&self, written: usize) -> Option<Sample> {
        let reader = self.reader?;
        let entries = answered(reader).expect("B answers within two minutes of the stop");
        Some(Sample {
            at: self.start.elapsed(),
            written,
            held: entries - self.held_before,
        })
    }
}

struct SustainedMeasured {
    rate: usize,
    secs: usize,
    pair: Sustained,
    solo: Sustained,
}

fn sustained_bench(logs: &Path) -> (SustainedMeasured, Vec<Node>) {
    let rate = setting("MESHD_BENCH_SUSTAINED_RATE", SUSTAINED_RATE);
    let secs = setting("MESHD_BENCH_SUSTAINED_SECS", SUSTAINED_SECS);
    let count = rate * secs;
    assert!(
        count > 0,
        "the sustained run needs a rate and seconds above 0"
    );

    // The baseline first, alone on the machine: the same paced writes, no peer.
    let mut solo = Node::init("solo", logs);
    solo.start();
    let solo_run = sustained(&solo, None, count, rate);
    solo.stop();

    let mut a = Node::init("a", logs);
    let mut b = Node::init("b", logs);
    a.add_peer(&b);
    b.add_peer(&a);
    a.start();
    b.start();
    wait_for("A and B are connected", || a.links_up(1) && b.links_up(1));
    wait_stable(&[&a, &b]);
    let pair = sustained(&a, Some(&b), count, rate);
    let measured = SustainedMeasured {
        rate,
        secs,
        pair,
        solo: solo_run,
    };
    (measured, vec![solo, a, b])
}

// ---- the report -------------------------------------------------------------------------

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Nearest rank.
fn percentile(samples: &[f64], q: f64) -> f64 {
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted[((q * sorted.len() as f64).ceil() as usize).max(1) - 1]
}

/// UTC, as the daemons' log lines show it.
fn wall(at: SystemTime) -> String {
    humantime::format_rfc3339_millis(at).to_string()
}

fn met(yes: bool) -> &'static str {
    if yes {
        "met"
    } else {
        "**not met**"
    }
}

fn ring_report(m: &RingMeasured) -> Value {
    let (s, b) = (&m.single, &m.batch);
    println!(
        "## Ring: {} nodes, {} writes on node 0, each node peered with its two neighbours\n",
        m.nodes, m.puts
    );
    println!("| figure | single puts | one batch | ratio |");
    println!("|---|---:|---:|---:|");
    let rows: [(&str, f64, f64); 6] = [
        (
            "writes acknowledged on node 0, ms",
            ms(s.acked),
            ms(b.acked),
        ),
        (
            "every node holds every key, ms after the last ack",
            ms(s.converged()),
            ms(b.converged()),
        ),
        (
            "every node holds every key, ms after the first send",
            ms(s.acked + s.converged()),
            ms(b.acked + b.converged()),
        ),
        (
            "bytes sent by all nodes, until converged",
            s.bytes as f64,
            b.bytes as f64,
        ),
        (
            "bytes sent by all nodes, 1 s after that",
            s.bytes_settled as f64,
            b.bytes_settled as f64,
        ),
        (
            "bytes sent per write, settled",
            s.bytes_settled as f64 / m.puts as f64,
            b.bytes_settled as f64 / m.puts as f64,
        ),
    ];
    for (figure, single, batch) in rows {
        println!(
            "| {figure} | {single:.0} | {batch:.0} | {:.2}× |",
            single / batch
        );
    }
    let arrivals = |run: &RingRun| {
        let shown: Vec<String> = run
            .arrivals
            .iter()
            .map(|d| format!("{:.0}", ms(*d)))
            .collect();
        shown.join(", ")
    };
    println!(
        "\nlast key on node 0, 1, …, ms after the last ack: single puts {}; one batch {}",
        arrivals(s),
        arrivals(b)
    );
    for (run, name) in [(s, "single puts"), (b, "one batch")] {
        let links: Vec<String> = (run.per_link.iter())
            .map(|(link, sent)| format!("{link} {sent}"))
            .collect();
        println!("bytes per link, {name}: {}", links.join(", "));
    }
    let converged_met = s.converged() <= TARGET_CONVERGE;
    let bytes_ratio = s.bytes_settled as f64 / b.bytes_settled as f64;
    println!(
        "\nTargets: single puts converged on every node within {} s of the last ack: {} ({:.0} ms); \
         their bytes at most {TARGET_BYTES_RATIO}× one batch's: {} ({bytes_ratio:.2}×)",
        TARGET_CONVERGE.as_secs(),
        met(converged_met),
        ms(s.converged()),
        met(bytes_ratio <= TARGET_BYTES_RATIO),
    );
    for (run, name) in [(s, "single puts"), (b, "one batch")] {
        println!("{name} began at {}", wall(run.began));
        if !run.relinked.is_empty() {
            println!("links dropped or re-made during {name}: {:?}", run.relinked);
        }
    }
    let json_run = |run: &RingRun| {
        json!({"began": wall(run.began), "acked_ms": ms(run.acked), "converged_after_ack_ms": ms(run.converged()),
               "arrivals_after_ack_ms": run.arrivals.iter().map(|d| ms(*d)).collect::<Vec<_>>(),
               "bytes": run.bytes, "bytes_settled": run.bytes_settled, "bytes_per_link": run.per_link, "relinked": run.relinked})
    };
    json!({"nodes": m.nodes, "writes": m.puts, "single_puts": json_run(s), "one_batch": json_run(b),
           "bytes_ratio": bytes_ratio,
           "target_converge_ms": ms(TARGET_CONVERGE), "converge_met": converged_met,
           "target_bytes_ratio": TARGET_BYTES_RATIO,
           "bytes_met": bytes_ratio <= TARGET_BYTES_RATIO})
}

fn sustained_report(m: &SustainedMeasured) -> Value {
    let (pair, solo) = (&m.pair, &m.solo);
    let acks = &pair.paced.acks;
    let stop = pair.at_stop.as_ref().expect("the pair had a reader");
    let caught_up = pair.caught_up.expect("the pair had a reader");
    let max_writes = pair.samples.iter().map(Sample::lag_writes).max();
    let max_lag = pair.samples.iter().map(|s| s.lag(acks)).max();
    println!(
        "\n## Sustained writes: {} puts/s paced for {} s on A, one peer B\n",
        m.rate, m.secs
    );
    println!("| figure | A with peer B | no peer (baseline) | ratio |");
    println!("|---|---:|---:|---:|");
    let rate_row = ("achieved write rate, puts/s", pair.rate(), solo.rate());
    let p50 = (
        "put acknowledged, p50 ms",
        percentile(&pair.paced.latencies, 0.5),
        percentile(&solo.paced.latencies, 0.5),
    );
    let p99 = (
        "put acknowledged, p99 ms",
        percentile(&pair.paced.latencies, 0.99),
        percentile(&solo.paced.latencies, 0.99),
    );
    for (figure, with_peer, baseline) in [rate_row, p50, p99] {
        println!(
            "| {figure} | {with_peer:.2} | {baseline:.2} | {:.2}× |",
            with_peer / baseline
        );
    }
    println!(
        "| B's lag when the writes stop, writes | {} | | |",
        stop.lag_writes()
    );
    println!(
        "| B's lag when the writes stop, s | {:.3} | | |",
        stop.lag(acks).as_secs_f64()
    );
    println!(
        "| B's largest lag in a sample, writes / s | {} / {:.3} | | |",
        max_writes.unwrap_or(0),
        max_lag.unwrap_or_default().as_secs_f64()
    );
    println!(
        "| B holds every key, s after the last ack | {:.3} | | |",
        caught_up.as_secs_f64()
    );
    let lags: Vec<String> = pair
        .samples
        .iter()
        .map(|s| s.lag_writes().to_string())
        .collect();
    println!(
        "\nB's lag in writes, one sample a second: {}",
        lags.join(", ")
    );
    for (rate, who) in [(pair.rate(), "A with peer"), (solo.rate(), "no peer")] {
        if rate < 0.95 * m.rate as f64 {
            println!(
                "{who} could not keep up with {} puts/s: {rate:.0}/s",
                m.rate
            );
        }
    }
    println!(
        "writes began at {} (with peer), {} (no peer)",
        wall(pair.began),
        wall(solo.began)
    );
    if !pair.relinked.is_empty() {
        println!(
            "links dropped or re-made during the writes: {:?}",
            pair.relinked
        );
    }
    if pair.unanswered > 0 {
        println!(
            "B's control socket left {} samples unanswered for {} s each",
            pair.unanswered,
            control::ANSWER_PATIENCE.as_secs()
        );
    }
    let answered_after = stop.at.saturating_sub(pair.writing());
    if answered_after > SAMPLE_EVERY {
        println!(
            "B answered the sample at the stop only {:.1} s after the last write",
            answered_after.as_secs_f64()
        );
    }
    let lag_met = stop.lag(acks) <= TARGET_LAG;
    println!(
        "\nTarget: B at most {} s behind when the writes stop: {} ({:.3} s, {} writes; every key {:.3} s after the stop)",
        TARGET_LAG.as_secs(),
        met(lag_met),
        stop.lag(acks).as_secs_f64(),
        stop.lag_writes(),
        caught_up.as_secs_f64()
    );
    json!({"began": wall(pair.began), "began_solo": wall(solo.began), "target_rate": m.rate, "secs": m.secs, "writes": pair.writes,
           "rate_with_peer": pair.rate(), "rate_solo": solo.rate(),
           "ack_p50_ms_with_peer": p50.1, "ack_p50_ms_solo": p50.2,
           "ack_p99_ms_with_peer": p99.1, "ack_p99_ms_solo": p99.2,
           "lag_at_stop_writes": stop.lag_writes(), "lag_at_stop_s": stop.lag(acks).as_secs_f64(),
           "caught_up_after_stop_s": caught_up.as_secs_f64(),
           "samples": pair.samples.iter().map(|s| json!({"at_s": s.at.as_secs_f64(),
               "written": s.written, "held": s.held, "lag_s": s.lag(acks).as_secs_f64()}))
               .collect::<Vec<_>>(),
           "relinked": pair.relinked, "unanswered_samples": pair.unanswered,
           "stop_sample_after_last_write_s": answered_after.as_secs_f64(),
           "target_lag_s": TARGET_LAG.as_secs_f64(), "lag_met": lag_met})
}

/// What the daemons wrote to stderr (`DAEMON_LOG`): per node, each kind of message (hashes
/// and timestamp cut off), how often it came, and when first and last.
fn log_report(nodes: &[Node]) -> Value {
    let hash = regex::Regex::new("[0-9a-f]{16,}").expect("a valid pattern");
    let mut report = serde_json::Map::new();
    println!("\n## Daemon logs\n");
    for node in nodes {
        let text = std::fs::read_to_string(&node.log).unwrap_or_default();
        let mut kinds: BTreeMap<String, (usize, &str, &str)> = BTreeMap::new();
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let (time, message) = line.split_once(' ').unwrap_or(("", line));
            // The time of day of an RFC 3339 timestamp, to the millisecond.
            let time = time.get(11..23).unwrap_or(time);
            let kind = hash.replace_all(message.trim(), "…").into_owned();
            let seen = kinds.entry(kind).or_insert((0, time, time));
            seen.0 += 1;
            seen.2 = time;
        }
        let lines: usize = kinds.values().map(|k| k.0).sum();
        println!("{}: {lines} lines", node.name);
        for (kind, (count, first, last)) in &kinds {
            println!("  {count}× ({first}–{last}) {kind}");
        }
        let kinds: Vec<Value> = kinds
            .iter()
            .map(|(kind, (count, first, last))| {
                json!({"message": kind, "count": count, "first": first, "last": last})
            })
            .collect();
        report.insert(node.name.clone(), Value::Array(kinds));
    }
    Value::Object(report)
}

/// The machine's load average (1, 5, 15 min), where Linux tells it: the figures are only
/// as quiet as the machine was.
fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|text| {
            text.split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_else(|_| "unknown".into())
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"))
}

fn main() {
    let began = Instant::now();
    let load_before = load();
    let target = target_dir();
    let logs = target.join("ring-logs");
    std::fs::create_dir_all(&logs).expect("the log directory");

    let (ring, mut ring_nodes) = ring_bench(&logs);
    let ring_json = ring_report(&ring);
    let ring_logs = log_report(&ring_nodes);
    ring_nodes.iter_mut().for_each(Node::stop);

    let (sustained, mut pair_nodes) = sustained_bench(&logs);
    let sustained_json = sustained_report(&sustained);
    let pair_logs = log_report(&pair_nodes);
    pair_nodes.iter_mut().for_each(Node::stop);

    let path = target.join("ring-report.json");
    let load_after = load();
    println!("\nload average before the bench {load_before}, after {load_after}");
    let report = json!({"ring": ring_json, "sustained": sustained_json,
                        "logs": {"ring": ring_logs, "sustained": pair_logs},
                        "load_before": load_before, "load_after": load_after});
    std::fs::write(
        &path,
        serde_json::to_string_pretty(&report).expect("the report serializes"),
    )
    .expect("write the report");
    println!("\nwritten to {}", path.display());
    println!("total bench time {:.1} s", began.elapsed().as_secs_f64());
}
