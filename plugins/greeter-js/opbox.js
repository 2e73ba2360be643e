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
// world: QuickJS cannot import an `async func` yet, so a JS plugin cannot
// call other operations.

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
