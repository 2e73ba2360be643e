"""A thin authoring layer for opbox plugins written in Python.

An operation is a decorated function; its input and output JSON Schemas
come from its type hints (dataclasses, TypedDicts, lists, optionals and
the JSON scalars). A query or mutation is an ``async def`` returning its
output; a subscription is an async generator. ``OpboxError`` is a domain
error with the caller's code; any other exception fails the call with
``PLUGIN_FAILED``: its type and message in the error's message, the tail
of its traceback in ``details.stderr``.

A byte-stream operation (``plugin.raw``) is an ``async def`` taking its
``Pipes`` last and returning an exit code; ``run`` starts one from inside
any operation. Byte-stream operations need the world ``plugin-raw`` and
the ``Raw`` export.

    plugin = Plugin("greeter-py", "0.1.0")

    @plugin.query("Greets someone by name.")
    async def hello(ctx: Context, input: Greet) -> Greeting: ...

    Handler = plugin.handler()   # what componentize-py exports
    Raw = plugin.raw_handler()   # with `-w opbox:plugin/plugin-raw`
"""

import dataclasses
import json
import sys
import traceback
import typing
from typing import Any, Callable, Optional

import componentize_py_async_support
import wit_world
from componentize_py_types import Err, Ok
from wit_world import exports
from wit_world.imports import invoke, log, outbound, types

__all__ = [
    "Child", "Context", "HttpResponse", "OpboxError", "Pipes", "Plugin", "Reader", "Writer",
    "call", "fetch", "log_info", "run",
]


class OpboxError(Exception):
    """A domain error: the caller gets ``code`` and ``message`` (and
    ``details``) as the plugin's own error."""

    def __init__(self, code: str, message: str, details: Any = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.details = details

    def to_wit(self) -> types.CallError:
        details = None if self.details is None else json.dumps(self.details)
        return types.CallError(self.code, self.message, details)


Context = types.CallContext


async def call(operation: str, input: Any) -> Any:
    """Calls another operation through the host, as the same caller."""
    try:
        return json.loads(await invoke.call(operation, json.dumps(input)))
    except Err as e:
        raise _opbox_error(e.value) from None


class HttpResponse:
    """An outbound response: its status and headers, and its body read as
    it arrives (``chunks()``) or whole (``read_all(max_bytes)``)."""

    def __init__(self, head: outbound.Response, chunks):
        self.status = head.status
        self.headers = head.headers
        self._chunks = chunks

    def header(self, name: str) -> Optional[str]:
        """The first value of header ``name`` (lowercase), as text."""
        for key, value in self.headers:
            if key == name:
                return value.decode("utf-8", "replace")
        return None

    async def chunks(self):
        """The body's bytes as they arrive; a failure (``HTTP_TOO_LARGE``,
        ``HTTP_FAILED``) raises ``OpboxError``."""
        with self._chunks as reader:
            while not reader.writer_dropped:
                for item in await reader.read(1):
                    if isinstance(item, Err):
                        raise _opbox_error(item.value)
                    yield item.value

    async def read_all(self, max_bytes: int = 1 << 20) -> bytes:
        """The whole body; ``HTTP_TOO_LARGE`` past ``max_bytes``."""
        body = bytearray()
        async for chunk in self.chunks():
            body += chunk
            if len(body) > max_bytes:
                raise OpboxError("HTTP_TOO_LARGE", f"the response is over {max_bytes} bytes")
        return bytes(body)


async def fetch(
    url: str, method: str = "GET", headers: Optional[dict] = None, body: bytes = b""
) -> HttpResponse:
    """Sends an HTTP request to a host the operator granted and returns once
    the response's head has arrived. A host not granted raises
    ``OpboxError("HTTP_DENIED", ...)``."""
    head = outbound.Request(
        method, url, [(k.lower(), v.encode()) for k, v in (headers or {}).items()]
    )
    writer, reader = wit_world.list_u8_stream()

    async def send_body():
        with writer:
            if body:
                await writer.write_all([body])

    componentize_py_async_support.spawn(send_body())
    try:
        response, chunks = await outbound.send(head, reader)
    except Err as e:
        raise _opbox_error(e.value) from None
    return HttpResponse(response, chunks)


class Reader:
    """Bytes as they arrive: the caller's (``Pipes.stdin``), or the output
    of an operation this one started (``Child.stdout``, ``Child.stderr``)."""

    def __init__(self, stream):
        self._stream = stream

    async def read(self, max_bytes: int = 64 * 1024) -> Optional[bytes]:
        """The bytes that have arrived, at most ``max_bytes``, waiting until
        there are some; ``None`` once the writer has closed its side."""
        while not self._stream.writer_dropped:
            data = await self._stream.read(max_bytes)
            if data:
                return data
        return None

    async def read_all(self) -> bytes:
        """Everything the writer sends, until it closes its side."""
        all = bytearray()
        while (data := await self.read()) is not None:
            all += data
        return bytes(all)

    def close(self) -> None:
        """Stops reading: what is written after is thrown away."""
        self._stream.__exit__(None, None, None)


class Writer:
    """Bytes going out: an operation's ``stdout`` and ``stderr``, or the
    ``stdin`` of an operation it started. ``close()`` ends the stream."""

    def __init__(self, stream):
        self._stream = stream

    async def write(self, data: bytes) -> bool:
        """Writes all of ``data``, waiting while the reader has not taken
        what came before; ``False`` if the reader went away."""
        return await self._stream.write_all(data) == len(data)

    def close(self) -> None:
        self._stream.__exit__(None, None, None)


@dataclasses.dataclass
class Pipes:
    """What a byte-stream operation reads and writes."""

    stdin: Reader
    stdout: Writer
    stderr: Writer


class Child:
    """A byte-stream operation this call started (``run``): write its
    ``stdin`` (``close()`` ends it) while reading its ``stdout`` and
    ``stderr``, then ``wait()`` for its exit code."""

    def __init__(self, stdin: Writer, stdout: Reader, stderr: Reader, status):
        self.stdin = stdin
        self.stdout = stdout
        self.stderr = stderr
        self._status = status

    async def wait(self) -> int:
        """Its exit code; the error that ended it raises ``OpboxError``."""
        result = await self._status.read()
        if isinstance(result, Err):
            raise _opbox_error(result.value)
        return result.value


async def run(operation: str, input: Any = None) -> Child:
    """Starts byte-stream ``operation`` through the host, as the same caller.
    Its outputs arrive only as fast as they are read, and its stdin is
    taken only as fast as it reads: write and read at the same time
    (``asyncio.gather``), or a large output fills while you still write."""
    writer, reader = wit_world.byte_stream()
    try:
        stdout, stderr, status = await invoke.run(operation, json.dumps(input), reader)
    except Err as e:
        raise _opbox_error(e.value) from None
    return Child(Writer(writer), Reader(stdout), Reader(stderr), status)


def _opbox_error(error: types.CallError) -> "OpboxError":
    details = None if error.details is None else json.loads(error.details)
    return OpboxError(error.code, error.message, details)


def log_info(message: str) -> None:
    """Writes one line to the host's log, attributed to the plugin and call."""
    log.log(log.Level.INFO, message)


def _fail(error: BaseException) -> None:
    """Records why the call is about to fail (the caller's ``PLUGIN_FAILED``
    message) and prints the traceback, whose tail the host adds as
    ``details.stderr``; the caller re-raises, which traps the instance."""
    traceback.print_exception(error, file=sys.stderr)
    log.fatal(f"{type(error).__name__}: {error}")


# The input schema of an operation that takes none: `null`, or an empty
# object (what tool callers send for "no arguments").
NO_INPUT = {"anyOf": [{"type": "null"}, {"type": "object", "additionalProperties": False}]}

_SCALARS = {str: "string", int: "integer", float: "number", bool: "boolean"}


def schema_of(hint: Any, closed: bool = True) -> dict:
    """The JSON Schema of a type hint. Inputs are ``closed``: their
    dataclasses refuse unknown fields, so adding an optional field later
    widens them (the host's compatibility gate lets that through).
    Outputs are open, so adding an output field is no break either."""
    if hint is Any or hint is None:
        return {} if hint is Any else {"type": "null"}
    if hint in _SCALARS:
        return {"type": _SCALARS[hint]}
    if hint is dict:
        return {"type": "object"}
    if hint is list:
        return {"type": "array"}
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is list:
        return {"type": "array", "items": schema_of(args[0], closed) if args else {}}
    if origin is dict:
        return {"type": "object"}
    if origin is typing.Union:
        return {"anyOf": [schema_of(a, closed) for a in args]}
    if dataclasses.is_dataclass(hint) or typing.is_typeddict(hint):
        hints = typing.get_type_hints(hint)
        if dataclasses.is_dataclass(hint):
            required = [
                f.name
                for f in dataclasses.fields(hint)
                if f.default is dataclasses.MISSING
                and f.default_factory is dataclasses.MISSING
            ]
        else:
            required = sorted(hint.__required_keys__)
        schema = {
            "type": "object",
            "properties": {name: schema_of(h, closed) for name, h in hints.items()},
            "required": required,
        }
        if closed:
            schema["additionalProperties"] = False
        return schema
    raise TypeError(f"no JSON Schema for the type hint {hint!r}")


def decode(hint: Any, value: Any) -> Any:
    """A JSON value (already checked against the schema) as ``hint``."""
    if dataclasses.is_dataclass(hint):
        hints = typing.get_type_hints(hint)
        return hint(**{k: decode(hints[k], v) for k, v in value.items()})
    if typing.get_origin(hint) is list and value is not None:
        (item,) = typing.get_args(hint) or (Any,)
        return [decode(item, v) for v in value]
    return value


def encode(value: Any) -> str:
    """An output as JSON text."""
    if dataclasses.is_dataclass(value):
        value = dataclasses.asdict(value)
    return json.dumps(value, separators=(",", ":"))


@dataclasses.dataclass
class _Op:
    name: str
    op_type: Optional[types.OpType]  # None: a byte-stream operation
    description: str
    function: Callable
    input_hint: Any
    output_hint: Any
    internal: bool
    scopes: list

    def input_schema(self) -> str:
        no_input = self.input_hint is None
        return json.dumps(NO_INPUT if no_input else schema_of(self.input_hint))

    def spec(self) -> types.OperationSpec:
        return types.OperationSpec(
            name=self.name,
            op_type=self.op_type,
            description=self.description,
            input_schema=self.input_schema(),
            output_schema=json.dumps(schema_of(self.output_hint, closed=False)),
            internal=self.internal,
            required_scopes=list(self.scopes),
        )


class Plugin:
    """A plugin: a name, a version and its operations."""

    def __init__(self, name: str, version: str):
        self.name = name
        self.version = version
        self.ops: dict[str, _Op] = {}
        self.raw_ops: dict[str, _Op] = {}

    def _add(self, op_type, description, name, internal, scopes):
        def register(function: Callable) -> Callable:
            hints = typing.get_type_hints(function)
            params = [p for p in function.__code__.co_varnames[: function.__code__.co_argcount]]
            if op_type is None:
                # A byte-stream operation: its pipes come last.
                params = params[:-1]
            input_hint = hints.get(params[1], Any) if len(params) > 1 else None
            output_hint = hints.get("return", Any)
            if op_type == types.OpType.SUBSCRIPTION:
                # AsyncIterator[T]: the schema is of each item.
                output_hint = (typing.get_args(output_hint) or (Any,))[0]
            op_name = name or function.__name__.replace("_", "-")
            ops = self.raw_ops if op_type is None else self.ops
            ops[op_name] = _Op(
                op_name, op_type, description, function, input_hint, output_hint,
                internal, scopes,
            )
            return function

        return register

    def query(self, description: str, *, name=None, internal=False, scopes=()):
        """Declares an ``async def (ctx, input) -> output`` query."""
        return self._add(types.OpType.QUERY, description, name, internal, scopes)

    def mutation(self, description: str, *, name=None, internal=False, scopes=()):
        """Declares an ``async def (ctx, input) -> output`` mutation."""
        return self._add(types.OpType.MUTATION, description, name, internal, scopes)

    def subscription(self, description: str, *, name=None, internal=False, scopes=()):
        """Declares an async generator ``(ctx, input)`` yielding outputs."""
        return self._add(types.OpType.SUBSCRIPTION, description, name, internal, scopes)

    def raw(self, description: str, *, name=None, internal=False, scopes=()):
        """Declares an ``async def (ctx, [input,] pipes) -> int`` byte-stream
        operation: it reads ``pipes.stdin`` while it writes ``pipes.stdout``
        and ``pipes.stderr``, and returns its exit code (0 is success)."""
        return self._add(None, description, name, internal, scopes)

    def _arguments(self, op: _Op, ctx: Context, input: str) -> list:
        if op.input_hint is None:
            return [ctx]
        return [ctx, decode(op.input_hint, json.loads(input))]

    def _find(self, op: str, op_type_is_subscription: bool) -> _Op:
        found = self.ops.get(op)
        if found is None and op in self.raw_ops:
            raise Err(types.CallError("INVALID_OPERATION_TYPE", f"`{op}` is a byte stream", None))
        if found is None:
            raise Err(types.CallError("NOT_FOUND", f"this plugin has no operation `{op}`", None))
        if (found.op_type == types.OpType.SUBSCRIPTION) != op_type_is_subscription:
            raise Err(types.CallError("INVALID_OPERATION_TYPE", f"`{op}` is not of that kind", None))
        return found

    def handler(self) -> type:
        """The class componentize-py exports as ``Handler``."""
        plugin = self

        class Handler(exports.Handler):
            def describe(self) -> types.Manifest:
                return types.Manifest(
                    plugin.name, plugin.version, [op.spec() for op in plugin.ops.values()]
                )

            async def call(self, ctx: Context, op: str, input: str) -> str:
                found = plugin._find(op, False)
                try:
                    return encode(await found.function(*plugin._arguments(found, ctx, input)))
                except OpboxError as e:
                    raise Err(e.to_wit()) from None
                except Exception as e:
                    _fail(e)
                    raise

            async def subscribe(self, ctx: Context, op: str, input: str):
                found = plugin._find(op, True)
                items = found.function(*plugin._arguments(found, ctx, input))
                writer, reader = wit_world.result_string_types_call_error_stream()

                async def feed():
                    with writer:
                        try:
                            async for item in items:
                                await writer.write_all([Ok(encode(item))])
                        except OpboxError as e:
                            await writer.write_all([Err(e.to_wit())])
                        except Exception as e:
                            _fail(e)
                            raise

                componentize_py_async_support.spawn(feed())
                return reader

        return Handler

    def raw_handler(self) -> type:
        """The class componentize-py exports as ``Raw``, for the world
        ``plugin-raw``: the byte-stream operations."""
        from wit_world.exports import raw

        plugin = self

        class RawHandler(exports.Raw):
            def describe(self) -> list:
                return [
                    raw.RawSpec(
                        name=op.name,
                        description=op.description,
                        input_schema=op.input_schema(),
                        internal=op.internal,
                        required_scopes=list(op.scopes),
                    )
                    for op in plugin.raw_ops.values()
                ]

            async def run(self, ctx: Context, op: str, input: str, stdin):
                found = plugin.raw_ops.get(op)
                if found is None:
                    code = "INVALID_OPERATION_TYPE" if op in plugin.ops else "NOT_FOUND"
                    raise Err(types.CallError(code, f"`{op}` is not a byte-stream operation here", None))
                stdout, stdout_reader = wit_world.byte_stream()
                stderr, stderr_reader = wit_world.byte_stream()
                status, status_reader = wit_world.result_u8_types_call_error_future(
                    lambda: Err(types.CallError("PLUGIN_FAILED", "the operation ended without a status", None))
                )
                pipes = Pipes(Reader(stdin), Writer(stdout), Writer(stderr))
                arguments = plugin._arguments(found, ctx, input) + [pipes]

                async def drive():
                    # Its outputs end before its status is written.
                    with stdout, stderr:
                        try:
                            code = await found.function(*arguments)
                            if not isinstance(code, int) or not 0 <= code <= 255:
                                raise TypeError(f"an exit code is an int from 0 to 255, not {code!r}")
                            exit = Ok(code)
                        except OpboxError as e:
                            exit = Err(e.to_wit())
                        except Exception as e:
                            _fail(e)
                            raise
                    await status.write(exit)

                componentize_py_async_support.spawn(drive())
                return (stdout_reader, stderr_reader, status_reader)

        return RawHandler
