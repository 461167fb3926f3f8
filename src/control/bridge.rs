//! `meshd bridge`: Phase 1 bridge messages in and out.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{remote, Command, CommandError, Context, Effects, WHOLE_STORE_PATIENCE};
use crate::bridge::sync::{self, Answer};
use crate::bridge::{self, Selection, SyncMessage, Unwrap};
use crate::replica::system_clock;

/// Imports bridge messages as the CLI read them (a file or stdin: the daemon may not see the
/// file).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BridgeIngest {
    pub payload: String,
    #[serde(with = "unwrap_name")]
    pub unwrap: Option<Unwrap>,
}

/// The counts, how many messages changed the replica, why each ignored item (by its
/// 1-based position) was ignored, and why each message not applied was not.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Ingested {
    #[serde(with = "remote::Summary")]
    pub summary: bridge::Summary,
    pub changed: usize,
    pub ignored: Vec<(usize, String)>,
    /// Absent in the replies of a daemon older than the field.
    #[serde(default)]
    pub not_applied: Vec<(usize, String)>,
}

impl Command for BridgeIngest {
    type Reply = Ingested;
    const EFFECTS: Effects = Effects::DATA;

    fn patience(&self) -> Duration {
        WHOLE_STORE_PATIENCE
    }

    fn execute(self, node: &Context) -> Result<Ingested, CommandError> {
        let items = bridge::items(&self.payload, self.unwrap);
        let report = node
            .replica
            .batch(|batch| bridge::ingest(batch, &items, &node.bridge.trusted))
            .map_err(CommandError::failed)?;
        Ok(Ingested {
            summary: report.summary,
            changed: report.changed,
            ignored: report.reasons,
            not_applied: report.not_applied,
        })
    }
}

/// Bridge messages for what the replica holds, one JSON text each.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct BridgeEmit {
    /// Unix seconds.
    pub since: Option<u64>,
    /// A memory scope or `skills`; everything when absent.
    pub scope: Option<String>,
}

impl Command for BridgeEmit {
    type Reply = Vec<String>;
    const EFFECTS: Effects = Effects::NONE;

    fn patience(&self) -> Duration {
        WHOLE_STORE_PATIENCE
    }

    fn execute(self, node: &Context) -> Result<Vec<String>, CommandError> {
        let selection = match self.scope.as_deref() {
            None => Selection::Everything,
            Some("skills") => Selection::Skills,
            Some(scope) => Selection::Memory(node.scope(scope)?),
        };
        Ok(node.replica.with(|replica| {
            bridge::emit(replica, self.since, &selection, node.bridge.signer.as_ref())
        })?)
    }
}

/// A `mesh_response` for every `mesh_request` in the payload; everything else is not a
/// question and is passed over.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BridgeRespond {
    pub payload: String,
    #[serde(with = "unwrap_name")]
    pub unwrap: Option<Unwrap>,
}

impl Command for BridgeRespond {
    type Reply = Vec<String>;
    const EFFECTS: Effects = Effects::NONE;

    fn execute(self, node: &Context) -> Result<Vec<String>, CommandError> {
        let requests: Vec<_> = bridge::items(&self.payload, self.unwrap)
            .iter()
            .filter_map(|item| item.as_ref().ok())
            .filter_map(|text| serde_json::from_str(text.get()).ok())
            .filter_map(|value| match bridge::classify(&value) {
                Ok(bridge::Message::Request(request)) => Some(request),
                _ => None,
            })
            .collect();
        let now = system_clock() / 1000;
        let signer = node.bridge.signer.as_ref();
        let answers: Vec<Option<String>> = node.replica.with(|replica| {
            requests
                .iter()
                .map(|request| bridge::respond(replica, request, None, now, signer))
                .collect::<Result<_, _>>()
        })?;
        Ok(answers.into_iter().flatten().collect())
    }
}

/// Answers the sync messages of a payload (`bridge::sync`): a delta's entries are merged by
/// the bridge's rule, a summary gets a request and a delta, a request a delta. Memory and skill
/// messages beside them are not this command's: `BridgeIngest` imports them.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BridgeSyncAnswer {
    pub payload: String,
    #[serde(with = "unwrap_name")]
    pub unwrap: Option<Unwrap>,
}

/// What answering a payload's sync messages did and says.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SyncAnswered {
    /// The answers, one JSON message each, to send back.
    pub messages: Vec<String>,
    /// Sync messages read: summaries, requests, deltas.
    pub read: (usize, usize, usize),
    /// The node the sync messages came from (their `nodeId`), when they name one.
    pub peer: Option<String>,
    /// Delta entries that changed the replica.
    pub changed: usize,
    pub ignored: Vec<(usize, String)>,
    pub answer: Answer,
    /// `scope:key` a delta brought with the value this node holds at the same second.
    pub same_value: Vec<String>,
}

impl Command for BridgeSyncAnswer {
    type Reply = SyncAnswered;
    const EFFECTS: Effects = Effects::DATA;

    fn patience(&self) -> Duration {
        WHOLE_STORE_PATIENCE
    }

    fn execute(self, node: &Context) -> Result<SyncAnswered, CommandError> {
        let items: Vec<_> = bridge::items(&self.payload, self.unwrap)
            .into_iter()
            .filter(|item| item.as_ref().is_ok_and(|text| is_sync_text(text.get())))
            .collect();
        let report = node
            .replica
            .batch(|batch| bridge::ingest(batch, &items, &node.bridge.trusted))
            .map_err(CommandError::failed)?;
        let now = system_clock() / 1000;
        let answer = node
            .replica
            .with(|replica| sync::answer(replica, &report.sync, now))?;
        let mut read = (0, 0, 0);
        for message in &report.sync {
            match message {
                SyncMessage::Summary(_) => read.0 += 1,
                SyncMessage::Request(_) => read.1 += 1,
                SyncMessage::Delta(_) => read.2 += 1,
            }
        }
        Ok(SyncAnswered {
            messages: answer.messages.clone(),
            read,
            peer: report.sync.iter().map(sync_sender).next_back(),
            changed: report.changed,
            ignored: report.reasons,
            answer,
            same_value: report.same_value,
        })
    }
}

fn is_sync_text(text: &str) -> bool {
    serde_json::from_str::<serde_json::Value>(text).is_ok_and(|value| sync::is_sync(&value))
}

fn sync_sender(message: &SyncMessage) -> String {
    match message {
        SyncMessage::Summary(summary) => summary.node_id.clone(),
        SyncMessage::Request(request) => request.node_id.clone(),
        SyncMessage::Delta(delta) => delta.node_id.clone(),
    }
}

/// This node's `sync_summary`, naming scopes for `peer` when it is known.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct BridgeSyncSummary {
    pub peer: Option<String>,
}

/// The summary, and this node's id (the `nodeId` of its sync messages).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OwnSummary {
    pub node_id: String,
    pub summary: String,
}

impl Command for BridgeSyncSummary {
    type Reply = OwnSummary;
    const EFFECTS: Effects = Effects::NONE;

    fn patience(&self) -> Duration {
        WHOLE_STORE_PATIENCE
    }

    fn execute(self, node: &Context) -> Result<OwnSummary, CommandError> {
        let now = system_clock() / 1000;
        node.replica.with(|replica| {
            Ok(OwnSummary {
                node_id: replica.node_id().to_string(),
                summary: sync::summary(replica, self.peer.as_deref(), now)?,
            })
        })
    }
}

/// An envelope travels by the name the CLI takes (`telegram`, `discord`, `generic`).
mod unwrap_name {
    use serde::de::Error;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use crate::bridge::Unwrap;

    pub fn serialize<S: Serializer>(unwrap: &Option<Unwrap>, s: S) -> Result<S::Ok, S::Error> {
        unwrap.map(|u| u.to_string()).serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Unwrap>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|name| name.parse().map_err(D::Error::custom))
            .transpose()
    }
}
