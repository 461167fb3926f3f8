//! Bridge envelopes: where a transport (Telegram, Discord, a generic webhook) keeps the text
//! that carries mesh messages, and how a payload becomes the JSON values to look at.

use std::fmt;
use std::str::FromStr;

use serde_json::Value;

/// How to take the mesh payload out of a transport's envelope.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unwrap {
    /// Telegram Bot API update: `message|channel_post|edited_message` then `.text|.caption`.
    Telegram,
    /// Discord message: `.content`.
    Discord,
    /// A webhook body: the first present of `body`, `message`, `data`, `payload`.
    Generic,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown envelope '{0}': use telegram, discord or generic")]
pub struct UnknownUnwrap(pub String);

impl FromStr for Unwrap {
    type Err = UnknownUnwrap;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "telegram" => Ok(Unwrap::Telegram),
            "discord" => Ok(Unwrap::Discord),
            "generic" => Ok(Unwrap::Generic),
            other => Err(UnknownUnwrap(other.to_string())),
        }
    }
}

impl fmt::Display for Unwrap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Unwrap::Telegram => "telegram",
            Unwrap::Discord => "discord",
            Unwrap::Generic => "generic",
        })
    }
}

impl Unwrap {
    /// The envelope's content, or the payload itself when the envelope has none: a bridge may
    /// forward bare mesh messages on the same route as wrapped ones (the reference does this).
    pub fn apply(self, payload: Value) -> Value {
        self.inner(&payload).unwrap_or(payload)
    }

    fn inner(self, payload: &Value) -> Option<Value> {
        match self {
            Unwrap::Telegram => {
                let message = ["message", "channel_post", "edited_message"]
                    .iter()
                    .find_map(|field| present(payload, field))?;
                ["text", "caption"]
                    .iter()
                    .find_map(|field| present(&message, field))
                    .filter(|text| text.is_string())
            }
            Unwrap::Discord => {
                present(payload, "content").filter(|c| c.is_string() || is_mesh_object(c))
            }
            Unwrap::Generic => ["body", "message", "data", "payload"]
                .iter()
                .find_map(|field| present(payload, field))
                .filter(|body| body.is_string() || body.is_object() || body.is_array()),
        }
    }
}

/// A field that is there and not null, the way the reference's `??` chains read.
fn present(value: &Value, field: &str) -> Option<Value> {
    value.get(field).filter(|v| !v.is_null()).cloned()
}

fn is_mesh_object(value: &Value) -> bool {
    matches!(
        value.get("type").and_then(Value::as_str),
        Some("memory" | "skill" | "mesh_request")
    )
}

/// One value found in a payload: a JSON value to classify, or text that is not JSON.
pub type Item = Result<Value, NotJson>;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not JSON: {0}")]
pub struct NotJson(pub String);

/// Every value in `text`: one JSON document (an object, an array of them, or a JSON string
/// holding either) or, failing that, JSON Lines. Each line that is not JSON is one item of junk.
pub fn items(text: &str, unwrap: Option<Unwrap>) -> Vec<Item> {
    documents(text)
        .into_iter()
        .flat_map(|document| match document {
            Ok(value) => expand(value, unwrap, true),
            Err(junk) => vec![Err(junk)],
        })
        .collect()
}

fn documents(text: &str) -> Vec<Item> {
    if text.trim().is_empty() {
        return Vec::new();
    }
    if let Ok(value) = serde_json::from_str(text) {
        return vec![Ok(value)];
    }
    text.lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| serde_json::from_str(line).map_err(|_| NotJson(preview(line))))
        .collect()
}

/// Unwraps one payload and spreads it into messages. Text inside (a JSON string, a chat
/// message's text) is parsed once more, but only once: a string inside that is junk.
fn expand(value: Value, unwrap: Option<Unwrap>, parse_text: bool) -> Vec<Item> {
    let body = match unwrap {
        Some(unwrap) => unwrap.apply(value),
        None => value,
    };
    match body {
        Value::Array(values) => values.into_iter().map(Ok).collect(),
        Value::String(text) if parse_text => documents(&text)
            .into_iter()
            .flat_map(|document| match document {
                Ok(value) => expand(value, None, false),
                Err(junk) => vec![Err(junk)],
            })
            .collect(),
        Value::String(text) => vec![Err(NotJson(preview(&text)))],
        other => vec![Ok(other)],
    }
}

/// The start of a piece of junk, for messages that say what was ignored.
fn preview(text: &str) -> String {
    const MAX: usize = 40;
    let text = text.trim();
    match text.char_indices().nth(MAX) {
        Some((end, _)) => format!("{}...", &text[..end]),
        None => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn values(text: &str, unwrap: Option<Unwrap>) -> Vec<Value> {
        items(text, unwrap)
            .into_iter()
            .map(|item| item.unwrap_or_else(|e| json!({ "junk": e.0 })))
            .collect()
    }

    #[test]
    fn telegram_reads_text_then_caption_of_the_first_message_field() {
        let update = json!({"channel_post": {"caption": "{\"a\":1}"}});
        assert_eq!(Unwrap::Telegram.apply(update), json!("{\"a\":1}"));
        let update =
            json!({"message": {"text": "t", "caption": "c"}, "channel_post": {"text": "x"}});
        assert_eq!(Unwrap::Telegram.apply(update), json!("t"));
        let update = json!({"edited_message": {"text": "e"}});
        assert_eq!(Unwrap::Telegram.apply(update), json!("e"));
    }

    #[test]
    fn an_envelope_without_content_is_the_payload_itself() {
        let bare = json!({"type": "memory"});
        for unwrap in [Unwrap::Telegram, Unwrap::Discord, Unwrap::Generic] {
            assert_eq!(unwrap.apply(bare.clone()), bare, "{unwrap}");
        }
        let no_text = json!({"message": {"photo": []}});
        assert_eq!(Unwrap::Telegram.apply(no_text.clone()), no_text);
    }

    #[test]
    fn discord_reads_content_text_or_a_mesh_object() {
        assert_eq!(Unwrap::Discord.apply(json!({"content": "hi"})), json!("hi"));
        let inner = json!({"type": "skill", "name": "n"});
        assert_eq!(Unwrap::Discord.apply(json!({"content": inner})), inner);
    }

    #[test]
    fn generic_takes_the_first_present_field() {
        let payload = json!({"body": null, "message": "m", "data": "d"});
        assert_eq!(Unwrap::Generic.apply(payload), json!("m"));
        let payload = json!({"payload": [1]});
        assert_eq!(Unwrap::Generic.apply(payload), json!([1]));
    }

    #[test]
    fn payloads_spread_into_values() {
        assert_eq!(values("{\"a\":1}", None), vec![json!({"a":1})]);
        assert_eq!(
            values("[{\"a\":1},2]", None),
            vec![json!({"a":1}), json!(2)]
        );
        assert_eq!(
            values("\"[{\\\"a\\\":1}]\"", None),
            vec![json!({"a":1})],
            "a JSON string of an array"
        );
        assert_eq!(
            values("{\"a\":1}\n\nnope\n[3]\n", None),
            vec![json!({"a":1}), json!({"junk": "nope"}), json!(3)]
        );
        assert!(values("  \n", None).is_empty());
    }

    #[test]
    fn text_is_parsed_once_only() {
        let twice = serde_json::to_string(&json!("\"{}\"")).unwrap();
        assert_eq!(values(&twice, None), vec![json!({"junk": "{}"})]);
    }

    #[test]
    fn unwrap_names_parse() {
        assert_eq!("discord".parse(), Ok(Unwrap::Discord));
        assert!("slack".parse::<Unwrap>().is_err());
    }
}
