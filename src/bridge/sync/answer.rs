//! What this node says in the sync exchange, from its replica: its summary, the request and
//! delta that answer a peer's summary, the delta that answers a request.
//!
//! The reference compares by `ts` alone (a strictly greater one wins). meshd does the same,
//! and two more things where the reference cannot tell: at the same second, a different hash
//! means different values, so both sides are exchanged (a meshd peer settles them by the
//! writer's name, as every import does); and a skill whose hash matches is in step whatever
//! its `ts` (the reference dates a skill by its file's mtime, which moves when it is merely
//! copied).

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::hash::{hash_skill, hash_value};
use super::labels::label_for;
use super::{travels, PeerRequest, PeerSummary, SyncMessage};
use crate::model::{MemoryEntry, Scope, Skill, Stamp};
use crate::replica::{system_clock, Replica, ReplicaError};

/// A delta's entries go out in messages of about this many bytes, so each fits a webhook's
/// body limit (the reference's own default is none, meshd's 4 MiB).
const DELTA_BYTES: usize = 1 << 20;

/// The messages that answer what a peer sent, and where the two replicas differ.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Answer {
    pub messages: Vec<String>,
    /// Where this node and the peer's last summary differ, `scope:key` (meshd's names) or
    /// `skill:name`; empty when the summaries match.
    pub differences: Vec<Difference>,
    /// Skills not offered: the reference would store them under another name.
    pub left_out: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Difference {
    pub name: String,
    pub why: Why,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Why {
    MissingHere,
    NewerThere,
    NewerHere,
    MissingThere,
    /// Both at the same second with different hashes.
    SameSecond,
    /// The peer's is further ahead of this node's clock than it accepts.
    AheadOfClock,
    /// This node deleted it after the peer's version: the format has no deletions, so the peer
    /// keeps it, and taking it back would change nothing here.
    DeletedHere,
}

/// The answer to `asked` (what a bridge payload held): a delta for each request; for the last
/// summary, a request for what this node lacks and a delta of what the peer lacks; after a
/// delta alone, this node's summary, so the sender sees whether they now match.
pub fn answer(replica: &Replica, asked: &[SyncMessage], now: u64) -> Result<Answer, ReplicaError> {
    let mut answer = Answer::default();
    for message in asked {
        if let SyncMessage::Request(request) = message {
            answer.messages.extend(delta(replica, request, now)?);
        }
    }
    let last_summary = asked.iter().rev().find_map(|message| match message {
        SyncMessage::Summary(summary) => Some(summary),
        _ => None,
    });
    let last_delta = asked.iter().rev().find_map(|message| match message {
        SyncMessage::Delta(delta) => Some(delta),
        _ => None,
    });
    if let Some(summary) = last_summary {
        answer_summary(replica, summary, now, &mut answer)?;
    } else if let Some(delta) = last_delta {
        answer
            .messages
            .push(self::summary(replica, Some(&delta.node_id), now)?);
    }
    Ok(answer)
}

/// This node's `sync_summary`, naming scopes as `peer` does (`labels`), with hashes.
pub fn summary(replica: &Replica, peer: Option<&str>, now: u64) -> Result<String, ReplicaError> {
    let memory: Vec<Value> = replica
        .list_memory(None)?
        .iter()
        .map(|entry| {
            json!({
                "scope": label_for(&entry.scope, peer),
                "key": entry.key,
                "ts": entry.updated_at.unix_seconds(),
                "h": hash_value(&entry.value),
            })
        })
        .collect();
    let skills: Vec<Value> = offered_skills(replica)?
        .0
        .iter()
        .map(|skill| {
            json!({
                "name": skill.name,
                "ts": skill.updated_at.unix_seconds(),
                "h": hash_skill(skill.body()),
            })
        })
        .collect();
    let mut message = header("sync_summary", replica.node_id(), peer);
    message.push(("ts", json!(now)));
    message.push(("memory", Value::Array(memory)));
    message.push(("skills", Value::Array(skills)));
    Ok(print(message))
}

/// What the peer asked for that this node has, in as many `sync_delta` messages as needed.
fn delta(replica: &Replica, request: &PeerRequest, now: u64) -> Result<Vec<String>, ReplicaError> {
    let peer = Some(request.node_id.as_str());
    let mut memory = Vec::new();
    for (scope, key) in &request.memory {
        if let Some(entry) = replica.get_memory(scope, key)? {
            memory.push(memory_entry(&entry, peer));
        }
    }
    let mut skills = Vec::new();
    for name in request.skills.iter().filter(|name| travels(name)) {
        if let Some(skill) = replica.get_skill(name)? {
            skills.push(skill_entry(&skill));
        }
    }
    let request_id = request
        .request_id
        .clone()
        .unwrap_or_else(|| request_id(replica, now));
    Ok(deltas(replica.node_id(), peer, &request_id, memory, skills))
}

/// The request and delta that answer `summary`, and the differences they cover.
fn answer_summary(
    replica: &Replica,
    summary: &PeerSummary,
    now: u64,
    answer: &mut Answer,
) -> Result<(), ReplicaError> {
    let peer = Some(summary.node_id.as_str());
    let mut wanted_memory = Vec::new();
    let mut sent_memory = Vec::new();
    let ours: BTreeMap<(Scope, String), MemoryEntry> = replica
        .list_memory(None)?
        .into_iter()
        .map(|entry| ((entry.scope.clone(), entry.key.clone()), entry))
        .collect();
    let mut seen = BTreeSet::new();
    for row in &summary.memory {
        let slot = (row.scope.clone(), row.key.clone());
        let name = format!("{}:{}", row.scope, row.key);
        let mine = ours.get(&slot);
        let ours_at = mine.map(|entry| (entry.updated_at.unix_seconds(), hash_value(&entry.value)));
        let why = compare(ours_at.as_ref(), row.ts, row.h.as_deref(), false);
        let deleted = |version: Option<(MemoryEntry, Vec<MemoryEntry>)>| {
            version.is_some_and(|(winner, _)| {
                winner.deleted && winner.updated_at.unix_seconds() >= row.ts
            })
        };
        let why = match why {
            Some(Why::MissingHere) if deleted(replica.memory_versions(&row.scope, &row.key)?) => {
                Some(Why::DeletedHere)
            }
            Some(Why::MissingHere | Why::NewerThere) if !accepts(replica, row.ts) => {
                Some(Why::AheadOfClock)
            }
            // The peer's own version, which this node holds: the hashes differ only by the
            // order of an object's keys, which meshd does not keep (module comment of `hash`).
            Some(Why::SameSecond)
                if mine.is_some_and(|entry| entry.named_writer() == summary.node_id) =>
            {
                None
            }
            other => other,
        };
        if let Some(why) = why {
            if wants(why) {
                wanted_memory.push(json!([label_for(&row.scope, peer), row.key]));
            }
            if let (true, Some(entry)) = (sends(why), mine) {
                sent_memory.push(memory_entry(entry, peer));
            }
            answer.differences.push(Difference { name, why });
        }
        seen.insert(slot);
    }
    for (slot, entry) in ours.iter().filter(|(slot, _)| !seen.contains(*slot)) {
        sent_memory.push(memory_entry(entry, peer));
        answer.differences.push(Difference {
            name: format!("{}:{}", slot.0, slot.1),
            why: Why::MissingThere,
        });
    }
    let (wanted_skills, sent_skills) = compare_skills(replica, summary, answer)?;
    if !wanted_memory.is_empty() || !wanted_skills.is_empty() {
        let mut request = header("sync_request", replica.node_id(), peer);
        request.insert(1, ("requestId", json!(request_id(replica, now))));
        request.push(("memory", Value::Array(wanted_memory)));
        request.push(("skills", json!(wanted_skills)));
        request.push(("ts", json!(now)));
        answer.messages.push(print(request));
    }
    let id = request_id(replica, now);
    answer.messages.extend(deltas(
        replica.node_id(),
        peer,
        &id,
        sent_memory,
        sent_skills,
    ));
    Ok(())
}

/// The skills to request and to send for `summary`.
fn compare_skills(
    replica: &Replica,
    summary: &PeerSummary,
    answer: &mut Answer,
) -> Result<(Vec<String>, Vec<Value>), ReplicaError> {
    let (offered, left_out) = offered_skills(replica)?;
    answer.left_out = left_out;
    let ours: BTreeMap<&str, &Skill> = offered.iter().map(|s| (s.name.as_str(), s)).collect();
    let (mut wanted, mut sent) = (Vec::new(), Vec::new());
    let mut seen = BTreeSet::new();
    for row in summary.skills.iter().filter(|row| travels(&row.name)) {
        let mine = ours.get(row.name.as_str());
        let ours_at = mine.map(|skill| (skill.updated_at.unix_seconds(), hash_skill(skill.body())));
        let deleted = |version: Option<(Skill, Vec<Skill>)>| {
            version.is_some_and(|(winner, _)| {
                winner.deleted && winner.updated_at.unix_seconds() >= row.ts
            })
        };
        let why = match compare(ours_at.as_ref(), row.ts, row.h.as_deref(), true) {
            Some(Why::MissingHere) if deleted(replica.skill_versions(&row.name)?) => {
                Some(Why::DeletedHere)
            }
            Some(Why::MissingHere | Why::NewerThere) if !accepts(replica, row.ts) => {
                Some(Why::AheadOfClock)
            }
            other => other,
        };
        if let Some(why) = why {
            if wants(why) {
                wanted.push(row.name.clone());
            }
            if let (true, Some(skill)) = (sends(why), mine) {
                sent.push(skill_entry(skill));
            }
            answer.differences.push(Difference {
                name: format!("skill:{}", row.name),
                why,
            });
        }
        seen.insert(row.name.as_str());
    }
    for skill in offered.iter().filter(|s| !seen.contains(s.name.as_str())) {
        sent.push(skill_entry(skill));
        answer.differences.push(Difference {
            name: format!("skill:{}", skill.name),
            why: Why::MissingThere,
        });
    }
    Ok((wanted, sent))
}

/// How this node's `(ts, hash)` stands against a peer's row; `None` when in step. For skills
/// (`by_hash`), equal hashes are in step whatever the times say.
fn compare(ours: Option<&(u64, String)>, ts: u64, h: Option<&str>, by_hash: bool) -> Option<Why> {
    let Some((our_ts, our_h)) = ours else {
        return Some(Why::MissingHere);
    };
    let differs = h.is_some_and(|h| h != our_h);
    if by_hash && h == Some(our_h.as_str()) {
        return None;
    }
    match ts.cmp(our_ts) {
        std::cmp::Ordering::Greater => Some(Why::NewerThere),
        std::cmp::Ordering::Less => Some(Why::NewerHere),
        std::cmp::Ordering::Equal if differs => Some(Why::SameSecond),
        std::cmp::Ordering::Equal => None,
    }
}

fn wants(why: Why) -> bool {
    matches!(why, Why::MissingHere | Why::NewerThere | Why::SameSecond)
}

fn sends(why: Why) -> bool {
    matches!(why, Why::NewerHere | Why::SameSecond)
}

/// Whether an import stamped at `ts` would be taken now (the clock bound of every import).
fn accepts(replica: &Replica, ts: u64) -> bool {
    Stamp::checked_from_unix_seconds(ts)
        .is_some_and(|stamp| replica.clock_bound().check(stamp, system_clock()).is_ok())
}

/// The live skills a reference node can hold under their own names, and the names of the
/// others.
fn offered_skills(replica: &Replica) -> Result<(Vec<Skill>, Vec<String>), ReplicaError> {
    let (offered, left_out): (Vec<Skill>, Vec<Skill>) = replica
        .list_skills()?
        .into_iter()
        .partition(|skill| travels(&skill.name));
    Ok((
        offered,
        left_out.into_iter().map(|skill| skill.name).collect(),
    ))
}

/// A memory entry of a delta, as a bridge memory message without its `type`.
fn memory_entry(entry: &MemoryEntry, peer: Option<&str>) -> Value {
    json!({
        "scope": label_for(&entry.scope, peer),
        "key": entry.key,
        "value": entry.value,
        "nodeId": entry.named_writer(),
        "ts": entry.updated_at.unix_seconds(),
    })
}

fn skill_entry(skill: &Skill) -> Value {
    json!({
        "name": skill.name,
        "sourceNode": skill.source_node,
        "content": skill.body(),
        "ts": skill.updated_at.unix_seconds(),
    })
}

/// `sync_delta` messages holding `memory` and `skills`, each about `DELTA_BYTES` at most;
/// none when both are empty.
fn deltas(
    own: &str,
    peer: Option<&str>,
    request_id: &str,
    memory: Vec<Value>,
    skills: Vec<Value>,
) -> Vec<String> {
    let mut parts: Vec<(Vec<Value>, Vec<Value>)> = Vec::new();
    let mut size = DELTA_BYTES;
    let entries = memory
        .into_iter()
        .map(|entry| (true, entry))
        .chain(skills.into_iter().map(|entry| (false, entry)));
    for (is_memory, entry) in entries {
        let bytes = entry.to_string().len();
        if size + bytes > DELTA_BYTES {
            parts.push((Vec::new(), Vec::new()));
            size = 0;
        }
        size += bytes;
        let part = parts.last_mut().expect("a part was just pushed");
        if is_memory {
            part.0.push(entry);
        } else {
            part.1.push(entry);
        }
    }
    parts
        .into_iter()
        .map(|(memory, skills)| {
            let mut message = header("sync_delta", own, peer);
            message.insert(1, ("requestId", json!(request_id)));
            message.push(("memory", Value::Array(memory)));
            message.push(("skills", Value::Array(skills)));
            print(message)
        })
        .collect()
}

/// `type`, `nodeId` and, when the peer is known, `nodeScope`: whose scope a bare `node` is in
/// this message (the peer's; the reference ignores the field).
fn header(kind: &str, own: &str, peer: Option<&str>) -> Vec<(&'static str, Value)> {
    let mut fields = vec![("type", json!(kind)), ("nodeId", json!(own))];
    if let Some(peer) = peer {
        fields.push(("nodeScope", json!(peer)));
    }
    fields
}

fn request_id(replica: &Replica, now: u64) -> String {
    format!("sync-{}-{now}", replica.node_id())
}

/// The fields in the order given (serde_json's maps sort their keys).
fn print(fields: Vec<(&'static str, Value)>) -> String {
    let parts: Vec<String> = fields
        .iter()
        .map(|(name, value)| format!("{}:{value}", Value::from(*name)))
        .collect();
    format!("{{{}}}", parts.join(","))
}
