//! `meshd mem`: shared memory entries.

use clap::Subcommand;
use meshd::config::Home;
use meshd::model::validate;
use meshd::model::MemoryEntry;
use serde_json::json;

use super::{format_time, read_stdin, Node, NotFound};

#[derive(Debug, Subcommand)]
pub enum MemCommand {
    /// Write a value (JSON) under SCOPE and KEY
    Put {
        /// mesh, node (this node's own), node:<id> or user:<id>
        scope: String,
        key: String,
        /// The value as JSON, e.g. '{"shortAnswers":true}' or '"metric"'; `-` reads stdin
        value: String,
    },
    /// Print a value as JSON; exits 3 when the key is absent
    Get {
        scope: String,
        key: String,
        /// Print the whole entry {scope,key,value,node_id,updated_at}
        #[arg(long)]
        json: bool,
        /// Also show the concurrent versions that lost
        #[arg(long)]
        conflicts: bool,
    },
    /// List live entries
    Ls {
        /// Only this scope
        #[arg(long)]
        scope: Option<String>,
        /// Print a JSON array of entries
        #[arg(long)]
        json: bool,
    },
    /// Delete an entry (a tombstone that syncs like a write); exits 3 when absent
    Rm { scope: String, key: String },
}

pub fn run(home: &Home, command: MemCommand) -> anyhow::Result<()> {
    let mut node = Node::open(home)?;
    match command {
        MemCommand::Put { scope, key, value } => {
            let scope = node.scope(&scope)?;
            let text = if value == "-" { read_stdin()? } else { value };
            let value = validate::json_value(&text)?;
            let entry = node.replica.put_memory(&scope, &key, value)?;
            eprintln!(
                "stored {}:{} at {}",
                entry.scope,
                entry.key,
                format_time(entry.updated_at.unix_seconds())
            );
        }
        MemCommand::Get {
            scope,
            key,
            json,
            conflicts,
        } => {
            let scope = node.scope(&scope)?;
            let Some((winner, losers)) = node
                .replica
                .memory_versions(&scope, &key)
                .filter(|(w, _)| !w.deleted)
            else {
                return Err(NotFound(format!("no entry {key} in scope {scope}")).into());
            };
            if json {
                let mut row = entry_json(&winner);
                if conflicts {
                    row["conflicts"] = losers.iter().map(entry_json).collect();
                }
                println!("{row}");
            } else {
                println!("{}", winner.value);
                if conflicts {
                    for loser in &losers {
                        let shown = if loser.deleted {
                            "(deleted)".to_string()
                        } else {
                            loser.value.to_string()
                        };
                        eprintln!(
                            "conflict: {shown} from {} at {}",
                            loser.node_id,
                            format_time(loser.updated_at.unix_seconds())
                        );
                    }
                }
            }
        }
        MemCommand::Ls { scope, json } => {
            let scope = scope.map(|s| node.scope(&s)).transpose()?;
            let entries = node.replica.list_memory(scope.as_ref());
            if json {
                let rows: Vec<_> = entries.iter().map(entry_json).collect();
                println!("{}", serde_json::Value::Array(rows));
            } else {
                for entry in &entries {
                    println!("{}\t{}\t{}", entry.scope, entry.key, entry.value);
                }
            }
        }
        MemCommand::Rm { scope, key } => {
            let scope = node.scope(&scope)?;
            if !node.replica.delete_memory(&scope, &key)? {
                return Err(NotFound(format!("no entry {key} in scope {scope}")).into());
            }
            eprintln!("deleted {scope}:{key}");
        }
    }
    Ok(())
}

/// The Phase 2 row shape (`updated_at` in Unix seconds), plus the full clock reading.
fn entry_json(entry: &MemoryEntry) -> serde_json::Value {
    let mut row = json!({
        "scope": entry.scope.to_string(),
        "key": entry.key,
        "value": entry.value,
        "node_id": entry.node_id,
        "updated_at": entry.updated_at.unix_seconds(),
        "updated_at_ms": entry.updated_at.unix_millis(),
    });
    if entry.deleted {
        row["deleted"] = json!(true);
    }
    row
}
