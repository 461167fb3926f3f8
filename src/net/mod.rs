//! Node identity and, later, the QUIC endpoint.

pub mod identity;
