//! `mesh-memory.json`, the Phase 1 cache: one JSON object holding every entry, so any change
//! to memory rewrites it whole. It is streamed into its temporary file (never built as one
//! string), read from the replica a part of a scope at a time (never a scope or the whole
//! store copied under the lock), and, under a stream of writes, rewritten at most once per
//! interval that grows with its size and with what its last write cost (`pace`).

use super::entries::EntryList;
use super::files::{Content, Layout, Placed, Placer, Rendered};
use super::parts::Labelled;
use super::render::{self, MEMORY_JSON};
use super::{CacheError, CachePaths};
use crate::replica::SharedReplica;

/// Streams the file from the replica (`parts::Labelled`: a part of a scope under the lock
/// at a time) and puts it where the mesh wants it, with the digests of its entries (for
/// reading it back: `entries`) when it is at its own name; returns its length.
pub fn write_from(
    paths: &CachePaths,
    placer: &mut Placer<'_>,
    replica: &SharedReplica,
    own: &str,
    part: usize,
) -> Result<u64, CacheError> {
    let home = &paths.openclaw_home;
    let digests_path = placer.manifest.entries_path(home);
    let digests_error = |source: std::io::Error| CacheError::io(&digests_path, source);
    let mut digests = EntryList::create(&digests_path).map_err(digests_error)?;
    let entries = Labelled::new(replica, own, part);
    let (rendered, ()) = Rendered::write(home, MEMORY_JSON, |out| {
        render::write_reference_memory(out, entries, &mut |label, value| digests.add(label, value))
    })
    .map_err(|error| error.for_file(&paths.memory_json()))?;
    let placed = placer.update(
        home,
        Layout::Files,
        MEMORY_JSON,
        Some(Content::Rendered(&rendered)),
    )?;
    // A copy beside someone else's file is not what read-back compares entries against.
    if let Some(Placed::Own(_)) = placed {
        digests.install().map_err(digests_error)?;
    }
    Ok(rendered.len())
}
