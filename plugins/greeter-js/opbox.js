// A thin authoring layer for opbox plugins written in JavaScript.
//
// An operation is a function plus the JSON Schemas of its input and output.
// A query or mutation is an `async (ctx, input) => output`; a subscription is
// an async generator `async function* (ctx, input)` whose yields are its
// outputs. Throw an `OpboxError` for a domain error with your own code; any
// other exception fails the call with `PLUGIN_FAILED`, its message in the
// error and its stack in `details.stderr`.
//
//     const plugin = new Plugin("greeter-js", "0.1.0");
//     plugin.query("hello", {
//       description: "Greets someone by name.",
//       input: { type: "object", properties: { name: { type: "string" } } },
//       output: { type: "object" },
//     }, async (ctx, { name }) => ({ message: `Hello, ${name}!` }));
//     export const handler = plugin.handler();
//
// Built with `jco componentize --backend quickjs` against the `plugin-core`
// world: QuickJS cannot import an `async func` yet, so `invoke` and `fetch`
// use the host's plain-function twins (`opbox:plugin/blocking`): the
// plugin waits while the host calls the operation or makes the request.
//
//     const { words } = await invoke("textkit/stats", { text });
//     const response = await fetch("https://api.example.com/v1", { method: "POST", body });
//     const data = response.json();

import blocking from "opbox:plugin/blocking@0.1.0";
import log from "opbox:plugin/log@0.1.0";

// A domain error: the caller gets `code`, `message` and `details` as the
// plugin's own error.
export class OpboxError extends Error {
  constructor(code, message, details) {
    super(message);
    this.name = "OpboxError";
    this.code = code;
    this.details = details;
  }

  toWit() {
    return {
      code: this.code,
      message: this.message,
      details: this.details === undefined ? null : JSON.stringify(this.details),
    };
  }
}

// The value of a host function that answers `result<T, call-error>`: its
// `ok`, or its `err` thrown as an `OpboxError`.
function outcome(run) {
  let value;
  try {
    value = run();
  } catch (error) {
    const err = error?.payload ?? error;
    if (err && typeof err.code === "string") {
      const details = err.details == null ? undefined : JSON.parse(err.details);
      throw new OpboxError(err.code, err.message, details);
    }
    throw error;
  }
  return value;
}

// Calls the query or mutation `operation` (`namespace/op`) with `input`,
// as the current caller, within what is left of the call's deadline; its
// output, or its error thrown as an `OpboxError`.
export async function invoke(operation, input = null) {
  const output = outcome(() => blocking.call(operation, JSON.stringify(input)));
  return JSON.parse(output);
}

// An outbound HTTP request, to a host the operator granted
// (`allowed_outbound_hosts`): `{ method, headers, body }` as in the web's
// `fetch`, a string or bytes for `body`. The answer has `status`,
// `headers` (lower-case names), `bytes`, `text()` and `json()`. A refusal
// or failure is an `OpboxError` (`HTTP_DENIED`, `HTTP_FAILED`,
// `HTTP_TOO_LARGE`).
export async function fetch(url, { method = "GET", headers = {}, body } = {}) {
  const encoded =
    body === undefined ? new Uint8Array() : typeof body === "string" ? utf8(body) : new Uint8Array(body);
  const request = {
    method,
    url,
    headers: Object.entries(headers).map(([name, value]) => [name, utf8(String(value))]),
  };
  const [head, bytes] = outcome(() => blocking.fetch(request, encoded));
  const text = () => fromUtf8(bytes);
  return {
    status: head.status,
    headers: Object.fromEntries(
      head.headers.map(([name, value]) => [name.toLowerCase(), fromUtf8(value)]),
    ),
    bytes,
    text,
    json: () => JSON.parse(text()),
  };
}

// UTF-8 by hand: QuickJS has no TextEncoder or TextDecoder.
function utf8(text) {
  const bytes = [];
  for (const char of text) {
    const c = char.codePointAt(0);
    if (c < 0x80) bytes.push(c);
    else if (c < 0x800) bytes.push(0xc0 | (c >> 6), 0x80 | (c & 63));
    else if (c < 0x10000) bytes.push(0xe0 | (c >> 12), 0x80 | ((c >> 6) & 63), 0x80 | (c & 63));
    else
      bytes.push(
        0xf0 | (c >> 18),
        0x80 | ((c >> 12) & 63),
        0x80 | ((c >> 6) & 63),
        0x80 | (c & 63),
      );
  }
  return new Uint8Array(bytes);
}

// Text from UTF-8 bytes; a malformed sequence becomes U+FFFD.
function fromUtf8(bytes) {
  let text = "";
  for (let i = 0; i < bytes.length; ) {
    const b = bytes[i];
    const length = b < 0x80 ? 1 : b >> 5 === 6 ? 2 : b >> 4 === 14 ? 3 : b >> 3 === 30 ? 4 : 0;
    let c = length === 1 ? b : b & (0xff >> (length + 1));
    let valid = length > 0 && i + length <= bytes.length;
    for (let k = 1; valid && k < length; k++) {
      valid = bytes[i + k] >> 6 === 2;
      c = (c << 6) | (bytes[i + k] & 63);
    }
    text += valid ? String.fromCodePoint(c) : "\ufffd";
    i += valid ? length : 1;
  }
  return text;
}

// Log lines attributed to the plugin and the call, in the host's log.
export const logger = Object.fromEntries(
  ["trace", "debug", "info", "warn", "error"].map((level) => [
    level,
    (message) => log.log(level, String(message)),
  ]),
);

const OP_NAME = /^[a-z0-9_-]+$/;

// The input schema of an operation whose spec has no `input`: `null`, or an
// empty object (what tool callers send for "no arguments").
const NO_INPUT = {
  anyOf: [{ type: "null" }, { type: "object", additionalProperties: false }],
};

// Records why the call is about to fail (the caller's `PLUGIN_FAILED`
// message) and throws on: the runtime prints the exception and its stack to
// stderr, whose tail the host adds as `details.stderr`, and traps.
function fail(error) {
  const message =
    error instanceof Error ? `${error.name}: ${error.message}` : `uncaught ${String(error)}`;
  log.fatal(message);
  throw error;
}

// A plugin: a name, a version and its operations.
export class Plugin {
  constructor(name, version) {
    this.name = name;
    this.version = version;
    this.ops = new Map();
  }

  // Adds a query: `spec` is `{ description, input?, output, internal?,
  // scopes? }`, with `input` and `output` JSON Schema objects; without
  // `input`, the operation takes none (`null` or `{}`).
  query(name, spec, run) {
    return this.#add("query", name, spec, run);
  }

  // Adds a mutation: an operation that may change state.
  mutation(name, spec, run) {
    return this.#add("mutation", name, spec, run);
  }

  // Adds a subscription: `run` is an async generator; `output` is the
  // schema of each item.
  subscription(name, spec, run) {
    return this.#add("subscription", name, spec, run);
  }

  #add(opType, name, spec, run) {
    if (!OP_NAME.test(name)) {
      throw new TypeError(`operation names are [a-z0-9_-]+, not ${JSON.stringify(name)}`);
    }
    if (this.ops.has(name)) {
      throw new TypeError(`the operation ${name} is declared twice`);
    }
    this.ops.set(name, { opType, spec, run });
    return this;
  }

  #find(op, subscription) {
    const found = this.ops.get(op);
    if (found === undefined) {
      throw { code: "NOT_FOUND", message: `this plugin has no operation \`${op}\``, details: null };
    }
    if ((found.opType === "subscription") !== subscription) {
      throw {
        code: "INVALID_OPERATION_TYPE",
        message: `\`${op}\` is not of that kind`,
        details: null,
      };
    }
    return found;
  }

  // What the component exports as `handler`.
  handler() {
    const plugin = this;
    return {
      describe() {
        return {
          name: plugin.name,
          version: plugin.version,
          operations: [...plugin.ops].map(([name, { opType, spec }]) => ({
            name,
            opType,
            description: spec.description ?? "",
            inputSchema: JSON.stringify(spec.input ?? NO_INPUT),
            outputSchema: JSON.stringify(spec.output ?? true),
            internal: spec.internal ?? false,
            requiredScopes: spec.scopes ?? [],
          })),
        };
      },

      async call(ctx, op, input) {
        const found = plugin.#find(op, false);
        try {
          const output = await found.run(ctx, JSON.parse(input));
          return JSON.stringify(output ?? null);
        } catch (error) {
          if (error instanceof OpboxError) {
            throw error.toWit();
          }
          return fail(error);
        }
      },

      async subscribe(ctx, op, input) {
        const found = plugin.#find(op, true);
        const items = found.run(ctx, JSON.parse(input));
        return (async function* () {
          try {
            for await (const item of items) {
              yield { tag: "ok", val: JSON.stringify(item ?? null) };
            }
          } catch (error) {
            if (error instanceof OpboxError) {
              yield { tag: "err", val: error.toWit() };
              return;
            }
            fail(error);
          }
        })();
      },
    };
  }
}
