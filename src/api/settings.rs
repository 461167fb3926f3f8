//! The API's settings: `[api]` in meshd.toml, overridden by the environment. Besides meshd's
//! own `MESHD_API_*` variables, the reference servers' variables are honoured, so that meshd
//! can run under a unit file written for `api-server.js` (`MESH_STORE_*`) or
//! `webhook-server.js` (`BRIDGE_*`, `MESH_NODE_ID`). Each setting is taken from the first
//! source that sets it: `MESHD_*`, then the reference variable of the route group, then the
//! file, then the default (docs/compatibility.md, "Environment variables").

use axum::http::HeaderName;

use super::guard::{Auth, Credentials, RouteGroup};
use super::token;
use super::{ApiError, BrowserRules};
use crate::config::{ApiConfig, Home};

/// The API's settings, resolved from `[api]`, the environment and the node's token file.
#[derive(Debug, Clone)]
pub struct ApiSettings {
    /// The configured credentials; when set, every request but the health check needs one.
    pub auth: Option<Auth>,
    /// The node's own token (`<home>/api.token`): always a credential, and the one a web page
    /// needs when nothing else is configured.
    pub node_token: Option<String>,
    pub browsers: BrowserRules,
    /// Requests per minute per client on the store routes (`/mesh...`); 0 = no limit.
    pub store_rate_limit_per_min: u32,
    /// The same on the webhook routes (`/ingest`, `/bridge`), counted apart.
    pub bridge_rate_limit_per_min: u32,
    pub max_body_bytes: usize,
    /// The body limit of the webhook routes (`BRIDGE_MAX_BODY_SIZE`, else `max_body_bytes`).
    pub bridge_max_body_bytes: usize,
    /// `GET /metrics` is served (`BRIDGE_METRICS=0` turns it off, as in the webhook).
    pub metrics_enabled: bool,
    /// The `nodeId` of this node's `mesh_response`s (`MESH_NODE_ID`); `None`: its own id.
    pub responder: Option<String>,
}

/// The settings a node serves its API with: `[api]`, the process environment, and the
/// node's token, made now if the home predates it.
pub fn node_settings(home: &Home, config: &ApiConfig) -> Result<ApiSettings, ApiError> {
    let settings = ApiSettings::from_config(config, |var| std::env::var(var).ok())?;
    let token = token::load_or_create(&home.api_token_path())?;
    Ok(settings.with_node_token(token))
}

impl ApiSettings {
    pub fn from_config(
        config: &ApiConfig,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<ApiSettings, ApiError> {
        let sources = Sources { config, env: &env };
        let auth = Auth::grouped(
            sources.credentials(RouteGroup::Store)?,
            sources.credentials(RouteGroup::Bridge)?,
        );
        let bridge_body = sources.number("BRIDGE_MAX_BODY_SIZE")?.filter(|&n| n > 0);
        Ok(ApiSettings {
            auth,
            node_token: None,
            browsers: BrowserRules::from_config(&config.allowed_hosts, &config.allowed_origins)?,
            store_rate_limit_per_min: sources.rate_limit("MESH_STORE_RATE_LIMIT_PER_MIN")?,
            bridge_rate_limit_per_min: sources.rate_limit("BRIDGE_RATE_LIMIT_PER_MIN")?,
            max_body_bytes: config.max_body_bytes,
            bridge_max_body_bytes: bridge_body.map_or(config.max_body_bytes, clamp_usize),
            metrics_enabled: sources.var("BRIDGE_METRICS").as_deref() != Some("0"),
            responder: sources.var("MESH_NODE_ID"),
        })
    }

    pub fn with_node_token(mut self, token: impl Into<String>) -> ApiSettings {
        self.node_token = Some(token.into());
        self
    }

    pub fn rate_limit_per_min(&self, group: RouteGroup) -> u32 {
        match group {
            RouteGroup::Store => self.store_rate_limit_per_min,
            RouteGroup::Bridge => self.bridge_rate_limit_per_min,
            RouteGroup::Open | RouteGroup::Own => 0,
        }
    }

    pub fn max_body_bytes(&self, group: RouteGroup) -> usize {
        match group {
            RouteGroup::Bridge => self.bridge_max_body_bytes,
            _ => self.max_body_bytes,
        }
    }
}

fn clamp_usize(n: i64) -> usize {
    usize::try_from(n).unwrap_or(usize::MAX)
}

/// The file and the environment, read in precedence order.
struct Sources<'a, E: Fn(&str) -> Option<String>> {
    config: &'a ApiConfig,
    env: &'a E,
}

impl<E: Fn(&str) -> Option<String>> Sources<'_, E> {
    /// An empty variable counts as unset: `MESHD_API_BEARER=` must not erase the token
    /// configured in the file and leave the API open.
    fn var(&self, name: &str) -> Option<String> {
        (self.env)(name).filter(|value| !value.is_empty())
    }

    /// The first of meshd's variable (`MESHD_API_BEARER`, `MESHD_API_AUTH_HEADER`,
    /// `MESHD_API_AUTH_SECRET`), the group's reference variable, and the file.
    fn pick(&self, group: RouteGroup, suffix: &str, file: &Option<String>) -> Option<String> {
        let reference = match group {
            RouteGroup::Bridge => format!("BRIDGE_AUTH_{suffix}"),
            _ => format!("MESH_STORE_AUTH_{suffix}"),
        };
        let own = match suffix {
            "BEARER" => "MESHD_API_BEARER".to_string(),
            _ => format!("MESHD_API_AUTH_{suffix}"),
        };
        (self.var(&own))
            .or_else(|| self.var(&reference))
            .or_else(|| file.clone().filter(|value| !value.is_empty()))
    }

    fn credentials(&self, group: RouteGroup) -> Result<Credentials, ApiError> {
        let config = self.config;
        let bearer = self.pick(group, "BEARER", &config.bearer_token);
        let header = match (
            self.pick(group, "HEADER", &config.auth_header),
            self.pick(group, "SECRET", &config.auth_secret),
        ) {
            (Some(name), Some(secret)) => Some((header_name(&name)?, secret)),
            (None, None) => None,
            _ => {
                return Err(ApiError::Config(
                    "auth_header and auth_secret go together: set both or neither (in the \
                     file, or MESHD_API_AUTH_HEADER / _SECRET, MESH_STORE_AUTH_HEADER / \
                     _SECRET, BRIDGE_AUTH_HEADER / _SECRET)"
                        .into(),
                ))
            }
        };
        Ok(Credentials { bearer, header })
    }

    /// A whole number from the environment, like the reference's `parseInt` but refusing
    /// text that is not one (the reference silently turned such a limit off).
    fn number(&self, name: &str) -> Result<Option<i64>, ApiError> {
        let Some(text) = self.var(name) else {
            return Ok(None);
        };
        text.trim().parse::<i64>().map(Some).map_err(|_| {
            ApiError::Config(format!(
                "{name}='{text}' is not a whole number of requests or bytes"
            ))
        })
    }

    /// The variable when set (0 or less turns the limit off, as in the reference), else
    /// `[api] rate_limit_per_min`.
    fn rate_limit(&self, name: &str) -> Result<u32, ApiError> {
        Ok(match self.number(name)? {
            Some(n) => u32::try_from(n.max(0)).unwrap_or(u32::MAX),
            None => self.config.rate_limit_per_min,
        })
    }
}

fn header_name(name: &str) -> Result<HeaderName, ApiError> {
    HeaderName::try_from(name)
        .map_err(|_| ApiError::Config(format!("auth_header '{name}' is not an HTTP header name")))
}

#[cfg(test)]
mod tests {
    use super::super::check_bind;
    use super::*;

    fn settings(config: &ApiConfig, env: &[(&str, &str)]) -> Result<ApiSettings, ApiError> {
        ApiSettings::from_config(config, |var| {
            env.iter()
                .find(|(name, _)| *name == var)
                .map(|(_, value)| value.to_string())
        })
    }

    fn bearer(settings: &ApiSettings, group: RouteGroup) -> Option<String> {
        let auth = settings.auth.as_ref()?;
        auth.credentials(group).bearer.clone()
    }

    #[test]
    fn an_empty_variable_does_not_erase_the_configured_token() {
        let config = ApiConfig {
            bearer_token: Some("from-file".into()),
            ..ApiConfig::default()
        };
        let found = settings(
            &config,
            &[("MESHD_API_BEARER", ""), ("BRIDGE_AUTH_BEARER", "")],
        );
        let found = found.unwrap();
        assert_eq!(
            bearer(&found, RouteGroup::Store).as_deref(),
            Some("from-file")
        );
        assert_eq!(
            bearer(&found, RouteGroup::Bridge).as_deref(),
            Some("from-file")
        );
    }

    #[test]
    fn no_auth_by_default_and_the_environment_wins() {
        let config = ApiConfig {
            bearer_token: Some("from-file".into()),
            ..ApiConfig::default()
        };
        assert!(settings(&ApiConfig::default(), &[]).unwrap().auth.is_none());
        let found = settings(&config, &[("MESHD_API_BEARER", "from-env")]).unwrap();
        assert_eq!(
            bearer(&found, RouteGroup::Store).as_deref(),
            Some("from-env")
        );
    }

    #[test]
    fn meshd_variables_win_over_the_reference_ones_which_win_over_the_file() {
        let config = ApiConfig {
            bearer_token: Some("file".into()),
            ..ApiConfig::default()
        };
        let reference = [
            ("MESH_STORE_AUTH_BEARER", "store"),
            ("BRIDGE_AUTH_BEARER", "bridge"),
        ];
        let found = settings(&config, &reference).unwrap();
        assert_eq!(bearer(&found, RouteGroup::Store).as_deref(), Some("store"));
        assert_eq!(
            bearer(&found, RouteGroup::Bridge).as_deref(),
            Some("bridge")
        );
        let both = [reference[0], reference[1], ("MESHD_API_BEARER", "meshd")];
        let found = settings(&config, &both).unwrap();
        assert_eq!(bearer(&found, RouteGroup::Store).as_deref(), Some("meshd"));
        assert_eq!(bearer(&found, RouteGroup::Bridge).as_deref(), Some("meshd"));
    }

    #[test]
    fn the_store_servers_variables_alone_protect_every_route() {
        // A unit file written for api-server.js: MESH_STORE_* only.
        let env = [
            ("MESH_STORE_AUTH_HEADER", "X-API-Key"),
            ("MESH_STORE_AUTH_SECRET", "k3y"),
        ];
        let found = settings(&ApiConfig::default(), &env).unwrap();
        let auth = found.auth.as_ref().expect("authenticated");
        for group in [RouteGroup::Store, RouteGroup::Bridge] {
            let (name, secret) = auth.credentials(group).header.clone().unwrap();
            assert_eq!((name.as_str(), secret.as_str()), ("x-api-key", "k3y"));
        }
        assert!(check_bind("0.0.0.0:4078".parse().unwrap(), &found).is_ok());
    }

    #[test]
    fn a_header_needs_its_secret() {
        let config = ApiConfig {
            auth_header: Some("X-API-Key".into()),
            ..ApiConfig::default()
        };
        assert!(settings(&config, &[]).is_err());
        let found = settings(&config, &[("MESHD_API_AUTH_SECRET", "s")]).unwrap();
        let header = found
            .auth
            .unwrap()
            .credentials(RouteGroup::Store)
            .header
            .clone();
        assert_eq!(header.unwrap().0, "x-api-key");
        assert!(settings(&ApiConfig::default(), &[("BRIDGE_AUTH_HEADER", "X-Key")]).is_err());
        let bad = ApiConfig {
            auth_header: Some("bad header".into()),
            auth_secret: Some("s".into()),
            ..ApiConfig::default()
        };
        assert!(settings(&bad, &[]).is_err());
    }

    #[test]
    fn rate_limits_and_body_sizes_per_route_group() {
        let config = ApiConfig {
            rate_limit_per_min: 7,
            max_body_bytes: 1000,
            ..ApiConfig::default()
        };
        let found = settings(&config, &[]).unwrap();
        assert_eq!(found.rate_limit_per_min(RouteGroup::Store), 7);
        assert_eq!(found.rate_limit_per_min(RouteGroup::Bridge), 7);
        assert_eq!(found.rate_limit_per_min(RouteGroup::Own), 0);
        let env = [
            ("MESH_STORE_RATE_LIMIT_PER_MIN", "120"),
            ("BRIDGE_RATE_LIMIT_PER_MIN", "-1"),
            ("BRIDGE_MAX_BODY_SIZE", "64"),
        ];
        let found = settings(&config, &env).unwrap();
        assert_eq!(found.rate_limit_per_min(RouteGroup::Store), 120);
        assert_eq!(found.rate_limit_per_min(RouteGroup::Bridge), 0);
        assert_eq!(found.max_body_bytes(RouteGroup::Bridge), 64);
        assert_eq!(found.max_body_bytes(RouteGroup::Store), 1000);
        let junk = settings(&config, &[("MESH_STORE_RATE_LIMIT_PER_MIN", "lots")]);
        assert!(junk
            .unwrap_err()
            .to_string()
            .contains("MESH_STORE_RATE_LIMIT_PER_MIN"));
    }

    #[test]
    fn the_webhooks_node_id_and_metrics_switch() {
        let found = settings(&ApiConfig::default(), &[]).unwrap();
        assert!(found.metrics_enabled && found.responder.is_none());
        let env = [("BRIDGE_METRICS", "0"), ("MESH_NODE_ID", "sec")];
        let found = settings(&ApiConfig::default(), &env).unwrap();
        assert!(!found.metrics_enabled);
        assert_eq!(found.responder.as_deref(), Some("sec"));
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
        let bridged = settings(&ApiConfig::default(), &[("BRIDGE_AUTH_BEARER", "t")]).unwrap();
        assert!(check_bind("0.0.0.0:4078".parse().unwrap(), &bridged).is_ok());
    }
}
