//! `meshd bridge`: Phase 1 bridge messages in and out.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{remote, Command, CommandError, Context, Effects, WHOLE_STORE_PATIENCE};
use crate::bridge::{self, Selection, Unwrap};
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
