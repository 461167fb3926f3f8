//! The local HTTP API (axum): the reference Phase 2 store endpoints over the replica, and
//! the reference bridge webhook (`POST /ingest`, `POST /bridge`); beside them, the node's
//! status (`GET /mesh/status`), its metrics (`GET /metrics`) and the status page (`GET /` in a
//! browser). `router` builds it, `serve` runs it; the daemon and `meshd api serve` start the
//! same function, with `node_settings`.

mod body_type;
mod browser;
mod conflicts;
mod guard;
mod handlers;
mod metrics;
mod node;
mod page;
mod search;
mod settings;
pub mod token;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::routing::{get, post};
use axum::{middleware, Router};
use tokio::net::TcpListener;

use crate::replica::SharedReplica;
use crate::search::Searcher;
pub use browser::BrowserRules;
pub use guard::{Auth, Credentials, HttpError, RateLimiter, RateLimiters, RouteGroup};
pub use node::NodeView;
pub use settings::{node_settings, ApiSettings};
use token::TokenError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("refusing to serve the API on {0} without authentication: set [api] bearer_token (or auth_header and auth_secret), or MESHD_API_BEARER, or listen on 127.0.0.1")]
    OpenToNetwork(SocketAddr),
    #[error("[api] {0}")]
    Config(String),
    #[error(transparent)]
    Token(#[from] TokenError),
    #[error("the API server failed: {0}")]
    Io(#[from] std::io::Error),
}

/// Refuses an address reachable from other machines unless requests must authenticate.
pub fn check_bind(addr: SocketAddr, settings: &ApiSettings) -> Result<(), ApiError> {
    if addr.ip().is_loopback() || settings.auth.is_some() {
        Ok(())
    } else {
        Err(ApiError::OpenToNetwork(addr))
    }
}

/// Called after every request that changed the replica (the cache writer's hook).
pub type OnChange = Arc<dyn Fn() + Send + Sync>;

/// What the handlers share.
#[derive(Clone)]
pub struct ApiState {
    replica: SharedReplica,
    settings: Arc<ApiSettings>,
    limiters: Arc<RateLimiters>,
    on_change: OnChange,
    /// `None` where no search index is kept (`meshd api serve`).
    search: Option<Arc<Searcher>>,
    /// The node's status and counters; `None` where no mesh runs (`meshd api serve`).
    node: Option<NodeView>,
    /// The keys bridge messages are checked and signed with; none by default.
    bridge: Arc<crate::bridge::BridgeKeys>,
}

impl ApiState {
    pub fn new(replica: SharedReplica, settings: ApiSettings) -> ApiState {
        ApiState {
            replica,
            limiters: Arc::new(RateLimiters::new(&settings)),
            settings: Arc::new(settings),
            on_change: Arc::new(|| {}),
            search: None,
            node: None,
            bridge: Default::default(),
        }
    }

    pub fn with_bridge(mut self, keys: Arc<crate::bridge::BridgeKeys>) -> ApiState {
        self.bridge = keys;
        self
    }

    pub fn with_search(mut self, search: Arc<Searcher>) -> ApiState {
        self.search = Some(search);
        self
    }

    /// Serves `/mesh/status`, the status page's data, and `/metrics`.
    pub fn with_node(mut self, node: NodeView) -> ApiState {
        self.node = Some(node);
        self
    }

    pub fn on_change(mut self, hook: impl Fn() + Send + Sync + 'static) -> ApiState {
        self.on_change = Arc::new(hook);
        self
    }
}

/// Every route; docs/openapi.yaml describes them.
pub fn router(state: ApiState) -> Router {
    let mut routes = Router::new();
    // `BRIDGE_METRICS=0` turns the route off, as in the reference webhook (404).
    if state.settings.metrics_enabled {
        routes = routes.route("/metrics", get(metrics::metrics));
    }
    routes
        .route("/", get(page::index))
        .route("/health", get(handlers::health))
        .route(
            "/mesh/memory",
            get(handlers::list_memory).put(handlers::put_memory),
        )
        .route("/mesh/memory/{scope}/{*key}", get(handlers::get_memory))
        .route(
            "/mesh/history/{scope}/{*key}",
            get(handlers::memory_history),
        )
        .route("/mesh/query", post(search::query))
        .route(
            "/mesh/skills",
            get(handlers::list_skills).put(handlers::put_skill),
        )
        .route("/mesh/skills/{name}", get(handlers::get_skill))
        .route("/mesh/status", get(node::status))
        .route("/mesh/conflicts", get(conflicts::list))
        .route("/ingest", post(handlers::ingest))
        .route("/bridge", post(handlers::bridge))
        .fallback(handlers::not_found)
        .layer(middleware::from_fn_with_state(state.clone(), guard::guard))
        .layer(middleware::map_response(guard::json_errors))
        .with_state(state)
}

/// Serves the API on `listener` until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    state: ApiState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ApiError> {
    let addr = listener.local_addr()?;
    check_bind(addr, &state.settings)?;
    if !addr.ip().is_loopback() && !state.settings.browsers.has_allowed_hosts() {
        tracing::warn!(
            %addr,
            "only requests to a loopback name or address are served: list the names clients \
             use for this machine in [api] allowed_hosts"
        );
    }
    let service = router(state).into_make_service_with_connect_info::<SocketAddr>();
    axum::serve(listener, service)
        .with_graceful_shutdown(shutdown)
        .await?;
    Ok(())
}
