//! `meshd cache`: the files OpenClaw and the reference tools read.

use clap::Subcommand;
use meshd::cache;
use meshd::config::Home;

use super::{open_replica, openclaw_home_env};

#[derive(Debug, Subcommand)]
pub enum CacheCommand {
    /// Rewrite every cache from the replica now; prints {"written","unchanged","removed"}
    Write,
}

pub fn run(home: &Home, command: CacheCommand) -> anyhow::Result<()> {
    let config = home.load_config()?;
    let (replica, _) = open_replica(home)?;
    match command {
        CacheCommand::Write => {
            let paths = config.cache.paths(openclaw_home_env());
            let report = cache::write_all(&replica, &paths)?;
            eprintln!(
                "caches in {}, {} and {}",
                paths.openclaw_home.display(),
                paths.skills_dir.display(),
                paths.memory_dir.display()
            );
            println!("{}", serde_json::to_string(&report)?);
        }
    }
    Ok(())
}
