//! `meshd sync`: a sync round now, with every connected peer or one.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::{Command, CommandError, Context, Effects};

/// How long `meshd sync` waits for its round.
const SYNC_TIMEOUT: Duration = Duration::from_secs(60);

/// Runs a round with connected peers and waits for it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Sync {
    /// Only this peer (id or name).
    pub peer: Option<String>,
}

impl Command for Sync {
    /// What was done, for the operator.
    type Reply = String;
    /// What a round applies is pushed on and shown by the links themselves.
    const EFFECTS: Effects = Effects::NONE;

    /// The round's own bound, and time to answer after it.
    fn patience(&self) -> Duration {
        SYNC_TIMEOUT + super::ANSWER_PATIENCE
    }

    fn execute(self, node: &Context) -> Result<String, CommandError> {
        let mesh = node.mesh.as_ref().ok_or_else(|| {
            CommandError::failed("the daemon is not running: start it with `meshd run`")
        })?;
        let only = match &self.peer {
            Some(peer) => Some(node.peers.find(peer).map_err(CommandError::failed)?.id),
            None => None,
        };
        if let (Some(id), Some(name)) = (only, &self.peer) {
            if !mesh.is_connected(&id) {
                return Err(CommandError::failed(format!(
                    "{name} is not connected, so there is nothing to sync with: `meshd status` \
                     shows its state (check its address, that it runs, and that it has this node \
                     as a peer too)"
                )));
            }
        }
        let started = Instant::now();
        let done = mesh.sync_now(only, SYNC_TIMEOUT);
        if let (Some(name), 0) = (&self.peer, done) {
            return Err(CommandError::failed(format!(
                "the round with {name} did not complete within {} s; `meshd status` shows its state",
                SYNC_TIMEOUT.as_secs()
            )));
        }
        Ok(format!(
            "synced with {done} peer{} in {} ms",
            if done == 1 { "" } else { "s" },
            started.elapsed().as_millis()
        ))
    }
}
