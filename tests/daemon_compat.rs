//! The compatibility commands beside a running `meshd run`. The daemon holds the store (sled
//! lets one process in), so every command must go over the control socket, and must print
//! what it prints when no daemon runs.

mod support;

use std::fs::File;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::compat::{Run, TestNode};

/// The examples of formats.md.
const MEMORY: &str = r#"{"type":"memory","scope":"mesh","key":"user.preferences","value":{"shortAnswers":true},"nodeId":"ceo","ts":1739123456}"#;
const SKILL: &str =
    r##"{"type":"skill","name":"triage","sourceNode":"ceo","content":"# Triage rules\n..."}"##;
const REQUEST: &str = r#"{"type":"mesh_request","requestId":"req-abc-1","kind":"memory","nodeId":"ceo","scope":"mesh","key":"user.preferences","ts":1739123456}"#;

/// Slow CI machines get this long for the daemon to start and to stop.
const PATIENCE: Duration = Duration::from_secs(30);

/// `meshd run` for one node, killed when dropped, so a failing test leaves no daemon behind.
struct Daemon {
    child: Child,
    log: PathBuf,
}

impl Daemon {
    /// Starts the daemon in a directory of its own, so a path the CLI failed to make absolute
    /// would land somewhere the test notices, and waits until its control socket answers.
    fn start(node: &TestNode) -> Daemon {
        let cwd = node.dir.path().join("daemon-cwd");
        std::fs::create_dir_all(&cwd).unwrap();
        let log = node.dir.path().join("daemon.log");
        let child = node
            .command()
            .arg("run")
            .current_dir(&cwd)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut daemon = Daemon { child, log };
        let socket = node.home().join("control.sock");
        let deadline = Instant::now() + PATIENCE;
        // The file appears at bind; a connection proves the daemon listens.
        while !socket.exists() || UnixStream::connect(&socket).is_err() {
            if let Some(status) = daemon.child.try_wait().unwrap() {
                panic!("meshd run exited with {status}: {}", daemon.log());
            }
            assert!(
                Instant::now() < deadline,
                "no control socket after {PATIENCE:?}: {}",
                daemon.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        daemon
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, as a service manager stops it; waits for the exit.
    fn stop(&mut self) -> ExitStatus {
        let pid = libc::pid_t::try_from(self.child.id()).unwrap();
        // SAFETY: kill(2) takes plain integers; the pid is our own child, not yet reaped.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "meshd run still running {PATIENCE:?} after SIGTERM: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // After `stop` the child is reaped and std knows it: this does nothing then.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A node listening on ephemeral ports only, whose daemon keeps no caches of its own: the
/// cache files then exist only if `meshd cache write` went through the daemon.
fn node() -> TestNode {
    let node = TestNode {
        dir: tempfile::tempdir().unwrap(),
    };
    node.ok(&["init", "--name", "a", "--listen", "127.0.0.1:0"], "");
    node.configure("\n[api]\nlisten = \"127.0.0.1:0\"\n\n[cache]\nenabled = false\n");
    node
}

/// Runs meshd in `cwd`, for commands that take relative paths.
fn ok_in(node: &TestNode, cwd: &Path, args: &[&str]) -> Run {
    let output = node.command().current_dir(cwd).args(args).output().unwrap();
    let run = Run {
        stdout: String::from_utf8(output.stdout).unwrap(),
        stderr: String::from_utf8(output.stderr).unwrap(),
        code: output.status.code().unwrap_or(-1),
    };
    assert_eq!(run.code, 0, "meshd {args:?} failed: {}", run.stderr);
    run
}

fn json_lines(text: &str) -> Vec<Value> {
    text.lines()
        .map(|line| serde_json::from_str(line).expect("each line is JSON"))
        .collect()
}

#[test]
fn compatibility_commands_work_while_the_daemon_runs() {
    let node = node();
    let mut daemon = Daemon::start(&node);

    let serve = node.run(&["api", "serve"], "");
    assert_ne!(serve.code, 0);
    assert!(
        serve.stderr.contains("already serves the local API"),
        "{}",
        serve.stderr
    );

    // bridge ingest: the CLI reads stdin and the daemon stores.
    let run = node.ok(&["bridge", "ingest"], &format!("[{MEMORY},{SKILL}]"));
    let summary: Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(
        summary,
        json!({"ingested": 2, "memory": 1, "skill": 1, "ignored": 0, "notApplied": 0})
    );
    assert!(
        run.stderr.contains("2 changed the replica"),
        "{}",
        run.stderr
    );
    let row = node.json(&["mem", "get", "mesh", "user.preferences", "--json"]);
    assert_eq!(row["value"], json!({"shortAnswers": true}));
    assert_eq!(row["node_id"], "ceo");
    assert_eq!(row["updated_at"], 1739123456);
    assert_eq!(
        node.ok(&["skill", "get", "triage"], "").stdout,
        "# Triage rules\n..."
    );
    // The reasons for ignored items cross the socket too.
    let run = node.ok(&["bridge", "ingest"], "Task: check the backups");
    assert!(
        run.stderr
            .contains("meshd: item 1 ignored: not JSON: Task: check the backups"),
        "{}",
        run.stderr
    );

    // bridge emit and respond.
    let emitted = node.ok(&["bridge", "emit"], "").stdout;
    let messages = json_lines(&emitted);
    assert_eq!(messages.len(), 2, "{emitted}");
    assert_eq!(messages[0]["key"], "user.preferences");
    assert_eq!(messages[0]["value"], json!({"shortAnswers": true}));
    assert_eq!(messages[1]["name"], "triage");
    let responses = json_lines(&node.ok(&["bridge", "respond"], REQUEST).stdout);
    assert_eq!(responses.len(), 1);
    assert_eq!(responses[0]["type"], "mesh_response");
    assert_eq!(responses[0]["requestId"], "req-abc-1");
    assert_eq!(responses[0]["found"], true);
    assert_eq!(responses[0]["value"], json!({"shortAnswers": true}));

    // store export to a relative path: it is the CLI's directory that counts.
    let sqlite = node.dir.path().join("export.sqlite");
    let run = ok_in(
        &node,
        node.dir.path(),
        &["store", "export", "export.sqlite"],
    );
    let report: Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(report, json!({"memory": 1, "skills": 1, "removed": 0}));
    assert!(sqlite.exists());
    rusqlite::Connection::open(&sqlite)
        .unwrap()
        .execute(
            "INSERT INTO mesh_memory (scope, key, value, node_id, updated_at)
             VALUES ('mesh', 'from.sqlite', '{\"n\":1}', 'sec', 1739124000),
                    ('mesh', 'github', 'ghp_0123456789abcdefghijklmnopqrstuvwxyzAB', 'ceo', 6)",
            [],
        )
        .unwrap();
    let run = ok_in(
        &node,
        node.dir.path(),
        &["store", "import", "export.sqlite"],
    );
    let report: Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(
        report,
        json!({"memory": 1, "skills": 0, "unchanged": 2, "skipped": 1})
    );
    // The reasons for skipped rows cross the socket too; the secret itself does not.
    assert!(
        run.stderr.contains("meshd: row skipped:") && run.stderr.contains("GitHub token"),
        "{}",
        run.stderr
    );
    assert!(!run.stderr.contains("ghp_0123"));
    assert_eq!(
        node.json(&["mem", "get", "mesh", "from.sqlite"]),
        json!({"n": 1})
    );

    // cache write, although the daemon keeps no caches itself ([cache] enabled = false).
    let memory_json = node.openclaw_home().join("mesh-memory.json");
    assert!(!memory_json.exists());
    let run = node.ok(&["cache", "write"], "");
    let report: Value = serde_json::from_str(&run.stdout).unwrap();
    assert!(report["written"].as_u64().unwrap() > 0, "{report}");
    let openclaw_home = node.openclaw_home().display().to_string();
    assert!(run.stderr.contains(&openclaw_home), "{}", run.stderr);
    let cached = std::fs::read_to_string(&memory_json).unwrap();
    assert!(cached.contains("user.preferences"), "{cached}");
    assert!(cached.contains("from.sqlite"), "{cached}");

    // The plain commands, through the socket too.
    node.ok(&["mem", "put", "mesh", "via.socket", r#""yes""#], "");
    assert_eq!(
        node.json(&["mem", "get", "mesh", "via.socket"]),
        json!("yes")
    );

    // What the daemon emits, for the store alone to repeat.
    let emitted = node.ok(&["bridge", "emit"], "").stdout;
    let skills_only = node.ok(&["bridge", "emit", "--scope", "skills"], "").stdout;
    assert_eq!(json_lines(&emitted).len(), 4, "{emitted}");
    assert_eq!(json_lines(&skills_only).len(), 1, "{skills_only}");

    let status = daemon.stop();
    assert!(status.success(), "meshd run: {status}: {}", daemon.log());
    assert!(!node.home().join("control.sock").exists());
    let cwd = node.dir.path().join("daemon-cwd");
    assert_eq!(std::fs::read_dir(cwd).unwrap().count(), 0);

    // Without the daemon the same store answers the same way.
    assert_eq!(
        node.json(&["mem", "get", "mesh", "via.socket"]),
        json!("yes")
    );
    assert_eq!(node.ok(&["bridge", "emit"], "").stdout, emitted);
    assert_eq!(
        node.ok(&["bridge", "emit", "--scope", "skills"], "").stdout,
        skills_only
    );
}
