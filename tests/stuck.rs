//! A daemon that takes the control connection and never answers: every command that talks to
//! it gives up after its bound with an error that says what to do, instead of hanging.

mod support;

use std::os::unix::net::{UnixListener, UnixStream};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::{wait_with_deadline, TestNode};

/// Listens on the node's control socket, accepts every connection and keeps it open, silent.
struct SilentDaemon {
    _held: Arc<Mutex<Vec<UnixStream>>>,
}

impl SilentDaemon {
    fn on(node: &TestNode) -> SilentDaemon {
        let listener = UnixListener::bind(node.file("control.sock")).unwrap();
        let held = Arc::new(Mutex::new(Vec::new()));
        let keep = Arc::clone(&held);
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                keep.lock().unwrap().push(stream);
            }
        });
        SilentDaemon { _held: held }
    }
}

#[test]
fn every_command_gives_up_on_a_silent_daemon_and_says_what_to_do() {
    let node = TestNode::init("stuck");
    let _daemon = SilentDaemon::on(&node);
    let backup = node.file("backup");
    let commands: Vec<Vec<&str>> = vec![
        vec!["status"],
        vec!["mem", "put", "mesh", "k", "\"v\""],
        vec!["mem", "get", "mesh", "k"],
        vec!["mem", "ls"],
        vec!["skill", "ls"],
        vec!["peers", "ls"],
        vec!["peers", "pending"],
        vec!["invite", "--address", "127.0.0.1:1"],
        vec!["sync"],
        vec!["search", "anything"],
        vec!["cache", "write"],
        vec!["backup", backup.to_str().unwrap()],
    ];
    for args in commands {
        let started = Instant::now();
        let child = node
            .command(&args)
            .env("MESHD_TIMEOUT", "1s")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let run = wait_with_deadline(child, Duration::from_secs(30))
            .unwrap_or_else(|| panic!("meshd {args:?} still waits on a silent daemon after 30 s"));
        assert_eq!(run.code, 1, "meshd {args:?}: {}", run.stderr);
        assert!(
            run.stderr.contains("gave no answer within 1 s")
                && run.stderr.contains("meshd doctor")
                && run.stderr.contains("--timeout"),
            "meshd {args:?}: {}",
            run.stderr
        );
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "meshd {args:?} took {:?}",
            started.elapsed()
        );
    }
}
