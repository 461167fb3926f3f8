//! `meshd doctor`: checks the node and prints each problem with its fix.

use std::path::PathBuf;

use clap::Args;
use meshd::config::{default_openclaw_home, Home};
use meshd::control::socket::{self, ControlError};
use meshd::control::{self, CommandError, DecodeError, Doctor, Request};
use meshd::doctor::{self, gather, Facts, NodeFacts, Report, StoreError, StoreErrorKind};
use meshd::replica::{system_clock, ReplicaError};

use super::{execute_anywhere, openclaw_home_env, patience};

#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// Print the checks as JSON: {"ok", "checks": [{"check", "status", "finding", "fix"}]}
    #[arg(long)]
    json: bool,
    /// OpenClaw's home, where openclaw.json is looked for [default: $OPENCLAW_HOME, else ~/.openclaw]
    #[arg(long, value_name = "DIR")]
    openclaw_home: Option<PathBuf>,
}

/// Some check failed: exit status 1, after the report.
#[derive(Debug, thiserror::Error)]
#[error("{failed} of {total} checks failed; each FAIL line above says what fixes it")]
pub struct ChecksFailed {
    failed: usize,
    total: usize,
}

pub fn run(home: &Home, args: DoctorArgs) -> anyhow::Result<()> {
    home.require_initialised()?;
    let report = examine(home, &args);
    if args.json {
        let json = serde_json::json!({"ok": report.failures() == 0, "checks": report.checks});
        println!("{json}");
    } else {
        print!("{}", report.render(paint()));
    }
    match report.failures() {
        0 => Ok(()),
        failed => Err(ChecksFailed {
            failed,
            total: report.checks.len(),
        }
        .into()),
    }
}

fn examine(home: &Home, args: &DoctorArgs) -> Report {
    let config = match home.load_config() {
        Ok(config) => config,
        Err(error) => {
            // Everything else depends on the configuration: say what is wrong with it.
            let mut report = doctor::examine_home(&gather::home(home, None));
            report.checks.push(doctor::Check::fail(
                "config",
                error.to_string(),
                "correct meshd.toml (deploy/meshd.example.toml lists every key)",
            ));
            return report;
        }
    };
    let node = node_facts(home);
    let peers = node
        .as_ref()
        .map(|n| n.peers.as_slice())
        .unwrap_or_default();
    let openclaw_home = gather::OpenclawHome {
        explicit: args.openclaw_home.is_some(),
        dir: args
            .openclaw_home
            .clone()
            .or_else(openclaw_home_env)
            .unwrap_or_else(default_openclaw_home),
    };
    let facts = Facts {
        home: gather::home(home, Some(&config)),
        space: gather::space(home, config.store.reserve()),
        now_ms: system_clock(),
        ports: gather::ports(&config),
        resolved: gather::resolve(peers),
        openclaw: gather::openclaw(home, &config, &openclaw_home),
        node,
    };
    doctor::examine(&facts)
}

/// The store's side, from the daemon when it runs, else from the store opened here.
fn node_facts(home: &Home) -> Result<NodeFacts, StoreError> {
    let failed = |kind, message: String| StoreError {
        kind,
        message,
        path: home.store_path().display().to_string(),
    };
    let socket = home.control_socket_path();
    let request = Request::from(Doctor::default());
    let answered = match socket::send_within(&socket, &request, patience(&request)) {
        Err(ControlError::Unanswered { waited, .. }) => {
            let message = format!(
                "a daemon accepted the question on {} but gave no answer within {} s: it is stuck",
                socket.display(),
                waited.as_secs()
            );
            return Err(failed(StoreErrorKind::Unanswered, message));
        }
        Err(error) => return Err(failed(StoreErrorKind::Other, error.to_string())),
        Ok(answered) => answered,
    };
    let reply = match answered.map_or_else(|| execute_anywhere(home, request), Ok) {
        Ok(reply) => reply,
        Err(error) => {
            let message = format!("{error:#}");
            return Err(match error.downcast_ref::<ReplicaError>() {
                Some(replica) => gather::store_error(replica, message, home),
                None => failed(StoreErrorKind::Other, message),
            });
        }
    };
    control::decode::<Doctor>(reply).map_err(|error| match error {
        DecodeError::Command(CommandError::Failed(message) | CommandError::NotFound(message)) => {
            failed(StoreErrorKind::Other, message)
        }
        shape => failed(StoreErrorKind::Other, shape.to_string()),
    })
}

/// Colours only on a terminal, and never with NO_COLOR set.
fn paint() -> bool {
    std::io::IsTerminal::is_terminal(&std::io::stdout())
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}
