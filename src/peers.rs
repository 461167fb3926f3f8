//! The peer list and the ids that were refused, kept in the node's sled store.

use serde::{Deserialize, Serialize};

use crate::invite::Invites;
use crate::model::access::Access;
use crate::model::NodeId;

#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    #[error("peer store: {0}")]
    Storage(#[from] sled::Error),
    #[error("peer store holds a damaged record: {0}")]
    Corrupt(#[from] serde_json::Error),
    #[error("no peer with id or name '{0}' (see `meshd peers ls`)")]
    Unknown(String),
    #[error("'{0}' is this node's own id; a node cannot be its own peer")]
    Own(String),
    #[error("'{0}' is not a HOST:PORT address such as nas.local:7464")]
    Address(String),
    #[error("a peer is already named '{0}'; pick another name or remove that peer first")]
    NameTaken(String),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Peer {
    pub id: NodeId,
    pub name: Option<String>,
    /// `HOST:PORT` strings, tried in order; host names are resolved at each dial.
    pub addresses: Vec<String>,
    pub access: Access,
    /// Unix seconds of the last completed sync round with this peer.
    pub last_sync: Option<u64>,
}

impl Peer {
    pub fn label(&self) -> String {
        self.name.clone().unwrap_or_else(|| self.id.to_string())
    }
}

/// This node refused a peer's changes: when (Unix seconds), for which document, and why (a
/// clock running ahead, or a document the peer may not write).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerRefusal {
    pub at: u64,
    pub doc: String,
    pub reason: String,
}

/// Why the links to a peer keep failing, for `meshd status`: the latest reason, when (Unix
/// seconds), and how many links in a row failed soon after they came up.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkFailure {
    pub at: u64,
    pub reason: String,
    pub failures: u32,
}

/// A node that announced itself on the LAN (mDNS, `net::discovery`). What it says of itself
/// is unproven until a connection's TLS handshake proves its id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Seen {
    pub id: NodeId,
    pub name: Option<String>,
    /// `IP:PORT` where it says it listens.
    pub addresses: Vec<String>,
    /// Unix seconds.
    pub at: u64,
}

/// Why the latest dial to a peer found no address that worked, for `meshd status`: when (Unix
/// seconds), and each address tried with what went wrong there, in words.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DialFailure {
    pub at: u64,
    pub addresses: Vec<AddressFailure>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddressFailure {
    /// As configured (`HOST:PORT`), with the resolved address when it differs.
    pub address: String,
    pub reason: String,
}

/// The live link to a peer, for `meshd status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkState {
    /// When the link came up (Unix seconds).
    pub since: u64,
    /// QUIC's smoothed round-trip time.
    pub rtt_ms: u64,
    /// How far the peer's clock is ahead of this node's (negative: behind), in milliseconds,
    /// estimated from the clock in its latest `Hello` and the round-trip time; `None` until
    /// the peer opened a round on this link.
    #[serde(default)]
    pub clock_offset_ms: Option<i64>,
    /// Changes the peer holds, in documents it lets this node read, that this node has not
    /// received: as the peer counted them when it last opened a round, and 0 once a round
    /// completes; `None` until the peer opened a round on this link.
    #[serde(default)]
    pub changes_awaited: Option<u64>,
}

/// A node that tried to connect without being added.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refused {
    pub id: NodeId,
    pub address: String,
    pub last_seen: u64,
    pub attempts: u64,
}

#[derive(Clone)]
pub struct PeerStore {
    peers: sled::Tree,
    refused: sled::Tree,
    invites: Invites,
}

pub fn validate_address(address: &str) -> Result<(), PeerError> {
    let valid = address
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p != 0));
    if valid {
        Ok(())
    } else {
        Err(PeerError::Address(address.to_string()))
    }
}

impl PeerStore {
    pub fn open(db: &sled::Db) -> Result<PeerStore, PeerError> {
        Ok(PeerStore {
            peers: db.open_tree("peers")?,
            refused: db.open_tree("refused")?,
            invites: Invites::open(db)?,
        })
    }

    /// The invites this node made (`meshd invite`).
    pub fn invites(&self) -> &Invites {
        &self.invites
    }

    /// Adds or replaces a peer; returns whether it replaced one. Durable on return.
    pub fn add(&self, own: &NodeId, peer: Peer) -> Result<bool, PeerError> {
        if peer.id == *own {
            return Err(PeerError::Own(peer.id.to_string()));
        }
        for address in &peer.addresses {
            validate_address(address)?;
        }
        if let Some(name) = &peer.name {
            let taken = self
                .list()?
                .into_iter()
                .any(|p| p.id != peer.id && p.name.as_ref() == Some(name));
            if taken {
                return Err(PeerError::NameTaken(name.clone()));
            }
        }
        let replaced = self
            .peers
            .insert(peer.id.as_bytes(), serde_json::to_vec(&peer)?)?
            .is_some();
        self.refused.remove(peer.id.as_bytes())?;
        self.peers.flush()?;
        Ok(replaced)
    }

    /// `add`; when the name is another peer's, without the name. Returns what was added.
    pub fn add_named_if_free(&self, own: &NodeId, peer: Peer) -> Result<Peer, PeerError> {
        match self.add(own, peer.clone()) {
            Ok(_) => Ok(peer),
            Err(PeerError::NameTaken(_)) => {
                let unnamed = Peer { name: None, ..peer };
                self.add(own, unnamed.clone()).map(|_| unnamed)
            }
            Err(e) => Err(e),
        }
    }

    /// Removes the peer with this id or name.
    pub fn remove(&self, id_or_name: &str) -> Result<Peer, PeerError> {
        let peer = self.find(id_or_name)?;
        self.peers.remove(peer.id.as_bytes())?;
        self.peers.flush()?;
        Ok(peer)
    }

    pub fn find(&self, id_or_name: &str) -> Result<Peer, PeerError> {
        let by_id = id_or_name.parse::<NodeId>().ok();
        self.list()?
            .into_iter()
            .find(|p| Some(p.id) == by_id || p.name.as_deref() == Some(id_or_name))
            .ok_or_else(|| PeerError::Unknown(id_or_name.to_string()))
    }

    pub fn get(&self, id: &NodeId) -> Result<Option<Peer>, PeerError> {
        match self.peers.get(id.as_bytes())? {
            Some(bytes) => Ok(Some(serde_json::from_slice(&bytes)?)),
            None => Ok(None),
        }
    }

    pub fn list(&self) -> Result<Vec<Peer>, PeerError> {
        self.peers
            .iter()
            .map(|item| Ok(serde_json::from_slice(&item?.1)?))
            .collect()
    }

    pub fn record_sync(&self, id: &NodeId, at: u64) -> Result<(), PeerError> {
        if let Some(mut peer) = self.get(id)? {
            peer.last_sync = Some(at);
            self.peers
                .insert(id.as_bytes(), serde_json::to_vec(&peer)?)?;
        }
        Ok(())
    }

    /// Records a refused id as the TLS layer last saw it (its counts are authoritative).
    pub fn record_refused(&self, refused: &Refused) -> Result<(), PeerError> {
        self.refused
            .insert(refused.id.as_bytes(), serde_json::to_vec(refused)?)?;
        Ok(())
    }

    /// Forgets every refused id.
    pub fn clear_refused(&self) -> Result<(), PeerError> {
        self.refused.clear()?;
        self.refused.flush()?;
        Ok(())
    }

    pub fn refused(&self) -> Result<Vec<Refused>, PeerError> {
        self.refused
            .iter()
            .map(|item| Ok(serde_json::from_slice(&item?.1)?))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(seed: &[u8], name: Option<&str>) -> Peer {
        Peer {
            id: NodeId::from_public_key(seed),
            name: name.map(str::to_string),
            addresses: vec!["127.0.0.1:7464".into()],
            access: Access::default_for_peer(),
            last_sync: None,
        }
    }

    #[test]
    fn add_find_remove() {
        let dir = tempfile::tempdir().unwrap();
        let store = PeerStore::open(&sled::open(dir.path()).unwrap()).unwrap();
        let own = NodeId::from_public_key(b"own");
        let nas = peer(b"nas", Some("nas"));
        assert!(!store.add(&own, nas.clone()).unwrap());
        assert!(store.add(&own, nas.clone()).unwrap());
        assert_eq!(store.find("nas").unwrap(), nas);
        assert_eq!(store.find(&nas.id.to_string()).unwrap(), nas);
        assert!(matches!(
            store.add(&own, peer(b"other", Some("nas"))),
            Err(PeerError::NameTaken(_))
        ));
        assert!(matches!(
            store.add(&own, peer(b"own", None)),
            Err(PeerError::Own(_))
        ));
        store.remove("nas").unwrap();
        assert!(matches!(store.find("nas"), Err(PeerError::Unknown(_))));
    }

    #[test]
    fn addresses_must_have_a_port() {
        assert!(validate_address("nas.local:7464").is_ok());
        assert!(validate_address("[::1]:7464").is_ok());
        for bad in ["nas.local", ":7464", "nas:0", "nas:http"] {
            assert!(validate_address(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn refused_ids_are_kept_until_added() {
        let dir = tempfile::tempdir().unwrap();
        let store = PeerStore::open(&sled::open(dir.path()).unwrap()).unwrap();
        let stranger = peer(b"stranger", None);
        for attempts in 1..=2 {
            let seen = Refused {
                id: stranger.id,
                address: "127.0.0.1:9".into(),
                last_seen: attempts,
                attempts,
            };
            store.record_refused(&seen).unwrap();
        }
        assert_eq!(store.refused().unwrap()[0].attempts, 2);
        store
            .add(&NodeId::from_public_key(b"own"), stranger)
            .unwrap();
        assert!(store.refused().unwrap().is_empty());
    }
}
