//! `meshd openclaw setup`: wires meshd into OpenClaw's `openclaw.json` (JSON5) so that no
//! operator edits it by hand: meshd's stdio MCP server, its skills folder and its memory
//! folder. Every other byte of the file is kept (docs/agents.md).

mod config_edit;
mod diff;
mod file;

use std::fmt;
use std::path::{Path, PathBuf};

use serde_json::json;

use crate::cache::CachePaths;
pub use config_edit::EditError;
use config_edit::{ConfigDocument, Setting};

/// OpenClaw's configuration file, in its home.
pub const CONFIG_FILE: &str = "openclaw.json";
/// The name of meshd's entry under `mcp.servers`.
pub const SERVER_NAME: &str = "meshd";

const SERVER: [&str; 3] = ["mcp", "servers", SERVER_NAME];
const SKILLS_DIRS: [&str; 3] = ["skills", "load", "extraDirs"];
const MEMORY_PATHS: [&str; 4] = ["agents", "defaults", "memorySearch", "extraPaths"];

#[derive(Debug, thiserror::Error)]
pub enum OpenclawError {
    #[error("the OpenClaw home {0} does not exist: pass --openclaw-home DIR or set OPENCLAW_HOME to the directory that holds openclaw.json (meshd does not create it)")]
    NoOpenclawHome(PathBuf),
    #[error(
        "{0} is not valid UTF-8, and OpenClaw's configuration names it: move it to a UTF-8 path"
    )]
    NotUtf8Path(PathBuf),
    #[error(
        "{0} is not UTF-8 text, so it is not a JSON5 file meshd can edit: nothing was changed"
    )]
    NotUtf8(PathBuf),
    // The problem is part of the message (not a source) so that "nothing was changed" ends it.
    #[error("{path}: {problem}; nothing was changed")]
    Config { path: PathBuf, problem: EditError },
    #[error("{path}: `mcp.servers.meshd` has a `url`, so it is an HTTP server, not meshd's stdio one: remove or rename that entry and run again; nothing was changed")]
    HttpServerNamedMeshd { path: PathBuf },
    #[error("{0} changed while meshd was editing it; nothing was written: run the command again")]
    ChangedMeanwhile(PathBuf),
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot give the new {path} its owner (uid {uid}); run this as that user")]
    KeepOwner {
        path: PathBuf,
        uid: u32,
        #[source]
        source: std::io::Error,
    },
}

/// What meshd needs in OpenClaw's configuration, as the strings written there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wiring {
    /// The meshd executable OpenClaw starts as an MCP server.
    pub command: String,
    pub args: Vec<String>,
    /// `skills.load.extraDirs` gets this.
    pub skills_dir: String,
    /// `agents.defaults.memorySearch.extraPaths` gets this.
    pub memory_dir: String,
}

impl Wiring {
    /// The entry that runs `meshd --home <node_home> mcp`, and the cache folders.
    pub fn new(
        meshd: &Path,
        node_home: &Path,
        cache: &CachePaths,
    ) -> Result<Wiring, OpenclawError> {
        Ok(Wiring {
            command: utf8(meshd)?,
            args: vec!["--home".to_string(), utf8(node_home)?, "mcp".to_string()],
            skills_dir: utf8(&cache.skills_dir)?,
            memory_dir: utf8(&cache.memory_dir)?,
        })
    }
}

fn utf8(path: &Path) -> Result<String, OpenclawError> {
    path.to_str()
        .map(str::to_string)
        .ok_or_else(|| OpenclawError::NotUtf8Path(path.to_path_buf()))
}

/// One change to the configuration, for the operator to read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// `key` did not exist, or (an array) did not list `value`.
    Added { key: String, value: String },
    Replaced {
        key: String,
        old: String,
        new: String,
    },
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Change::Added { key, value } => write!(f, "{key}: added {value}"),
            Change::Replaced { key, old, new } => write!(f, "{key}: {old} -> {new}"),
        }
    }
}

/// The configuration text with meshd wired in, and what changed to get there.
#[derive(Debug)]
pub struct Plan {
    pub text: String,
    pub changes: Vec<Change>,
}

/// Wires meshd into the JSON5 text of `openclaw.json` (`path` names it in errors). The
/// server entry's `command` and `args` are meshd's; any other key there (`env`, say) is the
/// operator's and stays.
pub fn plan(path: &Path, text: &str, wiring: &Wiring) -> Result<Plan, OpenclawError> {
    let config_error = |problem| OpenclawError::Config {
        path: path.to_path_buf(),
        problem,
    };
    let document = ConfigDocument::parse(text).map_err(config_error)?;
    let mut changes = Vec::new();
    wire_server(&document, wiring, &mut changes).map_err(|error| match error {
        WireError::Edit(source) => config_error(source),
        WireError::HttpServer => OpenclawError::HttpServerNamedMeshd {
            path: path.to_path_buf(),
        },
    })?;
    for (key, dir) in [
        (&SKILLS_DIRS[..], &wiring.skills_dir),
        (&MEMORY_PATHS[..], &wiring.memory_dir),
    ] {
        let same = |listed: &str| Path::new(listed) == Path::new(dir);
        if document
            .append_unique(key, dir, same)
            .map_err(config_error)?
        {
            changes.push(Change::Added {
                key: key.join("."),
                value: dir.clone(),
            });
        }
    }
    Ok(Plan {
        text: document.text(),
        changes,
    })
}

const SERVER_COMMAND: &str = "command";
const SERVER_ARGS: &str = "args";

/// The path of one field of meshd's server entry.
fn field(name: &str) -> [&str; 4] {
    [SERVER[0], SERVER[1], SERVER[2], name]
}

enum WireError {
    Edit(EditError),
    HttpServer,
}

impl From<EditError> for WireError {
    fn from(error: EditError) -> Self {
        WireError::Edit(error)
    }
}

fn wire_server(
    document: &ConfigDocument,
    wiring: &Wiring,
    changes: &mut Vec<Change>,
) -> Result<(), WireError> {
    if !document.contains(&SERVER)? {
        // Set one field at a time: a JSON object would come out with its keys sorted.
        document.set(&field(SERVER_COMMAND), &json!(wiring.command))?;
        document.set(&field(SERVER_ARGS), &json!(wiring.args))?;
        changes.push(Change::Added {
            key: SERVER.join("."),
            value: format!(
                "(stdio server: {} {})",
                wiring.command,
                wiring.args.join(" ")
            ),
        });
        return Ok(());
    }
    if document.contains(&field("url"))? {
        return Err(WireError::HttpServer);
    }
    for (name, value) in [
        (SERVER_COMMAND, json!(wiring.command)),
        (SERVER_ARGS, json!(wiring.args)),
    ] {
        let key = field(name);
        let change = match document.set(&key, &value)? {
            Setting::Unchanged => continue,
            Setting::Created => Change::Added {
                key: key.join("."),
                value: value.to_string(),
            },
            Setting::Replaced { old } => Change::Replaced {
                key: key.join("."),
                old,
                new: value.to_string(),
            },
        };
        changes.push(change);
    }
    Ok(())
}

/// What `setup` did to the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Already wired: nothing written.
    Unchanged,
    /// There was no file; it now holds the wiring alone.
    Created,
    /// Changed in place; the previous file is at `backup`.
    Updated { backup: PathBuf },
    /// `--dry-run`: nothing written; the change as a unified diff.
    DryRun { diff: String },
}

#[derive(Debug, Clone)]
pub struct SetupReport {
    /// The file, symlinks resolved.
    pub config: PathBuf,
    pub changes: Vec<Change>,
    pub outcome: Outcome,
}

/// OpenClaw's home as an absolute path without symlinks; it must exist.
pub fn resolve_openclaw_home(dir: &Path) -> Result<PathBuf, OpenclawError> {
    match std::fs::canonicalize(dir) {
        Ok(resolved) if resolved.is_dir() => Ok(resolved),
        Ok(_) => Err(OpenclawError::NoOpenclawHome(dir.to_path_buf())),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            Err(OpenclawError::NoOpenclawHome(dir.to_path_buf()))
        }
        Err(source) => Err(OpenclawError::Read {
            path: dir.to_path_buf(),
            source,
        }),
    }
}

/// Wires meshd into `<openclaw_home>/openclaw.json`, creating the file when there is none.
/// A change is written atomically after a backup; `dry_run` writes nothing at all.
pub fn setup(
    openclaw_home: &Path,
    wiring: &Wiring,
    dry_run: bool,
) -> Result<SetupReport, OpenclawError> {
    let openclaw_home = resolve_openclaw_home(openclaw_home)?;
    let path = config_path(&openclaw_home)?;
    let existing = file::read(&path)?;
    let before = existing.as_ref().map_or("", |found| found.text.as_str());
    let mut plan = plan(&path, before, wiring)?;
    if existing.is_none() && !plan.text.ends_with('\n') {
        plan.text.push('\n');
    }
    let outcome = if plan.changes.is_empty() {
        Outcome::Unchanged
    } else if dry_run {
        let label = path.display().to_string();
        let before_label = if existing.is_some() {
            &label
        } else {
            "/dev/null"
        };
        Outcome::DryRun {
            diff: diff::unified(before, &plan.text, before_label, &label),
        }
    } else if let Some(original) = &existing {
        let backup = file::backup(&path, original)?;
        file::replace(&path, &plan.text, original)?;
        Outcome::Updated { backup }
    } else {
        file::create(&path, &plan.text)?;
        Outcome::Created
    };
    Ok(SetupReport {
        config: path,
        changes: plan.changes,
        outcome,
    })
}

/// What `setup` would change in `<openclaw_home>/openclaw.json`, changing nothing: the file
/// (symlinks resolved) and the changes, none when it is wired; `None` when there is no file
/// (`meshd doctor`).
pub fn pending_changes(
    openclaw_home: &Path,
    wiring: &Wiring,
) -> Result<Option<(PathBuf, Vec<Change>)>, OpenclawError> {
    let openclaw_home = resolve_openclaw_home(openclaw_home)?;
    let path = config_path(&openclaw_home)?;
    let Some(existing) = file::read(&path)? else {
        return Ok(None);
    };
    let plan = plan(&path, &existing.text, wiring)?;
    Ok(Some((path, plan.changes)))
}

/// The configuration file; a symlink is followed, so the rename replaces its target and the
/// link stays.
fn config_path(openclaw_home: &Path) -> Result<PathBuf, OpenclawError> {
    let path = openclaw_home.join(CONFIG_FILE);
    match std::fs::canonicalize(&path) {
        Ok(target) => Ok(target),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(path),
        Err(source) => Err(OpenclawError::Read { path, source }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn wiring() -> Wiring {
        Wiring {
            command: "/opt/meshd/bin/meshd".to_string(),
            args: vec![
                "--home".to_string(),
                "/home/me/.openclaw/meshd".to_string(),
                "mcp".to_string(),
            ],
            skills_dir: "/home/me/.openclaw/mesh/agent-skills".to_string(),
            memory_dir: "/home/me/.openclaw/mesh/agent-memory".to_string(),
        }
    }

    fn wire(text: &str) -> Result<Plan, OpenclawError> {
        plan(Path::new("openclaw.json"), text, &wiring())
    }

    /// The JSON5 result as a value, comments and trailing commas read away.
    fn parsed(text: &str) -> Value {
        jsonc_parser::cst::CstRootNode::parse(text, &Default::default())
            .ok()
            .and_then(|root| root.to_serde_value())
            .unwrap_or_else(|| panic!("not JSON5: {text}"))
    }

    const OPERATOR_FILE: &str = "// my gateway\n{\n  gateway: { port: 18789 }, // default port\n  /* shared skills */\n  skills: {\n    load: { extraDirs: [\"~/team-skills\"] },\n  },\n  agents: {\n    defaults: { model: 'opus', },\n  },\n}\n";

    #[test]
    fn an_empty_file_gets_the_whole_wiring() {
        let plan = wire("").unwrap();
        let value = parsed(&plan.text);
        assert_eq!(
            value["mcp"]["servers"]["meshd"]["command"],
            "/opt/meshd/bin/meshd"
        );
        assert_eq!(
            value["mcp"]["servers"]["meshd"]["args"],
            json!(["--home", "/home/me/.openclaw/meshd", "mcp"])
        );
        assert_eq!(
            value["skills"]["load"]["extraDirs"],
            json!(["/home/me/.openclaw/mesh/agent-skills"])
        );
        assert_eq!(
            value["agents"]["defaults"]["memorySearch"]["extraPaths"],
            json!(["/home/me/.openclaw/mesh/agent-memory"])
        );
        assert_eq!(plan.changes.len(), 3, "{:?}", plan.changes);
        let command = plan.text.find("\"command\"").unwrap();
        assert!(
            command < plan.text.find("\"args\"").unwrap(),
            "{}",
            plan.text
        );
    }

    #[test]
    fn existing_settings_and_comments_stay_and_arrays_are_appended() {
        let plan = wire(OPERATOR_FILE).unwrap();
        assert!(plan
            .text
            .starts_with("// my gateway\n{\n  gateway: { port: 18789 }, // default port\n  /* shared skills */\n"));
        assert!(plan
            .text
            .contains("extraDirs: [\"~/team-skills\", \"/home/me/.openclaw/mesh/agent-skills\"]"));
        let value = parsed(&plan.text);
        assert_eq!(value["agents"]["defaults"]["model"], "opus");
        assert_eq!(
            value["agents"]["defaults"]["memorySearch"]["extraPaths"],
            json!(["/home/me/.openclaw/mesh/agent-memory"])
        );
    }

    #[test]
    fn a_second_run_changes_nothing() {
        let first = wire(OPERATOR_FILE).unwrap();
        let second = wire(&first.text).unwrap();
        assert!(second.changes.is_empty(), "{:?}", second.changes);
        assert_eq!(second.text, first.text);
    }

    #[test]
    fn an_old_meshd_entry_is_updated_and_its_other_keys_kept() {
        let text = "{\n  mcp: {\n    servers: {\n      meshd: {\n        command: \"/usr/local/bin/meshd\",\n        args: [\"--home\", \"/home/me/.openclaw/meshd\", \"mcp\"],\n        env: { RUST_LOG: \"info\" }, // debugging\n      },\n    },\n  },\n}\n";
        let plan = wire(text).unwrap();
        assert_eq!(
            plan.changes[0],
            Change::Replaced {
                key: "mcp.servers.meshd.command".to_string(),
                old: "\"/usr/local/bin/meshd\"".to_string(),
                new: "\"/opt/meshd/bin/meshd\"".to_string(),
            }
        );
        assert!(plan.changes[1..]
            .iter()
            .all(|change| !change.to_string().contains("mcp.servers")));
        assert!(plan
            .text
            .contains("env: { RUST_LOG: \"info\" }, // debugging\n"));
        assert!(plan.text.contains("command: \"/opt/meshd/bin/meshd\",\n"));
    }

    #[test]
    fn other_mcp_servers_are_left_alone() {
        let text = "{ mcp: { servers: { docs: { command: 'uvx', args: ['docs-mcp'] } } } }";
        let plan = wire(text).unwrap();
        let value = parsed(&plan.text);
        assert_eq!(value["mcp"]["servers"]["docs"]["command"], "uvx");
        assert_eq!(value["mcp"]["servers"]["meshd"]["args"][2], "mcp");
    }

    #[test]
    fn wrong_shapes_are_refused_with_the_key_to_fix() {
        let cases = [
            ("{ skills: \"all\" }", "`skills`"),
            (
                "{ skills: { load: { extraDirs: \"/x\" } } }",
                "`skills.load.extraDirs`",
            ),
            ("{ mcp: { servers: [] } }", "`mcp.servers`"),
            (
                "{ mcp: { servers: { meshd: \"meshd mcp\" } } }",
                "`mcp.servers.meshd`",
            ),
            (
                "{ agents: { defaults: { memorySearch: { extraPaths: {} } } } }",
                "extraPaths",
            ),
        ];
        for (text, key) in cases {
            let error = wire(text).unwrap_err().to_string();
            assert!(error.contains(key), "{text}: {error}");
            assert!(error.contains("nothing was changed"), "{error}");
        }
    }

    #[test]
    fn an_http_server_named_meshd_is_not_overwritten() {
        let error = wire("{ mcp: { servers: { meshd: { url: 'http://x' } } } }").unwrap_err();
        assert!(
            matches!(error, OpenclawError::HttpServerNamedMeshd { .. }),
            "{error}"
        );
    }

    #[test]
    fn a_folder_listed_with_a_trailing_slash_counts_as_present() {
        let text =
            "{ skills: { load: { extraDirs: [\"/home/me/.openclaw/mesh/agent-skills/\"] } } }";
        let plan = wire(text).unwrap();
        assert!(!plan
            .changes
            .iter()
            .any(|change| change.to_string().starts_with("skills.")));
    }

    #[test]
    fn setup_writes_a_backup_and_reports_unchanged_the_second_time() {
        let home = tempfile::tempdir().unwrap();
        let path = home.path().join(CONFIG_FILE);
        std::fs::write(&path, OPERATOR_FILE).unwrap();

        let dry = setup(home.path(), &wiring(), true).unwrap();
        let Outcome::DryRun { diff } = &dry.outcome else {
            panic!("{:?}", dry.outcome);
        };
        assert!(diff.contains("+      \"meshd\": {"), "{diff}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), OPERATOR_FILE);

        let first = setup(home.path(), &wiring(), false).unwrap();
        let Outcome::Updated { backup } = &first.outcome else {
            panic!("{:?}", first.outcome);
        };
        assert_eq!(std::fs::read_to_string(backup).unwrap(), OPERATOR_FILE);
        let wired = std::fs::read_to_string(&path).unwrap();

        let second = setup(home.path(), &wiring(), false).unwrap();
        assert_eq!(second.outcome, Outcome::Unchanged);
        assert!(second.changes.is_empty());
        assert_eq!(std::fs::read_to_string(&path).unwrap(), wired);
    }

    #[test]
    fn setup_creates_a_missing_file_but_not_a_missing_home() {
        let home = tempfile::tempdir().unwrap();
        let report = setup(home.path(), &wiring(), false).unwrap();
        assert_eq!(report.outcome, Outcome::Created);
        let text = std::fs::read_to_string(home.path().join(CONFIG_FILE)).unwrap();
        assert!(text.ends_with("}\n"), "{text}");

        let missing = home.path().join("nowhere");
        let error = setup(&missing, &wiring(), false).unwrap_err();
        assert!(matches!(error, OpenclawError::NoOpenclawHome(_)), "{error}");
        assert!(error.to_string().contains("--openclaw-home"));
        assert!(!missing.exists());
    }
}
