//! The mesh benchmark (issue 4): two real `meshd run` processes on loopback, driven through
//! their control sockets exactly as the CLI drives them.
//!
//! 1. put-to-visible latency: sequential `MemPut`s on A, each a new key; for each, the time
//!    from sending the put until B answers `MemGet` with that entry (B is polled every
//!    200 µs).
//! 2. replicated writes per second: single durable puts (one client, then four client
//!    threads) and bridge batches (`BridgeIngest`, 500 memory messages per request, one
//!    durable batch each); the rate is puts / time from the first send until B has the last
//!    one, and B must then hold every one of them. Each run starts right after a sync round
//!    (`meshd sync`), so runs do not inherit each other's state.
//! 3. the baseline: the same loops on a node with no peers, in the same run, so every figure
//!    also reads as a ratio against it. The time of one bare fsync on the same file system is
//!    measured too, since every durable write waits for at least one.
//!
//! Prints Markdown tables and writes `target/mesh-report.json` (or
//! `$CARGO_TARGET_DIR/mesh-report.json`). Correctness is asserted (every key reaches B with
//! its value, and A and B end identical); times are reported, never asserted. Daemons are
//! killed when their guard drops, so a panic never leaves one behind.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Barrier;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use meshd::config::Home;
use meshd::control::{BridgeIngest, MemLs, NodeStatus, Status, Sync};
use support::{free_udp_addr, Daemon};

#[path = "calls/mod.rs"]
mod calls;
#[path = "../tests/support/mod.rs"]
mod support;
use calls::{ask, has, put};
use serde_json::{json, Value};

/// Puts before the latency sample starts (links settle, caches warm up).
const WARMUP: usize = 20;
/// Puts in the latency sample.
const LATENCY_PUTS: usize = 300;
/// Puts in each throughput run.
const THROUGHPUT_PUTS: usize = 2000;
/// Client threads of the parallel run.
const CLIENTS: usize = 4;
/// Memory messages per `BridgeIngest` request.
const BATCH: usize = 500;
/// Batched runs are short (four requests), so one stall decides a run: it is repeated with
/// fresh keys and the rounds are summed.
const BATCH_ROUNDS: usize = 5;
/// The one-client run also reports its rate per this many puts, to show how it evolves.
const SEGMENT: usize = 500;
/// How often B is asked whether an entry has arrived.
const POLL: Duration = Duration::from_micros(200);
/// An entry not on B after this long is a failure, not a figure.
const VISIBLE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long nodes get to start and connect.
const SETUP_TIMEOUT: Duration = Duration::from_secs(30);
/// Bare fsyncs timed for the floor.
const FSYNCS: usize = 200;

const TARGET_P50_MS: f64 = 20.0;
const TARGET_P99_MS: f64 = 100.0;
const TARGET_PER_S: f64 = 5000.0;

// ---- nodes ------------------------------------------------------------------------------

struct Node {
    name: &'static str,
    home: Home,
    listen: String,
    socket: PathBuf,
    daemon: Option<Daemon>,
}

fn meshd(home: &Home) -> Command {
    let mut command = support::meshd();
    command.arg("--home").arg(&home.dir);
    command
}

fn cli(home: &Home, args: &[&str]) -> String {
    let output = meshd(home).args(args).output().expect("run meshd");
    assert!(
        output.status.success(),
        "meshd {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

impl Node {
    /// `meshd init` on a free loopback port; no local API, caches inside the temp dir.
    fn init(dir: &Path, name: &'static str) -> Node {
        let home = Home::new(dir.join(name));
        let listen = free_udp_addr();
        cli(&home, &["init", "--name", name, "--listen", &listen]);
        let config = home.config_path();
        let mut text = std::fs::read_to_string(&config).expect("meshd.toml");
        text.push_str(&format!(
            "\n[api]\nenabled = false\n\n[cache]\nopenclaw_home = {:?}\n",
            dir.join(name).join("openclaw")
        ));
        std::fs::write(&config, text).expect("write meshd.toml");
        let socket = home.control_socket_path();
        Node {
            name,
            home,
            listen,
            socket,
            daemon: None,
        }
    }

    fn id(&self) -> String {
        cli(&self.home, &["id"])
            .lines()
            .next()
            .expect("meshd id prints the id")
            .to_string()
    }

    fn add_peer(&self, peer: &Node) {
        cli(
            &self.home,
            &[
                "peers",
                "add",
                &peer.id(),
                &peer.listen,
                "--name",
                peer.name,
            ],
        );
    }

    fn start(&mut self) {
        let child = meshd(&self.home)
            .arg("run")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .expect("start meshd run");
        self.daemon = Some(Daemon::new(child));
        let socket = self.socket.clone();
        wait_for(&format!("{} answers", self.name), || {
            support::try_ask(&socket, Status::default()).is_some()
        });
    }

    /// SIGTERM and wait: the daemon flushes and must exit 0.
    fn stop(&mut self) {
        let Some(daemon) = self.daemon.take() else {
            return;
        };
        let code = daemon.stop();
        assert_eq!(code, 0, "{} did not stop cleanly", self.name);
    }

    fn status(&self) -> NodeStatus {
        ask(&self.socket, Status::default())
    }

    fn connected(&self) -> bool {
        self.status().peers.iter().any(|p| p.connected)
    }
}

fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + SETUP_TIMEOUT;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

// ---- requests ---------------------------------------------------------------------------

fn value(i: usize) -> Value {
    json!({"i": i, "note": format!("benchmark entry {i}"), "ok": i.is_multiple_of(2)})
}

/// Polls until the node answers with the entry; returns when it did.
fn wait_visible(socket: &Path, key: &str, value: &Value) -> Instant {
    let started = Instant::now();
    loop {
        if has(socket, key, value) {
            return Instant::now();
        }
        assert!(
            started.elapsed() < VISIBLE_TIMEOUT,
            "{key} not visible at {} after {VISIBLE_TIMEOUT:?}",
            socket.display()
        );
        std::thread::sleep(POLL);
    }
}

fn memory(socket: &Path) -> Vec<(String, Value)> {
    ask(socket, MemLs::default())
        .into_iter()
        .map(|e| (format!("{}:{}", e.scope, e.key), e.value))
        .collect()
}

/// Asserts, with one `MemLs`, that the node holds exactly `count` keys under `prefix`, each
/// with the value its index says.
fn assert_holds(socket: &Path, prefix: &str, count: usize) {
    let entries = ask(
        socket,
        MemLs {
            scope: Some("mesh".into()),
        },
    );
    let mine: Vec<_> = entries
        .iter()
        .filter(|e| e.key.starts_with(&format!("{prefix}.")))
        .collect();
    assert_eq!(
        mine.len(),
        count,
        "{} holds {} of the {count} keys under {prefix}",
        socket.display(),
        mine.len()
    );
    for entry in mine {
        let i = entry.value["i"].as_u64().expect("a benchmark value") as usize;
        assert_eq!(entry.value, value(i), "{}", entry.key);
    }
}

// ---- measurements -----------------------------------------------------------------------

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[derive(Clone, Copy)]
struct Percentiles {
    n: usize,
    p50: f64,
    p90: f64,
    p99: f64,
    max: f64,
}

impl Percentiles {
    /// Nearest rank.
    fn of(mut samples: Vec<f64>) -> Percentiles {
        samples.sort_by(f64::total_cmp);
        let rank = |q: f64| samples[((q * samples.len() as f64).ceil() as usize).max(1) - 1];
        Percentiles {
            n: samples.len(),
            p50: rank(0.50),
            p90: rank(0.90),
            p99: rank(0.99),
            max: samples[samples.len() - 1],
        }
    }
}

/// Sequential puts on `writer`; with a `reader`, each waits until the reader has it.
/// Returns (acknowledged, visible) latencies in ms, warm-up excluded.
fn latency(writer: &Path, reader: Option<&Path>, prefix: &str) -> (Vec<f64>, Vec<f64>) {
    let (mut acked, mut visible) = (Vec::new(), Vec::new());
    for i in 0..WARMUP + LATENCY_PUTS {
        let (key, value) = (format!("{prefix}.{i:05}"), value(i));
        let sent = Instant::now();
        put(writer, &key, &value);
        let ack = sent.elapsed();
        let seen = reader.map(|reader| wait_visible(reader, &key, &value) - sent);
        if i >= WARMUP {
            acked.push(ms(ack));
            visible.extend(seen.map(ms));
        }
    }
    (acked, visible)
}

struct Throughput {
    puts: usize,
    requests: usize,
    /// From the first send until the writer acknowledged the last request.
    acked: Duration,
    /// From the first send until the reader had the last entry.
    visible: Option<Duration>,
    /// One client: from the first send until the ack of every `SEGMENT`th put.
    segments: Vec<Duration>,
    /// Batched: puts per second of each round, first send to last visible (or acked).
    round_rates: Vec<f64>,
}

impl Throughput {
    fn acked_per_s(&self) -> f64 {
        self.puts as f64 / self.acked.as_secs_f64()
    }

    fn visible_per_s(&self) -> Option<f64> {
        self.visible.map(|v| self.puts as f64 / v.as_secs_f64())
    }
}

/// A sync round with every connected peer (`meshd sync`), so that every throughput run
/// starts from the same state: the peer's heads just confirmed, as after the periodic
/// anti-entropy round. Without peers it does nothing.
fn round(writer: &Path) {
    ask(writer, Sync::default());
}

/// `THROUGHPUT_PUTS` single `MemPut`s from `clients` threads as fast as each can send them.
fn single_puts(writer: &Path, reader: Option<&Path>, prefix: &str, clients: usize) -> Throughput {
    round(writer);
    let per_client = THROUGHPUT_PUTS / clients;
    let start = Barrier::new(clients + 1);
    let (started, ends) = std::thread::scope(|scope| {
        let threads: Vec<_> = (0..clients)
            .map(|c| {
                let start = &start;
                scope.spawn(move || {
                    let keys: Vec<_> = (0..per_client)
                        .map(|i| {
                            let i = c * per_client + i;
                            (format!("{prefix}.{i:05}"), value(i))
                        })
                        .collect();
                    start.wait();
                    let mut acks = Vec::new();
                    for (n, (key, value)) in keys.iter().enumerate() {
                        put(writer, key, value);
                        if (n + 1) % SEGMENT == 0 {
                            acks.push(Instant::now());
                        }
                    }
                    let last = keys.last().cloned().expect("at least one put per client");
                    (last, acks)
                })
            })
            .collect();
        // Taken before the clients are released: the first put cannot precede it.
        let started = Instant::now();
        start.wait();
        let ends: Vec<_> = threads
            .into_iter()
            .map(|t| t.join().expect("a client thread"))
            .collect();
        (started, ends)
    });
    let total = per_client * clients;
    let lasts: Vec<_> = ends.iter().map(|(last, _)| last.clone()).collect();
    let mut run = finish(writer, reader, prefix, started, &lasts, total, total);
    if clients == 1 {
        run.segments = ends[0].1.iter().map(|ack| *ack - started).collect();
    }
    run
}

/// The same number of entries as bridge memory messages, `BATCH` per `BridgeIngest`.
fn batched_puts(writer: &Path, reader: Option<&Path>, prefix: &str) -> Throughput {
    let ts = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("a clock after 1970")
        .as_secs();
    let messages: Vec<(String, Value)> = (0..THROUGHPUT_PUTS)
        .map(|i| (format!("{prefix}.{i:05}"), value(i)))
        .collect();
    let payloads: Vec<String> = messages
        .chunks(BATCH)
        .map(|chunk| {
            Value::Array(
                chunk
                    .iter()
                    .map(|(key, value)| {
                        json!({"type": "memory", "scope": "mesh", "key": key, "value": value,
                               "nodeId": "bench", "ts": ts})
                    })
                    .collect(),
            )
            .to_string()
        })
        .collect();
    let requests = payloads.len();
    round(writer);
    let started = Instant::now();
    for (payload, chunk) in payloads.into_iter().zip(messages.chunks(BATCH)) {
        let ingest = BridgeIngest {
            payload,
            unwrap: None,
        };
        let report = ask(writer, ingest);
        assert!(report.ignored.is_empty(), "ignored: {:?}", report.ignored);
        assert_eq!(
            (report.summary.memory, report.changed),
            (chunk.len(), chunk.len())
        );
    }
    let last = messages.last().cloned().expect("entries");
    finish(
        writer,
        reader,
        prefix,
        started,
        &[last],
        THROUGHPUT_PUTS,
        requests,
    )
}

fn finish(
    writer: &Path,
    reader: Option<&Path>,
    prefix: &str,
    started: Instant,
    lasts: &[(String, Value)],
    puts: usize,
    requests: usize,
) -> Throughput {
    let acked = started.elapsed();
    let visible = reader.map(|reader| {
        for (key, value) in lasts {
            wait_visible(reader, key, value);
        }
        started.elapsed()
    });
    assert_holds(writer, prefix, puts);
    if let Some(reader) = reader {
        assert_holds(reader, prefix, puts);
    }
    Throughput {
        puts,
        requests,
        acked,
        visible,
        segments: Vec::new(),
        round_rates: Vec::new(),
    }
}

/// `BATCH_ROUNDS` batched runs, each with fresh keys, summed into one.
fn batched_rounds(writer: &Path, reader: Option<&Path>) -> Throughput {
    let rounds: Vec<Throughput> = (0..BATCH_ROUNDS)
        .map(|r| batched_puts(writer, reader, &format!("batch{r}")))
        .collect();
    let sum = |f: fn(&Throughput) -> Duration| rounds.iter().map(f).sum::<Duration>();
    Throughput {
        puts: rounds.iter().map(|r| r.puts).sum(),
        requests: rounds.iter().map(|r| r.requests).sum(),
        acked: sum(|r| r.acked),
        visible: reader.map(|_| sum(|r| r.visible.expect("a reader"))),
        segments: Vec::new(),
        round_rates: rounds
            .iter()
            .map(|r| r.visible_per_s().unwrap_or_else(|| r.acked_per_s()))
            .collect(),
    }
}

/// One small append made durable, the way a write-ahead log commits: the floor under every
/// durable write on this file system.
fn fsync_floor(dir: &Path) -> Vec<f64> {
    let mut file = std::fs::File::create(dir.join("fsync-probe")).expect("a probe file");
    let mut samples = Vec::new();
    for i in 0..FSYNCS {
        let started = Instant::now();
        writeln!(file, "probe {i}").expect("write the probe");
        file.sync_all().expect("fsync");
        samples.push(ms(started.elapsed()));
    }
    samples
}

// ---- the run ----------------------------------------------------------------------------

struct Measured {
    fsync: Percentiles,
    solo_ack: Percentiles,
    mesh_ack: Percentiles,
    visible: Percentiles,
    /// (mode, clients, with peer, solo)
    throughput: Vec<(&'static str, usize, Throughput, Throughput)>,
}

fn main() {
    let began = Instant::now();
    let dir = tempfile::Builder::new()
        .prefix("meshd-bench-")
        .tempdir()
        .expect("a temporary directory");
    let fsync = Percentiles::of(fsync_floor(dir.path()));

    let mut solo = Node::init(dir.path(), "solo");
    let mut a = Node::init(dir.path(), "a");
    let mut b = Node::init(dir.path(), "b");
    a.add_peer(&b);
    b.add_peer(&a);

    // The baseline: one node, no peers, the same loops.
    solo.start();
    let (solo_ack, _) = latency(&solo.socket, None, "lat");
    let solo_runs = [
        single_puts(&solo.socket, None, "single1", 1),
        single_puts(&solo.socket, None, "single4", CLIENTS),
        batched_rounds(&solo.socket, None),
    ];
    solo.stop();

    // Two nodes, paired both ways.
    a.start();
    b.start();
    wait_for("A and B are connected", || a.connected() && b.connected());
    let (mesh_ack, visible) = latency(&a.socket, Some(&b.socket), "lat");
    let mesh_runs = [
        single_puts(&a.socket, Some(&b.socket), "single1", 1),
        single_puts(&a.socket, Some(&b.socket), "single4", CLIENTS),
        batched_rounds(&a.socket, Some(&b.socket)),
    ];
    let (on_a, on_b) = (memory(&a.socket), memory(&b.socket));
    assert_eq!(on_a.len(), on_b.len(), "A and B hold different key counts");
    assert!(on_a == on_b, "A and B ended with different memory");
    a.stop();
    b.stop();

    let modes = [
        ("single MemPut, 1 client", 1),
        ("single MemPut, 4 clients", CLIENTS),
        ("BridgeIngest, 500 per request, 5 rounds", 1),
    ];
    let measured = Measured {
        fsync,
        solo_ack: Percentiles::of(solo_ack),
        mesh_ack: Percentiles::of(mesh_ack),
        visible: Percentiles::of(visible),
        throughput: modes
            .into_iter()
            .zip(mesh_runs.into_iter().zip(solo_runs))
            .map(|((mode, clients), (mesh, solo))| (mode, clients, mesh, solo))
            .collect(),
    };
    report(&measured, on_b.len());
    println!("\ntotal bench time {:.1} s", began.elapsed().as_secs_f64());
}

fn met(yes: bool) -> &'static str {
    if yes {
        "met"
    } else {
        "NOT met"
    }
}

/// Puts per second within each segment of acknowledgements.
fn segment_rates(acks: &[Duration]) -> Vec<f64> {
    let mut before = Duration::ZERO;
    acks.iter()
        .map(|ack| {
            let rate = SEGMENT as f64 / (*ack - before).as_secs_f64();
            before = *ack;
            rate
        })
        .collect()
}

fn rates(values: &[f64]) -> String {
    let shown: Vec<String> = values.iter().map(|v| format!("{v:.0}")).collect();
    shown.join(", ")
}

fn report(m: &Measured, entries: usize) {
    let mut json_rows = Vec::new();
    println!("## Mesh: latency and replicated writes\n");
    println!("| latency | n | p50 ms | p90 ms | p99 ms | max ms | p50 vs solo put |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    let latency_rows = [
        ("put on A → visible on B", "put_to_visible", m.visible),
        (
            "put acknowledged by A (peer connected)",
            "put_ack_with_peer",
            m.mesh_ack,
        ),
        (
            "put acknowledged, solo node (baseline)",
            "put_ack_solo",
            m.solo_ack,
        ),
        ("bare fsync of a small append (floor)", "fsync", m.fsync),
    ];
    for (label, measure, p) in latency_rows {
        let ratio = p.p50 / m.solo_ack.p50;
        println!(
            "| {label} | {} | {:.2} | {:.2} | {:.2} | {:.2} | {ratio:.2}× |",
            p.n, p.p50, p.p90, p.p99, p.max
        );
        let mut row = json!({
            "kind": "latency", "measure": measure, "n": p.n,
            "p50_ms": p.p50, "p90_ms": p.p90, "p99_ms": p.p99, "max_ms": p.max,
            "p50_vs_solo_put": ratio,
        });
        if measure == "put_to_visible" {
            row["target_p50_ms"] = json!(TARGET_P50_MS);
            row["target_p99_ms"] = json!(TARGET_P99_MS);
            row["meets_target"] = json!(p.p50 <= TARGET_P50_MS && p.p99 <= TARGET_P99_MS);
        }
        json_rows.push(row);
    }
    println!(
        "\nput → visible: p50 ≤ {TARGET_P50_MS} ms {} ({:.2} ms), p99 ≤ {TARGET_P99_MS} ms {} ({:.2} ms)\n",
        met(m.visible.p50 <= TARGET_P50_MS),
        m.visible.p50,
        met(m.visible.p99 <= TARGET_P99_MS),
        m.visible.p99
    );

    println!("| writes | puts | requests | acked on A ms | visible on B ms | acked on A /s | replicated /s | solo /s | replicated / solo | ≥ {TARGET_PER_S} /s |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|");
    for (mode, clients, mesh, solo) in &m.throughput {
        let replicated = mesh.visible_per_s().expect("measured with a reader");
        let visible = mesh.visible.expect("measured with a reader");
        let baseline = solo.acked_per_s();
        println!(
            "| {mode} | {} | {} | {:.0} | {:.0} | {:.0} | {replicated:.0} | {baseline:.0} | {:.2} | {} |",
            mesh.puts,
            mesh.requests,
            ms(mesh.acked),
            ms(visible),
            mesh.acked_per_s(),
            replicated / baseline,
            met(replicated >= TARGET_PER_S),
        );
        let mut row = json!({
            "kind": "throughput", "mode": mode, "clients": clients,
            "puts": mesh.puts, "requests": mesh.requests,
            "acked_ms": ms(mesh.acked), "visible_ms": ms(visible),
            "acked_per_s": mesh.acked_per_s(), "replicated_per_s": replicated,
            "solo_ms": ms(solo.acked), "solo_per_s": baseline,
            "replicated_vs_solo": replicated / baseline,
            "target_per_s": TARGET_PER_S, "meets_target": replicated >= TARGET_PER_S,
        });
        if !mesh.round_rates.is_empty() {
            row["round_replicated_per_s"] = json!(mesh.round_rates);
            row["round_solo_per_s"] = json!(solo.round_rates);
        }
        if !mesh.segments.is_empty() {
            row["segment_puts"] = json!(SEGMENT);
            row["segment_acked_per_s"] = json!(segment_rates(&mesh.segments));
            row["segment_solo_per_s"] = json!(segment_rates(&solo.segments));
        }
        json_rows.push(row);
    }
    for (mode, _, mesh, solo) in &m.throughput {
        if !mesh.round_rates.is_empty() {
            println!(
                "\n{mode}: replicated puts/s per round {} (solo {})",
                rates(&mesh.round_rates),
                rates(&solo.round_rates)
            );
        }
    }
    for (mode, _, mesh, solo) in &m.throughput {
        if mesh.segments.is_empty() {
            continue;
        }
        println!("\n{mode}, puts/s acknowledged per {SEGMENT} puts:\n");
        let heads: Vec<String> = (0..mesh.segments.len())
            .map(|i| format!("{}–{}", i * SEGMENT + 1, (i + 1) * SEGMENT))
            .collect();
        println!("| node | {} |", heads.join(" | "));
        println!("|---|{}", "---:|".repeat(heads.len()));
        for (node, run) in [("A, peer connected", mesh), ("solo", solo)] {
            println!(
                "| {node} | {} |",
                rates(&segment_rates(&run.segments)).replace(", ", " | ")
            );
        }
    }
    println!("\nB ended with all {entries} entries, identical to A");

    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"));
    std::fs::create_dir_all(&target).expect("the target directory");
    let path = target.join("mesh-report.json");
    std::fs::write(
        &path,
        serde_json::to_string_pretty(&json_rows).expect("the report serializes"),
    )
    .expect("write the report");
    println!("written to {}", path.display());
}
