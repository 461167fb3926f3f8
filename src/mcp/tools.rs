//! The tool table: each tool turns its arguments into one control command and that command's
//! reply into a JSON object for the agent. A new tool is an arguments type and one
//! `Tool::new` line in its group's list (`memory::tools`, `skill::tools`, `search::tools`).

use std::sync::Arc;

use rmcp::handler::server::tool::schema_for_input;
use rmcp::model::{JsonObject, ToolAnnotations};
use schemars::JsonSchema;
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::{memory, search, skill, Node};
use crate::control::{decode, Command, DecodeError};

/// Runs one call: the arguments in, the result object or the reason for a refusal out.
type Call = dyn Fn(&dyn Node, JsonObject) -> Result<Value, String> + Send + Sync;

/// One tool: what `tools/list` shows, and how a call runs on the node.
#[derive(Clone)]
pub(super) struct Tool {
    pub definition: rmcp::model::Tool,
    call: Arc<Call>,
}

/// What a tool does to the node, for the client's confirmation prompts.
#[derive(Debug, Clone, Copy)]
pub(super) enum Kind {
    Reads,
    /// Writes; calling it twice with the same arguments leaves the same state.
    Writes,
    Deletes,
}

impl Tool {
    /// A tool whose arguments `A` become the command `C`, and whose reply `show` presents.
    pub fn new<A, C>(
        name: &'static str,
        description: &'static str,
        kind: Kind,
        command: fn(A) -> C,
        show: fn(C::Reply) -> Value,
    ) -> Result<Tool, String>
    where
        A: DeserializeOwned + JsonSchema + 'static,
        C: Command + 'static,
        C::Reply: 'static,
    {
        let schema = schema_for_input::<A>().map_err(|e| format!("{name}: {e}"))?;
        let definition =
            rmcp::model::Tool::new(name, description, schema).with_annotations(annotations(kind));
        let call = move |node: &dyn Node, arguments: JsonObject| {
            let arguments: A = serde_json::from_value(Value::Object(arguments))
                .map_err(|e| format!("invalid arguments for {name}: {e}"))?;
            let reply = node.execute(command(arguments).into());
            decode::<C>(reply).map(show).map_err(|error| match error {
                DecodeError::Command(refusal) => refusal.to_string(),
                shape => shape.to_string(),
            })
        };
        Ok(Tool {
            definition,
            call: Arc::new(call),
        })
    }

    pub fn name(&self) -> &str {
        &self.definition.name
    }

    /// Runs the call; blocks on the node.
    pub fn call(&self, node: &dyn Node, arguments: JsonObject) -> Result<Value, String> {
        (self.call)(node, arguments)
    }
}

fn annotations(kind: Kind) -> ToolAnnotations {
    let hints = ToolAnnotations::new().open_world(false);
    match kind {
        Kind::Reads => hints.read_only(true),
        Kind::Writes => hints.read_only(false).destructive(true).idempotent(true),
        Kind::Deletes => hints.read_only(false).destructive(true).idempotent(false),
    }
}

/// Every tool, in the order `tools/list` shows them.
pub(super) fn all() -> Result<Vec<Tool>, String> {
    let mut tools = memory::tools()?;
    tools.extend(skill::tools()?);
    tools.extend(search::tools()?);
    Ok(tools)
}

pub(super) fn find<'a>(tools: &'a [Tool], name: &str) -> Option<&'a Tool> {
    tools.iter().find(|tool| tool.name() == name)
}

/// A reply that is only a sentence for the operator (`deleted mesh:k`).
pub(super) fn message(text: String) -> Value {
    serde_json::json!({ "result": text })
}

/// A stamp as the agent reads it: `2026-11-22T10:00:00Z`.
pub(super) fn time(stamp: crate::model::Stamp) -> String {
    crate::model::hlc::rfc3339_seconds(stamp.unix_seconds())
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use serde_json::json;

    use super::*;
    use crate::control::{CommandError, Reply, Request};

    /// Answers every request with `reply` and keeps the requests as they travel.
    struct Recorder {
        reply: Reply,
        requests: Mutex<Vec<Value>>,
    }

    impl Node for Recorder {
        fn execute(&self, request: Request) -> Reply {
            let sent = serde_json::to_value(&request).unwrap();
            self.requests.lock().unwrap().push(sent);
            self.reply.clone()
        }
    }

    fn recorder(reply: Reply) -> Recorder {
        Recorder {
            reply,
            requests: Mutex::new(Vec::new()),
        }
    }

    fn arguments(value: Value) -> JsonObject {
        match value {
            Value::Object(object) => object,
            other => panic!("not an object: {other}"),
        }
    }

    fn tool(name: &str) -> Tool {
        let tools = all().unwrap();
        find(&tools, name).unwrap().clone()
    }

    #[test]
    fn every_tool_has_a_unique_name_and_an_object_schema() {
        let tools = all().unwrap();
        let mut names: Vec<&str> = tools.iter().map(Tool::name).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), tools.len());
        for tool in &tools {
            assert_eq!(tool.definition.input_schema["type"], json!("object"));
        }
    }

    #[test]
    fn a_call_becomes_its_command_and_a_refusal_its_reason() {
        let node = recorder(Err(CommandError::Failed(
            "refused: value looks like a secret".into(),
        )));
        let outcome = tool("memory_put").call(
            &node,
            arguments(json!({"scope": "mesh", "key": "k", "value": [1]})),
        );
        assert_eq!(outcome, Err("refused: value looks like a secret".into()));
        let sent = node.requests.lock().unwrap().clone();
        assert_eq!(
            sent,
            [json!({"op": "mem_put", "scope": "mesh", "key": "k", "value": [1]})]
        );
    }

    #[test]
    fn bad_arguments_are_refused_before_the_node_is_asked() {
        let node = recorder(Ok(json!("unused")));
        for bad in [
            json!({"scope": "mesh"}),
            json!({"scope": "mesh", "key": 7}),
            json!({"scope": "mesh", "key": "k", "extra": 1}),
        ] {
            let outcome = tool("memory_get").call(&node, arguments(bad));
            assert!(outcome
                .unwrap_err()
                .starts_with("invalid arguments for memory_get"));
        }
        assert!(node.requests.lock().unwrap().is_empty());
    }

    #[test]
    fn a_reply_of_another_shape_is_a_refusal_not_a_panic() {
        let node = recorder(Ok(json!({"unexpected": true})));
        let outcome = tool("skill_get").call(&node, arguments(json!({"name": "deploy"})));
        assert!(outcome.unwrap_err().contains("different version"));
    }
}
