//! Repair: opening a damaged store from what is intact, and knowing what it still lacks.
//!
//! `meshd run --repair` opens the store with `Replica::open_for_repair`: a store sled cannot
//! open is moved aside (`store.damaged-<unix ms>`, kept for the operator) and an empty one
//! begins; a document Automerge refuses is left out. The integrity record of before the
//! repair is kept as `store.integrity.before-repair`, so that a repair interrupted and
//! started again still knows its goal. `repair_status` compares the store with it: what is
//! still missing, until nothing is and the repair is complete (the copy is then removed).
//! Meanwhile the daemon accepts this node's own node scope from its peers
//! (`MeshConfig::accept_own_scope`), the one scope a node otherwise takes from no one.

use std::fs;
use std::path::{Path, PathBuf};

use super::integrity::{self, Record};
use super::storage::Storage;
use super::{system_clock, Damage, Replica, ReplicaError, Result};

/// A repair under way.
pub(super) struct Repair {
    /// What the store had acknowledged before the repair began.
    before: Record,
    complete: bool,
}

fn before_repair_path(store: &Path) -> PathBuf {
    let mut name = integrity::path_for(store).into_os_string();
    name.push(".before-repair");
    PathBuf::from(name)
}

impl Replica {
    /// Opens the store at `path` from whatever is intact, for `meshd run --repair`.
    pub fn open_for_repair(path: &Path, key: crate::trust::NodeKey) -> Result<Replica> {
        let storage = match Storage::open(path) {
            Ok(storage) => storage,
            Err(error @ (ReplicaError::Damaged { .. } | ReplicaError::Corrupt(_))) => {
                let aside = move_aside(path)?;
                tracing::warn!(%error, aside = %aside.display(),
                    "the store cannot be opened; it is kept aside and an empty one begins");
                Storage::open(path)?
            }
            Err(error) => return Err(error),
        };
        let mut replica = Replica::new(storage, path, key, Box::new(system_clock));
        replica.load_everything(Damage::Skip)?;
        replica.rebuild_index()?;
        let before = replica.record_before_repair()?;
        replica.repair = Some(Repair {
            before,
            complete: false,
        });
        Ok(replica)
    }

    /// The record the repair works towards: kept from an earlier start of it, or the store's
    /// record as the repair begins. A record that cannot be read counts as empty.
    fn record_before_repair(&self) -> Result<Record> {
        let kept = before_repair_path(&self.store_path);
        if !kept.exists() && self.integrity.path().exists() {
            fs::copy(self.integrity.path(), &kept).map_err(|e| ReplicaError::Damaged {
                path: kept.clone(),
                detail: format!("cannot keep the integrity record for the repair ({e})"),
            })?;
        }
        match integrity::load(&kept) {
            Ok(record) => Ok(record.unwrap_or_default()),
            Err(error) => {
                tracing::warn!(%error, "the integrity record cannot be read; repairing without it");
                Ok(Record::default())
            }
        }
    }

    /// During a repair, what the store still lacks against its record of before, or that it
    /// lacks nothing; `None` when no repair is under way.
    pub fn repair_status(&mut self) -> Option<String> {
        let before = self.repair.as_ref()?.before.clone();
        let missing = self.missing_for_repair(&before);
        Some(match missing.is_empty() {
            true => "complete: the store holds everything it had acknowledged; restart meshd without --repair".to_string(),
            false => format!("still missing: {}", missing.join("; ")),
        })
    }

    /// Marks the repair complete once nothing is missing: logged once, and the kept record
    /// of before is removed.
    pub(super) fn check_repair(&mut self) {
        let Some(repair) = &self.repair else {
            return;
        };
        if repair.complete {
            return;
        }
        let before = repair.before.clone();
        if !self.missing_for_repair(&before).is_empty() {
            return;
        }
        tracing::info!("repair complete: the store holds everything it had acknowledged; restart meshd without --repair");
        let _ = fs::remove_file(before_repair_path(&self.store_path));
        if let Some(repair) = &mut self.repair {
            repair.complete = true;
        }
    }

    /// What is missing against `before`; a document that cannot be loaded counts as missing.
    fn missing_for_repair(&mut self, before: &Record) -> Vec<String> {
        let mut missing = Vec::new();
        for (name, recorded) in &before.docs {
            match self.shortfall(name, recorded) {
                Ok(None) => {}
                Ok(Some(shortfall)) => missing.push(shortfall.to_string()),
                Err(error) => missing.push(format!("{name}: {error}")),
            }
        }
        missing
    }
}

/// Moves a store sled cannot open out of the way, keeping it for the operator.
fn move_aside(path: &Path) -> Result<PathBuf> {
    let mut name = path.as_os_str().to_os_string();
    name.push(format!(".damaged-{}", system_clock()));
    let aside = PathBuf::from(name);
    fs::rename(path, &aside).map_err(|e| ReplicaError::Damaged {
        path: path.to_path_buf(),
        detail: format!("cannot move it aside to {} ({e})", aside.display()),
    })?;
    Ok(aside)
}
