//! Runs the real `meshd` binary against a node made in a temporary directory, with its
//! caches (`OPENCLAW_HOME`) beside it: the helpers of the compatibility tests.
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

pub struct TestNode {
    pub dir: tempfile::TempDir,
}

pub struct Run {
    pub stdout: String,
    pub stderr: String,
    pub code: i32,
}

impl TestNode {
    pub fn new(name: &str) -> TestNode {
        let node = TestNode {
            dir: tempfile::tempdir().unwrap(),
        };
        let run = node.run(&["init", "--name", name], "");
        assert_eq!(run.code, 0, "init failed: {}", run.stderr);
        node
    }

    pub fn home(&self) -> PathBuf {
        self.dir.path().join("home")
    }

    /// Where this node's caches go (`OPENCLAW_HOME`).
    pub fn openclaw_home(&self) -> PathBuf {
        self.dir.path().join("openclaw")
    }

    pub fn command(&self) -> Command {
        let mut command = super::meshd();
        command
            .env("MESHD_HOME", self.home())
            .env("OPENCLAW_HOME", self.openclaw_home());
        command
    }

    /// Runs meshd with `stdin` and waits for it.
    pub fn run(&self, args: &[&str], stdin: &str) -> Run {
        let mut child = self
            .command()
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // meshd may exit before reading its input (a bad argument): a closed pipe is fine.
        let _ = child.stdin.take().unwrap().write_all(stdin.as_bytes());
        finished(child.wait_with_output().unwrap())
    }

    /// Runs meshd and insists it succeeds.
    /// `meshd api serve` on a free loopback port: the address it listens on, and the process.
    pub fn serve_api(&self) -> (String, Child) {
        let mut child = self
            .command()
            .args(["api", "serve", "--listen", "127.0.0.1:0"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stderr = BufReader::new(child.stderr.take().unwrap());
        let mut line = String::new();
        while !line.contains("listening on http://") {
            line.clear();
            assert_ne!(stderr.read_line(&mut line).unwrap(), 0, "api serve ended");
        }
        let addr = line.trim().rsplit("http://").next().unwrap().to_string();
        (addr, child)
    }

    pub fn ok(&self, args: &[&str], stdin: &str) -> Run {
        let run = self.run(args, stdin);
        assert_eq!(run.code, 0, "meshd {args:?} failed: {}", run.stderr);
        run
    }

    /// Appends to meshd.toml.
    pub fn configure(&self, text: &str) {
        let path = self.home().join("meshd.toml");
        let mut config = std::fs::read_to_string(&path).unwrap();
        config.push_str(text);
        std::fs::write(path, config).unwrap();
    }

    /// This node's compact id (the form stored as `node_id`).
    pub fn node_id(&self) -> String {
        let run = self.ok(&["id", "--json"], "");
        let id: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
        id["node_id"].as_str().unwrap().replace('-', "")[..32].to_string()
    }

    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        serde_json::from_str(&self.ok(args, "").stdout).unwrap()
    }
}

fn finished(output: Output) -> Run {
    Run {
        stdout: String::from_utf8(output.stdout).unwrap(),
        stderr: String::from_utf8(output.stderr).unwrap(),
        code: output.status.code().unwrap_or(-1),
    }
}

/// Every file under `dir`, relative, sorted.
pub fn files_under(dir: &Path) -> Vec<String> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(current) = stack.pop() {
        for entry in std::fs::read_dir(&current).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let relative = path.strip_prefix(dir).unwrap();
                found.push(relative.to_string_lossy().into_owned());
            }
        }
    }
    found.sort();
    found
}
