"""The Python example plugin: a query with a typed input, a subscription,
a domain error, a nested call, an outbound request, an exception that
reaches the caller, and a byte-stream operation, run from the wire and
from another operation."""

from dataclasses import dataclass
from typing import AsyncIterator

import asyncio

from opbox_plugin import Context, OpboxError, Pipes, Plugin, call, fetch, log_info, run

plugin = Plugin("greeter-py", "0.1.0")


@dataclass
class Greet:
    name: str


@dataclass
class Greeting:
    message: str


@plugin.query("Greets someone by name; an empty name is the error EMPTY_NAME.")
async def hello(ctx: Context, input: Greet) -> Greeting:
    if not input.name:
        raise OpboxError("EMPTY_NAME", "say who to greet", {"field": "name"})
    log_info(f"greeting {input.name}")
    return Greeting(message=f"Hello, {input.name}!")


@dataclass
class Count:
    to: int


@dataclass
class Tick:
    n: int


@plugin.subscription("Counts from 1 to `to`.")
async def count(ctx: Context, input: Count) -> AsyncIterator[Tick]:
    for n in range(1, input.to + 1):
        yield Tick(n=n)


@dataclass
class Text:
    text: str


@dataclass
class Words:
    words: int
    top: str


@plugin.query("Counts words with the textkit example, through the host.")
async def words(ctx: Context, input: Text) -> Words:
    stats = await call("textkit/stats", {"text": input.text})
    top = stats["top_words"][0]["word"] if stats["top_words"] else ""
    return Words(words=stats["words"], top=top)


@dataclass
class Url:
    url: str


@dataclass
class Fetched:
    status: int
    body: str


@plugin.query("Fetches a URL (the host must be granted) and returns its status and body.")
async def get(ctx: Context, input: Url) -> Fetched:
    response = await fetch(input.url)
    body = await response.read_all()
    return Fetched(status=response.status, body=body.decode("utf-8", "replace"))


@plugin.query("The plugin's version: an operation without input.")
async def version(ctx: Context) -> str:
    return plugin.version


@plugin.query("Raises a ValueError: what a bug looks like to the caller.")
async def broken(ctx: Context, input: Text) -> dict:
    raise ValueError(f"cannot handle {input.text!r}")


@plugin.raw("Greets each name it reads, a line at a time; an empty line is an error on stderr.")
async def greet_lines(ctx: Context, pipes: Pipes) -> int:
    failed = False
    pending = b""
    while (data := await pipes.stdin.read()) is not None:
        pending += data
        *lines, pending = pending.split(b"\n")
        for line in lines:
            name = line.decode("utf-8", "replace").strip()
            if name:
                await pipes.stdout.write(f"Hello, {name}!\n".encode())
            else:
                await pipes.stderr.write(b"say who to greet\n")
                failed = True
    return 1 if failed else 0


@dataclass
class Sizes:
    text: int
    gzipped: int


@plugin.query("How small gzip makes a text, by way of the gzip example's byte stream.")
async def gzipped(ctx: Context, input: Text) -> Sizes:
    gzip = await run("gzip/compress", {"level": 9})

    async def feed():
        await gzip.stdin.write(input.text.encode())
        gzip.stdin.close()

    _, compressed = await asyncio.gather(feed(), gzip.stdout.read_all())
    if await gzip.wait() != 0:
        raise OpboxError("GZIP_FAILED", (await gzip.stderr.read_all()).decode("utf-8", "replace"))
    return Sizes(text=len(input.text.encode()), gzipped=len(compressed))


Handler = plugin.handler()
Raw = plugin.raw_handler()
