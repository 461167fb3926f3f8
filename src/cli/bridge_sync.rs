//! `meshd bridge sync URL`: rounds of the reference's sync exchange with a peer's webhook.
//! Each local step is a control command (the daemon's when it runs), so the node's own
//! writes and these merges take turns at the store as every other write does.

use anyhow::Context;
use meshd::bridge::sync::rounds::{Rounds, Verdict};
use meshd::bridge::sync::webhook::Webhook;
use meshd::bridge::sync::Difference;
use meshd::config::Home;
use meshd::control::{BridgeSyncAnswer, BridgeSyncSummary, SyncAnswered};
use serde_json::{json, Value};

use super::execute;

/// How many differing keys an error names before it counts the rest.
const NAMED: usize = 10;

pub fn run(
    home: &Home,
    webhook: &Webhook,
    rounds: u32,
    peer: Option<String>,
) -> anyhow::Result<()> {
    let peer = match peer {
        Some(peer) => Some(peer),
        None => learn_peer(home, webhook)?,
    };
    let own = execute(home, BridgeSyncSummary { peer: peer.clone() })?;
    let mut outgoing = vec![own.summary];
    let mut judge = Rounds::default();
    let (mut changed, mut sent) = (0, 0);
    let mut peer = peer;
    for round in 1..=rounds {
        sent += outgoing.len();
        let posted_summary = outgoing.iter().any(|m| kind(m) == "sync_summary");
        let answers = post_all(webhook, outgoing)?;
        if posted_summary && answers.is_empty() {
            eprintln!("meshd: round {round}: the peer has nothing to ask or send: in step");
            return finish(webhook, peer, round, changed, sent, judge.same_value());
        }
        let answered = answer(home, &answers)?;
        changed += answered.changed;
        peer = peer.or(answered.peer.clone());
        report_round(round, &answers, &answered);
        let verdict = judge.judge(
            answered.read.0 > 0,
            &answered.answer.differences,
            &answered.same_value,
            answered.changed,
        );
        match verdict {
            Verdict::InStep => {
                eprintln!("meshd: round {round}: the summaries match");
                return finish(webhook, peer, round, changed, sent, judge.same_value());
            }
            Verdict::Stalled(left) => anyhow::bail!(
                "the summaries still differ and neither side changes any more (round {round}): {}. \
                 A reference node keeps its own value when another has the same second (see \
                 docs/compatibility.md, Phase 3)",
                name_some(&left)
            ),
            Verdict::Again => {}
        }
        outgoing = answered.messages;
        if outgoing.is_empty() {
            outgoing.push(execute(home, BridgeSyncSummary { peer: peer.clone() })?.summary);
        }
    }
    anyhow::bail!(
        "not in step after {rounds} rounds with {}; run again, or raise --rounds",
        webhook.url()
    )
}

/// The peer's node id, from its answer to an empty `sync_request` (which asks for nothing).
fn learn_peer(home: &Home, webhook: &Webhook) -> anyhow::Result<Option<String>> {
    let own = execute(home, BridgeSyncSummary { peer: None })?;
    let probe = json!({"type":"sync_request","requestId":"meshd-hello","nodeId":own.node_id,
        "memory":[],"skills":[]});
    let answers = webhook.post(&probe.to_string())?;
    let peer = answers.iter().find_map(|answer| {
        let value: Value = serde_json::from_str(answer).ok()?;
        value.get("nodeId")?.as_str().map(str::to_string)
    });
    match &peer {
        Some(peer) => eprintln!("meshd: {} is node '{peer}'", webhook.url()),
        None => eprintln!(
            "meshd: {} did not name itself; its own node scope is named in full (pass --peer-id)",
            webhook.url()
        ),
    }
    Ok(peer)
}

/// Posts deltas first, then requests, then summaries, so that the peer's summary, which
/// answers this node's, comes last and shows the peer after it merged.
fn post_all(webhook: &Webhook, mut outgoing: Vec<String>) -> anyhow::Result<Vec<String>> {
    outgoing.sort_by_key(|message| match kind(message).as_str() {
        "sync_delta" => 0,
        "sync_request" => 1,
        _ => 2,
    });
    let mut answers = Vec::new();
    for message in &outgoing {
        answers.extend(webhook.post(message)?);
    }
    Ok(answers)
}

fn answer(home: &Home, answers: &[String]) -> anyhow::Result<SyncAnswered> {
    let payload = format!("[{}]", answers.join(","));
    let answered = execute(
        home,
        BridgeSyncAnswer {
            payload,
            unwrap: None,
        },
    )
    .context("cannot take in the peer's answers")?;
    for (position, reason) in &answered.ignored {
        eprintln!("meshd: the peer's message {position} ignored: {reason}");
    }
    Ok(answered)
}

fn report_round(round: u32, answers: &[String], answered: &SyncAnswered) {
    let (summaries, requests, deltas) = answered.read;
    eprintln!(
        "meshd: round {round}: got {} message(s) ({summaries} summary, {requests} request, \
         {deltas} delta); {} entr(ies) changed here; {} key(s) differ",
        answers.len(),
        answered.changed,
        answered.answer.differences.len()
    );
    if !answered.answer.left_out.is_empty() {
        eprintln!(
            "meshd: skills not offered (a reference node would store them under another name): {}",
            answered.answer.left_out.join(", ")
        );
    }
}

fn finish(
    webhook: &Webhook,
    peer: Option<String>,
    rounds: u32,
    changed: usize,
    sent: usize,
    same_value: usize,
) -> anyhow::Result<()> {
    let out = json!({
        "url": webhook.url(),
        "peer": peer,
        "rounds": rounds,
        "in_step": true,
        "changed_here": changed,
        "sent": sent,
        "same_value_other_key_order": same_value,
    });
    println!("{out}");
    Ok(())
}

fn kind(message: &str) -> String {
    serde_json::from_str::<Value>(message)
        .ok()
        .and_then(|value| value.get("type")?.as_str().map(str::to_string))
        .unwrap_or_default()
}

fn name_some(left: &[Difference]) -> String {
    let mut named: Vec<String> = left
        .iter()
        .take(NAMED)
        .map(|d| format!("{} ({:?})", d.name, d.why))
        .collect();
    if left.len() > NAMED {
        named.push(format!("and {} more", left.len() - NAMED));
    }
    named.join(", ")
}
