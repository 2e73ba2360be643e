"""The Python example plugin: a query with a typed input, a subscription,
a domain error, a nested call, an outbound request, and an exception that
reaches the caller."""

from dataclasses import dataclass
from typing import AsyncIterator

from opbox_plugin import Context, OpboxError, Plugin, call, fetch, log_info

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


Handler = plugin.handler()
