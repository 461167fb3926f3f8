//! `meshd cache`: the files OpenClaw and the reference tools read.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{remote, Command, CommandError, Context, Effects, WHOLE_STORE_PATIENCE};
use crate::cache::{CachePaths, CacheReport};

/// Rewrites the caches where the node's meshd.toml and `$OPENCLAW_HOME` say, even when
/// `[cache] enabled = false` (that only stops the daemon from keeping them current).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CacheWrite {}

/// What was written, and where: a running daemon writes where its own configuration says.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CachesWritten {
    #[serde(with = "remote::CacheReport")]
    pub report: CacheReport,
    #[serde(with = "remote::CachePaths")]
    pub paths: CachePaths,
}

impl Command for CacheWrite {
    type Reply = CachesWritten;
    /// The caches are derived files, not memory or skills.
    const EFFECTS: Effects = Effects::NONE;

    fn patience(&self) -> Duration {
        WHOLE_STORE_PATIENCE
    }

    fn execute(self, node: &Context) -> Result<CachesWritten, CommandError> {
        // No reading back here: without the daemon nothing could act on what is read, and
        // the daemon reads back before each of its own writes.
        let report = node
            .cache
            .sync(&node.replica, None)
            .map_err(CommandError::failed)?;
        Ok(CachesWritten {
            report,
            paths: node.cache.paths().clone(),
        })
    }
}
