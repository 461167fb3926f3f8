use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use serde_json::json;

use super::*;

fn fixed_clock(millis: Arc<AtomicU64>) -> WallClock {
    Box::new(move || millis.load(Ordering::SeqCst))
}

/// Opens the store, waiting out the file lock a replica dropped just before may still hold:
/// sled's background flusher lets go of it a moment later.
fn open(dir: &Path, node: &str) -> Replica {
    wait_for_store(Duration::from_secs(10), || {
        Replica::open(dir, crate::trust::NodeKey::insecure_from_name(node))
    })
    .unwrap()
}

fn skill(name: &str, content: &str) -> SkillWrite {
    SkillWrite {
        name: name.into(),
        content: content.into(),
        ..SkillWrite::default()
    }
}

/// Exchanges every change both ways, as a finished sync would.
fn merge(a: &mut Replica, b: &mut Replica) {
    for _ in 0..2 {
        for doc in a.doc_ids() {
            let changes = a.document(&doc).unwrap().get_changes(&[]);
            let signatures = a.signatures(&doc).unwrap();
            b.apply_changes(&doc, changes, signatures).unwrap();
        }
        std::mem::swap(a, b);
    }
}

#[test]
fn put_get_list_delete() {
    let dir = tempfile::tempdir().unwrap();
    let mut r = open(dir.path(), "n1");
    r.put_memory(&Scope::Mesh, "a", json!(1)).unwrap();
    r.put_memory(&Scope::User("bob".into()), "b", json!({"x": [1, 2]}))
        .unwrap();
    assert_eq!(
        r.get_memory(&Scope::Mesh, "a").unwrap().unwrap().value,
        json!(1)
    );
    assert_eq!(r.list_memory(None).unwrap().len(), 2);
    assert_eq!(r.list_memory(Some(&Scope::Mesh)).unwrap().len(), 1);
    assert!(r.delete_memory(&Scope::Mesh, "a").unwrap());
    assert!(!r.delete_memory(&Scope::Mesh, "a").unwrap());
    assert!(r.get_memory(&Scope::Mesh, "a").unwrap().is_none());
    let (tombstone, _) = r.memory_versions(&Scope::Mesh, "a").unwrap().unwrap();
    assert!(tombstone.deleted);
}

#[test]
fn reopen_gives_identical_state() {
    let dir = tempfile::tempdir().unwrap();
    let (memory, skills, heads) = {
        let mut r = open(dir.path(), "n1");
        for i in 0..300 {
            r.put_memory(&Scope::Mesh, &format!("k{i}"), json!(i))
                .unwrap();
        }
        r.delete_memory(&Scope::Mesh, "k7").unwrap();
        r.put_skill(skill("triage", "# Triage\nfirst")).unwrap();
        r.put_skill(skill("triage", "# Triage\nsecond")).unwrap();
        let heads: Vec<_> = r
            .doc_ids()
            .iter()
            .map(|d| r.document(d).unwrap().get_heads())
            .collect();
        (
            r.list_memory(None).unwrap(),
            r.list_skills().unwrap(),
            heads,
        )
    };
    let mut r = open(dir.path(), "n1");
    assert_eq!(r.list_memory(None).unwrap(), memory);
    assert_eq!(r.list_skills().unwrap(), skills);
    let reopened: Vec<_> = r
        .doc_ids()
        .iter()
        .map(|d| r.document(d).unwrap().get_heads())
        .collect();
    assert_eq!(reopened, heads);
    assert_eq!(memory.len(), 299);
}

#[test]
fn compaction_keeps_state_and_shrinks_the_change_log() {
    let dir = tempfile::tempdir().unwrap();
    let before = {
        let mut r = open(dir.path(), "n1");
        r.batch(|b| {
            for i in 0..1000 {
                b.put_memory(&Scope::Mesh, &format!("k{i}"), json!(i))?;
            }
            Ok(())
        })
        .unwrap();
        r.compact(&DocId::Memory(Scope::Mesh)).unwrap();
        assert_eq!(
            r.docs[&DocId::Memory(Scope::Mesh)].changes_since_snapshot,
            0
        );
        r.put_memory(&Scope::Mesh, "after", json!(true)).unwrap();
        r.list_memory(None).unwrap()
    };
    let r = open(dir.path(), "n1");
    assert_eq!(r.list_memory(None).unwrap(), before);
    assert_eq!(
        r.docs[&DocId::Memory(Scope::Mesh)].changes_since_snapshot,
        1
    );
}

#[test]
fn stamps_increase_per_key_even_when_the_clock_goes_back() {
    let dir = tempfile::tempdir().unwrap();
    let now = Arc::new(AtomicU64::new(10_000));
    let mut r = Replica::open_with_clock(
        dir.path(),
        crate::trust::NodeKey::insecure_from_name("own"),
        fixed_clock(now.clone()),
    )
    .unwrap();
    let first = r.put_memory(&Scope::Mesh, "k", json!(1)).unwrap();
    now.store(5_000, Ordering::SeqCst);
    let second = r.put_memory(&Scope::Mesh, "k", json!(2)).unwrap();
    assert!(second.updated_at > first.updated_at);
}

#[test]
fn concurrent_writes_resolve_to_the_newest_everywhere_and_keep_the_loser_visible() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut a = Replica::open_with_clock(
        da.path(),
        crate::trust::NodeKey::insecure_from_name("a"),
        fixed_clock(Arc::new(2_000.into())),
    )
    .unwrap();
    let mut b = Replica::open_with_clock(
        db.path(),
        crate::trust::NodeKey::insecure_from_name("b"),
        fixed_clock(Arc::new(1_000.into())),
    )
    .unwrap();
    a.put_memory(&Scope::Mesh, "tz", json!("UTC")).unwrap();
    b.put_memory(&Scope::Mesh, "tz", json!("CET")).unwrap();
    merge(&mut a, &mut b);
    for r in [&a, &b] {
        let (winner, losers) = r.memory_versions(&Scope::Mesh, "tz").unwrap().unwrap();
        assert_eq!(winner.value, json!("UTC"));
        assert_eq!(losers.len(), 1);
        assert_eq!(losers[0].value, json!("CET"));
    }
    // A later write on the losing node supersedes both.
    b.put_memory(&Scope::Mesh, "tz", json!("JST")).unwrap();
    merge(&mut a, &mut b);
    let (winner, losers) = a.memory_versions(&Scope::Mesh, "tz").unwrap().unwrap();
    assert_eq!(winner.value, json!("JST"));
    assert!(losers.is_empty());
}

#[test]
fn same_stamp_ties_break_by_node_id() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut a = Replica::open_with_clock(
        da.path(),
        crate::trust::NodeKey::insecure_from_name("a"),
        fixed_clock(Arc::new(1_000.into())),
    )
    .unwrap();
    let mut b = Replica::open_with_clock(
        db.path(),
        crate::trust::NodeKey::insecure_from_name("b"),
        fixed_clock(Arc::new(1_000.into())),
    )
    .unwrap();
    a.put_memory(&Scope::Mesh, "k", json!("from a")).unwrap();
    b.put_memory(&Scope::Mesh, "k", json!("from b")).unwrap();
    merge(&mut a, &mut b);
    assert_eq!(
        a.get_memory(&Scope::Mesh, "k").unwrap().unwrap().value,
        json!("from b")
    );
    assert_eq!(
        b.get_memory(&Scope::Mesh, "k").unwrap().unwrap().value,
        json!("from b")
    );
}

#[test]
fn concurrent_skill_edits_merge_as_text() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut a = open(da.path(), "a");
    let mut b = open(db.path(), "b");
    a.put_skill(skill("triage", "line one\nline two\n"))
        .unwrap();
    merge(&mut a, &mut b);
    a.put_skill(skill("triage", "line one (a)\nline two\n"))
        .unwrap();
    b.put_skill(skill("triage", "line one\nline two\nline three (b)\n"))
        .unwrap();
    merge(&mut a, &mut b);
    let merged = "line one (a)\nline two\nline three (b)\n";
    assert_eq!(a.get_skill("triage").unwrap().unwrap().content, merged);
    assert_eq!(b.get_skill("triage").unwrap().unwrap().content, merged);
}

#[test]
fn imports_only_overwrite_older_versions_and_are_idempotent() {
    let dir = tempfile::tempdir().unwrap();
    let mut r = open(dir.path(), "n1");
    let entry = |ts: u64, value: &str| MemoryEntry {
        scope: Scope::Mesh,
        key: "k".into(),
        value: json!(value),
        node_id: "ceo".into(),
        updated_at: Stamp::from_unix_seconds(ts),
        deleted: false,
        author: None,
        claim: None,
    };
    assert!(r.import_memory(entry(100, "new"), Via::Bridge).unwrap());
    let heads = r.document(&DocId::Memory(Scope::Mesh)).unwrap().get_heads();
    assert!(!r.import_memory(entry(100, "new"), Via::Bridge).unwrap());
    assert!(!r.import_memory(entry(50, "old"), Via::Bridge).unwrap());
    assert_eq!(
        r.document(&DocId::Memory(Scope::Mesh)).unwrap().get_heads(),
        heads
    );
    assert_eq!(
        r.get_memory(&Scope::Mesh, "k").unwrap().unwrap().value,
        json!("new")
    );
}

#[test]
fn invalid_writes_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut r = open(dir.path(), "n1");
    r.put_memory(&Scope::Mesh, "ok", json!(1)).unwrap();
    let heads = r.document(&DocId::Memory(Scope::Mesh)).unwrap().get_heads();
    assert!(r.put_memory(&Scope::Mesh, "", json!(1)).is_err());
    assert!(r
        .put_memory(&Scope::Mesh, &"k".repeat(600), json!(1))
        .is_err());
    let huge = json!("x".repeat(validate::MAX_VALUE_BYTES + 1));
    assert!(r.put_memory(&Scope::Mesh, "big", huge).is_err());
    assert!(r.put_skill(skill("", "x")).is_err());
    assert_eq!(
        r.document(&DocId::Memory(Scope::Mesh)).unwrap().get_heads(),
        heads
    );
    assert!(r.document(&DocId::Skills).is_none());
}

#[test]
fn exported_documents_load_in_plain_automerge() {
    let dir = tempfile::tempdir().unwrap();
    let mut r = open(dir.path(), "n1");
    r.put_memory(&Scope::Mesh, "k", json!({"a": 1})).unwrap();
    let bytes = r.export(&DocId::Memory(Scope::Mesh)).unwrap().unwrap();
    let doc = Automerge::load(&bytes).unwrap();
    let (value, _) = doc.get(automerge::ROOT, "k").unwrap().unwrap();
    let stored: serde_json::Value = serde_json::from_str(value.as_str().unwrap()).unwrap();
    assert_eq!(stored["value"], json!({"a": 1}));
}

/// A replica whose wall clock reads `now` (Unix milliseconds).
fn at(dir: &Path, now: u64) -> Replica {
    Replica::open_with_clock(
        dir,
        crate::trust::NodeKey::insecure_from_name("own"),
        fixed_clock(Arc::new(now.into())),
    )
    .unwrap()
}

fn imported(key: &str, millis: u64) -> MemoryEntry {
    MemoryEntry {
        scope: Scope::Mesh,
        key: key.into(),
        value: json!("v"),
        node_id: "ceo".into(),
        updated_at: Stamp::from_unix_millis(millis),
        deleted: false,
        author: None,
        claim: None,
    }
}

const NOW: u64 = 1_764_600_000_000;

#[test]
fn an_import_stamped_too_far_ahead_is_refused_with_its_reason() {
    let dir = tempfile::tempdir().unwrap();
    let mut r = at(dir.path(), NOW);
    let year_10000 = 253_402_300_800_000;
    let refused = r
        .import_memory(imported("far", year_10000), Via::Bridge)
        .unwrap_err();
    assert!(
        matches!(
            refused,
            ReplicaError::Invalid(ValidationError::FutureStamp(_))
        ),
        "{refused}"
    );
    assert!(refused.to_string().contains("ahead of this node's clock"));
    assert!(r.get_memory(&Scope::Mesh, "far").unwrap().is_none());
    // Within the bound is fine, and so is the past.
    assert!(r
        .import_memory(imported("near", NOW + 59_000), Via::Bridge)
        .unwrap());
    assert!(r
        .import_memory(imported("old", 1_000), Via::Bridge)
        .unwrap());
}

#[test]
fn one_accepted_stamp_from_ahead_does_not_drag_the_clock_past_the_bound() {
    let dir = tempfile::tempdir().unwrap();
    let mut r = at(dir.path(), NOW);
    r.set_clock_bound(ClockBound {
        max_offset_ms: 10_000,
    });
    assert!(r
        .import_memory(imported("ahead", NOW + 9_000), Via::Bridge)
        .unwrap());
    let own = r.put_memory(&Scope::Mesh, "mine", json!(1)).unwrap();
    assert!(own.updated_at.unix_millis() <= NOW + 10_000, "{own:?}");
    // The key that carries the stamp from ahead still gets a version that replaces it.
    let replaced = r.put_memory(&Scope::Mesh, "ahead", json!(2)).unwrap();
    assert_eq!(
        r.get_memory(&Scope::Mesh, "ahead").unwrap().unwrap().value,
        json!(2)
    );
    assert!(replaced.updated_at > Stamp::from_unix_millis(NOW + 9_000));
}

#[test]
fn a_version_stamped_at_the_end_of_time_is_refused_not_wrapped() {
    let dir = tempfile::tempdir().unwrap();
    let mut r = at(dir.path(), u64::MAX);
    r.set_clock_bound(ClockBound {
        max_offset_ms: u64::MAX,
    });
    let last = MemoryEntry {
        updated_at: Stamp(u64::MAX),
        ..imported("k", 0)
    };
    assert!(r.import_memory(last, Via::Bridge).unwrap());
    let error = r.put_memory(&Scope::Mesh, "k", json!(1)).unwrap_err();
    assert!(matches!(
        error,
        ReplicaError::Invalid(ValidationError::ClockExhausted)
    ));
}

#[test]
fn every_write_path_stamps_with_the_one_clock() {
    let dir = tempfile::tempdir().unwrap();
    let mut r = at(dir.path(), NOW);
    let by_cli = r
        .put_memory(&Scope::Mesh, "a", json!(1))
        .unwrap()
        .updated_at;
    let by_api = r.stamp_after(None).unwrap();
    assert!(
        by_api > by_cli,
        "the API's stamp follows the CLI's on the same clock"
    );
    assert_eq!(by_api.unix_millis(), NOW);
}

/// Paragraphs of words, lines and multi-byte characters, different for each seed.
fn prose(chars: usize, seed: u64) -> String {
    const WORDS: [&str; 12] = [
        "skill",
        "gateway",
        "merge",
        "the",
        "of",
        "sync",
        "技能",
        "🐻‍❄️",
        "naïve",
        "node",
        "a",
        "🎉",
    ];
    let mut text = String::new();
    let mut state = seed;
    let mut count = 0;
    while count < chars {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let word = WORDS[(state >> 33) as usize % WORDS.len()];
        let gap = if (state >> 20).is_multiple_of(11) {
            "\n"
        } else {
            " "
        };
        count += word.chars().count() + 1;
        text.push_str(word);
        text.push_str(gap);
    }
    text
}

#[test]
fn rewriting_a_200k_character_skill_is_exact_and_quick() {
    let dir = tempfile::tempdir().unwrap();
    let mut r = open(dir.path(), "n1");
    let (first, second) = (prose(200_000, 1), prose(200_000, 2));
    r.put_skill(skill("big", &first)).unwrap();
    let started = std::time::Instant::now();
    r.put_skill(skill("big", &second)).unwrap();
    let mut edited = second.clone();
    edited.insert_str(edited.len() / 2, "一 small edit 🎉 ");
    r.put_skill(skill("big", &edited)).unwrap();
    // Automerge's own diff took over two minutes for 100k characters; this takes about one
    // second even in a debug-ish test build, so the bound only catches a quadratic path.
    assert!(started.elapsed() < std::time::Duration::from_secs(60));
    assert_eq!(r.get_skill("big").unwrap().unwrap().content, edited);
    drop(r);
    assert_eq!(
        open(dir.path(), "n1")
            .get_skill("big")
            .unwrap()
            .unwrap()
            .content,
        edited
    );
}

/// Ops in the newest change of the skills document.
fn ops_of_last_skill_change(r: &mut Replica) -> usize {
    let doc = r.document(&DocId::Skills).unwrap();
    let head = doc.get_heads()[0];
    doc.get_change_by_hash(&head).unwrap().len()
}

#[test]
fn a_long_skill_is_one_value_and_a_short_one_merges_again() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut a = open(da.path(), "a");
    let mut b = open(db.path(), "b");
    let long = prose(WHOLE_VALUE_MIN_BYTES + 10, 1);
    a.put_skill(skill("big", &long)).unwrap();
    // One value, not a character per op: Automerge's Text costs about 2 µs per character
    // on the writer and on every peer (2.2 s for 1 MiB).
    assert!(ops_of_last_skill_change(&mut a) < 10);
    a.put_skill(SkillWrite {
        description: Some("described".into()),
        ..skill("big", &long)
    })
    .unwrap();
    assert!(ops_of_last_skill_change(&mut a) < 10);
    let doc = a.document(&DocId::Skills).unwrap();
    let stored: usize = doc
        .get_changes(&[])
        .iter()
        .map(|c| c.raw_bytes().len())
        .sum();
    assert!(
        stored < 2 * long.len(),
        "the text was stored twice: {stored} bytes"
    );
    merge(&mut a, &mut b);
    assert_eq!(b.get_skill("big").unwrap().unwrap().content, long);
    drop(b);
    let mut b = open(db.path(), "b");
    assert_eq!(
        b.get_skill("big").unwrap().unwrap().description,
        "described"
    );

    a.put_skill(skill("big", "line one\nline two\n")).unwrap();
    merge(&mut a, &mut b);
    a.put_skill(skill("big", "line one (a)\nline two\n"))
        .unwrap();
    b.put_skill(skill("big", "line one\nline two (b)\n"))
        .unwrap();
    merge(&mut a, &mut b);
    let merged = "line one (a)\nline two (b)\n";
    assert_eq!(a.get_skill("big").unwrap().unwrap().content, merged);
    assert_eq!(b.get_skill("big").unwrap().unwrap().content, merged);
}

#[test]
fn a_skill_edit_off_the_lock_lets_other_threads_write() {
    let dir = tempfile::tempdir().unwrap();
    let shared = SharedReplica::new(open(dir.path(), "n1"));
    shared.put_skill(skill("big", &prose(50_000, 1))).unwrap();
    let content = prose(50_000, 2);
    let mut pauses = 0;
    let written = shared
        .batch_pausing(
            |batch| batch.put_skill(skill("big", &content)),
            || {
                pauses += 1;
                // A memory write from another thread must complete while the skill text is
                // being edited: were the lock held, it could not, and the wait would time out.
                let (done, finished) = std::sync::mpsc::channel();
                let writer = shared.clone();
                std::thread::spawn(move || {
                    let put = writer.with(|r| r.put_memory(&Scope::Mesh, "k", json!(1)));
                    done.send(put.is_ok()).unwrap();
                });
                let waited = finished.recv_timeout(std::time::Duration::from_secs(60));
                assert_eq!(waited, Ok(true));
            },
        )
        .unwrap();
    // Memory lives in another document: the batch was not staged again.
    assert_eq!(pauses, 1);
    assert_eq!(written.content, content);
    shared.with(|r| {
        assert_eq!(r.get_skill("big").unwrap().unwrap().content, content);
        assert_eq!(
            r.get_memory(&Scope::Mesh, "k").unwrap().unwrap().value,
            json!(1)
        );
    });
}

#[test]
fn a_skill_written_meanwhile_makes_the_batch_stage_again() {
    let dir = tempfile::tempdir().unwrap();
    let shared = SharedReplica::new(open(dir.path(), "n1"));
    shared.put_skill(skill("a", "first\n")).unwrap();
    let mut pauses = 0;
    shared
        .batch_pausing(
            |batch| batch.put_skill(skill("a", "second\n")),
            || {
                pauses += 1;
                if pauses == 1 {
                    shared.with(|r| r.put_skill(skill("b", "meanwhile\n")).unwrap());
                }
            },
        )
        .unwrap();
    assert_eq!(pauses, 2);
    shared.with(|r| {
        assert_eq!(r.get_skill("a").unwrap().unwrap().content, "second\n");
        assert_eq!(r.get_skill("b").unwrap().unwrap().content, "meanwhile\n");
    });
    drop(shared);
    let r = open(dir.path(), "n1");
    assert_eq!(r.get_skill("a").unwrap().unwrap().content, "second\n");
    assert_eq!(r.get_skill("b").unwrap().unwrap().content, "meanwhile\n");
}

#[test]
fn a_memory_write_appended_meanwhile_makes_the_batch_stage_again() {
    let dir = tempfile::tempdir().unwrap();
    let shared = SharedReplica::new(open(dir.path(), "n1"));
    shared.with(|r| {
        r.put_memory(&Scope::Mesh, "k", json!("first")).unwrap();
        r.put_skill(skill("a", "first\n")).unwrap();
        evict_all(r);
    });
    let mut pauses = 0;
    shared
        .batch_pausing(
            |batch| {
                batch.put_memory(&Scope::Mesh, "k", json!("batch"))?;
                batch.put_skill(skill("a", "second\n"))
            },
            || {
                pauses += 1;
                if pauses == 1 {
                    // Appended without loading the document: its edit count does not move.
                    shared.with(|r| {
                        r.docs.retain(|doc, _| *doc == DocId::Skills);
                        r.put_memory(&Scope::Mesh, "k", json!("meanwhile")).unwrap();
                        assert_eq!(r.docs.len(), 1, "the memory write loaded its document");
                    });
                }
            },
        )
        .unwrap();
    assert_eq!(pauses, 2, "the batch was committed on stale decisions");
    let read = |r: &Replica| r.get_memory(&Scope::Mesh, "k").unwrap().unwrap().value;
    shared.with(|r| {
        assert_eq!(read(r), json!("batch"));
        let (conflicts, _) = r.conflicts(10).unwrap();
        assert!(conflicts.is_empty(), "{conflicts:?}");
    });
    drop(shared);
    assert_eq!(read(&open(dir.path(), "n1")), json!("batch"));
}

#[test]
fn a_batch_that_keeps_going_stale_runs_under_the_lock() {
    let dir = tempfile::tempdir().unwrap();
    let shared = SharedReplica::new(open(dir.path(), "n1"));
    let mut pauses = 0;
    shared
        .batch_pausing(
            |batch| batch.put_skill(skill("a", "mine\n")),
            || {
                pauses += 1;
                shared.with(|r| r.put_skill(skill(&format!("b{pauses}"), "x\n")).unwrap());
            },
        )
        .unwrap();
    assert_eq!(pauses, 3);
    shared.with(|r| {
        assert_eq!(r.get_skill("a").unwrap().unwrap().content, "mine\n");
        assert_eq!(r.list_skills().unwrap().len(), 4);
    });
}

/// Three scopes and two skills, one of them deleted, and one deleted key.
fn seeded(r: &mut Replica) {
    for (i, scope) in [
        Scope::Mesh,
        Scope::User("ann".into()),
        Scope::Node("n1".into()),
    ]
    .iter()
    .enumerate()
    {
        for k in 0..10 {
            r.put_memory(scope, &format!("k{k}"), json!(i * 100 + k))
                .unwrap();
        }
    }
    r.delete_memory(&Scope::Mesh, "k3").unwrap();
    r.put_skill(skill("triage", "first look")).unwrap();
    r.put_skill(skill("gone", "soon")).unwrap();
    r.delete_skill("gone").unwrap();
}

#[test]
fn reads_and_counts_come_from_the_index_without_loading_a_document() {
    let dir = tempfile::tempdir().unwrap();
    let (memory, skills) = {
        let mut r = open(dir.path(), "n1");
        seeded(&mut r);
        // As a clean stop does: the integrity record is then the store's heads, and opening
        // checks it against the index alone.
        r.flush().unwrap();
        (r.list_memory(None).unwrap(), r.list_skills().unwrap())
    };
    let r = open(dir.path(), "n1");
    assert_eq!(r.loaded().0, 0, "opening loads no document");
    assert_eq!(r.list_memory(None).unwrap(), memory);
    assert_eq!(r.list_skills().unwrap(), skills);
    assert_eq!(r.counts(), (29, 1));
    let user = Scope::User("ann".into());
    assert_eq!(
        r.get_memory(&user, "k4").unwrap().unwrap().value,
        json!(104)
    );
    assert!(r.get_memory(&Scope::Mesh, "k3").unwrap().is_none());
    assert!(
        r.memory_versions(&Scope::Mesh, "k3")
            .unwrap()
            .unwrap()
            .0
            .deleted
    );
    assert!(r.get_skill("gone").unwrap().is_none());
    assert_eq!(r.doc_ids().len(), 4);
    assert_eq!(r.loaded().0, 0, "reads load no document");
}

#[test]
fn a_store_without_an_index_is_indexed_at_its_first_open() {
    let dir = tempfile::tempdir().unwrap();
    let (memory, skills, heads) = {
        let mut r = open(dir.path(), "n1");
        seeded(&mut r);
        let seen = (
            r.list_memory(None).unwrap(),
            r.list_skills().unwrap(),
            r.all_heads(),
        );
        // What a store written by a version without the index holds: documents only.
        let docs = r.db().open_tree("docs").unwrap();
        for prefix in [&b"e\0"[..], b"h\0", b"v\0"] {
            for key in docs.scan_prefix(prefix).keys() {
                docs.remove(key.unwrap()).unwrap();
            }
        }
        r.flush().unwrap();
        seen
    };
    let mut r = open(dir.path(), "n1");
    assert_eq!(r.list_memory(None).unwrap(), memory);
    assert_eq!(r.list_skills().unwrap(), skills);
    assert_eq!(r.all_heads(), heads);
    assert_eq!(r.counts(), (29, 1));
    r.check_index().unwrap();
}

#[test]
fn documents_beyond_the_memory_budget_are_evicted_and_load_again_when_written() {
    let dir = tempfile::tempdir().unwrap();
    let mut replica = open(dir.path(), "n1");
    replica.set_memory_budget(1);
    let shared = SharedReplica::new(replica);
    let scopes = [
        Scope::Mesh,
        Scope::User("ann".into()),
        Scope::User("bob".into()),
    ];
    for round in 0..3 {
        for scope in &scopes {
            shared
                .with(|r| r.put_memory(scope, "k", json!(round)))
                .unwrap();
            assert_eq!(
                shared.with(|r| r.loaded().0),
                1,
                "only the last one used stays"
            );
        }
    }
    shared.with(|r| {
        for scope in &scopes {
            assert_eq!(r.get_memory(scope, "k").unwrap().unwrap().value, json!(2));
        }
        r.check_index().unwrap();
    });
}

/// Starts `count` threads writing through `grouped` while the test holds the replica, and
/// lets go once all are queued: whichever takes the lock then commits them as one group.
fn grouped_puts_while_locked(
    shared: &SharedReplica,
    values: Vec<serde_json::Value>,
) -> Vec<Result<MemoryEntry>> {
    let writers: Vec<_> = shared.with(|_| {
        let writers: Vec<_> = values
            .into_iter()
            .enumerate()
            .map(|(i, value)| {
                let writer = shared.clone();
                std::thread::spawn(move || {
                    writer.grouped(move |b| {
                        b.put_memory(&Scope::Mesh, &format!("k{i}"), value.clone())
                    })
                })
            })
            .collect();
        let started = std::time::Instant::now();
        while shared.queued() < writers.len() {
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "writers never queued"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        writers
    });
    writers.into_iter().map(|w| w.join().unwrap()).collect()
}

fn mesh_changes(shared: &SharedReplica) -> usize {
    shared.with(|r| {
        r.document(&DocId::Memory(Scope::Mesh))
            .unwrap()
            .get_changes(&[])
            .len()
    })
}

#[test]
fn writes_that_wait_for_the_lock_are_committed_as_one_change_and_each_answered() {
    let dir = tempfile::tempdir().unwrap();
    let shared = SharedReplica::new(open(dir.path(), "n1"));
    shared
        .grouped(|b| b.put_memory(&Scope::Mesh, "first", json!(0)))
        .unwrap();
    let before = mesh_changes(&shared);
    let answers = grouped_puts_while_locked(&shared, (0..8).map(|i| json!(i)).collect());
    for (i, answer) in answers.into_iter().enumerate() {
        assert_eq!(answer.unwrap().value, json!(i));
    }
    assert_eq!(
        mesh_changes(&shared),
        before + 1,
        "eight writes, one commit"
    );
    drop(shared);
    let mut reopened = open(dir.path(), "n1");
    for i in 0..8 {
        let entry = reopened.get_memory(&Scope::Mesh, &format!("k{i}")).unwrap();
        assert_eq!(entry.unwrap().value, json!(i));
    }
    reopened.check_index().unwrap();
}

#[test]
fn a_batch_is_acknowledged_once_journaled_before_sled_takes_it_in() {
    let dir = tempfile::tempdir().unwrap();
    let mut replica = open(dir.path(), "n1");
    replica
        .put_memory(&Scope::Mesh, "before", json!(0))
        .unwrap();
    let tree = replica.storage.tree().unwrap().clone();
    let held_before = tree.len();
    let mut at_acknowledgement = None;
    replica
        .batch_acknowledging(
            |batch| batch.put_memory(&Scope::Mesh, "k", json!(1)),
            |outcome| at_acknowledgement = Some((outcome.ok().map(|e| e.value), tree.len())),
        )
        .unwrap();
    // Before: the caller was answered once the batch had returned, sled's writes included.
    assert_eq!(at_acknowledgement, Some((Some(json!(1)), held_before)));
    assert!(
        tree.len() > held_before,
        "sled has the writes once the batch returns"
    );
    drop((replica, tree));
    let reopened = open(dir.path(), "n1");
    assert_eq!(
        reopened
            .get_memory(&Scope::Mesh, "k")
            .unwrap()
            .unwrap()
            .value,
        json!(1)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_awaiting_writer_is_answered_while_its_leader_still_holds_the_replica() {
    let dir = tempfile::tempdir().unwrap();
    let shared = SharedReplica::new(open(dir.path(), "n1"));
    let (release, held) = std::sync::mpsc::channel();
    shared.hold_after_next_commit(held);
    let put = shared.run_grouped(|b| b.put_memory(&Scope::Mesh, "k", json!(1)));
    // Before: the answer came once the leader had let go of the replica, never while held.
    let answered = tokio::time::timeout(Duration::from_secs(20), put).await;
    release.send(()).unwrap();
    let entry = answered.expect("answered while the leader holds the replica");
    assert_eq!(entry.unwrap().value, json!(1));
    let read = shared.clone();
    let stored =
        tokio::task::spawn_blocking(move || read.with(|r| r.get_memory(&Scope::Mesh, "k")))
            .await
            .unwrap();
    assert_eq!(stored.unwrap().unwrap().value, json!(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_awaiting_writer_whose_write_panics_is_interrupted_and_the_next_goes_through() {
    let dir = tempfile::tempdir().unwrap();
    let shared = SharedReplica::new(open(dir.path(), "n1"));
    let panicked = shared
        .run_grouped(|_: &mut Batch<'_>| -> Result<()> { panic!("a bug in a write") })
        .await;
    assert!(
        matches!(panicked, Err(ReplicaError::Interrupted)),
        "{panicked:?}"
    );
    // The leader gave leadership back and the lock's poison is cleared by the next taker.
    let next = shared.run_grouped(|b| b.put_memory(&Scope::Mesh, "k", json!(1)));
    let next = tokio::time::timeout(Duration::from_secs(20), next).await;
    assert_eq!(next.expect("not stuck").unwrap().value, json!(1));
}

#[test]
fn a_write_leaves_out_the_index_keys_it_leaves_as_they_were() {
    let dir = tempfile::tempdir().unwrap();
    let mut r = open(dir.path(), "n1");
    r.put_memory(&Scope::Mesh, "k", json!(1)).unwrap();
    r.put_memory(&Scope::Mesh, "k", json!(2)).unwrap();
    let records = journal::recover(&dir.path().join("journal"))
        .unwrap()
        .records;
    let puts = (records.iter())
        .filter(|record| record.writes.iter().any(|(key, _)| key.starts_with(b"c\0")))
        .count();
    assert_eq!(puts, 2, "both puts are in the journal");
    // Before: each put also removed the key's conflict marker, which was never there.
    let no_ops: Vec<_> = (records.iter().flat_map(|record| &record.writes))
        .filter(|(key, value)| value.is_none() && key.starts_with(b"x\0"))
        .collect();
    assert!(no_ops.is_empty(), "{no_ops:?}");
    assert_eq!(
        r.get_memory(&Scope::Mesh, "k").unwrap().unwrap().value,
        json!(2)
    );
    r.check_index().unwrap();
}

#[test]
fn a_batch_that_writes_nothing_is_acknowledged_at_its_end() {
    let dir = tempfile::tempdir().unwrap();
    let mut replica = open(dir.path(), "n1");
    let huge = json!("x".repeat(validate::MAX_VALUE_BYTES + 1));
    let mut acknowledged = None;
    replica
        .batch_acknowledging(
            |batch| batch.put_memory(&Scope::Mesh, "k", huge.clone()),
            |outcome| acknowledged = Some(outcome),
        )
        .unwrap();
    assert!(
        matches!(acknowledged, Some(Err(ReplicaError::Invalid(_)))),
        "{acknowledged:?}"
    );
    assert!(replica.get_memory(&Scope::Mesh, "k").unwrap().is_none());
}

#[test]
fn a_refused_write_in_a_group_fails_alone() {
    let dir = tempfile::tempdir().unwrap();
    let shared = SharedReplica::new(open(dir.path(), "n1"));
    let huge = json!("x".repeat(validate::MAX_VALUE_BYTES + 1));
    let answers = grouped_puts_while_locked(&shared, vec![json!("a"), huge, json!("c")]);
    assert_eq!(answers[0].as_ref().unwrap().value, json!("a"));
    assert!(
        matches!(answers[1], Err(ReplicaError::Invalid(_))),
        "{:?}",
        answers[1]
    );
    assert_eq!(answers[2].as_ref().unwrap().value, json!("c"));
    shared.with(|r| {
        assert!(r.get_memory(&Scope::Mesh, "k1").unwrap().is_none());
        assert!(r.get_memory(&Scope::Mesh, "k2").unwrap().is_some());
    });
}

#[test]
fn doctor_finds_the_newest_stamp_and_checks_the_record_and_documents_again() {
    let dir = tempfile::tempdir().unwrap();
    let millis = Arc::new(AtomicU64::new(1_000_000));
    let mut r = Replica::open_with_clock(
        dir.path(),
        crate::trust::NodeKey::insecure_from_name("own"),
        fixed_clock(millis.clone()),
    )
    .unwrap();
    assert_eq!(r.newest_stamp().unwrap(), None);
    assert_eq!(r.verify_integrity().unwrap(), None);
    r.put_skill(skill("triage", "steps")).unwrap();
    millis.store(2_000_000, Ordering::SeqCst);
    let entry = r.put_memory(&Scope::Mesh, "a", json!(1)).unwrap();
    // Memory is scanned before skills: the newest is found, not the last one read.
    let (label, stamp) = r.newest_stamp().unwrap().unwrap();
    assert_eq!((label.as_str(), stamp), ("mesh:a", entry.updated_at));
    assert_eq!(stamp.unix_millis(), 2_000_000);
    r.flush().unwrap();
    assert!(r.verify_integrity().unwrap().is_some());
    for doc in r.doc_ids() {
        r.verify_stored(&doc).unwrap();
    }
}

// ---- authors and history ----------------------------------------------------------------

fn id_of(node: &str) -> String {
    crate::trust::NodeKey::insecure_from_name(node)
        .node_id()
        .compact()
}

#[test]
fn a_version_shows_the_node_whose_signed_change_wrote_it() {
    let (dir_x, dir_y) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (mut x, mut y) = (open(dir_x.path(), "x"), open(dir_y.path(), "y"));
    let written = x.put_memory(&Scope::Mesh, "k", json!(1)).unwrap();
    assert_eq!(written.author, Some(id_of("x")));
    merge(&mut x, &mut y);
    let read = y.get_memory(&Scope::Mesh, "k").unwrap().unwrap();
    assert_eq!(read.author, Some(id_of("x")));
    assert_eq!(read.node_id, id_of("x"), "a normal write names its author");
    assert_eq!(read.claim, None);
    assert!(read.authorship().verified);
    let versions = memory_doc::current(
        y.document(&DocId::Memory(Scope::Mesh)).unwrap(),
        &Scope::Mesh,
        "k",
    );
    assert_eq!(
        versions[0].0.author,
        Some(id_of("x")),
        "read from the change's actor"
    );
}

#[test]
fn a_bridge_message_claiming_another_node_is_written_by_the_importer() {
    let (dir_b, dir_d) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (mut b, mut d) = (open(dir_b.path(), "b"), open(dir_d.path(), "d"));
    let message = json!({"type": "memory", "scope": "mesh", "key": "k", "value": 1,
        "nodeId": id_of("c"), "ts": 1_700_000_000});
    let items = crate::bridge::items(&message.to_string(), None);
    let report = b
        .batch(|batch| crate::bridge::ingest(batch, &items, &Default::default()))
        .unwrap();
    assert_eq!(report.changed, 1);
    merge(&mut b, &mut d);
    for replica in [&b, &d] {
        let read = replica.get_memory(&Scope::Mesh, "k").unwrap().unwrap();
        assert_eq!(read.author, Some(id_of("b")));
        assert_eq!(read.node_id, id_of("b"), "stored as the importer's");
        let claim = read.claim.clone().unwrap();
        assert_eq!(
            (claim.by.as_str(), claim.via),
            (id_of("c").as_str(), Via::Bridge)
        );
        assert_eq!(claim.checked_with, None);
        assert_eq!(read.named_writer(), id_of("c"));
        let shown = read.authorship();
        assert!(!shown.verified);
        assert_eq!(
            shown.to_string(),
            format!(
                "claimed by {} via bridge, written by {}, unverified",
                id_of("c"),
                id_of("b")
            )
        );
    }
    // The same message again changes nothing.
    let again = b
        .batch(|batch| crate::bridge::ingest(batch, &items, &Default::default()))
        .unwrap();
    assert_eq!(again.changed, 0);
}

#[test]
fn history_lists_every_version_oldest_first_with_the_winner_marked() {
    let (dir_x, dir_y) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let now = Arc::new(AtomicU64::new(NOW));
    let mut x = Replica::open_with_clock(
        dir_x.path(),
        crate::trust::NodeKey::insecure_from_name("x"),
        fixed_clock(now.clone()),
    )
    .unwrap();
    let mut y = open(dir_y.path(), "y");
    x.put_memory(&Scope::Mesh, "k", json!(1)).unwrap();
    x.put_memory(&Scope::Mesh, "other", json!(0)).unwrap();
    now.fetch_add(5_000, Ordering::SeqCst);
    x.put_memory(&Scope::Mesh, "k", json!(2)).unwrap();
    merge(&mut x, &mut y);
    y.delete_memory(&Scope::Mesh, "k").unwrap();
    merge(&mut x, &mut y);
    let history = x.memory_history(&Scope::Mesh, "k").unwrap().unwrap();
    let shown: Vec<_> = history
        .iter()
        .map(|w| {
            (
                w.version.value.clone(),
                w.version.deleted,
                w.version.author.clone(),
                w.winner,
            )
        })
        .collect();
    assert_eq!(
        shown,
        [
            (json!(1), false, Some(id_of("x")), false),
            (json!(2), false, Some(id_of("x")), false),
            (json!(null), true, Some(id_of("y")), true),
        ]
    );
    assert_eq!(
        history[0].change_time,
        (NOW / 1000) as i64,
        "the change records its time"
    );
    assert_eq!(history[1].change_time, (NOW / 1000 + 5) as i64);
    assert_ne!(history[0].change, history[1].change);
    assert!(history.iter().all(|w| w.change.len() == 64));
    assert_eq!(
        x.memory_history(&Scope::Mesh, "never").unwrap(),
        Some(vec![])
    );
    assert_eq!(
        x.memory_history(&Scope::User("nobody".into()), "k")
            .unwrap(),
        None
    );
}

#[test]
fn history_marks_the_winner_of_concurrent_versions() {
    let (dir_x, dir_y) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (mut x, mut y) = (open(dir_x.path(), "x"), open(dir_y.path(), "y"));
    x.put_memory(&Scope::Mesh, "k", json!("x")).unwrap();
    y.put_memory(&Scope::Mesh, "k", json!("y")).unwrap();
    merge(&mut x, &mut y);
    let winner = x.get_memory(&Scope::Mesh, "k").unwrap().unwrap();
    let history = x.memory_history(&Scope::Mesh, "k").unwrap().unwrap();
    assert_eq!(history.len(), 2);
    let marked: Vec<_> = history.iter().filter(|w| w.winner).collect();
    assert_eq!(marked.len(), 1);
    assert_eq!(marked[0].version.value, winner.value);
    assert_eq!(marked[0].version.author, winner.author);
}

#[test]
fn an_index_of_an_earlier_version_without_authors_is_built_again() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut r = open(dir.path(), "n1");
        r.put_memory(&Scope::Mesh, "k", json!(1)).unwrap();
        // What an earlier meshd left: its own marker, and versions without authors.
        let docs = r.db().open_tree("docs").unwrap();
        docs.remove(index::COMPLETE).unwrap();
        docs.insert(b"v\0index", &b"1"[..]).unwrap();
        let key = b"e\0mesh\0k";
        let old = String::from_utf8(docs.get(key).unwrap().unwrap().to_vec()).unwrap();
        let without = old.replace(&format!(r#","author":"{}""#, id_of("n1")), "");
        assert_ne!(old, without);
        docs.insert(key, without.as_bytes()).unwrap();
        r.flush().unwrap();
    }
    let r = open(dir.path(), "n1");
    let read = r.get_memory(&Scope::Mesh, "k").unwrap().unwrap();
    assert_eq!(read.author, Some(id_of("n1")));
}

#[test]
fn a_row_of_a_version_another_node_wrote_imported_again_changes_nothing() {
    let (dir_x, dir_y) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (mut x, mut y) = (open(dir_x.path(), "x"), open(dir_y.path(), "y"));
    x.put_memory(&Scope::Mesh, "by-x", json!(1)).unwrap();
    y.put_memory(&Scope::Mesh, "by-y", json!(2)).unwrap();
    merge(&mut x, &mut y);
    // Each node imports the row of the version the other wrote, as `store export` gives it:
    // whichever id sorts first, nothing is newer.
    for (replica, key) in [(&mut x, "by-y"), (&mut y, "by-x")] {
        let held = replica.get_memory(&Scope::Mesh, key).unwrap().unwrap();
        let row = MemoryEntry {
            author: None,
            ..held.clone()
        };
        assert!(!replica.import_memory(row, Via::Store).unwrap(), "{key}");
        assert_eq!(
            replica.get_memory(&Scope::Mesh, key).unwrap().unwrap(),
            held
        );
    }
}

#[test]
fn concurrent_versions_are_listed_as_conflicts_until_the_key_is_written_again() {
    let (dir_x, dir_y) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (mut x, mut y) = (open(dir_x.path(), "x"), open(dir_y.path(), "y"));
    x.put_memory(&Scope::Mesh, "k", json!("x")).unwrap();
    y.put_memory(&Scope::Mesh, "k", json!("y")).unwrap();
    x.put_memory(&Scope::Mesh, "calm", json!(1)).unwrap();
    x.put_skill(skill("triage", "# x")).unwrap();
    y.put_skill(skill("triage", "# y")).unwrap();
    merge(&mut x, &mut y);
    let (conflicts, total) = x.conflicts(10).unwrap();
    assert_eq!(total, 2, "{conflicts:?}");
    let Conflict::Memory { winner, others } = &conflicts[0] else {
        panic!("the memory key first: {conflicts:?}");
    };
    assert_eq!(winner, &x.get_memory(&Scope::Mesh, "k").unwrap().unwrap());
    assert_eq!(others.len(), 1);
    assert!(matches!(&conflicts[1], Conflict::Skill { winner, .. } if winner.name == "triage"));
    assert_eq!(
        x.conflicts(1).unwrap().0.len(),
        1,
        "the limit holds, the total does not"
    );
    assert_eq!(x.conflicts(1).unwrap().1, 2);
    x.put_memory(&Scope::Mesh, "k", json!("settled")).unwrap();
    x.delete_skill("triage").unwrap();
    assert_eq!(x.conflicts(10).unwrap().1, 0, "{:?}", x.conflicts(10));
    x.check_index().unwrap();
}

#[test]
fn an_index_of_an_earlier_version_without_conflicts_is_built_again() {
    let (dir_x, dir_y) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    {
        let (mut x, mut y) = (open(dir_x.path(), "x"), open(dir_y.path(), "y"));
        x.put_memory(&Scope::Mesh, "k", json!("x")).unwrap();
        y.put_memory(&Scope::Mesh, "k", json!("y")).unwrap();
        merge(&mut x, &mut y);
        // What the previous meshd left: its marker, and no conflict keys.
        let docs = x.db().open_tree("docs").unwrap();
        docs.remove(index::COMPLETE).unwrap();
        docs.insert(b"v\0index-authors", &b"1"[..]).unwrap();
        docs.remove(b"x\0mesh\0k")
            .unwrap()
            .expect("a conflict key was written");
        x.flush().unwrap();
    }
    let x = open(dir_x.path(), "x");
    assert_eq!(x.conflicts(10).unwrap().1, 1);
}

/// Changes from several messages of a peer, applied inside `gathering`, become durable with
/// one commit; until then the session inside sees them in the heads, and reads (the index)
/// do not.
#[test]
fn changes_gathered_from_several_messages_are_committed_once() {
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut a = open(dir_a.path(), "n1");
    let mut b = open(dir_b.path(), "n2");
    let user = Scope::User("bob".into());
    a.put_memory(&Scope::Mesh, "k1", json!(1)).unwrap();
    a.put_memory(&Scope::Mesh, "k2", json!(2)).unwrap();
    a.put_memory(&user, "k3", json!(3)).unwrap();
    let metrics = Arc::new(Metrics::default());
    b.set_metrics(metrics.clone());
    let mut messages = Vec::new();
    for doc in a.doc_ids() {
        let signatures = a.signatures(&doc).unwrap();
        for change in a.document(&doc).unwrap().get_changes(&[]) {
            messages.push((doc.clone(), change, signatures.clone()));
        }
    }
    assert_eq!(messages.len(), 3);
    let ((), committed) = b.gathering(|b| {
        for (doc, change, signatures) in messages {
            b.apply_changes(&doc, vec![change], signatures).unwrap();
        }
        for doc in a.doc_ids() {
            assert_eq!(b.heads(&doc), a.heads(&doc), "{}", doc.name());
            assert_eq!(b.change_count(&doc), a.change_count(&doc));
        }
        assert_eq!(b.doc_ids().len(), a.doc_ids().len());
        assert!(b.get_memory(&Scope::Mesh, "k1").unwrap().is_none());
    });
    committed.unwrap();
    assert_eq!(commits(&metrics), 1);
    assert_eq!(b.get_memory(&user, "k3").unwrap().unwrap().value, json!(3));
    for doc in a.doc_ids() {
        assert_eq!(b.signatures(&doc).unwrap(), a.signatures(&doc).unwrap());
    }
    drop(b);
    let b = open(dir_b.path(), "n2");
    for doc in a.doc_ids() {
        assert_eq!(b.heads(&doc), a.heads(&doc));
    }
    assert_eq!(
        b.get_memory(&Scope::Mesh, "k2").unwrap().unwrap().value,
        json!(2)
    );
}

/// The `meshd_store_commits_total` the daemon would serve.
fn commits(metrics: &Metrics) -> u64 {
    let mut registry = prometheus_client::registry::Registry::with_prefix("meshd");
    metrics.register(&mut registry, |_| None);
    let mut text = String::new();
    prometheus_client::encoding::prometheus_text::encode(&mut text, &registry).unwrap();
    text.lines()
        .find_map(|line| line.strip_prefix("meshd_store_commits_total "))
        .and_then(|count| count.parse().ok())
        .unwrap()
}

/// Keys read a page at a time come in order, each once, and never from another scope whose
/// name starts the same.
#[test]
fn names_are_paged_in_order_within_their_document() {
    let dir = tempfile::tempdir().unwrap();
    let mut r = open(dir.path(), "n1");
    let (bo, bob) = (Scope::User("bo".into()), Scope::User("bob".into()));
    for key in ["e", "a", "d", "b", "c", "f", "g"] {
        r.put_memory(&bo, key, json!(key)).unwrap();
    }
    r.put_memory(&bob, "a", json!(1)).unwrap();
    r.delete_memory(&bo, "d").unwrap();
    let doc = DocId::Memory(bo);
    let mut pages = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = r.names_after(&doc, after.as_deref(), 3).unwrap();
        if page.is_empty() {
            break;
        }
        after = page.last().cloned();
        pages.push(page);
    }
    assert_eq!(
        pages,
        [vec!["a", "b", "c"], vec!["d", "e", "f"], vec!["g"]],
        "tombstones included"
    );
    let mut parts = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let part = (r.live_memory_after(doc.scope().unwrap(), after.as_deref(), 3)).unwrap();
        let Some(last) = part.last else { break };
        let keys: Vec<String> = part.entries.into_iter().map(|e| e.key).collect();
        parts.push((keys, part.keys, last.clone()));
        after = Some(last);
    }
    let part = |keys: &[&str], read: usize, last: &str| {
        (
            keys.iter().map(|k| k.to_string()).collect::<Vec<_>>(),
            read,
            last.to_string(),
        )
    };
    assert_eq!(
        parts,
        [
            part(&["a", "b", "c"], 3, "c"),
            part(&["e", "f"], 3, "f"),
            part(&["g"], 1, "g")
        ],
        "the same parts, with the live entries of each and the tombstone counted"
    );
}

/// Two nodes created a skill concurrently (two objects); a third, holding both, writes it,
/// while one of the two, holding only its own object, edits it later. The later edit must win
/// everywhere. A write that replaced both objects with a new one left that edit in an object
/// no longer under the name: the older write won (found by the convergence proptest).
#[test]
fn an_edit_made_while_another_node_settles_a_concurrent_creation_still_wins_when_newest() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let clocks: Vec<Arc<AtomicU64>> = (0..3).map(|_| Arc::new(1_000_000.into())).collect();
    let mut nodes: Vec<Replica> = ["a", "b", "c"]
        .iter()
        .zip(&dirs)
        .zip(&clocks)
        .map(|((name, dir), clock)| {
            let key = crate::trust::NodeKey::insecure_from_name(name);
            Replica::open_with_clock(dir.path(), key, fixed_clock(clock.clone())).unwrap()
        })
        .collect();
    let [a, b, c] = &mut nodes[..] else {
        unreachable!()
    };
    a.put_skill(skill("s", "made by a")).unwrap();
    b.put_skill(skill("s", "made by b")).unwrap();
    merge(b, c);
    merge(a, c);
    assert_eq!(
        c.skill_versions("s").unwrap().unwrap().1.len(),
        1,
        "two objects at c"
    );
    c.put_skill(skill("s", "settled by c")).unwrap();
    clocks[1].store(5_000_000, Ordering::SeqCst);
    let latest = b.put_skill(skill("s", "edited by b later")).unwrap();
    merge(b, c);
    merge(a, c);
    for node in [a, b, c] {
        let (winner, _) = node.skill_versions("s").unwrap().unwrap();
        assert_eq!(
            (winner.updated_at, &winner.source_node),
            (latest.updated_at, &latest.source_node)
        );
    }
}

/// A sync step that panics inside `gathering` (a bug) leaves changes applied in memory; the
/// next user of the replica finds them committed, not gathered for a commit that never comes.
#[test]
fn changes_gathered_before_a_panic_are_committed_by_the_next_user() {
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut a = open(dir_a.path(), "n1");
    a.put_memory(&Scope::Mesh, "k", json!(1)).unwrap();
    let doc = DocId::Memory(Scope::Mesh);
    let changes = a.document(&doc).unwrap().get_changes(&[]);
    let signatures = a.signatures(&doc).unwrap();
    let shared = SharedReplica::new(open(dir_b.path(), "n2"));
    let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        shared.with(|b| {
            b.gathering(|b| {
                b.apply_changes(&doc, changes, signatures).unwrap();
                panic!("a bug in a sync step");
            })
        })
    }));
    assert!(panicked.is_err());
    let got = shared.with(|b| b.get_memory(&Scope::Mesh, "k").unwrap());
    assert_eq!(got.map(|entry| entry.value), Some(json!(1)));
}

#[test]
fn a_scope_past_its_base_capacity_goes_on_in_buckets() {
    let dir = tempfile::tempdir().unwrap();
    let mut r = open(dir.path(), "a");
    r.set_base_capacity(3);
    for i in 0..10 {
        r.put_memory(&Scope::Mesh, &format!("k{i}"), json!(i))
            .unwrap();
    }
    let base = DocId::Memory(Scope::Mesh);
    let buckets: Vec<DocId> = r
        .doc_ids()
        .into_iter()
        .filter(|doc| matches!(doc, DocId::Bucket(..)))
        .collect();
    assert!(!buckets.is_empty(), "no bucket in {:?}", r.doc_ids());
    assert_eq!(r.summaries[&base].live, 3);
    assert_eq!(r.counts().0, 10);
    assert_eq!(r.scopes(), vec![Scope::Mesh]);
    assert!(r.delete_memory(&Scope::Mesh, "k9").unwrap());
    let listed: Vec<String> = (r.list_memory(Some(&Scope::Mesh)).unwrap())
        .into_iter()
        .map(|e| e.key)
        .collect();
    assert_eq!(listed, (0..9).map(|i| format!("k{i}")).collect::<Vec<_>>());
    assert_eq!(r.names_after(&base, None, 100).unwrap().len(), 10);
    r.check_index().unwrap();
    drop(r);
    let mut r = open(dir.path(), "a");
    assert_eq!(r.counts().0, 9);
    assert_eq!(
        r.get_memory(&Scope::Mesh, "k7").unwrap().unwrap().value,
        json!(7)
    );
    r.check_index().unwrap();
}

/// Two nodes that each wrote a key first, one in its base and one in a bucket: after the
/// merge both documents hold a version of it, and the newest one wins. A later write goes
/// where the winner is.
#[test]
fn a_key_written_again_in_another_document_shows_its_newest_version() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(AtomicU64::new(1_000_000));
    let open_at = |node: &str| {
        Replica::open_with_clock(
            &dir.path().join(node),
            crate::trust::NodeKey::insecure_from_name(node),
            fixed_clock(clock.clone()),
        )
        .unwrap()
    };
    let (mut a, mut b) = (open_at("a"), open_at("b"));
    a.put_memory(&Scope::Mesh, "k", json!(1)).unwrap();
    clock.fetch_add(1000, Ordering::SeqCst);
    b.set_base_capacity(0);
    b.put_memory(&Scope::Mesh, "k", json!(2)).unwrap();
    merge(&mut a, &mut b);
    let (winner, others) = a.memory_versions(&Scope::Mesh, "k").unwrap().unwrap();
    assert_eq!((winner.value, others.len()), (json!(2), 0));
    assert_eq!(a.counts().0, 1);
    let history = a.memory_history(&Scope::Mesh, "k").unwrap().unwrap();
    let values: Vec<(serde_json::Value, bool)> = history
        .iter()
        .map(|w| (w.version.value.clone(), w.winner))
        .collect();
    assert_eq!(values, vec![(json!(1), false), (json!(2), true)]);
    a.check_index().unwrap();
    let bucket = DocId::bucket_for(&Scope::Mesh, "k");
    assert_eq!(a.memory_doc_for(&Scope::Mesh, "k").unwrap(), bucket);
    clock.fetch_add(1000, Ordering::SeqCst);
    assert!(a.delete_memory(&Scope::Mesh, "k").unwrap());
    assert_eq!(a.get_memory(&Scope::Mesh, "k").unwrap(), None);
    assert_eq!(a.counts().0, 0);
    let (docs, winner) = a
        .reading(|tree| index::memory_docs(tree, &Scope::Mesh, "k"))
        .unwrap();
    assert_eq!(winner, Some(bucket));
    assert_eq!(docs.len(), 2);
    a.check_index().unwrap();
}

/// A key stays in the document that holds it: an update does not follow the base filling up.
#[test]
fn a_key_is_written_again_where_its_winner_is() {
    let dir = tempfile::tempdir().unwrap();
    let mut r = open(dir.path(), "a");
    r.put_memory(&Scope::Mesh, "k", json!(1)).unwrap();
    r.set_base_capacity(0);
    r.put_memory(&Scope::Mesh, "k", json!(2)).unwrap();
    r.put_memory(&Scope::Mesh, "new", json!(3)).unwrap();
    assert_eq!(
        r.doc_ids(),
        vec![
            DocId::Memory(Scope::Mesh),
            DocId::bucket_for(&Scope::Mesh, "new")
        ]
    );
    let (docs, _) = r
        .reading(|tree| index::memory_docs(tree, &Scope::Mesh, "k"))
        .unwrap();
    assert_eq!(docs, vec![DocId::Memory(Scope::Mesh)]);
    assert!(r.delete_memory(&Scope::Mesh, "k").unwrap());
    assert_eq!(r.doc_ids().len(), 2);
    r.check_index().unwrap();
}

/// New keys fill the first bucket of their path with room: a scope just past its base takes
/// one bucket, and the next keys split it by their hash's first bit, and so on.
#[test]
fn new_keys_fill_the_buckets_of_their_path_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let mut r = open(dir.path(), "a");
    r.set_base_capacity(4);
    let bucket = |byte: u8| DocId::Bucket(Scope::Mesh, byte);
    for i in 0..8 {
        r.put_memory(&Scope::Mesh, &format!("k{i}"), json!(i))
            .unwrap();
    }
    assert_eq!(r.doc_ids(), vec![DocId::Memory(Scope::Mesh), bucket(0)]);
    // One batch counts its own writes: it does not overfill a bucket either.
    r.batch(|b| {
        for i in 8..40 {
            b.put_memory(&Scope::Mesh, &format!("k{i}"), json!(i))?;
        }
        Ok(())
    })
    .unwrap();
    let live: Vec<(String, u64)> = (r.summaries.iter())
        .map(|(doc, summary)| (doc.name(), summary.live))
        .collect();
    assert!(live.iter().all(|(_, live)| *live <= 4), "{live:?}");
    assert!(r.doc_ids().contains(&bucket(0x80)), "{:?}", r.doc_ids());
    assert_eq!(r.counts().0, 40);
    r.check_index().unwrap();
}

#[test]
fn nodes_that_keep_one_key_in_different_documents_agree_on_its_versions() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(AtomicU64::new(1_000_000));
    let mut a = Replica::open_with_clock(
        &dir.path().join("a"),
        crate::trust::NodeKey::insecure_from_name("a"),
        fixed_clock(clock.clone()),
    )
    .unwrap();
    let mut b = Replica::open_with_clock(
        &dir.path().join("b"),
        crate::trust::NodeKey::insecure_from_name("b"),
        fixed_clock(clock),
    )
    .unwrap();
    a.set_base_capacity(0);
    a.put_memory(&Scope::Mesh, "k", json!("a")).unwrap();
    b.put_memory(&Scope::Mesh, "k", json!("b")).unwrap();
    b.put_memory(&Scope::Mesh, "other", json!("b")).unwrap();
    merge(&mut a, &mut b);
    let on_a = a.memory_versions(&Scope::Mesh, "k").unwrap();
    assert_eq!(on_a, b.memory_versions(&Scope::Mesh, "k").unwrap());
    assert_eq!(a.list_memory(None).unwrap(), b.list_memory(None).unwrap());
    assert_eq!((a.counts().0, b.counts().0), (2, 2));
    a.check_index().unwrap();
    b.check_index().unwrap();
}

/// sled holds every key of a batch in memory while it applies it, so a large ingest is
/// committed a bounded number of writes at a time even when its documents fit the budget.
#[test]
fn a_batch_of_many_writes_is_committed_in_parts_of_bounded_size() {
    let dir = tempfile::tempdir().unwrap();
    let mut r = open(dir.path(), "a");
    r.set_memory_budget(u64::MAX);
    r.set_base_capacity(0);
    let metrics = Arc::new(Metrics::default());
    r.set_metrics(metrics.clone());
    r.batch(|b| {
        for i in 0..10_000 {
            b.put_memory(&Scope::Mesh, &format!("k{i}"), json!(i))?;
        }
        Ok(())
    })
    .unwrap();
    assert_eq!(
        commits(&metrics),
        10,
        "10 000 writes in parts of at most 1024"
    );
    assert_eq!(r.counts().0, 10_000);
    r.check_index().unwrap();
    drop(r);
    let r = open(dir.path(), "a");
    assert_eq!(r.list_memory(None).unwrap().len(), 10_000);
}

#[test]
fn a_batch_over_the_memory_budget_is_committed_in_parts_without_holding_every_document() {
    let dir = tempfile::tempdir().unwrap();
    let mut r = open(dir.path(), "a");
    r.set_memory_budget(1);
    r.set_base_capacity(0);
    r.batch(|b| {
        for i in 0..2000 {
            b.put_memory(&Scope::Mesh, &format!("k{i}"), json!(i))?;
        }
        Ok(())
    })
    .unwrap();
    assert!(r.doc_ids().len() > 200, "{} documents", r.doc_ids().len());
    assert!(r.loaded().0 <= 2, "{} documents loaded", r.loaded().0);
    assert_eq!(r.counts().0, 2000);
    assert_eq!(
        r.get_memory(&Scope::Mesh, "k1999").unwrap().unwrap().value,
        json!(1999)
    );
    r.check_index().unwrap();
    drop(r);
    let r = open(dir.path(), "a");
    assert_eq!(r.list_memory(None).unwrap().len(), 2000);
}

/// A batch committed in parts writes the documents it finds in memory first, and the
/// evictions between its parts spare those it has yet to write: in document order, each
/// part's evictions took the buckets the next part was about to write, and a batch into
/// every bucket loaded all 256 again when 64 were out of memory (169 with the order alone).
/// Documents not in memory take the writes of new keys without loading (`append`), so the
/// second batch writes the keys of the first again, indexed as an earlier version indexed
/// them: without the operations they supersede, which a write must then load to learn.
#[test]
fn a_batch_in_parts_writes_the_documents_in_memory_first() {
    let dir = tempfile::tempdir().unwrap();
    let mut r = open(dir.path(), "a");
    r.set_base_capacity(0);
    r.set_memory_budget(u64::MAX);
    let write = |r: &mut Replica, round: usize| {
        r.batch(|b| {
            for i in 0..20_000 {
                b.put_memory(&Scope::Mesh, &format!("k{i}"), json!(round))?;
            }
            Ok(())
        })
        .unwrap();
    };
    write(&mut r, 0);
    forget_operations(&r);
    let (documents, held) = r.loaded();
    r.set_memory_budget(held * 3 / 4);
    r.trim();
    let not_in_memory = (documents - r.loaded().0) as u64;
    let loads_before = r.loads();
    write(&mut r, 1);
    let loads = r.loads() - loads_before;
    assert_eq!(
        loads, not_in_memory,
        "each document not in memory when the batch began is loaded once, and no other"
    );
    r.check_index().unwrap();
}

/// A full clone is loaded once, by the vetting, and the merge takes that document; it must
/// never take it for other bytes than the ones vetted.
#[test]
fn a_merge_takes_the_vetted_document_only_for_the_bytes_vetted() {
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut a = open(dir_a.path(), "n1");
    let mut b = open(dir_b.path(), "n2");
    let doc = DocId::Memory(Scope::Mesh);
    a.put_memory(&Scope::Mesh, "k1", json!(1)).unwrap();
    let first = a.export(&doc).unwrap().unwrap();
    let first_heads = a.heads(&doc);
    a.put_memory(&Scope::Mesh, "k2", json!(2)).unwrap();
    let second = a.export(&doc).unwrap().unwrap();
    let signatures = a.signatures(&doc).unwrap();

    // Vetted: the document with k2; merged: the one without.
    let keep = b.vet_document(&doc, &second, signatures.clone()).unwrap();
    assert!(!keep.is_empty());
    b.merge_document(&doc, &first, signatures).unwrap();
    assert_eq!(b.heads(&doc), first_heads);
    assert!(b.get_memory(&Scope::Mesh, "k2").unwrap().is_none());
    b.check_index().unwrap();

    let (dir_c, mut c) = {
        let dir = tempfile::tempdir().unwrap();
        let c = open(dir.path(), "n3");
        (dir, c)
    };
    let signatures = a.signatures(&doc).unwrap();
    let keep = c.vet_document(&doc, &second, signatures).unwrap();
    c.merge_document(&doc, &second, keep).unwrap();
    assert_eq!(c.heads(&doc), a.heads(&doc));
    c.put_memory(&Scope::Mesh, "k3", json!(3)).unwrap();
    c.check_index().unwrap();
    drop(c);
    let c = open(dir_c.path(), "n3");
    assert_eq!(c.list_memory(None).unwrap().len(), 3);
}

/// A full clone stores the bytes it received as the snapshot instead of saving the document
/// again, but only bytes that hold the one document and nothing after it.
#[test]
fn a_full_clone_keeps_the_received_document_as_its_snapshot_when_it_is_one_chunk() {
    let dir_a = tempfile::tempdir().unwrap();
    let mut a = open(dir_a.path(), "n1");
    let doc = DocId::Memory(Scope::Mesh);
    a.put_memory(&Scope::Mesh, "k1", json!(1)).unwrap();
    a.batch(|batch| {
        for i in 0..200 {
            batch.put_memory(&Scope::Mesh, &format!("more-{i}"), json!("the same words"))?;
        }
        Ok(())
    })
    .unwrap();
    let saved = a.export(&doc).unwrap().unwrap();
    // The same document in another encoding (its columns not compressed), so that keeping
    // it is visible.
    let uncompressed = Automerge::load(&saved).unwrap().save_nocompress();
    assert_ne!(uncompressed, saved);
    assert!(whole::is_one_document(&uncompressed));
    let before = a.heads(&doc);
    let signed_before = a.signatures(&doc).unwrap();
    a.put_memory(&Scope::Mesh, "k2", json!(2)).unwrap();
    let after = a.document(&doc).unwrap().get_changes(&before);
    let with_a_change_after = [uncompressed.as_slice(), after[0].raw_bytes()].concat();
    assert!(!whole::is_one_document(&with_a_change_after));
    assert!(!whole::is_one_document(
        &[uncompressed.as_slice(), b"\x85\x6f\x4a\x83"].concat()
    ));
    assert!(!whole::is_one_document(
        &uncompressed[..uncompressed.len() - 1]
    ));

    let cases = [
        (&uncompressed, true, signed_before),
        (&with_a_change_after, false, a.signatures(&doc).unwrap()),
    ];
    for (bytes, kept, signatures) in cases {
        let dir_b = tempfile::tempdir().unwrap();
        let mut b = open(dir_b.path(), "n2");
        let keep = b.vet_document(&doc, bytes, signatures).unwrap();
        b.merge_document(&doc, bytes, keep).unwrap();
        let stored = b.storage.load_doc(&doc.name()).unwrap().snapshot.unwrap();
        assert_eq!(stored == *bytes, kept);
        assert_eq!(b.heads(&doc), Automerge::load(bytes).unwrap().get_heads());
        drop(b);
        let b = open(dir_b.path(), "n2");
        assert_eq!(
            b.get_memory(&Scope::Mesh, "k1").unwrap().unwrap().value,
            json!(1)
        );
    }
}

/// A whole document sent to a peer is the stored snapshot when nothing was written since it,
/// and the document saved anew otherwise.
#[test]
fn a_document_is_sent_as_its_stored_snapshot_while_nothing_is_written_beside_it() {
    use crate::sync::SyncStore;
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut a = open(dir_a.path(), "n1");
    let doc = DocId::Memory(Scope::Mesh);
    a.batch(|batch| {
        for i in 0..200 {
            batch.put_memory(&Scope::Mesh, &format!("k{i}"), json!("the same words"))?;
        }
        Ok(())
    })
    .unwrap();
    // B clones the document from bytes that are not what saving it gives, and stores them.
    let uncompressed = Automerge::load(&a.export(&doc).unwrap().unwrap())
        .unwrap()
        .save_nocompress();
    let mut b = open(dir_b.path(), "n2");
    let keep = b
        .vet_document(&doc, &uncompressed, a.signatures(&doc).unwrap())
        .unwrap();
    b.merge_document(&doc, &uncompressed, keep).unwrap();
    assert_ne!(b.document(&doc).unwrap().save(), uncompressed);
    assert_eq!(b.snapshot(&doc).unwrap(), uncompressed);
    b.docs.remove(&doc);
    assert_eq!(b.snapshot(&doc).unwrap(), uncompressed, "not loaded");

    b.put_memory(&Scope::Mesh, "k-more", json!(2)).unwrap();
    let sent = b.snapshot(&doc).unwrap();
    assert_ne!(sent, uncompressed);
    assert_eq!(Automerge::load(&sent).unwrap().get_heads(), b.heads(&doc));
}

/// Takes the operations out of every index entry, as an index of an earlier version of
/// meshd holds them.
fn forget_operations(r: &Replica) {
    let tree = r.storage.tree().unwrap();
    for item in tree.scan_prefix(b"e\0") {
        let (key, bytes) = item.unwrap();
        let Ok(mut versions) = serde_json::from_slice::<Vec<serde_json::Value>>(&bytes) else {
            continue;
        };
        for version in &mut versions {
            version.as_object_mut().unwrap().remove("op");
        }
        tree.insert(key, serde_json::to_vec(&versions).unwrap())
            .unwrap();
    }
}

/// Evicts every loaded document (the budget keeps the last one used otherwise).
fn evict_all(r: &mut Replica) {
    r.docs.clear();
}

#[test]
fn a_write_to_a_document_not_in_memory_appends_the_change_a_transaction_would_make() {
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let clock = Arc::new(AtomicU64::new(1_700_000_000_000));
    let key = |name| crate::trust::NodeKey::insecure_from_name(name);
    let mut a =
        Replica::open_with_clock(dir_a.path(), key("a"), fixed_clock(clock.clone())).unwrap();
    let mut b = open(dir_b.path(), "b");
    // Two versions of "both" (a conflict), one of "one", none of "new".
    a.put_memory(&Scope::Mesh, "both", json!("a")).unwrap();
    a.put_memory(&Scope::Mesh, "one", json!(1)).unwrap();
    b.put_memory(&Scope::Mesh, "both", json!("b")).unwrap();
    merge(&mut a, &mut b);
    let doc = DocId::Memory(Scope::Mesh);
    let before = a.export(&doc).unwrap().unwrap();
    evict_all(&mut a);
    let loads = a.loads();
    let heads_before = a.heads(&doc);

    let entries = a
        .batch(|batch| {
            let mut written = Vec::new();
            for (key, value) in [("both", json!("a2")), ("one", json!(2)), ("new", json!(3))] {
                written.push(batch.put_memory(&Scope::Mesh, key, value)?);
            }
            written.push(batch.put_memory(&Scope::Mesh, "one", json!(4))?);
            Ok(written)
        })
        .unwrap();
    assert_eq!(a.loads(), loads, "the write loaded the document");
    let appended: Vec<Change> = a.appended_since(&doc, &heads_before).unwrap();
    assert_eq!(appended.len(), 1);

    // The same writes as a transaction on the document loaded, by the same actor.
    let mut expected = Automerge::load(&before)
        .unwrap()
        .with_actor(a.actor.clone());
    let mut tx = expected.transaction();
    for entry in &entries {
        memory_doc::put(&mut tx, entry).unwrap();
    }
    let (hash, _) = tx.commit_with(CommitOptions::default().with_time(1_700_000_000));
    let made = expected.get_change_by_hash(&hash.unwrap()).unwrap();
    assert_eq!(appended[0].raw_bytes(), made.raw_bytes());

    // Reads, the index and a reload agree, and the conflict is settled.
    let (winner, others) = a.memory_versions(&Scope::Mesh, "both").unwrap().unwrap();
    assert_eq!((winner.value, others.len()), (json!("a2"), 0));
    assert_eq!(
        a.get_memory(&Scope::Mesh, "one").unwrap().unwrap().value,
        json!(4)
    );
    a.check_index().unwrap();
    drop(a);
    let mut a = open(dir_a.path(), "a");
    assert_eq!(
        a.get_memory(&Scope::Mesh, "new").unwrap().unwrap().value,
        json!(3)
    );
    a.check_index().unwrap();
}

#[test]
fn appended_changes_reach_a_peer_and_the_views_without_loading_the_document() {
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (mut a, mut b) = (open(dir_a.path(), "a"), open(dir_b.path(), "b"));
    a.put_memory(&Scope::Mesh, "k", json!(0)).unwrap();
    merge(&mut a, &mut b);
    let doc = DocId::Memory(Scope::Mesh);
    let seen = a.heads(&doc);
    evict_all(&mut a);
    let loads = a.loads();
    for i in 1..=3 {
        a.put_memory(&Scope::Mesh, &format!("k{i}"), json!(i))
            .unwrap();
    }
    let names = |keys: &[&str]| Changed::Names(keys.iter().map(|k| k.to_string()).collect());
    assert_eq!(a.changed_since(&doc, &seen), names(&["k1", "k2", "k3"]));
    let changes = crate::sync::SyncStore::changes_since(&mut a, &doc, &seen);
    assert_eq!(changes.len(), 3);
    assert!(crate::sync::SyncStore::has_change(&mut a, &doc, &seen[0]));
    assert_eq!(a.loads(), loads, "a document was loaded");
    b.apply_changes(&doc, changes, a.signatures(&doc).unwrap())
        .unwrap();
    assert_eq!(b.heads(&doc), a.heads(&doc));
    assert_eq!(
        b.get_memory(&Scope::Mesh, "k3").unwrap().unwrap().value,
        json!(3)
    );
    // One signature of a's vouches for its three changes: the newest replaced the others.
    let signed: Vec<_> = a.signatures(&doc).unwrap();
    assert_eq!(
        signed
            .iter()
            .filter(|s| s.signer().compact() == id_of("a"))
            .count(),
        1
    );
    // Older heads are beyond the log: the document is loaded to answer.
    assert_eq!(a.changed_since(&doc, &[]), names(&["k", "k1", "k2", "k3"]));
    assert_eq!(a.loads(), loads + 1);
    b.check_index().unwrap();
}

#[test]
fn an_entry_indexed_without_its_operations_loads_the_document_to_write() {
    let dir = tempfile::tempdir().unwrap();
    let mut r = open(dir.path(), "a");
    r.put_memory(&Scope::Mesh, "old", json!(0)).unwrap();
    r.put_memory(&Scope::Mesh, "fresh", json!(0)).unwrap();
    evict_all(&mut r);
    let loads = r.loads();
    r.put_memory(&Scope::Mesh, "fresh", json!(1)).unwrap();
    assert_eq!(r.loads(), loads);
    forget_operations(&r);
    r.put_memory(&Scope::Mesh, "fresh", json!(2)).unwrap();
    r.put_memory(&Scope::Mesh, "old", json!(1)).unwrap();
    assert_eq!(
        r.loads(),
        loads + 1,
        "written without knowing what it supersedes"
    );
    let (winner, others) = r.memory_versions(&Scope::Mesh, "old").unwrap().unwrap();
    assert_eq!((winner.value, others.len()), (json!(1), 0));
    r.check_index().unwrap();
    // Appended, then written loaded by the same actor: the sequence numbers follow on, so
    // the store loads again.
    r.flush().unwrap();
    drop(r);
    let mut r = open(dir.path(), "a");
    r.set_memory_budget(u64::MAX);
    r.put_memory(&Scope::Mesh, "fresh", json!(3)).unwrap();
    assert_eq!(r.loaded().0, 0, "appended");
    r.memory_history(&Scope::Mesh, "fresh").unwrap();
    r.put_memory(&Scope::Mesh, "fresh", json!(4)).unwrap();
    assert_eq!(r.loaded().0, 1);
    r.flush().unwrap();
    drop(r);
    let mut r = open(dir.path(), "a");
    assert_eq!(
        r.memory_history(&Scope::Mesh, "fresh")
            .unwrap()
            .unwrap()
            .len(),
        5
    );
    r.check_index().unwrap();
}

/// The greatest operation counter is kept beside the summary with the heads it was read at;
/// an earlier meshd that wrote the document leaves it behind, and it is then not believed.
#[test]
fn a_greatest_operation_counter_left_behind_by_an_earlier_meshd_is_not_believed() {
    let dir = tempfile::tempdir().unwrap();
    let mut r = open(dir.path(), "a");
    r.put_memory(&Scope::Mesh, "k", json!(0)).unwrap();
    let tree = r.storage.tree().unwrap().clone();
    let stored = tree.get(b"o\0mesh").unwrap().unwrap();
    assert_eq!(
        &stored[8..],
        r.heads(&DocId::Memory(Scope::Mesh))[0].0.as_slice()
    );
    // As if an earlier meshd had written a change since: other heads.
    let stale = [&stored[..8], &[7u8; 32][..]].concat();
    tree.insert(b"o\0mesh", stale).unwrap();
    r.flush().unwrap();
    drop((r, tree));
    let mut r = open(dir.path(), "a");
    r.put_memory(&Scope::Mesh, "k", json!(1)).unwrap();
    assert_eq!(r.loads(), 1, "the document was loaded to learn its counter");
    r.check_index().unwrap();
    r.flush().unwrap();
    drop(r);
    let mut r = open(dir.path(), "a");
    r.put_memory(&Scope::Mesh, "k", json!(2)).unwrap();
    assert_eq!(r.loads(), 0, "the counter is kept again");
}

/// A replica that wrote one key to `mesh` (its store in `dir`), that document, and the actor
/// of another node ("b"), whose changes the tests below make with any numbering it could sign.
fn written_once_and_a_peer(dir: &Path) -> (Replica, DocId, automerge::ActorId) {
    let mut r = open(dir, "a");
    r.put_memory(&Scope::Mesh, "k", json!(0)).unwrap();
    let peer = crate::trust::NodeKey::insecure_from_name("b").actor();
    (r, DocId::Memory(Scope::Mesh), peer)
}

/// Automerge 0.12 keeps change times as differences from one change to the next and panicked
/// halfway through applying a peer's change made at `i64::MIN` after one made at a positive
/// time, leaving a document whose changes could no longer be read. Such a change is refused
/// with the reason, as a change and after a whole document, and the document is as it was.
#[test]
fn a_peer_change_made_at_a_time_automerge_cannot_keep_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (mut r, doc, peer) = written_once_and_a_peer(dir.path());
    let heads = r.heads(&doc);
    let held = r.document(&doc).unwrap().get_changes(&[]).len();
    let first = crate::sync::sequence::timed_change(peer.clone(), 1, 100, heads.clone(), 1000);
    for time in [i64::MIN, i64::MAX, -(1 << 53)] {
        let far =
            crate::sync::sequence::timed_change(peer.clone(), 2, 101, vec![first.hash()], time);
        let error = r
            .apply_changes(&doc, vec![first.clone(), far.clone()], Vec::new())
            .unwrap_err();
        assert!(error.to_string().contains("Automerge can keep"), "{error}");
        assert_eq!(r.heads(&doc), heads);
        let mut saved = r.document(&doc).unwrap().save();
        saved.extend_from_slice(first.raw_bytes());
        saved.extend_from_slice(far.raw_bytes());
        let refusal = r.vet_document(&doc, &saved, Vec::new()).unwrap_err();
        assert!(refusal.contains("Automerge can keep"), "{refusal}");
    }
    let near = crate::sync::sequence::timed_change(peer, 2, 101, vec![first.hash()], 1 << 52);
    r.apply_changes(&doc, vec![first, near], Vec::new())
        .unwrap();
    assert_eq!(r.document(&doc).unwrap().get_changes(&[]).len(), held + 2);
}

/// A change whose actor's sequence number skips one reached an assertion in Automerge 0.12
/// (a panic halfway through updating the document); a peer signs any number it likes on its
/// own changes. It is refused with the reason, and the document is as it was.
#[test]
fn a_peer_change_that_skips_a_sequence_number_is_refused_without_touching_the_document() {
    let dir = tempfile::tempdir().unwrap();
    let (mut r, doc, peer) = written_once_and_a_peer(dir.path());
    let change = |seq: u64, deps: Vec<ChangeHash>, start_op: u64| {
        crate::sync::sequence::numbered_change(peer.clone(), seq, start_op, deps)
    };
    let heads = r.heads(&doc);
    let skipping = change(2, heads.clone(), 100);
    let error = r
        .apply_changes(&doc, vec![skipping.clone()], Vec::new())
        .unwrap_err();
    assert!(
        error.to_string().contains("number 2 of its actor"),
        "{error}"
    );
    assert_eq!(
        r.vet_sequence(&doc, std::slice::from_ref(&skipping))
            .unwrap_err(),
        {
            let ReplicaError::Misnumbered(reason) = error else {
                unreachable!()
            };
            reason
        }
    );
    // After a whole document (Automerge's own load panics on it), held here or not.
    let mut saved = r.document(&doc).unwrap().save();
    saved.extend_from_slice(skipping.raw_bytes());
    let refusal = r.vet_document(&doc, &saved, Vec::new()).unwrap_err();
    assert!(refusal.contains("number 2 of its actor"), "{refusal}");
    let other = tempfile::tempdir().unwrap();
    let refusal = open(other.path(), "c")
        .vet_document(&doc, &saved, Vec::new())
        .unwrap_err();
    assert!(refusal.contains("number 2 of its actor"), "{refusal}");
    // Into a document the node does not have yet, too.
    let fresh = DocId::Memory(Scope::User("zed".into()));
    assert!(r
        .apply_changes(&fresh, vec![change(3, Vec::new(), 1)], Vec::new())
        .is_err());
    assert!(!r.doc_ids().contains(&fresh));
    // The document is untouched and takes the peer's changes in order.
    assert_eq!(r.heads(&doc), heads);
    let first = change(1, heads, 100);
    let second = change(2, vec![first.hash()], 101);
    r.apply_changes(&doc, vec![first, second], Vec::new())
        .unwrap();
    r.put_memory(&Scope::Mesh, "k", json!(1)).unwrap();
    r.flush().unwrap();
    drop(r);
    let mut r = open(dir.path(), "a");
    r.check_index().unwrap();
    assert_eq!(
        r.get_memory(&Scope::Mesh, "k").unwrap().unwrap().value,
        json!(1)
    );
}

/// A change numbers its operations after every one of the document it was made in. One
/// that starts lower would make the index believe a smaller greatest counter, and a write
/// appended after it would reuse an operation id this node already gave out: Automerge
/// loads that document, but a peer applying its changes panics (verified without the check).
#[test]
fn a_peer_change_whose_operations_start_too_low_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut r = open(dir.path(), "a");
    for i in 0..5 {
        r.put_memory(&Scope::Mesh, &format!("k{i}"), json!(i))
            .unwrap();
    }
    let doc = DocId::Memory(Scope::Mesh);
    let heads = r.heads(&doc);
    let b = crate::trust::NodeKey::insecure_from_name("b").actor();
    let low = crate::sync::sequence::numbered_change(b, 1, 2, heads.clone());
    let error = r
        .apply_changes(&doc, vec![low.clone()], Vec::new())
        .unwrap_err();
    assert!(
        error.to_string().contains("numbers its operations from 2"),
        "{error}"
    );
    assert!(r.vet_sequence(&doc, std::slice::from_ref(&low)).is_err());
    assert_eq!(r.heads(&doc), heads);
    // Sent with a whole document (Automerge loads the document refusing such a change in
    // it, but not the same change in a chunk after it), merged or cloned.
    let mut saved = r.document(&doc).unwrap().save();
    saved.extend_from_slice(low.raw_bytes());
    // Signed by its maker: only its numbering is wrong.
    let signed = || vec![crate::trust::NodeKey::insecure_from_name("b").sign(&low.hash())];
    let refusal = r.vet_document(&doc, &saved, signed()).unwrap_err();
    assert!(
        refusal.contains("numbers its operations from 2"),
        "{refusal}"
    );
    let other = tempfile::tempdir().unwrap();
    let mut fresh = open(other.path(), "c");
    let refusal = fresh.vet_document(&doc, &saved, signed()).unwrap_err();
    assert!(
        refusal.contains("numbers its operations from 2"),
        "{refusal}"
    );
    evict_all(&mut r);
    r.put_memory(&Scope::Mesh, "k0", json!("appended")).unwrap();
    r.flush().unwrap();
    drop(r);
    let mut r = open(dir.path(), "a");
    r.check_index().unwrap();
    assert_eq!(
        r.get_memory(&Scope::Mesh, "k0").unwrap().unwrap().value,
        json!("appended")
    );
}

/// The log of appended changes keeps the latest 64 of a document: a reader within them is
/// answered without a load, one further behind loads the document.
#[test]
fn the_log_of_appended_changes_keeps_the_latest_and_older_heads_load_the_document() {
    let dir = tempfile::tempdir().unwrap();
    let mut r = open(dir.path(), "a");
    r.put_memory(&Scope::Mesh, "k0", json!(0)).unwrap();
    let doc = DocId::Memory(Scope::Mesh);
    evict_all(&mut r);
    let mut heads = vec![r.heads(&doc)];
    for i in 1..=100 {
        r.put_memory(&Scope::Mesh, &format!("k{i}"), json!(i))
            .unwrap();
        heads.push(r.heads(&doc));
    }
    assert_eq!(r.loads(), 0);
    let keys = |from: usize| Changed::Names((from + 1..=100).map(|i| format!("k{i}")).collect());
    assert_eq!(r.changed_since(&doc, &heads[40]), keys(40));
    assert_eq!(r.changed_since(&doc, &heads[100]), Changed::Nothing);
    assert_eq!(r.loads(), 0, "within the log");
    assert_eq!(r.changed_since(&doc, &heads[30]), keys(30));
    assert_eq!(r.loads(), 1, "behind the log");
}

#[test]
fn moved_since_names_the_documents_whose_heads_moved_after_the_mark() {
    let dir = tempfile::tempdir().unwrap();
    let mut r = open(dir.path(), "n1");
    let (mesh, bob) = (Scope::Mesh, Scope::User("bob".into()));
    r.put_memory(&mesh, "a", json!(1)).unwrap();
    r.put_memory(&bob, "b", json!(2)).unwrap();
    let (all, mark) = r.moved_since(0);
    assert_eq!(all.len(), 2, "{all:?}");
    assert_eq!(r.moved_since(mark), (Vec::new(), mark));

    r.put_memory(&bob, "c", json!(3)).unwrap();
    let (moved, next) = r.moved_since(mark);
    assert_eq!(moved, vec![DocId::Memory(bob.clone())]);
    assert!(next > mark);
    // A read moves nothing.
    r.get_memory(&mesh, "a").unwrap();
    assert_eq!(r.moved_since(next), (Vec::new(), next));
}
