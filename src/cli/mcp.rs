//! `meshd mcp`: the MCP server on stdio, running each tool call as a CLI command would.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use meshd::config::Home;
use meshd::control::{CommandError, Reply, Request};

use super::execute_anywhere;

pub fn serve(home: &Home) -> anyhow::Result<()> {
    home.require_initialised()?;
    crate::allocator::for_long_running();
    let node = Arc::new(CliNode { home: home.clone() });
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    let served = runtime.block_on(meshd::mcp::serve_stdio(node));
    // A command still running when the client left may be a write: let it finish, but do not
    // wait for good on a blocking read of a stdin that is not a pipe.
    runtime.shutdown_timeout(LAST_COMMAND_GRACE);
    Ok(served?)
}

/// Longer than a command waits for a busy store (`STORE_BUSY_WAIT`) plus the command itself.
const LAST_COMMAND_GRACE: Duration = Duration::from_secs(15);

/// Each call goes to the daemon, or to the store opened for that call alone: the server
/// never holds the store between calls.
struct CliNode {
    home: Home,
}

impl meshd::mcp::Node for CliNode {
    fn execute(&self, request: Request) -> Reply {
        execute_anywhere(&self.home, request)
            .unwrap_or_else(|error| Err(CommandError::Failed(format!("{error:#}"))))
    }
}
