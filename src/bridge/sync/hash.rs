//! The `h` of a sync summary row, as the reference's `mesh/sync/hash-summary.js` computes it:
//! the first 16 hex digits of the SHA-256 of a string value itself, or of `JSON.stringify`
//! of any other value; for a skill, of its content (`''` when it has none).
//!
//! meshd holds an object's keys sorted (`serde_json::Value`), where JavaScript keeps them in
//! the order they arrived. The text is printed with JavaScript's rules (`canonical`), so the
//! hash matches the reference's for every value whose object keys the reference holds in
//! sorted order (everything meshd sent it, and anything written so); an object the reference
//! wrote with its keys in another order hashes differently (docs/compatibility.md, Phase 3).

use ring::digest::{digest, SHA256};
use serde_json::Value;

use crate::bridge::canonical;

/// Hex digits kept, as the reference's `HASH_LENGTH`.
pub const HASH_HEX_DIGITS: usize = 16;

/// `hashString(text)`.
pub fn hash_text(text: &str) -> String {
    let sum = digest(&SHA256, text.as_bytes());
    let mut hex = data_encoding::HEXLOWER.encode(sum.as_ref());
    hex.truncate(HASH_HEX_DIGITS);
    hex
}

/// `hashValue(value)` for a memory value as meshd holds it.
pub fn hash_value(value: &Value) -> String {
    match value {
        Value::String(text) => hash_text(text),
        other => hash_text(&javascript_text(other)),
    }
}

/// `hashValue` for a value as it arrived in `text` (its keys in arrival order), which is
/// what the sender hashed; `None` when `text` is not JSON.
pub fn hash_arrived(text: &str) -> Option<String> {
    let value = canonical::parse(text).ok()?;
    Some(match value.as_text() {
        Some(text) => hash_text(&text),
        None => hash_text(&canonical::stringify(&value)),
    })
}

/// A skill's `h`: its content's hash, or `''` for empty content, as the reference writes it.
pub fn hash_skill(body: &str) -> String {
    if body.is_empty() {
        String::new()
    } else {
        hash_text(body)
    }
}

/// `JSON.stringify(value)` with the keys in meshd's order.
fn javascript_text(value: &Value) -> String {
    let text = value.to_string();
    // serde_json nests at most 128 deep, within what `canonical` reads; the fallback is
    // the same text with serde's number forms, never reached.
    canonical::parse(&text).map_or(text, |parsed| canonical::stringify(&parsed))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Hashes printed by the reference's own `hash-summary.js` under node 20
    /// (`hashValue(...)`), for values whose keys it holds sorted.
    #[test]
    fn hashes_match_the_reference() {
        let cases = [
            (json!("hello"), "2cf24dba5fb0a30e"),
            (json!({"shortAnswers": true}), "b7f1084ff52d5ed0"),
            (json!(42), "73475cb40a568e8d"),
            (json!(1.5), "9f29a130438b8117"),
            (json!([1, "a", null]), "6f9c54658fdbc2f1"),
        ];
        for (value, expected) in cases {
            assert_eq!(hash_value(&value), expected, "{value}");
        }
    }

    #[test]
    fn arrival_order_is_kept_when_hashing_the_text_as_sent() {
        assert_eq!(
            hash_arrived(r#"{"a":1,"b":2}"#),
            Some(hash_value(&json!({"b":2,"a":1})))
        );
        assert_ne!(
            hash_arrived(r#"{"b":2,"a":1}"#),
            hash_arrived(r#"{"a":1,"b":2}"#)
        );
        assert_eq!(hash_arrived(r#""x""#), Some(hash_text("x")));
        assert_eq!(hash_arrived("{"), None);
    }

    #[test]
    fn javascript_number_forms_are_hashed() {
        assert_eq!(hash_value(&json!(1.0)), hash_text("1"));
        assert_eq!(hash_value(&json!(1e21)), hash_text("1e+21"));
        assert_eq!(
            hash_value(&json!({"10": 1, "9": 2})),
            hash_text(r#"{"9":2,"10":1}"#)
        );
    }

    #[test]
    fn an_empty_skill_hashes_to_nothing() {
        assert_eq!(hash_skill(""), "");
        assert_eq!(hash_skill("# Triage"), hash_text("# Triage"));
    }
}
