//! What can go wrong between two nodes, worded for the operator who has to fix it.

use std::net::SocketAddr;

use super::close::CloseCode;
use crate::model::NodeId;

/// Longest peer-supplied close reason we repeat, in characters.
const MAX_REASON: usize = 200;

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("this node's key or certificate cannot be used for TLS ({0}); check the files `meshd init` wrote")]
    Identity(String),
    #[error("cannot set up TLS for QUIC: {0}")]
    Tls(String),
    #[error("cannot listen on {addr}: {source}; is another meshd running there? change `listen` in meshd.toml")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("will not dial {addr}: node id {id} is not in the peer list; add it with `meshd peers add {id} HOST:PORT` first")]
    NotPinned { addr: SocketAddr, id: NodeId },
    #[error("peer at {addr} presented node id {presented}, expected {expected}: check the id given to `meshd peers add` and the address it was given for that peer")]
    WrongPeer {
        addr: SocketAddr,
        expected: NodeId,
        presented: NodeId,
    },
    #[error("refused node id {id} from {addr}: it is not in the peer list; if you trust it, pair with it: `meshd invite` here and `meshd join TICKET` there, or `meshd peers add {id} HOST:PORT`")]
    NotAllowed { addr: SocketAddr, id: NodeId },
    #[error("peer at {addr} refused the TLS handshake ({reason}); if it refused our node id, run `meshd peers add {ours} HOST:PORT` on that node")]
    RefusedByPeer {
        addr: SocketAddr,
        ours: NodeId,
        reason: String,
    },
    #[error("peer at {addr} gave no usable certificate, so its node id is unknown")]
    NoPeerIdentity { addr: SocketAddr },
    #[error("cannot dial {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        source: quinn::ConnectError,
    },
    #[error("connection with {addr} failed: {source}")]
    Connection {
        addr: SocketAddr,
        source: quinn::ConnectionError,
    },
}

impl NetError {
    /// Classifies a connection that ended: a TLS alert from the peer (QUIC crypto error codes
    /// 0x100–0x1ff) during or just after the handshake means it refused our certificate.
    pub fn from_connection(addr: SocketAddr, ours: NodeId, source: quinn::ConnectionError) -> Self {
        match &source {
            quinn::ConnectionError::ConnectionClosed(close)
                if (0x100..0x200).contains(&u64::from(close.error_code)) =>
            {
                NetError::RefusedByPeer {
                    addr,
                    ours,
                    reason: printable(&close.reason),
                }
            }
            _ => NetError::Connection { addr, source },
        }
    }
}

impl NetError {
    /// Whether the peer closed this connection only because another one between the two
    /// nodes won (a simultaneous dial, or a reconnect): nothing is wrong with the address.
    pub fn is_dial_race(&self) -> bool {
        matches!(self, NetError::Connection {
            source: quinn::ConnectionError::ApplicationClosed(close),
            ..
        } if [CloseCode::Duplicate, CloseCode::Replaced]
            .iter()
            .any(|code| close.error_code == (*code as u32).into()))
    }

    /// Whether the dialing side gave the connection up before the handshake ended: its
    /// process stopping (an application close during the handshake reaches this side as
    /// QUIC's APPLICATION_ERROR), or its own shutdown close. The dialer knows why and says so
    /// in its own log; this side has nothing to act on.
    pub fn is_given_up_by_dialer(&self) -> bool {
        match self {
            NetError::Connection { source, .. } => match source {
                quinn::ConnectionError::ConnectionClosed(close) => {
                    close.error_code == quinn::TransportErrorCode::APPLICATION_ERROR
                }
                quinn::ConnectionError::ApplicationClosed(close) => {
                    close.error_code == (CloseCode::Shutdown as u32).into()
                }
                _ => false,
            },
            _ => false,
        }
    }

    /// Whether a dial failed because of the address itself (another node there, nothing
    /// answering, the peer not knowing this node), rather than for a passing reason.
    pub fn is_about_the_address(&self) -> bool {
        matches!(
            self,
            NetError::RefusedByPeer { .. }
                | NetError::WrongPeer { .. }
                | NetError::Connection {
                    source: quinn::ConnectionError::TimedOut,
                    ..
                }
        )
    }

    /// Why a dial failed, in the words `meshd status` shows under the peer: what it means and
    /// what to check.
    pub fn dial_reason(&self) -> String {
        match self {
            NetError::RefusedByPeer { ours, .. } => format!(
                "refused by the peer: this node is not in its peer list (pair again with \
                 `meshd invite` here and `meshd join` there, or run `meshd peers add {ours} \
                 HOST:PORT` on it)"
            ),
            NetError::WrongPeer { presented, .. } => format!(
                "another node answered at that address ({presented}): the address is wrong, or \
                 that host runs a different node now"
            ),
            NetError::Connection {
                source: quinn::ConnectionError::TimedOut,
                ..
            } => TIMED_OUT.to_string(),
            NetError::Connection {
                source: quinn::ConnectionError::ApplicationClosed(close),
                ..
            } => format!("closed by the peer: {}", printable(&close.reason)),
            other => other.to_string(),
        }
    }
}

/// What a dial that nothing answered means.
pub const TIMED_OUT: &str = "timed out: nothing answered (wrong address or port, the host is \
                             down, or a firewall drops UDP)";

/// The peer chooses these bytes: keep them to one printable line so they cannot forge log lines
/// or send terminal escapes to the operator.
fn printable(reason: &[u8]) -> String {
    String::from_utf8_lossy(reason)
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(MAX_REASON)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_reasons_are_one_bounded_printable_line() {
        let hostile = format!("bad\n\x1b[31mforged log line{}", "x".repeat(500));
        let shown = printable(hostile.as_bytes());
        assert!(!shown.chars().any(char::is_control));
        assert_eq!(shown.chars().count(), MAX_REASON);
        assert!(shown.starts_with("bad  [31mforged"));
    }

    #[test]
    fn a_dialer_that_stops_mid_handshake_is_told_from_a_refusal() {
        let addr: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let closed = |error_code| NetError::Connection {
            addr,
            source: quinn::ConnectionError::ConnectionClosed(quinn::ConnectionClose {
                error_code,
                frame_type: None,
                reason: Default::default(),
            }),
        };
        assert!(closed(quinn::TransportErrorCode::APPLICATION_ERROR).is_given_up_by_dialer());
        assert!(!closed(quinn::TransportErrorCode::PROTOCOL_VIOLATION).is_given_up_by_dialer());
        let timed_out = NetError::Connection {
            addr,
            source: quinn::ConnectionError::TimedOut,
        };
        assert!(!timed_out.is_given_up_by_dialer());
    }
}
