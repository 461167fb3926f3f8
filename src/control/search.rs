//! `meshd search`: full-text, semantic or hybrid search over memory and skills.

use serde::{Deserialize, Serialize};

use super::{Command, CommandError, Context, Effects};
use crate::search::{Mode, ScopeFilter, SearchRequest, SearchResults, Target, DEFAULT_LIMIT};

/// Finds memory entries and skills by their words or meaning, best first.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Search {
    pub query: String,
    /// A memory scope (`mesh`, `node`, `user:<id>`), `user:*`, or `None` for all.
    #[serde(default)]
    pub scope: Option<String>,
    pub target: Target,
    #[serde(default)]
    pub limit: Option<usize>,
    /// `None`: hybrid when an embedding endpoint is configured, full text otherwise.
    #[serde(default)]
    pub mode: Option<Mode>,
}

impl Command for Search {
    type Reply = SearchResults;
    const EFFECTS: Effects = Effects::NONE;

    /// A semantic search waits for the embedding endpoint, which may be loading its model.
    fn patience(&self) -> std::time::Duration {
        std::time::Duration::from_secs(120)
    }

    fn execute(self, node: &Context) -> Result<SearchResults, CommandError> {
        let own = node.own.compact();
        let scope = match &self.scope {
            Some(text) => ScopeFilter::parse(text, &own).map_err(CommandError::failed)?,
            None => ScopeFilter::Any,
        };
        let request = SearchRequest {
            text: self.query,
            target: self.target,
            scope,
            limit: self.limit.unwrap_or(DEFAULT_LIMIT),
            mode: self.mode,
        };
        node.search
            .search(&node.replica, &request)
            .map_err(CommandError::failed)
    }
}
