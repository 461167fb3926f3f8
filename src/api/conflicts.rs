//! `GET /mesh/conflicts`: the memory keys and skills holding concurrent versions, from the
//! replica's index (no document is loaded): what the status page lists and an operator or an
//! agent resolves by writing the key again.

use axum::extract::{Query, State};
use axum::Json;
use serde::{Deserialize, Serialize};

use super::guard::HttpError;
use super::handlers::{memory_row, with_replica, AuthoredRow};
use super::ApiState;
use crate::model::{MemoryEntry, Skill};
use crate::replica::Conflict;
use crate::store::SkillRow;

/// Conflicts listed when the request names no `limit`.
const DEFAULT_LIMIT: usize = 100;

#[derive(Deserialize)]
pub struct ConflictsQuery {
    limit: Option<String>,
}

/// The answer: how many in all, and the first `limit` by scope and key, skills last.
#[derive(Debug, Serialize)]
pub struct ConflictList {
    total: usize,
    conflicts: Vec<ConflictRow>,
}

/// One key or skill: the version every node shows first, then the others.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum ConflictRow {
    Memory {
        scope: String,
        key: String,
        versions: Vec<MemoryVersion>,
    },
    Skill {
        skill: String,
        versions: Vec<SkillVersion>,
    },
}

#[derive(Debug, Serialize)]
pub struct MemoryVersion {
    #[serde(flatten)]
    row: AuthoredRow,
    deleted: bool,
}

#[derive(Debug, Serialize)]
pub struct SkillVersion {
    #[serde(flatten)]
    row: SkillRow,
    deleted: bool,
}

pub async fn list(
    State(state): State<ApiState>,
    Query(query): Query<ConflictsQuery>,
) -> Result<Json<ConflictList>, HttpError> {
    let limit = match query.limit.as_deref().map(str::trim) {
        None | Some("") => DEFAULT_LIMIT,
        Some(text) => text.parse::<usize>().map_err(|_| {
            HttpError::bad_request("limit must be a whole number (the conflicts returned)")
        })?,
    };
    let list = with_replica(&state, move |replica| {
        let (conflicts, total) = replica
            .conflicts(limit)
            .map_err(super::handlers::read_error)?;
        let own = replica.node_id().to_string();
        let conflicts = conflicts.iter().map(|c| row(c, &own)).collect();
        Ok((ConflictList { total, conflicts }, false))
    })
    .await?;
    Ok(Json(list))
}

fn row(conflict: &Conflict, own: &str) -> ConflictRow {
    match conflict {
        Conflict::Memory { winner, others } => ConflictRow::Memory {
            scope: winner.scope.label(own),
            key: winner.key.clone(),
            versions: std::iter::once(winner)
                .chain(others)
                .map(|entry: &MemoryEntry| MemoryVersion {
                    row: memory_row(entry, own),
                    deleted: entry.deleted,
                })
                .collect(),
        },
        Conflict::Skill { winner, others } => ConflictRow::Skill {
            skill: winner.name.clone(),
            versions: std::iter::once(winner)
                .chain(others)
                .map(|skill: &Skill| SkillVersion {
                    row: SkillRow::from(skill),
                    deleted: skill.deleted,
                })
                .collect(),
        },
    }
}
