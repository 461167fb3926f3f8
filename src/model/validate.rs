//! Limits on what may be written, with errors that say what to change.

use super::hlc::FutureStamp;
use super::secret::SecretFound;

/// Longest memory key, in bytes. Keys are dotted paths like `user.preferences`, not documents.
pub const MAX_KEY_BYTES: usize = 512;
/// Largest memory value, as compact JSON. Shared memory holds facts, not files.
pub const MAX_VALUE_BYTES: usize = 1024 * 1024;
/// Longest skill name, in bytes.
pub const MAX_SKILL_NAME_BYTES: usize = 128;
/// Largest skill content or description.
pub const MAX_SKILL_BYTES: usize = 1024 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValidationError {
    #[error("unknown scope '{0}': use mesh, node, node:<id> (id: letters, digits, . _ @ + -) or user:<id> (id: any text without control characters or ':', at most 128 bytes)")]
    Scope(String),
    #[error("unknown access pattern '{0}': use mesh, skills, user:*, user:<id>, node:*, node:<id>, node (the peer's own), or none")]
    Pattern(String),
    #[error("the key is empty: give a name such as user.preferences")]
    EmptyKey,
    #[error("the key is {0} bytes, the limit is {MAX_KEY_BYTES}")]
    KeyTooLong(usize),
    #[error("the {0} contains a control character")]
    ControlCharacter(&'static str),
    #[error("the value is not valid JSON ({0}); quote strings, e.g. '\"metric\"'")]
    Json(String),
    #[error("the value is {0} bytes as JSON, the limit is {MAX_VALUE_BYTES}")]
    ValueTooLarge(usize),
    #[error("the skill name is empty")]
    EmptySkillName,
    #[error("the skill name is {0} bytes, the limit is {MAX_SKILL_NAME_BYTES}")]
    SkillNameTooLong(usize),
    #[error("the skill {0} is {1} bytes, the limit is {MAX_SKILL_BYTES}")]
    SkillTooLarge(&'static str, usize),
    #[error(transparent)]
    Secret(#[from] SecretFound),
    #[error(transparent)]
    FutureStamp(#[from] FutureStamp),
    #[error("this entry's current version is stamped at the end of time (a damaged or hostile import); delete the key with a tool that rewrites it, or restore it from a backup")]
    ClockExhausted,
}

pub fn key(key: &str) -> Result<(), ValidationError> {
    if key.is_empty() {
        return Err(ValidationError::EmptyKey);
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(ValidationError::KeyTooLong(key.len()));
    }
    if key.chars().any(char::is_control) {
        return Err(ValidationError::ControlCharacter("key"));
    }
    Ok(())
}

/// Parses a value given as JSON text and checks its size.
pub fn json_value(text: &str) -> Result<serde_json::Value, ValidationError> {
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| ValidationError::Json(e.to_string()))?;
    value_size(&value)?;
    Ok(value)
}

pub fn value_size(value: &serde_json::Value) -> Result<(), ValidationError> {
    let size = serde_json::to_vec(value)
        .map(|v| v.len())
        .unwrap_or(usize::MAX);
    if size > MAX_VALUE_BYTES {
        return Err(ValidationError::ValueTooLarge(size));
    }
    Ok(())
}

pub fn skill_name(name: &str) -> Result<(), ValidationError> {
    if name.trim().is_empty() {
        return Err(ValidationError::EmptySkillName);
    }
    if name.len() > MAX_SKILL_NAME_BYTES {
        return Err(ValidationError::SkillNameTooLong(name.len()));
    }
    if name.chars().any(char::is_control) {
        return Err(ValidationError::ControlCharacter("skill name"));
    }
    Ok(())
}

pub fn skill_text(field: &'static str, text: &str) -> Result<(), ValidationError> {
    if text.len() > MAX_SKILL_BYTES {
        return Err(ValidationError::SkillTooLarge(field, text.len()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys() {
        assert!(key("user.preferences").is_ok());
        assert_eq!(key(""), Err(ValidationError::EmptyKey));
        assert_eq!(key(&"k".repeat(513)), Err(ValidationError::KeyTooLong(513)));
        assert_eq!(key("a\nb"), Err(ValidationError::ControlCharacter("key")));
    }

    #[test]
    fn values() {
        assert_eq!(json_value("{\"a\":1}").unwrap(), serde_json::json!({"a":1}));
        assert!(matches!(
            json_value("metric"),
            Err(ValidationError::Json(_))
        ));
        let big = format!("\"{}\"", "x".repeat(MAX_VALUE_BYTES));
        assert!(matches!(
            json_value(&big),
            Err(ValidationError::ValueTooLarge(_))
        ));
    }

    #[test]
    fn skill_names() {
        assert!(skill_name("triage").is_ok());
        assert_eq!(skill_name(" "), Err(ValidationError::EmptySkillName));
        assert!(skill_name(&"n".repeat(129)).is_err());
    }
}
