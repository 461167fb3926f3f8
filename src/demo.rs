//! `meshd demo`: three real `meshd` daemons on loopback, in a temporary directory, showing the
//! mesh converge step by step. It drives them exactly as an operator would, through their
//! control sockets, and exits non-zero unless every node ends with identical state.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::config::Home;
use crate::control::{
    self, socket, CommandError, DecodeError, MemGet, MemLs, MemPut, NodeStatus, SkillGet, SkillLs,
    SkillPut, Status,
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
    listen: String,
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
    println!("meshd demo: three nodes in {}", dir.path().display());
    let mut nodes = Vec::new();
    for name in ["mac-mini", "nas", "laptop"] {
        nodes.push(init_node(exe, dir.path(), name)?);
    }
    let ids: Vec<String> = nodes
        .iter()
        .map(|n| node_id(exe, n))
        .collect::<Result<_>>()?;
    // A chain: mac-mini – nas – laptop. mac-mini and laptop never connect; the nas relays.
    for (a, b) in [(0, 1), (1, 2)] {
        pair(exe, &nodes[a], &ids[b], &nodes[b])?;
        pair(exe, &nodes[b], &ids[a], &nodes[a])?;
    }
    println!("paired: mac-mini <-> nas <-> laptop (mac-mini and laptop never talk directly)\n");
    for node in &mut nodes {
        start(exe, node)?;
    }
    wait_for("every link is up", || {
        Ok(connected(&nodes[0])? == 1 && connected(&nodes[1])? == 2 && connected(&nodes[2])? == 1)
    })?;

    step(
        &nodes,
        "1. mac-mini writes a preference",
        |n| {
            ask(
                &n[0],
                MemPut {
                    scope: "mesh".into(),
                    key: "user.preferences".into(),
                    value: json!({"shortAnswers": true, "units": "metric"}),
                },
            )?;
            Ok(())
        },
        |n| all_have_memory(n, "user.preferences"),
    )?;

    step(
        &nodes,
        "2. nas shares a skill",
        |n| {
            ask(
                &n[1],
                skill_put(
                    "triage",
                    "# Triage rules\n\n- Urgent mail goes to the CEO.\n- Invoices go to the NAS.\n",
                    Some("How to sort incoming work"),
                ),
            )?;
            Ok(())
        },
        |n| all_have_skill(n, "triage", |c| c.contains("Invoices")),
    )?;

    // "At once" for real: with both online, the laptop could receive mac-mini's edit within
    // milliseconds and write its own over it. Offline, neither sees the other's edit first.
    println!("3. mac-mini and laptop edit the same skill at once (the laptop offline)");
    stop(&mut nodes[2])?;
    ask(
        &nodes[0],
        skill_put(
            "triage",
            "# Triage rules\n\n- Urgent mail goes to the CEO at once.\n- Invoices go to the NAS.\n",
            None,
        ),
    )?;
    let laptop_edit = dir.path().join("laptop-edit.md");
    std::fs::write(&laptop_edit, "# Triage rules\n\n- Urgent mail goes to the CEO.\n- Invoices go to the NAS.\n- Newsletters wait for Friday.\n")
        .map_err(|e| DemoError::Setup(format!("cannot write {}: {e}", laptop_edit.display())))?;
    let laptop_edit = laptop_edit.to_string_lossy();
    run_cli(
        exe,
        &nodes[2].home,
        &["skill", "put", "triage", "--file", &laptop_edit],
    )?;
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
    stop(&mut nodes[2])?;
    ask(
        &nodes[0],
        MemPut {
            scope: "mesh".into(),
            key: "project.focus".into(),
            value: json!("Q3 launch"),
        },
    )?;
    ask(
        &nodes[1],
        skill_put(
            "handoff",
            "Hand tasks to the NAS node with a one-line summary.\n",
            Some("How to hand off"),
        ),
    )?;
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
    for node in &mut nodes {
        stop(node)?;
    }
    println!("\nconverged: every node ends identical");
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

fn free_udp_port() -> Result<u16> {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .map_err(|e| DemoError::Setup(format!("no free UDP port: {e}")))
}

fn init_node(exe: &Path, dir: &Path, name: &'static str) -> Result<DemoNode> {
    let home = Home::new(dir.join(name));
    let listen = format!("127.0.0.1:{}", free_udp_port()?);
    run_cli(exe, &home, &["init", "--name", name, "--listen", &listen])?;
    // The demo's nodes share one machine: no local API ports, caches in the demo directory.
    let extra = format!(
        "\n[api]\nenabled = false\n\n[cache]\nopenclaw_home = {:?}\n",
        dir.join(name).join("openclaw")
    );
    let config = home.config_path();
    let text = std::fs::read_to_string(&config).map_err(|e| DemoError::Setup(e.to_string()))?;
    std::fs::write(&config, text + &extra).map_err(|e| DemoError::Setup(e.to_string()))?;
    Ok(DemoNode {
        name,
        home,
        listen,
        daemon: None,
    })
}

fn node_id(exe: &Path, node: &DemoNode) -> Result<String> {
    let out = run_cli(exe, &node.home, &["id"])?;
    Ok(out.lines().next().unwrap_or_default().to_string())
}

fn pair(exe: &Path, node: &DemoNode, peer_id: &str, peer: &DemoNode) -> Result<()> {
    run_cli(
        exe,
        &node.home,
        &["peers", "add", peer_id, &peer.listen, "--name", peer.name],
    )?;
    Ok(())
}

fn start(exe: &Path, node: &mut DemoNode) -> Result<()> {
    let child = Command::new(exe)
        .arg("--home")
        .arg(&node.home.dir)
        .arg("run")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
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

fn skill_put(name: &str, content: &str, description: Option<&str>) -> SkillPut {
    SkillPut {
        name: name.into(),
        content: content.into(),
        description: description.map(str::to_string),
        path: None,
    }
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
    let memory: Vec<_> = entries.iter().map(|e| json!({"scope": e.scope.to_string(), "key": e.key, "value": e.value, "node_id": e.node_id})).collect();
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
