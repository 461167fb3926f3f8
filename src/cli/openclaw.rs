//! `meshd openclaw`: wiring meshd into OpenClaw's own configuration.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Args, Subcommand};
use meshd::cache::CachePaths;
use meshd::config::{default_openclaw_home, Config, Home};
use meshd::openclaw::{self, Outcome, SetupReport, Wiring};

use super::openclaw_home_env;

#[derive(Debug, Subcommand)]
pub enum OpenclawCommand {
    /// Add meshd's MCP server, skills folder and memory folder to openclaw.json (JSON5;
    /// comments and formatting kept, a backup written first); running it again changes nothing
    Setup(SetupArgs),
}

#[derive(Debug, Args)]
pub struct SetupArgs {
    /// OpenClaw's home, the directory holding openclaw.json [default: $OPENCLAW_HOME, else ~/.openclaw]
    #[arg(long, value_name = "DIR")]
    openclaw_home: Option<PathBuf>,
    /// Print the change as a unified diff and write nothing (no backup either)
    #[arg(long)]
    dry_run: bool,
}

pub fn run(home: &Home, command: OpenclawCommand) -> anyhow::Result<()> {
    match command {
        OpenclawCommand::Setup(args) => setup(home, args),
    }
}

fn setup(home: &Home, args: SetupArgs) -> anyhow::Result<()> {
    // The entry names the node's home, so there must be a node there.
    let config = home.load_config()?;
    let requested = args
        .openclaw_home
        .or_else(openclaw_home_env)
        .unwrap_or_else(default_openclaw_home);
    let openclaw_home = openclaw::resolve_openclaw_home(&requested)?;
    let cache = config.cache.paths(Some(openclaw_home.clone()));
    let meshd = std::env::current_exe().context("cannot find the meshd executable's path")?;
    let node_home = std::fs::canonicalize(&home.dir)
        .with_context(|| format!("cannot resolve the node home {}", home.dir.display()))?;
    let wiring = Wiring::new(&meshd, &node_home, &cache)?;
    let report = openclaw::setup(&openclaw_home, &wiring, args.dry_run)?;
    print_report(&report);
    warn_if_the_daemon_writes_elsewhere(&config, &cache, &openclaw_home);
    Ok(())
}

fn print_report(report: &SetupReport) {
    let path = report.config.display();
    match &report.outcome {
        Outcome::Unchanged => {
            println!("openclaw.json already wired for meshd ({path}): nothing changed");
            return;
        }
        Outcome::DryRun { diff } => {
            print!("{diff}");
            eprintln!("dry run: {path} was not changed");
            return;
        }
        Outcome::Created => println!("created {path} with meshd's wiring:"),
        Outcome::Updated { .. } => println!("wired meshd into {path}:"),
    }
    for change in &report.changes {
        println!("  {change}");
    }
    if let Outcome::Updated { backup } = &report.outcome {
        println!("the previous file is kept as {}", backup.display());
    }
    println!("restart the OpenClaw gateway so that it reads the change");
}

/// `meshd run` writes the caches where meshd.toml and its own `OPENCLAW_HOME` say; when that
/// is not the OpenClaw home just wired, the folders in openclaw.json stay empty.
fn warn_if_the_daemon_writes_elsewhere(config: &Config, wired: &CachePaths, openclaw_home: &Path) {
    let daemon_home = openclaw_home_env().unwrap_or_else(default_openclaw_home);
    // Only for comparing: a home that does not exist yet is compared as written.
    let daemon_home = std::fs::canonicalize(&daemon_home).unwrap_or(daemon_home);
    let daemon = config.cache.paths(Some(daemon_home));
    if (&daemon.skills_dir, &daemon.memory_dir) != (&wired.skills_dir, &wired.memory_dir) {
        eprintln!(
            "note: meshd run, started as this shell starts it, writes its caches to {} and {}; \
             set OPENCLAW_HOME={} for it, or `openclaw_home` under [cache] in meshd.toml",
            daemon.skills_dir.display(),
            daemon.memory_dir.display(),
            openclaw_home.display()
        );
    }
}
