//! Posting sync messages to a peer's bridge webhook (`POST /bridge?handleRequest=1`) and
//! reading the answers it sends back in `response`.

use std::time::Duration;

use serde_json::Value;

/// How long one post may take, answer included.
const TIMEOUT: Duration = Duration::from_secs(60);
/// The largest answer read: a webhook's answers are deltas of about 1 MiB each.
const MAX_ANSWER_BYTES: u64 = 64 << 20;

#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error("'{0}' is not an http:// or https:// URL of a bridge webhook (e.g. http://nas.local:4077/bridge)")]
    Url(String),
    #[error("cannot reach {url}: {reason}; is the peer's webhook running there?")]
    Unreachable { url: String, reason: String },
    #[error("{url} refused the credentials ({status}): give the peer's webhook token with --bearer, or its header and secret with --auth-header NAME:SECRET")]
    Auth { url: String, status: u16 },
    #[error("{url} answered {status}: {detail}")]
    Status {
        url: String,
        status: u16,
        detail: String,
    },
    #[error("{url} did not answer with JSON ({detail})")]
    NotJson { url: String, detail: String },
    #[error("{url} answered without a 'response': it does not answer sync messages (the reference's webhook-server.js only ingests; run a sync handler or meshd there)")]
    NoResponse { url: String },
}

/// Credentials for a webhook, as its `BRIDGE_AUTH_*` settings ask.
#[derive(Debug, Clone, Default)]
pub struct Credentials {
    pub bearer: Option<String>,
    /// A header name and its secret (`BRIDGE_AUTH_HEADER`, `BRIDGE_AUTH_SECRET`).
    pub header: Option<(String, String)>,
}

/// A peer's webhook.
#[derive(Debug, Clone)]
pub struct Webhook {
    url: String,
    credentials: Credentials,
}

impl Webhook {
    /// `url` is the webhook's address (`/bridge` is taken when it names no path);
    /// `handleRequest=1` is added, so that the answers come back.
    pub fn new(url: &str, credentials: Credentials) -> Result<Webhook, WebhookError> {
        let Some((scheme, rest)) = url.split_once("://") else {
            return Err(WebhookError::Url(url.to_string()));
        };
        if !matches!(scheme, "http" | "https") || rest.is_empty() {
            return Err(WebhookError::Url(url.to_string()));
        }
        let (address, query) = match rest.split_once('?') {
            Some((address, query)) => (address, Some(query)),
            None => (rest, None),
        };
        let address = match address.split_once('/') {
            Some((_, "")) | None => format!("{}/bridge", address.trim_end_matches('/')),
            Some(_) => address.to_string(),
        };
        let query = match query {
            Some(query) if query.contains("handleRequest=") => query.to_string(),
            Some(query) => format!("{query}&handleRequest=1"),
            None => "handleRequest=1".to_string(),
        };
        Ok(Webhook {
            url: format!("{scheme}://{address}?{query}"),
            credentials,
        })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// Posts one message; the answers the peer sent back (none when it had nothing to say).
    pub fn post(&self, message: &str) -> Result<Vec<String>, WebhookError> {
        let agent = ureq::Agent::config_builder()
            .timeout_global(Some(TIMEOUT))
            .http_status_as_error(false)
            .build()
            .new_agent();
        let mut request = agent
            .post(&self.url)
            .header("content-type", "application/json");
        if let Some(token) = &self.credentials.bearer {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        if let Some((name, secret)) = &self.credentials.header {
            request = request.header(name.as_str(), secret.as_str());
        }
        let url = self.url.clone();
        let mut answer = request
            .send(message)
            .map_err(|e| WebhookError::Unreachable {
                url: url.clone(),
                reason: e.to_string(),
            })?;
        let status = answer.status().as_u16();
        let text = answer
            .body_mut()
            .with_config()
            .limit(MAX_ANSWER_BYTES)
            .read_to_string()
            .map_err(|e| WebhookError::Unreachable {
                url: url.clone(),
                reason: format!("the answer broke off: {e}"),
            })?;
        match status {
            200..=299 => answers(&url, &text),
            401 | 403 => Err(WebhookError::Auth { url, status }),
            _ => Err(WebhookError::Status {
                url,
                status,
                detail: text.chars().take(300).collect(),
            }),
        }
    }
}

/// The messages of a webhook's answer: `response` is a list of messages, or one message.
fn answers(url: &str, text: &str) -> Result<Vec<String>, WebhookError> {
    let value: Value = serde_json::from_str(text).map_err(|e| WebhookError::NotJson {
        url: url.to_string(),
        detail: format!(
            "{e}; it began {:?}",
            text.chars().take(80).collect::<String>()
        ),
    })?;
    match value.get("response") {
        Some(Value::Array(messages)) => Ok(messages.iter().map(Value::to_string).collect()),
        Some(message @ Value::Object(_)) => Ok(vec![message.to_string()]),
        _ => Err(WebhookError::NoResponse {
            url: url.to_string(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(given: &str) -> String {
        Webhook::new(given, Credentials::default())
            .unwrap()
            .url()
            .to_string()
    }

    #[test]
    fn the_bridge_route_and_handle_request_are_added() {
        assert_eq!(
            url("http://nas:4077"),
            "http://nas:4077/bridge?handleRequest=1"
        );
        assert_eq!(
            url("http://nas:4077/"),
            "http://nas:4077/bridge?handleRequest=1"
        );
        assert_eq!(url("http://nas/hook"), "http://nas/hook?handleRequest=1");
        assert_eq!(
            url("https://nas/bridge?unwrap=generic"),
            "https://nas/bridge?unwrap=generic&handleRequest=1"
        );
        assert_eq!(
            url("http://nas/bridge?handleRequest=true"),
            "http://nas/bridge?handleRequest=true"
        );
        for bad in ["nas:4077", "ftp://nas", "http://"] {
            assert!(Webhook::new(bad, Credentials::default()).is_err(), "{bad}");
        }
    }

    #[test]
    fn answers_are_a_list_or_one_message_and_anything_else_says_why() {
        assert_eq!(
            answers("u", r#"{"response":[{"a":1},{"b":2}]}"#).unwrap(),
            [r#"{"a":1}"#, r#"{"b":2}"#]
        );
        assert_eq!(
            answers("u", r#"{"response":{"a":1}}"#).unwrap(),
            [r#"{"a":1}"#]
        );
        let none = answers("u", r#"{"ingested":0,"memory":0,"skill":0}"#).unwrap_err();
        assert!(none.to_string().contains("does not answer sync messages"));
        let junk = answers("u", "<html>").unwrap_err();
        assert!(junk.to_string().contains("did not answer with JSON"));
    }
}
