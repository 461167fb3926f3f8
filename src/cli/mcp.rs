//! `meshd mcp`: the MCP server on stdio, running each tool call as a CLI command would.

use std::sync::Arc;

use anyhow::Context;
use meshd::config::Home;
use meshd::control::{CommandError, Reply, Request};

use super::execute_anywhere;

pub fn serve(home: &Home) -> anyhow::Result<()> {
    home.require_initialised()?;
    let node = Arc::new(CliNode { home: home.clone() });
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    runtime.block_on(meshd::mcp::serve_stdio(node))?;
    Ok(())
}

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
