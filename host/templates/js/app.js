// {{name}}: an opbox plugin.
//
// Run `opbox dev` here to build, serve and rebuild it on every save, or
// `npm install && npm run build` to build {{crate}}.wasm yourself.

import { OpboxError, Plugin, logger } from "./opbox.js";

const plugin = new Plugin("{{name}}", "0.1.0");

plugin.query(
  "hello",
  {
    description: "Greets someone by name.",
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
      throw new OpboxError("EMPTY_NAME", "say who to greet");
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
      properties: { to: { type: "integer", minimum: 0 } },
      required: ["to"],
      additionalProperties: false,
    },
    output: { type: "integer" },
  },
  async function* (ctx, { to }) {
    for (let n = 1; n <= to; n++) {
      yield n;
    }
  },
);

export const handler = plugin.handler();
