//! Helpers for running the real `meshd` binary against a temporary home.

#![allow(dead_code)] // each test file uses its own subset

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

pub struct TestNode {
    pub home: tempfile::TempDir,
}

pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    fn from(output: Output) -> Run {
        Run {
            code: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    /// Asserts success and returns stdout.
    pub fn ok(self) -> String {
        assert_eq!(self.code, 0, "meshd failed: {}", self.stderr);
        self.stdout
    }
}

pub fn meshd() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_meshd"));
    command.env_remove("MESHD_HOME").env("RUST_LOG", "warn");
    command
}

impl TestNode {
    /// A fresh home with `meshd init` done.
    pub fn init(name: &str) -> TestNode {
        let node = TestNode::empty();
        node.run(&["init", "--name", name, "--listen", "127.0.0.1:0"])
            .ok();
        node
    }

    pub fn empty() -> TestNode {
        TestNode {
            home: tempfile::tempdir().unwrap(),
        }
    }

    pub fn path(&self) -> &Path {
        self.home.path()
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut command = meshd();
        command.arg("--home").arg(self.home.path()).args(args);
        command
    }

    pub fn run(&self, args: &[&str]) -> Run {
        Run::from(self.command(args).output().unwrap())
    }

    pub fn run_with_stdin(&self, args: &[&str], stdin: &[u8]) -> Run {
        let mut child = self
            .command(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(stdin).unwrap();
        Run::from(child.wait_with_output().unwrap())
    }

    pub fn file(&self, name: &str) -> PathBuf {
        self.home.path().join(name)
    }
}
