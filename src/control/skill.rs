//! `meshd skill`: shared skills.

use serde::{Deserialize, Serialize};

use super::{Command, CommandError, Context, Effects};
use crate::model::Skill;
use crate::replica::SkillWrite;

/// Creates or updates a skill (its content is applied as a text diff).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SkillPut {
    pub name: String,
    pub content: String,
    /// `None` keeps the stored description.
    pub description: Option<String>,
    pub path: Option<String>,
}

impl Command for SkillPut {
    /// What was done, for the operator.
    type Reply = String;
    const EFFECTS: Effects = Effects::DATA;

    fn execute(self, node: &Context) -> Result<String, CommandError> {
        let write = SkillWrite {
            name: self.name,
            content: self.content,
            description: self.description,
            path: self.path,
        };
        let skill = node
            .replica
            .put_skill(write)
            .map_err(CommandError::failed)?;
        Ok(format!(
            "stored skill {} ({} bytes)",
            skill.name,
            skill.content.len()
        ))
    }
}

/// Reads one live skill.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SkillGet {
    pub name: String,
}

impl Command for SkillGet {
    type Reply = Skill;
    const EFFECTS: Effects = Effects::NONE;

    fn execute(self, node: &Context) -> Result<Skill, CommandError> {
        node.replica
            .with(|replica| replica.get_skill(&self.name))?
            .ok_or_else(|| no_skill(&self.name))
    }
}

/// Lists the live skills.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SkillLs {}

impl Command for SkillLs {
    type Reply = Vec<Skill>;
    const EFFECTS: Effects = Effects::NONE;

    fn execute(self, node: &Context) -> Result<Vec<Skill>, CommandError> {
        Ok(node.replica.with(|replica| replica.list_skills())?)
    }
}

/// Deletes a skill: a tombstone that syncs like a write.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SkillRm {
    pub name: String,
}

impl Command for SkillRm {
    /// What was done, for the operator.
    type Reply = String;
    const EFFECTS: Effects = Effects::DATA;

    fn execute(self, node: &Context) -> Result<String, CommandError> {
        match node
            .replica
            .with(|replica| replica.delete_skill(&self.name))
        {
            Ok(true) => Ok(format!("deleted skill {}", self.name)),
            Ok(false) => Err(no_skill(&self.name)),
            Err(e) => Err(CommandError::failed(e)),
        }
    }
}

fn no_skill(name: &str) -> CommandError {
    CommandError::NotFound(format!("no skill named {name}"))
}
