//! `meshd backup DIR` and `meshd restore DIR`.

use std::path::PathBuf;

use clap::Args;
use meshd::config::Home;
use meshd::control::{Backup, BackupReport, Restore};

use super::execute;

#[derive(Debug, Args)]
pub struct BackupArgs {
    /// A new (or empty) directory for the backup
    dir: PathBuf,
}

#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// A directory written by `meshd backup`
    dir: PathBuf,
}

pub fn backup(home: &Home, args: BackupArgs) -> anyhow::Result<()> {
    // The daemon may run in another directory: give it an absolute path.
    let dir = std::path::absolute(&args.dir)?;
    let report = execute(home, Backup { dir })?;
    eprintln!("{}", describe("backed up", &report));
    Ok(())
}

pub fn restore(home: &Home, args: RestoreArgs) -> anyhow::Result<()> {
    let dir = std::path::absolute(&args.dir)?;
    let report = execute(home, Restore { dir })?;
    eprintln!("{}", describe("merged back", &report));
    Ok(())
}

fn describe(what: &str, report: &BackupReport) -> String {
    format!(
        "{what} {} documents ({} bytes) and {} peers: {}",
        report.documents,
        report.bytes,
        report.peers,
        report.dir.display()
    )
}
