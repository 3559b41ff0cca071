// One model load through the packed npm package in a fresh Node process (the wasm CPU path), for
// heap.test.mjs: prints { before, after, weights, ... } as JSON. A wasm heap never shrinks, so
// `after - before` is the high-water mark of the load, unclouded by anything loaded earlier.
// Usage: node heap-probe.mjs PACKAGE_DIR MODEL_DIR [FILE.gguf]; HEAP_TEXTS (a JSON array) are
// embedded by an encoder; a decoder answers HEAP_PROMPT (chat, greedy, HEAP_MAX tokens).

import { readFileSync } from "node:fs";
import { join } from "node:path";
import { pathToFileURL } from "node:url";
import { filesOf } from "./harness.mjs";

const [pkgDir, dir, gguf] = process.argv.slice(2);
const tl = await import(pathToFileURL(join(pkgDir, "index.js")).href);

const files = gguf ? { [gguf]: new Uint8Array(readFileSync(join(dir, gguf))) } : filesOf(dir);
const weights = Object.entries(files).filter(([k]) => /\.(safetensors|gguf)$/.test(k)).reduce((n, [, v]) => n + v.byteLength, 0);
await tl.init();
const before = tl.wasmMemoryBytes();
const model = await tl.Model.load(files, { device: "cpu" });
const after = tl.wasmMemoryBytes();
const out = { before, after, weights, kind: model.kind, device: model.device };
if (model.kind === "encoder") out.embeddings = (await model.embed(JSON.parse(process.env.HEAP_TEXTS ?? "[]"))).map((e) => Array.from(e));
else {
  // Greedy chat answer to HEAP_PROMPT, HEAP_MAX tokens.
  out.ids = [];
  for await (const tok of model.generate(process.env.HEAP_PROMPT ?? "", { chat: true, maxTokens: Number(process.env.HEAP_MAX ?? 1) })) out.ids.push(tok.id);
}
model.dispose();
process.stdout.write(JSON.stringify(out));
