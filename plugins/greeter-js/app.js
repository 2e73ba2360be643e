// The JavaScript example plugin: a query with a real input schema, a
// subscription, a domain error, and an exception that reaches the caller.

import { OpboxError, Plugin, logger } from "./opbox.js";

const plugin = new Plugin("greeter-js", "0.1.0");

plugin.query(
  "hello",
  {
    description: "Greets someone by name; an empty name is the error EMPTY_NAME.",
    input: {
      type: "object",
      properties: { name: { type: "string", description: "Who to greet." } },
      required: ["name"],
      additionalProperties: false,
    },
    output: {
      type: "object",
      properties: { message: { type: "string" } },
      required: ["message"],
    },
  },
  async (ctx, { name }) => {
    if (name === "") {
      throw new OpboxError("EMPTY_NAME", "say who to greet", { field: "name" });
    }
    logger.info(`greeting ${name}`);
    return { message: `Hello, ${name}!` };
  },
);

plugin.subscription(
  "count",
  {
    description: "Counts from 1 to `to`.",
    input: {
      type: "object",
      properties: { to: { type: "integer", minimum: 0, maximum: 1000000 } },
      required: ["to"],
      additionalProperties: false,
    },
    output: {
      type: "object",
      properties: { n: { type: "integer" } },
      required: ["n"],
    },
  },
  async function* (ctx, { to }) {
    for (let n = 1; n <= to; n++) {
      yield { n };
    }
  },
);

plugin.query(
  "version",
  { description: "The plugin's version: an operation without input.", output: { type: "string" } },
  async () => plugin.version,
);

plugin.query(
  "broken",
  {
    description: "Throws a TypeError: what a bug looks like to the caller.",
    input: {
      type: "object",
      properties: { text: { type: "string" } },
      required: ["text"],
    },
    output: { type: "object" },
  },
  async (ctx, { text }) => {
    throw new TypeError(`cannot handle ${JSON.stringify(text)}`);
  },
);

export const handler = plugin.handler();
