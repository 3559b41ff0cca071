#!/usr/bin/env node
// Serves the in-browser demos on 127.0.0.1 (a secure context, which WebGPU needs); nothing here
// talks to the network and the pages load nothing from a CDN.
//
//   npm run demos                      # or: node scripts/serve-demos.mjs [--port 8080]
//   -> http://127.0.0.1:8080/          (digits/, text/, studio/)
//
// URL layout: /            web/demos/
//             /pkg/        pkg/ (the npm package; build its wasm first: bash scripts/build-wasm.sh)
//             /fixtures/   tests/fixtures/{multitask,lora,tiny}/ (the small committed demo models)
//             /models/minilm/  target/models/minilm/ (the packaged MiniLM; scripts/fetch-models.sh)
// Files are sent with an ETag (size + mtime) and answer HEAD, so the package's Cache API layer can
// validate cached weights; `cache-control: no-cache` makes the browser revalidate every time.

import { createReadStream, existsSync, statSync } from "node:fs";
import { createServer } from "node:http";
import { dirname, extname, join, resolve, sep } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";

const repo = resolve(dirname(fileURLToPath(import.meta.url)), "..");

const TYPES = {
  ".html": "text/html; charset=utf-8",
  ".js": "text/javascript; charset=utf-8",
  ".mjs": "text/javascript; charset=utf-8",
  ".css": "text/css; charset=utf-8",
  ".json": "application/json",
  ".wasm": "application/wasm",
  ".txt": "text/plain; charset=utf-8",
  ".ts": "text/plain; charset=utf-8",
  ".png": "image/png",
};

/** URL prefix -> directory; the longest prefix wins. */
export function demoMounts(root = repo) {
  const models = process.env.TASKLOOM_MODELS ?? join(root, "target/models");
  return {
    "/": join(root, "web/demos"),
    "/pkg/": join(root, "pkg"),
    "/fixtures/multitask/": join(root, "tests/fixtures/multitask"),
    "/fixtures/lora/": join(root, "tests/fixtures/lora"),
    "/fixtures/tiny/": join(root, "tests/fixtures/tiny"),
    "/models/minilm/": join(models, "minilm"),
  };
}

/** Starts the server; resolves to { url, close }. `port` 0 picks a free one. */
export function startDemoServer({ port = 8080, host = "127.0.0.1", mounts = demoMounts(), log = false } = {}) {
  const entries = Object.entries(mounts).sort((x, y) => y[0].length - x[0].length);
  const server = createServer((req, res) => {
    let path;
    try {
      path = decodeURIComponent(new URL(req.url, "http://x").pathname);
    } catch {
      res.writeHead(400).end("bad url");
      return;
    }
    if (path.endsWith("/")) path += "index.html";
    const hit = entries.find(([prefix]) => path.startsWith(prefix) || path + "/" === prefix);
    let file = null;
    if (hit) {
      const base = resolve(hit[1]);
      const f = resolve(base, "." + sep + path.slice(hit[0].length));
      if ((f === base || f.startsWith(base + sep)) && existsSync(f) && statSync(f).isFile()) file = f;
    }
    if (log) console.log(`${req.method} ${req.url} -> ${file ? 200 : 404}`);
    if (!file || (req.method !== "GET" && req.method !== "HEAD")) {
      res.writeHead(file ? 405 : 404, { "content-type": "text/plain" });
      res.end(file ? "method not allowed" : "not found");
      return;
    }
    const st = statSync(file);
    const etag = `"${st.size.toString(16)}-${Math.floor(st.mtimeMs).toString(16)}"`;
    const headers = {
      "content-type": TYPES[extname(file)] ?? "application/octet-stream",
      "content-length": String(st.size),
      etag,
      "cache-control": "no-cache",
    };
    if (req.headers["if-none-match"] === etag) {
      res.writeHead(304, { etag, "cache-control": "no-cache" });
      res.end();
      return;
    }
    res.writeHead(200, headers);
    if (req.method === "HEAD") {
      res.end();
      return;
    }
    createReadStream(file).pipe(res);
  });
  return new Promise((ok, fail) => {
    server.once("error", fail);
    server.listen(port, host, () => {
      const url = `http://${host}:${server.address().port}`;
      ok({ url, close: () => new Promise((r) => (server.closeAllConnections?.(), server.close(r))) });
    });
  });
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? "").href) {
  const i = process.argv.indexOf("--port");
  const port = i > 0 ? Number(process.argv[i + 1]) : Number(process.env.PORT ?? 8080);
  const mounts = demoMounts();
  if (!existsSync(join(repo, "pkg/dist/taskloom_web_bg.wasm"))) console.warn("warning: pkg/dist is missing: run bash scripts/build-wasm.sh first");
  if (!existsSync(join(mounts["/models/minilm/"], "model.safetensors"))) console.warn("warning: target/models/minilm is missing (the text demo needs it): run bash scripts/fetch-models.sh");
  const { url } = await startDemoServer({ port, log: process.argv.includes("--log") });
  console.log(`taskloom demos on ${url}/  (digits/, text/, studio/); Ctrl-C stops`);
}
