//! What keeps web pages out of the API. Any page open in a browser on this machine can send
//! requests to 127.0.0.1, so loopback alone proves nothing:
//!
//! - **Host**: a page on a name the attacker controls can make that name resolve to
//!   127.0.0.1 (DNS rebinding) and then read the API as its own origin, without any Origin
//!   header. Its requests still name the attacker's host, so only loopback names and
//!   addresses and the names in `[api] allowed_hosts` are served (421 otherwise).
//! - **Origin**: browsers put the page's origin on every cross-origin request and on every
//!   POST and PUT. One that is not in `[api] allowed_origins` is refused (403), on every
//!   route and on CORS preflights.
//! - An allowed origin gets CORS headers naming exactly that origin, never a wildcard, so a
//!   page there can send the node's token; the guard insists on the token.

use std::net::IpAddr;
use std::str::FromStr;

use axum::extract::Request;
use axum::http::header::{
    ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS, ACCESS_CONTROL_ALLOW_ORIGIN,
    ACCESS_CONTROL_MAX_AGE, ACCESS_CONTROL_REQUEST_METHOD, HOST, ORIGIN, VARY,
};
use axum::http::uri::{Authority, Uri};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};

use super::{ApiError, HttpError};

/// The hosts and origins `[api]` allows, normalised for comparison.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BrowserRules {
    /// Lowercase names without a trailing dot, and IP addresses as `IpAddr` prints them.
    hosts: Vec<String>,
    /// `scheme://host[:port]`, lowercase, as browsers send them.
    origins: Vec<String>,
}

impl BrowserRules {
    pub fn from_config(hosts: &[String], origins: &[String]) -> Result<BrowserRules, ApiError> {
        Ok(BrowserRules {
            hosts: hosts
                .iter()
                .map(|h| allowed_host(h))
                .collect::<Result<_, _>>()?,
            origins: (origins.iter().map(|o| allowed_origin(o))).collect::<Result<_, _>>()?,
        })
    }

    pub fn has_allowed_hosts(&self) -> bool {
        !self.hosts.is_empty()
    }

    /// 421 unless every host the request names (its Host header, and the authority of an
    /// absolute URI) is served here.
    pub fn check_host(&self, request: &Request) -> Result<(), HttpError> {
        let in_uri = request.uri().authority().map(|a| a.as_str().to_string());
        let in_header = (request.headers().get_all(HOST).iter())
            .map(|value| String::from_utf8_lossy(value.as_bytes()).into_owned());
        let named: Vec<String> = in_uri.into_iter().chain(in_header).collect();
        if named.is_empty() {
            return Err(misdirected("The request names no Host"));
        }
        match named.iter().find(|host| !self.serves(host)) {
            None => Ok(()),
            Some(host) => Err(misdirected(&format!(
                "Host '{host}' is not served here: add its name to [api] allowed_hosts in \
                 meshd.toml (loopback names and addresses are always served)"
            ))),
        }
    }

    fn serves(&self, authority: &str) -> bool {
        // Browsers never send user info in Host; one that does is not talking to us.
        let parsed = Authority::from_str(authority)
            .ok()
            .filter(|a| !a.as_str().contains('@'));
        let Some(host) = parsed.and_then(|a| normal_host(a.host())) else {
            return false;
        };
        let loopback = match host.parse::<IpAddr>() {
            Ok(ip) => ip.to_canonical().is_loopback(),
            Err(_) => host == "localhost",
        };
        loopback || self.hosts.contains(&host)
    }

    /// The request's Origin when it is allowed, `None` when it has none, 403 otherwise.
    pub fn check_origin(&self, headers: &HeaderMap) -> Result<Option<HeaderValue>, HttpError> {
        let mut values = headers.get_all(ORIGIN).iter();
        let Some(origin) = values.next() else {
            return Ok(None);
        };
        let allowed = values.next().is_none()
            && (origin.to_str()).is_ok_and(|origin| {
                (self.origins.iter()).any(|allowed| allowed.eq_ignore_ascii_case(origin))
            });
        if allowed {
            return Ok(Some(origin.clone()));
        }
        Err(HttpError::new(
            StatusCode::FORBIDDEN,
            format!(
                "Web pages at {} may not use this API: list the origin in [api] \
                 allowed_origins in meshd.toml, and have the page send Authorization: Bearer \
                 with the token in the node's api.token",
                String::from_utf8_lossy(origin.as_bytes())
            ),
        ))
    }
}

fn misdirected(message: &str) -> HttpError {
    HttpError::new(StatusCode::MISDIRECTED_REQUEST, message)
}

/// A host as compared here: an IP address without brackets, or a lowercase name without the
/// trailing dot; `None` when it is neither.
fn normal_host(host: &str) -> Option<String> {
    let host = host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase();
    let bare = (host.strip_prefix('[').and_then(|h| h.strip_suffix(']'))).unwrap_or(&host);
    if let Ok(ip) = bare.parse::<IpAddr>() {
        return Some(ip.to_canonical().to_string());
    }
    let is_name = !host.is_empty()
        && (host.bytes()).all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'));
    is_name.then_some(host)
}

fn allowed_host(entry: &str) -> Result<String, ApiError> {
    let refuse = |why: &str| ApiError::Config(format!("allowed_hosts entry '{entry}' {why}"));
    if entry.contains('*') {
        return Err(refuse("has a wildcard: list each name"));
    }
    let bare = (entry.strip_prefix('[').and_then(|e| e.strip_suffix(']'))).unwrap_or(entry);
    if bare.parse::<IpAddr>().is_err() && entry.contains(':') {
        return Err(refuse(
            "has a port: give the name alone, any port is served",
        ));
    }
    normal_host(entry).ok_or_else(|| refuse("is not a host name or an IP address"))
}

fn allowed_origin(entry: &str) -> Result<String, ApiError> {
    let refuse = |why: &str| {
        ApiError::Config(format!(
            "allowed_origins entry '{entry}' {why}; write it as a browser sends it, such as \
             \"http://localhost:3000\""
        ))
    };
    match entry {
        "*" => return Err(refuse("would let every web page in")),
        "null" => {
            return Err(refuse(
                "is what sandboxed and file pages send, anyone can make one",
            ))
        }
        _ => {}
    }
    let uri = Uri::from_str(entry).map_err(|_| refuse("is not a URL"))?;
    let scheme = uri.scheme_str().filter(|s| matches!(*s, "http" | "https"));
    let authority = uri.authority().filter(|a| !a.as_str().contains('@'));
    let bare = matches!(uri.path(), "" | "/") && uri.query().is_none();
    match (scheme, authority, bare) {
        (Some(scheme), Some(authority), true) => {
            Ok(format!("{scheme}://{authority}").to_ascii_lowercase())
        }
        _ => Err(refuse(
            "is not an origin (http or https, a host, an optional port, no path)",
        )),
    }
}

/// A CORS preflight: the browser asks before sending a request a plain form could not.
pub fn is_preflight(request: &Request) -> bool {
    request.method() == Method::OPTIONS
        && request
            .headers()
            .contains_key(ACCESS_CONTROL_REQUEST_METHOD)
}

/// The answer to a preflight from an allowed origin: that origin may send the methods the
/// API has, with a JSON body and its credentials.
pub fn preflight(origin: HeaderValue, auth_headers: &[&HeaderName]) -> Response {
    let mut headers = vec!["authorization", "content-type"];
    headers.extend(auth_headers.iter().map(|name| name.as_str()));
    let response = (
        StatusCode::NO_CONTENT,
        [
            (ACCESS_CONTROL_ALLOW_METHODS, "GET, PUT, POST".to_string()),
            (ACCESS_CONTROL_ALLOW_HEADERS, headers.join(", ")),
            (ACCESS_CONTROL_MAX_AGE, "600".to_string()),
        ],
    )
        .into_response();
    allow(response, origin)
}

/// Lets the page at `origin` (an allowed one) read this answer.
pub fn allow(mut response: Response, origin: HeaderValue) -> Response {
    let headers = response.headers_mut();
    headers.insert(ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    headers.append(VARY, HeaderValue::from_static("Origin"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(hosts: &[&str], origins: &[&str]) -> Result<BrowserRules, ApiError> {
        let strings = |items: &[&str]| items.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        BrowserRules::from_config(&strings(hosts), &strings(origins))
    }

    #[test]
    fn loopback_and_configured_hosts_are_served_with_any_port() {
        let rules = rules(&["NAS.local.", "192.168.1.5", "[fe80::1]"], &[]).unwrap();
        for host in [
            "localhost",
            "LOCALHOST:4078",
            "localhost.:1",
            "127.0.0.1:4078",
            "127.9.9.9",
            "[::1]:4078",
            "[::ffff:127.0.0.1]",
            "nas.local:4078",
            "192.168.1.5:80",
            "[fe80::1]:4078",
        ] {
            assert!(rules.serves(host), "{host}");
        }
        for host in [
            "evil.example:4078",
            "sub.localhost",
            "localhost.evil.example",
            "2130706433",
            "10.0.0.1",
            "",
            "nas.local@evil",
            "evil@localhost",
        ] {
            assert!(!rules.serves(host), "{host}");
        }
    }

    #[test]
    fn bad_entries_are_refused_with_the_fix() {
        for (hosts, origins, says) in [
            (&["nas.local:4078"][..], &[][..], "give the name alone"),
            (&["*.local"], &[], "wildcard"),
            (&["a b"], &[], "not a host name"),
            (&[], &["*"], "every web page"),
            (&[], &["null"], "sandboxed"),
            (&[], &["http://localhost:3000/app"], "no path"),
            (&[], &["localhost:3000"], "http://localhost:3000"),
            (&[], &["ftp://x"], "not an origin"),
        ] {
            let error = rules(hosts, origins).unwrap_err().to_string();
            assert!(error.contains(says), "{hosts:?} {origins:?}: {error}");
        }
    }

    #[test]
    fn only_a_listed_origin_passes_and_only_alone() {
        let rules = rules(&[], &["http://Dash.localhost:3000/"]).unwrap();
        let origin = |values: &[&str]| {
            let mut headers = HeaderMap::new();
            for value in values {
                headers.append(ORIGIN, value.parse().unwrap());
            }
            rules.check_origin(&headers).map_err(|e| e.status)
        };
        assert_eq!(origin(&[]), Ok(None));
        assert!(origin(&["http://dash.localhost:3000"]).unwrap().is_some());
        for refused in [
            &["http://evil.example"][..],
            &["null"],
            &["http://dash.localhost:3001"],
            &["http://dash.localhost:3000", "http://evil.example"],
        ] {
            assert_eq!(origin(refused), Err(StatusCode::FORBIDDEN), "{refused:?}");
        }
    }
}
