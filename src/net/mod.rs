//! Node identity, the QUIC transport (TLS 1.3 with pinned node ids), and the per-peer links
//! that drive sync sessions over it.

pub mod close;
pub mod discovery;
pub mod endpoint;
pub mod error;
pub mod identity;
pub mod join;
pub mod link;
pub mod mesh;
pub mod pins;
mod push_pace;
pub mod tls;

pub use close::CloseCode;
pub use error::NetError;
pub use pins::{PeerPins, Refused};

/// The wall clock in Unix seconds, for the records operators read (refusals, failures).
pub(crate) fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
