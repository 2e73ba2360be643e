// The JavaScript example plugin: a query with a real input schema, a
// subscription, a domain error, a call to another operation, an outbound
// request, and an exception that reaches the caller.

import { OpboxError, Plugin, fetch, invoke, logger } from "./opbox.js";

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
  "echoed",
  {
    description: "Sends its input through echo/echo, another plugin's operation.",
    input: true,
    output: true,
  },
  async (ctx, input) => ({ echoed: await invoke("echo/echo", input) }),
);

plugin.query(
  "fetched",
  {
    description: "Fetches a URL (from a host the operator granted) and answers its status and text.",
    input: {
      type: "object",
      properties: { url: { type: "string" } },
      required: ["url"],
      additionalProperties: false,
    },
    output: {
      type: "object",
      properties: { status: { type: "integer" }, text: { type: "string" } },
      required: ["status", "text"],
    },
  },
  async (ctx, { url }) => {
    const response = await fetch(url, { headers: { accept: "text/plain" } });
    return { status: response.status, text: response.text() };
  },
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
