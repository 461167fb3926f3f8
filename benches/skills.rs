//! Skill text replacement: time, and how long it makes other writers wait.
//!
//! - replacement: `SharedReplica::put_skill` (the daemon's path) of a text of 10 kB, 100 kB
//!   and 1 MiB (the limit) by the same text with a small edit, and by a different text; each
//!   once, durable when it returns. Automerge's own `update_text` (the path before) on the
//!   10 kB rewrite, in memory only, is the baseline.
//! - waits: memory puts sent one after another from this thread while another thread
//!   replaces a 1 MiB text by a different one, each timed from sending until acknowledged,
//!   against the same puts on the idle replica in the same run.
//!
//! Targets (the skills issue): a 1 MiB replacement in at most 1 s; a concurrent put waits at
//! most 50 ms. Prints a Markdown table; never asserts a time.

use std::time::{Duration, Instant};

use automerge::transaction::Transactable;
use automerge::{Automerge, ObjType, ROOT};
use meshd::model::validate::MAX_SKILL_BYTES;
use meshd::model::Scope;
use meshd::replica::{Replica, SharedReplica, SkillWrite, WHOLE_VALUE_MIN_BYTES};
use serde_json::json;

const IDLE_PUTS: usize = 200;

/// Paragraphs of words, lines and multi-byte characters, at most `bytes` long, different for
/// each seed.
fn prose(bytes: usize, seed: u64) -> String {
    const WORDS: [&str; 14] = [
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
        "replica",
        "when",
    ];
    let mut text = String::new();
    let mut state = seed;
    loop {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let word = WORDS[(state >> 33) as usize % WORDS.len()];
        let gap = if (state >> 20).is_multiple_of(11) {
            "\n"
        } else {
            " "
        };
        if text.len() + word.len() + gap.len() > bytes {
            return text;
        }
        text.push_str(word);
        text.push_str(gap);
    }
}

/// `text` with a sentence inserted in its middle and a word removed near its end.
fn small_edit(text: &str) -> String {
    let boundary = |at: usize| (0..=at).rev().find(|&i| text.is_char_boundary(i)).unwrap();
    let middle = boundary(text.len() / 2);
    let end = boundary(text.len() * 9 / 10);
    let cut = text[end..].find(' ').map_or(end, |space| end + space + 1);
    let cut_end = text[cut..].find(' ').map_or(cut, |space| cut + space);
    format!(
        "{}a new sentence, 新しい 🎉 {}{}",
        &text[..middle],
        &text[middle..cut],
        &text[cut_end..]
    )
}

fn write(name: &str, content: &str) -> SkillWrite {
    SkillWrite {
        name: name.into(),
        content: content.into(),
        ..SkillWrite::default()
    }
}

fn ms(duration: Duration) -> String {
    format!("{:.1}", duration.as_secs_f64() * 1000.0)
}

fn replacement(shared: &SharedReplica, bytes: usize) -> (String, Duration, Duration) {
    let name = format!("s{bytes}");
    // Room for the small edit's few bytes under the 1 MiB limit.
    let first = prose(bytes - 64, 1);
    shared.put_skill(write(&name, &first)).unwrap();
    let edited = small_edit(&first);
    let started = Instant::now();
    shared.put_skill(write(&name, &edited)).unwrap();
    let edit = started.elapsed();
    let different = prose(bytes, 2);
    let started = Instant::now();
    shared.put_skill(write(&name, &different)).unwrap();
    let rewrite = started.elapsed();
    let stored = shared.with(|r| r.get_skill(&name).unwrap()).unwrap();
    assert_eq!(stored.content, different);
    (
        format!(
            "{} kB, {} chars{}",
            bytes / 1000,
            different.chars().count(),
            if bytes < WHOLE_VALUE_MIN_BYTES {
                ""
            } else {
                " (one value)"
            }
        ),
        edit,
        rewrite,
    )
}

/// Automerge's `update_text` (the path before), in memory, on a rewrite of `bytes`.
fn automerge_update_text(bytes: usize) -> Duration {
    let mut doc = Automerge::new();
    let mut tx = doc.transaction();
    let text = tx.put_object(ROOT, "content", ObjType::Text).unwrap();
    tx.update_text(&text, prose(bytes, 1)).unwrap();
    tx.commit();
    let different = prose(bytes, 2);
    let started = Instant::now();
    let mut tx = doc.transaction();
    tx.update_text(&text, different).unwrap();
    tx.commit();
    started.elapsed()
}

/// Waits of memory puts sent one after another while `more(puts so far)` says so.
fn put_waits(shared: &SharedReplica, more: impl Fn(usize) -> bool) -> Vec<Duration> {
    let mut waits = Vec::new();
    while more(waits.len()) || waits.is_empty() {
        let key = format!("k{}", waits.len());
        let started = Instant::now();
        shared
            .with(|r| r.put_memory(&Scope::Mesh, &key, json!(waits.len())))
            .unwrap();
        waits.push(started.elapsed());
    }
    waits.sort();
    waits
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn main() {
    let dir = tempfile::tempdir().unwrap();
    let shared = SharedReplica::new(
        Replica::open(
            dir.path(),
            meshd::trust::NodeKey::insecure_from_name("bench"),
        )
        .unwrap(),
    );

    println!("| replaced text | small edit ms | different text ms | target |");
    println!("|---|---:|---:|---|");
    let baseline = automerge_update_text(10_000);
    println!(
        "| 10 kB, automerge update_text (before, in memory) | | {} | |",
        ms(baseline)
    );
    let largest_text = WHOLE_VALUE_MIN_BYTES - 1;
    for bytes in [10_000, 100_000, largest_text, MAX_SKILL_BYTES] {
        let (size, edit, rewrite) = replacement(&shared, bytes);
        let target = if bytes == MAX_SKILL_BYTES {
            let met = |d: Duration| {
                if d <= Duration::from_secs(1) {
                    "met"
                } else {
                    "NOT met"
                }
            };
            format!("≤ 1000: edit {}, different {}", met(edit), met(rewrite))
        } else {
            String::new()
        };
        println!("| {size} | {} | {} | {target} |", ms(edit), ms(rewrite));
    }

    let idle = put_waits(&shared, |puts| puts < IDLE_PUTS);
    let (text_busy, text_rewrite) = waits_during_rewrite(&shared, largest_text);
    let (value_busy, value_rewrite) = waits_during_rewrite(&shared, MAX_SKILL_BYTES);
    println!();
    println!(
        "| memory put acknowledged | n | p50 ms | p99 ms | max ms | max vs idle p50 | ≤ 50 ms |"
    );
    println!("|---|---:|---:|---:|---:|---:|---|");
    let idle_p50 = percentile(&idle, 0.5);
    for (label, waits) in [
        ("idle replica (baseline)", &idle),
        ("during a rewrite of the largest Text", &text_busy),
        ("during a 1 MiB rewrite", &value_busy),
    ] {
        let max = *waits.last().unwrap();
        println!(
            "| {label} | {} | {} | {} | {} | {:.1}× | {} |",
            waits.len(),
            ms(percentile(waits, 0.5)),
            ms(percentile(waits, 0.99)),
            ms(max),
            max.as_secs_f64() / idle_p50.as_secs_f64(),
            if max <= Duration::from_millis(50) {
                "met"
            } else {
                "NOT met"
            }
        );
    }
    println!();
    println!(
        "The rewrites they waited behind took {} ms (largest Text) and {} ms (1 MiB).",
        ms(text_rewrite),
        ms(value_rewrite)
    );
}

/// Waits of memory puts sent while another thread replaces a skill of `bytes` by a different
/// text, and how long that replacement took.
fn waits_during_rewrite(shared: &SharedReplica, bytes: usize) -> (Vec<Duration>, Duration) {
    let name = format!("busy{bytes}");
    shared.put_skill(write(&name, &prose(bytes, 3))).unwrap();
    let writer = shared.clone();
    let rewrite = std::thread::spawn(move || {
        let started = Instant::now();
        writer.put_skill(write(&name, &prose(bytes, 4))).unwrap();
        started.elapsed()
    });
    let waits = put_waits(shared, |_| !rewrite.is_finished());
    (waits, rewrite.join().unwrap())
}
