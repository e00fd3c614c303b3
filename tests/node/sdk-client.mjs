// Drives tanso-mcp with the official TypeScript SDK client (@modelcontextprotocol/sdk)
// over Streamable HTTP, the way an agent host would, and prints one JSON summary on
// stdout for tests/test_mcp_external_clients.py to assert on.
//
//   TANSO_MCP_URL=http://127.0.0.1:PORT/mcp TANSO_ADMIN_KEY=... TANSO_READ_KEY=... \
//     node sdk-client.mjs
//
// Plain ESM, no build step; runs on Node >= 18. Exits non-zero only when the script
// itself cannot run (bad environment); everything the server answers goes into the
// summary, including errors, so the Python test can say what went wrong.

import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";

const url = process.env.TANSO_MCP_URL;
const adminKey = process.env.TANSO_ADMIN_KEY;
const readKey = process.env.TANSO_READ_KEY;
if (!url || !adminKey || !readKey) {
  console.error("set TANSO_MCP_URL, TANSO_ADMIN_KEY and TANSO_READ_KEY");
  process.exit(2);
}

async function connect(key) {
  const headers = key === null ? {} : { "X-API-Key": key };
  const transport = new StreamableHTTPClientTransport(new URL(url), {
    requestInit: { headers },
  });
  const client = new Client({ name: "tanso-sdk-test", version: "1.0.0" });
  await client.connect(transport);
  return { client, transport };
}

async function listAllTools(client) {
  const tools = [];
  let cursor;
  do {
    const page = await client.listTools(cursor ? { cursor } : {});
    tools.push(...page.tools);
    cursor = page.nextCursor;
  } while (cursor);
  return tools;
}

// One tools/call, reduced to what the test checks: the error flag, the structured
// result, and whether the text content mirrors it (the SDK client has already
// validated structuredContent against the tool's outputSchema for successes).
async function call(client, name, args) {
  try {
    const result = await client.callTool({ name, arguments: args });
    const text = (result.content || []).find((c) => c.type === "text");
    let textMatches = false;
    try {
      textMatches =
        text !== undefined &&
        JSON.stringify(JSON.parse(text.text)) === JSON.stringify(result.structuredContent);
    } catch {
      textMatches = false;
    }
    return {
      tool: name,
      isError: result.isError === true,
      structuredContent: result.structuredContent ?? null,
      textMatches,
    };
  } catch (err) {
    return { tool: name, exception: String(err?.message ?? err), code: err?.code ?? null };
  }
}

function describeTools(tools) {
  return tools.map((t) => ({
    name: t.name,
    title: t.title ?? t.annotations?.title ?? null,
    hasOutputSchema: Boolean(t.outputSchema),
    inputRequired: t.inputSchema?.required ?? [],
    annotations: t.annotations ?? {},
  }));
}

const summary = {};

// --- admin: handshake, tools, the catalog workflow --------------------------------------
{
  const { client, transport } = await connect(adminKey);
  summary.protocolVersion = transport.protocolVersion ?? null;
  summary.serverInfo = client.getServerVersion() ?? null;
  summary.capabilities = client.getServerCapabilities() ?? null;
  const tools = await listAllTools(client);
  summary.admin = { toolCount: tools.length, tools: describeTools(tools) };

  const steps = {};
  steps.createFeature = await call(client, "adminCreateFeature", {
    key: "api_calls",
    name: "API calls",
    description: "Calls to the public API",
  });
  steps.createGate = await call(client, "adminCreateFeature", { key: "sso", name: "SSO" });
  steps.createPlan = await call(client, "adminCreatePlan", {
    key: "pro_tier",
    name: "Pro Tier",
    priceAmount: "99.00",
  });
  const planId = steps.createPlan.structuredContent?.plan?.id;
  const featureId = steps.createFeature.structuredContent?.feature?.id;
  const gateId = steps.createGate.structuredContent?.feature?.id;
  steps.activateTooEarly = await call(client, "adminUpdatePlan", { planId, status: "ACTIVE" });
  steps.link = await call(client, "adminLinkFeatureToPlan", {
    planId,
    featureId,
    type: "BASE",
    valueJson: JSON.stringify({
      pricing: {
        model: "graduated",
        usage_unit_type: "api_calls",
        reset_mode: "accumulate",
        tiers: [
          { up_to: 100, price_per_unit: 0.1, flat_fee: 5.0 },
          { up_to: "inf", price_per_unit: 0.05 },
        ],
      },
      cost: { model: "simple", cost_per_unit: 0.03, cost_unit: "CURRENCY" },
    }),
  });
  steps.linkGate = await call(client, "adminLinkFeatureToPlan", {
    planId,
    featureId: gateId,
    type: "BASE",
  });
  steps.activate = await call(client, "adminUpdatePlan", {
    planId,
    status: "ACTIVE",
    description: "For professional teams",
  });
  steps.getPlan = await call(client, "adminGetPlanWithFeatures", { planId });
  steps.listPlans = await call(client, "listPlans", {});
  steps.unlinkUnconfirmed = await call(client, "adminUnlinkFeatureFromPlan", {
    planId,
    featureId: gateId,
  });
  steps.afterUnconfirmed = await call(client, "adminGetPlanWithFeatures", { planId });
  steps.badPrice = await call(client, "adminCreatePlan", {
    key: "bad",
    name: "Bad",
    priceAmount: "ten",
  });
  steps.unknownPlan = await call(client, "adminGetPlanWithFeatures", { planId: "nope" });
  summary.workflow = steps;
  await client.close();
}

// --- read key: fewer tools, hidden ones refused -----------------------------------------
{
  const { client } = await connect(readKey);
  const tools = await listAllTools(client);
  summary.read = {
    toolCount: tools.length,
    tools: describeTools(tools),
    listPlans: await call(client, "listPlans", {}),
    hiddenTool: await call(client, "adminCreateFeature", { key: "x", name: "X" }),
  };
  await client.close();
}

// --- no key / a wrong key: the handshake itself is refused ------------------------------
for (const [label, key] of [
  ["noKey", null],
  ["badKey", "sk_test_not-a-real-key"],
]) {
  try {
    const { client } = await connect(key);
    summary[label] = { connected: true };
    await client.close();
  } catch (err) {
    summary[label] = { connected: false, code: err?.code ?? null, message: String(err?.message) };
  }
}

process.stdout.write(JSON.stringify(summary) + "\n");
