//! `meshd cache`: the files OpenClaw and the reference tools read.

use serde::{Deserialize, Serialize};

use super::{remote, Command, CommandError, Context, Effects};
use crate::cache::{self, CachePaths, CacheReport};

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

    fn execute(self, node: &Context) -> Result<CachesWritten, CommandError> {
        let snapshot = node.replica.with(|replica| cache::Snapshot::of(replica));
        let report = cache::write_snapshot(snapshot, &node.cache).map_err(CommandError::failed)?;
        Ok(CachesWritten {
            report,
            paths: node.cache.clone(),
        })
    }
}
