"""{{name}}: an opbox plugin.

Run `opbox dev` here to build, serve and rebuild it on every save, or build
it yourself with componentize-py 0.25:

    componentize-py -d wit -w opbox:plugin/plugin componentize app -o {{crate}}.wasm
"""

from dataclasses import dataclass
from typing import AsyncIterator

from opbox_plugin import Context, OpboxError, Plugin, log_info

plugin = Plugin("{{name}}", "0.1.0")


@dataclass
class Greet:
    name: str


@dataclass
class Greeting:
    message: str


@plugin.query("Greets someone by name.")
async def hello(ctx: Context, input: Greet) -> Greeting:
    if not input.name:
        raise OpboxError("EMPTY_NAME", "say who to greet")
    log_info(f"greeting {input.name}")
    return Greeting(message=f"Hello, {input.name}!")


@dataclass
class Count:
    to: int


@plugin.subscription("Counts from 1 to `to`.")
async def count(ctx: Context, input: Count) -> AsyncIterator[int]:
    for n in range(1, input.to + 1):
        yield n


Handler = plugin.handler()
