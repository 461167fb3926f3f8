"""A real MCP client (the official Python SDK, `pip install mcp`) for tests/mcp.rs.

Usage: client.py MESHD HOME < steps.json

Starts `MESHD --home HOME mcp` over stdio, lists its tools, then runs the steps in one
session and prints a JSON transcript on stdout:

    {"tools": [Tool, ...], "steps": [outcome, ...]}

A step is {"call": NAME, "arguments": {...}}, whose outcome is {"result": CallToolResult}
or {"protocol_error": MESSAGE}; or {"cli": [ARG, ...]}, which runs `MESHD --home HOME ARG...`
while the session is open, with the outcome {"code": N, "stdout": TEXT, "stderr": TEXT}.
The test asserts on the transcript; this script only drives.
"""

import json
import os
import subprocess
import sys

import anyio
from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import get_default_environment, stdio_client

try:  # the exception's name in mcp 2
    from mcp.shared.exceptions import MCPError as ProtocolError
except ImportError:  # and in mcp 1
    from mcp.shared.exceptions import McpError as ProtocolError

# Generous: a step that never answers fails the test instead of hanging it.
DEADLINE_SECONDS = 120


def dump(model):
    return model.model_dump(by_alias=True, mode="json", exclude_none=True)


def environment(home):
    """The SDK's minimal environment (no MESHD_* of whoever runs the tests), warnings-only
    logs, and the caches inside the node's home."""
    env = get_default_environment()
    env["RUST_LOG"] = "warn"
    env["OPENCLAW_HOME"] = os.path.join(home, "openclaw")
    return env


async def call(session, step):
    try:
        result = await session.call_tool(step["call"], step.get("arguments"))
    except ProtocolError as error:
        return {"protocol_error": str(error)}
    return {"result": dump(result)}


def cli(meshd, home, step):
    run = subprocess.run(
        [meshd, "--home", home, *step["cli"]],
        env=environment(home),
        capture_output=True,
        text=True,
        timeout=DEADLINE_SECONDS,
    )
    return {"code": run.returncode, "stdout": run.stdout, "stderr": run.stderr}


async def session_transcript(meshd, home, steps):
    server = StdioServerParameters(
        command=meshd, args=["--home", home, "mcp"], env=environment(home)
    )
    async with stdio_client(server) as (read, write):
        async with ClientSession(read, write) as session:
            await session.initialize()
            tools = await session.list_tools()
            outcomes = []
            for step in steps:
                if "cli" in step:
                    outcomes.append(await anyio.to_thread.run_sync(cli, meshd, home, step))
                else:
                    outcomes.append(await call(session, step))
            return {"tools": [dump(tool) for tool in tools.tools], "steps": outcomes}


async def main():
    meshd, home = sys.argv[1], sys.argv[2]
    steps = json.load(sys.stdin)
    with anyio.fail_after(DEADLINE_SECONDS):
        transcript = await session_transcript(meshd, home, steps)
    json.dump(transcript, sys.stdout)


if __name__ == "__main__":
    anyio.run(main)
