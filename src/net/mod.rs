//! Node identity, the QUIC transport (TLS 1.3 with pinned node ids), and the per-peer links
//! that drive sync sessions over it.

pub mod close;
pub mod endpoint;
pub mod error;
pub mod identity;
pub mod join;
pub mod link;
pub mod mesh;
pub mod pins;
pub mod tls;

pub use close::CloseCode;
pub use error::NetError;
pub use pins::{PeerPins, Refused};
