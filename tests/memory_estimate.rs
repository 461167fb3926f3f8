//! The memory budget (`[store] memory_budget_mb`) is only as good as the estimate of what a
//! loaded document takes. This measures it: a counting allocator records what loading one
//! document keeps on the heap, for documents of several shapes, and the estimate the replica
//! reports (`Replica::loaded`) must neither fall short of it (the budget would not bound the
//! memory) nor exceed it by much (the budget would evict documents it could hold).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicIsize, Ordering};

use meshd::model::{DocId, Scope};
use meshd::replica::{Replica, SkillWrite};
use meshd::trust::NodeKey;
use serde_json::json;

/// Counts the bytes held by allocations made on a thread while it counts. sled's own threads
/// allocate meanwhile; they are not counted.
struct Counting;

static HELD: AtomicIsize = AtomicIsize::new(0);

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
}

fn counting() -> bool {
    COUNTING.try_with(Cell::get).unwrap_or(false)
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if counting() {
            HELD.fetch_add(layout.size() as isize, Ordering::Relaxed);
        }
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if counting() {
            HELD.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        }
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if counting() {
            HELD.fetch_add(
                new_size as isize - layout.size() as isize,
                Ordering::Relaxed,
            );
        }
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// What loading `doc` keeps on the heap, and what the replica estimates for it.
fn measured_and_estimated(replica: &mut Replica, doc: &DocId) -> (i64, u64) {
    // Read once first, so that sled's cache already holds the pages the load reads.
    replica.verify_stored(doc).expect("the document loads");
    assert_eq!(replica.loaded().0, 0, "nothing loaded before");
    COUNTING.with(|c| c.set(true));
    let before = HELD.load(Ordering::Relaxed);
    assert!(replica.document(doc).is_some(), "the document is there");
    let after = HELD.load(Ordering::Relaxed);
    COUNTING.with(|c| c.set(false));
    let (loaded, estimated) = replica.loaded();
    assert_eq!(loaded, 1);
    ((after - before) as i64, estimated)
}

/// A word generator that needs no crate: values read like text, neither repeated nor random
/// bytes (which the secret filter would refuse as a key).
struct Words(u64);

impl Words {
    fn next(&mut self) -> String {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        const SYLLABLES: [&str; 16] = [
            "ka", "lo", "mi", "ne", "ru", "sa", "to", "vi", "po", "de", "fu", "ga", "hi", "je",
            "zo", "be",
        ];
        let syllables = 1 + (self.0 % 4) as usize;
        (0..syllables)
            .map(|i| SYLLABLES[((self.0 >> (4 * i + 8)) & 15) as usize])
            .collect()
    }

    fn sentence(&mut self, words: usize) -> String {
        (0..words)
            .map(|_| self.next())
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// Opens the store, waiting out the file lock a replica dropped just before may still hold
/// (sled's background flusher lets go of it a moment later; seen under a loaded machine).
fn open(dir: &tempfile::TempDir) -> Replica {
    meshd::replica::wait_for_store(std::time::Duration::from_secs(10), || {
        Replica::open(
            &dir.path().join("store"),
            NodeKey::insecure_from_name("estimate"),
        )
    })
    .expect("the store opens")
}

/// Writes a document with `write`, compacts it as the daemon does, and opens the store again
/// with nothing loaded.
fn stored(write: impl FnOnce(&mut Replica), doc: &DocId) -> (tempfile::TempDir, Replica) {
    let dir = tempfile::tempdir().unwrap();
    let mut replica = open(&dir);
    write(&mut replica);
    replica.compact(doc).expect("the document compacts");
    replica.flush().expect("the store flushes");
    drop(replica);
    let replica = open(&dir);
    (dir, replica)
}

fn memory_scope(keys: usize, value: impl Fn(usize) -> String) -> (tempfile::TempDir, Replica) {
    let scope = Scope::User("estimate".into());
    stored(
        |replica| {
            replica
                .batch(|batch| {
                    for i in 0..keys {
                        batch.put_memory(&scope, &format!("fact-{i:06}"), json!(value(i)))?;
                    }
                    Ok(())
                })
                .expect("the writes are accepted");
        },
        &DocId::Memory(scope.clone()),
    )
}

/// The estimate for one shape, as a line that says whether it is off.
fn check(shape: &str, (_dir, mut replica): (tempfile::TempDir, Replica), doc: DocId) -> String {
    let (measured, estimated) = measured_and_estimated(&mut replica, &doc);
    let ratio = estimated as f64 / measured as f64;
    let verdict = if ratio < 0.9 {
        "FALLS SHORT"
    } else if ratio > 3.0 {
        "OVER 3×"
    } else {
        "ok"
    };
    format!(
        "{verdict}: {shape}: loading kept {measured} bytes, estimated {estimated} ({ratio:.2}×)"
    )
}

#[test]
fn the_memory_estimate_of_a_loaded_document_is_close_to_what_it_keeps() {
    let scope = DocId::Memory(Scope::User("estimate".into()));
    let mut lines = Vec::new();
    lines.push(check(
        "4000 keys of repetitive text",
        memory_scope(4000, |i| {
            format!(
                "the user prefers option {} for project {} on weekdays",
                i % 97,
                i % 1013
            )
        }),
        scope.clone(),
    ));
    let mut words = Words(0x9e37_79b9_7f4a_7c15);
    let sentences: Vec<String> = (0..4000).map(|_| words.sentence(30)).collect();
    lines.push(check(
        "4000 keys of 30 varied words",
        memory_scope(4000, |i| sentences[i].clone()),
        scope.clone(),
    ));
    lines.push(check(
        "20 keys",
        memory_scope(20, |i| format!("a short fact {i}")),
        scope.clone(),
    ));
    // Not among the shapes the estimate was fitted on: a history of overwritten versions.
    let short: Vec<String> = (0..6000).map(|_| words.sentence(10)).collect();
    lines.push(check(
        "2000 keys written 3 times, 10 varied words",
        stored(
            |replica| {
                let scope = Scope::User("estimate".into());
                for round in 0..3 {
                    replica
                        .batch(|batch| {
                            for i in 0..2000 {
                                let value = json!(short[round * 2000 + i]);
                                batch.put_memory(&scope, &format!("fact-{i:06}"), value)?;
                            }
                            Ok(())
                        })
                        .expect("the writes are accepted");
                }
            },
            &scope,
        ),
        scope.clone(),
    ));
    let texts: Vec<String> = (0..8).map(|_| words.sentence(4000)).collect();
    lines.push(check(
        "8 skills of 4000 words",
        stored(
            |replica| {
                for (i, text) in texts.iter().enumerate() {
                    replica
                        .put_skill(SkillWrite {
                            name: format!("skill-{i}"),
                            content: text.clone(),
                            description: Some("a procedure".into()),
                            path: None,
                        })
                        .expect("the skill is accepted");
                }
            },
            &DocId::Skills,
        ),
        DocId::Skills,
    ));
    let report = lines.join("\n");
    eprintln!("{report}");
    assert!(
        lines.iter().all(|line| line.starts_with("ok")),
        "the estimate is off (it must be between 0.9× and 3× what loading kept):\n{report}"
    );
}
