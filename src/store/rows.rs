//! Phase 2 rows (`mesh_memory`, `mesh_skills`) as JSON and as SQLite text.

use serde::Serialize;
use serde_json::Value;

use crate::model::{MemoryEntry, Skill};

/// A memory row as the reference API answers it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MemoryRow {
    pub scope: String,
    pub key: String,
    pub value: Value,
    /// The writer as the row names it (`MemoryEntry::named_writer`).
    pub node_id: String,
    pub updated_at: u64,
}

impl MemoryRow {
    /// `scope` is the label the row shows: the API names scopes as this node does, SQLite by
    /// its schema's rule.
    pub fn new(entry: &MemoryEntry, scope: String) -> MemoryRow {
        MemoryRow {
            scope,
            key: entry.key.clone(),
            value: entry.value.clone(),
            node_id: entry.named_writer().to_string(),
            updated_at: entry.updated_at.unix_seconds(),
        }
    }
}

/// A skill row. `content` is null only for a skill shared by path alone, as the schema's
/// `CHECK (content IS NOT NULL OR path IS NOT NULL)` has it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SkillRow {
    pub name: String,
    pub source_node: String,
    pub content: Option<String>,
    pub path: Option<String>,
    pub updated_at: u64,
}

impl From<&Skill> for SkillRow {
    fn from(skill: &Skill) -> Self {
        let path_only = skill.content.is_empty() && skill.path.is_some();
        SkillRow {
            name: skill.name.clone(),
            source_node: skill.source_node.clone(),
            content: (!path_only).then(|| skill.content.clone()),
            path: skill.path.clone(),
            updated_at: skill.updated_at.unix_seconds(),
        }
    }
}

/// A `value` column: JSON text, or a string stored bare the way the reference client stores
/// strings. Text that is not JSON is that string.
pub fn decode_value(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_string()))
}

/// A `value` column as the reference client writes it: a string bare, anything else as JSON.
/// A string whose bare text would read back as other JSON (`"42"`, `"true"`, `"{}"`) is
/// written as JSON text instead, so `decode_value` always gives the value back.
pub fn encode_value(value: &Value) -> String {
    match value {
        Value::String(text) if serde_json::from_str::<Value>(text).is_err() => text.clone(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn values_round_trip_through_the_column() {
        for value in [
            json!("metric"),
            json!("42"),
            json!("true"),
            json!(" {} "),
            json!(""),
            json!("\"quoted\""),
            json!(42),
            json!(null),
            json!({"shortAnswers": true}),
            json!([1, "a"]),
        ] {
            assert_eq!(decode_value(&encode_value(&value)), value, "{value}");
        }
    }

    #[test]
    fn strings_are_bare_like_the_reference_client_writes_them() {
        assert_eq!(encode_value(&json!("metric")), "metric");
        assert_eq!(encode_value(&json!("42")), "\"42\"");
        assert_eq!(decode_value("\"metric\""), json!("metric"));
        assert_eq!(decode_value("metric"), json!("metric"));
    }
}
