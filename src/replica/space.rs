//! The free-space reserve: the store refuses writes before its disk is full, never inside
//! sled.
//!
//! sled handles a full disk badly: a batch that fails half way leaves its in-memory log in a
//! state where the next flush can block for good. So before every write batch the free space
//! of the store's file system is read (one `statvfs`), and below the reserve the write is
//! refused with `ReplicaError::ReadOnly`; nothing reaches sled. Reads and sending to peers go
//! on, and writes are accepted again as soon as space is back, since every batch checks anew.

use std::io;
use std::path::{Path, PathBuf};

/// The default reserve: `max(DEFAULT_MIN_FREE_MB MiB, DEFAULT_MIN_FREE_PERCENT %)` of the
/// file system (at most a tenth of it): room for sled's own log and compaction, and for
/// whatever else shares the disk (a NAS's system volume) to keep working.
pub const DEFAULT_MIN_FREE_MB: u64 = 256;
pub const DEFAULT_MIN_FREE_PERCENT: u8 = 5;

const MIB: u64 = 1024 * 1024;
/// The reserve is at most `1 / MAX_SHARE` of the file system.
const MAX_SHARE: u64 = 10;

/// How much free space the store's file system must keep (`[store] min_free_mb`,
/// `min_free_percent`): the larger of the two, but never more than a tenth of the file
/// system, so that a node on a small volume (a container's, a test's tmpfs) still writes
/// until it is nine tenths full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reserve {
    pub min_free_mb: u64,
    pub min_free_percent: u8,
}

impl Default for Reserve {
    fn default() -> Reserve {
        Reserve {
            min_free_mb: DEFAULT_MIN_FREE_MB,
            min_free_percent: DEFAULT_MIN_FREE_PERCENT,
        }
    }
}

/// Free space below the reserve: why the node is read-only.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the disk holding {} has {} MiB free, below the reserve of {} MiB: the node is read-only (it still serves reads and syncs out) until space is freed; the reserve is [store] min_free_mb / min_free_percent", path.display(), free / MIB, reserve / MIB)]
pub struct BelowReserve {
    pub path: PathBuf,
    pub free: u64,
    pub reserve: u64,
}

impl Reserve {
    /// Bytes to keep free on a file system of `total` bytes.
    pub fn bytes(&self, total: u64) -> u64 {
        let share = total / 100 * u64::from(self.min_free_percent.min(100));
        let wanted = self.min_free_mb.saturating_mul(MIB).max(share);
        wanted.min(total / MAX_SHARE)
    }

    /// Whether the file system holding `path` has room for a write. An error reading the free
    /// space is returned as such: the write then goes ahead and sled reports what it finds.
    pub fn check(&self, path: &Path) -> io::Result<Result<(), BelowReserve>> {
        let free = fs2::available_space(path)?;
        let reserve = self.bytes(fs2::total_space(path)?);
        Ok(match free < reserve {
            true => Err(BelowReserve {
                path: path.to_path_buf(),
                free,
                reserve,
            }),
            false => Ok(()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_larger_of_the_two_limits_applies_up_to_a_tenth_of_the_disk() {
        let reserve = Reserve::default();
        assert_eq!(reserve.bytes(4096 * MIB), 256 * MIB);
        assert_eq!(reserve.bytes(100_000 * MIB), 5_000 * MIB);
        // A 20 MiB volume keeps 2 MiB free, not 256 MiB: it would never take a write.
        assert_eq!(reserve.bytes(20 * MIB), 2 * MIB);
        let off = Reserve {
            min_free_mb: 0,
            min_free_percent: 0,
        };
        assert_eq!(off.bytes(u64::MAX), 0);
        let huge = Reserve {
            min_free_mb: u64::MAX,
            min_free_percent: 200,
        };
        assert_eq!(huge.bytes(u64::MAX), u64::MAX / 10);
    }

    #[test]
    fn no_reserve_never_refuses() {
        let dir = tempfile::tempdir().unwrap();
        let none = Reserve {
            min_free_mb: 0,
            min_free_percent: 0,
        };
        assert_eq!(none.check(dir.path()).unwrap(), Ok(()));
    }
}
