//! What the API serves about the node beyond its store: `GET /mesh/status` (what
//! `meshd status --json` prints), read by the status page, and the status `/metrics` turns
//! into gauges. `meshd run` supplies it (`NodeView`); a server without it (`meshd api serve`)
//! answers these routes with 404 and says why.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;

use super::{ApiState, HttpError};
use crate::control::{CommandError, NodeStatus};
use crate::metrics::Metrics;

type StatusFn = dyn Fn() -> Result<NodeStatus, CommandError> + Send + Sync;

/// The node as the daemon sees it: its status (the `Status` command on the daemon's
/// context, mesh included) and its counters.
#[derive(Clone)]
pub struct NodeView {
    status: Arc<StatusFn>,
    pub(super) metrics: Arc<Metrics>,
}

impl NodeView {
    /// `status` runs on the blocking pool: it takes the cache files' lock and the replica.
    pub fn new(
        status: impl Fn() -> Result<NodeStatus, CommandError> + Send + Sync + 'static,
        metrics: Arc<Metrics>,
    ) -> NodeView {
        NodeView {
            status: Arc::new(status),
            metrics,
        }
    }

    /// The status; call it on a blocking thread.
    pub(super) fn status(&self) -> Result<NodeStatus, HttpError> {
        (self.status)().map_err(|e| HttpError::internal(e.to_string()))
    }
}

/// The node view, or 404 saying which server has one.
pub(super) fn view(state: &ApiState) -> Result<NodeView, HttpError> {
    state.node.clone().ok_or_else(|| {
        HttpError::new(
            StatusCode::NOT_FOUND,
            "the node's status and metrics are served by `meshd run` (this server runs without \
             the mesh)",
        )
    })
}

/// `GET /mesh/status`.
pub async fn status(State(state): State<ApiState>) -> Result<Json<NodeStatus>, HttpError> {
    let view = view(&state)?;
    let status = tokio::task::spawn_blocking(move || view.status())
        .await
        .map_err(|e| HttpError::internal(e.to_string()))??;
    Ok(Json(status))
}
