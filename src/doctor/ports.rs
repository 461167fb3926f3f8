//! The ports meshd.toml asks for: held by this node's running daemon, or free to bind.

use std::net::SocketAddr;

use super::{Check, NodeFacts, StoreError, StoreErrorKind};

/// Which listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PortKind {
    /// `[node] listen`, UDP.
    Quic,
    /// `[api] listen`, TCP.
    Api,
}

impl PortKind {
    fn check(self) -> &'static str {
        match self {
            PortKind::Quic => "QUIC port",
            PortKind::Api => "API port",
        }
    }

    fn protocol(self) -> &'static str {
        match self {
            PortKind::Quic => "UDP",
            PortKind::Api => "TCP",
        }
    }

    fn setting(self) -> &'static str {
        match self {
            PortKind::Quic => "listen under [node]",
            PortKind::Api => "listen under [api]",
        }
    }

    fn daemon_addr(self, node: &NodeFacts) -> Option<&str> {
        match self {
            PortKind::Quic => node.quic_listen.as_deref(),
            PortKind::Api => node.api_listen.as_deref(),
        }
    }

    /// How to find what holds the port.
    fn holder(self, port: u16) -> String {
        match self {
            PortKind::Quic => format!("lsof -i UDP:{port}"),
            PortKind::Api => format!("lsof -i TCP:{port} -sTCP:LISTEN"),
        }
    }
}

/// What binding the configured address from this process gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    Free,
    InUse,
    /// Another error (an address not of this machine, a port below 1024).
    Failed(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortFacts {
    pub kind: PortKind,
    /// The address meshd.toml gives; `None` for an API turned off.
    pub configured: Option<String>,
    /// Binding it here; `None` when there was nothing to bind.
    pub probe: Option<Probe>,
}

pub fn check(facts: &PortFacts, node: &Result<NodeFacts, StoreError>) -> Check {
    let (kind, name) = (facts.kind, facts.kind.check());
    let stuck = matches!(node, Err(e) if e.kind == StoreErrorKind::Unanswered);
    let node = node.as_ref().ok();
    let Some(text) = &facts.configured else {
        return Check::ok(name, "the local API is off ([api] enabled = false)");
    };
    let Ok(configured) = text.parse::<SocketAddr>() else {
        return Check::fail(
            name,
            format!("'{text}' is not a HOST:PORT address"),
            format!(
                "set {} in meshd.toml to an address such as 0.0.0.0:7464",
                kind.setting()
            ),
        );
    };
    let shown = format!("{configured} ({})", kind.protocol());
    let running = node.is_some_and(|n| n.running);
    let daemon = node
        .and_then(|n| kind.daemon_addr(n))
        .and_then(|a| a.parse::<SocketAddr>().ok());
    if running && daemon.is_some_and(|d| held_by(configured, d)) {
        let daemon = daemon.map(|d| d.to_string()).unwrap_or_default();
        return Check::ok(
            name,
            format!(
                "{daemon} ({}) is held by this node's daemon",
                kind.protocol()
            ),
        );
    }
    let elsewhere = match (running, daemon) {
        (true, Some(daemon)) => format!("; the running daemon listens on {daemon}"),
        (true, None) => "; the running daemon does not listen there".to_string(),
        _ => String::new(),
    };
    match &facts.probe {
        Some(Probe::InUse) if stuck => Check::warn(
            name,
            format!("{shown} is held, likely by this node's daemon, which does not answer"),
            "restart meshd (see the store line), then run meshd doctor again",
        ),
        _ if configured.port() == 0 && !running => {
            Check::ok(name, format!("{shown}: any free port is taken at start"))
        }
        Some(Probe::InUse) => Check::fail(
            name,
            format!("{shown} is held by another process{elsewhere}"),
            format!(
                "change {} in meshd.toml, or stop the process holding it ({})",
                kind.setting(),
                kind.holder(configured.port())
            ),
        ),
        Some(Probe::Failed(error)) => Check::fail(
            name,
            format!("cannot bind {shown}: {error}"),
            format!(
                "set {} in meshd.toml to an address of this machine",
                kind.setting()
            ),
        ),
        _ if running => Check::warn(
            name,
            format!("meshd.toml asks for {shown}, which is free{elsewhere}"),
            "restart meshd so that it listens where meshd.toml says",
        ),
        _ => Check::ok(name, format!("{shown} is free to bind")),
    }
}

/// Whether the daemon's address is the configured one (any port when it asks for port 0).
fn held_by(configured: SocketAddr, daemon: SocketAddr) -> bool {
    configured.ip() == daemon.ip() && (configured.port() == 0 || configured.port() == daemon.port())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doctor::{sample_node, Status};

    fn port(kind: PortKind, configured: &str, probe: Probe) -> PortFacts {
        PortFacts {
            kind,
            configured: Some(configured.into()),
            probe: Some(probe),
        }
    }

    fn daemon() -> NodeFacts {
        NodeFacts {
            running: true,
            quic_listen: Some("0.0.0.0:7464".into()),
            api_listen: Some("127.0.0.1:4078".into()),
            ..sample_node()
        }
    }

    fn locked() -> StoreError {
        StoreError {
            kind: StoreErrorKind::Locked,
            message: "in use".into(),
            path: "/h/store".into(),
        }
    }

    #[test]
    fn a_port_a_stuck_daemon_holds_warns_and_points_at_the_store_line() {
        let quic = port(PortKind::Quic, "0.0.0.0:7464", Probe::InUse);
        let stuck = StoreError {
            kind: StoreErrorKind::Unanswered,
            ..locked()
        };
        let check = check(&quic, &Err(stuck));
        assert_eq!(check.status, Status::Warn);
        assert!(check.finding.contains("does not answer"), "{check:?}");
        // Without a stuck daemon, the same port is someone else's.
        assert_eq!(super::check(&quic, &Err(locked())).status, Status::Fail);
    }

    #[test]
    fn a_port_the_daemon_holds_is_ok_even_though_it_cannot_be_bound() {
        let quic = port(PortKind::Quic, "0.0.0.0:7464", Probe::InUse);
        let check = check(&quic, &Ok(daemon()));
        assert_eq!(check.status, Status::Ok, "{check:?}");
        assert!(check.finding.contains("held by this node's daemon"));
        let api = port(PortKind::Api, "127.0.0.1:4078", Probe::InUse);
        assert_eq!(super::check(&api, &Ok(daemon())).status, Status::Ok);
    }

    #[test]
    fn a_port_held_by_another_process_fails_with_the_setting_to_change() {
        let api = port(PortKind::Api, "127.0.0.1:4078", Probe::InUse);
        let check = check(&api, &Ok(sample_node()));
        assert_eq!(check.status, Status::Fail);
        assert!(check
            .finding
            .contains("127.0.0.1:4078 (TCP) is held by another process"));
        let fix = check.fix.unwrap();
        assert!(fix.contains("listen under [api]"), "{fix}");
        assert!(fix.contains("lsof -i TCP:4078"), "{fix}");

        // The daemon runs, but elsewhere: what meshd.toml asks for is someone else's.
        let quic = port(PortKind::Quic, "0.0.0.0:7465", Probe::InUse);
        let check = super::check(&quic, &Ok(daemon()));
        assert_eq!(check.status, Status::Fail);
        assert!(check
            .finding
            .contains("the running daemon listens on 0.0.0.0:7464"));
        assert!(check.fix.unwrap().contains("listen under [node]"));
    }

    #[test]
    fn a_free_port_is_ok_without_the_daemon_and_a_restart_with_it() {
        let quic = port(PortKind::Quic, "0.0.0.0:7464", Probe::Free);
        assert_eq!(check(&quic, &Ok(sample_node())).status, Status::Ok);
        assert_eq!(check(&quic, &Err(locked())).status, Status::Ok);
        let moved = port(PortKind::Quic, "0.0.0.0:7465", Probe::Free);
        let check = check(&moved, &Ok(daemon()));
        assert_eq!(check.status, Status::Warn);
        assert!(check.fix.unwrap().contains("restart meshd"));
    }

    #[test]
    fn other_bind_errors_and_bad_addresses_fail() {
        let foreign = port(
            PortKind::Quic,
            "10.9.9.9:7464",
            Probe::Failed("Cannot assign requested address".into()),
        );
        assert_eq!(check(&foreign, &Err(locked())).status, Status::Fail);
        let bad = port(PortKind::Api, "localhost:4078", Probe::Free);
        assert_eq!(check(&bad, &Err(locked())).status, Status::Fail);
    }

    #[test]
    fn port_zero_and_an_api_turned_off_are_ok() {
        let any = port(PortKind::Quic, "127.0.0.1:0", Probe::Free);
        assert_eq!(check(&any, &Ok(sample_node())).status, Status::Ok);
        let mut running = daemon();
        running.quic_listen = Some("127.0.0.1:40123".into());
        assert_eq!(check(&any, &Ok(running)).status, Status::Ok);
        let off = PortFacts {
            kind: PortKind::Api,
            configured: None,
            probe: None,
        };
        assert_eq!(check(&off, &Err(locked())).status, Status::Ok);
    }
}
