//! meshd: the sync node that lets independent OpenClaw gateways share memory and skills.
//!
//! Arrows point one way: `cli`/`daemon` → `replica`, `sync`, `net`, `bridge`, `store`, `cache`
//! → `model`; `replica` → `sync` too, as the store behind its `SyncStore` trait. See
//! docs/architecture.md.

pub mod api;
pub mod bridge;
pub mod cache;
pub mod config;
pub mod control;
pub mod daemon;
pub mod demo;
pub mod doctor;
pub mod follow;
pub mod invite;
pub mod mcp;
pub mod metrics;
pub mod model;
pub mod net;
pub mod openclaw;
pub mod peers;
pub mod replica;
pub mod search;
pub mod store;
pub mod sync;
pub mod trust;
pub mod views;
pub mod watch;
