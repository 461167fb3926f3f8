//! `meshd mem`: shared memory entries.

use clap::Subcommand;
use meshd::config::Home;
use meshd::control::{MemGet, MemHistory, MemLs, MemPut, MemRm};
use meshd::model::validate;
use meshd::model::MemoryEntry;
use meshd::replica::Written;
use serde_json::json;

use super::{execute, format_time, read_stdin};

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
    /// Every version ever written to a key, oldest first, with who wrote it: the node whose
    /// signed change holds it, and the writer an imported message or row claimed. Reads the
    /// scope's whole history; exits 3 when the key was never written
    History {
        scope: String,
        key: String,
        /// Print a JSON array: each version's value (or deleted), author, claim, updated_at,
        /// the change's hash and time, and whether it is the current winner
        #[arg(long)]
        json: bool,
    },
}

pub fn run(home: &Home, command: MemCommand) -> anyhow::Result<()> {
    match command {
        MemCommand::Put { scope, key, value } => {
            let text = if value == "-" { read_stdin()? } else { value };
            let value = validate::json_value(&text)?;
            let stored = execute(home, MemPut { scope, key, value })?;
            eprintln!(
                "stored {}:{} at {}",
                stored.scope,
                stored.key,
                format_time(stored.updated_at.unix_seconds())
            );
        }
        MemCommand::Get {
            scope,
            key,
            json,
            conflicts,
        } => {
            let versions = execute(home, MemGet { scope, key })?;
            print_entry(&versions.winner, &versions.conflicts, json, conflicts);
        }
        MemCommand::Ls { scope, json } => {
            let entries = execute(home, MemLs { scope })?;
            if json {
                println!(
                    "{}",
                    serde_json::Value::Array(entries.iter().map(entry_json).collect())
                );
            } else {
                for entry in &entries {
                    println!("{}\t{}\t{}", entry.scope, entry.key, entry.value);
                }
            }
        }
        MemCommand::Rm { scope, key } => eprintln!("{}", execute(home, MemRm { scope, key })?),
        MemCommand::History { scope, key, json } => {
            let versions = execute(home, MemHistory { scope, key })?;
            print_history(&versions, json);
        }
    }
    Ok(())
}

fn print_entry(winner: &MemoryEntry, losers: &[MemoryEntry], json: bool, conflicts: bool) {
    if json {
        let mut row = entry_json(winner);
        if conflicts {
            row["conflicts"] = losers.iter().map(entry_json).collect();
        }
        println!("{row}");
        return;
    }
    println!("{}", winner.value);
    if conflicts {
        for loser in losers {
            let shown = if loser.deleted {
                "(deleted)".to_string()
            } else {
                loser.value.to_string()
            };
            eprintln!(
                "conflict: {shown} at {}, {}",
                format_time(loser.updated_at.unix_seconds()),
                loser.authorship()
            );
        }
    }
}

/// One line per version, or with `json` an array of them.
fn print_history(versions: &[Written], json: bool) {
    if json {
        let rows = versions.iter().map(written_json).collect();
        println!("{}", serde_json::Value::Array(rows));
        return;
    }
    for written in versions {
        let version = &written.version;
        let shown = if version.deleted {
            "(deleted)".to_string()
        } else {
            version.value.to_string()
        };
        let winner = if written.winner { "  (current)" } else { "" };
        println!(
            "{}  {shown}  {}; change {}{winner}",
            format_time(version.updated_at.unix_seconds()),
            version.authorship(),
            &written.change[..written.change.len().min(12)],
        );
    }
}

fn written_json(written: &Written) -> serde_json::Value {
    let mut row = entry_json(&written.version);
    row["change"] = json!(written.change);
    row["change_time"] = json!(written.change_time);
    row["winner"] = json!(written.winner);
    row
}

/// The Phase 2 row shape (`updated_at` in Unix seconds, `node_id` the writer it names), plus
/// the clock in milliseconds and the verified author (`author`, `claimed_by`, `via`,
/// `verified`).
fn entry_json(entry: &MemoryEntry) -> serde_json::Value {
    let mut row = json!({
        "scope": entry.scope.to_string(),
        "key": entry.key,
        "value": entry.value,
        "node_id": entry.named_writer(),
        "updated_at": entry.updated_at.unix_seconds(),
        "updated_at_ms": entry.updated_at.unix_millis(),
    });
    if let serde_json::Value::Object(fields) = &mut row {
        fields.extend(entry.authorship().json_fields());
    }
    if entry.deleted {
        row["deleted"] = json!(true);
    }
    row
}
