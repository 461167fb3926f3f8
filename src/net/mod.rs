//! Node identity and the QUIC transport: TLS 1.3 with pinned node ids, and the endpoint.

pub mod endpoint;
pub mod error;
pub mod identity;
pub mod pins;
pub mod tls;

pub use error::NetError;
pub use pins::{PeerPins, Refused};
