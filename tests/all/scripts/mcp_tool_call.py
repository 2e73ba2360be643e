"""The official MCP Python SDK (`mcp` on PyPI) waiting for a tool, then
calling it by name.

Usage: mcp_tool_call.py URL TOOL

Prints one JSON object per line, each with a "step":

- "listening": the tools listed when the session opened; the script then
  waits (30 s at most) for `notifications/tools/list_changed` until TOOL
  is listed;
- "called": the tools listed then, and the outcome of calling TOOL with
  no arguments.
"""

import json
import sys

import anyio
import mcp_types as types
from mcp.client.session import ClientSession
from mcp.client.streamable_http import streamable_http_client

URL, TOOL = sys.argv[1], sys.argv[2]


def say(step, **fields):
    print(json.dumps({"step": step, **fields}), flush=True)


async def main():
    changed = anyio.Event()

    async def on_message(message):
        nonlocal changed
        if isinstance(message, types.ToolListChangedNotification):
            changed.set()

    async with streamable_http_client(URL) as (read, write):
        async with ClientSession(read, write, message_handler=on_message) as session:
            await session.initialize()

            async def names():
                return sorted(tool.name for tool in (await session.list_tools()).tools)

            tools = await names()
            say("listening", tools=tools)
            with anyio.fail_after(30):
                while TOOL not in tools:
                    await changed.wait()
                    changed = anyio.Event()
                    tools = await names()
            result = await session.call_tool(TOOL, {})
            say(
                "called",
                tools=tools,
                is_error=result.is_error,
                structured=result.structured_content,
            )


anyio.run(main)
