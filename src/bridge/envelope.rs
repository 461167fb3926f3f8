//! Bridge envelopes: where a transport (Telegram, Discord, a generic webhook) keeps the text
//! that carries mesh messages, and how a payload becomes the JSON values to look at.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde_json::value::RawValue;
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
    pub fn apply(self, payload: Box<RawValue>) -> Box<RawValue> {
        self.inner(&payload).unwrap_or(payload)
    }

    fn inner(self, payload: &RawValue) -> Option<Box<RawValue>> {
        match self {
            Unwrap::Telegram => {
                let message = present(payload, &["message", "channel_post", "edited_message"])?;
                present(&message, &["text", "caption"]).filter(|text| starts(text, b"\""))
            }
            Unwrap::Discord => {
                present(payload, &["content"]).filter(|c| starts(c, b"\"") || is_mesh_object(c))
            }
            Unwrap::Generic => present(payload, &["body", "message", "data", "payload"])
                .filter(|body| starts(body, b"\"{[")),
        }
    }
}

/// The first of `fields` that is there and not null, the way the reference's `??` chains
/// read. A repeated field counts by its last value, as `JSON.parse` keeps.
fn present(value: &RawValue, fields: &[&str]) -> Option<Box<RawValue>> {
    let mut object: BTreeMap<String, Box<RawValue>> = serde_json::from_str(value.get()).ok()?;
    fields
        .iter()
        .find_map(|field| object.remove(*field).filter(|v| v.get() != "null"))
}

/// Whether the JSON text starts with one of `bytes` (`"` a string, `{` an object, `[` an
/// array); a raw value holds no whitespace around it.
fn starts(value: &RawValue, bytes: &[u8]) -> bool {
    value
        .get()
        .as_bytes()
        .first()
        .is_some_and(|first| bytes.contains(first))
}

fn is_mesh_object(value: &RawValue) -> bool {
    let value: Option<Value> = serde_json::from_str(value.get()).ok();
    matches!(
        value
            .as_ref()
            .and_then(|v| v.get("type"))
            .and_then(Value::as_str),
        Some("memory" | "skill" | "mesh_request")
    )
}

/// One value found in a payload, as the exact JSON text it came in (a signature covers
/// details of that text that `Value` does not keep: see `canonical`), or text that is not
/// JSON.
pub type Item = Result<Box<RawValue>, NotJson>;

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
fn expand(value: Box<RawValue>, unwrap: Option<Unwrap>, parse_text: bool) -> Vec<Item> {
    let body = match unwrap {
        Some(unwrap) => unwrap.apply(value),
        None => value,
    };
    let junk = |text: &str| vec![Err(NotJson(preview(text)))];
    if starts(&body, b"[") {
        return match serde_json::from_str::<Vec<Box<RawValue>>>(body.get()) {
            Ok(values) => values.into_iter().map(Ok).collect(),
            Err(_) => junk(body.get()),
        };
    }
    if !starts(&body, b"\"") {
        return vec![Ok(body)];
    }
    match serde_json::from_str::<String>(body.get()) {
        Ok(text) if parse_text => documents(&text)
            .into_iter()
            .flat_map(|document| match document {
                Ok(value) => expand(value, None, false),
                Err(junk) => vec![Err(junk)],
            })
            .collect(),
        Ok(text) => junk(&text),
        Err(_) => junk(body.get()),
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
            .map(|item| match item {
                Ok(raw) => serde_json::from_str(raw.get()).unwrap(),
                Err(e) => json!({ "junk": e.0 }),
            })
            .collect()
    }

    /// `Unwrap::apply` on a `Value`, for short tests.
    trait ApplyValue {
        fn apply_value(self, payload: Value) -> Value;
    }

    impl ApplyValue for Unwrap {
        fn apply_value(self, payload: Value) -> Value {
            let raw = RawValue::from_string(payload.to_string()).unwrap();
            serde_json::from_str(self.apply(raw).get()).unwrap()
        }
    }

    #[test]
    fn deep_nesting_is_one_item_and_no_stack_overflow() {
        let depth = 200_000;
        let deep = format!("[{}{}]", "[".repeat(depth), "]".repeat(depth));
        for unwrap in [None, Some(Unwrap::Generic), Some(Unwrap::Discord)] {
            let found = items(&deep, unwrap);
            assert_eq!(found.len(), 1);
            let text = found[0].as_ref().unwrap().get();
            assert!(
                serde_json::from_str::<Value>(text).is_err(),
                "past serde's limit"
            );
            let check = crate::bridge::signing::verify(text, &Default::default());
            assert!(check.is_invalid());
        }
    }

    #[test]
    fn messages_keep_the_text_they_came_in() {
        let message = r#"{"type":"memory","value":{"z":1,"a":2.50}}"#;
        let envelopes = [
            format!("{{\"body\": {message}}}"),
            format!("{{\"data\": [ {message} ]}}"),
            format!("{{\"payload\": {}}}", Value::String(message.into())),
        ];
        for envelope in envelopes {
            let found = items(&envelope, Some(Unwrap::Generic));
            let texts: Vec<&str> = found.iter().flatten().map(|raw| raw.get()).collect();
            assert_eq!(texts, [message], "{envelope}");
        }
    }

    #[test]
    fn telegram_reads_text_then_caption_of_the_first_message_field() {
        let update = json!({"channel_post": {"caption": "{\"a\":1}"}});
        assert_eq!(Unwrap::Telegram.apply_value(update), json!("{\"a\":1}"));
        let update =
            json!({"message": {"text": "t", "caption": "c"}, "channel_post": {"text": "x"}});
        assert_eq!(Unwrap::Telegram.apply_value(update), json!("t"));
        let update = json!({"edited_message": {"text": "e"}});
        assert_eq!(Unwrap::Telegram.apply_value(update), json!("e"));
    }

    #[test]
    fn an_envelope_without_content_is_the_payload_itself() {
        let bare = json!({"type": "memory"});
        for unwrap in [Unwrap::Telegram, Unwrap::Discord, Unwrap::Generic] {
            assert_eq!(unwrap.apply_value(bare.clone()), bare, "{unwrap}");
        }
        let no_text = json!({"message": {"photo": []}});
        assert_eq!(Unwrap::Telegram.apply_value(no_text.clone()), no_text);
    }

    #[test]
    fn discord_reads_content_text_or_a_mesh_object() {
        assert_eq!(
            Unwrap::Discord.apply_value(json!({"content": "hi"})),
            json!("hi")
        );
        let inner = json!({"type": "skill", "name": "n"});
        assert_eq!(
            Unwrap::Discord.apply_value(json!({"content": inner})),
            inner
        );
    }

    #[test]
    fn generic_takes_the_first_present_field() {
        let payload = json!({"body": null, "message": "m", "data": "d"});
        assert_eq!(Unwrap::Generic.apply_value(payload), json!("m"));
        let payload = json!({"payload": [1]});
        assert_eq!(Unwrap::Generic.apply_value(payload), json!([1]));
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
