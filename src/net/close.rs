//! Why this node closes a QUIC connection: the application close codes peers see.

use quinn::Connection;

/// The application close codes of meshd's QUIC connections. The numbers are on the wire:
/// never renumber one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum CloseCode {
    /// The node is stopping.
    Shutdown = 0,
    /// The link failed: a malformed frame, a protocol or store error (the reason says which).
    LinkFailed = 1,
    /// The other side is not (or no longer) a configured peer.
    NotAPeer = 2,
    /// A second connection from a simultaneous dial; the other one is kept.
    Duplicate = 3,
    /// The peer reconnected; this older connection gives way.
    Replaced = 4,
    /// A join exchange (`net::join`) is over, whatever its outcome.
    Joined = 5,
    /// Too many join exchanges at once; the joiner may try again.
    Busy = 6,
}

impl CloseCode {
    /// Closes `connection` with this code and a human-readable reason.
    pub fn close(self, connection: &Connection, reason: &str) {
        connection.close((self as u32).into(), reason.as_bytes());
    }

    /// Closes every connection of `endpoint` with this code.
    pub fn close_endpoint(self, endpoint: &quinn::Endpoint, reason: &str) {
        endpoint.close((self as u32).into(), reason.as_bytes());
    }
}
