// The official TypeScript MCP SDK against opbox's `/mcp`, driven by
// tests/all/mcp.rs: it prints one JSON report per step, and waits for
// "cancel" on stdin before cancelling a running subscription.
//
// Usage: node mcp_client.mjs URL TOKEN (run from a directory where
// `@modelcontextprotocol/sdk` is installed).

import { createInterface } from "node:readline";
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";
import { CallToolResultSchema } from "@modelcontextprotocol/sdk/types.js";

const [url, token] = process.argv.slice(2);
// The SDK compiles schemas with Ajv, which warns on the console about
// every keyword or format it does not know; a user sees each line.
const warnings = [];
console.warn = (...args) => warnings.push(args.join(" "));
const say = (step, fields = {}) => console.log(JSON.stringify({ step, ...fields }));
const lines = createInterface({ input: process.stdin })[Symbol.asyncIterator]();
const hear = async (word) => {
  const { value } = await lines.next();
  if (value !== word) throw new Error(`expected ${word}, heard ${value}`);
};

const transport = new StreamableHTTPClientTransport(new URL(url), {
  requestInit: { headers: { Authorization: `Bearer ${token}` } },
});
const client = new Client({ name: "opbox-test", version: "1.0.0" });
await client.connect(transport);

const outcome = (result) => ({
  is_error: result.isError ?? false,
  structured: result.structuredContent ?? null,
  text: result.content.filter((c) => c.type === "text").map((c) => c.text),
});

const { tools } = await client.listTools();
say("lists", { tools: tools.map((t) => t.name).sort() });

// The SDK checks a result's structured content against the tool's output
// schema, errors included: a failure must arrive as opbox's error.
const ok = await client.callTool({ name: "textkit.stats", arguments: { text: "to be or not to be" } });
const bad = await client.callTool({ name: "textkit.stats", arguments: { words: 1 } });
const domain = await client.callTool({ name: "echo.fail", arguments: { input: {} } });
// An argument the tool's input schema does not allow.
const extra = await client.callTool({ name: "echo.echo", arguments: { x: 1 } });
say("calls", { ok: outcome(ok), bad: outcome(bad), domain: outcome(domain), extra: outcome(extra) });

const progress = [];
const counted = await client.callTool(
  { name: "ticker.count", arguments: { to: 3 } },
  CallToolResultSchema,
  { onprogress: ({ progress: value, message }) => progress.push({ progress: value, message }) },
);
say("subscription", { progress, result: outcome(counted) });

// A subscription that would run for minutes, cancelled after its first
// output; the session stays open.
const abort = new AbortController();
let first;
const ticked = new Promise((resolve) => (first = resolve));
const long = client
  .callTool({ name: "ticker.count", arguments: { to: 100000, every_ms: 10 } }, CallToolResultSchema, {
    signal: abort.signal,
    onprogress: () => first(),
    timeout: 600000,
  })
  .then(
    () => "answered",
    (e) => (abort.signal.aborted ? "aborted" : `failed: ${e}`),
  );
await ticked;
say("running");
await hear("cancel");
abort.abort("the test cancels it");
say("cancelled", { ended: await long });
await hear("go");
const after = await client.callTool({ name: "textkit.stats", arguments: { text: "still here" } });
say("after", { result: outcome(after), warnings });

await client.close();
process.exit(0);
