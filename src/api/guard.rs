//! What every request passes before a handler: the browser rules (Host, Origin),
//! authentication, the per-minute rate limit, the body's type and size; and the rule that
//! every error answer is `{"error": "..."}`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{ConnectInfo, FromRequest, Request, State};
use axum::http::header::{AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE};
use axum::http::{HeaderMap, HeaderName, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use super::body_type::BodyType;
use super::{browser, ApiSettings, ApiState};

/// An error answer: the status and `{"error": message}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpError {
    pub status: StatusCode,
    pub message: String,
}

impl HttpError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> HttpError {
        HttpError {
            status,
            message: message.into(),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> HttpError {
        HttpError::new(StatusCode::BAD_REQUEST, message)
    }

    pub fn not_found() -> HttpError {
        HttpError::new(StatusCode::NOT_FOUND, "Not found")
    }

    pub fn internal(message: impl Into<String>) -> HttpError {
        HttpError::new(StatusCode::INTERNAL_SERVER_ERROR, message)
    }
}

impl IntoResponse for HttpError {
    /// With `Connection: close`: an error may be answered before the request's body is read
    /// (a refused origin, token or type), and hyper then closes the connection; a keep-alive
    /// client told nothing would send its next request on it and lose that request.
    fn into_response(self) -> Response {
        let close = [(axum::http::header::CONNECTION, "close")];
        (self.status, close, Json(json!({ "error": self.message }))).into_response()
    }
}

/// The reference ran two servers, the store API (`/mesh...`) and the bridge webhook
/// (`/ingest`, `/bridge`); meshd serves both on one port and keeps their credentials and rate
/// limits apart, as they were. `Open` routes carry no data; `Own` ones are meshd's own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteGroup {
    Open,
    Store,
    Bridge,
    Own,
}

impl RouteGroup {
    pub fn of(path: &str) -> RouteGroup {
        match path {
            "/health" | "/" => RouteGroup::Open,
            "/ingest" | "/bridge" => RouteGroup::Bridge,
            _ if path == "/mesh" || path.starts_with("/mesh/") => RouteGroup::Store,
            _ => RouteGroup::Own,
        }
    }
}

/// One way in: a bearer token, a named header carrying a shared secret, or both (either one
/// then lets a request in).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Credentials {
    pub bearer: Option<String>,
    pub header: Option<(HeaderName, String)>,
}

impl Credentials {
    fn is_empty(&self) -> bool {
        self.bearer.is_none() && self.header.is_none()
    }

    fn allows(&self, headers: &HeaderMap) -> bool {
        let bearer = (self.bearer.as_ref()).is_some_and(|token| carries_bearer(headers, token));
        let header = self.header.as_ref().is_some_and(|(name, secret)| {
            (headers.get(name)).is_some_and(|given| same(given.as_bytes(), secret.as_bytes()))
        });
        bearer || header
    }
}

/// Who may call the API, per route group. A group with no credentials of its own takes the
/// other group's, so that a unit file written for one reference server (only `MESH_STORE_*`,
/// or only `BRIDGE_*`) protects the whole port, not half of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Auth {
    store: Credentials,
    bridge: Credentials,
}

impl Auth {
    /// `None` when neither group has credentials: the API is open (loopback only).
    pub fn grouped(store: Credentials, bridge: Credentials) -> Option<Auth> {
        match (store.is_empty(), bridge.is_empty()) {
            (true, true) => None,
            (true, false) => Some(Auth {
                store: bridge.clone(),
                bridge,
            }),
            (false, true) => Some(Auth {
                bridge: store.clone(),
                store,
            }),
            (false, false) => Some(Auth { store, bridge }),
        }
    }

    /// The credentials of a group's routes; meshd's own routes take the store's (see
    /// `allows`).
    pub fn credentials(&self, group: RouteGroup) -> &Credentials {
        match group {
            RouteGroup::Bridge => &self.bridge,
            _ => &self.store,
        }
    }

    /// meshd's own routes (`/metrics`) let in the holder of either group's credentials.
    fn allows(&self, group: RouteGroup, headers: &HeaderMap) -> bool {
        match group {
            RouteGroup::Open => true,
            RouteGroup::Store | RouteGroup::Bridge => self.credentials(group).allows(headers),
            RouteGroup::Own => self.store.allows(headers) || self.bridge.allows(headers),
        }
    }

    /// The secret headers a page on `group`'s routes may send.
    fn header_names(&self, group: RouteGroup) -> Vec<&HeaderName> {
        let groups: &[&Credentials] = match group {
            RouteGroup::Own => &[&self.store, &self.bridge],
            _ => &[self.credentials(group)],
        };
        let mut names: Vec<&HeaderName> = Vec::new();
        for (name, _) in groups.iter().filter_map(|c| c.header.as_ref()) {
            if !names.contains(&name) {
                names.push(name);
            }
        }
        names
    }
}

fn carries_bearer(headers: &HeaderMap, token: &str) -> bool {
    (headers.get(AUTHORIZATION))
        .and_then(|value| value.as_bytes().strip_prefix(b"Bearer "))
        .is_some_and(|given| same(given, token.as_bytes()))
}

/// Compares in time independent of where the inputs differ, so a caller cannot find the
/// secret byte by byte from response times.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |diff, (x, y)| diff | (x ^ y)) == 0
}

/// Fixed one-minute windows per client, as the reference counts them; one per route group.
#[derive(Debug)]
pub struct RateLimiter {
    per_minute: u32,
    windows: Mutex<HashMap<String, (u32, Instant)>>,
}

const WINDOW: Duration = Duration::from_secs(60);
/// Past this many clients, expired windows are swept so the map cannot grow without bound.
const SWEEP_AT: usize = 4096;

impl RateLimiter {
    pub fn new(per_minute: u32) -> RateLimiter {
        RateLimiter {
            per_minute,
            windows: Mutex::new(HashMap::new()),
        }
    }

    fn allow(&self, client: String, now: Instant) -> bool {
        if self.per_minute == 0 {
            return true;
        }
        let mut windows = self.windows.lock().unwrap_or_else(|e| e.into_inner());
        if windows.len() >= SWEEP_AT {
            windows.retain(|_, (_, reset)| *reset > now);
        }
        let (count, reset) = windows.entry(client).or_insert((0, now + WINDOW));
        if now >= *reset {
            (*count, *reset) = (0, now + WINDOW);
        }
        *count += 1;
        *count <= self.per_minute
    }
}

/// The store routes' and the webhook routes' limiters: a client's bridge traffic does not
/// use up its store budget, as with the reference's two servers.
#[derive(Debug)]
pub struct RateLimiters {
    store: RateLimiter,
    bridge: RateLimiter,
}

impl RateLimiters {
    pub fn new(settings: &ApiSettings) -> RateLimiters {
        RateLimiters {
            store: RateLimiter::new(settings.rate_limit_per_min(RouteGroup::Store)),
            bridge: RateLimiter::new(settings.rate_limit_per_min(RouteGroup::Bridge)),
        }
    }

    /// Only the two reference groups are counted: health checks and meshd's own routes
    /// (`/metrics`, unknown paths) never are, as neither reference server counted them.
    fn allow(&self, group: RouteGroup, client: String, now: Instant) -> bool {
        match group {
            RouteGroup::Store => self.store.allow(client, now),
            RouteGroup::Bridge => self.bridge.allow(client, now),
            RouteGroup::Open | RouteGroup::Own => true,
        }
    }
}

/// The browser rules on every route; then, but for the health check, authentication and
/// the rate limit.
pub async fn guard(State(state): State<ApiState>, request: Request, next: Next) -> Response {
    let rules = &state.settings.browsers;
    if let Err(refusal) = rules.check_host(&request) {
        return refusal.into_response();
    }
    let origin = match rules.check_origin(request.headers()) {
        Ok(origin) => origin,
        Err(refusal) => return refusal.into_response(),
    };
    let Some(origin) = origin else {
        return admit(&state, request, next, false).await;
    };
    if browser::is_preflight(&request) {
        let group = RouteGroup::of(request.uri().path());
        let names = (state.settings.auth.as_ref()).map_or_else(Vec::new, |a| a.header_names(group));
        return browser::preflight(origin, &names);
    }
    browser::allow(admit(&state, request, next, true).await, origin)
}

/// Authentication and the rate limit. A request from a web page (it has an Origin) needs a
/// credential even where other callers do not: the node's token, or the configured one.
async fn admit(state: &ApiState, request: Request, next: Next, from_browser: bool) -> Response {
    let group = RouteGroup::of(request.uri().path());
    if group == RouteGroup::Open {
        return next.run(request).await;
    }
    let settings = &state.settings;
    if (settings.auth.is_some() || from_browser)
        && !has_credential(settings, group, request.headers())
    {
        let message = match settings.auth {
            Some(_) => "Unauthorized",
            None => {
                "Unauthorized: a request from a web page (one with an Origin header) must send \
                 Authorization: Bearer with the token in the node's api.token"
            }
        };
        return HttpError::new(StatusCode::UNAUTHORIZED, message).into_response();
    }
    let client = client_key(state, group, &request);
    if !state.limiters.allow(group, client, Instant::now()) {
        return HttpError::new(StatusCode::TOO_MANY_REQUESTS, "Too many requests").into_response();
    }
    next.run(request).await
}

/// The node's token is always a credential; the configured bearer token or header secret are
/// too.
fn has_credential(settings: &ApiSettings, group: RouteGroup, headers: &HeaderMap) -> bool {
    let node_token = (settings.node_token.as_ref()).is_some_and(|t| carries_bearer(headers, t));
    node_token || (settings.auth.as_ref()).is_some_and(|auth| auth.allows(group, headers))
}

/// A client is its credential when it sends one (`Authorization`, else the group's auth
/// header), else its address.
fn client_key(state: &ApiState, group: RouteGroup, request: &Request) -> String {
    let headers = request.headers();
    let credential = headers.get(AUTHORIZATION).or_else(|| {
        let auth = state.settings.auth.as_ref()?;
        let (name, _) = auth.credentials(group).header.as_ref()?;
        headers.get(name)
    });
    if let Some(credential) = credential {
        return String::from_utf8_lossy(credential.as_bytes()).into_owned();
    }
    request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map_or_else(|| "unknown".to_string(), |info| info.0.ip().to_string())
}

/// Turns axum's own error answers (405, a path that does not decode, ...) into the
/// `{"error": ...}` shape every error has.
pub async fn json_errors(response: Response) -> Response {
    let status = response.status();
    let is_json = (response.headers().get(CONTENT_TYPE))
        .is_some_and(|value| value.as_bytes().starts_with(b"application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let body = axum::body::to_bytes(response.into_body(), 64 * 1024)
        .await
        .unwrap_or_default();
    let text = String::from_utf8_lossy(&body).trim().to_string();
    let message = match text.is_empty() {
        true => status.canonical_reason().unwrap_or("Error").to_string(),
        false => text,
    };
    HttpError::new(status, message).into_response()
}

/// A JSON request body as text (see `JsonText` and `BridgeText`).
async fn read_text(
    request: Request,
    state: &ApiState,
    body_type: BodyType,
) -> Result<String, HttpError> {
    body_type.check(request.headers())?;
    let limit = (state.settings).max_body_bytes(RouteGroup::of(request.uri().path()));
    let too_large = || {
        HttpError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("Payload too large: the limit is {limit} bytes"),
        )
    };
    let declared = (request.headers().get(CONTENT_LENGTH))
        .and_then(|value| value.to_str().ok()?.parse::<usize>().ok());
    if declared.is_some_and(|length| length > limit) {
        return Err(too_large());
    }
    let body: Body = request.into_body();
    let bytes = axum::body::to_bytes(body, limit).await.map_err(|error| {
        let inner = error.into_inner();
        if inner.is::<http_body_util::LengthLimitError>() {
            too_large()
        } else {
            HttpError::bad_request(format!("Failed to read body: {inner}"))
        }
    })?;
    String::from_utf8(bytes.to_vec())
        .map_err(|_| HttpError::bad_request("The body is not UTF-8 text"))
}

/// A JSON body read as UTF-8 text: 415 when it is declared as anything else, 413 past the
/// configured size.
pub struct JsonText(pub String);

impl FromRequest<ApiState> for JsonText {
    type Rejection = HttpError;

    async fn from_request(request: Request, state: &ApiState) -> Result<Self, Self::Rejection> {
        read_text(request, state, BodyType::Json)
            .await
            .map(JsonText)
    }
}

/// A bridge body (JSON or JSON Lines) read as UTF-8 text, with the limits of `JsonText`.
pub struct BridgeText(pub String);

impl FromRequest<ApiState> for BridgeText {
    type Rejection = HttpError;

    async fn from_request(request: Request, state: &ApiState) -> Result<Self, Self::Rejection> {
        (read_text(request, state, BodyType::JsonOrLines).await).map(BridgeText)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limit_counts_per_client_and_resets_after_a_minute() {
        let limiter = RateLimiter::new(2);
        let start = Instant::now();
        assert!(limiter.allow("a".into(), start));
        assert!(limiter.allow("a".into(), start));
        assert!(!limiter.allow("a".into(), start));
        assert!(limiter.allow("b".into(), start));
        assert!(limiter.allow("a".into(), start + WINDOW));
    }

    #[test]
    fn zero_turns_the_limit_off() {
        let limiter = RateLimiter::new(0);
        assert!((0..1000).all(|_| limiter.allow("a".into(), Instant::now())));
    }

    #[test]
    fn either_credential_lets_a_request_in() {
        let auth = Credentials {
            bearer: Some("t0ken".into()),
            header: Some((HeaderName::from_static("x-api-key"), "s3cret".into())),
        };
        let mut headers = HeaderMap::new();
        assert!(!auth.allows(&headers));
        headers.insert(AUTHORIZATION, "Bearer t0ken".parse().unwrap());
        assert!(auth.allows(&headers));
        headers.insert(AUTHORIZATION, "Bearer t0kem".parse().unwrap());
        assert!(!auth.allows(&headers));
        headers.insert("x-api-key", "s3cret".parse().unwrap());
        assert!(auth.allows(&headers));
    }
}
