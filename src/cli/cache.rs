//! `meshd cache`: the files OpenClaw and the reference tools read.

use clap::Subcommand;
use meshd::config::Home;
use meshd::control::CacheWrite;

use super::execute;

#[derive(Debug, Subcommand)]
pub enum CacheCommand {
    /// Rewrite every cache from the replica now; prints {"written","unchanged","removed"}
    Write,
}

pub fn run(home: &Home, command: CacheCommand) -> anyhow::Result<()> {
    match command {
        CacheCommand::Write => {
            // The paths come back because a running daemon writes where its own
            // configuration and `$OPENCLAW_HOME` say.
            let written = execute(home, CacheWrite::default())?;
            let paths = &written.paths;
            eprintln!(
                "caches in {}, {} and {}",
                paths.openclaw_home.display(),
                paths.skills_dir.display(),
                paths.memory_dir.display()
            );
            println!("{}", serde_json::to_string(&written.report)?);
        }
    }
    Ok(())
}
