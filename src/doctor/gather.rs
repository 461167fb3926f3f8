//! Gathering the facts the checks look at, from this process: file modes and owners, free
//! space, binding the configured ports, resolving peer addresses, reading openclaw.json.
//! What only the store knows comes from the `Doctor` control command instead.

use std::ffi::CStr;
use std::net::{SocketAddr, TcpListener, ToSocketAddrs, UdpSocket};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::{
    Account, HomeFacts, Meta, OpenclawFacts, PathFacts, PeerFacts, PortFacts, PortKind, Probe,
    Resolution, Role, SpaceFacts, StoreError, StoreErrorKind,
};
use crate::config::{Config, Home};
use crate::openclaw::{self, Wiring};
use crate::replica::space::Reserve;
use crate::replica::ReplicaError;

/// The home and the files in it whose modes matter, as this user sees them.
pub fn home(home: &Home, config: Option<&Config>) -> HomeFacts {
    let holds_secret =
        config.is_some_and(|c| c.api.bearer_token.is_some() || c.api.auth_secret.is_some());
    let paths = [
        (home.dir.clone(), Role::Home),
        (home.key_path(), Role::Key),
        (home.api_token_path(), Role::Token),
        (home.control_socket_path(), Role::Socket),
        (home.config_path(), Role::Config { holds_secret }),
    ];
    // SAFETY: geteuid has no preconditions and cannot fail.
    let uid = unsafe { libc::geteuid() };
    HomeFacts {
        user: Account {
            uid,
            name: user_name(uid),
        },
        paths: paths
            .into_iter()
            .map(|(path, role)| PathFacts {
                found: std::fs::symlink_metadata(&path).ok().map(|m| Meta {
                    mode: m.mode(),
                    uid: m.uid(),
                    owner_name: user_name(m.uid()),
                }),
                path,
                role,
            })
            .collect(),
    }
}

/// The name of a user id, when the system has one.
fn user_name(uid: u32) -> Option<String> {
    let mut buffer = vec![0 as libc::c_char; 4096];
    let mut entry: libc::passwd = unsafe { std::mem::zeroed() };
    let mut found: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer is to memory owned here and sized as passed; `pw_name` points into
    // `buffer`, read before it is dropped.
    let status = unsafe {
        libc::getpwuid_r(
            uid,
            &mut entry,
            buffer.as_mut_ptr(),
            buffer.len(),
            &mut found,
        )
    };
    if status != 0 || found.is_null() || entry.pw_name.is_null() {
        return None;
    }
    let name = unsafe { CStr::from_ptr(entry.pw_name) };
    Some(name.to_string_lossy().into_owned())
}

/// Free space of the disk holding the store (its home when the store is missing).
pub fn space(home: &Home, reserve: Reserve) -> Result<SpaceFacts, String> {
    let store = home.store_path();
    let probe = if store.exists() { &store } else { &home.dir };
    let read = |path: &Path| -> std::io::Result<(u64, u64)> {
        Ok((fs2::available_space(path)?, fs2::total_space(path)?))
    };
    let (free, total) = read(probe).map_err(|e| format!("{}: {e}", probe.display()))?;
    Ok(SpaceFacts {
        path: store,
        free,
        total,
        reserve,
    })
}

/// The configured listeners, each bound for an instant from this process.
pub fn ports(config: &Config) -> Vec<PortFacts> {
    let api = config.api.enabled.then(|| config.api.listen.clone());
    vec![
        PortFacts {
            kind: PortKind::Quic,
            probe: Some(probe(&config.node.listen, |a| UdpSocket::bind(a).map(drop))),
            configured: Some(config.node.listen.clone()),
        },
        PortFacts {
            kind: PortKind::Api,
            probe: api
                .as_deref()
                .map(|listen| probe(listen, |a| TcpListener::bind(a).map(drop))),
            configured: api,
        },
    ]
}

fn probe(listen: &str, bind: impl Fn(SocketAddr) -> std::io::Result<()>) -> Probe {
    let Ok(addr) = listen.parse::<SocketAddr>() else {
        return Probe::Failed(format!("'{listen}' is not an address"));
    };
    match bind(addr) {
        Ok(()) => Probe::Free,
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => Probe::InUse,
        Err(e) => Probe::Failed(e.to_string()),
    }
}

/// Every peer address through the system resolver, as a dial would.
pub fn resolve(peers: &[PeerFacts]) -> Vec<Resolution> {
    let mut resolved: Vec<Resolution> = Vec::new();
    for address in peers.iter().flat_map(|p| &p.addresses) {
        if resolved.iter().any(|r| &r.address == address) {
            continue;
        }
        let result = match address.to_socket_addrs().map(|mut addrs| addrs.next()) {
            Ok(Some(_)) => Ok(()),
            Ok(None) => Err("no address found".to_string()),
            Err(e) => Err(e.to_string()),
        };
        resolved.push(Resolution {
            address: address.clone(),
            result,
        });
    }
    resolved
}

/// Where OpenClaw's configuration is looked for, and how `setup` is typed for it.
pub struct OpenclawHome {
    pub dir: PathBuf,
    /// Given with `--openclaw-home`: a missing directory is then an error, not "no OpenClaw".
    pub explicit: bool,
}

/// What `meshd openclaw setup` would change for this binary and this node home.
pub fn openclaw(home: &Home, config: &Config, openclaw_home: &OpenclawHome) -> OpenclawFacts {
    let setup = match openclaw_home.explicit {
        true => format!(
            "meshd openclaw setup --openclaw-home {}",
            openclaw_home.dir.display()
        ),
        false => "meshd openclaw setup".to_string(),
    };
    let unreadable = |error: String| OpenclawFacts::Unreadable {
        error,
        setup: setup.clone(),
    };
    let dir = match openclaw::resolve_openclaw_home(&openclaw_home.dir) {
        Ok(dir) => dir,
        Err(openclaw::OpenclawError::NoOpenclawHome(dir)) if !openclaw_home.explicit => {
            return OpenclawFacts::NoConfig { dir }
        }
        Err(error) => return unreadable(error.to_string()),
    };
    let cache = config.cache.paths(Some(dir.clone()));
    let this = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => return unreadable(format!("cannot find this meshd's path: {e}")),
    };
    let wiring = std::fs::canonicalize(&home.dir)
        .map_err(|e| format!("cannot resolve the node home {}: {e}", home.dir.display()))
        .and_then(|node_home| Wiring::new(&this, &node_home, &cache).map_err(|e| e.to_string()));
    let wiring = match wiring {
        Ok(wiring) => wiring,
        Err(error) => return unreadable(error),
    };
    match openclaw::pending_changes(&dir, &wiring) {
        Ok(None) => OpenclawFacts::NoConfig { dir },
        Ok(Some((path, changes))) => OpenclawFacts::Found {
            command_is_this_binary: names_this_binary(&changes, &this),
            path,
            changes,
            setup,
        },
        Err(error) => unreadable(format!("{error:#}")),
    }
}

/// Whether the executable openclaw.json names (when `setup` would replace it) is this very
/// file by another path: a symlink, say.
fn names_this_binary(changes: &[openclaw::Change], this: &Path) -> bool {
    let named = changes.iter().find_map(|change| match change {
        openclaw::Change::Replaced { key, old, .. } if key == "mcp.servers.meshd.command" => {
            serde_json::from_str::<String>(old).ok()
        }
        _ => None,
    });
    match named {
        None => true,
        Some(named) => {
            let resolved = |path: &Path| std::fs::canonicalize(path).ok();
            resolved(Path::new(&named)).is_some_and(|named| Some(named) == resolved(this))
        }
    }
}

/// Why the store could not be read, classified for the fix.
pub fn store_error(error: &ReplicaError, message: String, home: &Home) -> StoreError {
    let kind = match error {
        ReplicaError::Locked { .. } => StoreErrorKind::Locked,
        ReplicaError::NoRoomToOpen { .. } => StoreErrorKind::NoRoom,
        ReplicaError::Damaged { .. }
        | ReplicaError::Corrupt(_)
        | ReplicaError::LostWrites { .. }
        | ReplicaError::Load { .. } => StoreErrorKind::Damaged,
        _ => StoreErrorKind::Other,
    };
    StoreError {
        kind,
        message,
        path: home.store_path().display().to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_port_held_here_is_in_use_and_a_free_one_is_free() {
        let held = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = held.local_addr().unwrap().to_string();
        assert_eq!(
            probe(&addr, |a| TcpListener::bind(a).map(drop)),
            Probe::InUse
        );
        drop(held);
        assert_eq!(
            probe(&addr, |a| TcpListener::bind(a).map(drop)),
            Probe::Free
        );
        let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = udp.local_addr().unwrap().to_string();
        assert_eq!(probe(&addr, |a| UdpSocket::bind(a).map(drop)), Probe::InUse);
    }

    #[test]
    fn the_home_is_seen_with_its_modes_and_owner() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let home = Home::new(dir.path().to_path_buf());
        std::fs::write(home.key_path(), "key").unwrap();
        std::fs::set_permissions(home.key_path(), std::fs::Permissions::from_mode(0o640)).unwrap();
        let facts = self::home(&home, None);
        let key = facts.paths.iter().find(|p| p.role == Role::Key).unwrap();
        let meta = key.found.as_ref().unwrap();
        assert_eq!(meta.mode & 0o777, 0o640);
        assert_eq!(meta.uid, facts.user.uid);
        let socket = facts.paths.iter().find(|p| p.role == Role::Socket).unwrap();
        assert!(socket.found.is_none());
    }
}
