//! Single durable puts through the HTTP API (issue 14): one real `meshd run` on loopback,
//! `PUT /mesh/memory` with one client and then with many concurrent clients, each request a
//! new key and acknowledged only once durable. The baseline, measured in the same run on the
//! same file system: SQLite in WAL mode with `synchronous=FULL`, one transaction per write,
//! the durable write a gateway would otherwise make.
//!
//! Two floors are measured in the same run, so that the ratios can be read: the API's round
//! trip for a request that writes nothing (`GET /health`), and a bare durable append (a
//! `pwrite` and an `fdatasync` of 200 bytes in a file allocated ahead). With one client, no
//! server that answers over HTTP only once a write is synced can beat one round trip plus
//! one sync per write: that sum is the one-client floor.
//!
//! The whole measurement runs `MESHD_BENCH_RUNS` times (default 3), each on a fresh node;
//! the table gives the medians, each ratio taken within its run first.
//!
//! Prints a Markdown table; times are reported, never asserted. Correctness is asserted: every
//! acknowledged key is then read back from the node with its value.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

#[path = "../tests/support/mod.rs"]
mod support;
use support::TestNode;

/// Puts per run unless `MESHD_BENCH_PUTS` says otherwise; the concurrent run splits them
/// between its clients.
const PUTS: usize = 3000;

fn puts() -> usize {
    std::env::var("MESHD_BENCH_PUTS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(PUTS)
}
/// Puts before any run, so that links, caches and the page cache are warm.
const WARMUP: usize = 100;
/// Clients of the concurrent run.
const CLIENTS: usize = 16;

const TARGET_ONE_CLIENT: f64 = 1.0;
const TARGET_CONCURRENT: f64 = 4.0;
/// The targets the bench is read against since the floors were measured
/// (docs/benchmarks.md, Puts, "Floors"): one client against the one-client floor, 16
/// clients against SQLite.
const REVISED_ONE_CLIENT_OF_FLOOR: f64 = 0.8;
const REVISED_CONCURRENT: f64 = 1.0;

/// One keep-alive HTTP/1.1 connection to the API.
struct Client {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Client {
    fn connect(addr: &str) -> Client {
        let stream = TcpStream::connect(addr).expect("connect to the API");
        stream.set_nodelay(true).unwrap();
        Client {
            reader: BufReader::new(stream.try_clone().unwrap()),
            writer: stream,
        }
    }

    /// Sends one request and returns the status and the body.
    fn send(&mut self, method: &str, path: &str, body: &str) -> (u16, String) {
        write!(
            self.writer,
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut status_line = String::new();
        self.reader.read_line(&mut status_line).unwrap();
        let status = status_line
            .split(' ')
            .nth(1)
            .and_then(|code| code.parse().ok())
            .unwrap_or_else(|| panic!("not an HTTP answer: {status_line:?}"));
        let mut length = 0;
        loop {
            let mut header = String::new();
            self.reader.read_line(&mut header).unwrap();
            let header = header.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse().unwrap();
                }
            }
        }
        let mut body = vec![0; length];
        self.reader.read_exact(&mut body).unwrap();
        (status, String::from_utf8(body).unwrap())
    }

    fn put(&mut self, key: &str, value: &Value) {
        let body = json!({"scope": "mesh", "key": key, "value": value}).to_string();
        let (status, answer) = self.send("PUT", "/mesh/memory", &body);
        assert_eq!(status, 200, "put {key}: {answer}");
    }
}

fn value_of(key: &str) -> Value {
    json!(format!("the value written under {key}"))
}

/// Requests per second from `clients` threads, each on a connection of its own, sharing
/// `puts()` requests; `request` makes request `n` of client `client`.
fn clients_run(
    addr: &str,
    clients: usize,
    request: impl Fn(&mut Client, usize, usize) + Sync,
) -> f64 {
    let per_client = puts() / clients;
    let started = Instant::now();
    std::thread::scope(|scope| {
        for client in 0..clients {
            let request = &request;
            scope.spawn(move || {
                let mut connection = Client::connect(addr);
                for n in 0..per_client {
                    request(&mut connection, client, n);
                }
            });
        }
    });
    (per_client * clients) as f64 / started.elapsed().as_secs_f64()
}

/// Puts `PUTS` keys named `<run>-<client>-<n>` from `clients` threads; returns puts per second.
fn api_run(addr: &str, run: &str, clients: usize) -> f64 {
    clients_run(addr, clients, |connection, client, n| {
        let key = format!("{run}-{client}-{n}");
        connection.put(&key, &value_of(&key));
    })
}

/// Reads every key of a run back and checks its value.
fn assert_stored(addr: &str, run: &str, clients: usize) {
    let mut connection = Client::connect(addr);
    let (status, body) = connection.send("GET", "/mesh/memory?scope=mesh", "");
    assert_eq!(status, 200, "{body}");
    let rows: Vec<Value> = serde_json::from_str(&body).unwrap();
    let stored: std::collections::HashMap<&str, &Value> = rows
        .iter()
        .map(|row| (row["key"].as_str().unwrap(), &row["value"]))
        .collect();
    for client in 0..clients {
        for n in 0..puts() / clients {
            let key = format!("{run}-{client}-{n}");
            assert_eq!(stored.get(key.as_str()), Some(&&value_of(&key)), "{key}");
        }
    }
}

/// Round trips per second of `GET /health` from `clients` threads: the API's cost for a
/// request that writes nothing.
fn round_trip_run(addr: &str, clients: usize) -> f64 {
    clients_run(addr, clients, |connection, _, _| {
        let (status, body) = connection.send("GET", "/health", "");
        assert_eq!(status, 200, "{body}");
    })
}

/// Durable appends per second with nothing else: 200 bytes written into a file allocated
/// ahead, then `fdatasync`, on the same file system.
fn sync_run(dir: &Path) -> f64 {
    use std::os::unix::fs::FileExt;
    const RECORD: usize = 200;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(dir.join("baseline.sync"))
        .unwrap();
    file.write_all_at(&vec![0; puts() * RECORD], 0).unwrap();
    file.sync_all().unwrap();
    let record = [b'x'; RECORD];
    let started = Instant::now();
    for n in 0..puts() {
        file.write_all_at(&record, (n * RECORD) as u64).unwrap();
        file.sync_data().unwrap();
    }
    puts() as f64 / started.elapsed().as_secs_f64()
}

/// SQLite's durable single writes on the same file system: puts per second.
fn sqlite_run(dir: &Path) -> f64 {
    let db = rusqlite::Connection::open(dir.join("baseline.sqlite")).unwrap();
    db.execute_batch(
        "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL;
         CREATE TABLE memory (key TEXT PRIMARY KEY, value TEXT NOT NULL);",
    )
    .unwrap();
    let mut insert = db
        .prepare("INSERT INTO memory (key, value) VALUES (?1, ?2)")
        .unwrap();
    for n in 0..WARMUP {
        insert.execute((format!("warm-{n}"), "x")).unwrap();
    }
    let started = Instant::now();
    for n in 0..puts() {
        let key = format!("k-{n}");
        insert.execute((&key, value_of(&key).to_string())).unwrap();
    }
    puts() as f64 / started.elapsed().as_secs_f64()
}

fn wait_for_api(addr: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(addr).is_err() {
        assert!(
            Instant::now() < deadline,
            "the API never listened on {addr}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// What one run measured, each figure in writes (or round trips) per second.
struct Figures {
    sqlite: f64,
    sync: f64,
    round_trip_one: f64,
    round_trip_many: f64,
    one: f64,
    many: f64,
}

impl Figures {
    /// One round trip, then one sync, per write.
    fn floor_one(&self) -> f64 {
        1.0 / (1.0 / self.round_trip_one + 1.0 / self.sync)
    }
}

/// Runs of the whole measurement unless `MESHD_BENCH_RUNS` says otherwise: on this shared disk
/// one run's 16-client figure moved by a third against the next, so the verdicts read the
/// median of the runs' ratios.
const RUNS: usize = 3;

fn runs() -> usize {
    std::env::var("MESHD_BENCH_RUNS")
        .ok()
        .and_then(|n| n.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(RUNS)
}

/// One run on a fresh node: the baselines, the floors, then the API with one client and with
/// `CLIENTS`.
fn measure() -> Figures {
    let (node, addr) = TestNode::init_with_api("puts");
    let daemon = node.start();
    wait_for_api(&addr);
    let mut warm = Client::connect(&addr);
    for n in 0..WARMUP {
        warm.put(&format!("warm-{n}"), &json!(n));
    }
    let sqlite = sqlite_run(node.path());
    let sync = sync_run(node.path());
    let round_trip_one = round_trip_run(&addr, 1);
    let round_trip_many = round_trip_run(&addr, CLIENTS);
    let one = api_run(&addr, "one", 1);
    assert_stored(&addr, "one", 1);
    let many = api_run(&addr, "many", CLIENTS);
    assert_stored(&addr, "many", CLIENTS);
    drop(daemon);
    Figures {
        sqlite,
        sync,
        round_trip_one,
        round_trip_many,
        one,
        many,
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    match values.len() % 2 {
        0 => (values[mid - 1] + values[mid]) / 2.0,
        _ => values[mid],
    }
}

fn main() {
    let runs: Vec<Figures> = (1..=runs())
        .map(|run| {
            let figures = measure();
            eprintln!(
                "run {run}: SQLite {:.0}/s, 1 client {:.0}/s ({:.2}× its floor), {CLIENTS} clients {:.0}/s ({:.2}× SQLite)",
                figures.sqlite,
                figures.one,
                figures.one / figures.floor_one(),
                figures.many,
                figures.many / figures.sqlite,
            );
            figures
        })
        .collect();
    let of = |figure: fn(&Figures) -> f64| median(runs.iter().map(figure).collect());
    // Each ratio is taken within its run (the same disk, the same minute), then the median.
    let ratio = |figure: fn(&Figures) -> f64, base: fn(&Figures) -> f64| {
        median(runs.iter().map(|run| figure(run) / base(run)).collect())
    };
    let sqlite = |f: &Figures| f.sqlite;

    println!(
        "Medians of {} runs, each on a fresh node; every ratio is taken within its run.",
        runs.len()
    );
    println!();
    println!("| single durable puts | per s | vs SQLite | target |");
    println!("|---|---:|---:|---|");
    println!(
        "| SQLite, WAL, synchronous=FULL, one transaction per write (baseline) | {:.0} | 1.00× | |",
        of(sqlite)
    );
    floor(
        "bare durable append: pwrite + fdatasync of 200 B",
        of(|f| f.sync),
        ratio(|f| f.sync, sqlite),
    );
    floor(
        "API round trip writing nothing (GET /health), 1 client",
        of(|f| f.round_trip_one),
        ratio(|f| f.round_trip_one, sqlite),
    );
    floor(
        &format!("API round trip writing nothing, {CLIENTS} clients"),
        of(|f| f.round_trip_many),
        ratio(|f| f.round_trip_many, sqlite),
    );
    floor(
        "one-client floor: one round trip + one sync per write",
        of(Figures::floor_one),
        ratio(Figures::floor_one, sqlite),
    );
    row(
        "meshd API, 1 client",
        of(|f| f.one),
        ratio(|f| f.one, sqlite),
        TARGET_ONE_CLIENT,
    );
    row(
        &format!("meshd API, {CLIENTS} clients"),
        of(|f| f.many),
        ratio(|f| f.many, sqlite),
        TARGET_CONCURRENT,
    );
    let one_of_floor = ratio(|f| f.one, Figures::floor_one);
    let many_of_sqlite = ratio(|f| f.many, sqlite);
    println!();
    println!(
        "1 client: {one_of_floor:.2}× the one-client floor; {CLIENTS} clients: {:.2}× the round trip writing nothing",
        ratio(|f| f.many, |f| f.round_trip_many)
    );
    println!(
        "Revised targets: 1 client ≥ {REVISED_ONE_CLIENT_OF_FLOOR}× the one-client floor: {}; {CLIENTS} clients ≥ {REVISED_CONCURRENT}× SQLite: {}",
        verdict(one_of_floor, REVISED_ONE_CLIENT_OF_FLOOR),
        verdict(many_of_sqlite, REVISED_CONCURRENT),
    );
}

fn verdict(ratio: f64, target: f64) -> &'static str {
    if ratio >= target {
        "met"
    } else {
        "NOT met"
    }
}

fn floor(what: &str, rate: f64, of_sqlite: f64) {
    println!("| {what} | {rate:.0} | {of_sqlite:.2}× | floor |");
}

fn row(what: &str, rate: f64, of_sqlite: f64, target: f64) {
    let verdict = verdict(of_sqlite, target);
    println!("| {what} | {rate:.0} | {of_sqlite:.2}× | ≥ {target}×: {verdict} |");
}
