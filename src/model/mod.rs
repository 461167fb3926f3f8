//! The vocabulary every other module speaks: scopes, node ids, clocks, entries and the
//! validation and secret rules every write must pass.

pub mod access;
pub mod authorship;
pub mod entry;
pub mod hlc;
pub mod import_order;
pub mod node_id;
pub mod scope;
pub mod secret;
pub mod validate;

pub use authorship::{Authorship, Claim, Via};
pub use entry::{MemoryEntry, Skill};
pub use hlc::{Hlc, Stamp};
pub use node_id::NodeId;
pub use scope::{DocId, Scope};
