//! `meshd openclaw setup` through the real binary, on real openclaw.json files.

mod support;

use std::fs;
use std::path::{Path, PathBuf};

use jsonc_parser::cst::CstRootNode;
use serde_json::{json, Value};
use support::TestNode;

/// An operator's file: line and block comments, trailing commas, unquoted and single-quoted keys.
const OPERATOR_FILE: &str = r#"// OpenClaw, set up by hand
{
  /* the gateway */
  gateway: { port: 18789, bind: 'loopback', }, // defaults
  skills: {
    load: {
      extraDirs: [
        "~/team-skills", // shared with the team
      ],
    },
  },
  agents: {
    defaults: {
      model: "opus", // the best one
    },
  },
}
"#;

/// The node's OpenClaw home: the test harness points `OPENCLAW_HOME` at it.
fn openclaw_home(node: &TestNode) -> PathBuf {
    let dir = node.file("openclaw");
    fs::create_dir_all(&dir).unwrap();
    fs::canonicalize(dir).unwrap()
}

fn json5(text: &str) -> Value {
    CstRootNode::parse(text, &Default::default())
        .ok()
        .and_then(|root| root.to_serde_value())
        .unwrap_or_else(|| panic!("not JSON5: {text}"))
}

fn backups(dir: &Path) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.to_string_lossy().contains("openclaw.json.bak."))
        .collect();
    found.sort();
    found
}

#[test]
fn setup_wires_meshd_keeps_the_rest_and_a_second_run_changes_nothing() {
    let node = TestNode::init("ceo");
    let home = openclaw_home(&node);
    let config = home.join("openclaw.json");
    fs::write(&config, OPERATOR_FILE).unwrap();

    let first = node.run(&["openclaw", "setup"]).ok();
    assert!(first.contains("wired meshd into"), "{first}");
    let backup = backups(&home);
    assert_eq!(backup.len(), 1, "{backup:?}");
    assert!(first.contains(&backup[0].display().to_string()), "{first}");
    assert_eq!(fs::read_to_string(&backup[0]).unwrap(), OPERATOR_FILE);

    let wired = fs::read_to_string(&config).unwrap();
    for kept in [
        "// OpenClaw, set up by hand\n{\n  /* the gateway */\n  gateway: { port: 18789, bind: 'loopback', }, // defaults\n",
        "        \"~/team-skills\", // shared with the team\n",
        "  agents: {\n    defaults: {\n      model: \"opus\", // the best one\n",
    ] {
        assert!(wired.contains(kept), "lost {kept:?} in:\n{wired}");
    }
    let value = json5(&wired);
    let meshd = fs::canonicalize(env!("CARGO_BIN_EXE_meshd")).unwrap();
    let node_home = fs::canonicalize(node.path()).unwrap();
    let server = &value["mcp"]["servers"]["meshd"];
    assert_eq!(server["command"], meshd.to_str().unwrap());
    assert_eq!(
        server["args"],
        json!(["--home", node_home.to_str().unwrap(), "mcp"])
    );
    let skills = home.join("mesh").join("agent-skills");
    let memory = home.join("mesh").join("agent-memory");
    assert_eq!(
        value["skills"]["load"]["extraDirs"],
        json!(["~/team-skills", skills.to_str().unwrap()])
    );
    assert_eq!(
        value["agents"]["defaults"]["memorySearch"]["extraPaths"],
        json!([memory.to_str().unwrap()])
    );
    assert_eq!(value["agents"]["defaults"]["model"], "opus");

    let second = node.run(&["openclaw", "setup"]).ok();
    assert!(
        second.contains("openclaw.json already wired for meshd"),
        "{second}"
    );
    assert_eq!(fs::read_to_string(&config).unwrap(), wired);
    assert_eq!(backups(&home).len(), 1, "no backup when nothing changes");
}

#[test]
fn dry_run_prints_a_diff_and_writes_nothing() {
    let node = TestNode::init("ceo");
    let home = openclaw_home(&node);
    let config = home.join("openclaw.json");
    fs::write(&config, OPERATOR_FILE).unwrap();

    let run = node.run(&["openclaw", "setup", "--dry-run"]);
    let diff = run.ok();
    let label = config.display().to_string();
    assert!(
        diff.starts_with(&format!("--- {label}\n+++ {label}\n@@ ")),
        "{diff}"
    );
    assert!(diff.contains("+  \"mcp\": {\n"), "{diff}");
    assert!(
        diff.lines()
            .any(|line| line.starts_with('+') && line.contains("mesh/agent-skills")),
        "{diff}"
    );
    assert!(!diff.contains("-  /* the gateway */"), "{diff}");
    assert_eq!(fs::read_to_string(&config).unwrap(), OPERATOR_FILE);
    assert!(backups(&home).is_empty());
}

#[test]
fn a_malformed_file_is_refused_and_left_as_it_was() {
    let node = TestNode::init("ceo");
    let home = openclaw_home(&node);
    let config = home.join("openclaw.json");
    let broken = "{\n  gateway: { port: 18789 }\n  skills: {},\n}\n";
    fs::write(&config, broken).unwrap();

    for args in [
        &["openclaw", "setup"][..],
        &["openclaw", "setup", "--dry-run"],
    ] {
        let run = node.run(args);
        assert_eq!(run.code, 1, "{}", run.stdout);
        assert!(run.stderr.contains("line 2, column"), "{}", run.stderr);
        assert!(run.stderr.contains("nothing was changed"), "{}", run.stderr);
        assert_eq!(fs::read_to_string(&config).unwrap(), broken);
        assert!(backups(&home).is_empty());
    }
}

#[test]
fn a_wrong_shape_names_the_key_and_changes_nothing() {
    let node = TestNode::init("ceo");
    let home = openclaw_home(&node);
    let config = home.join("openclaw.json");
    let text = "{ skills: { load: { extraDirs: \"/team\" } } }\n";
    fs::write(&config, text).unwrap();

    let run = node.run(&["openclaw", "setup"]);
    assert_eq!(run.code, 1);
    assert!(
        run.stderr.contains("`skills.load.extraDirs` is a string"),
        "{}",
        run.stderr
    );
    assert_eq!(fs::read_to_string(&config).unwrap(), text);
    assert!(backups(&home).is_empty());
}

#[test]
fn an_old_meshd_path_is_updated_and_said() {
    let node = TestNode::init("ceo");
    let home = openclaw_home(&node);
    let config = home.join("openclaw.json");
    node.run(&["openclaw", "setup"]).ok();
    let wired = fs::read_to_string(&config).unwrap();
    let meshd = fs::canonicalize(env!("CARGO_BIN_EXE_meshd")).unwrap();
    let meshd = meshd.to_str().unwrap();
    fs::write(&config, wired.replace(meshd, "/usr/local/bin/meshd")).unwrap();

    let run = node.run(&["openclaw", "setup"]).ok();
    assert!(
        run.contains(&format!(
            "mcp.servers.meshd.command: \"/usr/local/bin/meshd\" -> \"{meshd}\""
        )),
        "{run}"
    );
    assert_eq!(fs::read_to_string(&config).unwrap(), wired);
}

#[test]
fn a_missing_file_is_created_and_a_missing_home_is_refused() {
    let node = TestNode::init("ceo");
    let home = openclaw_home(&node);
    let created = node.run(&["openclaw", "setup"]).ok();
    assert!(created.contains("created"), "{created}");
    let value = json5(&fs::read_to_string(home.join("openclaw.json")).unwrap());
    assert_eq!(value["mcp"]["servers"]["meshd"]["args"][2], "mcp");

    let elsewhere = tempfile::tempdir().unwrap();
    let missing = elsewhere.path().join("no-openclaw");
    let run = node.run(&[
        "openclaw",
        "setup",
        "--openclaw-home",
        missing.to_str().unwrap(),
    ]);
    assert_eq!(run.code, 1);
    assert!(run.stderr.contains("--openclaw-home"), "{}", run.stderr);
    assert!(!missing.exists());
}

#[test]
fn openclaw_home_flag_chooses_the_file_and_the_cache_folders() {
    let node = TestNode::init("ceo");
    let other = tempfile::tempdir().unwrap();
    let other_home = fs::canonicalize(other.path()).unwrap();
    let run = node.run(&[
        "openclaw",
        "setup",
        "--openclaw-home",
        other_home.to_str().unwrap(),
    ]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let value = json5(&fs::read_to_string(other_home.join("openclaw.json")).unwrap());
    let skills = other_home.join("mesh").join("agent-skills");
    assert_eq!(
        value["skills"]["load"]["extraDirs"],
        json!([skills.to_str().unwrap()])
    );
    // The daemon, started with this environment, would write its caches elsewhere.
    assert!(run.stderr.contains("OPENCLAW_HOME="), "{}", run.stderr);
    assert!(!node.file("openclaw").join("openclaw.json").exists());
}

#[test]
fn setup_needs_an_initialised_node() {
    let node = TestNode::empty();
    let run = node.run(&["openclaw", "setup"]);
    assert_eq!(run.code, 1);
    assert!(run.stderr.contains("meshd init"), "{}", run.stderr);
}
