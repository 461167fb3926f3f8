//! `meshd demo`: three real `meshd` daemons on loopback, in a temporary directory, showing the
//! mesh converge step by step. It drives them exactly as an operator would, through their
//! control sockets, and exits non-zero unless every node ends with identical state.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::config::Home;
use crate::control::{
    self, socket, CommandError, DecodeError, MemGet, MemLs, NodeStatus, SkillGet, SkillLs, Status,
};

/// How long any one step may take before the demo gives up.
const STEP_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("demo setup failed: {0}")]
    Setup(String),
    #[error("{0}")]
    Step(String),
    #[error("the nodes ended with different state:\n{0}")]
    Diverged(String),
}

type Result<T, E = DemoError> = std::result::Result<T, E>;

struct DemoNode {
    name: &'static str,
    home: Home,
    daemon: Option<Child>,
}

impl Drop for DemoNode {
    fn drop(&mut self) {
        if let Some(mut child) = self.daemon.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Runs the demo with the `meshd` binary at `exe`; prints as it goes.
pub fn run(exe: &Path) -> Result<()> {
    let dir = tempfile::Builder::new()
        .prefix("meshd-demo-")
        .tempdir()
        .map_err(|e| DemoError::Setup(format!("cannot create a temporary directory: {e}")))?;
    println!(
        "meshd demo: three nodes in DEMO={}, driven by the commands an operator types\n",
        dir.path().display()
    );
    let mut nodes = Vec::new();
    for name in ["mac-mini", "nas", "laptop"] {
        nodes.push(init_node(exe, dir.path(), name)?);
    }
    for node in &mut nodes {
        show(node, "run &");
        start(exe, node)?;
    }
    // A chain: mac-mini – nas – laptop. mac-mini and laptop never connect; the nas relays.
    for joiner in [0, 2] {
        let ticket = operator(exe, &nodes[1], &["invite", "--no-qr"])?;
        let ticket = ticket.lines().last().unwrap_or_default().trim().to_string();
        operator(exe, &nodes[joiner], &["join", &ticket])?;
    }
    wait_for("every link is up", || {
        Ok(connected(&nodes[0])? == 1 && connected(&nodes[1])? == 2 && connected(&nodes[2])? == 1)
    })?;
    println!("   paired: mac-mini <-> nas <-> laptop (mac-mini and laptop never talk directly)\n");

    step(
        &nodes,
        "1. mac-mini writes a preference",
        |n| {
            operator(
                exe,
                &n[0],
                &[
                    "mem",
                    "put",
                    "mesh",
                    "user.preferences",
                    r#"{"shortAnswers":true,"units":"metric"}"#,
                ],
            )?;
            Ok(())
        },
        |n| all_have_memory(n, "user.preferences"),
    )?;

    let triage = write_file(
        dir.path(),
        "triage.md",
        "# Triage rules\n\n- Urgent mail goes to the CEO.\n- Invoices go to the NAS.\n",
    )?;
    step(
        &nodes,
        "2. nas shares a skill",
        |n| {
            operator(
                exe,
                &n[1],
                &[
                    "skill",
                    "put",
                    "triage",
                    "--file",
                    &triage,
                    "-d",
                    "How to sort incoming work",
                ],
            )?;
            Ok(())
        },
        |n| all_have_skill(n, "triage", |c| c.contains("Invoices")),
    )?;

    // "At once" for real: with both online, the laptop could receive mac-mini's edit within
    // milliseconds and write its own over it. Offline, neither sees the other's edit first.
    println!("3. mac-mini and laptop edit the same skill at once (the laptop offline)");
    println!("   (the laptop's `meshd run` gets SIGTERM, as from its service manager)");
    stop(&mut nodes[2])?;
    let mac_edit = write_file(
        dir.path(),
        "mac-edit.md",
        "# Triage rules\n\n- Urgent mail goes to the CEO at once.\n- Invoices go to the NAS.\n",
    )?;
    operator(
        exe,
        &nodes[0],
        &["skill", "put", "triage", "--file", &mac_edit],
    )?;
    let laptop_edit = write_file(
        dir.path(),
        "laptop-edit.md",
        "# Triage rules\n\n- Urgent mail goes to the CEO.\n- Invoices go to the NAS.\n- Newsletters wait for Friday.\n",
    )?;
    operator(
        exe,
        &nodes[2],
        &["skill", "put", "triage", "--file", &laptop_edit],
    )?;
    show(&nodes[2], "run &");
    let before = traffic(&nodes)?;
    start(exe, &mut nodes[2])?;
    let started = Instant::now();
    wait_for("both edits are merged everywhere", || {
        all_have_skill(&nodes, "triage", |c| {
            c.contains("at once") && c.contains("Friday")
        })
    })?;
    println!(
        "   the laptop came back: both edits merged on all three nodes after {} ms, {} bytes on the wire\n",
        started.elapsed().as_millis(),
        traffic(&nodes)?.saturating_sub(before)
    );
    println!(
        "   merged text on every node:\n{}",
        indent(&skill_content(&nodes[1], "triage")?)
    );

    println!("4. laptop stops; mac-mini and nas keep writing");
    println!("   (the laptop's `meshd run` gets SIGTERM)");
    stop(&mut nodes[2])?;
    operator(
        exe,
        &nodes[0],
        &["mem", "put", "mesh", "project.focus", r#""Q3 launch""#],
    )?;
    let handoff = write_file(
        dir.path(),
        "handoff.md",
        "Hand tasks to the NAS node with a one-line summary.\n",
    )?;
    operator(
        exe,
        &nodes[1],
        &[
            "skill",
            "put",
            "handoff",
            "--file",
            &handoff,
            "-d",
            "How to hand off",
        ],
    )?;
    show(&nodes[2], "run &");
    let before = traffic(&nodes)?;
    start(exe, &mut nodes[2])?;
    let started = Instant::now();
    wait_for("laptop catches up", || {
        Ok(all_have_memory(&nodes, "project.focus")?
            && all_have_skill(&nodes, "handoff", |_| true)?)
    })?;
    println!(
        "   laptop restarted and caught up in {} ms, {} bytes on the wire\n",
        started.elapsed().as_millis(),
        traffic(&nodes)?.saturating_sub(before)
    );

    let states: Vec<String> = nodes.iter().map(state_of).collect::<Result<_>>()?;
    if states.iter().any(|s| *s != states[0]) {
        let report = nodes
            .iter()
            .zip(&states)
            .map(|(n, s)| format!("{}: {s}", n.name))
            .collect::<Vec<_>>()
            .join("\n");
        return Err(DemoError::Diverged(report));
    }
    println!("all three nodes hold identical memory and skills:");
    for line in serde_json::from_str::<serde_json::Value>(&states[0])
        .map(|v| pretty(&v))
        .unwrap_or_default()
        .lines()
    {
        println!("   {line}");
    }
    println!();
    let status = operator(exe, &nodes[1], &["status"])?;
    println!("{}", indent(&status));
    for node in &mut nodes {
        stop(node)?;
    }
    println!("converged: every node ends identical");
    Ok(())
}

fn step(
    nodes: &[DemoNode],
    title: &str,
    act: impl FnOnce(&[DemoNode]) -> Result<()>,
    converged: impl Fn(&[DemoNode]) -> Result<bool>,
) -> Result<()> {
    println!("{title}");
    let before = traffic(nodes)?;
    let started = Instant::now();
    act(nodes)?;
    wait_for(title, || converged(nodes))?;
    println!(
        "   visible on all three nodes after {} ms, {} bytes on the wire\n",
        started.elapsed().as_millis(),
        traffic(nodes)?.saturating_sub(before)
    );
    Ok(())
}

fn wait_for(what: &str, mut done: impl FnMut() -> Result<bool>) -> Result<()> {
    let deadline = Instant::now() + STEP_TIMEOUT;
    while Instant::now() < deadline {
        if done()? {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Err(DemoError::Step(format!("timed out waiting until {what}")))
}

fn run_cli(exe: &Path, home: &Home, args: &[&str]) -> Result<String> {
    let output = Command::new(exe)
        .arg("--home")
        .arg(&home.dir)
        .args(args)
        .output()
        .map_err(|e| DemoError::Setup(format!("cannot run {}: {e}", exe.display())))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        return Err(DemoError::Setup(format!(
            "meshd {}: {stderr}",
            args.join(" ")
        )));
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Prints a command line as an operator types it, `$DEMO` standing for the demo's directory.
fn show(node: &DemoNode, command: &str) {
    println!("   $ meshd --home $DEMO/{} {command}", node.name);
}

/// Shows the command, then runs it with the real CLI; returns its stdout.
fn operator(exe: &Path, node: &DemoNode, args: &[&str]) -> Result<String> {
    let demo = node
        .home
        .dir
        .parent()
        .map(|dir| dir.to_string_lossy().into_owned());
    let shown: Vec<String> = args
        .iter()
        .map(|arg| match &demo {
            Some(demo) => shell_word(&arg.replace(demo.as_str(), "$DEMO")),
            None => shell_word(arg),
        })
        .collect();
    show(node, &shown.join(" "));
    run_cli(exe, &node.home, args)
}

/// `word` as a POSIX shell reads it back: single-quoted unless it is plain.
fn shell_word(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:=$".contains(c));
    if plain {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

fn write_file(dir: &Path, name: &str, text: &str) -> Result<String> {
    let path = dir.join(name);
    std::fs::write(&path, text)
        .map_err(|e| DemoError::Setup(format!("cannot write {}: {e}", path.display())))?;
    Ok(path.to_string_lossy().into_owned())
}

fn free_udp_port() -> Result<u16> {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .map_err(|e| DemoError::Setup(format!("no free UDP port: {e}")))
}

fn init_node(exe: &Path, dir: &Path, name: &'static str) -> Result<DemoNode> {
    let home = Home::new(dir.join(name));
    let listen = format!("127.0.0.1:{}", free_udp_port()?);
    println!("   $ meshd --home $DEMO/{name} init --name {name} --listen {listen}");
    run_cli(exe, &home, &["init", "--name", name, "--listen", &listen])?;
    // The demo's nodes share one machine: no local API ports, caches in the demo directory.
    let extra = format!(
        "\n[api]\nenabled = false\n\n[cache]\nopenclaw_home = {:?}\n\n[discovery]\nmdns = false\n",
        dir.join(name).join("openclaw")
    );
    let config = home.config_path();
    let text = std::fs::read_to_string(&config).map_err(|e| DemoError::Setup(e.to_string()))?;
    std::fs::write(&config, text + &extra).map_err(|e| DemoError::Setup(e.to_string()))?;
    Ok(DemoNode {
        name,
        home,
        daemon: None,
    })
}

fn start(exe: &Path, node: &mut DemoNode) -> Result<()> {
    let mut command = Command::new(exe);
    command
        .arg("--home")
        .arg(&node.home.dir)
        .arg("run")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    end_with_the_demo(&mut command);
    let child = command
        .spawn()
        .map_err(|e| DemoError::Setup(format!("cannot start {}: {e}", node.name)))?;
    node.daemon = Some(child);
    let socket = node.home.control_socket_path();
    wait_for(&format!("{} is up", node.name), || {
        Ok(matches!(
            socket::send(&socket, &Status::default().into()),
            Ok(Some(_))
        ))
    })
}

/// The demo's daemons must not outlive it, even when it dies without unwinding: `meshd demo |
/// head` ends it with SIGPIPE (main restores the default action). Linux stops each daemon
/// with SIGTERM when the demo's main thread, which spawned it, goes away.
#[cfg(target_os = "linux")]
fn end_with_the_demo(command: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: between fork and exec the closure only makes one async-signal-safe system call.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
    }
}

/// Elsewhere the daemons are stopped when the demo ends normally or unwinds (`DemoNode`'s
/// drop), and by the terminal's Ctrl-C, which reaches them too.
#[cfg(not(target_os = "linux"))]
fn end_with_the_demo(_command: &mut Command) {}

/// SIGTERM, then wait: the daemon flushes and exits 0.
fn stop(node: &mut DemoNode) -> Result<()> {
    let Some(mut child) = node.daemon.take() else {
        return Ok(());
    };
    let pid = libc::pid_t::try_from(child.id()).map_err(|e| DemoError::Setup(e.to_string()))?;
    // SAFETY: kill(2) with a pid this process spawned and still owns (not yet waited for).
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let status = child.wait().map_err(|e| DemoError::Setup(e.to_string()))?;
    if !status.success() {
        return Err(DemoError::Step(format!(
            "{} did not stop cleanly: {status}",
            node.name
        )));
    }
    Ok(())
}

/// Runs a command on a node's daemon; a missing key or skill is `Ok(None)`.
fn look<C: control::Command>(node: &DemoNode, command: C) -> Result<Option<C::Reply>> {
    let step = |e: &dyn std::fmt::Display| DemoError::Step(format!("{}: {e}", node.name));
    let reply = match socket::send(&node.home.control_socket_path(), &command.into()) {
        Ok(Some(reply)) => reply,
        Ok(None) => return Err(DemoError::Step(format!("{} is not running", node.name))),
        Err(e) => return Err(step(&e)),
    };
    match control::decode::<C>(reply) {
        Ok(reply) => Ok(Some(reply)),
        Err(DecodeError::Command(CommandError::NotFound(_))) => Ok(None),
        Err(e) => Err(step(&e)),
    }
}

/// Runs a command on a node's daemon that must succeed.
fn ask<C: control::Command>(node: &DemoNode, command: C) -> Result<C::Reply> {
    look(node, command)?.ok_or_else(|| DemoError::Step(format!("{}: not found", node.name)))
}

fn status(node: &DemoNode) -> Result<NodeStatus> {
    ask(node, Status::default())
}

fn connected(node: &DemoNode) -> Result<usize> {
    Ok(status(node)?.peers.iter().filter(|p| p.connected).count())
}

/// Bytes every running node has sent to its peers so far.
fn traffic(nodes: &[DemoNode]) -> Result<u64> {
    let mut total = 0;
    for node in nodes.iter().filter(|n| n.daemon.is_some()) {
        total += status(node)?.bytes_sent;
    }
    Ok(total)
}

fn all_have_memory(nodes: &[DemoNode], key: &str) -> Result<bool> {
    for node in nodes {
        let get = MemGet {
            scope: "mesh".into(),
            key: key.into(),
        };
        if look(node, get)?.is_none() {
            return Ok(false);
        }
    }
    Ok(true)
}

fn skill_content(node: &DemoNode, name: &str) -> Result<String> {
    let skill = look(node, SkillGet { name: name.into() })?;
    Ok(skill.map(|s| s.content).unwrap_or_default())
}

fn all_have_skill(nodes: &[DemoNode], name: &str, test: impl Fn(&str) -> bool) -> Result<bool> {
    for node in nodes {
        if !test(&skill_content(node, name)?) {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Memory and skills as one JSON text, for comparing nodes.
fn state_of(node: &DemoNode) -> Result<String> {
    let entries = ask(node, MemLs::default())?;
    let skills = ask(node, SkillLs::default())?;
    let memory: Vec<_> = entries.iter().map(|e| json!({"scope": e.scope.to_string(), "key": e.key, "value": e.value, "node_id": e.named_writer()})).collect();
    let skills: Vec<_> = skills
        .iter()
        .map(|s| json!({"name": s.name, "content": s.content, "description": s.description}))
        .collect();
    Ok(json!({"memory": memory, "skills": skills}).to_string())
}

fn pretty(value: &serde_json::Value) -> String {
    serde_json::to_string_pretty(value).unwrap_or_default()
}

fn indent(text: &str) -> String {
    text.lines().map(|l| format!("     | {l}\n")).collect()
}
