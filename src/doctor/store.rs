//! The store: it opens, holds everything its integrity record says it acknowledged, and
//! every document in it loads.

use serde::{Deserialize, Serialize};

use super::{Check, NodeFacts};
use crate::model::hlc::rfc3339_seconds;

const CHECK: &str = "store";
const REPAIR: &str = "stop meshd, then meshd run --repair (docs/operations.md, Damaged store)";

/// The store against its integrity record, checked now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IntegrityFact {
    /// No record yet: a new store, or one from before records were kept.
    NoRecord,
    /// Every recorded head is held; the record was written then (Unix milliseconds).
    Holds { written_at_ms: u64 },
    /// The store lacks what the record lists, or the record cannot be read.
    Fails(String),
}

/// The latest stamp in the store, and whose it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewestStamp {
    /// `mesh:deploy.window`, `skill triage`.
    pub label: String,
    pub unix_ms: u64,
}

/// Why the store could not be read at all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreError {
    pub kind: StoreErrorKind,
    pub message: String,
    /// The store's directory, for the fixes.
    pub path: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreErrorKind {
    /// Another process holds sled's lock and no daemon answers on the control socket.
    Locked,
    /// sled or Automerge find it corrupt, or it lacks acknowledged writes.
    Damaged,
    /// The disk is too full to open it.
    NoRoom,
    /// A daemon accepted the question on control.sock but did not answer in time.
    Unanswered,
    /// Anything else (permissions, an unreadable configuration): the message says.
    Other,
}

pub fn check(node: &Result<NodeFacts, StoreError>) -> Check {
    let node = match node {
        Ok(node) => node,
        Err(error) => return cannot_open(error),
    };
    if let IntegrityFact::Fails(reason) = &node.integrity {
        return Check::fail(CHECK, reason.clone(), REPAIR);
    }
    if !node.unloadable.is_empty() {
        return Check::fail(
            CHECK,
            format!(
                "{} of {} documents do not load: {}",
                node.unloadable.len(),
                node.documents,
                node.unloadable.join("; ")
            ),
            REPAIR,
        );
    }
    if let Some(failure) = &node.write_failure {
        return Check::fail(
            CHECK,
            failure.clone(),
            "free disk space if it is full, then restart meshd",
        );
    }
    let summary = summary(node);
    match &node.repair {
        Some(repair) if repair.starts_with("complete") => Check::warn(
            CHECK,
            format!("{summary}; repair {repair}"),
            "restart meshd without --repair",
        ),
        Some(repair) => Check::warn(
            CHECK,
            format!("{summary}; repair under way, {repair}"),
            "keep meshd run --repair running while the peers send back what is missing \
             (meshd status shows it)",
        ),
        None => Check::ok(CHECK, summary),
    }
}

fn summary(node: &NodeFacts) -> String {
    let opened = if node.running {
        "open in the running daemon"
    } else {
        "opens"
    };
    let record = match &node.integrity {
        IntegrityFact::Holds { written_at_ms } => format!(
            "it holds everything its integrity record of {} lists",
            rfc3339_seconds(written_at_ms / 1000)
        ),
        _ => "no integrity record yet (written after the first write)".to_string(),
    };
    format!("{opened}, {} documents load, {record}", node.documents)
}

fn cannot_open(error: &StoreError) -> Check {
    let fix = match error.kind {
        StoreErrorKind::Locked => format!(
            "find the process holding it (lsof {}/db) and stop it; a daemon that does not \
             answer on control.sock is stuck: stop it (kill PID), then start meshd again",
            error.path
        ),
        StoreErrorKind::Damaged => REPAIR.to_string(),
        StoreErrorKind::NoRoom => "free disk space, then start meshd again".to_string(),
        StoreErrorKind::Unanswered => "restart meshd (sudo systemctl restart meshd, or \
            launchctl kickstart -k gui/$(id -u)/com.openclaw.meshd)"
            .to_string(),
        StoreErrorKind::Other => "act on the message above".to_string(),
    };
    Check::fail(CHECK, format!("cannot be read: {}", error.message), fix)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doctor::Status;

    fn node() -> NodeFacts {
        crate::doctor::sample_node()
    }

    #[test]
    fn a_store_that_holds_its_record_is_ok() {
        let check = check(&Ok(node()));
        assert_eq!(check.status, Status::Ok);
        assert!(check.finding.contains("3 documents load"), "{check:?}");
        assert!(check.finding.contains("2026-11-22T05:39:18Z"), "{check:?}");
    }

    #[test]
    fn lost_writes_and_unloadable_documents_fail_with_the_repair() {
        let mut lost = node();
        lost.integrity = IntegrityFact::Fails("document mesh lacks 1 of its recorded heads".into());
        let check = super::check(&Ok(lost));
        assert_eq!(check.status, Status::Fail);
        assert!(check.fix.unwrap().contains("meshd run --repair"));

        let mut broken = node();
        broken.unloadable = vec!["skills: bad snapshot".into()];
        let check = super::check(&Ok(broken));
        assert_eq!(check.status, Status::Fail);
        assert!(
            check
                .finding
                .contains("1 of 3 documents do not load: skills"),
            "{check:?}"
        );
    }

    #[test]
    fn a_failed_write_fails_until_a_restart() {
        let mut failed = node();
        failed.write_failure = Some("the store failed a write earlier".into());
        let check = check(&Ok(failed));
        assert_eq!(check.status, Status::Fail);
        assert!(check.fix.unwrap().contains("restart meshd"));
    }

    #[test]
    fn a_locked_store_without_a_daemon_fails_with_how_to_find_the_holder() {
        let error = StoreError {
            kind: StoreErrorKind::Locked,
            message: "the store at /h/store is in use by another meshd".into(),
            path: "/h/store".into(),
        };
        let check = check(&Err(error));
        assert_eq!(check.status, Status::Fail);
        assert!(
            check.finding.contains("in use by another meshd"),
            "{check:?}"
        );
        assert!(check.fix.unwrap().contains("lsof /h/store/db"));
    }

    #[test]
    fn a_daemon_that_does_not_answer_fails_with_a_restart() {
        let error = StoreError {
            kind: StoreErrorKind::Unanswered,
            message: "no answer within 60 s".into(),
            path: "/h/store".into(),
        };
        let check = check(&Err(error));
        assert_eq!(check.status, Status::Fail);
        assert!(check.fix.unwrap().starts_with("restart meshd"));
    }

    #[test]
    fn a_repair_under_way_warns() {
        let mut repairing = node();
        repairing.repair = Some("still missing: document mesh".into());
        assert_eq!(check(&Ok(repairing)).status, Status::Warn);
    }
}
