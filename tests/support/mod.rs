//! The one harness for running the real `meshd` binary: integration tests and the mesh
//! benchmark (`#[path]`-included there) start every process through `meshd()`, which clears
//! the variables that would change what meshd does, so a developer's shell never leaks in.

#![allow(dead_code)] // each test file uses its own subset

pub mod compat;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

pub struct TestNode {
    home: PathBuf,
    /// The temporary directory that holds `home`, removed with the node.
    _temporary: Option<tempfile::TempDir>,
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

/// Variables meshd or the reference tools read, cleared for every process a test starts.
const CLEARED_PREFIXES: [&str; 4] = ["MESHD_", "MESH_STORE_", "MESH_", "BRIDGE_"];
const CLEARED: [&str; 3] = ["OPENCLAW_HOME", "PORT", "RUST_LOG"];

/// The real binary with a clean environment and warnings-only logs.
pub fn meshd() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_meshd"));
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        if CLEARED.contains(&name.as_ref()) || CLEARED_PREFIXES.iter().any(|p| name.starts_with(p))
        {
            command.env_remove(name.as_ref());
        }
    }
    command.env("RUST_LOG", "warn");
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
        let temporary = tempfile::tempdir().unwrap();
        TestNode {
            home: temporary.path().to_path_buf(),
            _temporary: Some(temporary),
        }
    }

    /// A node whose home is `home` (not created yet), on a file system the test chose.
    pub fn at(home: PathBuf) -> TestNode {
        TestNode {
            home,
            _temporary: None,
        }
    }

    pub fn path(&self) -> &Path {
        &self.home
    }

    /// meshd on this home, with its caches (`OPENCLAW_HOME`) inside it too: never in the
    /// home of whoever runs the tests.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut command = meshd();
        command
            .env("OPENCLAW_HOME", self.file("openclaw"))
            .arg("--home")
            .arg(&self.home)
            .args(args);
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
        self.home.join(name)
    }
}

/// A `meshd run` child process, killed if the test ends without stopping it.
pub struct Daemon {
    child: Option<std::process::Child>,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Daemon {
    /// Takes charge of a started `meshd run`.
    pub fn new(child: std::process::Child) -> Daemon {
        Daemon { child: Some(child) }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, |c| c.id())
    }

    /// SIGTERM and wait; returns the exit code.
    pub fn stop(mut self) -> i32 {
        let mut child = self.child.take().unwrap();
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        child.wait().unwrap().code().unwrap_or(-1)
    }

    /// SIGKILL: no chance to flush or say goodbye.
    pub fn kill(mut self) {
        let mut child = self.child.take().unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
    }
}

/// A free loopback UDP address for a node's QUIC listener.
pub fn free_udp_addr() -> String {
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    socket.local_addr().unwrap().to_string()
}

impl TestNode {
    /// `meshd init` on a free loopback port, with no local API and caches inside the home.
    pub fn init_listening(name: &str) -> (TestNode, String) {
        let node = TestNode::empty();
        let listen = free_udp_addr();
        node.run(&["init", "--name", name, "--listen", &listen])
            .ok();
        let config = node.file("meshd.toml");
        let mut text = std::fs::read_to_string(&config).unwrap();
        text.push_str(&format!(
            "\n[api]\nenabled = false\n\n[cache]\nopenclaw_home = {:?}\n\n[discovery]\nmdns = false\n",
            node.file("openclaw")
        ));
        std::fs::write(&config, text).unwrap();
        (node, listen)
    }

    pub fn id(&self) -> String {
        self.run(&["id"]).ok().lines().next().unwrap().to_string()
    }

    /// Starts `meshd run` and waits until its control socket answers.
    pub fn start(&self) -> Daemon {
        let child = self
            .command(&["run"])
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let daemon = Daemon { child: Some(child) };
        // Asks the socket only: a `meshd status` while no daemon answers would open the store
        // itself, and hold it while the daemon starts.
        let socket = self.file("control.sock");
        wait_until(
            &format!("daemon in {} answers", self.path().display()),
            || try_ask(&socket, meshd::control::Status {}).is_some(),
        );
        daemon
    }
}

impl TestNode {
    /// `init_listening`, with the local API on a free loopback port: the node and that port.
    pub fn init_with_api(name: &str) -> (TestNode, String) {
        let (node, _) = TestNode::init_listening(name);
        let api = node.serve_api();
        (node, api)
    }

    /// Turns on the local API of a node whose config has it off, on a free loopback port:
    /// that port.
    pub fn serve_api(&self) -> String {
        let api = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .to_string();
        let config = self.file("meshd.toml");
        let text = std::fs::read_to_string(&config).unwrap().replace(
            "[api]\nenabled = false",
            &format!("[api]\nlisten = \"{api}\""),
        );
        std::fs::write(&config, text).unwrap();
        api
    }
}

impl TestNode {
    /// `init_with_api`, with `[api] bearer_token` set to `token`: every caller then needs a
    /// credential.
    pub fn init_with_api_token(name: &str, token: &str) -> (TestNode, String) {
        let (node, api) = TestNode::init_with_api(name);
        let config = node.file("meshd.toml");
        let text = std::fs::read_to_string(&config).unwrap().replace(
            "[api]\nlisten",
            &format!("[api]\nbearer_token = {token:?}\nlisten"),
        );
        std::fs::write(&config, text).unwrap();
        (node, api)
    }
}

/// Polls `done` every 10 ms for up to 30 s.
pub fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while std::time::Instant::now() < deadline {
        if done() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    panic!("timed out waiting until {what}");
}

/// Sends one command to the daemon listening on `socket`; `None` when no daemon answers.
pub fn try_ask<C: meshd::control::Command>(
    socket: &Path,
    command: C,
) -> Option<Result<C::Reply, meshd::control::CommandError>> {
    use meshd::control::{decode, socket, DecodeError};
    let reply = socket::send(socket, &command.into()).ok()??;
    Some(decode::<C>(reply).map_err(|e| match e {
        DecodeError::Command(error) => error,
        shape => panic!("{shape}"),
    }))
}

/// Sends one command to the daemon listening on `socket`, which must be running.
pub fn ask<C: meshd::control::Command>(
    socket: &Path,
    command: C,
) -> Result<C::Reply, meshd::control::CommandError> {
    try_ask(socket, command).unwrap_or_else(|| panic!("no daemon answers at {}", socket.display()))
}

/// Waits for `child` (stdout and stderr piped) for up to `deadline`; past it, kills it and
/// returns `None`. For commands that must not hang.
pub fn wait_with_deadline(
    mut child: std::process::Child,
    deadline: std::time::Duration,
) -> Option<Run> {
    let until = std::time::Instant::now() + deadline;
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > until {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    Some(Run::from(child.wait_with_output().unwrap()))
}
