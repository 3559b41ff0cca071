// Shared set-up for the package tests: pack pkg/ like a publish would, compute the native reference,
// serve files on 127.0.0.1. Nothing here talks to the network.

import { execFileSync } from "node:child_process";
import { existsSync, mkdtempSync, mkdirSync, readFileSync, readdirSync, statSync } from "node:fs";
import { createServer } from "node:http";
import { tmpdir } from "node:os";
import { dirname, extname, join, relative, resolve, sep } from "node:path";
import { fileURLToPath } from "node:url";

export const here = dirname(fileURLToPath(import.meta.url));
export const repo = resolve(here, "../..");

/** A fresh temp dir, removed by the OS eventually (tests clean up what they start, not files). */
export function tempDir(prefix) {
  return mkdtempSync(join(tmpdir(), prefix));
}

/**
 * `npm pack` of pkg/ unpacked into a temp dir: exactly what `npm install taskloom` would get.
 * Fails when the tarball lacks the built wasm (run scripts/build-wasm.sh first).
 */
let packed = null;
export function packedPackage() {
  packed ??= pack();
  return packed;
}

function pack() {
  const dir = tempDir("taskloom-pack-");
  const out = execFileSync("npm", ["pack", "--silent", "--pack-destination", dir], { cwd: join(repo, "pkg"), encoding: "utf8" });
  const tgz = join(dir, out.trim().split("\n").pop());
  const root = join(dir, "taskloom");
  mkdirSync(root);
  execFileSync("tar", ["-xzf", tgz, "-C", root, "--strip-components=1"]);
  for (const f of ["index.js", "index.d.ts", "errors.js", "wasm.js", "device-loss.js", "runtime.js", "load.js", "cache.js", "model.js", "merge.js", "dist/taskloom_web.js", "dist/taskloom_web_bg.wasm"]) {
    if (!existsSync(join(root, f))) throw new Error(`npm pack of pkg/ lacks ${f}: run bash scripts/build-wasm.sh first`);
  }
  return root;
}

/**
 * The native CPU result for a case, from web/examples/matmul_ref.rs. TASKLOOM_MATMUL_REF may name a
 * prebuilt binary; otherwise cargo builds and runs the example.
 */
export function nativeReference({ m, k, n, transB }) {
  const args = [String(m), String(k), String(n), ...(transB ? ["t"] : [])];
  const bin = process.env.TASKLOOM_MATMUL_REF;
  const [cmd, argv] = bin
    ? [bin, args]
    : ["cargo", ["run", "-q", "-p", "taskloom-web", "--example", "matmul_ref", "--", ...args]];
  const out = execFileSync(cmd, argv, { cwd: repo, encoding: "utf8", stdio: ["ignore", "pipe", "inherit"], maxBuffer: 64 << 20 });
  return JSON.parse(out);
}

const TYPES = {
  ".html": "text/html; charset=utf-8",
  ".js": "text/javascript; charset=utf-8",
  ".mjs": "text/javascript; charset=utf-8",
  ".json": "application/json",
  ".wasm": "application/wasm",
  ".ts": "text/plain; charset=utf-8",
};

/**
 * A static server on 127.0.0.1 (a secure context, which WebGPU requires). `mounts` maps URL
 * prefixes ("/taskloom/") to directories, or to `{ dir, range: false }` for a folder served as by a
 * server that ignores `Range` headers; the longest prefix wins. Elsewhere a single `Range:
 * bytes=a-b` (or `a-`, `-n`) is answered 206 with `Content-Range` (416 when unsatisfiable).
 * Resolves to { url, close, requests }; `requests` lists every request as { path, range }.
 */
export function serve(mounts) {
  const entries = Object.entries(mounts)
    .map(([prefix, m]) => [prefix, typeof m === "string" ? { dir: m, range: true } : { range: true, ...m }])
    .sort((x, y) => y[0].length - x[0].length);
  const requests = [];
  const server = createServer((req, res) => {
    const path = decodeURIComponent(new URL(req.url, "http://x").pathname);
    requests.push({ path, range: req.headers.range ?? null });
    const hit = entries.find(([prefix]) => path.startsWith(prefix));
    if (hit) {
      const base = resolve(hit[1].dir);
      const file = resolve(base, "." + sep + path.slice(hit[0].length));
      if ((file === base || file.startsWith(base + sep)) && existsSync(file) && statSync(file).isFile()) {
        const data = readFileSync(file);
        const headers = { "content-type": TYPES[extname(file)] ?? "application/octet-stream", "cache-control": "no-store" };
        const m = hit[1].range ? /^bytes=(\d*)-(\d*)$/.exec(req.headers.range ?? "") : null;
        if (m && (m[1] || m[2])) {
          const size = data.length;
          const [start, end] = m[1] === "" ? [Math.max(0, size - Number(m[2])), size - 1] : [Number(m[1]), m[2] === "" ? size - 1 : Math.min(Number(m[2]), size - 1)];
          if (start >= size || start > end) {
            res.writeHead(416, { ...headers, "content-range": `bytes */${size}` });
            res.end();
            return;
          }
          res.writeHead(206, { ...headers, "accept-ranges": "bytes", "content-range": `bytes ${start}-${end}/${size}` });
          res.end(data.subarray(start, end + 1));
          return;
        }
        res.writeHead(200, hit[1].range ? { ...headers, "accept-ranges": "bytes" } : headers);
        res.end(data);
        return;
      }
    }
    res.writeHead(404, { "content-type": "text/plain" });
    res.end("not found");
  });
  return new Promise((ok, fail) => {
    server.once("error", fail);
    server.listen(0, "127.0.0.1", () => {
      ok({ url: `http://127.0.0.1:${server.address().port}`, close: () => new Promise((r) => server.close(r)), requests });
    });
  });
}

/** Chromium flags: WebGPU on (SwiftShader where there is no GPU), nothing that reaches the network. */
export const CHROMIUM_ARGS = [
  "--enable-unsafe-webgpu", // headless Chromium offers no WebGPU adapter without it
  "--no-sandbox",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
  "--no-first-run",
  "--disable-quic",
];

/**
 * Serves `mounts` on 127.0.0.1, opens `pagePath` in headless Chromium (fresh profile) and waits for
 * `window.taskloomReady`. Resolves to { page, logs, close }; `logs` collects console output and page
 * errors for failure messages.
 */
/** `openPage` with the usual mounts: the packed package, tests/fixtures and this folder. */
export function openFixturePage(pagePath) {
  return openPage({ "/taskloom/": packedPackage(), "/fixtures/": join(repo, "tests/fixtures"), "/": here }, pagePath);
}

export async function openPage(mounts, pagePath) {
  const { chromium } = await import("playwright-core");
  const server = await serve(mounts);
  const context = await chromium.launchPersistentContext(tempDir("taskloom-chromium-"), {
    executablePath: process.env.TASKLOOM_CHROMIUM ?? "/usr/bin/chromium",
    headless: true,
    args: CHROMIUM_ARGS,
  });
  const logs = [];
  const page = await context.newPage();
  page.on("console", (m) => logs.push(`console.${m.type()}: ${m.text()}`));
  page.on("pageerror", (e) => logs.push(`pageerror: ${e.message}`));
  await page.goto(`${server.url}/${pagePath}`);
  await page.waitForFunction(() => window.taskloomReady === true, null, { timeout: 30_000 });
  return {
    page,
    logs,
    requests: server.requests,
    close: async () => {
      await context.close();
      await server.close();
    },
  };
}

/** The packaged model folder `rel` under target/models (or $TASKLOOM_MODELS); a missing one skips
 * test `t`, or fails it when TASKLOOM_REQUIRE_MODELS=1 (CI). */
export function modelDir(rel, t) {
  const dir = join(process.env.TASKLOOM_MODELS ?? join(repo, "target/models"), rel);
  if (existsSync(dir)) return dir;
  if (process.env.TASKLOOM_REQUIRE_MODELS === "1") throw new Error(`${dir} is missing (run scripts/fetch-models.sh)`);
  t.skip(`${dir} is missing (run scripts/fetch-models.sh)`);
  return null;
}

/** Every file under `dir` as { relative/path: Uint8Array }. */
export function filesOf(dir) {
  const out = {};
  const walk = (d) => {
    for (const name of readdirSync(d)) {
      const p = join(d, name);
      if (statSync(p).isDirectory()) walk(p);
      else out[relative(dir, p)] = new Uint8Array(readFileSync(p));
    }
  };
  walk(dir);
  return out;
}

export function cosine(a, b) {
  let d = 0, na = 0, nb = 0;
  for (let i = 0; i < a.length; i++) {
    d += a[i] * b[i];
    na += a[i] * a[i];
    nb += b[i] * b[i];
  }
  return d / Math.sqrt(na * nb);
}
