//! `meshd skill`: shared skills.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use clap::Subcommand;
use meshd::config::Home;
use meshd::control::{SkillGet, SkillLs, SkillPut, SkillRm};
use serde_json::json;

use super::{execute, format_time, read_stdin};

#[derive(Debug, Subcommand)]
pub enum SkillCommand {
    /// Create or update a skill; the content comes from --file or stdin
    Put {
        name: String,
        /// Read the content from this file instead of stdin
        #[arg(long, value_name = "FILE")]
        file: Option<PathBuf>,
        /// One line saying what the skill is for [default: keep the current one]
        #[arg(long, short = 'd')]
        description: Option<String>,
        /// Where the skill lives on its source node, for skills shared by path
        #[arg(long)]
        path: Option<String>,
    },
    /// Print a skill's content exactly as stored; exits 3 when absent
    Get { name: String },
    /// List skills
    Ls {
        /// Print a JSON array with content
        #[arg(long)]
        json: bool,
    },
    /// Delete a skill (a tombstone that syncs like a write); exits 3 when absent
    Rm { name: String },
}

pub fn run(home: &Home, command: SkillCommand) -> anyhow::Result<()> {
    match command {
        SkillCommand::Put {
            name,
            file,
            description,
            path,
        } => {
            let content = match file {
                Some(file) => std::fs::read_to_string(&file)
                    .with_context(|| format!("cannot read {}", file.display()))?,
                None => read_stdin()?,
            };
            let put = SkillPut {
                name,
                content,
                description,
                path,
            };
            eprintln!("{}", execute(home, put)?);
        }
        SkillCommand::Get { name } => {
            let skill = execute(home, SkillGet { name })?;
            std::io::stdout().write_all(skill.content.as_bytes())?;
        }
        SkillCommand::Ls { json } => {
            let skills = execute(home, SkillLs::default())?;
            if json {
                let rows: Vec<_> = skills
                    .iter()
                    .map(|s| {
                        json!({
                            "name": s.name, "source_node": s.source_node, "content": s.content,
                            "path": s.path, "description": s.description,
                            "updated_at": s.updated_at.unix_seconds(),
                        })
                    })
                    .collect();
                println!("{}", serde_json::Value::Array(rows));
            } else {
                for s in &skills {
                    println!(
                        "{}\t{}\t{}",
                        s.name,
                        format_time(s.updated_at.unix_seconds()),
                        s.description
                    );
                }
            }
        }
        SkillCommand::Rm { name } => eprintln!("{}", execute(home, SkillRm { name })?),
    }
    Ok(())
}
