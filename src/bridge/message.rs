//! Phase 1 bridge messages (FR-1.1, FR-1.2, FR-1.4) and how they map onto meshd's model.
//!
//! A message's `scope: "node"` means the node that sent it (`nodeId`), so it maps to
//! `node:<nodeId>`; `ts` (Unix seconds) becomes the entry's stamp. docs/compatibility.md
//! lists every mapping.

use serde::Serialize;
use serde_json::Value;

use crate::model::hlc::MAX_UNIX_MILLIS;
use crate::model::{MemoryEntry, NodeId, Scope, Skill, Stamp};

/// A value from the bridge that meshd acts on.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    Memory(MemoryEntry),
    Skill(SkillMessage),
    Request(MeshRequest),
}

/// A skill message: `ts` is optional on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkillMessage {
    pub name: String,
    pub source_node: String,
    pub content: String,
    pub ts: Option<Stamp>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Memory,
    Skill,
}

/// `mesh_request`: "who has memory scope/key" or "who has skill name".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeshRequest {
    pub request_id: String,
    pub kind: Kind,
    pub node_id: String,
    pub scope: Option<String>,
    pub key: Option<String>,
    pub name: Option<String>,
}

/// Why a value is not a message meshd acts on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotAMessage {
    #[error("not a memory, skill or mesh_request message")]
    UnknownType,
    #[error("{kind} message without a valid '{field}'")]
    Field {
        kind: &'static str,
        field: &'static str,
    },
    #[error("'ts' must be Unix seconds between 0 and the year 10889")]
    Ts,
    #[error("{0}")]
    Scope(String),
}

const MAX_NODE_ID_BYTES: usize = 128;

/// Reads one value the way the reference validators do (`type` plus the required fields with
/// the right JSON types), then applies meshd's own limits on ids, scopes and times.
pub fn classify(value: &Value) -> Result<Message, NotAMessage> {
    match value.get("type").and_then(Value::as_str) {
        Some("memory") => memory(value).map(Message::Memory),
        Some("skill") => skill(value).map(Message::Skill),
        Some("mesh_request") => request(value).map(Message::Request),
        _ => Err(NotAMessage::UnknownType),
    }
}

fn memory(value: &Value) -> Result<MemoryEntry, NotAMessage> {
    let field = |field| NotAMessage::Field {
        kind: "memory",
        field,
    };
    let scope = text(value, "scope").ok_or(field("scope"))?;
    let key = text(value, "key").ok_or(field("key"))?;
    let node_id = node_id(value, "nodeId").ok_or(field("nodeId"))?;
    let ts = value.get("ts").ok_or(field("ts"))?;
    let updated_at = stamp(ts)?;
    let content = value.get("value").ok_or(field("value"))?;
    let user_scope = text(value, "userScope");
    Ok(MemoryEntry {
        scope: scope_of(scope, user_scope, &node_id)?,
        key: key.to_string(),
        value: content.clone(),
        node_id,
        updated_at,
        deleted: false,
        author: None,
        claim: None,
    })
}

fn skill(value: &Value) -> Result<SkillMessage, NotAMessage> {
    let field = |field| NotAMessage::Field {
        kind: "skill",
        field,
    };
    Ok(SkillMessage {
        name: text(value, "name").ok_or(field("name"))?.to_string(),
        source_node: node_id(value, "sourceNode").ok_or(field("sourceNode"))?,
        content: text(value, "content").ok_or(field("content"))?.to_string(),
        ts: value.get("ts").map(stamp).transpose()?,
    })
}

fn request(value: &Value) -> Result<MeshRequest, NotAMessage> {
    let field = |field| NotAMessage::Field {
        kind: "mesh_request",
        field,
    };
    let kind = match value.get("kind").and_then(Value::as_str) {
        Some("memory") => Kind::Memory,
        Some("skill") => Kind::Skill,
        _ => return Err(field("kind")),
    };
    let optional = |name| text(value, name).map(str::to_string);
    Ok(MeshRequest {
        request_id: optional("requestId").ok_or(field("requestId"))?,
        kind,
        node_id: optional("nodeId").ok_or(field("nodeId"))?,
        scope: optional("scope"),
        key: optional("key"),
        name: optional("name"),
    })
}

fn text<'a>(value: &'a Value, field: &str) -> Option<&'a str> {
    value.get(field).and_then(Value::as_str)
}

/// A node name from the bridge (`ceo`), or a meshd node id in either form (kept compact so
/// it matches the ids meshd itself writes).
fn node_id(value: &Value, field: &str) -> Option<String> {
    node_name(text(value, field)?)
}

/// A writer's name as the bridge and the Phase 2 API give it, checked (not empty, at most 128
/// bytes, no control characters); a meshd node id is kept in its compact form.
pub fn node_name(id: &str) -> Option<String> {
    if id.trim().is_empty() || id.len() > MAX_NODE_ID_BYTES || id.chars().any(char::is_control) {
        return None;
    }
    Some(
        id.parse::<NodeId>()
            .map_or_else(|_| id.to_string(), |id| id.compact()),
    )
}

/// `ts` in Unix seconds; fractions keep their milliseconds.
fn stamp(ts: &Value) -> Result<Stamp, NotAMessage> {
    let millis = ts
        .as_f64()
        .filter(|seconds| seconds.is_finite() && *seconds >= 0.0)
        .map(|seconds| (seconds * 1000.0).floor())
        .filter(|millis| *millis <= MAX_UNIX_MILLIS as f64)
        .ok_or(NotAMessage::Ts)?;
    Ok(Stamp::from_unix_millis(millis as u64))
}

/// Bridge scopes: `node` is the sender's own node scope; `user` with `userScope` names a
/// user; `mesh`, `user:<id>` and `node:<id>` read as meshd scopes.
pub(super) fn scope_of(
    scope: &str,
    user_scope: Option<&str>,
    node_id: &str,
) -> Result<Scope, NotAMessage> {
    let scope = match (scope, user_scope) {
        ("user", Some(user)) => Scope::parse(&format!("user:{user}"), node_id),
        (scope, _) => Scope::parse_for(scope, node_id),
    };
    scope.map_err(|e| NotAMessage::Scope(e.to_string()))
}

impl SkillMessage {
    /// The skill to import: a skill message carries no description, so the one held is kept.
    pub fn into_skill(self, updated_at: Stamp, description: String) -> Skill {
        Skill {
            name: self.name,
            content: self.content,
            path: None,
            description,
            source_node: self.source_node,
            updated_at,
            deleted: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_formats_md_memory_example() {
        let message = json!({"type":"memory","scope":"mesh","key":"user.preferences",
            "value":{"shortAnswers":true},"nodeId":"ceo","ts":1739123456});
        let Ok(Message::Memory(entry)) = classify(&message) else {
            panic!("not a memory message");
        };
        assert_eq!(entry.scope, Scope::Mesh);
        assert_eq!(entry.key, "user.preferences");
        assert_eq!(entry.value, json!({"shortAnswers": true}));
        assert_eq!(entry.node_id, "ceo");
        assert_eq!(entry.updated_at, Stamp::from_unix_seconds(1_739_123_456));
    }

    #[test]
    fn the_formats_md_skill_example_has_no_ts() {
        let message = json!({"type":"skill","name":"triage","sourceNode":"ceo",
            "content":"# Triage rules\n..."});
        let Ok(Message::Skill(skill)) = classify(&message) else {
            panic!("not a skill message");
        };
        assert_eq!(skill.name, "triage");
        assert_eq!(skill.source_node, "ceo");
        assert_eq!(skill.ts, None);
    }

    #[test]
    fn node_scope_belongs_to_the_sender() {
        let message = json!({"type":"memory","scope":"node","key":"k","value":1,
            "nodeId":"sec","ts":1});
        let Ok(Message::Memory(entry)) = classify(&message) else {
            panic!()
        };
        assert_eq!(entry.scope, Scope::Node("sec".into()));
        assert_eq!(entry.scope.label("sec"), "node");
        assert_eq!(entry.scope.label("ceo"), "node:sec");
    }

    #[test]
    fn user_scope_field_names_the_user_of_a_bare_user_scope() {
        let message = json!({"type":"memory","scope":"user","userScope":"alice","key":"k",
            "value":1,"nodeId":"ceo","ts":1});
        let Ok(Message::Memory(entry)) = classify(&message) else {
            panic!()
        };
        assert_eq!(entry.scope, Scope::User("alice".into()));
    }

    #[test]
    fn fractional_ts_keeps_milliseconds() {
        let message = json!({"type":"skill","name":"n","sourceNode":"a","content":"",
            "ts": 10.25});
        let Ok(Message::Skill(skill)) = classify(&message) else {
            panic!()
        };
        assert_eq!(skill.ts, Some(Stamp::from_unix_millis(10_250)));
    }

    #[test]
    fn invalid_messages_say_why() {
        let cases = [
            (
                json!({"type":"memory","scope":"mesh","key":"k","value":1,"nodeId":"a"}),
                "ts",
            ),
            (
                json!({"type":"memory","scope":"mesh","key":"k","nodeId":"a","ts":1}),
                "value",
            ),
            (
                json!({"type":"memory","scope":"mesh","key":5,"value":1,"nodeId":"a","ts":1}),
                "key",
            ),
            (
                json!({"type":"memory","scope":"mesh","key":"k","value":1,"nodeId":"","ts":1}),
                "nodeId",
            ),
            (
                json!({"type":"memory","scope":"global","key":"k","value":1,"nodeId":"a","ts":1}),
                "scope",
            ),
            (
                json!({"type":"memory","scope":"mesh","key":"k","value":1,"nodeId":"a","ts":-1}),
                "ts",
            ),
            (
                json!({"type":"memory","scope":"mesh","key":"k","value":1,"nodeId":"a","ts":"1"}),
                "ts",
            ),
            (
                json!({"type":"memory","scope":"mesh","key":"k","value":1,"nodeId":"a","ts":1e15}),
                "ts",
            ),
            (
                json!({"type":"skill","name":"n","sourceNode":"a"}),
                "content",
            ),
            (
                json!({"type":"mesh_request","requestId":"r","kind":"file","nodeId":"a"}),
                "kind",
            ),
            (json!({"type":"mesh_response"}), "memory, skill"),
            (json!([1]), "memory, skill"),
        ];
        for (value, reason) in cases {
            let error = classify(&value).expect_err(&value.to_string());
            assert!(error.to_string().contains(reason), "{value}: {error}");
        }
    }

    #[test]
    fn requests_of_both_kinds() {
        let message = json!({"type":"mesh_request","requestId":"req-abc-1","kind":"memory",
            "nodeId":"ceo","scope":"mesh","key":"user.preferences","ts":1739123456});
        let Ok(Message::Request(request)) = classify(&message) else {
            panic!()
        };
        assert_eq!(request.kind, Kind::Memory);
        assert_eq!(request.key.as_deref(), Some("user.preferences"));
        let message = json!({"type":"mesh_request","requestId":"r","kind":"skill",
            "nodeId":"sec","name":"triage"});
        let Ok(Message::Request(request)) = classify(&message) else {
            panic!()
        };
        assert_eq!(request.name.as_deref(), Some("triage"));
    }
}
