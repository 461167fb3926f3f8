//! The wire form of the library's reports, which serialize only (in the shape the CLI
//! prints). serde's remote derive builds and reads the real types field by field, so a field
//! added there fails to compile here instead of going missing on the socket.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::{bridge, cache, store};

#[derive(Serialize, Deserialize)]
#[serde(remote = "bridge::Summary")]
pub struct Summary {
    ingested: usize,
    memory: usize,
    skill: usize,
    ignored: usize,
    /// Absent in the replies of a daemon older than the field.
    #[serde(default, rename = "notApplied")]
    not_applied: usize,
}

#[derive(Serialize, Deserialize)]
#[serde(remote = "store::ImportReport")]
pub struct ImportReport {
    memory: usize,
    skills: usize,
    unchanged: usize,
    skipped: usize,
    /// Skipped when the report is printed, but the CLI prints each reason itself.
    reasons: Vec<String>,
    /// Absent in the replies of a daemon older than the field.
    #[serde(default)]
    not_applied: Vec<String>,
}

#[derive(Serialize, Deserialize)]
#[serde(remote = "store::ExportReport")]
pub struct ExportReport {
    memory: usize,
    skills: usize,
    removed: usize,
}

#[derive(Serialize, Deserialize)]
#[serde(remote = "cache::CacheReport")]
pub struct CacheReport {
    written: usize,
    unchanged: usize,
    removed: usize,
}

#[derive(Serialize, Deserialize)]
#[serde(remote = "cache::CachePaths")]
pub struct CachePaths {
    openclaw_home: PathBuf,
    skills_dir: PathBuf,
    memory_dir: PathBuf,
}
