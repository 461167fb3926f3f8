//! The sync protocol as a pure state machine: no sockets, clocks or tokio. The network layer
//! moves frames (`Message::encode` / `Message::decode`) between two `Session`s and acts on the
//! `Outcome` of every call (see `Session` for the call order); each session reads and writes
//! the node's data only through a `SyncStore`, which the replica implements
//! (src/replica/sync_store.rs). This module depends on `model` and `trust` (who made a
//! change, and whether to take it) and nothing else in the crate.
//! `harness` runs sessions over an in-memory wire for tests and benchmarks.
//! docs/protocol.md is the specification.

#![warn(missing_docs)]

mod access;
mod bundle;
pub mod doc_strings;
mod filter;
pub mod harness;
mod linked;
mod message;
mod numbers;
mod outbox;
mod recon;
pub mod sequence;
mod session;
mod store;
mod summary;
pub mod whole;

pub use access::Access;
// `unpack`, `Assembly`, `Unpacked` and `Filter` are what a session does with a peer's bundles and
// filters; they are public so the hostile-input tests and fuzz targets (fuzz/) reach them, and
// `pack` so the adversary proptest can build the bundles a lying relay sends.
pub use bundle::{pack, unpack, Assembly, BundleError, Unpacked, MAX_BUNDLE_RAW, MAX_TRANSFER_RAW};
pub use filter::{Filter, FilterError};
pub use message::{
    body_len, Bundle, DecodeError, DocPart, Have, Heads, Hello, Knowledge, Message, Range, Sync,
    WireSignature, HEADER_LEN, MAX_MESSAGE, PROTOCOL_VERSION, SHORT_HASH,
};
pub use session::{Applied, Config, Outcome, Refusal, Session, SyncError};
pub use store::{StoreError, SyncStore};
pub use summary::{doc_summary, root};
