//! `meshd mcp`: a Model Context Protocol server on stdio, so an agent reads and writes the
//! mesh's shared memory and skills as tools.
//!
//! It is a thin client like every CLI command: each tool call becomes one control command,
//! which the binary's `Node` runs through the daemon or on the store opened for that call
//! alone. The server never holds the store, so an agent's session may start and stop it
//! freely beside a running daemon. stdout carries only JSON-RPC; logs go to stderr.

mod memory;
mod search;
mod skill;
mod tools;

use std::sync::Arc;

use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, ErrorData,
    Implementation, ListToolsResult, PaginatedRequestParams, ServerCapabilities, ServerConfig,
};
use rmcp::service::{RequestContext, ServerInitializeError};
use rmcp::{RoleServer, ServerHandler, ServiceExt};

use crate::control::{Reply, Request};
use tools::Tool;

/// The node the tools act on. Implemented by the binary over its control-socket client.
pub trait Node: Send + Sync + 'static {
    /// Runs one command on the node and returns its reply. Blocks until the node answers.
    fn execute(&self, request: Request) -> Reply;
}

/// Why the server stopped other than by its client closing stdin.
#[derive(Debug, thiserror::Error)]
pub enum McpError {
    #[error("the MCP tool {0}; this is a bug in meshd, please report it")]
    Tool(String),
    #[error("the MCP client did not start a session ({0}); run meshd mcp from an MCP client, such as an agent's tool configuration")]
    Start(Box<ServerInitializeError>),
    #[error("the MCP session ended abnormally ({0})")]
    Session(tokio::task::JoinError),
}

/// What the server tells the client about itself when a session starts.
const INSTRUCTIONS: &str = "Shared memory and skills of this OpenClaw mesh: what you write \
    here reaches every node of the mesh that may read its scope. Memory entries are JSON values \
    under a scope and a key; skills are named texts. Never store secrets: values that look like \
    credentials are refused.";

/// Serves the tools on stdin/stdout until the client closes stdin.
pub async fn serve_stdio(node: Arc<dyn Node>) -> Result<(), McpError> {
    let server = Server {
        node,
        tools: Arc::new(tools::all().map_err(McpError::Tool)?),
    };
    // Non-blocking reads when stdin is a pipe, as MCP clients start servers: a blocking read
    // of stdin could not be cancelled when the session ends while stdin stays open.
    let running = server
        .serve(rmcp::transport::stdio_pipes())
        .await
        .map_err(|e| McpError::Start(Box::new(e)))?;
    running.waiting().await.map_err(McpError::Session)?;
    Ok(())
}

#[derive(Clone)]
struct Server {
    node: Arc<dyn Node>,
    tools: Arc<Vec<Tool>>,
}

impl ServerHandler for Server {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new("meshd", env!("CARGO_PKG_VERSION")))
            .with_instructions(INSTRUCTIONS)
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        Ok(ListToolsResult::with_all_items(
            self.tools
                .iter()
                .map(|tool| tool.definition.clone())
                .collect(),
        ))
    }

    /// A refusal or a bad argument is a tool error the agent reads and can act on; only a
    /// call to a tool that does not exist is a protocol error, as MCP asks.
    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let Some(tool) = tools::find(&self.tools, &request.name).cloned() else {
            return Err(ErrorData::invalid_params(
                format!("no tool named {}; tools/list shows the tools", request.name),
                None,
            ));
        };
        let node = self.node.clone();
        let arguments = request.arguments.unwrap_or_default();
        // The control call blocks (a socket round trip, or opening the store).
        let outcome =
            tokio::task::spawn_blocking(move || tool.call(node.as_ref(), arguments)).await;
        let result = match outcome {
            Ok(Ok(value)) => CallToolResult::structured(value),
            Ok(Err(reason)) => CallToolResult::error(vec![ContentBlock::text(reason)]),
            Err(failure) => CallToolResult::error(vec![ContentBlock::text(format!(
                "the command failed inside meshd ({failure}); nothing else is affected, try again"
            ))]),
        };
        Ok(result.into())
    }
}
