//! The search tools: `memory_search` and `skill_search`, each the `control::Search` command.

use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{json, Value};

use super::tools::{Kind, Tool};
use crate::control::Search;
use crate::search::{Hit, Mode, SearchResults, Target};

const QUERY: &str = "What to look for, in plain words, e.g. `deadline for the website \
    project` or `preferred editor theme`. Every word is a search word; no query syntax.";

const SCOPE: &str = "Only memory of this scope: `mesh`, `node`, `user:<id>`, `node:<id>`, or \
    `user:*` for every user's scope. Every scope when absent.";

const LIMIT: &str = "At most this many results, 1 to 100; 10 when absent.";

const MODE: &str = "How to rank: `fts` (by the words, BM25), `semantic` (by meaning, needs an \
    embedding endpoint on this node), `hybrid` (both). When absent: hybrid if this node has an \
    embedding endpoint, else fts.";

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct MemoryQuery {
    #[schemars(description = QUERY)]
    query: String,
    #[schemars(description = SCOPE)]
    #[serde(default)]
    scope: Option<String>,
    #[schemars(description = LIMIT)]
    #[serde(default)]
    limit: Option<usize>,
    #[schemars(description = MODE)]
    #[serde(default)]
    mode: Option<Mode>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct SkillQuery {
    #[schemars(description = QUERY)]
    query: String,
    #[schemars(description = LIMIT)]
    #[serde(default)]
    limit: Option<usize>,
    #[schemars(description = MODE)]
    #[serde(default)]
    mode: Option<Mode>,
}

pub(super) fn tools() -> Result<Vec<Tool>, String> {
    Ok(vec![
        Tool::new(
            "memory_search",
            "Search shared memory by words (and by meaning when this node has an embedding \
             endpoint), best match first. Each hit gives the scope, the key and a snippet of \
             the value around the words found; read a whole value with memory_get.",
            Kind::Reads,
            |a: MemoryQuery| Search {
                query: a.query,
                scope: a.scope,
                target: Target::Memory,
                limit: a.limit,
                mode: a.mode,
            },
            shown,
        )?,
        Tool::new(
            "skill_search",
            "Search the shared skills by name, description and text, best match first. Each \
             hit gives the skill's name and a snippet; read the whole skill with skill_get.",
            Kind::Reads,
            |a: SkillQuery| Search {
                query: a.query,
                scope: None,
                target: Target::Skills,
                limit: a.limit,
                mode: a.mode,
            },
            shown,
        )?,
    ])
}

fn shown(results: SearchResults) -> Value {
    let hits: Vec<Value> = results.hits.iter().map(hit).collect();
    let mut shown = json!({"mode": results.mode, "hits": hits});
    if results.not_embedded > 0 {
        shown["not_embedded"] = json!(results.not_embedded);
    }
    shown
}

fn hit(hit: &Hit) -> Value {
    match &hit.scope {
        Some(scope) => json!({"scope": scope, "key": hit.key, "snippet": hit.snippet}),
        None => json!({"name": hit.key, "snippet": hit.snippet}),
    }
}
