//! Hostile input never breaks a node: the proptest equivalent of the cargo-fuzz targets in
//! fuzz/, run by the normal `cargo test`. Each surface's property lives in fuzz/surfaces.rs,
//! shared with the fuzz targets; here each one gets arbitrary bytes and mutations (flipped
//! bytes, cuts, splices, insertions) of valid seeds: frames and bundles from a real sync
//! round, Bloom filters, and the examples of shared/spec/formats.md.
//!
//! The same seeds are the fuzz targets' committed corpus (fuzz/corpus/<target>/), written by
//! `cargo test --release --test hostile -- --ignored write_seed_corpus`; every file there,
//! crash reproducers included, is also replayed here.
//!
//! `PROPTEST_CASES` sets the case count of every property (default 256 for the pure
//! decoders, 48 for the API and the SQLite import, which write to a replica).

#[path = "../fuzz/surfaces.rs"]
mod surfaces;

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::LazyLock;

use growable_bloom_filter::GrowableBloom;
use meshd::model::{DocId, Scope};
use meshd::replica::{Replica, SkillWrite};
use meshd::sync::harness::{Link, Reliable, Wire};
use meshd::sync::{Access, Bundle, Config, Message, Session, MAX_BUNDLE_RAW};
use proptest::prelude::*;
use rusqlite::types::Value as Sql;
use serde_json::json;
use surfaces::{Api, Store, StoreFile};

const DEFAULT_CASES: u32 = 256;
const DEFAULT_STORE_CASES: u32 = 48;

/// The fuzz targets, each with its named seeds.
type Corpus = BTreeMap<&'static str, Vec<(String, Vec<u8>)>>;

static SEEDS: LazyLock<Corpus> = LazyLock::new(seeds);

fn seeds() -> Corpus {
    let frames = sync_frames();
    let messages: Vec<Message> = frames
        .iter()
        .map(|frame| Message::decode(frame).expect("the harness's frames decode"))
        .collect();
    let parts = || {
        messages.iter().flat_map(|message| match message {
            Message::Hello(hello) => hello.docs.iter(),
            Message::Sync(sync) => sync.docs.iter(),
            _ => [].iter(),
        })
    };
    let mut bundles = Vec::new();
    for bundle in parts().filter_map(|part| part.changes.as_ref()) {
        let (mode, compressed) = match bundle {
            Bundle::Changes(bytes) | Bundle::Piece(bytes) => (0u8, bytes),
            Bundle::Document(bytes) => (2u8, bytes),
        };
        let raw = zstd::bulk::decompress(compressed, MAX_BUNDLE_RAW).expect("bundles unpack");
        bundles.push([&[mode][..], compressed].concat());
        bundles.push([&[mode | 1][..], &raw].concat());
    }
    let mut filters: Vec<Vec<u8>> = parts()
        .filter_map(|part| Some(part.have.as_ref()?.filter.clone()))
        .collect();
    filters.extend([1, 50].map(|members| bloom_filter(members, 0.01)));
    filters.push(bloom_filter(4, 0.5));

    let mut corpus = Corpus::new();
    corpus.insert("frame", named("frame", frames));
    corpus.insert("bundle", named("bundle", bundles));
    corpus.insert("filter", named("filter", filters));
    corpus.insert("bridge", named("bridge", bridge_texts()));
    corpus.insert("api_body", named("body", api_bodies()));
    corpus.insert("store_row", named("rows", store_files()));
    corpus
}

fn named(prefix: &str, seeds: Vec<Vec<u8>>) -> Vec<(String, Vec<u8>)> {
    (seeds.into_iter().enumerate())
        .map(|(i, seed)| (format!("{prefix}-{i:02}"), seed))
        .collect()
}

/// A wire that keeps a copy of every frame.
struct Recording {
    wire: Reliable,
    frames: Rc<RefCell<Vec<Vec<u8>>>>,
}

impl Wire for Recording {
    fn send(&mut self, to: usize, frame: Vec<u8>) {
        self.frames.borrow_mut().push(frame.clone());
        self.wire.send(to, frame);
    }

    fn next(&mut self) -> Option<(usize, Vec<u8>)> {
        self.wire.next()
    }
}

/// Every frame of a first round (one side empty: a whole document travels), a round after
/// concurrent writes on both sides, and a live push.
fn sync_frames() -> Vec<Vec<u8>> {
    let dir = tempfile::tempdir().unwrap();
    let mut a = Replica::open(
        &dir.path().join("a"),
        meshd::trust::NodeKey::insecure_from_name("alpha"),
    )
    .unwrap();
    let mut b = Replica::open(
        &dir.path().join("b"),
        meshd::trust::NodeKey::insecure_from_name("beta"),
    )
    .unwrap();
    let user = Scope::User("ann".into());
    a.put_memory(
        &Scope::Mesh,
        "user.preferences",
        json!({"shortAnswers": true}),
    )
    .unwrap();
    a.put_memory(&user, "project", json!("meshd")).unwrap();
    a.put_skill(SkillWrite {
        name: "triage".into(),
        content: "# Triage rules\n1. Read the report.\n".into(),
        description: Some("How to triage".into()),
        path: None,
    })
    .unwrap();
    let frames = Rc::new(RefCell::new(Vec::new()));
    let sessions = || {
        [
            Session::new("beta", Access::full(), Config::default()),
            Session::new("alpha", Access::full(), Config::default()),
        ]
    };
    let wire = || Recording {
        wire: Reliable::default(),
        frames: frames.clone(),
    };
    Link::new(sessions(), wire())
        .round([&mut a, &mut b])
        .unwrap();

    for i in 0..3 {
        a.put_memory(&Scope::Mesh, &format!("a{i}"), json!(i))
            .unwrap();
        b.put_memory(&Scope::Mesh, &format!("b{i}"), json!([i, "x"]))
            .unwrap();
    }
    let mut link = Link::new(sessions(), wire());
    link.round([&mut a, &mut b]).unwrap();

    let mesh = DocId::Memory(Scope::Mesh);
    a.put_memory(&Scope::Mesh, "pushed", json!({"live": true}))
        .unwrap();
    let fresh = a
        .document(&mesh)
        .unwrap()
        .get_last_local_change()
        .unwrap()
        .hash();
    let _push_is_sent = link.push(0, &mut a, &mesh, &[fresh]).unwrap();
    link.settle([&mut a, &mut b]).unwrap();
    frames.take()
}

/// A filter in wire form, as a session builds one.
fn bloom_filter(members: u8, fp_rate: f64) -> Vec<u8> {
    let mut filter = GrowableBloom::new(fp_rate, usize::from(members));
    for i in 0..members {
        filter.insert([i; 32]);
    }
    postcard::to_allocvec(&filter).unwrap()
}

const MEMORY: &str = r#"{"type":"memory","scope":"mesh","key":"user.preferences","value":{"shortAnswers":true},"nodeId":"ceo","ts":1739123456}"#;
const SKILL: &str =
    r##"{"type":"skill","name":"triage","sourceNode":"ceo","content":"# Triage rules\n..."}"##;
const REQUEST: &str = r#"{"type":"mesh_request","requestId":"req-abc-1","kind":"memory","nodeId":"ceo","scope":"mesh","key":"user.preferences","ts":1739123456}"#;

/// The formats.md messages, in every shape a bridge payload takes.
fn bridge_texts() -> Vec<Vec<u8>> {
    let quoted = serde_json::to_string(&format!("[{MEMORY},{SKILL}]")).unwrap();
    [
        MEMORY.to_string(),
        SKILL.to_string(),
        REQUEST.to_string(),
        format!("[{MEMORY},{SKILL},{REQUEST}]"),
        quoted.clone(),
        format!("{MEMORY}\nnot json\n{SKILL}\n"),
        format!(r#"{{"message":{{"text":{quoted}}}}}"#),
        format!(r#"{{"content":{MEMORY}}}"#),
        format!(r#"{{"body":[{SKILL}]}}"#),
        r#"{"type":"memory","scope":"user:ann","key":"k","value":null,"nodeId":"n","ts":-1}"#
            .to_string(),
    ]
    .into_iter()
    .map(String::into_bytes)
    .chain([[format!("{MEMORY}\n").as_bytes(), b"{\"bad\":\"\xff\"}\n"].concat()])
    .collect()
}

/// `api_body` inputs: the route's index in `surfaces::API_ROUTES`, then the body.
fn api_bodies() -> Vec<Vec<u8>> {
    let bodies: [(u8, String); 9] = [
        (
            0,
            r#"{"scope":"mesh","key":"user.preferences","value":{"shortAnswers":true},"node_id":"ceo"}"#.into(),
        ),
        (0, r#"{"scope":"user:ann","key":"a/b","value":"x"}"#.into()),
        (1, r##"{"name":"triage","source_node":"ceo","content":"# Triage"}"##.into()),
        (1, r#"{"name":"remote","source_node":"ceo","path":"skills/remote.md"}"#.into()),
        (2, MEMORY.into()),
        (2, format!("[{MEMORY},{SKILL}]")),
        (3, format!(r#"{{"payload":{SKILL}}}"#)),
        (4, format!(r#"{{"message":{{"text":{}}}}}"#, serde_json::to_string(REQUEST).unwrap())),
        (5, format!(r#"{{"content":{REQUEST}}}"#)),
    ];
    (bodies.into_iter())
        .map(|(route, body)| [&[route][..], body.as_bytes()].concat())
        .collect()
}

/// `store_row` inputs, in the JSON form `StoreFile::from_json` reads.
fn store_files() -> Vec<Vec<u8>> {
    [
        json!({"loose": false,
            "memory": [["mesh", "user.preferences", "{\"shortAnswers\":true}", "ceo", 1739123456],
                       ["user:ann", "metric", "bare text", "ceo", 1739123457],
                       ["node", "k", "42", "nas", 1739123458]],
            "skills": [["triage", "ceo", "# Triage rules", null, 1739123456],
                       ["remote", "ceo", null, "skills/remote.md", 1739123456]]}),
        json!({"loose": true,
            "memory": [[null, 7, 1.5, {"blob": "id"}, "1739123456"],
                       ["mesh", "k", "v", "ceo", -1]],
            "skills": [[{"blob": "x"}, "ceo", 3, null, 1e300]]}),
    ]
    .iter()
    .map(|file| serde_json::to_vec_pretty(file).unwrap())
    .collect()
}

fn corpus_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus")
}

/// Writes the seeds as the fuzz targets' corpus. Run it after changing a seed or a format.
#[test]
#[ignore = "writes fuzz/corpus: run by hand"]
fn write_seed_corpus() {
    for (target, seeds) in SEEDS.iter() {
        let dir = corpus_dir().join(target);
        std::fs::create_dir_all(&dir).unwrap();
        for (name, seed) in seeds {
            std::fs::write(dir.join(name), seed).unwrap();
        }
    }
}

/// Every committed corpus file, crash reproducers included, still passes its property.
#[test]
fn the_committed_corpus_passes() {
    let api = Api::new();
    let store = Store::new();
    let mut files = 0;
    for target in SEEDS.keys() {
        let dir = corpus_dir().join(target);
        for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{dir:?}: {e}")) {
            let input = std::fs::read(entry.unwrap().path()).unwrap();
            run(target, &input, &api, &store);
            files += 1;
        }
    }
    assert!(files > 30, "only {files} corpus files");
}

fn run(target: &str, input: &[u8], api: &Api, store: &Store) {
    match target {
        "frame" => surfaces::frame(input),
        "bundle" => surfaces::bundle(input),
        "filter" => surfaces::filter(input),
        "bridge" => surfaces::bridge(input),
        "api_body" => surfaces::api_body(api, input),
        "store_row" => {
            if let Some(rows) = StoreFile::from_json(input) {
                surfaces::store_rows(store, &rows);
            }
        }
        other => panic!("no surface named {other}"),
    }
}

/// One change to a seed. Positions are taken modulo the length they apply to.
#[derive(Debug, Clone)]
enum Mutation {
    Flip {
        at: usize,
        mask: u8,
    },
    Truncate {
        keep: usize,
    },
    /// Bytes of another seed of the same target, in place of the tail from `at`.
    Splice {
        at: usize,
        donor: usize,
        from: usize,
    },
    Insert {
        at: usize,
        bytes: Vec<u8>,
    },
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        4 => (any::<usize>(), 1..=u8::MAX).prop_map(|(at, mask)| Mutation::Flip { at, mask }),
        1 => any::<usize>().prop_map(|keep| Mutation::Truncate { keep }),
        1 => (any::<usize>(), any::<usize>(), any::<usize>())
            .prop_map(|(at, donor, from)| Mutation::Splice { at, donor, from }),
        2 => (any::<usize>(), prop::collection::vec(any::<u8>(), 1..8))
            .prop_map(|(at, bytes)| Mutation::Insert { at, bytes }),
    ]
}

fn mutate(seed: &[u8], donors: &[(String, Vec<u8>)], mutations: &[Mutation]) -> Vec<u8> {
    let mut bytes = seed.to_vec();
    for mutation in mutations {
        let len = bytes.len();
        match mutation {
            Mutation::Flip { at, mask } if len > 0 => bytes[at % len] ^= mask,
            Mutation::Flip { .. } => {}
            Mutation::Truncate { keep } => bytes.truncate(keep % (len + 1)),
            Mutation::Splice { at, donor, from } => {
                let donor = &donors[donor % donors.len()].1;
                bytes.truncate(at % (len + 1));
                bytes.extend_from_slice(&donor[from % (donor.len() + 1)..]);
            }
            Mutation::Insert {
                at,
                bytes: inserted,
            } => {
                let at = at % (len + 1);
                bytes.splice(at..at, inserted.iter().copied());
            }
        }
    }
    bytes
}

/// Arbitrary bytes, or a seed of `target` with one to four mutations.
fn hostile(target: &'static str) -> impl Strategy<Value = Vec<u8>> {
    let seeds = &SEEDS[target];
    let mutated = (0..seeds.len(), prop::collection::vec(mutation(), 1..5))
        .prop_map(move |(seed, mutations)| mutate(&seeds[seed].1, seeds, &mutations));
    prop_oneof![
        1 => prop::collection::vec(any::<u8>(), 0..512),
        3 => mutated,
    ]
}

/// Any SQLite value, with the plausible ones (scopes, ids, JSON text, times near now) often
/// enough that rows get past the first check.
fn sql() -> impl Strategy<Value = Sql> {
    const WORDS: [&str; 10] = [
        "mesh",
        "node",
        "user:ann",
        "user:",
        "ceo",
        "k",
        "{\"a\":1}",
        "42",
        "",
        "a\u{0}b",
    ];
    prop_oneof![
        Just(Sql::Null),
        any::<i64>().prop_map(Sql::Integer),
        (0i64..4_000_000_000).prop_map(Sql::Integer),
        any::<f64>().prop_map(Sql::Real),
        prop::sample::select(&WORDS[..]).prop_map(|word| Sql::Text(word.into())),
        ".{0,16}".prop_map(Sql::Text),
        prop::collection::vec(any::<u8>(), 0..16).prop_map(Sql::Blob),
    ]
}

fn store_file() -> impl Strategy<Value = StoreFile> {
    let row = || [sql(), sql(), sql(), sql(), sql()];
    (
        any::<bool>(),
        prop::collection::vec(row(), 0..6),
        prop::collection::vec(row(), 0..6),
    )
        .prop_map(|(loose, memory, skills)| StoreFile {
            loose,
            memory,
            skills,
        })
}

fn config(default: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|cases| cases.parse().ok())
        .unwrap_or(default);
    ProptestConfig::with_cases(cases)
}

proptest! {
    #![proptest_config(config(DEFAULT_CASES))]

    #[test]
    fn frames_decode_or_are_refused(bytes in hostile("frame")) {
        surfaces::frame(&bytes);
    }

    #[test]
    fn bundles_unpack_or_are_refused(bytes in hostile("bundle")) {
        surfaces::bundle(&bytes);
    }

    #[test]
    fn filters_answer_or_are_refused(bytes in hostile("filter")) {
        surfaces::filter(&bytes);
    }

    #[test]
    fn bridge_input_becomes_items(bytes in hostile("bridge")) {
        surfaces::bridge(&bytes);
    }

    #[test]
    fn bridge_text_becomes_items(text in ".{0,256}") {
        surfaces::bridge_text(&text);
    }
}

proptest! {
    #![proptest_config(config(DEFAULT_STORE_CASES))]

    #[test]
    fn api_bodies_get_a_client_answer(bodies in prop::collection::vec(hostile("api_body"), 1..8)) {
        // One replica for the batch, as a node serves request after request.
        let api = Api::new();
        for body in &bodies {
            surfaces::api_body(&api, body);
        }
    }

    #[test]
    fn store_rows_import_and_are_counted(files in prop::collection::vec(store_file(), 1..4)) {
        let store = Store::new();
        for file in &files {
            surfaces::store_rows(&store, file);
        }
    }

    #[test]
    fn mutated_store_files_import(bytes in hostile("store_row")) {
        if let Some(rows) = StoreFile::from_json(&bytes) {
            surfaces::store_rows(&Store::new(), &rows);
        }
    }
}
