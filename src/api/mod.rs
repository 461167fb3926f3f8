//! The local HTTP API (axum): the reference Phase 2 store endpoints over the replica, and
//! the reference bridge webhook (`POST /ingest`, `POST /bridge`); beside them, the node's
//! status (`GET /mesh/status`), its metrics (`GET /metrics`) and the status page (`GET /` in a
//! browser). `router` builds it, `serve` runs it; the daemon and `meshd api serve` start the
//! same function, with `node_settings`.

mod body_type;
mod browser;
mod guard;
mod handlers;
mod metrics;
mod node;
mod page;
mod search;
pub mod token;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::http::HeaderName;
use axum::routing::{get, post};
use axum::{middleware, Router};
use tokio::net::TcpListener;

use crate::config::{ApiConfig, Home};
use crate::replica::SharedReplica;
use crate::search::Searcher;
pub use browser::BrowserRules;
pub use guard::{Auth, HttpError, RateLimiter};
pub use node::NodeView;
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

/// The API's settings, resolved from `[api]`, the environment and the node's token file.
#[derive(Debug, Clone)]
pub struct ApiSettings {
    /// The configured credentials; when set, every request but the health check needs one.
    pub auth: Option<Auth>,
    /// The node's own token (`<home>/api.token`): always a credential, and the one a web page
    /// needs when nothing else is configured.
    pub node_token: Option<String>,
    pub browsers: BrowserRules,
    pub rate_limit_per_min: u32,
    pub max_body_bytes: usize,
}

/// The settings a node serves its API with: `[api]`, the process environment, and the
/// node's token, made now if the home predates it.
pub fn node_settings(home: &Home, config: &ApiConfig) -> Result<ApiSettings, ApiError> {
    let settings = ApiSettings::from_config(config, |var| std::env::var(var).ok())?;
    let token = token::load_or_create(&home.api_token_path())?;
    Ok(settings.with_node_token(token))
}

impl ApiSettings {
    /// Environment variables win over the file, so secrets can stay out of it:
    /// `MESHD_API_BEARER`, `MESHD_API_AUTH_HEADER`, `MESHD_API_AUTH_SECRET`.
    pub fn from_config(
        config: &ApiConfig,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<ApiSettings, ApiError> {
        // An empty variable counts as unset: `MESHD_API_BEARER=` must not erase the token
        // configured in the file and leave the API open.
        let pick = |var: &str, configured: &Option<String>| {
            env(var)
                .filter(|value| !value.is_empty())
                .or_else(|| configured.clone())
                .filter(|value| !value.is_empty())
        };
        let bearer = pick("MESHD_API_BEARER", &config.bearer_token);
        let header = match (
            pick("MESHD_API_AUTH_HEADER", &config.auth_header),
            pick("MESHD_API_AUTH_SECRET", &config.auth_secret),
        ) {
            (Some(name), Some(secret)) => Some((header_name(&name)?, secret)),
            (None, None) => None,
            _ => {
                return Err(ApiError::Config(
                    "auth_header and auth_secret go together: set both or neither".into(),
                ))
            }
        };
        let auth = (bearer.is_some() || header.is_some()).then_some(Auth { bearer, header });
        Ok(ApiSettings {
            auth,
            node_token: None,
            browsers: BrowserRules::from_config(&config.allowed_hosts, &config.allowed_origins)?,
            rate_limit_per_min: config.rate_limit_per_min,
            max_body_bytes: config.max_body_bytes,
        })
    }

    pub fn with_node_token(mut self, token: impl Into<String>) -> ApiSettings {
        self.node_token = Some(token.into());
        self
    }
}

fn header_name(name: &str) -> Result<HeaderName, ApiError> {
    HeaderName::try_from(name)
        .map_err(|_| ApiError::Config(format!("auth_header '{name}' is not an HTTP header name")))
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
    limiter: Arc<RateLimiter>,
    on_change: OnChange,
    /// `None` where no search index is kept (`meshd api serve`).
    search: Option<Arc<Searcher>>,
    /// The node's status and counters; `None` where no mesh runs (`meshd api serve`).
    node: Option<NodeView>,
}

impl ApiState {
    pub fn new(replica: SharedReplica, settings: ApiSettings) -> ApiState {
        ApiState {
            replica,
            limiter: Arc::new(RateLimiter::new(settings.rate_limit_per_min)),
            settings: Arc::new(settings),
            on_change: Arc::new(|| {}),
            search: None,
            node: None,
        }
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
    Router::new()
        .route("/", get(page::index))
        .route("/health", get(handlers::health))
        .route(
            "/mesh/memory",
            get(handlers::list_memory).put(handlers::put_memory),
        )
        .route("/mesh/memory/{scope}/{*key}", get(handlers::get_memory))
        .route("/mesh/query", post(search::query))
        .route(
            "/mesh/skills",
            get(handlers::list_skills).put(handlers::put_skill),
        )
        .route("/mesh/skills/{name}", get(handlers::get_skill))
        .route("/mesh/status", get(node::status))
        .route("/metrics", get(metrics::metrics))
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

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(config: &ApiConfig, env: &[(&str, &str)]) -> Result<ApiSettings, ApiError> {
        ApiSettings::from_config(config, |var| {
            env.iter()
                .find(|(name, _)| *name == var)
                .map(|(_, value)| value.to_string())
        })
    }

    #[test]
    fn an_empty_variable_does_not_erase_the_configured_token() {
        let config = ApiConfig {
            bearer_token: Some("from-file".into()),
            ..ApiConfig::default()
        };
        let auth = settings(&config, &[("MESHD_API_BEARER", "")]).unwrap().auth;
        assert_eq!(auth.unwrap().bearer.as_deref(), Some("from-file"));
    }

    #[test]
    fn no_auth_by_default_and_the_environment_wins() {
        let config = ApiConfig {
            bearer_token: Some("from-file".into()),
            ..ApiConfig::default()
        };
        assert!(settings(&ApiConfig::default(), &[]).unwrap().auth.is_none());
        let auth = settings(&config, &[("MESHD_API_BEARER", "from-env")])
            .unwrap()
            .auth
            .unwrap();
        assert_eq!(auth.bearer.as_deref(), Some("from-env"));
    }

    #[test]
    fn a_header_needs_its_secret() {
        let config = ApiConfig {
            auth_header: Some("X-API-Key".into()),
            ..ApiConfig::default()
        };
        assert!(settings(&config, &[]).is_err());
        let auth = settings(&config, &[("MESHD_API_AUTH_SECRET", "s")])
            .unwrap()
            .auth
            .unwrap();
        assert_eq!(auth.header.unwrap().0, "x-api-key");
        let bad = ApiConfig {
            auth_header: Some("bad header".into()),
            auth_secret: Some("s".into()),
            ..ApiConfig::default()
        };
        assert!(settings(&bad, &[]).is_err());
    }

    #[test]
    fn only_loopback_may_go_without_auth() {
        let open = settings(&ApiConfig::default(), &[]).unwrap();
        assert!(check_bind("127.0.0.1:4078".parse().unwrap(), &open).is_ok());
        assert!(check_bind("[::1]:4078".parse().unwrap(), &open).is_ok());
        assert!(check_bind("0.0.0.0:4078".parse().unwrap(), &open).is_err());
        assert!(check_bind("192.168.1.2:4078".parse().unwrap(), &open).is_err());
        let guarded = settings(&ApiConfig::default(), &[("MESHD_API_BEARER", "t")]).unwrap();
        assert!(check_bind("0.0.0.0:4078".parse().unwrap(), &guarded).is_ok());
    }
}
