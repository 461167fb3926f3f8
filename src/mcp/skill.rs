//! The skill tools: `skill_get`, `skill_put`, `skill_list`, each one `control::skill` command.

use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{json, Value};

use super::tools::{message, time, Kind, Tool};
use crate::control::{SkillGet, SkillLs, SkillPut};
use crate::model::Skill;

const NAME: &str =
    "The skill's name: 1 to 128 bytes, no control characters, e.g. `deploy-checklist`.";

const CONTENT: &str = "The whole text of the skill (usually Markdown), at most 1 MiB. It \
    replaces the current text; concurrent edits on other nodes are merged. It must not contain \
    credentials.";

const DESCRIPTION: &str = "One line saying what the skill is for, at most 1 MiB; the current \
    one is kept when absent.";

const PATH: &str = "Where the skill lives on this node, for a skill shared by path; usually \
    absent.";

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct Name {
    #[schemars(description = NAME)]
    name: String,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct Put {
    #[schemars(description = NAME)]
    name: String,
    #[schemars(description = CONTENT)]
    content: String,
    #[schemars(description = DESCRIPTION)]
    #[serde(default)]
    description: Option<String>,
    #[schemars(description = PATH)]
    #[serde(default)]
    path: Option<String>,
}

/// No arguments.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct Nothing {}

pub(super) fn tools() -> Result<Vec<Tool>, String> {
    Ok(vec![
        Tool::new(
            "skill_get",
            "Read a shared skill: its text, description and which node wrote it when. Refused \
             with a message when no skill has that name.",
            Kind::Reads,
            |a: Name| SkillGet { name: a.name },
            |skill: Skill| {
                let mut shown = summary(&skill);
                shown["content"] = json!(skill.content);
                shown
            },
        )?,
        Tool::new(
            "skill_put",
            "Create or update a shared skill (instructions, a procedure, a SOUL or STYLE \
             snippet); it syncs to every node of the mesh. Texts over 1 MiB and texts that \
             look like secrets (API keys, tokens, private keys, passwords) are refused with \
             the reason.",
            Kind::Writes,
            |a: Put| SkillPut {
                name: a.name,
                content: a.content,
                description: a.description,
                path: a.path,
            },
            message,
        )?,
        Tool::new(
            "skill_list",
            "List the shared skills: name, description, source node and time, without their \
             text (skill_get reads one).",
            Kind::Reads,
            |_: Nothing| SkillLs {},
            |skills: Vec<Skill>| json!({ "skills": skills.iter().map(summary).collect::<Vec<_>>() }),
        )?,
    ])
}

/// A skill without its text.
fn summary(skill: &Skill) -> Value {
    json!({
        "name": skill.name,
        "description": skill.description,
        "path": skill.path,
        "source_node": skill.source_node,
        "updated_at": time(skill.updated_at),
    })
}
