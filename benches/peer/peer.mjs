// The OpenClaw reference client (`GatewayClient` from the `openclaw` npm
// package) driven through the same runs as the bridge, against the bench's
// synthetic gateway on loopback:
//
//   node peer.mjs URL EVENTS RPC_TOTAL_1 RPC_TOTAL_256
//
// 1. connect (challenge → connect → hello-ok), idle RSS 300 ms later;
// 2. flood: request `bench.flood`, count `agent` events until EVENTS;
// 3. RPC: `bench.echo` with 1, then 256 requests in flight.
// Prints one line `RESULT {json}` and exits. Run it with the offline guard
// (NODE_OPTIONS=--import=file://<repo>/tests/it/support/guard.mjs).
import path from "node:path";
import { pathToFileURL } from "node:url";
import { performance } from "node:perf_hooks";

const [url, eventsArg, total1Arg, total256Arg] = process.argv.slice(2);
const EVENTS = Number(eventsArg);
const TOTALS = [
  [1, Number(total1Arg)],
  [256, Number(total256Arg)],
];
const DEADLINE_MS = 120_000;

setTimeout(() => {
  console.error(`peer: no result after ${DEADLINE_MS} ms`);
  process.exit(2);
}, DEADLINE_MS).unref();

async function loadClient() {
  try {
    return (await import("openclaw/plugin-sdk/gateway-runtime")).GatewayClient;
  } catch {}
  const cache = process.env.OPENCLAW_CACHE_DIR;
  if (!cache) throw new Error("openclaw is not installed here and OPENCLAW_CACHE_DIR is unset");
  const file = path.join(cache, "node_modules/openclaw/dist/plugin-sdk/gateway-runtime.js");
  return (await import(pathToFileURL(file).href)).GatewayClient;
}

const cpuSecs = (u) => (u.user + u.system) / 1e6;
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

const GatewayClient = await loadClient();
let onAgent = null;
let helloResolve;
let helloReject;
const hello = new Promise((res, rej) => {
  helloResolve = res;
  helloReject = rej;
});
const client = new GatewayClient({
  url,
  token: "bench-token",
  clientName: "gateway-client",
  clientDisplayName: "bench-peer",
  mode: "backend",
  role: "operator",
  scopes: ["operator.read", "operator.write"],
  deviceIdentity: null,
  requestTimeoutMs: 60_000,
  onHelloOk: () => helloResolve(),
  onConnectError: (e) => helloReject(e),
  onEvent: (evt) => {
    if (evt.event === "agent" && onAgent) onAgent(evt);
  },
});
const tStart = performance.now();
client.start();
await hello;
const connectMs = performance.now() - tStart;
await sleep(300);
const idleRssKib = Math.round(process.memoryUsage().rss / 1024);

// Flood.
let count = 0;
const flooded = new Promise((res) => {
  onAgent = (evt) => {
    count++;
    if (count >= EVENTS) res();
  };
});
let cpu0 = process.cpuUsage();
let t0 = performance.now();
client.request("bench.flood", {}).catch((e) => console.error(`peer: flood request: ${e}`));
await flooded;
const floodSecs = (performance.now() - t0) / 1000;
const floodCpu = cpuSecs(process.cpuUsage(cpu0));
onAgent = null;

// RPC.
async function rpcRun(k, total) {
  let next = 0;
  const lat = [];
  const worker = async () => {
    while (next < total) {
      const i = next++;
      const t = performance.now();
      await client.request("bench.echo", { i });
      lat.push(Math.round((performance.now() - t) * 1000));
    }
  };
  await Promise.all(Array.from({ length: k }, worker));
  return lat;
}
const rpc = {};
for (const [k, total] of TOTALS) {
  await rpcRun(k, Math.min(total, Math.max(200, k * 4)));
  t0 = performance.now();
  const lat = await rpcRun(k, total);
  const secs = (performance.now() - t0) / 1000;
  lat.sort((a, b) => a - b);
  const pct = (p) => lat[Math.min(lat.length - 1, Math.floor((lat.length * p) / 100))];
  rpc[`k${k}`] = { requests: lat.length, secs, rps: lat.length / secs, p50_us: pct(50), p99_us: pct(99) };
}

console.log(
  "RESULT " +
    JSON.stringify({
      node: process.version,
      connect_ms: connectMs,
      idle_rss_kib: idleRssKib,
      flood: { events: count, dropped: 0, secs: floodSecs, cpu: floodCpu },
      peak_kib: process.resourceUsage().maxRSS,
      ...rpc,
    }),
);
client.stop();
process.exit(0);
