//! Search, in the reference's shapes: `GET /mesh/memory?q=&scope=&limit=&mode=` and
//! `POST /mesh/query` with `{query (or q), scope?, limit?, mode?}`; both answer
//! `[{scope, key, snippet, score}]` (with `distance` in semantic mode, as the reference's
//! vector search gives it), best first. Memory only, as the reference searches.

use axum::extract::State;
use axum::Json;
use serde::Serialize;
use serde_json::{Map, Value};

use super::guard::{HttpError, JsonText};
use super::ApiState;
use crate::search::{Hit, Mode, ScopeFilter, SearchError, SearchRequest, Target};

/// The reference's default number of results.
const DEFAULT_LIMIT: usize = 25;

#[derive(Debug, Serialize)]
pub struct SearchRow {
    scope: String,
    key: String,
    snippet: String,
    score: f64,
    /// 1 − cosine similarity, in semantic mode only.
    #[serde(skip_serializing_if = "Option::is_none")]
    distance: Option<f64>,
}

/// What a search asks, as the query string or the body gives it.
pub struct Asked {
    pub query: String,
    pub scope: Option<String>,
    pub limit: Option<String>,
    pub mode: Option<String>,
}

/// `GET /mesh/memory?q=`, from `list_memory`.
pub async fn search(state: &ApiState, asked: Asked) -> Result<Json<Vec<SearchRow>>, HttpError> {
    let Some(searcher) = state.search.clone() else {
        return Err(HttpError::bad_request(
            "search is served by `meshd run` (this server has no search index)",
        ));
    };
    let limit = match asked.limit.as_deref().map(str::trim) {
        None | Some("") => DEFAULT_LIMIT,
        Some(text) => text.parse::<usize>().map_err(|_| {
            HttpError::bad_request(
                "limit must be a whole number (at most 100 results are returned)",
            )
        })?,
    };
    let mode = match asked.mode.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(text) => Some(text.parse::<Mode>().map_err(bad_request)?),
    };
    let replica = state.replica.clone();
    let answer = tokio::task::spawn_blocking(move || {
        let own = replica.with(|r| r.node_id().to_string());
        let scope = match asked.scope.as_deref().map(str::trim) {
            None | Some("") => ScopeFilter::Any,
            Some(text) => ScopeFilter::parse(text, &own)?,
        };
        let request = SearchRequest {
            text: asked.query,
            target: Target::Memory,
            scope,
            limit,
            mode,
        };
        searcher.search(&replica, &request)
    })
    .await
    .map_err(|e| HttpError::internal(e.to_string()))?;
    let results = answer.map_err(bad_request)?;
    let semantic = results.mode == Mode::Semantic;
    Ok(Json(
        results
            .hits
            .into_iter()
            .map(|hit| row(hit, semantic))
            .collect(),
    ))
}

/// `POST /mesh/query`.
pub async fn query(
    State(state): State<ApiState>,
    JsonText(body): JsonText,
) -> Result<Json<Vec<SearchRow>>, HttpError> {
    let map: Map<String, Value> = match serde_json::from_str(&body) {
        Ok(Value::Object(map)) => map,
        Ok(_) => return Err(HttpError::bad_request("The body must be a JSON object")),
        Err(_) => return Err(HttpError::bad_request("Invalid JSON body")),
    };
    let text = |field: &str| -> Result<Option<String>, HttpError> {
        match map.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(text)) => Ok(Some(text.clone())),
            Some(Value::Number(number)) if field == "limit" => Ok(Some(number.to_string())),
            Some(_) => Err(HttpError::bad_request(format!("{field} must be a string"))),
        }
    };
    let query = text("query")?
        .filter(|q| !q.is_empty())
        .or(text("q")?.filter(|q| !q.is_empty()))
        .ok_or_else(|| HttpError::bad_request("Missing query or q"))?;
    let asked = Asked {
        query,
        scope: text("scope")?,
        limit: text("limit")?,
        mode: text("mode")?,
    };
    search(&state, asked).await
}

fn row(hit: Hit, semantic: bool) -> SearchRow {
    SearchRow {
        scope: hit.scope.unwrap_or_default(),
        key: hit.key,
        snippet: hit.snippet,
        distance: semantic.then_some(1.0 - hit.score),
        score: hit.score,
    }
}

/// A search the caller got wrong is a 400 with the reason; a failing index or endpoint is
/// ours (500, or 502 for the embedding endpoint).
fn bad_request(error: SearchError) -> HttpError {
    match error {
        error if error.is_bad_request() => HttpError::bad_request(error.to_string()),
        error @ SearchError::Embedding { .. } => {
            HttpError::new(axum::http::StatusCode::BAD_GATEWAY, error.to_string())
        }
        error => HttpError::internal(error.to_string()),
    }
}
