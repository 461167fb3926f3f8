//! Free space on the store's disk against the reserve (`replica::space`): below it the node
//! is read-only; below twice it, that is near.

use std::path::PathBuf;

use super::{mib, Check};
use crate::replica::space::Reserve;

const CHECK: &str = "free space";
const FREE: &str = "free space on that disk (or lower [store] min_free_mb / min_free_percent \
                    in meshd.toml)";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpaceFacts {
    /// The store's directory.
    pub path: PathBuf,
    pub free: u64,
    pub total: u64,
    pub reserve: Reserve,
}

pub fn check(facts: &Result<SpaceFacts, String>) -> Check {
    let facts = match facts {
        Ok(facts) => facts,
        Err(error) => {
            return Check::warn(
                CHECK,
                format!("cannot read the free space of the store's disk: {error}"),
                "check that the store's directory exists and is readable",
            )
        }
    };
    let reserve = facts.reserve.bytes(facts.total);
    let (free, shown) = (facts.free, facts.path.display());
    if reserve == 0 {
        return Check::warn(
            CHECK,
            format!(
                "{} free on the disk holding {shown}, and the reserve is off: a full disk \
                 can fail a write inside the store's log",
                mib(free)
            ),
            "set [store] min_free_mb = 256 in meshd.toml, then restart meshd",
        );
    }
    if free < reserve {
        return Check::fail(
            CHECK,
            format!(
                "{} free on the disk holding {shown}, below the reserve of {}: the node is \
                 read-only until space is freed",
                mib(free),
                mib(reserve)
            ),
            FREE,
        );
    }
    if free / 2 < reserve {
        return Check::warn(
            CHECK,
            format!(
                "{} free on the disk holding {shown}, under twice the reserve of {}: below \
                 it the node turns read-only",
                mib(free),
                mib(reserve)
            ),
            FREE,
        );
    }
    Check::ok(
        CHECK,
        format!(
            "{} free on the disk holding {shown} (read-only below {})",
            mib(free),
            mib(reserve)
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doctor::Status;

    const MIB: u64 = 1 << 20;

    fn free(free_mib: u64) -> Result<SpaceFacts, String> {
        Ok(SpaceFacts {
            path: PathBuf::from("/h/store"),
            free: free_mib * MIB,
            total: 100_000 * MIB,
            reserve: Reserve::default(),
        })
    }

    #[test]
    fn the_reserve_and_twice_it_are_the_thresholds() {
        // The default reserve on 100 000 MiB is 5 %: 5000 MiB.
        assert_eq!(check(&free(20_000)).status, Status::Ok);
        assert_eq!(check(&free(10_000)).status, Status::Ok);
        assert_eq!(check(&free(9_999)).status, Status::Warn);
        assert_eq!(check(&free(5_000)).status, Status::Warn);
        let below = check(&free(4_999));
        assert_eq!(below.status, Status::Fail);
        assert!(below.finding.contains("4999 MiB free"), "{below:?}");
        assert!(below.finding.contains("reserve of 5000 MiB"), "{below:?}");
        assert!(below.finding.contains("read-only"), "{below:?}");
        assert!(below.fix.unwrap().contains("free space"));
    }

    #[test]
    fn a_reserve_turned_off_warns() {
        let mut facts = free(1).unwrap();
        facts.reserve = Reserve {
            min_free_mb: 0,
            min_free_percent: 0,
        };
        let check = check(&Ok(facts));
        assert_eq!(check.status, Status::Warn);
        assert!(check.fix.unwrap().contains("min_free_mb"));
    }

    #[test]
    fn an_unreadable_disk_warns() {
        assert_eq!(check(&Err("gone".into())).status, Status::Warn);
    }
}
