//! `GET /` in a browser: the status page, one static HTML page (inline CSS and script,
//! `page/`). It holds no data: its script reads `/mesh/status`, `/mesh/memory` and
//! `/mesh/skills` like any client, through the same guard, with the token the page asks for
//! when the API wants one (kept in the tab's sessionStorage, sent as `Authorization: Bearer`,
//! never in a URL). Other clients (`Accept` without `text/html`) get the health check at `/`,
//! as the reference answers it.
//!
//! The page shows text from the store and from peers, so its script puts all of it in as
//! text, and the answer forbids anything else running: a Content-Security-Policy that allows
//! exactly the page's own script and style (by hash; no inline handler, no other source), no
//! framing by other pages (clickjacking), and only this origin to fetch from.

use axum::extract::State;
use axum::http::header::{
    ACCEPT, CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, REFERRER_POLICY,
    X_CONTENT_TYPE_OPTIONS, X_FRAME_OPTIONS,
};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};

use super::{handlers, ApiState};

const HTML: &str = include_str!("page/index.html");
const STYLE: &str = include_str!("page/page.css");
const SCRIPT: &str = include_str!("page/page.js");

/// `GET /`: the page for a browser, the health check for everyone else.
pub async fn index(state: State<ApiState>, headers: HeaderMap) -> Response {
    if wants_html(&headers) {
        page()
    } else {
        handlers::health(state).await
    }
}

/// Browsers ask for `text/html` when they load a page; fetch, curl and the reference
/// clients do not.
fn wants_html(headers: &HeaderMap) -> bool {
    (headers.get_all(ACCEPT).iter())
        .filter_map(|value| value.to_str().ok())
        .any(|value| value.to_ascii_lowercase().contains("text/html"))
}

fn page() -> Response {
    let html = HTML
        .replacen("@STYLE@", STYLE, 1)
        .replacen("@SCRIPT@", SCRIPT, 1);
    (
        [
            (CONTENT_TYPE, "text/html; charset=utf-8".to_string()),
            (CONTENT_SECURITY_POLICY, policy()),
            (X_FRAME_OPTIONS, "DENY".to_string()),
            (X_CONTENT_TYPE_OPTIONS, "nosniff".to_string()),
            (REFERRER_POLICY, "no-referrer".to_string()),
            (CACHE_CONTROL, "no-store".to_string()),
        ],
        html,
    )
        .into_response()
}

/// Nothing runs or loads but the page's own script and style, and it talks to this origin
/// only.
fn policy() -> String {
    format!(
        "default-src 'none'; script-src '{}'; style-src '{}'; connect-src 'self'; \
         base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
        sha256(SCRIPT),
        sha256(STYLE)
    )
}

/// A CSP source expression for an inline block: `sha256-` and the base64 of its digest.
fn sha256(text: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, text.as_bytes());
    format!("sha256-{}", data_encoding::BASE64.encode(digest.as_ref()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_holds_its_script_and_style_whole_and_the_policy_names_them() {
        let html = HTML
            .replacen("@STYLE@", STYLE, 1)
            .replacen("@SCRIPT@", SCRIPT, 1);
        assert!(html.contains(&format!("<script>{SCRIPT}</script>")));
        assert!(html.contains(&format!("<style>{STYLE}</style>")));
        assert!(!html.contains("@STYLE@") && !html.contains("@SCRIPT@"));
        let policy = policy();
        assert!(policy.contains(&sha256(SCRIPT)) && policy.contains(&sha256(STYLE)));
        assert!(!policy.contains("unsafe"), "{policy}");
    }

    #[test]
    fn only_a_browser_loading_a_page_gets_html() {
        let accept = |value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(ACCEPT, value.parse().unwrap());
            wants_html(&headers)
        };
        assert!(accept(
            "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"
        ));
        assert!(!accept("*/*"));
        assert!(!accept("application/json"));
        assert!(!wants_html(&HeaderMap::new()));
    }
}
