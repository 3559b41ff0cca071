// taskloom's side of the browser benchmark (scripts/bench_web.sh runs it next to the Transformers.js
// peer, shared/peers/tjs_embed.mjs): all-MiniLM-L6-v2 embedding of the peer's `text128` (batch 1,
// 128 tokens) in headless Chromium on the wasm CPU path, through pkg/ (built by build-wasm.sh).
// Same conditions as the peer: a 127.0.0.1 server with COOP/COEP and no-store, Debian chromium with
// the same flags, a fresh profile, every non-127.0.0.1 request aborted and counted.
//
// Run: node scripts/bench_web.mjs [--runs 10] [--device cpu|webgpu] [--model minilm|smollm2]
// Prints one line: bench=taskloom_embed device=... threads=1 embed_ms=... load_ms=... cos_vs_torch=... wasm=...
// Env: ANCHOR_WORK (/tmp/anchors; for ref_text128.json), PEERS (shared/peers), MINILM_DIR
// (target/models/minilm), CHROMIUM (/usr/bin/chromium).
import fs from "node:fs";
import http from "node:http";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
const WORK = process.env.ANCHOR_WORK || path.join(os.tmpdir(), "anchors");
const PEERS = process.env.PEERS || path.resolve(REPO, "../shared/peers");
const MINILM = process.env.MINILM_DIR || path.join(REPO, "target/models/minilm");
const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
const args = Object.fromEntries(process.argv.slice(2).join(" ").split("--").filter(Boolean)
  .map((s) => s.trim().split(/\s+/)).map(([k, v]) => [k, v ?? "1"]));
const runs = args.runs || "10";
const device = args.device || "cpu";
const model = args.model || "minilm"; // or smollm2 (the packaged GGUF; decode tok/s)
const SMOLLM = process.env.SMOLLM_DIR || path.join(REPO, "target/models/smollm2");

const routes = [["/taskloom/", path.join(REPO, "pkg")], ["/models/minilm/", MINILM], ["/models/smollm2/", SMOLLM]];
const files = { "/": path.join(REPO, "tests/browser/bench.html"), "/inputs.json": path.join(PEERS, "minilm_inputs.json") };
const TYPES = { ".html": "text/html", ".js": "text/javascript", ".mjs": "text/javascript", ".json": "application/json", ".wasm": "application/wasm" };
const served = [];
const server = http.createServer((rq, rs) => {
  const u = new URL(rq.url, "http://127.0.0.1");
  let p = files[u.pathname];
  if (!p) for (const [pre, dir] of routes) if (u.pathname.startsWith(pre)) {
    const rel = path.normalize(decodeURIComponent(u.pathname.slice(pre.length)));
    if (!rel.startsWith("..")) p = path.join(dir, rel);
  }
  const hdr = { "Cross-Origin-Opener-Policy": "same-origin", "Cross-Origin-Embedder-Policy": "require-corp",
                "Cross-Origin-Resource-Policy": "same-origin", "Cache-Control": "no-store" };
  if (!p || !fs.existsSync(p) || !fs.statSync(p).isFile()) {
    served.push([u.pathname, 404, 0]);
    rs.writeHead(404, hdr); rs.end("not found"); return;
  }
  const size = fs.statSync(p).size;
  served.push([u.pathname, 200, size]);
  rs.writeHead(200, { ...hdr, "Content-Type": TYPES[path.extname(p)] || "application/octet-stream", "Content-Length": size });
  fs.createReadStream(p).pipe(rs);
});
await new Promise((r) => server.listen(0, "127.0.0.1", r));
const udd = fs.mkdtempSync(path.join(os.tmpdir(), "bench-chromium-"));
const blocked = [];
let ctx, result;
const lines = [];
try {
  ctx = await chromium.launchPersistentContext(udd, {
    executablePath: CHROMIUM, headless: true,
    args: ["--enable-unsafe-webgpu", "--no-sandbox", "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run"],
  });
  await ctx.route("**/*", (route) => {
    const u = new URL(route.request().url());
    if (u.hostname === "127.0.0.1") return route.continue();
    blocked.push(u.href); return route.abort();
  });
  const page = ctx.pages()[0] || await ctx.newPage();
  page.on("console", (m) => lines.push(`[${m.type()}] ${m.text()}`));
  page.on("pageerror", (e) => lines.push(`[pageerror] ${e}`));
  await page.goto(`http://127.0.0.1:${server.address().port}/?device=${device}&runs=${runs}&model=${model}`);
  await page.waitForFunction(() => window.__done, null, { timeout: 900_000, polling: 500 });
  result = await page.evaluate(() => window.__done);
} finally {
  if (ctx) await ctx.close();
  server.close();
  fs.rmSync(udd, { recursive: true, force: true });
}
if (!result?.ok) {
  console.error(lines.slice(-30).join("\n"));
  console.log(`bench=taskloom_embed device=${device} status=FAILED error=${JSON.stringify(String(result?.error).split("\n")[0])}`);
  process.exit(1);
}
const i = result.info;
if (model === "smollm2") {
  console.log(`bench=taskloom_smollm2 device=${device} ran_on=${i.ran_on} threads=1 runs=${i.runs} load_ms=${i.load_ms.toFixed(0)} ` +
              `prefill_ms=${i.prefill_ms.toFixed(1)} decode_tok_s=${i.decode_tok_s.toFixed(2)} generated=${i.generated} blocked=${blocked.length}`);
  process.exit(0);
}
let cos = "-";
const refFile = path.join(WORK, "minilm-onnx", "ref_text128.json");
if (fs.existsSync(refFile)) {
  const ref = JSON.parse(fs.readFileSync(refFile, "utf8")).embedding;
  cos = i.embedding.reduce((s, v, k) => s + v * ref[k], 0).toFixed(7);
}
const wasm = served.filter(([p, c]) => c === 200 && p.endsWith(".wasm")).map(([p, , s]) => `${path.basename(p)}:${s}`);
// The wasm is single-threaded (no wasm threads / SharedArrayBuffer build): threads=1 whatever the page offers.
console.log(`bench=taskloom_embed device=${device} ran_on=${i.ran_on} threads=1 coi=${i.crossOriginIsolated} tokens=${i.tokens} ` +
            `runs=${i.runs} wasm_init_ms=${i.wasm_init_ms.toFixed(0)} load_ms=${i.load_ms.toFixed(0)} embed_ms=${i.embed_ms.toFixed(2)} ` +
            `cos_vs_torch=${cos} wasm=${wasm.join(",") || "-"} blocked=${blocked.length}`);
