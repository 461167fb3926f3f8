//! The routes, with the reference servers' shapes and status codes.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{json, Map, Value};

use super::guard::{BridgeText, HttpError, JsonText};
use super::search;
use super::ApiState;
use crate::bridge::message::node_name;
use crate::bridge::{self, Summary, Unwrap};
use crate::model::{secret, Authorship, MemoryEntry, Scope, Skill, Stamp, Via};
use crate::replica::{system_clock, Batch, Replica, ReplicaError, StoreTaskFailed};
use crate::store::{MemoryRow, SkillRow};

type Answer<T> = Result<Json<T>, HttpError>;

/// Up, and whether it takes writes: 503 with the reason while the node is read-only (reads
/// still work, so `storeAvailable` stays true).
pub async fn health(State(state): State<ApiState>) -> Response {
    let read_only = state
        .replica
        .run(|replica| replica.read_only_reason())
        .await
        .unwrap_or_else(|e| Some(e.to_string()));
    match read_only {
        None => {
            Json(json!({"ok": true, "service": "meshd", "storeAvailable": true})).into_response()
        }
        Some(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(
                json!({"ok": false, "service": "meshd", "storeAvailable": true,
                        "writable": false, "error": reason}),
            ),
        )
            .into_response(),
    }
}

pub async fn not_found() -> HttpError {
    HttpError::not_found()
}

/// Runs `f` on the replica off the async threads (writes wait for the disk), then tells the
/// cache writer when `f` reports a change.
pub(super) async fn with_replica<T: Send + 'static>(
    state: &ApiState,
    f: impl FnOnce(&mut Replica) -> Result<(T, bool), HttpError> + Send + 'static,
) -> Result<T, HttpError> {
    let (value, changed) = state
        .replica
        .run(f)
        .await
        .map_err(|e| HttpError::internal(e.to_string()))??;
    if changed {
        (state.on_change)();
    }
    Ok(value)
}

/// A batch of writes (`SharedReplica::run_batch`: skill text work happens off the replica
/// lock); tells the cache writer when `f` reports a change.
async fn write_batch<T: Send + 'static>(
    state: &ApiState,
    f: impl FnMut(&mut Batch<'_>) -> Result<(T, bool), ReplicaError> + Send + 'static,
) -> Result<T, HttpError> {
    written(state, state.replica.run_batch(f).await)
}

/// Ends a write run on the blocking pool: maps its failure, and tells the cache writer when
/// it reports a change.
fn written<T>(
    state: &ApiState,
    outcome: Result<Result<(T, bool), ReplicaError>, StoreTaskFailed>,
) -> Result<T, HttpError> {
    let (value, changed) = outcome
        .map_err(|e| HttpError::internal(e.to_string()))?
        .map_err(write_error)?;
    if changed {
        (state.on_change)();
    }
    Ok(value)
}

/// A read the store could not answer (a damaged index) is ours; one refused after a failed
/// write says so with 507, as the write was.
pub(super) fn read_error(error: ReplicaError) -> HttpError {
    match error {
        unreadable @ ReplicaError::Unreadable(_) => {
            HttpError::new(StatusCode::INSUFFICIENT_STORAGE, unreadable.to_string())
        }
        failure => HttpError::internal(failure.to_string()),
    }
}

/// A refused write is the caller's mistake (400, with the rule); anything else is ours.
fn write_error(error: ReplicaError) -> HttpError {
    match error.into_refusal() {
        Ok(reason) => HttpError::bad_request(reason.to_string()),
        Err(
            full @ (ReplicaError::ReadOnly(_)
            | ReplicaError::Failed(_)
            | ReplicaError::Unreadable(_)
            | ReplicaError::NotDurable(_)),
        ) => HttpError::new(StatusCode::INSUFFICIENT_STORAGE, full.to_string()),
        Err(failure) => HttpError::internal(failure.to_string()),
    }
}

/// A scope as a client names it (`node` is this node's, `own`).
fn scope(text: &str, own: &str) -> Result<Scope, HttpError> {
    Scope::parse(text, own).map_err(|e| HttpError::bad_request(e.to_string()))
}

/// A memory row in the reference's shape (`node_id` the writer it names), plus who wrote it as
/// this node verified (`author`, `claimed_by`, `via`, `verified`).
#[derive(Debug, Serialize)]
pub struct AuthoredRow {
    #[serde(flatten)]
    row: MemoryRow,
    #[serde(flatten)]
    authorship: Authorship,
}

pub(super) fn memory_row(entry: &MemoryEntry, own: &str) -> AuthoredRow {
    AuthoredRow {
        row: MemoryRow::new(entry, entry.scope.label(own)),
        authorship: entry.authorship(),
    }
}

#[derive(Deserialize)]
pub struct ListQuery {
    scope: Option<String>,
    q: Option<String>,
    limit: Option<String>,
    mode: Option<String>,
}

/// Newest first, as the reference lists rows, the newest `limit` when given (the status
/// page's latest entries); with `q`, a search (`api/search.rs`).
pub async fn list_memory(
    State(state): State<ApiState>,
    Query(query): Query<ListQuery>,
) -> Result<Response, HttpError> {
    if let Some(text) = query.q.filter(|q| !q.is_empty()) {
        let asked = search::Asked {
            query: text,
            scope: query.scope,
            limit: query.limit,
            mode: query.mode,
        };
        return Ok(search::search(&state, asked).await?.into_response());
    }
    let limit = match query.limit.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(text) => Some(text.parse::<usize>().map_err(|_| {
            HttpError::bad_request("limit must be a whole number (the newest rows returned)")
        })?),
    };
    let rows = with_replica(&state, move |replica| {
        let scope = (query.scope.filter(|s| !s.is_empty()))
            .map(|s| scope(&s, replica.node_id()))
            .transpose()?;
        let mut entries = replica.list_memory(scope.as_ref()).map_err(read_error)?;
        entries.sort_by_key(|entry| std::cmp::Reverse(entry.updated_at));
        entries.truncate(limit.unwrap_or(usize::MAX));
        let own = replica.node_id();
        let rows: Vec<AuthoredRow> = entries.iter().map(|e| memory_row(e, own)).collect();
        Ok((rows, false))
    })
    .await?;
    Ok(Json(rows).into_response())
}

pub async fn get_memory(
    State(state): State<ApiState>,
    Path((scope_text, key)): Path<(String, String)>,
) -> Answer<AuthoredRow> {
    let row = with_replica(&state, move |replica| {
        let entry = replica
            .get_memory(&scope(&scope_text, replica.node_id())?, &key)
            .map_err(read_error)?
            .ok_or_else(HttpError::not_found)?;
        Ok((memory_row(&entry, replica.node_id()), false))
    })
    .await?;
    Ok(Json(row))
}

/// One version of a key's history: the row, its clock in milliseconds, whether it is a
/// tombstone, the change that wrote it, and whether it is the current winner.
#[derive(Debug, Serialize)]
pub struct HistoryRow {
    #[serde(flatten)]
    row: AuthoredRow,
    updated_at_ms: u64,
    deleted: bool,
    change: String,
    change_time: i64,
    winner: bool,
}

/// Every version ever written to a key, oldest first (`meshd mem history`); 404 when the
/// node holds no such scope or the key was never written.
pub async fn memory_history(
    State(state): State<ApiState>,
    Path((scope_text, key)): Path<(String, String)>,
) -> Answer<Vec<HistoryRow>> {
    let rows = with_replica(&state, move |replica| {
        let scope = scope(&scope_text, replica.node_id())?;
        let versions = replica
            .memory_history(&scope, &key)
            .map_err(read_error)?
            .filter(|versions| !versions.is_empty())
            .ok_or_else(HttpError::not_found)?;
        let own = replica.node_id();
        let rows = versions
            .into_iter()
            .map(|written| HistoryRow {
                row: memory_row(&written.version, own),
                updated_at_ms: written.version.updated_at.unix_millis(),
                deleted: written.version.deleted,
                change: written.change,
                change_time: written.change_time,
                winner: written.winner,
            })
            .collect();
        Ok((rows, false))
    })
    .await?;
    Ok(Json(rows))
}

/// The body as a JSON object, or 400.
fn object(text: &str) -> Result<Map<String, Value>, HttpError> {
    match serde_json::from_str(text) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(HttpError::bad_request("The body must be a JSON object")),
        Err(_) => Err(HttpError::bad_request("Invalid JSON body")),
    }
}

/// A field the reference reads as "missing" when absent, null or empty.
fn given(map: &Map<String, Value>, field: &str) -> Result<Option<String>, HttpError> {
    match map.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) if text.is_empty() => Ok(None),
        Some(Value::String(text)) => Ok(Some(text.clone())),
        Some(_) => Err(HttpError::bad_request(format!("{field} must be a string"))),
    }
}

fn node_field(map: &Map<String, Value>, field: &str) -> Result<Option<String>, HttpError> {
    given(map, field)?
        .map(|id| {
            node_name(&id).ok_or_else(|| {
                HttpError::bad_request(format!(
                    "{field} must be at most 128 bytes without control characters"
                ))
            })
        })
        .transpose()
}

/// `{scope,key,value,node_id}`; the server stamps `updated_at`. `node_id` defaults to this
/// node. The write goes through validation and the secret guard like any other.
pub async fn put_memory(
    State(state): State<ApiState>,
    JsonText(body): JsonText,
) -> Answer<AuthoredRow> {
    let map = object(&body)?;
    let (Some(scope_text), Some(key), Some(value)) =
        (given(&map, "scope")?, given(&map, "key")?, map.get("value"))
    else {
        return Err(HttpError::bad_request("Missing scope, key, or value"));
    };
    let (value, node_id) = (value.clone(), node_field(&map, "node_id")?);
    let scope = scope(&scope_text, state.replica.node_id())?;
    // Committed with the puts of other requests that arrive meanwhile: one flush for all.
    let grouped = state.replica.run_grouped(move |batch| {
        let entry = MemoryEntry {
            scope: scope.clone(),
            key: key.clone(),
            value: value.clone(),
            node_id: node_id
                .clone()
                .unwrap_or_else(|| batch.node_id().to_string()),
            // Stamped by `put_memory_claimed`, after the current version.
            updated_at: Stamp::default(),
            deleted: false,
            author: None,
            claim: None,
        };
        Ok((batch.put_memory_claimed(entry, Via::Api)?, true))
    });
    let entry = written(&state, Ok(grouped.await))?;
    Ok(Json(memory_row(&entry, state.replica.node_id())))
}

/// Newest first, as the reference lists rows.
pub async fn list_skills(State(state): State<ApiState>) -> Answer<Vec<SkillRow>> {
    let rows = with_replica(&state, |replica| {
        let mut skills = replica.list_skills().map_err(read_error)?;
        skills.sort_by_key(|skill| std::cmp::Reverse(skill.updated_at));
        Ok((skills.iter().map(SkillRow::from).collect(), false))
    })
    .await?;
    Ok(Json(rows))
}

pub async fn get_skill(
    State(state): State<ApiState>,
    Path(name): Path<String>,
) -> Answer<SkillRow> {
    let row = with_replica(&state, move |replica| {
        let skill =
            (replica.get_skill(&name).map_err(read_error)?).ok_or_else(HttpError::not_found)?;
        Ok((SkillRow::from(&skill), false))
    })
    .await?;
    Ok(Json(row))
}

/// `content` or `path` as sent: absent, null, or text.
fn nullable(map: &Map<String, Value>, field: &str) -> Result<Option<Option<String>>, HttpError> {
    match map.get(field) {
        None => Ok(None),
        Some(Value::Null) => Ok(Some(None)),
        Some(Value::String(text)) => Ok(Some(Some(text.clone()))),
        Some(_) => Err(HttpError::bad_request(format!(
            "{field} must be a string or null"
        ))),
    }
}

/// `{name,source_node,content}` or `{name,source_node,path}`; the server stamps
/// `updated_at`, and the skill keeps the description it had.
pub async fn put_skill(
    State(state): State<ApiState>,
    JsonText(body): JsonText,
) -> Answer<SkillRow> {
    let map = object(&body)?;
    let (Some(name), Some(source_node)) = (given(&map, "name")?, node_field(&map, "source_node")?)
    else {
        return Err(HttpError::bad_request("Missing name or source_node"));
    };
    let (content, path) = match (nullable(&map, "content")?, nullable(&map, "path")?) {
        (None, None) => return Err(HttpError::bad_request("Missing content or path")),
        (content, path) => (content.flatten(), path.flatten()),
    };
    if content.is_none() && path.is_none() {
        return Err(HttpError::bad_request(
            "content and path cannot both be null",
        ));
    }
    if let Some(path) = &path {
        secret::check_text("skill path", path)
            .map_err(|e| HttpError::bad_request(e.to_string()))?;
    }
    let content = content.unwrap_or_default();
    let row = write_batch(&state, move |batch| {
        let description = batch
            .current_skill(&name)?
            .filter(|held| !held.deleted)
            .map(|held| held.description);
        let skill = Skill {
            name: name.clone(),
            content: content.clone(),
            path: path.clone(),
            description: description.unwrap_or_default(),
            source_node: source_node.clone(),
            // Stamped by `put_skill_named`, after the current version.
            updated_at: Stamp::default(),
            deleted: false,
        };
        let skill = batch.put_skill_named(skill)?;
        Ok((SkillRow::from(&skill), true))
    })
    .await?;
    Ok(Json(row))
}

/// The bridge webhook's answer: the reference counts, `notApplied` when a message's version
/// was not taken (meshd's, absent otherwise), and `response` when a mesh_request was answered.
#[derive(Serialize)]
pub struct BridgeAnswer {
    ingested: usize,
    memory: usize,
    skill: usize,
    #[serde(rename = "notApplied", skip_serializing_if = "Vec::is_empty")]
    not_applied: Vec<NotAppliedItem>,
    /// A mesh_response, or for sync messages the list of answers (itself a bridge payload).
    #[serde(skip_serializing_if = "Option::is_none")]
    response: Option<Box<RawValue>>,
    /// meshd only: why sync messages or delta entries were refused, with `handleRequest`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    refused: Vec<String>,
}

/// A message of the payload (1-based `item`) whose version was not applied, and why.
#[derive(Serialize)]
struct NotAppliedItem {
    item: usize,
    reason: String,
}

/// Mesh messages as they are: one, an array, a JSON string of either, or JSON Lines.
pub async fn ingest(
    State(state): State<ApiState>,
    BridgeText(body): BridgeText,
) -> Answer<BridgeAnswer> {
    run_bridge(&state, body, None, false).await
}

#[derive(Deserialize)]
pub struct BridgeQuery {
    unwrap: Option<String>,
    #[serde(rename = "handleRequest")]
    handle_request: Option<String>,
}

/// A transport's envelope (`?unwrap=`, generic by default, as in the reference);
/// `handleRequest=1` answers a payload that is one mesh_request.
pub async fn bridge(
    State(state): State<ApiState>,
    Query(query): Query<BridgeQuery>,
    BridgeText(body): BridgeText,
) -> Answer<BridgeAnswer> {
    let unwrap = (query.unwrap.as_deref().unwrap_or("generic"))
        .parse::<Unwrap>()
        .map_err(|e| HttpError::bad_request(e.to_string()))?;
    let handle = matches!(query.handle_request.as_deref(), Some("1" | "true"));
    run_bridge(&state, body, Some(unwrap), handle).await
}

async fn run_bridge(
    state: &ApiState,
    body: String,
    unwrap: Option<Unwrap>,
    handle_request: bool,
) -> Answer<BridgeAnswer> {
    let items = bridge::items(&body, unwrap);
    let single = items.len() == 1;
    let now = system_clock();
    let keys = state.bridge.clone();
    let report = write_batch(state, move |batch| {
        let report = bridge::ingest(batch, &items, &keys.trusted)?;
        let changed = report.changed > 0;
        Ok((report, changed))
    })
    .await?;
    for (position, reason) in &report.reasons {
        tracing::info!(position, reason, "bridge item ignored");
    }
    let sync_answer = handle_request && !report.sync.is_empty();
    let refused = if handle_request {
        sync_refusals(&report.reasons)
    } else {
        Vec::new()
    };
    let response = match report.requests.as_slice() {
        _ if sync_answer => Some(answer_sync(state, report.sync.clone(), now).await?),
        [request] if handle_request && single => {
            let request = request.clone();
            let responder = state.settings.responder.clone();
            let keys = state.bridge.clone();
            let text = with_replica(state, move |replica| {
                let signer = keys.signer.as_ref();
                let text =
                    bridge::respond(replica, &request, responder.as_deref(), now / 1000, signer)
                        .map_err(read_error)?;
                Ok((text, false))
            })
            .await?;
            text.map(|text| RawValue::from_string(text).expect("responses are JSON"))
        }
        _ => None,
    };
    let Summary {
        ingested,
        memory,
        skill,
        ..
    } = report.summary;
    let not_applied = report
        .not_applied
        .into_iter()
        .map(|(item, reason)| NotAppliedItem { item, reason })
        .collect();
    Ok(Json(BridgeAnswer {
        ingested,
        memory,
        skill,
        not_applied,
        response,
        refused,
    }))
}

/// The answers to a payload's sync messages, as one JSON list: a bridge payload the caller
/// may post back as it is.
async fn answer_sync(
    state: &ApiState,
    asked: Vec<bridge::SyncMessage>,
    now: u64,
) -> Result<Box<RawValue>, HttpError> {
    let answer = with_replica(state, move |replica| {
        let answer = bridge::sync::answer(replica, &asked, now / 1000).map_err(read_error)?;
        Ok((answer, false))
    })
    .await?;
    let list = format!("[{}]", answer.messages.join(","));
    Ok(RawValue::from_string(list).expect("sync answers are JSON"))
}

/// The reasons of refused sync messages and delta entries, with their item's position.
fn sync_refusals(reasons: &[(usize, String)]) -> Vec<String> {
    reasons
        .iter()
        .filter(|(_, reason)| {
            reason.starts_with("refused: sync_") || reason.starts_with("sync_delta")
        })
        .map(|(position, reason)| format!("item {position}: {reason}"))
        .collect()
}
