"""The official MCP Python SDK (`mcp` on PyPI) as a client of opbox's /mcp.

Usage: mcp_client.py URL OPERATOR_TOKEN ACME_TOKEN

Prints one JSON object per line, each with a "step", and at three points
waits for a word on stdin, so that the test driving it can look at the host
meanwhile:

- "running": a subscription's guest is running; waits for "cancel";
- "cancelled": the call was cancelled, the session is still open; waits
  for "go";
- "listening": a session waits for tools/list_changed; waits for nothing,
  the test changes the plugins and the script reports what it then lists.
"""

import json
import sys
from contextlib import asynccontextmanager

import anyio
import mcp_types as types
from mcp.client.session import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client

URL, OPERATOR, ACME = sys.argv[1], sys.argv[2], sys.argv[3]


def say(step, **fields):
    print(json.dumps({"step": step, **fields}), flush=True)


async def hear(word):
    line = await anyio.to_thread.run_sync(sys.stdin.readline)
    assert line.strip() == word, f"expected {word!r}, got {line!r}"


@asynccontextmanager
async def session(token, message_handler=None):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with create_mcp_http_client(headers=headers) as http:
        async with streamable_http_client(URL, http_client=http) as (read, write):
            async with ClientSession(read, write, message_handler=message_handler) as s:
                await s.initialize()
                yield s


async def tool_names(token):
    async with session(token) as s:
        return sorted(tool.name for tool in (await s.list_tools()).tools)


def outcome(result):
    return {
        "is_error": result.is_error,
        "structured": result.structured_content,
        "text": [c.text for c in result.content if c.type == "text"],
        "meta": result.meta,
    }


async def main():
    say(
        "lists",
        anonymous=await tool_names(None),
        operator=await tool_names(OPERATOR),
        acme=await tool_names(ACME),
    )

    async with session(ACME) as s:
        tools = {tool.name: tool for tool in (await s.list_tools()).tools}
        stats = tools["textkit.stats"]
        echo = tools["echo.echo"]
        say(
            "schemas",
            stats_input=stats.input_schema,
            stats_output=stats.output_schema,
            echo_input=echo.input_schema,
            read_only=stats.annotations.read_only_hint if stats.annotations else None,
        )
        # The SDK checks structured content against the output schema.
        ok = await s.call_tool("textkit.stats", {"text": "to be or not to be"})
        wrapped = await s.call_tool("echo.echo", {"input": [1, "two"]})
        bad = await s.call_tool("textkit.stats", {"words": 1})
        domain = await s.call_tool("echo.fail", {"input": {}})
        extra = await s.call_tool("echo.echo", {"x": 1})
        meta = await s.call_tool("call", {"operation": "textkit/stats", "input": {"text": "a a"}})
        say(
            "calls",
            ok=outcome(ok),
            wrapped=outcome(wrapped),
            bad=outcome(bad),
            domain=outcome(domain),
            extra=outcome(extra),
            meta=outcome(meta),
        )

        progress = []

        async def on_progress(value, total, message):
            progress.append({"progress": value, "message": message})

        counted = await s.call_tool("ticker.count", {"to": 3}, progress_callback=on_progress)
        say("subscription", progress=progress, result=outcome(counted))

        # A subscription that would run for minutes, cancelled after its
        # first output; the session stays open.
        first = anyio.Event()

        async def on_tick(value, total, message):
            first.set()

        async with anyio.create_task_group() as group:

            async def long_count():
                await s.call_tool(
                    "ticker.count", {"to": 100000, "every_ms": 10}, progress_callback=on_tick
                )

            group.start_soon(long_count)
            await first.wait()
            say("running")
            await hear("cancel")
            group.cancel_scope.cancel()
        say("cancelled")
        await hear("go")
        after = await s.call_tool("textkit.stats", {"text": "still here"})
        say("after", result=outcome(after))

    changed = anyio.Event()

    async def on_message(message):
        if isinstance(message, types.ToolListChangedNotification):
            changed.set()

    async with session(OPERATOR, message_handler=on_message) as s:
        before = sorted(tool.name for tool in (await s.list_tools()).tools)
        say("listening", tools=before)
        with anyio.fail_after(30):
            await changed.wait()
        now = sorted(tool.name for tool in (await s.list_tools()).tools)
        say("changed", tools=now)


anyio.run(main)
