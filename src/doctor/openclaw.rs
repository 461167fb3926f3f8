//! OpenClaw's wiring: when this machine has an `openclaw.json`, it starts this meshd with
//! this node's home as an MCP server and loads its skills and memory folders
//! (`meshd openclaw setup` writes exactly that).
//!
//! No `openclaw.json` is `ok`: meshd serves its CLI, API and peers without OpenClaw, and a
//! node that is not an OpenClaw host should not carry a warning for ever.

use std::path::PathBuf;

use super::Check;
use crate::openclaw::Change;

const CHECK: &str = "OpenClaw";
/// The key `setup` writes the executable under.
const COMMAND_KEY: &str = "mcp.servers.meshd.command";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpenclawFacts {
    /// No openclaw.json where `setup` would look.
    NoConfig { dir: PathBuf },
    /// It cannot be read or understood (the message says why and what to do).
    Unreadable { error: String, setup: String },
    /// What `setup` would change in it: nothing when it is wired.
    Found {
        path: PathBuf,
        changes: Vec<Change>,
        /// The executable it names is this one (a symlink or another path to the same file).
        command_is_this_binary: bool,
        /// `meshd openclaw setup`, with `--openclaw-home` when one was given.
        setup: String,
    },
}

pub fn check(facts: &OpenclawFacts) -> Check {
    match facts {
        OpenclawFacts::NoConfig { dir } => Check::ok(
            CHECK,
            format!(
                "no openclaw.json in {}: not an OpenClaw host (meshd openclaw setup wires one)",
                dir.display()
            ),
        ),
        OpenclawFacts::Unreadable { error, setup } => Check::fail(
            CHECK,
            error.clone(),
            format!("correct it, then run {setup}"),
        ),
        OpenclawFacts::Found {
            path,
            changes,
            command_is_this_binary,
            setup,
        } => {
            let (command, rest): (Vec<&Change>, Vec<&Change>) =
                changes.iter().partition(|c| is_command(c));
            let shown = path.display();
            if !rest.is_empty() {
                let missing: Vec<String> = rest.iter().map(|c| c.to_string()).collect();
                return Check::fail(
                    CHECK,
                    format!(
                        "{shown} does not wire this node ({} needed: {}): its agents do not \
                         see the mesh",
                        missing.len(),
                        missing.join("; ")
                    ),
                    setup.clone(),
                );
            }
            match command.first() {
                Some(change) if !command_is_this_binary => Check::warn(
                    CHECK,
                    format!(
                        "{shown} starts another meshd than this one ({change}); they may be \
                         different versions"
                    ),
                    setup.clone(),
                ),
                _ => Check::ok(
                    CHECK,
                    format!(
                        "{shown} starts this meshd on this home as an MCP server and loads \
                         its skills and memory folders"
                    ),
                ),
            }
        }
    }
}

fn is_command(change: &Change) -> bool {
    match change {
        Change::Replaced { key, .. } => key == COMMAND_KEY,
        Change::Added { .. } => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doctor::Status;

    fn found(changes: Vec<Change>, same_binary: bool) -> OpenclawFacts {
        OpenclawFacts::Found {
            path: PathBuf::from("/home/me/.openclaw/openclaw.json"),
            changes,
            command_is_this_binary: same_binary,
            setup: "meshd openclaw setup".into(),
        }
    }

    fn command_change() -> Change {
        Change::Replaced {
            key: COMMAND_KEY.into(),
            old: "\"/usr/local/bin/meshd\"".into(),
            new: "\"/opt/meshd/bin/meshd\"".into(),
        }
    }

    #[test]
    fn a_wired_file_is_ok_and_no_file_is_ok_too() {
        assert_eq!(check(&found(vec![], true)).status, Status::Ok);
        let none = OpenclawFacts::NoConfig {
            dir: PathBuf::from("/home/me/.openclaw"),
        };
        let check = check(&none);
        assert_eq!(check.status, Status::Ok);
        assert!(check.finding.contains("not an OpenClaw host"));
    }

    #[test]
    fn missing_wiring_or_another_home_fails_with_setup() {
        let missing = Change::Added {
            key: "skills.load.extraDirs".into(),
            value: "/home/me/.openclaw/mesh/agent-skills".into(),
        };
        let other_home = Change::Replaced {
            key: "mcp.servers.meshd.args".into(),
            old: "[\"--home\",\"/elsewhere\",\"mcp\"]".into(),
            new: "[\"--home\",\"/home/me/.openclaw/meshd\",\"mcp\"]".into(),
        };
        for change in [missing, other_home] {
            let check = check(&found(vec![change.clone(), command_change()], true));
            assert_eq!(check.status, Status::Fail, "{change}");
            assert!(check.finding.contains(&change.to_string()), "{check:?}");
            assert_eq!(check.fix.as_deref(), Some("meshd openclaw setup"));
        }
    }

    #[test]
    fn another_binary_warns_and_the_same_file_by_another_path_is_ok() {
        assert_eq!(
            check(&found(vec![command_change()], false)).status,
            Status::Warn
        );
        assert_eq!(
            check(&found(vec![command_change()], true)).status,
            Status::Ok
        );
    }

    #[test]
    fn an_unreadable_file_fails() {
        let facts = OpenclawFacts::Unreadable {
            error: "openclaw.json: not JSON5; nothing was changed".into(),
            setup: "meshd openclaw setup".into(),
        };
        assert_eq!(check(&facts).status, Status::Fail);
    }
}
