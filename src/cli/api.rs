//! `meshd api`: the local HTTP API in the foreground, for a node whose daemon is not running
//! (`meshd run` serves the API itself).

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Subcommand;
use meshd::api::{self, ApiState};
use meshd::cache::CacheFiles;
use meshd::config::{self, Home};
use meshd::replica::SharedReplica;
use meshd::views::{ViewWriter, Views};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{is_daemon_running, open_replica, openclaw_home_env};

#[derive(Debug, Subcommand)]
pub enum ApiCommand {
    /// Serve the API over this node's store until Ctrl-C; caches and the mirror follow writes
    Serve {
        /// HOST:PORT [default: [api] listen, 127.0.0.1:4078]
        #[arg(long, value_name = "HOST:PORT")]
        listen: Option<String>,
    },
}

pub fn run(home: &Home, command: ApiCommand) -> anyhow::Result<()> {
    let ApiCommand::Serve { listen } = command;
    crate::allocator::for_long_running();
    let config = home.load_config()?;
    // The daemon holds the store, so this process could not open it anyway; say why.
    if is_daemon_running(home) {
        anyhow::bail!(if config.api.enabled {
            "`meshd run` is running for this node and already serves the local API \
             ([api] listen in meshd.toml); use it, or stop the daemon first"
        } else {
            "`meshd run` is running for this node and holds its store; set [api] enabled = true \
             in meshd.toml and restart it to have it serve the local API"
        });
    }
    let settings = api::node_settings(home, &config.api)?;
    let addr = config::parse_listen(listen.as_deref().unwrap_or(&config.api.listen))?;
    api::check_bind(addr, &settings)?;
    let (replica, identity) = open_replica(home)?;
    let bridge = Arc::new(config.bridge.bridge_keys(&identity.signing_key()?));
    let paths = config.cache.paths(openclaw_home_env());
    let cache = Arc::new(CacheFiles::new(paths, home.cache_manifest_path()));
    let views = Views::from_config(&config, cache);
    let debounce = Duration::from_millis(config.cache.debounce_ms);
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let shutdown =
            meshd::daemon::shutdown_signal().context("cannot take over SIGINT and SIGTERM")?;
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr}"))?;
        eprintln!("meshd API listening on http://{}", listener.local_addr()?);
        let replica = SharedReplica::new(replica);
        let (tasks, stop) = (TaskTracker::new(), CancellationToken::new());
        let writer = ViewWriter::spawn(replica.clone(), views, debounce, &tasks, stop.clone());
        // The views start from the store as it is, then follow every write.
        writer.changed();
        let hook = writer.clone();
        let state = ApiState::new(replica.clone(), settings)
            .with_bridge(bridge)
            .on_change(move || hook.changed());
        api::serve(listener, state, shutdown).await?;
        stop.cancel();
        tasks.close();
        tasks.wait().await;
        writer.flush().await;
        replica.run(|replica| replica.flush()).await??;
        anyhow::Ok(())
    })?;
    // Every task, and with them the last handle on the store, goes with the runtime.
    drop(runtime);
    super::save_page_table(&home.store_path());
    Ok(())
}
