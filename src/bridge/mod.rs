//! Phase 1: bridge messages into the replica (`ingest`), out of it (`emit`), and
//! `mesh_request` answered from it (`respond`).

pub mod canonical;
pub mod envelope;
pub mod message;
pub mod signing;
pub mod stream;
pub mod sync;

use serde::Serialize;
use serde_json::Value;

use crate::model::{Claim, MemoryEntry, Scope, Skill, Stamp, Via};
use crate::replica::{Batch, ImportOutcome, Replica, ReplicaError};
use crate::trust::NodeKey;
pub use envelope::{items, Item, Unwrap};
pub use message::{classify, Kind, MeshRequest, Message, SkillMessage};
pub use signing::{BridgeKeys, SignatureCheck, TrustedKeys};
pub use sync::SyncMessage;

/// The counts a bridge ingest reports, in the reference's shape plus `ignored` and
/// `notApplied` (messages ingested whose version the replica did not take: it holds a newer
/// one, or one that wins the tie at the same `ts`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Summary {
    pub ingested: usize,
    pub memory: usize,
    pub skill: usize,
    pub ignored: usize,
    #[serde(rename = "notApplied")]
    pub not_applied: usize,
}

#[derive(Debug, Default)]
pub struct IngestReport {
    pub summary: Summary,
    /// Messages that changed the replica; re-imports and older `ts` change nothing.
    pub changed: usize,
    /// Why each ignored item was ignored, with its 1-based position in the input.
    pub reasons: Vec<(usize, String)>,
    /// Why each memory or skill message the replica did not take was not applied, with its
    /// 1-based position (a message already held, delivered again, is not listed).
    pub not_applied: Vec<(usize, String)>,
    /// The `mesh_request` messages seen (ignored by ingest, answered by `respond`).
    pub requests: Vec<MeshRequest>,
    /// What the signature of each imported message said, with its 1-based position: whether
    /// its claimed sender is verified or only claimed. (A bad signature is refused, and
    /// listed in `reasons` instead.)
    pub signatures: Vec<(usize, SignatureCheck)>,
    /// The sync messages seen, in order (a delta's entries already merged): what
    /// `sync::answer` answers.
    pub sync: Vec<SyncMessage>,
    /// Memory a delta brought that this node already held with the same value and second,
    /// `scope:key`: a hash that differed there came from the key order of an object alone.
    pub same_value: Vec<String>,
}

/// Imports every memory and skill message among `items` into `batch` (one group commit, run
/// with `SharedReplica::batch`). Anything else is counted as ignored with its reason, and so
/// is a message whose signature does not verify against the key `trusted` holds for its
/// sender; only a failing store is an error.
pub fn ingest(
    batch: &mut Batch<'_>,
    items: &[Item],
    trusted: &TrustedKeys,
) -> Result<IngestReport, ReplicaError> {
    let mut report = IngestReport::default();
    for (index, item) in items.iter().enumerate() {
        let outcome = apply(batch, item, trusted, &mut report)?;
        report.record(index + 1, outcome);
    }
    Ok(report)
}

enum Outcome {
    /// A memory message, and what became of its version.
    Memory(ImportOutcome, SignatureCheck),
    Skill(ImportOutcome, SignatureCheck),
    Ignored(String),
    /// A sync_delta: the outcome of each entry, with the entry's name for its reason.
    Delta(Vec<(String, Outcome)>),
    /// A sync_summary or sync_request: answered (`sync::answer`), neither ingested nor ignored.
    Answered,
}

impl IngestReport {
    fn record(&mut self, position: usize, outcome: Outcome) {
        let imported = match outcome {
            Outcome::Memory(imported, check) => {
                self.summary.memory += 1;
                self.signatures.push((position, check));
                imported
            }
            Outcome::Skill(imported, check) => {
                self.summary.skill += 1;
                self.signatures.push((position, check));
                imported
            }
            Outcome::Ignored(reason) => {
                self.summary.ignored += 1;
                self.reasons.push((position, reason));
                return;
            }
            // Neither changes nor refuses a version.
            Outcome::Answered => ImportOutcome::Held,
            Outcome::Delta(entries) => {
                for (name, outcome) in entries {
                    match outcome {
                        Outcome::Ignored(reason) => {
                            self.reasons.push((position, format!("{name}: {reason}")))
                        }
                        outcome => self.record(position, outcome),
                    }
                }
                // Each entry was recorded on its own.
                ImportOutcome::Held
            }
        };
        self.summary.ingested = self.summary.memory + self.summary.skill;
        match imported {
            ImportOutcome::Applied => self.changed += 1,
            ImportOutcome::Held => {}
            ImportOutcome::NotApplied(reason) => {
                self.summary.not_applied += 1;
                self.not_applied.push((position, reason.to_string()));
            }
        }
    }
}

fn apply(
    batch: &mut Batch<'_>,
    item: &Item,
    trusted: &TrustedKeys,
    report: &mut IngestReport,
) -> Result<Outcome, ReplicaError> {
    let text = match item {
        Ok(text) => text.get(),
        Err(junk) => return Ok(Outcome::Ignored(junk.to_string())),
    };
    let value: Value = match serde_json::from_str(text) {
        Ok(value) => value,
        Err(error) => return Ok(Outcome::Ignored(format!("not JSON: {error}"))),
    };
    if sync::is_sync(&value) {
        return match sync::read(text, &value) {
            Ok(SyncMessage::Delta(delta)) => {
                let entries = merge_delta(batch, &delta, trusted, report)?;
                report.sync.push(SyncMessage::Delta(delta.merged()));
                Ok(Outcome::Delta(entries))
            }
            Ok(message) => {
                report.sync.push(message);
                Ok(Outcome::Answered)
            }
            Err(refused) => Ok(Outcome::Ignored(format!("refused: {refused}"))),
        };
    }
    let message = match classify(&value) {
        Ok(message) => message,
        Err(reason) => return Ok(Outcome::Ignored(reason.to_string())),
    };
    if let Message::Request(request) = message {
        report.requests.push(request);
        return Ok(Outcome::Ignored(
            "a mesh_request is answered, not ingested".to_string(),
        ));
    }
    import(batch, text, &value, message, trusted)
}

/// Imports a memory or skill message, once its signature (if any) verifies: a forged
/// signature is worse than none, so the message is refused, not imported unsigned.
fn import(
    batch: &mut Batch<'_>,
    text: &str,
    value: &Value,
    message: Message,
    trusted: &TrustedKeys,
) -> Result<Outcome, ReplicaError> {
    let check = signing::check(text, value, trusted);
    if let SignatureCheck::Invalid { reason } = check {
        return Ok(Outcome::Ignored(format!(
            "refused: bad signature: {reason}"
        )));
    }
    Ok(match message {
        Message::Request(_) => Outcome::Ignored("a mesh_request is answered, not ingested".into()),
        Message::Memory(entry) => {
            let entry = with_checked_claim(entry, &check, batch.node_id());
            match refused(batch.import_memory_judged(entry, Via::Bridge))? {
                Ok(changed) => Outcome::Memory(changed, check),
                Err(reason) => Outcome::Ignored(reason),
            }
        }
        Message::Skill(skill) => match refused(import_skill(batch, skill))? {
            Ok(changed) => Outcome::Skill(changed, check),
            Err(reason) => Outcome::Ignored(reason),
        },
    })
}

/// Merges a delta's entries, each as the bridge message it is without its `type`: the same
/// checks, trust rules and last-write-wins as any bridge message.
fn merge_delta(
    batch: &mut Batch<'_>,
    delta: &sync::PeerDelta,
    trusted: &TrustedKeys,
    report: &mut IngestReport,
) -> Result<Vec<(String, Outcome)>, ReplicaError> {
    let lists = [("memory", &delta.memory), ("skill", &delta.skills)];
    let mut outcomes = Vec::new();
    for (kind, entries) in lists {
        for (index, entry) in entries.iter().enumerate() {
            let name = format!("sync_delta {kind} entry {}", index + 1);
            let outcome = match sync::entry_message(kind, entry.get(), &delta.node_scope) {
                Ok((text, value)) => merge_entry(batch, &text, &value, trusted, report)?,
                Err(reason) => Outcome::Ignored(reason),
            };
            outcomes.push((name, outcome));
        }
    }
    Ok(outcomes)
}

fn merge_entry(
    batch: &mut Batch<'_>,
    text: &str,
    value: &Value,
    trusted: &TrustedKeys,
    report: &mut IngestReport,
) -> Result<Outcome, ReplicaError> {
    let message = match classify(value) {
        Ok(message @ (Message::Memory(_) | Message::Skill(_))) => message,
        Ok(Message::Request(_)) => return Ok(Outcome::Ignored("not an entry".into())),
        Err(reason) => return Ok(Outcome::Ignored(reason.to_string())),
    };
    let held = match &message {
        Message::Memory(entry) => Some((
            entry.scope.clone(),
            entry.key.clone(),
            entry.value.clone(),
            entry.updated_at.unix_seconds(),
        )),
        _ => None,
    };
    let outcome = import(batch, text, value, message, trusted)?;
    let kept_ours = matches!(&outcome, Outcome::Memory(imported, _) if !imported.applied());
    if let (true, Some((scope, key, sent, second))) = (kept_ours, held) {
        let same = batch.current_memory(&scope, &key)?.is_some_and(|current| {
            !current.deleted && current.value == sent && current.updated_at.unix_seconds() == second
        });
        if same {
            report.same_value.push(format!("{scope}:{key}"));
        }
    }
    Ok(outcome)
}

/// `entry` with its claimed writer borne out, when a key this node trusts for that writer
/// signed the message: the claim is kept apart as ever, marked checked.
fn with_checked_claim(mut entry: MemoryEntry, check: &SignatureCheck, own: &str) -> MemoryEntry {
    if let SignatureCheck::Verified { node, fingerprint } = check {
        if *node == entry.node_id && entry.node_id != own {
            entry.claim = Some(Claim {
                by: entry.node_id.clone(),
                via: Via::Bridge,
                checked_with: Some(fingerprint.clone()),
            });
        }
    }
    entry
}

/// Splits a refused write (bad key, too large, a secret: the message is ignored with the
/// rule's message) from a store failure.
fn refused(
    result: Result<ImportOutcome, ReplicaError>,
) -> Result<Result<ImportOutcome, String>, ReplicaError> {
    match result {
        Ok(imported) => Ok(Ok(imported)),
        Err(error) => Ok(Err(error.into_refusal()?.to_string())),
    }
}

/// A skill message with `ts` is ordered by it (`model::import_order`). One without `ts` has
/// no time to compare, so it counts as received now, and applies only when it would change
/// the skill's content or source: the same message delivered again changes nothing.
fn import_skill(
    batch: &mut Batch<'_>,
    message: SkillMessage,
) -> Result<ImportOutcome, ReplicaError> {
    let live = batch
        .current_skill(&message.name)?
        .filter(|winner| !winner.deleted);
    let description = live.as_ref().map(|live| live.description.clone());
    let unchanged = live.is_some_and(|live| {
        live.content == message.content && live.source_node == message.source_node
    });
    match message.ts {
        Some(ts) => {
            batch.import_skill_judged(message.into_skill(ts, description.unwrap_or_default()))
        }
        None if unchanged => Ok(ImportOutcome::Held),
        None => {
            // Stamped by `put_skill_named`, right after the current version.
            let skill = message.into_skill(Stamp::default(), description.unwrap_or_default());
            batch.put_skill_named(skill).map(|_| ImportOutcome::Applied)
        }
    }
}

/// Which entries `emit` prints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection {
    Everything,
    Memory(Scope),
    Skills,
}

/// Memory and skill messages, one JSON text each, for everything live that was updated at or
/// after `since` (Unix seconds). With `signer`, the messages this node wrote are signed; those
/// it relays keep their author's `nodeId` and go unsigned, since a reference node checks a
/// signature against the key of the node the message names. Tombstones have no bridge form
/// and are left out.
pub fn emit(
    replica: &Replica,
    since: Option<u64>,
    selection: &Selection,
    signer: Option<&NodeKey>,
) -> Result<Vec<String>, ReplicaError> {
    let recent = |stamp: Stamp| since.is_none_or(|since| stamp.unix_seconds() >= since);
    let mut lines = Vec::new();
    let own = signer.map(|key| key.node_id().compact());
    let signer_for = |author: &str| signer.filter(|_| own.as_deref() == Some(author));
    let scope = match selection {
        Selection::Memory(scope) => Some(scope),
        _ => None,
    };
    if *selection != Selection::Skills {
        for entry in replica.list_memory(scope)? {
            if recent(entry.updated_at) {
                lines.extend(signed(
                    to_json(&MemoryOut {
                        kind: "memory",
                        scope: entry.scope.label(entry.named_writer()),
                        key: &entry.key,
                        value: &entry.value,
                        node_id: entry.named_writer(),
                        ts: entry.updated_at.unix_seconds(),
                    }),
                    signer_for(entry.named_writer()),
                ));
            }
        }
    }
    if matches!(selection, Selection::Everything | Selection::Skills) {
        for skill in replica.list_skills()? {
            if recent(skill.updated_at) {
                let signer = signer_for(&skill.source_node);
                lines.extend(signed(to_json(&SkillOut::from(&skill)), signer));
            }
        }
    }
    Ok(lines)
}

/// `line` with this node's signature in the reference scheme when `signer` is given. A
/// message that cannot be signed (a value nested deeper than `canonical` reads, which only
/// a peer could have stored) is left out with a warning rather than sent unsigned.
fn signed(line: String, signer: Option<&NodeKey>) -> Option<String> {
    let Some(key) = signer else {
        return Some(line);
    };
    match signing::sign(&line, key) {
        Ok(signed) => Some(signed),
        Err(error) => {
            tracing::warn!(%error, "a bridge message is left out: it cannot be signed");
            None
        }
    }
}

/// Field order follows formats.md, so emitted messages read like the reference's.
#[derive(Serialize)]
struct MemoryOut<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    scope: String,
    key: &'a str,
    value: &'a Value,
    #[serde(rename = "nodeId")]
    node_id: &'a str,
    ts: u64,
}

#[derive(Serialize)]
struct SkillOut<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    name: &'a str,
    #[serde(rename = "sourceNode")]
    source_node: &'a str,
    content: &'a str,
    ts: u64,
}

impl<'a> From<&'a Skill> for SkillOut<'a> {
    fn from(skill: &'a Skill) -> Self {
        SkillOut {
            kind: "skill",
            name: &skill.name,
            source_node: &skill.source_node,
            content: skill.body(),
            ts: skill.updated_at.unix_seconds(),
        }
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct MeshResponse<'a> {
    #[serde(rename = "type")]
    message_type: &'static str,
    request_id: &'a str,
    kind: Kind,
    node_id: &'a str,
    found: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    value: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    content: Option<String>,
    ts: u64,
}

/// The `mesh_response` this node sends for `request`, from its replica; a `node` scope is
/// this node's own, as in the reference. `responder` is the
/// `nodeId` it answers as (the webhook's `MESH_NODE_ID`); `None`: the node's own id. With
/// `signer`, the answer is signed as `emit` signs; `None` when it cannot be.
pub fn respond(
    replica: &Replica,
    request: &MeshRequest,
    responder: Option<&str>,
    wall_seconds: u64,
    signer: Option<&NodeKey>,
) -> Result<Option<String>, ReplicaError> {
    let (value, content) = match request.kind {
        Kind::Memory => (lookup_memory(replica, request)?, None),
        Kind::Skill => {
            let skill = match request.name.as_deref() {
                Some(name) => replica.get_skill(name)?,
                None => None,
            };
            (None, skill.map(|skill| skill.body().to_string()))
        }
    };
    let answer = to_json(&MeshResponse {
        message_type: "mesh_response",
        request_id: &request.request_id,
        kind: request.kind,
        node_id: responder.unwrap_or(replica.node_id()),
        found: value.is_some() || content.is_some(),
        value,
        content,
        ts: wall_seconds,
    });
    Ok(signed(answer, signer))
}

fn lookup_memory(replica: &Replica, request: &MeshRequest) -> Result<Option<Value>, ReplicaError> {
    let (Some(scope), Some(key)) = (request.scope.as_deref(), request.key.as_deref()) else {
        return Ok(None);
    };
    // `node` is the responder's own scope: the reference looks `node:<key>` up in its own
    // cache, where `node` entries are its own (meshd writes its cache the same way).
    let Ok(scope) = message::scope_of(scope, None, replica.node_id()) else {
        return Ok(None);
    };
    Ok(replica.get_memory(&scope, key)?.map(|entry| entry.value))
}

fn to_json(value: &impl Serialize) -> String {
    serde_json::to_string(value).expect("bridge messages always serialize")
}
