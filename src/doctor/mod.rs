//! `meshd doctor`: checks a node and says, for each problem, what fixes it.
//!
//! The checks are pure functions over facts gathered beforehand (`Facts`), so each decision
//! is tested without touching a disk, a port or a resolver. Facts come from two edges: what
//! only the store knows (`NodeFacts`: integrity, documents, stamps, peers and their links)
//! from the `Doctor` control command, which a running daemon answers itself (sled admits one
//! process); and what the machine says (`gather`: file modes, free space, ports, DNS,
//! openclaw.json) from the process that runs the command.

mod clock;
pub mod gather;
mod home;
mod openclaw;
mod peers;
mod ports;
mod space;
mod store;

use serde::{Deserialize, Serialize};

pub use home::{Account, HomeFacts, Meta, PathFacts, Role};
pub use openclaw::OpenclawFacts;
pub use peers::{PeerFacts, Resolution};
pub use ports::{PortFacts, PortKind, Probe};
pub use space::SpaceFacts;
pub use store::{IntegrityFact, NewestStamp, StoreError, StoreErrorKind};

/// How a check came out. `Fail` makes `meshd doctor` exit 1; `Warn` does not.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    Warn,
    Fail,
}

impl Status {
    /// The word printed at the start of the line.
    pub fn word(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Warn => "warn",
            Status::Fail => "FAIL",
        }
    }
}

/// One line of the report: what was checked, how it came out, what was found, and for a
/// problem the command or setting that fixes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Check {
    pub check: String,
    pub status: Status,
    pub finding: String,
    pub fix: Option<String>,
}

impl Check {
    pub fn ok(check: impl Into<String>, finding: impl Into<String>) -> Check {
        Check {
            check: check.into(),
            status: Status::Ok,
            finding: finding.into(),
            fix: None,
        }
    }

    pub fn warn(
        check: impl Into<String>,
        finding: impl Into<String>,
        fix: impl Into<String>,
    ) -> Check {
        Check::problem(Status::Warn, check.into(), finding.into(), fix.into())
    }

    pub fn fail(
        check: impl Into<String>,
        finding: impl Into<String>,
        fix: impl Into<String>,
    ) -> Check {
        Check::problem(Status::Fail, check.into(), finding.into(), fix.into())
    }

    /// A check that found a problem: it always comes with its fix.
    fn problem(status: Status, check: String, finding: String, fix: String) -> Check {
        Check {
            check,
            status,
            finding,
            fix: Some(fix),
        }
    }
}

/// What the store says, gathered by the `Doctor` command where the store is open: in the
/// daemon when it runs, else in the command's own process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeFacts {
    /// This node's id, for the fixes that name it.
    pub node_id: String,
    /// Whether a daemon answered (the command ran inside it).
    pub running: bool,
    /// The UDP address the daemon's QUIC endpoint is bound to.
    pub quic_listen: Option<String>,
    /// The TCP address the daemon's local API is bound to.
    pub api_listen: Option<String>,
    pub integrity: IntegrityFact,
    pub documents: usize,
    /// Documents whose stored bytes do not load, each with the reason.
    pub unloadable: Vec<String>,
    /// A write the disk failed: the store takes no more until a restart.
    pub write_failure: Option<String>,
    /// `meshd run --repair` under way: what is missing, or that it is complete.
    pub repair: Option<String>,
    pub newest: Option<NewestStamp>,
    pub peers: Vec<PeerFacts>,
}

/// Everything the checks look at.
#[derive(Debug, Clone)]
pub struct Facts {
    pub home: HomeFacts,
    /// The store's side, or why the store could not be read.
    pub node: Result<NodeFacts, StoreError>,
    /// The disk holding the store, or why its free space could not be read.
    pub space: Result<SpaceFacts, String>,
    /// The wall clock, Unix milliseconds.
    pub now_ms: u64,
    pub ports: Vec<PortFacts>,
    /// Each peer address as the resolver answered, in the order of `node.peers`.
    pub resolved: Vec<Resolution>,
    pub openclaw: OpenclawFacts,
}

/// The report: one line per check, in the order they ran.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    pub checks: Vec<Check>,
}

impl Report {
    pub fn failures(&self) -> usize {
        self.count(Status::Fail)
    }

    pub fn warnings(&self) -> usize {
        self.count(Status::Warn)
    }

    fn count(&self, status: Status) -> usize {
        self.checks.iter().filter(|c| c.status == status).count()
    }

    /// The report as people read it: `ok`, `warn` or `FAIL`, the check and what it found;
    /// under a problem an indented `fix:` line. `paint` colours the status word.
    pub fn render(&self, paint: bool) -> String {
        let mut text = String::new();
        for check in &self.checks {
            let word = format!("{:<4}", check.status.word());
            let word = match (paint, check.status) {
                (true, Status::Fail) => format!("\x1b[1;31m{word}\x1b[0m"),
                (true, Status::Warn) => format!("\x1b[33m{word}\x1b[0m"),
                (true, Status::Ok) => format!("\x1b[32m{word}\x1b[0m"),
                (false, _) => word,
            };
            text.push_str(&format!("{word}  {}: {}\n", check.check, check.finding));
            if let Some(fix) = &check.fix {
                text.push_str(&format!("      fix: {fix}\n"));
            }
        }
        text
    }
}

/// Runs every check over the facts.
pub fn examine(facts: &Facts) -> Report {
    let node = facts.node.as_ref().ok();
    let mut checks = home::check(&facts.home);
    checks.push(store::check(&facts.node));
    checks.push(space::check(&facts.space));
    checks.push(clock::check(node, facts.now_ms));
    checks.extend(node.and_then(clock::check_peers));
    checks.extend(
        facts
            .ports
            .iter()
            .map(|port| ports::check(port, &facts.node)),
    );
    checks.extend(peers::check(node, &facts.resolved));
    checks.push(openclaw::check(&facts.openclaw));
    Report { checks }
}

/// The home's checks alone, for a node whose meshd.toml cannot be read.
pub fn examine_home(home: &HomeFacts) -> Report {
    Report {
        checks: home::check(home),
    }
}

/// The line for a check that needs the store when the store could not be read.
fn not_checked(check: &str) -> Check {
    Check::warn(
        check,
        "not checked: the store could not be read (see the store line)",
        "fix the store first, then run meshd doctor again",
    )
}

/// A byte count as people read it.
fn mib(bytes: u64) -> String {
    format!("{} MiB", bytes >> 20)
}

/// A node whose store is fine, with no peers, for the checks' tests.
#[cfg(test)]
pub(crate) fn sample_node() -> NodeFacts {
    NodeFacts {
        node_id: "aaaaaaaaaaa-bbbbbbbbbbb-ccccccccccc".into(),
        running: false,
        quic_listen: None,
        api_listen: None,
        integrity: IntegrityFact::Holds {
            written_at_ms: 1_795_325_958_000,
        },
        documents: 3,
        unloadable: Vec::new(),
        write_failure: None,
        repair: None,
        newest: None,
        peers: Vec::new(),
    }
}
