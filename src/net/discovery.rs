//! LAN discovery over mDNS / DNS-SD (`mdns-sd`): the daemon announces itself as an instance
//! of `_meshd._udp.local.` (instance and host named by its node id; TXT `id`, `name`, `port`)
//! and browses for the others. It only learns: pairing stays `meshd invite`/`join` or `peers
//! add`, and what an announcement says is trusted only once a TLS handshake proves the id
//! (`Mesh::seen_on_lan`).
//!
//! Without the daemon, `meshd peers discover` browses for a while on its own ([`look`]),
//! announcing nothing.
//!
//! It runs on the interfaces the QUIC listen address is reachable on: a loopback listen
//! announces on loopback only, `0.0.0.0` on every IPv4 interface, `[::]` on every interface,
//! a given address on its interface.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mdns_sd::{IfKind, ResolvedService, ServiceDaemon, ServiceEvent, ServiceInfo};

use crate::model::NodeId;
use crate::peers::Seen;

pub const SERVICE_TYPE: &str = "_meshd._udp.local.";

#[derive(Debug, thiserror::Error)]
#[error("mDNS discovery cannot start: {0}; set [discovery] mdns = false in meshd.toml to run without it")]
pub struct DiscoveryError(String);

/// The running announcement and browser; stops when dropped.
pub struct Discovery {
    daemon: ServiceDaemon,
    fullname: String,
    seen: Arc<Mutex<HashMap<NodeId, Seen>>>,
}

impl Discovery {
    /// Announces this node listening on `listen` and calls `on_seen` (on the browser's own
    /// thread) for every other node found or found again.
    pub fn start(
        own: NodeId,
        name: &str,
        listen: SocketAddr,
        on_seen: impl Fn(Seen) + Send + 'static,
    ) -> Result<Discovery, DiscoveryError> {
        let error = |e: mdns_sd::Error| DiscoveryError(e.to_string());
        let daemon = service_daemon(listen.ip())?;
        // DNS labels: the id without its dashes and check character.
        let label = own.compact();
        let (id, port) = (own.to_string(), listen.port().to_string());
        let properties = [("id", id.as_str()), ("name", name), ("port", port.as_str())];
        let info = ServiceInfo::new(
            SERVICE_TYPE,
            &label,
            &format!("{label}.local."),
            (),
            listen.port(),
            &properties[..],
        )
        .map_err(error)?
        .enable_addr_auto();
        let fullname = info.get_fullname().to_string();
        daemon.register(info).map_err(error)?;
        let events = daemon.browse(SERVICE_TYPE).map_err(error)?;
        let seen = Arc::new(Mutex::new(HashMap::new()));
        let table = Arc::clone(&seen);
        std::thread::Builder::new()
            .name("meshd-mdns".into())
            .spawn(move || {
                // Ends when the daemon shuts down and drops the channel.
                while let Ok(event) = events.recv() {
                    if let Some(node) = seen_in(&event, own) {
                        lock(&table).insert(node.id, node.clone());
                        on_seen(node);
                    }
                    if let ServiceEvent::ServiceRemoved(_, fullname) = &event {
                        lock(&table).retain(|id, _| !fullname.starts_with(&id.compact()));
                    }
                }
            })
            .map_err(|e| DiscoveryError(e.to_string()))?;
        Ok(Discovery {
            daemon,
            fullname,
            seen,
        })
    }

    /// The other nodes announcing themselves now, by id.
    pub fn seen(&self) -> Vec<Seen> {
        let mut nodes: Vec<Seen> = lock(&self.seen).values().cloned().collect();
        nodes.sort_by_key(|node| node.id.compact());
        nodes
    }
}

impl Drop for Discovery {
    /// Says goodbye (the others forget this node at once), then stops.
    fn drop(&mut self) {
        if let Ok(done) = self.daemon.unregister(&self.fullname) {
            let _ = done.recv_timeout(std::time::Duration::from_secs(1));
        }
        let _ = self.daemon.shutdown();
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// Browses for `wait` on the interfaces `listen` is reachable on, announcing nothing: the
/// other nodes heard, by id.
pub fn look(own: NodeId, listen: IpAddr, wait: Duration) -> Result<Vec<Seen>, DiscoveryError> {
    let daemon = service_daemon(listen)?;
    let events = (daemon.browse(SERVICE_TYPE)).map_err(|e| DiscoveryError(e.to_string()))?;
    let deadline = Instant::now() + wait;
    let mut seen = HashMap::new();
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match events.recv_timeout(left) {
            Ok(event) => {
                if let Some(node) = seen_in(&event, own) {
                    seen.insert(node.id, node);
                }
            }
            Err(_) => break,
        }
    }
    let _ = daemon.shutdown();
    let mut nodes: Vec<Seen> = seen.into_values().collect();
    nodes.sort_by_key(|node| node.id.compact());
    Ok(nodes)
}

/// An mDNS responder on the interfaces `listen` is reachable on.
fn service_daemon(listen: IpAddr) -> Result<ServiceDaemon, DiscoveryError> {
    let error = |e: mdns_sd::Error| DiscoveryError(e.to_string());
    let daemon = ServiceDaemon::new().map_err(error)?;
    daemon.disable_interface(IfKind::All).map_err(error)?;
    daemon.enable_interface(interfaces(listen)).map_err(error)?;
    Ok(daemon)
}

/// The interfaces a listen address is reachable on.
fn interfaces(listen: IpAddr) -> IfKind {
    match listen {
        IpAddr::V4(ip) if ip.is_loopback() => IfKind::LoopbackV4,
        IpAddr::V6(ip) if ip.is_loopback() => IfKind::LoopbackV6,
        IpAddr::V4(ip) if ip.is_unspecified() => IfKind::IPv4,
        IpAddr::V6(ip) if ip.is_unspecified() => IfKind::All,
        ip => IfKind::Addr(ip),
    }
}

/// The node an event announces, unless it is this one or says nothing usable.
fn seen_in(event: &ServiceEvent, own: NodeId) -> Option<Seen> {
    let ServiceEvent::ServiceResolved(service) = event else {
        return None;
    };
    let id: NodeId = service.get_property_val_str("id")?.parse().ok()?;
    if id == own {
        return None;
    }
    Some(Seen {
        id,
        name: service
            .get_property_val_str("name")
            .and_then(|name| super::join::suggested_name(Some(name.to_string()))),
        addresses: addresses(service),
        at: super::unix_now(),
    })
}

/// `IP:PORT` for each announced address another host can dial, IPv4 first.
fn addresses(service: &ResolvedService) -> Vec<String> {
    let mut ips: Vec<IpAddr> = service
        .get_addresses()
        .iter()
        .map(|ip| ip.to_ip_addr())
        // fe80::/10 needs an interface index to dial.
        .filter(|ip| !matches!(ip, IpAddr::V6(v6) if (v6.segments()[0] & 0xffc0) == 0xfe80))
        .collect();
    ips.sort_by_key(|ip| (ip.is_ipv6(), *ip));
    ips.dedup();
    ips.into_iter()
        .map(|ip| SocketAddr::new(ip, service.get_port()).to_string())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_loopback_listen_stays_on_loopback_and_a_wildcard_takes_every_interface() {
        assert!(matches!(
            interfaces("127.0.0.1".parse().unwrap()),
            IfKind::LoopbackV4
        ));
        assert!(matches!(
            interfaces("0.0.0.0".parse().unwrap()),
            IfKind::IPv4
        ));
        assert!(matches!(interfaces("::".parse().unwrap()), IfKind::All));
        let lan: IpAddr = "192.0.2.7".parse().unwrap();
        assert!(matches!(interfaces(lan), IfKind::Addr(ip) if ip == lan));
    }
}
