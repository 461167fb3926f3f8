//! `meshd invite` and `meshd join`: pairing two nodes with one command on each side.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::peers::{access_over, access_text};
use super::{Command, CommandError, Context, Effects};
use crate::invite::Ticket;
use crate::model::access::Access;
use crate::peers::validate_address;

/// How long a ticket lasts unless `--expires` says otherwise.
const DEFAULT_EXPIRY: Duration = Duration::from_secs(3600);
/// The longest a ticket may last: an open invite lets strangers through the handshake.
const MAX_EXPIRY: Duration = Duration::from_secs(7 * 24 * 3600);
/// Addresses put in a ticket at most, when they are found from the interfaces.
const MAX_TICKET_ADDRESSES: usize = 6;

/// Makes a one-time ticket another node joins with.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Invite {
    /// What the joiner may read here (comma-separated patterns) [default: the peer default].
    pub read: Option<String>,
    /// What the joiner may change here.
    pub write: Option<String>,
    /// How long the ticket lasts (`1h`, `30m`, `2d`) [default: 1h; at most 7d].
    pub expires: Option<String>,
    /// The name the joiner gets in this node's peer list [default: the name it gives].
    pub name: Option<String>,
    /// `HOST:PORT` addresses the joiner dials [default: this node's listen address, or each
    /// interface's address with the listen port].
    #[serde(default)]
    pub addresses: Vec<String>,
}

/// A ticket, and what it offers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InviteMade {
    pub ticket: String,
    /// Unix seconds.
    pub expires: u64,
    pub addresses: Vec<String>,
    /// The access the joiner gets here, as the operator reads it.
    pub offers: String,
}

impl Command for Invite {
    type Reply = InviteMade;
    /// The daemon lets strangers through the handshake while an invite is open.
    const EFFECTS: Effects = Effects::PEERS;

    fn execute(self, node: &Context) -> Result<InviteMade, CommandError> {
        node.ensure_peers_writable()?;
        let access = access_over(Access::default_for_peer(), self.read, self.write)?;
        let lasts = expiry(self.expires.as_deref())?;
        let addresses = match self.addresses.is_empty() {
            false => self.addresses,
            true => default_addresses(node)?,
        };
        for address in &addresses {
            validate_address(address).map_err(CommandError::failed)?;
        }
        let expires = unix_now() + lasts.as_secs();
        let offers = access_text(&access);
        let (invite, secret) = node
            .peers
            .invites()
            .create(expires, access, self.name)
            .map_err(CommandError::failed)?;
        let ticket = Ticket {
            inviter: node.own,
            addresses: addresses.clone(),
            invite,
            secret,
            expires,
            name: node.mesh.as_ref().and_then(|mesh| mesh.name()),
        };
        Ok(InviteMade {
            ticket: ticket.encode(),
            expires,
            addresses,
            offers,
        })
    }
}

fn expiry(text: Option<&str>) -> Result<Duration, CommandError> {
    let Some(text) = text else {
        return Ok(DEFAULT_EXPIRY);
    };
    let lasts = humantime::parse_duration(text).map_err(|e| {
        CommandError::failed(format!(
            "--expires {text:?}: {e}; give a duration such as 30m, 1h or 2d"
        ))
    })?;
    if lasts.is_zero() || lasts > MAX_EXPIRY {
        return Err(CommandError::failed(format!(
            "--expires {text}: a ticket lasts between 1 s and 7 days; an open invite lets \
             strangers through the handshake, so keep it short"
        )));
    }
    Ok(lasts)
}

/// The running daemon's listen address; when it listens on every interface, each
/// interface's address with that port, the LAN ones first.
fn default_addresses(node: &Context) -> Result<Vec<String>, CommandError> {
    let listen = node
        .mesh
        .as_ref()
        .and_then(|mesh| mesh.listen_addr())
        .ok_or_else(|| {
            CommandError::failed(
                "the daemon is not running, so this node's address is unknown: start it with \
             `meshd run` (a ticket is only useful while it runs), or give --address HOST:PORT",
            )
        })?;
    if !listen.ip().is_unspecified() {
        return Ok(vec![listen.to_string()]);
    }
    let mut ips: Vec<IpAddr> = if_addrs::get_if_addrs()
        .map_err(|e| {
            CommandError::failed(format!(
                "cannot list this host's addresses ({e}); give --address HOST:PORT"
            ))
        })?
        .into_iter()
        .map(|interface| interface.ip())
        .filter(|ip| listen.is_ipv6() || ip.is_ipv4())
        .filter(|ip| !is_link_local_v6(ip))
        .collect();
    ips.sort_by_key(|ip| (ip.is_loopback(), ip.is_ipv6()));
    ips.dedup();
    Ok(ips
        .into_iter()
        .take(MAX_TICKET_ADDRESSES)
        .map(|ip| SocketAddr::new(ip, listen.port()).to_string())
        .collect())
}

/// fe80::/10 needs an interface index to dial, which another host cannot know.
fn is_link_local_v6(ip: &IpAddr) -> bool {
    matches!(ip, IpAddr::V6(v6) if (v6.segments()[0] & 0xffc0) == 0xfe80)
}

/// Pairs this node with the one that made the ticket, both ways.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Join {
    pub ticket: String,
    /// The name to give the inviting node here [default: the name it gives].
    pub name: Option<String>,
    /// What the inviting node may read here [default: the peer default].
    pub read: Option<String>,
    /// What the inviting node may change here.
    pub write: Option<String>,
}

/// How a join ended, for the joining node.
#[derive(Debug, Clone)]
pub struct Joined {
    /// The inviting node, as added to the peer list here.
    pub inviter: crate::peers::Peer,
    /// What this node may read and write there (once approved, when held).
    pub granted: Access,
    /// The inviting node holds the join for its operator's approval (`meshd peers approve`).
    pub held: bool,
}

impl Command for Join {
    /// What was paired, and the access each way, for the operator.
    type Reply = String;
    const EFFECTS: Effects = Effects::PEERS;

    /// A join dials each of the ticket's addresses in turn (seconds each), then waits for
    /// the inviter's answer.
    fn patience(&self) -> Duration {
        Duration::from_secs(120)
    }

    fn execute(self, node: &Context) -> Result<String, CommandError> {
        let ticket = Ticket::decode(&self.ticket).map_err(CommandError::failed)?;
        if ticket.inviter == node.own {
            return Err(CommandError::failed(
                "this ticket was made by this node: run `meshd join` on the node that should \
                 join it",
            ));
        }
        let now = unix_now();
        if ticket.expires <= now {
            let ago = humantime::format_duration(Duration::from_secs(now - ticket.expires));
            return Err(CommandError::failed(format!(
                "this ticket expired {ago} ago; ask for a new one with `meshd invite`"
            )));
        }
        node.ensure_peers_writable()?;
        let mesh = node.mesh.as_ref().ok_or_else(|| {
            CommandError::failed(
                "meshd join needs this node's daemon (it dials the inviting node with this \
                 node's key, and must be there when that node dials back): start it with \
                 `meshd run`, then run this again",
            )
        })?;
        let grants = access_over(Access::default_for_peer(), self.read, self.write)?;
        let joined = mesh
            .join(ticket, grants, self.name)
            .map_err(CommandError::Failed)?;
        let inviter = &joined.inviter;
        if joined.held {
            return Ok(format!(
                "the join is held for approval at {} ({}): once its operator runs `meshd peers \
                 approve {}` there, that node connects to this one (`meshd peers ls` shows it \
                 connected). It will be able to {} here; this node will be able to {} there",
                inviter.label(),
                inviter.id,
                node.own,
                access_text(&inviter.access),
                access_text(&joined.granted)
            ));
        }
        Ok(format!(
            "joined {} ({}). It may {} here; this node may {} there",
            inviter.label(),
            inviter.id,
            access_text(&inviter.access),
            access_text(&joined.granted)
        ))
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry_defaults_to_an_hour_and_refuses_nonsense_and_forever() {
        assert_eq!(expiry(None).unwrap(), DEFAULT_EXPIRY);
        assert_eq!(expiry(Some("30m")).unwrap(), Duration::from_secs(1800));
        for bad in ["0s", "8d", "soon", ""] {
            assert!(expiry(Some(bad)).is_err(), "{bad}");
        }
    }
}
